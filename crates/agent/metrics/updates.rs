//! Updates from the operations' reports: a committed backup, a drill's
//! receipt, an RPO measured from the repository, a prune, a check.

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus_client::metrics::family::Family;
use refugio_core::CheckOutcome;
use refugio_store::s3::RetryHook;

use super::registry::{
    flag, job_labels, result_labels, saturating_i64, unix_seconds, DatabaseLabels, FloatGauge,
    JobLabels, Metrics, OperationLabels, FAILURE, INCONCLUSIVE, SUCCESS,
};

impl Metrics {
    /// Counts a retried S3 request (or a resumed download).
    pub fn store_retried(&self, operation: &str) {
        self.store_retries
            .get_or_create(&OperationLabels {
                operation: operation.to_string(),
            })
            .inc();
    }

    /// A hook for the store that calls [`Metrics::store_retried`].
    pub fn retry_hook(self: &Arc<Self>) -> RetryHook {
        let metrics = Arc::clone(self);
        Arc::new(move |operation: &str| metrics.store_retried(operation))
    }

    /// Records a committed backup (manifest written).
    pub fn backup_succeeded(
        &self,
        job: &str,
        finished_at: DateTime<Utc>,
        duration: Duration,
        stored_bytes: u64,
        raw_bytes: u64,
    ) {
        let l = job_labels(job);
        self.backup_runs
            .get_or_create(&result_labels(job, SUCCESS))
            .inc();
        self.backup_last_success
            .get_or_create(&l)
            .set(unix_seconds(finished_at));
        self.backup_last_duration
            .get_or_create(&l)
            .set(duration.as_secs_f64());
        self.backup_last_stored
            .get_or_create(&l)
            .set(saturating_i64(stored_bytes));
        self.backup_last_raw
            .get_or_create(&l)
            .set(saturating_i64(raw_bytes));
    }

    /// The stored bytes of each database of a whole-server job's last
    /// backup; databases no longer in it lose their series.
    pub fn set_database_sizes(&self, job: &str, sizes: &[(String, u64)]) {
        let mut series = self
            .database_series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let labels = |database: &str| DatabaseLabels {
            backup_job: job.to_owned(),
            database: database.to_owned(),
        };
        for old in series.remove(job).unwrap_or_default() {
            if !sizes.iter().any(|(d, _)| *d == old) {
                self.backup_last_database_stored.remove(&labels(&old));
            }
        }
        for (database, bytes) in sizes {
            self.backup_last_database_stored
                .get_or_create(&labels(database))
                .set(saturating_i64(*bytes));
        }
        if !sizes.is_empty() {
            series.insert(
                job.to_owned(),
                sizes.iter().map(|(d, _)| d.clone()).collect(),
            );
        }
    }

    /// Records a failed backup; the `last_*` gauges keep the last success.
    pub fn backup_failed(&self, job: &str) {
        self.backup_runs
            .get_or_create(&result_labels(job, FAILURE))
            .inc();
    }

    /// Records a task the scheduler did not start. `task` is `backup`,
    /// `drill` or `prune`; `reason` is `overlap` (still running here) or
    /// `lock` (another replica holds the job's lock).
    /// `job` is configured, of `kind` (`logical`, `physical`): alert rules
    /// tell the kinds apart by it.
    pub fn set_job_kind(&self, job: &str, kind: &'static str) {
        for other in ["logical", "physical"].into_iter().filter(|k| *k != kind) {
            self.job_info.remove(&super::registry::KindLabels {
                backup_job: job.to_owned(),
                kind: other,
            });
        }
        self.job_info
            .get_or_create(&super::registry::KindLabels {
                backup_job: job.to_owned(),
                kind,
            })
            .set(1);
    }

    /// A task of `job` started (`running`) or ended.
    pub fn task_running(&self, job: &str, task: &'static str, running: bool) {
        let l = super::registry::TaskLabels {
            backup_job: job.to_owned(),
            task,
        };
        self.task_running.get_or_create(&l).set(i64::from(running));
        if running {
            self.task_progress.get_or_create(&l).set(0);
        } else {
            self.task_progress.remove(&l);
        }
    }

    /// The bytes a running task of `job` moved so far.
    pub fn task_progress(&self, job: &str, task: &'static str, bytes: u64) {
        let l = super::registry::TaskLabels {
            backup_job: job.to_owned(),
            task,
        };
        self.task_progress
            .get_or_create(&l)
            .set(saturating_i64(bytes));
    }

    pub fn task_skipped(&self, job: &str, task: &str, reason: &str) {
        self.task_skipped
            .get_or_create(&self.skip_labels(job, task, reason))
            .inc();
    }

    /// Records a finished restore drill. When `rto` is `Some`, the RTO
    /// gauge is set and, if the job has an RTO target, `rto_target_met`.
    /// A drill that failed before measuring anything leaves the last RTO
    /// as it was; `refugio_drill_last_success` shows the failure.
    pub fn drill_finished(
        &self,
        job: &str,
        at: DateTime<Utc>,
        success: bool,
        rto: Option<Duration>,
    ) {
        let l = job_labels(job);
        let result = if success { SUCCESS } else { FAILURE };
        self.drill_runs
            .get_or_create(&result_labels(job, result))
            .inc();
        self.drill_last_timestamp
            .get_or_create(&l)
            .set(unix_seconds(at));
        self.drill_last_success.get_or_create(&l).set(flag(success));
        if let Some(rto) = rto {
            let rto = rto.as_secs_f64();
            self.rto.get_or_create(&l).set(rto);
            if let Some(target) = self.target(&self.rto_target, &l) {
                self.rto_target_met
                    .get_or_create(&l)
                    .set(flag(rto <= target));
            }
        }
    }

    /// Records a drill that could not tell whether the backup is good
    /// (store or scratch unreachable, no space, cancelled): counted, and
    /// `refugio_drill_last_success` keeps the last conclusive answer.
    pub fn drill_inconclusive(&self, job: &str, at: DateTime<Utc>) {
        self.drill_runs
            .get_or_create(&result_labels(job, INCONCLUSIVE))
            .inc();
        self.drill_last_timestamp
            .get_or_create(&job_labels(job))
            .set(unix_seconds(at));
    }

    /// Sets the newest verified backup's recovery point (`None`: there is
    /// none). `refugio_rpo_seconds` is its age when `/metrics` is scraped
    /// ([`Metrics::render`]), so it keeps growing while the repository
    /// cannot be listed: an outage of the store cannot freeze the RPO at
    /// its last good value. Without a verified backup the series is absent
    /// (not a fake number) and, with a target, `refugio_rpo_target_met` 0.
    pub fn set_recovery_point(&self, job: &str, point: Option<DateTime<Utc>>) {
        self.recovery_points
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(job.to_owned(), point);
        self.refresh_rpo(job, point, Utc::now());
    }

    /// The RPO gauges of `job` at `now`.
    pub(super) fn refresh_rpo(&self, job: &str, point: Option<DateTime<Utc>>, now: DateTime<Utc>) {
        let l = job_labels(job);
        let met = match point {
            Some(point) => {
                let rpo = (now - point)
                    .to_std()
                    .unwrap_or_default()
                    .as_secs_f64()
                    .floor();
                self.rpo.get_or_create(&l).set(rpo);
                self.target(&self.rpo_target, &l).map(|t| rpo <= t)
            }
            None => {
                self.rpo.remove(&l);
                self.target(&self.rpo_target, &l).map(|_| false)
            }
        };
        if let Some(met) = met {
            self.rpo_target_met.get_or_create(&l).set(flag(met));
        }
    }

    /// The RPO as if measured now, for tests: the recovery point `rpo` ago.
    #[cfg(test)]
    pub fn set_rpo(&self, job: &str, rpo: Option<Duration>) {
        let point = rpo.map(|rpo| Utc::now() - chrono::Duration::from_std(rpo).unwrap_or_default());
        self.set_recovery_point(job, point);
    }

    /// A physical job's WAL archive, from the last listing (no series
    /// while it has none).
    pub fn set_wal(&self, job: &str, wal: &refugio_core::listing::WalSeen) {
        let l = job_labels(job);
        if wal.files == 0 {
            self.wal_files.remove(&l);
            self.wal_bytes.remove(&l);
            self.wal_last_archived.remove(&l);
            return;
        }
        self.wal_files
            .get_or_create(&l)
            .set(saturating_i64(wal.files));
        self.wal_bytes
            .get_or_create(&l)
            .set(saturating_i64(wal.bytes));
        if let Some(t) = wal.last_archived {
            self.wal_last_archived
                .get_or_create(&l)
                .set(unix_seconds(t));
        }
    }

    /// The server's `pg_stat_archiver.failed_count` as the agent reads
    /// it: the counter grows by what it grew (a stats reset starts over).
    pub fn set_archiver_failures(&self, job: &str, failed_count: i64) {
        let l = job_labels(job);
        let counter = self.wal_failures.get_or_create(&l);
        let mut seen = self
            .wal_failed_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(before) = seen.insert(job.to_owned(), failed_count) {
            if failed_count > before {
                counter.inc_by(u64::try_from(failed_count - before).unwrap_or(0));
            }
        }
    }

    /// Sets what the repository holds for the job (from the last listing).
    pub fn set_repository(&self, job: &str, backups: u64, bytes: u64) {
        let l = job_labels(job);
        self.repository_backups
            .get_or_create(&l)
            .set(saturating_i64(backups));
        self.repository_bytes
            .get_or_create(&l)
            .set(saturating_i64(bytes));
    }

    /// Sets how many committed backups of the job are dated in the future.
    pub fn set_future_backups(&self, job: &str, n: usize) {
        self.repository_future_backups
            .get_or_create(&job_labels(job))
            .set(saturating_i64(n as u64));
    }

    /// Records a prune run and how many backups it deleted.
    pub fn prune_finished(&self, job: &str, success: bool, deleted: u64) {
        let result = if success { SUCCESS } else { FAILURE };
        self.prune_runs
            .get_or_create(&result_labels(job, result))
            .inc();
        self.prune_deleted
            .get_or_create(&job_labels(job))
            .inc_by(deleted);
    }

    /// Counts a restore into the job's `restore_on_signal` target.
    pub fn restore_finished(&self, job: &str, success: bool) {
        let result = if success { SUCCESS } else { FAILURE };
        self.restore_runs
            .get_or_create(&result_labels(job, result))
            .inc();
    }

    /// Records a finished repository check: counted by its outcome, the
    /// damaged-object gauge set to what it found, and, when everything
    /// was whole, the last-success time.
    pub fn check_finished(&self, job: &str, report: &refugio_core::CheckReport) {
        let l = job_labels(job);
        let result = match report.outcome {
            CheckOutcome::Clean => SUCCESS,
            CheckOutcome::Damaged => FAILURE,
            CheckOutcome::Inconclusive => INCONCLUSIVE,
        };
        self.check_runs
            .get_or_create(&result_labels(job, result))
            .inc();
        self.check_damaged
            .get_or_create(&l)
            .set(saturating_i64(report.damage_count()));
        if report.outcome == CheckOutcome::Clean {
            self.check_last_success
                .get_or_create(&l)
                .set(unix_seconds(report.finished_at));
        }
    }

    /// Records a check that could not run (the store unreachable): counted
    /// as inconclusive; the damage gauge keeps the last check's answer.
    pub fn check_inconclusive(&self, job: &str) {
        self.check_runs
            .get_or_create(&result_labels(job, INCONCLUSIVE))
            .inc();
    }

    fn target(&self, family: &Family<JobLabels, FloatGauge>, l: &JobLabels) -> Option<f64> {
        family.get(l).map(|g| g.get())
    }
}
