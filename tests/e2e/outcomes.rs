//! Drill outcomes are three-valued: *passed*, *failed* (the backup itself
//! is bad) and *inconclusive* (it could not be checked). Only *failed*
//! condemns a backup for retention; an inconclusive drill leaves it
//! unverified, and prune keeps it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::Signal;
use refugio_testkit::{s3, Cluster, SlowProxy, Slowdown};
use rstest::rstest;
use serde_json::Value;

use crate::common::*;

/// The receipts' file names of a backup in a directory repository.
fn receipt_names(dir: &Path) -> Vec<String> {
    files_under(dir)
        .into_iter()
        .filter(|f| f.starts_with("verify-"))
        .collect()
}

/// How a stored backup is damaged.
#[derive(Debug, Clone, Copy)]
enum Damage {
    FlippedByte,
    Truncated,
    Missing,
    WrongDigestInManifest,
}

fn damage(dir: &Path, how: Damage) -> Result<()> {
    let art = dir.join("database.dump.zst");
    match how {
        Damage::FlippedByte => {
            let mut b = std::fs::read(&art)?;
            let i = b.len() / 2;
            b[i] ^= 0x01;
            std::fs::write(&art, b)?;
        }
        Damage::Truncated => {
            let b = std::fs::read(&art)?;
            std::fs::write(&art, &b[..b.len() / 2])?;
        }
        Damage::Missing => std::fs::remove_file(&art)?,
        Damage::WrongDigestInManifest => {
            let path = dir.join("manifest.json");
            let mut m: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
            let a = m["artifacts"]
                .as_array_mut()
                .and_then(|a| a.iter_mut().find(|a| a["kind"] == "database"))
                .context("database artifact")?;
            a["sha256"] = "0".repeat(64).into();
            std::fs::write(&path, serde_json::to_vec_pretty(&m)?)?;
        }
    }
    Ok(())
}

/// Every kind of damage is *failed*: the receipt says so in its content
/// and its name, `list` shows it, and `restore` refuses the backup.
#[rstest]
#[case::flipped_byte(Damage::FlippedByte)]
#[case::truncated(Damage::Truncated)]
#[case::missing(Damage::Missing)]
#[case::wrong_digest(Damage::WrongDigestInManifest)]
#[tokio::test(flavor = "multi_thread")]
async fn damage_of_every_kind_fails_the_drill(#[case] how: Damage) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_sample(&src, "app").await?;
    let repo = Repo::dir(tmp.path());
    let extra = format!("scratch = {:?}\nglobals = false\n", src.url("postgres"));
    let config = write_config(tmp.path(), &repo, &job("app", &src, "app", &extra));
    let cfg = config.to_str().unwrap_or_default();
    refugio_ok(&["--config", cfg, "backup"], &[])?;
    let m = list(&config, &[])?.into_iter().next().context("manifest")?;
    let id = m["backup_id"].as_str().context("id")?.to_string();
    let dir: PathBuf = tmp.path().join("repo/app").join(&id);
    damage(&dir, how)?;

    let bindir = src.bindir().display().to_string();
    let out = refugio(
        &["--config", cfg, "verify", "--json", "--pg-bindir", &bindir],
        &[],
    );
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{how:?}: {text}");
    let r: Value = serde_json::from_slice(&out.stdout).with_context(|| text.clone())?;
    assert_eq!(r["outcome"], "failed", "{how:?}: {r}");
    assert_eq!(r["verified"], false);
    let names = receipt_names(&dir);
    assert!(
        names.len() == 1 && names[0].ends_with("-failed.json"),
        "{how:?}: {names:?}"
    );
    let l = list(&config, &[])?;
    assert_eq!(l[0]["verification"]["outcome"], "failed", "{}", l[0]);

    let dst = Cluster::start(16).await?;
    let out = refugio(
        &[
            "--config",
            cfg,
            "restore",
            "--backup",
            &id,
            "--target",
            &dst.url("app"),
            "--create",
            "--pg-bindir",
            &bindir,
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{how:?}: {}", all_output(&out));
    let tables = dst
        .psql(
            "app",
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
        )
        .await
        .unwrap_or_else(|_| "0".into());
    assert_eq!(tables, "0", "{how:?}: nothing restored");
    observed(15, &format!("{how:?}: drill failed, restore refused"));
    Ok(())
}

/// The scratch server goes away in the middle of a drill's restore: the
/// drill is *inconclusive*, never *failed*; its receipt says so; the backup
/// stays unverified, and prune (keep_last = 1) keeps it.
#[tokio::test(flavor = "multi_thread")]
async fn a_scratch_server_lost_mid_drill_is_inconclusive_and_prune_keeps_the_backup() -> Result<()>
{
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_bulk(&src, "app", 100_000).await?;
    let scratch = Cluster::start(16).await?;
    // The drill of the second backup reads it at 256 KiB/s through the
    // proxy, so its restore is still running when the scratch server is
    // stopped, on any machine (see drill.rs, ctrl_c_during_a_drill…).
    let proxy = SlowProxy::start(&s3::moto()?, Slowdown::NONE)?;
    let repo = Repo::s3(proxy.target(), "outcome-inconclusive");
    let env = repo.env();
    let extra = format!(
        "scratch = {:?}\nglobals = false\nretention = {{ keep_last = 1 }}\n",
        scratch.url("postgres")
    );
    let config = write_config(tmp.path(), &repo, &job("app", &src, "app", &extra));
    let cfg = config.to_str().unwrap_or_default();
    let bindir = src.bindir().display().to_string();

    refugio_ok(&["--config", cfg, "backup"], &env)?;
    refugio_ok(&["--config", cfg, "verify", "--pg-bindir", &bindir], &env)?;
    std::thread::sleep(Duration::from_millis(1100));
    refugio_ok(&["--config", cfg, "backup"], &env)?;
    let newest = list(&config, &env)?
        .into_iter()
        .next()
        .context("manifest")?;
    let id = newest["backup_id"].as_str().context("id")?.to_string();

    proxy.set(Slowdown::rate(256 * 1024));
    let child = refugio_command(
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
        &env,
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()?;
    wait_for_restore(child.id())?;
    // Immediate shutdown of the scratch server (SIGQUIT to the postmaster).
    let pid = scratch.server_pid().context("scratch server pid")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGQUIT,
    )?;
    let out = child.wait_with_output()?;
    let text = all_output(&out);
    proxy.set(Slowdown::NONE);
    assert_eq!(out.status.code(), Some(3), "{text}");
    let r: Value = serde_json::from_slice(&out.stdout).with_context(|| text.clone())?;
    assert_eq!(r["outcome"], "inconclusive", "{r}");
    assert_eq!(r["verified"], false);
    // Named: pg_restore's failure, or (when the drill's own check of the
    // scratch server comes first, as the server goes down) the refused
    // connection to it; either way the scratch server, not the backup.
    let failures = r["failures"].to_string();
    assert!(
        failures.contains("pg_restore") || failures.contains(&scratch.url("postgres")),
        "the restore's failure is named: {failures}"
    );

    let l = list(&config, &env)?;
    let listed = l
        .iter()
        .find(|m| m["backup_id"] == id.as_str())
        .context("listed")?;
    assert_eq!(
        listed["verification"]["outcome"], "inconclusive",
        "{listed}"
    );

    let out = refugio(&["--config", cfg, "prune", "--json"], &env);
    let ptext = all_output(&out);
    assert!(out.status.success(), "{ptext}");
    let reports: Value = serde_json::from_slice(&out.stdout).with_context(|| ptext.clone())?;
    assert_eq!(
        reports[0]["states"][&id], "unverified",
        "an inconclusive drill leaves the backup unverified: {reports}"
    );
    let kept: Vec<&str> = reports[0]["decisions"]
        .as_array()
        .context("decisions")?
        .iter()
        .filter(|d| d["keep"] == true)
        .filter_map(|d| d["id"].as_str())
        .collect();
    assert!(
        kept.contains(&id.as_str()),
        "prune kept {kept:?}: {reports}"
    );
    assert_eq!(
        list(&config, &env)?.len(),
        2,
        "both backups are still there"
    );
    observed(
        8,
        "scratch server stopped mid-restore: verify exit 3, receipt outcome inconclusive, verified false; prune kept the backup",
    );
    Ok(())
}

/// Fault scenario 16: drills of two jobs at once in the agent, and a CLI
/// `verify` of a third job beside them, on one scratch server: each has
/// its own scratch database, and each one's sweep of leftovers leaves the
/// others' alone. All pass.
#[tokio::test(flavor = "multi_thread")]
async fn two_drills_on_one_scratch_server_at_once_both_pass() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_bulk(&src, "app", 100_000).await?;
    let scratch = Cluster::start(16).await?;
    let proxy = SlowProxy::start(&s3::moto()?, Slowdown::NONE)?;
    let repo = Repo::s3(proxy.target(), "two-drills");
    let env = repo.env();
    let extra = format!(
        "scratch = {:?}\nglobals = false\n[jobs.schedule]\nbackup = \"0 0 1 1 *\"\ncatch_up = false\n",
        scratch.url("postgres")
    );
    let port = free_port()?;
    let jobs: Vec<String> = ["one", "two", "three"]
        .iter()
        .map(|j| job(j, &src, "app", &extra))
        .collect();
    let path = agent_config(
        tmp.path(),
        &repo,
        port,
        "max_concurrent_tasks = 3\nsignal_jobs = [\"one\", \"two\"]",
        &jobs,
    );
    let cfg = path.to_str().unwrap_or_default();
    let bindir = src.bindir().display().to_string();
    for j in ["one", "two", "three"] {
        refugio_ok(&["--config", cfg, "backup", "--job", j], &env)?;
    }
    let agent = Agent::start(&path, &env, port, tmp.path().join("agent.log"))?;
    // Read at 256 KiB/s: the agent's drills are still restoring when the
    // command's starts and sweeps.
    proxy.set(Slowdown::rate(256 * 1024));
    agent.signal(Signal::SIGUSR2)?;
    wait_for_restore(agent.pid())?;
    let cli = refugio_command(
        &[
            "--config",
            cfg,
            "verify",
            "--job",
            "three",
            "--json",
            "--pg-bindir",
            &bindir,
        ],
        &env,
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()?;
    let out = cli.wait_with_output()?;
    let text = all_output(&out);
    assert!(out.status.success(), "{text}");
    let r: Value = serde_json::from_slice(&out.stdout).with_context(|| text.clone())?;
    assert_eq!(r["outcome"], "passed", "{r}");
    let passed = |j: &str| -> Result<bool> {
        Ok(agent.metric(&format!(
            "refugio_drill_runs_total{{backup_job=\"{j}\",result=\"success\"}}"
        ))? == Some(1.0))
    };
    wait_until("the agent's two drills", Duration::from_secs(120), || {
        Ok(passed("one")? && passed("two")?)
    })
    .with_context(|| agent.log_text())?;
    proxy.set(Slowdown::NONE);
    for j in ["one", "two"] {
        assert_eq!(
            agent.metric(&format!(
                "refugio_drill_runs_total{{backup_job=\"{j}\",result=\"failure\"}}"
            ))?,
            Some(0.0),
            "{}",
            agent.log_text()
        );
    }
    agent.stop(Duration::from_secs(30))?;
    let left = scratch
        .psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'refugio_drill_%'",
        )
        .await?;
    assert_eq!(left, "0", "every scratch database dropped");
    observed(
        16,
        "the agent drilled jobs one and two at once while a CLI verify drilled job three, on one scratch server: all three passed; every scratch database dropped",
    );
    Ok(())
}

/// The download of the artifact is cut mid-drill (connection reset after
/// 16 KiB) while the store stays healthy: the drill is inconclusive (or,
/// had it recovered, passed), never failed, and prune keeps the backup.
/// This used to mark the newest good backup failed and delete it.
#[tokio::test(flavor = "multi_thread")]
async fn a_download_cut_mid_drill_never_condemns_the_backup() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_bulk(&src, "app", 20_000).await?;
    let proxy = refugio_testkit::FaultProxy::start(&s3::moto()?)?;
    let repo = Repo::s3(proxy.target(), "cut-mid-drill");
    let env = repo.env();
    let extra = format!(
        "scratch = {:?}\nglobals = false\nretention = {{ keep_last = 1 }}\n",
        src.url("postgres")
    );
    let config = write_config(tmp.path(), &repo, &job("app", &src, "app", &extra));
    let cfg = config.to_str().unwrap_or_default();
    let bindir = src.bindir().display().to_string();
    refugio_ok(&["--config", cfg, "backup"], &env)?;
    refugio_ok(&["--config", cfg, "verify", "--pg-bindir", &bindir], &env)?;
    std::thread::sleep(Duration::from_millis(1100));
    refugio_ok(&["--config", cfg, "backup"], &env)?;
    let newest = list(&config, &env)?
        .into_iter()
        .next()
        .context("manifest")?;
    let id = newest["backup_id"].as_str().context("id")?.to_string();
    let stored = newest["artifacts"][0]["stored_size"].as_u64().unwrap_or(0);
    anyhow::ensure!(
        stored > 64 * 1024,
        "artifact of {stored} bytes is too small to cut"
    );

    let cut = proxy.add(
        refugio_testkit::Rule::new()
            .method("GET")
            .path_ends_with(&format!("/{id}/database.dump.zst"))
            .nth(1)
            .reset_response_after(16 * 1024),
    );
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
        &env,
    );
    let text = all_output(&out);
    assert_eq!(proxy.stats(cut).injected, 1, "the download was cut: {text}");
    let r: Value = serde_json::from_slice(&out.stdout).with_context(|| text.clone())?;
    // Passed (the GET resumed) or inconclusive (it could not): never
    // failed, and the exit code says the same.
    let cut_outcome = r["outcome"].as_str().unwrap_or("missing").to_string();
    let expected_code = match cut_outcome.as_str() {
        "passed" => 0,
        "inconclusive" => 3,
        other => panic!("a cut download must not make the drill {other}: {r}"),
    };
    assert_eq!(out.status.code(), Some(expected_code), "{text}");
    assert_eq!(r["verified"], cut_outcome == "passed", "{r}");

    let out = refugio(&["--config", cfg, "prune", "--json"], &env);
    let ptext = all_output(&out);
    assert!(out.status.success(), "{ptext}");
    assert!(
        list(&config, &env)?
            .iter()
            .any(|m| m["backup_id"] == id.as_str()),
        "prune kept the backup whose drill was cut: {ptext}"
    );
    // The next drill, undisturbed, verifies it.
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
        &env,
    );
    let r: Value = serde_json::from_slice(&out.stdout).with_context(|| all_output(&out))?;
    assert_eq!(r["outcome"], "passed", "{r}");
    observed(
        7,
        &format!("download cut after 16 KiB mid-drill: outcome {cut_outcome} (never failed); prune kept the backup; the next drill passed"),
    );
    Ok(())
}
