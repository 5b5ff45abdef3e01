//! Retention policy: which backups to keep. A pure function — backups and
//! "now" in, decisions out; no clock, no I/O — so every rule is tested on
//! fixed inputs.
//!
//! Rules (grandfather-father-son, with the usual meaning): `keep_last` the
//! newest N; `keep_hourly/daily/weekly/monthly/yearly` the newest backup in
//! each of the last N periods that have one (periods in the configured time
//! zone); `keep_within` everything newer than now − d; `min_verified` never
//! fewer than N verified backups. Only verified backups count toward a
//! rule. Always kept: the newest verified backup, pinned backups, and
//! unverified backups newer than the newest verified one (their drill has
//! not run yet). Failed backups (a drill failed) and older unverified ones
//! are deleted. If the decisions would delete every backup, nothing is
//! deleted.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Datelike, Offset, Timelike, Utc};
use chrono_tz::Tz;
use serde::Serialize;

/// What is known of one backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    /// The backup's time (its snapshot).
    pub time: DateTime<Utc>,
    pub state: State,
    pub pinned: bool,
}

/// A backup's verification state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// A drill passed.
    Verified,
    /// No drill yet.
    Unverified,
    /// A drill failed and none passed.
    Failed,
}

/// The policy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    pub keep_last: u32,
    pub keep_hourly: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    pub keep_yearly: u32,
    pub keep_within: Option<Duration>,
    pub min_verified: u32,
    /// Time zone of period boundaries.
    pub tz: Option<Tz>,
}

impl Policy {
    /// Whether any rule keeps anything; an empty policy is refused.
    pub fn is_empty(&self) -> bool {
        self.keep_last == 0
            && self.keep_hourly == 0
            && self.keep_daily == 0
            && self.keep_weekly == 0
            && self.keep_monthly == 0
            && self.keep_yearly == 0
            && self.keep_within.is_none()
            && self.min_verified == 0
    }
}

/// Why a backup is kept (or, when empty, deleted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
    Within,
    MinVerified,
    NewestVerified,
    Pinned,
    AwaitingDrill,
    /// Everything would have been deleted: nothing is.
    SafetyNet,
}

/// The decision for one backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub id: String,
    pub keep: bool,
    pub reasons: Vec<Reason>,
}

#[derive(PartialEq, Eq, Hash, Clone, Copy)]
enum Period {
    Hour,
    Day,
    Week,
    Month,
    Year,
}

fn bucket(t: DateTime<Utc>, tz: Tz, p: Period) -> (i32, u32, u32, i32) {
    let l = t.with_timezone(&tz);
    match p {
        // The offset keeps the hour repeated at a DST change two hours.
        Period::Hour => (
            l.year(),
            l.ordinal(),
            l.hour(),
            l.offset().fix().local_minus_utc(),
        ),
        Period::Day => (l.year(), l.ordinal(), 0, 0),
        Period::Week => {
            let w = l.iso_week();
            (w.year(), w.week(), 0, 0)
        }
        Period::Month => (l.year(), l.month(), 0, 0),
        Period::Year => (l.year(), 0, 0, 0),
    }
}

/// Decides for every backup (any order in; decisions newest first).
pub fn apply(policy: &Policy, backups: &[Candidate], now: DateTime<Utc>) -> Vec<Decision> {
    let tz = policy.tz.unwrap_or(chrono_tz::UTC);
    let mut sorted: Vec<&Candidate> = backups.iter().collect();
    sorted.sort_by(|a, b| b.time.cmp(&a.time).then(b.id.cmp(&a.id)));
    let mut reasons: Vec<Vec<Reason>> = vec![Vec::new(); sorted.len()];
    let verified: Vec<usize> = (0..sorted.len())
        .filter(|&i| sorted[i].state == State::Verified)
        .collect();

    for (i, b) in sorted.iter().enumerate() {
        if b.pinned {
            reasons[i].push(Reason::Pinned);
        }
    }
    if let Some(&newest) = verified.first() {
        reasons[newest].push(Reason::NewestVerified);
        for i in 0..newest {
            if sorted[i].state == State::Unverified {
                reasons[i].push(Reason::AwaitingDrill);
            }
        }
    } else {
        for (i, b) in sorted.iter().enumerate() {
            if b.state == State::Unverified {
                reasons[i].push(Reason::AwaitingDrill);
            }
        }
    }
    for &i in verified.iter().take(policy.keep_last as usize) {
        reasons[i].push(Reason::Last);
    }
    let rules = [
        (policy.keep_hourly, Period::Hour, Reason::Hourly),
        (policy.keep_daily, Period::Day, Reason::Daily),
        (policy.keep_weekly, Period::Week, Reason::Weekly),
        (policy.keep_monthly, Period::Month, Reason::Monthly),
        (policy.keep_yearly, Period::Year, Reason::Yearly),
    ];
    for (n, period, reason) in rules {
        let mut seen = HashSet::new();
        for &i in &verified {
            if seen.len() >= n as usize {
                break;
            }
            if seen.insert(bucket(sorted[i].time, tz, period)) {
                reasons[i].push(reason);
            }
        }
    }
    if let Some(within) = policy.keep_within {
        let cutoff = now - chrono::Duration::from_std(within).unwrap_or(chrono::Duration::MAX);
        for &i in &verified {
            if sorted[i].time > cutoff {
                reasons[i].push(Reason::Within);
            }
        }
    }
    let kept_verified = verified.iter().filter(|&&i| !reasons[i].is_empty()).count();
    let mut missing = (policy.min_verified as usize).saturating_sub(kept_verified);
    for &i in &verified {
        if missing == 0 {
            break;
        }
        if reasons[i].is_empty() {
            reasons[i].push(Reason::MinVerified);
            missing -= 1;
        }
    }
    if !sorted.is_empty() && reasons.iter().all(Vec::is_empty) {
        for r in &mut reasons {
            r.push(Reason::SafetyNet);
        }
    }
    sorted
        .iter()
        .zip(reasons)
        .map(|(b, r)| Decision {
            id: b.id.clone(),
            keep: !r.is_empty(),
            reasons: r,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rstest::rstest;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn v(id: &str, at: &str) -> Candidate {
        Candidate {
            id: id.into(),
            time: t(at),
            state: State::Verified,
            pinned: false,
        }
    }

    fn with(mut c: Candidate, state: State) -> Candidate {
        c.state = state;
        c
    }

    fn pinned(mut c: Candidate) -> Candidate {
        c.pinned = true;
        c
    }

    fn kept(policy: &Policy, backups: &[Candidate], now: &str) -> Vec<String> {
        let mut k: Vec<String> = apply(policy, backups, t(now))
            .into_iter()
            .filter(|d| d.keep)
            .map(|d| d.id)
            .collect();
        k.sort();
        k
    }

    /// Six-hourly backups over 10 days, ids "dDD-HH".
    fn six_hourly() -> Vec<Candidate> {
        let mut out = Vec::new();
        for d in 1..=10 {
            for h in [0, 6, 12, 18] {
                out.push(v(
                    &format!("d{d:02}-{h:02}"),
                    &format!("2026-11-{d:02}T{h:02}:00:00Z"),
                ));
            }
        }
        out
    }

    const NOW: &str = "2026-11-10T20:00:00Z";

    fn p() -> Policy {
        Policy::default()
    }

    #[rstest]
    #[case::last_1(Policy { keep_last: 1, ..p() }, &["d10-18"])]
    #[case::last_3(Policy { keep_last: 3, ..p() }, &["d10-06", "d10-12", "d10-18"])]
    #[case::hourly_2(Policy { keep_hourly: 2, ..p() }, &["d10-12", "d10-18"])]
    #[case::daily_3(Policy { keep_daily: 3, ..p() }, &["d08-18", "d09-18", "d10-18"])]
    #[case::weekly_2(Policy { keep_weekly: 2, ..p() }, &["d08-18", "d10-18"])]
    #[case::monthly_5(Policy { keep_monthly: 5, ..p() }, &["d10-18"])]
    #[case::yearly_1(Policy { keep_yearly: 1, ..p() }, &["d10-18"])]
    #[case::within_1d(Policy { keep_within: Some(Duration::from_secs(86_400)), ..p() }, &["d10-00", "d10-06", "d10-12", "d10-18"])]
    #[case::within_2h(Policy { keep_within: Some(Duration::from_secs(7_200)), ..p() }, &["d10-18"])]
    // "Newer than now − d", strictly: d10-12 is exactly 8 h old.
    #[case::within_boundary_is_out(Policy { keep_within: Some(Duration::from_secs(8 * 3_600)), ..p() }, &["d10-18"])]
    #[case::min_verified_5(Policy { min_verified: 5, ..p() }, &["d09-18", "d10-00", "d10-06", "d10-12", "d10-18"])]
    #[case::last_plus_daily(Policy { keep_last: 2, keep_daily: 2, ..p() }, &["d09-18", "d10-12", "d10-18"])]
    #[case::daily_plus_weekly(Policy { keep_daily: 2, keep_weekly: 3, ..p() }, &["d01-18", "d08-18", "d09-18", "d10-18"])]
    #[case::daily_more_than_exist(Policy { keep_daily: 30, ..p() }, &["d01-18", "d02-18", "d03-18", "d04-18", "d05-18", "d06-18", "d07-18", "d08-18", "d09-18", "d10-18"])]
    #[case::min_verified_covered(Policy { keep_last: 4, min_verified: 2, ..p() }, &["d10-00", "d10-06", "d10-12", "d10-18"])]
    fn single_rules(#[case] policy: Policy, #[case] want: &[&str]) {
        assert_eq!(kept(&policy, &six_hourly(), NOW), want);
    }

    #[test]
    fn weeks_are_iso_weeks() {
        // 2026-11-08 is a Sunday, 2026-11-09 a Monday.
        let b = vec![
            v("sun", "2026-11-08T23:00:00Z"),
            v("mon", "2026-11-09T01:00:00Z"),
            v("sat", "2026-11-07T10:00:00Z"),
        ];
        assert_eq!(
            kept(
                &Policy {
                    keep_weekly: 2,
                    ..p()
                },
                &b,
                NOW
            ),
            ["mon", "sun"]
        );
    }

    #[test]
    fn day_boundaries_follow_the_time_zone() {
        // 23:30 UTC on the 9th is already the 10th in Berlin.
        let b = vec![
            v("a", "2026-11-09T22:30:00Z"),
            v("b", "2026-11-09T23:30:00Z"),
            v("c", "2026-11-10T12:00:00Z"),
        ];
        let utc = Policy {
            keep_daily: 2,
            ..p()
        };
        assert_eq!(kept(&utc, &b, NOW), ["b", "c"]);
        let berlin = Policy {
            keep_daily: 2,
            tz: Some(chrono_tz::Europe::Berlin),
            ..p()
        };
        assert_eq!(kept(&berlin, &b, NOW), ["a", "c"]);
    }

    #[test]
    fn dst_change_does_not_merge_or_split_days() {
        // Europe/Berlin leaves DST on 2026-10-25 (25 h day). Backups at local
        // 00:30 each day: UTC 22:30 before, 23:30 after the change.
        let b = vec![
            v("oct24", "2026-10-23T22:30:00Z"),
            v("oct25", "2026-10-24T22:30:00Z"),
            v("oct26", "2026-10-25T23:30:00Z"),
            v("oct26late", "2026-10-26T21:00:00Z"),
        ];
        let pol = Policy {
            keep_daily: 3,
            tz: Some(chrono_tz::Europe::Berlin),
            ..p()
        };
        assert_eq!(
            kept(&pol, &b, "2026-10-27T00:00:00Z"),
            ["oct24", "oct25", "oct26late"]
        );
        // Hourly across the repeated 02:00-03:00 hour: two distinct UTC hours stay distinct.
        let h = vec![
            v("first", "2026-10-25T00:30:00Z"),
            v("second", "2026-10-25T01:30:00Z"),
        ];
        let pol = Policy {
            keep_hourly: 2,
            tz: Some(chrono_tz::Europe::Berlin),
            ..p()
        };
        assert_eq!(kept(&pol, &h, "2026-10-25T03:00:00Z"), ["first", "second"]);
    }

    #[test]
    fn unverified_and_failed_never_count() {
        let b = vec![
            v("old", "2026-11-01T00:00:00Z"),
            with(v("failed", "2026-11-02T00:00:00Z"), State::Failed),
            with(v("stale", "2026-11-03T00:00:00Z"), State::Unverified),
            v("good", "2026-11-04T00:00:00Z"),
            with(v("fresh", "2026-11-05T00:00:00Z"), State::Unverified),
            with(v("broken", "2026-11-06T00:00:00Z"), State::Failed),
        ];
        // keep_last 2 counts only verified: good and old; fresh awaits its drill.
        assert_eq!(
            kept(
                &Policy {
                    keep_last: 2,
                    ..p()
                },
                &b,
                NOW
            ),
            ["fresh", "good", "old"]
        );
        let d = apply(
            &Policy {
                keep_last: 1,
                ..p()
            },
            &b,
            t(NOW),
        );
        let good = d.iter().find(|d| d.id == "good").unwrap();
        assert!(
            good.reasons.contains(&Reason::NewestVerified) && good.reasons.contains(&Reason::Last)
        );
        assert!(!d.iter().find(|d| d.id == "broken").unwrap().keep);
    }

    #[test]
    fn pinned_survive_every_rule() {
        let mut b = six_hourly();
        b[0] = pinned(b[0].clone());
        b[5] = pinned(with(b[5].clone(), State::Failed));
        let k = kept(
            &Policy {
                keep_last: 1,
                ..p()
            },
            &b,
            NOW,
        );
        assert_eq!(k, ["d01-00", "d02-06", "d10-18"]);
    }

    #[test]
    fn never_everything() {
        let b = vec![
            with(v("f1", "2026-11-01T00:00:00Z"), State::Failed),
            with(v("f2", "2026-11-02T00:00:00Z"), State::Failed),
        ];
        let d = apply(
            &Policy {
                keep_last: 3,
                ..p()
            },
            &b,
            t(NOW),
        );
        assert!(d.iter().all(|d| d.keep && d.reasons == [Reason::SafetyNet]));
        assert!(apply(
            &Policy {
                keep_last: 3,
                ..p()
            },
            &[],
            t(NOW)
        )
        .is_empty());
    }

    #[test]
    fn empty_policy_is_detected() {
        assert!(p().is_empty());
        assert!(!Policy {
            min_verified: 1,
            ..p()
        }
        .is_empty());
    }

    fn random_backups(rng: &mut rand::rngs::StdRng, n: usize) -> Vec<Candidate> {
        let base = t("2026-01-01T00:00:00Z");
        (0..n)
            .map(|i| Candidate {
                id: format!("b{i:04}"),
                time: base + chrono::Duration::minutes(rng.gen_range(0..60 * 24 * 300)),
                state: match rng.gen_range(0..10) {
                    0 => State::Failed,
                    1 | 2 => State::Unverified,
                    _ => State::Verified,
                },
                pinned: rng.gen_range(0..30) == 0,
            })
            .collect()
    }

    fn random_policy(rng: &mut rand::rngs::StdRng) -> Policy {
        Policy {
            keep_last: rng.gen_range(0..4),
            keep_hourly: rng.gen_range(0..5),
            keep_daily: rng.gen_range(0..8),
            keep_weekly: rng.gen_range(0..5),
            keep_monthly: rng.gen_range(0..13),
            keep_yearly: rng.gen_range(0..3),
            keep_within: if rng.gen_bool(0.3) {
                Some(Duration::from_secs(rng.gen_range(0..30) * 86_400))
            } else {
                None
            },
            min_verified: rng.gen_range(0..6),
            tz: if rng.gen_bool(0.5) {
                Some(chrono_tz::America::New_York)
            } else {
                None
            },
        }
    }

    /// Properties over 2,000 seeded random repositories and policies.
    #[test]
    fn properties() {
        let now = t("2026-11-28T06:00:00Z");
        let mut checked_unrelated = 0;
        for seed in 0..2000u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let n = rng.gen_range(0..60);
            let backups = random_backups(&mut rng, n);
            let policy = random_policy(&mut rng);
            let d = apply(&policy, &backups, now);
            assert_eq!(d.len(), backups.len());
            let keep: HashSet<&str> = d.iter().filter(|d| d.keep).map(|d| d.id.as_str()).collect();
            let mut verified: Vec<&Candidate> = backups
                .iter()
                .filter(|b| b.state == State::Verified)
                .collect();
            verified.sort_by(|a, b| b.time.cmp(&a.time).then(b.id.cmp(&a.id)));
            // The newest verified backup is always kept.
            if let Some(newest) = verified.first() {
                assert!(
                    keep.contains(newest.id.as_str()),
                    "seed {seed}: newest verified deleted"
                );
            }
            // min_verified holds.
            let kept_verified = verified
                .iter()
                .filter(|b| keep.contains(b.id.as_str()))
                .count();
            assert!(
                kept_verified >= (policy.min_verified as usize).min(verified.len()),
                "seed {seed}: min_verified"
            );
            // Pinned are kept; something is always kept.
            assert!(
                backups
                    .iter()
                    .filter(|b| b.pinned)
                    .all(|b| keep.contains(b.id.as_str())),
                "seed {seed}: pinned"
            );
            assert!(
                backups.is_empty() || !keep.is_empty(),
                "seed {seed}: everything deleted"
            );
            // Adding an unrelated backup older than every window changes no
            // other decision. "Beyond every window": each count rule already
            // has its N periods among the verified backups, keep_last and
            // min_verified are already met by them, and keep_within ends
            // after it (year 2000). Any state, since unrelated.
            let tz = policy.tz.unwrap_or(chrono_tz::UTC);
            let periods = |period: Period| {
                verified
                    .iter()
                    .map(|b| bucket(b.time, tz, period))
                    .collect::<HashSet<_>>()
                    .len()
            };
            let saturated = [
                (policy.keep_hourly, Period::Hour),
                (policy.keep_daily, Period::Day),
                (policy.keep_weekly, Period::Week),
                (policy.keep_monthly, Period::Month),
                (policy.keep_yearly, Period::Year),
            ]
            .iter()
            .all(|&(n, period)| periods(period) >= n as usize)
                && verified.len() >= policy.keep_last as usize
                && verified.len() >= policy.min_verified as usize;
            let safety_net = d.iter().any(|d| d.reasons.contains(&Reason::SafetyNet));
            if saturated && !safety_net {
                let state =
                    [State::Verified, State::Unverified, State::Failed][rng.gen_range(0..3)];
                let mut more = backups.clone();
                more.push(Candidate {
                    id: "ancient".into(),
                    time: t("2000-01-01T00:00:00Z"),
                    state,
                    pinned: false,
                });
                let after: Vec<Decision> = apply(&policy, &more, now)
                    .into_iter()
                    .filter(|d| d.id != "ancient")
                    .collect();
                assert_eq!(
                    d, after,
                    "seed {seed}: an older, unrelated {state:?} backup changed decisions ({policy:?})"
                );
                checked_unrelated += 1;
            }
        }
        // The property must have been exercised, not skipped every time.
        assert!(
            checked_unrelated > 200,
            "only {checked_unrelated} cases checked"
        );
    }
}
