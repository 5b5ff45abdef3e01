//! refugio's operations, as a library the binary wires up: take a backup
//! (snapshot, pg_dump → compression → repository, manifest last), restore
//! one, drill one (restore into a scratch database, check it, measure RPO
//! and RTO, write a receipt), prune (retention, garbage collection, pins),
//! check the repository's integrity without a restore, and report a job's
//! status. Each operation is a function over its own
//! options struct, a [`Repository`](refugio_store::repo::Repository), a
//! [`Clock`] where a decision depends on time, and a cancellation token; it
//! returns a typed report or an [`Error`] that says whether a retry may
//! help. It knows nothing of the configuration file, the CLI or the daemon.
//!
//! The restore path lives here with the drills that share it: a drill is a
//! restore plus checks, and keeping both in one crate keeps one fetch →
//! digest check → decompress → restore tool pipeline.

pub mod backup;
pub mod catalog;
pub mod check;
pub mod clock;
pub mod drill;
pub mod encryption;
pub mod ephemeral;
pub mod error;
pub mod feed;
#[cfg(test)]
mod fixtures;
mod gc;
pub mod history;
pub mod host;
pub mod listing;
pub mod measure;
pub mod pins;
pub mod probe;
pub mod progress;
pub mod prune;
pub mod receipt;
pub mod restore;
pub mod status;
pub mod wal;
pub mod wal_chain;

pub use backup::{backup, BackupOptions, JobKind, LogicalOptions, ObjectLock, ReplicaLag};
pub use check::{check, CheckOptions, CheckOutcome, CheckReport, ReadData};
pub use clock::{Clock, FixedClock, SystemClock};
pub use drill::{drill, DrillOptions, PhysicalDrill, Pick, Scratch};
pub use encryption::{Identities, Recipients};
pub use error::{Error, Result};
pub use pins::set_pin;
pub use progress::Progress;
pub use prune::{prune, PruneOptions, PruneReport};
pub use receipt::Receipt;
pub use restore::{restore, RestoreOptions, RestoreReport};
pub use status::{status, JobStatus};
