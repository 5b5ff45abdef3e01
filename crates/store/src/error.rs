//! Errors of the storage layer.

use std::io;

/// Result of the storage layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in the repository; fields name the object involved. A
/// message never repeats its `#[source]`: print an error with [`refugio_print::chain`]
/// (or anyhow's `{:#}`), and each cause appears once.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("object {key} not found in {store}")]
    NotFound { store: String, key: String },

    #[error("{op} {key} in {store}")]
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

    #[error("reading the data to upload as {key} failed")]
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

    /// A read found no repository where one was named: a directory that
    /// does not exist (a typo must not look like an empty repository).
    #[error("repository {store} does not exist: {reason}")]
    NoRepository { store: String, reason: String },

    /// The bucket does not exist on the endpoint.
    #[error("bucket {bucket} does not exist at {endpoint} (repository {store}); check the bucket name, the endpoint and the region")]
    NoSuchBucket {
        store: String,
        bucket: String,
        endpoint: String,
    },

    /// The object is in an archive storage class (S3 answered
    /// `InvalidObjectState`): it exists and is whole, but cannot be read
    /// until it is restored (thawed). Says nothing against the backup.
    #[error("object {key} in {store} is in storage class {storage_class}, which S3 serves only after the object is restored (thawed); restore it first (`{restore_command}`, then wait for the restore to finish) and try again; refugio does not thaw objects itself")]
    Archived {
        store: String,
        key: String,
        storage_class: String,
        /// The AWS CLI command that starts the restore.
        restore_command: String,
    },

    /// Content the repository's authentication refuses: its signature is
    /// missing, made by a key not trusted for its kind of object, or does
    /// not match. Someone other than a trusted writer put it there (or it
    /// predates `[repository.authentication]`): never used, never evidence
    /// against a backup, never deleted by retention.
    #[error("object {key}: {reason}; refused as not written by a trusted key (repository.authentication), nothing of it was used")]
    Unauthenticated { key: String, reason: String },

    /// A key of `[repository.authentication]` that cannot be used.
    #[error("repository.authentication: key file {path}: {reason}")]
    Key { path: String, reason: String },

    /// A write to an authenticated repository by a host without a signing
    /// key: readers would refuse what it wrote.
    #[error("cannot write {key}: repository.authentication is configured but this host has no signing_key, and readers refuse unsigned objects")]
    NoSigningKey { key: String },

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

#[cfg(test)]
mod tests {
    use super::*;
    use refugio_print::chain;
    use std::error::Error as _;

    /// Each cause is printed once by a chain formatter (anyhow's `{:#}`):
    /// an error names its source in `source()`, never also in its text.
    #[test]
    fn messages_do_not_repeat_their_source() {
        let refused = || io::Error::from(io::ErrorKind::ConnectionRefused);
        let errors = [
            Error::Io {
                op: "reading",
                store: "/srv/backups".into(),
                key: "app/x/manifest.json".into(),
                source: refused(),
            },
            Error::Source {
                key: "app/x/db.dump.zst".into(),
                source: refused(),
            },
        ];
        for e in errors {
            let text = e.to_string();
            let source = e.source().map(|s| s.to_string()).unwrap_or_default();
            assert!(
                !text.contains(&source),
                "{text:?} repeats its source {source}"
            );
            let chained = format!("{:#}", anyhow::Error::from(e));
            assert_eq!(chained.matches("refused").count(), 1, "{chained}");
        }
    }

    #[test]
    fn chain_prints_each_cause_once() {
        // sqlx's Io embeds its source and returns it: printed once.
        let e = Error::Source {
            key: "k".into(),
            source: io::Error::other(RepeatsItsSource(io::Error::from(
                io::ErrorKind::ConnectionRefused,
            ))),
        };
        assert_eq!(
            chain(&e),
            "reading the data to upload as k failed: communicating: connection refused"
        );
        let e = anyhow::Error::from(e).context("job app: dumping database app");
        assert_eq!(chain(e.as_ref()).matches("connection refused").count(), 1);
        assert!(chain(e.as_ref()).starts_with("job app: dumping database app: reading"));
    }

    #[derive(Debug)]
    struct RepeatsItsSource(io::Error);

    impl std::fmt::Display for RepeatsItsSource {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "communicating: {}", self.0)
        }
    }

    impl std::error::Error for RepeatsItsSource {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
}
