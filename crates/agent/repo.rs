//! Opening the configured repository (or the command line's).

use anyhow::{Context, Result};
use refugio_store::repo::Repository;
use refugio_store::s3::RetryHook;
use refugio_store::RepositoryLocation;

use crate::config::Config;
use crate::exit::usage;

/// The repository `url` names, or the config's when `url` is None; a
/// directory is created if missing (backups and the agent write to it).
pub async fn open(cfg: &Config, url: Option<&str>) -> Result<Repository> {
    open_observed(cfg, url, None).await
}

/// [`open`], telling `on_retry` of every retried store request.
pub async fn open_observed(
    cfg: &Config,
    url: Option<&str>,
    on_retry: Option<RetryHook>,
) -> Result<Repository> {
    let url = url.unwrap_or(&cfg.repository.url);
    let location = RepositoryLocation::parse(url).map_err(|e| usage(e.into()))?;
    let store = refugio_store::open(&location, &cfg.repository.s3_options(on_retry))
        .await
        .with_context(|| format!("opening repository {location}"))?;
    Ok(Repository::new(store)
        .with_clock_tolerance(cfg.repository.clock_tolerance)
        .with_authentication(cfg.repository.authentication(true).map_err(usage)?))
}

/// The repository for a command that reads it (`list`, `restore`,
/// `verify`, `check`, `prune`, `pin`): a directory that does not exist is
/// an error naming it, never an empty repository (and a missing bucket is
/// one naming the bucket and the endpoint, at the first request).
pub async fn open_existing(cfg: &Config, url: Option<&str>) -> Result<Repository> {
    open_existing_as(cfg, url, true).await
}

/// [`open_existing`] for a reader that signs nothing (`wal-fetch`, run by
/// a drill's server, which cannot read the host's signing key).
pub async fn open_existing_reader(cfg: &Config) -> Result<Repository> {
    open_existing_as(cfg, None, false).await
}

async fn open_existing_as(cfg: &Config, url: Option<&str>, sign: bool) -> Result<Repository> {
    let url = url.unwrap_or(&cfg.repository.url);
    let location = RepositoryLocation::parse(url).map_err(|e| usage(e.into()))?;
    let store = refugio_store::open_existing(&location, &cfg.repository.s3_options(None)).await?;
    Ok(Repository::new(store)
        .with_clock_tolerance(cfg.repository.clock_tolerance)
        .with_authentication(cfg.repository.authentication(sign).map_err(usage)?))
}
