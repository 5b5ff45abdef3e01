//! `refugio run`: the long-running agent. Backs up, drills and prunes each
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

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, Utc};
use refugio_schedule::{
    needs_catch_up, Entry, Fire, FireReason, Guards, Scheduler, TaskKey, TaskKind,
};
use refugio_store::repo::Repository;
use sha2::{Digest, Sha256};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::{Config, JobConfig};
use crate::http::{self, Health};
use crate::metrics::Metrics;

/// The configuration in force and the repository it names.
#[derive(Clone)]
struct Current {
    cfg: Arc<Config>,
    repo: Repository,
}

struct Agent {
    current: RwLock<Current>,
    guards: Guards,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    /// Fires the agent makes itself (signals, catch-up, drill after backup).
    own_fires: mpsc::Sender<Fire>,
    /// Cancelled at shutdown: running tasks stop cleanly.
    cancel: CancellationToken,
    tasks: TaskTracker,
    outcomes: crate::webhook::Outcomes,
    hostname: String,
}

/// Runs until SIGTERM/SIGINT.
pub async fn run(path: PathBuf, cfg: Config) -> Result<ExitCode> {
    if cfg.jobs.is_empty() {
        bail!(
            "config file {}: no [[jobs]]: the agent would have nothing to do",
            path.display()
        );
    }
    let repo = crate::commands::open_repo_of(&cfg).await?;
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new(cfg.agent.ready_requires_rpo));
    let (own_tx, mut own_rx) = mpsc::channel::<Fire>(refugio_schedule::FIRE_CHANNEL_CAPACITY);
    let agent = Arc::new(Agent {
        current: RwLock::new(Current {
            cfg: Arc::new(cfg.clone()),
            repo: repo.clone(),
        }),
        guards: Guards::new(cfg.agent.max_concurrent_tasks),
        metrics: Arc::clone(&metrics),
        health: Arc::clone(&health),
        own_fires: own_tx,
        cancel: CancellationToken::new(),
        tasks: TaskTracker::new(),
        outcomes: crate::webhook::Outcomes::default(),
        hostname: crate::webhook::hostname(),
    });
    let http_stop = CancellationToken::new();
    let mut http_task = None;
    if !cfg.agent.listen.is_empty() {
        let listener = tokio::net::TcpListener::bind(&cfg.agent.listen)
            .await
            .with_context(|| format!("agent.listen: cannot listen on {}", cfg.agent.listen))?;
        tracing::info!(address = %cfg.agent.listen, "http-listening");
        http_task = Some(tokio::spawn(http::serve(
            listener,
            Arc::clone(&metrics),
            Arc::clone(&health),
            http_stop.clone(),
        )));
    }

    // Signals are installed before READY, so a USR1 right after start is
    // never the default action (which would kill the process).
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;

    let statuses = agent.check_repository().await;
    let (mut scheduler, mut fires) = agent.start_scheduler(&statuses).await?;
    agent.catch_up(&statuses).await;
    health.set_scheduler_running(true);
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    tracing::info!(jobs = cfg.jobs.len(), "agent-ready");
    // Watchdog pings come from the main loop itself: a loop that hangs
    // stops pinging and systemd restarts the agent.
    let mut watchdog = tokio::time::interval(
        sd_notify::watchdog_enabled().map_or(Duration::from_secs(3600), |period| period / 2),
    );
    let watchdog_on = sd_notify::watchdog_enabled().is_some();
    let mut refresh = tokio::time::interval(Duration::from_secs(60));
    refresh.tick().await;

    loop {
        tokio::select! {
            Some(fire) = fires.recv() => agent.handle(fire),
            Some(fire) = own_rx.recv() => agent.handle(fire),
            _ = usr1.recv() => agent.on_signal(TaskKind::Backup, "SIGUSR1").await,
            _ = usr2.recv() => agent.on_signal(TaskKind::Drill, "SIGUSR2").await,
            _ = hup.recv() => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
                match agent.reload(&path).await {
                    Ok(statuses) => match agent.start_scheduler(&statuses).await {
                        Ok((s, f)) => {
                            scheduler.shutdown().await;
                            scheduler = s;
                            fires = f;
                            tracing::info!(config = %path.display(), "config-reloaded");
                        }
                        Err(e) => tracing::error!(error = format!("{e:#}"), "reload-scheduler-failed"),
                    },
                    Err(e) => tracing::error!(config = %path.display(), error = format!("{e:#}"),
                        "reload-rejected: the running configuration stays in force"),
                }
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
            }
            _ = refresh.tick() => { agent.check_repository().await; }
            _ = watchdog.tick(), if watchdog_on => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
            _ = term.recv() => { tracing::info!(signal = "SIGTERM", "agent-stopping"); break; }
            _ = int.recv() => { tracing::info!(signal = "SIGINT", "agent-stopping"); break; }
        }
    }

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
        Ok(ExitCode::from(1))
    }
}

impl Agent {
    fn current(&self) -> Current {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Lists every job: repository health, metrics, RPO. Returns the statuses.
    async fn check_repository(&self) -> HashMap<String, crate::prune::JobStatus> {
        let cur = self.current();
        let mut out = HashMap::new();
        let mut error = None;
        for job in &cur.cfg.jobs {
            match crate::prune::status(&cur.repo, &job.name).await {
                Ok(st) => {
                    self.publish_status(job, &st);
                    out.insert(job.name.clone(), st);
                }
                Err(e) => error = Some(format!("{e:#}")),
            }
        }
        match error {
            None => self.health.set_repository(Ok(())),
            Some(e) => {
                tracing::warn!(repository = %cur.repo.describe(), error = %e, "repository-check-failed");
                self.health.set_repository(Err(e));
            }
        }
        out
    }

    fn publish_status(&self, job: &JobConfig, st: &crate::prune::JobStatus) {
        self.metrics.set_repository(&job.name, st.backups, st.bytes);
        let rpo = st
            .newest_verified
            .map(|t| (Utc::now() - t).to_std().unwrap_or_default());
        self.metrics.set_rpo(&job.name, rpo);
        if let Some(target) = job.targets.rpo {
            self.health
                .set_rpo_ok(&job.name, rpo.is_some_and(|r| r <= target));
        }
    }

    async fn start_scheduler(
        &self,
        statuses: &HashMap<String, crate::prune::JobStatus>,
    ) -> Result<(Scheduler, mpsc::Receiver<Fire>)> {
        let cur = self.current();
        let mut entries = Vec::new();
        for job in &cur.cfg.jobs {
            self.metrics
                .register_job(&job.name, job.targets.rpo, job.targets.rto);
            let s = &job.schedule;
            let tz = s.tz()?;
            let newest = statuses
                .get(&job.name)
                .and_then(|st| st.newest.as_ref().map(|(_, t)| *t));
            for (kind, spec) in [
                (TaskKind::Backup, &s.backup),
                (TaskKind::Drill, &s.drill),
                (TaskKind::Prune, &s.prune),
            ] {
                let Some(spec) = spec else { continue };
                entries.push(Entry {
                    key: TaskKey::new(job.name.clone(), kind),
                    trigger: spec.resolve(tz)?,
                    jitter: s.jitter.unwrap_or_default(),
                    anchor: if kind == TaskKind::Backup {
                        newest
                    } else {
                        None
                    },
                });
            }
        }
        Ok(Scheduler::start(entries).await?)
    }

    /// Back up now every job whose newest backup is older than its interval.
    async fn catch_up(&self, statuses: &HashMap<String, crate::prune::JobStatus>) {
        let cur = self.current();
        let now = Utc::now();
        for job in &cur.cfg.jobs {
            let s = &job.schedule;
            let (Some(spec), true) = (&s.backup, s.catch_up) else {
                continue;
            };
            let Ok(trigger) = s.tz().and_then(|tz| Ok(spec.resolve(tz)?)) else {
                continue;
            };
            let newest = statuses
                .get(&job.name)
                .and_then(|st| st.newest.as_ref().map(|(_, t)| *t));
            if needs_catch_up(newest, &trigger, now) {
                tracing::info!(job = %job.name, newest = ?newest, "catch-up: the newest backup is older than the schedule; backing up now");
                self.send(Fire::new(
                    TaskKey::new(job.name.clone(), TaskKind::Backup),
                    FireReason::CatchUp,
                    now,
                ))
                .await;
            }
        }
    }

    async fn send(&self, fire: Fire) {
        if self.own_fires.try_send(fire).is_err() {
            tracing::warn!("too many pending requests; one dropped");
        }
    }

    async fn on_signal(&self, kind: TaskKind, name: &str) {
        let cur = self.current();
        let now = Utc::now();
        for job in &cur.cfg.jobs {
            let named = &cur.cfg.agent.signal_jobs;
            if !named.is_empty() && !named.contains(&job.name) {
                continue;
            }
            if kind == TaskKind::Drill && job.scratch.is_none() {
                tracing::warn!(job = %job.name, signal = name, "no scratch configured: no drill");
                continue;
            }
            tracing::info!(job = %job.name, signal = name, task = %kind, "signal-received");
            self.send(Fire::new(
                TaskKey::new(job.name.clone(), kind),
                FireReason::Signal,
                now,
            ))
            .await;
        }
    }

    /// Loads and validates the file again; swaps it in only if it is good.
    async fn reload(
        &self,
        path: &std::path::Path,
    ) -> Result<HashMap<String, crate::prune::JobStatus>> {
        let cfg = Config::load(path)?;
        if cfg.jobs.is_empty() {
            bail!("no [[jobs]]");
        }
        let repo = crate::commands::open_repo_of(&cfg).await?;
        let old = self.current();
        for job in &old.cfg.jobs {
            if !cfg.jobs.iter().any(|j| j.name == job.name) {
                self.metrics.forget_job(&job.name);
                self.health.forget_job(&job.name);
            }
        }
        {
            let mut w = match self.current.write() {
                Ok(w) => w,
                Err(poisoned) => poisoned.into_inner(),
            };
            *w = Current {
                cfg: Arc::new(cfg),
                repo,
            };
        }
        Ok(self.check_repository().await)
    }

    /// Starts the task of a fire unless the same task is running.
    fn handle(self: &Arc<Self>, fire: Fire) {
        if self.cancel.is_cancelled() {
            return;
        }
        let cur = self.current();
        let Some(job) = cur
            .cfg
            .jobs
            .iter()
            .find(|j| j.name == fire.key.job)
            .cloned()
        else {
            return; // removed by a reload
        };
        let Some(running) = self.guards.try_start(&fire.key) else {
            tracing::warn!(job = %job.name, task = %fire.key.kind, reason = %fire.reason,
                "task-skipped: the previous run is still going");
            self.metrics
                .task_skipped(&job.name, fire.key.kind.as_str(), "overlap");
            return;
        };
        let agent = Arc::clone(self);
        let span = tracing::info_span!("task", job = %job.name, task = %fire.key.kind, reason = %fire.reason);
        self.tasks.spawn(
            async move {
                let mut running = running;
                if running.acquire_slot().await.is_err() {
                    return;
                }
                agent.run_task(cur, job, fire).await;
                drop(running);
            }
            .instrument(span),
        );
    }

    async fn run_task(self: &Arc<Self>, cur: Current, job: JobConfig, fire: Fire) {
        let kind = fire.key.kind;
        let cancel = self.cancel.child_token();
        // One replica at a time per job: a session advisory lock on the source.
        let backoff = cur.cfg.agent.backoff;
        let lock = refugio_schedule::retry(&backoff, is_temporary, &cancel, |_| {
            let job = job.clone();
            async move { advisory_lock(&job).await }
        })
        .await;
        let lock = match lock {
            Ok(Some(conn)) => conn,
            Ok(None) => {
                tracing::info!("task-skipped: another refugio holds this job's lock");
                self.metrics.task_skipped(&job.name, kind.as_str(), "lock");
                return;
            }
            Err(e) => {
                tracing::error!(
                    error = format!("{e:#}"),
                    "task-failed: cannot take the job's lock on its source"
                );
                self.record_failure(&job, kind);
                self.notify(&cur, &job, &fire, false, None, Some(format!("{e:#}")));
                return;
            }
        };
        if matches!(fire.reason, FireReason::Schedule | FireReason::CatchUp)
            && already_done(&cur.repo, &job, kind, fire.scheduled_at).await
        {
            tracing::info!("task-skipped: another replica already did this run");
            self.metrics.task_skipped(&job.name, kind.as_str(), "lock");
            drop(lock);
            return;
        }
        let started = Instant::now();
        let outcome = refugio_schedule::retry(&backoff, is_temporary, &cancel, |attempt| {
            let (cur, job, cancel) = (cur.clone(), job.clone(), cancel.clone());
            async move {
                if attempt > 1 {
                    tracing::info!(attempt, "task-retry");
                }
                run_once(&cur, &job, kind, &cancel).await
            }
        })
        .await;
        drop(lock);
        let (ok, backup_id, error) = match &outcome {
            Ok(Done::Backup(m)) => (true, Some(m.backup_id.clone()), None),
            Ok(Done::Drill(r)) => (
                r.passed,
                Some(r.backup_id.clone()),
                (!r.passed).then(|| r.failures.join("; ")),
            ),
            Ok(Done::Prune(_)) => (true, None, None),
            Err(e) => (false, None, Some(format!("{e:#}"))),
        };
        self.notify(&cur, &job, &fire, ok, backup_id, error);
        match outcome {
            Ok(Done::Backup(m)) => {
                self.metrics.backup_succeeded(
                    &job.name,
                    m.finished_at,
                    started.elapsed(),
                    m.stored_size(),
                    m.raw_size(),
                );
                if job.schedule.drill_after_backup && job.scratch.is_some() {
                    self.send(Fire::new(
                        TaskKey::new(job.name.clone(), TaskKind::Drill),
                        FireReason::AfterBackup,
                        Utc::now(),
                    ))
                    .await;
                }
            }
            Ok(Done::Drill(r)) => {
                self.metrics.drill_finished(
                    &job.name,
                    r.finished_at,
                    r.verified,
                    r.rto.measured_seconds.map(Duration::from_secs_f64),
                );
                if !r.passed {
                    tracing::error!(failures = ?r.failures, "drill-failed");
                }
            }
            Ok(Done::Prune(deleted)) => self.metrics.prune_finished(&job.name, true, deleted),
            Err(e) => {
                if cancel.is_cancelled() {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "task-cancelled: nothing was committed"
                    );
                } else {
                    tracing::error!(error = format!("{e:#}"), "task-failed");
                }
                self.record_failure(&job, kind);
            }
        }
        if let Ok(st) = crate::prune::status(&cur.repo, &job.name).await {
            self.publish_status(&job, &st);
        }
    }

    /// Sends a failure/recovery webhook in the background (never delays
    /// or fails the task).
    fn notify(
        &self,
        cur: &Current,
        job: &JobConfig,
        fire: &Fire,
        ok: bool,
        backup_id: Option<String>,
        error: Option<String>,
    ) {
        let kind = fire.key.kind.as_str();
        let Some(event) = self.outcomes.record(&job.name, kind, ok) else {
            return;
        };
        let Some(cfg) = cur.cfg.agent.webhook.clone() else {
            return;
        };
        let event = crate::webhook::Event {
            event,
            job: job.name.clone(),
            task: kind.to_string(),
            reason: fire.reason.to_string(),
            backup_id,
            error,
            at: Utc::now(),
            agent: self.hostname.clone(),
        };
        self.tasks.spawn(async move {
            match crate::webhook::Webhook::new(&cfg) {
                Ok(hook) => {
                    hook.send(&event).await;
                }
                Err(e) => tracing::error!(error = format!("{e:#}"), "webhook-invalid"),
            }
        });
    }

    fn record_failure(&self, job: &JobConfig, kind: TaskKind) {
        match kind {
            TaskKind::Backup => self.metrics.backup_failed(&job.name),
            TaskKind::Drill => self
                .metrics
                .drill_finished(&job.name, Utc::now(), false, None),
            TaskKind::Prune => self.metrics.prune_finished(&job.name, false, 0),
        }
    }
}

enum Done {
    Backup(Box<refugio_store::manifest::Manifest>),
    Drill(Box<refugio_verify::drill::Receipt>),
    Prune(u64),
}

async fn run_once(
    cur: &Current,
    job: &JobConfig,
    kind: TaskKind,
    cancel: &CancellationToken,
) -> Result<Done> {
    match kind {
        TaskKind::Backup => Ok(Done::Backup(Box::new(
            crate::backup::run(&cur.repo, &cur.cfg.repository, job, cancel).await?,
        ))),
        TaskKind::Drill => Ok(Done::Drill(Box::new(
            crate::commands::drill_latest(&cur.repo, job, None, cancel).await?,
        ))),
        TaskKind::Prune => {
            let r = job
                .retention
                .as_ref()
                .ok_or_else(|| anyhow!("job {} has no retention policy", job.name))?;
            let policy = r.policy()?;
            let opts = crate::prune::PruneOptions {
                grace: r.gc_grace,
                lock: cur.cfg.repository.object_lock.as_ref(),
                dry_run: false,
                now: Utc::now(),
                batch: crate::prune::DELETE_BATCH,
            };
            let report = tokio::select! {
                r = crate::prune::prune(&cur.repo, &job.name, &policy, &opts) => r?,
                _ = cancel.cancelled() => bail!("prune cancelled (an interrupted prune leaves only orphans)"),
            };
            if report.has_errors() {
                bail!(
                    "prune of job {}: {} delete(s) failed: {}",
                    job.name,
                    report.failed_deletes.len(),
                    report
                        .failed_deletes
                        .iter()
                        .map(|f| format!("{}: {}", f.key, f.error))
                        .collect::<Vec<_>>()
                        .join("; ")
                );
            }
            Ok(Done::Prune(report.deleted_backups.len() as u64))
        }
    }
}

/// Temporary: network and store trouble, a server restarting. Permanent:
/// everything else (auth, missing binary, bad config, failed checks).
fn is_temporary(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        if let Some(s) = c.downcast_ref::<refugio_store::Error>() {
            return s.is_temporary();
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::TimedOut
            );
        }
        if let Some(db) = c.downcast_ref::<sqlx::Error>() {
            return match db {
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => true,
                // 57P03 cannot_connect_now (starting up), 57P01 admin_shutdown.
                sqlx::Error::Database(d) => {
                    matches!(d.code().as_deref(), Some("57P03" | "57P01" | "53300"))
                }
                _ => false,
            };
        }
        false
    })
}

/// Advisory lock key of a job: the first 8 bytes of SHA-256("refugio job " + name).
pub fn lock_key(job: &str) -> i64 {
    let digest = Sha256::digest(format!("refugio job {job}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

/// Takes the job's session advisory lock on its source; `None` when
/// another session holds it. The lock lives as long as the connection.
async fn advisory_lock(job: &JobConfig) -> Result<Option<sqlx::PgConnection>> {
    let source = crate::backup::source_spec(job)?;
    let mut conn = source.connect().await?;
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(lock_key(&job.name))
        .fetch_one(&mut conn)
        .await
        .with_context(|| format!("job {}: pg_try_advisory_lock", job.name))?;
    Ok(got.then_some(conn))
}

/// Whether another replica already did the run scheduled at `at`: a
/// backup started at or after it, or a drill receipt of the newest
/// backup written after it.
async fn already_done(
    repo: &Repository,
    job: &JobConfig,
    kind: TaskKind,
    at: DateTime<Utc>,
) -> bool {
    let Ok(st) = crate::prune::status(repo, &job.name).await else {
        return false;
    };
    let at = at - chrono::Duration::milliseconds(999);
    match kind {
        TaskKind::Backup => st.newest.is_some_and(|(_, t)| t >= at),
        TaskKind::Drill => st.newest_drilled_at.is_some_and(|t| t >= at),
        TaskKind::Prune => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_are_stable_and_distinct() {
        assert_eq!(lock_key("trips"), lock_key("trips"));
        assert_ne!(lock_key("trips"), lock_key("trips-sql"));
    }

    #[test]
    fn temporary_errors() {
        let store = refugio_store::Error::S3 {
            op: "PutObject",
            store: "s3://b".into(),
            key: "k".into(),
            message: "SlowDown".into(),
            temporary: true,
        };
        assert!(is_temporary(&anyhow::Error::from(store).context("backup")));
        assert!(!is_temporary(&anyhow!("pg_dump 15 cannot dump server 16")));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(is_temporary(&anyhow::Error::from(refused)));
    }
}
