//! Several replicas, one job: "did another replica already do this run?"
//! (the advisory lock itself is in crate::lock).

use chrono::{DateTime, Utc};
use refugio_schedule::TaskKind;
use refugio_store::repo::Repository;

use crate::job::Job;

/// Whether another replica already did the run scheduled at `at`: a
/// backup started at or after it, or a drill receipt of the newest
/// backup written after it.
pub(super) async fn already_done(
    repo: &Repository,
    job: &Job,
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
        TaskKind::Prune | TaskKind::Restore | TaskKind::Check => false,
    }
}
