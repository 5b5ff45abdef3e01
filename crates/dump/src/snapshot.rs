//! A consistent point in the source database that the dump and the manifest
//! both describe.
//!
//! One connection opens a REPEATABLE READ READ ONLY transaction, exports its
//! snapshot, takes ACCESS SHARE locks on every table the dump will contain,
//! and counts their rows. `pg_dump --snapshot` then reads that same snapshot.
//! The transaction stays open (holding the locks) until the dump has ended,
//! so a concurrent TRUNCATE — which is not MVCC-safe and would make pg_dump
//! dump an empty table while the counts say otherwise — has to wait. The
//! price is a known trap: pg_dump's own `LOCK TABLE` can queue behind that
//! waiting TRUNCATE, which waits for us, which waits for pg_dump; PostgreSQL
//! cannot see this cycle. `pg_dump --lock-wait-timeout` breaks it, and the
//! caller retries the whole backup (see [`crate::Error::is_temporary`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{Connection, Executor, PgConnection, Row};

use crate::conn::SourceSpec;
use crate::error::{Error, Result};
use crate::fingerprint::{schema_fingerprint_as, Algorithm};
use crate::tools::PgVersion;

/// Facts about the server, read in the snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerFacts {
    /// `server_version`, e.g. "16.15".
    pub version: String,
    /// `server_version_num`, e.g. 160015.
    pub version_num: u32,
    /// `pg_control_system().system_identifier`, when readable by the role.
    pub system_identifier: Option<String>,
    /// True on a standby.
    pub in_recovery: bool,
    /// Current WAL LSN on a primary, last replayed LSN on a standby.
    pub lsn: Option<String>,
    /// Standby only: how far the data lags behind the primary, seconds
    /// (0 while replay keeps up with what the WAL receiver streams; see
    /// [`Snapshot::data_at`]).
    pub replay_lag_seconds: Option<f64>,
    /// `pg_database_size` of the dumped database, bytes.
    pub database_size: i64,
    /// Whether the role is a superuser (decides how globals are dumped).
    pub superuser: bool,
}

impl ServerFacts {
    pub fn pg_version(&self) -> PgVersion {
        PgVersion::from_num(self.version_num)
    }
}

/// Rows of one table in the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableCount {
    pub schema: String,
    pub name: String,
    /// 0 when the data is excluded.
    pub rows: i64,
    /// Dumped without its rows (`exclude_table_data`): not counted.
    #[serde(default)]
    pub data_excluded: bool,
}

/// Exact (`count(*)`) or estimated (`reltuples`) row counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RowCountMode {
    #[default]
    Exact,
    Estimated,
}

/// How to take the snapshot.
#[derive(Debug, Clone)]
pub struct SnapshotOptions {
    /// `lock_timeout` for our own locks and counts.
    pub lock_timeout: Duration,
    pub row_counts: RowCountMode,
    /// Tables left out of the dump (`schema.table` or `table`, `*` globs),
    /// left out of the counts too.
    pub exclude_tables: Vec<String>,
    /// When not empty: only the tables these patterns match are dumped
    /// (the rest of the schema, functions, types and views, is kept).
    pub include_tables: Vec<String>,
    /// Tables whose definition is dumped but not their rows
    /// (`pg_dump --exclude-table-data`); not counted.
    pub exclude_table_data: Vec<String>,
}

/// An open snapshot: keep it alive until the dump has finished.
pub struct Snapshot {
    conn: PgConnection,
    /// Snapshot id for `pg_dump --snapshot`.
    pub id: String,
    /// Server `now()` in the snapshot's transaction.
    pub taken_at: DateTime<Utc>,
    /// The time of the data the snapshot holds: `taken_at` on a primary
    /// and on a standby that keeps up, the last replayed commit on one that
    /// lags. The backup's recovery point.
    pub data_at: DateTime<Utc>,
    pub facts: ServerFacts,
    pub tables: Vec<TableCount>,
    /// Tables the exclusion patterns matched, resolved here so pg_dump is
    /// told their exact names (its own pattern rules differ: it folds
    /// unquoted patterns to lower case) and the counts match the dump by
    /// construction.
    pub excluded: Vec<(String, String)>,
    /// Tables the `exclude_table_data` patterns matched (among those
    /// dumped), resolved here likewise.
    pub data_excluded: Vec<(String, String)>,
    pub row_counts: RowCountMode,
    /// Number of large objects.
    pub large_objects: i64,
    /// [`crate::fingerprint`] of the schema in the snapshot, by the first
    /// algorithm (for older readers' drills).
    pub schema_fingerprint: String,
    /// The same by the current algorithm ([`crate::fingerprint::Algorithm::CURRENT`]).
    pub schema_fingerprint_v2: String,
}

fn q(e: sqlx::Error, spec: &SourceSpec, what: &str) -> Error {
    Error::Query {
        url: spec.redacted(),
        what: what.to_string(),
        source: e,
    }
}

/// Reads server facts that need no snapshot (version, recovery, identity).
pub async fn server_facts(conn: &mut PgConnection, spec: &SourceSpec) -> Result<ServerFacts> {
    let row = conn
        .fetch_one(
            "SELECT current_setting('server_version') AS v, \
                    current_setting('server_version_num')::int AS n, \
                    pg_is_in_recovery() AS rec, \
                    current_setting('is_superuser') = 'on' AS su, \
                    pg_database_size(current_database()) AS size",
        )
        .await
        .map_err(|e| q(e, spec, "reading server version"))?;
    let version: String = row.get("v");
    let version_num: i32 = row.get("n");
    // pg_control_system() is restricted on some setups; it is a fact worth
    // having, not worth failing for. Outside any transaction, so an error
    // here cannot poison the snapshot's transaction.
    let system_identifier = match conn
        .fetch_one("SELECT system_identifier::text AS id FROM pg_control_system()")
        .await
    {
        Ok(r) => Some(r.get::<String, _>("id")),
        Err(e) => {
            tracing::debug!(error = %e, "system identifier not readable");
            None
        }
    };
    Ok(ServerFacts {
        version: version.split_whitespace().next().unwrap_or("").to_string(),
        version_num: u32::try_from(version_num).unwrap_or(0),
        system_identifier,
        in_recovery: row.get("rec"),
        lsn: None,
        replay_lag_seconds: None,
        database_size: row.get("size"),
        superuser: row.get("su"),
    })
}

/// Quotes an identifier the way `quote_ident` does, always.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Whether `schema.name` matches one of the patterns.
pub use crate::pattern::table_matches as excluded;

/// Tables whose data pg_dump writes: ordinary tables and partitions outside
/// system schemas, not temporary, not owned by an extension; on a standby
/// not unlogged (pg_dump skips their data there).
const TABLES_SQL: &str = "\
SELECT n.nspname AS schema, c.relname AS name, c.reltuples::float8 AS est
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND c.relpersistence <> 't'
  AND ($1 = false OR c.relpersistence <> 'u')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
  AND NOT starts_with(n.nspname, 'pg_temp_') AND NOT starts_with(n.nspname, 'pg_toast_temp_')
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY n.nspname, c.relname";

impl SnapshotOptions {
    /// Whether the table is left out of the dump altogether: excluded, or
    /// not matched when `include_tables` names some.
    pub fn leaves_out(&self, schema: &str, name: &str) -> bool {
        excluded(&self.exclude_tables, schema, name)
            || (!self.include_tables.is_empty() && !excluded(&self.include_tables, schema, name))
    }
}

impl Snapshot {
    /// Opens the transaction, exports the snapshot, locks and counts.
    pub async fn take(spec: &SourceSpec, opts: &SnapshotOptions) -> Result<Snapshot> {
        let mut conn = spec.connect().await?;
        let mut facts = server_facts(&mut conn, spec).await?;
        let lock_ms = opts.lock_timeout.as_millis().max(1);
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(|e| q(e, spec, "BEGIN"))?;
        conn.execute(format!("SET LOCAL lock_timeout = {lock_ms}").as_str())
            .await
            .map_err(|e| q(e, spec, "SET lock_timeout"))?;
        // The data's time. A primary's is now. A standby's is now while its
        // replay keeps up with a running WAL receiver (an idle primary sends
        // nothing new, so an old last commit alone means nothing); otherwise
        // it is the last replayed commit: paused replay, replay behind what
        // was received, or no WAL receiver (cut off from the primary); when
        // nothing was replayed since the standby started, its start time
        // (the data is no newer than that).
        let lsn_sql = if facts.in_recovery {
            "SELECT pg_export_snapshot() AS id, now() AS at, pg_last_wal_replay_lsn()::text AS lsn, \
             CASE WHEN NOT pg_is_wal_replay_paused() \
                   AND pg_last_wal_receive_lsn() IS NOT NULL \
                   AND pg_last_wal_replay_lsn() >= pg_last_wal_receive_lsn() \
                   AND (SELECT count(*) FROM pg_stat_wal_receiver) > 0 \
                  THEN now() \
                  ELSE coalesce(pg_last_xact_replay_timestamp(), pg_postmaster_start_time()) END AS data_at"
        } else {
            "SELECT pg_export_snapshot() AS id, now() AS at, pg_current_wal_lsn()::text AS lsn, \
             now() AS data_at"
        };
        let row = conn
            .fetch_one(lsn_sql)
            .await
            .map_err(|e| q(e, spec, "exporting the snapshot"))?;
        let id: String = row.get("id");
        let taken_at: DateTime<Utc> = row.get("at");
        facts.lsn = row.get("lsn");
        let data_at: DateTime<Utc> = row.get("data_at");
        facts.replay_lag_seconds = facts
            .in_recovery
            .then(|| ((taken_at - data_at).num_milliseconds().max(0) as f64) / 1000.0);

        let rows = sqlx::query(TABLES_SQL)
            .bind(facts.in_recovery)
            .fetch_all(&mut conn)
            .await
            .map_err(|e| q(e, spec, "listing tables"))?;
        let (dropped, listed): (Vec<(String, String, f64)>, Vec<_>) = rows
            .iter()
            .map(|r| (r.get("schema"), r.get("name"), r.get("est")))
            .partition(|(s, n, _): &(String, String, f64)| opts.leaves_out(s, n));
        let excluded_tables: Vec<(String, String)> =
            dropped.into_iter().map(|(s, n, _)| (s, n)).collect();
        let data_excluded: Vec<(String, String)> = listed
            .iter()
            .filter(|(s, n, _)| excluded(&opts.exclude_table_data, s, n))
            .map(|(s, n, _)| (s.clone(), n.clone()))
            .collect();

        lock_tables(&mut conn, spec, &listed).await?;
        let mut tables = Vec::with_capacity(listed.len());
        for (schema, name, est) in listed {
            tables.push(count_rows(&mut conn, spec, opts, schema, name, est).await?);
        }
        let large_objects: i64 = conn
            .fetch_one("SELECT count(*) AS n FROM pg_largeobject_metadata")
            .await
            .map_err(|e| q(e, spec, "counting large objects"))?
            .get("n");
        // Both algorithms: drills by an older refugio compare the first.
        let mut fingerprints = Vec::new();
        for algorithm in [Algorithm::V1, Algorithm::V2] {
            let (f, _) = schema_fingerprint_as(&mut conn, algorithm, &excluded_tables)
                .await
                .map_err(|e| q(e, spec, "fingerprinting the schema"))?;
            fingerprints.push(f);
        }
        let schema_fingerprint_v2 = fingerprints.pop().unwrap_or_default();
        let schema_fingerprint = fingerprints.pop().unwrap_or_default();
        Ok(Snapshot {
            conn,
            id,
            taken_at,
            data_at,
            facts,
            tables,
            excluded: excluded_tables,
            data_excluded,
            row_counts: opts.row_counts,
            large_objects,
            schema_fingerprint,
            schema_fingerprint_v2,
        })
    }

    /// Ends the transaction (releasing the locks) and closes the connection.
    pub async fn release(mut self) {
        let _ = self.conn.execute("ROLLBACK").await;
        let _ = self.conn.close().await;
    }
}

/// Locks the tables before they are counted, in batches, so the counts and
/// pg_dump see the same table contents (see the module doc).
async fn lock_tables(
    conn: &mut PgConnection,
    spec: &SourceSpec,
    listed: &[(String, String, f64)],
) -> Result<()> {
    for chunk in listed.chunks(500) {
        let names: Vec<String> = chunk
            .iter()
            .map(|(s, n, _)| format!("{}.{}", quote_ident(s), quote_ident(n)))
            .collect();
        conn.execute(format!("LOCK TABLE {} IN ACCESS SHARE MODE", names.join(", ")).as_str())
            .await
            .map_err(|e| q(e, spec, "locking tables"))?;
    }
    Ok(())
}

/// One table's row count, as `opts.row_counts` says (`est`: the
/// planner's estimate); a table whose data is left out counts 0.
async fn count_rows(
    conn: &mut PgConnection,
    spec: &SourceSpec,
    opts: &SnapshotOptions,
    schema: String,
    name: String,
    est: f64,
) -> Result<TableCount> {
    if excluded(&opts.exclude_table_data, &schema, &name) {
        return Ok(TableCount {
            schema,
            name,
            rows: 0,
            data_excluded: true,
        });
    }
    let rows = match opts.row_counts {
        RowCountMode::Exact => {
            let sql = format!(
                "SELECT count(*) AS n FROM {}.{}",
                quote_ident(&schema),
                quote_ident(&name)
            );
            let r = conn
                .fetch_one(sql.as_str())
                .await
                .map_err(|e| q(e, spec, &format!("counting rows of {schema}.{name}")))?;
            r.get::<i64, _>("n")
        }
        RowCountMode::Estimated => est.max(0.0) as i64,
    };
    Ok(TableCount {
        schema,
        name,
        rows,
        data_excluded: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_ident("café"), "\"café\"");
    }
}
