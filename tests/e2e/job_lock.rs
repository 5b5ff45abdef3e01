//! The job lock (an advisory lock on the source, per job and task): one
//! job's backup, drill and prune never lock each other out in one agent,
//! and two command-line backups of one job never write the same backup.

use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::Signal;
use refugio_testkit::{s3, Cluster, SlowProxy, Slowdown};

use crate::common::*;

/// A backup, a drill and a prune of the same job run side by side in one
/// agent: none of them is skipped for "lock" (they used to share one lock
/// per job, so whichever came second was skipped). The backup is slowed by
/// `upload_rate_limit` (the drill and the prune are not: they upload no
/// artifact), and the test sees the drill and a prune succeed while the
/// backup is still running: they overlapped, so a shared lock would have
/// shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_jobs_backup_drill_and_prune_run_side_by_side_in_one_agent() -> Result<()> {
    let target = s3::moto()?;
    let repo = Repo::s3(target.clone(), "job-tasks");
    let env = repo.env();
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_bulk(&src, "app", 20_000).await?;
    let port = free_port()?;
    let app = job(
        "app",
        &src,
        "app",
        &format!(
            "globals = false\nscratch = {:?}\nretention = {{ keep_last = 5 }}\n[jobs.schedule]\nbackup = \"0 0 1 1 *\"\nprune = {{ every = \"2s\" }}\ncatch_up = false\n",
            src.url("postgres")
        ),
    );
    let config = agent_config(tmp.path(), &repo, port, "max_concurrent_tasks = 3", &[app]);
    let cfg = config.to_str().unwrap_or_default();
    // One backup to drill, made before the agent starts (at full speed).
    refugio_ok(&["--config", cfg, "backup"], &env)?;
    let text = std::fs::read_to_string(&config)?;
    std::fs::write(
        &config,
        text.replacen(
            "\n[agent]",
            "upload_rate_limit = \"128KiB/s\"\npart_size = \"5MiB\"\nupload_concurrency = 1\n\n[agent]",
            1,
        ),
    )?;
    let agent = Agent::start(&config, &env, port, tmp.path().join("agent.log"))?;
    wait_until("the agent is ready", Duration::from_secs(30), || {
        Ok(agent.log_text().contains("agent-ready"))
    })?;
    // Read strictly: a series that is missing or renamed is an error, not 0
    // (the skipped counter's family must exist for its absence to mean 0).
    let (status, body) = http_get(port, "/metrics")?;
    anyhow::ensure!(status == 200, "/metrics answered {status}");
    anyhow::ensure!(
        body.contains("# TYPE refugio_task_skipped counter"),
        "the skipped-task counter is exported:\n{body}"
    );
    let count = |body: &str, name: &str, task_labels: &str| -> f64 {
        metric_value(body, &format!("{name}{{backup_job=\"app\",{task_labels}")).unwrap_or(0.0)
    };
    let prunes_before = count(&body, "refugio_prune_runs_total", "result=\"success\"}");
    agent.signal(Signal::SIGUSR1)?;
    agent.signal(Signal::SIGUSR2)?;
    let mut overlapped = None;
    wait_until(
        "a second backup, a drill and a prune",
        Duration::from_secs(120),
        || {
            let (_, body) = http_get(port, "/metrics")?;
            let backups = count(&body, "refugio_backup_runs_total", "result=\"success\"}");
            let drills = count(&body, "refugio_drill_runs_total", "result=\"success\"}");
            let prunes = count(&body, "refugio_prune_runs_total", "result=\"success\"}");
            if backups == 0.0 && drills >= 1.0 && prunes > prunes_before && overlapped.is_none() {
                overlapped = Some((drills, prunes - prunes_before));
            }
            Ok(backups >= 1.0 && drills >= 1.0 && prunes > prunes_before)
        },
    )
    .with_context(|| agent.log_text())?;
    let (drills, prunes) = overlapped.with_context(|| {
        format!(
            "the drill and a prune never finished while the backup ran: nothing shows they overlapped\n{}",
            agent.log_text()
        )
    })?;
    assert!(
        agent.log_text().contains("backup-started"),
        "the backup ran in the agent"
    );
    let (_, body) = http_get(port, "/metrics")?;
    for task in ["backup", "drill", "prune"] {
        let skipped = count(
            &body,
            "refugio_task_skipped_total",
            &format!("task=\"{task}\",reason=\"lock\"}}"),
        );
        assert_eq!(
            skipped,
            0.0,
            "the job's {task} was skipped for its own lock:\n{}",
            agent.log_text()
        );
    }
    assert!(agent.stop(Duration::from_secs(40))?.success());
    observed(
        18,
        &format!(
            "backup (upload_rate_limit 128KiB/s), drill and prune of one job in one agent: {drills} drill(s) and {prunes} prune(s) succeeded while the backup was still running, then the backup succeeded; none skipped for lock"
        ),
    );
    Ok(())
}

/// Two `refugio backup` processes of one job started together: one takes
/// the job's lock and commits, the other is refused with a clear error; no
/// backup is ever written twice under one id.
#[tokio::test(flavor = "multi_thread")]
async fn two_command_line_backups_of_one_job_never_overwrite() -> Result<()> {
    let target = s3::moto()?;
    let repo = Repo::s3(target.clone(), "two-backups");
    // 1 s per request: the first backup holds its lock for seconds.
    let proxy = SlowProxy::start(&target, Slowdown::delay(Duration::from_secs(1)))?;
    let slow_repo = Repo::S3 {
        target: proxy.target(),
        prefix: prefix_of(&repo),
    };
    let env = repo.env();
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_sample(&src, "app").await?;
    let config = write_config(
        tmp.path(),
        &slow_repo,
        &job("app", &src, "app", "globals = false\n"),
    );
    let cfg = config.to_str().unwrap_or_default().to_string();
    let spawn = || {
        refugio_command(&["--config", &cfg, "backup", "--json"], &env)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
    };
    let (a, b) = (spawn()?, spawn()?);
    let outs = [a.wait_with_output()?, b.wait_with_output()?];
    proxy.set(Slowdown::NONE);
    let ok: Vec<_> = outs.iter().filter(|o| o.status.success()).collect();
    let refused: Vec<_> = outs.iter().filter(|o| !o.status.success()).collect();
    assert_eq!(
        ok.len(),
        1,
        "exactly one backup runs: {:?}",
        outs.iter().map(all_output).collect::<Vec<_>>()
    );
    let text = all_output(refused[0]);
    assert_eq!(refused[0].status.code(), Some(1), "{text}");
    assert!(
        text.contains("another refugio") && text.contains("job app"),
        "the refusal says why: {text}"
    );
    let committed: serde_json::Value = serde_json::from_slice(&ok[0].stdout)?;
    let listed = list(&config, &env)?;
    assert_eq!(listed.len(), 1, "one backup: {listed:?}");
    assert_eq!(listed[0]["backup_id"], committed["backup_id"]);
    assert_eq!(
        listed[0]["artifacts"], committed["artifacts"],
        "the stored backup is the one that was committed"
    );
    observed(
        17,
        &format!(
            "two `refugio backup` of one job at once: one committed ({}), the other refused (exit 1, lock held); one backup listed, the committed one",
            committed["backup_id"].as_str().unwrap_or("?")
        ),
    );
    Ok(())
}

/// The session holding a job's advisory lock on `cluster`, if any.
async fn lock_holder(cluster: &Cluster) -> Result<Option<i64>> {
    let out = cluster
        .psql(
            "postgres",
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted ORDER BY pid LIMIT 1",
        )
        .await?;
    Ok(out.trim().parse().ok())
}

/// Fault scenario 11: the connection holding the job's lock is killed by
/// `pg_terminate_backend` while a backup runs (its commit held by the fault
/// proxy); the agent notices within seconds, takes the lock again on a new
/// connection, and the backup commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_connection_killed_mid_task_is_detected_and_retaken() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_sample(&src, "app").await?;
    let proxy = refugio_testkit::FaultProxy::start(&s3::moto()?)?;
    let repo = Repo::s3(proxy.target(), "lock-retaken");
    let env = repo.env();
    let port = free_port()?;
    let config = agent_config(
        tmp.path(),
        &repo,
        port,
        "",
        &[job("app", &src, "app", "globals = false\n")],
    );
    let agent = Agent::start(&config, &env, port, tmp.path().join("agent.log"))?;
    // The backup's commit (its manifest) waits until the rule is cleared.
    let hold = proxy.add(
        refugio_testkit::Rule::new()
            .method("PUT")
            .path_ends_with("/manifest.json")
            .stall_forever(),
    );
    agent.signal(Signal::SIGUSR1)?;
    wait_until("the commit to be held", Duration::from_secs(60), || {
        Ok(proxy.stats(hold).matched >= 1)
    })
    .with_context(|| agent.log_text())?;
    let first = lock_holder(&src)
        .await?
        .context("no session holds the lock")?;
    let terminated = std::time::Instant::now();
    src.psql("postgres", &format!("SELECT pg_terminate_backend({first})"))
        .await?;
    wait_until(
        "the lock to be taken again",
        Duration::from_secs(20),
        || Ok(agent.log_text().contains("job-lock-retaken")),
    )
    .with_context(|| agent.log_text())?;
    let retaken_after = terminated.elapsed().as_secs_f64();
    let second = lock_holder(&src)
        .await?
        .context("nobody holds the lock again")?;
    assert_ne!(first, second, "a new session holds the lock");
    let log = agent.log_text();
    assert!(log.contains("job-lock-lost"), "{log}");
    proxy.clear(hold);
    wait_until("the backup to commit", Duration::from_secs(60), || {
        Ok(backups(&config, &env)?.len() == 1)
    })
    .with_context(|| agent.log_text())?;
    wait_until("the lock to be released", Duration::from_secs(10), || {
        Ok(tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(lock_holder(&src))
        })?
        .is_none())
    })?;
    observed(
        11,
        &format!("lock session {first} terminated mid-backup (commit held); job-lock-lost logged, lock retaken by session {second} {retaken_after:.1} s after the kill; backup committed; lock released after"),
    );
    Ok(())
}
