//! A drill's verdict does not depend on the language: refugio in
//! `es_ES.UTF-8` (LANG, LC_ALL) against a scratch server whose
//! `lc_messages` is Spanish (PostgreSQL 15 from Debian, which carries the
//! translations) judges as it does in C. A backup is condemned only on
//! proof — its bytes (digest) or a content SQLSTATE — and a full disk on
//! the scratch server ("No queda espacio en el dispositivo") or a scratch
//! server that stopped is *inconclusive*. Also the same drill on an
//! ephemeral cluster: pg_restore's refusal of the content is read by
//! SQLSTATE from the cluster's log.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use refugio_testkit::Cluster;
use rstest::rstest;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::common::*;

const SPANISH: &str = "es_ES.UTF-8";

fn spanish_env() -> Vec<(String, String)> {
    vec![
        ("LANG".into(), SPANISH.into()),
        ("LC_ALL".into(), SPANISH.into()),
    ]
}

fn require_spanish() -> Result<()> {
    let out = std::process::Command::new("locale").arg("-a").output()?;
    anyhow::ensure!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.eq_ignore_ascii_case("es_ES.utf8") || l.eq_ignore_ascii_case(SPANISH)),
        "the es_ES.UTF-8 locale is not generated; run scripts/install-test-deps"
    );
    Ok(())
}

/// How the drill is disturbed.
#[derive(Debug, Clone, Copy)]
enum Case {
    /// The scratch database lives on a full filesystem.
    DiskFull,
    /// The scratch server is stopped (SIGQUIT) mid-restore.
    ScratchStopped,
    /// A byte of the stored artifact flipped.
    Damaged,
    /// An integer of a plain-format backup's data made into text, digest
    /// fixed up: the server refuses it (22P02).
    Refused,
}

/// The artifact of kind `database` in `dir`: its path and the manifest.
fn artifact(dir: &Path) -> Result<(PathBuf, Value)> {
    let m: Value = serde_json::from_slice(&std::fs::read(dir.join("manifest.json"))?)?;
    let name = m["artifacts"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["kind"] == "database"))
        .and_then(|a| a["name"].as_str())
        .context("database artifact")?
        .to_string();
    Ok((dir.join(name), m))
}

/// Replaces `from` by `to` (same length) in the decompressed artifact and
/// fixes the manifest's digest and sizes: a consistent, refused backup.
fn forge(dir: &Path, from: &str, to: &str) -> Result<()> {
    let (path, mut m) = artifact(dir)?;
    let zstd = |args: &[&str], input: &[u8]| -> Result<Vec<u8>> {
        let mut child = std::process::Command::new("zstd")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut stdin = child.stdin.take().context("stdin")?;
        let input = input.to_vec();
        let w = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &input));
        let out = child.wait_with_output()?;
        w.join().map_err(|_| anyhow::anyhow!("writer"))??;
        anyhow::ensure!(out.status.success(), "zstd {args:?}");
        Ok(out.stdout)
    };
    let raw = zstd(&["-d", "-c"], &std::fs::read(&path)?)?;
    let at = raw
        .windows(from.len())
        .position(|w| w == from.as_bytes())
        .with_context(|| format!("{from:?} not in the archive"))?;
    let mut raw = raw;
    raw[at..at + to.len()].copy_from_slice(to.as_bytes());
    let stored = zstd(&["-c", "-q"], &raw)?;
    std::fs::write(&path, &stored)?;
    let a = m["artifacts"]
        .as_array_mut()
        .and_then(|a| a.iter_mut().find(|a| a["kind"] == "database"))
        .context("database artifact")?;
    a["sha256"] = format!("{:x}", Sha256::digest(&stored)).into();
    a["stored_size"] = (stored.len() as u64).into();
    a["raw_size"] = (raw.len() as u64).into();
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec_pretty(&m)?)?;
    Ok(())
}

/// Stops (SIGSTOP) refugio `pid`'s restoring pg_restore (not its
/// `--version` probe) as soon as it appears; its pid.
fn stop_the_restore(pid: u32) -> Result<u32> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for p in children_named(pid, "pg_restore") {
            let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            if !cmdline.is_empty() && !String::from_utf8_lossy(&cmdline).contains("--version") {
                kill(Pid::from_raw(p as i32), Signal::SIGSTOP)?;
                return Ok(p);
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the drill never started restoring"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Fault scenario 38: host and scratch server in Spanish, verdicts as in C.
#[rstest]
#[case::disk_full(Case::DiskFull)]
#[case::scratch_stopped(Case::ScratchStopped)]
#[case::damaged(Case::Damaged)]
#[case::refused(Case::Refused)]
#[tokio::test(flavor = "multi_thread")]
async fn a_spanish_host_and_scratch_server_get_the_verdicts_of_c(#[case] case: Case) -> Result<()> {
    require_spanish()?;
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(15).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_bulk(&src, "app", 150_000).await?;
    src.psql(
        "app",
        "CREATE TABLE marker (v int); INSERT INTO marker VALUES (424242);",
    )
    .await?;
    let scratch =
        Cluster::start_with_settings(15, &[format!("lc_messages={SPANISH}")], &[]).await?;
    let small = match case {
        Case::DiskFull => {
            // template1 on a 10 MiB filesystem: the drill's scratch
            // database is created from it there, and fills it.
            let fs = SmallTmpfs::mount("10m")?;
            let ts = fs.path().join("ts");
            std::fs::create_dir(&ts)?;
            if nix::unistd::geteuid().is_root() {
                std::os::unix::fs::chown(&ts, Some(65534), Some(65534))?;
            }
            std::fs::set_permissions(&ts, std::fs::Permissions::from_mode(0o700))?;
            scratch
                .psql(
                    "postgres",
                    &format!("CREATE TABLESPACE small LOCATION '{}';\n", ts.display()),
                )
                .await?;
            scratch
                .psql("postgres", "ALTER DATABASE template1 SET TABLESPACE small;")
                .await?;
            Some(fs)
        }
        _ => None,
    };
    let repo = Repo::dir(tmp.path());
    // Refused content in plain format: psql prints the SQLSTATE. (A
    // custom archive's refusal on a server refugio does not run carries
    // none, and is inconclusive.)
    let format = match case {
        Case::Refused => "plain",
        _ => "custom",
    };
    let extra = format!(
        "scratch = {:?}\nglobals = false\nformat = {format:?}\n",
        scratch.url("postgres")
    );
    let config = write_config(tmp.path(), &repo, &job("app", &src, "app", &extra));
    let cfg = config.to_str().unwrap_or_default();
    let bindir = src.bindir().display().to_string();
    let env = spanish_env();
    refugio_ok(&["--config", cfg, "backup"], &env)?;
    let m = list(&config, &[])?.into_iter().next().context("manifest")?;
    let id = m["backup_id"].as_str().context("id")?.to_string();
    let dir = tmp.path().join("repo/app").join(&id);
    match case {
        Case::Damaged => {
            let (path, _) = artifact(&dir)?;
            let mut b = std::fs::read(&path)?;
            let i = b.len() / 2;
            b[i] ^= 0x01;
            std::fs::write(&path, b)?;
        }
        Case::Refused => forge(&dir, "424242\n", "42x242\n")?,
        _ => {}
    }

    let args = ["--config", cfg, "verify", "--json", "--pg-bindir", &bindir];
    let out = if let Case::ScratchStopped = case {
        let child = refugio_command(&args, &env)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        // pg_restore held still, as soon as it runs, while the scratch
        // server goes down: it is surely mid-restore when it finds out.
        let restore = stop_the_restore(child.id())?;
        let server = scratch.server_pid().context("scratch server pid")?;
        kill(Pid::from_raw(server as i32), Signal::SIGQUIT)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !process_gone(server) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        kill(Pid::from_raw(restore as i32), Signal::SIGCONT)?;
        child.wait_with_output()?
    } else {
        refugio(&args, &env)
    };
    let text = all_output(&out);
    let r: Value = serde_json::from_slice(&out.stdout).with_context(|| text.clone())?;
    let failures = r["failures"].to_string();
    let expected = match case {
        Case::DiskFull | Case::ScratchStopped => "inconclusive",
        Case::Damaged | Case::Refused => "failed",
    };
    assert_eq!(r["outcome"], expected, "{case:?}: {r}\n{text}");
    assert_eq!(
        out.status.code(),
        Some(if expected == "failed" { 1 } else { 3 }),
        "{case:?}: {text}"
    );
    match case {
        // The premise: the scratch server spoke Spanish.
        Case::DiskFull => assert!(
            failures.contains("No queda espacio en el dispositivo"),
            "{failures}"
        ),
        Case::Refused => assert!(failures.contains("22P02"), "{failures}"),
        _ => {}
    }
    drop(small);
    observed(
        38,
        &format!("LANG/LC_ALL {SPANISH}, scratch lc_messages {SPANISH}: {case:?} → {expected}"),
    );
    Ok(())
}

/// The same refused content drilled on an ephemeral cluster (pg_restore,
/// which prints no SQLSTATE: read from the cluster's log) from a Spanish
/// host: failed, naming the SQLSTATE.
#[tokio::test(flavor = "multi_thread")]
async fn refused_content_on_an_ephemeral_cluster_is_read_by_sqlstate() -> Result<()> {
    require_spanish()?;
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    src.psql(
        "app",
        "CREATE TABLE marker (v int); INSERT INTO marker VALUES (424242);",
    )
    .await?;
    let repo = Repo::dir(tmp.path());
    let config = write_config(
        tmp.path(),
        &repo,
        &job(
            "app",
            &src,
            "app",
            "scratch = \"ephemeral\"\nglobals = false\n",
        ),
    );
    let cfg = config.to_str().unwrap_or_default();
    let env = spanish_env();
    refugio_ok(&["--config", cfg, "backup"], &env)?;
    let m = list(&config, &[])?.into_iter().next().context("manifest")?;
    let id = m["backup_id"].as_str().context("id")?.to_string();
    forge(
        &tmp.path().join("repo/app").join(&id),
        "424242\n",
        "42x242\n",
    )?;
    let bindir = src.bindir().display().to_string();
    let out = refugio(
        &["--config", cfg, "verify", "--json", "--pg-bindir", &bindir],
        &env,
    );
    let text = all_output(&out);
    let r: Value = serde_json::from_slice(&out.stdout).with_context(|| text.clone())?;
    assert_eq!(r["outcome"], "failed", "{r}\n{text}");
    assert!(r["failures"].to_string().contains("22P02"), "{r}");
    observed(
        38,
        "ephemeral cluster, Spanish host: pg_restore's refusal read from the cluster's log as SQLSTATE 22P02 → failed",
    );
    Ok(())
}
