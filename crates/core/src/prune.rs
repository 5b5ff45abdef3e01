//! Prune: apply the job's retention policy, then collect garbage.
//!
//! States come from one paginated listing of the job's prefix
//! ([`crate::listing`]): receipts are named by their outcome (only receipts
//! written before that existed are fetched). Every committed manifest is
//! read, a few at a time: backups are ordered by the source server's time
//! ([`Manifest::server_time`]), not by their ids, which carry the clock of
//! whichever host wrote them (a host clock behind would make a new backup
//! sort as old, and retention would take it before its drill). A backup
//! dated later than now plus the repository's `clock_tolerance` is left
//! out of the policy altogether and reported ([`PruneReport::future`]).
//! A physical job's base backup whose WAL chain has a gap does not count
//! as verified, whatever its drills said, and the WAL before the oldest
//! kept one's start goes.
//!
//! Garbage collection never touches a running backup: an uncommitted id
//! whose claim is still beating ([`refugio_store::repo::HEARTBEAT_INTERVAL`])
//! keeps its objects and its multipart uploads whatever their age
//! ([`PruneReport::running`]); `gc_grace` has a floor ([`GC_GRACE_FLOOR`]).
//!
//! Prune plans, then acts: `plan` decides everything from one listing
//! and changes nothing (a dry run stops there); `execute` removes
//! manifests first (a batch), then those backups' artifacts, so an
//! interruption leaves orphans (no manifest) for the next run's GC, never a
//! manifest pointing at missing data. Under S3 Object Lock a backup whose
//! lock has not expired is skipped and reported with its date; a delete the
//! server refuses anyway is reported and the rest goes on.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use refugio_store::repo::Repository;
use refugio_store::retention::{self, Candidate, Decision, Policy, State};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::listing::{list_job_and_wal, Listed};
use crate::receipt;
use crate::wal_chain::BaseNeeds;
use refugio_store::manifest::Manifest;

/// Backups deleted per batch (manifests of a batch go before its
/// artifacts): 100 backups' objects fit one 1,000-key DeleteObjects.
pub const DELETE_BATCH: usize = 100;
/// Batches deleted at once.
const BATCHES_IN_FLIGHT: usize = 4;
/// Manifests read at once.
const MANIFEST_READS: usize = 32;
/// The least `gc_grace` accepted: an hour. Longer than any one request of
/// an upload can stall (S3 `operation_timeout` 2 min × `attempts` 5 with
/// backoff, by default) and than a backup of an older refugio, which does
/// not beat, needs between two stored objects; the heartbeat is what keeps
/// a running backup safe, the floor keeps a mistake in `gc_grace` (`"1s"`)
/// from turning a slow request into a lost backup.
pub const GC_GRACE_FLOOR: Duration = Duration::from_secs(3600);
/// How long prune watches a claim that looks old before calling it dead:
/// two and a half beats.
const LIVENESS_WAIT: Duration =
    Duration::from_millis(refugio_store::repo::HEARTBEAT_INTERVAL.as_millis() as u64 * 5 / 2);

/// What prune decided and did.
#[derive(Debug, Serialize)]
pub struct PruneReport {
    pub job: String,
    pub dry_run: bool,
    pub decisions: Vec<Decision>,
    pub states: BTreeMap<String, State>,
    pub deleted_backups: Vec<String>,
    /// Bytes of the backups the policy deletes (of a dry run: would
    /// delete), object-locked ones left out.
    pub frees_bytes: u64,
    /// Backups the policy would delete whose object lock has not expired.
    pub locked: Vec<LockedBackup>,
    /// Deletes the store refused or that failed; the rest went on.
    pub failed_deletes: Vec<FailedDelete>,
    /// Objects under a backup id without a manifest, older than the grace period.
    pub orphans: Vec<String>,
    /// Multipart uploads older than the grace period.
    pub stale_uploads: Vec<String>,
    /// Uncommitted backups that are running (their claim beat while prune
    /// watched): their objects and uploads were left alone, whatever
    /// their age.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub running: Vec<String>,
    /// Committed backups dated later than now plus `clock_tolerance` (a
    /// writer's clock was wrong): outside the policy, neither kept by it
    /// nor deleted; `refugio check` and the agent report them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub future: Vec<String>,
    /// Committed backups whose manifest no trusted agent key signed (an
    /// authenticated repository): outside the policy, neither counted nor
    /// deleted; `refugio check` reports them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub foreign: Vec<String>,
    /// WAL of a physical job older than the oldest kept base backup's
    /// start: no kept backup can replay it. Left out of JSON when
    /// nothing goes (a logical job).
    #[serde(skip_serializing_if = "crate::wal::WalPruned::is_empty")]
    pub wal_pruned: crate::wal::WalPruned,
    /// Gaps in a physical job's WAL archive that cut base backups: those
    /// backups count as unverified (in `states`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub wal_gaps: Vec<crate::wal_chain::WalGap>,
}

/// A backup kept past its policy because its object lock has not expired.
#[derive(Debug, Serialize)]
pub struct LockedBackup {
    pub id: String,
    pub until: DateTime<Utc>,
}

/// One delete that did not happen.
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

/// How prune runs.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// The job whose backups are pruned.
    pub job: String,
    /// The retention policy.
    pub policy: Policy,
    /// Orphans and multipart uploads older than this are collected (at
    /// least [`GC_GRACE_FLOOR`]), unless their backup is running.
    pub grace: Duration,
    /// The repository has S3 Object Lock configured: ask each doomed
    /// backup's retention before deleting it.
    pub object_lock: bool,
    /// Decide and report only.
    pub dry_run: bool,
    /// Backups deleted per batch ([`DELETE_BATCH`]).
    pub batch: usize,
    /// A physical job (so is any job with a WAL archive): base backups
    /// are judged against the archive, and it is pruned with them.
    pub physical: bool,
}

/// Runs the policy at the clock's time (and, unless `dry_run`, deletes and
/// collects garbage). Cancelling stops between requests: an interrupted
/// prune leaves only orphans, which the next one collects.
pub async fn prune(
    repo: &Repository,
    opts: &PruneOptions,
    clock: &dyn Clock,
    cancel: &CancellationToken,
) -> Result<PruneReport> {
    check_grace(&opts.job, opts.grace)?;
    tokio::select! {
        r = prune_once(repo, opts, clock.now()) => r,
        _ = cancel.cancelled() => Err(Error::Cancelled {
            what: format!("prune of job {}", opts.job),
            detail: "an interrupted prune leaves only orphans".into(),
        }),
    }
}

/// Refuses a `gc_grace` below [`GC_GRACE_FLOOR`].
pub fn check_grace(job: &str, grace: Duration) -> Result<()> {
    if grace < GC_GRACE_FLOOR {
        return Err(Error::GraceBelowFloor {
            job: job.to_string(),
            grace,
            floor: GC_GRACE_FLOOR,
        });
    }
    Ok(())
}

async fn prune_once(
    repo: &Repository,
    opts: &PruneOptions,
    now: DateTime<Utc>,
) -> Result<PruneReport> {
    let (mut report, plan) = plan(repo, opts, now).await?;
    if !opts.dry_run {
        execute(repo, &opts.job, opts.batch, plan, &mut report).await?;
    }
    Ok(report)
}

/// What prune will change, decided from one listing; the report says the
/// rest (what a dry run prints).
struct Plan {
    /// Backups to delete: the policy's, minus those still locked.
    doomed: Vec<String>,
    /// Multipart uploads to abort.
    stale: Vec<refugio_store::PendingUpload>,
    /// WAL files no kept base backup needs.
    wal_keys: Vec<String>,
    /// The listing: the objects of each doomed backup.
    listed: BTreeMap<String, Listed>,
}

/// Decides everything, changes nothing: the states and the policy's
/// decisions, garbage (orphans, stale uploads; running backups spared),
/// what object lock keeps, and the WAL no kept backup needs.
async fn plan(
    repo: &Repository,
    opts: &PruneOptions,
    now: DateTime<Utc>,
) -> Result<(PruneReport, Plan)> {
    let job = opts.job.as_str();
    let (listed, wal_seen) = list_job_and_wal(repo, job).await?;
    let physical = opts.physical || wal_seen.files > 0;
    let (manifests, foreign) = read_manifests(repo, job, &listed).await?;
    let Judged {
        mut states,
        mut candidates,
        future,
    } = judge(repo, job, &listed, &manifests, repo.horizon(now)).await?;
    let (archived, wal_gaps) = if physical {
        judge_wal(repo, job, &manifests, &mut states, &mut candidates).await?
    } else {
        Default::default()
    };
    let decisions = retention::apply(&opts.policy, &candidates, now);
    let mut report = PruneReport {
        job: job.to_string(),
        dry_run: opts.dry_run,
        decisions,
        states,
        deleted_backups: Vec::new(),
        frees_bytes: 0,
        locked: Vec::new(),
        failed_deletes: Vec::new(),
        orphans: Vec::new(),
        stale_uploads: Vec::new(),
        running: Vec::new(),
        future,
        foreign,
        wal_pruned: Default::default(),
        wal_gaps,
    };
    let cutoff = crate::gc::cutoff(now, opts.grace);
    let stale = garbage(repo, job, &listed, cutoff, &mut report).await?;
    let to_delete: Vec<String> = report
        .decisions
        .iter()
        .filter(|d| !d.keep)
        .map(|d| d.id.clone())
        .collect();
    let doomed = if opts.object_lock {
        unlocked(repo, job, to_delete, now, &mut report).await
    } else {
        to_delete
    };
    report.frees_bytes = doomed
        .iter()
        .filter_map(|id| listed.get(id))
        .map(|l| l.bytes)
        .sum();
    let kept = report
        .decisions
        .iter()
        .filter(|d| d.keep)
        .map(|d| d.id.as_str())
        .chain(report.locked.iter().map(|l| l.id.as_str()))
        .chain(report.future.iter().map(String::as_str))
        .filter_map(|id| manifests.get(id));
    let (wal_pruned, wal_keys) = crate::wal::prunable(&archived, kept);
    report.wal_pruned = wal_pruned;
    let plan = Plan {
        doomed,
        stale,
        wal_keys,
        listed,
    };
    Ok((report, plan))
}

/// The committed backups' states and the policy's candidates; backups
/// dated in the future are set apart.
struct Judged {
    states: BTreeMap<String, State>,
    candidates: Vec<Candidate>,
    future: Vec<String>,
}

/// Each committed backup's state, from its receipts' names (believed only
/// once authentic) or, for an older refugio's receipts, their content.
async fn judge(
    repo: &Repository,
    job: &str,
    listed: &BTreeMap<String, Listed>,
    manifests: &BTreeMap<String, Manifest>,
    horizon: DateTime<Utc>,
) -> Result<Judged> {
    let mut judged = Judged {
        states: BTreeMap::new(),
        candidates: Vec::new(),
        future: Vec::new(),
    };
    for (id, l) in listed.iter().filter(|(_, l)| l.committed) {
        // Deleted since the listing: nothing to decide.
        let Some(m) = manifests.get(id) else { continue };
        if m.dated_after(horizon) {
            tracing::warn!(job, backup = %id, "future-backup: dated later than now plus clock_tolerance; left out of retention");
            judged.future.push(id.clone());
            continue;
        }
        // In an authenticated repository a receipt counts only once its
        // signature holds (a forged `-failed` one must not doom a backup).
        let mut state = if receipt::any_authentic(repo, &l.ok_receipts).await? {
            State::Verified
        } else if receipt::any_authentic(repo, &l.failed_receipts).await? {
            State::Failed
        } else {
            State::Unverified
        };
        if state != State::Verified
            && !l.legacy_receipts.is_empty()
            && repo.authentication().is_none()
        {
            let verified = receipt::any_verified(repo, &l.legacy_receipts).await?;
            state = if verified {
                State::Verified
            } else {
                State::Failed
            };
        }
        judged.states.insert(id.clone(), state);
        judged.candidates.push(Candidate {
            id: id.clone(),
            time: m.server_time(),
            state,
            pinned: l.pinned,
        });
    }
    Ok(judged)
}

/// Garbage older than `cutoff`: the objects of uncommitted ids (in
/// `report.orphans`) and multipart uploads (returned, their keys in
/// `report.stale_uploads`), except those of a running backup (an id whose
/// claim looks fresh in the listing or beats while prune watches:
/// `report.running`).
async fn garbage(
    repo: &Repository,
    job: &str,
    listed: &BTreeMap<String, Listed>,
    cutoff: DateTime<Utc>,
    report: &mut PruneReport,
) -> Result<Vec<refugio_store::PendingUpload>> {
    let prefix = format!("{job}/");
    let id_of = |key: &str| {
        key.strip_prefix(&prefix)
            .and_then(|rest| rest.split_once('/'))
            .map(|(id, _)| id.to_string())
    };
    // What age alone would collect.
    let old_ids: Vec<&String> = listed
        .iter()
        .filter(|(_, l)| !l.committed && crate::gc::is_old(l.newest, cutoff))
        .map(|(id, _)| id)
        .collect();
    let old_uploads = crate::gc::stale_uploads(repo, job, cutoff).await?;
    // Of those, the ids of running backups.
    let mut suspects: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut running = std::collections::BTreeSet::new();
    for id in old_ids
        .iter()
        .map(|id| (*id).clone())
        .chain(old_uploads.iter().filter_map(|u| id_of(&u.key)))
    {
        let Some(l) = listed.get(&id) else { continue };
        if l.committed || l.claims.is_empty() {
            continue;
        }
        if l.newest.is_some_and(|t| t >= cutoff) {
            running.insert(id);
        } else {
            suspects.insert(id, l.claims.clone());
        }
    }
    running.extend(beating(repo, &suspects).await?);
    for id in &running {
        tracing::info!(job, backup = %id, "gc-skipped: the backup is running; its objects and uploads are left alone");
    }
    for id in old_ids.into_iter().filter(|id| !running.contains(*id)) {
        if let Some(l) = listed.get(id) {
            report.orphans.extend(l.others.iter().cloned());
        }
    }
    let stale: Vec<_> = old_uploads
        .into_iter()
        .filter(|u| id_of(&u.key).is_none_or(|id| !running.contains(&id)))
        .collect();
    report.stale_uploads = stale.iter().map(|u| u.key.clone()).collect();
    report.running = running.into_iter().collect();
    Ok(stale)
}

/// Of the backups to delete, those whose object lock has expired (the
/// store says until when: one HEAD per backup; a manifest is the last
/// object written, so its lock is the latest of its backup). The others
/// go to `report.locked`, or to `report.failed_deletes` when the store
/// could not say.
async fn unlocked(
    repo: &Repository,
    job: &str,
    to_delete: Vec<String>,
    now: DateTime<Utc>,
    report: &mut PruneReport,
) -> Vec<String> {
    let store = repo.store();
    let mut locks = futures::stream::iter(to_delete)
        .map(|id| async move {
            let r = store.retention(&Repository::manifest_key(job, &id)).await;
            (id, r)
        })
        .buffered(16);
    let mut doomed = Vec::new();
    while let Some((id, r)) = locks.next().await {
        match r {
            Ok(Some(r)) if r.until > now => report.locked.push(LockedBackup { id, until: r.until }),
            Ok(_) => doomed.push(id),
            Err(e) => report
                .failed_deletes
                .push(failed(Repository::manifest_key(job, &id), &e)),
        }
    }
    doomed
}

/// Carries out `plan`: doomed backups in batches, a few at a time (within
/// each, manifests first), then orphans, stale uploads and WAL. A refused
/// delete is reported and the rest goes on.
async fn execute(
    repo: &Repository,
    job: &str,
    batch: usize,
    plan: Plan,
    report: &mut PruneReport,
) -> Result<()> {
    let listed = &plan.listed;
    let chunks: Vec<Vec<String>> = plan
        .doomed
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
    for u in &plan.stale {
        if let Err(e) = repo.store().abort_multipart(u).await {
            report.failed_deletes.push(failed(u.key.clone(), &e));
        }
    }
    for (key, e) in repo.store().delete_many(&plan.wal_keys).await? {
        report.failed_deletes.push(failed(key, &e));
    }
    if !plan.wal_keys.is_empty() {
        tracing::info!(job, files = plan.wal_keys.len(), before = ?report.wal_pruned.before, "wal-pruned");
    }
    Ok(())
}

/// A physical job's manifests and archive, and the gaps that cut its
/// base backups: a base backup a gap cuts counts as unverified, whatever
/// its drills said. Not verified: it cannot be recovered past the gap.
/// Not failed either: its drill failed on the archive, not on its data,
/// and it still recovers to the points before the gap; so it is kept
/// while no newer base backup is verified, like one awaiting its drill
/// (`refugio pin` keeps it longer). An unreadable
/// manifest stops the prune: without its start LSN no WAL may go.
async fn judge_wal(
    repo: &Repository,
    job: &str,
    manifests: &BTreeMap<String, Manifest>,
    states: &mut BTreeMap<String, State>,
    candidates: &mut [Candidate],
) -> Result<(Vec<crate::wal::WalObject>, Vec<crate::wal_chain::WalGap>)> {
    // Foreign files (not signed by a trusted server key) neither close a
    // gap nor go with retention.
    let (archived, foreign) = crate::wal::authentic(repo, crate::wal::list(repo, job).await?);
    if !foreign.is_empty() {
        tracing::warn!(job, files = foreign.len(), first = %foreign[0].0.key, "foreign-wal: files not signed by a trusted server key are ignored (refugio check names them)");
    }
    let bases: Vec<BaseNeeds> = manifests.values().filter_map(BaseNeeds::of).collect();
    let chain = crate::wal_chain::continuity(&archived, &bases);
    let gaps: Vec<_> = chain
        .gaps
        .into_iter()
        .filter(|g| !g.backups.is_empty())
        .collect();
    for g in &gaps {
        for id in &g.backups {
            if matches!(states.get(id), Some(State::Verified | State::Failed)) {
                tracing::warn!(job, backup = %id, timeline = g.timeline, from = %g.from, to = %g.to,
                    pending = g.pending, "wal-gap: the base backup counts as unverified");
                states.insert(id.clone(), State::Unverified);
            }
        }
    }
    for c in candidates.iter_mut() {
        if let Some(s) = states.get(&c.id) {
            c.state = *s;
        }
    }
    Ok((archived, gaps))
}

/// Every committed backup's manifest, a few at a time, and the ids of
/// those the repository's authentication refuses (foreign: left alone).
/// One that cannot be read otherwise stops the prune: without its time
/// (and a base backup's start LSN) nothing may be decided.
async fn read_manifests(
    repo: &Repository,
    job: &str,
    listed: &BTreeMap<String, Listed>,
) -> Result<(BTreeMap<String, Manifest>, Vec<String>)> {
    let ids: Vec<String> = listed
        .iter()
        .filter(|(_, l)| l.committed)
        .map(|(id, _)| id.clone())
        .collect();
    let mut reads = futures::stream::iter(ids)
        .map(|id| async move {
            let m = repo.read_manifest(job, &id).await;
            (id, m)
        })
        .buffer_unordered(MANIFEST_READS);
    let mut manifests = BTreeMap::new();
    let mut foreign = Vec::new();
    while let Some((id, m)) = reads.next().await {
        match m {
            Ok(Some(m)) => {
                manifests.insert(id, m);
            }
            Ok(None) => {}
            Err(refugio_store::Error::Unauthenticated { reason, .. }) => {
                tracing::warn!(job, backup = %id, reason, "foreign-backup: its manifest is not signed by a trusted agent key; left out of retention (neither counted nor deleted)");
                foreign.push(id);
            }
            Err(e) => return Err(e.into()),
        }
    }
    foreign.sort();
    Ok((manifests, foreign))
}

/// Largest claim read: a claim holds a line and a beat number.
const MAX_CLAIM_BYTES: u64 = 4096;

/// The ids among `suspects` (id → its claims) whose claim changes, or is
/// gone or unreadable, within [`LIVENESS_WAIT`]: their backup is running
/// (or has just committed or given up: either way not garbage yet, and
/// the next prune sees which). Needs no clock: a claim is read twice.
async fn beating(
    repo: &Repository,
    suspects: &BTreeMap<String, Vec<String>>,
) -> Result<Vec<String>> {
    if suspects.is_empty() {
        return Ok(Vec::new());
    }
    let read = || async move {
        let mut seen = BTreeMap::new();
        for key in suspects.values().flatten() {
            seen.insert(
                key.clone(),
                repo.read_small(key, MAX_CLAIM_BYTES).await.ok().flatten(),
            );
        }
        seen
    };
    let before = read().await;
    tokio::time::sleep(LIVENESS_WAIT).await;
    let after = read().await;
    Ok(suspects
        .iter()
        .filter(|(_, keys)| {
            keys.iter().any(|k| {
                let (b, a) = (
                    before.get(k).cloned().flatten(),
                    after.get(k).cloned().flatten(),
                );
                b.is_none() || a.is_none() || b != a
            })
        })
        .map(|(id, _)| id.clone())
        .collect())
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
            tracing::warn!(job, backup = %id, error = %refugio_print::chain(e), "backup-delete-refused");
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
        error: refugio_print::chain(e),
    }
}

#[cfg(test)]
#[path = "prune_tests.rs"]
mod tests;
