//! A physical drill when the store fails under it (issue 14, issue 7's
//! three outcomes): could not check is not a bad backup.

use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::Signal;
use refugio_testkit::{s3, Cluster, FaultProxy, Rule};

use super::*;

/// The store refuses every WAL download while the drill's server
/// recovers: wal-fetch exits 126, the server stops, and the drill is
/// inconclusive (not failed), from the command line and in the agent
/// (SIGUSR2, the path a scheduled drill takes: its metrics); retention
/// still counts the backup as unverified, never failed. With the store
/// back, the agent's next drill passes and its RPO and RTO are exported.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_failing_during_recovery_makes_the_drill_inconclusive() -> Result<()> {
    let tmp = shared_tmp()?;
    let proxy = FaultProxy::start(&s3::garage()?)?;
    let config = tmp.path().join("refugio.toml");
    let src =
        Cluster::start_with_settings(16, &archiving(&config), &server_env(tmp.path())).await?;
    let s = Setup::new(
        tmp.path(),
        &proxy.target(),
        &src,
        "checks = [\"SELECT count(*) = 30 FROM ticks\"]\ntargets = { rpo = \"10m\", rto = \"10m\" }\n",
    )?;
    one(&src, "CREATE TABLE ticks (id bigserial PRIMARY KEY, written_at timestamptz NOT NULL DEFAULT clock_timestamp())").await?;
    ticks(&src, 10).await?;
    let out = refugio_ok(&["--config", &s.cfg(), "backup", "--json"], &s.env)?;
    let m: serde_json::Value = serde_json::from_str(&out)?;
    let id = m["backup_id"].as_str().unwrap_or("?").to_string();
    ticks(&src, 20).await?;
    switch_and_wait(&src).await?;

    // Listings and the base backup's download pass; every WAL object's
    // GET is refused.
    let refuse = proxy.add(
        Rule::new()
            .method("GET")
            .path_contains("/wal/")
            .respond(403, "<Error><Code>AccessDenied</Code></Error>"),
    );
    let r = drill(&s, &[], 3, "inconclusive")?;
    assert!(
        proxy.stats(refuse).injected > 0,
        "the drill's recovery asked the store for WAL"
    );
    let failures = r["failures"].to_string();
    assert!(
        failures.contains("126") || failures.contains("could not restore"),
        "the server's log names the failed fetch: {r}"
    );
    let out = refugio_ok(
        &[
            "--config",
            &s.cfg(),
            "prune",
            "--keep-last",
            "1",
            "--dry-run",
            "--json",
        ],
        &s.env,
    )?;
    let pruned: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(pruned[0]["states"][&id], "unverified", "{pruned}");

    let port = free_port()?;
    let agent_config = tmp.path().join("agent.toml");
    write_public(
        &agent_config,
        &format!(
            "{}\n[agent]\nlisten = \"127.0.0.1:{port}\"\n{}",
            s.repo_toml, s.job_toml
        ),
    )?;
    let agent = Agent::start(&agent_config, &s.env, port, tmp.path().join("agent.log"))?;
    let runs = |result: &str| -> Result<f64> {
        Ok(agent
            .metric(&format!(
                "refugio_drill_runs_total{{backup_job=\"main\",result=\"{result}\"}}"
            ))?
            .unwrap_or(0.0))
    };
    agent.signal(Signal::SIGUSR2)?;
    wait_until(
        "an inconclusive agent drill",
        Duration::from_secs(90),
        || Ok(runs("inconclusive")? >= 1.0),
    )
    .with_context(|| agent.log_text())?;
    assert_eq!(runs("failure")?, 0.0, "{}", agent.log_text());

    proxy.clear(refuse);
    agent.signal(Signal::SIGUSR2)?;
    wait_until("a passed agent drill", Duration::from_secs(90), || {
        Ok(runs("success")? >= 1.0)
    })
    .with_context(|| agent.log_text())?;
    assert_eq!(
        agent.metric(r#"refugio_drill_last_success{backup_job="main"}"#)?,
        Some(1.0)
    );
    assert_eq!(
        agent.metric(r#"refugio_rpo_target_met{backup_job="main"}"#)?,
        Some(1.0),
        "RPO: the newest archived WAL's age"
    );
    assert_eq!(
        agent.metric(r#"refugio_rto_target_met{backup_job="main"}"#)?,
        Some(1.0)
    );
    let rpo = agent
        .metric(r#"refugio_rpo_seconds{backup_job="main"}"#)?
        .context("no refugio_rpo_seconds")?;
    assert!((0.0..600.0).contains(&rpo), "{rpo}");
    let status = agent.stop(Duration::from_secs(30))?;
    assert!(status.success(), "agent exit {status}");
    let out = refugio_ok(
        &[
            "--config",
            &s.cfg(),
            "prune",
            "--keep-last",
            "1",
            "--dry-run",
            "--json",
        ],
        &s.env,
    )?;
    let pruned: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(pruned[0]["states"][&id], "verified", "{pruned}");
    observed(
        25,
        "verify exit 3, inconclusive, unverified for prune; agent drill inconclusive, no failure counted; with the store back the next drill passed",
    );
    drop(src);
    Ok(())
}

/// A restore_command the drill's server cannot run (refugio as root, the
/// server as uid 65534, the store's credentials readable by root only):
/// the drill is inconclusive before recovery starts, saying which user
/// could not fetch which segment; with the file readable again it passes.
#[tokio::test(flavor = "multi_thread")]
async fn credentials_the_drill_server_cannot_read_make_the_drill_inconclusive() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    anyhow::ensure!(
        nix::unistd::geteuid().is_root(),
        "this test needs root: the drill's server runs as another user only when refugio runs as root (run scripts/test as root)"
    );
    let tmp = shared_tmp()?;
    let config = tmp.path().join("refugio.toml");
    let src =
        Cluster::start_with_settings(16, &archiving(&config), &server_env(tmp.path())).await?;
    let s = Setup::new(tmp.path(), &s3::garage()?, &src, "")?;
    one(&src, "CREATE TABLE ticks (id bigserial PRIMARY KEY, written_at timestamptz NOT NULL DEFAULT clock_timestamp())").await?;
    ticks(&src, 5).await?;
    refugio_ok(&["--config", &s.cfg(), "backup", "--json"], &s.env)?;
    ticks(&src, 5).await?;
    switch_and_wait(&src).await?;

    let creds = tmp.path().join("aws-credentials");
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600))?;
    let r = drill(&s, &[], 3, "inconclusive");
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o644))?;
    let r = r?;
    let failures = r["failures"].to_string();
    eprintln!("inconclusive drill: {failures}");
    assert!(
        failures.contains("as uid 65534")
            && failures.contains("could not fetch WAL file")
            && failures.contains("aws-credentials")
            && failures.contains("no usable S3 credentials"),
        "the failure names the user, the segment and the file it could not read: {r}"
    );
    assert_eq!(
        r["phases"]["recovery_seconds"],
        serde_json::Value::Null,
        "the server never started: {r}"
    );
    drill(&s, &[], 0, "passed")?;
    observed(
        26,
        "verify exit 3, inconclusive before the server started, the failure names uid 65534, the segment and the unreadable file; passed once readable",
    );
    drop(src);
    Ok(())
}
