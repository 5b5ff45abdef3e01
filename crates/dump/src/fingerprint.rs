//! A schema fingerprint: SHA-256 over a sorted listing of the user schema
//! (relations, columns with types and defaults, constraints, indexes,
//! functions, views). Taken in the dump's snapshot at backup time and again
//! in the restored database, it shows the restore rebuilt the same schema.
//! Owners, OIDs and physical details are left out: they legitimately
//! differ after a restore (e.g. `--no-owner` into a scratch database).

use sha2::{Digest, Sha256};
use sqlx::{PgConnection, Row};

/// Schemas that are not the user's.
const USER_NS: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') \
    AND n.nspname NOT LIKE 'pg_temp_%' AND n.nspname NOT LIKE 'pg_toast_temp_%'";

fn not_extension(class: &str, oid: &str) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = '{class}'::regclass \
         AND d.objid = {oid} AND d.deptype = 'e')"
    )
}

/// Leaves out the relations named in `$1` (`schema.name`, as given to
/// pg_dump's `--exclude-table`): `rel` is the relation's alias.
fn not_excluded(ns: &str, rel: &str) -> String {
    format!("({ns}.nspname || '.' || {rel}.relname) <> ALL($1::text[])")
}

/// The listing, one line per object, sorted.
pub async fn schema_listing(conn: &mut PgConnection) -> Result<Vec<String>, sqlx::Error> {
    schema_listing_without(conn, &[]).await
}

/// The listing without the tables (and their columns, constraints and
/// indexes) pg_dump was told to leave out: `(schema, name)`.
pub async fn schema_listing_without(
    conn: &mut PgConnection,
    excluded: &[(String, String)],
) -> Result<Vec<String>, sqlx::Error> {
    let excluded: Vec<String> = excluded.iter().map(|(s, n)| format!("{s}.{n}")).collect();
    let keep_c = not_excluded("n", "c");
    let queries = [
        format!(
            "SELECT 'rel ' || n.nspname || '.' || c.relname || ' ' || c.relkind::text AS l \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r','p','v','m','S','f') AND {USER_NS} AND {} AND {keep_c}",
            not_extension("pg_class", "c.oid")
        ),
        format!(
            "SELECT 'col ' || n.nspname || '.' || c.relname || ' ' \
                || row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum) || ' ' || a.attname || ' ' \
                || format_type(a.atttypid, a.atttypmod) || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END \
                || coalesce(' default ' || pg_get_expr(ad.adbin, ad.adrelid), '') AS l \
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum \
             WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r','p','v','m','f') \
               AND {USER_NS} AND {} AND {keep_c}",
            not_extension("pg_class", "c.oid")
        ),
        format!(
            "SELECT 'con ' || n.nspname || '.' || c.relname || ' ' || co.conname || ' ' \
                || pg_get_constraintdef(co.oid) AS l \
             FROM pg_constraint co JOIN pg_class c ON c.oid = co.conrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {USER_NS} AND {} AND {keep_c}",
            not_extension("pg_class", "c.oid")
        ),
        format!(
            "SELECT 'idx ' || n.nspname || ' ' || pg_get_indexdef(i.indexrelid) AS l \
             FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace tn ON tn.oid = t.relnamespace \
             WHERE {USER_NS} AND {} AND {}",
            not_extension("pg_class", "i.indrelid"),
            not_excluded("tn", "t")
        ),
        format!(
            "SELECT 'fn ' || n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) \
                || ') ' || coalesce(pg_get_function_result(p.oid), '') || ' ' || md5(coalesce(p.prosrc, '')) AS l \
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE {USER_NS} AND {} AND $1::text[] IS NOT NULL",
            not_extension("pg_proc", "p.oid")
        ),
        format!(
            "SELECT 'view ' || n.nspname || '.' || c.relname || ' ' || md5(pg_get_viewdef(c.oid)) AS l \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('v','m') AND {USER_NS} AND {} AND {keep_c}",
            not_extension("pg_class", "c.oid")
        ),
    ];
    let mut lines = Vec::new();
    for q in &queries {
        for row in sqlx::query(q).bind(&excluded).fetch_all(&mut *conn).await? {
            lines.push(row.get::<String, _>("l"));
        }
    }
    lines.sort();
    Ok(lines)
}

/// SHA-256 (hex) of the listing.
pub async fn schema_fingerprint(conn: &mut PgConnection) -> Result<(String, usize), sqlx::Error> {
    schema_fingerprint_without(conn, &[]).await
}

/// The fingerprint of what pg_dump writes when told to leave out
/// `excluded` tables: `(schema, name)`.
pub async fn schema_fingerprint_without(
    conn: &mut PgConnection,
    excluded: &[(String, String)],
) -> Result<(String, usize), sqlx::Error> {
    let lines = schema_listing_without(conn, excluded).await?;
    let mut h = Sha256::new();
    for l in &lines {
        h.update(l.as_bytes());
        h.update(b"\n");
    }
    Ok((hex::encode(h.finalize()), lines.len()))
}
