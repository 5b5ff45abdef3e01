//! `refugio restore`: one backup into a target database.

use std::process::ExitCode;

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

use crate::cli::RestoreArgs;
use crate::config::Config;
use crate::exit::usage;
use crate::output::human;

pub async fn restore(cfg: Config, a: RestoreArgs) -> Result<ExitCode> {
    let repo = crate::repo::open_existing(&cfg, a.repo.repository.as_deref()).await?;
    let job = super::infer_job(&cfg, &repo, a.job.as_deref()).await?;
    let manifest = repo.resolve(&job, &a.backup).await?;
    let target =
        refugio_dump::SourceSpec::new(&a.target, None, None).map_err(|e| usage(e.into()))?;
    let opts = refugio_core::RestoreOptions {
        target,
        clean: a.clean,
        create: a.create,
        globals: a.globals,
        jobs: a.jobs.max(1),
        no_owner: a.no_owner,
        bindir: a.pg_bindir.clone(),
        temp_dir: a.temp_dir.clone(),
        identities: cfg.repository.identities().map_err(usage)?,
        database: a.database.clone(),
        progress: None,
    };
    tracing::info!(job, backup = %manifest.backup_id, target = %opts.target.redacted(), "restore-started");
    let token = CancellationToken::new();
    crate::signals::cancel_on_stop(token.clone());
    let shown = crate::progress::start(crate::progress::RESTORE);
    let opts = refugio_core::RestoreOptions {
        progress: shown.as_ref().map(|s| s.progress()),
        ..opts
    };
    let report = refugio_core::restore(&repo, &manifest, &opts, &token).await;
    drop(shown);
    let report =
        report.with_context(|| format!("restoring backup {} of job {job}", manifest.backup_id))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let into = match report.databases.as_slice() {
            [_] => report.target.clone(),
            many => format!(
                "{} databases on {} ({})",
                many.len(),
                report.target,
                many.join(", ")
            ),
        };
        println!(
            "restored backup {} of job {} into {} with {} {} in {:.1}s ({} fetched{})",
            report.backup_id,
            report.job,
            into,
            report.tool,
            report.tool_version,
            report.seconds,
            human(report.bytes_fetched),
            if report.globals_applied {
                ", roles applied"
            } else {
                ""
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}
