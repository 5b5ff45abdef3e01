//! The agent's HTTP endpoint: `/metrics` (OpenMetrics text), `/healthz`
//! (the process answers) and `/readyz` (the scheduler runs, the repository
//! answered its last check and, when required, every job meets its RPO);
//! with `[agent] status_page = true` also `/` (the status page) and
//! `/status.json` (its data, as `refugio status --json` prints it).
//! Every other path is 404; other methods on these paths are 405.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::page::Board;

/// Content type of the exposition `prometheus_client::encoding::text`
/// writes: OpenMetrics 1.0 text (it ends with `# EOF` and names counter
/// families without `_total`), which Prometheus negotiates and parses.
const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Readiness inputs, set by the daemon; share it as `Arc<Health>`.
#[derive(Debug)]
pub struct Health {
    require_rpo: bool,
    /// How long the repository may be unreachable, after it was reachable,
    /// before the agent turns unready.
    unready_after: std::time::Duration,
    state: Mutex<HealthState>,
}

#[derive(Debug, Default)]
struct HealthState {
    scheduler_running: bool,
    /// `None` until the first repository check has finished.
    repository: Option<Result<(), String>>,
    /// Whether a repository check ever passed.
    reachable_once: bool,
    /// Since when checks fail (None while they pass).
    failing_since: Option<std::time::Instant>,
    /// Each job's newest verified recovery point and RPO target, sorted
    /// for stable output. The age is taken when `/readyz` is asked, so it
    /// keeps growing while the repository cannot be listed.
    rpo: BTreeMap<String, (Option<DateTime<Utc>>, std::time::Duration)>,
}

impl Health {
    /// Not ready until the scheduler runs and a repository check passed.
    /// With `require_rpo`, a job breaching its RPO target also makes the
    /// agent not ready.
    pub fn new(require_rpo: bool) -> Self {
        Self {
            require_rpo,
            unready_after: std::time::Duration::ZERO,
            state: Mutex::new(HealthState::default()),
        }
    }

    /// Stays ready while the repository has been unreachable for less than
    /// `grace` (after a check passed once), so one slow listing does not
    /// flap `/readyz`.
    pub fn with_unready_after(mut self, grace: std::time::Duration) -> Self {
        self.unready_after = grace;
        self
    }

    /// Whether the scheduler loop is running (false again when stopping).
    pub fn set_scheduler_running(&self, running: bool) {
        self.state().scheduler_running = running;
    }

    /// The result of the last repository check. The error text is shown
    /// on `/readyz` as is, so it must not carry secrets (caller's duty).
    pub fn set_repository(&self, result: Result<(), String>) {
        let mut state = self.state();
        match &result {
            Ok(()) => {
                state.reachable_once = true;
                state.failing_since = None;
            }
            Err(_) => {
                state
                    .failing_since
                    .get_or_insert_with(std::time::Instant::now);
            }
        }
        state.repository = Some(result);
    }

    /// A job's newest verified recovery point (`None`: none) and its RPO
    /// target; the target is met while the point is at most `target` old.
    pub fn set_rpo(
        &self,
        job: &str,
        recovery_point: Option<DateTime<Utc>>,
        target: std::time::Duration,
    ) {
        self.state()
            .rpo
            .insert(job.to_owned(), (recovery_point, target));
    }

    /// Drops a job a config reload removed.
    pub fn forget_job(&self, job: &str) {
        self.state().rpo.remove(job);
    }

    /// `Ok` when ready, else the reasons, one line each.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let state = self.state();
        let mut reasons = Vec::new();
        if !state.scheduler_running {
            reasons.push("scheduler not running".to_owned());
        }
        match &state.repository {
            None => reasons.push("repository not checked yet".to_owned()),
            Some(Err(e)) => {
                let within_grace = state.reachable_once
                    && state
                        .failing_since
                        .is_some_and(|t| t.elapsed() < self.unready_after);
                if !within_grace {
                    reasons.push(format!("repository unreachable: {}", one_line(e)))
                }
            }
            Some(Ok(())) => {}
        }
        if self.require_rpo {
            let now = Utc::now();
            for (job, (point, target)) in &state.rpo {
                let met = point.is_some_and(|t| (now - t).to_std().unwrap_or_default() <= *target);
                if !met {
                    reasons.push(format!("job {job}: RPO target breached"));
                }
            }
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HealthState> {
        // The state is plain flags; a panic elsewhere cannot leave it torn.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Keeps the one-reason-per-line format when an error chain spans lines.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    /// The status page's data; None: the page is off.
    board: Option<Arc<Board>>,
}

/// Serves the endpoints on `listener` until `shutdown` is cancelled, then
/// stops accepting and returns once open requests have been answered.
/// A client that keeps a request open delays the return; the caller
/// bounds the wait (as with every task at shutdown).
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    board: Option<Arc<Board>>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let state = AppState {
        metrics,
        health,
        board,
    };
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

fn router(state: AppState) -> Router {
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    let router = match state.board {
        Some(_) => router
            .route("/", get(page))
            .route("/status.json", get(status_json)),
        None => router,
    };
    router.with_state(state)
}

/// Headers of the page and its data: never cached (a stale "all green" is
/// worse than none), no script nor anything fetched from elsewhere.
const PAGE_HEADERS: [(header::HeaderName, &str); 4] = [
    (header::CACHE_CONTROL, "no-store"),
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    ),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
];

async fn page(State(state): State<AppState>) -> Response {
    let Some(board) = &state.board else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let html = crate::page::render(&board.snapshot(), Utc::now());
    (
        PAGE_HEADERS,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        html,
    )
        .into_response()
}

async fn status_json(State(state): State<AppState>) -> Response {
    let Some(board) = &state.board else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match serde_json::to_string_pretty(&board.reports()) {
        Ok(json) => (
            PAGE_HEADERS,
            [(header::CONTENT_TYPE, "application/json")],
            json,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
        state.metrics.render(),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.health.readiness() {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(reasons) => (StatusCode::SERVICE_UNAVAILABLE, reasons.join("\n")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    struct Reply {
        status: u16,
        headers: String,
        body: String,
    }

    /// One HTTP/1.1 request over a fresh connection, read to the end.
    async fn request(addr: std::net::SocketAddr, method: &str, path: &str) -> Reply {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await.expect("write");
        let mut raw = String::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut raw))
            .await
            .expect("response within 10 s")
            .expect("read");
        let (head, body) = raw.split_once("\r\n\r\n").expect("header end");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status code");
        Reply {
            status,
            headers: head.to_ascii_lowercase(),
            body: body.to_owned(),
        }
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> Reply {
        request(addr, "GET", path).await
    }

    struct Server {
        addr: std::net::SocketAddr,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<std::io::Result<()>>,
    }

    async fn start(require_rpo: bool) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Health::new(require_rpo));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(
            listener,
            metrics.clone(),
            health.clone(),
            None,
            shutdown.clone(),
        ));
        Server {
            addr,
            metrics,
            health,
            shutdown,
            task,
        }
    }

    #[tokio::test]
    async fn metrics_healthz_and_unknown_paths() {
        let s = start(false).await;
        s.metrics.register_job("trips", None, None);
        s.metrics.backup_failed("trips");

        let r = get(s.addr, "/metrics").await;
        assert_eq!(r.status, 200);
        assert!(
            r.headers.contains(
                "content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"
            ),
            "{}",
            r.headers
        );
        assert!(r
            .body
            .lines()
            .any(|l| l == r#"refugio_backup_runs_total{backup_job="trips",result="failure"} 1"#));
        assert!(r.body.ends_with("# EOF\n"));

        let r = get(s.addr, "/healthz").await;
        assert_eq!((r.status, r.body.as_str()), (200, "ok"));

        for path in ["/", "/nope", "/metrics/extra", "/healthz/"] {
            assert_eq!(get(s.addr, path).await.status, 404, "{path}");
        }
        assert_eq!(request(s.addr, "POST", "/metrics").await.status, 405);
        s.shutdown.cancel();
    }

    #[tokio::test]
    async fn readiness_transitions() {
        let s = start(false).await;
        let r = get(s.addr, "/readyz").await;
        assert_eq!(r.status, 503);
        assert_eq!(r.body, "scheduler not running\nrepository not checked yet");

        s.health.set_scheduler_running(true);
        s.health
            .set_repository(Err("bucket backups:\n  connection refused".to_owned()));
        let r = get(s.addr, "/readyz").await;
        assert_eq!(r.status, 503);
        assert_eq!(
            r.body,
            "repository unreachable: bucket backups: connection refused"
        );

        s.health.set_repository(Ok(()));
        // Without require_rpo a breached RPO does not make the agent unready.
        s.health.set_rpo("trips", None, HOUR);
        let r = get(s.addr, "/readyz").await;
        assert_eq!((r.status, r.body.as_str()), (200, "ready"));
        assert_eq!(s.health.readiness(), Ok(()));

        s.health.set_scheduler_running(false);
        let r = get(s.addr, "/readyz").await;
        assert_eq!((r.status, r.body.as_str()), (503, "scheduler not running"));
        s.shutdown.cancel();
    }

    #[test]
    fn a_short_outage_after_success_keeps_the_agent_ready() {
        let h = Health::new(false).with_unready_after(Duration::from_secs(3600));
        h.set_scheduler_running(true);
        h.set_repository(Err("timed out".into()));
        assert!(h.readiness().is_err(), "never reachable yet: not ready");
        h.set_repository(Ok(()));
        h.set_repository(Err("timed out".into()));
        assert_eq!(h.readiness(), Ok(()), "within the grace period");
        let h = Health::new(false).with_unready_after(Duration::ZERO);
        h.set_scheduler_running(true);
        h.set_repository(Ok(()));
        h.set_repository(Err("timed out".into()));
        assert_eq!(
            h.readiness(),
            Err(vec!["repository unreachable: timed out".to_string()])
        );
    }

    #[tokio::test]
    async fn rpo_reasons_only_when_required() {
        let s = start(true).await;
        s.health.set_scheduler_running(true);
        s.health.set_repository(Ok(()));
        s.health.set_rpo("users", Some(Utc::now()), HOUR);
        assert_eq!(get(s.addr, "/readyz").await.status, 200);

        s.health.set_rpo("trips", None, HOUR);
        // Measured fresh two hours ago, and not since: breached now.
        let two_hours_ago = Utc::now() - chrono::Duration::hours(2);
        s.health.set_rpo("audit", Some(two_hours_ago), HOUR);
        let r = get(s.addr, "/readyz").await;
        assert_eq!(r.status, 503);
        assert_eq!(
            r.body,
            "job audit: RPO target breached\njob trips: RPO target breached"
        );

        s.health.set_rpo("trips", Some(Utc::now()), HOUR);
        s.health.forget_job("audit");
        let r = get(s.addr, "/readyz").await;
        assert_eq!((r.status, r.body.as_str()), (200, "ready"));
        s.shutdown.cancel();
    }

    #[tokio::test]
    async fn cancelling_the_token_stops_serve() {
        let s = start(false).await;
        assert_eq!(get(s.addr, "/healthz").await.status, 200);
        assert!(!s.task.is_finished());
        s.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(10), s.task)
            .await
            .expect("serve returns within 10 s of cancel")
            .expect("serve task not panicked");
        assert!(result.is_ok(), "{result:?}");
        // The listener is closed: new connections are refused.
        assert!(tokio::net::TcpStream::connect(s.addr).await.is_err());
    }
}
