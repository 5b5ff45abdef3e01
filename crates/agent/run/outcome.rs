//! How a task ended, and everything that follows from it: the log line,
//! the metrics, what the webhook is told, and the tasks it starts next.
//! The agent's task runner asks this type and does not match on results.

use std::time::Duration;

use chrono::Utc;
use refugio_core::check::Problem;
use refugio_core::receipt::Outcome as DrillOutcome;
use refugio_core::CheckOutcome;
use refugio_schedule::{FireReason, TaskKind};

use crate::job::Job;
use crate::metrics::Metrics;
use crate::task::Done;

/// A task's end: what it did, or the error that stopped it.
pub(super) struct Ended {
    pub(super) kind: TaskKind,
    pub(super) result: anyhow::Result<Done>,
    /// The agent is shutting down: an error is a cancellation, not a failure.
    pub(super) cancelled: bool,
}

/// What a finished task tells the webhook.
pub(super) struct Told {
    pub(super) ok: bool,
    pub(super) backup_id: Option<String>,
    pub(super) error: Option<String>,
    /// Drills (`passed`, `failed`, `inconclusive`) and checks (`clean`,
    /// `damaged`, `inconclusive`).
    pub(super) outcome: Option<&'static str>,
    /// A whole-server backup's per-database sizes.
    pub(super) databases: Vec<crate::webhook::DatabaseSize>,
}

impl Ended {
    /// What the webhook hears of this end.
    pub(super) fn told(&self) -> Told {
        let (ok, backup_id, error) = match &self.result {
            Ok(Done::Backup(m)) => (true, Some(m.backup_id.clone()), None),
            Ok(Done::Drill(r)) => (
                r.passed,
                Some(r.backup_id.clone()),
                (!r.passed).then(|| r.failures.join("; ")),
            ),
            Ok(Done::Prune(_)) => (true, None, None),
            Ok(Done::Restore(r)) => (true, Some(r.backup_id.clone()), None),
            Ok(Done::Check(r)) => (
                r.outcome == CheckOutcome::Clean,
                None,
                (r.outcome != CheckOutcome::Clean).then(|| check_summary(r)),
            ),
            Err(e) => (false, None, Some(crate::output::error_chain(e))),
        };
        let outcome = match (&self.result, self.kind) {
            (Ok(Done::Drill(r)), _) => Some(r.outcome().as_str()),
            (Ok(Done::Check(r)), _) => Some(r.outcome.as_str()),
            (Err(_), TaskKind::Drill | TaskKind::Check) => {
                Some(DrillOutcome::Inconclusive.as_str())
            }
            _ => None,
        };
        let databases = match &self.result {
            Ok(Done::Backup(m)) => m
                .database_sizes()
                .into_iter()
                .map(|(name, stored_bytes)| crate::webhook::DatabaseSize {
                    name: name.to_string(),
                    stored_bytes,
                })
                .collect(),
            _ => Vec::new(),
        };
        Told {
            ok,
            backup_id,
            error,
            outcome,
            databases,
        }
    }

    /// The tasks this end starts: a drill after a backup (when the job
    /// drills after backups), a restore after a signalled drill (when the
    /// job restores on signal: the drill has said what is verified).
    pub(super) fn follow_ups(&self, job: &Job, reason: FireReason) -> Vec<(TaskKind, FireReason)> {
        if self.cancelled {
            return Vec::new();
        }
        let mut next = Vec::new();
        if let Ok(Done::Backup(_)) = &self.result {
            if job.config.schedule.drill_after_backup && job.drill_scratch().is_some() {
                next.push((TaskKind::Drill, FireReason::AfterBackup));
            }
        }
        if self.kind == TaskKind::Drill
            && reason == FireReason::Signal
            && job.config.restore_on_signal.is_some()
        {
            next.push((TaskKind::Restore, FireReason::Signal));
        }
        next
    }

    /// Logs the end and records it in the metrics (`elapsed`: the task's
    /// whole length, retries included).
    pub(super) fn record(&self, metrics: &Metrics, job: &str, elapsed: Duration) {
        match &self.result {
            Ok(Done::Backup(m)) => {
                metrics.backup_succeeded(
                    job,
                    m.finished_at,
                    elapsed,
                    m.stored_size(),
                    m.raw_size(),
                );
                let sizes: Vec<(String, u64)> = m
                    .database_sizes()
                    .into_iter()
                    .map(|(name, stored)| (name.to_string(), stored))
                    .collect();
                metrics.set_database_sizes(job, &sizes);
            }
            Ok(Done::Drill(r)) => record_drill(metrics, job, r),
            Ok(Done::Prune(deleted)) => metrics.prune_finished(job, true, *deleted),
            Ok(Done::Restore(_)) => metrics.restore_finished(job, true),
            Ok(Done::Check(r)) => {
                metrics.check_finished(job, r);
                log_check(r);
            }
            Err(e) => {
                if self.cancelled {
                    tracing::warn!(
                        error = crate::output::error_chain(e),
                        "task-cancelled: nothing was committed"
                    );
                } else {
                    tracing::error!(error = crate::output::error_chain(e), "task-failed");
                }
                record_failure(metrics, job, self.kind);
            }
        }
    }
}

fn record_drill(metrics: &Metrics, job: &str, r: &refugio_core::Receipt) {
    if !r.notes.is_empty() {
        tracing::info!(notes = ?r.notes, "drill-notes: not counted for or against the backup");
    }
    match r.outcome() {
        DrillOutcome::Inconclusive => {
            metrics.drill_inconclusive(job, r.finished_at);
            tracing::warn!(failures = ?r.failures,
                "drill-inconclusive: the backup could not be checked; it stays unverified");
        }
        _ => {
            metrics.drill_finished(
                job,
                r.finished_at,
                r.verified,
                r.rto.measured_seconds.map(Duration::from_secs_f64),
            );
            if !r.passed {
                tracing::error!(failures = ?r.failures, "drill-failed");
            }
        }
    }
}

fn log_check(r: &refugio_core::CheckReport) {
    let (backups, artifacts, read) = (r.backups, r.artifacts, r.read.artifacts);
    let (orphans, stale) = (r.orphans.len(), r.stale_uploads.len());
    match r.outcome {
        CheckOutcome::Clean => tracing::info!(
            backups,
            artifacts,
            read,
            orphans,
            stale_uploads = stale,
            "check-clean"
        ),
        CheckOutcome::Damaged => tracing::error!(backups, artifacts, read,
            damage = %check_summary(r), "check-found-damage"),
        CheckOutcome::Inconclusive => tracing::warn!(backups, artifacts, read,
            problem = %check_summary(r),
            "check-inconclusive: no damage found, but not everything could be checked"),
    }
}

/// A task that ended in an error: its failure metric.
fn record_failure(metrics: &Metrics, job: &str, kind: TaskKind) {
    match kind {
        TaskKind::Backup => metrics.backup_failed(job),
        // A drill that returns an error never checked the backup.
        TaskKind::Drill => metrics.drill_inconclusive(job, Utc::now()),
        TaskKind::Prune => metrics.prune_finished(job, false, 0),
        TaskKind::Restore => metrics.restore_finished(job, false),
        // A check that returns an error could not check.
        TaskKind::Check => metrics.check_inconclusive(job),
    }
}

/// What a check that was not clean found, in one line (the first few
/// keys; the JSON report of `refugio check` has them all).
fn check_summary(r: &refugio_core::CheckReport) -> String {
    const SHOWN: usize = 5;
    let mut parts: Vec<String> = Vec::new();
    parts.extend(r.missing.iter().map(|m| format!("missing {}", m.key)));
    parts.extend(r.damaged.iter().map(|d| match &d.problem {
        Problem::Size { expected, actual } => {
            format!("{}: {actual} bytes, the manifest says {expected}", d.key)
        }
        Problem::Digest { .. } => format!("{}: SHA-256 differs from the manifest's", d.key),
        Problem::Manifest { reason } => format!("{}: {reason}", d.key),
    }));
    parts.extend(
        r.unchecked
            .iter()
            .map(|u| format!("could not check {}: {}", u.key, u.error)),
    );
    let more = parts.len().saturating_sub(SHOWN);
    parts.truncate(SHOWN);
    let mut text = format!(
        "{} damaged or missing, {} not checked: {}",
        r.damage_count(),
        r.unchecked.len(),
        parts.join("; ")
    );
    if more > 0 {
        text.push_str(&format!("; and {more} more"));
    }
    text
}
