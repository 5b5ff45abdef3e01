//! Several replicas, one job: a PostgreSQL session advisory lock on the
//! job's source, and "did another replica already do this run?".

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use refugio_schedule::TaskKind;
use refugio_store::repo::Repository;
use sha2::{Digest, Sha256};

use crate::config::JobConfig;

/// Advisory lock key of a job: the first 8 bytes of SHA-256("refugio job " + name).
pub(super) fn lock_key(job: &str) -> i64 {
    let digest = Sha256::digest(format!("refugio job {job}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

/// Takes the job's session advisory lock on its source; `None` when
/// another session holds it. The lock lives as long as the connection.
pub(super) async fn advisory_lock(job: &JobConfig) -> Result<Option<sqlx::PgConnection>> {
    let source = job.source_spec()?;
    let mut conn = source.connect().await?;
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(lock_key(&job.name))
        .fetch_one(&mut conn)
        .await
        .with_context(|| format!("job {}: pg_try_advisory_lock", job.name))?;
    Ok(got.then_some(conn))
}

/// Whether another replica already did the run scheduled at `at`: a
/// backup started at or after it, or a drill receipt of the newest
/// backup written after it.
pub(super) async fn already_done(
    repo: &Repository,
    job: &JobConfig,
    kind: TaskKind,
    at: DateTime<Utc>,
) -> bool {
    let Ok(st) = refugio_core::status(repo, &job.name).await else {
        return false;
    };
    let at = at - chrono::Duration::milliseconds(999);
    match kind {
        TaskKind::Backup => st.newest.is_some_and(|(_, t)| t >= at),
        TaskKind::Drill => st.newest_drilled_at.is_some_and(|t| t >= at),
        TaskKind::Prune => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_are_stable_and_distinct() {
        assert_eq!(lock_key("trips"), lock_key("trips"));
        assert_ne!(lock_key("trips"), lock_key("trips-sql"));
    }
}
