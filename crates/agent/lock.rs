//! One run of a job's task at a time, across processes and hosts: a
//! PostgreSQL session advisory lock on the job's source, keyed by job and
//! task. The agent takes it before every task (so of several replicas one
//! does the work); `refugio backup`, `verify` and `prune` take the same
//! lock, so a command-line run and the agent never do the same task of a
//! job at once. A job's backup, drill and prune have separate keys: they
//! may run side by side (a prune never touches an uncommitted backup).

use anyhow::{Context, Result};
use refugio_schedule::TaskKind;
use sha2::{Digest, Sha256};

use crate::config::JobConfig;

/// Advisory lock key of a job's task: the first 8 bytes of
/// SHA-256("refugio job " + name + " " + task).
pub fn lock_key(job: &str, task: TaskKind) -> i64 {
    let digest = Sha256::digest(format!("refugio job {job} {}", task.as_str()).as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

/// Takes the session advisory lock of `job`'s `task` on its source;
/// `None` when another session holds it. The lock lives as long as the
/// connection.
pub async fn advisory_lock(job: &JobConfig, task: TaskKind) -> Result<Option<sqlx::PgConnection>> {
    let source = job.source_spec()?;
    let mut conn = source.connect().await?;
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(lock_key(&job.name, task))
        .fetch_one(&mut conn)
        .await
        .with_context(|| format!("job {}: pg_try_advisory_lock", job.name))?;
    Ok(got.then_some(conn))
}

/// The lock for a command-line run: refused with a clear error when the
/// agent or another command holds it. For drills and prunes, which do not
/// need the source, an unreachable source only earns a warning (the run
/// goes on unlocked); a backup needs its source anyway.
pub async fn for_command(job: &JobConfig, task: TaskKind) -> Result<Option<sqlx::PgConnection>> {
    match advisory_lock(job, task).await {
        Ok(Some(conn)) => Ok(Some(conn)),
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
    }
}
