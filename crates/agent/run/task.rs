//! One attempt of a job's task: the config mapped to an operation's
//! options, the operation run.

use anyhow::{anyhow, bail, Context, Result};
use refugio_core::drill::{self, Pick};
use refugio_core::prune::DELETE_BATCH;
use refugio_core::{
    BackupOptions, CheckOptions, DrillOptions, Progress, RestoreOptions, SystemClock,
};
use refugio_schedule::TaskKind;
use refugio_store::repo::Repository;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use crate::job::Job;

/// What a task did.
pub(super) enum Done {
    Backup(Box<refugio_store::manifest::Manifest>),
    Drill(Box<refugio_core::Receipt>),
    Prune(u64),
    Restore(Box<refugio_core::RestoreReport>),
    Check(Box<refugio_core::CheckReport>),
}

/// One attempt of a task (`attempt` counts from 1, for the manifest).
pub(super) async fn run_once(
    repo: &Repository,
    job: &Job,
    kind: TaskKind,
    attempt: u32,
    progress: &Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<Done> {
    let progress = Some(Arc::clone(progress));
    match kind {
        TaskKind::Backup => {
            let opts = BackupOptions {
                progress,
                ..job.backup_options(attempt)?
            };
            let m = refugio_core::backup(repo, &opts, &SystemClock, cancel).await?;
            Ok(Done::Backup(Box::new(m)))
        }
        TaskKind::Drill => {
            let opts = DrillOptions {
                progress,
                ..job.scheduled_drill_options()?
            };
            let (m, history) = drill::pick(repo, &job.name, Pick::Newest).await?;
            let r = refugio_core::drill(repo, &m, &history, &opts, &SystemClock, cancel).await?;
            Ok(Done::Drill(Box::new(r)))
        }
        TaskKind::Restore => {
            let no_target = || anyhow!("job {}: no [jobs.restore_on_signal] target", job.name);
            if job.config.restore_on_signal.is_none() {
                return Err(no_target());
            }
            let m = newest_verified(repo, &job.name).await?;
            let sources = job.source_cluster().await.into_iter().collect();
            let opts = RestoreOptions {
                progress,
                ..job
                    .signal_restore_options(sources)
                    .with_context(|| format!("job {}", job.name))?
                    .ok_or_else(no_target)?
            };
            tracing::info!(backup = %m.backup_id, target = %opts.target.redacted(), "restore-started");
            let report = refugio_core::restore(repo, &m, &opts, cancel).await?;
            tracing::info!(backup = %m.backup_id, target = %report.target,
                seconds = report.seconds, "restore-finished");
            Ok(Done::Restore(Box::new(report)))
        }
        TaskKind::Prune => {
            let opts = job
                .prune_options(false, DELETE_BATCH)
                .ok_or_else(|| anyhow!("job {} has no retention policy", job.name))?;
            let report = refugio_core::prune(repo, &opts, &SystemClock, cancel).await?;
            if report.has_errors() {
                bail!(
                    "prune of job {}: {} delete(s) failed: {}",
                    job.name,
                    report.failed_deletes.len(),
                    report
                        .failed_deletes
                        .iter()
                        .map(|f| format!("{}: {}", f.key, f.error))
                        .collect::<Vec<_>>()
                        .join("; ")
                );
            }
            Ok(Done::Prune(report.deleted_backups.len() as u64))
        }
        TaskKind::Check => {
            let read_data = job.config.schedule.check_read_data(chrono::Utc::now());
            let opts = CheckOptions {
                progress,
                ..job.check_options(read_data)
            };
            let report = refugio_core::check(repo, &opts, &SystemClock, cancel).await?;
            // For `refugio status`; the check's own result stands either way.
            if let Err(e) = refugio_core::check::record::record(repo, &report).await {
                tracing::warn!(error = %refugio_print::chain(&e), "check-not-recorded");
            }
            Ok(Done::Check(Box::new(report)))
        }
    }
}

/// The job's newest backup that a drill verified (from one listing, as
/// the agent's status has it).
async fn newest_verified(
    repo: &Repository,
    job: &str,
) -> Result<refugio_store::manifest::Manifest> {
    let st = refugio_core::status(repo, job).await?;
    let id = st.newest_verified_id.ok_or_else(|| {
        anyhow!(
            "job {job}: no verified backup to restore in {}: a drill must pass first",
            repo.describe()
        )
    })?;
    Ok(repo.resolve(job, &id).await?)
}
