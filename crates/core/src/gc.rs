//! Garbage, defined once for `check` (which reports it) and `prune`
//! (which collects it).
//!
//! - The **cutoff** is the operation's time minus the job's `gc_grace`.
//! - An **orphan** is an object under a backup id that has no manifest,
//!   when the id's newest object is older than the cutoff (a younger one
//!   is a backup in progress). A receipt under such an id is also a
//!   *receipt without manifest*: `check` names those apart (at any age),
//!   `prune` collects them with the id's other objects.
//! - A **stale upload** is a multipart upload initiated before the cutoff.
//!
//! Prune, which deletes, also spares an id whose claim still beats while
//! it watches (a running backup whose objects all look old); a check, which
//! only reports, does not wait for that.

use chrono::{DateTime, Utc};
use refugio_store::repo::Repository;
use refugio_store::PendingUpload;

use crate::error::Result;

/// Where garbage begins: `now` minus the grace period (a grace longer
/// than the calendar reaches: the beginning of time, nothing is old).
pub(crate) fn cutoff(now: DateTime<Utc>, grace: std::time::Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(grace)
        .ok()
        .and_then(|grace| now.checked_sub_signed(grace))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Whether an uncommitted id whose newest object is from `newest` is
/// garbage at `cutoff` (an id with no time is not).
pub(crate) fn is_old(newest: Option<DateTime<Utc>>, cutoff: DateTime<Utc>) -> bool {
    newest.is_some_and(|t| t < cutoff)
}

/// The job's multipart uploads initiated before `cutoff`.
pub(crate) async fn stale_uploads(
    repo: &Repository,
    job: &str,
    cutoff: DateTime<Utc>,
) -> Result<Vec<PendingUpload>> {
    Ok(repo
        .store()
        .list_multipart_uploads(&format!("{job}/"))
        .await?
        .into_iter()
        .filter(|u| is_old(u.initiated, cutoff))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_is_strictly_before_the_cutoff_and_needs_a_time() {
        let now = Utc::now();
        let cut = cutoff(now, std::time::Duration::from_secs(3600));
        assert_eq!(cut, now - chrono::Duration::hours(1));
        assert!(is_old(Some(cut - chrono::Duration::seconds(1)), cut));
        assert!(!is_old(Some(cut), cut));
        assert!(!is_old(None, cut));
        // A grace too long for the calendar: nothing is old (it panicked
        // in `now - grace` before).
        assert!(!is_old(Some(now), cutoff(now, std::time::Duration::MAX)));
    }
}
