//! `[agent]`: settings of the long-running agent (`refugio run`).

use std::time::Duration;

use serde::Deserialize;

pub use crate::webhook::WebhookConfig;

/// `[agent]`: settings of `refugio run`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// HTTP address of `/metrics`, `/healthz`, `/readyz`. Default
    /// `127.0.0.1:9187`; `""` turns HTTP off.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Tasks (backup, drill, prune, check of any job) running at once. Default 2.
    #[serde(default = "two")]
    pub max_concurrent_tasks: usize,
    /// On SIGTERM/SIGINT, how long running tasks get to stop cleanly
    /// (abort uploads, drop scratch databases) before the agent exits. Default 60s.
    #[serde(default = "default_shutdown", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// `/readyz` also requires every job with an RPO target to meet it. Default false.
    #[serde(default)]
    pub ready_requires_rpo: bool,
    /// Jobs SIGUSR1 (backup) and SIGUSR2 (drill) act on. Default: all.
    #[serde(default)]
    pub signal_jobs: Vec<String>,
    /// Retry of failed tasks with exponential backoff (temporary errors only).
    #[serde(default)]
    pub backoff: refugio_schedule::Backoff,
    /// How long one repository check (a listing of each job, every minute
    /// and at start) may take before it counts as failed. Default 30s.
    #[serde(default = "default_repository_timeout", with = "humantime_serde")]
    pub repository_timeout: Duration,
    /// `/readyz` turns unready once the repository has been unreachable
    /// this long (after a check passed once). Default 2m.
    #[serde(default = "default_unready_after", with = "humantime_serde")]
    pub unready_after: Duration,
    /// A read-only status page at `/` and its data at `/status.json`, on
    /// the `listen` address (beside `/metrics`). Default false: the page
    /// shows failure messages (host, database and bucket names), more than
    /// the metrics do; turn it on where that address is reachable only by
    /// the people who may see them.
    #[serde(default)]
    pub status_page: bool,
    /// JSON POST on every failed task and on the first success after a
    /// failure: `{ url = "https://…", attempts = 3, timeout = "10s" }`.
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            listen: default_listen(),
            max_concurrent_tasks: 2,
            shutdown_timeout: default_shutdown(),
            ready_requires_rpo: false,
            signal_jobs: Vec::new(),
            backoff: refugio_schedule::Backoff::default(),
            repository_timeout: default_repository_timeout(),
            unready_after: default_unready_after(),
            status_page: false,
            webhook: None,
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:9187".into()
}
fn default_shutdown() -> Duration {
    Duration::from_secs(60)
}
fn two() -> usize {
    2
}
fn default_repository_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_unready_after() -> Duration {
    Duration::from_secs(120)
}
