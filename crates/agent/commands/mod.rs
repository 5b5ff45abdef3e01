//! The commands behind the CLI: each maps its arguments and the config to
//! an operation of refugio-core and prints the report.

mod backup;
pub mod check;
mod config_check;
mod list;
pub mod prune;
mod restore;
pub mod status;
pub mod verify;
mod wal;

use std::process::ExitCode;

use anyhow::{anyhow, Result};

use crate::cli::{Cli, Command, ConfigCommand, LogFormat};
use crate::config::Config;
use crate::exit::{code_of, usage};

/// The job a command acts on: `--job`, else the config's only job, else
/// the repository's only job (a zero-config repository); several are a
/// usage error naming them.
pub(crate) async fn infer_job(
    cfg: &Config,
    repo: &refugio_store::repo::Repository,
    job: Option<&str>,
) -> Result<String> {
    match (job, cfg.jobs.as_slice()) {
        (Some(j), _) => Ok(j.to_string()),
        (None, [one]) => Ok(one.name.clone()),
        (None, _) => {
            let jobs = repo.jobs().await?;
            match jobs.as_slice() {
                [one] => Ok(one.clone()),
                [] => anyhow::bail!("no backups in {}", repo.describe()),
                many => Err(usage(anyhow!(
                    "the repository holds several jobs ({}); choose one with --job",
                    many.join(", ")
                ))),
            }
        }
    }
}

/// Runs a command; reports the error chain once and maps it to an exit code.
pub async fn dispatch(cli: Cli) -> ExitCode {
    let log_format = cli.log_format;
    crate::progress::set_quiet(cli.quiet);
    // restore_command: any failure but "not archived" must stop recovery
    // (see commands/wal.rs), a bad config included.
    let fetching = matches!(cli.command, Command::WalFetch(_));
    let result = match load_config(&cli) {
        Ok(cfg) => match cli.command {
            Command::Backup(a) => backup::backup(cfg, a).await,
            Command::List(a) => list::list(cfg, a).await,
            Command::Status(a) => status::status(cfg, a).await,
            Command::Restore(a) => restore::restore(cfg, a, cli.config.clone()).await,
            Command::Verify(a) => verify::verify(cfg, a).await,
            Command::Prune(a) => prune::prune(cfg, a).await,
            Command::Check(a) => check::check(cfg, a).await,
            Command::Pin(a) => prune::pin(cfg, a, true).await,
            Command::Unpin(a) => prune::pin(cfg, a, false).await,
            Command::WalPush(a) => wal::wal_push(cfg, a).await,
            Command::WalFetch(a) => wal::wal_fetch(cfg, a).await,
            Command::Run => match cli.config.clone() {
                Some(path) => crate::run::run(path, cfg).await,
                None => Err(usage(anyhow!(
                    "refugio run needs a config file (--config FILE or REFUGIO_CONFIG)"
                ))),
            },
            Command::Config {
                command: ConfigCommand::Check { json },
            } => config_check::config_check(cfg, cli.config.clone(), json).await,
        },
        Err(e) => Err(e),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            report_failure(&e, log_format);
            if fetching {
                ExitCode::from(wal::FETCH_FAILED)
            } else {
                code_of(&e)
            }
        }
    }
}

/// Prints the error that ends the command exactly once, each cause once.
/// With text logs: the `refugio: error: …` line on stderr, and no log
/// event besides (under journald, stderr and the log are one stream, and
/// on a terminal one line is enough). With JSON logs: the `command-failed`
/// event, so the stream stays JSON, unless the log filter hides errors;
/// then the plain line, so a failure never goes unsaid.
fn report_failure(e: &anyhow::Error, log_format: LogFormat) {
    let text = crate::output::error_chain(e);
    match log_format {
        LogFormat::Json if tracing::enabled!(tracing::Level::ERROR) => {
            tracing::error!(error = %text, "command-failed");
        }
        _ => eprintln!("refugio: error: {text}"),
    }
}

fn load_config(cli: &Cli) -> Result<Config> {
    match &cli.config {
        Some(path) => Config::load(path).map_err(usage),
        None => Ok(Config::empty()),
    }
}
