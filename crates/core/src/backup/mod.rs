//! One backup of one job: snapshot, pg_dump → compression → repository,
//! globals, then the manifest (the commit). Any failure or cancellation
//! aborts the uploads, removes what was already stored for this backup id,
//! and commits nothing.
//!
//! One call is one attempt; a lock timeout or an unreachable store comes
//! back as an error whose [`Error::is_temporary`] says so, and the caller's
//! retry layer decides whether to run it again (passing the attempt number,
//! which the manifest records).

mod database;
mod physical;
mod stream;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use refugio_dump::pattern::DatabaseScope;
use refugio_dump::snapshot::{self, RowCountMode};
use refugio_dump::spawn;
use refugio_dump::tools::{self, ToolKind};
use refugio_dump::{Compression, DumpFormat, SourceSpec};
use refugio_store::manifest::{Durations, Encryption, Manifest, FORMAT};
use refugio_store::repo::Repository;
use refugio_store::upload::UploadOptions;
use refugio_store::{LockMode, Retention};
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::encryption::{self, Recipients};
use crate::error::{Error, Result};
use database::{server_artifact_name, DumpTo, Dumped};
use stream::{artifact, store_stream, Packing, Stored};

/// What a job backs up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// pg_dump of one database or of several (the default).
    #[default]
    Logical,
    /// The whole cluster: `pg_basebackup` base backups plus the WAL
    /// archive (`refugio wal-push`), restored to a point in time.
    Physical,
}

/// What to back up and how.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// The job: the repository folder.
    pub job: String,
    /// Logical (pg_dump) or physical (pg_basebackup).
    pub kind: JobKind,
    /// The database to dump (its URL names it), or the cluster.
    pub source: SourceSpec,
    pub compression: Compression,
    /// None: the compression's default level.
    pub compression_level: Option<i32>,
    /// Directory of the PostgreSQL tools; None = search for a fitting one.
    pub pg_bindir: Option<PathBuf>,
    /// Upload part size, bytes.
    pub part_size: usize,
    /// Parts in flight at once.
    pub upload_concurrency: usize,
    /// S3 Object Lock on every artifact and the manifest.
    pub object_lock: Option<ObjectLock>,
    /// Which attempt this is, from 1 (recorded in the manifest).
    pub attempt: u32,
    /// Encrypt every artifact (the globals too: they hold role password
    /// hashes) with age to these recipients; None: stored as compressed.
    pub encryption: Option<Recipients>,
    /// Counters and phase for a progress display; None: not shown.
    pub progress: Option<std::sync::Arc<crate::Progress>>,
    /// What only a logical (pg_dump) backup reads; a physical backup takes
    /// the whole cluster and nothing of it.
    pub logical: LogicalOptions,
}

/// The options of a logical (pg_dump) backup.
#[derive(Debug, Clone)]
pub struct LogicalOptions {
    pub format: DumpFormat,
    /// With custom format and zstd, let pg_dump 16+ compress inside the
    /// archive (`--compress=zstd:N`) instead of compressing the stream.
    pub archive_compression: bool,
    /// Also store `pg_dumpall --globals-only` (roles, tablespaces).
    pub globals: bool,
    /// `--exclude-table` patterns, also left out of the row counts.
    pub exclude_tables: Vec<String>,
    /// When not empty, only the tables these patterns match are dumped
    /// (every other table is excluded; the rest of the schema is kept).
    pub include_tables: Vec<String>,
    /// Tables dumped without their rows (`--exclude-table-data`); the
    /// manifest marks them and drills do not count them.
    pub exclude_table_data: Vec<String>,
    /// A whole-server backup: every database in this scope, each in its
    /// own snapshot, one artifact each. None: the source URL's database.
    pub databases: Option<DatabaseScope>,
    /// Extra pg_dump arguments, passed as they are.
    pub extra_args: Vec<String>,
    /// How long pg_dump and the snapshot wait for a table lock.
    pub lock_wait_timeout: Duration,
    pub row_counts: RowCountMode,
    /// On a standby: the most the data may lag behind the primary.
    pub max_replica_lag: Option<Duration>,
    /// What a standby lagging more than that gets.
    pub on_replica_lag: ReplicaLag,
}

/// What to do with a backup from a standby whose data lags more than
/// `max_replica_lag`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaLag {
    /// No backup: an error (temporary: a standby catches up).
    #[default]
    Refuse,
    /// Back up anyway, with the data's time in the manifest (RPO counts
    /// from it) and a warning.
    Flag,
}

/// `{ mode, days }`: how long each object stays undeletable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectLock {
    pub mode: LockMode,
    pub days: u32,
}

impl ObjectLock {
    /// The retention for an object written at `now`.
    pub fn retention(&self, now: DateTime<Utc>) -> Retention {
        Retention {
            mode: self.mode,
            until: now + chrono::Duration::days(i64::from(self.days)),
        }
    }
}

/// Takes one backup as `opts` say into `repo`; returns the committed
/// manifest.
pub async fn backup(
    repo: &Repository,
    opts: &BackupOptions,
    clock: &dyn Clock,
    cancel: &CancellationToken,
) -> Result<Manifest> {
    repo.can_sign_as(
        refugio_store::auth::Role::Agent,
        &format!("a backup of job {}", opts.job),
    )?;
    if opts.kind == JobKind::Physical {
        return physical::base_backup(repo, opts, clock, cancel).await;
    }
    let t0 = Instant::now();
    let started_at = clock.now();
    let job = opts.job.as_str();
    let source = &opts.source;
    let (main, facts, databases) = survey(opts).await?;
    let version = facts.pg_version();
    let find = |kind: ToolKind, tool: &'static str| async move {
        tools::find(kind, version, opts.pg_bindir.as_deref())
            .await
            .map_err(|source_err| Error::Tool {
                job: job.to_string(),
                tool,
                server: source.redacted(),
                source: Box::new(source_err),
            })
    };
    let pg_dump = find(ToolKind::PgDump, "pg_dump").await?;
    let pg_dumpall = match opts.logical.globals {
        true => Some(find(ToolKind::PgDumpAll, "pg_dumpall").await?),
        false => None,
    };
    tracing::info!(job, server = %facts.version, pg_dump = %pg_dump.path.display(),
        pg_dump_version = %pg_dump.version, attempt = opts.attempt,
        databases = databases.len(), "backup-started");

    // The id, claimed against other processes backing up this job at the
    // same second (different hosts, different lock servers): see
    // `Repository::claim_backup_id`. The claim goes once the manifest
    // commits or the backup is given up.
    // Cancellable: a stalled store must not hold a shutdown (nothing is
    // stored yet but, at most, the claim, which GC collects).
    let claim = tokio::select! {
        () = cancel.cancelled() => {
            return Err(Error::Cancelled {
                what: format!("job {job}: backup"),
                detail: "stopped while claiming a backup id; nothing was committed".into(),
            });
        }
        claim = repo.claim_backup_id(job, started_at) => claim?,
    };
    let beat = repo.keep_claimed(&claim);
    let result = commit_backup(
        repo,
        opts,
        clock,
        cancel,
        Plan {
            id: &claim.id,
            main: &main,
            databases: &databases,
            facts: &facts,
            pg_dump: &pg_dump,
            pg_dumpall: pg_dumpall.as_ref(),
            started_at,
            t0,
        },
    )
    .await;
    beat.stop().await;
    repo.release_claim(&claim).await;
    result
}

/// The server a backup of `opts` connects to (a whole-server job: the
/// URL's database, or `postgres`), its facts, and the databases to dump.
async fn survey(opts: &BackupOptions) -> Result<(SourceSpec, snapshot::ServerFacts, Vec<String>)> {
    let job = opts.job.as_str();
    let source = &opts.source;
    // A whole-server job connects to the URL's database, or `postgres`.
    let url_database = source.database();
    let main = match (&opts.logical.databases, &url_database) {
        (None, None) => {
            return Err(Error::NoDatabase {
                job: job.to_string(),
            })
        }
        (None, Some(_)) => source.clone(),
        (Some(_), db) => source.with_database(db.as_deref().unwrap_or("postgres")),
    };

    // Server version first: the pg_dump must fit before anything starts.
    let mut conn = main.connect().await?;
    let facts = snapshot::server_facts(&mut conn, &main).await?;
    let databases = match &opts.logical.databases {
        Some(scope) => {
            let found = scope.resolve(&mut conn, &main).await?;
            if found.is_empty() {
                let _ = conn.close().await;
                return Err(Error::NoDatabases {
                    job: job.to_string(),
                    server: main.redacted(),
                    include: scope.include.clone(),
                    exclude: scope.exclude.clone(),
                });
            }
            found
        }
        None => vec![url_database.clone().unwrap_or_default()],
    };
    let _ = conn.close().await;
    Ok((main, facts, databases))
}

/// What [`backup`] settled before it stores anything.
struct Plan<'a> {
    id: &'a str,
    /// The connection of the main database (globals, one-database backups).
    main: &'a SourceSpec,
    databases: &'a [String],
    facts: &'a snapshot::ServerFacts,
    pg_dump: &'a refugio_dump::Tool,
    pg_dumpall: Option<&'a refugio_dump::Tool>,
    started_at: DateTime<Utc>,
    t0: Instant,
}

/// Dumps every database and the globals under the claimed id, then
/// commits the manifest; on any failure removes what it stored.
async fn commit_backup(
    repo: &Repository,
    opts: &BackupOptions,
    clock: &dyn Clock,
    cancel: &CancellationToken,
    plan: Plan<'_>,
) -> Result<Manifest> {
    let job = opts.job.as_str();
    let id = plan.id;
    let ext = match opts.logical.format {
        DumpFormat::Custom => "dump",
        DumpFormat::Plain => "sql",
    };
    // `.age` on encrypted artifacts: the stock-tool runbook pipes them
    // through `age -d`.
    let sealed = if opts.encryption.is_some() {
        encryption::SUFFIX
    } else {
        ""
    };
    let packing = Packing::for_dump(opts, plan.pg_dump).await;
    let suffix = format!("{ext}{}{sealed}", packing.stream.suffix());
    let upload = UploadOptions {
        part_size: opts.part_size,
        concurrency: opts.upload_concurrency,
        expected_size: u64::try_from(plan.facts.database_size).ok(),
    };
    let packed = Packed {
        packing: &packing,
        suffix: &suffix,
        sealed,
        upload: &upload,
    };
    let dumped = dump_databases(repo, opts, cancel, &plan, &packed).await?;
    let mut stored = Stored::new(repo, job, id);
    for (_, d) in &dumped {
        stored.push(d.artifact.clone());
    }
    let mut globals_seconds = 0.0;
    if let Some(tool) = plan.pg_dumpall {
        let tg = Instant::now();
        let globals = dump_globals(repo, opts, cancel, &plan, tool, &packed).await;
        stored.push(stored.or_discard(globals).await?);
        globals_seconds = tg.elapsed().as_secs_f64();
    }
    let artifacts = stored.into_artifacts();
    let manifest = manifest_of(opts, &plan, dumped, artifacts, globals_seconds, clock);
    let manifest = lock_and_commit(repo, opts, clock, cancel, manifest).await?;
    tracing::info!(job, backup = %id, stored_bytes = manifest.stored_size(),
        raw_bytes = manifest.raw_size(), seconds = manifest.durations.total_seconds,
        databases = manifest.database_names().len(), "backup-committed");
    Ok(manifest)
}

/// How a backup's artifacts are packed and uploaded.
struct Packed<'a> {
    packing: &'a Packing,
    /// A database artifact's name after `database.` (format, compression, age).
    suffix: &'a str,
    /// `.age` when encrypted.
    sealed: &'static str,
    upload: &'a UploadOptions,
}

/// Dumps every database of the plan, each in its own snapshot (a snapshot
/// cannot span databases); one dropped since the listing is left out. On
/// a failure removes what it stored.
async fn dump_databases(
    repo: &Repository,
    opts: &BackupOptions,
    cancel: &CancellationToken,
    plan: &Plan<'_>,
    packed: &Packed<'_>,
) -> Result<Vec<(String, Dumped)>> {
    let (job, id) = (opts.job.as_str(), plan.id);
    let server = opts.logical.databases.is_some();
    let mut dumped: Vec<(String, Dumped)> = Vec::new();
    let mut stored = Stored::new(repo, job, id);
    for (i, database) in plan.databases.iter().enumerate() {
        let (spec, name) = if server {
            (
                plan.main.with_database(database),
                server_artifact_name(i, database, packed.suffix),
            )
        } else {
            (plan.main.clone(), format!("database.{}", packed.suffix))
        };
        crate::progress::phase(opts.progress.as_ref(), || match plan.databases.len() {
            1 => format!("dumping {database}"),
            n => format!("dumping {database} ({}/{n})", i + 1),
        });
        let target = DumpTo {
            source: &spec,
            database,
            name,
            id,
            upload: packed.upload,
            packing: packed.packing,
        };
        match database::dump(repo, opts, plan.pg_dump, target, cancel).await {
            // Dropped since the databases were listed: not in this backup.
            Err(e) if server && database::vanished(&e) => {
                tracing::warn!(job, backup = %id, database = %database,
                    "database-vanished: dropped during the run; left out of this backup");
            }
            Ok(d) => {
                tracing::info!(job, backup = %id, database = %database,
                    stored_bytes = d.artifact.stored_size, "database-dumped");
                stored.push(d.artifact.clone());
                dumped.push((database.clone(), d));
            }
            Err(e) => return stored.or_discard(Err(e)).await,
        }
    }
    if dumped.is_empty() {
        let scope = opts.logical.databases.clone().unwrap_or(DatabaseScope {
            include: Vec::new(),
            exclude: Vec::new(),
        });
        return Err(Error::NoDatabases {
            job: job.to_string(),
            server: plan.main.redacted(),
            include: scope.include,
            exclude: scope.exclude,
        });
    }
    Ok(dumped)
}

/// Stores `pg_dumpall --globals-only` (roles, tablespaces) as one artifact.
async fn dump_globals(
    repo: &Repository,
    opts: &BackupOptions,
    cancel: &CancellationToken,
    plan: &Plan<'_>,
    tool: &refugio_dump::Tool,
    packed: &Packed<'_>,
) -> Result<refugio_store::manifest::Artifact> {
    let job = opts.job.as_str();
    crate::progress::phase(opts.progress.as_ref(), || "dumping globals".into());
    let globals_packing = Packing::stream(opts);
    let name = format!(
        "globals.sql{}{}",
        globals_packing.stream.suffix(),
        packed.sealed
    );
    let key = Repository::key(job, plan.id, &name);
    let small = UploadOptions {
        expected_size: None,
        ..packed.upload.clone()
    };
    let output =
        spawn::pg_dumpall_globals(tool, plan.main, plan.facts.superuser).map_err(Error::Pg)?;
    let (outcome, raw) = store_stream(repo, &key, output, &globals_packing, opts, &small, cancel)
        .await
        .map_err(|e| Error::Dump {
            job: job.to_string(),
            what: "dumping globals (roles) with pg_dumpall".to_string(),
            source: Box::new(e),
        })?;
    Ok(artifact(
        name,
        "globals",
        "plain",
        &globals_packing,
        opts,
        outcome,
        raw,
    ))
}

/// The manifest's word on the backup's encryption: age, to the recipients
/// `opts` name (None: not encrypted).
pub(super) fn sealed_with(opts: &BackupOptions) -> Option<Encryption> {
    opts.encryption.as_ref().map(|to| Encryption {
        scheme: encryption::AGE.into(),
        recipients: to.names().to_vec(),
    })
}

/// The end of every backup: cancelled now, it discards its artifacts;
/// with object lock, each artifact gets its retention before the manifest
/// (itself written locked) claims it; then the manifest is written, the
/// commit. Any failure discards the artifacts: nothing is committed.
pub(crate) async fn lock_and_commit(
    repo: &Repository,
    opts: &BackupOptions,
    clock: &dyn Clock,
    cancel: &CancellationToken,
    mut manifest: Manifest,
) -> Result<Manifest> {
    let id = manifest.backup_id.clone();
    let mut stored = Stored::new(repo, &opts.job, &id);
    for a in &manifest.artifacts {
        stored.push(a.clone());
    }
    let committed = commit(repo, opts, clock, cancel, &mut manifest).await;
    stored.or_discard(committed).await?;
    Ok(manifest)
}

/// [`lock_and_commit`] but for the discarding.
async fn commit(
    repo: &Repository,
    opts: &BackupOptions,
    clock: &dyn Clock,
    cancel: &CancellationToken,
    manifest: &mut Manifest,
) -> Result<()> {
    let job = opts.job.as_str();
    let id = manifest.backup_id.clone();
    let id = id.as_str();
    if cancel.is_cancelled() {
        return Err(Error::Cancelled {
            what: format!("job {job}: backup"),
            detail: "nothing was committed".into(),
        });
    }
    // The manifest claims these artifacts: each must be stored, with its
    // size, before it does (one HEAD each), or nothing is committed.
    verify_stored(repo, manifest).await?;
    // Object lock: every artifact gets the retention before the manifest
    // (itself written locked) claims it. A store that refuses fails the
    // backup: the operator asked for immutability, and a manifest never
    // claims a lock that is not there.
    if let Some(lock) = &opts.object_lock {
        let retention = lock.retention(clock.now());
        for a in &manifest.artifacts {
            let key = Repository::key(job, id, &a.name);
            repo.store()
                .set_retention(&key, &retention)
                .await
                .map_err(|e| Error::ObjectLock {
                    job: job.to_string(),
                    key,
                    source: Box::new(e),
                })?;
        }
        manifest.object_lock = Some(retention);
    }
    repo.commit(manifest).await.map_err(|e| Error::Commit {
        job: job.to_string(),
        source: Box::new(e),
    })
}

/// Every artifact `manifest` names is stored with its `stored_size`.
pub(crate) async fn verify_stored(repo: &Repository, manifest: &Manifest) -> Result<()> {
    for a in &manifest.artifacts {
        let key = Repository::key(&manifest.job, &manifest.backup_id, &a.name);
        let actual = repo.store().head(&key).await?.map(|m| m.size);
        if actual != Some(a.stored_size) {
            tracing::error!(job = %manifest.job, backup = %manifest.backup_id, key, expected = a.stored_size,
                actual = ?actual, "commit-refused: an artifact is missing or of another size");
            return Err(Error::NotStored {
                job: manifest.job.clone(),
                backup: manifest.backup_id.clone(),
                key,
                expected: a.stored_size,
                actual,
            });
        }
    }
    Ok(())
}

/// The manifest of the dumped databases: a one-database backup keeps its
/// snapshot's facts at the top level; a whole-server one lists each
/// database, with the first snapshot's time and the oldest data's.
fn manifest_of(
    opts: &BackupOptions,
    plan: &Plan<'_>,
    dumped: Vec<(String, Dumped)>,
    artifacts: Vec<refugio_store::manifest::Artifact>,
    globals_seconds: f64,
    clock: &dyn Clock,
) -> Manifest {
    let snapshot_seconds = dumped.iter().map(|(_, d)| d.snapshot_seconds).sum();
    let dump_seconds = dumped.iter().map(|(_, d)| d.dump_seconds).sum();
    let mut manifest = Manifest {
        format: FORMAT.into(),
        job: opts.job.clone(),
        backup_id: plan.id.to_string(),
        database: String::new(),
        started_at: plan.started_at,
        finished_at: clock.now(),
        snapshot_at: plan.started_at,
        data_at: None,
        refugio_version: env!("CARGO_PKG_VERSION").into(),
        server: Default::default(),
        pg_dump_version: plan.pg_dump.version.to_string(),
        dump_format: opts.logical.format.as_str().into(),
        artifacts,
        row_counts: String::new(),
        tables: Vec::new(),
        large_objects: 0,
        durations: Durations {
            snapshot_seconds,
            dump_seconds,
            globals_seconds,
            total_seconds: plan.t0.elapsed().as_secs_f64(),
        },
        attempts: opts.attempt,
        schema_fingerprint: None,
        schema_fingerprint_v2: None,
        object_lock: None,
        encryption: sealed_with(opts),
        databases: Vec::new(),
        physical: None,
    };
    match &opts.logical.databases {
        None => {
            if let Some((database, d)) = dumped.into_iter().next() {
                let info = d.info;
                manifest.database = database;
                manifest.snapshot_at = info.taken_at;
                manifest.data_at = Some(info.data_at);
                manifest.server = info.server;
                manifest.row_counts = info.row_counts;
                manifest.tables = info.tables;
                manifest.large_objects = info.large_objects;
                manifest.schema_fingerprint = Some(info.schema_fingerprint);
                manifest.schema_fingerprint_v2 = Some(info.schema_fingerprint_v2);
            }
        }
        Some(scope) => {
            manifest.database = scope.include.join(",");
            manifest.row_counts = match opts.logical.row_counts {
                RowCountMode::Exact => "exact".into(),
                RowCountMode::Estimated => "estimated".into(),
            };
            if let Some((_, first)) = dumped.first() {
                manifest.snapshot_at = first.info.taken_at;
                manifest.server = first.info.server.clone();
            }
            manifest.server.database_size = dumped
                .iter()
                .map(|(_, d)| d.info.server.database_size)
                .sum();
            // The recovery point of the whole: its oldest data.
            manifest.data_at = dumped.iter().map(|(_, d)| d.info.data_at).min();
            manifest.databases = dumped
                .iter()
                .map(|(name, d)| d.info.entry(name, d))
                .collect();
        }
    }
    manifest
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use refugio_store::PutOptions;
    use std::sync::Arc;

    const FIXTURE: &str = include_str!("../../../store/tests/fixtures/manifest-1.4.json");

    /// A manifest of `app/20261128T060000Z` naming one artifact of `size` bytes.
    fn manifest(size: u64) -> Manifest {
        let mut m = Manifest::parse("fixture", FIXTURE.as_bytes()).expect("fixture");
        m.job = "app".into();
        m.backup_id = "20261128T060000Z".into();
        m.object_lock = None;
        m.artifacts.truncate(1);
        m.artifacts[0].name = "database.dump.zst".into();
        m.artifacts[0].stored_size = size;
        m
    }

    #[tokio::test]
    async fn a_commit_refuses_a_missing_or_short_artifact() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = refugio_store::fs::FsStore::new(dir.path()).expect("store");
        let repo = Repository::new(Arc::new(store));
        let key = "app/20261128T060000Z/database.dump.zst";
        let err = verify_stored(&repo, &manifest(7))
            .await
            .expect_err("missing");
        assert!(
            matches!(&err, Error::NotStored { key: k, expected: 7, actual: None, .. } if k == key),
            "{err:?}"
        );
        assert!(err.to_string().contains("not stored"), "{err}");
        repo.store()
            .put(key, Bytes::from_static(b"partial"), PutOptions::default())
            .await
            .expect("put");
        let err = verify_stored(&repo, &manifest(9)).await.expect_err("short");
        assert!(
            matches!(
                &err,
                Error::NotStored {
                    expected: 9,
                    actual: Some(7),
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("stored with 7 bytes"), "{err}");
        verify_stored(&repo, &manifest(7)).await.expect("whole");
    }
}
