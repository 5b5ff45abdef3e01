//! Point-in-time recovery (issue 14): a server archiving its WAL with
//! `archive_command = 'refugio wal-push %p'` into Garage, a base backup
//! of a `kind = "physical"` job, then `refugio restore --physical` to a
//! time and to `latest`, started with `restore_command = 'refugio
//! wal-fetch %f %p'`; a timeline switch; the store down while archiving;
//! overwrite refusal; encrypted WAL.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use refugio_testkit::{s3, Cluster};
use rstest::rstest;

use crate::common::*;

/// The test's directory: readable by the server's user (its archive and
/// restore commands read the config and the credentials file).
fn shared_tmp() -> Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::Builder::new()
        .prefix("refugio-pitr-")
        .tempdir_in("/tmp")?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))?;
    Ok(tmp)
}

/// Writes `body` to `path`, readable by everyone (test credentials only).
fn write_public(path: &Path, body: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, body)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))?;
    Ok(())
}

struct Setup {
    config: PathBuf,
    /// The repository's prefix in the bucket.
    prefix: String,
    /// What the config says, with the repository's endpoint swappable.
    repo_toml: String,
    job_toml: String,
    /// The server's environment: the credentials file.
    env: Vec<(String, String)>,
}

impl Setup {
    fn new(tmp: &Path, target: &s3::S3Target, src: &Cluster, extra: &str) -> Result<Setup> {
        let repo = Repo::s3(target.clone(), "pitr");
        let creds = tmp.join("aws-credentials");
        write_public(
            &creds,
            &format!(
                "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
                target.access_key, target.secret_key
            ),
        )?;
        let setup = Setup {
            config: tmp.join("refugio.toml"),
            prefix: prefix_of(&repo),
            repo_toml: repo.toml(),
            job_toml: format!(
                "[[jobs]]\nname = \"main\"\nkind = \"physical\"\nsource = {:?}\npg_bindir = {:?}\n{extra}",
                src.url("postgres"),
                src.bindir().display().to_string()
            ),
            env: server_env(tmp),
        };
        setup.write(&setup.repo_toml)?;
        Ok(setup)
    }

    fn write(&self, repo_toml: &str) -> Result<()> {
        write_public(&self.config, &format!("{repo_toml}\n{}", self.job_toml))
    }

    fn archiving(&self) -> Vec<String> {
        archiving(&self.config)
    }

    fn cfg(&self) -> String {
        self.config.display().to_string()
    }

    /// An agent watching the job with a config of its own in `tmp` (the
    /// repository as first written, whatever the server's config says
    /// later), listening on a free port.
    fn agent(&self, tmp: &Path) -> Result<Agent> {
        let port = free_port()?;
        let config = tmp.join("agent.toml");
        write_public(
            &config,
            &format!(
                "{}\n[agent]\nlisten = \"127.0.0.1:{port}\"\n{}",
                self.repo_toml, self.job_toml
            ),
        )?;
        Agent::start(&config, &self.env, port, tmp.join("agent.log"))
    }
}

/// The server settings of a cluster archiving through `config`.
fn archiving(config: &Path) -> Vec<String> {
    vec![
        "archive_mode=on".into(),
        format!(
            "archive_command={} --config {} wal-push %p",
            env!("CARGO_BIN_EXE_refugio"),
            config.display()
        ),
        "archive_timeout=2s".into(),
    ]
}

/// The environment of a server whose archive or restore command is
/// refugio: the credentials file of the test's S3 server.
fn server_env(tmp: &Path) -> Vec<(String, String)> {
    vec![
        (
            "AWS_SHARED_CREDENTIALS_FILE".into(),
            tmp.join("aws-credentials").display().to_string(),
        ),
        ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ("REFUGIO_LOG".into(), "warn".into()),
    ]
}

async fn one(c: &Cluster, sql: &str) -> Result<String> {
    Ok(c.psql("postgres", sql).await?.trim().to_string())
}

/// Switches to a new segment and waits until the archiver stored the
/// one that was current.
async fn switch_and_wait(c: &Cluster) -> Result<()> {
    // The segment the switch completed (its end, +1, names it); the
    // current LSN's file would be one too early right after a switch.
    let name = one(c, "SELECT pg_walfile_name(pg_switch_wal())").await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let last = one(
            c,
            "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
        )
        .await?;
        // A `.backup` file (`<segment>.<offset>.backup`) is archived after
        // the segment it names.
        if last.get(..24).is_some_and(|seg| seg >= name.as_str()) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "segment {name} was not archived within 60 s (last archived {last:?}); server log:\n{}",
                c.server_log_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes `n` rows into `ticks`, one committed transaction each.
async fn ticks(c: &Cluster, n: usize) -> Result<()> {
    let sql = "INSERT INTO ticks DEFAULT VALUES;\n".repeat(n);
    c.psql("postgres", &sql).await?;
    Ok(())
}

const TICKS: &str = "SELECT string_agg(id || '@' || written_at, ',' ORDER BY id) FROM ticks";
/// pgbench's invariant: every transaction adds its delta to one account
/// and records it in the history, so the sums agree at any consistent point.
const PGBENCH_BALANCED: &str = "SELECT (SELECT sum(abalance) FROM pgbench_accounts) = \
     (SELECT coalesce(sum(delta), 0) FROM pgbench_history)";

/// `restore --physical --to <to>` into a fresh cluster directory, started
/// with `settings`; waits until it promoted.
async fn restore_to(s: &Setup, major: u32, to: &str, settings: &[String]) -> Result<Cluster> {
    Ok(restore_with(s, major, to, &[], settings).await?.0)
}

/// [`restore_to`] with `extra` arguments to `restore`; the cluster and
/// what refugio printed.
async fn restore_with(
    s: &Setup,
    major: u32,
    to: &str,
    extra: &[&str],
    settings: &[String],
) -> Result<(Cluster, String)> {
    let mut c = Cluster::unstarted(major)?;
    let dir = c.data_dir().display().to_string();
    let cfg = s.cfg();
    let mut args = vec![
        "--config",
        &cfg,
        "restore",
        "--physical",
        "--to",
        to,
        "--target-dir",
        &dir,
    ];
    args.extend_from_slice(extra);
    let out = refugio_ok(&args, &s.env)?;
    assert!(
        out.contains("pg_ctl -D"),
        "it says how to start the server: {out}"
    );
    let signal = std::fs::read_to_string(c.data_dir().join("recovery.signal"))?;
    assert!(signal.contains("refugio"), "{signal}");
    let auto = std::fs::read_to_string(c.data_dir().join("postgresql.auto.conf"))?;
    assert!(auto.contains("wal-fetch --job main %f %p"), "{auto}");
    c.start_existing(settings, &s.env).await?;
    let deadline = Instant::now() + Duration::from_secs(90);
    while one(&c, "SELECT pg_is_in_recovery()").await? != "f" {
        if Instant::now() > deadline {
            bail!(
                "the restored server did not promote; log:\n{}",
                c.server_log_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((c, out))
}

/// `refugio verify --json` with `extra`: exits `code`, its receipt says
/// `outcome`; the receipt.
fn drill(s: &Setup, extra: &[&str], code: i32, outcome: &str) -> Result<serde_json::Value> {
    let cfg = s.cfg();
    let mut args = vec!["--config", &cfg, "verify", "--json"];
    args.extend_from_slice(extra);
    let out = refugio(&args, &s.env);
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(code), "{text}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).context("receipt")?;
    assert_eq!(r["outcome"], outcome, "{r}");
    Ok(r)
}

fn pgbench(c: &Cluster, args: &[&str]) -> Result<std::process::Child> {
    std::process::Command::new(c.bindir().join("pgbench"))
        .args([
            "-h",
            &c.socket_dir().display().to_string(),
            "-U",
            "postgres",
        ])
        .args(args)
        .arg("postgres")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting pgbench")
}

#[rstest]
#[case::pg16(16)]
#[case::pg15(15)]
#[case::pg17(17)]
#[case::pg18(18)]
#[tokio::test(flavor = "multi_thread")]
async fn recovery_to_a_point_in_time_and_across_a_timeline_switch(
    #[case] major: u32,
) -> Result<()> {
    let tmp = shared_tmp()?;
    let target = s3::garage()?;
    // The server archives through the config written once it runs (the
    // job's source URL names it); until then wal-push fails and
    // PostgreSQL keeps the segments.
    let config = tmp.path().join("refugio.toml");
    let src =
        Cluster::start_with_settings(major, &archiving(&config), &server_env(tmp.path())).await?;
    let s = Setup::new(
        tmp.path(),
        &target,
        &src,
        &format!(
            "checks = [{:?}]\ntargets = {{ rpo = \"10m\", rto = \"10m\" }}\n",
            // Drilled to T: 50 rows; to latest, the fork's timeline: 50 up to T, 5 after.
            format!("{PGBENCH_BALANCED} AND (SELECT count(*) IN (50, 55) FROM ticks)")
        ),
    )?;

    // 1. pgbench writes; a base backup; more writes into ticks.
    let init = pgbench(&src, &["-i", "-s", "2", "-q"])?.wait_with_output()?;
    assert!(
        init.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    one(&src, "CREATE TABLE ticks (id bigserial PRIMARY KEY, written_at timestamptz NOT NULL DEFAULT clock_timestamp())").await?;
    let out = refugio_ok(&["--config", &s.cfg(), "backup", "--json"], &s.env)?;
    let m: serde_json::Value = serde_json::from_str(&out)?;
    let physical = &m["physical"];
    assert_eq!(m["format"], refugio_store::manifest::FORMAT);
    assert_eq!(physical["timeline"], 1);
    assert!(physical["backup_label"]
        .as_str()
        .unwrap_or("")
        .contains("START WAL LOCATION"));
    assert!(m["artifacts"]
        .as_array()
        .map(|a| a.iter().any(|a| a["kind"] == "backup_manifest"))
        .unwrap_or(false));

    // An agent watching the job: its WAL metrics come from the listing
    // and the server's pg_stat_archiver (read at start and on SIGHUP).
    let agent = s.agent(tmp.path())?;
    let files = agent.metric(r#"refugio_wal_archived_files{backup_job="main"}"#)?;
    assert!(
        files.unwrap_or(0.0) >= 1.0,
        "{files:?}: {}",
        agent.log_text()
    );
    let bytes = agent.metric(r#"refugio_wal_archived_bytes{backup_job="main"}"#)?;
    assert!(bytes.unwrap_or(0.0) > 0.0, "{bytes:?}");
    let archived_at = agent
        .metric(r#"refugio_wal_last_archived_timestamp_seconds{backup_job="main"}"#)?
        .context("no refugio_wal_last_archived_timestamp_seconds")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    assert!(
        (now - 120.0..=now + 5.0).contains(&archived_at),
        "newest WAL archived at {archived_at}, now {now}"
    );
    assert_eq!(
        agent.metric(r#"refugio_wal_archive_failures_total{backup_job="main"}"#)?,
        Some(0.0)
    );

    let bench = pgbench(&src, &["-T", "6", "-c", "2", "-n"])?;
    ticks(&src, 50).await?;
    // 2. T: after the first batch committed, before the second began.
    let t = one(
        &src,
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    )
    .await?;
    let at_t = one(&src, TICKS).await?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    ticks(&src, 50).await?;
    let out = bench.wait_with_output()?;
    assert!(
        out.status.success(),
        "pgbench: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    switch_and_wait(&src).await?;

    // The store down: PostgreSQL keeps the WAL and retries; once it is
    // back, archiving catches up and nothing is lost.
    let dead = s.repo_toml.replace(
        &target.endpoint,
        &format!("http://127.0.0.1:{}", s3::dead_port()),
    );
    s.write(&dead)?;
    let failed_before: i64 = one(&src, "SELECT failed_count FROM pg_stat_archiver")
        .await?
        .parse()?;
    ticks(&src, 10).await?;
    let down_name = one(&src, "SELECT pg_walfile_name(pg_current_wal_lsn())").await?;
    one(&src, "SELECT pg_switch_wal()").await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let failed: i64 = one(&src, "SELECT failed_count FROM pg_stat_archiver")
            .await?
            .parse()?;
        if failed > failed_before {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the archiver did not fail against a dead store; log:\n{}",
                src.server_log_tail(20)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = src.data_dir().join("pg_wal/archive_status");
    let waiting: Vec<String> = std::fs::read_dir(&status)?
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".ready").map(str::to_string)
        })
        .collect();
    assert!(
        waiting.iter().any(|w| *w >= down_name),
        "{down_name} waits for a retry in {}: {waiting:?}",
        status.display()
    );
    for name in &waiting {
        let kept = src.data_dir().join("pg_wal").join(name);
        assert!(kept.exists(), "PostgreSQL keeps {name}");
    }
    assert!(
        src.server_log_tail(60).contains("refugio: error:"),
        "the failure is one clear line in the server log"
    );
    // The agent counts the failed archive_command runs.
    agent.signal(nix::sys::signal::Signal::SIGHUP)?;
    wait_until("archive failures counted", Duration::from_secs(20), || {
        Ok(agent
            .metric(r#"refugio_wal_archive_failures_total{backup_job="main"}"#)?
            .unwrap_or(0.0)
            >= 1.0)
    })
    .with_context(|| agent.log_text())?;
    s.write(&s.repo_toml)?;
    switch_and_wait(&src).await?;
    let all_rows = one(&src, TICKS).await?;
    // Once archiving caught up, the newest archived WAL is newer.
    agent.signal(nix::sys::signal::Signal::SIGHUP)?;
    wait_until("newer WAL seen", Duration::from_secs(20), || {
        Ok(agent
            .metric(r#"refugio_wal_last_archived_timestamp_seconds{backup_job="main"}"#)?
            .unwrap_or(0.0)
            > archived_at)
    })
    .with_context(|| agent.log_text())?;
    let status = agent.stop(Duration::from_secs(30))?;
    assert!(status.success(), "agent exit {status}");

    // 3. Restore to T: rows up to T, none after, pgbench consistent.
    let quiet = vec!["archive_mode=off".to_string()];
    let at = restore_to(&s, major, &t, &quiet).await?;
    assert_eq!(
        one(&at, TICKS).await?,
        at_t,
        "exactly the rows committed by {t}"
    );
    assert_eq!(one(&at, PGBENCH_BALANCED).await?, "t");
    drop(at);

    // Restore to latest: everything, the rows archived after the outage too.
    let latest = restore_to(&s, major, "latest", &quiet).await?;
    assert_eq!(one(&latest, TICKS).await?, all_rows);
    assert_eq!(one(&latest, PGBENCH_BALANCED).await?, "t");
    drop(latest);
    observed(
        24,
        &format!(
            "PostgreSQL {major}: {} segment(s) waited in archive_status, kept in pg_wal; failures counted; restore to latest after the catch-up: every row",
            waiting.len()
        ),
    );

    // A timeline switch: a server restored to T is promoted (timeline 2)
    // and archives into the same job; `latest` then follows timeline 2.
    let fork = restore_to(&s, major, &t, &s.archiving()).await?;
    ticks(&fork, 5).await?;
    let fork_rows = one(&fork, TICKS).await?;
    switch_and_wait(&fork).await?;
    drop(fork);

    // A drill of the base backup: an ephemeral cluster recovers it to the
    // newest archived WAL (across the switch to timeline 2), the files
    // match the server's backup_manifest, the job's check holds.
    let r = drill(&s, &[], 0, "passed")?;
    assert_eq!(r["backup_id"], m["backup_id"]);
    let checks = r["checks"].as_array().cloned().unwrap_or_default();
    assert!(
        checks
            .iter()
            .any(|c| c["sql"] == "pg_verifybackup --no-parse-wal" && c["ok"] == true),
        "{r}"
    );
    assert!(
        checks
            .iter()
            .any(|c| c["sql"].as_str().is_some_and(|q| q.contains("ticks")) && c["ok"] == true),
        "{r}"
    );
    assert!(
        r["phases"]["recovery_seconds"].as_f64().unwrap_or(0.0) > 0.0,
        "{r}"
    );
    assert!(r["rto"]["met"] == true && r["rpo"]["met"] == true, "{r}");
    let rpo = r["rpo"]["measured_seconds"].as_f64().unwrap_or(f64::MAX);
    assert!(
        (0.0..120.0).contains(&rpo),
        "RPO from the newest archived WAL: {r}"
    );
    // A drill to T: recovery stops there (the check's 50 rows).
    drill(&s, &["--to", &t], 0, "passed")?;
    let across = restore_to(&s, major, "latest", &quiet).await?;
    assert_eq!(
        one(&across, TICKS).await?,
        fork_rows,
        "recovery followed the promoted timeline"
    );
    assert_eq!(
        one(
            &across,
            "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"
        )
        .await?,
        "00000003"
    );
    drop(across);

    // Retention: the drilled base backup is verified and kept, and the
    // WAL before its start goes; history files stay.
    let id = m["backup_id"].as_str().unwrap_or("?");
    let out = refugio_ok(
        &["--config", &s.cfg(), "prune", "--keep-last", "1", "--json"],
        &s.env,
    )?;
    let pruned: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(pruned[0]["states"][id], "verified", "{pruned}");
    assert!(pruned[0].get("wal_gaps").is_none(), "{pruned}");
    let pruned = &pruned[0]["wal_pruned"];
    let start = m["physical"]["start_lsn"].as_str().unwrap_or_default();
    let start_seg = refugio_dump::wal::Lsn::parse(start)
        .context("start_lsn")?
        .segment(16 << 20);
    assert_eq!(
        pruned["before"],
        refugio_dump::wal::segment_name(1, start_seg, 16 << 20),
        "{pruned}"
    );
    assert!(
        pruned["files"].as_u64().unwrap_or(0) > 0,
        "pgbench -i wrote WAL before the base backup: {pruned}"
    );

    // check: the archive is whole from the base backup on; a segment
    // deleted from it is a gap that names the base backup it cuts.
    let out = refugio_ok(&["--config", &s.cfg(), "check", "--json"], &s.env)?;
    let report: serde_json::Value = serde_json::from_str(&out)?;
    let wal = &report[0]["wal"];
    assert_eq!(wal["gaps"], serde_json::json!([]), "{report}");
    assert!(
        wal["newest"]
            .as_str()
            .is_some_and(|n| n.starts_with("00000002")),
        "{wal}"
    );
    // A second base backup; a segment after its start deleted: the gap
    // cuts both base backups.
    let out = refugio_ok(&["--config", &s.cfg(), "backup", "--json"], &s.env)?;
    let m2: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(m2["physical"]["timeline"], 1, "{m2}");
    let id2 = m2["backup_id"].as_str().unwrap_or("?");
    let start = m2["physical"]["start_lsn"].as_str().unwrap_or_default();
    let start_seg = refugio_dump::wal::Lsn::parse(start)
        .context("start_lsn")?
        .segment(16 << 20);
    let store = open_s3(&target, &s.prefix).await?;
    // Until a segment after the victim is archived (so that its loss is
    // a gap, not the archive's end).
    let mut objects = Vec::new();
    for _ in 0..10 {
        ticks(&src, 5).await?;
        switch_and_wait(&src).await?;
        objects =
            refugio_core::wal::list(&refugio_store::repo::Repository::new(store.clone()), "main")
                .await?;
        if objects.iter().any(|o| {
            o.name.timeline == 1
                && o.name.kind == refugio_dump::wal::WalKind::Segment
                && o.name.segment_number(16 << 20) > start_seg + 1
        }) {
            break;
        }
    }
    let victim = objects
        .iter()
        .find(|o| {
            o.name.timeline == 1
                && o.name.kind == refugio_dump::wal::WalKind::Segment
                && o.name.segment_number(16 << 20) == start_seg + 1
        })
        .context("the segment after the base backup's start")?;
    let repo = refugio_store::repo::Repository::new(store.clone());
    let before = refugio_core::status(&repo, "main").await?;
    assert_eq!(before.newest_verified_id.as_deref(), Some(id), "{before:?}");
    store.delete(&victim.key).await?;
    // The agent's view (metrics, readiness): no base backup counts as
    // verified once a gap cuts the newest verified one.
    let after = refugio_core::status(&repo, "main").await?;
    assert_eq!(after.newest_verified_id, None, "{after:?}");
    assert!(after.newest_verified.is_none(), "{after:?}");
    let out = refugio(&["--config", &s.cfg(), "check"], &s.env);
    let text = all_output(&out);
    let names: Vec<&str> = objects.iter().map(|o| o.name.name.as_str()).collect();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{text}\nvictim {}, m2 {m2}, archive {names:?}",
        victim.name.name
    );
    assert!(
        text.contains("WAL GAP")
            && text.contains(&victim.name.name)
            && text.contains(id)
            && text.contains(id2),
        "the gap is named with the base backups it cuts: {text}"
    );

    // The drill of the newest base backup is failed: it cannot be
    // recovered past the gap (judged from the listing, nothing restored).
    let r = drill(&s, &[], 1, "failed")?;
    assert!(
        r["failures"].to_string().contains("WAL GAP")
            && r["failures"].to_string().contains(&victim.name.name),
        "{r}"
    );
    observed(
        27,
        &format!(
            "PostgreSQL {major}: check exit 1 naming {} and both base backups; drill exit 1, failed",
            victim.name.name
        ),
    );
    // With a gap in their chain, neither counts as verified for retention
    // (the first one's drills passed), nor as failed (the second one's
    // drill failed on the archive, and it still recovers to the points
    // before the gap): both unverified, both kept while nothing newer is
    // verified.
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
    let gap = &pruned[0]["wal_gaps"][0];
    assert_eq!(gap["from"], victim.name.name, "{pruned}");
    for b in [id, id2] {
        assert_eq!(pruned[0]["states"][b], "unverified", "{b}: {pruned}");
        assert!(
            gap["backups"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == b)),
            "{b}: {pruned}"
        );
        let decision = pruned[0]["decisions"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["id"] == b))
            .cloned()
            .unwrap_or_default();
        assert_eq!(decision["keep"], true, "{b}: {pruned}");
    }
    drop(src);
    Ok(())
}

mod authentication;
mod both_kinds;
mod faults;
mod hostile;
mod standby;
mod wal_commands;
