//! A physical drill when the store fails under it (issue 14, issue 7's
//! three outcomes): could not check is not a bad backup.

use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::Signal;
use refugio_testkit::{s3, Cluster, FaultProxy, Rule};

use super::*;

/// The store refuses a WAL download while the drill's server recovers
/// (after the base backup's first segment): wal-fetch exits 126, the
/// server stops, and the drill is
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

    // Listings, the base backup's download and its first segment (the
    // drill's probe of the restore_command, and the start of recovery)
    // pass; the GET of the next segment, which recovery needs, is refused.
    let start = refugio_dump::wal::Lsn::parse(m["physical"]["start_lsn"].as_str().unwrap_or(""))
        .context("start_lsn")?;
    let next = refugio_dump::wal::segment_name(1, start.segment(16 << 20) + 1, 16 << 20);
    let refuse = proxy.add(
        Rule::new()
            .method("GET")
            .path_contains(&format!("/wal/00000001/{next}."))
            .respond(403, "<Error><Code>AccessDenied</Code></Error>"),
    );
    let r = drill(&s, &[], 3, "inconclusive")?;
    assert!(
        proxy.stats(refuse).injected > 0,
        "the drill's recovery asked the store for {next}"
    );
    assert!(
        !r["failures"].to_string().contains("restore_command ("),
        "the probe's segment passed; the recovering server's fetch failed: {r}"
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

    let agent = s.agent(tmp.path())?;
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
    // Every drill run of the job so far, by result: only inconclusive ones
    // (read strictly: a failed run under any label value would show).
    let results = agent.series("refugio_drill_runs_total", "backup_job=\"main\",")?;
    let nonzero: Vec<&(String, f64)> = results.iter().filter(|(_, v)| *v > 0.0).collect();
    assert!(
        !nonzero.is_empty() && nonzero.iter().all(|(l, _)| l == "result=\"inconclusive\"}"),
        "only inconclusive drill runs: {results:?}\n{}",
        agent.log_text()
    );

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

/// The shipped `RefugioWalArchivingStalled` in a real Prometheus scraping
/// the agent: quiet while the server is idle (no new WAL, its newest
/// archived file ageing, no failure); firing once the archiver keeps
/// failing against a dead store and the newest archived file is old;
/// resolved once archiving catches up. Only the rule's two durations are
/// shortened, in a copy ([15m] to [1m], 900 s to 8 s); Prometheus scrapes
/// and evaluates every second, and the test sends the agent SIGHUP every
/// second (a repository check: the listing and pg_stat_archiver) instead
/// of waiting for its minute.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_archiver_fires_the_wal_alert_in_prometheus_and_catching_up_resolves_it(
) -> Result<()> {
    use crate::alerting::{edit_rule, prometheus_binary, shipped_rules, Prometheus};
    const ALERT: &str = "RefugioWalArchivingStalled";
    const AGE: f64 = 8.0;
    let bin = prometheus_binary()?;
    let (rules_text, edited) = edit_rule(&shipped_rules()?, ALERT, |line| {
        (line.contains("[15m]") || line.contains("> 900")).then(|| {
            line.replace("[15m]", "[1m]")
                .replace("> 900", &format!("> {AGE}"))
        })
    });
    anyhow::ensure!(
        edited == 2,
        "alerts.yml: expected {ALERT}'s expression to hold [15m] and > 900 on two lines, edited {edited}"
    );
    let tmp = shared_tmp()?;
    let rules = tmp.path().join("alerts.yml");
    std::fs::write(&rules, rules_text)?;

    let target = s3::garage()?;
    let config = tmp.path().join("refugio.toml");
    let src =
        Cluster::start_with_settings(16, &archiving(&config), &server_env(tmp.path())).await?;
    let s = Setup::new(tmp.path(), &target, &src, "")?;
    one(&src, "CREATE TABLE ticks (id bigserial PRIMARY KEY, written_at timestamptz NOT NULL DEFAULT clock_timestamp())").await?;
    ticks(&src, 5).await?;
    switch_and_wait(&src).await?;

    // The agent reads a config of its own: the store stays reachable for
    // it; only the server's archive_command loses it.
    let agent = s.agent(tmp.path())?;
    let last = r#"refugio_wal_last_archived_timestamp_seconds{backup_job="main"}"#;
    let failures = r#"refugio_wal_archive_failures_total{backup_job="main"}"#;
    let refresh = || agent.signal(Signal::SIGHUP);
    wait_until("the WAL series", Duration::from_secs(30), || {
        refresh()?;
        Ok(agent.metric(last)?.is_some() && agent.metric(failures)?.is_some())
    })
    .with_context(|| agent.log_text())?;
    let prom = Prometheus::start(&bin, tmp.path(), agent.port(), &rules)?;
    wait_until(
        "Prometheus scraping the agent",
        Duration::from_secs(20),
        || Ok(prom.query(last)?.len() == 1 && prom.query(failures)?.len() == 1),
    )
    .with_context(|| prom.log_text())?;

    // Idle: nothing new to archive, the newest archived file grows older
    // than the (shortened) age, and without a failure the alert is quiet.
    let idle = Instant::now();
    let age_expr = format!("time() - {last} > {AGE}");
    while idle.elapsed() < Duration::from_secs(AGE as u64 + 4) || prom.query(&age_expr)?.is_empty()
    {
        refresh()?;
        anyhow::ensure!(
            prom.alert(ALERT, "main")?.is_none(),
            "{ALERT} active on an idle server: {}",
            prom.alerts_text()
        );
        anyhow::ensure!(
            idle.elapsed() < Duration::from_secs(40),
            "the newest archived WAL never grew older than {AGE} s in Prometheus"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let idle_secs = idle.elapsed().as_secs_f64();

    // The store is gone for the archiver: every wal-push fails, and the
    // newest archived file is already older than the age.
    let dead = s.repo_toml.replace(
        &target.endpoint,
        &format!("http://127.0.0.1:{}", s3::dead_port()),
    );
    s.write(&dead)?;
    let broken = Instant::now();
    ticks(&src, 5).await?;
    one(&src, "SELECT pg_switch_wal()").await?;
    let firing = loop {
        refresh()?;
        if let Some(a) = prom.alert(ALERT, "main")?.filter(|a| a.firing) {
            break a;
        }
        anyhow::ensure!(
            broken.elapsed() < Duration::from_secs(40),
            "{ALERT} did not fire within 40 s of the archiver failing; the agent exports {failures} = {:?}; alerts: {}\nserver log:\n{}\nagent log:\n{}",
            agent.metric(failures)?,
            prom.alerts_text(),
            src.server_log_tail(20),
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let firing_secs = broken.elapsed().as_secs_f64();
    let age_said = firing
        .description
        .split_once("the newest archived file is ")
        .map(|(_, rest)| rest);
    assert!(
        age_said
            .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()) && r.contains(" old.")),
        "the description says how old the newest archived WAL is: {}",
        firing.description
    );
    // The failures the agent counted: present, and at least one (the
    // number in the observed text is one the test checked).
    let failed = agent
        .metric(failures)?
        .with_context(|| format!("{failures} is not exported"))?;
    assert!(
        failed >= 1.0,
        "the failing archive_command runs are counted: {failed}"
    );

    // The store is back for the archiver: it catches up, the newest
    // archived file is new, the alert resolves.
    s.write(&s.repo_toml)?;
    let back = Instant::now();
    switch_and_wait(&src).await?;
    let caught_up = back.elapsed().as_secs_f64();
    loop {
        refresh()?;
        if prom.alert(ALERT, "main")?.is_none() {
            break;
        }
        anyhow::ensure!(
            back.elapsed() < Duration::from_secs(60),
            "{ALERT} not resolved 60 s after the store came back; alerts: {}\nagent log:\n{}",
            prom.alerts_text(),
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let resolved_secs = back.elapsed().as_secs_f64();
    let status = agent.stop(Duration::from_secs(30))?;
    assert!(status.success(), "agent exit {status}");
    observed(
        28,
        &format!(
            "{ALERT} ([1m], 8 s instead of [15m], 900 s; 1 s scrapes): quiet through {idle_secs:.1} s of an idle server; firing {firing_secs:.1} s after the store went away ({failed} failed archive_command runs counted); archiving caught up {caught_up:.1} s after it came back, resolved {resolved_secs:.1} s after"
        ),
    );
    drop(src);
    Ok(())
}
