//! `refugio prune`: apply the job's retention policy, then collect garbage.
//! Deletion removes the manifest first, then the artifacts, so an
//! interruption leaves orphans (no manifest) for the next run's GC, never a
//! manifest pointing at missing data.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use refugio_store::manifest::MANIFEST_NAME;
use refugio_store::repo::Repository;
use refugio_store::retention::{self, Candidate, Decision, Policy, State};
use serde::Serialize;

/// Object name that pins a backup.
pub const PIN_NAME: &str = "pinned";

/// What prune decided and did.
#[derive(Debug, Serialize)]
pub struct PruneReport {
    pub job: String,
    pub dry_run: bool,
    pub decisions: Vec<Decision>,
    pub states: BTreeMap<String, State>,
    pub deleted_backups: Vec<String>,
    /// Objects under a backup id without a manifest, older than the grace period.
    pub orphans: Vec<String>,
    /// Multipart uploads older than the grace period.
    pub stale_uploads: Vec<String>,
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

/// Runs the policy (and, unless `dry_run`, deletes and collects garbage).
pub async fn prune(
    repo: &Repository,
    job: &str,
    policy: &Policy,
    grace: Duration,
    dry_run: bool,
    now: DateTime<Utc>,
) -> Result<PruneReport> {
    let manifests = repo.manifests(job).await?;
    let receipts = refugio_verify::drill::receipts(repo, job).await?;
    // One listing gives pins, objects per backup and their ages.
    let prefix = format!("{job}/");
    let objects: Vec<refugio_store::ObjectMeta> = repo.store().list(&prefix).try_collect().await?;
    let mut pinned = HashSet::new();
    let mut by_backup: BTreeMap<String, Vec<&refugio_store::ObjectMeta>> = BTreeMap::new();
    for o in &objects {
        let rest = o.key.strip_prefix(&prefix).unwrap_or(&o.key);
        if let Some((id, name)) = rest.split_once('/') {
            if name == PIN_NAME {
                pinned.insert(id.to_string());
            }
            by_backup.entry(id.to_string()).or_default().push(o);
        }
    }
    let mut states = BTreeMap::new();
    let candidates: Vec<Candidate> = manifests
        .iter()
        .map(|m| {
            let mine: Vec<_> = receipts
                .iter()
                .filter(|(id, _)| *id == m.backup_id)
                .collect();
            let state = if mine.iter().any(|(_, r)| r.verified) {
                State::Verified
            } else if mine.is_empty() {
                State::Unverified
            } else {
                State::Failed
            };
            states.insert(m.backup_id.clone(), state);
            Candidate {
                id: m.backup_id.clone(),
                time: m.snapshot_at,
                state,
                pinned: pinned.contains(&m.backup_id),
            }
        })
        .collect();
    let decisions = retention::apply(policy, &candidates, now);

    let mut report = PruneReport {
        job: job.to_string(),
        dry_run,
        decisions,
        states,
        deleted_backups: Vec::new(),
        orphans: Vec::new(),
        stale_uploads: Vec::new(),
    };
    let committed: HashSet<&str> = manifests.iter().map(|m| m.backup_id.as_str()).collect();
    let cutoff = now - chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    for (id, objs) in &by_backup {
        if committed.contains(id.as_str()) {
            continue;
        }
        let newest = objs.iter().filter_map(|o| o.last_modified).max();
        if newest.is_some_and(|t| t < cutoff) {
            report.orphans.extend(objs.iter().map(|o| o.key.clone()));
        }
    }
    let uploads = repo.store().list_multipart_uploads(&prefix).await?;
    let stale: Vec<_> = uploads
        .into_iter()
        .filter(|u| u.initiated.is_some_and(|t| t < cutoff))
        .collect();
    report.stale_uploads = stale.iter().map(|u| u.key.clone()).collect();
    if dry_run {
        return Ok(report);
    }

    for d in report.decisions.iter().filter(|d| !d.keep) {
        // Manifest first: from here on the backup does not exist for readers.
        repo.store()
            .delete(&Repository::manifest_key(job, &d.id))
            .await?;
        for o in by_backup.get(&d.id).into_iter().flatten() {
            if !o.key.ends_with(&format!("/{MANIFEST_NAME}")) {
                repo.store().delete(&o.key).await?;
            }
        }
        tracing::info!(job, backup = %d.id, "backup-deleted");
        report.deleted_backups.push(d.id.clone());
    }
    for key in &report.orphans {
        repo.store().delete(key).await?;
    }
    for u in &stale {
        repo.store().abort_multipart(u).await?;
    }
    Ok(report)
}
