//! Catch-up at start: was a scheduled run missed while the agent was down?

use chrono::{DateTime, Utc};

use crate::Trigger;

/// Whether a task should run now, at agent start, rather than wait for its
/// trigger's next fire.
///
/// True when there is no backup at all, or when a fire time of `trigger`
/// fell after `newest_backup` and at or before `now`: the run it called for
/// never happened (the agent was down, or restarted between the tick and
/// the jittered start). For [`Trigger::Every`] that is exactly "the newest
/// backup is older than the interval". For cron it is the same for regular
/// expressions (`0 */6 * * *`: older than 6 h), and the right answer for
/// irregular ones: with `0 3 * * 1-5`, Friday's backup is not overdue on
/// Sunday, but a backup from 06:00:05 is overdue at 12:00:30 even though it
/// is not yet 6 h old, because the 12:00 run was lost.
///
/// A newest backup later than `now` (clock skew between hosts) counts as
/// fresh. `now` is passed in so tests can fix it.
pub fn needs_catch_up(
    newest_backup: Option<DateTime<Utc>>,
    trigger: &Trigger,
    now: DateTime<Utc>,
) -> bool {
    match newest_backup {
        None => true,
        Some(newest) if newest >= now => false,
        Some(newest) => trigger.next_after(newest).is_some_and(|due| due <= now),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono_tz::Tz;
    use rstest::rstest;

    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn cron(expr: &str) -> Trigger {
        Trigger::cron(expr, Tz::UTC).unwrap()
    }

    #[rstest]
    // No backup yet: always.
    #[case(None, "every 6h", "2026-11-28T12:00:00Z", true)]
    #[case(None, "0 */6 * * *", "2026-11-28T12:00:00Z", true)]
    // Every 6h: older than the interval or not.
    #[case(
        Some("2026-11-28T06:00:00Z"),
        "every 6h",
        "2026-11-28T11:59:59Z",
        false
    )]
    #[case(Some("2026-11-28T06:00:00Z"), "every 6h", "2026-11-28T12:00:00Z", true)]
    #[case(Some("2026-11-28T06:00:00Z"), "every 6h", "2026-11-29T06:00:00Z", true)]
    // Cron every 6 h: a tick passed since the backup.
    #[case(
        Some("2026-11-28T06:00:05Z"),
        "0 */6 * * *",
        "2026-11-28T11:59:59Z",
        false
    )]
    #[case(
        Some("2026-11-28T06:00:05Z"),
        "0 */6 * * *",
        "2026-11-28T12:00:00Z",
        true
    )]
    #[case(
        Some("2026-11-28T06:00:05Z"),
        "0 */6 * * *",
        "2026-11-28T12:00:30Z",
        true
    )]
    #[case(
        Some("2026-11-27T18:00:00Z"),
        "0 */6 * * *",
        "2026-11-28T12:00:30Z",
        true
    )]
    // A manual backup just before a tick does not cover the tick.
    #[case(
        Some("2026-11-28T11:59:00Z"),
        "0 */6 * * *",
        "2026-11-28T12:05:00Z",
        true
    )]
    // Weekdays at 03:00 (2026-11-27 is a Friday): nothing is due at the weekend.
    #[case(
        Some("2026-11-27T03:00:10Z"),
        "0 3 * * 1-5",
        "2026-11-29T23:00:00Z",
        false
    )]
    #[case(
        Some("2026-11-27T03:00:10Z"),
        "0 3 * * 1-5",
        "2026-11-30T03:00:00Z",
        true
    )]
    // Backup "from the future" (clock skew): fresh.
    #[case(
        Some("2026-11-28T13:00:00Z"),
        "every 6h",
        "2026-11-28T12:00:00Z",
        false
    )]
    #[case(
        Some("2026-11-28T12:00:00Z"),
        "0 */6 * * *",
        "2026-11-28T12:00:00Z",
        false
    )]
    fn catch_up_cases(
        #[case] newest: Option<&str>,
        #[case] trigger: &str,
        #[case] now: &str,
        #[case] expected: bool,
    ) {
        let trigger = match trigger.strip_prefix("every ") {
            Some(interval) => Trigger::every(humantime::parse_duration(interval).unwrap()).unwrap(),
            None => cron(trigger),
        };
        assert_eq!(
            needs_catch_up(newest.map(at), &trigger, at(now)),
            expected,
            "newest {newest:?}, {trigger}, now {now}"
        );
    }

    #[test]
    fn every_matches_older_than_interval() {
        let trigger = Trigger::every(Duration::from_secs(3600)).unwrap();
        let now = at("2026-11-28T12:00:00Z");
        for minutes in [0_i64, 1, 59, 60, 61, 600] {
            let newest = now - chrono::TimeDelta::minutes(minutes);
            let older = now - newest >= chrono::TimeDelta::from_std(trigger.interval(now)).unwrap();
            assert_eq!(
                needs_catch_up(Some(newest), &trigger, now),
                older,
                "{minutes} min old"
            );
        }
    }
}
