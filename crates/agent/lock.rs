//! One run of a job's task at a time, across processes and hosts: a
//! PostgreSQL session advisory lock on the job's source, keyed by job and
//! task. The agent takes it before every task (so of several replicas one
//! does the work); `refugio backup`, `verify` and `prune` take the same
//! lock, so a command-line run and the agent never do the same task of a
//! job at once. A job's backup, drill, prune and check have separate keys: they
//! may run side by side (a prune never touches an uncommitted backup).
//! While a task runs its lock's connection is checked, and the lock taken
//! again when the connection was lost.

use std::time::Duration;

use anyhow::{Context, Result};
use refugio_schedule::TaskKind;
use sha2::{Digest, Sha256};

use crate::job::Job;

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
}
