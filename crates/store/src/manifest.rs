//! `manifest.json`: the commit point of a backup and the description of
//! what it holds. A backup exists if and only if its manifest exists.
//!
//! The `format` field is `"MAJOR.MINOR"`. Readers accept any minor of the
//! major they know (new minors only add optional fields) and reject other
//! majors with an error that names the manifest and both versions.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The manifest major version this build reads and writes.
pub const FORMAT_MAJOR: u32 = 1;
/// The manifest format written by this build.
pub const FORMAT: &str = "1.2";
/// Object name of the manifest inside a backup's prefix.
pub const MANIFEST_NAME: &str = "manifest.json";

/// One backup, as committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// `"1.2"` (1.0 had no `schema_fingerprint`, 1.1 no `object_lock`).
    pub format: String,
    pub job: String,
    pub backup_id: String,
    /// Name of the dumped database.
    pub database: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// Server time of the snapshot the dump and the counts describe: the
    /// recovery point.
    pub snapshot_at: DateTime<Utc>,
    /// Version of refugio that wrote it.
    pub refugio_version: String,
    pub server: ServerInfo,
    pub pg_dump_version: String,
    /// `custom` or `plain`.
    pub dump_format: String,
    pub artifacts: Vec<Artifact>,
    /// `exact` or `estimated`.
    pub row_counts: String,
    pub tables: Vec<TableRows>,
    #[serde(default)]
    pub large_objects: i64,
    pub durations: Durations,
    /// SHA-256 of the schema listing in the snapshot (format 1.1+), compared
    /// by restore drills.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_fingerprint: Option<String>,
    /// Backups of this database that were retried (lock timeouts) before this one succeeded.
    #[serde(default)]
    pub attempts: u32,
    /// The S3 Object Lock retention set on every artifact and on this
    /// manifest (format 1.2+). Absent: the backup is not locked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_lock: Option<crate::lock::Retention>,
}

/// Facts about the source server at the snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerInfo {
    pub version: String,
    pub version_num: u32,
    pub system_identifier: Option<String>,
    pub in_recovery: bool,
    pub lsn: Option<String>,
    pub replay_lag_seconds: Option<f64>,
    pub database_size: i64,
}

/// One stored file of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// Object name inside the backup's prefix, e.g. `database.dump.zst`.
    pub name: String,
    /// `database` or `globals`.
    pub kind: String,
    /// `custom` (pg_restore archive) or `plain` (SQL).
    pub format: String,
    /// `zstd`, `gzip` or `none`.
    pub compression: String,
    /// `none` (encryption comes later).
    pub encryption: String,
    /// Bytes before compression (what pg_dump wrote).
    pub raw_size: u64,
    /// Bytes stored.
    pub stored_size: u64,
    /// SHA-256 of the stored bytes, lowercase hex.
    pub sha256: String,
}

/// Rows of one table at the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableRows {
    pub schema: String,
    pub name: String,
    pub rows: i64,
}

/// How long the parts of the backup took, seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Durations {
    pub snapshot_seconds: f64,
    pub dump_seconds: f64,
    pub globals_seconds: f64,
    pub total_seconds: f64,
}

impl Manifest {
    /// The artifact of a kind (`database`, `globals`).
    pub fn artifact(&self, kind: &str) -> Option<&Artifact> {
        self.artifacts.iter().find(|a| a.kind == kind)
    }

    /// Total stored bytes.
    pub fn stored_size(&self) -> u64 {
        self.artifacts.iter().map(|a| a.stored_size).sum()
    }

    /// Total raw bytes.
    pub fn raw_size(&self) -> u64 {
        self.artifacts.iter().map(|a| a.raw_size).sum()
    }

    /// Serialises (pretty JSON, trailing newline).
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Parses a manifest read from `key`, checking the format version first
    /// so an unknown major is reported as such rather than as a parse error.
    pub fn parse(key: &str, bytes: &[u8]) -> Result<Manifest> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| Error::InvalidManifest {
                key: key.to_string(),
                reason: format!("not JSON: {e}"),
            })?;
        let format = value
            .get("format")
            .and_then(|f| f.as_str())
            .ok_or_else(|| Error::InvalidManifest {
                key: key.to_string(),
                reason: "no \"format\" field".to_string(),
            })?;
        let major = format.split('.').next().and_then(|m| m.parse::<u32>().ok());
        if major != Some(FORMAT_MAJOR) {
            return Err(Error::UnsupportedManifest {
                key: key.to_string(),
                found: format.to_string(),
                supported: FORMAT_MAJOR,
            });
        }
        // Same major, newer minor: fields we do not know are optional
        // additions; drop them rather than fail.
        let known = if format == FORMAT {
            value
        } else {
            strip_unknown(value)
        };
        serde_json::from_value(known).map_err(|e| Error::InvalidManifest {
            key: key.to_string(),
            reason: e.to_string(),
        })
    }
}

fn strip_unknown(mut v: serde_json::Value) -> serde_json::Value {
    const TOP: &[&str] = &[
        "format",
        "job",
        "backup_id",
        "database",
        "started_at",
        "finished_at",
        "snapshot_at",
        "refugio_version",
        "server",
        "pg_dump_version",
        "dump_format",
        "artifacts",
        "row_counts",
        "tables",
        "large_objects",
        "durations",
        "attempts",
    ];
    if let Some(obj) = v.as_object_mut() {
        obj.retain(|k, _| TOP.contains(&k.as_str()));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        let t = DateTime::parse_from_rfc3339("2026-11-28T06:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        Manifest {
            format: FORMAT.into(),
            job: "trips".into(),
            backup_id: "20261128T060000Z".into(),
            database: "trips".into(),
            started_at: t,
            finished_at: t,
            snapshot_at: t,
            refugio_version: "0.1.0".into(),
            server: ServerInfo {
                version: "16.15".into(),
                version_num: 160015,
                system_identifier: Some("7312".into()),
                in_recovery: false,
                lsn: Some("0/1A2B3C".into()),
                replay_lag_seconds: None,
                database_size: 8_000_000,
            },
            pg_dump_version: "16.15".into(),
            dump_format: "custom".into(),
            artifacts: vec![Artifact {
                name: "database.dump.zst".into(),
                kind: "database".into(),
                format: "custom".into(),
                compression: "zstd".into(),
                encryption: "none".into(),
                raw_size: 100,
                stored_size: 40,
                sha256: "ab".repeat(32),
            }],
            row_counts: "exact".into(),
            tables: vec![TableRows {
                schema: "public".into(),
                name: "trips".into(),
                rows: 3,
            }],
            large_objects: 1,
            durations: Durations::default(),
            attempts: 1,
            schema_fingerprint: None,
            object_lock: None,
        }
    }

    #[test]
    fn round_trips() {
        let m = sample();
        assert_eq!(Manifest::parse("k", &m.to_json()).unwrap(), m);
    }

    #[test]
    fn rejects_unknown_major_naming_versions() {
        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
        v["format"] = "2.0".into();
        let e =
            Manifest::parse("trips/x/manifest.json", &serde_json::to_vec(&v).unwrap()).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("trips/x/manifest.json") && msg.contains("2.0") && msg.contains("1.x"),
            "{msg}"
        );
    }

    #[test]
    fn accepts_newer_minor_with_extra_fields() {
        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
        v["format"] = "1.7".into();
        v["future_field"] = 42.into();
        let m = Manifest::parse("k", &serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(m.format, "1.7");
    }

    #[test]
    fn garbage_is_invalid_not_panic() {
        assert!(matches!(
            Manifest::parse("k", b"{"),
            Err(Error::InvalidManifest { .. })
        ));
        assert!(matches!(
            Manifest::parse("k", b"{}"),
            Err(Error::InvalidManifest { .. })
        ));
    }
}
