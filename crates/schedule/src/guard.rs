//! The overlap guard and the global concurrency limit.
//!
//! Two rules, enforced together by [`Guards`]:
//!
//! 1. A job's task never overlaps itself: while job `main`'s backup runs (or
//!    waits to run), another trigger for it is refused, not queued.
//! 2. At most `max_concurrent` tasks, over all jobs, do their work at once.
//!
//! A task first takes its guard with [`Guards::try_start`], then waits for a
//! global slot with [`Running::acquire_slot`]. Because the guard is held
//! while waiting, a trigger that arrives while its task waits for a slot is
//! refused too: the wait queue holds at most one entry per job and kind.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::ScheduleError;

/// The kinds of work a job schedules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TaskKind {
    /// Dump the database into the repository.
    Backup,
    /// Restore the newest backup into a scratch database and check it.
    Drill,
    /// Apply the retention policy.
    Prune,
    /// Restore the newest verified backup into the job's
    /// `restore_on_signal` target (after a signalled drill).
    Restore,
    /// Check the repository's integrity (sizes, and digests when asked).
    Check,
}

impl TaskKind {
    /// The lower-case name, as used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Backup => "backup",
            TaskKind::Drill => "drill",
            TaskKind::Prune => "prune",
            TaskKind::Restore => "restore",
            TaskKind::Check => "check",
        }
    }
}

impl fmt::Display for TaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One job's task of one kind: the unit the overlap guard protects.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskKey {
    /// The job's name from the configuration.
    pub job: String,
    /// Which of the job's tasks.
    pub kind: TaskKind,
}

impl TaskKey {
    /// A key for `job`'s task of `kind`.
    pub fn new(job: impl Into<String>, kind: TaskKind) -> TaskKey {
        TaskKey {
            job: job.into(),
            kind,
        }
    }
}

impl fmt::Display for TaskKey {
    /// `job/kind`, e.g. `main/backup`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.job, self.kind)
    }
}

/// The overlap guard and global limit, shared by every task. Cheap to clone:
/// clones share the same state.
#[derive(Clone)]
pub struct Guards {
    inner: Arc<Inner>,
}

struct Inner {
    /// Tasks that hold their guard, whether or not they have a slot yet.
    running: Mutex<BTreeSet<TaskKey>>,
    slots: Arc<Semaphore>,
    max_concurrent: usize,
}

impl Guards {
    /// Guards allowing `max_concurrent` tasks to work at once (0 is treated
    /// as 1, since no task could ever run otherwise).
    pub fn new(max_concurrent: usize) -> Guards {
        let max_concurrent = max_concurrent.clamp(1, Semaphore::MAX_PERMITS);
        Guards {
            inner: Arc::new(Inner {
                running: Mutex::new(BTreeSet::new()),
                slots: Arc::new(Semaphore::new(max_concurrent)),
                max_concurrent,
            }),
        }
    }

    /// Takes `key`'s guard, or returns `None` if that task is already
    /// running or waiting for a slot. The guard is released when the
    /// returned [`Running`] is dropped.
    pub fn try_start(&self, key: &TaskKey) -> Option<Running> {
        if !self.inner.lock().insert(key.clone()) {
            return None;
        }
        Some(Running {
            key: key.clone(),
            inner: Arc::clone(&self.inner),
            slot: None,
        })
    }

    /// The tasks that hold their guard (working or waiting for a slot),
    /// sorted by job then kind.
    pub fn running(&self) -> Vec<TaskKey> {
        self.inner.lock().iter().cloned().collect()
    }

    /// How many tasks may work at once.
    pub fn max_concurrent(&self) -> usize {
        self.inner.max_concurrent
    }

    /// How many global slots are taken right now.
    pub fn slots_in_use(&self) -> usize {
        self.inner.max_concurrent - self.inner.slots.available_permits()
    }

    /// Refuses further slots: tasks waiting in [`Running::acquire_slot`],
    /// now or later, get [`ScheduleError::Closed`]. Tasks that already have
    /// a slot keep it. For shutdown.
    pub fn close(&self) {
        self.inner.slots.close();
    }
}

impl fmt::Debug for Guards {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guards")
            .field("running", &self.running())
            .field("max_concurrent", &self.inner.max_concurrent)
            .finish()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, BTreeSet<TaskKey>> {
        // The set stays consistent even if a holder panicked: every critical
        // section is a single insert, remove or copy.
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Proof that a task holds its overlap guard, and once
/// [`acquire_slot`](Running::acquire_slot) returns, a global slot too. Both
/// are released on drop.
pub struct Running {
    key: TaskKey,
    inner: Arc<Inner>,
    slot: Option<OwnedSemaphorePermit>,
}

impl Running {
    /// The task this guard is for.
    pub fn key(&self) -> &TaskKey {
        &self.key
    }

    /// Waits for a global slot (first come, first served). Returns at once
    /// if this task already has one. Cancel-safe: dropping the future while
    /// it waits takes nothing. Fails only after [`Guards::close`].
    pub async fn acquire_slot(&mut self) -> Result<(), ScheduleError> {
        if self.slot.is_none() {
            let permit = Arc::clone(&self.inner.slots)
                .acquire_owned()
                .await
                .map_err(|_closed| ScheduleError::Closed)?;
            self.slot = Some(permit);
        }
        Ok(())
    }

    /// Whether this task holds a global slot.
    pub fn has_slot(&self) -> bool {
        self.slot.is_some()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.inner.lock().remove(&self.key);
    }
}

impl fmt::Debug for Running {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Running")
            .field("key", &self.key)
            .field("has_slot", &self.has_slot())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn key(job: &str, kind: TaskKind) -> TaskKey {
        TaskKey::new(job, kind)
    }

    #[test]
    fn names_for_logs_and_metrics() {
        assert_eq!(TaskKind::Backup.to_string(), "backup");
        assert_eq!(TaskKind::Drill.to_string(), "drill");
        assert_eq!(TaskKind::Prune.to_string(), "prune");
        assert_eq!(TaskKind::Check.to_string(), "check");
        assert_eq!(key("main", TaskKind::Drill).to_string(), "main/drill");
    }

    #[test]
    fn same_task_is_refused_while_running_and_allowed_after_drop() {
        let guards = Guards::new(2);
        let backup = key("main", TaskKind::Backup);
        let first = guards.try_start(&backup).expect("first start");
        assert!(guards.try_start(&backup).is_none());
        assert!(guards.try_start(&backup).is_none());
        drop(first);
        assert!(guards.try_start(&backup).is_some());
    }

    #[test]
    fn other_kinds_and_other_jobs_are_independent() {
        let guards = Guards::new(1);
        let _main_backup = guards.try_start(&key("main", TaskKind::Backup)).unwrap();
        let _main_drill = guards.try_start(&key("main", TaskKind::Drill)).unwrap();
        let _other_backup = guards.try_start(&key("other", TaskKind::Backup)).unwrap();
        assert_eq!(
            guards.running(),
            vec![
                key("main", TaskKind::Backup),
                key("main", TaskKind::Drill),
                key("other", TaskKind::Backup),
            ]
        );
    }

    #[test]
    fn clones_share_state() {
        let guards = Guards::new(1);
        let clone = guards.clone();
        let running = guards.try_start(&key("main", TaskKind::Prune)).unwrap();
        assert!(clone.try_start(&key("main", TaskKind::Prune)).is_none());
        assert_eq!(clone.running(), vec![key("main", TaskKind::Prune)]);
        drop(running);
        assert!(clone.running().is_empty());
    }

    #[test]
    fn zero_limit_is_one() {
        assert_eq!(Guards::new(0).max_concurrent(), 1);
        assert_eq!(Guards::new(3).max_concurrent(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn global_limit_of_one_makes_the_second_slot_wait() {
        let guards = Guards::new(1);
        let mut first = guards.try_start(&key("a", TaskKind::Backup)).unwrap();
        let mut second = guards.try_start(&key("b", TaskKind::Backup)).unwrap();
        first.acquire_slot().await.unwrap();
        assert!(first.has_slot());
        assert_eq!(guards.slots_in_use(), 1);

        let waited = tokio::time::timeout(Duration::from_secs(3600), second.acquire_slot()).await;
        assert!(
            waited.is_err(),
            "second slot granted while the first is held"
        );
        assert!(!second.has_slot());

        // Waiting counts as running: the same task's next trigger is refused.
        assert!(guards.try_start(&key("b", TaskKind::Backup)).is_none());

        drop(first);
        tokio::time::timeout(Duration::from_secs(1), second.acquire_slot())
            .await
            .expect("slot freed by drop")
            .unwrap();
        assert!(second.has_slot());
        assert_eq!(guards.running(), vec![key("b", TaskKind::Backup)]);
    }

    #[tokio::test(start_paused = true)]
    async fn slots_are_granted_in_arrival_order() {
        let guards = Guards::new(1);
        let mut holder = guards.try_start(&key("a", TaskKind::Backup)).unwrap();
        holder.acquire_slot().await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for job in ["b", "c", "d"] {
            let mut running = guards.try_start(&key(job, TaskKind::Backup)).unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                running.acquire_slot().await.unwrap();
                tx.send(running.key().job.clone()).unwrap();
                tokio::time::sleep(Duration::from_secs(1)).await;
            });
            // Let the task register as a waiter before the next one.
            tokio::task::yield_now().await;
        }
        drop(tx);
        drop(holder);
        let mut order = Vec::new();
        while let Some(job) = rx.recv().await {
            order.push(job);
        }
        assert_eq!(order, ["b", "c", "d"]);
    }

    #[tokio::test]
    async fn acquiring_twice_keeps_one_slot() {
        let guards = Guards::new(2);
        let mut running = guards.try_start(&key("a", TaskKind::Drill)).unwrap();
        running.acquire_slot().await.unwrap();
        running.acquire_slot().await.unwrap();
        assert_eq!(guards.slots_in_use(), 1);
        drop(running);
        assert_eq!(guards.slots_in_use(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn close_wakes_waiters_with_an_error() {
        let guards = Guards::new(1);
        let mut holder = guards.try_start(&key("a", TaskKind::Backup)).unwrap();
        holder.acquire_slot().await.unwrap();
        let mut waiter = guards.try_start(&key("b", TaskKind::Backup)).unwrap();
        let closer = guards.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            closer.close();
        });
        let result = waiter.acquire_slot().await;
        assert!(matches!(result, Err(ScheduleError::Closed)), "{result:?}");
        // The holder keeps its slot until it is done.
        assert!(holder.has_slot());
        assert_eq!(guards.slots_in_use(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_wait_takes_nothing() {
        let guards = Guards::new(1);
        let mut holder = guards.try_start(&key("a", TaskKind::Backup)).unwrap();
        holder.acquire_slot().await.unwrap();
        let mut waiter = guards.try_start(&key("b", TaskKind::Backup)).unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(1), waiter.acquire_slot()).await;
        drop(waiter);
        drop(holder);
        assert_eq!(guards.slots_in_use(), 0);
        assert!(guards.running().is_empty());
        let mut again = guards.try_start(&key("b", TaskKind::Backup)).unwrap();
        tokio::time::timeout(Duration::from_secs(1), again.acquire_slot())
            .await
            .expect("slot free")
            .unwrap();
    }

    /// Compile-time: guards and the running set cross threads (checked by
    /// the type checker, not a run-time test).
    const _: fn() = || {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Guards>();
        assert_send_sync::<Running>();
    };
}
