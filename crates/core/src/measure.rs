//! Recovery point measurements: pure functions of the verified backups'
//! snapshot times and "now", so tests can fix the clock.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// RPO as measured at one instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rpo {
    /// Age of the newest verified backup's snapshot at `now`; None when no
    /// backup is verified (the recovery point is unbounded).
    pub seconds: Option<f64>,
    /// The newest verified backup.
    pub newest_verified: Option<String>,
    /// Largest gap between the snapshots of consecutive verified backups.
    pub largest_gap_seconds: Option<f64>,
    /// The two backups around that gap.
    pub largest_gap_between: Option<(String, String)>,
    /// How many verified backups were considered.
    pub verified_backups: usize,
}

/// `verified`: (backup id, snapshot time) of every verified backup, any order.
pub fn rpo(verified: &[(String, DateTime<Utc>)], now: DateTime<Utc>) -> Rpo {
    let mut v: Vec<&(String, DateTime<Utc>)> = verified.iter().collect();
    v.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
    let newest = v.last();
    let mut gap: Option<(f64, &str, &str)> = None;
    for w in v.windows(2) {
        let secs = (w[1].1 - w[0].1).num_milliseconds() as f64 / 1000.0;
        if gap.is_none_or(|(g, _, _)| secs > g) {
            gap = Some((secs, &w[0].0, &w[1].0));
        }
    }
    Rpo {
        seconds: newest.map(|n| (now - n.1).num_milliseconds() as f64 / 1000.0),
        newest_verified: newest.map(|n| n.0.clone()),
        largest_gap_seconds: gap.map(|g| g.0),
        largest_gap_between: gap.map(|g| (g.1.to_string(), g.2.to_string())),
        verified_backups: v.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn b(id: &str, at: &str) -> (String, DateTime<Utc>) {
        (id.to_string(), t(at))
    }

    #[test]
    fn nothing_verified_means_unbounded() {
        let r = rpo(&[], t("2026-11-28T12:00:00Z"));
        assert_eq!(r.seconds, None);
        assert_eq!(r.largest_gap_seconds, None);
        assert_eq!(r.verified_backups, 0);
    }

    #[test]
    fn one_backup_has_an_age_and_no_gap() {
        let r = rpo(&[b("a", "2026-11-28T06:00:00Z")], t("2026-11-28T08:30:00Z"));
        assert_eq!(r.seconds, Some(9000.0));
        assert_eq!(r.newest_verified.as_deref(), Some("a"));
        assert_eq!(r.largest_gap_seconds, None);
    }

    #[test]
    fn six_hourly_with_one_missed_run() {
        let list = [
            b("d", "2026-11-28T18:00:00Z"),
            b("a", "2026-11-28T00:00:00Z"),
            b("b", "2026-11-28T06:00:00Z"),
            // 12:00 failed: a 12 h gap from b to d.
        ];
        let r = rpo(&list, t("2026-11-28T19:15:30Z"));
        assert_eq!(r.seconds, Some(4530.0));
        assert_eq!(r.newest_verified.as_deref(), Some("d"));
        assert_eq!(r.largest_gap_seconds, Some(43200.0));
        assert_eq!(r.largest_gap_between, Some(("b".into(), "d".into())));
        assert_eq!(r.verified_backups, 3);
    }

    #[test]
    fn equal_gaps_report_the_earliest() {
        let list = [
            b("a", "2026-01-01T00:00:00Z"),
            b("b", "2026-01-01T06:00:00Z"),
            b("c", "2026-01-01T12:00:00Z"),
        ];
        let r = rpo(&list, t("2026-01-01T12:00:00Z"));
        assert_eq!(r.seconds, Some(0.0));
        assert_eq!(r.largest_gap_between, Some(("a".into(), "b".into())));
    }
}
