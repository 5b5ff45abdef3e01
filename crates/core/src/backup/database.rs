//! One database's part of a backup: its snapshot (counts, fingerprint,
//! the scope's tables resolved), `pg_dump --snapshot` streamed into its
//! artifact, and what the manifest records of it.

use std::time::Instant;

use chrono::{DateTime, Utc};
use refugio_dump::snapshot::{quote_ident, RowCountMode, Snapshot, SnapshotOptions};
use refugio_dump::spawn::{self, DumpArgs};
use refugio_dump::{SourceSpec, Tool};
use refugio_store::manifest::{Artifact, DatabaseDump, ServerInfo, TableRows};
use refugio_store::repo::Repository;
use refugio_store::upload::UploadOptions;
use tokio_util::sync::CancellationToken;

use super::stream::{artifact, store_stream, Packing};
use super::{BackupOptions, ReplicaLag};
use crate::error::{Error, Result};

/// One database, dumped and stored.
pub(super) struct Dumped {
    pub artifact: Artifact,
    pub info: SnapInfo,
    pub snapshot_seconds: f64,
    pub dump_seconds: f64,
}

/// Where one database goes.
pub(super) struct DumpTo<'a> {
    /// The database's connection.
    pub source: &'a SourceSpec,
    pub database: &'a str,
    /// Object name of its artifact, and the backup id.
    pub name: String,
    pub id: &'a str,
    pub upload: &'a UploadOptions,
    /// Who compresses it.
    pub packing: &'a Packing,
}

/// `"a"."b"` for each `(schema, name)`.
fn quoted(tables: &[(String, String)]) -> Vec<String> {
    tables
        .iter()
        .map(|(s, n)| format!("{}.{}", quote_ident(s), quote_ident(n)))
        .collect()
}

/// Snapshot, replica-lag check, pg_dump into the artifact.
pub(super) async fn dump(
    repo: &Repository,
    opts: &BackupOptions,
    pg_dump: &Tool,
    to: DumpTo<'_>,
    cancel: &CancellationToken,
) -> Result<Dumped> {
    let job = opts.job.as_str();
    let source = to.source;
    let snap_opts = SnapshotOptions {
        lock_timeout: opts.logical.lock_wait_timeout,
        row_counts: opts.logical.row_counts,
        exclude_tables: opts.logical.exclude_tables.clone(),
        include_tables: opts.logical.include_tables.clone(),
        exclude_table_data: opts.logical.exclude_table_data.clone(),
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
    if let Some(max) = opts.logical.max_replica_lag.filter(|max| lag > *max) {
        match opts.logical.on_replica_lag {
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
                tracing::warn!(job, database = to.database, lag_seconds = lag.as_secs(), max_seconds = max.as_secs(),
                    data_at = %snap.data_at, "replica-lagging: backing up data older than max_replica_lag; the RPO counts from the data's time");
            }
        }
    }
    let td = Instant::now();
    // The tables the patterns matched in the snapshot, by exact quoted
    // name: pg_dump leaves out the very tables the counts left out.
    let exclude = quoted(&snap.excluded);
    let exclude_data = quoted(&snap.data_excluded);
    let args = DumpArgs {
        format: opts.logical.format,
        snapshot: Some(&snap.id),
        lock_wait_timeout: opts.logical.lock_wait_timeout,
        exclude_tables: &exclude,
        exclude_table_data: &exclude_data,
        extra_args: &opts.logical.extra_args,
        archive_compression: to.packing.archive.as_deref(),
    };
    let key = Repository::key(job, to.id, &to.name);
    // Parts sized for this database (see `UploadOptions::expected_size`).
    let upload = UploadOptions {
        expected_size: u64::try_from(snap.facts.database_size).ok(),
        ..to.upload.clone()
    };
    let stored = match spawn::pg_dump(pg_dump, source, &args) {
        Ok(output) => Ok(store_stream(repo, &key, output, to.packing, opts, &upload, cancel).await),
        Err(e) => Err(e),
    };
    let info = SnapInfo::from(&snap);
    snap.release().await;
    let (outcome, raw) = stored?.map_err(|e| Error::Dump {
        job: job.to_string(),
        what: format!("dumping database {}", to.database),
        source: Box::new(e),
    })?;
    Ok(Dumped {
        artifact: artifact(
            to.name,
            "database",
            opts.logical.format.as_str(),
            to.packing,
            opts,
            outcome,
            raw,
        ),
        info,
        snapshot_seconds,
        dump_seconds: td.elapsed().as_secs_f64(),
    })
}

/// Whether the database of a failed dump no longer exists (SQLSTATE
/// 3D000 when connecting for its snapshot): it was dropped after the
/// databases were listed.
pub(super) fn vanished(e: &Error) -> bool {
    let Error::Snapshot { source, .. } = e else {
        return false;
    };
    match source.as_ref() {
        refugio_dump::Error::Connect {
            source: sqlx::Error::Database(d),
            ..
        } => d.code().as_deref() == Some("3D000"),
        _ => false,
    }
}

/// The object name of a database's artifact in a whole-server backup:
/// `db-<n>-<name>` with the name's characters outside `[A-Za-z0-9_-]` as
/// `_` (the manifest maps it back to the real name), e.g.
/// `db-002-caf__trips.dump.zst`.
pub(super) fn server_artifact_name(index: usize, database: &str, suffix: &str) -> String {
    let clean: String = database
        .chars()
        .take(40)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("db-{:03}-{clean}.{suffix}", index + 1)
}

/// What the manifest takes from a snapshot.
pub(super) struct SnapInfo {
    pub taken_at: DateTime<Utc>,
    pub data_at: DateTime<Utc>,
    pub server: ServerInfo,
    pub tables: Vec<TableRows>,
    pub row_counts: String,
    pub large_objects: i64,
    pub schema_fingerprint: String,
    pub schema_fingerprint_v2: String,
}

impl SnapInfo {
    /// The `databases` entry of a whole-server backup.
    pub fn entry(&self, name: &str, d: &Dumped) -> DatabaseDump {
        DatabaseDump {
            name: name.to_string(),
            artifact: d.artifact.name.clone(),
            snapshot_at: self.taken_at,
            data_at: self.data_at,
            database_size: self.server.database_size,
            lsn: self.server.lsn.clone(),
            row_counts: self.row_counts.clone(),
            tables: self.tables.clone(),
            large_objects: self.large_objects,
            schema_fingerprint: Some(self.schema_fingerprint.clone()),
            schema_fingerprint_v2: Some(self.schema_fingerprint_v2.clone()),
            dump_seconds: d.dump_seconds,
        }
    }
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
                    data_excluded: t.data_excluded,
                })
                .collect(),
            row_counts: match s.row_counts {
                RowCountMode::Exact => "exact".into(),
                RowCountMode::Estimated => "estimated".into(),
            },
            large_objects: s.large_objects,
            schema_fingerprint: s.schema_fingerprint.clone(),
            schema_fingerprint_v2: s.schema_fingerprint_v2.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_artifact_names_are_safe_and_distinct() {
        assert_eq!(
            server_artifact_name(1, "café trips", "dump.zst"),
            "db-002-caf__trips.dump.zst"
        );
        assert_ne!(
            server_artifact_name(0, "a b", "sql"),
            server_artifact_name(1, "a_b", "sql")
        );
        let long = server_artifact_name(0, &"x".repeat(300), "dump");
        assert!(long.len() < 60, "{long}");
        assert!(refugio_store::repo::valid_segment(&server_artifact_name(
            3,
            "../../etc",
            "dump"
        )));
    }
}
