//! A logical and a physical job of one server in one config (issue 14:
//! "both kinds may coexist"): each is backed up, drilled, checked and
//! pruned on its own, and the WAL archive belongs to the physical one.

use anyhow::Result;
use refugio_testkit::{s3, Cluster};

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_logical_and_a_physical_job_of_one_server_live_side_by_side() -> Result<()> {
    let tmp = shared_tmp()?;
    let target = s3::garage()?;
    let config = tmp.path().join("refugio.toml");
    let src =
        Cluster::start_with_settings(16, &archiving(&config), &server_env(tmp.path())).await?;
    let s = Setup::new(
        tmp.path(),
        &target,
        &src,
        "checks = [\"SELECT count(*) = 25 FROM ticks\"]\n",
    )?;
    let logical = format!(
        "[[jobs]]\nname = \"dump\"\nsource = {:?}\npg_bindir = {:?}\nscratch = \"ephemeral\"\nchecks = [\"SELECT count(*) = 10 FROM ticks\"]\n",
        src.url("postgres"),
        src.bindir().display().to_string()
    );
    let both = format!("{}\n{}\n{logical}", s.repo_toml, s.job_toml);
    write_public(&config, &both)?;
    let cfg = s.cfg();
    one(&src, "CREATE TABLE ticks (id bigserial PRIMARY KEY, written_at timestamptz NOT NULL DEFAULT clock_timestamp())").await?;
    ticks(&src, 10).await?;

    let out = refugio_ok(
        &["--config", &cfg, "backup", "--job", "dump", "--json"],
        &s.env,
    )?;
    let dump: serde_json::Value = serde_json::from_str(&out)?;
    assert!(dump.get("physical").is_none(), "{dump}");
    let out = refugio_ok(
        &["--config", &cfg, "backup", "--job", "main", "--json"],
        &s.env,
    )?;
    let base: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(base["physical"]["timeline"], 1, "{base}");
    ticks(&src, 15).await?;
    switch_and_wait(&src).await?;

    // Each drill restores its own kind: the dump holds the 10 rows of its
    // snapshot, the base backup recovers to the archive's 25.
    for (job, replayed) in [("dump", false), ("main", true)] {
        let out = refugio(
            &["--config", &cfg, "verify", "--job", job, "--json"],
            &s.env,
        );
        let text = all_output(&out);
        assert_eq!(out.status.code(), Some(0), "{job}: {text}");
        let r: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        assert_eq!(r["outcome"], "passed", "{job}: {r}");
        assert!(
            r["restore_tool"]
                .as_str()
                .is_some_and(|t| t.contains("WAL replay") == replayed),
            "{job}: {r}"
        );
    }

    // check: the archive is the physical job's; the dump has none.
    let out = refugio_ok(&["--config", &cfg, "check", "--json"], &s.env)?;
    let checks: serde_json::Value = serde_json::from_str(&out)?;
    let by_job = |j: &str| {
        checks
            .as_array()
            .and_then(|a| a.iter().find(|r| r["job"] == j))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(by_job("main")["outcome"], "clean", "{checks}");
    assert_eq!(by_job("dump")["outcome"], "clean", "{checks}");
    assert!(
        by_job("main")["wal"]["files"].as_u64().unwrap_or(0) > 0,
        "{checks}"
    );
    assert!(by_job("dump")["wal"].is_null(), "{checks}");

    // prune of both: each keeps its verified backup; WAL is pruned only
    // against the base backup.
    let out = refugio_ok(
        &[
            "--config",
            &cfg,
            "prune",
            "--job",
            "dump",
            "--keep-last",
            "1",
            "--json",
        ],
        &s.env,
    )?;
    let pruned: serde_json::Value = serde_json::from_str(&out)?;
    let dump_id = dump["backup_id"].as_str().unwrap_or("?");
    assert_eq!(pruned[0]["states"][dump_id], "verified", "{pruned}");
    assert!(pruned[0].get("wal_pruned").is_none(), "{pruned}");
    let out = refugio_ok(
        &[
            "--config",
            &cfg,
            "prune",
            "--job",
            "main",
            "--keep-last",
            "1",
            "--json",
        ],
        &s.env,
    )?;
    let pruned: serde_json::Value = serde_json::from_str(&out)?;
    let base_id = base["backup_id"].as_str().unwrap_or("?");
    assert_eq!(pruned[0]["states"][base_id], "verified", "{pruned}");
    assert!(pruned[0]["wal_pruned"]["before"].is_string(), "{pruned}");
    drop(src);
    Ok(())
}
