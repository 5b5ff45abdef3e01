//! `[jobs.schedule]`: when the agent backs up, drills, prunes and checks a job.

use std::time::Duration;

use anyhow::Result;
use serde::Deserialize;

use super::values::{parse_tz, yes};

/// `[jobs.schedule]`: when `refugio run` backs up, drills, prunes and checks a job.
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
    /// Repository check (`refugio check`). Default: none.
    #[serde(default)]
    pub check: Option<refugio_schedule::TriggerSpec>,
    /// What each scheduled check re-hashes: 0 nothing (sizes only), 1
    /// every backup, N a rotating 1/N of the backups (part `day % N + 1`
    /// of N, the day counted in UTC days since 1970), so N consecutive days
    /// read every backup once. Default 0.
    #[serde(default)]
    pub check_read_data: u32,
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
    /// What a scheduled check at `at` re-hashes ([`Self::check_read_data`]).
    pub fn check_read_data(&self, at: chrono::DateTime<chrono::Utc>) -> refugio_core::ReadData {
        match self.check_read_data {
            0 => refugio_core::ReadData::None,
            1 => refugio_core::ReadData::All,
            of => {
                let day = at.timestamp().div_euclid(86_400);
                // `day % of` is below `of`, a u32.
                let part = u32::try_from(day.rem_euclid(i64::from(of))).unwrap_or(0) + 1;
                refugio_core::ReadData::Subset { part, of }
            }
        }
    }

    /// The time zone of cron expressions.
    pub fn tz(&self) -> Result<chrono_tz::Tz> {
        match &self.time_zone {
            None => Ok(chrono_tz::UTC),
            Some(name) => parse_tz(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use refugio_core::ReadData;

    #[test]
    fn scheduled_checks_rotate_through_every_part() {
        let mut s = ScheduleConfig::default();
        let day =
            |d: i64| chrono::DateTime::from_timestamp(1_790_000_000 + d * 86_400, 0).expect("time");
        assert_eq!(s.check_read_data(day(0)), ReadData::None);
        s.check_read_data = 1;
        assert_eq!(s.check_read_data(day(0)), ReadData::All);
        s.check_read_data = 7;
        let mut parts: Vec<u32> = (0..7)
            .map(|d| match s.check_read_data(day(d)) {
                ReadData::Subset { part, of: 7 } => part,
                other => panic!("{other:?}"),
            })
            .collect();
        parts.sort();
        assert_eq!(parts, vec![1, 2, 3, 4, 5, 6, 7]);
    }
}
