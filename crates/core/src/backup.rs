//! One backup of one job: snapshot, pg_dump → compression → repository,
//! globals, then the manifest (the commit). Any failure or cancellation
//! aborts the uploads, removes what was already stored for this backup id,
//! and commits nothing.
//!
//! One call is one attempt; a lock timeout or an unreachable store comes
//! back as an error whose [`Error::is_temporary`] says so, and the caller's
//! retry layer decides whether to run it again (passing the attempt number,
//! which the manifest records).

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use refugio_dump::snapshot::{self, quote_ident, RowCountMode, Snapshot, SnapshotOptions};
use refugio_dump::spawn::{self, DumpArgs};
use refugio_dump::tools::{self, ToolKind};
use refugio_dump::{Compression, CountingReader, DumpFormat, SourceSpec};
use refugio_store::manifest::{
    Artifact, Durations, Encryption, Manifest, ServerInfo, TableRows, FORMAT,
};
use refugio_store::repo::Repository;
use refugio_store::upload::{upload_stream, UploadOptions, UploadOutcome};
use refugio_store::{LockMode, Retention};
use sqlx::Connection;
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::clock::Clock;
use crate::encryption::{self, Encrypting, Recipients};
use crate::error::{Error, Result};

/// What to back up and how.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// The job: the repository folder.
    pub job: String,
    /// The database to dump (its URL names it).
    pub source: SourceSpec,
    pub format: DumpFormat,
    pub compression: Compression,
    /// None: the compression's default level.
    pub compression_level: Option<i32>,
    /// Also store `pg_dumpall --globals-only` (roles, tablespaces).
    pub globals: bool,
    /// Directory of pg_dump/pg_dumpall; None = search for a fitting one.
    pub pg_bindir: Option<PathBuf>,
    /// `--exclude-table` patterns, also left out of the row counts.
    pub exclude_tables: Vec<String>,
    /// Extra pg_dump arguments, passed as they are.
    pub extra_args: Vec<String>,
    /// How long pg_dump and the snapshot wait for a table lock.
    pub lock_wait_timeout: Duration,
    pub row_counts: RowCountMode,
    /// Upload part size, bytes.
    pub part_size: usize,
    /// Parts in flight at once.
    pub upload_concurrency: usize,
    /// S3 Object Lock on every artifact and the manifest.
    pub object_lock: Option<ObjectLock>,
    /// Which attempt this is, from 1 (recorded in the manifest).
    pub attempt: u32,
    /// On a standby: the most the data may lag behind the primary.
    pub max_replica_lag: Option<Duration>,
    /// What a standby lagging more than that gets.
    pub on_replica_lag: ReplicaLag,
    /// Encrypt every artifact (the globals too: they hold role password
    /// hashes) with age to these recipients; None: stored as compressed.
    pub encryption: Option<Recipients>,
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

/// Stops a stream with an error once the token is cancelled, so the
/// uploader aborts as it would for any producer failure.
struct Cancellable<R> {
    inner: R,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<R> Cancellable<R> {
    fn new(inner: R, token: &CancellationToken) -> Self {
        Cancellable {
            inner,
            cancelled: Box::pin(token.clone().cancelled_owned()),
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Cancellable<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.cancelled.as_mut().poll(cx).is_ready() {
            // Not ErrorKind::Interrupted: readers retry that kind.
            return Poll::Ready(Err(io::Error::other("backup cancelled by signal")));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

/// Streams one child's output through the compressor into `key`; returns
/// the upload and the raw (uncompressed) byte count.
async fn store_stream(
    repo: &Repository,
    key: &str,
    output: refugio_dump::ChildOutput,
    opts: &BackupOptions,
    upload: &UploadOptions,
    cancel: &CancellationToken,
) -> std::result::Result<(UploadOutcome, u64), refugio_store::Error> {
    let counted = CountingReader::new(output);
    let raw = counted.counter();
    let compressed = opts.compression.encoder(counted, opts.compression_level);
    // pg_dump → compressor → age → digest and count → upload: plaintext
    // never touches disk.
    let sealed: Pin<Box<dyn AsyncRead + Send>> = match &opts.encryption {
        Some(to) => Box::pin(
            Encrypting::new(compressed, to)
                .map_err(|e| refugio_store::Error::Other(e.to_string()))?,
        ),
        None => compressed,
    };
    let stream = Cancellable::new(sealed, cancel);
    let outcome = upload_stream(repo.store().as_ref(), key, stream, upload).await?;
    Ok((outcome, raw.load(Ordering::Relaxed)))
}

fn artifact(
    name: String,
    kind: &str,
    format: &str,
    opts: &BackupOptions,
    outcome: UploadOutcome,
    raw: u64,
) -> Artifact {
    Artifact {
        name,
        kind: kind.into(),
        format: format.into(),
        compression: opts.compression.as_str().into(),
        encryption: match opts.encryption {
            Some(_) => encryption::AGE.into(),
            None => "none".into(),
        },
        raw_size: raw,
        stored_size: outcome.size,
        sha256: outcome.sha256,
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
    let t0 = Instant::now();
    let started_at = clock.now();
    let job = opts.job.as_str();
    let source = &opts.source;
    let database = source.database().ok_or_else(|| Error::NoDatabase {
        job: job.to_string(),
    })?;

    // Server version first: the pg_dump must fit before anything starts.
    let mut conn = source.connect().await?;
    let facts = snapshot::server_facts(&mut conn, source).await?;
    let _ = conn.close().await;
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
    let pg_dumpall = match opts.globals {
        true => Some(find(ToolKind::PgDumpAll, "pg_dumpall").await?),
        false => None,
    };
    tracing::info!(job, server = %facts.version, pg_dump = %pg_dump.path.display(),
        pg_dump_version = %pg_dump.version, attempt = opts.attempt, "backup-started");

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
    let id = claim.id.clone();
    let result: Result<Manifest> = async {
    let ext = match opts.format {
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
    let db_name = format!("database.{ext}{}{sealed}", opts.compression.suffix());
    let db_key = Repository::key(job, &id, &db_name);
    let upload = UploadOptions {
        part_size: opts.part_size,
        concurrency: opts.upload_concurrency,
        expected_size: u64::try_from(facts.database_size).ok(),
    };
    let snap_opts = SnapshotOptions {
        lock_timeout: opts.lock_wait_timeout,
        row_counts: opts.row_counts,
        exclude_tables: opts.exclude_tables.clone(),
    };

    let ts = Instant::now();
    let snap = Snapshot::take(source, &snap_opts)
        .await
        .map_err(|e| Error::Snapshot {
            job: job.to_string(),
            source: Box::new(e),
        })?;
    let snapshot_seconds = ts.elapsed().as_secs_f64();
    let lag = (snap.taken_at - snap.data_at).to_std().unwrap_or_default();
    if let Some(max) = opts.max_replica_lag.filter(|max| lag > *max) {
        match opts.on_replica_lag {
            ReplicaLag::Refuse => {
                let data_at = snap.data_at;
                snap.release().await;
                return Err(Error::ReplicaLag {
                    job: job.to_string(),
                    server: source.redacted(),
                    lag_seconds: lag.as_secs(),
                    max_seconds: max.as_secs(),
                    data_at,
                });
            }
            ReplicaLag::Flag => {
                tracing::warn!(job, lag_seconds = lag.as_secs(), max_seconds = max.as_secs(),
                    data_at = %snap.data_at, "replica-lagging: backing up data older than max_replica_lag; the RPO counts from the data's time");
            }
        }
    }
    let td = Instant::now();
    // The tables the patterns matched in the snapshot, by exact quoted
    // name: pg_dump leaves out the very tables the counts left out.
    let exclude: Vec<String> = snap
        .excluded
        .iter()
        .map(|(s, n)| format!("{}.{}", quote_ident(s), quote_ident(n)))
        .collect();
    let args = DumpArgs {
        format: opts.format,
        snapshot: Some(&snap.id),
        lock_wait_timeout: opts.lock_wait_timeout,
        exclude_tables: &exclude,
        extra_args: &opts.extra_args,
    };
    let stored = match spawn::pg_dump(&pg_dump, source, &args) {
        Ok(output) => Ok(store_stream(repo, &db_key, output, opts, &upload, cancel).await),
        Err(e) => Err(e),
    };
    let info = SnapInfo::from(&snap);
    snap.release().await;
    let (outcome, raw) = stored?.map_err(|e| Error::Dump {
        job: job.to_string(),
        what: format!("dumping database {database}"),
        source: Box::new(e),
    })?;
    let dump_seconds = td.elapsed().as_secs_f64();
    let mut artifacts = vec![artifact(
        db_name,
        "database",
        opts.format.as_str(),
        opts,
        outcome,
        raw,
    )];

    let mut globals_seconds = 0.0;
    if let Some(tool) = &pg_dumpall {
        let tg = Instant::now();
        let name = format!("globals.sql{}{sealed}", opts.compression.suffix());
        let key = Repository::key(job, &id, &name);
        let small = UploadOptions {
            expected_size: None,
            ..upload.clone()
        };
        let what = || "dumping globals (roles) with pg_dumpall".to_string();
        let result = match spawn::pg_dumpall_globals(tool, source, facts.superuser) {
            Ok(output) => store_stream(repo, &key, output, opts, &small, cancel)
                .await
                .map_err(|e| Error::Dump {
                    job: job.to_string(),
                    what: what(),
                    source: Box::new(e),
                }),
            Err(e) => Err(Error::Pg(e)),
        };
        match result {
            Ok((outcome, raw)) => {
                artifacts.push(artifact(name, "globals", "plain", opts, outcome, raw));
            }
            Err(e) => {
                discard(repo, job, &id, &artifacts).await;
                return Err(e);
            }
        }
        globals_seconds = tg.elapsed().as_secs_f64();
    }

    let mut manifest = Manifest {
        format: FORMAT.into(),
        job: job.to_string(),
        backup_id: id.clone(),
        database,
        started_at,
        finished_at: clock.now(),
        snapshot_at: info.taken_at,
        data_at: Some(info.data_at),
        refugio_version: env!("CARGO_PKG_VERSION").into(),
        server: info.server,
        pg_dump_version: pg_dump.version.to_string(),
        dump_format: opts.format.as_str().into(),
        artifacts,
        row_counts: info.row_counts,
        tables: info.tables,
        large_objects: info.large_objects,
        durations: Durations {
            snapshot_seconds,
            dump_seconds,
            globals_seconds,
            total_seconds: t0.elapsed().as_secs_f64(),
        },
        attempts: opts.attempt,
        schema_fingerprint: Some(info.schema_fingerprint),
        object_lock: None,
        encryption: opts.encryption.as_ref().map(|to| Encryption {
            scheme: encryption::AGE.into(),
            recipients: to.names().to_vec(),
        }),
    };
    if cancel.is_cancelled() {
        discard(repo, job, &id, &manifest.artifacts).await;
        return Err(Error::Cancelled {
            what: format!("job {job}: backup"),
            detail: "nothing was committed".into(),
        });
    }
    // Object lock: every artifact gets the retention before the manifest
    // (itself written locked) claims it. A store that refuses fails the
    // backup: the operator asked for immutability, and a manifest never
    // claims a lock that is not there.
    if let Some(lock) = &opts.object_lock {
        let retention = lock.retention(clock.now());
        for a in &manifest.artifacts {
            let key = Repository::key(job, &id, &a.name);
            if let Err(e) = repo.store().set_retention(&key, &retention).await {
                discard(repo, job, &id, &manifest.artifacts).await;
                return Err(Error::ObjectLock {
                    job: job.to_string(),
                    key,
                    source: Box::new(e),
                });
            }
        }
        manifest.object_lock = Some(retention);
    }
    if let Err(e) = repo.commit(&manifest).await {
        discard(repo, job, &id, &manifest.artifacts).await;
        return Err(Error::Commit {
            job: job.to_string(),
            source: Box::new(e),
        });
    }
    tracing::info!(job, backup = %id, stored_bytes = manifest.stored_size(),
        raw_bytes = manifest.raw_size(), seconds = manifest.durations.total_seconds, "backup-committed");
    Ok(manifest)
    }
    .await;
    repo.release_claim(&claim).await;
    result
}

/// What the manifest takes from the snapshot.
struct SnapInfo {
    taken_at: DateTime<Utc>,
    data_at: DateTime<Utc>,
    server: ServerInfo,
    tables: Vec<TableRows>,
    row_counts: String,
    large_objects: i64,
    schema_fingerprint: String,
}

impl From<&Snapshot> for SnapInfo {
    fn from(s: &Snapshot) -> Self {
        SnapInfo {
            taken_at: s.taken_at,
            data_at: s.data_at,
            server: ServerInfo {
                version: s.facts.version.clone(),
                version_num: s.facts.version_num,
                system_identifier: s.facts.system_identifier.clone(),
                in_recovery: s.facts.in_recovery,
                lsn: s.facts.lsn.clone(),
                replay_lag_seconds: s.facts.replay_lag_seconds,
                database_size: s.facts.database_size,
            },
            tables: s
                .tables
                .iter()
                .map(|t| TableRows {
                    schema: t.schema.clone(),
                    name: t.name.clone(),
                    rows: t.rows,
                })
                .collect(),
            row_counts: match s.row_counts {
                RowCountMode::Exact => "exact".into(),
                RowCountMode::Estimated => "estimated".into(),
            },
            large_objects: s.large_objects,
            schema_fingerprint: s.schema_fingerprint.clone(),
        }
    }
}

/// Removes artifacts of an uncommitted backup (best effort: leftovers are
/// orphans without a manifest, invisible to readers, collected later).
async fn discard(repo: &Repository, job: &str, id: &str, artifacts: &[Artifact]) {
    for a in artifacts {
        let key = Repository::key(job, id, &a.name);
        if let Err(e) = repo.store().delete(&key).await {
            tracing::warn!(key, error = %refugio_store::error::chain(&e), "orphan-left");
        }
    }
}
