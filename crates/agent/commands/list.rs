//! `refugio list`.

use std::process::ExitCode;

use anyhow::Result;
use refugio_core::receipt::Outcome;

use crate::cli::ListArgs;
use crate::config::Config;
use crate::output::human;

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
    println!(
        "{:<16} {:<22} {:<20} {:<16} {:<8} {:>11} {:>11} {:>9}  {:<10} {:<20} {:>8}",
        "JOB",
        "BACKUP",
        "TIME (UTC)",
        "DATABASE",
        "SERVER",
        "STORED",
        "RAW",
        "DURATION",
        "VERIFIED",
        "DRILL (UTC)",
        "RTO"
    );
    for e in &all {
        let m = &e.manifest;
        let (state, when, rto) = match &e.last_drill {
            Some(r) => (
                match r.outcome() {
                    Outcome::Passed => "yes",
                    Outcome::Failed => "FAILED",
                    Outcome::Inconclusive => "no (inconcl.)",
                },
                r.started_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                r.rto
                    .measured_seconds
                    .map_or("-".to_string(), |s| format!("{s:.1}s")),
            ),
            None => ("no", "-".to_string(), "-".to_string()),
        };
        println!(
            "{:<16} {:<22} {:<20} {:<16} {:<8} {:>11} {:>11} {:>8.1}s  {:<10} {:<20} {:>8}",
            m.job,
            m.backup_id,
            m.snapshot_at.format("%Y-%m-%d %H:%M:%S"),
            databases(m),
            m.server.version,
            human(m.stored_size()),
            human(m.raw_size()),
            m.durations.total_seconds,
            state,
            when,
            rto
        );
        if m.is_server() {
            let sizes: Vec<String> = m
                .database_sizes()
                .into_iter()
                .map(|(name, stored)| format!("{name} ({})", human(stored)))
                .collect();
            println!("{:<16} databases: {}", "", sizes.join(", "));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The DATABASE column: the database, or how many a whole-server backup
/// holds (listed on the next line).
fn databases(m: &refugio_store::manifest::Manifest) -> String {
    match m.databases.len() {
        0 => m.database.clone(),
        n => format!("({n} databases)"),
    }
}
