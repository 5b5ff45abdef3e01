//! Sample data to back up and restore: a small schema that exercises what
//! pg_dump has to get right, and bulk rows for dumps that take a while.

use anyhow::{ensure, Context, Result};

use crate::cluster::{quote_ident, Cluster, PASSWORD_USER};

/// Rows per table of [`load_sample`], sorted by (schema, table).
const SAMPLE_TABLES: &[(&str, &str, i64)] = &[
    ("billing", "invoices", 40),
    ("public", "attachments", 2),
    ("public", "café_ñandú", 4),
    ("public", "documents", 10),
    ("public", "events", 25),
    ("public", "riders", 3),
    ("public", "trips", 120),
];

/// Loads a sample schema into `db` (which must not have it yet) and returns
/// (schema, table, row count) for every table it created, sorted.
///
/// What it covers: `trips` (the table the runbook counts) owned by the role
/// `trip_owner` (created if missing; roles are cluster-wide, so restoring
/// ownership needs the globals), `riders` with a foreign key from `trips`, a
/// bytea column with NUL and non-UTF-8 bytes (`documents`), a jsonb column
/// (`events`), large objects made with `lo_from_bytea` referenced from
/// `attachments` (readable by [`PASSWORD_USER`] through a grant on each, as
/// `pg_read_all_data` does not cover large objects), a non-ASCII table and column (`"café_ñandú"."descripción"`),
/// a second schema `billing` with a sequence (`billing.invoice_number_seq`,
/// advanced past its start), a view (`trip_summary`), a plpgsql function
/// (`fare_with_tip`) and a comment. Statistics are gathered (ANALYZE), so
/// estimated row counts are right too.
pub async fn load_sample(cluster: &Cluster, db: &str) -> Result<Vec<(String, String, i64)>> {
    let count = |schema: &str, table: &str| -> i64 {
        SAMPLE_TABLES
            .iter()
            .find(|(s, t, _)| *s == schema && *t == table)
            .map_or(0, |(_, _, n)| *n)
    };
    let sql = format!(
        r#"
BEGIN;
-- Roles are shared by all databases of a cluster: tolerate an existing one,
-- and a concurrent load creating it at the same time.
DO $$
BEGIN
    CREATE ROLE trip_owner NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

CREATE TABLE riders (
    id integer PRIMARY KEY,
    name text NOT NULL,
    email text UNIQUE
);
INSERT INTO riders VALUES
    (1, 'Ada', 'ada@example.org'),
    (2, 'Grace', 'grace@example.org'),
    (3, 'José', NULL);

CREATE TABLE trips (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rider_id integer NOT NULL REFERENCES riders (id),
    started_at timestamptz NOT NULL,
    distance_km numeric(8, 2) NOT NULL,
    fare numeric(10, 2) NOT NULL
);
INSERT INTO trips (rider_id, started_at, distance_km, fare)
SELECT 1 + g % 3,
       timestamptz '2026-01-01 00:00:00+00' + g * interval '37 minutes',
       (g % 17) + 0.5,
       3.50 + (g % 11) * 1.25
FROM generate_series(1, {trips}) AS g;
COMMENT ON TABLE trips IS 'One row per completed trip';
ALTER TABLE trips OWNER TO trip_owner;

CREATE TABLE documents (
    id integer PRIMARY KEY,
    name text NOT NULL,
    content bytea NOT NULL
);
INSERT INTO documents
SELECT g, 'doc-' || g, decode(md5(g::text), 'hex') || '\x00ff00fe'::bytea
FROM generate_series(1, {documents}) AS g;

CREATE TABLE events (
    id integer PRIMARY KEY,
    kind text NOT NULL,
    payload jsonb NOT NULL
);
INSERT INTO events
SELECT g,
       CASE WHEN g % 2 = 0 THEN 'start' ELSE 'stop' END,
       jsonb_build_object('trip', g, 'tags', jsonb_build_array('a', 'b'), 'note', 'naïve ✓')
FROM generate_series(1, {events}) AS g;

CREATE TABLE attachments (
    id integer PRIMARY KEY,
    trip_id bigint NOT NULL,
    blob oid NOT NULL
);
INSERT INTO attachments VALUES
    (1, 1, lo_from_bytea(0, convert_to('receipt for trip 1', 'UTF8'))),
    (2, 2, lo_from_bytea(0, decode(repeat('00ff', 4096), 'hex')));
-- pg_read_all_data does not cover large objects: without this grant the
-- password user's pg_dump fails with "permission denied for large object".
DO $$
DECLARE
    lo oid;
BEGIN
    FOR lo IN SELECT blob FROM attachments LOOP
        EXECUTE format('GRANT SELECT ON LARGE OBJECT %s TO {password_user}', lo);
    END LOOP;
END
$$;

CREATE TABLE "café_ñandú" (
    id integer PRIMARY KEY,
    "descripción" text NOT NULL
);
INSERT INTO "café_ñandú" VALUES
    (1, 'pingüino'), (2, '日本語'), (3, 'emoji 🐧'), (4, 'quote '' and tab	here');

CREATE SCHEMA billing;
CREATE SEQUENCE billing.invoice_number_seq START 1000;
CREATE TABLE billing.invoices (
    number bigint PRIMARY KEY DEFAULT nextval('billing.invoice_number_seq'),
    trip_id bigint NOT NULL,
    amount numeric(10, 2) NOT NULL,
    issued_on date NOT NULL
);
ALTER SEQUENCE billing.invoice_number_seq OWNED BY billing.invoices.number;
INSERT INTO billing.invoices (trip_id, amount, issued_on)
SELECT g, 10 + g, date '2026-01-01' + g
FROM generate_series(1, {invoices}) AS g;

CREATE VIEW trip_summary AS
SELECT r.name, count(t.id) AS trips, coalesce(sum(t.fare), 0) AS total_fare
FROM riders r LEFT JOIN trips t ON t.rider_id = r.id
GROUP BY r.name;

CREATE FUNCTION fare_with_tip(fare numeric, tip_percent numeric DEFAULT 10)
RETURNS numeric
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    RETURN round(fare * (1 + tip_percent / 100), 2);
END
$$;

ANALYZE;
COMMIT;
"#,
        trips = count("public", "trips"),
        documents = count("public", "documents"),
        events = count("public", "events"),
        invoices = count("billing", "invoices"),
        password_user = PASSWORD_USER,
    );
    cluster
        .psql(db, &sql)
        .await
        .with_context(|| format!("loading the sample schema into {db:?}"))?;

    // The row counts of the fixed inserts (riders, attachments, café_ñandú)
    // are written out above; check them all so the list cannot drift.
    let mut tables = Vec::with_capacity(SAMPLE_TABLES.len());
    for &(schema, table, expected) in SAMPLE_TABLES {
        let got: i64 = cluster
            .psql(
                db,
                &format!(
                    "SELECT count(*) FROM {}.{}",
                    quote_ident(schema),
                    quote_ident(table)
                ),
            )
            .await?
            .trim()
            .parse()
            .context("parsing a row count")?;
        ensure!(
            got == expected,
            "sample table {schema}.{table} has {got} rows, expected {expected}"
        );
        tables.push((schema.to_string(), table.to_string(), expected));
    }
    Ok(tables)
}

/// Creates table `bulk (id bigint, payload text)` in `db` with `rows` rows of
/// about 100 bytes each: `payload` is 100 characters of base64 of md5 digests,
/// so it compresses poorly (6 bits of entropy per character, no repeats).
/// Meant for dumps that run long enough to interrupt or to measure.
pub async fn load_bulk(cluster: &Cluster, db: &str, rows: i64) -> Result<()> {
    ensure!(
        rows >= 0,
        "load_bulk: rows must not be negative, got {rows}"
    );
    let sql = format!(
        r#"
CREATE TABLE bulk (id bigint NOT NULL, payload text NOT NULL);
INSERT INTO bulk
SELECT g,
       left(replace(encode(decode(
           md5(g::text) || md5((g + 1)::text) || md5((-g)::text)
           || md5((g * 31)::text) || md5((g * 37)::text), 'hex'), 'base64'), E'\n', ''), 100)
FROM generate_series(1, {rows}) AS g;
ANALYZE bulk;
"#
    );
    cluster
        .psql(db, &sql)
        .await
        .with_context(|| format!("loading {rows} bulk rows into {db:?}"))?;
    Ok(())
}
