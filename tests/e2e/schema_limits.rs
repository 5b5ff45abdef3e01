//! A drill's schema comparison judges what pg_dump and pg_restore can
//! carry. An inheritance child whose parent later got a column comes back
//! with the parent's columns first (pg_dump writes `CREATE TABLE child (its
//! own columns) INHERITS (parent)`): that is the tools' limit, not damage,
//! and the drill passes. A restored schema that really differs (a dropped
//! column, a changed type, a missing index) still fails it.
//!
//! Damage is injected by grafting: the source's schema is changed after a
//! first backup, a second backup is taken, and the first backup's
//! fingerprints are written into the second's manifest, so the drill
//! restores a schema that differs from the one its manifest describes in
//! exactly that one way (row counts and digests stay right).

use std::path::PathBuf;

use anyhow::{Context, Result};
use refugio_testkit::Cluster;
use rstest::rstest;
use serde_json::Value;

use crate::common::*;

/// The case, plus a plain table with an index.
const SCHEMA: &str = "CREATE TABLE parent (a int); \
    CREATE TABLE child (b int) INHERITS (parent); \
    ALTER TABLE parent ADD COLUMN c int; \
    INSERT INTO child VALUES (1, 2, 3); \
    CREATE TABLE notes (id int PRIMARY KEY, body text, kind int); \
    CREATE INDEX notes_body_idx ON notes (body); \
    INSERT INTO notes VALUES (1, 'x', 1);";

#[derive(Debug, Clone, Copy)]
enum Case {
    /// The inheritance case as backed up: passed.
    Faithful,
    /// A column of the inheritance child gone in the restored copy.
    DroppedColumn,
    /// A column's type changed in the restored copy.
    ChangedType,
    /// An index missing from the restored copy.
    MissingIndex,
    /// A backup of an older refugio (format 1.7, first fingerprint
    /// algorithm only) of the inheritance case: passed, with a note.
    LegacyFaithful,
    /// An older refugio's backup whose restored copy lacks a table (no
    /// inheritance child left to excuse a difference): failed.
    LegacyMissingTable,
}

impl Case {
    fn damage(self) -> Option<&'static str> {
        match self {
            Case::Faithful | Case::LegacyFaithful => None,
            Case::DroppedColumn => Some("ALTER TABLE child DROP COLUMN b"),
            Case::ChangedType => Some("ALTER TABLE notes ALTER COLUMN kind TYPE bigint"),
            Case::MissingIndex => Some("DROP INDEX notes_body_idx"),
            Case::LegacyMissingTable => Some("DROP TABLE child"),
        }
    }

    fn legacy(self) -> bool {
        matches!(self, Case::LegacyFaithful | Case::LegacyMissingTable)
    }
}

fn manifest_path(tmp: &std::path::Path, id: &str) -> PathBuf {
    tmp.join("repo/app").join(id).join("manifest.json")
}

fn edit_manifest(path: &std::path::Path, edit: impl FnOnce(&mut Value)) -> Result<()> {
    let mut m: Value = serde_json::from_slice(&std::fs::read(path)?)?;
    edit(&mut m);
    std::fs::write(path, serde_json::to_vec_pretty(&m)?)?;
    Ok(())
}

#[rstest]
#[case::inheritance_passes(Case::Faithful)]
#[case::dropped_column_fails(Case::DroppedColumn)]
#[case::changed_type_fails(Case::ChangedType)]
#[case::missing_index_fails(Case::MissingIndex)]
#[case::legacy_inheritance_passes_with_a_note(Case::LegacyFaithful)]
#[case::legacy_missing_table_fails(Case::LegacyMissingTable)]
#[tokio::test(flavor = "multi_thread")]
async fn only_real_schema_differences_fail_a_drill(#[case] case: Case) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    src.psql("app", SCHEMA).await?;
    let repo = Repo::dir(tmp.path());
    let extra = format!("scratch = {:?}\nglobals = false\n", src.url("postgres"));
    let config = write_config(tmp.path(), &repo, &job("app", &src, "app", &extra));
    let cfg = config.to_str().unwrap_or_default();
    refugio_ok(&["--config", cfg, "backup"], &[])?;
    let first = list(&config, &[])?.into_iter().next().context("manifest")?;
    let mut id = first["backup_id"].as_str().context("id")?.to_string();
    assert!(
        first["schema_fingerprint_v2"]
            .as_str()
            .is_some_and(|f| f.starts_with("v2:")),
        "{first}"
    );

    if let Some(sql) = case.damage() {
        src.psql("app", sql).await?;
        refugio_ok(&["--config", cfg, "backup"], &[])?;
        id = list(&config, &[])?
            .into_iter()
            .map(|m| m["backup_id"].as_str().unwrap_or_default().to_string())
            .find(|i| *i != id)
            .context("a second backup")?;
        edit_manifest(&manifest_path(tmp.path(), &id), |m| {
            m["schema_fingerprint"] = first["schema_fingerprint"].clone();
            m["schema_fingerprint_v2"] = first["schema_fingerprint_v2"].clone();
        })?;
    }
    if case.legacy() {
        // As refugio before the second algorithm wrote it.
        edit_manifest(&manifest_path(tmp.path(), &id), |m| {
            m["format"] = "1.7".into();
            if let Some(o) = m.as_object_mut() {
                o.remove("schema_fingerprint_v2");
            }
        })?;
    }

    let bindir = src.bindir().display().to_string();
    let out = refugio(
        &[
            "--config",
            cfg,
            "verify",
            "--json",
            "--backup",
            &id,
            "--pg-bindir",
            &bindir,
        ],
        &[],
    );
    let text = all_output(&out);
    let r: Value = serde_json::from_slice(&out.stdout).with_context(|| text.clone())?;
    let failures = r["failures"].to_string();
    let notes = r["notes"].to_string();
    match case {
        Case::Faithful => {
            assert_eq!(r["outcome"], "passed", "{r}");
            assert_eq!(out.status.code(), Some(0), "{text}");
            let fp = &r["schema_fingerprint"];
            assert_eq!(fp[0], fp[1], "{r}");
            assert!(fp[0].as_str().is_some_and(|f| f.starts_with("v2:")), "{r}");
            assert!(r.get("notes").is_none(), "nothing to excuse: {r}");
            observed(
                43,
                "inheritance child, parent column added later: drill passed",
            );
        }
        Case::LegacyFaithful => {
            assert_eq!(r["outcome"], "passed", "{r}");
            assert_eq!(out.status.code(), Some(0), "{text}");
            assert!(
                notes.contains("inheritance children") && notes.contains("not counted"),
                "{r}"
            );
            observed(
                43,
                "older refugio's backup (first fingerprint) of the inheritance case: passed with a note",
            );
        }
        _ => {
            assert_eq!(r["outcome"], "failed", "{case:?}: {r}");
            assert_eq!(out.status.code(), Some(1), "{text}");
            assert!(
                failures.contains("schema fingerprint differs"),
                "{case:?}: {r}"
            );
            assert!(
                r["counts"]
                    .as_array()
                    .is_some_and(|c| c.iter().all(|c| c["ok"] == true)),
                "only the schema differs: {r}"
            );
            observed(43, &format!("{case:?} in the restored copy: drill failed"));
        }
    }
    Ok(())
}

/// A user schema whose name only looks like a temporary one to a `LIKE`
/// pattern (`pg_temp_%` matches `pgxtempy…`: `_` is a wildcard) is backed
/// up, counted and fingerprinted like any other; a drill restores it.
#[tokio::test(flavor = "multi_thread")]
async fn a_schema_named_like_a_temporary_one_is_counted_and_drilled() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    src.psql(
        "app",
        "CREATE SCHEMA pgxtempy; CREATE TABLE pgxtempy.trips (id int); \
         INSERT INTO pgxtempy.trips SELECT generate_series(1, 7);",
    )
    .await?;
    let repo = Repo::dir(tmp.path());
    let config = write_config(
        tmp.path(),
        &repo,
        &job("app", &src, "app", "scratch = \"ephemeral\"\n"),
    );
    let cfg = config.to_str().context("path")?;
    let m: Value = serde_json::from_str(&refugio_ok(&["--config", cfg, "backup", "--json"], &[])?)?;
    let counted = manifest_counts(&m);
    assert!(
        counted.contains(&("pgxtempy".to_string(), "trips".to_string(), 7)),
        "the manifest counts pgxtempy.trips: {counted:?}"
    );
    let out = refugio(&["--config", cfg, "verify", "--json"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", all_output(&out));
    Ok(())
}
