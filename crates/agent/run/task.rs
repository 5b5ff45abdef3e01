//! One attempt of a job's task: the config mapped to an operation's
//! options, the operation run.

use anyhow::{anyhow, bail, Context, Result};
use refugio_core::drill::{self, Pick};
use refugio_core::prune::DELETE_BATCH;
use refugio_core::SystemClock;
use refugio_schedule::TaskKind;
use refugio_store::repo::Repository;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, JobConfig};

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
    cfg: &Config,
    job: &JobConfig,
    kind: TaskKind,
    attempt: u32,
    cancel: &CancellationToken,
) -> Result<Done> {
    match kind {
        TaskKind::Backup => {
            let opts = job.backup_options(&cfg.repository, attempt)?;
            let m = refugio_core::backup(repo, &opts, &SystemClock, cancel).await?;
            Ok(Done::Backup(Box::new(m)))
        }
        TaskKind::Drill => {
            let scratch = job.drill_scratch().ok_or_else(|| {
                anyhow!(
                    "job {}: no scratch target: set `scratch` (a server URL or \"ephemeral\")",
                    job.name
                )
            })?;
            let opts = job.drill_options(
                scratch,
                job.scratch_password_file.as_deref(),
                job.pg_bindir.clone(),
                &cfg.repository,
                cfg.path.as_deref(),
            )?;
            let (m, history) = drill::pick(repo, &job.name, Pick::Newest).await?;
            let r = refugio_core::drill(repo, &m, &history, &opts, &SystemClock, cancel).await?;
            Ok(Done::Drill(Box::new(r)))
        }
        TaskKind::Restore => {
            let to = job
                .restore_on_signal
                .as_ref()
                .ok_or_else(|| anyhow!("job {}: no [jobs.restore_on_signal] target", job.name))?;
            let m = newest_verified(repo, &job.name).await?;
            let sources = job.source_cluster().await.into_iter().collect();
            let opts = to
                .restore_options(
                    job.drill_jobs,
                    job.pg_bindir.clone(),
                    &cfg.repository,
                    sources,
                )
                .with_context(|| format!("job {}", job.name))?;
            tracing::info!(backup = %m.backup_id, target = %opts.target.redacted(), "restore-started");
            let report = refugio_core::restore(repo, &m, &opts, cancel).await?;
            tracing::info!(backup = %m.backup_id, target = %report.target,
                seconds = report.seconds, "restore-finished");
            Ok(Done::Restore(Box::new(report)))
        }
        TaskKind::Prune => {
            let r = job
                .retention
                .as_ref()
                .ok_or_else(|| anyhow!("job {} has no retention policy", job.name))?;
            let opts = r.prune_options(
                &job.name,
                cfg.repository.object_lock.is_some(),
                false,
                DELETE_BATCH,
                job.kind == refugio_core::JobKind::Physical,
            )?;
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
            let opts = refugio_core::CheckOptions {
                job: job.name.clone(),
                read_data: job.schedule.check_read_data(chrono::Utc::now()),
                grace: job
                    .retention
                    .as_ref()
                    .map_or(refugio_core::check::DEFAULT_GRACE, |r| r.gc_grace),
                progress: None,
            };
            let report = refugio_core::check(repo, &opts, &SystemClock, cancel).await?;
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
