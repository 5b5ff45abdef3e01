//! `refugio verify`: a restore drill of one backup.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};
use refugio_core::drill::{self, Pick};
use refugio_core::receipt::Outcome;
use refugio_core::restore::physical::{choose_base, RecoveryTarget};
use refugio_core::SystemClock;
use refugio_core::{DrillOptions, Scratch};
use refugio_schedule::TaskKind;
use tokio_util::sync::CancellationToken;

use crate::cli::VerifyArgs;
use crate::config::Config;
use crate::exit::usage;
use crate::job::Job;

pub async fn verify(cfg: Config, a: VerifyArgs) -> Result<ExitCode> {
    let repo = crate::repo::open_existing(&cfg, a.repo.repository.as_deref()).await?;
    let pick = match a.backup.as_str() {
        "unverified" => Pick::Unverified,
        spec => Pick::Spec(spec),
    };
    let (name, opts, lock) = drill_of(&cfg, &repo, &a).await?;
    let (opts, to) = at_point(opts, a.to.as_deref(), &name)?;
    // A backup no trusted agent key signed is not drilled: inconclusive
    // (exit 3), reported as foreign, never failed.
    let (mut manifest, history) = drill::pick(&repo, &name, pick).await.map_err(|e| {
        let e = anyhow::Error::new(e);
        if crate::exit::is_foreign(&e) {
            crate::exit::could_not_check(e.context("INCONCLUSIVE: the backup is foreign (not signed by a trusted agent key); it was not drilled"))
        } else {
            e
        }
    })?;
    if let (Some(to), "latest") = (to, a.backup.as_str()) {
        manifest = choose_base(&history, to)
            .map_err(|why| anyhow!("job {name} in {}: {why}", repo.describe()))?
            .clone();
    }
    let _lock = match &lock {
        Some(job) => crate::task::for_command(job, TaskKind::Drill).await?,
        None => None,
    };
    let token = CancellationToken::new();
    crate::signals::cancel_on_stop(token.clone());
    let shown = crate::progress::start(crate::progress::RESTORE);
    let opts = DrillOptions {
        progress: shown.as_ref().map(|s| s.progress()),
        require_encrypted: opts.require_encrypted && !a.allow_unencrypted,
        ..opts
    };
    let receipt =
        refugio_core::drill(&repo, &manifest, &history, &opts, &SystemClock, &token).await;
    drop(shown);
    let receipt = receipt?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&receipt)?);
    } else {
        print!("{}", receipt_text(&receipt));
    }
    Ok(match (receipt.passed, receipt.outcome()) {
        (true, _) => ExitCode::SUCCESS,
        // Could not check, as `refugio check` says it: not a bad backup.
        (false, Outcome::Inconclusive) => ExitCode::from(crate::exit::COULD_NOT_CHECK),
        (false, _) => ExitCode::from(crate::exit::FAILED),
    })
}

/// The job's name, the drill's options and the job (for its lock) of
/// `refugio verify`. Zero config (no [[jobs]]): the repository's job, an
/// ephemeral scratch cluster unless --scratch says otherwise, no SQL checks
/// or targets, and no job lock (there is no source to take it on).
async fn drill_of(
    cfg: &Config,
    repo: &refugio_store::repo::Repository,
    a: &VerifyArgs,
) -> Result<(String, DrillOptions, Option<Job>)> {
    if cfg.jobs.is_empty() {
        let name = super::infer_job(cfg, repo, a.job.as_deref()).await?;
        let scratch = a.scratch.as_deref().unwrap_or("ephemeral");
        let scratch = Scratch::parse(scratch, a.scratch_password_file.as_deref())
            .with_context(|| format!("--scratch {scratch:?}"))
            .map_err(usage)?;
        let opts = crate::job::drill_options(&cfg.repository, scratch, a.pg_bindir.clone())
            .map_err(usage)?;
        return Ok((name, opts, None));
    }
    let job = cfg.job(a.job.as_deref()).map_err(usage)?.clone();
    let scratch = a.scratch.as_deref().map(str::to_string).or_else(|| job.drill_scratch().map(str::to_string)).ok_or_else(|| {
        usage(anyhow!(
            "job {}: no scratch target: set `scratch` in the job (a server URL or \"ephemeral\") or pass --scratch",
            job.name
        ))
    })?;
    // The job's scratch password file goes with the job's scratch only.
    let password_file = match &a.scratch {
        Some(_) => a.scratch_password_file.clone(),
        None => a
            .scratch_password_file
            .clone()
            .or_else(|| job.config.scratch_password_file.clone()),
    };
    let opts = job
        .drill_options(
            &scratch,
            password_file.as_deref(),
            // As the agent's drills: the job's tools unless told otherwise.
            a.pg_bindir.clone().or_else(|| job.config.pg_bindir.clone()),
        )
        .map_err(usage)?;
    Ok((job.name.clone(), opts, Some(job)))
}

/// A physical job's drill recovers to `--to` when given (the newest
/// point otherwise); a logical job's has no point to recover to.
fn at_point(
    opts: DrillOptions,
    to: Option<&str>,
    name: &str,
) -> Result<(DrillOptions, Option<RecoveryTarget>)> {
    Ok(match to {
        None => (opts, None),
        Some(text) => {
            let to: RecoveryTarget = text
                .parse()
                .map_err(|e: String| usage(anyhow!("--to: {e}")))?;
            let Some(physical) = opts.physical.clone() else {
                return Err(usage(anyhow!(
                    "--to applies to drills of a physical job (kind = \"physical\", with a config file); job {name} has none"
                )));
            };
            let physical = refugio_core::PhysicalDrill {
                target: to,
                ..physical
            };
            (
                DrillOptions {
                    physical: Some(physical),
                    ..opts
                },
                Some(to),
            )
        }
    })
}

/// A drill's receipt, for people, as `refugio verify` prints it.
pub fn receipt_text(receipt: &refugio_core::Receipt) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_receipt(&mut out, receipt);
    out
}

fn write_receipt(out: &mut String, receipt: &refugio_core::Receipt) -> std::fmt::Result {
    writeln!(
        out,
        "drill of backup {} (job {}): {}",
        receipt.backup_id,
        receipt.job,
        match (receipt.outcome(), receipt.passed) {
            (Outcome::Passed, true) => "PASSED",
            (Outcome::Passed, false) =>
                "FAILED (the backup restored and checked out; a target was missed)",
            (Outcome::Failed, _) => "FAILED (the backup is bad)",
            (Outcome::Inconclusive, _) =>
                "INCONCLUSIVE (the backup could not be checked; it stays unverified)",
        }
    )?;
    use crate::output::duration;
    writeln!(
 out,
        "  restore + checks: {} (fetch+restore {}, analyze {}, checks {}); {} tables compared, {} SQL checks",
        duration(receipt.rto.measured_seconds.unwrap_or_default()),
        duration(receipt.phases.fetch_restore_seconds),
        duration(receipt.phases.analyze_seconds),
        duration(receipt.phases.checks_seconds),
        receipt.counts.len(),
        receipt.checks.len()
    )?;
    let secs = |s: Option<f64>| s.map_or("-".to_string(), duration);
    writeln!(
        out,
        "  RTO {} (target {}), RPO {} (target {}), largest gap between verified backups {}",
        secs(receipt.rto.measured_seconds),
        secs(receipt.rto.target_seconds),
        secs(receipt.rpo.measured_seconds),
        secs(receipt.rpo.target_seconds),
        secs(receipt.rpo_detail.largest_gap_seconds)
    )?;
    for f in &receipt.failures {
        writeln!(out, "  FAIL {f}")?;
    }
    for n in &receipt.notes {
        writeln!(out, "  NOTE {n}")?;
    }
    Ok(())
}
