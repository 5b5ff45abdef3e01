//! What a drill checks once the backup is restored: row counts against the
//! manifest (per database), large objects, the schema fingerprint, the
//! job's SQL checks; and how each failure counts, against the backup or as
//! "could not check".

use std::time::Instant;

use refugio_dump::fingerprint::{self, Algorithm};
use refugio_dump::snapshot::quote_ident;
use refugio_dump::SourceSpec;
use refugio_store::manifest::{DumpUnit, Manifest};
use refugio_store::repo::Repository;
use sqlx::{Connection, Executor, PgConnection, Row};

use super::scratch::q;
use super::{Check, DrillOptions};
use crate::error::Result;
use crate::receipt::{CountCheck, DatabaseChecked, Outcome, Receipt, SqlCheck};
use crate::restore::{restore_units, units_of, RestoreOptions};

/// What the checks found, beside the receipt's texts: evidence against the
/// backup, or only that something could not be checked.
#[derive(Debug, Default)]
pub(super) struct Tally {
    pub(super) bad: bool,
    pub(super) unsure: bool,
}

impl Tally {
    /// The backup is bad.
    pub(super) fn bad(&mut self, receipt: &mut Receipt, failure: String) {
        self.bad = true;
        receipt.failures.push(failure);
    }

    /// Something could not be checked.
    pub(super) fn unsure(&mut self, receipt: &mut Receipt, failure: String) {
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

    pub(super) fn outcome(&self) -> Outcome {
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

/// Restores every database of `manifest` into its scratch database
/// (`names`, in the manifest's order, on `server`), then checks each.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run_checks(
    repo: &Repository,
    manifest: &Manifest,
    opts: &DrillOptions,
    server: &SourceSpec,
    names: &[String],
    ephemeral: bool,
    receipt: &mut Receipt,
    tally: &mut Tally,
) -> Result<()> {
    let t = Instant::now();
    let units = units_of(manifest)?;
    let plan: Vec<(DumpUnit<'_>, SourceSpec)> = units
        .iter()
        .zip(names)
        .map(|(u, n)| (u.clone(), server.with_database(n)))
        .collect();
    // On our own cluster the roles are restored too, so ownership and
    // grants are restored for real; on a shared server they are not touched.
    let with_globals = ephemeral && manifest.artifact("globals").is_some();
    let ropts = RestoreOptions {
        target: server.clone(),
        clean: false,
        // Created (with their owner marker) by the drill.
        create: false,
        globals: with_globals,
        jobs: opts.jobs.max(1),
        no_owner: !with_globals,
        bindir: opts.bindir.clone(),
        temp_dir: None,
        identities: opts.identities.clone(),
        require_encrypted: opts.require_encrypted,
        database: None,
        progress: opts.progress.clone(),
        guard: None,
    };
    let report = restore_units(repo, manifest, &plan, &ropts).await?;
    receipt.phases.fetch_restore_seconds = t.elapsed().as_secs_f64();
    receipt.restore_tool = Some(format!("{} {}", report.tool, report.tool_version));
    receipt.digests_checked = units
        .iter()
        .map(|u| (u.artifact.name.clone(), u.artifact.sha256.clone()))
        .collect();

    // A check for a database the backup does not hold: the backup lacks
    // what the operator expects of it.
    for c in &opts.checks {
        if let Some(d) = c.database.as_deref() {
            if !units.iter().any(|u| u.database == d) {
                let detail = format!("names database {d:?}, which this backup does not hold");
                tally.bad(receipt, format!("SQL check {:?} {detail}", c.sql));
                receipt.checks.push(SqlCheck {
                    sql: c.sql.clone(),
                    ok: false,
                    detail,
                    database: Some(d.to_string()),
                });
            }
        }
    }
    let label = |u: &DumpUnit<'_>| manifest.is_server().then(|| u.database.to_string());
    for (unit, target) in &plan {
        check_database(opts, unit, label(unit), target, receipt, tally).await?;
    }
    Ok(())
}

/// The checks of one restored database.
async fn check_database(
    opts: &DrillOptions,
    unit: &DumpUnit<'_>,
    label: Option<String>,
    target: &SourceSpec,
    receipt: &mut Receipt,
    tally: &mut Tally,
) -> Result<()> {
    let mut conn = target.connect().await?;
    if receipt.scratch_server_version.is_none() {
        receipt.scratch_server_version = conn
            .fetch_one("SELECT current_setting('server_version') AS v")
            .await
            .ok()
            .map(|r| r.get::<String, _>("v"));
    }
    crate::progress::phase(opts.progress.as_ref(), || {
        format!("checking {}", unit.database)
    });
    let t = Instant::now();
    conn.execute("ANALYZE")
        .await
        .map_err(|e| q(target, "ANALYZE", e))?;
    receipt.phases.analyze_seconds += t.elapsed().as_secs_f64();

    let t = Instant::now();
    let of = match &label {
        Some(d) => format!("database {d}: "),
        None => String::new(),
    };
    let large_objects = count_checks(&mut conn, unit, &label, receipt, tally).await;
    // The newest algorithm the backup has.
    let fingerprint = match unit.schema_fingerprint_v2.or(unit.schema_fingerprint) {
        Some(expected) => compare_fingerprint(&mut conn, expected, &of, receipt, tally).await,
        None => None,
    };
    let mine = |c: &&Check| c.database.as_deref().is_none_or(|d| d == unit.database);
    for check in opts.checks.iter().filter(mine) {
        sql_check(&mut conn, check, &of, &label, receipt, tally).await;
    }
    receipt.phases.checks_seconds += t.elapsed().as_secs_f64();
    match label {
        Some(name) => receipt.databases.push(DatabaseChecked {
            name,
            large_objects,
            schema_fingerprint: fingerprint,
        }),
        None => {
            receipt.large_objects = large_objects;
            receipt.schema_fingerprint = fingerprint;
        }
    }
    let _ = conn.close().await;
    Ok(())
}

/// Compares the restored schema with the backup's fingerprint `expected`,
/// by the algorithm that made it; returns `(expected, restored)`.
/// A difference the algorithm cannot tell from a limit of pg_dump (a
/// [`Algorithm::V1`] fingerprint of a database with inheritance children),
/// or an algorithm this refugio does not know, is a note, not a failure.
async fn compare_fingerprint(
    conn: &mut PgConnection,
    expected: &str,
    of: &str,
    receipt: &mut Receipt,
    tally: &mut Tally,
) -> Option<(String, String)> {
    let Some(algorithm) = Algorithm::of(expected) else {
        receipt.notes.push(format!(
            "{of}schema fingerprint {expected:?} is of an algorithm this refugio does not know \
             (written by a newer refugio?): the schema was not compared"
        ));
        return None;
    };
    let actual = match fingerprint::schema_fingerprint_as(conn, algorithm, &[]).await {
        Ok((actual, _)) => actual,
        Err(e) => {
            let failure = format!("{of}fingerprinting the restored schema: {e}");
            tally.query_failed(receipt, &e, failure);
            return None;
        }
    };
    if actual != expected {
        let tool_limit = match algorithm {
            Algorithm::V1 => fingerprint::has_inheritance_children(conn).await,
            Algorithm::V2 => Ok(false),
        };
        match tool_limit {
            Ok(false) => tally.bad(
                receipt,
                format!("{of}schema fingerprint differs: backup {expected}, restored {actual}"),
            ),
            Ok(true) => receipt.notes.push(format!(
                "{of}schema fingerprint differs (backup {expected}, restored {actual}), but it \
                 was taken by an older refugio whose fingerprint includes the column order of \
                 inheritance children, which pg_dump does not keep: not counted against the backup"
            )),
            Err(e) => {
                let failure = format!("{of}looking for inheritance children: {e}");
                tally.query_failed(receipt, &e, failure);
            }
        }
    }
    Some((expected.to_string(), actual))
}

/// One SQL check: one row with one true value passes.
pub(super) async fn sql_check(
    conn: &mut PgConnection,
    check: &Check,
    of: &str,
    label: &Option<String>,
    receipt: &mut Receipt,
    tally: &mut Tally,
) {
    let sql = &check.sql;
    let mut environment = false;
    let (ok, detail) = match sqlx::query(sql).fetch_all(&mut *conn).await {
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
        (false, true) => tally.unsure(receipt, format!("{of}SQL check {sql:?} {detail}")),
        (false, false) => tally.bad(receipt, format!("{of}SQL check {sql:?} {detail}")),
    }
    receipt.checks.push(SqlCheck {
        sql: sql.clone(),
        ok,
        detail,
        database: label.clone(),
    });
}

/// Counts every table whose rows were dumped (not the data-excluded ones)
/// and the large objects; returns `(expected, restored)` large objects.
async fn count_checks(
    conn: &mut PgConnection,
    unit: &DumpUnit<'_>,
    label: &Option<String>,
    receipt: &mut Receipt,
    tally: &mut Tally,
) -> Option<(i64, i64)> {
    let of = match label {
        Some(d) => format!("database {d}: "),
        None => String::new(),
    };
    for t in unit.tables.iter().filter(|t| !t.data_excluded) {
        let table = format!("{}.{}", t.schema, t.name);
        let sql = format!(
            "SELECT count(*) AS n FROM {}.{}",
            quote_ident(&t.schema),
            quote_ident(&t.name)
        );
        let actual = match conn.fetch_one(sql.as_str()).await {
            Ok(r) => Some(r.get::<i64, _>("n")),
            Err(e) => {
                let failure = format!("{of}table {table}: cannot count rows: {e}");
                tally.query_failed(receipt, &e, failure);
                None
            }
        };
        let exact = unit.row_counts == "exact";
        let ok = actual.is_some_and(|a| !exact || a == t.rows);
        if let (false, Some(a)) = (ok, actual) {
            tally.bad(
                receipt,
                format!(
                    "{of}table {table}: expected {} rows (manifest), restored {a}",
                    t.rows
                ),
            );
        }
        receipt.counts.push(CountCheck {
            table,
            expected: t.rows,
            actual,
            ok,
            database: label.clone(),
        });
    }
    let r = conn
        .fetch_one("SELECT count(*) AS n FROM pg_largeobject_metadata")
        .await
        .ok()?;
    let n: i64 = r.get("n");
    if n != unit.large_objects {
        tally.bad(
            receipt,
            format!(
                "{of}large objects: expected {} (manifest), restored {n}",
                unit.large_objects
            ),
        );
    }
    Some((unit.large_objects, n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::receipt;

    use crate::fixtures::sqlstate as server;

    #[test]
    fn the_connection_and_the_servers_state_say_nothing_about_the_data() {
        for code in [
            "08006", // connection failure
            "53100", // disk full
            "57P01", // admin shutdown
            "58030", // I/O error
            "42601", // a check's SQL does not parse
        ] {
            assert!(environmental(&server(code)), "{code}");
        }
        for code in [
            "22012", // division by zero
            "42P01", // undefined table: the restore lost it
            "23505", // unique violation
            "42501", // insufficient privilege
            "0800X", // not a class prefix
        ] {
            let class_08 = code.starts_with("08");
            assert_eq!(environmental(&server(code)), class_08, "{code}");
        }
        assert!(environmental(&sqlx::Error::Io(std::io::Error::other(
            "reset"
        ))));
        assert!(environmental(&sqlx::Error::PoolTimedOut));
        assert!(environmental(&sqlx::Error::Protocol("bad message".into())));
        assert!(!environmental(&sqlx::Error::RowNotFound));
        assert!(!environmental(&sqlx::Error::ColumnNotFound("n".into())));
    }

    #[test]
    fn bad_outweighs_unsure_and_both_are_recorded() {
        let mut r = receipt("app", "20261128T060000Z", Outcome::Passed);
        r.failures.clear();
        let mut tally = Tally::default();
        assert_eq!(tally.outcome(), Outcome::Passed);
        tally.query_failed(&mut r, &server("57P01"), "server went away".into());
        assert_eq!((tally.bad, tally.unsure), (false, true));
        assert_eq!(tally.outcome(), Outcome::Inconclusive);
        tally.query_failed(&mut r, &server("42P01"), "table missing".into());
        assert_eq!((tally.bad, tally.unsure), (true, true));
        assert_eq!(tally.outcome(), Outcome::Failed);
        assert_eq!(r.failures, ["server went away", "table missing"]);

        let mut only_bad = Tally::default();
        only_bad.bad(&mut r, "count".into());
        assert_eq!(only_bad.outcome(), Outcome::Failed);
        let mut only_unsure = Tally::default();
        only_unsure.unsure(&mut r, "fetch".into());
        assert_eq!(only_unsure.outcome(), Outcome::Inconclusive);
        assert_eq!(r.failures.len(), 4);
    }
}
