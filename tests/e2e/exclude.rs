//! `exclude_tables` patterns are resolved in the snapshot and handed to
//! pg_dump as exact names, so what is counted and what is dumped agree
//! even where pg_dump's own pattern rules differ (it folds unquoted
//! patterns to lower case; refugio's globs are case-sensitive).

use anyhow::{Context, Result};
use refugio_testkit::Cluster;

use crate::common::*;

#[tokio::test(flavor = "multi_thread")]
async fn mixed_case_exclusions_leave_out_exactly_the_tables_they_name() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    src.psql(
        "app",
        "CREATE TABLE \"AuditLog\" (id int); INSERT INTO \"AuditLog\" SELECT generate_series(1, 5); \
         CREATE TABLE auditlog (id int); INSERT INTO auditlog SELECT generate_series(1, 7); \
         SELECT 1",
    )
    .await?;
    let repo = Repo::dir(tmp.path());
    let extra = format!(
        "globals = false\nscratch = {:?}\nexclude_tables = [\"Audit*\"]\n",
        src.url("postgres")
    );
    let config = write_config(tmp.path(), &repo, &job("app", &src, "app", &extra));
    let cfg = config.to_str().unwrap_or_default();
    refugio_ok(&["--config", cfg, "backup"], &[])?;
    let m = list(&config, &[])?.into_iter().next().context("manifest")?;
    let counted: Vec<String> = m["tables"]
        .as_array()
        .context("tables")?
        .iter()
        .filter_map(|t| t["name"].as_str().map(str::to_string))
        .collect();
    assert_eq!(counted, vec!["auditlog".to_string()], "{m}");

    // The drill restores and counts: it passes only if pg_dump left out
    // "AuditLog" and kept auditlog, as the counts say.
    let bindir = src.bindir().display().to_string();
    let out = refugio(
        &["--config", cfg, "verify", "--json", "--pg-bindir", &bindir],
        &[],
    );
    let text = all_output(&out);
    assert!(out.status.success(), "{text}");

    let dst = Cluster::start(16).await?;
    refugio_ok(
        &[
            "--config",
            cfg,
            "restore",
            "--backup",
            "latest",
            "--target",
            &dst.url("app"),
            "--create",
            "--pg-bindir",
            &bindir,
        ],
        &[],
    )?;
    assert_eq!(dst.psql("app", "SELECT count(*) FROM auditlog").await?, "7");
    let audit = dst
        .psql(
            "app",
            "SELECT coalesce((SELECT count(*) FROM \"AuditLog\")::text, 'none')",
        )
        .await;
    assert!(
        audit.is_err() || audit.as_deref().is_ok_and(|n| n == "0"),
        "\"AuditLog\"'s rows were left out: {audit:?}"
    );
    Ok(())
}

/// `include_tables` keeps only the tables it matches (and the rest of the
/// schema); `exclude_table_data` keeps a table's definition without its
/// rows, which the manifest marks and the drill does not count.
#[rstest::rstest]
#[case::directory(false)]
#[case::garage(true)]
#[tokio::test(flavor = "multi_thread")]
async fn table_scope_includes_and_excludes_data_as_the_manifest_says(
    #[case] garage: bool,
) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    src.psql(
        "app",
        "CREATE SCHEMA ops; \
         CREATE FUNCTION public.double(x int) RETURNS int LANGUAGE sql AS 'SELECT x * 2'; \
         CREATE TABLE public.trips (id int PRIMARY KEY, km int); \
         INSERT INTO public.trips SELECT g, g FROM generate_series(1, 30) g; \
         CREATE TABLE public.trip_events (id int, trip int); \
         INSERT INTO public.trip_events SELECT g, g FROM generate_series(1, 500) g; \
         CREATE TABLE public.riders (id int); INSERT INTO public.riders VALUES (1), (2); \
         CREATE TABLE ops.log (line text); INSERT INTO ops.log VALUES ('x');",
    )
    .await?;
    let repo = match garage {
        false => Repo::dir(tmp.path()),
        true => Repo::s3(refugio_testkit::s3::garage()?, "scope"),
    };
    let env = repo.env();
    let extra = format!(
        "globals = false\nscratch = {:?}\ninclude_tables = [\"public.trip*\"]\nexclude_table_data = [\"trip_events\"]\n",
        src.url("postgres")
    );
    let config = write_config(tmp.path(), &repo, &job("app", &src, "app", &extra));
    let cfg = config.to_str().unwrap_or_default();
    refugio_ok(&["--config", cfg, "backup"], &env)?;
    let m = list(&config, &env)?
        .into_iter()
        .next()
        .context("manifest")?;
    let tables = m["tables"].as_array().context("tables")?;
    let listed: Vec<(String, i64, bool)> = tables
        .iter()
        .map(|t| {
            (
                format!(
                    "{}.{}",
                    t["schema"].as_str().unwrap_or_default(),
                    t["name"].as_str().unwrap_or_default()
                ),
                t["rows"].as_i64().unwrap_or(-1),
                t["data_excluded"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    assert_eq!(
        listed,
        vec![
            ("public.trip_events".to_string(), 0, true),
            ("public.trips".to_string(), 30, false),
        ],
        "{m}"
    );

    // The drill passes: trip_events is restored empty and not counted.
    let bindir = src.bindir().display().to_string();
    let out = refugio(
        &["--config", cfg, "verify", "--json", "--pg-bindir", &bindir],
        &env,
    );
    let text = all_output(&out);
    assert!(out.status.success(), "{text}");
    let receipt: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let counted: Vec<&str> = receipt["counts"]
        .as_array()
        .context("counts")?
        .iter()
        .filter_map(|c| c["table"].as_str())
        .collect();
    assert_eq!(counted, vec!["public.trips"], "{receipt}");

    let dst = Cluster::start(16).await?;
    refugio_ok(
        &[
            "--config",
            cfg,
            "restore",
            "--backup",
            "latest",
            "--target",
            &dst.url("app"),
            "--create",
            "--pg-bindir",
            &bindir,
        ],
        &env,
    )?;
    assert_eq!(dst.psql("app", "SELECT count(*) FROM trips").await?, "30");
    assert_eq!(
        dst.psql("app", "SELECT count(*) FROM trip_events").await?,
        "0",
        "definition restored, rows left out"
    );
    assert_eq!(
        dst.psql("app", "SELECT public.double(21)").await?,
        "42",
        "functions kept"
    );
    let gone = dst
        .psql(
            "app",
            "SELECT count(*) FROM pg_class WHERE relname IN ('riders', 'log') AND relkind = 'r'",
        )
        .await?;
    assert_eq!(gone, "0", "tables outside include_tables are left out");
    Ok(())
}
