//! One backup of one job: snapshot, pg_dump → compression → repository,
//! globals, then the manifest (the commit). Any failure or cancellation
//! aborts the uploads, removes what was already stored for this backup id,
//! and commits nothing.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;

use anyhow::{anyhow, Context as _, Result};
use chrono::Utc;
use futures::FutureExt;
use refugio_dump::process::tool_error;
use refugio_dump::snapshot::{self, Snapshot, SnapshotOptions};
use refugio_dump::spawn::{self, DumpArgs};
use refugio_dump::tools::{self, ToolKind};
use refugio_dump::{CountingReader, DumpFormat, SourceSpec};
use refugio_store::manifest::{Artifact, Durations, Manifest, ServerInfo, TableRows, FORMAT};
use refugio_store::repo::Repository;
use refugio_store::upload::{upload_stream, UploadOptions, UploadOutcome};
use sqlx::Connection;
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::config::{JobConfig, RepositoryConfig};

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

/// Opens the source as the job says.
pub fn source_spec(job: &JobConfig) -> Result<SourceSpec> {
    SourceSpec::new(
        &job.source,
        job.database.as_deref(),
        job.password_file.as_deref(),
    )
    .with_context(|| format!("job {}: source", job.name))
}

fn upload_options(repo_cfg: &RepositoryConfig, expected: Option<u64>) -> UploadOptions {
    UploadOptions {
        part_size: repo_cfg.part_size as usize,
        concurrency: repo_cfg.upload_concurrency,
        expected_size: expected,
    }
}

struct Stored {
    artifact: Artifact,
    seconds: f64,
}

/// Streams one child's output through the compressor into `key`.
async fn store_stream(
    repo: &Repository,
    key: &str,
    output: refugio_dump::ChildOutput,
    job: &JobConfig,
    opts: &UploadOptions,
    cancel: &CancellationToken,
) -> std::result::Result<(UploadOutcome, u64), refugio_store::Error> {
    let counted = CountingReader::new(output);
    let raw = counted.counter();
    let compressed = job.compression.encoder(counted, job.compression_level);
    let stream = Cancellable::new(compressed, cancel);
    let outcome = upload_stream(repo.store().as_ref(), key, stream, opts).await?;
    Ok((outcome, raw.load(Ordering::Relaxed)))
}

/// Whether an upload failure came from pg_dump giving up on a lock.
fn is_lock_timeout(e: &refugio_store::Error) -> bool {
    match e {
        refugio_store::Error::Source { source, .. } => {
            tool_error(source).is_some_and(|t| t.is_temporary())
        }
        _ => false,
    }
}

/// Takes one backup of `job` into `repo`; returns the committed manifest.
pub async fn run(
    repo: &Repository,
    repo_cfg: &RepositoryConfig,
    job: &JobConfig,
    cancel: &CancellationToken,
) -> Result<Manifest> {
    let t0 = Instant::now();
    let started_at = Utc::now();
    let source = source_spec(job)?;
    let database = source.database().ok_or_else(|| {
        anyhow!(
            "job {}: the source URL names no database and `database` is not set",
            job.name
        )
    })?;

    // Server version first: the pg_dump must fit before anything starts.
    let mut conn = source.connect().await?;
    let facts = snapshot::server_facts(&mut conn, &source).await?;
    let _ = conn.close().await;
    let pg_dump = tools::find(
        ToolKind::PgDump,
        facts.pg_version(),
        job.pg_bindir.as_deref(),
    )
    .await
    .with_context(|| {
        format!(
            "job {}: choosing pg_dump for the server at {}",
            job.name,
            source.redacted()
        )
    })?;
    let pg_dumpall = if job.globals {
        Some(
            tools::find(
                ToolKind::PgDumpAll,
                facts.pg_version(),
                job.pg_bindir.as_deref(),
            )
            .await?,
        )
    } else {
        None
    };
    tracing::info!(job = %job.name, server = %facts.version, pg_dump = %pg_dump.path.display(),
        pg_dump_version = %pg_dump.version, "backup-started");

    let id = repo.new_backup_id(&job.name, started_at).await?;
    let ext = match job.format {
        DumpFormat::Custom => "dump",
        DumpFormat::Plain => "sql",
    };
    let db_name = format!("database.{ext}{}", job.compression.suffix());
    let db_key = Repository::key(&job.name, &id, &db_name);
    let opts = upload_options(repo_cfg, u64::try_from(facts.database_size).ok());
    let snap_opts = SnapshotOptions {
        lock_timeout: job.lock_wait_timeout,
        row_counts: job.row_counts,
        exclude_tables: job.exclude_tables.clone(),
    };

    let mut attempt = 0;
    let (snap_info, db_stored, snapshot_seconds) = loop {
        attempt += 1;
        let ts = Instant::now();
        let snap = match Snapshot::take(&source, &snap_opts).await {
            Ok(s) => s,
            Err(e) if e.is_temporary() && attempt < job.attempts => {
                tracing::warn!(job = %job.name, attempt, error = %e, "snapshot-retry");
                backoff(attempt, cancel).await?;
                continue;
            }
            Err(e) => return Err(e).context(format!("job {}: taking the snapshot", job.name)),
        };
        let snapshot_seconds = ts.elapsed().as_secs_f64();
        let td = Instant::now();
        let args = DumpArgs {
            format: job.format,
            snapshot: Some(&snap.id),
            lock_wait_timeout: job.lock_wait_timeout,
            exclude_tables: &job.exclude_tables,
            extra_args: &job.extra_args,
        };
        let output = spawn::pg_dump(&pg_dump, &source, &args)?;
        let res = store_stream(repo, &db_key, output, job, &opts, cancel).await;
        let info = SnapInfo::from(&snap);
        snap.release().await;
        match res {
            Ok((outcome, raw)) => {
                let artifact = Artifact {
                    name: db_name.clone(),
                    kind: "database".into(),
                    format: job.format.as_str().into(),
                    compression: job.compression.as_str().into(),
                    encryption: "none".into(),
                    raw_size: raw,
                    stored_size: outcome.size,
                    sha256: outcome.sha256,
                };
                break (
                    info,
                    Stored {
                        artifact,
                        seconds: td.elapsed().as_secs_f64(),
                    },
                    snapshot_seconds,
                );
            }
            Err(e) if is_lock_timeout(&e) && attempt < job.attempts => {
                tracing::warn!(job = %job.name, attempt, error = %e, "backup-retry");
                backoff(attempt, cancel).await?;
            }
            Err(e) => {
                return Err(anyhow::Error::new(e))
                    .context(format!("job {}: dumping database {database}", job.name));
            }
        }
    };

    let mut artifacts = vec![db_stored.artifact];
    let mut globals_seconds = 0.0;
    if let Some(tool) = &pg_dumpall {
        let tg = Instant::now();
        let name = format!("globals.sql{}", job.compression.suffix());
        let key = Repository::key(&job.name, &id, &name);
        let result = async {
            let output = spawn::pg_dumpall_globals(tool, &source, facts.superuser)?;
            let small = UploadOptions {
                expected_size: None,
                ..opts.clone()
            };
            anyhow::Ok(store_stream(repo, &key, output, job, &small, cancel).await?)
        }
        .await;
        match result {
            Ok((outcome, raw)) => artifacts.push(Artifact {
                name,
                kind: "globals".into(),
                format: "plain".into(),
                compression: job.compression.as_str().into(),
                encryption: "none".into(),
                raw_size: raw,
                stored_size: outcome.size,
                sha256: outcome.sha256,
            }),
            Err(e) => {
                discard(repo, &job.name, &id, &artifacts).await;
                return Err(e).context(format!(
                    "job {}: dumping globals (roles) with pg_dumpall",
                    job.name
                ));
            }
        }
        globals_seconds = tg.elapsed().as_secs_f64();
    }

    let manifest = Manifest {
        format: FORMAT.into(),
        job: job.name.clone(),
        backup_id: id.clone(),
        database,
        started_at,
        finished_at: Utc::now(),
        snapshot_at: snap_info.taken_at,
        refugio_version: env!("CARGO_PKG_VERSION").into(),
        server: snap_info.server,
        pg_dump_version: pg_dump.version.to_string(),
        dump_format: job.format.as_str().into(),
        artifacts,
        row_counts: snap_info.row_counts,
        tables: snap_info.tables,
        large_objects: snap_info.large_objects,
        durations: Durations {
            snapshot_seconds,
            dump_seconds: db_stored.seconds,
            globals_seconds,
            total_seconds: t0.elapsed().as_secs_f64(),
        },
        attempts: attempt,
        schema_fingerprint: Some(snap_info.schema_fingerprint),
        object_lock: None,
    };
    let mut manifest = manifest;
    if cancel.is_cancelled() {
        discard(repo, &job.name, &id, &manifest.artifacts).await;
        return Err(anyhow!("job {}: backup cancelled before commit", job.name));
    }
    // Object lock: every artifact gets the retention before the manifest
    // (itself written locked) claims it. A store that refuses fails the
    // backup: the operator asked for immutability, and a manifest never
    // claims a lock that is not there.
    if let Some(lock) = &repo_cfg.object_lock {
        let retention = lock.retention(Utc::now());
        for a in &manifest.artifacts {
            let key = Repository::key(&job.name, &id, &a.name);
            if let Err(e) = repo.store().set_retention(&key, &retention).await {
                discard(repo, &job.name, &id, &manifest.artifacts).await;
                return Err(e).context(format!(
                    "job {}: repository.object_lock is configured, but the retention could not be set on {key}; run `refugio config check` (the bucket must be created with object lock enabled)",
                    job.name
                ));
            }
        }
        manifest.object_lock = Some(retention);
    }
    if let Err(e) = repo.commit(&manifest).await {
        discard(repo, &job.name, &id, &manifest.artifacts).await;
        return Err(e).context(format!("job {}: writing the manifest", job.name));
    }
    tracing::info!(job = %job.name, backup = %id, stored_bytes = manifest.stored_size(),
        raw_bytes = manifest.raw_size(), seconds = manifest.durations.total_seconds, "backup-committed");
    Ok(manifest)
}

struct SnapInfo {
    taken_at: chrono::DateTime<Utc>,
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
                refugio_dump::snapshot::RowCountMode::Exact => "exact".into(),
                refugio_dump::snapshot::RowCountMode::Estimated => "estimated".into(),
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
            tracing::warn!(key, error = %e, "orphan-left");
        }
    }
}

async fn backoff(attempt: u32, cancel: &CancellationToken) -> Result<()> {
    let wait = std::time::Duration::from_secs(u64::from(attempt.min(5)) * 2);
    tokio::select! {
        _ = tokio::time::sleep(wait) => Ok(()),
        _ = cancel.cancelled().fuse() => Err(anyhow!("backup cancelled")),
    }
}
