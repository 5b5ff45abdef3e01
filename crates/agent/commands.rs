//! The commands behind the CLI.

use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use refugio_store::manifest::Manifest;
use refugio_store::repo::Repository;
use refugio_store::RepositoryLocation;
use tokio_util::sync::CancellationToken;

use crate::cli::{
    BackupArgs, Cli, Command, ConfigCommand, ListArgs, PinArgs, PruneArgs, RepoArgs, RestoreArgs,
    VerifyArgs,
};
use crate::config::{self, Config};

/// A mistake in the invocation or the configuration: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
struct UsageError(anyhow::Error);

fn usage(e: anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(UsageError(e))
}

/// Runs a command; prints the error chain and maps it to an exit code.
pub async fn dispatch(cli: Cli) -> ExitCode {
    let result = match load_config(&cli) {
        Ok(cfg) => match cli.command {
            Command::Backup(a) => backup(cfg, a).await,
            Command::List(a) => list(cfg, a).await,
            Command::Restore(a) => restore(cfg, a).await,
            Command::Verify(a) => verify(cfg, a).await,
            Command::Prune(a) => prune(cfg, a).await,
            Command::Pin(a) => pin(cfg, a, true).await,
            Command::Unpin(a) => pin(cfg, a, false).await,
            Command::Run => match cli.config.clone() {
                Some(path) => crate::run::run(path, cfg).await,
                None => Err(usage(anyhow!(
                    "refugio run needs a config file (--config FILE or REFUGIO_CONFIG)"
                ))),
            },
            Command::Config {
                command: ConfigCommand::Check { json },
            } => config_check(cfg, cli.config.is_some(), json).await,
        },
        Err(e) => Err(e),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "command-failed");
            eprintln!("refugio: error: {e:#}");
            if e.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

fn load_config(cli: &Cli) -> Result<Config> {
    match &cli.config {
        Some(path) => Config::load(path).map_err(usage),
        None => Ok(Config {
            repository: Default::default(),
            jobs: Vec::new(),
            agent: Default::default(),
        }),
    }
}

/// The repository of the config (no command-line override).
pub async fn open_repo_of(cfg: &Config) -> Result<Repository> {
    open_repo(cfg, &RepoArgs { repository: None }).await
}

/// A restore drill of the job's newest backup (the agent's drill task).
/// Cancelling stops it and drops the scratch database.
pub async fn drill_latest(
    repo: &Repository,
    job: &config::JobConfig,
    bindir: Option<std::path::PathBuf>,
    cancel: &CancellationToken,
) -> Result<refugio_verify::drill::Receipt> {
    let scratch_url = job.scratch.clone().ok_or_else(|| {
        anyhow!(
            "job {}: no scratch target: set `scratch` (a server URL or \"ephemeral\")",
            job.name
        )
    })?;
    let scratch = parse_scratch(&scratch_url)?;
    let history = repo.manifests(&job.name).await?;
    let manifest = history.first().cloned().ok_or_else(|| {
        anyhow!(
            "job {}: no backup to drill in {}",
            job.name,
            repo.describe()
        )
    })?;
    let opts = drill_options(job, scratch, bindir.or_else(|| job.pg_bindir.clone()));
    drill_cancellable(repo, &manifest, &history, &opts, cancel).await
}

/// A job's drill settings.
fn drill_options(
    job: &config::JobConfig,
    scratch: refugio_verify::drill::Scratch,
    bindir: Option<std::path::PathBuf>,
) -> refugio_verify::drill::DrillOptions {
    refugio_verify::drill::DrillOptions {
        scratch,
        checks: job.checks.clone(),
        rpo_target: job.targets.rpo,
        rto_target: job.targets.rto,
        jobs: job.drill_jobs,
        bindir,
    }
}

/// `scratch`: `"ephemeral"` or a server URL.
fn parse_scratch(url: &str) -> Result<refugio_verify::drill::Scratch> {
    Ok(if url == "ephemeral" {
        refugio_verify::drill::Scratch::Ephemeral
    } else {
        refugio_verify::drill::Scratch::Server(refugio_dump::SourceSpec::new(url, None, None)?)
    })
}

/// A drill that `cancel` stops: the drill is dropped mid-way (its child
/// processes killed; an ephemeral cluster removed with it) and a server's
/// scratch database is dropped before returning.
async fn drill_cancellable(
    repo: &Repository,
    manifest: &refugio_store::manifest::Manifest,
    history: &[refugio_store::manifest::Manifest],
    opts: &refugio_verify::drill::DrillOptions,
    cancel: &CancellationToken,
) -> Result<refugio_verify::drill::Receipt> {
    tracing::info!(job = %manifest.job, backup = %manifest.backup_id, "drill-started");
    let drill = refugio_verify::drill::drill(repo, manifest, history, opts, chrono::Utc::now());
    tokio::select! {
        r = drill => Ok(r?),
        _ = cancel.cancelled() => {
            let name = refugio_verify::drill::scratch_name(&manifest.backup_id);
            if let refugio_verify::drill::Scratch::Server(spec) = &opts.scratch {
                refugio_verify::drill::drop_scratch(&spec.with_database("postgres"), Some(&name)).await?;
            }
            bail!("drill cancelled; scratch database {name} removed");
        }
    }
}

async fn open_repo(cfg: &Config, args: &RepoArgs) -> Result<Repository> {
    let url = args.repository.as_deref().unwrap_or(&cfg.repository.url);
    let location = RepositoryLocation::parse(url).map_err(|e| usage(e.into()))?;
    let store = refugio_store::open(&location, &cfg.repository.s3_options())
        .await
        .with_context(|| format!("opening repository {location}"))?;
    Ok(Repository::new(store))
}

/// Cancels `token` on SIGINT or SIGTERM.
fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "no SIGTERM handler");
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::warn!("signal received: cancelling, nothing will be committed");
        token.cancel();
    });
}

async fn backup(cfg: Config, a: BackupArgs) -> Result<ExitCode> {
    let job = match (&a.source, cfg.jobs.is_empty()) {
        (Some(src), _) => config::adhoc_job(src, a.job.as_deref()).map_err(usage)?,
        (None, false) => cfg.job(a.job.as_deref()).map_err(usage)?.clone(),
        (None, true) => {
            return Err(usage(anyhow!(
                "nothing to back up: give --source postgres://… or a config file with [[jobs]] (--config / REFUGIO_CONFIG)"
            )))
        }
    };
    let repo = open_repo(&cfg, &a.repo).await?;
    let token = CancellationToken::new();
    cancel_on_signals(token.clone());
    let m = crate::backup::run(&repo, &cfg.repository, &job, &token).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&m)?);
    } else {
        println!(
            "backup {} of job {} committed to {}: database {}, {} tables, {} stored ({} raw), {:.1}s",
            m.backup_id,
            m.job,
            repo.describe(),
            m.database,
            m.tables.len(),
            human(m.stored_size()),
            human(m.raw_size()),
            m.durations.total_seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `12.3 MiB`.
pub fn human(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

async fn list(cfg: Config, a: ListArgs) -> Result<ExitCode> {
    let repo = open_repo(&cfg, &a.repo).await?;
    let jobs = match &a.job {
        Some(j) => vec![j.clone()],
        None => repo.jobs().await?,
    };
    let mut all: Vec<Manifest> = Vec::new();
    let mut receipts: Vec<(String, String, refugio_verify::drill::Receipt)> = Vec::new();
    for j in &jobs {
        all.extend(repo.manifests(j).await?);
        for (id, r) in refugio_verify::drill::receipts(&repo, j).await? {
            receipts.push((j.clone(), id, r));
        }
    }
    all.sort_by(|x, y| {
        y.started_at
            .cmp(&x.started_at)
            .then(y.backup_id.cmp(&x.backup_id))
    });
    // The newest drill of each backup.
    let last_drill = |m: &Manifest| {
        receipts
            .iter()
            .filter(|(j, id, _)| *j == m.job && *id == m.backup_id)
            .map(|(_, _, r)| r)
            .max_by_key(|r| r.started_at)
    };
    if a.json {
        let mut out = Vec::new();
        for m in &all {
            let mut v = serde_json::to_value(m)?;
            v["verification"] = match last_drill(m) {
                Some(r) => serde_json::json!({
                    "verified": r.verified,
                    "passed": r.passed,
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
    for m in &all {
        let (state, when, rto) = match last_drill(m) {
            Some(r) => (
                if r.verified { "yes" } else { "FAILED" },
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
            m.database,
            m.server.version,
            human(m.stored_size()),
            human(m.raw_size()),
            m.durations.total_seconds,
            state,
            when,
            rto
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn verify(cfg: Config, a: VerifyArgs) -> Result<ExitCode> {
    let job = cfg.job(a.job.as_deref()).map_err(usage)?.clone();
    let repo = open_repo(&cfg, &a.repo).await?;
    let scratch_url = a.scratch.clone().or_else(|| job.scratch.clone()).ok_or_else(|| {
        usage(anyhow!(
            "job {}: no scratch target: set `scratch` in the job (a server URL or \"ephemeral\") or pass --scratch",
            job.name
        ))
    })?;
    let scratch = parse_scratch(&scratch_url).map_err(usage)?;
    let history = repo.manifests(&job.name).await?;
    let manifest = if a.backup == "unverified" {
        let done = refugio_verify::drill::receipts(&repo, &job.name).await?;
        history
            .iter()
            .find(|m| !done.iter().any(|(id, r)| *id == m.backup_id && r.verified))
            .cloned()
            .ok_or_else(|| anyhow!("job {}: every backup is verified", job.name))?
    } else {
        repo.resolve(&job.name, &a.backup).await?
    };
    let opts = drill_options(&job, scratch, a.pg_bindir.clone());
    let token = CancellationToken::new();
    cancel_on_signals(token.clone());
    let receipt = drill_cancellable(&repo, &manifest, &history, &opts, &token).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&receipt)?);
    } else {
        println!(
            "drill of backup {} (job {}): {}",
            receipt.backup_id,
            receipt.job,
            if receipt.passed { "PASSED" } else { "FAILED" }
        );
        println!(
            "  restore + checks: {:.1}s (fetch+restore {:.1}s, analyze {:.1}s, checks {:.1}s); {} tables compared, {} SQL checks",
            receipt.rto.measured_seconds.unwrap_or_default(),
            receipt.phases.fetch_restore_seconds,
            receipt.phases.analyze_seconds,
            receipt.phases.checks_seconds,
            receipt.counts.len(),
            receipt.checks.len()
        );
        let secs = |s: Option<f64>| s.map_or("-".to_string(), |s| format!("{s:.0}s"));
        println!(
            "  RTO {} (target {}), RPO {} (target {}), largest gap between verified backups {}",
            secs(receipt.rto.measured_seconds),
            secs(receipt.rto.target_seconds),
            secs(receipt.rpo.measured_seconds),
            secs(receipt.rpo.target_seconds),
            secs(receipt.rpo_detail.largest_gap_seconds)
        );
        for f in &receipt.failures {
            println!("  FAIL {f}");
        }
    }
    Ok(if receipt.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn restore(cfg: Config, a: RestoreArgs) -> Result<ExitCode> {
    let repo = open_repo(&cfg, &a.repo).await?;
    let job = match (&a.job, cfg.jobs.as_slice()) {
        (Some(j), _) => j.clone(),
        (None, [one]) => one.name.clone(),
        (None, _) => {
            let jobs = repo.jobs().await?;
            match jobs.as_slice() {
                [one] => one.clone(),
                [] => bail!("no backups in {}", repo.describe()),
                many => {
                    return Err(usage(anyhow!(
                        "the repository holds several jobs ({}); choose one with --job",
                        many.join(", ")
                    )))
                }
            }
        }
    };
    let manifest = repo.resolve(&job, &a.backup).await?;
    let target =
        refugio_dump::SourceSpec::new(&a.target, None, None).map_err(|e| usage(e.into()))?;
    let opts = refugio_verify::RestoreOptions {
        target,
        clean: a.clean,
        create: a.create,
        globals: a.globals,
        jobs: a.jobs.max(1),
        no_owner: a.no_owner,
        bindir: a.pg_bindir.clone(),
        temp_dir: a.temp_dir.clone(),
    };
    tracing::info!(job, backup = %manifest.backup_id, target = %opts.target.redacted(), "restore-started");
    let report = refugio_verify::restore(&repo, &manifest, &opts)
        .await
        .with_context(|| format!("restoring backup {} of job {job}", manifest.backup_id))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "restored backup {} of job {} into {} with {} {} in {:.1}s ({} fetched{})",
            report.backup_id,
            report.job,
            report.target,
            report.tool,
            report.tool_version,
            report.seconds,
            human(report.bytes_fetched),
            if report.globals_applied {
                ", roles applied"
            } else {
                ""
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn pin(cfg: Config, a: PinArgs, on: bool) -> Result<ExitCode> {
    let repo = open_repo(&cfg, &a.repo).await?;
    let job = match (&a.job, cfg.jobs.as_slice()) {
        (Some(j), _) => j.clone(),
        (None, [one]) => one.name.clone(),
        (None, _) => return Err(usage(anyhow!("choose the job with --job"))),
    };
    crate::prune::set_pin(&repo, &job, &a.backup, on).await?;
    println!(
        "backup {} of job {job} {}",
        a.backup,
        if on { "pinned" } else { "unpinned" }
    );
    Ok(ExitCode::SUCCESS)
}

async fn prune(cfg: Config, a: PruneArgs) -> Result<ExitCode> {
    let repo = open_repo(&cfg, &a.repo).await?;
    let jobs: Vec<&config::JobConfig> = match &a.job {
        Some(_) => vec![cfg.job(a.job.as_deref()).map_err(usage)?],
        None => cfg.jobs.iter().filter(|j| j.retention.is_some()).collect(),
    };
    if jobs.is_empty() {
        return Err(usage(anyhow!(
            "no job has a retention policy ([jobs.retention])"
        )));
    }
    let mut reports = Vec::new();
    for job in jobs {
        let r = job
            .retention
            .as_ref()
            .ok_or_else(|| usage(anyhow!("job {} has no retention policy", job.name)))?;
        let policy = r.policy().map_err(usage)?;
        reports.push(
            crate::prune::prune(
                &repo,
                &job.name,
                &policy,
                &crate::prune::PruneOptions {
                    grace: r.gc_grace,
                    lock: cfg.repository.object_lock.as_ref(),
                    dry_run: a.dry_run,
                    now: a.now.unwrap_or_else(chrono::Utc::now),
                    batch: a.batch,
                },
            )
            .await?,
        );
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

/// One line per check.
#[derive(Debug, serde::Serialize)]
struct Check {
    what: String,
    ok: bool,
    detail: String,
}

/// Where `config check` writes its object-lock probe (not a job: job
/// names cannot start with '.').
const LOCK_PROBE_PREFIX: &str = ".refugio-lock-probe";

async fn config_check(cfg: Config, from_file: bool, json: bool) -> Result<ExitCode> {
    let mut checks = Vec::new();
    if !from_file {
        return Err(usage(anyhow!(
            "config check needs a config file (--config FILE or REFUGIO_CONFIG)"
        )));
    }
    checks.push(Check {
        what: "config".into(),
        ok: true,
        detail: "parsed and valid".into(),
    });
    if cfg.jobs.is_empty() {
        checks.push(Check {
            what: "jobs".into(),
            ok: false,
            detail: "no [[jobs]] defined: nothing would be backed up".into(),
        });
    }
    let repo_what = format!("repository {}", cfg.repository.url);
    match open_repo(&cfg, &RepoArgs { repository: None }).await {
        Ok(repo) => match repo.jobs().await {
            Ok(jobs) => checks.push(Check {
                what: repo_what,
                ok: true,
                detail: format!("reachable, {} job(s) stored", jobs.len()),
            }),
            Err(e) => checks.push(Check {
                what: repo_what,
                ok: false,
                detail: format!("{e:#}"),
            }),
        },
        Err(e) => checks.push(Check {
            what: repo_what,
            ok: false,
            detail: format!("{e:#}"),
        }),
    }
    if let Some(lock) = &cfg.repository.object_lock {
        let what = format!("object lock ({}, {} days)", lock.mode, lock.days);
        let probe = async {
            let repo = open_repo(&cfg, &RepoArgs { repository: None }).await?;
            anyhow::Ok(repo.store().probe_object_lock(LOCK_PROBE_PREFIX).await?)
        }
        .await;
        checks.push(match probe {
            Ok(refugio_store::LockProbe::Enforced) => Check {
                what,
                ok: true,
                detail: "enforced: the store refused to delete a locked probe object".into(),
            },
            Ok(refugio_store::LockProbe::NotEnforced(reason)) => Check {
                what,
                ok: false,
                detail: format!("NOT enforced, backups would not be immutable: {reason}. Backups fail while object_lock is configured on this store"),
            },
            Err(e) => Check {
                what,
                ok: false,
                detail: format!("could not be probed: {e:#}"),
            },
        });
    }
    for job in &cfg.jobs {
        let what = format!("job {}", job.name);
        let detail = async {
            let source = crate::backup::source_spec(job)?;
            let mut conn = source.connect().await?;
            let facts = refugio_dump::snapshot::server_facts(&mut conn, &source).await?;
            let tool = refugio_dump::tools::find(
                refugio_dump::ToolKind::PgDump,
                facts.pg_version(),
                job.pg_bindir.as_deref(),
            )
            .await?;
            anyhow::Ok(format!(
                "source {} reachable: PostgreSQL {}{}, pg_dump {} at {}",
                source.redacted(),
                facts.version,
                if facts.in_recovery { " (standby)" } else { "" },
                tool.version,
                tool.path.display()
            ))
        }
        .await;
        match detail {
            Ok(d) => checks.push(Check {
                what,
                ok: true,
                detail: d,
            }),
            Err(e) => checks.push(Check {
                what,
                ok: false,
                detail: format!("{e:#}"),
            }),
        }
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    if json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        for c in &checks {
            println!(
                "{} {}: {}",
                if c.ok { "ok  " } else { "FAIL" },
                c.what,
                c.detail
            );
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
