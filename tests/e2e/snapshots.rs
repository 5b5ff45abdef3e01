//! Snapshots (insta) of what machines read: `list --json`, `prune --dry-run
//! --json`, manifest.json, drill receipts and the agent's `/metrics`. They
//! pin field names and order, decisions, artifact and table names, label
//! sets and HELP text, so moving the commands into a library cannot change
//! them unnoticed.
//!
//! `list` and `prune` read a repository of hand-written files (fixed ids,
//! times, sizes, digests and file times; prune decides at a fixed `--now`),
//! so their output is pinned byte for byte. The manifest, the receipt and
//! the metrics come from real runs against PostgreSQL 16; what differs
//! between runs (times, durations, sizes, digests, versions, ids) is
//! redacted, each redaction checking the shape of what it hides.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, ensure, Context, Result};
use chrono::{DateTime, Utc};
use insta::internals::{Content, ContentPath, Redaction};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use refugio_testkit::Cluster;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::common::*;

/// JSON that keeps the key order of its objects (serde_json's `Value`
/// sorts keys in this build), so a snapshot pins the order fields are
/// written in, not just their names.
#[derive(Debug, Clone)]
enum Json {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    fn parse(text: &str) -> Result<Json> {
        Ok(serde_json::from_str(text)?)
    }
}

impl serde::Serialize for Json {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self {
            Json::Null => s.serialize_unit(),
            Json::Bool(b) => s.serialize_bool(*b),
            Json::Number(n) => n.serialize(s),
            Json::String(v) => s.serialize_str(v),
            Json::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for i in items {
                    seq.serialize_element(i)?;
                }
                seq.end()
            }
            Json::Object(fields) => {
                let mut map = s.serialize_map(Some(fields.len()))?;
                for (k, v) in fields {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> serde::Deserialize<'de> for Json {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Json, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Json;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_unit<E>(self) -> std::result::Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_bool<E>(self, b: bool) -> std::result::Result<Json, E> {
                Ok(Json::Bool(b))
            }
            fn visit_i64<E>(self, n: i64) -> std::result::Result<Json, E> {
                Ok(Json::Number(n.into()))
            }
            fn visit_u64<E>(self, n: u64) -> std::result::Result<Json, E> {
                Ok(Json::Number(n.into()))
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> std::result::Result<Json, E> {
                serde_json::Number::from_f64(n)
                    .map(Json::Number)
                    .ok_or_else(|| E::custom("not a finite number"))
            }
            fn visit_str<E>(self, v: &str) -> std::result::Result<Json, E> {
                Ok(Json::String(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Json, A::Error> {
                let mut items = Vec::new();
                while let Some(i) = seq.next_element()? {
                    items.push(i);
                }
                Ok(Json::Array(items))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Json, A::Error> {
                let mut fields = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    fields.push(entry);
                }
                Ok(Json::Object(fields))
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------
// Redactions that check what they hide: a value of the wrong shape (a time
// that is no longer RFC 3339, a digest that is not SHA-256 hex, a size that
// became a string) fails the test instead of disappearing behind the
// placeholder.

fn check(what: &'static str, ok: impl Fn(&Content) -> bool + Send + Sync + 'static) -> Redaction {
    insta::dynamic_redaction(move |value: Content, path: ContentPath<'_>| {
        assert!(ok(&value), "{path}: {value:?} is not {what}");
        format!("[{what}]")
    })
}

fn text(c: &Content) -> Option<&str> {
    c.resolve_inner().as_str()
}

fn number(c: &Content) -> Option<f64> {
    let c = c.resolve_inner();
    c.as_f64()
        .or_else(|| c.as_u64().map(|n| n as f64))
        .or_else(|| c.as_i64().map(|n| n as f64))
}

/// An RFC 3339 time.
fn time() -> Redaction {
    check("time", |c| {
        text(c).is_some_and(|s| DateTime::parse_from_rfc3339(s).is_ok())
    })
}

/// A backup id: the UTC start time, `20261128T060000Z`.
fn backup_id() -> Redaction {
    check("backup_id", |c| text(c).is_some_and(is_backup_id))
}

fn is_backup_id(s: &str) -> bool {
    chrono::NaiveDateTime::parse_from_str(s, "%Y%m%dT%H%M%SZ")
        .is_ok_and(|t| refugio_store::repo::backup_id(t.and_utc(), 1) == s)
}

/// Lowercase SHA-256 hex.
fn sha256() -> Redaction {
    check("sha256", |c| {
        text(c).is_some_and(|s| {
            s.len() == 64
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
    })
}

/// A whole number of bytes, more than zero.
fn bytes() -> Redaction {
    check("bytes", |c| {
        c.resolve_inner().as_u64().is_some_and(|n| n > 0)
    })
}

/// Seconds: a number, not negative.
fn seconds() -> Redaction {
    check("seconds", |c| number(c).is_some_and(|n| n >= 0.0))
}

/// This build's version (`CARGO_PKG_VERSION`).
fn this_version() -> Redaction {
    check("version", |c| text(c) == Some(env!("CARGO_PKG_VERSION")))
}

/// `16.4`, or a packager's `16.4 (Debian 16.4-1)`.
fn is_pg16_version(s: &str) -> bool {
    let version = s.split(' ').next().unwrap_or_default();
    version
        .strip_prefix("16.")
        .is_some_and(|minor| minor.parse::<u32>().is_ok())
}

/// A PostgreSQL 16 version: `16.4`.
fn pg16_version() -> Redaction {
    check("pg16 version", |c| text(c).is_some_and(is_pg16_version))
}

/// A tool and its PostgreSQL 16 version, `pg_restore 16.4`: the name stays.
fn tool_version() -> Redaction {
    insta::dynamic_redaction(|value: Content, path: ContentPath<'_>| {
        let tool = text(&value)
            .and_then(|s| s.split_once(' '))
            .filter(|(_, v)| is_pg16_version(v))
            .map(|(tool, _)| tool.to_string());
        match tool {
            Some(tool) => format!("{tool} [pg16 version]"),
            None => panic!("{path}: {value:?} is not a tool and its version"),
        }
    })
}

// ---------------------------------------------------------------------------
// A fixed repository: every byte, id, time and file time written here.

/// The time `prune --now` decides at.
const NOW: &str = "2026-11-28T12:00:00Z";

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn id_at(id: &str) -> DateTime<Utc> {
    chrono::NaiveDateTime::parse_from_str(&id[..16], "%Y%m%dT%H%M%SZ")
        .map(|t| t.and_utc())
        .unwrap_or_else(|e| panic!("{id}: {e}"))
}

/// Writes `key` under `root` with modification time `mtime` (prune's grace
/// periods read file times).
fn put(root: &Path, key: &str, body: &[u8], mtime: DateTime<Utc>) -> Result<()> {
    let path = root.join(key);
    std::fs::create_dir_all(path.parent().context("parent")?)?;
    std::fs::write(&path, body)?;
    let when = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(mtime.timestamp())?);
    std::fs::File::options()
        .write(true)
        .open(&path)?
        .set_modified(when)?;
    Ok(())
}

fn put_json(root: &Path, key: &str, v: &Value, mtime: DateTime<Utc>) -> Result<()> {
    let mut body = serde_json::to_vec_pretty(v)?;
    body.push(b'\n');
    put(root, key, &body, mtime)
}

/// Fixed artifact bytes; the manifest records their real size and digest.
fn artifact_body(job: &str, id: &str, name: &str) -> Vec<u8> {
    format!("fixture {job}/{id}/{name}\n").into_bytes()
}

fn sha_hex(b: &[u8]) -> String {
    format!("{:x}", Sha256::digest(b))
}

const FINGERPRINT: &str = "5f1d2c3b4a5968778695a4b3c2d1e0f00112233445566778899aabbccddeeff0";

/// A committed backup: artifacts, then its manifest (format 1.2, or 1.0
/// as written by older refugio: no `schema_fingerprint`).
fn backup(root: &Path, job: &str, id: &str, format: &str) -> Result<()> {
    let start = id_at(id);
    let mut artifacts = Vec::new();
    for (name, kind, fmt, raw) in [
        ("database.dump.zst", "database", "custom", 1_048_576u64),
        ("globals.sql.zst", "globals", "plain", 2_048),
    ] {
        let body = artifact_body(job, id, name);
        put(
            root,
            &format!("{job}/{id}/{name}"),
            &body,
            start + chrono::Duration::seconds(30),
        )?;
        artifacts.push(json!({
            "name": name, "kind": kind, "format": fmt, "compression": "zstd",
            "encryption": "none", "raw_size": raw, "stored_size": body.len(),
            "sha256": sha_hex(&body),
        }));
    }
    let mut m = json!({
        "format": format,
        "job": job,
        "backup_id": id,
        "database": job,
        "started_at": start,
        "finished_at": start + chrono::Duration::seconds(42),
        "snapshot_at": start + chrono::Duration::seconds(1),
        "refugio_version": "0.1.0",
        "server": {
            "version": "16.4", "version_num": 160004,
            "system_identifier": "7441873429151234567", "in_recovery": false,
            "lsn": "0/3000028", "replay_lag_seconds": null, "database_size": 7_654_321,
        },
        "pg_dump_version": "16.4",
        "dump_format": "custom",
        "artifacts": artifacts,
        "row_counts": "exact",
        "tables": [
            { "schema": "public", "name": "riders", "rows": 3 },
            { "schema": "public", "name": "trips", "rows": 120 },
        ],
        "large_objects": 2,
        "durations": {
            "snapshot_seconds": 0.25, "dump_seconds": 38.5,
            "globals_seconds": 1.25, "total_seconds": 42.0,
        },
        "attempts": 1,
    });
    if format != "1.0" {
        m["schema_fingerprint"] = FINGERPRINT.into();
    }
    put_json(
        root,
        &format!("{job}/{id}/manifest.json"),
        &m,
        start + chrono::Duration::seconds(42),
    )
}

/// How a fixed drill went.
#[derive(Clone, Copy, PartialEq)]
enum Drill {
    /// Restored and checked, targets met.
    Passed,
    /// Restored and checked, but the RTO target was missed.
    Slow,
    /// A table's count differed.
    Failed,
    /// Passed, in a receipt named without its outcome (refugio < 0.2).
    LegacyPassed,
}

/// A drill receipt of backup `id` started at `start`, named as refugio
/// names it: `verify-<time>-ok.json`, `-failed.json`, or `verify-<time>.json`.
fn receipt(root: &Path, job: &str, id: &str, start: &str, drill: Drill) -> Result<()> {
    let start = at(start);
    let verified = drill != Drill::Failed;
    let passed = matches!(drill, Drill::Passed | Drill::LegacyPassed);
    let rto = if drill == Drill::Slow { 9000.5 } else { 95.25 };
    let rpo = (start - id_at(id)).num_seconds() as f64 - 1.0;
    let trips_actual = if drill == Drill::Failed { 119 } else { 120 };
    let failures: &[&str] = match drill {
        Drill::Failed => &["table public.trips: 119 rows restored, the manifest says 120"],
        Drill::Slow => &["RTO 9000.5 s exceeds the target of 7200 s"],
        Drill::Passed | Drill::LegacyPassed => &[],
    };
    let r = json!({
        "format": "1.0",
        "job": job,
        "backup_id": id,
        "started_at": start,
        "finished_at": start + chrono::Duration::milliseconds((rto * 1000.0) as i64),
        "verified": verified,
        "passed": passed,
        "failures": failures,
        "refugio_version": "0.1.0",
        "scratch_kind": "server",
        "scratch_server_version": "16.4",
        "restore_tool": "pg_restore 16.4",
        "digests_checked": [
            ["database.dump.zst", sha_hex(&artifact_body(job, id, "database.dump.zst"))],
        ],
        "counts": [
            { "table": "public.riders", "expected": 3, "actual": 3, "ok": true },
            { "table": "public.trips", "expected": 120, "actual": trips_actual, "ok": trips_actual == 120 },
        ],
        "large_objects": [2, 2],
        "schema_fingerprint": [FINGERPRINT, FINGERPRINT],
        "checks": [
            { "sql": "SELECT count(*) > 0 FROM trips", "ok": true, "detail": "true" },
        ],
        "phases": { "fetch_restore_seconds": rto - 5.0, "analyze_seconds": 3.5, "checks_seconds": 1.5 },
        "rto": { "measured_seconds": rto, "target_seconds": 7200.0, "met": drill != Drill::Slow },
        "rpo": { "measured_seconds": rpo, "target_seconds": 21600.0, "met": rpo <= 21600.0 },
        "rpo_detail": {
            "seconds": rpo, "newest_verified": id, "largest_gap_seconds": null,
            "largest_gap_between": null, "verified_backups": 1,
        },
    });
    let stamp = start.format("%Y%m%dT%H%M%S%.3fZ");
    let name = match drill {
        Drill::LegacyPassed => format!("verify-{stamp}.json"),
        Drill::Failed => format!("verify-{stamp}-failed.json"),
        Drill::Passed | Drill::Slow => format!("verify-{stamp}-ok.json"),
    };
    put_json(root, &format!("{job}/{id}/{name}"), &r, start)
}

/// Job `trips`, newest first: a backup in every state prune tells apart,
/// with the drills each had (start time, outcome).
const TRIPS: &[(&str, &[(&str, Drill)])] = &[
    // No drill yet, newer than the newest verified: awaiting its drill.
    ("20261128T060000Z", &[]),
    (
        "20261128T000000Z",
        &[("2026-11-28T00:30:00Z", Drill::Passed)],
    ),
    // Its drill failed: it never counts.
    (
        "20261127T180000Z",
        &[("2026-11-27T18:30:00Z", Drill::Failed)],
    ),
    (
        "20261127T120000Z",
        &[("2026-11-27T12:30:00Z", Drill::Passed)],
    ),
    // A second backup started in the same second (`-2`), never drilled.
    ("20261127T060000Z-2", &[]),
    // Failed first, then verified but too slow for the RTO target.
    (
        "20261127T060000Z",
        &[
            ("2026-11-27T06:30:00Z", Drill::Failed),
            ("2026-11-27T07:30:00Z", Drill::Slow),
        ],
    ),
    (
        "20261126T000000Z",
        &[("2026-11-26T00:30:00Z", Drill::LegacyPassed)],
    ),
    // Pinned (below), one ISO week earlier.
    (
        "20261120T000000Z",
        &[("2026-11-20T00:30:00Z", Drill::Passed)],
    ),
    // Old and never drilled.
    ("20261110T000000Z", &[]),
    // Old and verified.
    (
        "20261101T000000Z",
        &[("2026-11-01T00:30:00Z", Drill::Passed)],
    ),
];

/// Job `trips` ([`TRIPS`]) plus garbage inside and outside the grace
/// period; job `billing`: one backup in the oldest manifest format.
fn fixed_repository(root: &Path) -> Result<()> {
    for (id, drills) in TRIPS {
        backup(root, "trips", id, "1.2")?;
        for (start, drill) in *drills {
            receipt(root, "trips", id, start, *drill)?;
        }
    }
    put(
        root,
        "trips/20261120T000000Z/pinned",
        br#"{"pinned_at":"2026-11-21T09:00:00Z"}"#,
        at("2026-11-21T09:00:00Z"),
    )?;
    // Objects without a manifest and unfinished uploads (partial files),
    // one of each older than the grace period (24 h before NOW).
    for (key, mtime) in [
        (
            "trips/20261125T000000Z/database.dump.zst",
            "2026-11-25T00:05:00Z",
        ),
        (
            "trips/20261128T110000Z/database.dump.zst",
            "2026-11-28T11:00:00Z",
        ),
        (
            "trips/20261125T120000Z/.database.dump.zst.refugio-partial-0123456789abcdef",
            "2026-11-25T12:05:00Z",
        ),
        (
            "trips/20261128T113000Z/.database.dump.zst.refugio-partial-fedcba9876543210",
            "2026-11-28T11:30:00Z",
        ),
    ] {
        put(root, key, b"partial", at(mtime))?;
    }
    backup(root, "billing", "20261128T030000Z", "1.0")?;
    receipt(
        root,
        "billing",
        "20261128T030000Z",
        "2026-11-28T03:30:00Z",
        Drill::Passed,
    )?;
    Ok(())
}

/// Config: the directory repository, job `trips` with a retention policy,
/// job `billing` without (prune leaves it alone). The sources are never
/// contacted by list or prune.
fn fixed_config(dir: &Path, repo: &Path) -> Result<PathBuf> {
    let path = dir.join("refugio.toml");
    std::fs::write(
        &path,
        format!(
            r#"[repository]
url = {url:?}

[[jobs]]
name = "trips"
source = "postgres://refugio@127.0.0.1:1/trips"
retention = {{ keep_last = 2, keep_daily = 3, keep_weekly = 2, min_verified = 1, gc_grace = "24h" }}

[[jobs]]
name = "billing"
source = "postgres://refugio@127.0.0.1:1/billing"
"#,
            url = format!("file://{}", repo.display())
        ),
    )?;
    Ok(path)
}

#[test]
fn list_json_of_a_fixed_repository() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let repo = tmp.path().join("repo");
    fixed_repository(&repo)?;
    let config = fixed_config(tmp.path(), &repo)?;
    let out = refugio_ok(
        &[
            "--config",
            config.to_str().context("path")?,
            "list",
            "--json",
        ],
        &[],
    )?;
    // The exact text: key order, number formatting and indentation included.
    insta::assert_snapshot!("list_json", out);
    Ok(())
}

#[test]
fn prune_dry_run_json_of_a_fixed_repository() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let repo = tmp.path().join("repo");
    fixed_repository(&repo)?;
    let config = fixed_config(tmp.path(), &repo)?;
    let before = files_under(&repo);
    let out = refugio_ok(
        &[
            "--config",
            config.to_str().context("path")?,
            "prune",
            "--dry-run",
            "--json",
            "--now",
            NOW,
        ],
        &[],
    )?;
    insta::assert_snapshot!("prune_dry_run_json", out);
    assert_eq!(files_under(&repo), before, "a dry run deletes nothing");
    Ok(())
}

// ---------------------------------------------------------------------------
// Real runs.

/// PostgreSQL 16 with the sample data in database `app`.
async fn sample_source() -> Result<Cluster> {
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_sample(&src, "app").await?;
    Ok(src)
}

/// The job `app`: the sample database, drilled on the same server (its
/// `refugio_drill_*` scratch databases), with targets and one SQL check.
fn app_job(src: &Cluster, extra: &str) -> String {
    job(
        "app",
        src,
        "app",
        &format!(
            "scratch = {:?}\ntargets = {{ rpo = \"1h\", rto = \"1h\" }}\nchecks = [\"SELECT count(*) = 3 FROM riders\"]\n{extra}",
            src.url("postgres")
        ),
    )
}

/// The one backup of `app` in a directory repository: its directory.
fn only_backup_dir(repo: &Path) -> Result<PathBuf> {
    let ids: Vec<_> = std::fs::read_dir(repo.join("app"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    match ids.as_slice() {
        [one] => Ok(one.clone()),
        other => bail!("expected one backup, found {other:?}"),
    }
}

fn receipt_path(dir: &Path) -> Result<PathBuf> {
    let names: Vec<String> = files_under(dir)
        .into_iter()
        .filter(|f| f.starts_with("verify-"))
        .collect();
    match names.as_slice() {
        [one] => Ok(dir.join(one)),
        other => bail!("expected one receipt, found {other:?}"),
    }
}

/// `refugio backup` and `refugio verify` on the sample database: the
/// manifest and the receipt as written, their `--json` echoes, and the
/// backup's files.
#[tokio::test(flavor = "multi_thread")]
async fn manifest_and_receipt_of_a_real_backup_and_drill() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = sample_source().await?;
    let repo = Repo::dir(tmp.path());
    let Repo::Dir(root) = &repo else {
        unreachable!()
    };
    let config = write_config(tmp.path(), &repo, &app_job(&src, ""));
    let cfg = config.to_str().context("path")?;

    let printed = refugio_ok(&["--config", cfg, "backup", "--json"], &[])?;
    let dir = only_backup_dir(root)?;
    let written = std::fs::read_to_string(dir.join("manifest.json"))?;
    let manifest = Json::parse(&written)?;
    let m: Value = serde_json::from_str(&written)?;
    let id = m["backup_id"].as_str().context("backup_id")?.to_string();
    // What redaction hides is still checked where it must agree.
    ensure!(
        Some(id.as_str()) == dir.file_name().and_then(|n| n.to_str()),
        "{id} is not its directory {}",
        dir.display()
    );
    let started: DateTime<Utc> = m["started_at"].as_str().context("started_at")?.parse()?;
    ensure!(
        refugio_store::repo::backup_id(started, 1) == id,
        "{id} is not its start time {started}"
    );
    for a in m["artifacts"].as_array().context("artifacts")? {
        let name = a["name"].as_str().context("name")?;
        let body = std::fs::read(dir.join(name))?;
        assert_eq!(a["stored_size"], json!(body.len()), "{name}");
        assert_eq!(a["sha256"], json!(sha_hex(&body)), "{name}");
    }
    assert_eq!(
        printed.trim_end(),
        written.trim_end(),
        "backup --json prints the manifest as written"
    );
    // Redacted: what differs between two backups of the same data. Kept:
    // field names and order, artifact names, kinds, formats and
    // compression, table names and row counts, large objects, row-count
    // mode, attempts, recovery state.
    insta::assert_json_snapshot!("manifest", manifest, {
        ".backup_id" => backup_id(),
        ".started_at" => time(),
        ".finished_at" => time(),
        ".snapshot_at" => time(),
        ".refugio_version" => this_version(),
        ".server.version" => pg16_version(),
        ".server.version_num" => check("pg16 version_num", |c| {
            c.resolve_inner().as_u64().is_some_and(|n| (160000..170000).contains(&n))
        }),
        ".server.system_identifier" => check("system identifier", |c| {
            text(c).is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        }),
        ".server.lsn" => check("lsn", |c| {
            text(c).is_some_and(|s| s.split_once('/').is_some_and(|(a, b)| {
                u64::from_str_radix(a, 16).is_ok() && u64::from_str_radix(b, 16).is_ok()
            }))
        }),
        ".server.database_size" => bytes(),
        ".pg_dump_version" => pg16_version(),
        ".artifacts[].raw_size" => bytes(),
        ".artifacts[].stored_size" => bytes(),
        ".artifacts[].sha256" => sha256(),
        ".durations.snapshot_seconds" => seconds(),
        ".durations.dump_seconds" => seconds(),
        ".durations.globals_seconds" => seconds(),
        ".durations.total_seconds" => seconds(),
        ".schema_fingerprint" => sha256(),
    });

    let printed = refugio_ok(
        &[
            "--config",
            cfg,
            "verify",
            "--json",
            "--pg-bindir",
            &src.bindir().display().to_string(),
        ],
        &[],
    )?;
    let path = receipt_path(&dir)?;
    let written = std::fs::read_to_string(&path)?;
    let r: Value = serde_json::from_str(&written)?;
    let name = path.file_name().and_then(|n| n.to_str()).context("name")?;
    let drill_started: DateTime<Utc> = r["started_at"].as_str().context("started_at")?.parse()?;
    assert_eq!(
        name,
        format!(
            "verify-{}-ok.json",
            drill_started.format("%Y%m%dT%H%M%S%.3fZ")
        ),
        "receipt name"
    );
    assert_eq!(r["backup_id"], json!(id));
    assert_eq!(r["rpo_detail"]["newest_verified"], json!(id));
    let fp = &r["schema_fingerprint"];
    assert_eq!(fp[0], fp[1], "schema fingerprints agree");
    assert_eq!(fp[0], m["schema_fingerprint"]);
    for d in r["digests_checked"].as_array().context("digests_checked")? {
        let artifact = m["artifacts"]
            .as_array()
            .and_then(|a| a.iter().find(|a| a["name"] == d[0]))
            .context("checked digest of no artifact")?;
        assert_eq!(d[1], artifact["sha256"]);
    }
    assert_eq!(
        serde_json::from_str::<Value>(&printed)?,
        r,
        "verify --json prints the receipt as written"
    );
    let receipt = Json::parse(&written)?;
    insta::assert_json_snapshot!("receipt", receipt, {
        ".backup_id" => backup_id(),
        ".started_at" => time(),
        ".finished_at" => time(),
        ".refugio_version" => this_version(),
        ".scratch_server_version" => pg16_version(),
        ".restore_tool" => tool_version(),
        ".digests_checked[][1]" => sha256(),
        ".schema_fingerprint[]" => sha256(),
        ".phases.fetch_restore_seconds" => seconds(),
        ".phases.analyze_seconds" => seconds(),
        ".phases.checks_seconds" => seconds(),
        ".rto.measured_seconds" => seconds(),
        ".rpo.measured_seconds" => seconds(),
        ".rpo_detail.seconds" => seconds(),
        ".rpo_detail.newest_verified" => backup_id(),
    });

    // The backup's objects, by name.
    let stamp = drill_started.format("%Y%m%dT%H%M%S%.3fZ").to_string();
    let layout: Vec<String> = files_under(root)
        .into_iter()
        .map(|f| f.replace(&id, "[backup_id]").replace(&stamp, "[time]"))
        .collect();
    insta::assert_json_snapshot!("repository_files", layout);
    Ok(())
}

// ---------------------------------------------------------------------------
// The agent.

/// A running `refugio run`; SIGKILLed if the test drops it running.
struct Agent {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Agent {
    fn start(config: &Path, port: u16, log: PathBuf) -> Result<Agent> {
        let child = Command::new(env!("CARGO_BIN_EXE_refugio"))
            .args(["--config", &config.display().to_string(), "run"])
            .env_remove("REFUGIO_CONFIG")
            .env("REFUGIO_LOG", "info,tokio_cron_scheduler=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        let agent = Agent { child, port, log };
        agent.wait("ready", Duration::from_secs(60), |a| {
            Ok(a.get("/readyz").is_ok_and(|(status, _, _)| status == 200))
        })?;
        Ok(agent)
    }

    /// GET over plain HTTP/1.1: (status, content type, body).
    fn get(&self, path: &str) -> Result<(u16, String, String)> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header end")?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("no HTTP status")?;
        let content_type = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-type")
                    .then(|| v.trim().to_string())
            })
            .unwrap_or_default();
        Ok((status, content_type, body.to_string()))
    }

    fn metrics(&self) -> Result<String> {
        let (status, _, body) = self.get("/metrics")?;
        ensure!(status == 200, "/metrics answered {status}");
        Ok(body)
    }

    fn wait(
        &self,
        what: &str,
        limit: Duration,
        mut done: impl FnMut(&Agent) -> Result<bool>,
    ) -> Result<()> {
        let deadline = Instant::now() + limit;
        while !done(self)? {
            if Instant::now() > deadline {
                bail!(
                    "timed out after {limit:?} waiting for {what}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    fn signal(&self, sig: Signal) -> Result<()> {
        kill(Pid::from_raw(i32::try_from(self.child.id())?), sig)?;
        Ok(())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit status.
    fn stop(mut self) -> Result<std::process::ExitStatus> {
        self.signal(Signal::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "agent still running 30 s after SIGTERM; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The sample value of `series` (name and labels exactly).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The samples of each family sorted: prometheus-client keeps a family's
/// series in a hash map, so their order changes from run to run. Family
/// order, HELP, TYPE and UNIT lines stay as served.
fn sort_series(text: &str) -> String {
    let mut out = Vec::new();
    let mut samples: Vec<&str> = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            samples.sort_unstable();
            out.append(&mut samples);
            out.push(line);
        } else {
            samples.push(line);
        }
    }
    samples.sort_unstable();
    out.append(&mut samples);
    out.join("\n") + "\n"
}

/// `/metrics` after one backup (SIGUSR1) and one drill (SIGUSR2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_a_backup_and_a_drill() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = sample_source().await?;
    let port = free_port()?;
    let repo = Repo::dir(tmp.path());
    // Never scheduled (1 January) and no catch-up: only the signals work.
    let job_toml = app_job(
        &src,
        "[jobs.schedule]\nbackup = \"0 0 1 1 *\"\ncatch_up = false\n",
    );
    let config = tmp.path().join("refugio.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[agent]\nlisten = \"127.0.0.1:{port}\"\n\n[[jobs]]\n{job_toml}\n",
            repo.toml()
        ),
    )?;
    let agent = Agent::start(&config, port, tmp.path().join("agent.log"))?;
    let (status, content_type, _) = agent.get("/metrics")?;

    let ok = |name: &str| format!("{name}{{backup_job=\"app\",result=\"success\"}}");
    agent.signal(Signal::SIGUSR1)?;
    agent.wait("the backup", Duration::from_secs(60), |a| {
        Ok(sample(&a.metrics()?, &ok("refugio_backup_runs_total")) == Some(1.0))
    })?;
    agent.signal(Signal::SIGUSR2)?;
    // The drill's metrics, then the RPO the repository listing after it gives.
    agent.wait("the drill", Duration::from_secs(60), |a| {
        let m = a.metrics()?;
        Ok(sample(&m, &ok("refugio_drill_runs_total")) == Some(1.0)
            && sample(&m, "refugio_rpo_seconds{backup_job=\"app\"}").is_some())
    })?;
    let body = agent.metrics()?;
    let stopped = agent.stop()?;
    ensure!(stopped.success(), "agent exit {stopped}");

    // What the filters hide is checked against the repository first.
    let Repo::Dir(root) = &repo else {
        unreachable!()
    };
    let dir = only_backup_dir(root)?;
    let m: Value = serde_json::from_slice(&std::fs::read(dir.join("manifest.json"))?)?;
    let r: Value = serde_json::from_slice(&std::fs::read(receipt_path(&dir)?)?)?;
    let value = |s: &str| sample(&body, &format!("{s}{{backup_job=\"app\"}}"));
    let stored: u64 = m["artifacts"]
        .as_array()
        .context("artifacts")?
        .iter()
        .filter_map(|a| a["stored_size"].as_u64())
        .sum();
    assert_eq!(
        value("refugio_backup_last_stored_bytes"),
        Some(stored as f64)
    );
    let finished: DateTime<Utc> = m["finished_at"].as_str().context("finished_at")?.parse()?;
    let last = value("refugio_backup_last_success_timestamp_seconds").context("last success")?;
    assert!((last - finished.timestamp_millis() as f64 / 1000.0).abs() < 0.01);
    assert_eq!(
        value("refugio_rto_seconds"),
        r["rto"]["measured_seconds"].as_f64()
    );

    // Values that are times, durations or sizes; counters, flags, counts
    // and configured targets stay.
    let number = r"-?[0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?";
    let redact = |names: &str, with: &str| {
        (
            format!(r"(?m)^((?:{names})\{{[^}}]*\}}) {number}$"),
            format!("$1 [{with}]"),
        )
    };
    let filters = [
        redact(
            "refugio_backup_last_success_timestamp_seconds|refugio_drill_last_timestamp_seconds",
            "timestamp",
        ),
        redact(
            "refugio_backup_last_duration_seconds|refugio_rpo_seconds|refugio_rto_seconds",
            "seconds",
        ),
        redact(
            "refugio_backup_last_stored_bytes|refugio_backup_last_raw_bytes|refugio_repository_bytes",
            "bytes",
        ),
        (
            format!(
                r#"refugio_build_info\{{version="{}"\}}"#,
                regex_escape(env!("CARGO_PKG_VERSION"))
            ),
            r#"refugio_build_info{version="[version]"}"#.to_string(),
        ),
    ];
    let snapshot = format!(
        "status: {status}\ncontent-type: {content_type}\n\n{}",
        sort_series(&body)
    );
    insta::with_settings!({ filters => filters.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect::<Vec<_>>() }, {
        insta::assert_snapshot!("metrics", snapshot);
    });
    Ok(())
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let escape = !c.is_ascii_alphanumeric();
            escape.then_some('\\').into_iter().chain([c])
        })
        .collect()
}
