//! `refugio list`.

use std::process::ExitCode;

use anyhow::Result;
use refugio_core::receipt::Outcome;

use crate::cli::ListArgs;
use crate::config::Config;
use std::fmt::Write as _;

use refugio_core::catalog::Entry;

use crate::output::{human, span};

pub async fn list(cfg: Config, a: ListArgs) -> Result<ExitCode> {
    let repo = crate::repo::open_existing(&cfg, a.repo.repository.as_deref()).await?;
    let all = refugio_core::catalog::list(&repo, a.job.as_deref()).await?;
    if a.json {
        let mut out = Vec::new();
        for e in &all {
            let mut v = serde_json::to_value(&e.manifest)?;
            v["verification"] = match &e.last_drill {
                Some(r) => serde_json::json!({
                    "verified": r.verified,
                    "passed": r.passed,
                    "outcome": r.outcome().as_str(),
                    "at": r.started_at,
                    "rto_seconds": r.rto.measured_seconds,
                }),
                None => serde_json::Value::Null,
            };
            out.push(v);
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    if all.is_empty() {
        println!("no backups in {}", repo.describe());
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", list_text(&all));
    Ok(ExitCode::SUCCESS)
}

/// The backups, for people, grouped by job (newest first in each), in at
/// most 100 columns: id, recovery point, database, size, duration, the
/// newest drill's outcome and RTO, pin; a totals line.
pub fn list_text(all: &[Entry]) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_list(&mut out, all);
    out
}

fn write_list(out: &mut String, all: &[Entry]) -> std::fmt::Result {
    let mut jobs: Vec<&str> = Vec::new();
    for e in all {
        if !jobs.contains(&e.manifest.job.as_str()) {
            jobs.push(&e.manifest.job);
        }
    }
    for job in &jobs {
        let entries: Vec<&Entry> = all.iter().filter(|e| e.manifest.job == *job).collect();
        let stored: u64 = entries.iter().map(|e| e.manifest.stored_size()).sum();
        let kind = match entries
            .first()
            .is_some_and(|e| e.manifest.physical.is_some())
        {
            true => "physical",
            false => "logical",
        };
        writeln!(
            out,
            "job {job} ({kind}): {} backup{}, {} stored; times in UTC",
            entries.len(),
            if entries.len() == 1 { "" } else { "s" },
            human(stored)
        )?;
        writeln!(
            out,
            "  {:<18} {:<19} {:<13} {:>9} {:>9} {:<12} {:>8} PIN",
            "BACKUP", "RECOVERY POINT", "DATABASE", "STORED", "DURATION", "DRILL", "RTO"
        )?;
        for e in entries {
            write_entry(out, e)?;
        }
    }
    let stored: u64 = all.iter().map(|e| e.manifest.stored_size()).sum();
    writeln!(
        out,
        "total: {} backup{} of {} job{}, {} stored",
        all.len(),
        if all.len() == 1 { "" } else { "s" },
        jobs.len(),
        if jobs.len() == 1 { "" } else { "s" },
        human(stored)
    )
}

fn write_entry(out: &mut String, e: &Entry) -> std::fmt::Result {
    let m = &e.manifest;
    let (drill, rto) = match &e.last_drill {
        Some(r) => (
            match r.outcome() {
                Outcome::Passed => "passed",
                Outcome::Failed => "FAILED",
                Outcome::Inconclusive => "inconclusive",
            },
            r.rto.measured_seconds.map_or("-".to_string(), span),
        ),
        None => ("none", "-".to_string()),
    };
    let line = format!(
        "  {:<18} {:<19} {:<13} {:>9} {:>9} {:<12} {:>8} {}",
        m.backup_id,
        m.recovery_point().format("%Y-%m-%d %H:%M:%S"),
        databases(m),
        human(m.stored_size()),
        span(m.durations.total_seconds),
        drill,
        rto,
        if e.pinned { "yes" } else { "" }
    );
    writeln!(out, "{}", line.trim_end())?;
    if m.is_server() {
        let sizes: Vec<String> = m
            .database_sizes()
            .into_iter()
            .map(|(name, stored)| format!("{name} ({})", human(stored)))
            .collect();
        writeln!(out, "    databases: {}", sizes.join(", "))?;
    }
    Ok(())
}

/// The DATABASE column: the database, or how many a whole-server backup
/// holds (listed on the next line).
fn databases(m: &refugio_store::manifest::Manifest) -> String {
    match m.databases.len() {
        0 => m.database.clone(),
        n => format!("({n} databases)"),
    }
}
