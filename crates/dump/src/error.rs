//! Errors of the PostgreSQL side.

use std::path::PathBuf;
use std::process::ExitStatus;

/// Result of the dump crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A TLS failure's cause, without sqlx's wrapping (whose `Io` variant would
/// make the failure read as connection trouble worth a retry).
pub type TlsCause = Box<dyn std::error::Error + Send + Sync>;

/// What went wrong talking to PostgreSQL or running its tools. A message
/// never repeats its `#[source]`: print an error with its chain (anyhow's
/// `{:#}`, `refugio_print::chain`), and each cause appears once.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to {url} failed")]
    Connect {
        /// Redacted connection URL.
        url: String,
        #[source]
        source: sqlx::Error,
    },

    #[error("query on {url} failed ({what})")]
    Query {
        url: String,
        what: String,
        #[source]
        source: sqlx::Error,
    },

    #[error("connecting to {url} failed: {problem}")]
    Tls {
        /// Redacted connection URL (with its TLS parameters).
        url: String,
        /// Which setting to look at: the CA file, the host name, the
        /// client certificate.
        problem: String,
        /// The TLS library's error (not wrapped in sqlx's `Io`, which
        /// would read as connection trouble worth a retry).
        #[source]
        source: TlsCause,
    },

    #[error("connecting to {url}: {param} {path} cannot be read")]
    TlsFile {
        url: String,
        /// `sslrootcert`, `sslcert` or `sslkey`.
        param: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{param} is set both in the connection URL ({param}={in_url}) and as the job's field {param} = {in_field:?}; set it in one place ({url})")]
    TlsConflict {
        url: String,
        param: &'static str,
        in_url: String,
        in_field: String,
    },

    #[error("invalid connection URL {url}: {reason}")]
    InvalidUrl { url: String, reason: String },

    #[error("reading password file {path}")]
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

    #[error("running {tool} ({path})")]
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
        /// The tool lost its server (restarted, shut down, the connection
        /// dropped) or could not reach it: worth retrying once it is back.
        connection_lost: bool,
    },

    #[error(transparent)]
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
            Error::ToolFailed {
                lock_timeout,
                connection_lost,
                ..
            } => *lock_timeout || *connection_lost,
            Error::Connect { source, .. } => is_connection_trouble(source),
            Error::Query { source, .. } => is_lock_timeout(source) || is_connection_trouble(source),
            _ => false,
        }
    }
}

/// The connection could not be made or was lost, or the server turned it
/// away for now: 57P01 admin_shutdown (a fast shutdown or restart), 57P02
/// crash_shutdown, 57P03 cannot_connect_now (starting up, shutting down),
/// 53300 too_many_connections.
pub fn is_connection_trouble(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(d) => {
            matches!(
                d.code().as_deref(),
                Some("57P01" | "57P02" | "57P03" | "53300")
            )
        }
        _ => false,
    }
}

/// SQLSTATE 55P03 (lock_not_available), raised by `lock_timeout`.
pub fn is_lock_timeout(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "55P03")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    fn refused() -> std::io::Error {
        std::io::Error::from(std::io::ErrorKind::ConnectionRefused)
    }

    /// Each cause is printed once by a chain formatter (anyhow's `{:#}`):
    /// an error names its source in `source()`, never also in its text.
    #[test]
    fn messages_do_not_repeat_their_source() {
        let errors = [
            Error::Connect {
                url: "postgres://u@h/db".into(),
                source: sqlx::Error::Io(refused()),
            },
            Error::Query {
                url: "postgres://u@h/db".into(),
                what: "reading server version".into(),
                source: sqlx::Error::Io(refused()),
            },
            Error::PasswordFile {
                path: "/run/pw".into(),
                source: refused(),
            },
            Error::Spawn {
                tool: "pg_dump",
                path: "/usr/bin/pg_dump".into(),
                source: refused(),
            },
            Error::Io(refused()),
        ];
        for e in errors {
            let text = e.to_string();
            if let Some(source) = e.source() {
                assert!(
                    !text.contains(&source.to_string()),
                    "{text:?} repeats its source {source}"
                );
            }
            let chained = format!("{:#}", anyhow::Error::from(e));
            assert!(chained.contains("refused"), "{chained}");
        }
    }
}
