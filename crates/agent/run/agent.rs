//! The agent's state and its tasks: the scheduler's fires become backups,
//! drills, prunes and checks, each under the job's guard and advisory lock, retried
//! on temporary errors, reported in metrics and the webhook.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use anyhow::{bail, Result};
use chrono::Utc;
use refugio_core::JobStatus;
use refugio_schedule::{
    needs_catch_up, Entry, Fire, FireReason, Guards, Scheduler, TaskKey, TaskKind,
};
use refugio_store::repo::Repository;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::outcome::{Ended, Told};
use crate::config::Config;
use crate::http::Health;
use crate::job::Job;
use crate::metrics::Metrics;
use crate::page::{Board, Failure};
use crate::task::{self, Ran};
use crate::webhook::{Event, Outcomes, Webhook};

/// The configuration in force and the repository it names.
#[derive(Clone)]
pub(super) struct Current {
    pub(super) cfg: Arc<Config>,
    pub(super) repo: Repository,
}

pub(super) struct Agent {
    pub(super) current: RwLock<Current>,
    pub(super) guards: Guards,
    pub(super) metrics: Arc<Metrics>,
    pub(super) health: Arc<Health>,
    /// Fires the agent makes itself (signals, catch-up, drill after backup).
    pub(super) own_fires: mpsc::Sender<Fire>,
    /// Cancelled at shutdown: running tasks stop cleanly.
    pub(super) cancel: CancellationToken,
    pub(super) tasks: TaskTracker,
    pub(super) outcomes: Outcomes,
    pub(super) hostname: String,
    /// What the status page shows (filled only when it is on).
    pub(super) board: Arc<Board>,
}

impl Agent {
    /// An agent for `cfg` and its repository, its own fires sent to `own_fires`.
    pub(super) fn new(
        cfg: &Config,
        repo: Repository,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
        own_fires: mpsc::Sender<Fire>,
    ) -> Agent {
        Agent {
            guards: Guards::new(cfg.agent.max_concurrent_tasks),
            current: RwLock::new(Current {
                cfg: Arc::new(cfg.clone()),
                repo,
            }),
            metrics,
            health,
            own_fires,
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
            outcomes: Outcomes::default(),
            hostname: crate::webhook::hostname(),
            board: Arc::new(Board::new()),
        }
    }

    pub(super) fn current(&self) -> Current {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Lists every job: repository health, metrics, RPO. Returns the statuses.
    pub(super) async fn check_repository(&self) -> HashMap<String, JobStatus> {
        let cur = self.current();
        let mut out = HashMap::new();
        let mut error = None;
        let limit = cur.cfg.agent.repository_timeout;
        for job in &cur.cfg.jobs {
            if job.kind == refugio_core::JobKind::Physical {
                self.read_archiver(job).await;
            }
            let status = tokio::time::timeout(limit, refugio_core::status(&cur.repo, &job.name));
            match status.await {
                Ok(Ok(st)) => {
                    self.publish_status(job, &st);
                    if cur.cfg.agent.status_page {
                        self.post_status(&cur, job, &st).await;
                    }
                    out.insert(job.name.clone(), st);
                }
                Ok(Err(e)) => error = Some(refugio_print::chain(&e)),
                Err(_) => {
                    error = Some(format!(
                        "listing job {} took longer than agent.repository_timeout ({})",
                        job.name,
                        humantime::format_duration(limit)
                    ))
                }
            }
        }
        match error {
            None => {
                self.health.set_repository(Ok(()));
                self.board.set_repository(Ok(()), Utc::now());
            }
            Some(e) => {
                tracing::warn!(repository = %cur.repo.describe(), error = %e, "repository-check-failed");
                self.health.set_repository(Err(e.clone()));
                self.board.set_repository(Err(e), Utc::now());
            }
        }
        out
    }

    /// The status page's view of a job, from the status just read (its
    /// report reads the newest manifest, the last drill's receipt and the
    /// last check's record, bounded like the listing).
    async fn post_status(&self, cur: &Current, job: &Job, st: &JobStatus) {
        let now = Utc::now();
        let report = refugio_core::status::report_of(
            &cur.repo,
            &job.name,
            Some(job.kind),
            job.targets(),
            now,
            st,
        );
        match tokio::time::timeout(cur.cfg.agent.repository_timeout, report).await {
            Ok(Ok(report)) => {
                let mut history = st.history.clone();
                let checked = self.board.check_signatures(&cur.repo, &history);
                let _ = tokio::time::timeout(cur.cfg.agent.repository_timeout, checked).await;
                self.board.vet(&cur.repo, &mut history);
                self.board.set_job(&job.name, report, history, now)
            }
            Ok(Err(e)) => {
                tracing::warn!(job = %job.name, error = %refugio_print::chain(&e), "status-page-not-updated")
            }
            Err(_) => {
                tracing::warn!(job = %job.name, "status-page-not-updated: the repository did not answer within agent.repository_timeout")
            }
        }
    }

    /// The jobs the status page lists: the configuration's, in its order.
    pub(super) fn post_jobs(&self) {
        let cur = self.current();
        let names: Vec<String> = cur.cfg.jobs.iter().map(|j| j.name.clone()).collect();
        self.board
            .set_jobs(&cur.repo.describe(), &self.hostname, &names);
    }

    /// A physical job's server: its archiver's failures since the agent
    /// last asked (`pg_stat_archiver`); an unreachable server is skipped
    /// (the backup tasks report that).
    async fn read_archiver(&self, job: &Job) {
        let read = async {
            use sqlx::{Connection, Row};
            let mut conn = job.source().ok()?.connect().await.ok()?;
            let row = sqlx::query("SELECT failed_count FROM pg_stat_archiver")
                .fetch_one(&mut conn)
                .await
                .ok()?;
            let _ = conn.close().await;
            row.try_get::<i64, _>("failed_count").ok()
        };
        match tokio::time::timeout(std::time::Duration::from_secs(5), read).await {
            Ok(Some(failed)) => self.metrics.set_archiver_failures(&job.name, failed),
            _ => tracing::debug!(job = %job.name, "archiver-status-unavailable"),
        }
    }

    fn publish_status(&self, job: &Job, st: &JobStatus) {
        self.metrics.set_repository(&job.name, st.backups, st.bytes);
        self.metrics.set_future_backups(&job.name, st.future.len());
        if !st.future.is_empty() {
            tracing::warn!(job = %job.name, backups = ?st.future,
                "future-backups: dated later than now plus repository.clock_tolerance (a writer's clock was wrong); ignored by scheduling, catch-up, latest, drills and retention");
        }
        self.metrics.set_wal(&job.name, &st.wal);
        // The age is taken when asked (a scrape, /readyz), so it grows
        // on while the repository cannot be listed.
        self.metrics
            .set_recovery_point(&job.name, st.recovery_point);
        if let Some(target) = job.config.targets.rpo {
            self.health.set_rpo(&job.name, st.recovery_point, target);
        }
    }

    pub(super) async fn start_scheduler(
        &self,
        statuses: &HashMap<String, JobStatus>,
    ) -> Result<(Scheduler, mpsc::Receiver<Fire>)> {
        let cur = self.current();
        let mut entries = Vec::new();
        for job in &cur.cfg.jobs {
            let targets = &job.config.targets;
            self.metrics
                .register_job(&job.name, targets.rpo, targets.rto);
            self.metrics.set_job_kind(
                &job.name,
                match job.kind {
                    refugio_core::JobKind::Logical => "logical",
                    refugio_core::JobKind::Physical => "physical",
                },
            );
            let newest = statuses
                .get(&job.name)
                .and_then(|st| st.newest.as_ref().map(|(_, t)| *t));
            for (kind, trigger) in &job.triggers {
                entries.push(Entry {
                    key: TaskKey::new(job.name.clone(), *kind),
                    trigger: trigger.clone(),
                    jitter: job.config.schedule.jitter.unwrap_or_default(),
                    anchor: if *kind == TaskKind::Backup {
                        newest
                    } else {
                        None
                    },
                });
            }
        }
        Ok(Scheduler::start(entries).await?)
    }

    /// The first listing, the scheduler, catch-up, and (beside the loop)
    /// the warnings of targets the schedule cannot meet.
    pub(super) async fn start(self: &Arc<Self>) -> Result<(Scheduler, mpsc::Receiver<Fire>)> {
        let statuses = self.check_repository().await;
        let started = self.start_scheduler(&statuses).await?;
        self.catch_up(&statuses).await;
        let agent = Arc::clone(self);
        tokio::spawn(async move { agent.warn_unmet_targets().await });
        Ok(started)
    }

    /// Logs, once, each target a job's schedule cannot meet, with what
    /// the repository says its backups and drills take (see
    /// `objectives`); runs beside the loop (it reads a manifest and a
    /// receipt per job).
    pub(super) async fn warn_unmet_targets(&self) {
        let cur = self.current();
        let now = Utc::now();
        for job in &cur.cfg.jobs {
            for w in crate::objectives::check(Some(&cur.repo), job, now).await {
                tracing::warn!(job = %job.name, "target-unreachable: {w}");
            }
        }
    }

    /// Back up now every job whose newest backup is older than its interval.
    pub(super) async fn catch_up(&self, statuses: &HashMap<String, JobStatus>) {
        let cur = self.current();
        let now = Utc::now();
        for job in &cur.cfg.jobs {
            let backup = job.triggers.iter().find(|(k, _)| *k == TaskKind::Backup);
            let (Some((_, trigger)), true) = (backup, job.config.schedule.catch_up) else {
                continue;
            };
            let newest = statuses
                .get(&job.name)
                .and_then(|st| st.newest.as_ref().map(|(_, t)| *t));
            if needs_catch_up(newest, trigger, now) {
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

    pub(super) async fn on_signal(&self, kind: TaskKind, name: &str) {
        let cur = self.current();
        let now = Utc::now();
        for job in &cur.cfg.jobs {
            let named = &cur.cfg.agent.signal_jobs;
            if !named.is_empty() && !named.contains(&job.name) {
                continue;
            }
            if kind == TaskKind::Drill && job.drill_scratch().is_none() {
                if job.config.restore_on_signal.is_some() {
                    // Nothing to drill first: restore the newest verified backup.
                    tracing::info!(job = %job.name, signal = name, task = "restore", "signal-received");
                    self.send(Fire::new(
                        TaskKey::new(job.name.clone(), TaskKind::Restore),
                        FireReason::Signal,
                        now,
                    ))
                    .await;
                } else {
                    tracing::warn!(job = %job.name, signal = name, "no scratch configured: no drill");
                }
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
    pub(super) async fn reload(
        &self,
        path: &std::path::Path,
    ) -> Result<HashMap<String, JobStatus>> {
        let cfg = Config::load(path)?;
        if cfg.jobs.is_empty() {
            bail!("no [[jobs]]");
        }
        let repo = crate::repo::open_observed(&cfg, None, Some(self.metrics.retry_hook())).await?;
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
        self.post_jobs();
        Ok(self.check_repository().await)
    }

    /// Starts the task of a fire unless the same task is running.
    pub(super) fn handle(self: &Arc<Self>, fire: Fire) {
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

    async fn run_task(self: &Arc<Self>, cur: Current, job: Job, fire: Fire) {
        let kind = fire.key.kind;
        let cancel = self.cancel.child_token();
        let backoff = cur.cfg.agent.backoff;
        let ran = task::run(&cur.repo, &job, &fire, &backoff, &self.metrics, &cancel).await;
        let (result, took) = match ran {
            Ran::Skipped(why) => return self.skipped(&job, kind, why),
            Ran::Finished(result, took) => (result, took),
        };
        let ended = Ended {
            kind,
            result,
            cancelled: cancel.is_cancelled(),
        };
        self.notify(&cur, &job, &fire, ended.told());
        for (kind, reason) in ended.follow_ups(&job, fire.reason) {
            self.send(Fire::new(
                TaskKey::new(job.name.clone(), kind),
                reason,
                Utc::now(),
            ))
            .await;
        }
        ended.record(&self.metrics, &job.name, took);
        self.refresh_status(&cur, &job).await;
    }

    /// A task not run because another replica holds or did the work.
    fn skipped(&self, job: &Job, kind: TaskKind, why: &str) {
        tracing::info!("task-skipped: {why}");
        self.metrics.task_skipped(&job.name, kind.as_str(), "lock");
    }

    /// The job's fresh status, bounded like every repository check and
    /// skipped on shutdown: a stalled store never holds a stop.
    async fn refresh_status(&self, cur: &Current, job: &Job) {
        let limit = cur.cfg.agent.repository_timeout;
        let status = tokio::select! {
            () = self.cancel.cancelled() => None,
            st = tokio::time::timeout(limit, refugio_core::status(&cur.repo, &job.name)) => st.ok(),
        };
        match status {
            Some(Ok(st)) => {
                self.publish_status(job, &st);
                if cur.cfg.agent.status_page {
                    self.post_status(cur, job, &st).await;
                }
            }
            // The page says the repository cannot be read; readiness waits
            // for the minutely check (and its grace period).
            Some(Err(e)) => self
                .board
                .set_repository(Err(refugio_print::chain(&e)), Utc::now()),
            None => {}
        }
    }

    /// Sends a failure/recovery webhook in the background (never delays
    /// or fails the task).
    fn notify(&self, cur: &Current, job: &Job, fire: &Fire, told: Told) {
        let Told {
            ok,
            backup_id,
            error,
            outcome,
            databases,
        } = told;
        // A task stopped by SIGTERM/SIGINT did not fail: the agent is
        // shutting down, and nothing was committed.
        if !ok && self.cancel.is_cancelled() {
            return;
        }
        let kind = fire.key.kind.as_str();
        if !ok {
            let message = error.clone().unwrap_or_else(|| "failed".into());
            let at = Utc::now();
            let (task, verdict) = (kind.to_string(), outcome.unwrap_or("failed").to_string());
            let failure = Failure {
                at,
                task,
                verdict,
                message,
            };
            self.board.failed(&job.name, failure);
        }
        let Some(event) = self.outcomes.record(&job.name, kind, ok) else {
            return;
        };
        let Some(cfg) = cur.cfg.agent.webhook.clone() else {
            return;
        };
        let event = Event {
            event,
            job: job.name.clone(),
            task: kind.to_string(),
            reason: fire.reason.to_string(),
            backup_id,
            error,
            outcome: outcome.map(str::to_string),
            at: Utc::now(),
            agent: self.hostname.clone(),
            databases,
        };
        self.tasks.spawn(async move {
            match Webhook::new(&cfg) {
                Ok(hook) => {
                    hook.send(&event).await;
                }
                Err(e) => {
                    tracing::error!(error = crate::output::error_chain(&e), "webhook-invalid")
                }
            }
        });
    }
}
