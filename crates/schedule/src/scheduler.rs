//! The scheduler driver: turns triggers into [`Fire`]s on a bounded channel.
//!
//! Fire times come from [`Trigger::next_after`]; the timer underneath is
//! tokio-cron-scheduler's `JobScheduler`, holding one *one-shot* job per
//! [`Entry`], due at the entry's next fire time. When it runs, it waits a
//! random jitter, offers a [`Fire`] to the channel without waiting (a full
//! channel drops the fire with a warning: nothing queues without bound),
//! computes the following fire time and arms the next one-shot job.
//!
//! Why not tokio-cron-scheduler's own cron jobs: version 0.15 computes every
//! tick after the first with the UTC offset captured when the job was
//! created, so a job in a time zone with daylight-saving time runs an hour
//! off after the next change (mvniekerk/tokio-cron-scheduler#87 and #107).
//! Re-arming per fire computes each time afresh, by the function
//! [`needs_catch_up`](crate::needs_catch_up) uses too.
//!
//! Timing: tokio-cron-scheduler compares its jobs' times, in whole seconds,
//! with the wall clock every 500 ms, so a fire reaches the channel up to
//! [`TIMER_RESOLUTION`] after its time (then jitter), never before (a job
//! that runs early waits out the rest). Plenty for backups. Because the wall
//! clock is re-read at each check, a clock stepped by NTP or a host resumed
//! from suspend fires as soon as the wall clock has passed the time; fire
//! times missed meanwhile produce one fire, not a burst.
//!
//! Upstream leaves a few idle tasks behind per `JobScheduler` (it cannot
//! stop them; they end with the runtime), so start one [`Scheduler`] per
//! process. It logs each job it adds at info level: run the agent with
//! `tokio_cron_scheduler=warn`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use tokio::sync::mpsc;
use tokio_cron_scheduler::job::JobId;
use tokio_cron_scheduler::{
    Context, Job, JobCode, JobScheduler, JobSchedulerError, JobToRunAsync, PinnedGetFuture,
    SimpleJobCode, SimpleMetadataStore, SimpleNotificationCode, SimpleNotificationStore, ToCode,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::{ScheduleError, TaskKey, Trigger};

/// Capacity of the channel [`Scheduler::start`] returns: how many fires may
/// wait for the agent before further ones are dropped.
pub const FIRE_CHANNEL_CAPACITY: usize = 64;

/// How often tokio-cron-scheduler checks whether a job is due: a fire
/// reaches the channel up to about this long after its time, before jitter.
pub const TIMER_RESOLUTION: Duration = Duration::from_millis(500);

/// The most a one-shot job can run before its time: upstream keeps times in
/// whole seconds.
const MAX_EARLY: Duration = Duration::from_secs(1);

/// Capacity of upstream's internal broadcast channels (its default).
const TIMER_CHANNEL_CAPACITY: usize = 200;

/// How long a due job waits for its code to be registered (see
/// [`WaitingJobCode`]), and how often it looks.
const REGISTRATION_WAIT: Duration = Duration::from_secs(1);
const REGISTRATION_POLL: Duration = Duration::from_millis(10);

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
    /// For [`Trigger::Every`]: when the interval started counting, typically
    /// the newest backup's time. The first fire is at `anchor + interval`
    /// if that is still ahead (a restart 5 h after the last backup of an
    /// `every 6h` job fires 1 h later), else one interval after start; an
    /// overdue run is for the agent's catch-up
    /// ([`needs_catch_up`](crate::needs_catch_up)). An anchor later than
    /// the start (clock skew) counts as the start. `None`: one interval
    /// after start. Ignored for cron, whose times are fixed.
    pub anchor: Option<DateTime<Utc>>,
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

/// The running scheduler. Dropping it stops the entries too; prefer
/// [`Scheduler::shutdown`], which also waits for fires in progress.
pub struct Scheduler {
    // The only lasting strong reference: armed jobs hold a `Weak`, so once
    // the scheduler and the fires in progress are gone, so is the sender,
    // and the receiver yields `None`.
    shared: Arc<Shared>,
}

/// What the entries' one-shot jobs share.
struct Shared {
    jobs: JobScheduler,
    fires: mpsc::Sender<Fire>,
    cancel: CancellationToken,
    /// Fires in progress and the watcher (see [`watch`]).
    tracker: TaskTracker,
    /// Each live entry's next fire time (before jitter). An entry that has
    /// ended is missing.
    next: Mutex<BTreeMap<TaskKey, DateTime<Utc>>>,
    entries: usize,
    dropped: AtomicU64,
    panicked: AtomicUsize,
}

/// An entry as its one-shot jobs carry it.
struct Armed {
    key: TaskKey,
    trigger: Trigger,
    jitter: Duration,
}

impl Scheduler {
    /// Starts tokio-cron-scheduler on the current Tokio runtime, arms each
    /// entry's first fire and returns the scheduler with the receiving end
    /// of its fire channel (capacity [`FIRE_CHANNEL_CAPACITY`]).
    ///
    /// Fails if a task appears in two entries, if an entry's
    /// [`Trigger::Every`] is shorter than a second (possible only when it
    /// was built without [`Trigger::every`]), outside a Tokio runtime, or if
    /// tokio-cron-scheduler fails to start or take a job.
    pub async fn start(
        entries: Vec<Entry>,
    ) -> Result<(Scheduler, mpsc::Receiver<Fire>), ScheduleError> {
        Scheduler::start_with_capacity(entries, FIRE_CHANNEL_CAPACITY).await
    }

    async fn start_with_capacity(
        entries: Vec<Entry>,
        capacity: usize,
    ) -> Result<(Scheduler, mpsc::Receiver<Fire>), ScheduleError> {
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

        let jobs = JobScheduler::new_with_storage_and_code(
            Box::new(SimpleMetadataStore::default()),
            Box::new(SimpleNotificationStore::default()),
            Box::new(WaitingJobCode::default()),
            Box::new(SimpleNotificationCode::default()),
            TIMER_CHANNEL_CAPACITY,
        )
        .await
        .map_err(|source| ScheduleError::Timer {
            action: "start",
            source,
        })?;
        jobs.start().await.map_err(|source| ScheduleError::Timer {
            action: "start",
            source,
        })?;

        let (sender, receiver) = mpsc::channel(capacity.max(1));
        let shared = Arc::new(Shared {
            jobs: jobs.clone(),
            fires: sender.clone(),
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
            next: Mutex::new(BTreeMap::new()),
            entries: entries.len(),
            dropped: AtomicU64::new(0),
            panicked: AtomicUsize::new(0),
        });
        shared
            .tracker
            .spawn(watch(jobs, sender, shared.cancel.clone()));
        let scheduler = Scheduler { shared };

        let now = Utc::now();
        for entry in entries {
            let Some(due) = first_fire(&entry.trigger, entry.anchor, now) else {
                tracing::warn!(task = %entry.key, trigger = %entry.trigger, "trigger has no fire time; entry not started");
                continue;
            };
            let armed = Arc::new(Armed {
                key: entry.key,
                trigger: entry.trigger,
                jitter: entry.jitter,
            });
            // On error the scheduler is dropped, which stops the rest.
            arm(&scheduler.shared, &armed, due).await?;
        }
        Ok((scheduler, receiver))
    }

    /// Each live entry's next fire time (before jitter), sorted by task.
    pub fn next_fires(&self) -> Vec<(TaskKey, DateTime<Utc>)> {
        if self.shared.cancel.is_cancelled() {
            return Vec::new();
        }
        self.shared
            .lock()
            .iter()
            .map(|(key, at)| (key.clone(), *at))
            .collect()
    }

    /// Whether every entry is still live. They end on shutdown, when the
    /// receiver is dropped, when a trigger has no further fire time, or if
    /// tokio-cron-scheduler refuses a job (logged as an error).
    pub fn is_running(&self) -> bool {
        !self.shared.cancel.is_cancelled() && self.shared.lock().len() == self.shared.entries
    }

    /// Stops every entry and tokio-cron-scheduler, and waits until fires in
    /// progress have ended. Fires already in the channel stay there; the
    /// receiver then yields `None`.
    pub async fn shutdown(self) {
        self.stop().await;
    }

    /// [`Scheduler::shutdown`], returning how many fires had panicked.
    async fn stop(self) -> usize {
        self.shared.cancel.cancel();
        self.shared.tracker.close();
        self.shared.tracker.wait().await;
        self.shared.panicked.load(Ordering::Relaxed)
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
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

impl Shared {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<TaskKey, DateTime<Utc>>> {
        // Single inserts and removes: consistent even after a panic elsewhere.
        self.next.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks `key`'s entry as ended: it will not fire again.
    fn end(&self, key: &TaskKey) {
        self.lock().remove(key);
    }
}

/// Until cancelled or the receiver is dropped (which cancels), then shuts
/// tokio-cron-scheduler down.
async fn watch(mut jobs: JobScheduler, fires: mpsc::Sender<Fire>, cancel: CancellationToken) {
    tokio::select! {
        () = cancel.cancelled() => {}
        () = fires.closed() => cancel.cancel(),
    }
    drop(fires);
    if let Err(error) = jobs.shutdown().await {
        tracing::warn!(error = %error, "tokio-cron-scheduler did not shut down");
    }
}

/// The first fire time of an entry started at `now`; see [`Entry::anchor`].
fn first_fire(
    trigger: &Trigger,
    anchor: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    if let (Trigger::Every(_), Some(anchor)) = (trigger, anchor) {
        if let Some(due) = trigger.next_after(anchor.min(now)).filter(|due| *due > now) {
            return Some(due);
        }
    }
    trigger.next_after(now)
}

/// The fire time after `due`, whose fire was sent at `now`, and whether
/// fire times were skipped. Those that have passed meanwhile (suspended
/// host, clock stepped forward, jitter longer than the period) are
/// coalesced into the fire just sent: the next comes after `now`.
fn following(
    trigger: &Trigger,
    due: DateTime<Utc>,
    now: DateTime<Utc>,
) -> (Option<DateTime<Utc>>, bool) {
    match trigger.next_after(due) {
        Some(missed) if missed <= now => (trigger.next_after(now), true),
        next => (next, false),
    }
}

/// The delay for a one-shot job due at `due`, created at `now`. Upstream
/// adds whole seconds to the current whole second, so rounding up makes a
/// whole-second `due` (any cron time) come due on its second, not a second
/// early.
fn one_shot_delay(due: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    let delay = (due - now).to_std().unwrap_or(Duration::ZERO);
    let secs = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
    Duration::from_secs(secs)
}

/// The future [`arm`] returns. Named, so that the cycle arm → job → fire →
/// arm needs no proof that it is `Send`.
type Arming<'a> = Pin<Box<dyn Future<Output = Result<(), ScheduleError>> + Send + 'a>>;

/// Adds a one-shot job that fires `armed` at `due`.
fn arm<'a>(shared: &'a Arc<Shared>, armed: &'a Arc<Armed>, due: DateTime<Utc>) -> Arming<'a> {
    Box::pin(async move {
        let mut once = Some((Arc::downgrade(shared), Arc::clone(armed)));
        let job = Job::new_one_shot_async(one_shot_delay(due, Utc::now()), move |_id, _jobs| {
            // Upstream can run a one-shot job twice if its bookkeeping lags
            // behind its next check; only the first run fires.
            let once = once.take();
            Box::pin(async move {
                if let Some((shared, armed)) = once {
                    run(shared, armed, due).await;
                }
            })
        })
        .map_err(|source| ScheduleError::Timer {
            action: "take a job",
            source,
        })?;
        shared.lock().insert(armed.key.clone(), due);
        if let Err(source) = shared.jobs.add(job).await {
            shared.end(&armed.key);
            return Err(ScheduleError::Timer {
                action: "take a job",
                source,
            });
        }
        Ok(())
    })
}

/// A one-shot job's work, if the scheduler still exists.
async fn run(shared: Weak<Shared>, armed: Arc<Armed>, due: DateTime<Utc>) {
    let Some(shared) = shared.upgrade() else {
        return;
    };
    let tracker = shared.tracker.clone();
    tracker.track_future(fire(shared, armed, due)).await;
}

/// Sends `armed`'s fire for `due` and arms the next one.
async fn fire(shared: Arc<Shared>, armed: Arc<Armed>, due: DateTime<Utc>) {
    let _watch = PanicWatch {
        shared: &shared,
        key: &armed.key,
    };
    let early = (due - Utc::now()).to_std().unwrap_or(Duration::ZERO);
    let delay = early.min(MAX_EARLY) + random_jitter(&mut rand::thread_rng(), armed.jitter);
    if !delay.is_zero() {
        tokio::select! {
            biased;
            () = shared.cancel.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
    if shared.cancel.is_cancelled() {
        return;
    }
    let key = &armed.key;
    match shared
        .fires
        .try_send(Fire::new(key.clone(), FireReason::Schedule, due))
    {
        Ok(()) => tracing::debug!(task = %key, scheduled_at = %due, "trigger fired"),
        Err(mpsc::error::TrySendError::Full(_)) => {
            let dropped = shared.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(
                task = %key,
                scheduled_at = %due,
                capacity = shared.fires.max_capacity(),
                dropped_total = dropped,
                "fire dropped: the agent is not taking fires"
            );
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            shared.cancel.cancel();
            return;
        }
    }
    if shared.cancel.is_cancelled() {
        return;
    }
    let (next, skipped) = following(&armed.trigger, due, Utc::now());
    if skipped {
        tracing::warn!(task = %key, after = %due, "fire times passed while firing; skipped");
    }
    let Some(next) = next else {
        tracing::warn!(task = %key, trigger = %armed.trigger, "trigger has no further fire time; entry stopped");
        shared.end(key);
        return;
    };
    if let Err(error) = arm(&shared, &armed, next).await {
        tracing::error!(task = %key, error = %chain(&error), "entry stopped");
    }
}

/// `error` and its sources, joined by `: `.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

/// Ends the entry of a fire that panics, so [`Scheduler::is_running`] says so.
struct PanicWatch<'a> {
    shared: &'a Shared,
    key: &'a TaskKey,
}

impl Drop for PanicWatch<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(task = %self.key, "scheduler fire panicked; entry stopped");
            self.shared.panicked.fetch_add(1, Ordering::Relaxed);
            self.shared.end(self.key);
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

/// tokio-cron-scheduler's in-memory job code store, except that looking up
/// a job whose code is not there yet waits for it (up to
/// [`REGISTRATION_WAIT`]).
///
/// Upstream stores a new job's time and its code from two tasks listening
/// to the same message. Should its check run between the two, it would find
/// the job due but no code, drop the run and delete the one-shot job, and
/// the entry would never fire again.
#[derive(Default)]
struct WaitingJobCode(SimpleJobCode);

impl ToCode<Box<JobToRunAsync>> for WaitingJobCode {
    fn init(
        &mut self,
        context: &Context,
    ) -> Pin<Box<dyn Future<Output = Result<(), JobSchedulerError>> + Send>> {
        self.0.init(context)
    }

    fn get(&mut self, id: JobId) -> PinnedGetFuture<Box<JobToRunAsync>> {
        let codes = Arc::clone(&self.0.job_code);
        Box::pin(async move {
            let mut waited = Duration::ZERO;
            loop {
                if let Some(code) = codes.read().await.get(&id) {
                    return Ok(Some(Arc::clone(code)));
                }
                if waited >= REGISTRATION_WAIT {
                    return Ok(None);
                }
                tokio::time::sleep(REGISTRATION_POLL).await;
                waited += REGISTRATION_POLL;
            }
        })
    }
}

impl JobCode for WaitingJobCode {}

#[cfg(test)]
mod tests {
    use std::task::{Context as TaskContext, Poll, Waker};
    use std::time::Instant;

    use chrono::{TimeDelta, Timelike};
    use chrono_tz::Tz;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use rstest::rstest;

    use super::*;
    use crate::TaskKind;

    fn every(key: &str, interval: Duration, jitter: Duration) -> Entry {
        Entry {
            key: TaskKey::new(key, TaskKind::Backup),
            trigger: Trigger::every(interval).unwrap(),
            jitter,
            anchor: None,
        }
    }

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn hours(n: i64) -> TimeDelta {
        TimeDelta::hours(n)
    }

    /// How long a test waits for an event before calling it missing: a
    /// deadline for a loaded machine, not a promise of the scheduler (the
    /// waits end as soon as the event comes).
    const PATIENCE: Duration = Duration::from_secs(30);

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
        let (scheduler, mut receiver) = Scheduler::start(vec![entry]).await.unwrap();
        let fires = collect(&mut receiver, start, PATIENCE, 2).await;
        assert_eq!(fires.len(), 2, "{fires:?}");
        for (fire, received) in &fires {
            assert_eq!(fire.key, TaskKey::new("main", TaskKind::Backup));
            assert_eq!(fire.reason, FireReason::Schedule);
            assert!(
                *received >= fire.scheduled_at,
                "{fire:?} early at {received}"
            );
        }
        for pair in fires.windows(2) {
            assert_eq!(
                pair[1].0.scheduled_at - pair[0].0.scheduled_at,
                TimeDelta::seconds(1)
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
            anchor: None,
        };
        let (scheduler, mut receiver) = Scheduler::start(vec![entry]).await.unwrap();
        let fires = collect(&mut receiver, start, PATIENCE, 2).await;
        assert_eq!(fires.len(), 2, "{fires:?}");
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
            Scheduler::start(vec![every("main", Duration::from_secs(1), jitter)])
                .await
                .unwrap();
        let fires = collect(&mut receiver, start, PATIENCE, 2).await;
        assert_eq!(fires.len(), 2, "{fires:?}");
        // Never early, and the jitter moves only the delivery: the
        // scheduled times stay on the interval's grid. How late a fire
        // comes depends on the machine's load; the jitter's own bound is
        // held without a clock by `jitter_is_uniform_below_the_bound`.
        for (fire, received) in &fires {
            assert!(
                *received >= fire.scheduled_at,
                "{fire:?} early at {received}"
            );
        }
        assert_eq!(
            fires[1].0.scheduled_at - fires[0].0.scheduled_at,
            TimeDelta::seconds(1)
        );
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
        let (scheduler, mut receiver) =
            Scheduler::start(vec![every("main", Duration::from_secs(1), Duration::ZERO)])
                .await
                .unwrap();
        let first = tokio::time::timeout(PATIENCE, receiver.recv()).await;
        assert!(matches!(first, Ok(Some(_))), "{first:?}");
        assert!(scheduler.is_running());
        let stopped_at = Utc::now();
        assert_eq!(scheduler.stop().await, 0);
        // The channel closes (`recv` ends with None, not by the deadline):
        // nothing fires after shutdown.
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(PATIENCE, async {
            while let Some(fire) = receiver.recv().await {
                rest.push(fire);
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "channel still open {PATIENCE:?} after shutdown"
        );
        assert!(
            rest.iter().all(|fire| fire.scheduled_at <= stopped_at),
            "{rest:?}"
        );
    }

    #[tokio::test]
    async fn dropping_the_receiver_ends_the_entries_quietly() {
        let (scheduler, receiver) = Scheduler::start(vec![
            every("a", Duration::from_secs(1), Duration::ZERO),
            every("b", Duration::from_secs(3600), Duration::ZERO),
        ])
        .await
        .unwrap();
        assert!(scheduler.is_running());
        assert_eq!(scheduler.next_fires().len(), 2);
        drop(receiver);
        tokio::time::timeout(PATIENCE, async {
            while scheduler.is_running() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("entries still running after the receiver was dropped");
        assert!(scheduler.next_fires().is_empty());
        assert_eq!(scheduler.stop().await, 0);
    }

    #[tokio::test]
    async fn dropping_the_scheduler_stops_it_too() {
        let (scheduler, mut receiver) =
            Scheduler::start(vec![every("main", Duration::from_secs(1), Duration::ZERO)])
                .await
                .unwrap();
        drop(scheduler);
        let closed = tokio::time::timeout(PATIENCE, receiver.recv()).await;
        assert!(matches!(closed, Ok(None)), "{closed:?}");
    }

    #[tokio::test]
    async fn a_full_channel_drops_fires_instead_of_queueing() {
        let (scheduler, mut receiver) = Scheduler::start_with_capacity(
            vec![every("main", Duration::from_secs(1), Duration::ZERO)],
            1,
        )
        .await
        .unwrap();
        // Nobody receives until the second tick has been dropped.
        tokio::time::timeout(PATIENCE, async {
            while scheduler.shared.dropped.load(Ordering::Relaxed) == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("no fire dropped with a full channel");
        let kept = receiver.try_recv().expect("first fire kept");
        assert!(
            receiver.try_recv().is_err(),
            "more than the capacity was queued"
        );
        // The kept fire is the oldest: the one dropped after it was due a
        // second later, and the entry is armed at least one more after that.
        let armed = scheduler.next_fires()[0].1;
        assert!(
            armed - kept.scheduled_at >= TimeDelta::seconds(2),
            "{kept:?}, armed for {armed}"
        );
        assert!(scheduler.is_running());
        assert_eq!(scheduler.stop().await, 0);
    }

    /// A host suspended (here: the runtime's only thread blocked) across
    /// several fire times gets one fire on waking, not one per missed time.
    #[tokio::test]
    async fn a_suspended_host_gets_one_fire_not_a_burst() {
        let start = Instant::now();
        let (scheduler, mut receiver) =
            Scheduler::start(vec![every("main", Duration::from_secs(1), Duration::ZERO)])
                .await
                .unwrap();
        // Blocks every task, tokio-cron-scheduler's included, past the
        // fire times at about 1 s and 2 s.
        std::thread::sleep(Duration::from_millis(2300));
        let woke = Utc::now();
        let fires = collect(&mut receiver, start, PATIENCE, 2).await;
        assert_eq!(fires.len(), 2, "{fires:?}");
        let (first, second) = (&fires[0].0, &fires[1].0);
        assert!(first.scheduled_at < woke, "{first:?}");
        // The 2 s time was skipped: the next one is one interval after
        // the late fire was sent (which was before it was received),
        // however late the loaded machine delivered it.
        assert!(second.scheduled_at > woke, "{second:?} woke {woke}");
        let first_received = fires[0].1;
        assert!(
            second.scheduled_at <= first_received + TimeDelta::seconds(1),
            "{second:?}: first received at {first_received}"
        );
        assert_eq!(scheduler.stop().await, 0);
    }

    #[tokio::test]
    async fn next_fires_lists_each_entry() {
        let before = Utc::now();
        let cron = Entry {
            key: TaskKey::new("main", TaskKind::Prune),
            trigger: Trigger::cron("0 3 * * *", chrono_tz::Europe::Madrid).unwrap(),
            jitter: Duration::from_secs(600),
            anchor: None,
        };
        let (scheduler, _receiver) = Scheduler::start(vec![
            every("main", Duration::from_secs(3600), Duration::ZERO),
            cron.clone(),
        ])
        .await
        .unwrap();
        let next = scheduler.next_fires();
        assert_eq!(next.len(), 2, "{next:?}");
        assert_eq!(next[0].0, TaskKey::new("main", TaskKind::Backup));
        assert!(next[0].1 >= before + hours(1) && next[0].1 <= Utc::now() + hours(1));
        assert_eq!(next[1].0, cron.key);
        assert_eq!(Some(next[1].1), cron.trigger.next_after(before));
        assert!(scheduler.is_running());
        scheduler.shutdown().await;
    }

    #[tokio::test]
    async fn an_anchor_moves_the_first_every_fire_but_not_cron() {
        let start = Instant::now();
        let now = Utc::now();
        // The last run was 57 s ago: the first fire is in about 3 s (time
        // for a loaded machine to read next_fires before it fires).
        let anchor = now - TimeDelta::seconds(57);
        let anchored = Entry {
            anchor: Some(anchor),
            ..every("main", Duration::from_secs(60), Duration::ZERO)
        };
        let cron = Entry {
            key: TaskKey::new("main", TaskKind::Prune),
            trigger: Trigger::cron("0 3 * * *", Tz::UTC).unwrap(),
            jitter: Duration::ZERO,
            anchor: Some(now - hours(23)),
        };
        let (scheduler, mut receiver) = Scheduler::start(vec![anchored, cron.clone()])
            .await
            .unwrap();
        let due = anchor + TimeDelta::seconds(60);
        let next = scheduler.next_fires();
        assert_eq!(next[0], (TaskKey::new("main", TaskKind::Backup), due));
        assert_eq!(next[1], (cron.key, cron.trigger.next_after(now).unwrap()));
        let fires = collect(&mut receiver, start, PATIENCE, 1).await;
        assert_eq!(fires.len(), 1, "no fire from an entry anchored 3 s ahead");
        assert_eq!(fires[0].0.scheduled_at, due);
        // Then every interval from that fire (re-armed just after sending).
        let rearmed = tokio::time::timeout(PATIENCE, async {
            loop {
                let next = scheduler.next_fires()[0].1;
                if next != due {
                    return next;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert_eq!(rearmed, Ok(due + TimeDelta::seconds(60)));
        assert_eq!(scheduler.stop().await, 0);
    }

    #[rstest]
    // The newest backup 5 h ago, every 6 h: 1 h from now.
    #[case("every", Some("2026-11-28T07:00:00Z"), "2026-11-28T13:00:00Z")]
    // Due now or overdue (catch-up's business): one interval from now.
    #[case("every", Some("2026-11-28T06:00:00Z"), "2026-11-28T18:00:00Z")]
    #[case("every", Some("2026-11-27T12:00:00Z"), "2026-11-28T18:00:00Z")]
    #[case("every", None, "2026-11-28T18:00:00Z")]
    // From the future (clock skew): as if now.
    #[case("every", Some("2026-11-28T14:00:00Z"), "2026-11-28T18:00:00Z")]
    // Cron ignores the anchor.
    #[case("cron", Some("2026-11-28T07:00:00Z"), "2026-11-28T18:00:00Z")]
    #[case("cron", None, "2026-11-28T18:00:00Z")]
    fn first_fire_cases(#[case] kind: &str, #[case] anchor: Option<&str>, #[case] expected: &str) {
        let now = at("2026-11-28T12:00:00Z");
        let trigger = match kind {
            "every" => Trigger::every(Duration::from_secs(6 * 3600)).unwrap(),
            _ => Trigger::cron("0 */6 * * *", Tz::UTC).unwrap(),
        };
        assert_eq!(
            first_fire(&trigger, anchor.map(at), now),
            Some(at(expected)),
            "{trigger}, anchor {anchor:?}"
        );
    }

    #[rstest]
    // On time: the next after the one just sent.
    #[case(
        "every 1h",
        "2026-11-28T10:00:00Z",
        "2026-11-28T10:00:00.300Z",
        "2026-11-28T11:00:00Z",
        false
    )]
    // Suspended until 12:30: 11:00 and 12:00 are coalesced into the fire sent.
    #[case(
        "every 1h",
        "2026-11-28T10:00:00Z",
        "2026-11-28T12:30:00Z",
        "2026-11-28T13:30:00Z",
        true
    )]
    #[case(
        "*/10 * * * *",
        "2026-11-28T10:00:00Z",
        "2026-11-28T10:35:00Z",
        "2026-11-28T10:40:00Z",
        true
    )]
    #[case(
        "*/10 * * * *",
        "2026-11-28T10:00:00Z",
        "2026-11-28T10:00:01Z",
        "2026-11-28T10:10:00Z",
        false
    )]
    // Madrid, 03:00 daily, across the spring change (29 March 2026): 02:00
    // UTC while on CET, then 01:00 UTC on CEST. A job that kept the offset
    // of its creation (+01:00) would run at 04:00 local from then on.
    #[case(
        "0 3 * * * Madrid",
        "2026-03-28T02:00:00Z",
        "2026-03-28T02:00:00.500Z",
        "2026-03-29T01:00:00Z",
        false
    )]
    // And back in autumn (25 October 2026).
    #[case(
        "0 3 * * * Madrid",
        "2026-10-24T01:00:00Z",
        "2026-10-24T01:00:00.500Z",
        "2026-10-25T02:00:00Z",
        false
    )]
    fn following_cases(
        #[case] trigger: &str,
        #[case] due: &str,
        #[case] now: &str,
        #[case] expected: &str,
        #[case] skipped: bool,
    ) {
        let trigger = match trigger {
            "every 1h" => Trigger::every(Duration::from_secs(3600)).unwrap(),
            "0 3 * * * Madrid" => Trigger::cron("0 3 * * *", chrono_tz::Europe::Madrid).unwrap(),
            expr => Trigger::cron(expr, Tz::UTC).unwrap(),
        };
        assert_eq!(
            following(&trigger, at(due), at(now)),
            (Some(at(expected)), skipped),
            "{trigger} due {due} now {now}"
        );
    }

    #[rstest]
    #[case("2026-11-28T10:00:00Z", "2026-11-28T09:59:59.700Z", 1)]
    #[case("2026-11-28T10:00:00Z", "2026-11-28T09:59:59Z", 1)]
    #[case("2026-11-28T10:00:00.400Z", "2026-11-28T09:59:59Z", 2)]
    #[case("2026-11-28T16:00:00Z", "2026-11-28T10:00:00Z", 6 * 3600)]
    // Already due: at the next check.
    #[case("2026-11-28T10:00:00Z", "2026-11-28T10:00:03Z", 0)]
    fn one_shot_delay_rounds_up_to_whole_seconds(
        #[case] due: &str,
        #[case] now: &str,
        #[case] seconds: u64,
    ) {
        assert_eq!(
            one_shot_delay(at(due), at(now)),
            Duration::from_secs(seconds)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn job_code_lookup_waits_for_late_registration() {
        let mut store = WaitingJobCode::default();
        let late = Job::new_one_shot(Duration::from_secs(1), |_, _| {})
            .unwrap()
            .guid();
        let unknown = Job::new_one_shot(Duration::from_secs(1), |_, _| {})
            .unwrap()
            .guid();
        let codes = Arc::clone(&store.0.job_code);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let code: Box<JobToRunAsync> = Box::new(|_, _| Box::pin(async {}));
            codes
                .write()
                .await
                .insert(late, Arc::new(tokio::sync::RwLock::new(code)));
        });
        let started = tokio::time::Instant::now();
        let found = store.get(late).await.unwrap();
        assert!(found.is_some());
        assert!(started.elapsed() >= Duration::from_millis(50));
        let started = tokio::time::Instant::now();
        assert!(store.get(unknown).await.unwrap().is_none());
        assert!(started.elapsed() >= REGISTRATION_WAIT);
    }

    #[tokio::test]
    async fn a_task_listed_twice_is_refused() {
        let result = Scheduler::start(vec![
            every("main", Duration::from_secs(60), Duration::ZERO),
            every("main", Duration::from_secs(120), Duration::ZERO),
        ])
        .await;
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
            anchor: None,
        };
        let result = Scheduler::start(vec![entry]).await;
        assert!(matches!(
            result.err(),
            Some(ScheduleError::IntervalTooShort { .. })
        ));
    }

    #[test]
    fn starting_outside_a_runtime_is_an_error() {
        let start = Scheduler::start(vec![every("main", Duration::from_secs(60), Duration::ZERO)]);
        let mut start = std::pin::pin!(start);
        let polled = start
            .as_mut()
            .poll(&mut TaskContext::from_waker(Waker::noop()));
        assert!(
            matches!(polled, Poll::Ready(Err(ScheduleError::NoRuntime))),
            "{polled:?}"
        );
    }

    #[test]
    fn timer_errors_name_the_action_and_keep_the_cause() {
        let error = ScheduleError::Timer {
            action: "take a job",
            source: JobSchedulerError::CantAdd,
        };
        assert_eq!(
            chain(&error),
            "the timer (tokio-cron-scheduler) failed to take a job: CantAdd"
        );
        assert!(!error.is_temporary());
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

    /// Compile-time: the scheduler crosses threads (checked by the type
    /// checker, not a run-time test).
    const _: fn() = || {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Scheduler>();
    };
}
