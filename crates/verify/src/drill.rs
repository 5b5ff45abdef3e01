//! Restore drills: restore a backup into a scratch database, check it
//! against its manifest, measure RTO and RPO against the targets, write a
//! receipt (`verify-<time>.json`) beside the manifest, drop the scratch
//! database whatever happened.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use refugio_dump::snapshot::quote_ident;
use refugio_dump::SourceSpec;
use refugio_store::manifest::Manifest;
use refugio_store::repo::Repository;
use serde::{Deserialize, Serialize};
use sqlx::{Connection, Executor, PgConnection, Row};
use tokio::io::AsyncReadExt;

use crate::error::{Error, Result};
use crate::measure::{self, Rpo};
use crate::restore::{restore, RestoreOptions};

/// Receipt format version.
pub const RECEIPT_FORMAT: &str = "1.0";
/// Prefix of scratch databases; leftovers with it are dropped by the next drill.
pub const SCRATCH_PREFIX: &str = "refugio_drill_";

/// Where a drill restores.
#[derive(Debug, Clone)]
pub enum Scratch {
    /// A server where refugio may create and drop `refugio_drill_*` databases.
    Server(SourceSpec),
    /// A throwaway cluster refugio starts itself; roles are restored too.
    Ephemeral,
}

/// How to run a drill.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    pub scratch: Scratch,
    /// SQL checks, each must return one row with one true value.
    pub checks: Vec<String>,
    pub rpo_target: Option<Duration>,
    pub rto_target: Option<Duration>,
    /// Parallel restore jobs.
    pub jobs: u32,
    pub bindir: Option<PathBuf>,
}

/// One table's count compared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CountCheck {
    pub table: String,
    pub expected: i64,
    pub actual: Option<i64>,
    pub ok: bool,
}

/// One SQL check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SqlCheck {
    pub sql: String,
    pub ok: bool,
    pub detail: String,
}

/// A target and whether it was met.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub measured_seconds: Option<f64>,
    pub target_seconds: Option<f64>,
    pub met: Option<bool>,
}

/// Wall times of the drill's phases, seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Phases {
    /// Fetch, digest check, decompression and restore (streamed together).
    pub fetch_restore_seconds: f64,
    pub analyze_seconds: f64,
    pub checks_seconds: f64,
}

/// The restore receipt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub format: String,
    pub job: String,
    pub backup_id: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// Restore and every check passed (the backup is verified).
    pub verified: bool,
    /// `verified` and every target met.
    pub passed: bool,
    pub failures: Vec<String>,
    pub refugio_version: String,
    pub scratch_kind: String,
    pub scratch_server_version: Option<String>,
    pub restore_tool: Option<String>,
    /// Artifact digests checked while streaming: name → sha256.
    pub digests_checked: Vec<(String, String)>,
    pub counts: Vec<CountCheck>,
    pub large_objects: Option<(i64, i64)>,
    pub schema_fingerprint: Option<(String, String)>,
    pub checks: Vec<SqlCheck>,
    pub phases: Phases,
    pub rto: Target,
    pub rpo: Target,
    pub rpo_detail: Rpo,
}

impl Receipt {
    /// Object name beside the manifest: `verify-<time>-ok.json` when the
    /// backup restored and passed its checks, `-failed.json` otherwise, so
    /// retention can tell verified backups from a listing alone.
    pub fn name(&self) -> String {
        format!(
            "verify-{}-{}.json",
            self.started_at.format("%Y%m%dT%H%M%S%.3fZ"),
            if self.verified { "ok" } else { "failed" }
        )
    }
}

/// The scratch database for a backup: `refugio_drill_<id>` (lowercase, `_`).
pub fn scratch_name(backup_id: &str) -> String {
    let id: String = backup_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("{SCRATCH_PREFIX}{id}")
}

fn q(spec: &SourceSpec, what: &str, e: sqlx::Error) -> Error {
    Error::Pg(refugio_dump::Error::Query {
        url: spec.redacted(),
        what: what.to_string(),
        source: e,
    })
}

/// Drops leftover scratch databases (from crashed drills) and `name`.
pub async fn drop_scratch(admin: &SourceSpec, only: Option<&str>) -> Result<Vec<String>> {
    let mut conn = admin.connect().await?;
    let names: Vec<String> =
        sqlx::query("SELECT datname FROM pg_database WHERE datname LIKE $1 ORDER BY 1")
            .bind(format!("{SCRATCH_PREFIX}%"))
            .fetch_all(&mut conn)
            .await
            .map_err(|e| q(admin, "listing scratch databases", e))?
            .iter()
            .map(|r| r.get::<String, _>("datname"))
            .filter(|n| only.is_none_or(|o| o == n))
            .collect();
    for n in &names {
        conn.execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(n)).as_str())
            .await
            .map_err(|e| q(admin, &format!("dropping scratch database {n}"), e))?;
    }
    let _ = conn.close().await;
    Ok(names)
}

/// Receipts of a job already in the repository: (backup id, receipt).
pub async fn receipts(repo: &Repository, job: &str) -> Result<Vec<(String, Receipt)>> {
    let prefix = format!("{job}/");
    let keys: Vec<String> = repo
        .store()
        .list(&prefix)
        .try_filter_map(|m| {
            let keep = m
                .key
                .rsplit('/')
                .next()
                .is_some_and(|n| n.starts_with("verify-") && n.ends_with(".json"));
            futures::future::ready(Ok(keep.then_some(m.key)))
        })
        .try_collect()
        .await?;
    let mut out = Vec::new();
    for key in keys {
        let mut r = repo.store().get(&key).await?;
        let mut buf = Vec::new();
        (&mut r)
            .take(16 * 1024 * 1024)
            .read_to_end(&mut buf)
            .await
            .map_err(|source| Error::Fetch {
                key: key.clone(),
                source,
            })?;
        match serde_json::from_slice::<Receipt>(&buf) {
            Ok(rec) => out.push((rec.backup_id.clone(), rec)),
            Err(e) => tracing::warn!(key, error = %e, "receipt-unreadable"),
        }
    }
    Ok(out)
}

/// Runs one drill of `manifest`. `history` is every committed manifest of
/// the job (for RPO), `now` the drill's clock.
pub async fn drill(
    repo: &Repository,
    manifest: &Manifest,
    history: &[Manifest],
    opts: &DrillOptions,
    now: DateTime<Utc>,
) -> Result<Receipt> {
    let started = Instant::now();
    // An ephemeral cluster lives for this drill only; dropping it (also on
    // cancellation) stops it and removes its directory.
    let (cluster, server, kind) = match &opts.scratch {
        Scratch::Server(spec) => (None, spec.clone(), "server"),
        Scratch::Ephemeral => {
            let c = crate::ephemeral::EphemeralCluster::start(
                refugio_dump::PgVersion::from_num(manifest.server.version_num),
                opts.bindir.as_deref(),
            )
            .await?;
            let spec = c.spec("postgres")?;
            (Some(c), spec, "ephemeral")
        }
    };
    let admin = server.with_database("postgres");
    let dropped = drop_scratch(&admin, None).await?;
    if !dropped.is_empty() {
        tracing::warn!(databases = ?dropped, "drill-leftovers-dropped");
    }
    let name = scratch_name(&manifest.backup_id);
    let target = server.with_database(&name);
    let mut receipt = Receipt {
        format: RECEIPT_FORMAT.into(),
        job: manifest.job.clone(),
        backup_id: manifest.backup_id.clone(),
        started_at: now,
        finished_at: now,
        verified: false,
        passed: false,
        failures: Vec::new(),
        refugio_version: env!("CARGO_PKG_VERSION").into(),
        scratch_kind: kind.into(),
        scratch_server_version: None,
        restore_tool: None,
        digests_checked: Vec::new(),
        counts: Vec::new(),
        large_objects: None,
        schema_fingerprint: None,
        checks: Vec::new(),
        phases: Phases::default(),
        rto: Target {
            measured_seconds: None,
            target_seconds: opts.rto_target.map(|d| d.as_secs_f64()),
            met: None,
        },
        rpo: Target {
            measured_seconds: None,
            target_seconds: opts.rpo_target.map(|d| d.as_secs_f64()),
            met: None,
        },
        rpo_detail: measure::rpo(&[], now),
    };

    let ephemeral = cluster.is_some();
    let outcome = run_checks(repo, manifest, opts, &target, ephemeral, &mut receipt).await;
    if let Err(e) = &outcome {
        receipt.failures.push(format!("{e}"));
    }
    // The scratch database goes whatever happened.
    if let Err(e) = drop_scratch(&admin, Some(&name)).await {
        receipt
            .failures
            .push(format!("dropping scratch database {name}: {e}"));
    }
    let rto = started.elapsed().as_secs_f64();
    receipt.verified = receipt.failures.is_empty();

    // RPO over verified backups: earlier receipts plus this one.
    let mut verified: Vec<(String, DateTime<Utc>)> = Vec::new();
    let earlier = receipts(repo, &manifest.job).await.unwrap_or_default();
    for m in history {
        let ok = earlier
            .iter()
            .any(|(id, r)| id == &m.backup_id && r.verified)
            || (m.backup_id == manifest.backup_id && receipt.verified);
        if ok {
            verified.push((m.backup_id.clone(), m.snapshot_at));
        }
    }
    receipt.rpo_detail = measure::rpo(&verified, now);
    receipt.rto.measured_seconds = Some(rto);
    receipt.rto.met = opts.rto_target.map(|t| rto <= t.as_secs_f64());
    receipt.rpo.measured_seconds = receipt.rpo_detail.seconds;
    receipt.rpo.met = opts.rpo_target.map(|t| {
        receipt
            .rpo_detail
            .seconds
            .is_some_and(|s| s <= t.as_secs_f64())
    });
    if receipt.rto.met == Some(false) {
        receipt.failures.push(format!(
            "RTO target missed: restore and checks took {rto:.1}s, target {:.1}s",
            receipt.rto.target_seconds.unwrap_or_default()
        ));
    }
    if receipt.rpo.met == Some(false) {
        receipt.failures.push(match receipt.rpo_detail.seconds {
            Some(s) => format!(
                "RPO target missed: newest verified backup is {s:.0}s old, target {:.0}s",
                receipt.rpo.target_seconds.unwrap_or_default()
            ),
            None => "RPO target missed: no verified backup".to_string(),
        });
    }
    receipt.passed = receipt.failures.is_empty();
    receipt.finished_at =
        now + chrono::Duration::milliseconds(started.elapsed().as_millis() as i64);

    let key = Repository::key(&manifest.job, &manifest.backup_id, &receipt.name());
    let mut json = serde_json::to_vec_pretty(&receipt).unwrap_or_default();
    json.push(b'\n');
    repo.store().put(&key, Bytes::from(json)).await?;
    Ok(receipt)
}

async fn run_checks(
    repo: &Repository,
    manifest: &Manifest,
    opts: &DrillOptions,
    target: &SourceSpec,
    ephemeral: bool,
    receipt: &mut Receipt,
) -> Result<()> {
    let t = Instant::now();
    // On our own cluster the roles are restored too, so ownership and
    // grants are restored for real; on a shared server they are not touched.
    let with_globals = ephemeral && manifest.artifact("globals").is_some();
    let ropts = RestoreOptions {
        target: target.clone(),
        clean: false,
        create: true,
        globals: with_globals,
        jobs: opts.jobs.max(1),
        no_owner: !with_globals,
        bindir: opts.bindir.clone(),
        temp_dir: None,
    };
    let report = restore(repo, manifest, &ropts).await?;
    receipt.phases.fetch_restore_seconds = t.elapsed().as_secs_f64();
    receipt.restore_tool = Some(format!("{} {}", report.tool, report.tool_version));
    receipt.digests_checked = manifest
        .artifacts
        .iter()
        .filter(|a| a.kind == "database")
        .map(|a| (a.name.clone(), a.sha256.clone()))
        .collect();

    let mut conn = target.connect().await?;
    receipt.scratch_server_version = conn
        .fetch_one("SELECT current_setting('server_version') AS v")
        .await
        .ok()
        .map(|r| r.get::<String, _>("v"));

    let t = Instant::now();
    conn.execute("ANALYZE")
        .await
        .map_err(|e| q(target, "ANALYZE", e))?;
    receipt.phases.analyze_seconds = t.elapsed().as_secs_f64();

    let t = Instant::now();
    count_checks(&mut conn, manifest, receipt).await;
    if let Some(expected) = &manifest.schema_fingerprint {
        match refugio_dump::fingerprint::schema_fingerprint(&mut conn).await {
            Ok((actual, _)) => {
                if &actual != expected {
                    receipt.failures.push(format!(
                        "schema fingerprint differs: backup {expected}, restored {actual}"
                    ));
                }
                receipt.schema_fingerprint = Some((expected.clone(), actual));
            }
            Err(e) => receipt
                .failures
                .push(format!("fingerprinting the restored schema: {e}")),
        }
    }
    for sql in &opts.checks {
        let (ok, detail) = match sqlx::query(sql).fetch_all(&mut conn).await {
            Ok(rows) if rows.len() == 1 && rows[0].len() == 1 => {
                match rows[0].try_get::<Option<bool>, _>(0) {
                    Ok(Some(true)) => (true, "true".to_string()),
                    Ok(Some(false)) => (false, "returned false".to_string()),
                    Ok(None) => (false, "returned NULL".to_string()),
                    Err(_) => (false, "did not return a boolean".to_string()),
                }
            }
            Ok(rows) => (
                false,
                format!(
                    "returned {} row(s); one row with one boolean expected",
                    rows.len()
                ),
            ),
            Err(e) => (false, format!("failed: {e}")),
        };
        if !ok {
            receipt.failures.push(format!("SQL check {sql:?} {detail}"));
        }
        receipt.checks.push(SqlCheck {
            sql: sql.clone(),
            ok,
            detail,
        });
    }
    receipt.phases.checks_seconds = t.elapsed().as_secs_f64();
    let _ = conn.close().await;
    Ok(())
}

async fn count_checks(conn: &mut PgConnection, manifest: &Manifest, receipt: &mut Receipt) {
    for t in &manifest.tables {
        let table = format!("{}.{}", t.schema, t.name);
        let sql = format!(
            "SELECT count(*) AS n FROM {}.{}",
            quote_ident(&t.schema),
            quote_ident(&t.name)
        );
        let actual = match conn.fetch_one(sql.as_str()).await {
            Ok(r) => Some(r.get::<i64, _>("n")),
            Err(e) => {
                receipt
                    .failures
                    .push(format!("table {table}: cannot count rows: {e}"));
                None
            }
        };
        let exact = manifest.row_counts == "exact";
        let ok = actual.is_some_and(|a| !exact || a == t.rows);
        if let (false, Some(a)) = (ok, actual) {
            receipt.failures.push(format!(
                "table {table}: expected {} rows (manifest), restored {a}",
                t.rows
            ));
        }
        receipt.counts.push(CountCheck {
            table,
            expected: t.rows,
            actual,
            ok,
        });
    }
    if let Ok(r) = conn
        .fetch_one("SELECT count(*) AS n FROM pg_largeobject_metadata")
        .await
    {
        let n: i64 = r.get("n");
        if n != manifest.large_objects {
            receipt.failures.push(format!(
                "large objects: expected {} (manifest), restored {n}",
                manifest.large_objects
            ));
        }
        receipt.large_objects = Some((manifest.large_objects, n));
    }
}
