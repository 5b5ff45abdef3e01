//! What `refugio list` shows: every committed backup with its newest drill.

use refugio_store::manifest::Manifest;
use refugio_store::repo::Repository;

use crate::error::Result;
use crate::receipt::{self, Receipt};

/// One committed backup and the newest drill of it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub manifest: Manifest,
    pub last_drill: Option<Receipt>,
    /// Pinned: kept whatever the retention policy says.
    pub pinned: bool,
}

/// The backups of `job` (or of every job in the repository), newest first
/// by the server-side time; those dated in the future are listed too (so
/// an operator sees them).
pub async fn list(repo: &Repository, job: Option<&str>) -> Result<Vec<Entry>> {
    let jobs = match job {
        Some(j) => vec![j.to_string()],
        None => repo.jobs().await?,
    };
    let mut manifests: Vec<Manifest> = Vec::new();
    let mut receipts: Vec<(String, String, Receipt)> = Vec::new();
    let mut pinned: Vec<(String, String)> = Vec::new();
    for j in &jobs {
        let (listed, _) = crate::listing::list_job_and_wal(repo, j).await?;
        pinned.extend(
            listed
                .into_iter()
                .filter(|(_, l)| l.pinned)
                .map(|(id, _)| (j.clone(), id)),
        );
        manifests.extend(repo.manifests_all(j).await?);
        for (id, r) in receipt::read_all(repo, j).await? {
            receipts.push((j.clone(), id, r));
        }
    }
    manifests.sort_by(|x, y| y.cmp_time(x));
    Ok(manifests
        .into_iter()
        .map(|m| {
            let last_drill = receipts
                .iter()
                .filter(|(j, id, _)| *j == m.job && *id == m.backup_id)
                .map(|(_, _, r)| r)
                .max_by_key(|r| r.started_at)
                .cloned();
            Entry {
                pinned: pinned
                    .iter()
                    .any(|(j, id)| *j == m.job && *id == m.backup_id),
                manifest: m,
                last_drill,
            }
        })
        .collect())
}
