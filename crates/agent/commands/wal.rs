//! `refugio wal-push` (PostgreSQL's `archive_command`) and `refugio
//! wal-fetch` (its `restore_command`) for a job of `kind = "physical"`.
//!
//! Exit codes are PostgreSQL's protocol: wal-push exits 0 only once the
//! file is stored (PostgreSQL keeps the file and retries on anything
//! else). wal-fetch exits 0 with the file written, 1 quietly when the
//! archive does not have it (recovery ends there), and
//! [`FETCH_FAILED`] when it has it but could not deliver it (the store
//! unreachable, bytes that do not match their digest): above 125, so that
//! recovery stops with an error instead of ending early and promoting a
//! server short of its target.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use refugio_core::wal::{self, WalFetched};
use refugio_core::JobKind;

use crate::cli::{WalFetchArgs, WalPushArgs};
use crate::config::Config;
use crate::exit::usage;
use crate::job::Job;

pub use crate::exit::FETCH_FAILED;

/// The physical job a WAL command acts for: `--job`, else the config's
/// only physical job.
fn physical_job<'a>(cfg: &'a Config, job: Option<&str>, verb: &str) -> Result<&'a Job> {
    if cfg.jobs.is_empty() {
        return Err(usage(anyhow!(
            "refugio {verb} needs a config file (--config FILE or REFUGIO_CONFIG) with a job of kind = \"physical\"; nothing was done"
        )));
    }
    let j = match job {
        Some(_) => cfg.job(job).map_err(usage)?,
        None => {
            let physical: Vec<&Job> = cfg
                .jobs
                .iter()
                .filter(|j| j.kind == JobKind::Physical)
                .collect();
            match physical.as_slice() {
                [one] => *one,
                [] => {
                    return Err(usage(anyhow!(
                        "refugio {verb}: the config has no job of kind = \"physical\""
                    )))
                }
                many => {
                    return Err(usage(anyhow!(
                        "refugio {verb}: the config has several physical jobs ({}); choose one with --job",
                        many.iter().map(|j| j.name.as_str()).collect::<Vec<_>>().join(", ")
                    )))
                }
            }
        }
    };
    if j.kind != JobKind::Physical {
        return Err(usage(anyhow!(
            "refugio {verb}: job {} is not of kind = \"physical\"",
            j.name
        )));
    }
    Ok(j)
}

pub async fn wal_push(cfg: Config, a: WalPushArgs) -> Result<ExitCode> {
    let job = physical_job(&cfg, a.job.as_deref(), "wal-push")?;
    let t = Instant::now();
    let repo = crate::repo::open(&cfg, None).await?;
    let opts = job.wal_push_options(a.path.clone()).map_err(usage)?;
    let report = wal::push(&repo, &opts)
        .await
        .with_context(|| format!("archiving {} for job {}", a.path.display(), job.name))?;
    if report.stored {
        tracing::info!(job = %job.name, key = %report.key, raw_bytes = report.raw_size,
            stored_bytes = report.stored_size, seconds = t.elapsed().as_secs_f64(), "wal-pushed");
    } else {
        tracing::info!(job = %job.name, key = %report.key, "wal-already-archived: the same bytes are stored; nothing was written");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn wal_fetch(cfg: Config, a: WalFetchArgs) -> Result<ExitCode> {
    let job = physical_job(&cfg, a.job.as_deref(), "wal-fetch")?;
    let t = Instant::now();
    let repo = crate::repo::open_existing_reader(&cfg).await?;
    let opts = job
        .wal_fetch_options(a.name.clone(), a.dest.clone())
        .map_err(usage)?;
    match wal::fetch(&repo, &opts).await {
        Ok(WalFetched::Restored { key, bytes }) => {
            tracing::info!(job = %job.name, key, bytes, seconds = t.elapsed().as_secs_f64(), "wal-fetched");
            Ok(ExitCode::SUCCESS)
        }
        Ok(WalFetched::NotFound) => {
            tracing::debug!(job = %job.name, name = %a.name, "wal-not-archived");
            Ok(ExitCode::from(crate::exit::FAILED))
        }
        // dispatch exits FETCH_FAILED on any error of wal-fetch.
        Err(e) => {
            Err(anyhow::Error::new(e).context(format!("fetching {} for job {}", a.name, job.name)))
        }
    }
}
