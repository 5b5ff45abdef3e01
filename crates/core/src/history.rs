//! What a job did over the last days, from the listing its status is read
//! from (no object is read for it): when each backup started, each drill's
//! verdict as its receipt's name says, and the drills that passed, from
//! which the RPO a verified backup gave over time follows. What a page
//! draws; nothing decides from it.
//!
//! A receipt's name is not proof: in an authenticated repository whoever
//! can write the bucket can name a receipt `…-ok.json`. [`History::vet`]
//! takes the passes whose signatures were checked and marks the others.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::listing::{id_time, Listed, WalSeen};
use crate::receipt::ReceiptName;

/// How far back a history goes.
pub const HISTORY_DAYS: i64 = 30;
/// Passes kept from before the window: the newest few, so the RPO at the
/// window's start is known even when the newest of them is not trusted.
const PASSES_BEFORE: usize = 5;

/// A job's last [`HISTORY_DAYS`].
#[derive(Debug, Default, Clone, Serialize)]
pub struct History {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Committed backups started in the window: id and start, oldest first.
    pub backups: Vec<(String, DateTime<Utc>)>,
    /// Drill receipts written in the window, oldest first.
    pub drills: Vec<DrillMark>,
    /// Drills that passed, in the window and the newest few before it,
    /// oldest first.
    pub passes: Vec<Pass>,
    /// A physical job's WAL archive: when its oldest and newest files were
    /// stored (None: no archive).
    pub wal: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

/// One drill's receipt.
#[derive(Debug, Clone, Serialize)]
pub struct DrillMark {
    pub at: DateTime<Utc>,
    pub backup_id: String,
    /// `passed`, `failed`, `inconclusive`, `unknown` (a receipt of an older
    /// refugio, whose name does not say); after [`History::vet`] also
    /// `unsigned` (named passed, not signed by a trusted agent) and
    /// `unchecked` (its signature not read yet).
    pub verdict: &'static str,
    #[serde(skip)]
    pub key: String,
}

/// A drill that passed: when its receipt was written, the start of the
/// backup it verified, the receipt's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pass {
    pub at: DateTime<Utc>,
    pub backup_start: DateTime<Utc>,
    #[serde(skip)]
    pub key: String,
}

impl History {
    /// Each time a drill verified a newer backup, that backup's start from
    /// then on (the RPO at a time is that time minus the step's value),
    /// oldest first; the first step is the one in force at the window's
    /// start, if any.
    pub fn verified_steps(&self) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
        let from = self.from.unwrap_or(DateTime::<Utc>::MIN_UTC);
        let mut steps: Vec<(DateTime<Utc>, DateTime<Utc>)> = Vec::new();
        let mut newest: Option<DateTime<Utc>> = None;
        for p in &self.passes {
            if newest.is_some_and(|n| n >= p.backup_start) {
                continue;
            }
            newest = Some(p.backup_start);
            match steps.last_mut() {
                // Before the window only the last step counts.
                Some(last) if p.at < from && last.0 < from => *last = (p.at, p.backup_start),
                _ => steps.push((p.at, p.backup_start)),
            }
        }
        steps
    }

    /// Keeps only the passes `trusted` says were signed by a trusted agent
    /// (`Some(true)`), and marks the drills named passed that were not
    /// (`Some(false)`: `unsigned`) or not checked yet (`None`: `unchecked`).
    pub fn vet(&mut self, trusted: impl Fn(&str) -> Option<bool>) {
        self.passes.retain(|p| trusted(&p.key) == Some(true));
        for d in self.drills.iter_mut().filter(|d| d.verdict == "passed") {
            d.verdict = match trusted(&d.key) {
                Some(true) => "passed",
                Some(false) => "unsigned",
                None => "unchecked",
            };
        }
    }

    /// The keys of the receipts [`History::vet`] asks about.
    pub fn pass_keys(&self) -> impl Iterator<Item = &str> {
        self.passes.iter().map(|p| p.key.as_str())
    }
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
    for (id, l) in listed.iter().filter(|(_, l)| l.committed) {
        let Some(start) = id_time(id) else { continue };
        if (from..=now).contains(&start) {
            h.backups.push((id.clone(), start));
        }
        for (at, name, key) in &l.drills {
            if *name == ReceiptName::Ok && *at <= now {
                h.passes.push(Pass {
                    at: *at,
                    backup_start: start,
                    key: key.clone(),
                });
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
                    key: key.clone(),
                });
            }
        }
    }
    h.backups.sort_by_key(|(_, t)| *t);
    h.drills.sort_by_key(|d| d.at);
    h.passes.sort_by_key(|p| (p.at, p.backup_start));
    // Of the passes before the window, the newest few verifying ever newer
    // backups (what could be in force at the window's start).
    let before = h.passes.partition_point(|p| p.at < from);
    let mut kept: Vec<Pass> = Vec::new();
    for p in h.passes[..before].iter().rev() {
        if kept.len() == PASSES_BEFORE {
            break;
        }
        if kept.iter().all(|k| k.backup_start < p.backup_start) {
            kept.push(p.clone());
        }
    }
    kept.reverse();
    h.passes.splice(..before, kept);
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).expect("time").to_utc()
    }

    fn backup(id: &str, drills: &[(&str, ReceiptName)]) -> (String, Listed) {
        let l = Listed {
            committed: true,
            drills: drills
                .iter()
                .map(|(at, n)| (t(at), *n, format!("app/{id}/verify-{at}.json")))
                .collect(),
            ..Listed::default()
        };
        (id.to_string(), l)
    }

    fn listed() -> BTreeMap<String, Listed> {
        BTreeMap::from([
            backup(
                "20261001T000000Z",
                &[("2026-10-01T01:00:00Z", ReceiptName::Ok)],
            ),
            backup(
                "20261201T000000Z",
                &[
                    ("2026-12-01T01:00:00Z", ReceiptName::Failed),
                    ("2026-12-02T01:00:00Z", ReceiptName::Ok),
                ],
            ),
            backup(
                "20261203T000000Z",
                &[("2026-12-03T01:00:00Z", ReceiptName::Inconclusive)],
            ),
            ("20261204T000000Z".to_string(), Listed::default()),
        ])
    }

    #[test]
    fn backups_drills_and_verified_steps_of_the_window() {
        let h = of(&listed(), &WalSeen::default(), t("2026-12-05T00:00:00Z"));
        let ids: Vec<_> = h.backups.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["20261201T000000Z", "20261203T000000Z"]);
        let verdicts: Vec<_> = h.drills.iter().map(|d| d.verdict).collect();
        assert_eq!(verdicts, ["failed", "passed", "inconclusive"]);
        assert_eq!(
            h.verified_steps(),
            [
                (t("2026-10-01T01:00:00Z"), t("2026-10-01T00:00:00Z")),
                (t("2026-12-02T01:00:00Z"), t("2026-12-01T00:00:00Z")),
            ]
        );
    }

    /// A receipt named passed but not signed neither colours its drill
    /// green nor moves the RPO.
    #[test]
    fn vetting_keeps_only_signed_passes() {
        let mut h = of(&listed(), &WalSeen::default(), t("2026-12-05T00:00:00Z"));
        let forged = "app/20261201T000000Z/verify-2026-12-02T01:00:00Z.json";
        assert!(h.pass_keys().any(|k| k == forged));
        h.vet(|k| Some(k != forged));
        let verdicts: Vec<_> = h.drills.iter().map(|d| d.verdict).collect();
        assert_eq!(verdicts, ["failed", "unsigned", "inconclusive"]);
        assert_eq!(
            h.verified_steps(),
            [(t("2026-10-01T01:00:00Z"), t("2026-10-01T00:00:00Z"))]
        );
        let mut h = of(&listed(), &WalSeen::default(), t("2026-12-05T00:00:00Z"));
        h.vet(|_| None);
        assert_eq!(h.drills[1].verdict, "unchecked");
        assert!(h.verified_steps().is_empty());
    }
}
