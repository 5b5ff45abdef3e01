//! `refugio run`, the agent, end to end: real PostgreSQL, real S3 (moto),
//! schedules of a few seconds: on time, catching up, three replicas, a
//! backup slower than its interval. Signals, webhooks and systemd are in
//! `agent_signals.rs`; the harness ([`Agent`]) is in `common.rs`.

use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use refugio_testkit::{s3, Cluster, SlowProxy, Slowdown};
use serde_json::Value;

use crate::common::*;

/// PostgreSQL 16 with the sample data in database `app`.
async fn sample_source() -> Result<Cluster> {
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_sample(&src, "app").await?;
    Ok(src)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_backs_up_on_schedule_and_metrics_match_the_repository() -> Result<()> {
    let target = s3::moto()?;
    let repo = Repo::s3(target.clone(), "agent");
    let env = repo.env();
    let tmp = tempfile::tempdir()?;
    let src = sample_source().await?;
    let port = free_port()?;
    let job_toml = job(
        "app",
        &src,
        "app",
        "globals = false\ntargets = { rpo = \"1h\" }\n[jobs.schedule]\nbackup = { every = \"3s\" }\n",
    );
    let config = agent_config(tmp.path(), &repo, port, "", &[job_toml]);
    let agent = Agent::start(&config, &env, port, tmp.path().join("agent.log"))?;
    assert_eq!(http_get(port, "/healthz")?, (200, "ok".to_string()));

    // Catch-up (empty repository) backs up at once, then every 3 s (the
    // deadline is for a loaded machine; the scheduler's timing is held by
    // its own tests).
    wait_until("three backups", Duration::from_secs(90), || {
        Ok(backups(&config, &env)?.len() >= 3)
    })
    .with_context(|| agent.log_text())?;

    // /metrics agrees with the repository.
    let before = backups(&config, &env)?.len() as f64;
    let m = agent
        .metric("refugio_repository_backups{backup_job=\"app\"}")?
        .context("no refugio_repository_backups")?;
    let after = backups(&config, &env)?.len() as f64;
    assert!(
        m >= before - 1.0 && m <= after,
        "metric {m}, repository {before}..{after}"
    );
    let ok = agent
        .metric("refugio_backup_runs_total{backup_job=\"app\",result=\"success\"}")?
        .context("no runs metric")?;
    assert!(ok >= 3.0, "{ok}");
    let newest: DateTime<Utc> = backups(&config, &env)?[0]["finished_at"]
        .as_str()
        .context("finished_at")?
        .parse()?;
    let last = agent
        .metric("refugio_backup_last_success_timestamp_seconds{backup_job=\"app\"}")?
        .context("no last success")?;
    assert!(
        (last - newest.timestamp() as f64).abs() < 10.0,
        "{last} vs {newest}"
    );
    // No drill yet: no verified backup, so no RPO sample and the target is not met.
    assert_eq!(
        agent.metric("refugio_rpo_target_met{backup_job=\"app\"}")?,
        Some(0.0)
    );

    let status = agent.stop(Duration::from_secs(40))?;
    assert!(status.success(), "exit {status}");
    assert_eq!(multipart_uploads_left(&target, &prefix_of(&repo))?, 0);
    Ok(())
}

/// Moves a backup back in time: its objects copied under an older id.
async fn age_backup(
    store: &std::sync::Arc<dyn refugio_store::ObjectStore>,
    job: &str,
    id: &str,
    at: DateTime<Utc>,
) -> Result<String> {
    use tokio::io::AsyncReadExt;
    let new_id = refugio_store::repo::backup_id(at, 1);
    let keys: Vec<String> = store
        .list(&format!("{job}/{id}/"))
        .map_ok(|o| o.key)
        .try_collect()
        .await?;
    let mut manifest = None;
    for key in &keys {
        let mut body = Vec::new();
        store.get(key).await?.read_to_end(&mut body).await?;
        let name = key.rsplit('/').next().unwrap_or_default();
        let new_key = format!("{job}/{new_id}/{name}");
        if name == "manifest.json" {
            let mut v: Value = serde_json::from_slice(&body)?;
            v["backup_id"] = new_id.clone().into();
            manifest = Some((new_key, serde_json::to_vec(&v)?));
        } else {
            store
                .put(&new_key, body.into(), refugio_store::PutOptions::default())
                .await?;
        }
    }
    let (key, body) = manifest.context("no manifest")?;
    store
        .put(&key, body.into(), refugio_store::PutOptions::default())
        .await?;
    store.delete(&format!("{job}/{id}/manifest.json")).await?;
    for key in &keys {
        store.delete(key).await?;
    }
    Ok(new_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_backs_up_at_start_when_the_newest_backup_is_old() -> Result<()> {
    let target = s3::moto()?;
    let repo = Repo::s3(target.clone(), "catchup");
    let env = repo.env();
    let tmp = tempfile::tempdir()?;
    let src = sample_source().await?;
    let port = free_port()?;
    let job_toml = job(
        "app",
        &src,
        "app",
        "globals = false\n[jobs.schedule]\nbackup = \"0 3 * * *\"\n",
    );
    let config = agent_config(tmp.path(), &repo, port, "", &[job_toml]);
    let cfg = config.display().to_string();
    refugio_ok(&["--config", &cfg, "backup"], &env)?;
    let id = backups(&config, &env)?[0]["backup_id"]
        .as_str()
        .context("id")?
        .to_string();
    let store = open_s3(&target, &prefix_of(&repo)).await?;
    let old = age_backup(&store, "app", &id, Utc::now() - chrono::Duration::days(2)).await?;
    assert_eq!(backups(&config, &env)?.len(), 1);

    let agent = Agent::start(&config, &env, port, tmp.path().join("agent.log"))?;
    wait_until("the catch-up backup", Duration::from_secs(30), || {
        Ok(backups(&config, &env)?.len() == 2)
    })
    .with_context(|| agent.log_text())?;
    let ids: Vec<String> = backups(&config, &env)?
        .iter()
        .filter_map(|m| m["backup_id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(ids[1], old);
    assert!(agent.log_text().contains("catch-up"));
    // Daily schedule: nothing more for now.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(backups(&config, &env)?.len(), 2);
    assert!(agent.stop(Duration::from_secs(30))?.success());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_one_database_each_run_happens_once() -> Result<()> {
    let target = s3::moto()?;
    let repo = Repo::s3(target.clone(), "replicas");
    let env = repo.env();
    let tmp = tempfile::tempdir()?;
    let src = sample_source().await?;
    // Every 5 s on the wall clock: the three fire at the same instants.
    let job_toml = job(
        "app",
        &src,
        "app",
        "globals = false\n[jobs.schedule]\nbackup = \"*/5 * * * * *\"\ncatch_up = false\n",
    );
    let mut agents = Vec::new();
    let mut configs = Vec::new();
    for i in 0..3 {
        let dir = tmp.path().join(format!("agent{i}"));
        std::fs::create_dir_all(&dir)?;
        let port = free_port()?;
        let config = agent_config(&dir, &repo, port, "", std::slice::from_ref(&job_toml));
        agents.push(Agent::start(&config, &env, port, dir.join("agent.log"))?);
        configs.push(config);
    }
    let started = Utc::now();
    std::thread::sleep(Duration::from_secs(17));
    let stopped = Utc::now();
    for a in agents {
        assert!(a.stop(Duration::from_secs(30))?.success());
    }
    // Only backups that started while all three ran: the agents start and
    // stop one after another, and a fire instant during those seconds (one
    // more on a slow machine) would count against the expected number.
    let ids: Vec<DateTime<Utc>> = backups(&configs[0], &env)?
        .iter()
        .filter_map(|m| m["started_at"].as_str()?.parse().ok())
        .filter(|t| (started..=stopped).contains(t))
        .collect();
    // Fire instants while all three ran: one backup each, never two.
    let slots: Vec<i64> = ids.iter().map(|t| t.timestamp() / 5).collect();
    let mut unique = slots.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), slots.len(), "two backups of one run: {ids:?}");
    // Every fire instant well inside the window (all three agents up: a
    // second after the last started, three before the first stopped) has
    // exactly one backup: exactly one agent ran it.
    let first = (started.timestamp() + 1 + 4) / 5;
    let last = (stopped.timestamp() - 3) / 5;
    assert!(
        last - first >= 1,
        "at least two fire instants inside the window"
    );
    for slot in first..=last {
        let n = slots.iter().filter(|s| **s == slot).count();
        assert_eq!(n, 1, "fire instant {} ran {n} time(s): {ids:?}", slot * 5);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_slower_than_its_interval_never_overlaps_itself() -> Result<()> {
    let target = s3::moto()?;
    // Slow by construction, not by row volume (a dump of many rows is slow
    // only on a slow machine, and costs CPU): the agent reaches moto through
    // a proxy that holds every request 2 s. Between a backup's started_at
    // and finished_at come at least two requests (the listing that picks
    // its id, the dump's put), so each backup takes at least 4 s, four times
    // its 1 s interval, on any machine. The test's own listings go to moto
    // directly.
    let proxy = SlowProxy::start(&target, Slowdown::delay(Duration::from_secs(2)))?;
    let repo = Repo::s3(target.clone(), "overlap");
    let slow_repo = Repo::S3 {
        target: proxy.target(),
        prefix: prefix_of(&repo),
    };
    let env = repo.env();
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    let port = free_port()?;
    let job_toml = job(
        "app",
        &src,
        "app",
        "globals = false\n[jobs.schedule]\nbackup = { every = \"1s\" }\ncatch_up = false\n",
    );
    let slow_dir = tmp.path().join("agent");
    std::fs::create_dir_all(&slow_dir)?;
    let slow_config = agent_config(
        &slow_dir,
        &slow_repo,
        port,
        "",
        std::slice::from_ref(&job_toml),
    );
    let config = agent_config(tmp.path(), &repo, port, "", &[job_toml]);
    let agent = Agent::start(&slow_config, &env, port, tmp.path().join("agent.log"))?;
    wait_until("two backups", Duration::from_secs(90), || {
        Ok(backups(&config, &env)?.len() >= 2)
    })
    .with_context(|| agent.log_text())?;
    let skipped = agent
        .metric(
            "refugio_task_skipped_total{backup_job=\"app\",task=\"backup\",reason=\"overlap\"}",
        )?
        .unwrap_or(0.0);
    let status = agent.stop(Duration::from_secs(40))?;
    assert!(status.success());
    let list = backups(&config, &env)?;
    let mut spans: Vec<(DateTime<Utc>, DateTime<Utc>)> = list
        .iter()
        .filter_map(|m| {
            Some((
                m["started_at"].as_str()?.parse().ok()?,
                m["finished_at"].as_str()?.parse().ok()?,
            ))
        })
        .collect();
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "backups overlap: {w:?}");
    }
    let slowest = spans
        .iter()
        .map(|(s, f)| *f - *s)
        .max()
        .context("no backups")?;
    assert!(
        slowest > chrono::Duration::seconds(1),
        "the backup was not slower than its interval: {slowest}"
    );
    assert!(skipped >= 1.0, "no overlapping trigger was skipped");
    Ok(())
}
