//! What a job did over the last days, from the listing its status is read
//! from (no object is read for it): when each backup started, each drill's
//! verdict as its receipt's name says, and the RPO a verified backup gave
//! over time. What a page draws; nothing decides from it.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::listing::{id_time, Listed, WalSeen};
use crate::receipt::ReceiptName;

/// How far back a history goes.
pub const HISTORY_DAYS: i64 = 30;

/// A job's last [`HISTORY_DAYS`].
#[derive(Debug, Default, Clone, Serialize)]
pub struct History {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Committed backups started in the window: id and start, oldest first.
    pub backups: Vec<(String, DateTime<Utc>)>,
    /// Drill receipts written in the window, oldest first.
    pub drills: Vec<DrillMark>,
    /// Each time a drill passed, the newest verified backup's start from
    /// then on (a step: the RPO at a time is that time minus the step's
    /// value), oldest first. Starts with the newest verified before the
    /// window, if any.
    pub verified_steps: Vec<(DateTime<Utc>, DateTime<Utc>)>,
    /// A physical job's WAL archive: when its oldest and newest files were
    /// stored (None: no archive).
    pub wal: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

/// One drill's receipt.
#[derive(Debug, Clone, Serialize)]
pub struct DrillMark {
    pub at: DateTime<Utc>,
    pub backup_id: String,
    /// `passed`, `failed`, `inconclusive`, or `unknown` (a receipt of an
    /// older refugio, whose name does not say).
    pub verdict: &'static str,
}

/// The history of the committed backups in `listed`, up to `now`.
pub(crate) fn of(listed: &BTreeMap<String, Listed>, wal: &WalSeen, now: DateTime<Utc>) -> History {
    let from = now - Duration::days(HISTORY_DAYS);
    let stored = || wal.objects.iter().filter_map(|o| o.last_modified);
    let mut h = History {
        from: Some(from),
        to: Some(now),
        wal: stored().min().zip(stored().max()),
        ..History::default()
    };
    // (receipt time, backup start) of every passed drill, in time order.
    let mut passes = Vec::new();
    for (id, l) in listed.iter().filter(|(_, l)| l.committed) {
        let Some(start) = id_time(id) else { continue };
        if (from..=now).contains(&start) {
            h.backups.push((id.clone(), start));
        }
        for (at, name) in &l.drills {
            if *name == ReceiptName::Ok {
                passes.push((*at, start));
            }
            if (from..=now).contains(at) {
                h.drills.push(DrillMark {
                    at: *at,
                    backup_id: id.clone(),
                    verdict: match name {
                        ReceiptName::Ok => "passed",
                        ReceiptName::Failed => "failed",
                        ReceiptName::Inconclusive => "inconclusive",
                        ReceiptName::Legacy => "unknown",
                    },
                });
            }
        }
    }
    h.backups.sort_by_key(|(_, t)| *t);
    h.drills.sort_by_key(|d| d.at);
    passes.sort();
    let mut newest: Option<DateTime<Utc>> = None;
    for (at, start) in passes.into_iter().filter(|(at, _)| *at <= now) {
        if newest.is_some_and(|n| n >= start) {
            continue;
        }
        newest = Some(start);
        match h.verified_steps.last_mut() {
            // Before the window only the last step counts.
            Some(last) if at < from && last.0 < from => *last = (at, start),
            _ => h.verified_steps.push((at, start)),
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).expect("time").to_utc()
    }

    fn backup(drills: &[(&str, ReceiptName)]) -> Listed {
        Listed {
            committed: true,
            drills: drills.iter().map(|(at, n)| (t(at), *n)).collect(),
            ..Listed::default()
        }
    }

    #[test]
    fn backups_drills_and_verified_steps_of_the_window() {
        let mut listed = BTreeMap::new();
        listed.insert(
            "20261001T000000Z".to_string(),
            backup(&[("2026-10-01T01:00:00Z", ReceiptName::Ok)]),
        );
        listed.insert(
            "20261201T000000Z".to_string(),
            backup(&[
                ("2026-12-01T01:00:00Z", ReceiptName::Failed),
                ("2026-12-02T01:00:00Z", ReceiptName::Ok),
            ]),
        );
        listed.insert(
            "20261203T000000Z".to_string(),
            backup(&[("2026-12-03T01:00:00Z", ReceiptName::Inconclusive)]),
        );
        listed.insert("20261204T000000Z".to_string(), Listed::default());
        let h = of(&listed, &WalSeen::default(), t("2026-12-05T00:00:00Z"));
        let ids: Vec<_> = h.backups.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["20261201T000000Z", "20261203T000000Z"]);
        let verdicts: Vec<_> = h.drills.iter().map(|d| d.verdict).collect();
        assert_eq!(verdicts, ["failed", "passed", "inconclusive"]);
        assert_eq!(
            h.verified_steps,
            [
                (t("2026-10-01T01:00:00Z"), t("2026-10-01T00:00:00Z")),
                (t("2026-12-02T01:00:00Z"), t("2026-12-01T00:00:00Z")),
            ]
        );
    }
}
