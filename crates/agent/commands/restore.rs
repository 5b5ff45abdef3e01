//! `refugio restore`: one backup into a target database.

use std::process::ExitCode;

use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use refugio_core::restore::physical::{
    choose_base, restore_physical, PhysicalRestoreOptions, RecoveryTarget,
};
use tokio_util::sync::CancellationToken;

use crate::cli::RestoreArgs;
use crate::config::Config;
use crate::exit::usage;
use crate::output::human;

pub async fn restore(
    cfg: Config,
    a: RestoreArgs,
    config_path: Option<PathBuf>,
) -> Result<ExitCode> {
    if a.physical {
        return physical(cfg, a, config_path).await;
    }
    let repo = crate::repo::open_existing(&cfg, a.repo.repository.as_deref()).await?;
    let job = super::infer_job(&cfg, &repo, a.job.as_deref()).await?;
    let backup = a.backup.as_deref().unwrap_or("latest");
    let manifest = repo.resolve(&job, backup).await?;
    let target = refugio_dump::SourceSpec::new(
        a.target.as_deref().unwrap_or_default(),
        None,
        a.target_password_file.as_deref(),
    )
    .map_err(|e| usage(e.into()))?;
    // The target must not be the backup's source cluster (its manifest
    // says which) nor the job's, as it is now, whatever their names.
    let sources = match cfg.jobs.iter().find(|j| j.name == job) {
        Some(j) => j.source_cluster().await.into_iter().collect(),
        None => Vec::new(),
    };
    let guard = refugio_core::restore::identity::TargetGuard {
        sources,
        overwrite_source: a.overwrite_source,
        hint: "pass --overwrite-source to restore there anyway".into(),
    };
    let opts = refugio_core::RestoreOptions {
        target,
        clean: a.clean,
        create: a.create,
        globals: a.globals,
        jobs: a.jobs.max(1),
        no_owner: a.no_owner,
        bindir: a.pg_bindir.clone(),
        temp_dir: a.temp_dir.clone(),
        identities: cfg.repository.identities().map_err(usage)?,
        require_encrypted: cfg.repository.encryption.is_some() && !a.allow_unencrypted,
        database: a.database.clone(),
        progress: None,
        guard: Some(guard),
    };
    tracing::info!(job, backup = %manifest.backup_id, target = %opts.target.redacted(), "restore-started");
    let token = CancellationToken::new();
    crate::signals::cancel_on_stop(token.clone());
    let shown = crate::progress::start(crate::progress::RESTORE);
    let opts = refugio_core::RestoreOptions {
        progress: shown.as_ref().map(|s| s.progress()),
        ..opts
    };
    let report = refugio_core::restore(&repo, &manifest, &opts, &token).await;
    drop(shown);
    let report =
        report.with_context(|| format!("restoring backup {} of job {job}", manifest.backup_id))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let into = match report.databases.as_slice() {
            [_] => report.target.clone(),
            many => format!(
                "{} databases on {} ({})",
                many.len(),
                report.target,
                many.join(", ")
            ),
        };
        if let Some(source) = &report.overwrote_source {
            println!(
                "--overwrite-source: the target is {source}; restored over its database(s) {}",
                report.databases.join(", ")
            );
        }
        println!(
            "restored backup {} of job {} into {} with {} {} in {:.1}s ({} fetched{})",
            report.backup_id,
            report.job,
            into,
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

/// `restore --physical`: a base backup into a new data directory, set up
/// to recover to `--to` from the job's WAL archive.
async fn physical(cfg: Config, a: RestoreArgs, config_path: Option<PathBuf>) -> Result<ExitCode> {
    let Some(config) = config_path else {
        return Err(usage(anyhow!(
            "restore --physical needs the config file (--config FILE or REFUGIO_CONFIG): the restored server's restore_command reads the WAL archive through it"
        )));
    };
    let to: RecoveryTarget =
        a.to.parse()
            .map_err(|e: String| usage(anyhow!("--to: {e}")))?;
    let dir = a
        .target_dir
        .clone()
        .ok_or_else(|| usage(anyhow!("--physical needs --target-dir DIR")))?;
    let repo = crate::repo::open_existing(&cfg, a.repo.repository.as_deref()).await?;
    let job = super::infer_job(&cfg, &repo, a.job.as_deref()).await?;
    let manifest = match a.backup.as_deref() {
        Some(id) => repo.resolve(&job, id).await?,
        None => {
            let all = repo.manifests(&job).await?;
            choose_base(&all, to)
                .map_err(|why| anyhow!("job {job} in {}: {why}", repo.describe()))?
                .clone()
        }
    };
    let opts = PhysicalRestoreOptions {
        target: to,
        target_dir: std::path::absolute(&dir).unwrap_or(dir),
        restore_command: crate::config::wal_fetch_command(&config, &job)?,
        identities: cfg.repository.identities().map_err(usage)?,
        keep_archiving: a.keep_archiving,
        require_encrypted: cfg.repository.encryption.is_some() && !a.allow_unencrypted,
    };
    tracing::info!(job, backup = %manifest.backup_id, to = %to, dir = %opts.target_dir.display(), "physical-restore-started");
    let report = restore_physical(&repo, &manifest, &opts)
        .await
        .with_context(|| format!("restoring base backup {} of job {job}", manifest.backup_id))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let archiving = if report.archive_mode_off {
            "archive_mode = off is set in postgresql.auto.conf: this clone does not archive into the job's WAL archive (restore with --keep-archiving for a replacement primary that is to archive)"
        } else {
            "archiving is kept (--keep-archiving): once promoted, this server archives with the source's archive_mode and archive_command, into the job's WAL archive if that is where they point"
        };
        println!(
            "restored base backup {} of job {} into {} ({} fetched, {:.1}s); recovery to {} is set up (recovery.signal, restore_command in postgresql.auto.conf)\n{archiving}\nstart it: {}",
            report.backup_id,
            report.job,
            report.target_dir,
            human(report.bytes_fetched),
            report.seconds,
            report.target,
            report.start_hint
        );
    }
    Ok(ExitCode::SUCCESS)
}
