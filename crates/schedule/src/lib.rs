//! refugio's scheduler core: when each job's backup, restore drill, prune and check
//! are due, and the rules that keep them from piling up.
//!
//! - [`Trigger`]: a cron expression (5 fields, or 6 with seconds) in a time
//!   zone, daylight-saving aware, or a fixed interval; configuration holds a
//!   [`TriggerSpec`] (`"0 */6 * * *"` or `{ every = "6h" }`).
//! - [`Scheduler`]: tokio-cron-scheduler underneath, holding a one-shot job
//!   per [`Entry`] at its next fire time and re-arming it after each fire;
//!   delivers [`Fire`]s with jitter on a bounded channel (a full channel
//!   drops fires, never queues).
//! - [`Guards`]: the overlap guard (a job's task never runs twice at once,
//!   and a trigger arriving meanwhile is refused, not queued) and the global
//!   limit on concurrent tasks.
//! - [`needs_catch_up`]: whether a run was missed while the agent was down.
//! - [`retry`] with [`Backoff`]: exponential backoff for temporary errors.
//!
//! The agent (`refugio run`) drives these: it starts the [`Scheduler`],
//! takes each [`Fire`] (and fires of its own, for signals and catch-up),
//! takes the task's guard and a slot, and runs the work.
//!
//! What this crate deliberately does not do: it knows nothing of
//! PostgreSQL, object stores or the agent's configuration. In particular the
//! multi-replica lock (a PostgreSQL advisory lock on the job's source, so
//! exactly one replica backs up) is taken by the agent, after the guard; the
//! in-process guard here only prevents overlap within one process. Time
//! and randomness enter through arguments where logic depends on them
//! (`now` in [`needs_catch_up`], `t` in [`Trigger::next_after`]), so tests
//! can fix them.

#![warn(missing_docs)]

mod backoff;
mod catchup;
mod error;
mod guard;
mod scheduler;
mod trigger;

pub use backoff::{retry, Backoff};
pub use catchup::needs_catch_up;
pub use error::ScheduleError;
pub use guard::{Guards, Running, TaskKey, TaskKind};
pub use scheduler::{Entry, Fire, FireReason, Scheduler, FIRE_CHANNEL_CAPACITY, TIMER_RESOLUTION};
pub use trigger::{CronSchedule, Trigger, TriggerSpec, MIN_INTERVAL};
