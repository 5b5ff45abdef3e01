//! What the repository holds of a job, from one listing: for metrics,
//! `/readyz` and the agent's decisions (catch-up, "another replica did it"),
//! and, against the job's targets, for `refugio status` ([`report`]).

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
    /// The newest point a restore of a verified backup reaches: of a
    /// logical job, the newest verified backup's data time; of a physical
    /// job, the newest archived WAL while the archive runs unbroken from
    /// the newest verified base backup (else None, as `newest_verified`).
    /// The RPO is its age.
    pub recovery_point: Option<DateTime<Utc>>,
    /// Committed backups that are pinned.
    pub pinned: Vec<String>,
    /// The key of the newest drill receipt of any committed backup.
    pub last_drill: Option<(String, DateTime<Utc>)>,
    /// Committed backups whose id is later than now plus the repository's
    /// `clock_tolerance` (a writer's clock was wrong): counted in `backups`,
    /// never `newest` nor verified, so scheduling and catch-up ignore them.
    pub future: Vec<String>,
    /// The last days' backups and drills, from the same listing.
    pub history: crate::history::History,
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
    st.history = crate::history::of(&listed, &st.wal, now);
    if let Some((id, time, l)) = crate::listing::newest(&listed, horizon) {
        st.newest = Some((id.to_string(), time));
        st.newest_drilled_at = l.newest_receipt;
    }
    // Newest first: once a verified backup is found, older ones need no
    // receipt reads.
    for (id, l) in listed.iter().rev().filter(|(_, l)| l.committed) {
        st.backups += 1;
        st.bytes += l.bytes;
        if l.pinned {
            st.pinned.push(id.clone());
        }
        if let (Some(key), Some(at)) = (&l.newest_receipt_key, l.newest_receipt) {
            if st.last_drill.as_ref().is_none_or(|(_, t)| at > *t) {
                st.last_drill = Some((key.clone(), at));
            }
        }
        let Some(time) = id_time(id) else { continue };
        if time > horizon {
            st.future.push(id.clone());
            continue;
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
            st.recovery_point = st.newest_verified;
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
                    st.recovery_point = None;
                } else {
                    // Unbroken from the base backup: a recovery replays to
                    // the newest archived WAL.
                    st.recovery_point = st.recovery_point.max(st.wal.last_archived);
                }
            }
        }
    }
    Ok(st)
}

/// The targets a job's status is judged against.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Targets {
    pub rpo: Option<std::time::Duration>,
    pub rto: Option<std::time::Duration>,
}

/// What `refugio status --json` says of one job (the agent's
/// `/status.json` says the same): its backups, what a restore would reach
/// and how long it took the last time, against the job's targets.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StatusReport {
    pub job: String,
    /// `logical` or `physical` (the config's, else the newest backup's);
    /// None: unknown (no backup and no config).
    pub kind: Option<crate::JobKind>,
    /// Committed backups and the bytes of their objects.
    pub backups: u64,
    pub bytes: u64,
    pub last_backup: Option<LastBackup>,
    /// The newest backup a drill verified.
    pub newest_verified: Option<String>,
    /// What a restore of it reaches: its data's time, or for a physical
    /// job the newest archived WAL while the archive is unbroken.
    pub recovery_point: Option<DateTime<Utc>>,
    /// The recovery point's age against the RPO target.
    pub rpo: Objective,
    pub last_drill: Option<LastDrill>,
    /// The last drill's measured RTO against the RTO target.
    pub rto: Objective,
    pub pinned: Vec<String>,
    /// The agent's last repository check (None: none recorded).
    pub last_check: Option<crate::check::record::LastCheck>,
    /// A physical job's WAL archive (None: it has none).
    pub wal: Option<WalRange>,
    /// Backups dated later than now plus the clock tolerance: ignored.
    pub future: Vec<String>,
}

/// The newest committed backup.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LastBackup {
    pub id: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Bytes stored for it (its artifacts).
    pub stored_bytes: Option<u64>,
    pub age_seconds: i64,
}

/// The newest drill of any committed backup.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LastDrill {
    pub backup_id: String,
    pub finished_at: DateTime<Utc>,
    /// `passed`, `failed` or `inconclusive`.
    pub outcome: &'static str,
    pub failures: Vec<String>,
}

/// A measured figure against its target.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Objective {
    pub seconds: Option<f64>,
    pub target_seconds: Option<f64>,
    /// None without a target; false with a target and nothing measured.
    pub met: Option<bool>,
}

impl Objective {
    fn of(seconds: Option<f64>, target: Option<std::time::Duration>) -> Objective {
        let target_seconds = target.map(|t| t.as_secs_f64());
        Objective {
            seconds,
            target_seconds,
            met: target_seconds.map(|t| seconds.is_some_and(|s| s <= t)),
        }
    }
}

/// A physical job's WAL archive as the listing saw it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WalRange {
    pub files: u64,
    pub bytes: u64,
    /// The oldest and newest archived segment.
    pub oldest: Option<String>,
    pub newest: Option<String>,
    pub last_archived: Option<DateTime<Utc>>,
    /// How long ago the newest file was archived.
    pub lag_seconds: Option<i64>,
}

impl StatusReport {
    /// Whether a target is missed (RPO or RTO).
    pub fn misses_a_target(&self) -> bool {
        self.rpo.met == Some(false) || self.rto.met == Some(false)
    }
}

/// The status of `job` at `now` against `targets`; `kind` is the
/// config's, when there is one. Reads one listing, the newest backup's
/// manifest and the newest drill's receipt.
pub async fn report(
    repo: &Repository,
    job: &str,
    kind: Option<crate::JobKind>,
    targets: Targets,
    now: DateTime<Utc>,
) -> Result<StatusReport> {
    let st = status_at(repo, job, now).await?;
    report_of(repo, job, kind, targets, now, &st).await
}

/// [`report`] from a status already read (the agent's, every minute): the
/// newest manifest, the last drill's receipt and the last check's record
/// are read; the listing is not.
pub async fn report_of(
    repo: &Repository,
    job: &str,
    kind: Option<crate::JobKind>,
    targets: Targets,
    now: DateTime<Utc>,
    st: &JobStatus,
) -> Result<StatusReport> {
    let newest = match &st.newest {
        // A manifest no trusted key signed says nothing (logged by the read).
        Some((id, _)) => match repo.read_manifest(job, id).await {
            Err(refugio_store::Error::Unauthenticated { .. }) => None,
            other => other?,
        },
        None => None,
    };
    let last_backup = st.newest.as_ref().map(|(id, started)| LastBackup {
        id: id.clone(),
        started_at: *started,
        finished_at: newest.as_ref().map(|m| m.finished_at),
        stored_bytes: newest
            .as_ref()
            .map(|m| m.artifacts.iter().map(|a| a.stored_size).sum()),
        age_seconds: (now - *started).num_seconds(),
    });
    let drill = match &st.last_drill {
        Some((key, _)) => receipt::read(repo, key).await?,
        None => None,
    };
    let last_check = crate::check::record::last(repo, job).await?;
    let age = |t: DateTime<Utc>| (now - t).num_milliseconds() as f64 / 1000.0;
    let segments = || {
        st.wal
            .objects
            .iter()
            .filter(|o| o.name.kind == refugio_dump::wal::WalKind::Segment)
            .map(|o| &o.name.name)
    };
    Ok(StatusReport {
        job: job.to_string(),
        kind: kind.or_else(|| {
            newest.as_ref().map(|m| match m.physical {
                Some(_) => crate::JobKind::Physical,
                None => crate::JobKind::Logical,
            })
        }),
        backups: st.backups,
        bytes: st.bytes,
        last_backup,
        newest_verified: st.newest_verified_id.clone(),
        recovery_point: st.recovery_point,
        rpo: Objective::of(st.recovery_point.map(age), targets.rpo),
        rto: Objective::of(
            drill.as_ref().and_then(|r| r.rto.measured_seconds),
            targets.rto,
        ),
        last_drill: drill.map(|r| LastDrill {
            outcome: r.outcome().as_str(),
            backup_id: r.backup_id,
            finished_at: r.finished_at,
            failures: r.failures,
        }),
        pinned: st.pinned.clone(),
        last_check,
        wal: (st.wal.files > 0).then(|| WalRange {
            files: st.wal.files,
            bytes: st.wal.bytes,
            oldest: segments().min().cloned(),
            newest: segments().max().cloned(),
            last_archived: st.wal.last_archived,
            lag_seconds: st.wal.last_archived.map(|t| (now - t).num_seconds()),
        }),
        future: st.future.clone(),
    })
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
