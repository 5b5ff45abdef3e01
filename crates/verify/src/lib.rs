//! Getting data back: fetching an artifact with its size and SHA-256
//! checked while it streams, decompressing it, and feeding `pg_restore` or
//! `psql` so that a corrupted or truncated artifact restores nothing. The
//! user's `refugio restore` and the restore drills (later) share this path.

pub mod drill;
pub mod ephemeral;
pub mod error;
pub mod feed;
pub mod measure;
pub mod restore;

pub use error::{Error, Result};
pub use restore::{restore, RestoreOptions, RestoreReport};
