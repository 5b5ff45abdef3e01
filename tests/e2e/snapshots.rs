//! Snapshots (insta) of what machines read: `list --json`, `prune --dry-run
//! --json`, manifest.json, drill receipts and the agent's `/metrics`. They
//! pin field names and order, decisions, artifact and table names, label
//! sets and HELP text, so moving the commands into a library cannot change
//! them unnoticed.
//!
//! `list` and `prune` read a repository of hand-written files (fixed ids,
//! times, sizes, digests and file times; prune decides at a fixed time),
//! so their output is pinned byte for byte. The manifest, the receipt and
//! the metrics come from real runs against PostgreSQL 16; what differs
//! between runs (times, durations, sizes, digests, versions, ids) is
//! redacted, each redaction checking the shape of what it hides.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{ensure, Context, Result};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::common::*;

use crate::snapshot_support::*;

// ---------------------------------------------------------------------------
// A fixed repository: every byte, id, time and file time written here.

/// The time prune decides at.
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
    // The agent's record of its last check: no backup, no garbage.
    put(
        root,
        "trips/checks/last.json",
        br#"{"job":"trips","outcome":"clean","finished_at":"2026-11-28T07:45:02Z","backups":10,"artifacts":20,"damaged":0,"read_scope":"1/7"}"#,
        at("2026-11-28T07:45:02Z"),
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
targets = {{ rpo = "6h", rto = "2h" }}

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

/// `refugio list` for people: grouped by job, within 100 columns.
#[test]
fn list_text_of_a_fixed_repository() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let repo = tmp.path().join("repo");
    fixed_repository(&repo)?;
    let config = fixed_config(tmp.path(), &repo)?;
    let out = refugio_ok(&["--config", config.to_str().context("path")?, "list"], &[])?;
    for line in out.lines() {
        ensure!(
            line.chars().count() <= 100,
            "wider than 100 columns: {line:?}"
        );
    }
    insta::assert_snapshot!("list_text", out);
    Ok(())
}

/// `refugio verify`'s and `refugio check`'s text for people: two receipts
/// of the fixed repository (a passed and a failed drill) and a check of it
/// at [`NOW`], made in-process and printed as the binary prints them.
#[tokio::test]
async fn verify_and_check_text_of_a_fixed_repository() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let repo = tmp.path().join("repo");
    fixed_repository(&repo)?;
    let config = fixed_config(tmp.path(), &repo)?;
    let cfg = refugio::config::Config::load(&config)?;
    let repository = open_repository(&cfg, &Repo::Dir(repo.clone())).await?;
    let mut receipts = refugio_core::receipt::read_all(&repository, "trips").await?;
    receipts.sort_by(|a, b| a.0.cmp(&b.0));
    let mut text = String::new();
    for id in ["20261127T180000Z", "20261128T000000Z"] {
        let (_, r) = receipts
            .iter()
            .find(|(rid, _)| rid == id)
            .with_context(|| format!("a receipt of {id}"))?;
        text.push_str(&refugio::commands::verify::receipt_text(r));
    }
    let opts = cfg
        .job(Some("trips"))?
        .check_options(refugio_core::check::ReadData::None);
    let report = refugio_core::check(
        &repository,
        &opts,
        &refugio_core::FixedClock(at(NOW)),
        &tokio_util::sync::CancellationToken::new(),
    )
    .await?;
    text.push_str(&refugio::commands::check::report_text(&report));
    insta::assert_snapshot!("verify_and_check_text", text);
    Ok(())
}

/// `refugio status`, text and `--json`, of every job at [`NOW`]: the
/// report made in-process with the jobs resolved from the config (kind,
/// targets), printed as the binary prints it.
#[tokio::test]
async fn status_of_a_fixed_repository() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let repo = tmp.path().join("repo");
    fixed_repository(&repo)?;
    let config = fixed_config(tmp.path(), &repo)?;
    let cfg = refugio::config::Config::load(&config)?;
    let repository = open_repository(&cfg, &Repo::Dir(repo.clone())).await?;
    let mut reports = Vec::new();
    let mut text = String::new();
    for name in ["trips", "billing"] {
        let job = cfg.job(Some(name))?;
        let r =
            refugio_core::status::report(&repository, name, Some(job.kind), job.targets(), at(NOW))
                .await?;
        text.push_str(&refugio::commands::status::report_text(&r, at(NOW)));
        reports.push(r);
    }
    // trips: its newest verified backup is 12 hours old against 6.
    assert_eq!(refugio::commands::status::exit_code(&reports), 1);
    insta::assert_snapshot!("status_text", text);
    insta::assert_snapshot!("status_json", serde_json::to_string_pretty(&reports)?);
    Ok(())
}

/// The dry run of `trips` at [`NOW`], in-process.
async fn report_again(config: &Path, repo: &Path) -> Result<refugio_core::PruneReport> {
    prune_report_at(
        config,
        &Repo::Dir(repo.to_path_buf()),
        Some("trips"),
        true,
        at(NOW),
    )
    .await
}

/// The JSON `prune --dry-run --json` prints, decided at [`NOW`]: the prune
/// called in-process with a fixed clock, printed as the binary prints it.
#[tokio::test]
async fn prune_dry_run_json_of_a_fixed_repository() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let repo = tmp.path().join("repo");
    fixed_repository(&repo)?;
    let config = fixed_config(tmp.path(), &repo)?;
    let before = files_under(&repo);
    let report = prune_report_at(
        &config,
        &Repo::Dir(repo.clone()),
        Some("trips"),
        true,
        at(NOW),
    )
    .await?;
    let out = format!("{}\n", serde_json::to_string_pretty(&[report])?);
    insta::assert_snapshot!("prune_dry_run_json", out);
    // For people: the summary, each decision in words.
    let text = refugio::commands::prune::report_text(&report_again(&config, &repo).await?);
    insta::assert_snapshot!("prune_dry_run_text", text);
    assert_eq!(files_under(&repo), before, "a dry run deletes nothing");
    Ok(())
}

/// backup's files.
/// `refugio backup` and `refugio verify` on the sample database: the
/// manifest and the receipt as written, their `--json` echoes, and the
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
        ".data_at" => time(),
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
        ".schema_fingerprint_v2" => fingerprint(),
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
    assert_eq!(fp[0], m["schema_fingerprint_v2"]);
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
        ".schema_fingerprint[]" => fingerprint(),
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
