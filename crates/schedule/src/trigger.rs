//! Triggers: when a job's task is due. See [`Trigger`] for the cron syntax
//! and the daylight-saving rules.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Offset, TimeDelta, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ScheduleError;

/// The shortest interval an `every` trigger accepts.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// When a task is due: a cron expression in a time zone, or a fixed
/// interval. Configuration carries a [`TriggerSpec`], which
/// [`TriggerSpec::resolve`] turns into a trigger once the job's time zone is
/// known.
///
/// # Cron syntax
///
/// Five fields (`minute hour day-of-month month day-of-week`, as in crontab)
/// or six with seconds first (`second minute hour day-of-month month
/// day-of-week`). Ranges, lists, steps, month and weekday names, `L`, `W`,
/// `#` and the nicknames `@hourly`, `@daily`, `@weekly`, `@monthly`,
/// `@yearly` are accepted (parsing is done by the `croner` crate). When both
/// day-of-month and day-of-week are restricted, a day matching *either*
/// fires, as in crontab; prefix the weekday field with `+` to require both.
/// A seventh (year) field is rejected.
///
/// # Daylight-saving time
///
/// Expressions are matched against local wall-clock time in the trigger's
/// time zone. As in Debian's cron, the hour that is skipped or repeated is
/// treated according to the expression:
///
/// - *Wall-clock* expressions, with no `*` in the minute or hour field
///   (`30 2 * * *`, `0 3,15 * * *`): a time in the skipped hour fires once,
///   at the first instant after the gap; a time in the repeated hour fires
///   once, at its first occurrence.
/// - *Interval* expressions, with `*` in the minute or hour field
///   (`*/15 * * * *`, `0 */6 * * *`): times in the skipped hour do not exist
///   and do not fire; times in the repeated hour fire in both passes, so the
///   real time between fires stays regular.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// A cron expression, matched against wall-clock time in `tz`. Build it
    /// with [`Trigger::cron`].
    Cron {
        /// The expression as written (trimmed).
        expr: String,
        /// The time zone whose wall clock the expression reads.
        tz: Tz,
        /// The parsed expression.
        schedule: CronSchedule,
    },
    /// A fixed interval: the first fire is one interval after the scheduler
    /// starts (or after the entry's [anchor](crate::Entry::anchor)), then
    /// one every interval. Build it with [`Trigger::every`]
    /// (the scheduler refuses intervals under a second).
    Every(Duration),
}

impl Trigger {
    /// Parses a 5-field (`min hour dom mon dow`) or 6-field (`sec min hour
    /// dom mon dow`) cron expression, to be evaluated in `tz`.
    ///
    /// Errors name the expression and say what is wrong: the field count,
    /// the value the parser rejected, or that it never fires (`0 0 30 2 *`).
    pub fn cron(expr: &str, tz: Tz) -> Result<Trigger, ScheduleError> {
        let schedule = CronSchedule::parse(expr)?;
        let trigger = Trigger::Cron {
            expr: expr.trim().to_owned(),
            tz,
            schedule,
        };
        // Any pattern without a year field that fires once fires again
        // within 28 years, so one probe from now tells "never" apart, in
        // any time zone.
        if trigger.next_after(Utc::now()).is_none() {
            return Err(ScheduleError::CronNeverFires {
                expr: expr.trim().to_owned(),
            });
        }
        Ok(trigger)
    }

    /// A trigger that fires every `interval`. Rejects intervals under one
    /// second (including zero) and intervals too long to add to a date.
    pub fn every(interval: Duration) -> Result<Trigger, ScheduleError> {
        if interval < MIN_INTERVAL {
            return Err(ScheduleError::IntervalTooShort { interval });
        }
        if TimeDelta::from_std(interval).is_err() {
            return Err(ScheduleError::IntervalTooLong { interval });
        }
        Ok(Trigger::Every(interval))
    }

    /// The first fire time strictly after `t`, or `None` if there is none
    /// (the date range runs out).
    ///
    /// For [`Trigger::Every`] this is `t + interval`; for cron, the next
    /// matching wall-clock time in the trigger's time zone, with the
    /// daylight-saving rules described [above](Trigger#daylight-saving-time).
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Trigger::Cron { tz, schedule, .. } => schedule.next_after(t, *tz),
            Trigger::Every(interval) => t.checked_add_signed(TimeDelta::from_std(*interval).ok()?),
        }
    }

    /// The nominal period at `at`: the interval itself for
    /// [`Trigger::Every`]; for cron, the gap between the next two fire
    /// times after `at` (6 h for `0 */6 * * *`; for `0 3 * * 1-5`, 3 days
    /// when those are Friday's and Monday's, else 1 day). Used for
    /// catch-up and RPO hints. [`Duration::MAX`] if the trigger stops firing.
    pub fn interval(&self, at: DateTime<Utc>) -> Duration {
        match self {
            Trigger::Every(interval) => *interval,
            Trigger::Cron { .. } => {
                let gap = self
                    .next_after(at)
                    .and_then(|first| Some((first, self.next_after(first)?)))
                    .and_then(|(first, second)| (second - first).to_std().ok());
                gap.unwrap_or(Duration::MAX)
            }
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::Cron { expr, tz, .. } => write!(f, "cron {expr:?} in {tz}"),
            Trigger::Every(interval) => {
                write!(f, "every {}", humantime::format_duration(*interval))
            }
        }
    }
}

/// A parsed cron expression. Only [`Trigger::cron`] makes one, so a
/// [`Trigger::Cron`] always holds a valid expression.
#[derive(Clone)]
pub struct CronSchedule {
    // Boxed: the parsed pattern is some 350 bytes, `Trigger` stays small.
    cron: Box<croner::Cron>,
    /// No `*` in the minute or hour field: a "run at this time of day"
    /// expression (see [`Trigger`] on daylight-saving time).
    wall_clock: bool,
}

/// How many constant-offset stretches [`CronSchedule::next_after`] walks
/// through before giving up: two DST changes a year, and the rarest
/// accepted pattern (29 February) can be eight years away.
const MAX_SEGMENTS: usize = 64;

const ONE_SECOND: TimeDelta = TimeDelta::seconds(1);

impl CronSchedule {
    fn parse(expr: &str) -> Result<CronSchedule, ScheduleError> {
        let expr = expr.trim();
        // croner itself accepts 5 to 7 fields; count first so the common
        // mistake gets a precise message. Nicknames are one "field".
        if !expr.starts_with('@') {
            let found = expr.split_whitespace().count();
            if found != 5 && found != 6 {
                return Err(ScheduleError::CronFieldCount {
                    expr: expr.to_owned(),
                    found,
                });
            }
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .dom_and_dow(false)
            .build()
            .parse(expr)
            .map_err(|e| ScheduleError::CronInvalid {
                expr: expr.to_owned(),
                reason: e.to_string(),
            })?;
        // The normalised pattern keeps the written field count (nicknames
        // expanded to 5 fields), so the minute and hour sit at a known place.
        let fields: Vec<&str> = cron.pattern.as_str().split_whitespace().collect();
        let (minute, hour) = if fields.len() == 6 {
            (fields.get(1), fields.get(2))
        } else {
            (fields.first(), fields.get(1))
        };
        let wall_clock = ![minute, hour]
            .iter()
            .any(|field| field.is_none_or(|f| f.contains('*')));
        Ok(CronSchedule {
            cron: Box::new(cron),
            wall_clock,
        })
    }

    /// The first instant strictly after `t` whose wall-clock time in `tz`
    /// matches, under the daylight-saving rules in [`Trigger`]'s docs.
    ///
    /// croner serves only as a calendar matcher: it finds the next matching
    /// local reading after a given one (handed over as UTC, which has no
    /// gaps or repeats). This function walks the stretches of constant UTC
    /// offset from `t` on, mapping readings to instants in each. (croner's
    /// own time-zone search can return an instant before `t` during a
    /// fall-back hour and skips the repeated hour for interval patterns.)
    fn next_after(&self, t: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let t = t.with_nanosecond(0)?;
        let mut start = t;
        // Readings strictly after this one are candidates.
        let mut floor = local_reading(tz, t)?;
        if self.wall_clock {
            // In the repeated hour after a fall-back, the readings of the
            // first pass have had their turn: a wall-clock time fires once.
            let day_before = t.checked_sub_signed(TimeDelta::days(1))?;
            if let Some(change) = next_offset_change(tz, day_before, t) {
                let before = offset_at(tz, change.checked_sub_signed(ONE_SECOND)?);
                if offset_at(tz, change) < before {
                    let last_first_pass =
                        change.naive_utc().checked_add_signed(before - ONE_SECOND)?;
                    floor = floor.max(last_first_pass);
                }
            }
        }
        for _ in 0..MAX_SEGMENTS {
            let offset = offset_at(tz, start);
            let reading = self
                .cron
                .find_next_occurrence(&Utc.from_utc_datetime(&floor), false)
                .ok()?
                .naive_utc();
            let at = Utc.from_utc_datetime(&reading.checked_sub_signed(offset)?);
            let Some(change) = next_offset_change(tz, start, at) else {
                return Some(at);
            };
            // The offset changes before `reading` comes round in this stretch.
            let new_offset = offset_at(tz, change);
            let first_new_reading = change.naive_utc().checked_add_signed(new_offset)?;
            if new_offset > offset {
                // Spring forward: readings up to `first_new_reading` never occur.
                if self.wall_clock && reading < first_new_reading {
                    return Some(change);
                }
                floor = floor.max(first_new_reading.checked_sub_signed(ONE_SECOND)?);
            } else if !self.wall_clock {
                // Fall back: the readings from `first_new_reading` on occur
                // a second time, and interval patterns fire in both passes.
                floor = first_new_reading.checked_sub_signed(ONE_SECOND)?;
            }
            start = change;
        }
        None
    }
}

/// The wall-clock reading of `at` in `tz`.
fn local_reading(tz: Tz, at: DateTime<Utc>) -> Option<NaiveDateTime> {
    at.naive_utc().checked_add_signed(offset_at(tz, at))
}

/// The UTC offset in force in `tz` at `at`.
fn offset_at(tz: Tz, at: DateTime<Utc>) -> TimeDelta {
    let offset = tz.offset_from_utc_datetime(&at.naive_utc()).fix();
    TimeDelta::seconds(i64::from(offset.local_minus_utc()))
}

/// The first instant in `(from, until]` at which `tz`'s UTC offset differs
/// from the one in force at `from` (to the second, for whole-second
/// arguments), or `None`. Probes a day at a time, then bisects: offsets do
/// not change twice within a day.
fn next_offset_change(tz: Tz, from: DateTime<Utc>, until: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let base = offset_at(tz, from);
    let mut low = from;
    while low < until {
        let high = low
            .checked_add_signed(TimeDelta::days(1))
            .map_or(until, |next_day| next_day.min(until));
        if offset_at(tz, high) != base {
            // Invariant: the offset at `low` is `base`, at `high` it is not.
            let mut high = high;
            while high - low > ONE_SECOND {
                let mid = low + TimeDelta::seconds((high - low).num_seconds() / 2);
                if offset_at(tz, mid) == base {
                    low = mid;
                } else {
                    high = mid;
                }
            }
            return Some(high);
        }
        low = high;
    }
    None
}

impl fmt::Debug for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CronSchedule")
            .field("pattern", &self.cron.pattern.as_str())
            .field("wall_clock", &self.wall_clock)
            .finish()
    }
}

impl PartialEq for CronSchedule {
    fn eq(&self, other: &Self) -> bool {
        self.cron.pattern.as_str() == other.cron.pattern.as_str()
    }
}

impl Eq for CronSchedule {}

/// A trigger as written in configuration, before the job's time zone is
/// applied: either a cron expression string (`"0 */6 * * *"`) or a table
/// `{ every = "6h" }` with a humantime duration. Both are validated while
/// deserialising, so configuration errors point at the offending line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TriggerSpec {
    /// A 5- or 6-field cron expression.
    Cron(String),
    /// A fixed interval.
    Every(Duration),
}

impl TriggerSpec {
    /// The trigger this spec describes, with cron expressions evaluated in
    /// `tz` (ignored for `every`).
    pub fn resolve(&self, tz: Tz) -> Result<Trigger, ScheduleError> {
        match self {
            TriggerSpec::Cron(expr) => Trigger::cron(expr, tz),
            TriggerSpec::Every(interval) => Trigger::every(*interval),
        }
    }
}

impl fmt::Display for TriggerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TriggerSpec::Cron(expr) => write!(f, "{expr:?}"),
            TriggerSpec::Every(interval) => {
                write!(
                    f,
                    "{{ every = \"{}\" }}",
                    humantime::format_duration(*interval)
                )
            }
        }
    }
}

impl<'de> Deserialize<'de> for TriggerSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TriggerSpecVisitor)
    }
}

struct TriggerSpecVisitor;

impl<'de> Visitor<'de> for TriggerSpecVisitor {
    type Value = TriggerSpec;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            r#"a cron expression such as "0 */6 * * *" or a table such as { every = "6h" }"#,
        )
    }

    fn visit_str<E: de::Error>(self, expr: &str) -> Result<TriggerSpec, E> {
        // Cron validity does not depend on the time zone; check it now.
        Trigger::cron(expr, Tz::UTC).map_err(E::custom)?;
        Ok(TriggerSpec::Cron(expr.trim().to_owned()))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TriggerSpec, A::Error> {
        let mut every = None;
        while let Some(key) = map.next_key::<String>()? {
            if key != "every" {
                return Err(de::Error::unknown_field(&key, &["every"]));
            }
            if every.is_some() {
                return Err(de::Error::duplicate_field("every"));
            }
            let text: String = map.next_value()?;
            let interval = humantime::parse_duration(&text).map_err(|e| {
                de::Error::custom(format_args!("invalid duration {text:?} for `every`: {e}"))
            })?;
            Trigger::every(interval).map_err(de::Error::custom)?;
            every = Some(interval);
        }
        every
            .map(TriggerSpec::Every)
            .ok_or_else(|| de::Error::missing_field("every"))
    }
}

impl Serialize for TriggerSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            TriggerSpec::Cron(expr) => serializer.serialize_str(expr),
            TriggerSpec::Every(interval) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("every", &humantime::format_duration(*interval).to_string())?;
                map.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono_tz::Europe::Madrid;
    use rstest::rstest;
    use serde::Deserialize;

    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn cron(expr: &str, tz: Tz) -> Trigger {
        Trigger::cron(expr, tz).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The first `n` fire times after `from`.
    fn fires(trigger: &Trigger, from: &str, n: usize) -> Vec<DateTime<Utc>> {
        std::iter::successors(trigger.next_after(at(from)), |t| trigger.next_after(*t))
            .take(n)
            .collect()
    }

    fn times(texts: &[&str]) -> Vec<DateTime<Utc>> {
        texts.iter().map(|t| at(t)).collect()
    }

    #[test]
    fn five_and_six_fields_mean_the_same() {
        let five = cron("0 */6 * * *", Tz::UTC);
        let six = cron("0 0 */6 * * *", Tz::UTC);
        let expected = times(&[
            "2026-11-28T12:00:00Z",
            "2026-11-28T18:00:00Z",
            "2026-11-29T00:00:00Z",
            "2026-11-29T06:00:00Z",
        ]);
        assert_eq!(fires(&five, "2026-11-28T10:55:00Z", 4), expected);
        assert_eq!(fires(&six, "2026-11-28T10:55:00Z", 4), expected);
    }

    #[test]
    fn six_fields_reach_seconds() {
        let trigger = cron("*/20 * * * * *", Tz::UTC);
        assert_eq!(
            fires(&trigger, "2026-11-28T10:55:05Z", 3),
            times(&[
                "2026-11-28T10:55:20Z",
                "2026-11-28T10:55:40Z",
                "2026-11-28T10:56:00Z"
            ])
        );
    }

    #[test]
    fn next_after_is_strictly_after_even_with_fractions() {
        let trigger = cron("*/1 * * * * *", Tz::UTC);
        assert_eq!(
            trigger.next_after(at("2026-11-28T10:00:00Z")),
            Some(at("2026-11-28T10:00:01Z"))
        );
        assert_eq!(
            trigger.next_after(at("2026-11-28T10:00:00.999Z")),
            Some(at("2026-11-28T10:00:01Z"))
        );
        let daily = cron("0 3 * * *", Tz::UTC);
        assert_eq!(
            daily.next_after(at("2026-11-28T03:00:00Z")),
            Some(at("2026-11-29T03:00:00Z"))
        );
        assert_eq!(
            daily.next_after(at("2026-11-28T02:59:59.5Z")),
            Some(at("2026-11-28T03:00:00Z"))
        );
    }

    #[test]
    fn extreme_times_give_none_not_a_panic() {
        let triggers = [
            cron("30 2 * * *", Madrid),
            cron("*/30 * * * *", Madrid),
            Trigger::every(Duration::from_secs(60)).unwrap(),
        ];
        for trigger in &triggers {
            assert_eq!(
                trigger.next_after(DateTime::<Utc>::MAX_UTC),
                None,
                "{trigger}"
            );
            // Far in the past, croner's calendar (years 1 to 5000) does not
            // reach; whatever the answer, it must come without a panic.
            let _ = trigger.next_after(DateTime::<Utc>::MIN_UTC);
            let _ = trigger.interval(DateTime::<Utc>::MAX_UTC);
        }
        assert_eq!(
            triggers[0].interval(DateTime::<Utc>::MAX_UTC),
            Duration::MAX
        );
    }

    #[test]
    fn expression_is_read_in_its_time_zone() {
        // Winter: Madrid is UTC+1, New York UTC-5.
        let madrid = cron("0 3 * * *", Madrid);
        let new_york = cron("0 3 * * *", chrono_tz::America::New_York);
        assert_eq!(
            madrid.next_after(at("2026-11-28T12:00:00Z")),
            Some(at("2026-11-29T02:00:00Z"))
        );
        assert_eq!(
            new_york.next_after(at("2026-11-28T12:00:00Z")),
            Some(at("2026-11-29T08:00:00Z"))
        );
        // Summer: UTC+2.
        assert_eq!(
            madrid.next_after(at("2026-07-01T12:00:00Z")),
            Some(at("2026-07-02T01:00:00Z"))
        );
    }

    #[test]
    fn day_of_month_or_day_of_week_as_in_crontab() {
        // 2026-11-28 is a Saturday; 1 December a Tuesday.
        let trigger = cron("0 0 1 * MON", Tz::UTC);
        assert_eq!(
            fires(&trigger, "2026-11-28T12:00:00Z", 3),
            times(&[
                "2026-11-30T00:00:00Z",
                "2026-12-01T00:00:00Z",
                "2026-12-07T00:00:00Z"
            ])
        );
        let both = cron("0 0 1 * +MON", Tz::UTC);
        assert_eq!(
            both.next_after(at("2026-11-28T12:00:00Z")),
            Some(at("2027-02-01T00:00:00Z"))
        );
    }

    #[test]
    fn nicknames_and_names() {
        assert_eq!(
            cron("@daily", Tz::UTC).next_after(at("2026-11-28T12:00:00Z")),
            Some(at("2026-11-29T00:00:00Z"))
        );
        assert_eq!(
            cron("30 4 * JAN sun", Tz::UTC).next_after(at("2026-11-28T12:00:00Z")),
            Some(at("2027-01-03T04:30:00Z"))
        );
    }

    #[rstest]
    #[case("", 0)]
    #[case("0 */6 * *", 4)]
    #[case("0 0 */6 * * * 2027", 7)]
    #[case("* * * * * * * *", 8)]
    fn wrong_field_count_is_named(#[case] expr: &str, #[case] found: usize) {
        let error = Trigger::cron(expr, Tz::UTC).unwrap_err();
        assert!(
            matches!(&error, ScheduleError::CronFieldCount { expr: e, found: f } if e == expr && *f == found),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(message.contains(&format!("{expr:?}")), "{message}");
        assert!(
            message.contains("expected 5") && message.contains("or 6"),
            "{message}"
        );
    }

    #[rstest]
    #[case("0 25 * * *", "out of bounds")]
    #[case("61 * * * * *", "out of bounds")]
    #[case("0 0 * * 8", "out of bounds")]
    #[case("0 0 32 * *", "out of bounds")]
    #[case("*/0 * * * *", "Step cannot be zero")]
    #[case("a b c d e", "illegal character")]
    #[case("0 0 * * MOON", "illegal character")]
    #[case("@fortnightly", "5 or 6 fields")]
    fn bad_values_name_the_expression_and_the_reason(#[case] expr: &str, #[case] reason: &str) {
        let error = Trigger::cron(expr, Tz::UTC).unwrap_err();
        assert!(
            matches!(error, ScheduleError::CronInvalid { .. }),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(message.contains(&format!("{expr:?}")), "{message}");
        assert!(message.contains(reason), "{message}");
    }

    #[test]
    fn an_expression_that_never_fires_is_refused() {
        let error = Trigger::cron("0 0 30 2 *", Madrid).unwrap_err();
        assert!(
            matches!(error, ScheduleError::CronNeverFires { .. }),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            r#"cron expression "0 0 30 2 *" never fires: no date matches it"#
        );
        // Rare but real: 29 February.
        let leap = cron("0 0 29 2 *", Tz::UTC);
        assert_eq!(
            leap.next_after(at("2026-11-28T00:00:00Z")),
            Some(at("2028-02-29T00:00:00Z"))
        );
    }

    #[test]
    fn expression_is_kept_as_written_but_trimmed() {
        let trigger = cron("  0 */6 * * *\n", Madrid);
        assert!(
            matches!(&trigger, Trigger::Cron { expr, tz, .. } if expr == "0 */6 * * *" && *tz == Madrid)
        );
        assert_eq!(
            trigger.to_string(),
            r#"cron "0 */6 * * *" in Europe/Madrid"#
        );
        assert_eq!(trigger, cron("0 */6 * * *", Madrid));
        assert_ne!(trigger, cron("0 */6 * * *", Tz::UTC));
    }

    // Europe/Madrid 2026: clocks go from 02:00 CET to 03:00 CEST on 29 March
    // (01:00 UTC) and from 03:00 CEST back to 02:00 CET on 25 October
    // (01:00 UTC).

    #[test]
    fn spring_forward_wall_clock_time_fires_once_right_after_the_gap() {
        let trigger = cron("30 2 * * *", Madrid);
        assert_eq!(
            fires(&trigger, "2026-03-27T12:00:00Z", 3),
            times(&[
                "2026-03-28T01:30:00Z", // 02:30 CET
                "2026-03-29T01:00:00Z", // 02:30 does not exist: 03:00 CEST
                "2026-03-30T00:30:00Z", // 02:30 CEST
            ])
        );
        // Two times in the gap make one fire.
        let twice = cron("0,30 2 * * *", Madrid);
        assert_eq!(
            fires(&twice, "2026-03-28T12:00:00Z", 2),
            times(&["2026-03-29T01:00:00Z", "2026-03-30T00:00:00Z"])
        );
    }

    #[test]
    fn fall_back_wall_clock_time_fires_once_at_its_first_occurrence() {
        let trigger = cron("30 2 * * *", Madrid);
        assert_eq!(
            fires(&trigger, "2026-10-23T12:00:00Z", 3),
            times(&[
                "2026-10-24T00:30:00Z", // 02:30 CEST
                "2026-10-25T00:30:00Z", // first 02:30 (CEST); not again at 01:30 UTC
                "2026-10-26T01:30:00Z", // 02:30 CET
            ])
        );
        // Asked from inside the repeated hour (02:10 CET, after the first
        // 02:30), the second 02:30 is not offered.
        assert_eq!(
            trigger.next_after(at("2026-10-25T01:10:00Z")),
            Some(at("2026-10-26T01:30:00Z"))
        );
        // Asked from before the change, the first occurrence is.
        assert_eq!(
            trigger.next_after(at("2026-10-25T00:10:00Z")),
            Some(at("2026-10-25T00:30:00Z"))
        );
    }

    #[test]
    fn interval_patterns_skip_the_gap_and_repeat_the_overlap() {
        let trigger = cron("*/30 * * * *", Madrid);
        assert_eq!(
            fires(&trigger, "2026-03-28T23:40:00Z", 4),
            times(&[
                "2026-03-29T00:00:00Z", // 01:00 CET
                "2026-03-29T00:30:00Z", // 01:30 CET
                "2026-03-29T01:00:00Z", // 03:00 CEST: 02:00 and 02:30 do not exist
                "2026-03-29T01:30:00Z",
            ])
        );
        assert_eq!(
            fires(&trigger, "2026-10-24T23:40:00Z", 6),
            times(&[
                "2026-10-25T00:00:00Z", // 02:00 CEST
                "2026-10-25T00:30:00Z", // 02:30 CEST
                "2026-10-25T01:00:00Z", // 02:00 CET
                "2026-10-25T01:30:00Z", // 02:30 CET
                "2026-10-25T02:00:00Z", // 03:00 CET
                "2026-10-25T02:30:00Z",
            ])
        );
    }

    #[test]
    fn interval_of_six_hourly_cron_is_six_hours() {
        for tz in [Tz::UTC, Madrid, chrono_tz::Asia::Kathmandu] {
            let trigger = cron("0 */6 * * *", tz);
            assert_eq!(
                trigger.interval(at("2026-11-28T10:55:00Z")),
                Duration::from_secs(6 * 3600),
                "{tz}"
            );
        }
        // Real time, not wall time: across Madrid's spring change,
        // 00:00 CET to 06:00 CEST is five hours.
        let madrid = cron("0 */6 * * *", Madrid);
        assert_eq!(
            madrid.interval(at("2026-03-28T22:30:00Z")),
            Duration::from_secs(5 * 3600)
        );
    }

    #[rstest]
    // 2026-11-26 is a Thursday: the next fires are Friday's and Monday's.
    // From Friday after 03:00 they are Monday's and Tuesday's.
    #[case("0 3 * * 1-5", "2026-11-26T04:00:00Z", 3 * 24 * 3600)]
    #[case("0 3 * * 1-5", "2026-11-27T04:00:00Z", 24 * 3600)]
    #[case("*/1 * * * * *", "2026-11-27T04:00:00Z", 1)]
    #[case("@hourly", "2026-11-27T04:00:00Z", 3600)]
    fn interval_is_the_gap_between_the_next_two_fires(
        #[case] expr: &str,
        #[case] from: &str,
        #[case] seconds: u64,
    ) {
        assert_eq!(
            cron(expr, Tz::UTC).interval(at(from)),
            Duration::from_secs(seconds)
        );
    }

    #[test]
    fn every_validates_and_adds() {
        for bad in [Duration::ZERO, Duration::from_millis(999)] {
            let error = Trigger::every(bad).unwrap_err();
            assert!(
                matches!(error, ScheduleError::IntervalTooShort { .. }),
                "{error:?}"
            );
            assert!(error.to_string().contains("minimum is 1s"), "{error}");
        }
        let error = Trigger::every(Duration::MAX).unwrap_err();
        assert!(
            matches!(error, ScheduleError::IntervalTooLong { .. }),
            "{error:?}"
        );

        let hourly = Trigger::every(Duration::from_secs(3600)).unwrap();
        assert_eq!(
            hourly.next_after(at("2026-11-28T10:55:00Z")),
            Some(at("2026-11-28T11:55:00Z"))
        );
        assert_eq!(
            hourly.interval(at("2026-11-28T10:55:00Z")),
            Duration::from_secs(3600)
        );
        assert_eq!(hourly.to_string(), "every 1h");
        assert!(Trigger::every(Duration::from_secs(1)).is_ok());
    }

    /// For interval patterns the fire times are exactly the instants whose
    /// local reading matches. Check `next_after` against a minute-by-minute
    /// scan around DST changes in zones with whole-hour, half-hour
    /// (Lord Howe) and no changes (Kathmandu, +05:45).
    #[test]
    fn interval_patterns_match_a_brute_force_scan() {
        let zones = [
            Madrid,
            chrono_tz::America::New_York,
            chrono_tz::Australia::Lord_Howe,
            chrono_tz::Asia::Kathmandu,
        ];
        let patterns = [
            "*/30 * * * *",
            "15 * * * *",
            "0 */6 * * *",
            "*/20 1-3 * * *",
        ];
        // Windows around the 2026 changes of these zones.
        let windows = [
            "2026-03-07T12:00:00Z",
            "2026-03-28T12:00:00Z",
            "2026-04-04T00:00:00Z",
            "2026-10-03T00:00:00Z",
            "2026-10-24T12:00:00Z",
            "2026-10-31T12:00:00Z",
        ];
        for tz in zones {
            for expr in patterns {
                let trigger = cron(expr, tz);
                let Trigger::Cron { schedule, .. } = &trigger else {
                    unreachable!()
                };
                assert!(!schedule.wall_clock, "{expr}");
                for window in windows {
                    let start = at(window);
                    let matches: Vec<DateTime<Utc>> = (0..(2 * 24 + 30) * 60)
                        .map(|minute| start + TimeDelta::minutes(minute))
                        .filter(|t| {
                            schedule
                                .cron
                                .is_time_matching(&t.with_timezone(&tz))
                                .unwrap()
                        })
                        .collect();
                    for step in 0..(2 * 24 * 60 / 37) {
                        let t =
                            start + TimeDelta::minutes(37 * step) + TimeDelta::seconds(step % 60);
                        let expected = matches.iter().find(|m| **m > t).copied();
                        assert_eq!(trigger.next_after(t), expected, "{expr} in {tz} after {t}");
                    }
                }
            }
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Job {
        schedule: TriggerSpec,
    }

    fn parse(toml_text: &str) -> Result<TriggerSpec, String> {
        toml::from_str::<Job>(toml_text)
            .map(|job| job.schedule)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn spec_from_a_string_or_an_every_table() {
        assert_eq!(
            parse(r#"schedule = "0 */6 * * *""#),
            Ok(TriggerSpec::Cron("0 */6 * * *".into()))
        );
        assert_eq!(
            parse(r#"schedule = "*/10 * * * * *""#),
            Ok(TriggerSpec::Cron("*/10 * * * * *".into()))
        );
        assert_eq!(
            parse(r#"schedule = { every = "6h" }"#),
            Ok(TriggerSpec::Every(Duration::from_secs(6 * 3600)))
        );
        assert_eq!(
            parse("[schedule]\nevery = \"1h 30m\"\n"),
            Ok(TriggerSpec::Every(Duration::from_secs(5400)))
        );
    }

    #[rstest]
    #[case(
        r#"schedule = { every = "6h", at = "03:00" }"#,
        "unknown field `at`, expected `every`"
    )]
    #[case(r#"schedule = { }"#, "missing field `every`")]
    #[case(
        r#"schedule = { every = "six hours" }"#,
        r#"invalid duration "six hours" for `every`"#
    )]
    #[case(r#"schedule = { every = "0s" }"#, "interval 0s is too short")]
    #[case(r#"schedule = { every = "500ms" }"#, "interval 500ms is too short")]
    #[case(
        r#"schedule = "0 25 * * *""#,
        r#"invalid cron expression "0 25 * * *""#
    )]
    #[case(
        r#"schedule = "0 */6 * *""#,
        r#"cron expression "0 */6 * *" has 4 field(s)"#
    )]
    #[case(
        "schedule = 6",
        r#"a cron expression such as "0 */6 * * *" or a table such as { every = "6h" }"#
    )]
    fn spec_errors_are_clear(#[case] toml_text: &str, #[case] expected: &str) {
        let error = parse(toml_text).unwrap_err();
        assert!(error.contains(expected), "{error}");
    }

    #[test]
    fn spec_resolves_in_the_time_zone_and_round_trips() {
        let spec = parse(r#"schedule = "30 2 * * *""#).unwrap();
        let trigger = spec.resolve(Madrid).unwrap();
        assert_eq!(trigger, cron("30 2 * * *", Madrid));
        let every = TriggerSpec::Every(Duration::from_secs(6 * 3600));
        assert_eq!(
            every.resolve(Madrid).unwrap(),
            Trigger::Every(Duration::from_secs(6 * 3600))
        );
        assert!(TriggerSpec::Every(Duration::ZERO).resolve(Madrid).is_err());

        #[derive(Serialize)]
        struct Out<'a> {
            schedule: &'a TriggerSpec,
        }
        for spec in [TriggerSpec::Cron("0 */6 * * *".into()), every] {
            let text = toml::to_string(&Out { schedule: &spec }).unwrap();
            assert_eq!(parse(&text), Ok(spec.clone()), "{text}");
        }
        assert_eq!(
            TriggerSpec::Every(Duration::from_secs(90)).to_string(),
            r#"{ every = "1m 30s" }"#
        );
    }
}
