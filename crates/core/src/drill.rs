//! Restore drills: restore a backup into a scratch database, check it
//! against its manifest, measure RTO and RPO against the targets, write a
//! receipt ([`Receipt`], `verify-<time>-ok.json`) beside the manifest, drop
//! the scratch database whatever happened.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use refugio_dump::snapshot::quote_ident;
use refugio_dump::SourceSpec;
use refugio_store::manifest::Manifest;
use refugio_store::repo::Repository;
use sqlx::{Connection, Executor, PgConnection, Row};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::host::hostname;
use crate::measure;
use crate::receipt::{
    self, CountCheck, Outcome, Phases, Receipt, SqlCheck, Target, RECEIPT_FORMAT,
};
use crate::restore::{restore_into, RestoreOptions};

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
    /// Private keys for encrypted backups; without a matching one the
    /// drill is inconclusive, never failed.
    pub identities: Option<std::sync::Arc<crate::encryption::Identities>>,
}

impl Scratch {
    /// A job's `scratch` setting: `"ephemeral"` or a server URL.
    pub fn parse(url: &str) -> Result<Scratch> {
        Ok(if url == "ephemeral" {
            Scratch::Ephemeral
        } else {
            Scratch::Server(SourceSpec::new(url, None, None)?)
        })
    }
}

/// The scratch database of one drill of a backup:
/// `refugio_drill_<id>_<random>` (lowercase, `_`), unique per drill so two
/// drills of one backup (two replicas, the agent and a CLI `verify`) never
/// share one.
pub fn scratch_name(backup_id: &str) -> String {
    let id: String = backup_id
        .chars()
        .take(24)
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("{SCRATCH_PREFIX}{id}_{:08x}", rand::random::<u32>())
}

/// A scratch database older than this is abandoned whoever made it.
pub const SCRATCH_GRACE: Duration = Duration::from_secs(24 * 3600);
/// Start of the owner marker (`COMMENT ON DATABASE`) of a scratch database.
const MARKER: &str = "refugio drill";

/// The owner marker: who drills in this database, since when.
fn marker(now: DateTime<Utc>) -> String {
    format!(
        "{MARKER} host={} pid={} started={}",
        hostname(),
        std::process::id(),
        now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

/// Whether a scratch database with this marker was abandoned: no marker
/// (an older refugio's, swept as before), its drill's process gone from
/// this host, or started longer than [`SCRATCH_GRACE`] ago. A database
/// another live drill uses is never abandoned.
fn abandoned(
    comment: Option<&str>,
    now: DateTime<Utc>,
    this_host: &str,
    alive: impl Fn(u32) -> bool,
) -> bool {
    let Some(rest) = comment.and_then(|c| c.strip_prefix(MARKER)) else {
        return true;
    };
    let field = |k: &str| {
        rest.split_whitespace()
            .find_map(|f| f.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
    };
    let started = field("started").and_then(|t| DateTime::parse_from_rfc3339(t).ok());
    let Some(started) = started else {
        return true;
    };
    let grace = chrono::Duration::from_std(SCRATCH_GRACE).unwrap_or(chrono::Duration::MAX);
    if now - started.with_timezone(&Utc) > grace {
        return true;
    }
    let pid = field("pid").and_then(|p| p.parse::<u32>().ok());
    field("host") == Some(this_host) && pid.is_some_and(|p| !alive(p))
}

fn process_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// What the checks found, beside the receipt's texts: evidence against the
/// backup, or only that something could not be checked.
#[derive(Debug, Default)]
struct Tally {
    bad: bool,
    unsure: bool,
}

impl Tally {
    /// The backup is bad.
    fn bad(&mut self, receipt: &mut Receipt, failure: String) {
        self.bad = true;
        receipt.failures.push(failure);
    }

    /// Something could not be checked.
    fn unsure(&mut self, receipt: &mut Receipt, failure: String) {
        self.unsure = true;
        receipt.failures.push(failure);
    }

    /// A failed query on the restored database: the server's or the
    /// network's fault, or the content's.
    fn query_failed(&mut self, receipt: &mut Receipt, e: &sqlx::Error, failure: String) {
        if environmental(e) {
            self.unsure(receipt, failure)
        } else {
            self.bad(receipt, failure)
        }
    }

    fn outcome(&self) -> Outcome {
        if self.bad {
            Outcome::Failed
        } else if self.unsure {
            Outcome::Inconclusive
        } else {
            Outcome::Passed
        }
    }
}

/// Errors that say nothing about the restored data: the connection, the
/// server's resources or state (SQLSTATE classes 08, 53, 57, 58), a check
/// whose SQL does not parse (42601).
fn environmental(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|c| {
            c.starts_with("08")
                || c.starts_with("53")
                || c.starts_with("57")
                || c.starts_with("58")
                || c == "42601"
        }),
        _ => false,
    }
}

fn q(spec: &SourceSpec, what: &str, e: sqlx::Error) -> Error {
    Error::Pg(refugio_dump::Error::Query {
        url: spec.redacted(),
        what: what.to_string(),
        source: e,
    })
}

/// Drops the scratch databases of crashed drills ([`abandoned`] ones);
/// returns their names.
async fn sweep_on(
    conn: &mut PgConnection,
    admin: &SourceSpec,
    now: DateTime<Utc>,
) -> Result<Vec<String>> {
    let rows = sqlx::query(
        "SELECT datname, shobj_description(oid, 'pg_database') AS marker \
         FROM pg_database WHERE datname LIKE $1 ORDER BY 1",
    )
    .bind(format!("{SCRATCH_PREFIX}%"))
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| q(admin, "listing scratch databases", e))?;
    let host = hostname();
    let mut dropped = Vec::new();
    for r in &rows {
        let name: String = r.get("datname");
        let marker: Option<String> = r.get("marker");
        if !abandoned(marker.as_deref(), now, &host, process_alive) {
            continue;
        }
        conn.execute(
            format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                quote_ident(&name)
            )
            .as_str(),
        )
        .await
        .map_err(|e| q(admin, &format!("dropping scratch database {name}"), e))?;
        dropped.push(name);
    }
    Ok(dropped)
}

/// Drops one scratch database.
pub async fn drop_scratch(admin: &SourceSpec, name: &str) -> Result<()> {
    let mut conn = admin.connect().await?;
    conn.execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name)).as_str())
        .await
        .map_err(|e| q(admin, &format!("dropping scratch database {name}"), e))?;
    let _ = conn.close().await;
    Ok(())
}

/// Sweeps abandoned scratch databases, then creates this drill's with its
/// owner marker, on one connection; returns the swept names.
async fn prepare_scratch(
    admin: &SourceSpec,
    name: &str,
    now: DateTime<Utc>,
) -> Result<Vec<String>> {
    let mut conn = admin.connect().await?;
    let dropped = sweep_on(&mut conn, admin, now).await?;
    conn.execute(format!("CREATE DATABASE {}", quote_ident(name)).as_str())
        .await
        .map_err(|e| q(admin, &format!("CREATE DATABASE {name}"), e))?;
    let comment = marker(now).replace('\'', "''");
    conn.execute(format!("COMMENT ON DATABASE {} IS '{comment}'", quote_ident(name)).as_str())
        .await
        .map_err(|e| q(admin, &format!("marking scratch database {name}"), e))?;
    let _ = conn.close().await;
    Ok(dropped)
}

/// Which backup of a job a drill restores.
#[derive(Debug, Clone, Copy)]
pub enum Pick<'a> {
    /// The newest committed backup.
    Newest,
    /// The newest backup no drill has verified yet.
    Unverified,
    /// `latest` or a backup id.
    Spec(&'a str),
}

/// The backup `pick` names and every committed manifest of the job (newest
/// first, for RPO).
pub async fn pick(
    repo: &Repository,
    job: &str,
    pick: Pick<'_>,
) -> Result<(Manifest, Vec<Manifest>)> {
    let history = repo.manifests(job).await?;
    let manifest = match pick {
        Pick::Newest => history
            .first()
            .cloned()
            .ok_or_else(|| Error::NothingToDrill {
                job: job.to_string(),
                store: repo.describe(),
            })?,
        Pick::Unverified => {
            let done = receipt::read_all(repo, job).await?;
            history
                .iter()
                .find(|m| !done.iter().any(|(id, r)| *id == m.backup_id && r.verified))
                .cloned()
                .ok_or_else(|| Error::AllVerified {
                    job: job.to_string(),
                })?
        }
        Pick::Spec(spec) => repo.resolve(job, spec).await?,
    };
    Ok((manifest, history))
}

/// Runs one drill of `manifest` and writes its receipt. `history` is every
/// committed manifest of the job (for RPO); `clock` says when the drill
/// runs. Cancelling stops it mid-way (child processes killed, an ephemeral
/// cluster removed with it) and drops a server's scratch database before
/// returning [`Error::Cancelled`]; no receipt is written then.
pub async fn drill(
    repo: &Repository,
    manifest: &Manifest,
    history: &[Manifest],
    opts: &DrillOptions,
    clock: &dyn Clock,
    cancel: &CancellationToken,
) -> Result<Receipt> {
    let name = scratch_name(&manifest.backup_id);
    tracing::info!(job = %manifest.job, backup = %manifest.backup_id, scratch = %name, "drill-started");
    let run = drill_once(repo, manifest, history, opts, clock.now(), &name);
    tokio::select! {
        r = run => r,
        _ = cancel.cancelled() => {
            if let Scratch::Server(spec) = &opts.scratch {
                drop_scratch(&spec.with_database("postgres"), &name).await?;
            }
            Err(Error::Cancelled {
                what: "drill".into(),
                detail: format!("scratch database {name} removed"),
            })
        }
    }
}

async fn drill_once(
    repo: &Repository,
    manifest: &Manifest,
    history: &[Manifest],
    opts: &DrillOptions,
    now: DateTime<Utc>,
    name: &str,
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
    let dropped = prepare_scratch(&admin, name, now).await?;
    if !dropped.is_empty() {
        tracing::warn!(databases = ?dropped, "drill-leftovers-dropped");
    }
    let target = server.with_database(name);
    let mut receipt = Receipt {
        format: RECEIPT_FORMAT.into(),
        job: manifest.job.clone(),
        backup_id: manifest.backup_id.clone(),
        started_at: now,
        finished_at: now,
        verified: false,
        passed: false,
        outcome: None,
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
    let mut tally = Tally::default();
    let checked = run_checks(
        repo,
        manifest,
        opts,
        &target,
        ephemeral,
        &mut receipt,
        &mut tally,
    )
    .await;
    if let Err(e) = checked {
        if e.condemns() {
            tally.bad(&mut receipt, refugio_store::error::chain(&e));
        } else {
            tally.unsure(&mut receipt, refugio_store::error::chain(&e));
        }
    }
    // The scratch database goes whatever happened; failing to drop it is
    // reported but says nothing about the backup.
    if let Err(e) = drop_scratch(&admin, name).await {
        receipt.failures.push(format!(
            "dropping scratch database {name}: {}",
            refugio_store::error::chain(&e)
        ));
    }
    let rto = started.elapsed().as_secs_f64();
    receipt.verified = !tally.bad && !tally.unsure;
    receipt.outcome = Some(tally.outcome());

    // RPO over verified backups: earlier receipts plus this one.
    let mut verified: Vec<(String, DateTime<Utc>)> = Vec::new();
    let earlier = receipt::read_all(repo, &manifest.job)
        .await
        .unwrap_or_default();
    for m in history {
        let ok = earlier
            .iter()
            .any(|(id, r)| id == &m.backup_id && r.verified)
            || (m.backup_id == manifest.backup_id && receipt.verified);
        if ok {
            verified.push((m.backup_id.clone(), m.recovery_point()));
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
    tally: &mut Tally,
) -> Result<()> {
    let t = Instant::now();
    // On our own cluster the roles are restored too, so ownership and
    // grants are restored for real; on a shared server they are not touched.
    let with_globals = ephemeral && manifest.artifact("globals").is_some();
    let ropts = RestoreOptions {
        target: target.clone(),
        clean: false,
        // Created (with its owner marker) above.
        create: false,
        globals: with_globals,
        jobs: opts.jobs.max(1),
        no_owner: !with_globals,
        bindir: opts.bindir.clone(),
        temp_dir: None,
        identities: opts.identities.clone(),
    };
    let report = restore_into(repo, manifest, &ropts).await?;
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
    count_checks(&mut conn, manifest, receipt, tally).await;
    if let Some(expected) = &manifest.schema_fingerprint {
        match refugio_dump::fingerprint::schema_fingerprint(&mut conn).await {
            Ok((actual, _)) => {
                if &actual != expected {
                    tally.bad(
                        receipt,
                        format!("schema fingerprint differs: backup {expected}, restored {actual}"),
                    );
                }
                receipt.schema_fingerprint = Some((expected.clone(), actual));
            }
            Err(e) => {
                let failure = format!("fingerprinting the restored schema: {e}");
                tally.query_failed(receipt, &e, failure)
            }
        }
    }
    for sql in &opts.checks {
        let mut environment = false;
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
            Err(e) => {
                environment = environmental(&e);
                (false, format!("failed: {e}"))
            }
        };
        match (ok, environment) {
            (true, _) => {}
            (false, true) => tally.unsure(receipt, format!("SQL check {sql:?} {detail}")),
            (false, false) => tally.bad(receipt, format!("SQL check {sql:?} {detail}")),
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

async fn count_checks(
    conn: &mut PgConnection,
    manifest: &Manifest,
    receipt: &mut Receipt,
    tally: &mut Tally,
) {
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
                let failure = format!("table {table}: cannot count rows: {e}");
                tally.query_failed(receipt, &e, failure);
                None
            }
        };
        let exact = manifest.row_counts == "exact";
        let ok = actual.is_some_and(|a| !exact || a == t.rows);
        if let (false, Some(a)) = (ok, actual) {
            tally.bad(
                receipt,
                format!(
                    "table {table}: expected {} rows (manifest), restored {a}",
                    t.rows
                ),
            );
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
            tally.bad(
                receipt,
                format!(
                    "large objects: expected {} (manifest), restored {n}",
                    manifest.large_objects
                ),
            );
        }
        receipt.large_objects = Some((manifest.large_objects, n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn scratch_names_are_unique_and_valid_identifiers() {
        let a = scratch_name("20261128T060000Z-2");
        let b = scratch_name("20261128T060000Z-2");
        assert_ne!(a, b, "two drills of one backup get two databases");
        assert!(a.starts_with("refugio_drill_20261128t060000z_2_"), "{a}");
        assert!(
            a.len() <= 63,
            "PostgreSQL truncates names over 63 bytes: {a}"
        );
        let long = scratch_name(&"x".repeat(200));
        assert!(long.len() <= 63, "{long}");
    }

    #[test]
    fn only_abandoned_scratch_databases_are_swept() {
        let now = t("2026-11-28T12:00:00Z");
        let alive = |_| true;
        let dead = |_| false;
        let m = |host: &str, pid: u32, started: &str| {
            format!("refugio drill host={host} pid={pid} started={started}")
        };
        // Older refugio left no marker: swept, as before.
        assert!(abandoned(None, now, "a", alive));
        assert!(abandoned(Some("someone's comment"), now, "a", alive));
        // A live drill here, or one on another host, is left alone.
        let fresh = m("a", 42, "2026-11-28T11:00:00Z");
        assert!(!abandoned(Some(&fresh), now, "a", alive));
        assert!(!abandoned(Some(&fresh), now, "b", dead));
        // Its process is gone from this host: abandoned.
        assert!(abandoned(Some(&fresh), now, "a", dead));
        // Older than the grace period, wherever it came from.
        let old = m("b", 42, "2026-11-27T11:00:00Z");
        assert!(abandoned(Some(&old), now, "a", alive));
        // A marker that does not parse is not trusted.
        assert!(abandoned(
            Some("refugio drill host=a pid=1"),
            now,
            "a",
            alive
        ));
    }

    #[test]
    fn the_marker_reads_back() {
        let now = t("2026-11-28T12:00:00Z");
        let mine = marker(now);
        assert!(!abandoned(Some(&mine), now, &hostname(), process_alive));
    }
}
