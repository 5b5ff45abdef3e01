//! One paginated listing of a job's prefix, summarised per backup id: what
//! prune and status decide from, without reading a manifest. A backup's
//! time is its id (the UTC start time), its drill state is in its receipts'
//! names, a pin is an object named `pinned`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use refugio_store::manifest::MANIFEST_NAME;
use refugio_store::repo::Repository;

use crate::error::Result;
use crate::pins::PIN_NAME;
use crate::receipt::ReceiptName;

/// What the listing says of one backup id.
#[derive(Debug, Default)]
pub(crate) struct Listed {
    pub committed: bool,
    pub pinned: bool,
    pub ok_receipt: bool,
    pub failed_receipt: bool,
    /// The receipts behind `ok_receipt` and `failed_receipt`: an
    /// authenticated repository believes a receipt's name only once its
    /// signature is checked ([`crate::receipt::any_authentic`]).
    pub ok_receipts: Vec<String>,
    pub failed_receipts: Vec<String>,
    /// Receipts named without their outcome (written by refugio < 0.2).
    pub legacy_receipts: Vec<String>,
    /// Every key but the manifest.
    pub others: Vec<String>,
    /// Claims of the id (`claim-…`): a running backup rewrites its own
    /// (its heartbeat).
    pub claims: Vec<String>,
    pub newest: Option<DateTime<Utc>>,
    pub newest_receipt: Option<DateTime<Utc>>,
    /// The key of that newest receipt, whatever its outcome.
    pub newest_receipt_key: Option<String>,
    /// Bytes of every object.
    pub bytes: u64,
    /// Every drill receipt: when it was written, what its name says, its key.
    pub drills: Vec<(DateTime<Utc>, ReceiptName, String)>,
}

/// What the listing saw of a physical job's WAL archive (`<job>/wal/`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WalSeen {
    pub files: u64,
    pub bytes: u64,
    /// When the newest archived object was stored: the newest point a
    /// recovery can reach.
    pub last_archived: Option<DateTime<Utc>>,
    /// The archived files themselves (for continuity).
    pub objects: Vec<crate::wal::WalObject>,
}

pub use refugio_store::repo::id_time;

/// One paginated listing of a job, summarised per backup id.
/// Also returns what the same listing saw of the WAL archive.
pub(crate) async fn list_job_and_wal(
    repo: &Repository,
    job: &str,
) -> Result<(BTreeMap<String, Listed>, WalSeen)> {
    let prefix = format!("{job}/");
    let mut wal = WalSeen::default();
    let mut listed: BTreeMap<String, Listed> = BTreeMap::new();
    let mut objects = repo.store().list(&prefix);
    while let Some(o) = objects.try_next().await? {
        let rest = o.key.strip_prefix(&prefix).unwrap_or(&o.key);
        let Some((id, name)) = rest.split_once('/') else {
            continue;
        };
        // Nor is the record of the last check.
        if id == refugio_store::repo::CHECKS_DIR {
            continue;
        }
        // The WAL archive of a physical job is not a backup id.
        if id == refugio_store::repo::WAL_DIR {
            wal.files += 1;
            wal.bytes += o.size;
            wal.last_archived = wal.last_archived.max(o.last_modified);
            wal.objects.extend(crate::wal::WalObject::from_listed(
                &o.key,
                o.size,
                o.last_modified,
            ));
            continue;
        }
        let entry = listed.entry(id.to_string()).or_default();
        entry.newest = entry.newest.max(o.last_modified);
        entry.bytes += o.size;
        if name == MANIFEST_NAME {
            entry.committed = true;
            continue;
        }
        let receipt = ReceiptName::parse(name);
        match receipt {
            _ if name == PIN_NAME => entry.pinned = true,
            Some(ReceiptName::Ok) => {
                entry.ok_receipt = true;
                entry.ok_receipts.push(o.key.clone());
            }
            Some(ReceiptName::Failed) => {
                entry.failed_receipt = true;
                entry.failed_receipts.push(o.key.clone());
            }
            Some(ReceiptName::Legacy) => entry.legacy_receipts.push(o.key.clone()),
            // Could not check: the backup stays as it was (unverified
            // unless another drill said otherwise).
            Some(ReceiptName::Inconclusive) | None => {}
        }
        if let (Some(r), Some(at)) = (receipt, o.last_modified) {
            entry.drills.push((at, r, o.key.clone()));
        }
        if receipt.is_some() && o.last_modified >= entry.newest_receipt {
            entry.newest_receipt = o.last_modified;
            entry.newest_receipt_key = Some(o.key.clone());
        }
        if name.starts_with(refugio_store::repo::CLAIM_PREFIX) {
            entry.claims.push(o.key.clone());
        }
        entry.others.push(o.key);
    }
    Ok((listed, wal))
}

/// The job's newest committed backup not dated later than `horizon` (a
/// wrong clock's backups are ignored): its id, its time and what the
/// listing says of it. The one definition [`crate::status`] and
/// [`newest_run`] share.
pub(crate) fn newest(
    listed: &BTreeMap<String, Listed>,
    horizon: DateTime<Utc>,
) -> Option<(&str, DateTime<Utc>, &Listed)> {
    listed
        .iter()
        .filter(|(_, l)| l.committed)
        .filter_map(|(id, l)| id_time(id).map(|t| (id.as_str(), t, l)))
        .filter(|(_, t, _)| *t <= horizon)
        .max_by_key(|(_, t, _)| *t)
}

/// When a job last ran, as one listing says: its newest backup's start
/// and that backup's newest drill receipt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NewestRun {
    pub backup: Option<DateTime<Utc>>,
    pub drilled: Option<DateTime<Utc>>,
}

/// [`NewestRun`] of `job` from one listing, without reading a manifest or
/// a receipt: what "did another replica already do this run?" asks.
pub async fn newest_run(repo: &Repository, job: &str, now: DateTime<Utc>) -> Result<NewestRun> {
    let (listed, _) = list_job_and_wal(repo, job).await?;
    Ok(
        newest(&listed, repo.horizon(now)).map_or_else(NewestRun::default, |(_, t, l)| NewestRun {
            backup: Some(t),
            drilled: l.newest_receipt,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_time() {
        let t = id_time("20261128T060000Z").expect("time");
        assert_eq!(t.to_rfc3339(), "2026-11-28T06:00:00+00:00");
        assert_eq!(id_time("20261128T060000Z-2"), Some(t));
        assert_eq!(id_time("manual-backup"), None);
        assert_eq!(id_time("20261399T060000Z"), None);
    }
}
