//! Errors of the restore path.

/// Result of the restore path.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a restore failed. Nothing was committed to the target unless said.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] refugio_store::Error),

    #[error(transparent)]
    Pg(#[from] refugio_dump::Error),

    #[error("target database {database} on {target} already has {tables} user table(s) (e.g. {example}); refusing to restore over it without --clean")]
    TargetNotEmpty {
        target: String,
        database: String,
        tables: i64,
        example: String,
    },

    #[error("target database {database} does not exist on {target}; pass --create to create it")]
    TargetMissing { target: String, database: String },

    #[error("backup {backup} has no {kind} artifact")]
    NoArtifact { backup: String, kind: String },

    #[error("artifact {key}: {detail}")]
    Artifact { key: String, detail: String },

    #[error("fetching {key} failed, nothing was restored from it: {source}")]
    Fetch {
        key: String,
        #[source]
        source: std::io::Error,
    },

    #[error("applying globals (roles) failed: {0}")]
    Globals(String),

    #[error("ephemeral drill cluster: {0}")]
    Ephemeral(String),

    #[error("temporary file for a parallel restore in {dir}: {source}")]
    TempFile {
        dir: String,
        #[source]
        source: std::io::Error,
    },
}
