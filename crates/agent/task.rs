//! One run of a job's task, whoever asked for it (the agent's scheduler,
//! a signal, the command line): the job's advisory lock across processes
//! and hosts, "did another replica already do this run?", attempts retried
//! on temporary errors, the task watched while it runs, and the operation
//! itself (the job's ready options handed to refugio-core).
//!
//! **The lock.** A PostgreSQL session advisory lock on the job's source,
//! keyed by job and task. The agent takes it before every task (so of
//! several replicas one does the work); `refugio backup`, `verify` and
//! `prune` take the same lock, so a command-line run and the agent never do
//! the same task of a job at once. A job's backup, drill, prune and check
//! have separate keys: they may run side by side (a prune never touches an
//! uncommitted backup). While a task runs its lock's connection is checked,
//! and the lock taken again when the connection was lost.
//!
//! **Retries.** The one retry layer: an operation that fails with a
//! temporary error (network or store trouble, a server restarting, a lock
//! timeout) runs again after a backoff; anything else fails at once. The
//! operations in refugio-core make one attempt each and say whether their
//! errors are temporary; this decides from that.
//!
//! **The watch.** A running task seen from outside: its bytes so far in
//! `/metrics` (`refugio_task_running`, `refugio_task_progress_bytes`, every
//! 10 s) and a `task-progress` log line every minute, so a three-hour dump
//! under `refugio run` is not silent between its start and its end.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, Utc};
use refugio_core::drill::{self, Pick};
use refugio_core::prune::DELETE_BATCH;
use refugio_core::{
    BackupOptions, CheckOptions, DrillOptions, Progress, RestoreOptions, SystemClock,
};
use refugio_schedule::{Backoff, Fire, FireReason, TaskKind};
use refugio_store::repo::Repository;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::job::Job;
use crate::metrics::Metrics;

/// How a run of a task went: not run, or run to this result.
pub(crate) enum Ran {
    /// Not run: another refugio holds the job's lock, or another replica
    /// already did this scheduled run (the reason, in words).
    Skipped(&'static str),
    /// The operation's result after its attempts, and how long they took
    /// (from the lock taken to the last attempt's end).
    Finished(Result<Done>, Duration),
}

/// One task of `job` as the agent runs it: the job's lock taken (retried
/// while the source is unreachable), a scheduled run skipped when another
/// replica already did it, the operation watched and retried.
pub(crate) async fn run(
    repo: &Repository,
    job: &Job,
    fire: &Fire,
    backoff: &Backoff,
    metrics: &Arc<Metrics>,
    cancel: &CancellationToken,
) -> Ran {
    let kind = fire.key.kind;
    let lock = match retry(backoff, cancel, |_| advisory_lock(job, kind)).await {
        Ok(Some(lock)) => lock.keep(),
        Ok(None) => return Ran::Skipped("another refugio holds this job's lock"),
        Err(e) => {
            let e = e.context("cannot take the job's lock on its source");
            return Ran::Finished(Err(e), Duration::ZERO);
        }
    };
    let started = Instant::now();
    if matches!(fire.reason, FireReason::Schedule | FireReason::CatchUp)
        && already_done(repo, job, kind, fire.scheduled_at).await
    {
        return Ran::Skipped("another replica already did this run");
    }
    let watch = Watch::start(Arc::clone(metrics), &job.name, kind);
    let result = retry(backoff, cancel, |attempt| {
        let progress = watch.progress();
        async move {
            if attempt > 1 {
                tracing::info!(attempt, "task-retry");
            }
            run_once(repo, job, kind, attempt, &progress, cancel).await
        }
    })
    .await;
    drop(lock);
    Ran::Finished(result, started.elapsed())
}

/// What a task did.
pub(crate) enum Done {
    Backup(Box<refugio_store::manifest::Manifest>),
    Drill(Box<refugio_core::Receipt>),
    Prune(u64),
    Restore(Box<refugio_core::RestoreReport>),
    Check(Box<refugio_core::CheckReport>),
}

/// One attempt of a task (`attempt` counts from 1, for the manifest).
pub(crate) async fn run_once(
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

/// Advisory lock key of a job's task: the first 8 bytes of
/// SHA-256("refugio job " + name + " " + task).
pub fn lock_key(job: &str, task: TaskKind) -> i64 {
    let digest = Sha256::digest(format!("refugio job {job} {}", task.as_str()).as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

/// How often a held lock's connection is checked while its task runs.
pub const LOCK_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// Longest wait for the check's answer before the connection counts as lost.
const LOCK_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// A job task's advisory lock: the session on the source that holds it.
pub struct JobLock {
    conn: sqlx::PgConnection,
    job: Job,
    task: TaskKind,
}

/// Takes the session advisory lock of `job`'s `task` on its source;
/// `None` when another session holds it. The lock lives as long as the
/// connection; [`JobLock::keep`] watches it while the task runs.
pub async fn advisory_lock(job: &Job, task: TaskKind) -> Result<Option<JobLock>> {
    let source = job.source()?;
    let mut conn = source.connect().await?;
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(lock_key(&job.name, task))
        .fetch_one(&mut conn)
        .await
        .with_context(|| format!("job {}: pg_try_advisory_lock", job.name))?;
    Ok(got.then(|| JobLock {
        conn,
        job: job.clone(),
        task,
    }))
}

impl JobLock {
    /// Holds the lock until the returned guard is dropped, checking its
    /// connection every [`LOCK_CHECK_INTERVAL`]. A connection lost while
    /// the task runs (`pg_terminate_backend`, `idle_session_timeout`, a
    /// restarted server) took the lock with it: it is taken again on a new
    /// connection (`job-lock-retaken`). Should another refugio have taken
    /// it in between, the task goes on (a second run of one job's task is
    /// safe: backups get distinct ids, drills distinct scratch databases,
    /// deletes are idempotent) and the overlap is logged as an error.
    pub fn keep(self) -> KeptLock {
        KeptLock {
            watcher: tokio::spawn(watch(self)),
        }
    }
}

/// A lock held by its watcher task; dropping it closes the connection,
/// which releases the lock.
pub struct KeptLock {
    watcher: tokio::task::JoinHandle<()>,
}

impl Drop for KeptLock {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

async fn watch(mut lock: JobLock) {
    let (name, task) = (lock.job.name.clone(), lock.task.as_str());
    loop {
        tokio::time::sleep(LOCK_CHECK_INTERVAL).await;
        let alive = tokio::time::timeout(
            LOCK_CHECK_TIMEOUT,
            sqlx::query("SELECT 1").execute(&mut lock.conn),
        )
        .await;
        let error = match alive {
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => crate::output::error_chain(&anyhow::Error::from(e)),
            Err(_) => format!("no answer within {LOCK_CHECK_TIMEOUT:?}"),
        };
        tracing::warn!(job = %name, task, error,
            "job-lock-lost: the connection holding the job's lock is gone; taking the lock again");
        loop {
            match advisory_lock(&lock.job, lock.task).await {
                Ok(Some(again)) => {
                    lock = again;
                    tracing::info!(job = %name, task, "job-lock-retaken");
                    break;
                }
                Ok(None) => {
                    tracing::error!(job = %name, task,
                        "job-lock-held-elsewhere: another session (another refugio, or this one's lost connection until the server notices) holds the job's lock now; this run goes on, and may overlap another");
                    return;
                }
                Err(e) => {
                    tracing::warn!(job = %name, task, error = crate::output::error_chain(&e),
                        "job-lock-unavailable: cannot reach the source to take the lock again; retrying");
                    tokio::time::sleep(LOCK_CHECK_INTERVAL).await;
                }
            }
        }
    }
}

/// The lock for a command-line run: refused with a clear error when the
/// agent or another command holds it. For drills and prunes, which do not
/// need the source, an unreachable source only earns a warning (the run
/// goes on unlocked); a backup needs its source anyway.
pub async fn for_command(job: &Job, task: TaskKind) -> Result<Option<KeptLock>> {
    match advisory_lock(job, task).await {
        Ok(Some(lock)) => Ok(Some(lock.keep())),
        Ok(None) => anyhow::bail!(
            "job {}: another refugio (an agent or a command) is running this job's {} right now (advisory lock held on its source); try again when it is done",
            job.name,
            task.as_str()
        ),
        Err(e) if task != TaskKind::Backup => {
            tracing::warn!(job = %job.name, task = task.as_str(), error = crate::output::error_chain(&e),
                "job-lock-unavailable: the source cannot be reached to take the job's lock; going on without it");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Whether another replica already did the run scheduled at `at`: a
/// backup started at or after it, or a drill receipt of the newest
/// backup written after it.
pub(crate) async fn already_done(
    repo: &Repository,
    job: &Job,
    kind: TaskKind,
    at: DateTime<Utc>,
) -> bool {
    let Ok(run) = refugio_core::listing::newest_run(repo, &job.name, Utc::now()).await else {
        return false;
    };
    let at = at - chrono::Duration::milliseconds(999);
    match kind {
        TaskKind::Backup => run.backup.is_some_and(|t| t >= at),
        TaskKind::Drill => run.drilled.is_some_and(|t| t >= at),
        TaskKind::Prune | TaskKind::Restore | TaskKind::Check => false,
    }
}

/// Runs `op` (given the attempt number, from 1) until it succeeds, fails
/// permanently, or has had `backoff.attempts` tries. Each failed attempt
/// but the last is logged with its whole chain (the last one is returned,
/// to be reported once by the caller).
pub async fn retry<T, F, Fut>(backoff: &Backoff, cancel: &CancellationToken, mut op: F) -> Result<T>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    refugio_schedule::retry(
        backoff,
        |e: &Chained| is_temporary(&e.0),
        cancel,
        |attempt| {
            let attempt = op(attempt);
            async move { attempt.await.map_err(Chained) }
        },
    )
    .await
    .map_err(|e| e.0)
}

/// An error whose `Display` is its chain, each cause once: what the retry
/// log line shows (an `anyhow::Error`'s `Display` is its outermost message
/// only, which may not say why).
struct Chained(anyhow::Error);

impl fmt::Display for Chained {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::output::error_chain(&self.0))
    }
}

/// Temporary: network and store trouble, a server restarting, a lock
/// timeout. Permanent: everything else (auth, missing binary, bad config,
/// failed checks). Any cause in the chain that says "temporary" decides
/// (core's one classifier, [`refugio_core::error::temporary_cause`]).
pub fn is_temporary(e: &anyhow::Error) -> bool {
    e.chain().any(refugio_core::error::temporary_cause)
}

/// How often the bytes gauge is updated.
const TICK: Duration = Duration::from_secs(10);
/// How many ticks between two log lines.
const TICKS_PER_LINE: u32 = 6;

/// Watches one task while it lives; dropping it marks the task ended.
pub(crate) struct Watch {
    progress: Arc<Progress>,
    metrics: Arc<Metrics>,
    job: String,
    task: &'static str,
    ticker: tokio::task::JoinHandle<()>,
}

impl Watch {
    pub(crate) fn start(metrics: Arc<Metrics>, job: &str, kind: TaskKind) -> Watch {
        let task = kind.as_str();
        metrics.task_running(job, task, true);
        let progress = Progress::new();
        let ticker = tokio::spawn({
            let (p, m, job) = (Arc::clone(&progress), Arc::clone(&metrics), job.to_string());
            async move {
                let started = Instant::now();
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + TICK, TICK);
                let mut n = 0u32;
                loop {
                    tick.tick().await;
                    n += 1;
                    let bytes = p.stored_bytes().max(p.read_bytes());
                    m.task_progress(&job, task, bytes);
                    if n % TICKS_PER_LINE == 0 {
                        log_line(&job, task, &p, started.elapsed());
                    }
                }
            }
        });
        Watch {
            progress,
            metrics,
            job: job.to_string(),
            task,
            ticker,
        }
    }

    /// The counters the task's operation adds to.
    pub(crate) fn progress(&self) -> Arc<Progress> {
        Arc::clone(&self.progress)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.ticker.abort();
        self.metrics.task_running(&self.job, self.task, false);
    }
}

fn log_line(job: &str, task: &str, p: &Progress, elapsed: Duration) {
    let total = p.total_bytes();
    tracing::info!(
        job,
        task,
        phase = %p.phase(),
        read_bytes = p.read_bytes(),
        stored_bytes = p.stored_bytes(),
        total_bytes = (total > 0).then_some(total),
        elapsed_seconds = elapsed.as_secs(),
        "task-progress"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_are_stable_and_distinct() {
        let b = TaskKind::Backup;
        assert_eq!(lock_key("trips", b), lock_key("trips", b));
        assert_ne!(lock_key("trips", b), lock_key("trips-sql", b));
        assert_ne!(lock_key("trips", b), lock_key("trips", TaskKind::Prune));
        assert_ne!(lock_key("trips", b), lock_key("trips", TaskKind::Drill));
        assert_ne!(lock_key("trips", b), lock_key("trips", TaskKind::Check));
    }

    use anyhow::anyhow;

    fn s3(temporary: bool) -> refugio_store::Error {
        refugio_store::Error::S3 {
            op: "PutObject",
            store: "s3://b".into(),
            key: "k".into(),
            message: if temporary {
                "SlowDown"
            } else {
                "AccessDenied"
            }
            .into(),
            temporary,
        }
    }

    /// The verdict comes from the cause, however deep in the chain and
    /// whichever crate's error wraps it; the same kind of error is
    /// temporary or permanent by what it says.
    #[test]
    fn temporary_errors() {
        for (temporary, expected) in [(true, true), (false, false)] {
            // Bare, under anyhow context, and inside core's commit error.
            let bare = anyhow::Error::from(s3(temporary));
            let context = anyhow::Error::from(s3(temporary))
                .context("uploading")
                .context("backup of job a");
            let wrapped = anyhow::Error::from(refugio_core::Error::Commit {
                job: "a".into(),
                source: Box::new(s3(temporary)),
            })
            .context("backup");
            for e in [bare, context, wrapped] {
                assert_eq!(is_temporary(&e), expected, "{e:#}");
            }
        }
        assert!(!is_temporary(&anyhow!("pg_dump 15 cannot dump server 16")));
        for (kind, expected) in [
            (std::io::ErrorKind::ConnectionRefused, true),
            (std::io::ErrorKind::ConnectionReset, true),
            (std::io::ErrorKind::PermissionDenied, false),
            (std::io::ErrorKind::NotFound, false),
        ] {
            let e = anyhow::Error::from(std::io::Error::from(kind)).context("connecting");
            assert_eq!(is_temporary(&e), expected, "{kind:?}");
        }
        assert!(is_temporary(&anyhow::Error::from(
            sqlx::Error::PoolTimedOut
        )));
        assert!(!is_temporary(&anyhow::Error::from(
            sqlx::Error::RowNotFound
        )));
    }

    use std::sync::atomic::Ordering;

    #[tokio::test(start_paused = true)]
    async fn a_running_task_shows_its_bytes_until_it_ends() {
        let m = Arc::new(Metrics::new());
        let w = Watch::start(Arc::clone(&m), "trips", TaskKind::Backup);
        let running = r#"refugio_task_running{backup_job="trips",task="backup"} "#;
        let bytes = r#"refugio_task_progress_bytes{backup_job="trips",task="backup"} "#;
        assert!(m.render().contains(&format!("{running}1\n")));
        w.progress().stored.store(5000, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(11)).await;
        let text = m.render();
        assert!(text.contains(&format!("{bytes}5000\n")), "{text}");
        drop(w);
        let text = m.render();
        assert!(text.contains(&format!("{running}0\n")), "{text}");
        assert!(!text.contains(bytes), "{text}");
    }
}
