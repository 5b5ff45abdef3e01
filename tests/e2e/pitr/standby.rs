//! Physical jobs on clusters set up otherwise (issue 14): a standby, a tablespace.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use refugio_testkit::{s3, Cluster};

use super::*;

/// A base backup taken from a standby (the primary archives into the
/// job), then drilled: recovered from the primary's archived WAL, with
/// the rows written on the primary after the backup.
#[tokio::test(flavor = "multi_thread")]
async fn a_base_backup_from_a_standby_recovers_from_the_primarys_archive() -> Result<()> {
    let tmp = shared_tmp()?;
    let target = s3::garage()?;
    let config = tmp.path().join("refugio.toml");
    // A standby refuses a base backup of WAL written without full-page
    // images (testkit's default for speed).
    let mut settings = archiving(&config);
    settings.push("full_page_writes=on".into());
    let primary = Cluster::start_with_settings(16, &settings, &server_env(tmp.path())).await?;
    one(&primary, "CREATE TABLE ticks (id bigserial PRIMARY KEY, written_at timestamptz NOT NULL DEFAULT clock_timestamp())").await?;
    ticks(&primary, 20).await?;
    let standby = Cluster::start_standby(&primary).await?;
    let s = Setup::new(
        tmp.path(),
        &target,
        &standby,
        "checks = [\"SELECT count(*) = 60 FROM ticks\"]\n",
    )?;
    // The standby has replayed the rows before its base backup.
    let deadline = Instant::now() + Duration::from_secs(30);
    while one(&standby, "SELECT count(*) FROM ticks").await? != "20" {
        if Instant::now() > deadline {
            bail!("the standby did not replay the primary's rows");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = refugio_ok(&["--config", &s.cfg(), "backup", "--json"], &s.env)?;
    let m: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(m["physical"]["from"], "standby", "{m}");
    assert_eq!(m["server"]["in_recovery"], true, "{m}");

    ticks(&primary, 40).await?;
    switch_and_wait(&primary).await?;
    let r = drill(&s, &[], 0, "passed")?;
    assert!(
        r["checks"]
            .as_array()
            .is_some_and(|c| c.iter().all(|c| c["ok"] == true) && c.len() == 2),
        "pg_verifybackup and the count over the primary's later rows: {r}"
    );
    drop(standby);
    Ok(())
}

/// A cluster with a tablespace outside its data directory: refused with
/// a clear error naming it, nothing committed.
#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_with_a_tablespace_is_refused_naming_it() -> Result<()> {
    let tmp = shared_tmp()?;
    let target = s3::garage()?;
    let config = tmp.path().join("refugio.toml");
    let src =
        Cluster::start_with_settings(16, &archiving(&config), &server_env(tmp.path())).await?;
    let space = tmp.path().join("space");
    std::fs::create_dir(&space)?;
    std::os::unix::fs::chown(&space, Some(65534), Some(65534))?;
    one(
        &src,
        &format!("CREATE TABLESPACE far_away LOCATION '{}'", space.display()),
    )
    .await?;
    let s = Setup::new(tmp.path(), &target, &src, "")?;
    let out = crate::common::refugio(&["--config", &s.cfg(), "backup"], &s.env);
    let text = crate::common::all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("far_away") && text.contains("nothing was written"),
        "{text}"
    );
    let listed = crate::common::refugio_ok(&["--config", &s.cfg(), "list", "--json"], &s.env)?;
    let listed: serde_json::Value = serde_json::from_str(&listed)?;
    assert_eq!(listed, serde_json::json!([]), "nothing committed");
    Ok(())
}
