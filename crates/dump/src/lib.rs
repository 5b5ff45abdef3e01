//! The PostgreSQL side of refugio: finding `pg_dump`/`pg_restore`/`psql`
//! binaries whose major version fits the server, taking a consistent
//! snapshot with exact row counts and server facts, running `pg_dump
//! --snapshot` as a child process whose stdout is an `AsyncRead` that only
//! ends successfully when the child exited 0, compressing that stream, and
//! spawning the restore tools. It knows nothing of where the bytes go.

pub mod basebackup;
pub mod compress;
pub mod conn;
mod env_password;
pub mod error;
pub mod fingerprint;
pub mod frames;
pub mod pattern;
pub mod pipe;
pub mod process;
pub mod script;
pub mod snapshot;
pub mod spawn;
pub mod sqlstate;
pub mod tools;
pub mod wal;

pub use compress::{Compression, CountingReader};
pub use conn::{OwnServer, SourceSpec, OWN_SERVER_LOG_PREFIX};
pub use conn::{SslMode, TlsCause, TlsSettings};
pub use env_password::adopt_env_password;
pub use error::{Error, Result};
pub use process::{ChildOutput, StderrTail};
pub use snapshot::{ServerFacts, Snapshot, TableCount};
pub use tools::{PgVersion, Tool, ToolKind};

/// Output format of `pg_dump`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DumpFormat {
    /// `pg_dump -Fc`: restored with `pg_restore`, selective and parallel restore.
    Custom,
    /// Plain SQL: restored with `psql`, the runbook's `gunzip | psql`.
    Plain,
}

impl DumpFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DumpFormat::Custom => "custom",
            DumpFormat::Plain => "plain",
        }
    }
}
