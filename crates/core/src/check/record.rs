//! The agent's record of its last repository check of a job
//! (`<job>/checks/last.json`, signed like a receipt in an authenticated
//! repository), so `refugio status` can say when the repository was last
//! checked and what was found, from the repository alone. One object per
//! job, overwritten: it does not grow.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use refugio_store::auth::Role;
use refugio_store::repo::{Repository, CHECKS_DIR};
use serde::{Deserialize, Serialize};

use super::{CheckOutcome, CheckReport};
use crate::error::Result;

/// Its largest acceptable size when read.
const MAX_BYTES: u64 = 64 * 1024;

/// What a check found, in short.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastCheck {
    pub job: String,
    pub outcome: CheckOutcome,
    pub finished_at: DateTime<Utc>,
    pub backups: u64,
    pub artifacts: u64,
    /// Artifacts missing or damaged, unreadable manifests, WAL gaps.
    pub damaged: u64,
    /// What was re-read (`none`, `all`, a backup, `N/M`).
    pub read_scope: String,
}

fn key(job: &str) -> String {
    format!("{job}/{CHECKS_DIR}/last.json")
}

/// Records `report` as the job's last check.
pub async fn record(repo: &Repository, report: &CheckReport) -> Result<()> {
    let last = LastCheck {
        job: report.job.clone(),
        outcome: report.outcome,
        finished_at: report.finished_at,
        backups: report.backups,
        artifacts: report.artifacts,
        damaged: report.damage_count(),
        read_scope: report.read.scope.clone(),
    };
    let body = serde_json::to_vec_pretty(&last).unwrap_or_default();
    repo.put_signed(&key(&report.job), Bytes::from(body), Role::Agent)
        .await?;
    Ok(())
}

/// The job's last recorded check; None when there is none, or it is not
/// readable or (in an authenticated repository) not signed by an agent.
pub async fn last(repo: &Repository, job: &str) -> Result<Option<LastCheck>> {
    let key = key(job);
    let Some(bytes) = repo.read_small(&key, MAX_BYTES).await? else {
        return Ok(None);
    };
    match repo.authenticate(&key, &bytes, Role::Agent).await {
        Ok(()) => {}
        Err(refugio_store::Error::Unauthenticated { reason, .. }) => {
            tracing::warn!(
                key,
                reason,
                "foreign-check-record: not signed by a trusted agent key; ignored"
            );
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    }
    let record: Option<LastCheck> = serde_json::from_slice(&bytes)
        .inspect_err(|e| tracing::warn!(key, error = %e, "check-record-unreadable"))
        .ok();
    // Another job's record, copied here, says nothing of this one.
    Ok(record.filter(|r| {
        let ours = r.job == job;
        if !ours {
            tracing::warn!(key, of = %r.job, "check-record-of-another-job: ignored");
        }
        ours
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_last_check_is_recorded_and_read_back_and_is_no_backup() {
        let (_dir, repo) = crate::fixtures::repo();
        assert_eq!(last(&repo, "app").await.expect("read"), None);
        let at = crate::fixtures::id_time("20261128T060000Z");
        let report = CheckReport {
            backups: 3,
            artifacts: 6,
            ..CheckReport::new("app", at, "none".into())
        };
        record(&repo, &report).await.expect("record");
        let got = last(&repo, "app").await.expect("read").expect("a record");
        assert_eq!(
            (got.outcome, got.backups, got.damaged),
            (CheckOutcome::Clean, 3, 0)
        );
        assert_eq!(got.finished_at, at);
        // Copied under another job, it is not that job's record.
        let copied = repo.read_small(&key("app"), MAX_BYTES).await.expect("read");
        let copied = copied.expect("the record");
        repo.store()
            .put(&key("web"), copied, refugio_store::PutOptions::default())
            .await
            .expect("copy");
        assert_eq!(last(&repo, "web").await.expect("read"), None);
        // Neither a backup id for status and prune, nor an orphan.
        let st = crate::status::status(&repo, "app").await.expect("status");
        assert_eq!(st.backups, 0);
    }
}
