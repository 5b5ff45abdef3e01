//! Errors of the PostgreSQL side.

use std::path::PathBuf;
use std::process::ExitStatus;

/// Result of the dump crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong talking to PostgreSQL or running its tools.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to {url} failed: {source}")]
    Connect {
        /// Redacted connection URL.
        url: String,
        #[source]
        source: sqlx::Error,
    },

    #[error("query on {url} failed ({what}): {source}")]
    Query {
        url: String,
        what: String,
        #[source]
        source: sqlx::Error,
    },

    #[error("invalid connection URL {url}: {reason}")]
    InvalidUrl { url: String, reason: String },

    #[error("reading password file {path}: {source}")]
    PasswordFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("no suitable {tool} for {required}: need major version >= {required_major}; found {}", describe_found(.found))]
    NoSuitableTool {
        tool: &'static str,
        /// The version that must be served (server version, or the pg_dump that wrote an archive).
        required: String,
        required_major: u32,
        /// Every candidate examined with its version (or why it could not be run).
        found: Vec<(PathBuf, String)>,
    },

    #[error("running {tool} ({path}): {source}")]
    Spawn {
        tool: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{tool} failed ({status}): {stderr_tail}")]
    ToolFailed {
        tool: &'static str,
        status: ExitStatus,
        /// Last lines of the tool's standard error.
        stderr_tail: String,
        /// The failure was `pg_dump` giving up on a table lock
        /// (`--lock-wait-timeout`): worth retrying the whole backup.
        lock_timeout: bool,
    },

    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn describe_found(found: &[(PathBuf, String)]) -> String {
    if found.is_empty() {
        return "none".to_string();
    }
    found
        .iter()
        .map(|(p, v)| format!("{} ({v})", p.display()))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Error {
    /// Whether retrying the whole operation may succeed.
    pub fn is_temporary(&self) -> bool {
        match self {
            Error::ToolFailed { lock_timeout, .. } => *lock_timeout,
            Error::Connect { source, .. } => {
                matches!(source, sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut)
            }
            Error::Query { source, .. } => is_lock_timeout(source),
            _ => false,
        }
    }
}

/// SQLSTATE 55P03 (lock_not_available), raised by `lock_timeout`.
pub fn is_lock_timeout(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "55P03")
}
