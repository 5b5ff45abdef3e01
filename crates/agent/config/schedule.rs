//! `[jobs.schedule]`: when the agent backs up, drills and prunes a job.

use std::time::Duration;

use anyhow::Result;
use serde::Deserialize;

use super::values::{parse_tz, yes};

/// `[jobs.schedule]`: when `refugio run` backs up, drills and prunes a job.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Cron (5 fields, or 6 with seconds) or `{ every = "6h" }`. Default: none.
    #[serde(default)]
    pub backup: Option<refugio_schedule::TriggerSpec>,
    /// Restore drill of the latest backup. Default: none.
    #[serde(default)]
    pub drill: Option<refugio_schedule::TriggerSpec>,
    /// Retention (needs `retention`). Default: none.
    #[serde(default)]
    pub prune: Option<refugio_schedule::TriggerSpec>,
    /// IANA time zone of cron expressions. Default "UTC".
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Random delay in [0, jitter) before each scheduled run. Default 0.
    #[serde(default, with = "humantime_serde")]
    pub jitter: Option<Duration>,
    /// Drill each new backup right after it is committed. Default false.
    #[serde(default)]
    pub drill_after_backup: bool,
    /// At start, back up now when the newest backup in the repository is
    /// older than the backup schedule's interval. Default true.
    #[serde(default = "yes")]
    pub catch_up: bool,
}

impl ScheduleConfig {
    /// The time zone of cron expressions.
    pub fn tz(&self) -> Result<chrono_tz::Tz> {
        match &self.time_zone {
            None => Ok(chrono_tz::UTC),
            Some(name) => parse_tz(name),
        }
    }
}
