//! Failure and recovery notifications: a JSON POST to the configured URL,
//! retried with a short backoff. A webhook that fails is logged and
//! counted, never allowed to fail or delay the task it reports on.
//!
//! The URL often carries a token (Slack, ntfy, Teams): it is never logged;
//! messages name the host only, and reqwest's errors are stripped of it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// `webhook = { url = "https://…", attempts = 3, timeout = "10s" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// http:// or https:// URL; may carry a token (it is never logged).
    pub url: WebhookUrl,
    /// Delivery attempts. Default 3.
    #[serde(default = "three")]
    pub attempts: u32,
    /// Timeout of one attempt. Default 10s.
    #[serde(default = "ten_seconds", with = "humantime_serde")]
    pub timeout: Duration,
}

/// A webhook's URL, which may carry a token: `Debug` shows its scheme,
/// host and port only.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct WebhookUrl(String);

impl std::fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&redacted(&self.0), f)
    }
}

impl std::ops::Deref for WebhookUrl {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for WebhookUrl {
    fn from(s: &str) -> Self {
        WebhookUrl(s.to_string())
    }
}

/// A webhook URL for Debug output: scheme, host and port; the rest (path,
/// query, userinfo), where tokens live, is `***`.
fn redacted(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            format!("{}://{}{port}/***", u.scheme(), u.host_str().unwrap_or(""))
        }
        Err(_) => "***".to_string(),
    }
}

fn three() -> u32 {
    3
}
fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}

/// What the webhook receives.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Event {
    /// `failure` or `recovery`.
    pub event: &'static str,
    pub job: String,
    /// `backup`, `drill`, `prune`, `check` or `restore` (`restore_on_signal`).
    pub task: String,
    /// Why the task ran: `schedule`, `signal`, `catch-up`, `after-backup`.
    pub reason: String,
    /// The backup made or drilled, when known.
    pub backup_id: Option<String>,
    /// The error, for failures (never contains a password).
    pub error: Option<String>,
    /// For drills: `passed`, `failed` (the backup is bad) or
    /// `inconclusive` (it could not be checked); for checks: `clean`,
    /// `damaged` or `inconclusive`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    pub at: DateTime<Utc>,
    /// Host name of the agent that sends it.
    pub agent: String,
    /// A whole-server job's backup: each database's stored bytes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<DatabaseSize>,
}

/// One database of a whole-server backup, in a webhook event.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DatabaseSize {
    pub name: String,
    pub stored_bytes: u64,
}

/// A configured webhook.
pub struct Webhook {
    client: reqwest::Client,
    url: reqwest::Url,
    attempts: u32,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &redacted(self.url.as_str()))
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

impl Webhook {
    pub fn new(cfg: &WebhookConfig) -> Result<Webhook> {
        let url = reqwest::Url::parse(&cfg.url)
            .map_err(|e| anyhow::anyhow!("agent.webhook.url is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            bail!("agent.webhook.url: only http:// and https:// URLs with a host are supported");
        }
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .user_agent(concat!("refugio/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the webhook HTTP client")?;
        Ok(Webhook {
            client,
            url,
            attempts: cfg.attempts.max(1),
        })
    }

    /// The host, for messages (the URL itself may hold a token).
    pub fn host(&self) -> &str {
        self.url.host_str().unwrap_or("?")
    }

    /// Posts `event`; retries (1 s, 2 s, 4 s…) on transport errors and
    /// non-2xx answers. Returns whether it was delivered.
    pub async fn send(&self, event: &Event) -> bool {
        for attempt in 1..=self.attempts {
            let result = self.client.post(self.url.clone()).json(event).send().await;
            let problem = match result {
                Ok(r) if r.status().is_success() => {
                    tracing::info!(host = self.host(), event = event.event, job = %event.job,
                        task = %event.task, "webhook-sent");
                    return true;
                }
                Ok(r) => format!("HTTP {}", r.status()),
                Err(e) => refugio_print::chain(&e.without_url()),
            };
            tracing::warn!(host = self.host(), attempt, attempts = self.attempts, error = %problem,
                "webhook-failed");
            if attempt < self.attempts {
                tokio::time::sleep(Duration::from_secs(1 << (attempt - 1).min(5))).await;
            }
        }
        false
    }
}

/// Last outcome of each job's task: turns outcomes into events.
#[derive(Debug, Default)]
pub struct Outcomes {
    last: Mutex<HashMap<(String, String), bool>>,
}

impl Outcomes {
    /// Records an outcome; `failure` for every failed run, `recovery` for
    /// the first success after a failure, nothing otherwise.
    pub fn record(&self, job: &str, task: &str, ok: bool) -> Option<&'static str> {
        let mut last = match self.last.lock() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        let before = last.insert((job.to_string(), task.to_string()), ok);
        match (before, ok) {
            (_, false) => Some("failure"),
            (Some(false), true) => Some("recovery"),
            _ => None,
        }
    }
}

pub use refugio_core::host::hostname;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_database_sizes_only_for_whole_server_backups() {
        let mut e = Event {
            event: "recovery",
            job: "all".into(),
            task: "backup".into(),
            reason: "schedule".into(),
            backup_id: Some("20261201T060000Z".into()),
            error: None,
            outcome: None,
            at: Utc::now(),
            agent: "h".into(),
            databases: Vec::new(),
        };
        let v = serde_json::to_value(&e).expect("json");
        assert!(v.get("databases").is_none(), "{v}");
        e.databases = vec![DatabaseSize {
            name: "café trips".into(),
            stored_bytes: 42,
        }];
        let v = serde_json::to_value(&e).expect("json");
        assert_eq!(v["databases"][0]["name"], "café trips");
        assert_eq!(v["databases"][0]["stored_bytes"], 42);
    }

    #[test]
    fn failures_and_recoveries() {
        let o = Outcomes::default();
        assert_eq!(o.record("a", "backup", true), None);
        assert_eq!(o.record("a", "backup", false), Some("failure"));
        assert_eq!(o.record("a", "backup", false), Some("failure"));
        assert_eq!(o.record("a", "drill", true), None, "tasks are separate");
        assert_eq!(o.record("a", "backup", true), Some("recovery"));
        assert_eq!(o.record("a", "backup", true), None);
        assert_eq!(o.record("b", "backup", false), Some("failure"));
    }

    #[test]
    fn urls_are_checked() {
        let cfg = |url: &str| WebhookConfig {
            url: url.into(),
            attempts: 3,
            timeout: Duration::from_secs(1),
        };
        assert!(Webhook::new(&cfg("ftp://x/y")).is_err());
        assert!(Webhook::new(&cfg("not a url")).is_err());
        let w = Webhook::new(&cfg("https://hooks.example.com/T0K3N")).expect("valid");
        assert_eq!(w.host(), "hooks.example.com");
        assert!(!format!("{w:?}").is_empty());
    }

    /// The token in a webhook URL (path, query or userinfo) is not in the
    /// Debug output of the config or of the webhook built from it.
    #[test]
    fn debug_output_hides_the_token() {
        for url in [
            "https://hooks.example.com/services/T0K3N",
            "https://ntfy.example.com:8443/topic?auth=T0K3N",
            "https://user:T0K3N@hooks.example.com/x",
        ] {
            let cfg = WebhookConfig {
                url: url.into(),
                attempts: 3,
                timeout: Duration::from_secs(1),
            };
            let text = format!("{cfg:?}");
            assert!(!text.contains("T0K3N"), "{text}");
            assert!(text.contains("example.com"), "{text}");
            let text = format!("{:?}", Webhook::new(&cfg).expect("valid"));
            assert!(!text.contains("T0K3N"), "{text}");
            assert!(text.contains("example.com"), "{text}");
        }
        let text = format!(
            "{:?}",
            WebhookConfig {
                url: "not a url T0K3N".into(),
                attempts: 1,
                timeout: Duration::from_secs(1),
            }
        );
        assert!(!text.contains("T0K3N"), "{text}");
    }

    #[tokio::test]
    async fn an_unreachable_webhook_gives_up_quietly() {
        // A port nothing listens on: refused at once, never panics.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port");
        let w = Webhook::new(&WebhookConfig {
            url: format!("http://127.0.0.1:{port}/hook?token=SECRET")
                .as_str()
                .into(),
            attempts: 1,
            timeout: Duration::from_secs(2),
        })
        .expect("valid");
        let event = Event {
            event: "failure",
            job: "a".into(),
            task: "backup".into(),
            reason: "schedule".into(),
            backup_id: None,
            error: Some("x".into()),
            outcome: None,
            at: Utc::now(),
            agent: hostname(),
            databases: Vec::new(),
        };
        assert!(!w.send(&event).await);
    }
}
