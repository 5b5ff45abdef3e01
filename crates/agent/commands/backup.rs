//! `refugio backup`.

use std::process::ExitCode;

use anyhow::{anyhow, Result};
use refugio_core::SystemClock;
use refugio_schedule::TaskKind;
use tokio_util::sync::CancellationToken;

use crate::cli::BackupArgs;
use crate::config::{self, Config};
use crate::exit::usage;
use crate::job::Job;
use crate::output::human;

pub async fn backup(cfg: Config, a: BackupArgs) -> Result<ExitCode> {
    let job = match (&a.source, cfg.jobs.is_empty()) {
        (Some(src), _) => {
            let adhoc = config::adhoc_job(src, a.job.as_deref()).map_err(usage)?;
            Job::resolve(0, &adhoc, &cfg.repository, None).map_err(usage)?
        }
        (None, false) => cfg.job(a.job.as_deref()).map_err(usage)?.clone(),
        (None, true) => {
            return Err(usage(anyhow!(
                "nothing to back up: give --source postgres://… or a config file with [[jobs]] (--config / REFUGIO_CONFIG)"
            )))
        }
    };
    let repo = crate::repo::open(&cfg, a.repo.repository.as_deref()).await?;
    let token = CancellationToken::new();
    crate::signals::cancel_on_stop(token.clone());
    let shown = crate::progress::start(crate::progress::BACKUP);
    let m = crate::task::retry(&job.backoff(), &token, |attempt| {
        let (repo, job, token, shown) = (&repo, &job, &token, &shown);
        async move {
            // The job's lock, held until this attempt is committed or
            // abandoned; an unreachable source is retried like the backup.
            let _lock = crate::task::for_command(job, TaskKind::Backup).await?;
            let mut opts = job.backup_options(attempt)?;
            opts.progress = shown.as_ref().map(|s| s.progress());
            Ok(refugio_core::backup(repo, &opts, &SystemClock, token).await?)
        }
    })
    .await;
    drop(shown);
    let m = m?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&m)?);
    } else {
        let (what, tables) = match m.databases.as_slice() {
            [] => (format!("database {}", m.database), m.tables.len()),
            dbs => (
                format!(
                    "{} databases ({})",
                    dbs.len(),
                    m.database_names().join(", ")
                ),
                dbs.iter().map(|d| d.tables.len()).sum(),
            ),
        };
        println!(
            "backup {} of job {} committed to {}: {what}, {tables} tables, {} stored ({} raw), {:.1}s",
            m.backup_id,
            m.job,
            repo.describe(),
            human(m.stored_size()),
            human(m.raw_size()),
            m.durations.total_seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}
