//! What the repository holds of a job, from one listing: for metrics,
//! `/readyz` and the agent's decisions (catch-up, "another replica did it").

use chrono::{DateTime, Utc};
use refugio_store::repo::Repository;

use crate::error::Result;
use crate::listing::{id_time, list_job_and_wal, WalSeen};
use crate::receipt;

/// A job's backups as one listing shows them.
#[derive(Debug, Default, Clone)]
pub struct JobStatus {
    /// Committed backups.
    pub backups: u64,
    /// Bytes of the committed backups' objects.
    pub bytes: u64,
    /// Newest committed backup: id and start time.
    pub newest: Option<(String, DateTime<Utc>)>,
    /// Recovery point of the newest backup a drill verified: the time of
    /// its data (a lagging standby's backup is older than its start).
    /// None for a physical job whose newest verified base backup a WAL
    /// gap cuts (so is every older one).
    pub newest_verified: Option<DateTime<Utc>>,
    /// The id of that backup.
    pub newest_verified_id: Option<String>,
    /// When the newest committed backup's latest drill receipt was written.
    pub newest_drilled_at: Option<DateTime<Utc>>,
    /// A physical job's WAL archive, from the same listing.
    pub wal: WalSeen,
    /// Committed backups whose id is later than now plus the repository's
    /// `clock_tolerance` (a writer's clock was wrong): counted in `backups`,
    /// never `newest` nor verified, so scheduling and catch-up ignore them.
    pub future: Vec<String>,
}

/// The job's status from one listing at this host's time; receipts
/// without an outcome in their name (older refugio) are read.
pub async fn status(repo: &Repository, job: &str) -> Result<JobStatus> {
    status_at(repo, job, Utc::now()).await
}

/// [`status`] as if it were `now`: backups dated later than now plus the
/// repository's `clock_tolerance` are listed in [`JobStatus::future`] and
/// ignored otherwise.
pub async fn status_at(repo: &Repository, job: &str, now: DateTime<Utc>) -> Result<JobStatus> {
    let horizon = repo.horizon(now);
    let (listed, wal) = list_job_and_wal(repo, job).await?;
    let mut st = JobStatus {
        wal,
        ..JobStatus::default()
    };
    // Newest first: once a verified backup is found, older ones need no
    // receipt reads.
    for (id, l) in listed.iter().rev().filter(|(_, l)| l.committed) {
        st.backups += 1;
        st.bytes += l.bytes;
        let Some(time) = id_time(id) else { continue };
        if time > horizon {
            st.future.push(id.clone());
            continue;
        }
        if st.newest.as_ref().is_none_or(|(_, t)| time > *t) {
            st.newest = Some((id.clone(), time));
            st.newest_drilled_at = l.newest_receipt;
        }
        // Old receipts are fetched only when they could move the answer
        // (the agent calls this every minute).
        let newer = st.newest_verified.is_none_or(|t| time > t);
        let verified = (newer && receipt::any_authentic(repo, &l.ok_receipts).await?)
            || (newer
                && !l.legacy_receipts.is_empty()
                && receipt::any_verified(repo, &l.legacy_receipts).await?);
        if verified && newer {
            st.newest_verified = Some(time);
            st.newest_verified_id = Some(id.clone());
        }
    }
    // Its manifest knows the data's time (one read, only of that backup).
    if let Some(id) = st.newest_verified_id.clone() {
        let manifest = match repo.read_manifest(job, &id).await {
            // A forged receipt beside a forged manifest proves nothing.
            Err(refugio_store::Error::Unauthenticated { reason, .. }) => {
                tracing::warn!(job, backup = %id, reason, "foreign-backup: its manifest is not signed by a trusted agent key; not counted as verified");
                st.newest_verified = None;
                st.newest_verified_id = None;
                None
            }
            other => other?,
        };
        if let Some(m) = manifest {
            st.newest_verified = Some(m.recovery_point());
            // A base backup a WAL gap cuts is not verified any more, nor
            // is any older one (the gap cuts every base backup before it).
            if let Some(needs) = crate::wal_chain::BaseNeeds::of(&m) {
                let chain = crate::wal_chain::continuity(&st.wal.objects, &[needs]);
                let cut = chain.cutting(&id).next().cloned();
                if let Some(g) = cut {
                    tracing::warn!(job, backup = %id, timeline = g.timeline, from = %g.from, to = %g.to,
                        "wal-gap: no base backup counts as verified");
                    st.newest_verified = None;
                    st.newest_verified_id = None;
                }
            }
        }
    }
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use refugio_store::PutOptions;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_backup_dated_in_the_future_is_reported_not_newest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = refugio_store::fs::FsStore::new(dir.path()).expect("store");
        let repo = Repository::new(Arc::new(store));
        for id in ["20261128T060000Z", "20261128T070400Z", "29991231T000000Z"] {
            let key = Repository::manifest_key("app", id);
            repo.store()
                .put(&key, Bytes::from_static(b"{}"), PutOptions::default())
                .await
                .expect("put");
        }
        let now = id_time("20261128T070000Z").expect("time");
        // 07:04 is within the 5-minute tolerance; 2999 is not.
        let st = status_at(&repo, "app", now).await.expect("status");
        assert_eq!(st.future, vec!["29991231T000000Z".to_string()]);
        assert_eq!(
            st.newest.map(|(id, _)| id).as_deref(),
            Some("20261128T070400Z")
        );
        assert_eq!(st.backups, 3);
        let strict = repo.clone().with_clock_tolerance(std::time::Duration::ZERO);
        let st = status_at(&strict, "app", now).await.expect("status");
        assert_eq!(st.future.len(), 2, "{:?}", st.future);
        assert_eq!(
            st.newest.map(|(id, _)| id).as_deref(),
            Some("20261128T060000Z")
        );
    }
}
