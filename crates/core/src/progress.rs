//! Progress of a running operation, for a terminal display: byte counters
//! the data path adds to as it streams, and the current phase. The
//! operations only count; drawing is the caller's (the CLI uses
//! indicatif). Relaxed atomics: a display needs no ordering.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use refugio_dump::CountingReader;

/// What an operation has done so far.
#[derive(Debug, Default)]
pub struct Progress {
    /// Backup: bytes read from pg_dump. Restore and drill: archive bytes
    /// handed to the restore tool (decrypted, decompressed). Check: bytes
    /// read and hashed.
    pub read: Arc<AtomicU64>,
    /// Backup: bytes sent to the store (compressed, encrypted). Restore
    /// and drill: bytes fetched from the store.
    pub stored: Arc<AtomicU64>,
    /// What the displayed counter will reach, when the operation knows
    /// (restore and drill: the fetched artifacts' stored size; check: the
    /// bytes it re-reads); 0: unknown (a backup: pg_dump's output).
    total: AtomicU64,
    phase: Mutex<String>,
}

impl Progress {
    pub fn new() -> Arc<Progress> {
        Arc::new(Progress::default())
    }

    /// Names what runs now: `dumping app`, `restoring app`, `analyze`…
    pub fn set_phase(&self, phase: impl Into<String>) {
        *self.phase.lock().unwrap_or_else(PoisonError::into_inner) = phase.into();
    }

    pub fn phase(&self) -> String {
        self.phase
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Adds `bytes` to the expected total.
    pub fn add_total(&self, bytes: u64) {
        self.total.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The expected total; 0 when unknown.
    pub fn total_bytes(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    pub fn read_bytes(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    pub fn stored_bytes(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }
}

/// Sets the phase when there is a progress to tell.
pub(crate) fn phase(p: Option<&Arc<Progress>>, phase: impl FnOnce() -> String) {
    if let Some(p) = p {
        p.set_phase(phase());
    }
}

/// `r`, counted into `counter` of the progress when there is one.
pub(crate) fn counting<R>(
    r: R,
    p: Option<&Arc<Progress>>,
    counter: fn(&Progress) -> &Arc<AtomicU64>,
) -> CountingReader<R> {
    match p {
        Some(p) => CountingReader::with_counter(r, counter(p).clone()),
        None => CountingReader::new(r),
    }
}
