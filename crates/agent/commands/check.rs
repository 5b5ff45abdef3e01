//! `refugio check`: the repository's integrity, without a restore.
//!
//! Exit codes: 0 nothing damaged (orphans and stale uploads are reported,
//! not damage); 1 an artifact is missing or does not match its manifest;
//! 2 bad usage; 3 the repository could not be checked (or, with no damage
//! found, part of it could not be read).

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::{anyhow, Result};
use refugio_core::check::{CheckOptions, Problem, ReadData};
use refugio_core::{CheckOutcome, CheckReport, SystemClock};
use tokio_util::sync::CancellationToken;

use crate::cli::CheckArgs;
use crate::config::Config;
use crate::exit::{could_not_check, usage, COULD_NOT_CHECK};
use crate::output::human;

pub async fn check(cfg: Config, a: CheckArgs) -> Result<ExitCode> {
    let repo = crate::repo::open_existing(&cfg, a.repo.repository.as_deref())
        .await
        .map_err(could_not_check)?;
    let read_data = match (a.read_data, &a.backup, &a.subset) {
        (false, _, _) => ReadData::None,
        (true, Some(backup), _) => ReadData::Backup(backup.clone()),
        (true, None, Some(spec)) => {
            ReadData::subset(spec).map_err(|e| usage(anyhow!("--subset: {e}")))?
        }
        (true, None, None) => ReadData::All,
    };
    // A backup id belongs to one job.
    let jobs = match (&a.job, &a.backup) {
        // A typo in --job must not pass for a clean, empty job.
        (Some(job), _) => {
            let known = repo.jobs().await.map_err(|e| could_not_check(e.into()))?;
            if !known.contains(job) {
                return Err(usage(anyhow!(
                    "job {job} has nothing in {} (jobs there: {})",
                    repo.describe(),
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )));
            }
            vec![job.clone()]
        }
        (None, Some(_)) => vec![super::infer_job(&cfg, &repo, None)
            .await
            .map_err(could_not_check_unless_usage)?],
        (None, None) => repo.jobs().await.map_err(|e| could_not_check(e.into()))?,
    };
    if jobs.is_empty() {
        println!("no backups in {}: nothing to check", repo.describe());
        return Ok(ExitCode::SUCCESS);
    }
    let token = CancellationToken::new();
    crate::signals::cancel_on_stop(token.clone());
    let mut reports = Vec::new();
    let mut failure = None;
    let shown = match read_data {
        refugio_core::check::ReadData::None => None,
        _ => crate::progress::start(crate::progress::CHECK),
    };
    for job in jobs {
        let configured = cfg.jobs.iter().find(|j| j.name == job);
        let opts = CheckOptions {
            progress: shown.as_ref().map(|s| s.progress()),
            ..crate::job::check_options(&job, configured, read_data.clone())
        };
        match refugio_core::check(&repo, &opts, &SystemClock, &token).await {
            Ok(r) => reports.push(r),
            Err(e @ refugio_core::Error::Store(refugio_store::Error::BackupNotFound { .. })) => {
                return Err(usage(e.into()))
            }
            Err(e) => {
                failure = Some(anyhow::Error::from(e).context(format!(
                    "checking job {job} (not damage: the check could not look)"
                )));
                break;
            }
        }
    }
    drop(shown);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for r in &reports {
            print!("{}", report_text(r));
        }
    }
    if let Some(e) = failure {
        return Err(could_not_check(e));
    }
    Ok(ExitCode::from(exit_code(&reports)))
}

/// The exit code of a check that produced `reports`: damage first, then
/// what could not be checked.
pub fn exit_code(reports: &[CheckReport]) -> u8 {
    if reports.iter().any(|r| r.outcome == CheckOutcome::Damaged) {
        crate::exit::FAILED
    } else if reports
        .iter()
        .any(|r| r.outcome == CheckOutcome::Inconclusive)
    {
        COULD_NOT_CHECK
    } else {
        0
    }
}

/// A usage error stays one; anything else could not check.
fn could_not_check_unless_usage(e: anyhow::Error) -> anyhow::Error {
    if e.downcast_ref::<crate::exit::UsageError>().is_some() {
        e
    } else {
        could_not_check(e)
    }
}

/// One job's check report, for people, as `refugio check` prints it.
pub fn report_text(r: &CheckReport) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_report(&mut out, r);
    out
}

fn write_report(out: &mut String, r: &CheckReport) -> std::fmt::Result {
    let verdict = match r.outcome {
        CheckOutcome::Clean => "OK",
        CheckOutcome::Damaged => "DAMAGED",
        CheckOutcome::Inconclusive => {
            "INCOMPLETE (no damage found, but not everything could be checked)"
        }
    };
    writeln!(
        out,
        "job {}: {verdict}: {}, {} checked against the listing; {}",
        r.job,
        count(r.backups, "backup"),
        count(r.artifacts, "artifact"),
        if r.read.scope == "none" {
            "no data read (--read-data re-hashes the artifacts)".to_string()
        } else {
            format!(
                "{} of {} re-hashed ({}, {})",
                count(r.read.artifacts, "artifact"),
                count(r.read.backups, "backup"),
                human(r.read.bytes),
                r.read.scope
            )
        }
    )?;
    for m in &r.missing {
        writeln!(out, "  MISSING  {}", m.key)?;
    }
    for d in &r.damaged {
        match &d.problem {
            Problem::Size { expected, actual } => writeln!(
                out,
                "  DAMAGED  {}: {actual} bytes stored, the manifest says {expected}",
                d.key
            )?,
            Problem::Digest { expected, actual } => writeln!(
                out,
                "  DAMAGED  {}: SHA-256 {actual}, the manifest says {expected}",
                d.key
            )?,
            Problem::Manifest { reason } => writeln!(
                out,
                "  DAMAGED  {}: not a readable manifest: {reason}",
                d.key
            )?,
        }
    }
    if let Some(w) = &r.wal {
        write_wal(out, w)?;
    }
    for id in &r.future {
        writeln!(
 out,"  WARNING  backup {id} is dated in the future (later than now plus repository.clock_tolerance): a writer's clock was wrong; scheduling, `latest`, drills and retention ignore it (delete it by hand once checked)")?;
    }
    for f in &r.foreign {
        writeln!(
 out,"  FOREIGN  {}: {} (not refugio's, or written before repository.authentication was configured: never restored, drilled, counted or deleted; delete it by hand once you know what it is)", f.key, f.reason)?;
    }
    for u in &r.unchecked {
        writeln!(out, "  NOT CHECKED  {}: {}", u.key, u.error)?;
    }
    for k in &r.receipts_without_manifest {
        writeln!(out, "  receipt without manifest (not damage): {k}")?;
    }
    for k in &r.orphans {
        writeln!(
            out,
            "  orphan (not damage; `refugio prune` collects it): {k}"
        )?;
    }
    for k in &r.stale_uploads {
        writeln!(
            out,
            "  stale multipart upload (not damage; `refugio prune` aborts it): {k}"
        )?;
    }
    Ok(())
}

/// A physical job's WAL archive: its extent, gaps and conflicts.
fn write_wal(out: &mut String, w: &refugio_core::wal_chain::WalChain) -> std::fmt::Result {
    writeln!(
        out,
        "  WAL archive: {} files, {}; newest segment {}{}",
        w.files,
        human(w.bytes),
        w.newest.as_deref().unwrap_or("none"),
        w.newest_at
            .map(|t| format!(" (stored {})", t.to_rfc3339()))
            .unwrap_or_default()
    )?;
    for g in &w.gaps {
        let cut = if g.backups.is_empty() {
            String::new()
        } else {
            format!(
                "; base backups {} cannot be recovered past it",
                g.backups.join(", ")
            )
        };
        if g.pending {
            writeln!(
 out,
                "  WAL NOT ARCHIVED YET  timeline {}: {} segment(s), {} to {}, missing after everything archived (a standby's base backup waits for the primary's next segment switch){cut}",
                g.timeline, g.segments, g.from, g.to
            )?;
        } else {
            writeln!(
                out,
                "  WAL GAP  timeline {}: {} segment(s) missing, {} to {}{cut}",
                g.timeline, g.segments, g.from, g.to
            )?;
        }
    }
    for c in &w.conflicts {
        writeln!(
 out,"  WAL CONFLICT  {c} is archived twice with different content (two servers archiving into this job?)")?;
    }
    Ok(())
}

/// `1 backup`, `2 backups`.
fn count(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}
