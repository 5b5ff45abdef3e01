//! `refugio status`: each job against its targets, from the repository
//! (with `--repository` alone, or with a config file, whose jobs add their
//! kind and targets).
//!
//! Exit codes: 0 every target met (or none set); 1 a target is missed;
//! 2 bad usage; 3 the repository could not be read.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::{anyhow, Result};
use chrono::{DateTime, Utc};
use refugio_core::status::{Objective, StatusReport};

use crate::cli::StatusArgs;
use crate::config::Config;
use crate::exit::{could_not_check, usage};
use crate::output::{human, span};

pub async fn status(cfg: Config, a: StatusArgs) -> Result<ExitCode> {
    let repo = crate::repo::open_existing(&cfg, a.repo.repository.as_deref())
        .await
        .map_err(could_not_check)?;
    let stored = repo.jobs().await.map_err(|e| could_not_check(e.into()))?;
    // The config's jobs first, in its order, then any other the
    // repository holds.
    let mut jobs: Vec<String> = cfg.jobs.iter().map(|j| j.name.clone()).collect();
    jobs.extend(
        stored
            .iter()
            .filter(|j| !jobs.contains(j))
            .cloned()
            .collect::<Vec<_>>(),
    );
    if let Some(job) = &a.job {
        if !jobs.contains(job) {
            return Err(usage(anyhow!(
                "job {job} is neither in the config nor in {} (jobs: {})",
                repo.describe(),
                if jobs.is_empty() {
                    "none".to_string()
                } else {
                    jobs.join(", ")
                }
            )));
        }
        jobs = vec![job.clone()];
    }
    let now = Utc::now();
    let mut reports = Vec::new();
    for name in &jobs {
        let job = cfg.jobs.iter().find(|j| &j.name == name);
        let report = refugio_core::status::report(
            &repo,
            name,
            job.map(|j| j.kind),
            job.map(|j| j.targets()).unwrap_or_default(),
            now,
        )
        .await
        .map_err(|e| could_not_check(anyhow::Error::from(e).context(format!("job {name}"))))?;
        reports.push(report);
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else if reports.is_empty() {
        println!(
            "no jobs: the config names none and {} holds none",
            repo.describe()
        );
    } else {
        for r in &reports {
            print!("{}", report_text(r, now));
        }
    }
    Ok(ExitCode::from(exit_code(&reports)))
}

/// 1 when a report misses a target, else 0.
pub fn exit_code(reports: &[StatusReport]) -> u8 {
    match reports.iter().any(StatusReport::misses_a_target) {
        true => crate::exit::FAILED,
        false => 0,
    }
}

/// One job's status, for people, at `now` (at most 100 columns but for
/// long ids and failure messages).
pub fn report_text(r: &StatusReport, now: DateTime<Utc>) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_report(&mut out, r, now);
    out
}

fn write_report(out: &mut String, r: &StatusReport, now: DateTime<Utc>) -> std::fmt::Result {
    let kind = r.kind.map_or("kind unknown", |k| match k {
        refugio_core::JobKind::Logical => "logical",
        refugio_core::JobKind::Physical => "physical",
    });
    let verdict = if r.misses_a_target() {
        "TARGET MISSED"
    } else {
        "ok"
    };
    writeln!(
        out,
        "job {} ({kind}): {verdict}; {} backup{}, {}",
        r.job,
        r.backups,
        if r.backups == 1 { "" } else { "s" },
        human(r.bytes)
    )?;
    match &r.last_backup {
        Some(b) => writeln!(
            out,
            "  last backup    {}  {} ago{}",
            b.id,
            span(b.age_seconds as f64),
            b.stored_bytes
                .map(|n| format!(", {} stored", human(n)))
                .unwrap_or_default()
        )?,
        None => writeln!(out, "  last backup    none")?,
    }
    match (&r.newest_verified, r.recovery_point) {
        (Some(id), Some(at)) => writeln!(
            out,
            "  verified       {id}  recovery point {}",
            at.format("%Y-%m-%d %H:%M:%S UTC")
        )?,
        _ => writeln!(out, "  verified       none")?,
    }
    writeln!(
        out,
        "  RPO            {}",
        objective(&r.rpo, "no verified backup")
    )?;
    match &r.last_drill {
        Some(d) => {
            writeln!(
                out,
                "  last drill     {} of {}, {} ago",
                d.outcome,
                d.backup_id,
                span((now - d.finished_at).num_seconds() as f64)
            )?;
            for f in d.failures.iter().take(3) {
                writeln!(out, "                 {f}")?;
            }
        }
        None => writeln!(out, "  last drill     none")?,
    }
    writeln!(
        out,
        "  RTO            {}",
        objective(&r.rto, "never measured")
    )?;
    write_last_check(out, r.last_check.as_ref(), now)?;
    if !r.pinned.is_empty() {
        writeln!(out, "  pinned         {}", r.pinned.join(", "))?;
    }
    if let Some(w) = &r.wal {
        writeln!(
            out,
            "  WAL            {} files, {}; {} … {}",
            w.files,
            human(w.bytes),
            w.oldest.as_deref().unwrap_or("-"),
            w.newest.as_deref().unwrap_or("-")
        )?;
        if let Some(lag) = w.lag_seconds {
            writeln!(
                out,
                "                 last archived {} ago",
                span(lag as f64)
            )?;
        }
    }
    for id in &r.future {
        writeln!(
            out,
            "  WARNING        backup {id} is dated in the future (ignored)"
        )?;
    }
    Ok(())
}

/// The agent's last recorded check.
fn write_last_check(
    out: &mut String,
    last: Option<&refugio_core::check::record::LastCheck>,
    now: DateTime<Utc>,
) -> std::fmt::Result {
    match last {
        Some(c) => writeln!(
            out,
            "  last check     {}{}, {} ago ({} backups; data read: {})",
            match c.outcome {
                refugio_core::CheckOutcome::Clean => "clean",
                refugio_core::CheckOutcome::Damaged => "DAMAGED",
                refugio_core::CheckOutcome::Inconclusive => "inconclusive",
            },
            if c.damaged > 0 {
                format!(" ({} damaged)", c.damaged)
            } else {
                String::new()
            },
            span((now - c.finished_at).num_seconds() as f64),
            c.backups,
            c.read_scope
        )?,
        None => writeln!(
            out,
            "  last check     none recorded (the agent records its scheduled checks)"
        )?,
    }
    Ok(())
}

/// `2h 14m (target 6h: met)`, or what is missing.
fn objective(o: &Objective, missing: &str) -> String {
    let value = o.seconds.map_or(missing.to_string(), span);
    match (o.target_seconds, o.met) {
        (Some(t), Some(true)) => format!("{value} (target {}: met)", span(t)),
        (Some(t), _) => format!("{value} (target {}: MISSED)", span(t)),
        (None, _) => format!("{value} (no target)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objectives_say_met_missed_or_missing() {
        let o = |seconds, target: Option<f64>, met| Objective {
            seconds,
            target_seconds: target,
            met,
        };
        assert_eq!(
            objective(&o(Some(3600.0), Some(21600.0), Some(true)), "-"),
            "1h (target 6h: met)"
        );
        assert_eq!(
            objective(&o(None, Some(21600.0), Some(false)), "no verified backup"),
            "no verified backup (target 6h: MISSED)"
        );
        assert_eq!(
            objective(&o(Some(10.0), None, None), "-"),
            "10s (no target)"
        );
    }
}
