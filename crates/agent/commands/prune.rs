//! `refugio prune`, `refugio pin`, `refugio unpin`.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::{anyhow, Result};
use refugio_core::SystemClock;
use refugio_schedule::TaskKind;
use tokio_util::sync::CancellationToken;

use crate::cli::{PinArgs, PruneArgs, RetentionArgs};
use refugio_core::PruneOptions;

use crate::config::{Config, RetentionConfig};
use crate::exit::usage;
use crate::job::Job;

pub async fn pin(cfg: Config, a: PinArgs, on: bool) -> Result<ExitCode> {
    let repo = crate::repo::open_existing(&cfg, a.repo.repository.as_deref()).await?;
    let job = super::infer_job(&cfg, &repo, a.job.as_deref()).await?;
    let id = refugio_core::set_pin(&repo, &job, &a.backup, on, &SystemClock).await?;
    println!(
        "backup {id} of job {job} {}",
        if on { "pinned" } else { "unpinned" }
    );
    Ok(ExitCode::SUCCESS)
}

/// The retention flags, named for messages.
const FLAGS: &str = "--keep-last N (or --keep-hourly, --keep-daily, --keep-weekly, --keep-monthly, --keep-yearly, --keep-within; with --min-verified, --time-zone, --gc-grace)";

/// The policy the retention flags give, `None` when none is set.
fn flag_policy(r: &RetentionArgs) -> Option<RetentionConfig> {
    // Destructured: a new flag cannot be left out unnoticed.
    let RetentionArgs {
        keep_last,
        keep_hourly,
        keep_daily,
        keep_weekly,
        keep_monthly,
        keep_yearly,
        keep_within,
        min_verified,
        time_zone,
        gc_grace,
    } = r.clone();
    let any = [
        keep_last,
        keep_hourly,
        keep_daily,
        keep_weekly,
        keep_monthly,
        keep_yearly,
        min_verified,
    ]
    .iter()
    .any(Option::is_some)
        || keep_within.is_some()
        || time_zone.is_some()
        || gc_grace.is_some();
    let d = RetentionConfig::with_defaults();
    any.then(|| RetentionConfig {
        keep_last: keep_last.unwrap_or(d.keep_last),
        keep_hourly: keep_hourly.unwrap_or(d.keep_hourly),
        keep_daily: keep_daily.unwrap_or(d.keep_daily),
        keep_weekly: keep_weekly.unwrap_or(d.keep_weekly),
        keep_monthly: keep_monthly.unwrap_or(d.keep_monthly),
        keep_yearly: keep_yearly.unwrap_or(d.keep_yearly),
        keep_within: keep_within.or(d.keep_within),
        min_verified: min_verified.unwrap_or(d.min_verified),
        time_zone: time_zone.or(d.time_zone),
        gc_grace: gc_grace.unwrap_or(d.gc_grace),
    })
}

/// A job to prune: its options, and its configuration when the config
/// names it (its source holds the job's lock).
type ToPrune<'c> = (PruneOptions, Option<&'c Job>);

/// The jobs to prune, each under the config's policy, or else the flags';
/// both for one job is a usage error, and so is none.
async fn plan<'c>(
    cfg: &'c Config,
    repo: &refugio_store::repo::Repository,
    a: &PruneArgs,
) -> Result<Vec<ToPrune<'c>>> {
    let flags = flag_policy(&a.retention);
    if a.job.is_none() && flags.is_none() {
        let jobs: Vec<_> = cfg
            .jobs
            .iter()
            .filter_map(|j| Some((j.prune_options(a.dry_run, a.batch)?, Some(j))))
            .collect();
        if jobs.is_empty() {
            return Err(usage(anyhow!(
                "no retention policy: give one with {FLAGS}, or set [jobs.retention] in a config file"
            )));
        }
        return Ok(jobs);
    }
    let name = super::infer_job(cfg, repo, a.job.as_deref()).await?;
    let configured = cfg.jobs.iter().find(|j| j.name == name);
    let opts = match (configured.and_then(|j| j.prune_options(a.dry_run, a.batch)), flags) {
        (Some(_), Some(_)) => {
            return Err(usage(anyhow!(
                "job {name} has a retention policy in the config file ([jobs.retention]); the retention flags apply only to a job without one: drop the flags, or change the config"
            )))
        }
        (Some(opts), None) => opts,
        (None, Some(flags)) => crate::job::prune_options(
            &name,
            flags
                .policy()
                .map_err(|e| usage(e.context(format!("job {name}: retention"))))?,
            flags.gc_grace,
            &cfg.repository,
            a.dry_run,
            a.batch,
            configured.is_some_and(|j| j.kind == refugio_core::JobKind::Physical),
        ),
        (None, None) => {
            return Err(usage(anyhow!(
                "job {name} has no retention policy: give one with {FLAGS}, or set [jobs.retention] in the config file"
            )))
        }
    };
    Ok(vec![(opts, configured)])
}

pub async fn prune(cfg: Config, a: PruneArgs) -> Result<ExitCode> {
    let repo = crate::repo::open_existing(&cfg, a.repo.repository.as_deref()).await?;
    let jobs = plan(&cfg, &repo, &a).await?;
    let token = CancellationToken::new();
    crate::signals::cancel_on_stop(token.clone());
    let mut reports = Vec::new();
    for (opts, job) in jobs {
        // A dry run deletes nothing: it needs no lock; nor has a job the
        // config does not name a source to take it on.
        let _lock = match (a.dry_run, job) {
            (false, Some(job)) => crate::task::for_command(job, TaskKind::Prune).await?,
            _ => None,
        };
        reports.push(refugio_core::prune(&repo, &opts, &SystemClock, &token).await?);
    }
    let code = ExitCode::from(exit_code(&reports));
    if a.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
        return Ok(code);
    }
    for r in &reports {
        print!("{}", report_text(r));
    }
    Ok(code)
}

/// The exit code of a prune that produced `reports`.
pub fn exit_code(reports: &[refugio_core::PruneReport]) -> u8 {
    if reports.iter().any(|r| r.has_errors()) {
        crate::exit::FAILED
    } else {
        0
    }
}

/// One job's prune report, for people: a summary line, each backup's
/// decision with its reasons in words, then garbage and the WAL.
pub fn report_text(r: &refugio_core::PruneReport) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_report(&mut out, r);
    out
}

/// A serde name (`keep_last`, `awaiting_drill`) in words.
fn words<T: serde::Serialize>(x: &T) -> String {
    serde_json::to_string(x)
        .unwrap_or_default()
        .trim_matches('"')
        .replace('_', " ")
}

fn write_report(out: &mut String, r: &refugio_core::PruneReport) -> std::fmt::Result {
    let keep = r.decisions.iter().filter(|d| d.keep).count();
    let delete = r.decisions.len() - keep;
    writeln!(
        out,
        "job {}{}: keep {keep}, {} {delete}{}, frees {}",
        r.job,
        if r.dry_run { " (dry run)" } else { "" },
        if r.dry_run { "would delete" } else { "delete" },
        if r.locked.is_empty() {
            String::new()
        } else {
            format!(" ({} deferred by object lock)", r.locked.len())
        },
        crate::output::human(r.frees_bytes)
    )?;
    if !r.decisions.is_empty() {
        writeln!(
            out,
            "  {:<18} {:<12} {:<8} WHY",
            "BACKUP", "STATE", "DECISION"
        )?;
    }
    for d in &r.decisions {
        let reasons: Vec<String> = d.reasons.iter().map(words).collect();
        let state = r.states.get(&d.id).map(words).unwrap_or_default();
        let line = format!(
            "  {:<18} {:<12} {:<8} {}",
            d.id,
            state,
            if d.keep { "keep" } else { "delete" },
            if reasons.is_empty() {
                "no rule keeps it".to_string()
            } else {
                reasons.join(", ")
            }
        );
        writeln!(out, "{}", line.trim_end())?;
    }
    for l in &r.locked {
        writeln!(
            out,
            "  {:<18} deletion deferred: object-locked until {}",
            l.id,
            l.until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )?;
    }
    for f in &r.failed_deletes {
        writeln!(
            out,
            "  {} {}: {}",
            if f.locked { "locked:" } else { "FAILED:" },
            f.key,
            f.error
        )?;
    }
    writeln!(
        out,
        "  orphaned objects: {}, stale multipart uploads: {}",
        r.orphans.len(),
        r.stale_uploads.len()
    )?;
    for g in &r.wal_gaps {
        writeln!(
            out,
            "  WAL {} timeline {}: {} to {} ({} segment(s)); base backups {} count as unverified{}",
            if g.pending { "NOT ARCHIVED YET" } else { "GAP" },
            g.timeline,
            g.from,
            g.to,
            g.segments,
            g.backups.join(", "),
            if g.pending {
                ""
            } else {
                " (`refugio pin` keeps one for the points before the gap)"
            }
        )?;
    }
    if let Some(before) = &r.wal_pruned.before {
        writeln!(
            out,
            "  WAL before {before} (the oldest kept base backup's start): {} files, {}{}",
            r.wal_pruned.files,
            crate::output::human(r.wal_pruned.bytes),
            if r.dry_run { " would go" } else { " deleted" }
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn retention_flags_take_the_config_defaults() {
        assert!(flag_policy(&RetentionArgs::default()).is_none());
        let p = flag_policy(&RetentionArgs {
            keep_last: Some(3),
            ..Default::default()
        })
        .expect("a policy");
        assert_eq!((p.keep_last, p.keep_daily, p.min_verified), (3, 0, 1));
        assert_eq!(p.gc_grace, Duration::from_secs(24 * 3600));
        let p = flag_policy(&RetentionArgs {
            keep_within: Some(Duration::from_secs(3600)),
            time_zone: Some("Europe/Madrid".into()),
            ..Default::default()
        })
        .expect("a policy");
        assert!(p.policy().is_ok());
        // Only knobs, no keep rule: refused like such a file.
        let p = flag_policy(&RetentionArgs {
            min_verified: Some(2),
            ..Default::default()
        })
        .expect("a policy");
        assert!(p.policy().is_err());
    }
}
