//! A schema fingerprint: SHA-256 over a sorted listing of the user schema
//! (relations, columns with types and defaults, constraints, indexes,
//! functions, views). Taken in the dump's snapshot at backup time and again
//! in the restored database, it shows the restore rebuilt the same schema.
//! Owners, OIDs and physical details are left out: they legitimately
//! differ after a restore (e.g. `--no-owner` into a scratch database).
//!
//! The listing holds only what pg_dump and pg_restore carry: a difference
//! the tools themselves make is not damage. Column order is listed for
//! every relation except inheritance children (not partitions): pg_dump
//! writes a child as `CREATE TABLE child (its own columns) INHERITS
//! (parent)`, so the parent's columns come first whatever order the child
//! had (a parent that got a column after the child was made, a child
//! attached with `ALTER TABLE … INHERIT`). Their columns are listed by
//! name, type, nullability and default without a position. Partitions keep
//! their position: pg_dump creates a partition whose columns differ from
//! its parent's as a table and attaches it, keeping its order.
//!
//! Fingerprints are versioned by [`Algorithm`]: the current one is written
//! `v2:<hex>` (manifest field `schema_fingerprint_v2`, format 1.8+); a bare
//! 64-digit hex is the first algorithm's (`schema_fingerprint`, still
//! written so an older refugio's drill compares what it knows), compared
//! by recomputing that algorithm.

use sha2::{Digest, Sha256};
use sqlx::{PgConnection, Row};

/// How a fingerprint was computed; its text says which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Bare hex: every relation's columns with their position, including
    /// inheritance children's (which pg_dump does not keep).
    V1,
    /// `v2:<hex>`: inheritance children's columns without a position.
    V2,
}

impl Algorithm {
    /// The algorithm new backups use.
    pub const CURRENT: Algorithm = Algorithm::V2;

    /// The algorithm of a stored fingerprint; `None` for text neither of
    /// them writes (a newer refugio's algorithm, or garbage).
    pub fn of(fingerprint: &str) -> Option<Algorithm> {
        let hex = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
        match fingerprint.strip_prefix("v2:") {
            Some(rest) if hex(rest) => Some(Algorithm::V2),
            None if hex(fingerprint) => Some(Algorithm::V1),
            _ => None,
        }
    }

    fn render(self, digest: &str) -> String {
        match self {
            Algorithm::V1 => digest.to_string(),
            Algorithm::V2 => format!("v2:{digest}"),
        }
    }
}

/// Relations whose column order pg_dump does not keep: inheritance children
/// that are not partitions (`c` is the relation's alias).
fn inheritance_child(c: &str) -> String {
    format!(
        "(NOT {c}.relispartition AND EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = {c}.oid))"
    )
}

/// Schemas that are not the user's.
const USER_NS: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') \
    AND NOT starts_with(n.nspname, 'pg_temp_') AND NOT starts_with(n.nspname, 'pg_toast_temp_')";

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

/// The listing (current algorithm), one line per object, sorted.
pub async fn schema_listing(conn: &mut PgConnection) -> Result<Vec<String>, sqlx::Error> {
    schema_listing_as(conn, Algorithm::CURRENT, &[]).await
}

/// The listing of `algorithm` without the tables (and their columns,
/// constraints and indexes) pg_dump was told to leave out: `(schema, name)`.
pub async fn schema_listing_as(
    conn: &mut PgConnection,
    algorithm: Algorithm,
    excluded: &[(String, String)],
) -> Result<Vec<String>, sqlx::Error> {
    let excluded: Vec<String> = excluded.iter().map(|(s, n)| format!("{s}.{n}")).collect();
    let keep_c = not_excluded("n", "c");
    let position = "row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum)";
    let position = match algorithm {
        Algorithm::V1 => position.to_string(),
        Algorithm::V2 => format!(
            "CASE WHEN {} THEN '-' ELSE ({position})::text END",
            inheritance_child("c")
        ),
    };
    let queries = [
        format!(
            "SELECT 'rel ' || n.nspname || '.' || c.relname || ' ' || c.relkind::text AS l \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r','p','v','m','S','f') AND {USER_NS} AND {} AND {keep_c}",
            not_extension("pg_class", "c.oid")
        ),
        format!(
            "SELECT 'col ' || n.nspname || '.' || c.relname || ' ' \
                || {position} || ' ' || a.attname || ' ' \
                || format_type(a.atttypid, a.atttypmod) || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END \
                || coalesce(' default ' || pg_get_expr(ad.adbin, ad.adrelid), '') AS l \
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum \
             WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r','p','v','m','f') \
               AND {USER_NS} AND {} AND {keep_c}",
            not_extension("pg_class", "c.oid"),
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

/// The fingerprint (current algorithm, `v2:<hex>`) and the number of
/// objects listed.
pub async fn schema_fingerprint(conn: &mut PgConnection) -> Result<(String, usize), sqlx::Error> {
    schema_fingerprint_as(conn, Algorithm::CURRENT, &[]).await
}

/// The fingerprint of `algorithm` (written as that algorithm writes it) of
/// what pg_dump writes when told to leave out `excluded` tables: `(schema,
/// name)`.
pub async fn schema_fingerprint_as(
    conn: &mut PgConnection,
    algorithm: Algorithm,
    excluded: &[(String, String)],
) -> Result<(String, usize), sqlx::Error> {
    let lines = schema_listing_as(conn, algorithm, excluded).await?;
    let mut h = Sha256::new();
    for l in &lines {
        h.update(l.as_bytes());
        h.update(b"\n");
    }
    Ok((algorithm.render(&hex::encode(h.finalize())), lines.len()))
}

/// Whether the database holds inheritance children, whose column order a
/// [`Algorithm::V1`] fingerprint includes and pg_dump does not keep.
pub async fn has_inheritance_children(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE {USER_NS} AND {}) AS x",
        inheritance_child("c")
    );
    Ok(sqlx::query(&sql).fetch_one(conn).await?.get::<bool, _>("x"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_algorithm_is_read_from_the_text() {
        let hex = "ab".repeat(32);
        assert_eq!(Algorithm::of(&hex), Some(Algorithm::V1));
        assert_eq!(Algorithm::of(&format!("v2:{hex}")), Some(Algorithm::V2));
        assert_eq!(Algorithm::of(&format!("v3:{hex}")), None);
        assert_eq!(Algorithm::of("v2:abc"), None);
        assert_eq!(Algorithm::of(&"zz".repeat(32)), None);
        assert_eq!(Algorithm::V2.render(&hex), format!("v2:{hex}"));
        assert_eq!(Algorithm::V1.render(&hex), hex);
    }
}
