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
