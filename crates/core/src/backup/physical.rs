//! A physical job's base backup: `pg_basebackup -D - -Ft -X none` streamed
//! through compression (and age) into `base.tar.zst`, with the
//! `backup_label` and the server's `backup_manifest` read out of the tar
//! as it passes (the manifest also stored as its own artifact), then the
//! manifest (the commit). The WAL it needs comes from the job's archive
//! (`refugio wal-push`): pg_basebackup returns once the server archived
//! the backup's last segment.

use std::io::Cursor;
use std::time::Instant;

use refugio_dump::basebackup::{self, BackupLabel, BACKUP_LABEL, BACKUP_MANIFEST, MAX_MANIFEST};
use refugio_dump::snapshot;
use refugio_dump::tools::{self, ToolKind};
use refugio_store::manifest::{Durations, Manifest, Physical, ServerInfo, FORMAT};
use refugio_store::repo::Repository;
use refugio_store::upload::UploadOptions;
use sqlx::{Connection, Executor, Row};
use tokio_util::sync::CancellationToken;

use super::stream::{artifact, store_stream, Packing, Stored};
use super::{lock_and_commit, BackupOptions};
use crate::clock::Clock;
use crate::encryption;
use crate::error::{Error, Result};

/// Name of the tar artifact (before the compression and age suffixes).
pub const BASE_NAME: &str = "base.tar";

/// What the server says before a base backup starts.
struct Cluster {
    facts: snapshot::ServerFacts,
    segment_size: u64,
    size: i64,
}

async fn inspect(opts: &BackupOptions) -> Result<Cluster> {
    let job = opts.job.as_str();
    let source = opts
        .source
        .with_database(&opts.source.database().unwrap_or_else(|| "postgres".into()));
    let mut conn = source.connect().await?;
    let facts = snapshot::server_facts(&mut conn, &source).await?;
    let q = |e: sqlx::Error| Error::ClusterSettings {
        job: job.to_string(),
        server: source.redacted(),
        reason: e.to_string(),
    };
    let row = conn
        .fetch_one(
            "SELECT current_setting('archive_mode') AS archive_mode, \
                    (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size') AS seg, \
                    (SELECT coalesce(sum(pg_database_size(oid)), 0)::bigint FROM pg_database) AS size, \
                    (SELECT coalesce(string_agg(spcname, ', ' ORDER BY spcname), '') FROM pg_tablespace \
                      WHERE spcname NOT IN ('pg_default', 'pg_global')) AS tablespaces",
        )
        .await
        .map_err(q)?;
    let _ = conn.close().await;
    let archive_mode: String = row.get("archive_mode");
    let tablespaces: String = row.get("tablespaces");
    if !tablespaces.is_empty() {
        return Err(Error::Tablespaces {
            job: job.to_string(),
            server: source.redacted(),
            tablespaces,
        });
    }
    // A standby's own archive_mode says nothing: its primary archives
    // the WAL the base backup needs (into this job, by the operator's
    // setup; the drill and `check` find out if it does not).
    if archive_mode == "off" && !facts.in_recovery {
        return Err(Error::ArchiveModeOff {
            job: job.to_string(),
            server: source.redacted(),
        });
    }
    let seg: i64 = row.get("seg");
    Ok(Cluster {
        facts,
        segment_size: u64::try_from(seg).unwrap_or(16 * 1024 * 1024),
        size: row.get("size"),
    })
}

/// Takes one base backup as `opts` say (a job of `kind = "physical"`).
pub(super) async fn base_backup(
    repo: &Repository,
    opts: &BackupOptions,
    clock: &dyn Clock,
    cancel: &CancellationToken,
) -> Result<Manifest> {
    let t0 = Instant::now();
    let started_at = clock.now();
    let job = opts.job.as_str();
    let cluster = inspect(opts).await?;
    let version = cluster.facts.pg_version();
    let tool = tools::find(ToolKind::PgBasebackup, version, opts.pg_bindir.as_deref())
        .await
        .map_err(|e| Error::Tool {
            job: job.to_string(),
            tool: "pg_basebackup",
            server: opts.source.redacted(),
            source: Box::new(e),
        })?;
    tracing::info!(job, server = %cluster.facts.version, pg_basebackup = %tool.path.display(),
        standby = cluster.facts.in_recovery, attempt = opts.attempt, "base-backup-started");
    let claim = tokio::select! {
        () = cancel.cancelled() => {
            return Err(Error::Cancelled {
                what: format!("job {job}: base backup"),
                detail: "stopped while claiming a backup id; nothing was committed".into(),
            });
        }
        claim = repo.claim_backup_id(job, started_at) => claim?,
    };
    let beat = repo.keep_claimed(&claim);
    let taken = Taken {
        cluster: &cluster,
        tool: &tool,
        id: &claim.id,
        started_at,
        t0,
    };
    let result = take_and_commit(repo, opts, clock, cancel, taken).await;
    beat.stop().await;
    repo.release_claim(&claim).await;
    result
}

/// What [`base_backup`] settled before it stores anything.
struct Taken<'a> {
    cluster: &'a Cluster,
    tool: &'a refugio_dump::Tool,
    id: &'a str,
    started_at: chrono::DateTime<chrono::Utc>,
    t0: Instant,
}

/// Streams the base backup (and the server's backup_manifest) under the
/// claimed id, then commits the manifest; on any failure removes what it
/// stored.
async fn take_and_commit(
    repo: &Repository,
    opts: &BackupOptions,
    clock: &dyn Clock,
    cancel: &CancellationToken,
    taken: Taken<'_>,
) -> Result<Manifest> {
    let (job, id) = (opts.job.as_str(), taken.id);
    let packing = Packing::stream(opts);
    let seal = if opts.encryption.is_some() {
        encryption::SUFFIX
    } else {
        ""
    };
    let upload = UploadOptions {
        part_size: opts.part_size,
        concurrency: opts.upload_concurrency,
        expected_size: u64::try_from(taken.cluster.size).ok(),
    };
    let name = format!("{BASE_NAME}{}{seal}", packing.stream.suffix());
    let key = Repository::key(job, id, &name);
    let child = refugio_dump::spawn::pg_basebackup(taken.tool, &opts.source)?;
    let watch = basebackup::TarWatch::new(
        child,
        &[(BACKUP_LABEL, 64 * 1024), (BACKUP_MANIFEST, MAX_MANIFEST)],
    );
    let captured = watch.captured();
    let td = Instant::now();
    let (outcome, raw) = store_stream(repo, &key, watch, &packing, opts, &upload, cancel)
        .await
        .map_err(|e| Error::Dump {
            job: job.to_string(),
            what: "taking the base backup with pg_basebackup".into(),
            source: Box::new(e),
        })?;
    let dump_seconds = td.elapsed().as_secs_f64();
    let mut stored = Stored::new(repo, job, id);
    stored.push(artifact(name, "base", "tar", &packing, opts, outcome, raw));
    let seen = captured.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let (label, stop) = stored.or_discard(label_and_stop(job, id, &seen)).await?;
    let mut manifest_artifact = None;
    if let Some(bytes) = seen.files.get(BACKUP_MANIFEST).cloned() {
        let mname = format!("{BACKUP_MANIFEST}{}{seal}", packing.stream.suffix());
        let mkey = Repository::key(job, id, &mname);
        let put = store_stream(
            repo,
            &mkey,
            Cursor::new(bytes),
            &packing,
            opts,
            &UploadOptions::default(),
            cancel,
        )
        .await
        .map_err(|e| Error::Dump {
            job: job.to_string(),
            what: "storing the server's backup_manifest".into(),
            source: Box::new(e),
        });
        let (outcome, raw) = stored.or_discard(put).await?;
        stored.push(artifact(
            mname.clone(),
            "backup_manifest",
            "json",
            &packing,
            opts,
            outcome,
            raw,
        ));
        manifest_artifact = Some(mname);
    }
    let finished_at = clock.now();
    let mut manifest = base_manifest(
        opts,
        &taken,
        finished_at,
        stop.to_string(),
        dump_seconds,
        stored.into_artifacts(),
    );
    manifest.physical = Some(Physical {
        timeline: label.timeline,
        start_lsn: label.start_lsn.to_string(),
        stop_lsn: stop.to_string(),
        start_time: label.start_time.unwrap_or(taken.started_at),
        wal_segment_size: taken.cluster.segment_size,
        from: label.from.clone(),
        backup_label: label.text.clone(),
        backup_manifest: manifest_artifact,
    });
    let manifest = lock_and_commit(repo, opts, clock, cancel, manifest).await?;
    tracing::info!(job, backup = %id, stored_bytes = manifest.stored_size(),
        raw_bytes = manifest.raw_size(), start_lsn = %label.start_lsn, stop_lsn = %stop,
        timeline = label.timeline, seconds = manifest.durations.total_seconds, "base-backup-committed");
    Ok(manifest)
}

/// The backup's `backup_label` and its stop LSN (from the server's
/// backup_manifest, PostgreSQL 13+), as read out of pg_basebackup's tar.
fn label_and_stop(
    job: &str,
    id: &str,
    seen: &basebackup::Captured,
) -> Result<(BackupLabel, refugio_dump::wal::Lsn)> {
    let bad = |why: String| Error::BaseBackup {
        job: job.to_string(),
        backup: id.to_string(),
        why,
    };
    let label = seen
        .files
        .get(BACKUP_LABEL)
        .and_then(|b| BackupLabel::parse(&String::from_utf8_lossy(b)))
        .ok_or_else(|| bad("pg_basebackup's tar holds no readable backup_label".into()))?;
    let stop = seen
        .files
        .get(BACKUP_MANIFEST)
        .and_then(|m| basebackup::manifest_wal_ranges(m))
        .and_then(|r| r.iter().map(|r| r.end).max());
    let Some(stop) = stop else {
        return Err(bad(
            if seen.too_large.iter().any(|n| n == BACKUP_MANIFEST) {
                format!("its backup_manifest is larger than {MAX_MANIFEST} bytes")
            } else {
                "pg_basebackup's tar holds no backup_manifest with WAL-Ranges (PostgreSQL 13 or later writes one)".into()
            },
        ));
    };
    Ok((label, stop))
}

/// The manifest of a base backup that ended at `finished_at` at LSN
/// `stop` (its `physical` part is the caller's).
fn base_manifest(
    opts: &BackupOptions,
    taken: &Taken<'_>,
    finished_at: chrono::DateTime<chrono::Utc>,
    stop: String,
    dump_seconds: f64,
    artifacts: Vec<refugio_store::manifest::Artifact>,
) -> Manifest {
    let facts = &taken.cluster.facts;
    Manifest {
        format: FORMAT.into(),
        job: opts.job.clone(),
        backup_id: taken.id.to_string(),
        database: "*".into(),
        started_at: taken.started_at,
        finished_at,
        // Consistent once replay reaches the stop LSN: about when
        // pg_basebackup ended.
        snapshot_at: finished_at,
        data_at: Some(finished_at),
        refugio_version: env!("CARGO_PKG_VERSION").into(),
        server: ServerInfo {
            version: facts.version.clone(),
            version_num: facts.version_num,
            system_identifier: facts.system_identifier.clone(),
            in_recovery: facts.in_recovery,
            lsn: Some(stop),
            replay_lag_seconds: None,
            database_size: taken.cluster.size,
        },
        pg_dump_version: taken.tool.version.to_string(),
        dump_format: "tar".into(),
        artifacts,
        row_counts: "none".into(),
        tables: Vec::new(),
        large_objects: 0,
        durations: Durations {
            snapshot_seconds: 0.0,
            dump_seconds,
            globals_seconds: 0.0,
            total_seconds: taken.t0.elapsed().as_secs_f64(),
        },
        schema_fingerprint: None,
        schema_fingerprint_v2: None,
        attempts: opts.attempt,
        object_lock: None,
        encryption: super::sealed_with(opts),
        databases: Vec::new(),
        physical: None,
    }
}
