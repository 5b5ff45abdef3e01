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
//! sees the first failure, and so is `refugio_check_damaged_objects` (no
//! damage is known before a check finds some).

mod registry;
mod updates;

pub use registry::Metrics;

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use chrono::{DateTime, Utc};
    use std::time::Duration;

    /// The contract names, as Prometheus stores the series, with their type.
    const CONTRACT: [(&str, &str); 34] = [
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
        ("refugio_repository_future_backups", "gauge"),
        ("refugio_prune_deleted_backups_total", "counter"),
        ("refugio_prune_runs_total", "counter"),
        ("refugio_store_retries_total", "counter"),
        ("refugio_restore_runs_total", "counter"),
        ("refugio_backup_last_database_stored_bytes", "gauge"),
        ("refugio_build_info", "gauge"),
        ("refugio_check_last_success_timestamp_seconds", "gauge"),
        ("refugio_check_damaged_objects", "gauge"),
        ("refugio_check_runs_total", "counter"),
        ("refugio_wal_archived_files", "gauge"),
        ("refugio_wal_archived_bytes", "gauge"),
        ("refugio_wal_last_archived_timestamp_seconds", "gauge"),
        ("refugio_wal_archive_failures_total", "counter"),
        ("refugio_task_running", "gauge"),
        ("refugio_job_info", "gauge"),
        ("refugio_task_progress_bytes", "gauge"),
    ];

    /// A check report of `job` with `outcome` and `damaged` missing artifacts.
    fn check_report(
        job: &str,
        outcome: refugio_core::CheckOutcome,
        damaged: usize,
        at: DateTime<Utc>,
    ) -> refugio_core::CheckReport {
        refugio_core::CheckReport {
            outcome,
            backups: 3,
            artifacts: 6,
            missing: (0..damaged)
                .map(|i| refugio_core::check::Missing {
                    backup_id: format!("b{i}"),
                    key: format!("{job}/b{i}/database.dump.zst"),
                })
                .collect(),
            ..refugio_core::CheckReport::new(job, at, String::new())
        }
    }

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
        m.set_future_backups(job, 1);
        m.prune_finished(job, true, 2);
        m.restore_finished(job, true);
        m.set_database_sizes(job, &[("café trips".into(), 5)]);
        m.check_finished(
            job,
            &check_report(job, refugio_core::CheckOutcome::Clean, 0, t(1_790_000_200)),
        );
        m.set_wal(
            job,
            &refugio_core::listing::WalSeen {
                files: 2,
                bytes: 32 << 20,
                last_archived: Some(t(1_790_000_300)),
                objects: Vec::new(),
            },
        );
        m.set_archiver_failures(job, 0);
        m.task_running(job, "backup", true);
        m.set_job_kind(job, "logical");
        m.task_progress(job, "backup", 4096);
    }

    #[test]
    fn checks_count_by_outcome_and_keep_the_last_damage() {
        use refugio_core::CheckOutcome;
        let m = Metrics::new();
        m.register_job("trips", None, None);
        let v = |text: &str, s: &str| value(text, s);
        let text = m.render();
        let runs =
            |r: &str| format!(r#"refugio_check_runs_total{{backup_job="trips",result="{r}"}}"#);
        assert_eq!(v(&text, &runs("failure")), Some(0.0), "created at 0");
        assert_eq!(
            v(
                &text,
                r#"refugio_check_damaged_objects{backup_job="trips"}"#
            ),
            Some(0.0),
            "no damage known before a check"
        );
        assert!(!has_series(
            &text,
            "refugio_check_last_success_timestamp_seconds",
            "trips"
        ));
        m.check_finished(
            "trips",
            &check_report("trips", CheckOutcome::Clean, 0, t(1_790_000_000)),
        );
        m.check_finished(
            "trips",
            &check_report("trips", CheckOutcome::Damaged, 2, t(1_790_000_100)),
        );
        m.check_inconclusive("trips");
        let text = m.render();
        assert_eq!(v(&text, &runs("success")), Some(1.0));
        assert_eq!(v(&text, &runs("failure")), Some(1.0));
        assert_eq!(v(&text, &runs("inconclusive")), Some(1.0));
        assert_eq!(
            v(
                &text,
                r#"refugio_check_damaged_objects{backup_job="trips"}"#
            ),
            Some(2.0),
            "a check that could not run leaves the last answer"
        );
        assert_eq!(
            v(
                &text,
                r#"refugio_check_last_success_timestamp_seconds{backup_job="trips"}"#
            ),
            Some(1_790_000_000.0),
            "only a clean check is a success"
        );
        m.register_job("trips", None, None);
        assert_eq!(
            v(
                &m.render(),
                r#"refugio_check_damaged_objects{backup_job="trips"}"#
            ),
            Some(2.0),
            "a reload keeps the last check's count"
        );
    }

    /// Every family the registry exposes, as Prometheus stores its samples
    /// (counters with `_total`), with its type.
    fn families() -> Vec<(String, String)> {
        let m = Metrics::new();
        everything(&m, "trips");
        let text = m.render();
        let mut out: Vec<(String, String)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_once(' '))
            .map(|(name, kind)| match kind {
                "counter" => (format!("{name}_total"), kind.to_string()),
                _ => (name.to_string(), kind.to_string()),
            })
            .collect();
        out.sort();
        out
    }

    /// The registry, the contract list, the metrics table of
    /// docs/configuration.md and scripts/check-deploy's list name the same
    /// metrics: none is added, renamed or dropped in one place only.
    #[test]
    fn the_docs_and_the_deploy_checks_list_every_metric() {
        let exposed = families();
        let mut contract: Vec<(String, String)> = CONTRACT
            .iter()
            .map(|(n, k)| (n.to_string(), k.to_string()))
            .collect();
        contract.sort();
        assert_eq!(contract, exposed, "CONTRACT against the registry");
        let names: Vec<&str> = exposed.iter().map(|(n, _)| n.as_str()).collect();
        let docs = include_str!("../../../docs/configuration.md");
        let mut documented: Vec<&str> = docs
            .lines()
            .filter_map(|l| l.strip_prefix("| `refugio_"))
            .filter_map(|l| l.split('`').next())
            .collect();
        documented.sort();
        documented.dedup();
        let documented: Vec<String> = documented.iter().map(|n| format!("refugio_{n}")).collect();
        assert_eq!(documented, names, "docs/configuration.md's metrics table");
        let script = include_str!("../../../scripts/check-deploy");
        let block = script
            .split_once("METRICS=\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(block, _)| block)
            .expect("scripts/check-deploy has METRICS=\"…\"");
        let mut listed: Vec<&str> = block.split_whitespace().collect();
        listed.sort();
        assert_eq!(listed, names, "scripts/check-deploy's METRICS");
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
    fn wal_archive_series_follow_the_listing_and_the_archiver() {
        let m = Metrics::new();
        m.register_job("pitr", None, None);
        let text = m.render();
        assert_eq!(
            value(&text, r#"refugio_wal_archived_files{backup_job="pitr"}"#),
            None
        );
        m.set_wal(
            "pitr",
            &refugio_core::listing::WalSeen {
                files: 3,
                bytes: 4096,
                last_archived: Some(t(1_790_000_000)),
                objects: Vec::new(),
            },
        );
        // The first reading is the baseline; growth counts; a stats reset
        // (a smaller count) starts over without going backwards.
        for failed in [7, 9, 2, 3] {
            m.set_archiver_failures("pitr", failed);
        }
        let text = m.render();
        assert_eq!(
            value(&text, r#"refugio_wal_archived_files{backup_job="pitr"}"#),
            Some(3.0)
        );
        assert_eq!(
            value(&text, r#"refugio_wal_archived_bytes{backup_job="pitr"}"#),
            Some(4096.0)
        );
        assert_eq!(
            value(
                &text,
                r#"refugio_wal_last_archived_timestamp_seconds{backup_job="pitr"}"#
            ),
            Some(1_790_000_000.0)
        );
        assert_eq!(
            value(
                &text,
                r#"refugio_wal_archive_failures_total{backup_job="pitr"}"#
            ),
            Some(3.0)
        );
        m.set_wal("pitr", &Default::default());
        let text = m.render();
        assert_eq!(
            value(&text, r#"refugio_wal_archived_files{backup_job="pitr"}"#),
            None
        );
        m.forget_job("pitr");
        let text = m.render();
        assert_eq!(
            value(
                &text,
                r#"refugio_wal_archive_failures_total{backup_job="pitr"}"#
            ),
            None
        );
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

    /// The RPO is the recovery point's age at each scrape: it grows, and
    /// the target turns breached, with no new measurement (a store outage
    /// stops the listings that measure it; fault scenario 23).
    #[test]
    fn rpo_grows_between_measurements() {
        let m = Metrics::new();
        m.register_job("trips", Some(Duration::from_secs(3600)), None);
        let rpo = r#"refugio_rpo_seconds{backup_job="trips"}"#;
        let met = r#"refugio_rpo_target_met{backup_job="trips"}"#;
        m.set_rpo("trips", Some(Duration::from_secs(3599)));
        let text = m.render();
        assert_eq!(value(&text, rpo), Some(3599.0));
        assert_eq!(value(&text, met), Some(1.0));
        std::thread::sleep(Duration::from_millis(2100));
        let text = m.render();
        assert!(value(&text, rpo).is_some_and(|v| v >= 3601.0), "{text}");
        assert_eq!(value(&text, met), Some(0.0), "{text}");
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
        // (The build info and the store's retries carry no job label.)
        let per_job = |n: &str| n != "refugio_build_info" && n != "refugio_store_retries_total";
        for (name, _) in CONTRACT.iter().filter(|(n, _)| per_job(n)) {
            assert!(has_series(&text, name, "users"), "{name} of users gone");
        }
        // The families stay registered and the job can come back.
        everything(&m, "trips");
        assert!(m.render().contains(r#"backup_job="trips""#));
    }
}
