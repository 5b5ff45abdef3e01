//! Scratch databases of drills: their names, the owner marker that tells
//! a live drill's from an abandoned one, the sweep of abandoned ones.

use std::time::Duration;

use chrono::{DateTime, Utc};
use refugio_dump::snapshot::quote_ident;
use refugio_dump::SourceSpec;
use sqlx::{Connection, Executor, PgConnection, Row};

use super::SCRATCH_PREFIX;
use crate::error::{Error, Result};
use crate::host::hostname;

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

/// Drops the scratch databases of crashed drills ([`abandoned`] ones);
/// returns their names.
async fn sweep_on(
    conn: &mut PgConnection,
    admin: &SourceSpec,
    now: DateTime<Utc>,
) -> Result<Vec<String>> {
    // A prefix, not a LIKE pattern: there `_` matches any character, and
    // `refugioXdrillYsales` is someone's database.
    let rows = sqlx::query(
        "SELECT datname, shobj_description(oid, 'pg_database') AS marker \
         FROM pg_database WHERE left(datname::text, length($1)) = $1 ORDER BY 1",
    )
    .bind(SCRATCH_PREFIX)
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

/// The advisory lock (two-key form: its own key space, apart from the
/// job locks' single keys) held on the scratch server's `postgres`
/// database while a drill sweeps and while it creates and marks its
/// databases. CREATE DATABASE cannot share a transaction with its COMMENT,
/// so a database exists unmarked for a moment; under this lock no other
/// drill's sweep sees it then (an unmarked database is an older refugio's,
/// or a drill's that died between the two statements, and is swept).
pub const SCRATCH_LOCK: (i32, i32) = (0x7265_6675, 0x6472_696c);

/// Sweeps abandoned scratch databases, then creates this drill's (one per
/// database of the backup) with their owner marker, on one connection,
/// under [`SCRATCH_LOCK`]; returns the swept names.
pub(super) async fn prepare_scratch(
    admin: &SourceSpec,
    names: &[String],
    now: DateTime<Utc>,
) -> Result<Vec<String>> {
    let mut conn = admin.connect().await?;
    // Waits for another drill's sweep or creation (seconds at most); a
    // server where it cannot get the lock within a minute is trouble that
    // makes the drill inconclusive, never failed.
    conn.execute("SET lock_timeout = '60s'")
        .await
        .map_err(|e| q(admin, "setting lock_timeout", e))?;
    sqlx::query("SELECT pg_advisory_lock($1, $2)")
        .bind(SCRATCH_LOCK.0)
        .bind(SCRATCH_LOCK.1)
        .execute(&mut conn)
        .await
        .map_err(|e| q(admin, "taking the scratch databases' lock", e))?;
    let dropped = sweep_on(&mut conn, admin, now).await?;
    let comment = marker(now).replace('\'', "''");
    for name in names {
        conn.execute(format!("CREATE DATABASE {}", quote_ident(name)).as_str())
            .await
            .map_err(|e| q(admin, &format!("CREATE DATABASE {name}"), e))?;
        conn.execute(format!("COMMENT ON DATABASE {} IS '{comment}'", quote_ident(name)).as_str())
            .await
            .map_err(|e| q(admin, &format!("marking scratch database {name}"), e))?;
    }
    // Closing the session releases the lock (so does any error above).
    let _ = conn.close().await;
    Ok(dropped)
}

/// The scratch databases of one drill: one name, or for a whole-server
/// backup of `n` databases, that name with `_1` … `_n`.
pub(super) fn scratch_names(base: &str, n: usize, server: bool) -> Vec<String> {
    if !server {
        return vec![base.to_string()];
    }
    (1..=n).map(|i| format!("{base}_{i}")).collect()
}

pub(super) fn q(spec: &SourceSpec, what: &str, e: sqlx::Error) -> Error {
    Error::Pg(refugio_dump::Error::Query {
        url: spec.redacted(),
        what: what.to_string(),
        source: e,
    })
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
    fn a_server_drill_has_one_scratch_database_per_database() {
        let base = scratch_name("20261128T060000Z");
        assert_eq!(scratch_names(&base, 3, false), vec![base.clone()]);
        let many = scratch_names(&base, 120, true);
        assert_eq!(many.len(), 120);
        assert!(many
            .iter()
            .all(|n| n.starts_with(SCRATCH_PREFIX) && n.len() <= 63));
        assert_eq!(many[0], format!("{base}_1"));
    }

    #[test]
    fn the_marker_reads_back() {
        let now = t("2026-11-28T12:00:00Z");
        let mine = marker(now);
        assert!(!abandoned(Some(&mine), now, &hostname(), process_alive));
    }
}
