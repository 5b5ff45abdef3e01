//! Backups caught mid-stream, each asserting the exact outcome: pg_dump
//! killed or refugio interrupted (nothing committed, no upload left), and
//! pg_dump's command line read while it runs (never the password).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use refugio_testkit::{s3, Cluster, SlowProxy, Slowdown, PASSWORD_USER, PASSWORD_USER_PASSWORD};

use crate::common::*;

/// Lists pending multipart uploads under the S3 repository's prefix with
/// the store crate itself.
async fn pending_uploads(target: &s3::S3Target, prefix: &str) -> Result<usize> {
    let store = open_s3(target, prefix).await?;
    Ok(store.list_multipart_uploads("").await?.len())
}

/// Starts a backup in the background and waits for its pg_dump child.
fn spawn_backup(config: &str, env: &[(String, String)]) -> Result<(std::process::Child, u32)> {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_refugio"));
    cmd.args(["--config", config, "backup"])
        .env_remove("REFUGIO_CONFIG")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(pid) = dumping_pg_dump(child.id()) {
            return Ok((child, pid));
        }
        anyhow::ensure!(Instant::now() < deadline, "pg_dump never started");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A backup to moto caught mid-stream: a multipart upload is under way.
struct MidStream {
    target: s3::S3Target,
    prefix: String,
    env: Vec<(String, String)>,
    config: std::path::PathBuf,
    child: std::process::Child,
    pg_dump: u32,
    _proxy: SlowProxy,
    _tmp: tempfile::TempDir,
    _src: Cluster,
}

/// Rows of [`backup_caught_mid_stream`]'s table: about 23 MiB of dump
/// after zstd, more than twice what the uploader holds (two 5 MiB parts).
const MID_STREAM_ROWS: i64 = 300_000;

/// A config file in `dir`: `repo` with 5 MiB parts, one at a time, and `job`.
fn write_config_small_parts(dir: &std::path::Path, repo: &Repo, job: &str) -> std::path::PathBuf {
    let path = dir.join("refugio.toml");
    let text = format!(
        "{}part_size = \"5MiB\"\nupload_concurrency = 1\n\n[[jobs]]\n{job}\n",
        repo.toml()
    );
    std::fs::write(&path, text).expect("writing config");
    path
}

async fn backup_caught_mid_stream(name: &str) -> Result<MidStream> {
    let target = s3::moto()?;
    // Slow by construction, not by CPU (zstd at a high level) or row volume:
    // refugio keeps at most two 5 MiB parts in memory and reaches moto
    // through a proxy that holds every request 2 s. When the multipart
    // upload appears, it has read at most 10 MiB of a 23 MiB dump and waits
    // at least 2 s for its first part: pg_dump is blocked writing, alive,
    // and the backup unfinished, on any machine.
    let proxy = SlowProxy::start(&target, Slowdown::delay(Duration::from_secs(2)))?;
    let tmp = tempfile::tempdir()?;
    let repo = Repo::s3(proxy.target(), name);
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_bulk(&src, "app", MID_STREAM_ROWS).await?;
    let config = write_config_small_parts(
        tmp.path(),
        &repo,
        &job("app", &src, "app", "globals = false\n"),
    );
    let env = repo.env();
    let (child, pg_dump) = spawn_backup(config.to_str().unwrap_or_default(), &env)?;
    let Repo::S3 { prefix, .. } = repo else {
        unreachable!()
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    while pending_uploads(&target, &prefix).await? == 0 {
        anyhow::ensure!(Instant::now() < deadline, "no multipart upload started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(MidStream {
        target,
        prefix,
        env,
        config,
        child,
        pg_dump,
        _proxy: proxy,
        _tmp: tmp,
        _src: src,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn pg_dump_killed_mid_stream_commits_nothing_and_leaves_no_upload() -> Result<()> {
    let MidStream {
        target,
        prefix,
        env,
        config,
        child,
        pg_dump,
        _proxy,
        _tmp,
        _src,
    } = backup_caught_mid_stream("killed").await?;
    if let Err(e) = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pg_dump as i32),
        nix::sys::signal::Signal::SIGKILL,
    ) {
        let out = child.wait_with_output()?;
        anyhow::bail!(
            "pg_dump was gone before the kill ({e}): {}",
            all_output(&out)
        );
    }
    let out = child.wait_with_output()?;
    let text = all_output(&out);
    assert!(!out.status.success(), "backup must fail: {text}");
    assert!(text.contains("pg_dump failed"), "names pg_dump: {text}");
    assert!(list(&config, &env)?.is_empty(), "no manifest");
    assert_eq!(
        pending_uploads(&target, &prefix).await?,
        0,
        "multipart upload aborted"
    );
    let store = open_s3(&target, &prefix).await?;
    use futures::StreamExt;
    let left: Vec<_> = store.list("").collect().await;
    assert!(left.is_empty(), "no objects left: {left:?}");
    observed(
        10,
        "pg_dump SIGKILLed mid-stream: the backup failed, nothing committed, no multipart upload left",
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn password_is_never_on_a_command_line_or_in_logs() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_bulk(&src, "app", MID_STREAM_ROWS).await?;
    src.psql(
        "app",
        &format!("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {PASSWORD_USER}"),
    )
    .await?;
    let pwfile = tmp.path().join("pw");
    std::fs::write(&pwfile, format!("{PASSWORD_USER_PASSWORD}\n"))?;
    // pg_dump stays alive to be looked at because the store is slow, as in
    // backup_caught_mid_stream; full speed again once it has been.
    let proxy = SlowProxy::start(&s3::moto()?, Slowdown::delay(Duration::from_secs(2)))?;
    let repo = Repo::s3(proxy.target(), "pwcmdline");
    let config = write_config_small_parts(
        tmp.path(),
        &repo,
        &format!(
            "name = \"app\"\nsource = {:?}\npassword_file = {:?}\npg_bindir = {:?}\n",
            src.url_as(PASSWORD_USER, None, "app"),
            pwfile.display().to_string(),
            src.bindir().display().to_string()
        ),
    );
    let mut env = repo.env();
    env.push(("REFUGIO_LOG".into(), "debug".into()));
    let (child, pg_dump) = spawn_backup(config.to_str().unwrap_or_default(), &env)?;
    let cmdline =
        std::fs::read(format!("/proc/{pg_dump}/cmdline")).context("reading pg_dump's cmdline")?;
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(
        cmdline.contains("--snapshot="),
        "really pg_dump's cmdline: {cmdline}"
    );
    assert!(
        !cmdline.contains(PASSWORD_USER_PASSWORD),
        "password on pg_dump's command line: {cmdline}"
    );
    let own = String::from_utf8_lossy(&std::fs::read(format!("/proc/{}/cmdline", child.id()))?)
        .into_owned();
    assert!(!own.contains(PASSWORD_USER_PASSWORD));
    proxy.set(Slowdown::NONE);
    let out = child.wait_with_output()?;
    let text = all_output(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        !text.contains(PASSWORD_USER_PASSWORD),
        "password in output/logs: {text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_mid_stream_aborts_the_upload_and_commits_nothing() -> Result<()> {
    let MidStream {
        target,
        prefix,
        env,
        config,
        child,
        pg_dump,
        _proxy,
        _tmp,
        _src,
    } = backup_caught_mid_stream("sigint").await?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )?;
    let out = child.wait_with_output()?;
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("cancelled"), "{text}");
    assert!(list(&config, &env)?.is_empty(), "no manifest");
    assert_eq!(
        pending_uploads(&target, &prefix).await?,
        0,
        "multipart upload aborted"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{pg_dump}")).exists()
            || std::fs::read_to_string(format!("/proc/{pg_dump}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true),
        "pg_dump was stopped"
    );
    Ok(())
}
