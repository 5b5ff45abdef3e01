//! The scheduler driver: turns triggers into [`Fire`]s on a bounded channel.
//!
//! Each [`Entry`] gets a Tokio task that computes its next fire time with
//! [`Trigger::next_after`], sleeps until then by the wall clock, sleeps a
//! random jitter, and offers a [`Fire`] to the channel without waiting: if
//! the agent is so far behind that the channel is full, the fire is dropped
//! with a warning (the overlap guard would refuse it anyway). Nothing queues
//! without bound.
//!
//! Why not tokio-cron-scheduler: version 0.15 computes every tick after the
//! first with the UTC offset captured when the job was created, so a job in
//! a time zone with daylight-saving time runs an hour off after the next
//! change (mvniekerk/tokio-cron-scheduler#87 and #107, open). It also rounds
//! intervals to whole seconds and polls every 500 ms. Computing fire times
//! here keeps them identical to what [`Trigger::next_after`] and
//! [`needs_catch_up`](crate::needs_catch_up) say.
//!
//! Sleeps are capped at [`MAX_SLEEP`] and the wall clock is re-read after
//! each, so a clock stepped by NTP or a suspended host delays a fire by at
//! most that much. Fire times missed meanwhile produce one fire, not a burst.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{ScheduleError, TaskKey, Trigger};

/// Capacity of the channel [`Scheduler::start`] returns: how many fires may
/// wait for the agent before further ones are dropped.
pub const FIRE_CHANNEL_CAPACITY: usize = 64;

/// The longest single sleep before the wall clock is checked again.
pub const MAX_SLEEP: Duration = Duration::from_secs(60);

/// One scheduled task: what runs, when, and how much random delay to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The job's task to fire.
    pub key: TaskKey,
    /// When it is due.
    pub trigger: Trigger,
    /// Each fire waits a uniformly random delay in `[0, jitter)` after the
    /// scheduled time, so replicas and jobs do not all start in the same
    /// second. Zero means no delay. Keep it well below the trigger's period.
    pub jitter: Duration,
}

/// Why a task is to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FireReason {
    /// Its trigger fired (the only reason the scheduler itself uses).
    Schedule,
    /// An operator sent a signal (SIGUSR1: back up now, SIGUSR2: drill now).
    Signal,
    /// A run was missed while the agent was down (see
    /// [`needs_catch_up`](crate::needs_catch_up)).
    CatchUp,
    /// Chained after a successful backup (e.g. a drill of the new backup).
    AfterBackup,
}

impl FireReason {
    /// The kebab-case name, as used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            FireReason::Schedule => "schedule",
            FireReason::Signal => "signal",
            FireReason::CatchUp => "catch-up",
            FireReason::AfterBackup => "after-backup",
        }
    }
}

impl fmt::Display for FireReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request to run a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fire {
    /// The job's task to run.
    pub key: TaskKey,
    /// The nominal time: the trigger's fire time (before jitter) for
    /// [`FireReason::Schedule`], the moment of the request otherwise.
    pub scheduled_at: DateTime<Utc>,
    /// Why.
    pub reason: FireReason,
}

impl Fire {
    /// A fire of `key` for `reason`, nominally at `scheduled_at`.
    pub fn new(key: TaskKey, reason: FireReason, scheduled_at: DateTime<Utc>) -> Fire {
        Fire {
            key,
            scheduled_at,
            reason,
        }
    }
}

/// Next fire time of each entry, for status and metrics.
type NextFires = Arc<Mutex<BTreeMap<TaskKey, DateTime<Utc>>>>;

fn lock(next: &NextFires) -> MutexGuard<'_, BTreeMap<TaskKey, DateTime<Utc>>> {
    // Single inserts and removes: consistent even after a panic elsewhere.
    next.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The running scheduler. Dropping it stops the entry tasks too; prefer
/// [`Scheduler::shutdown`], which also waits for them.
pub struct Scheduler {
    cancel: CancellationToken,
    tasks: Vec<(TaskKey, JoinHandle<()>)>,
    next: NextFires,
}

impl Scheduler {
    /// Starts one task per entry on the current Tokio runtime and returns
    /// the scheduler with the receiving end of its fire channel (capacity
    /// [`FIRE_CHANNEL_CAPACITY`]).
    ///
    /// Fails if a task appears in two entries, if an entry's
    /// [`Trigger::Every`] is shorter than a second (possible only when it
    /// was built without [`Trigger::every`]), or outside a Tokio runtime.
    pub fn start(entries: Vec<Entry>) -> Result<(Scheduler, mpsc::Receiver<Fire>), ScheduleError> {
        Scheduler::start_with_capacity(entries, FIRE_CHANNEL_CAPACITY)
    }

    fn start_with_capacity(
        entries: Vec<Entry>,
        capacity: usize,
    ) -> Result<(Scheduler, mpsc::Receiver<Fire>), ScheduleError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| ScheduleError::NoRuntime)?;
        let mut seen = BTreeSet::new();
        for entry in &entries {
            if !seen.insert(&entry.key) {
                return Err(ScheduleError::DuplicateEntry {
                    key: entry.key.clone(),
                });
            }
            if let Trigger::Every(interval) = entry.trigger {
                Trigger::every(interval)?;
            }
        }

        let (sender, receiver) = mpsc::channel(capacity.max(1));
        let cancel = CancellationToken::new();
        let next = NextFires::default();
        let tasks = entries
            .into_iter()
            .map(|entry| {
                let key = entry.key.clone();
                let task = run_entry(entry, sender.clone(), cancel.clone(), Arc::clone(&next));
                (key, runtime.spawn(task))
            })
            .collect();
        Ok((
            Scheduler {
                cancel,
                tasks,
                next,
            },
            receiver,
        ))
    }

    /// Each entry's next fire time (before jitter), sorted by task.
    pub fn next_fires(&self) -> Vec<(TaskKey, DateTime<Utc>)> {
        lock(&self.next)
            .iter()
            .map(|(key, at)| (key.clone(), *at))
            .collect()
    }

    /// Whether every entry's task is still alive. They end on shutdown,
    /// when the receiver is dropped, or when a trigger has no further fire
    /// time.
    pub fn is_running(&self) -> bool {
        !self.cancel.is_cancelled() && self.tasks.iter().all(|(_, task)| !task.is_finished())
    }

    /// Stops every entry and waits until their tasks have ended. Fires
    /// already in the channel stay there; the receiver then yields `None`.
    pub async fn shutdown(self) {
        self.stop().await;
    }

    /// [`Scheduler::shutdown`], returning how many entry tasks had panicked.
    async fn stop(mut self) -> usize {
        self.cancel.cancel();
        let mut panicked = 0;
        for (key, task) in std::mem::take(&mut self.tasks) {
            if let Err(error) = task.await {
                panicked += 1;
                tracing::error!(task = %key, %error, "scheduler entry task failed");
            }
        }
        panicked
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scheduler")
            .field("next_fires", &self.next_fires())
            .field("running", &self.is_running())
            .finish()
    }
}

/// One entry's timer loop.
async fn run_entry(
    entry: Entry,
    fires: mpsc::Sender<Fire>,
    cancel: CancellationToken,
    next: NextFires,
) {
    let Entry {
        key,
        trigger,
        jitter,
    } = entry;
    let mut after = Utc::now();
    loop {
        let Some(due) = trigger.next_after(after) else {
            tracing::warn!(task = %key, %trigger, "trigger has no further fire time; entry stopped");
            break;
        };
        lock(&next).insert(key.clone(), due);
        if !sleep_until(due, &cancel, &fires).await {
            break;
        }
        let delay = random_jitter(&mut rand::thread_rng(), jitter);
        if !delay.is_zero() {
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
        }
        match fires.try_send(Fire::new(key.clone(), FireReason::Schedule, due)) {
            Ok(()) => tracing::debug!(task = %key, scheduled_at = %due, "trigger fired"),
            Err(mpsc::error::TrySendError::Full(_)) => tracing::warn!(
                task = %key,
                scheduled_at = %due,
                capacity = fires.max_capacity(),
                "fire dropped: the agent is not taking fires"
            ),
            Err(mpsc::error::TrySendError::Closed(_)) => break,
        }
        // Coalesce fire times that have passed meanwhile (suspended host,
        // clock stepped forward, jitter longer than the period) into the
        // fire just sent: continue from now rather than from `due`.
        let now = Utc::now();
        after = match trigger.next_after(due) {
            Some(missed) if missed <= now => {
                tracing::warn!(task = %key, %missed, "fire times passed while firing; skipped");
                now
            }
            _ => due,
        };
    }
    lock(&next).remove(&key);
}

/// Sleeps until the wall clock reads `due`. Returns `false` if cancelled or
/// if the receiver was dropped first.
async fn sleep_until(
    due: DateTime<Utc>,
    cancel: &CancellationToken,
    fires: &mpsc::Sender<Fire>,
) -> bool {
    loop {
        let remaining = match (due - Utc::now()).to_std() {
            Ok(remaining) if !remaining.is_zero() => remaining,
            _ => return true,
        };
        tokio::select! {
            biased;
            () = cancel.cancelled() => return false,
            () = fires.closed() => return false,
            () = tokio::time::sleep(remaining.min(MAX_SLEEP)) => {}
        }
    }
}

/// A uniformly random delay in `[0, max)`; zero when `max` is zero.
fn random_jitter(rng: &mut impl Rng, max: Duration) -> Duration {
    if max.is_zero() {
        Duration::ZERO
    } else {
        rng.gen_range(Duration::ZERO..max)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use chrono::Timelike;
    use chrono_tz::Tz;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;
    use crate::TaskKind;

    fn every(key: &str, interval: Duration, jitter: Duration) -> Entry {
        Entry {
            key: TaskKey::new(key, TaskKind::Backup),
            trigger: Trigger::every(interval).unwrap(),
            jitter,
        }
    }

    /// Receives fires until `want` have come or `window` has passed since
    /// `start`, whichever is first; each with the time it was received.
    async fn collect(
        receiver: &mut mpsc::Receiver<Fire>,
        start: Instant,
        window: Duration,
        want: usize,
    ) -> Vec<(Fire, DateTime<Utc>)> {
        let mut fires = Vec::new();
        while let Some(left) = window.checked_sub(start.elapsed()) {
            if fires.len() >= want {
                break;
            }
            match tokio::time::timeout(left, receiver.recv()).await {
                Ok(Some(fire)) => fires.push((fire, Utc::now())),
                Ok(None) | Err(_) => break,
            }
        }
        fires
    }

    #[tokio::test]
    async fn every_second_fires_repeatedly() {
        let start = Instant::now();
        let entry = every("main", Duration::from_secs(1), Duration::ZERO);
        let (scheduler, mut receiver) = Scheduler::start(vec![entry]).unwrap();
        let fires = collect(&mut receiver, start, Duration::from_millis(3500), 3).await;
        assert!(
            fires.len() >= 2,
            "{} fires in 3.5 s: {fires:?}",
            fires.len()
        );
        for (fire, _) in &fires {
            assert_eq!(fire.key, TaskKey::new("main", TaskKind::Backup));
            assert_eq!(fire.reason, FireReason::Schedule);
        }
        for pair in fires.windows(2) {
            assert_eq!(
                pair[1].0.scheduled_at - pair[0].0.scheduled_at,
                chrono::TimeDelta::seconds(1)
            );
        }
        assert_eq!(scheduler.stop().await, 0);
    }

    #[tokio::test]
    async fn six_field_cron_fires_on_whole_seconds() {
        let start = Instant::now();
        let entry = Entry {
            key: TaskKey::new("main", TaskKind::Drill),
            trigger: Trigger::cron("*/1 * * * * *", Tz::UTC).unwrap(),
            jitter: Duration::ZERO,
        };
        let (scheduler, mut receiver) = Scheduler::start(vec![entry]).unwrap();
        let fires = collect(&mut receiver, start, Duration::from_millis(2500), 2).await;
        assert!(!fires.is_empty(), "no fire in 2.5 s");
        for (fire, received) in &fires {
            assert_eq!(fire.scheduled_at.nanosecond(), 0, "{fire:?}");
            assert!(
                *received >= fire.scheduled_at,
                "{fire:?} received early at {received}"
            );
        }
        assert_eq!(scheduler.stop().await, 0);
    }

    #[tokio::test]
    async fn jitter_delays_stay_within_bound() {
        let start = Instant::now();
        let jitter = Duration::from_millis(400);
        let (scheduler, mut receiver) =
            Scheduler::start(vec![every("main", Duration::from_secs(1), jitter)]).unwrap();
        let fires = collect(&mut receiver, start, Duration::from_millis(3500), 2).await;
        assert!(fires.len() >= 2, "{fires:?}");
        // Slack for a busy machine; jitter itself is below 400 ms.
        let bound = chrono::TimeDelta::from_std(jitter + Duration::from_millis(250)).unwrap();
        for (fire, received) in &fires {
            let delay = *received - fire.scheduled_at;
            assert!(
                delay >= chrono::TimeDelta::zero() && delay < bound,
                "{fire:?} delayed {delay}"
            );
        }
        assert_eq!(scheduler.stop().await, 0);
    }

    #[test]
    fn jitter_is_uniform_below_the_bound() {
        let mut rng = StdRng::seed_from_u64(7);
        let max = Duration::from_secs(10);
        let samples: Vec<Duration> = (0..1000).map(|_| random_jitter(&mut rng, max)).collect();
        assert!(samples.iter().all(|d| *d < max));
        // Both halves of the range are used.
        assert!(samples.iter().any(|d| *d < max / 2));
        assert!(samples.iter().any(|d| *d >= max / 2));
        assert_eq!(random_jitter(&mut rng, Duration::ZERO), Duration::ZERO);
    }

    #[tokio::test]
    async fn shutdown_stops_firing() {
        let start = Instant::now();
        let (scheduler, mut receiver) =
            Scheduler::start(vec![every("main", Duration::from_secs(1), Duration::ZERO)]).unwrap();
        let first = tokio::time::timeout(Duration::from_secs(3), receiver.recv()).await;
        assert!(matches!(first, Ok(Some(_))), "{first:?}");
        assert!(scheduler.is_running());
        let stopped_at = Utc::now();
        assert_eq!(scheduler.stop().await, 0);
        // The channel closes: nothing fires after shutdown.
        let rest = collect(&mut receiver, start, Duration::from_secs(4), usize::MAX).await;
        assert!(
            rest.iter().all(|(fire, _)| fire.scheduled_at <= stopped_at),
            "{rest:?}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "channel did not close after shutdown"
        );
    }

    #[tokio::test]
    async fn dropping_the_receiver_ends_the_tasks_quietly() {
        let (scheduler, receiver) = Scheduler::start(vec![
            every("a", Duration::from_secs(1), Duration::ZERO),
            every("b", Duration::from_secs(3600), Duration::ZERO),
        ])
        .unwrap();
        assert!(scheduler.is_running());
        drop(receiver);
        tokio::time::timeout(Duration::from_secs(2), async {
            while scheduler.is_running() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("entry tasks still running after the receiver was dropped");
        assert!(scheduler.next_fires().is_empty());
        assert_eq!(scheduler.stop().await, 0);
    }

    #[tokio::test]
    async fn dropping_the_scheduler_stops_it_too() {
        let (scheduler, mut receiver) =
            Scheduler::start(vec![every("main", Duration::from_secs(1), Duration::ZERO)]).unwrap();
        drop(scheduler);
        let closed = tokio::time::timeout(Duration::from_millis(500), receiver.recv()).await;
        assert!(matches!(closed, Ok(None)), "{closed:?}");
    }

    #[tokio::test]
    async fn a_full_channel_drops_fires_instead_of_queueing() {
        let started = Utc::now();
        let (scheduler, mut receiver) = Scheduler::start_with_capacity(
            vec![every("main", Duration::from_secs(1), Duration::ZERO)],
            1,
        )
        .unwrap();
        // Two ticks (at about 1 s and 2 s) pass while nobody receives.
        tokio::time::sleep(Duration::from_millis(2300)).await;
        let kept = receiver.try_recv().expect("first fire kept");
        assert!(
            receiver.try_recv().is_err(),
            "more than the capacity was queued"
        );
        // The kept fire is the first tick; the second was dropped.
        assert!(
            kept.scheduled_at < started + chrono::TimeDelta::milliseconds(1500),
            "{kept:?}"
        );
        assert!(scheduler.is_running());
        assert_eq!(scheduler.stop().await, 0);
    }

    #[tokio::test]
    async fn next_fires_lists_each_entry() {
        let before = Utc::now();
        let cron = Entry {
            key: TaskKey::new("main", TaskKind::Prune),
            trigger: Trigger::cron("0 3 * * *", chrono_tz::Europe::Madrid).unwrap(),
            jitter: Duration::from_secs(600),
        };
        let (scheduler, _receiver) = Scheduler::start(vec![
            every("main", Duration::from_secs(3600), Duration::ZERO),
            cron.clone(),
        ])
        .unwrap();
        let next = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                let next = scheduler.next_fires();
                if next.len() == 2 {
                    return next;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("both entries report a next fire");
        assert_eq!(next[0].0, TaskKey::new("main", TaskKind::Backup));
        let hour = chrono::TimeDelta::hours(1);
        assert!(next[0].1 >= before + hour && next[0].1 <= Utc::now() + hour);
        assert_eq!(next[1].0, cron.key);
        assert_eq!(Some(next[1].1), cron.trigger.next_after(before));
        scheduler.shutdown().await;
    }

    #[tokio::test]
    async fn a_task_listed_twice_is_refused() {
        let result = Scheduler::start(vec![
            every("main", Duration::from_secs(60), Duration::ZERO),
            every("main", Duration::from_secs(120), Duration::ZERO),
        ]);
        let error = result.expect_err("duplicate accepted");
        assert!(matches!(error, ScheduleError::DuplicateEntry { .. }));
        assert!(error.to_string().contains("main/backup"), "{error}");
    }

    #[tokio::test]
    async fn an_every_below_one_second_is_refused() {
        let entry = Entry {
            key: TaskKey::new("main", TaskKind::Backup),
            trigger: Trigger::Every(Duration::ZERO),
            jitter: Duration::ZERO,
        };
        let result = Scheduler::start(vec![entry]);
        assert!(matches!(
            result.err(),
            Some(ScheduleError::IntervalTooShort { .. })
        ));
    }

    #[test]
    fn starting_outside_a_runtime_is_an_error() {
        let result = Scheduler::start(vec![every("main", Duration::from_secs(60), Duration::ZERO)]);
        assert!(matches!(result.err(), Some(ScheduleError::NoRuntime)));
    }

    #[test]
    fn reasons_have_stable_names() {
        let names: Vec<String> = [
            FireReason::Schedule,
            FireReason::Signal,
            FireReason::CatchUp,
            FireReason::AfterBackup,
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(names, ["schedule", "signal", "catch-up", "after-backup"]);
    }
}
