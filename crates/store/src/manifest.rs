//! `manifest.json`: the commit point of a backup and the description of
//! what it holds. A backup exists if and only if its manifest exists.
//!
//! The `format` field is `"MAJOR.MINOR"`. Readers accept any minor of the
//! major they know (new minors only add optional fields) and reject other
//! majors with an error that names the manifest and both versions.
//!
//! Which fields are known is what the structs below say, nothing else:
//! they do not deny unknown fields; [`Manifest::parse`] deserializes
//! through `serde_ignored`, which reports each field serde's derive had no
//! place for (nested ones too, as `server.x` or `artifacts.0.x`). In a
//! newer minor those are optional additions and are dropped; in a minor
//! this build knows (up to [`FORMAT_MINOR`]) there are none, so one is an
//! error.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The largest artifact a manifest may claim (1 PiB): sizes read from a
/// repository are bounded before anything is sized from them.
pub const MAX_ARTIFACT_BYTES: u64 = 1 << 50;

/// The manifest major version this build reads and writes.
pub const FORMAT_MAJOR: u32 = 1;
/// The manifest minor version this build writes.
pub const FORMAT_MINOR: u32 = 8;
/// The manifest format written by this build: `FORMAT_MAJOR.FORMAT_MINOR`.
pub const FORMAT: &str = "1.8";
/// Object name of the manifest inside a backup's prefix.
pub const MANIFEST_NAME: &str = "manifest.json";

/// One backup, as committed.
// No `deny_unknown_fields` here or in the structs below: `parse` decides
// per format minor (see the module doc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// `"1.8"` (1.0 had no `schema_fingerprint`, 1.1 no `object_lock`,
    /// 1.2 no `data_at`, 1.3 no `encryption`, 1.4 no `databases` nor
    /// `data_excluded`, 1.5 no `archive_compression`, 1.6 no `physical`,
    /// 1.7 no `schema_fingerprint_v2`).
    pub format: String,
    pub job: String,
    pub backup_id: String,
    /// Name of the dumped database. In a whole-server backup (one with
    /// [`Manifest::databases`]): the job's database patterns, e.g. `*`.
    pub database: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// Server time of the snapshot the dump and the counts describe.
    pub snapshot_at: DateTime<Utc>,
    /// The time of the data in the snapshot (format 1.3+): `snapshot_at`
    /// on a primary, the last replayed commit on a lagging standby. The
    /// recovery point; absent in older manifests, where `snapshot_at` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_at: Option<DateTime<Utc>>,
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
    /// SHA-256 of the schema listing in the snapshot (format 1.1+), by the
    /// first algorithm (bare hex; see `refugio_dump::fingerprint`). Still
    /// written, for drills by an older refugio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_fingerprint: Option<String>,
    /// The fingerprint by the current algorithm (format 1.8+, `v2:<hex>`),
    /// which leaves out what pg_dump cannot keep; drills compare it when
    /// present, else `schema_fingerprint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_fingerprint_v2: Option<String>,
    /// Backups of this database that were retried (lock timeouts) before this one succeeded.
    #[serde(default)]
    pub attempts: u32,
    /// The S3 Object Lock retention set on every artifact and on this
    /// manifest (format 1.2+). Absent: the backup is not locked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_lock: Option<crate::lock::Retention>,
    /// How the artifacts are encrypted (format 1.4+). Absent: they are not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    /// A whole-server backup (format 1.5+): one entry per database, each
    /// dumped in its own snapshot into its own artifact, plus the globals
    /// once. Then the top-level `tables`, `large_objects` and
    /// `schema_fingerprint` are empty, `snapshot_at` is the first
    /// database's snapshot and `data_at` the oldest database's data.
    /// Empty: a one-database backup, described by the top-level fields.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<DatabaseDump>,
    /// A physical base backup of the whole cluster (format 1.7+, a job of
    /// `kind = "physical"`): `pg_basebackup`'s tar in one artifact of kind
    /// `base`, restored with WAL from the job's archive. Then `database`
    /// is `*`, `dump_format` is `tar`, `pg_dump_version` is
    /// pg_basebackup's version, `row_counts` is `none` and `tables` is
    /// empty. Absent: a logical (pg_dump) backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical: Option<Physical>,
}

/// What a physical base backup needs from the WAL archive, and what it
/// is (format 1.7+).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Physical {
    /// The timeline the backup started on (`START TIMELINE`).
    pub timeline: u32,
    /// Where replay starts (`START WAL LOCATION`), `X/Y`.
    pub start_lsn: String,
    /// Where the backup ended (the `backup_manifest`'s End-LSN): replay
    /// must reach it before the cluster is consistent, `X/Y`.
    pub stop_lsn: String,
    /// `START TIME` of the label (the server's clock).
    pub start_time: DateTime<Utc>,
    /// The server's `wal_segment_size`, bytes.
    pub wal_segment_size: u64,
    /// `primary` or `standby` (`BACKUP FROM`).
    pub from: String,
    /// The `backup_label` file as the server wrote it.
    pub backup_label: String,
    /// The server's `backup_manifest`, stored beside the tar as its own
    /// artifact of this name (it is in the tar too); None when the server
    /// wrote none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_manifest: Option<String>,
}

/// One database of a whole-server backup, as its own snapshot saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatabaseDump {
    /// The database's name (any characters PostgreSQL allows).
    pub name: String,
    /// Name of its artifact in [`Manifest::artifacts`].
    pub artifact: String,
    /// Server time of this database's snapshot.
    pub snapshot_at: DateTime<Utc>,
    /// The time of this database's data (see [`Manifest::data_at`]).
    pub data_at: DateTime<Utc>,
    /// `pg_database_size` at the snapshot, bytes.
    pub database_size: i64,
    /// WAL position of the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsn: Option<String>,
    /// `exact` or `estimated`.
    pub row_counts: String,
    pub tables: Vec<TableRows>,
    pub large_objects: i64,
    pub schema_fingerprint: Option<String>,
    /// See [`Manifest::schema_fingerprint_v2`] (format 1.8+).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_fingerprint_v2: Option<String>,
    /// Seconds spent dumping it.
    pub dump_seconds: f64,
}

/// What a restore or a drill takes from one database of a backup: the
/// top-level fields of a one-database backup, or an entry of
/// [`Manifest::databases`].
#[derive(Debug, Clone, PartialEq)]
pub struct DumpUnit<'a> {
    pub database: &'a str,
    pub artifact: &'a Artifact,
    pub row_counts: &'a str,
    pub tables: &'a [TableRows],
    pub large_objects: i64,
    pub schema_fingerprint: Option<&'a str>,
    pub schema_fingerprint_v2: Option<&'a str>,
}

/// Client-side encryption of a backup's artifacts. Only public facts: the
/// manifest stays readable without any key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encryption {
    /// `age` (age-encryption.org/v1).
    pub scheme: String,
    /// The public keys (`age1…`) the artifacts are encrypted to; any one
    /// of their identities decrypts them.
    pub recipients: Vec<String>,
}

/// Facts about the source server at the snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
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
pub struct Artifact {
    /// Object name inside the backup's prefix, e.g. `database.dump.zst`.
    pub name: String,
    /// `database` or `globals`.
    pub kind: String,
    /// `custom` (pg_restore archive) or `plain` (SQL).
    pub format: String,
    /// How the stored stream is compressed, by refugio: `zstd`, `gzip` or
    /// `none` (then it is stored as the tool wrote it).
    pub compression: String,
    /// Compression inside a custom archive, by pg_dump itself
    /// (`--compress`, e.g. `zstd:3`; format 1.6+): a bare `pg_restore`
    /// reads it. Absent: the archive is uncompressed inside
    /// (`--compress=0`), and `compression` is all there is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_compression: Option<String>,
    /// `none`, or `age` (then the name ends in `.age` and the manifest's
    /// `encryption` says to whom).
    pub encryption: String,
    /// Bytes the tool wrote, before refugio's compression (with
    /// `archive_compression`, the archive as pg_dump compressed it).
    pub raw_size: u64,
    /// Bytes stored.
    pub stored_size: u64,
    /// SHA-256 of the stored bytes, lowercase hex.
    pub sha256: String,
}

/// Rows of one table at the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableRows {
    pub schema: String,
    pub name: String,
    /// 0 when the data is excluded.
    pub rows: i64,
    /// Its definition is dumped, its rows are not (`exclude_table_data`,
    /// format 1.5+): drills do not count it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub data_excluded: bool,
}

/// How long the parts of the backup took, seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Durations {
    pub snapshot_seconds: f64,
    pub dump_seconds: f64,
    pub globals_seconds: f64,
    pub total_seconds: f64,
}

impl Manifest {
    /// The backup's recovery point: the time of its data ([`Manifest::data_at`],
    /// or `snapshot_at` in manifests older than 1.3).
    pub fn recovery_point(&self) -> DateTime<Utc> {
        // The data is never newer than the snapshot that holds it.
        self.data_at
            .map_or(self.snapshot_at, |d| d.min(self.snapshot_at))
    }

    /// The artifact of a kind (`database`, `globals`).
    pub fn artifact(&self, kind: &str) -> Option<&Artifact> {
        self.artifacts.iter().find(|a| a.kind == kind)
    }

    /// When the backup was taken by the source server's clock, which
    /// orders backups (a writer host's clock, in the id, may be wrong):
    /// the snapshot's time, or a base backup's `START TIME`.
    pub fn server_time(&self) -> DateTime<Utc> {
        self.physical
            .as_ref()
            .map_or(self.snapshot_at, |p| p.start_time)
    }

    /// A base backup is consistent once replay reaches its stop LSN: at
    /// the latest its `START TIME` (the server's clock) plus how long
    /// pg_basebackup ran (the writer's monotonic clock), so no wall clock
    /// of the writer host is involved. Other backups: [`Manifest::server_time`].
    pub fn consistent_at(&self) -> DateTime<Utc> {
        match &self.physical {
            Some(p) => {
                let ran = chrono::Duration::milliseconds(
                    (self.durations.dump_seconds.max(0.0) * 1000.0) as i64,
                );
                p.start_time + ran
            }
            None => self.server_time(),
        }
    }

    /// Whether its id (the writer's clock) or its server time is later
    /// than `horizon`: dated in the future.
    pub fn dated_after(&self, horizon: DateTime<Utc>) -> bool {
        crate::layout::id_time(&self.backup_id).is_some_and(|t| t > horizon)
            || self.server_time() > horizon
    }

    /// Order of two backups by server time, then id (oldest first).
    pub fn cmp_time(&self, other: &Manifest) -> std::cmp::Ordering {
        self.server_time()
            .cmp(&other.server_time())
            .then_with(|| self.backup_id.cmp(&other.backup_id))
    }

    /// Whether this is a physical base backup.
    pub fn is_physical(&self) -> bool {
        self.physical.is_some()
    }

    /// Whether this is a whole-server backup (one artifact per database).
    pub fn is_server(&self) -> bool {
        !self.databases.is_empty()
    }

    /// The dumped databases, in the manifest's order; a one-database
    /// backup has one. A listed artifact that is missing is an error
    /// naming it.
    pub fn units(&self) -> Result<Vec<DumpUnit<'_>>> {
        let missing = |what: &str| Error::InvalidManifest {
            key: format!("{}/{}/{MANIFEST_NAME}", self.job, self.backup_id),
            reason: format!("no artifact {what}"),
        };
        if self.databases.is_empty() {
            let artifact = self
                .artifact("database")
                .ok_or_else(|| missing("of kind \"database\""))?;
            return Ok(vec![DumpUnit {
                database: &self.database,
                artifact,
                row_counts: &self.row_counts,
                tables: &self.tables,
                large_objects: self.large_objects,
                schema_fingerprint: self.schema_fingerprint.as_deref(),
                schema_fingerprint_v2: self.schema_fingerprint_v2.as_deref(),
            }]);
        }
        self.databases
            .iter()
            .map(|d| {
                let artifact = self
                    .artifacts
                    .iter()
                    .find(|a| a.name == d.artifact)
                    .ok_or_else(|| missing(&format!("{:?} (database {:?})", d.artifact, d.name)))?;
                Ok(DumpUnit {
                    database: &d.name,
                    artifact,
                    row_counts: &d.row_counts,
                    tables: &d.tables,
                    large_objects: d.large_objects,
                    schema_fingerprint: d.schema_fingerprint.as_deref(),
                    schema_fingerprint_v2: d.schema_fingerprint_v2.as_deref(),
                })
            })
            .collect()
    }

    /// The names of the dumped databases.
    pub fn database_names(&self) -> Vec<&str> {
        if self.databases.is_empty() {
            vec![self.database.as_str()]
        } else {
            self.databases.iter().map(|d| d.name.as_str()).collect()
        }
    }

    /// A whole-server backup's stored bytes per database, in order;
    /// empty for a one-database backup.
    pub fn database_sizes(&self) -> Vec<(&str, u64)> {
        self.databases
            .iter()
            .map(|d| {
                let stored = self
                    .artifacts
                    .iter()
                    .find(|a| a.name == d.artifact)
                    .map_or(0, |a| a.stored_size);
                (d.name.as_str(), stored)
            })
            .collect()
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
        let (major, minor) = match format.split_once('.') {
            Some((major, minor)) => (major.parse::<u32>().ok(), minor.parse::<u32>().ok()),
            None => (format.parse::<u32>().ok(), None),
        };
        if major != Some(FORMAT_MAJOR) {
            return Err(Error::UnsupportedManifest {
                key: key.to_string(),
                found: format.to_string(),
                supported: FORMAT_MAJOR,
            });
        }
        let Some(minor) = minor else {
            return Err(Error::InvalidManifest {
                key: key.to_string(),
                reason: format!("format {format:?} is not MAJOR.MINOR"),
            });
        };
        let format = format.to_string();
        let mut unknown = Vec::new();
        let manifest: Manifest =
            serde_ignored::deserialize(value, |path| unknown.push(path.to_string())).map_err(
                |e| Error::InvalidManifest {
                    key: key.to_string(),
                    reason: e.to_string(),
                },
            )?;
        if !unknown.is_empty() {
            if minor <= FORMAT_MINOR {
                return Err(Error::InvalidManifest {
                    key: key.to_string(),
                    reason: format!(
                        "unknown field(s) for format {format}: {}",
                        unknown.join(", ")
                    ),
                });
            }
            // A newer minor's optional additions: this build has no use for them.
            tracing::debug!(key, format, fields = %unknown.join(", "), "manifest-fields-dropped");
        }
        manifest
            .validate()
            .map_err(|reason| Error::InvalidManifest {
                key: key.to_string(),
                reason,
            })?;
        Ok(manifest)
    }

    /// What a manifest read from a repository must hold before any of it
    /// is used: artifact names that are one key segment each (no `/`, no
    /// `..`), unique, never the manifest's own name; sizes within
    /// [`MAX_ARTIFACT_BYTES`]; digests of 64 hex digits; database names as
    /// PostgreSQL allows them, each naming one of the artifacts.
    fn validate(&self) -> std::result::Result<(), String> {
        let mut names = std::collections::HashSet::new();
        for a in &self.artifacts {
            if !crate::layout::valid_segment(&a.name) || a.name == "manifest.json" {
                return Err(format!(
                    "artifact name {:?} is not a plain object name",
                    a.name.chars().take(80).collect::<String>()
                ));
            }
            if !names.insert(a.name.as_str()) {
                return Err(format!("artifact {} is named twice", a.name));
            }
            if a.stored_size > MAX_ARTIFACT_BYTES || a.raw_size > MAX_ARTIFACT_BYTES {
                return Err(format!(
                    "artifact {} claims {} stored / {} raw bytes, more than {MAX_ARTIFACT_BYTES}",
                    a.name, a.stored_size, a.raw_size
                ));
            }
            if a.sha256.len() != 64 || !a.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("artifact {}: sha256 is not 64 hex digits", a.name));
            }
        }
        for d in &self.databases {
            if d.name.is_empty() || d.name.len() > 63 || d.name.contains('\0') {
                return Err(format!(
                    "database name {:?} is not one PostgreSQL allows (1 to 63 bytes, no NUL)",
                    d.name.chars().take(80).collect::<String>()
                ));
            }
            if !names.contains(d.artifact.as_str()) {
                return Err(format!(
                    "database {:?} names artifact {:?}, which the manifest does not list",
                    d.name, d.artifact
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_and_future_come_from_the_server_clock() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let early = sample();
        // Taken later, by a host whose clock was an hour behind.
        let mut late = sample();
        late.backup_id = "20261128T051000Z".into();
        late.snapshot_at = at("2026-11-28T06:10:00Z");
        assert_eq!(late.cmp_time(&early), std::cmp::Ordering::Greater);
        let horizon = at("2026-11-28T06:15:00Z");
        assert!(!late.dated_after(horizon));
        let mut future = sample();
        future.backup_id = "29991231T000000Z".into();
        assert!(future.dated_after(horizon), "by its id");
        let mut server_ahead = sample();
        server_ahead.snapshot_at = at("2026-11-28T07:00:00Z");
        assert!(server_ahead.dated_after(horizon), "by its server time");
        // A base backup: START TIME plus how long pg_basebackup ran.
        let mut base = sample();
        base.finished_at = at("2030-01-01T00:00:00Z");
        base.durations.dump_seconds = 90.0;
        base.physical = Some(Physical {
            timeline: 1,
            start_lsn: "0/2000028".into(),
            stop_lsn: "0/2000100".into(),
            start_time: at("2026-11-28T06:00:05Z"),
            wal_segment_size: 16 << 20,
            from: "primary".into(),
            backup_label: String::new(),
            backup_manifest: None,
        });
        assert_eq!(base.server_time(), at("2026-11-28T06:00:05Z"));
        assert_eq!(base.consistent_at(), at("2026-11-28T06:01:35Z"));
    }

    /// The horizon itself is not the future (only later is), by the id and
    /// by the server time alike.
    #[test]
    fn a_backup_dated_at_the_horizon_is_not_in_the_future() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let horizon = at("2026-11-28T06:00:00Z");
        let mut by_id = sample();
        by_id.snapshot_at = at("2026-11-28T05:59:00Z");
        assert!(!by_id.dated_after(horizon), "id exactly at the horizon");
        assert!(by_id.dated_after(at("2026-11-28T05:59:59Z")));
        let mut by_server = sample();
        by_server.backup_id = "20261128T055900Z".into();
        assert!(
            !by_server.dated_after(horizon),
            "server time exactly at the horizon"
        );
        assert!(by_server.dated_after(at("2026-11-28T05:59:59Z")));
    }

    /// What a manifest says of its kind and its databases, for fixtures of
    /// each kind: a single database, a whole server, a base backup.
    #[test]
    fn kinds_and_database_names_come_from_the_manifest() {
        let fixture = |v: &str| {
            let path = format!(
                "{}/tests/fixtures/manifest-{v}.json",
                env!("CARGO_MANIFEST_DIR")
            );
            Manifest::parse("k", &std::fs::read(&path).unwrap()).unwrap()
        };
        let single = sample();
        assert_eq!(single.database_names(), ["trips"]);
        assert!(!single.is_physical() && !single.is_server());
        let server = fixture("1.8");
        assert_eq!(server.database_names(), ["app", "café trips ñ"]);
        assert!(server.is_server() && !server.is_physical());
        let base = fixture("1.7");
        assert!(base.is_physical());
    }

    /// Sizes add up from the artifacts: the totals and, for a whole-server
    /// backup, each database's own artifact.
    #[test]
    fn sizes_add_up_from_the_artifacts() {
        let path = format!(
            "{}/tests/fixtures/manifest-1.8.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let bytes = std::fs::read(&path).unwrap();
        let m = Manifest::parse("k", &bytes).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let arts = v["artifacts"].as_array().unwrap();
        let sum = |f: &str| arts.iter().map(|a| a[f].as_u64().unwrap()).sum::<u64>();
        assert_eq!(m.stored_size(), sum("stored_size"));
        assert_eq!(m.raw_size(), sum("raw_size"));
        assert!(m.stored_size() != m.raw_size() && m.stored_size() > 1);
        let expected: Vec<(String, u64)> = v["databases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                let art = arts.iter().find(|a| a["name"] == d["artifact"]).unwrap();
                (
                    d["name"].as_str().unwrap().to_string(),
                    art["stored_size"].as_u64().unwrap(),
                )
            })
            .collect();
        let got: Vec<(String, u64)> = m
            .database_sizes()
            .into_iter()
            .map(|(n, s)| (n.to_string(), s))
            .collect();
        assert_eq!(got, expected);
        assert!(expected.iter().all(|(_, s)| *s > 1), "{expected:?}");
        assert!(sample().database_sizes().is_empty());
    }

    /// The bounds of `validate` hold at their edges: the largest size and
    /// the longest database name are accepted, one more is not, for stored
    /// and raw sizes alike.
    #[test]
    fn validation_bounds_hold_at_their_edges() {
        let mut m = sample();
        m.artifacts[0].stored_size = MAX_ARTIFACT_BYTES;
        m.artifacts[0].raw_size = MAX_ARTIFACT_BYTES;
        assert_eq!(m.validate(), Ok(()));
        m.artifacts[0].stored_size = MAX_ARTIFACT_BYTES + 1;
        assert!(m.validate().is_err(), "stored size over the bound");
        m.artifacts[0].stored_size = 1;
        m.artifacts[0].raw_size = MAX_ARTIFACT_BYTES + 1;
        assert!(m.validate().is_err(), "raw size over the bound");
        m.artifacts[0].raw_size = 1;
        // A digest must be both 64 long and hex.
        m.artifacts[0].sha256 = format!("{}g", "a".repeat(63));
        assert!(m.validate().is_err(), "64 characters, one not hex");
        m.artifacts[0].sha256 = "a".repeat(62);
        assert!(m.validate().is_err(), "hex, 62 long");
        m.artifacts[0].sha256 = "a".repeat(64);
        assert_eq!(m.validate(), Ok(()));
        let path = format!(
            "{}/tests/fixtures/manifest-1.8.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let mut s = Manifest::parse("k", &std::fs::read(&path).unwrap()).unwrap();
        s.databases[0].name = "d".repeat(63);
        assert_eq!(
            s.validate(),
            Ok(()),
            "63 bytes is PostgreSQL's longest name"
        );
        s.databases[0].name = "d".repeat(64);
        assert!(s.validate().is_err(), "64 bytes is too long");
    }

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
            data_at: Some(t),
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
                archive_compression: None,
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
                data_excluded: false,
            }],
            large_objects: 1,
            durations: Durations::default(),
            attempts: 1,
            schema_fingerprint: None,
            schema_fingerprint_v2: None,
            object_lock: None,
            encryption: None,
            databases: Vec::new(),
            physical: None,
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

    /// Every optional field set, so that dropping one shows.
    fn full() -> Manifest {
        let mut m = sample();
        m.schema_fingerprint = Some("cd".repeat(32));
        m.schema_fingerprint_v2 = Some(format!("v2:{}", "ef".repeat(32)));
        m.object_lock = Some(crate::lock::Retention {
            mode: crate::lock::LockMode::Governance,
            until: m.finished_at + chrono::Duration::days(30),
        });
        m.tables[0].data_excluded = true;
        m.databases = vec![DatabaseDump {
            name: "café trips".into(),
            artifact: "database.dump.zst".into(),
            snapshot_at: m.snapshot_at,
            data_at: m.snapshot_at,
            database_size: 1,
            lsn: Some("0/1".into()),
            row_counts: "exact".into(),
            tables: m.tables.clone(),
            large_objects: 0,
            schema_fingerprint: None,
            schema_fingerprint_v2: Some(format!("v2:{}", "01".repeat(32))),
            dump_seconds: 0.5,
        }];
        m
    }

    #[test]
    fn units_name_a_missing_artifact() {
        let mut m = full();
        assert_eq!(m.units().unwrap()[0].database, "café trips");
        m.databases[0].artifact = "gone.dump.zst".into();
        let e = m.units().unwrap_err().to_string();
        assert!(
            e.contains("gone.dump.zst") && e.contains("café trips"),
            "{e}"
        );
        m.databases.clear();
        assert_eq!(m.units().unwrap()[0].database, "trips");
    }

    #[test]
    fn newer_minor_keeps_every_known_field_and_drops_unknown_ones_at_any_depth() {
        let mut v: serde_json::Value = serde_json::from_slice(&full().to_json()).unwrap();
        let newer = format!("{FORMAT_MAJOR}.{}", FORMAT_MINOR + 1);
        v["format"] = newer.clone().into();
        v["future_field"] = 42.into();
        v["server"]["future_field"] = true.into();
        v["artifacts"][0]["future_field"] = "x".into();
        v["tables"][0]["future_field"] = 1.into();
        v["durations"]["future_field"] = 0.5.into();
        v["object_lock"]["future_field"] = "legal-hold".into();
        let m = Manifest::parse("k", &serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(m.format, newer);
        assert_eq!(
            Manifest {
                format: FORMAT.into(),
                ..m
            },
            full()
        );
    }

    #[test]
    fn known_minor_with_an_unknown_field_is_invalid_naming_it() {
        for minor in 0..=FORMAT_MINOR {
            let mut v: serde_json::Value = serde_json::from_slice(&full().to_json()).unwrap();
            v["format"] = format!("1.{minor}").into();
            v["artifacts"][0]["typo"] = 1.into();
            let e = Manifest::parse("trips/x/manifest.json", &serde_json::to_vec(&v).unwrap())
                .unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, Error::InvalidManifest { .. }), "{msg}");
            assert!(
                msg.contains("trips/x/manifest.json") && msg.contains("artifacts.0.typo"),
                "{msg}"
            );
        }
    }

    #[test]
    fn format_must_be_major_dot_minor() {
        for format in ["1", "1.", "1.x", "1.2.3"] {
            let mut v: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
            v["format"] = format.into();
            let e = Manifest::parse("k", &serde_json::to_vec(&v).unwrap()).unwrap_err();
            assert!(matches!(e, Error::InvalidManifest { .. }), "{format}: {e}");
        }
    }

    #[test]
    fn format_constants_agree() {
        assert_eq!(FORMAT, format!("{FORMAT_MAJOR}.{FORMAT_MINOR}"));
    }

    #[test]
    fn hostile_names_and_sizes_are_invalid_naming_what() {
        type Edit = fn(&mut Manifest);
        let cases: [(Edit, &str); 7] = [
            (
                |m| m.artifacts[0].name = "../../etc/passwd".into(),
                "not a plain object name",
            ),
            (
                |m| m.artifacts[0].name = "a/b".into(),
                "not a plain object name",
            ),
            (
                |m| m.artifacts[0].name = "manifest.json".into(),
                "not a plain object name",
            ),
            (|m| m.artifacts[0].stored_size = u64::MAX, "more than"),
            (|m| m.artifacts[0].sha256 = "zz".into(), "64 hex digits"),
            (
                |m| {
                    let a = m.artifacts[0].clone();
                    m.artifacts.push(a)
                },
                "named twice",
            ),
            (
                |m| {
                    m.databases.push(DatabaseDump {
                        name: "x".repeat(64),
                        artifact: m.artifacts[0].name.clone(),
                        snapshot_at: m.snapshot_at,
                        data_at: m.snapshot_at,
                        database_size: 1,
                        lsn: None,
                        row_counts: "exact".into(),
                        tables: Vec::new(),
                        large_objects: 0,
                        schema_fingerprint: None,
                        schema_fingerprint_v2: None,
                        dump_seconds: 0.0,
                    })
                },
                "1 to 63 bytes",
            ),
        ];
        let good = sample();
        assert!(Manifest::parse("k", &good.to_json()).is_ok());
        for (edit, expected) in cases {
            let mut m = sample();
            edit(&mut m);
            let e = Manifest::parse("k", &m.to_json()).unwrap_err();
            assert!(
                matches!(e, Error::InvalidManifest { .. }) && e.to_string().contains(expected),
                "{expected}: {e}"
            );
        }
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
