//! Errors of the operations: one enum with structured fields, and
//! [`Error::is_temporary`] for the retry layer in the binary.

use std::io;

/// Result of an operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why an operation failed. A backup that fails commits nothing; a restore
/// changed nothing on the target unless said.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] refugio_store::Error),

    #[error(transparent)]
    Pg(#[from] refugio_dump::Error),

    #[error("job {job}: the source URL names no database and `database` is not set")]
    NoDatabase { job: String },

    #[error("job {job}: no database on {server} matches databases = {include:?} (exclude_databases = {exclude:?}; templates are never dumped)")]
    NoDatabases {
        job: String,
        server: String,
        include: Vec<String>,
        exclude: Vec<String>,
    },

    #[error("backup {backup} holds no database {database:?}; it holds {}", available.join(", "))]
    UnknownDatabase {
        backup: String,
        database: String,
        available: Vec<String>,
    },

    /// Target databases that hold user tables, and no `--clean`.
    #[error("{}", not_empty(target, occupied))]
    TargetNotEmpty {
        target: String,
        /// At least one.
        occupied: Vec<Occupied>,
    },

    /// Target databases that do not exist, and no `--create`.
    #[error("{}", match databases.as_slice() {
        [one] => format!("target database {one} does not exist on {target}; pass --create to create it"),
        _ => format!("databases {} do not exist on {target}; pass --create to create them; nothing was changed", databases.join(", ")),
    })]
    TargetMissing {
        target: String,
        /// At least one.
        databases: Vec<String>,
    },

    #[error("job {job}: choosing {tool} for the server at {server}")]
    Tool {
        job: String,
        tool: &'static str,
        server: String,
        #[source]
        source: Box<refugio_dump::Error>,
    },

    #[error("job {job}: taking the snapshot")]
    Snapshot {
        job: String,
        #[source]
        source: Box<refugio_dump::Error>,
    },

    #[error("job {job}: {what}")]
    Dump {
        job: String,
        /// `dumping database app`, `dumping globals (roles) with pg_dumpall`.
        what: String,
        #[source]
        source: Box<refugio_store::Error>,
    },

    #[error("job {job}: repository.object_lock is configured, but the retention could not be set on {key}; run `refugio config check` (the bucket must be created with object lock enabled)")]
    ObjectLock {
        job: String,
        key: String,
        #[source]
        source: Box<refugio_store::Error>,
    },

    #[error("job {job}: the standby {server} lags {lag_seconds}s behind its primary (its data is from {data_at}), more than max_replica_lag ({max_seconds}s); no backup taken. Fix replication, raise max_replica_lag, or set on_replica_lag = \"flag\"")]
    ReplicaLag {
        job: String,
        server: String,
        lag_seconds: u64,
        max_seconds: u64,
        data_at: chrono::DateTime<chrono::Utc>,
    },

    #[error("job {job}: writing the manifest")]
    Commit {
        job: String,
        #[source]
        source: Box<refugio_store::Error>,
    },

    /// The commit's check found an artifact the manifest names missing or
    /// of another size: nothing was committed.
    #[error("job {job}: backup {backup}: artifact {key} is {}, the manifest says {expected} bytes; nothing was committed", match actual { Some(n) => format!("stored with {n} bytes"), None => "not stored".to_string() })]
    NotStored {
        job: String,
        backup: String,
        key: String,
        expected: u64,
        actual: Option<u64>,
    },

    /// `gc_grace` below [`crate::prune::GC_GRACE_FLOOR`].
    #[error("job {job}: gc_grace = {} is below its floor of {}: garbage collection must never race an upload that is merely slow", humantime::format_duration(*grace), humantime::format_duration(*floor))]
    GraceBelowFloor {
        job: String,
        grace: std::time::Duration,
        floor: std::time::Duration,
    },

    #[error("{what} cancelled{}", if detail.is_empty() { String::new() } else { format!("; {detail}") })]
    Cancelled {
        /// `backup of job app`, `drill`, `prune of job app`.
        what: String,
        /// What was cleaned up, or left for garbage collection.
        detail: String,
    },

    #[error("job {job}: no backup to drill in {store}")]
    NothingToDrill { job: String, store: String },

    #[error("job {job}: every backup is verified")]
    AllVerified { job: String },

    /// The target's server is the backup's (or the job's) source cluster,
    /// by its system identifier, whatever its URL says.
    #[error("target {target} is {source_name}: both are the cluster with system identifier {system_identifier} (the same server, or a replica of it, whatever the URLs say); a restore there would overwrite the data it backs up{hint}; nothing was changed")]
    TargetIsSource {
        target: String,
        source_name: String,
        system_identifier: String,
        hint: String,
    },

    /// The target was reached but would not say which cluster it is.
    #[error("target {target}: could not read its system identifier ({reason}), so it cannot be told apart from {sources}{hint}; nothing was changed")]
    TargetUnidentified {
        target: String,
        reason: String,
        sources: String,
        hint: String,
    },

    #[error("backup {backup} has no {kind} artifact")]
    NoArtifact { backup: String, kind: String },

    #[error("artifact {key}: {detail}")]
    Artifact { key: String, detail: String },

    /// Evidence that the stored backup itself is bad: its bytes do not
    /// match the manifest (checked against the store, not just the
    /// download), or they match and still do not decompress.
    #[error("artifact {key}: {detail}")]
    Damaged { key: String, detail: String },

    /// Content that refugio refuses to use as it is: not what pg_dump or
    /// pg_dumpall write (a psql meta-command), a link in a base backup's
    /// tar, an artifact stored unencrypted where encryption is configured.
    /// Nothing of it was executed. Not evidence against the backup: the
    /// drill is inconclusive and names the object, so forged content can
    /// neither run nor get a backup condemned.
    #[error("artifact {key}: {detail}; refused as foreign content, nothing of it was run")]
    Foreign { key: String, detail: String },

    /// Content refugio never writes, refused before it was used: a base
    /// tar entry that is a link, a device or a path outside the target.
    /// Its bytes match the manifest, so someone else wrote it: neither
    /// restored nor evidence that the backup is bad (inconclusive).
    #[error("artifact {key}: tar entry {entry:?} {reason}; a base backup refugio wrote holds only regular files and directories, so this content is refused as not refugio's (nothing was written through it or outside the target directory)")]
    UnsafeEntry {
        key: String,
        entry: String,
        reason: String,
    },

    /// The backup's content was refused: the server rejected a statement
    /// with a content SQLSTATE (data, integrity, syntax), or pg_restore
    /// found the archive malformed. `why` says which.
    #[error("{why}: {tool_error}")]
    Rejected {
        why: String,
        tool_error: Box<refugio_dump::Error>,
    },

    #[error("fetching {key} failed, nothing was restored from it")]
    Fetch {
        key: String,
        #[source]
        source: io::Error,
    },

    /// psql reported errors applying the globals script (other than
    /// "already exists"), one line each.
    #[error("applying globals (roles) failed: {}", errors.join("\n"))]
    Globals { errors: Vec<String> },

    /// A restore tool could not be fed: `what` it was doing, the operating
    /// system's or the pipe's `reason`.
    #[error("applying globals (roles) failed: {what}: {reason}")]
    GlobalsFeed { what: &'static str, reason: String },

    /// A file or process of an ephemeral cluster: `action` (`reading`,
    /// `chown`, `starting`…) on `target` (a path or a command).
    #[error("ephemeral drill cluster: {action} {target}: {reason}")]
    EphemeralIo {
        action: &'static str,
        target: String,
        reason: String,
    },

    #[error("ephemeral drill cluster: initdb failed ({status}): {stderr}")]
    EphemeralInitdb { status: String, stderr: String },

    #[error(
        "ephemeral drill cluster: the drill cluster did not start: {reason}; server log: {log}"
    )]
    EphemeralStart { reason: String, log: String },

    /// A physical drill needs binaries of the backup's own major version.
    #[error("ephemeral drill cluster: a drill of a PostgreSQL {server} base backup needs PostgreSQL {major} binaries; the closest found is {found} in {bindir} (set the job's pg_bindir)")]
    EphemeralVersion {
        server: String,
        major: u32,
        found: String,
        bindir: String,
    },

    #[error("ephemeral drill cluster: {command} did not finish within {seconds}s")]
    EphemeralTimeout { command: String, seconds: u64 },

    #[error("a parallel restore (--jobs > 1) keeps the whole archive in {dir} first: it needs {needed} bytes and {free} are free; free space, choose another --temp-dir, or restore with --jobs 1 (streamed, no temporary file)")]
    NoSpace { dir: String, needed: u64, free: u64 },

    /// Encryption settings or key files that cannot be used: each names
    /// the setting or file (`origin`) and the entry or line, never key
    /// material.
    #[error("encryption: {origin}: entry {entry} ({key:?}) is not an age X25519 recipient (age1…): {reason}")]
    NotRecipient {
        origin: String,
        entry: usize,
        /// A public key, not a secret.
        key: String,
        reason: String,
    },

    #[error("encryption: {origin}: no recipient")]
    NoRecipients { origin: String },

    #[error("encryption: {origin}: line {line} is not an age X25519 identity (AGE-SECRET-KEY-1…)")]
    NotIdentity { origin: String, line: usize },

    #[error("encryption: {origin}: no identity in it")]
    NoIdentities { origin: String },

    /// A key file that cannot be read.
    #[error("encryption: {origin}: {reason}")]
    KeyFile { origin: String, reason: String },

    /// age itself failed at `step` (`setting up encryption`, `writing the
    /// age header`, `encrypting the probe`…).
    #[error("encryption: {step}: {reason}")]
    Age { step: &'static str, reason: String },

    /// An encrypted backup and no identity to decrypt it: nothing was
    /// touched. Not evidence against the backup.
    #[error("artifact {key} is encrypted with age to {recipients}; no age identity is configured (set [repository.encryption] identity_file, REFUGIO_AGE_IDENTITY_FILE, or the systemd credential age-identity); nothing was restored")]
    NoIdentity { key: String, recipients: String },

    /// The configured identities do not open the backup: nothing was
    /// touched. Not evidence against the backup.
    #[error("artifact {key} is encrypted with age to {recipients}; identity {identities} (from {origin}) does not match; add the identity of one of those recipients (after a key rotation, keep the old identity beside the new one); nothing was restored")]
    WrongIdentity {
        key: String,
        recipients: String,
        identities: String,
        origin: String,
    },

    #[error("WAL archive: {given:?} is not a WAL file name (a segment like 000000010000000000000003, a TTTTTTTT.history, a ….backup or a ….partial file)")]
    NotWalName { given: String },

    /// A local WAL file that cannot be read or written.
    #[error("WAL archive: {action} {path}: {reason}")]
    WalFile {
        action: String,
        path: String,
        reason: String,
    },

    #[error("WAL archive: {path} changed while it was archived (SHA-256 {before} then {after}); nothing was kept")]
    WalChanged {
        path: String,
        before: String,
        after: String,
    },

    #[error("WAL archive: {name} is archived twice with different content ({}): two servers archived into job {job}; choose by deleting the wrong one", keys.join(", "))]
    WalTwice {
        name: String,
        keys: Vec<String>,
        job: String,
    },

    #[error("WAL archive: refusing to overwrite {key} (SHA-256 {existing}) with different content from {path} (SHA-256 {new}); another server may be archiving into this job (give each cluster its own job), or the archive holds WAL of an older cluster; nothing was written")]
    WalOverwrite {
        name: String,
        key: String,
        existing: String,
        new: String,
        path: String,
    },

    /// A physical backup's drill run without the config file.
    #[error("backup {backup} of job {job} is a physical base backup: its drill needs the config file (the restored cluster fetches WAL through `refugio --config FILE wal-fetch`)")]
    DrillNeedsConfig { backup: String, job: String },

    #[error("querying the restored cluster: {reason}")]
    RestoredCluster { reason: String },

    /// A tool (`pg_controldata`, `pg_verifybackup`…) that could not be run.
    #[error("running {tool}: {reason}")]
    ToolRun { tool: String, reason: String },

    /// A logical restore asked of a physical backup.
    #[error("backup {backup} of job {job} is a physical base backup: restore it into a data directory with --physical --target-dir DIR [--to TIME|LSN|latest|immediate]")]
    PhysicalBackup { backup: String, job: String },

    /// A physical restore asked of a logical backup.
    #[error("backup {backup} is a logical (pg_dump) backup; restore it without --physical")]
    LogicalBackup { backup: String },

    /// The target directory of a physical restore: `action` on `path`.
    #[error("{action} {path}: {reason}")]
    TargetDir {
        action: String,
        path: String,
        reason: String,
    },

    #[error("--target-dir {dir} is not empty (it holds {entry:?}, …); a physical restore writes a whole data directory and needs an empty one; nothing was changed")]
    TargetDirNotEmpty { dir: String, entry: String },

    #[error("unpacking {key}: {reason}")]
    Unpack { key: String, reason: String },

    #[error("job {job}: reading the cluster's settings on {server}: {reason}")]
    ClusterSettings {
        job: String,
        server: String,
        reason: String,
    },

    #[error("job {job}: the cluster at {server} has tablespaces outside its data directory ({tablespaces}); refugio's physical backups cover the data directory only and refuse such a cluster; nothing was written (back it up with a logical job, or move the tablespaces' contents into pg_default)")]
    Tablespaces {
        job: String,
        server: String,
        tablespaces: String,
    },

    #[error("job {job}: archive_mode is off on {server}: a physical job's base backups need the WAL archive; set archive_mode = on and archive_command = 'refugio wal-push --job {job} %p' (then restart the server); nothing was written")]
    ArchiveModeOff { job: String, server: String },

    /// What pg_basebackup produced is not a base backup refugio can keep.
    #[error("job {job}: base backup {backup}: {why}; nothing was committed")]
    BaseBackup {
        job: String,
        backup: String,
        why: String,
    },

    #[error("temporary file for a parallel restore in {dir}")]
    TempFile {
        dir: String,
        #[source]
        source: io::Error,
    },
}

/// A target database that already holds user tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occupied {
    pub database: String,
    pub tables: i64,
    /// One of its tables, `schema.table`.
    pub example: String,
}

fn not_empty(target: &str, occupied: &[Occupied]) -> String {
    match occupied {
        [one] => format!(
            "target database {} on {target} already has {} user table(s) (e.g. {}); refusing to restore over it without --clean; nothing was changed",
            one.database, one.tables, one.example
        ),
        many => format!(
            "on {target}, {} already hold user tables ({}); refusing to restore over them without --clean; nothing was changed",
            many.len(),
            many.iter()
                .map(|o| format!("{} ({} tables, e.g. {})", o.database, o.tables, o.example))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
}

impl Error {
    /// Whether the same operation may succeed if run again soon: the store
    /// or the server unreachable, throttling, a lock timeout. Everything
    /// else (authentication, a missing binary, bad content, cancellation)
    /// is permanent.
    pub fn is_temporary(&self) -> bool {
        match self {
            Error::Store(e) => store_temporary(e),
            Error::Commit { source, .. } | Error::Dump { source, .. } => store_temporary(source),
            Error::Pg(e) => e.is_temporary(),
            Error::Snapshot { source, .. } => source.is_temporary(),
            Error::Fetch { source, .. } => io_temporary(source),
            // A standby catches up; the retry layer tries again later.
            Error::ReplicaLag { .. } => true,
            _ => false,
        }
    }
}

impl Error {
    /// Whether this error is evidence that the backup is bad, as opposed
    /// to "it could not be checked" (store or scratch server unreachable,
    /// no space, cancelled, a missing tool). Only such an error may mark a
    /// backup failed; everything else leaves it unverified.
    pub fn condemns(&self) -> bool {
        matches!(
            self,
            Error::Damaged { .. }
                | Error::Rejected { .. }
                | Error::NoArtifact { .. }
                | Error::Store(refugio_store::Error::NotFound { .. })
        )
    }
}

/// Whether one cause of an error chain says "worth a retry": the one
/// classifier, for refugio's own errors (core, store, dump) and the bare
/// causes they carry (I/O, the PostgreSQL driver). A caller with an error
/// chain (the agent's retry) asks it of every cause; any that says
/// temporary decides.
pub fn temporary_cause(cause: &(dyn std::error::Error + 'static)) -> bool {
    if let Some(e) = cause.downcast_ref::<Error>() {
        e.is_temporary()
    } else if let Some(e) = cause.downcast_ref::<refugio_store::Error>() {
        store_temporary(e)
    } else if let Some(e) = cause.downcast_ref::<refugio_dump::Error>() {
        e.is_temporary()
    } else if let Some(e) = cause.downcast_ref::<io::Error>() {
        io_temporary(e)
    } else if let Some(e) = cause.downcast_ref::<sqlx::Error>() {
        refugio_dump::error::is_connection_trouble(e) || refugio_dump::error::is_lock_timeout(e)
    } else {
        false
    }
}

/// A store error worth a retry, including a producer (pg_dump) that gave
/// up on a lock.
fn store_temporary(e: &refugio_store::Error) -> bool {
    match e {
        refugio_store::Error::Source { source, .. } => {
            refugio_dump::process::tool_error(source).is_some_and(|t| t.is_temporary())
                || io_temporary(source)
        }
        e => e.is_temporary(),
    }
}

/// Connection trouble, as the operating system reports it.
pub fn io_temporary(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::TimedOut
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_and_permanent() {
        let slow = refugio_store::Error::S3 {
            op: "PutObject",
            store: "s3://b".into(),
            key: "k".into(),
            message: "SlowDown".into(),
            temporary: true,
        };
        assert!(Error::Commit {
            job: "a".into(),
            source: Box::new(slow)
        }
        .is_temporary());
        assert!(Error::Fetch {
            key: "k".into(),
            source: io::Error::from(io::ErrorKind::ConnectionReset)
        }
        .is_temporary());
        assert!(!Error::NoDatabase { job: "a".into() }.is_temporary());
        // Could not check: never condemns.
        assert!(!Error::Fetch {
            key: "k".into(),
            source: io::Error::from(io::ErrorKind::ConnectionReset)
        }
        .condemns());
        assert!(Error::Damaged {
            key: "k".into(),
            detail: "SHA-256 differs".into()
        }
        .condemns());
        // Forged content is not evidence against the backup.
        assert!(!Error::UnsafeEntry {
            key: "k".into(),
            entry: "recovery.signal".into(),
            reason: "is a symbolic link".into()
        }
        .condemns());
        assert!(!Error::Cancelled {
            what: "backup".into(),
            detail: String::new()
        }
        .is_temporary());
    }

    fn unreachable_server() -> refugio_dump::Error {
        refugio_dump::Error::Connect {
            url: "postgresql://db/app".into(),
            source: sqlx::Error::Io(io::Error::from(io::ErrorKind::ConnectionRefused)),
        }
    }

    fn bad_url() -> refugio_dump::Error {
        refugio_dump::Error::InvalidUrl {
            url: "x".into(),
            reason: "no scheme".into(),
        }
    }

    #[test]
    fn each_wrapper_asks_what_it_wraps() {
        let throttled = || refugio_store::Error::S3 {
            op: "PutObject",
            store: "s3://b".into(),
            key: "k".into(),
            message: "SlowDown".into(),
            temporary: true,
        };
        let missing = || refugio_store::Error::NotFound {
            store: "s3://b".into(),
            key: "k".into(),
        };
        assert!(Error::Store(throttled()).is_temporary());
        assert!(!Error::Store(missing()).is_temporary());
        assert!(Error::Dump {
            job: "a".into(),
            what: "dumping database app".into(),
            source: Box::new(throttled()),
        }
        .is_temporary());
        assert!(!Error::Commit {
            job: "a".into(),
            source: Box::new(missing()),
        }
        .is_temporary());
        assert!(Error::Pg(unreachable_server()).is_temporary());
        assert!(!Error::Pg(bad_url()).is_temporary());
        assert!(Error::Snapshot {
            job: "a".into(),
            source: Box::new(unreachable_server()),
        }
        .is_temporary());
        assert!(!Error::Snapshot {
            job: "a".into(),
            source: Box::new(bad_url()),
        }
        .is_temporary());
        assert!(!Error::Fetch {
            key: "k".into(),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        }
        .is_temporary());
        assert!(Error::ReplicaLag {
            job: "a".into(),
            server: "standby".into(),
            lag_seconds: 600,
            max_seconds: 300,
            data_at: chrono::Utc::now(),
        }
        .is_temporary());
    }

    #[test]
    fn a_producer_that_lost_its_connection_is_worth_a_retry() {
        let source = |kind: io::ErrorKind| refugio_store::Error::Source {
            key: "app/x/database.dump.zst".into(),
            source: io::Error::from(kind),
        };
        assert!(store_temporary(&source(io::ErrorKind::ConnectionReset)));
        assert!(!store_temporary(&source(io::ErrorKind::InvalidData)));
        for kind in [
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::ConnectionAborted,
            io::ErrorKind::TimedOut,
        ] {
            assert!(io_temporary(&io::Error::from(kind)), "{kind:?}");
        }
        assert!(!io_temporary(&io::Error::from(io::ErrorKind::NotFound)));
    }

    #[test]
    fn one_classifier_for_every_cause() {
        use crate::fixtures::sqlstate;
        // The driver's own errors: a server restarting or full of
        // connections, a lock timeout; not a missing table.
        for (code, temporary) in [
            ("57P01", true),
            ("57P02", true),
            ("57P03", true),
            ("53300", true),
            ("55P03", true),
            ("42P01", false),
            ("28P01", false),
        ] {
            assert_eq!(temporary_cause(&sqlstate(code)), temporary, "{code}");
        }
        assert!(temporary_cause(&sqlx::Error::PoolTimedOut));
        assert!(temporary_cause(&io::Error::from(io::ErrorKind::TimedOut)));
        assert!(!temporary_cause(&io::Error::from(io::ErrorKind::NotFound)));
        assert!(temporary_cause(&Error::Pg(unreachable_server())));
        assert!(!temporary_cause(&Error::Pg(bad_url())));
        assert!(temporary_cause(&unreachable_server()));
        assert!(temporary_cause(&refugio_store::Error::Source {
            key: "k".into(),
            source: io::Error::from(io::ErrorKind::ConnectionReset),
        }));
        assert!(!temporary_cause(&std::fmt::Error));
    }

    #[test]
    fn only_evidence_against_the_data_condemns() {
        assert!(Error::Store(refugio_store::Error::NotFound {
            store: "s3://b".into(),
            key: "app/x/database.dump.zst".into(),
        })
        .condemns());
        assert!(Error::NoArtifact {
            backup: "x".into(),
            kind: "database".into(),
        }
        .condemns());
        assert!(Error::Rejected {
            why: "pg_restore: invalid archive".into(),
            tool_error: Box::new(bad_url()),
        }
        .condemns());
        assert!(!Error::Pg(unreachable_server()).condemns());
        assert!(!Error::Store(refugio_store::Error::S3 {
            op: "GetObject",
            store: "s3://b".into(),
            key: "k".into(),
            message: "SlowDown".into(),
            temporary: true,
        })
        .condemns());
    }
}
