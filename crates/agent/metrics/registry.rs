//! The registry: every metric refugio exports, registered once, and the
//! per-job series created and removed as jobs come and go.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

/// Float gauge (seconds, timestamps).
pub(super) type FloatGauge = Gauge<f64, AtomicU64>;
/// Integer gauge (bytes, counts, 1/0 flags).
pub(super) type IntGauge = Gauge<i64>;

/// Tasks and skip reasons the scheduler reports; their counters start at 0.
const SKIP_TASKS: [&str; 4] = ["backup", "drill", "prune", "check"];
const SKIP_REASONS: [&str; 2] = ["overlap", "lock"];
pub(super) const SUCCESS: &str = "success";
pub(super) const FAILURE: &str = "failure";
pub(super) const INCONCLUSIVE: &str = "inconclusive";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct JobLabels {
    backup_job: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ResultLabels {
    backup_job: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct SkipLabels {
    backup_job: String,
    task: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct KindLabels {
    pub(super) backup_job: String,
    pub(super) kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct TaskLabels {
    pub(super) backup_job: String,
    pub(super) task: &'static str,
}

/// `database` is whatever name the server has (`"`, `\`, newlines):
/// prometheus-client 0.26+ escapes label values in the text format (0.23
/// and older wrote them raw), which tests/e2e/hygiene.rs holds with a
/// strict parser of a live `/metrics`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct DatabaseLabels {
    pub(super) backup_job: String,
    pub(super) database: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct OperationLabels {
    pub(super) operation: String,
}

/// S3 operations whose retry counters start at 0 (others appear when
/// first retried).
const RETRIED_OPERATIONS: [&str; 8] = [
    "CreateMultipartUpload",
    "UploadPart",
    "CompleteMultipartUpload",
    "PutObject",
    "GetObject",
    "HeadObject",
    "ListObjectsV2",
    "DeleteObjects",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct VersionLabels {
    version: &'static str,
}

/// All agent metrics; share it as `Arc<Metrics>`.
#[derive(Debug)]
pub struct Metrics {
    pub(super) registry: Registry,
    pub(super) backup_last_success: Family<JobLabels, FloatGauge>,
    pub(super) backup_last_duration: Family<JobLabels, FloatGauge>,
    pub(super) backup_last_stored: Family<JobLabels, IntGauge>,
    pub(super) backup_last_raw: Family<JobLabels, IntGauge>,
    /// Per database of a whole-server job's last backup.
    pub(super) backup_last_database_stored: Family<DatabaseLabels, IntGauge>,
    /// The databases that family has series for, per job.
    pub(super) database_series: Mutex<HashMap<String, Vec<String>>>,
    pub(super) backup_runs: Family<ResultLabels, Counter>,
    pub(super) task_skipped: Family<SkipLabels, Counter>,
    /// 1 while a task runs, 0 once it ended.
    pub(super) task_running: Family<TaskLabels, IntGauge>,
    /// 1 per configured job, labelled with its kind.
    pub(super) job_info: Family<KindLabels, IntGauge>,
    /// Bytes a running task moved so far; absent when none runs.
    pub(super) task_progress: Family<TaskLabels, IntGauge>,
    pub(super) drill_runs: Family<ResultLabels, Counter>,
    pub(super) drill_last_timestamp: Family<JobLabels, FloatGauge>,
    pub(super) drill_last_success: Family<JobLabels, IntGauge>,
    pub(super) rpo: Family<JobLabels, FloatGauge>,
    pub(super) rpo_target: Family<JobLabels, FloatGauge>,
    pub(super) rpo_target_met: Family<JobLabels, IntGauge>,
    pub(super) rto: Family<JobLabels, FloatGauge>,
    pub(super) rto_target: Family<JobLabels, FloatGauge>,
    pub(super) rto_target_met: Family<JobLabels, IntGauge>,
    pub(super) repository_backups: Family<JobLabels, IntGauge>,
    pub(super) repository_future_backups: Family<JobLabels, IntGauge>,
    pub(super) repository_bytes: Family<JobLabels, IntGauge>,
    pub(super) prune_deleted: Family<JobLabels, Counter>,
    pub(super) prune_runs: Family<ResultLabels, Counter>,
    pub(super) restore_runs: Family<ResultLabels, Counter>,
    pub(super) store_retries: Family<OperationLabels, Counter>,
    pub(super) check_last_success: Family<JobLabels, FloatGauge>,
    pub(super) check_damaged: Family<JobLabels, IntGauge>,
    pub(super) check_runs: Family<ResultLabels, Counter>,
    pub(super) wal_last_archived: Family<JobLabels, FloatGauge>,
    pub(super) wal_bytes: Family<JobLabels, IntGauge>,
    pub(super) wal_files: Family<JobLabels, IntGauge>,
    pub(super) wal_failures: Family<JobLabels, Counter>,
    /// The server's `pg_stat_archiver.failed_count` last seen, per job.
    pub(super) wal_failed_seen: Mutex<HashMap<String, i64>>,
    /// Each job's newest verified recovery point (`None`: none), from
    /// which `render` computes the RPO gauges at scrape time.
    pub(super) recovery_points: Mutex<HashMap<String, Option<DateTime<Utc>>>>,
    /// Every (task, reason) pair seen per job, so `forget_job` can remove
    /// the skip series whatever strings the caller used.
    pub(super) skip_pairs: Mutex<HashMap<String, HashSet<(String, String)>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every refugio metric registered and no job yet.
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::default(),
            backup_last_success: Family::default(),
            backup_last_duration: Family::default(),
            backup_last_stored: Family::default(),
            backup_last_raw: Family::default(),
            backup_last_database_stored: Family::default(),
            database_series: Mutex::new(HashMap::new()),
            backup_runs: Family::default(),
            task_skipped: Family::default(),
            task_running: Family::default(),
            job_info: Family::default(),
            task_progress: Family::default(),
            drill_runs: Family::default(),
            drill_last_timestamp: Family::default(),
            drill_last_success: Family::default(),
            rpo: Family::default(),
            rpo_target: Family::default(),
            rpo_target_met: Family::default(),
            rto: Family::default(),
            rto_target: Family::default(),
            rto_target_met: Family::default(),
            repository_backups: Family::default(),
            repository_future_backups: Family::default(),
            repository_bytes: Family::default(),
            prune_deleted: Family::default(),
            prune_runs: Family::default(),
            restore_runs: Family::default(),
            store_retries: Family::default(),
            check_last_success: Family::default(),
            check_damaged: Family::default(),
            check_runs: Family::default(),
            wal_last_archived: Family::default(),
            wal_bytes: Family::default(),
            wal_files: Family::default(),
            wal_failures: Family::default(),
            wal_failed_seen: Mutex::new(HashMap::new()),
            recovery_points: Mutex::new(HashMap::new()),
            skip_pairs: Mutex::new(HashMap::new()),
        };
        // prometheus-client appends the unit to the name and `_total` to
        // counter samples, so names are registered without those suffixes.
        // HELP text must not end in a period: the encoder adds one.
        m.register_times();
        m.register_levels();
        m.register_runs();
        for operation in RETRIED_OPERATIONS {
            let _ = m.store_retries.get_or_create(&OperationLabels {
                operation: operation.to_string(),
            });
        }
        let build_info = Family::<VersionLabels, IntGauge>::default();
        build_info
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        register(
            &mut m.registry,
            "refugio_build_info",
            "Always 1; the version label carries the refugio version",
            None,
            build_info,
        );
        m
    }

    /// Timestamps and durations, per job.
    fn register_times(&mut self) {
        register(
            &mut self.registry,
            "refugio_backup_last_success_timestamp",
            "Time the last successful backup finished, in unix seconds",
            Some(Unit::Seconds),
            self.backup_last_success.clone(),
        );
        register(
            &mut self.registry,
            "refugio_backup_last_duration",
            "Wall time of the last successful backup, in seconds",
            Some(Unit::Seconds),
            self.backup_last_duration.clone(),
        );
        register(
            &mut self.registry,
            "refugio_drill_last_timestamp",
            "Time the last restore drill finished, in unix seconds",
            Some(Unit::Seconds),
            self.drill_last_timestamp.clone(),
        );
        register(
            &mut self.registry,
            "refugio_rpo",
            "Age of the newest verified recovery point, in seconds: a logical job's newest verified backup's data, a physical job's newest archived WAL while the archive is unbroken from a verified base backup; absent while there is none",
            Some(Unit::Seconds),
            self.rpo.clone(),
        );
        register(
            &mut self.registry,
            "refugio_rpo_target",
            "Configured recovery point objective, in seconds",
            Some(Unit::Seconds),
            self.rpo_target.clone(),
        );
        register(
            &mut self.registry,
            "refugio_rto",
            "Restore wall time measured by the last restore drill, in seconds",
            Some(Unit::Seconds),
            self.rto.clone(),
        );
        register(
            &mut self.registry,
            "refugio_rto_target",
            "Configured recovery time objective, in seconds",
            Some(Unit::Seconds),
            self.rto_target.clone(),
        );
        register(
            &mut self.registry,
            "refugio_wal_last_archived_timestamp",
            "Time the newest WAL file of a physical job was stored in the repository, in unix seconds (the newest point a recovery can reach)",
            Some(Unit::Seconds),
            self.wal_last_archived.clone(),
        );
        register(
            &mut self.registry,
            "refugio_check_last_success_timestamp",
            "Time the last repository check that found everything whole finished, in unix seconds",
            Some(Unit::Seconds),
            self.check_last_success.clone(),
        );
    }

    /// Sizes, counts and 1/0 flags, per job.
    fn register_levels(&mut self) {
        register(
            &mut self.registry,
            "refugio_backup_last_stored",
            "Bytes stored in the repository by the last successful backup, after compression and encryption",
            Some(Unit::Bytes),
            self.backup_last_stored.clone(),
        );
        register(
            &mut self.registry,
            "refugio_backup_last_raw",
            "Bytes pg_dump produced in the last successful backup, before compression",
            Some(Unit::Bytes),
            self.backup_last_raw.clone(),
        );
        register(
            &mut self.registry,
            "refugio_drill_last_success",
            "1 when the last restore drill passed, 0 when it failed",
            None,
            self.drill_last_success.clone(),
        );
        register(
            &mut self.registry,
            "refugio_rpo_target_met",
            "1 when refugio_rpo_seconds is within the RPO target, 0 when not or when there is no verified backup",
            None,
            self.rpo_target_met.clone(),
        );
        register(
            &mut self.registry,
            "refugio_rto_target_met",
            "1 when the last measured RTO is within the RTO target, 0 when not",
            None,
            self.rto_target_met.clone(),
        );
        register(
            &mut self.registry,
            "refugio_repository_backups",
            "Number of committed backups of the job in the repository",
            None,
            self.repository_backups.clone(),
        );
        register(
            &mut self.registry,
            "refugio_repository_future_backups",
            "Committed backups of the job dated later than now plus clock_tolerance (a writer's clock was wrong); ignored by scheduling, latest, drills and retention",
            None,
            self.repository_future_backups.clone(),
        );
        register(
            &mut self.registry,
            "refugio_repository",
            "Bytes stored in the repository for the job",
            Some(Unit::Bytes),
            self.repository_bytes.clone(),
        );
        register(
            &mut self.registry,
            "refugio_wal_archived",
            "Bytes of a physical job's WAL archive in the repository",
            Some(Unit::Bytes),
            self.wal_bytes.clone(),
        );
        register(
            &mut self.registry,
            "refugio_wal_archived_files",
            "Files in a physical job's WAL archive (segments, history, backup files)",
            None,
            self.wal_files.clone(),
        );
        register(
            &mut self.registry,
            "refugio_check_damaged_objects",
            "Artifacts the last repository check found missing or not matching their manifest, unreadable manifests, and gaps and conflicts in a WAL archive",
            None,
            self.check_damaged.clone(),
        );
    }

    /// Per-database sizes and the run counters.
    fn register_runs(&mut self) {
        register(
            &mut self.registry,
            "refugio_backup_last_database_stored",
            "Bytes stored for each database by the last successful backup of a whole-server job",
            Some(Unit::Bytes),
            self.backup_last_database_stored.clone(),
        );
        register(
            &mut self.registry,
            "refugio_backup_runs",
            "Number of backup runs, by result (success, failure)",
            None,
            self.backup_runs.clone(),
        );
        register(
            &mut self.registry,
            "refugio_task_skipped",
            "Number of scheduled tasks (backup, drill, prune, check) not started, by reason (overlap, lock)",
            None,
            self.task_skipped.clone(),
        );
        register(
            &mut self.registry,
            "refugio_job_info",
            "1 for each configured job, with its kind (logical, physical)",
            None,
            self.job_info.clone(),
        );
        register(
            &mut self.registry,
            "refugio_task_running",
            "1 while a task of the job runs (backup, drill, restore, prune, check), 0 once it ended",
            None,
            self.task_running.clone(),
        );
        register(
            &mut self.registry,
            "refugio_task_progress",
            "Bytes a running task moved so far (backup: stored; drill, restore: fetched; check: read), updated every 10 s; absent when it does not run",
            Some(Unit::Bytes),
            self.task_progress.clone(),
        );
        register(
            &mut self.registry,
            "refugio_drill_runs",
            "Number of restore drills, by result (success, failure: the backup is bad, inconclusive: it could not be checked)",
            None,
            self.drill_runs.clone(),
        );
        register(
            &mut self.registry,
            "refugio_prune_deleted_backups",
            "Number of backups deleted by retention",
            None,
            self.prune_deleted.clone(),
        );
        register(
            &mut self.registry,
            "refugio_prune_runs",
            "Number of prune runs, by result (success, failure)",
            None,
            self.prune_runs.clone(),
        );
        register(
            &mut self.registry,
            "refugio_restore_runs",
            "Number of restores into the job's restore_on_signal target, by result (success, failure)",
            None,
            self.restore_runs.clone(),
        );
        register(
            &mut self.registry,
            "refugio_check_runs",
            "Number of repository checks, by result (success, failure: damage found, inconclusive: not everything could be checked)",
            None,
            self.check_runs.clone(),
        );
        register(
            &mut self.registry,
            "refugio_wal_archive_failures",
            "Failed archive_command runs of a physical job's server (growth of pg_stat_archiver.failed_count seen by the agent)",
            None,
            self.wal_failures.clone(),
        );
        register(
            &mut self.registry,
            "refugio_store_retries",
            "Number of S3 requests retried (and downloads resumed) after a transient error, by operation",
            None,
            self.store_retries.clone(),
        );
    }

    /// Declares a job (at start and after each config reload): sets or
    /// removes its target gauges and creates its counters at 0. A job
    /// without a target exports no `*_target_seconds` / `*_target_met`
    /// series. `*_target_met` is recomputed from the current measurement
    /// when there is one.
    pub fn register_job(
        &self,
        job: &str,
        rpo_target: Option<Duration>,
        rto_target: Option<Duration>,
    ) {
        let l = job_labels(job);
        match rpo_target {
            Some(target) => {
                self.rpo_target.get_or_create(&l).set(target.as_secs_f64());
                let measured = self.rpo.get(&l).map(|g| g.get());
                // No verified backup yet (no rpo series) means not met.
                let met = measured.is_some_and(|rpo| rpo <= target.as_secs_f64());
                self.rpo_target_met.get_or_create(&l).set(flag(met));
            }
            None => {
                self.rpo_target.remove(&l);
                self.rpo_target_met.remove(&l);
            }
        }
        match rto_target {
            Some(target) => {
                self.rto_target.get_or_create(&l).set(target.as_secs_f64());
                // Before the first drill nothing is known; leave `met` absent.
                match self.rto.get(&l).map(|g| g.get()) {
                    Some(rto) => {
                        let met = rto <= target.as_secs_f64();
                        self.rto_target_met.get_or_create(&l).set(flag(met));
                    }
                    None => {
                        self.rto_target_met.remove(&l);
                    }
                }
            }
            None => {
                self.rto_target.remove(&l);
                self.rto_target_met.remove(&l);
            }
        }
        // Only creating the series (at 0) matters here, not the handle.
        for result in [SUCCESS, FAILURE] {
            let rl = result_labels(job, result);
            self.backup_runs.get_or_create_owned(&rl);
            self.drill_runs.get_or_create_owned(&rl);
            self.prune_runs.get_or_create_owned(&rl);
            self.restore_runs.get_or_create_owned(&rl);
        }
        for result in [SUCCESS, FAILURE, INCONCLUSIVE] {
            self.check_runs
                .get_or_create_owned(&result_labels(job, result));
        }
        // No damage is known until a check finds some (and an alert on
        // `> 0` needs no absent()); a reload keeps the last check's count.
        self.check_damaged.get_or_create_owned(&l);
        self.drill_runs
            .get_or_create_owned(&result_labels(job, INCONCLUSIVE));
        self.prune_deleted.get_or_create_owned(&l);
        for task in SKIP_TASKS {
            for reason in SKIP_REASONS {
                self.task_skipped
                    .get_or_create_owned(&self.skip_labels(job, task, reason));
            }
        }
    }

    /// Removes every series of a job (after a config reload dropped it).
    pub fn forget_job(&self, job: &str) {
        let mut points = self
            .recovery_points
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        points.remove(job);
        let l = job_labels(job);
        for family in [
            &self.backup_last_success,
            &self.backup_last_duration,
            &self.drill_last_timestamp,
            &self.rpo,
            &self.rpo_target,
            &self.rto,
            &self.rto_target,
            &self.check_last_success,
            &self.wal_last_archived,
        ] {
            family.remove(&l);
        }
        for family in [
            &self.backup_last_stored,
            &self.backup_last_raw,
            &self.drill_last_success,
            &self.rpo_target_met,
            &self.rto_target_met,
            &self.repository_backups,
            &self.repository_future_backups,
            &self.repository_bytes,
            &self.check_damaged,
            &self.wal_bytes,
            &self.wal_files,
        ] {
            family.remove(&l);
        }
        self.prune_deleted.remove(&l);
        self.wal_failures.remove(&l);
        for kind in ["logical", "physical"] {
            self.job_info.remove(&KindLabels {
                backup_job: job.to_owned(),
                kind,
            });
        }
        for task in ["backup", "drill", "restore", "prune", "check"] {
            let t = TaskLabels {
                backup_job: job.to_owned(),
                task,
            };
            self.task_running.remove(&t);
            self.task_progress.remove(&t);
        }
        self.wal_failed_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(job);
        self.set_database_sizes(job, &[]);
        for result in [SUCCESS, FAILURE] {
            let rl = result_labels(job, result);
            self.backup_runs.remove(&rl);
            self.drill_runs.remove(&rl);
            self.prune_runs.remove(&rl);
            self.restore_runs.remove(&rl);
        }
        self.drill_runs.remove(&result_labels(job, INCONCLUSIVE));
        for result in [SUCCESS, FAILURE, INCONCLUSIVE] {
            self.check_runs.remove(&result_labels(job, result));
        }
        let pairs = self
            .skip_pairs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(job)
            .unwrap_or_default();
        for (task, reason) in pairs {
            self.task_skipped.remove(&SkipLabels {
                backup_job: job.to_owned(),
                task,
                reason,
            });
        }
    }

    /// The registry as OpenMetrics text (ends with `# EOF`), for `/metrics`.
    pub fn render(&self) -> String {
        // The RPO is the newest verified backup's age now, not when the
        // repository was last listed.
        // Held while encoding, so a job that `forget_job` removes is not
        // brought back half-way.
        let points = self
            .recovery_points
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = Utc::now();
        for (job, point) in points.iter() {
            self.refresh_rpo(job, *point, now);
        }
        let mut out = String::new();
        // Writing into a String cannot fail; should an encoder fail anyway,
        // the truncated text (no `# EOF`) makes the scrape fail visibly.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }

    /// Labels of a skip series, remembered so `forget_job` can remove it.
    pub(super) fn skip_labels(&self, job: &str, task: &str, reason: &str) -> SkipLabels {
        self.skip_pairs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(job.to_owned())
            .or_default()
            .insert((task.to_owned(), reason.to_owned()));
        SkipLabels {
            backup_job: job.to_owned(),
            task: task.to_owned(),
            reason: reason.to_owned(),
        }
    }
}

fn register(
    registry: &mut Registry,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    metric: impl prometheus_client::registry::Metric,
) {
    match unit {
        Some(unit) => registry.register_with_unit(name, help, unit, metric),
        None => registry.register(name, help, metric),
    }
}

pub(super) fn job_labels(job: &str) -> JobLabels {
    JobLabels {
        backup_job: job.to_owned(),
    }
}

pub(super) fn result_labels(job: &str, result: &'static str) -> ResultLabels {
    ResultLabels {
        backup_job: job.to_owned(),
        result,
    }
}

pub(super) fn flag(b: bool) -> i64 {
    i64::from(b)
}

pub(super) fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(super) fn unix_seconds(t: DateTime<Utc>) -> f64 {
    t.timestamp() as f64 + f64::from(t.timestamp_subsec_nanos()) / 1e9
}
