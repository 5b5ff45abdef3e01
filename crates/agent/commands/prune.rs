//! `refugio prune`, `refugio pin`, `refugio unpin`.

use std::process::ExitCode;

use anyhow::{anyhow, Result};
use refugio_core::{Clock, FixedClock, SystemClock};
use refugio_schedule::TaskKind;
use tokio_util::sync::CancellationToken;

use crate::cli::{PinArgs, PruneArgs};
use crate::config::{self, Config};
use crate::exit::usage;

pub async fn pin(cfg: Config, a: PinArgs, on: bool) -> Result<ExitCode> {
    let repo = crate::repo::open(&cfg, a.repo.repository.as_deref()).await?;
    let job = match (&a.job, cfg.jobs.as_slice()) {
        (Some(j), _) => j.clone(),
        (None, [one]) => one.name.clone(),
        (None, _) => return Err(usage(anyhow!("choose the job with --job"))),
    };
    refugio_core::set_pin(&repo, &job, &a.backup, on, &SystemClock).await?;
    println!(
        "backup {} of job {job} {}",
        a.backup,
        if on { "pinned" } else { "unpinned" }
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn prune(cfg: Config, a: PruneArgs) -> Result<ExitCode> {
    let repo = crate::repo::open(&cfg, a.repo.repository.as_deref()).await?;
    let jobs: Vec<&config::JobConfig> = match &a.job {
        Some(_) => vec![cfg.job(a.job.as_deref()).map_err(usage)?],
        None => cfg.jobs.iter().filter(|j| j.retention.is_some()).collect(),
    };
    if jobs.is_empty() {
        return Err(usage(anyhow!(
            "no job has a retention policy ([jobs.retention])"
        )));
    }
    let token = CancellationToken::new();
    crate::signals::cancel_on_stop(token.clone());
    let mut reports = Vec::new();
    for job in jobs {
        let r = job
            .retention
            .as_ref()
            .ok_or_else(|| usage(anyhow!("job {} has no retention policy", job.name)))?;
        let opts = r
            .prune_options(
                &job.name,
                cfg.repository.object_lock.is_some(),
                a.dry_run,
                a.batch,
            )
            .map_err(usage)?;
        let fixed = a.now.map(FixedClock);
        let clock: &dyn Clock = match &fixed {
            Some(c) => c,
            None => &SystemClock,
        };
        // A dry run deletes nothing: it needs no lock.
        let _lock = match a.dry_run {
            true => None,
            false => crate::lock::for_command(job, TaskKind::Prune).await?,
        };
        reports.push(refugio_core::prune(&repo, &opts, clock, &token).await?);
    }
    let code = if reports.iter().any(|r| r.has_errors()) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
        return Ok(code);
    }
    for r in &reports {
        println!(
            "job {}{}:",
            r.job,
            if r.dry_run { " (dry run)" } else { "" }
        );
        for d in &r.decisions {
            let reasons: Vec<String> = d
                .reasons
                .iter()
                .map(|x| {
                    serde_json::to_string(x)
                        .unwrap_or_default()
                        .trim_matches('"')
                        .to_string()
                })
                .collect();
            let state = r
                .states
                .get(&d.id)
                .map(|s| {
                    serde_json::to_string(s)
                        .unwrap_or_default()
                        .trim_matches('"')
                        .to_string()
                })
                .unwrap_or_default();
            println!(
                "  {:<22} {:<10} {:<6} {}",
                d.id,
                state,
                if d.keep { "keep" } else { "delete" },
                reasons.join(",")
            );
        }
        for l in &r.locked {
            println!(
                "  {:<22} deletion deferred: object-locked until {}",
                l.id,
                l.until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
        }
        for f in &r.failed_deletes {
            println!(
                "  {} {}: {}",
                if f.locked { "locked:" } else { "FAILED:" },
                f.key,
                f.error
            );
        }
        println!(
            "  orphaned objects: {}, stale multipart uploads: {}",
            r.orphans.len(),
            r.stale_uploads.len()
        );
    }
    Ok(code)
}
