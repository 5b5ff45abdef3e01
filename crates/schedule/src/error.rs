//! The crate's error type.

use std::time::Duration;

use crate::guard::TaskKey;

/// Everything that can go wrong in the scheduler core.
///
/// All of these are permanent: they come from configuration (a bad cron
/// expression, a too-short interval, a task listed twice), from misuse at
/// start-up, or from an internal failure of the timer, and retrying the
/// same call gives the same answer. See [`ScheduleError::is_temporary`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// A cron expression does not have 5 or 6 fields.
    #[error(
        "cron expression {expr:?} has {found} field(s); expected 5 \
         (minute hour day-of-month month day-of-week) or 6 \
         (second minute hour day-of-month month day-of-week)"
    )]
    CronFieldCount {
        /// The expression as written.
        expr: String,
        /// How many whitespace-separated fields it has.
        found: usize,
    },

    /// A cron expression has the right shape but a bad value (out of range,
    /// unknown name, illegal character, …).
    #[error("invalid cron expression {expr:?}: {reason}")]
    CronInvalid {
        /// The expression as written.
        expr: String,
        /// What the cron parser objected to.
        reason: String,
    },

    /// A cron expression parses but matches no time at all (e.g. `0 0 30 2 *`,
    /// the 30th of February).
    #[error("cron expression {expr:?} never fires: no date matches it")]
    CronNeverFires {
        /// The expression as written.
        expr: String,
    },

    /// An `every` interval is zero or shorter than the one-second minimum.
    #[error(
        "interval {} is too short: the minimum is 1s",
        humantime::format_duration(*interval)
    )]
    IntervalTooShort {
        /// The interval given.
        interval: Duration,
    },

    /// An `every` interval is too long to be represented as a date offset.
    #[error("interval {} is too long", humantime::format_duration(*interval))]
    IntervalTooLong {
        /// The interval given.
        interval: Duration,
    },

    /// The same task appears twice in the entries given to the scheduler.
    #[error("task {key} is scheduled twice; give each job's task one trigger")]
    DuplicateEntry {
        /// The task listed more than once.
        key: TaskKey,
    },

    /// The scheduler was started outside a Tokio runtime.
    #[error("the scheduler must be started from within a Tokio runtime")]
    NoRuntime,

    /// tokio-cron-scheduler, the timer underneath [`Scheduler`](crate::Scheduler),
    /// failed: it did not start, or did not take an entry's next job.
    #[error("the timer (tokio-cron-scheduler) failed to {action}")]
    Timer {
        /// What it was asked to do: `"start"` or `"take a job"`.
        action: &'static str,
        /// Its error.
        source: tokio_cron_scheduler::JobSchedulerError,
    },

    /// The guards were closed (the agent is shutting down) while a task
    /// waited for a global slot.
    #[error("no task slot: the agent is shutting down")]
    Closed,
}

impl ScheduleError {
    /// Whether retrying the same operation could succeed. Always `false`:
    /// every variant is a configuration, shutdown or internal condition.
    pub fn is_temporary(&self) -> bool {
        false
    }
}
