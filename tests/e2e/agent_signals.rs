//! The agent on signals (SIGUSR1 backup, SIGUSR2 drill, SIGHUP reload,
//! SIGTERM stop mid-upload) and what it tells others: webhooks and systemd.

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::Signal;
use refugio_testkit::{s3, Cluster, SlowProxy, Slowdown};
use serde_json::Value;

use crate::common::*;

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
    // The WAL families have series only for physical jobs (this agent has
    // none, and empty families are not encoded); tests/e2e/pitr.rs reads
    // them from an agent with one. The last clean check's time appears with
    // the first clean check (this agent schedules none); tests/e2e/check.rs
    // reads it from an agent that does.
    let later = |n: &&str| {
        n.starts_with("refugio_wal_") || *n == "refugio_check_last_success_timestamp_seconds"
    };
    for name in names.into_iter().filter(|n| !later(n)) {
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
    // The old config stays in force: its job still backs up on SIGUSR1.
    let successes = || -> Result<f64> {
        agent
            .metric("refugio_backup_runs_total{backup_job=\"app\",result=\"success\"}")?
            .context("the backup counter of job app")
    };
    let before = successes()?;
    agent.signal(Signal::SIGUSR1)?;
    wait_until(
        "a backup under the config in force",
        Duration::from_secs(60),
        || Ok(successes()? > before),
    )
    .with_context(|| agent.log_text())?;

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

/// A one-thread HTTP server on 127.0.0.1 that records request bodies and
/// answers 500 to the first request, 200 afterwards.
pub(crate) fn webhook_receiver() -> Result<(u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>)> {
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

/// A backup that SIGTERM stops did not fail: the agent is shutting down
/// and nothing was committed, so no failure webhook goes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_stopped_by_sigterm_sends_no_failure_webhook() -> Result<()> {
    let target = s3::moto()?;
    let repo = Repo::s3(target.clone(), "sigterm-hook");
    // Every request to the store waits 2 s: the backup is still running
    // when SIGTERM lands, on any machine.
    let proxy = SlowProxy::start(&target, Slowdown::NONE)?;
    let agent_repo = Repo::S3 {
        target: proxy.target(),
        prefix: prefix_of(&repo),
    };
    let env = repo.env();
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_sample(&src, "app").await?;
    let (hook_port, bodies) = webhook_receiver()?;
    let port = free_port()?;
    let app = job(
        "app",
        &src,
        "app",
        "globals = false\n[jobs.schedule]\nbackup = \"0 0 1 1 *\"\ncatch_up = false\n",
    );
    // A second job whose backup fails at once, for good (its database does
    // not exist): its failure webhook shows that this agent does deliver
    // webhooks while it runs, so the absence of one for the stopped backup
    // means "not sent", not "exited before delivering".
    let broken = job(
        "broken",
        &src,
        "nosuchdb",
        "globals = false\n[jobs.schedule]\nbackup = \"0 0 1 1 *\"\ncatch_up = false\n",
    );
    let config = agent_config(
        tmp.path(),
        &agent_repo,
        port,
        &format!("webhook = {{ url = \"http://127.0.0.1:{hook_port}/hook\", attempts = 3, timeout = \"5s\" }}"),
        &[app, broken],
    );
    let agent = Agent::start(&config, &env, port, tmp.path().join("agent.log"))?;
    wait_until("the agent is ready", Duration::from_secs(30), || {
        Ok(agent.log_text().contains("agent-ready"))
    })?;
    proxy.set(Slowdown::delay(Duration::from_secs(2)));
    agent.signal(Signal::SIGUSR1)?;
    wait_until("the backup starts", Duration::from_secs(30), || {
        Ok(agent.log_text().contains("backup-started"))
    })
    .with_context(|| agent.log_text())?;
    wait_until(
        "the broken job's failure webhook",
        Duration::from_secs(30),
        || {
            Ok(bodies
                .lock()
                .expect("lock")
                .iter()
                .any(|b| b.contains("broken")))
        },
    )
    .with_context(|| agent.log_text())?;
    let status = agent.stop(Duration::from_secs(40))?;
    proxy.set(Slowdown::NONE);
    assert!(status.success(), "the agent stops cleanly");
    assert!(backups(&config, &env)?.is_empty(), "nothing committed");
    let sent = bodies.lock().expect("lock").clone();
    let about_app: Vec<&String> = sent
        .iter()
        .filter(|b| b.contains("\"app\"") || !b.contains("broken"))
        .collect();
    assert!(
        about_app.is_empty(),
        "a shutdown is not a failure, yet the webhook received for job app: {about_app:?} (all: {sent:?})"
    );
    Ok(())
}

/// Fault scenario 19: every S3 GET (the listings) stalls for 90 s. The main
/// loop never waits on the store: watchdog pings keep their interval,
/// SIGHUP's reload does not block, USR1 starts a backup at once (which
/// then waits on the store), and SIGTERM stops the agent, that backup
/// included, in seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_listings_do_not_stall_the_main_loop() -> Result<()> {
    let agent_log = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    let target = s3::moto()?;
    let repo = Repo::s3(target.clone(), "stalled-listing");
    let proxy = SlowProxy::start(&target, Slowdown::NONE)?;
    let agent_repo = Repo::S3 {
        target: proxy.target(),
        prefix: prefix_of(&repo),
    };
    let tmp = tempfile::tempdir()?;
    let socket_path = tmp.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path)?;
    socket.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut env = repo.env();
    env.push(("NOTIFY_SOCKET".into(), socket_path.display().to_string()));
    env.push(("WATCHDOG_USEC".into(), "1000000".into()));
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    let port = free_port()?;
    let app = job(
        "app",
        &src,
        "app",
        "globals = false\n[jobs.schedule]\nbackup = \"0 0 1 1 *\"\ncatch_up = false\n",
    );
    let config = agent_config(
        tmp.path(),
        &agent_repo,
        port,
        "repository_timeout = \"2s\"",
        &[app],
    );
    let agent = Agent::start(&config, &env, port, tmp.path().join("agent.log"))?;
    // Every GET (the listings) now waits 90 s.
    proxy.set(Slowdown {
        delay: Duration::from_secs(90),
        only_method: Some("GET"),
        bytes_per_second: None,
    });
    let held_before = proxy.held();
    let hup = Instant::now();
    agent.signal(Signal::SIGHUP)?;
    // The reload (which lists nothing) finishes while listings stall.
    // Deadlines here are for a loaded machine: what is proven is that
    // nothing waits for the 90 s listing.
    wait_until("SIGHUP's reload", Duration::from_secs(30), || {
        Ok(agent.log_text().contains("config-reloaded"))
    })
    .with_context(|| agent.log_text())?;
    let reload_took = hup.elapsed();
    // The watchdog over 4 s of stalled listings: no gap as long as
    // WATCHDOG_USEC (1 s; the agent pings every half of it).
    let mut buf = [0u8; 512];
    let (watch_from, mut last, mut widest, mut pings) =
        (Instant::now(), Instant::now(), Duration::ZERO, 0);
    while watch_from.elapsed() < Duration::from_secs(4) {
        let n = socket.recv(&mut buf)?;
        if String::from_utf8_lossy(&buf[..n]).contains("WATCHDOG=1") {
            widest = widest.max(last.elapsed());
            last = Instant::now();
            pings += 1;
        }
    }
    assert!(
        pings >= 4 && widest < Duration::from_secs(1),
        "{pings} watchdog pings in 4 s, widest gap {widest:?}"
    );
    let sent = Instant::now();
    agent.signal(Signal::SIGUSR1)?;
    // The backup itself starts (it logs before claiming its id, which
    // lists: that listing is then held).
    wait_until("USR1 to start a backup", Duration::from_secs(30), || {
        Ok(agent.log_text().contains("backup-started"))
    })
    .with_context(|| agent.log_text())?;
    let usr1_took = sent.elapsed();
    wait_until(
        "the backup's listing to be held",
        Duration::from_secs(30),
        || Ok(proxy.held() > held_before),
    )
    .with_context(|| agent.log_text())?;
    let held = proxy.held() - held_before;
    let sent = Instant::now();
    agent.signal(Signal::SIGTERM)?;
    wait_until("agent-stopping", Duration::from_secs(45), || {
        Ok(agent.log_text().contains("agent-stopping"))
    })
    .with_context(|| agent.log_text())?;
    let took = sent.elapsed();
    let status = agent.stop(Duration::from_secs(40))?;
    let stopped = sent.elapsed();
    proxy.set(Slowdown::NONE);
    // Well under the 90 s the listing is held.
    assert!(
        took < Duration::from_secs(45),
        "SIGTERM waited {took:?} for a stalled listing"
    );
    assert!(status.success(), "{status:?}");
    let log = agent_log(&tmp.path().join("agent.log"));
    assert!(
        log.contains("task-cancelled"),
        "the stalled backup was cancelled, not left running: {log}"
    );
    assert!(
        backups(&config, &repo.env())?.is_empty(),
        "nothing committed"
    );
    observed(
        19,
        &format!("every S3 GET held 90 s ({held} held by the proxy): {pings} watchdog pings in 4 s (widest gap {:.2} s, WATCHDOG_USEC 1 s); SIGHUP's reload done in {:.2} s; USR1's backup started in {:.2} s; SIGTERM stopped the agent in {:.1} s, exit 0, the stalled backup cancelled, nothing committed", widest.as_secs_f64(), reload_took.as_secs_f64(), usr1_took.as_secs_f64(), stopped.as_secs_f64()),
    );
    Ok(())
}
