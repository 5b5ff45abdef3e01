//! Fault scenarios 1, 2, 3 and 6 of the suite (docs/reliability.md): S3
//! requests that fail, are cut or stall while a backup uploads or a restore
//! downloads. Garage (strict signatures and checksums) sits behind testkit's
//! `FaultProxy`, which injects the fault and counts it; the agent's
//! `refugio_store_retries_total` must count exactly the retries the faults
//! caused, and every backup must restore identically.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::Signal;
use refugio_testkit::fault_proxy::{FaultProxy, Rule, INTERNAL_ERROR_XML};
use refugio_testkit::{s3, Cluster};

use crate::common::*;

/// About 32 MiB of dump after zstd: seven 5 MiB parts.
const ROWS: i64 = 400_000;
const PART_SIZE: &str = "5MiB";

/// A digest of the bulk table's content, to compare a restore with its
/// source beyond row counts.
async fn bulk_digest(cluster: &Cluster, db: &str) -> Result<String> {
    let out = cluster
        .psql(
            db,
            "SELECT count(*) || ':' || md5(string_agg(id || '=' || payload, ',' ORDER BY id)) FROM bulk",
        )
        .await?;
    Ok(out.trim().to_string())
}

/// Restores the newest backup of `cfg` into a new database `copy` of
/// `dst`; returns the command's output, logs included.
fn restore_latest(cfg: &str, dst: &Cluster, env: &[(String, String)]) -> Result<String> {
    let target = dst.url("copy");
    let bindir = dst.bindir().display().to_string();
    let out = refugio(
        &[
            "--config",
            cfg,
            "restore",
            "--backup",
            "latest",
            "--target",
            &target,
            "--create",
            "--pg-bindir",
            &bindir,
        ],
        env,
    );
    let text = all_output(&out);
    anyhow::ensure!(out.status.success(), "restore failed: {text}");
    Ok(text)
}

/// Config of the faults' agent: one job, parts of 5 MiB, and the
/// repository's retry settings in `repository_extra`.
fn config(dir: &Path, repo: &Repo, port: u16, src: &Cluster, repository_extra: &str) -> String {
    let path = agent_config(
        dir,
        repo,
        port,
        "",
        &[job("app", src, "app", "globals = false\n")],
    );
    let text = std::fs::read_to_string(&path).expect("config");
    let text = text.replacen(
        "[agent]",
        &format!("part_size = {PART_SIZE:?}\n{repository_extra}\n[agent]"),
        1,
    );
    std::fs::write(&path, text).expect("config");
    path.display().to_string()
}

fn retries(agent: &Agent, operation: &str) -> Result<f64> {
    agent
        .metric(&format!(
            "refugio_store_retries_total{{operation=\"{operation}\"}}"
        ))?
        .with_context(|| format!("no retry counter for {operation}"))
}

/// SIGUSR1, then waits for the backup to commit.
fn back_up(agent: &Agent, cfg: &Path, env: &[(String, String)], before: usize) -> Result<()> {
    agent.signal(Signal::SIGUSR1)?;
    wait_until("the backup to commit", Duration::from_secs(120), || {
        Ok(backups(cfg, env)?.len() > before)
    })
    .with_context(|| agent.log_text())
}

/// Scenarios 1, 2 and 6: every 5th UploadPart answered 500, one part's
/// upload reset mid-body, and the restore's download cut twice; the backup
/// commits, the retries are counted, and the restore resumes and is
/// identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_and_reset_parts_are_retried_and_a_cut_restore_resumes() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_bulk(&src, "app", ROWS).await?;
    let proxy = FaultProxy::start(&s3::garage()?)?;
    let repo = Repo::s3(proxy.target(), "upload-faults");
    let env = repo.env();
    let port = free_port()?;
    let cfg = config(tmp.path(), &repo, port, &src, "");
    let config_path = Path::new(&cfg);
    let agent = Agent::start(config_path, &env, port, tmp.path().join("agent.log"))?;

    let every_5th = proxy.add(
        Rule::new()
            .method("PUT")
            .query_contains("partNumber=")
            .every(5)
            .respond(500, INTERNAL_ERROR_XML),
    );
    let reset = proxy.add(
        Rule::new()
            .method("PUT")
            .query_contains("partNumber=2&")
            .nth(1)
            .reset_request_after(1024 * 1024),
    );
    back_up(&agent, config_path, &env, 0)?;
    let m = backups(config_path, &env)?
        .into_iter()
        .next()
        .context("manifest")?;
    let stored = m["artifacts"][0]["stored_size"].as_u64().unwrap_or(0);
    let parts = stored.div_ceil(5 * 1024 * 1024);
    assert!(
        parts >= 5,
        "the dump has {parts} parts ({stored} bytes): too few for every 5th to fail"
    );
    let (failed, cut) = (proxy.stats(every_5th).injected, proxy.stats(reset).injected);
    assert!(failed >= 1, "no UploadPart was answered 500");
    assert_eq!(cut, 1, "part 2's upload was reset once");
    wait_until("the retry counter", Duration::from_secs(10), || {
        Ok(retries(&agent, "UploadPart")? >= (failed + cut) as f64)
    })
    .with_context(|| agent.log_text())?;
    assert_eq!(
        retries(&agent, "UploadPart")?,
        (failed + cut) as f64,
        "one retry per injected fault"
    );
    let log = agent.log_text();
    assert!(
        log.contains("store-retry") && log.contains("HTTP 500"),
        "retries are logged with their cause: {log}"
    );
    assert_eq!(
        multipart_uploads_left(&s3::garage()?, &prefix_of(&repo))?,
        0,
        "the upload completed; nothing pending"
    );
    agent.stop(Duration::from_secs(30))?;

    // Scenario 6: the restore's download is cut twice (the first GET and
    // the first resume); each resume goes on from where the cut stopped.
    let cuts = proxy.add(
        Rule::new()
            .method("GET")
            .path_ends_with("/database.dump.zst")
            .first(2)
            .reset_response_after(3 * 1024 * 1024),
    );
    let dst = Cluster::start(16).await?;
    let out = restore_latest(&cfg, &dst, &env)?;
    assert_eq!(proxy.stats(cuts).injected, 2, "{out}");
    assert_eq!(
        out.matches("resuming it from where it stopped").count(),
        2,
        "two resumes logged: {out}"
    );
    let ranged = proxy
        .seen()
        .iter()
        .filter(|r| {
            r.method == "GET"
                && r.target
                    .split('?')
                    .next()
                    .unwrap_or_default()
                    .ends_with("/database.dump.zst")
        })
        .count();
    assert_eq!(ranged, 3, "one GET and two ranged GETs: {out}");
    assert_eq!(
        bulk_digest(&src, "app").await?,
        bulk_digest(&dst, "copy").await?,
        "the resumed restore is identical"
    );
    observed(
        1,
        &format!("{failed} of {parts} parts' uploads answered 500 (every 5th UploadPart request), each retried: refugio_store_retries_total{{operation=\"UploadPart\"}} = {} with scenario 2's reset, one per fault; committed; restore identical (count + md5 of every row)", failed + cut),
    );
    observed(
        2,
        "part 2's upload reset after 1 MiB of its body, retried once from its kept buffer; committed on Garage (strict checksums); restore identical",
    );
    observed(
        6,
        "the restore's GET reset after 3 MiB, twice: two ranged GETs resumed it (3 GETs in all); restore identical (count + md5 of every row); digest checked end to end",
    );
    Ok(())
}

/// Scenario 3: one part's upload stalls forever; the attempt times out
/// after `operation_timeout` and is retried, and the backup takes at most
/// `operation_timeout × attempts` longer than an undisturbed one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_part_times_out_and_is_retried() -> Result<()> {
    const TIMEOUT: Duration = Duration::from_secs(3);
    const ATTEMPTS: u32 = 3;
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_bulk(&src, "app", ROWS / 2).await?;
    let proxy = FaultProxy::start(&s3::garage()?)?;
    let repo = Repo::s3(proxy.target(), "stalled-part");
    let env = repo.env();
    let port = free_port()?;
    let cfg = config(
        tmp.path(),
        &repo,
        port,
        &src,
        &format!(
            "operation_timeout = \"{}s\"\nattempts = {ATTEMPTS}\n",
            TIMEOUT.as_secs()
        ),
    );
    let config_path = Path::new(&cfg);
    let agent = Agent::start(config_path, &env, port, tmp.path().join("agent.log"))?;

    let started = Instant::now();
    back_up(&agent, config_path, &env, 0)?;
    let undisturbed = started.elapsed();

    let stall = proxy.add(
        Rule::new()
            .method("PUT")
            .query_contains("partNumber=2&")
            .nth(1)
            .stall_forever(),
    );
    let started = Instant::now();
    back_up(&agent, config_path, &env, 1)?;
    let stalled = started.elapsed();
    assert_eq!(proxy.stats(stall).injected, 1, "part 2 stalled once");
    wait_until("the retry counter", Duration::from_secs(10), || {
        Ok(retries(&agent, "UploadPart")? >= 1.0)
    })?;
    assert_eq!(retries(&agent, "UploadPart")?, 1.0, "one retry");
    let bound = undisturbed + TIMEOUT * ATTEMPTS;
    assert!(
        stalled <= bound,
        "the stalled backup took {stalled:?}; an undisturbed one {undisturbed:?}, so at most {bound:?}"
    );
    assert!(
        stalled >= TIMEOUT,
        "the stalled attempt was given its {TIMEOUT:?}: {stalled:?}"
    );
    agent.stop(Duration::from_secs(30))?;
    proxy.clear(stall);

    let dst = Cluster::start(16).await?;
    restore_latest(&cfg, &dst, &env)?;
    assert_eq!(
        bulk_digest(&src, "app").await?,
        bulk_digest(&dst, "copy").await?,
        "the backup with the retried part restores identically"
    );
    observed(
        3,
        &format!("part 2 stalled forever; its attempt timed out after operation_timeout = {TIMEOUT:?} and was retried once; backup {:.1} s against {:.1} s undisturbed (bound: + {TIMEOUT:?} × {ATTEMPTS}); restore identical", stalled.as_secs_f64(), undisturbed.as_secs_f64()),
    );
    Ok(())
}

/// Scenarios 4 and 5: S3 down before a backup (a clear error, exit 1,
/// nothing committed), then S3 lost mid-upload (the backup fails, its
/// multipart upload cannot even be aborted) and back: prune's garbage
/// collection removes the upload, and nothing is listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_down_or_lost_mid_upload_commits_nothing_and_gc_leaves_no_upload() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_bulk(&src, "app", ROWS / 2).await?;
    let garage = s3::garage()?;
    let proxy = FaultProxy::start(&garage)?;
    let repo = Repo::s3(proxy.target(), "s3-lost");
    let env = repo.env();
    let port = free_port()?;
    let cfg = config(
        tmp.path(),
        &repo,
        port,
        &src,
        "attempts = 2\nconnect_timeout = \"2s\"\n",
    );
    let text = std::fs::read_to_string(&cfg)?.replace(
        "globals = false\n",
        "globals = false\nattempts = 1\nretention = { keep_last = 3, gc_grace = \"1h\" }\n",
    );
    std::fs::write(&cfg, text)?;
    let config_path = Path::new(&cfg);

    // 4: down before the backup.
    proxy.refuse_connections(true)?;
    let started = Instant::now();
    let out = refugio(&["--config", &cfg, "backup"], &env);
    let down_for = started.elapsed();
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("cannot connect") && text.contains(&proxy.endpoint()),
        "names the endpoint it cannot reach: {text}"
    );
    proxy.refuse_connections(false)?;
    assert!(backups(config_path, &env)?.is_empty(), "nothing committed");

    // 5: lost once the first part is on its way.
    let parts = proxy.add(Rule::new().method("PUT").query_contains("partNumber="));
    let child = refugio_command(&["--config", &cfg, "backup"], &env)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    wait_until("the first part upload", Duration::from_secs(60), || {
        Ok(proxy.stats(parts).matched >= 1)
    })?;
    proxy.refuse_connections(true)?;
    let out = child.wait_with_output()?;
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let left = multipart_uploads_left(&garage, &prefix_of(&repo))?;
    assert!(
        left >= 1,
        "with S3 gone the upload could not be aborted (else this test proves nothing): {text}"
    );
    proxy.refuse_connections(false)?;
    assert!(backups(config_path, &env)?.is_empty(), "nothing committed");
    // Two hours on (the prune called in-process with a fixed clock).
    let later = chrono::Utc::now() + chrono::Duration::hours(2);
    let prune = prune_ok_at(std::path::Path::new(&cfg), &repo, false, later).await?;
    assert_eq!(
        multipart_uploads_left(&garage, &prefix_of(&repo))?,
        0,
        "GC aborted the stale upload: {prune}"
    );
    let store = open_s3(&garage, &prefix_of(&repo)).await?;
    let objects: Vec<refugio_store::ObjectMeta> =
        futures::TryStreamExt::try_collect(store.list("")).await?;
    assert!(objects.is_empty(), "nothing left at all: {objects:?}");
    observed(
        4,
        &format!("connections refused: `refugio backup` exit 1 after {:.1} s naming the endpoint it cannot reach; nothing committed", down_for.as_secs_f64()),
    );
    observed(
        5,
        &format!("S3 gone after the first part: exit 1, {left} multipart upload(s) left (the abort could not reach S3); S3 back, prune's GC aborted it: 0 uploads, 0 objects, nothing listed"),
    );
    Ok(())
}

/// S3 throttling end to end: the store answers `503 SlowDown` to the
/// second UploadPart and to the manifest's PUT (the commit). Both are
/// retried (counted by the agent, logged with their cause), the backup
/// commits, and `check --read-data` re-reads it whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_slowdown_is_retried_and_the_backup_commits() -> Result<()> {
    const SLOW_DOWN_XML: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_bulk(&src, "app", ROWS / 2).await?;
    let proxy = FaultProxy::start(&s3::moto()?)?;
    let repo = Repo::s3(proxy.target(), "slowdown");
    let env = repo.env();
    let port = free_port()?;
    let cfg = config(tmp.path(), &repo, port, &src, "");
    let config_path = Path::new(&cfg);
    let agent = Agent::start(config_path, &env, port, tmp.path().join("agent.log"))?;
    let part = proxy.add(
        Rule::new()
            .method("PUT")
            .query_contains("partNumber=2&")
            .nth(1)
            .respond(503, SLOW_DOWN_XML),
    );
    let commit = proxy.add(
        Rule::new()
            .method("PUT")
            .path_ends_with("/manifest.json")
            .nth(1)
            .respond(503, SLOW_DOWN_XML),
    );
    back_up(&agent, config_path, &env, 0)?;
    assert_eq!(proxy.stats(part).injected, 1, "UploadPart 2 was throttled");
    assert_eq!(proxy.stats(commit).injected, 1, "the commit was throttled");
    wait_until("the retry counters", Duration::from_secs(10), || {
        Ok(retries(&agent, "UploadPart")? >= 1.0 && retries(&agent, "PutObject")? >= 1.0)
    })
    .with_context(|| agent.log_text())?;
    let (part_retries, put_retries) = (
        retries(&agent, "UploadPart")?,
        retries(&agent, "PutObject")?,
    );
    let log = agent.log_text();
    assert!(
        log.contains("store-retry") && log.contains("previous=HTTP 503"),
        "throttling retries are logged with their cause: {log}"
    );
    agent.stop(Duration::from_secs(30))?;
    let out = refugio(&["--config", &cfg, "check", "--read-data"], &env);
    assert_eq!(out.status.code(), Some(0), "{}", all_output(&out));
    observed(
        1,
        &format!(
            "503 SlowDown on UploadPart 2 and on the commit's PUT: retried (counters: UploadPart {part_retries}, PutObject {put_retries}), logged with HTTP 503, committed; check --read-data clean"
        ),
    );
    Ok(())
}
