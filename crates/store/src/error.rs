//! Errors of the storage layer.

use std::io;

/// Result of the storage layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in the repository; fields name the object involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("object {key} not found in {store}")]
    NotFound { store: String, key: String },

    #[error("{op} {key} in {store}: {source}")]
    Io {
        op: &'static str,
        store: String,
        key: String,
        #[source]
        source: io::Error,
    },

    #[error("S3 {op} {key} in {store} failed: {message}")]
    S3 {
        op: &'static str,
        store: String,
        key: String,
        /// The service's error code and message, or the transport error.
        message: String,
        /// Worth a retry (throttling, 5xx, connection failure).
        temporary: bool,
    },

    #[error("reading the data to upload as {key} failed: {source}")]
    Source {
        key: String,
        #[source]
        source: io::Error,
    },

    #[error("object {key}: SHA-256 is {actual}, the manifest says {expected}")]
    DigestMismatch {
        key: String,
        expected: String,
        actual: String,
    },

    #[error("object {key}: size is {actual} bytes, the manifest says {expected}")]
    SizeMismatch {
        key: String,
        expected: u64,
        actual: u64,
    },

    #[error("invalid object key {key:?} for {store}: {reason}")]
    InvalidKey {
        store: String,
        key: String,
        reason: String,
    },

    #[error("repository URL {url:?}: {reason}")]
    InvalidLocation { url: String, reason: String },

    #[error("manifest {key}: format {found} is not supported (this refugio reads format {supported}.x); upgrade refugio")]
    UnsupportedManifest {
        key: String,
        found: String,
        supported: u32,
    },

    #[error("manifest {key} is not valid: {reason}")]
    InvalidManifest { key: String, reason: String },

    #[error("backup {backup} of job {job} not found in {store}")]
    BackupNotFound {
        store: String,
        job: String,
        backup: String,
    },

    #[error("object {key} in {store} is locked (object lock){}; it cannot be deleted before then", until.map(|t| format!(" until {}", t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))).unwrap_or_default())]
    Locked {
        store: String,
        key: String,
        until: Option<chrono::DateTime<chrono::Utc>>,
    },

    #[error("object lock on {key} in {store}: {reason}")]
    LockUnsupported {
        store: String,
        key: String,
        reason: String,
    },

    #[error(
        "object {key} in {store} is larger than {limit} bytes, more than such an object can be"
    )]
    TooLarge {
        store: String,
        key: String,
        limit: u64,
    },

    #[error("{0}")]
    Other(String),
}

impl Error {
    /// Whether a retry may succeed (network trouble, throttling, 5xx).
    pub fn is_temporary(&self) -> bool {
        match self {
            Error::S3 { temporary, .. } => *temporary,
            Error::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::Interrupted | io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ),
            _ => false,
        }
    }
}
