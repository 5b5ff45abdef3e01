//! Fault scenarios 9, 12 and 14 of the fault-injection suite (issue 10),
//! each asserting its exact outcome: PostgreSQL restarted mid-dump (the
//! agent's retry commits), a directory repository on a full filesystem (a
//! clear error, nothing left behind), and `kill -9` of the agent
//! mid-upload (GC removes the upload, `list` is clean).
//!
//! Each is slow where it must be by construction, not by timing: the fault
//! proxy holds every UploadPart until the test lets it go, so the backup is
//! caught mid-stream (pg_dump alive, a multipart upload open) on any
//! machine, for as long as the test needs.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use nix::sys::signal::Signal;
use refugio_testkit::{s3, Cluster, FaultProxy, Rule};

use crate::common::*;

/// Rows of the bulk table: about 23 MiB of dump after zstd, more than
/// twice what the uploader holds (two 5 MiB parts) while its parts wait.
const ROWS: i64 = 300_000;

/// Never scheduled (1 January), no catch-up: only SIGUSR1 starts a backup.
const QUIET: &str = "[jobs.schedule]\nbackup = \"0 0 1 1 *\"\ncatch_up = false\n";

/// The agent's config (see [`agent_config`]) with 5 MiB parts sent one at
/// a time, so little of the dump is read before the first part is sent.
fn agent_config_small_parts(
    dir: &Path,
    repo: &Repo,
    port: u16,
    agent_extra: &str,
    jobs: &[String],
) -> Result<std::path::PathBuf> {
    let path = agent_config(dir, repo, port, agent_extra, jobs);
    let text = std::fs::read_to_string(&path)?.replacen(
        "\n[agent]\n",
        "part_size = \"5MiB\"\nupload_concurrency = 1\n\n[agent]\n",
        1,
    );
    std::fs::write(&path, text)?;
    Ok(path)
}

/// A rule that holds every UploadPart until it is cleared.
fn hold_parts() -> Rule {
    Rule::new()
        .method("PUT")
        .query_contains("partNumber=")
        .stall_forever()
}

/// Every object key under an S3 repository's prefix (relative to it).
async fn objects(target: &s3::S3Target, prefix: &str) -> Result<Vec<String>> {
    let store = open_s3(target, prefix).await?;
    let listed: Vec<_> = store.list("").collect().await;
    listed
        .into_iter()
        .map(|m| Ok(m?.key))
        .collect::<Result<Vec<_>>>()
}

/// Waits until the agent's backup is caught mid-stream: its pg_dump runs
/// and the upload's first part is held by the proxy. Returns pg_dump's pid.
fn wait_mid_stream(
    agent: &Agent,
    proxy: &FaultProxy,
    hold: refugio_testkit::RuleId,
) -> Result<u32> {
    let mut pg_dump = None;
    wait_until(
        "pg_dump running and the first part held",
        Duration::from_secs(90),
        || {
            pg_dump = dumping_pg_dump(agent.pid());
            Ok(pg_dump.is_some() && proxy.stats(hold).matched >= 1)
        },
    )
    .with_context(|| agent.log_text())?;
    pg_dump.context("pg_dump")
}

/// Scenario 9: PostgreSQL restarts (fast shutdown, start) while the agent's
/// pg_dump is mid-dump. pg_dump fails, the attempt commits nothing, the
/// agent retries after its backoff, and the retry, with the server back,
/// commits one backup that restores with the source's row counts.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_restarted_mid_dump_is_retried_and_the_retry_commits() -> Result<()> {
    let target = s3::moto()?;
    let proxy = FaultProxy::start(&target)?;
    let repo = Repo::s3(proxy.target(), "pg-restart");
    let prefix = prefix_of(&repo);
    let env = repo.env();
    let tmp = tempfile::tempdir()?;
    let mut src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_bulk(&src, "app", ROWS).await?;
    let counts = row_counts(&src, "app").await?;
    let port = free_port()?;
    let app = job("app", &src, "app", &format!("globals = false\n{QUIET}"));
    let config = agent_config_small_parts(
        tmp.path(),
        &repo,
        port,
        "backoff = { attempts = 3, initial = \"1s\", max = \"1s\" }\n",
        &[app],
    )?;
    let agent = Agent::start(&config, &env, port, tmp.path().join("agent.log"))?;
    let hold = proxy.add(hold_parts());
    agent.signal(Signal::SIGUSR1)?;
    let first_pg_dump = wait_mid_stream(&agent, &proxy, hold)?;

    // The server goes away under pg_dump and comes back; only then does the
    // upload go on, so pg_dump reads the end of its connection and fails,
    // and the retry finds the server up.
    src.restart().await?;
    proxy.clear(hold);
    wait_until("a committed backup", Duration::from_secs(120), || {
        anyhow::ensure!(
            !agent.log_text().contains("task-failed"),
            "the backup task failed"
        );
        Ok(!backups(&config, &env)?.is_empty())
    })
    .with_context(|| agent.log_text())?;
    let log = agent.log_text();
    assert!(process_gone(first_pg_dump), "the first pg_dump ended");
    let retried: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("attempt failed, retrying"))
        .collect();
    assert_eq!(retried.len(), 1, "one failed attempt, retried: {log}");
    assert!(
        retried[0].contains("pg_dump failed"),
        "the first attempt failed in pg_dump: {log}"
    );
    // The failed attempt's whole message (pg_dump's stderr spans lines).
    // What pg_dump says depends on whether its server session was blocked
    // sending (the connection just closes) or not (a FATAL comes first).
    let failure = log
        .split_once("attempt failed, retrying")
        .and_then(|(_, rest)| rest.split_once("task-retry"))
        .map_or("", |(failure, _)| failure);
    let lost = [
        "server closed the connection unexpectedly",
        "terminating connection",
    ]
    .into_iter()
    .find(|p| failure.contains(p))
    .with_context(|| format!("pg_dump lost its server: {log}"))?;
    assert_eq!(log.matches("backup-committed").count(), 1, "{log}");
    assert!(!log.contains("task-failed"), "{log}");

    let listed = backups(&config, &env)?;
    assert_eq!(listed.len(), 1, "exactly one committed backup: {listed:?}");
    let m = &listed[0];
    assert_eq!(m["attempts"], 2, "committed by the second attempt: {m}");
    let id = m["backup_id"].as_str().context("id")?;
    let keys = objects(&target, &prefix).await?;
    assert!(
        keys.iter().all(|k| k.starts_with(&format!("app/{id}/"))),
        "nothing of the failed attempt is left: {keys:?}"
    );
    assert_eq!(multipart_uploads_left(&target, &prefix)?, 0);
    assert_eq!(manifest_counts(m), counts, "manifest counts = source");

    let dst = Cluster::start(16).await?;
    refugio_ok(
        &[
            "--config",
            config.to_str().unwrap_or_default(),
            "restore",
            "--backup",
            id,
            "--target",
            &dst.url("app"),
            "--create",
            "--pg-bindir",
            &dst.bindir().display().to_string(),
        ],
        &env,
    )?;
    assert_eq!(row_counts(&dst, "app").await?, counts, "restored = source");
    let status = agent.stop(Duration::from_secs(30))?;
    assert!(status.success(), "agent exit {status}");
    let tables: Vec<String> = counts
        .iter()
        .map(|(s, t, n)| format!("{s}.{t} {n} rows"))
        .collect();
    observed(
        9,
        &format!(
            "pg_dump failed on attempt 1 (server restarted mid-dump: {lost:?}), logged and \
             retried; attempt 2 committed; 1 backup (attempts = 2), nothing else stored, \
             0 uploads left; restored row counts identical ({})",
            tables.join(", ")
        ),
    );
    Ok(())
}

/// Scenario 12: a directory repository on a filesystem too small for the
/// dump, written both ways the directory backend writes: as the partial
/// file of a multipart upload (a dump larger than one 128 KiB part) and as
/// the temporary file of a single put (a dump smaller than one part, on a
/// filesystem with 16 KiB left); and on a filesystem already full, where
/// not even the backup id's claim fits. Each time `refugio
/// backup` fails at once (no retry) with an error naming the repository's
/// path, the file and ENOSPC, and nothing is left in the repository: no
/// manifest, no partial or temporary file, not the backup's directory.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_filesystem_under_a_directory_repository_is_a_clear_error_and_leaves_nothing(
) -> Result<()> {
    let small = SmallTmpfs::mount("3m")?;
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    // About 7 MiB of dump: many parts, more than the 3 MiB filesystem.
    refugio_testkit::sample::load_bulk(&src, "app", 100_000).await?;
    // A dump of one part (a single put), larger than the 16 KiB left.
    src.create_database("tiny").await?;
    refugio_testkit::sample::load_bulk(&src, "tiny", 1_000).await?;
    {
        let scratch = tmp.path().join("sizes");
        let sizes = Repo::Dir(scratch.clone());
        let cfg = tmp.path().join("sizes.toml");
        std::fs::write(
            &cfg,
            format!(
                "{}\n[[jobs]]\n{}",
                sizes.toml(),
                job("app", &src, "tiny", "")
            ),
        )?;
        let out = refugio(
            &["--config", cfg.to_str().unwrap_or_default(), "backup"],
            &[],
        );
        anyhow::ensure!(out.status.success(), "{}", all_output(&out));
        let stored = list(&cfg, &[])?[0]["artifacts"][0]["stored_size"]
            .as_u64()
            .context("stored_size")?;
        assert!(
            (16 * 1024..refugio_store::fs::FS_PART_SIZE as u64).contains(&stored),
            "the tiny dump ({stored} bytes) must be one part and more than 16 KiB"
        );
    }
    let root = small.path().join("repo");
    let root_text = root.display().to_string();
    let repo = Repo::Dir(root.clone());
    let config = tmp.path().join("refugio.toml");
    let mut seen = Vec::new();
    let filler = small.path().join("filler");
    for (database, how, file) in [
        ("app", "multipart", "/database.dump.zst"),
        ("tiny", "single put", "/database.dump.zst"),
        ("app", "already full", "/claim-"),
    ] {
        if how != "multipart" {
            // Fills the filesystem (outside the repository) to the last
            // page, then frees 16 KiB for the single put's claim.
            let mut f = std::fs::File::create(&filler)?;
            let full = std::io::Write::write_all(&mut f, &vec![0u8; 4 << 20]);
            anyhow::ensure!(full.is_err(), "4 MiB fit in the 3 MiB filesystem");
            if how == "single put" {
                let len = f.metadata()?.len();
                f.set_len(len.saturating_sub(16 * 1024))?;
            }
        }
        std::fs::write(
            &config,
            format!(
                "{}\n[[jobs]]\n{}",
                repo.toml(),
                job("app", &src, database, "")
            ),
        )?;
        let started = Instant::now();
        let out = refugio(
            &["--config", config.to_str().unwrap_or_default(), "backup"],
            &[],
        );
        let took = started.elapsed();
        let text = all_output(&out);
        assert_eq!(out.status.code(), Some(1), "{how}: {text}");
        assert!(
            text.contains("No space left on device"),
            "{how}: says the disk is full: {text}"
        );
        assert!(
            text.contains(&root_text) && text.contains(file),
            "{how}: names the repository's path and the file: {text}"
        );
        assert!(
            !text.contains("retrying"),
            "{how}: a full disk is not retried: {text}"
        );
        let left = files_under(&root);
        assert!(left.is_empty(), "{how}: no file is left: {left:?}");
        let dirs: Vec<String> = std::fs::read_dir(&root)?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            dirs.is_empty(),
            "{how}: no backup directory is left: {dirs:?}"
        );
        assert!(list(&config, &[])?.is_empty(), "{how}: nothing listed");
        seen.push(format!("{how}: exit 1 in {:.1} s", took.as_secs_f64()));
    }
    observed(
        12,
        &format!(
            "{}; not retried; the error names the repository path, the file (database.dump.zst; \
             the id's claim when already full) and \"No space left on device\"; repository empty \
             after each (no manifest, no partial/temporary file, no backup directory)",
            seen.join(", ")
        ),
    );
    Ok(())
}

/// Scenario 14: `kill -9` of the agent while its backup's multipart upload
/// is open on Garage. The upload is left (nobody could abort it); the
/// restarted agent commits nothing; prune keeps the upload within
/// `gc_grace` and aborts it after; `list` shows no backup and the
/// repository holds no object.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_upload_leaves_an_upload_that_gc_removes() -> Result<()> {
    let target = s3::garage()?;
    let proxy = FaultProxy::start(&target)?;
    let repo = Repo::s3(proxy.target(), "kill9-upload");
    let prefix = prefix_of(&repo);
    let env = repo.env();
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_bulk(&src, "app", ROWS).await?;
    let port = free_port()?;
    let app = job(
        "app",
        &src,
        "app",
        &format!("globals = false\nretention = {{ keep_last = 1, gc_grace = \"1h\" }}\n{QUIET}"),
    );
    let config = agent_config_small_parts(tmp.path(), &repo, port, "", &[app])?;
    let cfg = config.to_str().unwrap_or_default();
    let agent = Agent::start(&config, &env, port, tmp.path().join("agent.log"))?;
    let hold = proxy.add(hold_parts());
    agent.signal(Signal::SIGUSR1)?;
    let pg_dump = wait_mid_stream(&agent, &proxy, hold)?;
    let uploads = multipart_uploads_left(&target, &prefix)?;
    assert_eq!(uploads, 1, "one multipart upload open mid-stream");
    let status = agent.kill_9()?;
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "{status}"
    );
    // Its pg_dump loses its reader and ends too.
    wait_until(
        "the orphaned pg_dump to end",
        Duration::from_secs(30),
        || Ok(process_gone(pg_dump)),
    )?;
    proxy.clear(hold);
    assert_eq!(
        multipart_uploads_left(&target, &prefix)?,
        1,
        "nobody aborted the upload"
    );
    // Besides the upload, only the backup id's claim is left (no manifest).
    let junk = objects(&target, &prefix).await?;
    assert!(
        junk.len() == 1 && junk[0].contains("/claim-"),
        "only the id's claim: {junk:?}"
    );

    // Restarted, the agent commits nothing and leaves the upload alone.
    let agent = Agent::start(&config, &env, port, tmp.path().join("agent-2.log"))?;
    assert!(list(&config, &env)?.is_empty(), "nothing committed");
    let status = agent.stop(Duration::from_secs(30))?;
    assert!(status.success(), "restarted agent exit {status}");
    assert_eq!(multipart_uploads_left(&target, &prefix)?, 1);

    // Within the grace period the upload could be a running backup's: kept.
    let early = {
        let out = refugio_ok(&["--config", cfg, "prune", "--json"], &env)?;
        let v: serde_json::Value = serde_json::from_str(&out).context("prune --json")?;
        v[0].clone()
    };
    assert_eq!(early["stale_uploads"], serde_json::json!([]), "{early}");
    assert_eq!(early["orphans"], serde_json::json!([]), "{early}");
    assert_eq!(multipart_uploads_left(&target, &prefix)?, 1, "kept");
    // After it, aborted.
    // (The prune called in-process with a fixed clock.)
    let late = prune_ok_at(
        &config,
        &repo,
        false,
        chrono::Utc::now() + chrono::Duration::hours(2),
    )
    .await?;
    let stale = late["stale_uploads"].as_array().context("stale_uploads")?;
    assert!(
        stale.len() == 1
            && stale[0]
                .as_str()
                .is_some_and(|k| k.ends_with("/database.dump.zst")),
        "the killed backup's upload is collected: {late}"
    );
    assert_eq!(
        late["orphans"],
        serde_json::json!(junk),
        "the claim: {late}"
    );
    assert_eq!(late["failed_deletes"], serde_json::json!([]), "{late}");
    assert_eq!(
        multipart_uploads_left(&target, &prefix)?,
        0,
        "no upload left"
    );
    assert!(list(&config, &env)?.is_empty(), "list shows no backup");
    let keys = objects(&target, &prefix).await?;
    assert!(keys.is_empty(), "no object left: {keys:?}");
    observed(
        14,
        "kill -9 with 1 multipart upload open on Garage (left: the upload and the id's claim, \
         no manifest); after restart nothing committed; prune within gc_grace kept both, after \
         it aborted the upload (stale_uploads = 1) and deleted the claim (orphans = 1); \
         0 uploads left, list empty, no object left",
    );
    Ok(())
}
