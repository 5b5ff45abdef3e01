//! `refugio run`, the agent, end to end: real PostgreSQL, real S3 (moto),
//! schedules of a few seconds, signals, HTTP metrics, several replicas.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use refugio_testkit::{s3, Cluster, SlowProxy, Slowdown};
use serde_json::Value;

use crate::common::*;

/// A running `refugio run`; killed (SIGKILL) if the test drops it running.
struct Agent {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Agent {
    fn start(config: &Path, env: &[(String, String)], port: u16, log: PathBuf) -> Result<Agent> {
        let file = std::fs::File::create(&log)?;
        let child = Command::new(env!("CARGO_BIN_EXE_refugio"))
            .args(["--config", &config.display().to_string(), "run"])
            .env_remove("REFUGIO_CONFIG")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env("REFUGIO_LOG", "info,tokio_cron_scheduler=warn")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()?;
        let agent = Agent { child, port, log };
        agent.wait_ready()?;
        Ok(agent)
    }

    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok((200, _)) = http_get(self.port, "/readyz") {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("agent not ready within 60 s; log:\n{}", self.log_text())
    }

    fn signal(&self, sig: Signal) -> Result<()> {
        kill(Pid::from_raw(self.child.id() as i32), sig)?;
        Ok(())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn metric(&self, line_prefix: &str) -> Result<Option<f64>> {
        let (status, body) = http_get(self.port, "/metrics")?;
        anyhow::ensure!(status == 200, "/metrics answered {status}");
        Ok(metric_value(&body, line_prefix))
    }

    /// SIGTERM, then the exit status (within `limit`).
    fn stop(mut self, limit: Duration) -> Result<std::process::ExitStatus> {
        self.signal(Signal::SIGTERM)?;
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "agent still running {limit:?} after SIGTERM; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// PostgreSQL 16 with the sample data in database `app`.
async fn sample_source() -> Result<Cluster> {
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_sample(&src, "app").await?;
    Ok(src)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A GET over a plain TCP connection to 127.0.0.1: (status, body).
fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The value of the first sample line starting with `prefix`.
fn metric_value(body: &str, prefix: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if cond()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn backups(config: &Path, env: &[(String, String)]) -> Result<Vec<Value>> {
    list(config, env)
}

/// Config: repository, `[agent]` on `port`, and the jobs.
fn agent_config(dir: &Path, repo: &Repo, port: u16, agent_extra: &str, jobs: &[String]) -> PathBuf {
    let path = dir.join("refugio.toml");
    let mut text = format!(
        "{}\n[agent]\nlisten = \"127.0.0.1:{port}\"\nshutdown_timeout = \"30s\"\n{agent_extra}\n",
        repo.toml()
    );
    for j in jobs {
        text.push_str(&format!("\n[[jobs]]\n{j}\n"));
    }
    std::fs::write(&path, text).expect("config");
    path
}

fn multipart_uploads_left(target: &s3::S3Target, prefix: &str) -> Result<usize> {
    let rt = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| {
        rt.block_on(async {
            let store = open_s3(target, prefix).await?;
            anyhow::Ok(store.list_multipart_uploads("").await?.len())
        })
    })
}

fn prefix_of(repo: &Repo) -> String {
    match repo {
        Repo::S3 { prefix, .. } => prefix.clone(),
        Repo::Dir(_) => String::new(),
    }
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

    // Catch-up (empty repository) backs up at once, then every 3 s.
    let t0 = Instant::now();
    wait_until("three backups", Duration::from_secs(45), || {
        Ok(backups(&config, &env)?.len() >= 3)
    })
    .with_context(|| agent.log_text())?;
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(30), "3 backups took {took:?}");

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

/// Rows of the signals test's slow job: about 46 MiB of dump after zstd.
const OTHER_ROWS: i64 = 600_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_back_up_drill_reload_and_stop_cleanly() -> Result<()> {
    let target = s3::moto()?;
    let repo = Repo::s3(target.clone(), "signals");
    // The agent reaches moto through a proxy, at full speed until the slow
    // backup below.
    let proxy = SlowProxy::start(&target, Slowdown::NONE)?;
    let agent_repo = Repo::S3 {
        target: proxy.target(),
        prefix: prefix_of(&repo),
    };
    let env = repo.env();
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    src.create_database("other").await?;
    refugio_testkit::sample::load_sample(&src, "app").await?;
    // More than the four 8 MiB parts the uploader holds at once, so the
    // dump is still being read when SIGTERM lands.
    refugio_testkit::sample::load_bulk(&src, "other", OTHER_ROWS).await?;
    let scratch = Cluster::start(16).await?;
    let port = free_port()?;
    // Never scheduled (1 January), no catch-up: only signals start work.
    let quiet = "[jobs.schedule]\nbackup = \"0 0 1 1 *\"\ncatch_up = false\n";
    let app = job(
        "app",
        &src,
        "app",
        &format!(
            "globals = false\nscratch = {:?}\ntargets = {{ rpo = \"1h\", rto = \"1h\" }}\n{quiet}",
            scratch.url("postgres")
        ),
    );
    let config = agent_config(
        tmp.path(),
        &agent_repo,
        port,
        "",
        std::slice::from_ref(&app),
    );
    let agent = Agent::start(&config, &env, port, tmp.path().join("agent.log"))?;
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        backups(&config, &env)?.is_empty(),
        "nothing before a signal"
    );

    // SIGUSR1: one backup.
    agent.signal(Signal::SIGUSR1)?;
    wait_until("a backup after SIGUSR1", Duration::from_secs(30), || {
        Ok(backups(&config, &env)?.len() == 1)
    })
    .with_context(|| agent.log_text())?;
    // SIGUSR2: a drill of it, recorded as verified.
    agent.signal(Signal::SIGUSR2)?;
    wait_until(
        "a verified backup after SIGUSR2",
        Duration::from_secs(60),
        || {
            Ok(backups(&config, &env)?
                .first()
                .is_some_and(|m| m["verification"]["verified"] == true))
        },
    )
    .with_context(|| agent.log_text())?;
    wait_until("drill metric", Duration::from_secs(10), || {
        Ok(agent.metric("refugio_drill_last_success{backup_job=\"app\"}")? == Some(1.0))
    })?;
    wait_until("RPO metric", Duration::from_secs(10), || {
        Ok(agent
            .metric("refugio_rpo_seconds{backup_job=\"app\"}")?
            .is_some())
    })?;
    assert_eq!(
        agent.metric("refugio_rpo_target_met{backup_job=\"app\"}")?,
        Some(1.0)
    );
    assert_eq!(
        agent.metric("refugio_rto_target_met{backup_job=\"app\"}")?,
        Some(1.0)
    );

    // Every refugio metric the shipped alert rules use is exported.
    let (_, body) = http_get(port, "/metrics")?;
    let rules = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/prometheus/alerts.yml"),
    )?;
    let mut names: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("refugio_"))
        .collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 5, "alert rules name only {names:?}");
    for name in names {
        let family = name.strip_suffix("_total").unwrap_or(name);
        assert!(
            body.contains(&format!("# TYPE {family} ")),
            "alerts.yml uses {name}, which /metrics does not export:\n{body}"
        );
    }

    // SIGHUP with a broken file: rejected, the agent keeps running.
    let good = std::fs::read_to_string(&config)?;
    std::fs::write(&config, format!("{good}\nnot valid toml [[["))?;
    agent.signal(Signal::SIGHUP)?;
    wait_until("reload rejected", Duration::from_secs(10), || {
        Ok(agent.log_text().contains("reload-rejected"))
    })?;
    assert_eq!(http_get(port, "/healthz")?.0, 200);

    // SIGHUP with a new job: SIGUSR1 then backs it up too.
    let other = job("other", &src, "other", &format!("globals = false\n{quiet}"));
    agent_config(tmp.path(), &agent_repo, port, "", &[app, other]);
    agent.signal(Signal::SIGHUP)?;
    wait_until("reload", Duration::from_secs(10), || {
        Ok(agent.log_text().contains("config-reloaded"))
    })?;
    // The new job's backup is slow by construction: from now on every
    // request to the store waits 2 s, so once its multipart upload exists,
    // its parts, the completion and the manifest (at least 6 s) are still to
    // come: SIGTERM lands mid-upload however fast the machine.
    proxy.set(Slowdown::delay(Duration::from_secs(2)));
    agent.signal(Signal::SIGUSR1)?;
    let other_cfg = tmp.path().join("other.toml");
    std::fs::write(
        &other_cfg,
        format!(
            "{}\n[[jobs]]\n{}\n",
            repo.toml(),
            job("other", &src, "other", "globals = false\n")
        ),
    )?;
    wait_until(
        "the slow backup to start uploading",
        Duration::from_secs(30),
        || Ok(multipart_uploads_left(&target, &prefix_of(&repo))? > 0),
    )
    .with_context(|| agent.log_text())?;
    let log = agent.log.clone();
    let status = agent.stop(Duration::from_secs(40))?;
    let text = std::fs::read_to_string(log).unwrap_or_default();
    assert!(status.success(), "exit {status}:\n{text}");
    // Nothing partial: no manifest of "other", no upload left.
    assert!(
        !backups(&other_cfg, &env)?
            .iter()
            .any(|m| m["job"] == "other"),
        "{text}"
    );
    assert_eq!(
        multipart_uploads_left(&target, &prefix_of(&repo))?,
        0,
        "{text}"
    );
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
            store.put(&new_key, body.into()).await?;
        }
    }
    let (key, body) = manifest.context("no manifest")?;
    store.put(&key, body.into()).await?;
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
    let expected = (stopped.timestamp() / 5) - (started.timestamp() / 5);
    assert!(
        slots.len() as i64 >= expected - 1 && slots.len() as i64 <= expected + 1,
        "{} backups for {expected} fire times: {ids:?}",
        slots.len()
    );
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

/// A one-thread HTTP server on 127.0.0.1 that records request bodies and
/// answers 500 to the first request, 200 afterwards.
fn webhook_receiver() -> Result<(u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = bodies.clone();
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().enumerate() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let body = loop {
                let Ok(k) = conn.read(&mut chunk) else {
                    break None;
                };
                if k == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..k]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        break Some(body.to_string());
                    }
                }
            };
            let status = if n == 0 {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            if let Some(b) = body {
                seen.lock().expect("lock").push(b);
            }
        }
    });
    Ok((port, bodies))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_reports_failure_then_recovery_and_never_fails_the_task() -> Result<()> {
    let target = s3::moto()?;
    let repo = Repo::s3(target.clone(), "webhook");
    let env = repo.env();
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(16).await?;
    let (hook_port, bodies) = webhook_receiver()?;
    let port = free_port()?;
    // The database does not exist yet: the first backup fails (permanently).
    let job_toml = job(
        "app",
        &src,
        "later",
        "globals = false\n[jobs.schedule]\nbackup = \"0 0 1 1 *\"\ncatch_up = false\n",
    );
    let config = agent_config(
        tmp.path(),
        &repo,
        port,
        &format!("webhook = {{ url = \"http://127.0.0.1:{hook_port}/hook?token=SECRET\", attempts = 3, timeout = \"5s\" }}"),
        &[job_toml],
    );
    let agent = Agent::start(&config, &env, port, tmp.path().join("agent.log"))?;
    agent.signal(Signal::SIGUSR1)?;
    // First delivery gets a 500, the retry a 200: two bodies, same event.
    wait_until("the failure webhook", Duration::from_secs(30), || {
        Ok(bodies.lock().expect("lock").len() >= 2)
    })
    .with_context(|| agent.log_text())?;
    let first: Value = serde_json::from_str(&bodies.lock().expect("lock")[1])?;
    assert_eq!(first["event"], "failure", "{first}");
    assert_eq!(first["job"], "app");
    assert_eq!(first["task"], "backup");
    assert!(
        first["error"]
            .as_str()
            .unwrap_or_default()
            .contains("later"),
        "{first}"
    );
    assert_eq!(
        agent.metric("refugio_backup_runs_total{backup_job=\"app\",result=\"failure\"}")?,
        Some(1.0)
    );

    // Fixed: the next backup succeeds and a recovery is sent.
    src.create_database("later").await?;
    agent.signal(Signal::SIGUSR1)?;
    wait_until("the recovery webhook", Duration::from_secs(30), || {
        Ok(bodies.lock().expect("lock").len() >= 3)
    })
    .with_context(|| agent.log_text())?;
    let recovery: Value = serde_json::from_str(&bodies.lock().expect("lock")[2])?;
    assert_eq!(recovery["event"], "recovery", "{recovery}");
    assert!(recovery["backup_id"].as_str().is_some(), "{recovery}");
    assert_eq!(backups(&config, &env)?.len(), 1);
    let log = agent.log_text();
    assert!(
        !log.contains("SECRET"),
        "the webhook URL's token was logged:\n{log}"
    );
    assert!(agent.stop(Duration::from_secs(30))?.success());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_watchdog_and_stopping() -> Result<()> {
    let target = s3::moto()?;
    let repo = Repo::s3(target, "notify");
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    let socket_path = tmp.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path)?;
    socket.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut env = repo.env();
    env.push(("NOTIFY_SOCKET".into(), socket_path.display().to_string()));
    env.push(("WATCHDOG_USEC".into(), "1000000".into()));
    let port = free_port()?;
    let job_toml = job(
        "app",
        &src,
        "app",
        "globals = false\n[jobs.schedule]\nbackup = \"0 0 1 1 *\"\ncatch_up = false\n",
    );
    let config = agent_config(tmp.path(), &repo, port, "", &[job_toml]);
    let agent = Agent::start(&config, &env, port, tmp.path().join("agent.log"))?;
    let mut heard = Vec::new();
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !heard.iter().any(|m: &String| m.contains("WATCHDOG=1")) {
        let n = socket.recv(&mut buf)?;
        heard.push(String::from_utf8_lossy(&buf[..n]).to_string());
    }
    assert!(
        heard.first().is_some_and(|m| m.contains("READY=1")),
        "{heard:?}"
    );
    assert!(heard.iter().any(|m| m.contains("WATCHDOG=1")), "{heard:?}");
    assert!(agent.stop(Duration::from_secs(30))?.success());
    let mut stopping = false;
    while let Ok(n) = socket.recv(&mut buf) {
        if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "no STOPPING=1 after SIGTERM");
    Ok(())
}
