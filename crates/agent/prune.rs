//! `refugio prune`: apply the job's retention policy, then collect garbage.
//!
//! Everything is decided from one paginated listing of the job's prefix:
//! a backup's time is its id (the UTC start time), its drill state is in
//! its receipts' names (`verify-<time>-ok.json` / `-failed.json`), a pin is
//! an object named `pinned`. No manifest is read, so 10,000 backups cost
//! about ten list requests, not 10,000 GETs; only receipts written before
//! outcome-named receipts existed are fetched.
//!
//! Deletion removes manifests first (a batch), then those backups'
//! artifacts, so an interruption leaves orphans (no manifest) for the next
//! run's GC, never a manifest pointing at missing data. Under S3 Object
//! Lock a backup whose lock has not expired is skipped and reported with
//! its date; a delete the server refuses anyway is reported and the rest
//! goes on.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use chrono::{DateTime, NaiveDateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use refugio_store::manifest::MANIFEST_NAME;
use refugio_store::repo::Repository;
use refugio_store::retention::{self, Candidate, Decision, Policy, State};
use serde::Serialize;

use crate::config::ObjectLockConfig;

/// Object name that pins a backup.
pub const PIN_NAME: &str = "pinned";
/// Backups deleted per batch (manifests of a batch go before its
/// artifacts): 100 backups' objects fit one 1,000-key DeleteObjects.
pub const DELETE_BATCH: usize = 100;
/// Batches deleted at once.
const BATCHES_IN_FLIGHT: usize = 4;

/// What prune decided and did.
#[derive(Debug, Serialize)]
pub struct PruneReport {
    pub job: String,
    pub dry_run: bool,
    pub decisions: Vec<Decision>,
    pub states: BTreeMap<String, State>,
    pub deleted_backups: Vec<String>,
    /// Backups the policy would delete whose object lock has not expired.
    pub locked: Vec<LockedBackup>,
    /// Deletes the store refused or that failed; the rest went on.
    pub failed_deletes: Vec<FailedDelete>,
    /// Objects under a backup id without a manifest, older than the grace period.
    pub orphans: Vec<String>,
    /// Multipart uploads older than the grace period.
    pub stale_uploads: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct LockedBackup {
    pub id: String,
    pub until: DateTime<Utc>,
}

#[derive(Debug, Serialize)]
pub struct FailedDelete {
    pub key: String,
    /// The store refused because of object lock.
    pub locked: bool,
    pub error: String,
}

impl PruneReport {
    /// Whether a delete failed for a reason other than object lock.
    pub fn has_errors(&self) -> bool {
        self.failed_deletes.iter().any(|f| !f.locked)
    }
}

/// Pins or unpins a committed backup.
pub async fn set_pin(repo: &Repository, job: &str, id: &str, pin: bool) -> Result<()> {
    let m = repo.resolve(job, id).await?;
    let key = Repository::key(job, &m.backup_id, PIN_NAME);
    if pin {
        let body = serde_json::json!({ "pinned_at": Utc::now() }).to_string();
        repo.store().put(&key, Bytes::from(body)).await?;
    } else {
        repo.store().delete(&key).await?;
    }
    Ok(())
}

/// What the listing says of one backup id.
#[derive(Debug, Default)]
struct Listed {
    committed: bool,
    pinned: bool,
    ok_receipt: bool,
    failed_receipt: bool,
    /// Receipts named without their outcome (written by refugio < 0.2).
    legacy_receipts: Vec<String>,
    /// Every key but the manifest.
    others: Vec<String>,
    newest: Option<DateTime<Utc>>,
    newest_receipt: Option<DateTime<Utc>>,
    /// Bytes of every object.
    bytes: u64,
}

/// The start time encoded in a backup id (`20261128T060000Z[-n]`).
pub fn id_time(id: &str) -> Option<DateTime<Utc>> {
    let stamp = id.get(..16)?;
    NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ")
        .ok()
        .map(|t| t.and_utc())
}

/// One paginated listing of a job, summarised per backup id.
async fn list_job(repo: &Repository, job: &str) -> Result<BTreeMap<String, Listed>> {
    let prefix = format!("{job}/");
    let mut listed: BTreeMap<String, Listed> = BTreeMap::new();
    let mut objects = repo.store().list(&prefix);
    while let Some(o) = objects.try_next().await? {
        let rest = o.key.strip_prefix(&prefix).unwrap_or(&o.key);
        let Some((id, name)) = rest.split_once('/') else {
            continue;
        };
        let entry = listed.entry(id.to_string()).or_default();
        entry.newest = entry.newest.max(o.last_modified);
        entry.bytes += o.size;
        if name == MANIFEST_NAME {
            entry.committed = true;
            continue;
        }
        if name == PIN_NAME {
            entry.pinned = true;
        } else if name.starts_with("verify-") && name.ends_with("-ok.json") {
            entry.ok_receipt = true;
        } else if name.starts_with("verify-") && name.ends_with("-failed.json") {
            entry.failed_receipt = true;
        } else if name.starts_with("verify-") && name.ends_with(".json") {
            entry.legacy_receipts.push(o.key.clone());
        }
        if name.starts_with("verify-") {
            entry.newest_receipt = entry.newest_receipt.max(o.last_modified);
        }
        entry.others.push(o.key);
    }
    Ok(listed)
}

/// What the repository holds of a job, from one listing (for metrics and
/// the agent's decisions).
#[derive(Debug, Default, Clone)]
pub struct JobStatus {
    /// Committed backups.
    pub backups: u64,
    /// Bytes of the committed backups' objects.
    pub bytes: u64,
    /// Newest committed backup: id and start time.
    pub newest: Option<(String, DateTime<Utc>)>,
    /// Start time of the newest backup a drill verified.
    pub newest_verified: Option<DateTime<Utc>>,
    /// When the newest committed backup's latest drill receipt was written.
    pub newest_drilled_at: Option<DateTime<Utc>>,
}

/// The job's status from one listing; receipts without an outcome in
/// their name (older refugio) are read.
pub async fn status(repo: &Repository, job: &str) -> Result<JobStatus> {
    let listed = list_job(repo, job).await?;
    let mut st = JobStatus::default();
    // Newest first: once a verified backup is found, older ones need no
    // receipt reads.
    for (id, l) in listed.iter().rev().filter(|(_, l)| l.committed) {
        st.backups += 1;
        st.bytes += l.bytes;
        let Some(time) = id_time(id) else { continue };
        if st.newest.as_ref().is_none_or(|(_, t)| time > *t) {
            st.newest = Some((id.clone(), time));
            st.newest_drilled_at = l.newest_receipt;
        }
        // Old receipts are fetched only when they could move the answer
        // (the agent calls this every minute).
        let newer = st.newest_verified.is_none_or(|t| time > t);
        let verified = l.ok_receipt
            || (newer
                && !l.legacy_receipts.is_empty()
                && legacy_verified(repo, &l.legacy_receipts).await?);
        if verified && newer {
            st.newest_verified = Some(time);
        }
    }
    Ok(st)
}

/// How prune runs.
#[derive(Debug, Clone, Copy)]
pub struct PruneOptions<'a> {
    /// Orphans and multipart uploads older than this are collected.
    pub grace: Duration,
    /// The repository's object lock, if configured.
    pub lock: Option<&'a ObjectLockConfig>,
    /// Decide and report only.
    pub dry_run: bool,
    /// The time decisions are made for.
    pub now: DateTime<Utc>,
    /// Backups deleted per batch ([`DELETE_BATCH`]).
    pub batch: usize,
}

/// Runs the policy (and, unless `dry_run`, deletes and collects garbage).
pub async fn prune(
    repo: &Repository,
    job: &str,
    policy: &Policy,
    opts: &PruneOptions<'_>,
) -> Result<PruneReport> {
    let PruneOptions {
        grace,
        lock,
        dry_run,
        now,
        batch,
    } = *opts;
    let prefix = format!("{job}/");
    let listed = list_job(repo, job).await?;

    let mut states = BTreeMap::new();
    let mut candidates = Vec::new();
    for (id, l) in listed.iter().filter(|(_, l)| l.committed) {
        let mut state = if l.ok_receipt {
            State::Verified
        } else if l.failed_receipt {
            State::Failed
        } else {
            State::Unverified
        };
        if state != State::Verified && !l.legacy_receipts.is_empty() {
            let verified = legacy_verified(repo, &l.legacy_receipts).await?;
            state = if verified {
                State::Verified
            } else {
                State::Failed
            };
        }
        let time = match id_time(id) {
            Some(t) => t,
            // Not an id refugio made: the manifest knows the time.
            None => match repo.read_manifest(job, id).await? {
                Some(m) => m.snapshot_at,
                None => continue,
            },
        };
        states.insert(id.clone(), state);
        candidates.push(Candidate {
            id: id.clone(),
            time,
            state,
            pinned: l.pinned,
        });
    }
    let decisions = retention::apply(policy, &candidates, now);

    let mut report = PruneReport {
        job: job.to_string(),
        dry_run,
        decisions,
        states,
        deleted_backups: Vec::new(),
        locked: Vec::new(),
        failed_deletes: Vec::new(),
        orphans: Vec::new(),
        stale_uploads: Vec::new(),
    };
    let cutoff = now - chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    for l in listed.values().filter(|l| !l.committed) {
        if l.newest.is_some_and(|t| t < cutoff) {
            report.orphans.extend(l.others.iter().cloned());
        }
    }
    let uploads = repo.store().list_multipart_uploads(&prefix).await?;
    let stale: Vec<_> = uploads
        .into_iter()
        .filter(|u| u.initiated.is_some_and(|t| t < cutoff))
        .collect();
    report.stale_uploads = stale.iter().map(|u| u.key.clone()).collect();

    // Backups to delete, minus those still under object lock. The store
    // says until when (one HEAD per backup to delete, only with object
    // lock configured); a manifest is the last object written, so its lock
    // is the latest of its backup.
    let to_delete: Vec<String> = report
        .decisions
        .iter()
        .filter(|d| !d.keep)
        .map(|d| d.id.clone())
        .collect();
    let mut doomed = Vec::new();
    if lock.is_some() {
        let store = repo.store();
        let mut locks = futures::stream::iter(to_delete)
            .map(|id| async move {
                let r = store.retention(&Repository::manifest_key(job, &id)).await;
                (id, r)
            })
            .buffered(16);
        while let Some((id, r)) = locks.next().await {
            match r {
                Ok(Some(r)) if r.until > now => {
                    report.locked.push(LockedBackup { id, until: r.until })
                }
                Ok(_) => doomed.push(id),
                Err(e) => report
                    .failed_deletes
                    .push(failed(Repository::manifest_key(job, &id), &e)),
            }
        }
    } else {
        doomed = to_delete;
    }
    if dry_run {
        return Ok(report);
    }

    // Batches run a few at a time; within each, manifests go first.
    let listed = &listed;
    let chunks: Vec<Vec<String>> = doomed
        .chunks(batch.max(1))
        .map(<[String]>::to_vec)
        .collect();
    let mut batches = futures::stream::iter(chunks)
        .map(|batch| async move { delete_batch(repo, job, &batch, listed).await })
        .buffer_unordered(BATCHES_IN_FLIGHT);
    while let Some(done) = batches.next().await {
        let (deleted, failures) = done?;
        report.deleted_backups.extend(deleted);
        report.failed_deletes.extend(failures);
    }
    drop(batches);
    report.deleted_backups.sort_by(|a, b| b.cmp(a));
    for (key, e) in repo.store().delete_many(&report.orphans).await? {
        report.failed_deletes.push(failed(key, &e));
    }
    for u in &stale {
        if let Err(e) = repo.store().abort_multipart(u).await {
            report.failed_deletes.push(failed(u.key.clone(), &e));
        }
    }
    Ok(report)
}

/// Deletes one batch of backups: their manifests (one request), then the
/// artifacts of those whose manifest is gone. Returns (deleted ids, failures).
async fn delete_batch(
    repo: &Repository,
    job: &str,
    batch: &[String],
    listed: &BTreeMap<String, Listed>,
) -> Result<(Vec<String>, Vec<FailedDelete>)> {
    let mut deleted = Vec::new();
    let mut failures = Vec::new();
    // Manifests first: from here on these backups do not exist for readers.
    let manifests: Vec<String> = batch
        .iter()
        .map(|id| Repository::manifest_key(job, id))
        .collect();
    let refused = repo.store().delete_many(&manifests).await?;
    let mut artifacts = Vec::new();
    for id in batch {
        let key = Repository::manifest_key(job, id);
        if let Some((_, e)) = refused.iter().find(|(k, _)| *k == key) {
            tracing::warn!(job, backup = %id, error = %e, "backup-delete-refused");
            failures.push(failed(key, e));
            continue;
        }
        artifacts.extend(listed.get(id).into_iter().flat_map(|l| l.others.clone()));
        tracing::info!(job, backup = %id, "backup-deleted");
        deleted.push(id.clone());
    }
    // A refusal here leaves an orphan: GC retries it next time.
    for (key, e) in repo.store().delete_many(&artifacts).await? {
        failures.push(failed(key, &e));
    }
    Ok((deleted, failures))
}

fn failed(key: String, e: &refugio_store::Error) -> FailedDelete {
    FailedDelete {
        key,
        locked: matches!(e, refugio_store::Error::Locked { .. }),
        error: e.to_string(),
    }
}

/// Whether any of these outcome-less receipts says "verified".
async fn legacy_verified(repo: &Repository, keys: &[String]) -> Result<bool> {
    use tokio::io::AsyncReadExt;
    for key in keys {
        let mut r = repo.store().get(key).await?;
        let mut buf = Vec::new();
        (&mut r)
            .take(16 * 1024 * 1024)
            .read_to_end(&mut buf)
            .await?;
        let verified = serde_json::from_slice::<serde_json::Value>(&buf)
            .ok()
            .and_then(|v| v.get("verified").and_then(|x| x.as_bool()))
            .unwrap_or(false);
        if verified {
            return Ok(true);
        }
    }
    Ok(false)
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
