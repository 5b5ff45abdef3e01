//! `refugio run`: the long-running agent. Backs up, drills, prunes and checks each
//! job on its schedule (crates/schedule), answers signals, serves
//! `/metrics`, `/healthz`, `/readyz`, and tells systemd when it is ready.
//!
//! - A job's task never overlaps itself (in-process guard); a global
//!   semaphore bounds concurrent tasks.
//! - Several replicas may run against one repository: every task takes a
//!   PostgreSQL session advisory lock on the job's source first, and a
//!   scheduled run that finds the work already done by another replica
//!   (a backup or receipt newer than the fire time) skips.
//! - The agent is stateless: catch-up at start reads the newest backup from
//!   the repository.
//! - SIGUSR1 backs up, SIGUSR2 drills (the jobs of `agent.signal_jobs`, or
//!   all), SIGHUP reloads the config (a bad one is logged and ignored),
//!   SIGTERM/SIGINT stop: running tasks are cancelled (uploads aborted,
//!   nothing committed, scratch databases dropped) within
//!   `agent.shutdown_timeout`, then the agent exits 0.

mod agent;
mod outcome;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use refugio_schedule::{Fire, TaskKind};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::http::{self, Health};
use crate::metrics::Metrics;
use crate::signals::Stop;
use agent::Agent;

/// Why a SIGHUP's reload did not swap a new scheduler in.
enum Reload {
    /// The new file is bad: the running configuration stays.
    Rejected(anyhow::Error),
    /// The new configuration is in force, its schedules are not.
    Scheduler(anyhow::Error),
}

type ReloadResult =
    std::result::Result<(refugio_schedule::Scheduler, mpsc::Receiver<Fire>), Reload>;

/// Runs until SIGTERM/SIGINT.
pub async fn run(path: PathBuf, cfg: Config) -> Result<ExitCode> {
    if cfg.jobs.is_empty() {
        bail!(
            "config file {}: no [[jobs]]: the agent would have nothing to do",
            path.display()
        );
    }
    let metrics = Arc::new(Metrics::new());
    let repo = crate::repo::open_observed(&cfg, None, Some(metrics.retry_hook())).await?;
    let health = Arc::new(
        Health::new(cfg.agent.ready_requires_rpo).with_unready_after(cfg.agent.unready_after),
    );
    let (own_tx, mut own_rx) = mpsc::channel::<Fire>(refugio_schedule::FIRE_CHANNEL_CAPACITY);
    let agent = Arc::new(Agent::new(
        &cfg,
        repo,
        Arc::clone(&metrics),
        Arc::clone(&health),
        own_tx,
    ));
    let http_stop = CancellationToken::new();
    agent.post_jobs();
    let board = cfg.agent.status_page.then(|| Arc::clone(&agent.board));
    let http_task = serve_http(&cfg.agent.listen, &metrics, &health, board, &http_stop).await?;

    // Signals are installed before READY, so a USR1 right after start is
    // never the default action (which would kill the process).
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut stop = Stop::install()?;

    let (mut scheduler, mut fires) = agent.start().await?;
    health.set_scheduler_running(true);
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    tracing::info!(jobs = cfg.jobs.len(), "agent-ready");
    // Watchdog pings come from the main loop itself: a loop that hangs
    // stops pinging and systemd restarts the agent.
    let mut watchdog = tokio::time::interval(
        sd_notify::watchdog_enabled().map_or(Duration::from_secs(3600), |period| period / 2),
    );
    let watchdog_on = sd_notify::watchdog_enabled().is_some();
    // The repository is listed every minute, beside the loop.
    let mut refresh = tokio::time::interval(Duration::from_secs(60));
    refresh.tick().await;
    let mut checking: Option<tokio::task::JoinHandle<()>> = None;
    let mut reloading: Option<tokio::task::JoinHandle<ReloadResult>> = None;

    loop {
        tokio::select! {
            Some(fire) = fires.recv() => agent.handle(fire),
            Some(fire) = own_rx.recv() => agent.handle(fire),
            _ = usr1.recv() => agent.on_signal(TaskKind::Backup, "SIGUSR1").await,
            _ = usr2.recv() => agent.on_signal(TaskKind::Drill, "SIGUSR2").await,
            // The reload (which lists the repository) runs beside the
            // loop too; its new scheduler is swapped in when it is done.
            _ = hup.recv() => {
                if reloading.is_some() {
                    tracing::warn!("reload-pending: the previous SIGHUP's reload is still running");
                } else {
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
                    let (agent, path) = (Arc::clone(&agent), path.clone());
                    reloading = Some(tokio::spawn(async move {
                        let statuses = agent.reload(&path).await.map_err(Reload::Rejected)?;
                        agent.start_scheduler(&statuses).await.map_err(Reload::Scheduler)
                    }));
                }
            }
            done = async { reloading.as_mut().expect("guarded").await }, if reloading.is_some() => {
                reloading = None;
                if let Some((s, f)) = reloaded(done, &path) {
                    scheduler.shutdown().await;
                    scheduler = s;
                    fires = f;
                }
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
            }
            // The check runs beside the loop (bounded by
            // agent.repository_timeout), so a slow store never delays
            // signals, watchdog pings or scheduled runs.
            _ = refresh.tick() => {
                if checking.as_ref().is_none_or(|t| t.is_finished()) {
                    let agent = Arc::clone(&agent);
                    checking = Some(tokio::spawn(async move {
                        agent.check_repository().await;
                    }));
                }
            }
            _ = watchdog.tick(), if watchdog_on => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
            name = stop.recv() => { tracing::info!(signal = name, "agent-stopping"); break; }
        }
    }

    if let Some(reload) = reloading {
        reload.abort();
    }
    stop_agent(&agent, scheduler, &health, http_stop, http_task).await
}

/// Serves `/metrics`, `/healthz`, `/readyz` (and with a board the status
/// page) on `listen` until `stop`
/// (None: `listen` is empty, HTTP is off).
async fn serve_http(
    listen: &str,
    metrics: &Arc<Metrics>,
    health: &Arc<Health>,
    board: Option<Arc<crate::page::Board>>,
    stop: &CancellationToken,
) -> Result<Option<tokio::task::JoinHandle<std::io::Result<()>>>> {
    if listen.is_empty() {
        return Ok(None);
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("agent.listen: cannot listen on {listen}"))?;
    tracing::info!(address = %listen, "http-listening");
    Ok(Some(tokio::spawn(http::serve(
        listener,
        Arc::clone(metrics),
        Arc::clone(health),
        board,
        stop.clone(),
    ))))
}

/// A finished reload: the new scheduler and its fires when the new file is
/// in force and its schedules started; logged either way.
fn reloaded(
    done: std::result::Result<ReloadResult, tokio::task::JoinError>,
    path: &std::path::Path,
) -> Option<(refugio_schedule::Scheduler, mpsc::Receiver<Fire>)> {
    match done {
        Ok(Ok(new)) => {
            tracing::info!(config = %path.display(), "config-reloaded");
            return Some(new);
        }
        Ok(Err(Reload::Scheduler(e))) => {
            tracing::error!(
                error = crate::output::error_chain(&e),
                "reload-scheduler-failed"
            )
        }
        Ok(Err(Reload::Rejected(e))) => {
            tracing::error!(config = %path.display(), error = crate::output::error_chain(&e),
            "reload-rejected: the running configuration stays in force")
        }
        Err(e) => tracing::error!(error = %e, "reload-failed"),
    }
    None
}

/// Stops firing, cancels the running tasks and waits for them (at most
/// `agent.shutdown_timeout`), then stops HTTP. Exits 0 when every task
/// finished in time.
async fn stop_agent(
    agent: &Agent,
    scheduler: refugio_schedule::Scheduler,
    health: &Health,
    http_stop: CancellationToken,
    http_task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
) -> Result<ExitCode> {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    health.set_scheduler_running(false);
    scheduler.shutdown().await;
    agent.cancel.cancel();
    agent.tasks.close();
    let timeout = agent.current().cfg.agent.shutdown_timeout;
    let clean = tokio::time::timeout(timeout, agent.tasks.wait())
        .await
        .is_ok();
    http_stop.cancel();
    if let Some(t) = http_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    if clean {
        tracing::info!("agent-stopped");
        Ok(ExitCode::SUCCESS)
    } else {
        tracing::error!(
            timeout = ?timeout,
            "agent-stopped: tasks did not finish within agent.shutdown_timeout"
        );
        Ok(ExitCode::from(crate::exit::FAILED))
    }
}
