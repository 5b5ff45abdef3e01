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
    /// garbage-collected by prune, unless their backup is still running
    /// (its claim beats). Default "24h"; at least "1h"
    /// ([`refugio_core::prune::GC_GRACE_FLOOR`]).
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

    /// The pure policy (and `gc_grace` checked against its floor).
    pub fn policy(&self) -> Result<refugio_store::retention::Policy> {
        let floor = refugio_core::prune::GC_GRACE_FLOOR;
        if self.gc_grace < floor {
            bail!(
                "gc_grace: {} is below its floor of {}: prune must never race an upload that is merely slow (a running backup's claim protects it whatever its age; the floor guards the rest)",
                humantime::format_duration(self.gc_grace),
                humantime::format_duration(floor)
            );
        }
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

fn default_grace() -> Duration {
    Duration::from_secs(24 * 3600)
}
