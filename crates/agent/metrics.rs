//! Prometheus metrics of the agent: per-job backup, drill, RPO/RTO,
//! repository and prune series, rendered as OpenMetrics text for `/metrics`.
//!
//! The metric names are contracts (alert rules and the Grafana dashboard
//! use them); the test `every_contract_name_is_exposed` pins them. The job
//! name goes into the label `backup_job`, because Prometheus adds `job`
//! itself.
//!
//! A series that has no meaningful value yet is absent rather than zero:
//! `refugio_backup_last_success_timestamp_seconds` appears with the first
//! successful backup, `refugio_rpo_seconds` with the first verified one.
//! Alert rules should pair them with `absent()`. Counters, on the other
//! hand, are created at 0 by [`Metrics::register_job`] so that `increase()`
//! sees the first failure.

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
type FloatGauge = Gauge<f64, AtomicU64>;
/// Integer gauge (bytes, counts, 1/0 flags).
type IntGauge = Gauge<i64>;

/// Tasks and skip reasons the scheduler reports; their counters start at 0.
const SKIP_TASKS: [&str; 3] = ["backup", "drill", "prune"];
const SKIP_REASONS: [&str; 2] = ["overlap", "lock"];
const SUCCESS: &str = "success";
const FAILURE: &str = "failure";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    backup_job: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    backup_job: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SkipLabels {
    backup_job: String,
    task: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

/// All agent metrics; share it as `Arc<Metrics>`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    backup_last_success: Family<JobLabels, FloatGauge>,
    backup_last_duration: Family<JobLabels, FloatGauge>,
    backup_last_stored: Family<JobLabels, IntGauge>,
    backup_last_raw: Family<JobLabels, IntGauge>,
    backup_runs: Family<ResultLabels, Counter>,
    task_skipped: Family<SkipLabels, Counter>,
    drill_runs: Family<ResultLabels, Counter>,
    drill_last_timestamp: Family<JobLabels, FloatGauge>,
    drill_last_success: Family<JobLabels, IntGauge>,
    rpo: Family<JobLabels, FloatGauge>,
    rpo_target: Family<JobLabels, FloatGauge>,
    rpo_target_met: Family<JobLabels, IntGauge>,
    rto: Family<JobLabels, FloatGauge>,
    rto_target: Family<JobLabels, FloatGauge>,
    rto_target_met: Family<JobLabels, IntGauge>,
    repository_backups: Family<JobLabels, IntGauge>,
    repository_bytes: Family<JobLabels, IntGauge>,
    prune_deleted: Family<JobLabels, Counter>,
    prune_runs: Family<ResultLabels, Counter>,
    /// Every (task, reason) pair seen per job, so `forget_job` can remove
    /// the skip series whatever strings the caller used.
    skip_pairs: Mutex<HashMap<String, HashSet<(String, String)>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every refugio metric registered and no job yet.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        // prometheus-client appends the unit to the name and `_total` to
        // counter samples, so names are registered without those suffixes.
        // HELP text must not end in a period: the encoder adds one.
        let mut gauge_f = |name: &str, help: &str, unit: Option<Unit>| {
            let family = Family::<JobLabels, FloatGauge>::default();
            register(&mut registry, name, help, unit, family.clone());
            family
        };
        let backup_last_success = gauge_f(
            "refugio_backup_last_success_timestamp",
            "Time the last successful backup finished, in unix seconds",
            Some(Unit::Seconds),
        );
        let backup_last_duration = gauge_f(
            "refugio_backup_last_duration",
            "Wall time of the last successful backup, in seconds",
            Some(Unit::Seconds),
        );
        let drill_last_timestamp = gauge_f(
            "refugio_drill_last_timestamp",
            "Time the last restore drill finished, in unix seconds",
            Some(Unit::Seconds),
        );
        let rpo = gauge_f(
            "refugio_rpo",
            "Age of the newest verified backup, in seconds; absent while there is none",
            Some(Unit::Seconds),
        );
        let rpo_target = gauge_f(
            "refugio_rpo_target",
            "Configured recovery point objective, in seconds",
            Some(Unit::Seconds),
        );
        let rto = gauge_f(
            "refugio_rto",
            "Restore wall time measured by the last restore drill, in seconds",
            Some(Unit::Seconds),
        );
        let rto_target = gauge_f(
            "refugio_rto_target",
            "Configured recovery time objective, in seconds",
            Some(Unit::Seconds),
        );

        let mut gauge_i = |name: &str, help: &str, unit: Option<Unit>| {
            let family = Family::<JobLabels, IntGauge>::default();
            register(&mut registry, name, help, unit, family.clone());
            family
        };
        let backup_last_stored = gauge_i(
            "refugio_backup_last_stored",
            "Bytes stored in the repository by the last successful backup, after compression and encryption",
            Some(Unit::Bytes),
        );
        let backup_last_raw = gauge_i(
            "refugio_backup_last_raw",
            "Bytes pg_dump produced in the last successful backup, before compression",
            Some(Unit::Bytes),
        );
        let drill_last_success = gauge_i(
            "refugio_drill_last_success",
            "1 when the last restore drill passed, 0 when it failed",
            None,
        );
        let rpo_target_met = gauge_i(
            "refugio_rpo_target_met",
            "1 when refugio_rpo_seconds is within the RPO target, 0 when not or when there is no verified backup",
            None,
        );
        let rto_target_met = gauge_i(
            "refugio_rto_target_met",
            "1 when the last measured RTO is within the RTO target, 0 when not",
            None,
        );
        let repository_backups = gauge_i(
            "refugio_repository_backups",
            "Number of committed backups of the job in the repository",
            None,
        );
        let repository_bytes = gauge_i(
            "refugio_repository",
            "Bytes stored in the repository for the job",
            Some(Unit::Bytes),
        );

        let backup_runs = Family::<ResultLabels, Counter>::default();
        register(
            &mut registry,
            "refugio_backup_runs",
            "Number of backup runs, by result (success, failure)",
            None,
            backup_runs.clone(),
        );
        let task_skipped = Family::<SkipLabels, Counter>::default();
        register(
            &mut registry,
            "refugio_task_skipped",
            "Number of scheduled tasks (backup, drill, prune) not started, by reason (overlap, lock)",
            None,
            task_skipped.clone(),
        );
        let drill_runs = Family::<ResultLabels, Counter>::default();
        register(
            &mut registry,
            "refugio_drill_runs",
            "Number of restore drills, by result (success, failure)",
            None,
            drill_runs.clone(),
        );
        let prune_deleted = Family::<JobLabels, Counter>::default();
        register(
            &mut registry,
            "refugio_prune_deleted_backups",
            "Number of backups deleted by retention",
            None,
            prune_deleted.clone(),
        );
        let prune_runs = Family::<ResultLabels, Counter>::default();
        register(
            &mut registry,
            "refugio_prune_runs",
            "Number of prune runs, by result (success, failure)",
            None,
            prune_runs.clone(),
        );

        let build_info = Family::<VersionLabels, IntGauge>::default();
        build_info
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        register(
            &mut registry,
            "refugio_build_info",
            "Always 1; the version label carries the refugio version",
            None,
            build_info,
        );

        Self {
            registry,
            backup_last_success,
            backup_last_duration,
            backup_last_stored,
            backup_last_raw,
            backup_runs,
            task_skipped,
            drill_runs,
            drill_last_timestamp,
            drill_last_success,
            rpo,
            rpo_target,
            rpo_target_met,
            rto,
            rto_target,
            rto_target_met,
            repository_backups,
            repository_bytes,
            prune_deleted,
            prune_runs,
            skip_pairs: Mutex::new(HashMap::new()),
        }
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
        }
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
        let l = job_labels(job);
        for family in [
            &self.backup_last_success,
            &self.backup_last_duration,
            &self.drill_last_timestamp,
            &self.rpo,
            &self.rpo_target,
            &self.rto,
            &self.rto_target,
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
            &self.repository_bytes,
        ] {
            family.remove(&l);
        }
        self.prune_deleted.remove(&l);
        for result in [SUCCESS, FAILURE] {
            let rl = result_labels(job, result);
            self.backup_runs.remove(&rl);
            self.drill_runs.remove(&rl);
            self.prune_runs.remove(&rl);
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

    /// Records a failed backup; the `last_*` gauges keep the last success.
    pub fn backup_failed(&self, job: &str) {
        self.backup_runs
            .get_or_create(&result_labels(job, FAILURE))
            .inc();
    }

    /// Records a task the scheduler did not start. `task` is `backup`,
    /// `drill` or `prune`; `reason` is `overlap` (still running here) or
    /// `lock` (another replica holds the job's lock).
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

    /// Sets the current RPO (age of the newest verified backup). `None`
    /// means there is no verified backup: the `refugio_rpo_seconds` series
    /// is removed (an absent series, not a fake number) and, when the job
    /// has an RPO target, `refugio_rpo_target_met` is set to 0.
    pub fn set_rpo(&self, job: &str, rpo: Option<Duration>) {
        let l = job_labels(job);
        let met = match rpo {
            Some(rpo) => {
                let rpo = rpo.as_secs_f64();
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

    /// The registry as OpenMetrics text (ends with `# EOF`), for `/metrics`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; should an encoder fail anyway,
        // the truncated text (no `# EOF`) makes the scrape fail visibly.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }

    /// Labels of a skip series, remembered so `forget_job` can remove it.
    fn skip_labels(&self, job: &str, task: &str, reason: &str) -> SkipLabels {
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

    fn target(&self, family: &Family<JobLabels, FloatGauge>, l: &JobLabels) -> Option<f64> {
        family.get(l).map(|g| g.get())
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

fn job_labels(job: &str) -> JobLabels {
    JobLabels {
        backup_job: job.to_owned(),
    }
}

fn result_labels(job: &str, result: &'static str) -> ResultLabels {
    ResultLabels {
        backup_job: job.to_owned(),
        result,
    }
}

fn flag(b: bool) -> i64 {
    i64::from(b)
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn unix_seconds(t: DateTime<Utc>) -> f64 {
    t.timestamp() as f64 + f64::from(t.timestamp_subsec_nanos()) / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    /// The contract names, as Prometheus stores the series, with their type.
    const CONTRACT: [(&str, &str); 20] = [
        ("refugio_backup_last_success_timestamp_seconds", "gauge"),
        ("refugio_backup_last_duration_seconds", "gauge"),
        ("refugio_backup_last_stored_bytes", "gauge"),
        ("refugio_backup_last_raw_bytes", "gauge"),
        ("refugio_backup_runs_total", "counter"),
        ("refugio_task_skipped_total", "counter"),
        ("refugio_drill_runs_total", "counter"),
        ("refugio_drill_last_timestamp_seconds", "gauge"),
        ("refugio_drill_last_success", "gauge"),
        ("refugio_rpo_seconds", "gauge"),
        ("refugio_rpo_target_seconds", "gauge"),
        ("refugio_rpo_target_met", "gauge"),
        ("refugio_rto_seconds", "gauge"),
        ("refugio_rto_target_seconds", "gauge"),
        ("refugio_rto_target_met", "gauge"),
        ("refugio_repository_backups", "gauge"),
        ("refugio_repository_bytes", "gauge"),
        ("refugio_prune_deleted_backups_total", "counter"),
        ("refugio_prune_runs_total", "counter"),
        ("refugio_build_info", "gauge"),
    ];

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, 0)
            .single()
            .expect("valid timestamp")
    }

    /// The value of the sample whose name and labels are exactly `series`.
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|line| {
            let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
            Some(rest.parse().expect("numeric sample value"))
        })
    }

    /// Whether a sample of exactly `metric` exists for `job`.
    fn has_series(text: &str, metric: &str, job: &str) -> bool {
        let start = format!("{metric}{{");
        let needle = format!("backup_job=\"{job}\"");
        text.lines()
            .any(|l| l.starts_with(&start) && l.contains(&needle))
    }

    const RPO_TARGET_SERIES: [&str; 2] = ["refugio_rpo_target_seconds", "refugio_rpo_target_met"];
    const RTO_SERIES: [&str; 3] = [
        "refugio_rto_seconds",
        "refugio_rto_target_seconds",
        "refugio_rto_target_met",
    ];

    fn everything(m: &Metrics, job: &str) {
        m.register_job(
            job,
            Some(Duration::from_secs(6 * 3600)),
            Some(Duration::from_secs(7200)),
        );
        m.backup_succeeded(job, t(1_790_000_000), Duration::from_millis(1500), 10, 40);
        m.backup_failed(job);
        m.task_skipped(job, "backup", "overlap");
        m.drill_finished(job, t(1_790_000_100), true, Some(Duration::from_secs(60)));
        m.set_rpo(job, Some(Duration::from_secs(100)));
        m.set_repository(job, 3, 30);
        m.prune_finished(job, true, 2);
    }

    #[test]
    fn every_contract_name_is_exposed() {
        let m = Metrics::new();
        everything(&m, "trips");
        let text = m.render();
        assert!(
            text.ends_with("# EOF\n"),
            "OpenMetrics needs # EOF:\n{text}"
        );
        for (name, kind) in CONTRACT {
            // OpenMetrics names a counter family without `_total`; its
            // samples (what Prometheus stores and alert rules query) carry it.
            let family = match kind {
                "counter" => name.strip_suffix("_total").expect("counter ends in _total"),
                _ => name,
            };
            assert!(
                text.lines().any(|l| l == format!("# TYPE {family} {kind}")),
                "no `# TYPE {family} {kind}` in:\n{text}"
            );
            assert!(
                text.lines()
                    .any(|l| l.starts_with(&format!("# HELP {family} ")) && l.len() > 20),
                "no HELP for {family}"
            );
            assert!(
                text.lines().any(|l| l.starts_with(&format!("{name}{{"))),
                "no sample named exactly {name} in:\n{text}"
            );
        }
        for unit_name in CONTRACT
            .iter()
            .map(|(n, _)| *n)
            .filter(|n| n.ends_with("_seconds") || n.ends_with("_bytes"))
        {
            let unit = unit_name.rsplit('_').next().expect("suffix");
            assert!(
                text.contains(&format!("# UNIT {unit_name} {unit}\n")),
                "{unit_name}"
            );
        }
        // Nothing named with a doubled suffix or a stray `job` label.
        assert!(!text.contains("_seconds_seconds") && !text.contains("_bytes_bytes"));
        assert!(!text.contains("_total_total"));
        assert!(!text.contains("{job="));
        let version = format!(
            "refugio_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(value(&text, &version), Some(1.0));
    }

    #[test]
    fn values_after_a_sequence_of_calls() {
        let m = Metrics::new();
        m.register_job("trips", Some(Duration::from_secs(6 * 3600)), None);
        m.backup_failed("trips");
        m.backup_succeeded(
            "trips",
            t(1_790_000_000),
            Duration::from_millis(1500),
            1234,
            98765,
        );
        m.backup_failed("trips");
        m.task_skipped("trips", "drill", "lock");
        m.task_skipped("trips", "drill", "lock");
        m.drill_finished("trips", t(1_790_000_123), false, None);
        m.set_repository("trips", 4, 5000);
        m.prune_finished("trips", true, 3);
        m.prune_finished("trips", false, 0);
        m.prune_finished("trips", true, 1);
        let text = m.render();

        assert!(text
            .lines()
            .any(|l| l == r#"refugio_backup_runs_total{backup_job="trips",result="failure"} 2"#));
        let v = |s: &str| value(&text, s);
        assert_eq!(
            v(r#"refugio_backup_runs_total{backup_job="trips",result="success"}"#),
            Some(1.0)
        );
        assert_eq!(
            v(r#"refugio_backup_last_success_timestamp_seconds{backup_job="trips"}"#),
            Some(1_790_000_000.0)
        );
        assert_eq!(
            v(r#"refugio_backup_last_duration_seconds{backup_job="trips"}"#),
            Some(1.5)
        );
        assert_eq!(
            v(r#"refugio_backup_last_stored_bytes{backup_job="trips"}"#),
            Some(1234.0)
        );
        assert_eq!(
            v(r#"refugio_backup_last_raw_bytes{backup_job="trips"}"#),
            Some(98765.0)
        );
        assert_eq!(
            v(r#"refugio_task_skipped_total{backup_job="trips",task="drill",reason="lock"}"#),
            Some(2.0)
        );
        // Known pairs start at 0 so increase() sees the first skip.
        assert_eq!(
            v(r#"refugio_task_skipped_total{backup_job="trips",task="backup",reason="overlap"}"#),
            Some(0.0)
        );
        assert_eq!(
            v(r#"refugio_drill_runs_total{backup_job="trips",result="failure"}"#),
            Some(1.0)
        );
        assert_eq!(
            v(r#"refugio_drill_runs_total{backup_job="trips",result="success"}"#),
            Some(0.0)
        );
        assert_eq!(
            v(r#"refugio_drill_last_timestamp_seconds{backup_job="trips"}"#),
            Some(1_790_000_123.0)
        );
        assert_eq!(
            v(r#"refugio_drill_last_success{backup_job="trips"}"#),
            Some(0.0)
        );
        assert_eq!(
            v(r#"refugio_repository_backups{backup_job="trips"}"#),
            Some(4.0)
        );
        assert_eq!(
            v(r#"refugio_repository_bytes{backup_job="trips"}"#),
            Some(5000.0)
        );
        assert_eq!(
            v(r#"refugio_prune_deleted_backups_total{backup_job="trips"}"#),
            Some(4.0)
        );
        assert_eq!(
            v(r#"refugio_prune_runs_total{backup_job="trips",result="success"}"#),
            Some(2.0)
        );
        assert_eq!(
            v(r#"refugio_prune_runs_total{backup_job="trips",result="failure"}"#),
            Some(1.0)
        );
        assert_eq!(
            v(r#"refugio_rpo_target_seconds{backup_job="trips"}"#),
            Some(21600.0)
        );
        // No verified backup yet: no RPO series, target not met.
        assert!(!has_series(&text, "refugio_rpo_seconds", "trips"));
        assert_eq!(
            v(r#"refugio_rpo_target_met{backup_job="trips"}"#),
            Some(0.0)
        );
        // No RTO target and no measurement: none of the RTO series.
        for name in RTO_SERIES {
            assert!(!has_series(&text, name, "trips"), "{name} present");
        }
    }

    #[test]
    fn jobs_without_targets_export_no_target_series() {
        let m = Metrics::new();
        m.register_job("plain", None, None);
        m.set_rpo("plain", Some(Duration::from_secs(10)));
        m.drill_finished(
            "plain",
            t(1_790_000_000),
            true,
            Some(Duration::from_secs(5)),
        );
        let text = m.render();
        assert_eq!(
            value(&text, r#"refugio_rpo_seconds{backup_job="plain"}"#),
            Some(10.0)
        );
        assert_eq!(
            value(&text, r#"refugio_rto_seconds{backup_job="plain"}"#),
            Some(5.0)
        );
        for name in [
            "refugio_rpo_target_seconds",
            "refugio_rpo_target_met",
            "refugio_rto_target_seconds",
            "refugio_rto_target_met",
        ] {
            assert!(!has_series(&text, name, "plain"), "{name} present:\n{text}");
        }

        // A reload that removes a target removes its series again.
        m.register_job(
            "plain",
            Some(Duration::from_secs(60)),
            Some(Duration::from_secs(60)),
        );
        assert!(has_series(&m.render(), "refugio_rto_target_met", "plain"));
        m.register_job("plain", None, None);
        let text = m.render();
        for name in RPO_TARGET_SERIES.iter().chain(&RTO_SERIES[1..]) {
            assert!(!has_series(&text, name, "plain"), "{name} present");
        }
        // The measured values stay.
        assert!(has_series(&text, "refugio_rpo_seconds", "plain"));
        assert!(has_series(&text, "refugio_rto_seconds", "plain"));
    }

    #[test]
    fn target_met_flips() {
        let m = Metrics::new();
        m.register_job(
            "trips",
            Some(Duration::from_secs(3600)),
            Some(Duration::from_secs(600)),
        );
        let rpo_met = r#"refugio_rpo_target_met{backup_job="trips"}"#;
        let rto_met = r#"refugio_rto_target_met{backup_job="trips"}"#;
        assert_eq!(value(&m.render(), rpo_met), Some(0.0), "no backup yet");
        assert_eq!(value(&m.render(), rto_met), None, "no drill yet");

        m.set_rpo("trips", Some(Duration::from_secs(3600)));
        assert_eq!(
            value(&m.render(), rpo_met),
            Some(1.0),
            "equal to target is met"
        );
        m.set_rpo("trips", Some(Duration::from_secs(3601)));
        assert_eq!(value(&m.render(), rpo_met), Some(0.0));
        m.set_rpo("trips", Some(Duration::from_secs(5)));
        assert_eq!(value(&m.render(), rpo_met), Some(1.0));
        m.set_rpo("trips", None);
        let text = m.render();
        assert_eq!(value(&text, rpo_met), Some(0.0));
        assert!(!has_series(&text, "refugio_rpo_seconds", "trips"));

        m.drill_finished(
            "trips",
            t(1_790_000_000),
            true,
            Some(Duration::from_secs(601)),
        );
        assert_eq!(value(&m.render(), rto_met), Some(0.0));
        m.drill_finished(
            "trips",
            t(1_790_000_100),
            true,
            Some(Duration::from_secs(599)),
        );
        assert_eq!(value(&m.render(), rto_met), Some(1.0));
        // A drill that measured nothing leaves the last RTO verdict alone.
        m.drill_finished("trips", t(1_790_000_200), false, None);
        assert_eq!(value(&m.render(), rto_met), Some(1.0));

        // A reload tightening the target re-evaluates the current values.
        m.set_rpo("trips", Some(Duration::from_secs(100)));
        m.register_job(
            "trips",
            Some(Duration::from_secs(50)),
            Some(Duration::from_secs(500)),
        );
        let text = m.render();
        assert_eq!(value(&text, rpo_met), Some(0.0));
        assert_eq!(value(&text, rto_met), Some(0.0));
    }

    #[test]
    fn forget_job_removes_its_series_only() {
        let m = Metrics::new();
        everything(&m, "trips");
        everything(&m, "users");
        m.task_skipped("trips", "custom-task", "odd-reason");
        m.forget_job("trips");
        let text = m.render();
        assert!(
            !text.contains(r#"backup_job="trips""#),
            "left over:\n{text}"
        );
        for (name, _) in CONTRACT.iter().filter(|(n, _)| *n != "refugio_build_info") {
            assert!(has_series(&text, name, "users"), "{name} of users gone");
        }
        // The families stay registered and the job can come back.
        everything(&m, "trips");
        assert!(m.render().contains(r#"backup_job="trips""#));
    }
}
