//! Options and a repository, written out in full as a library user would.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use chrono::{DateTime, Utc};
use refugio_core::{
    BackupOptions, DrillOptions, JobKind, LogicalOptions, PruneOptions, RestoreOptions, Scratch,
};
use refugio_dump::snapshot::RowCountMode;
use refugio_dump::{Compression, DumpFormat, SourceSpec};
use refugio_store::repo::Repository;
use refugio_testkit::Cluster;

/// The time now, to the whole second: tests fix their clocks at hours
/// from it (the data's own time, which the server stamps, is real).
pub fn now() -> DateTime<Utc> {
    let t = Utc::now();
    DateTime::from_timestamp(t.timestamp(), 0).expect("a time")
}

/// `hours` after `t0`.
pub fn hours(t0: DateTime<Utc>, hours: i64) -> DateTime<Utc> {
    t0 + chrono::Duration::hours(hours)
}

/// A repository in directory `dir` (created).
pub fn repository(dir: &Path) -> Result<Repository> {
    let store = refugio_store::fs::FsStore::new(dir)?;
    Ok(Repository::new(Arc::new(store)))
}

/// A one-database pg_dump backup of `cluster`'s `db` into job `job`.
pub fn backup_options(job: &str, cluster: &Cluster, db: &str) -> Result<BackupOptions> {
    Ok(BackupOptions {
        job: job.to_string(),
        kind: JobKind::Logical,
        source: SourceSpec::source(&cluster.url(db), None, None)?,
        compression: Compression::Zstd,
        compression_level: None,
        pg_bindir: Some(cluster.bindir().to_path_buf()),
        part_size: 8 << 20,
        upload_concurrency: 2,
        object_lock: None,
        attempt: 1,
        encryption: None,
        progress: None,
        logical: LogicalOptions {
            format: DumpFormat::Custom,
            archive_compression: false,
            globals: false,
            exclude_tables: Vec::new(),
            include_tables: Vec::new(),
            exclude_table_data: Vec::new(),
            databases: None,
            extra_args: Vec::new(),
            lock_wait_timeout: Duration::from_secs(30),
            row_counts: RowCountMode::Exact,
            max_replica_lag: None,
            on_replica_lag: refugio_core::ReplicaLag::Refuse,
        },
    })
}

/// A restore into `cluster`'s database `db`, created when missing, owned
/// by whoever restores it (the source's roles are not on `cluster`).
pub fn restore_options(cluster: &Cluster, db: &str) -> Result<RestoreOptions> {
    Ok(RestoreOptions {
        target: SourceSpec::new(&cluster.url(db), None, None)?,
        clean: false,
        create: true,
        globals: false,
        jobs: 1,
        no_owner: true,
        bindir: Some(cluster.bindir().to_path_buf()),
        temp_dir: None,
        identities: None,
        require_encrypted: false,
        database: None,
        progress: None,
        guard: None,
    })
}

/// A drill into scratch databases on `cluster`, with an RPO target.
pub fn drill_options(cluster: &Cluster, rpo: Duration) -> Result<DrillOptions> {
    Ok(DrillOptions {
        scratch: Scratch::Server(SourceSpec::new(&cluster.url("postgres"), None, None)?),
        checks: Vec::new(),
        rpo_target: Some(rpo),
        rto_target: None,
        jobs: 1,
        bindir: Some(cluster.bindir().to_path_buf()),
        identities: None,
        require_encrypted: false,
        progress: None,
        physical: None,
    })
}

/// A prune of `job` keeping the newest `keep_last` verified backups.
pub fn prune_options(job: &str, keep_last: u32, dry_run: bool) -> PruneOptions {
    PruneOptions {
        job: job.to_string(),
        policy: refugio_store::retention::Policy {
            keep_last,
            min_verified: 1,
            ..Default::default()
        },
        grace: refugio_core::prune::GC_GRACE_FLOOR,
        object_lock: false,
        dry_run,
        batch: refugio_core::prune::DELETE_BATCH,
        physical: false,
    }
}
