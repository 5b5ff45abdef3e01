//! A running backup's heartbeat: its claim object rewritten every
//! [`HEARTBEAT_INTERVAL`], so prune's garbage collection leaves its claim
//! and uploads alone however old they are (a CLI backup holds no lock
//! prune could ask, and an agent's lock lives on a database server prune
//! may not reach; the repository is what both share).

use refugio_store::repo::{Claim, Repository, HEARTBEAT_INTERVAL};
use tokio::task::JoinHandle;

/// Beats while it lives; [`Heartbeat::stop`] ends it before the claim goes.
pub(super) struct Heartbeat {
    task: Option<JoinHandle<()>>,
}

impl Heartbeat {
    /// Starts beating for `claim` (the claim itself is beat 0).
    pub(super) fn start(repo: &Repository, claim: &Claim) -> Self {
        let (repo, claim) = (repo.clone(), claim.clone());
        let task = tokio::spawn(async move {
            let mut n = 0u64;
            loop {
                tokio::time::sleep(HEARTBEAT_INTERVAL).await;
                n += 1;
                // A missed beat is retried at the next: prune waits for
                // several before it calls a claim dead.
                if let Err(e) = repo.beat(&claim, n).await {
                    tracing::warn!(backup = %claim.id, error = %refugio_print::chain(&e), "heartbeat-missed");
                }
            }
        });
        Heartbeat { task: Some(task) }
    }

    /// Stops beating; after it returns no beat is in flight, so the
    /// claim can be deleted without a late beat writing it again.
    pub(super) async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
