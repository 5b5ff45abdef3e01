//! `retention = { … }`: a job's retention policy, for `refugio prune`.

use std::time::Duration;

use anyhow::{bail, Result};
use serde::Deserialize;

use super::values::{one, parse_tz};

/// `retention = { keep_daily = 7, keep_weekly = 4, min_verified = 2 }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Newest N verified backups. Default 0.
    #[serde(default)]
    pub keep_last: u32,
    /// Newest verified backup in each of the last N hours/days/weeks/months/years. Default 0.
    #[serde(default)]
    pub keep_hourly: u32,
    #[serde(default)]
    pub keep_daily: u32,
    #[serde(default)]
    pub keep_weekly: u32,
    #[serde(default)]
    pub keep_monthly: u32,
    #[serde(default)]
    pub keep_yearly: u32,
    /// Every verified backup younger than this (e.g. "2d"). Default none.
    #[serde(default, with = "humantime_serde")]
    pub keep_within: Option<Duration>,
    /// Never fewer verified backups than this. Default 1.
    #[serde(default = "one")]
    pub min_verified: u32,
    /// IANA time zone of period boundaries, e.g. "Europe/Madrid". Default "UTC".
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Objects without a manifest and multipart uploads older than this are
    /// garbage-collected by prune. Default "24h".
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub gc_grace: Duration,
}

impl RetentionConfig {
    /// What `retention = {}` in a file means: no rule yet, `min_verified`
    /// 1, `gc_grace` 24h.
    pub fn with_defaults() -> Self {
        RetentionConfig {
            min_verified: one(),
            gc_grace: default_grace(),
            ..RetentionConfig::default()
        }
    }

    /// The pure policy.
    pub fn policy(&self) -> Result<refugio_store::retention::Policy> {
        let tz = match &self.time_zone {
            Some(name) => Some(parse_tz(name)?),
            None => None,
        };
        let p = refugio_store::retention::Policy {
            keep_last: self.keep_last,
            keep_hourly: self.keep_hourly,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            keep_yearly: self.keep_yearly,
            keep_within: self.keep_within,
            min_verified: self.min_verified,
            tz,
        };
        let rules_empty = refugio_store::retention::Policy {
            min_verified: 0,
            ..p.clone()
        }
        .is_empty();
        if rules_empty {
            bail!("the policy has no keep rule (keep_last, keep_hourly … keep_yearly, keep_within): it would keep only min_verified backups; say so with keep_last instead");
        }
        Ok(p)
    }
}

impl RetentionConfig {
    /// Options of a prune of `job`; `object_lock`: the repository has it configured.
    pub fn prune_options(
        &self,
        job: &str,
        object_lock: bool,
        dry_run: bool,
        batch: usize,
        physical: bool,
    ) -> Result<refugio_core::PruneOptions> {
        Ok(refugio_core::PruneOptions {
            job: job.to_string(),
            policy: self.policy()?,
            grace: self.gc_grace,
            object_lock,
            dry_run,
            batch,
            physical,
        })
    }
}

fn default_grace() -> Duration {
    Duration::from_secs(24 * 3600)
}
