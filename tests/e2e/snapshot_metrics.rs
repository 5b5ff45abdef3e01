//! Snapshot (insta) of the agent's `/metrics` after a backup and a drill:
//! names, types, HELP and UNIT lines, label sets and counters pinned; times,
//! durations and sizes filtered (see snapshots.rs for the approach).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use chrono::{DateTime, Utc};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::common::*;

use crate::snapshot_support::*;

// ---------------------------------------------------------------------------
// The agent.

/// A running `refugio run`; SIGKILLed if the test drops it running.
struct Agent {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Agent {
    fn start(config: &Path, port: u16, log: PathBuf) -> Result<Agent> {
        let child = Command::new(env!("CARGO_BIN_EXE_refugio"))
            .args(["--config", &config.display().to_string(), "run"])
            .env_remove("REFUGIO_CONFIG")
            .env("REFUGIO_LOG", "info,tokio_cron_scheduler=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        let agent = Agent { child, port, log };
        agent.wait("ready", Duration::from_secs(60), |a| {
            Ok(a.get("/readyz").is_ok_and(|(status, _, _)| status == 200))
        })?;
        Ok(agent)
    }

    /// GET over plain HTTP/1.1: (status, content type, body).
    fn get(&self, path: &str) -> Result<(u16, String, String)> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header end")?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("no HTTP status")?;
        let content_type = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-type")
                    .then(|| v.trim().to_string())
            })
            .unwrap_or_default();
        Ok((status, content_type, body.to_string()))
    }

    fn metrics(&self) -> Result<String> {
        let (status, _, body) = self.get("/metrics")?;
        ensure!(status == 200, "/metrics answered {status}");
        Ok(body)
    }

    fn wait(
        &self,
        what: &str,
        limit: Duration,
        mut done: impl FnMut(&Agent) -> Result<bool>,
    ) -> Result<()> {
        let deadline = Instant::now() + limit;
        while !done(self)? {
            if Instant::now() > deadline {
                bail!(
                    "timed out after {limit:?} waiting for {what}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    fn signal(&self, sig: Signal) -> Result<()> {
        kill(Pid::from_raw(i32::try_from(self.child.id())?), sig)?;
        Ok(())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit status.
    fn stop(mut self) -> Result<std::process::ExitStatus> {
        self.signal(Signal::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "agent still running 30 s after SIGTERM; log:\n{}",
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

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The sample value of `series` (name and labels exactly).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The samples of each family sorted: prometheus-client keeps a family's
/// series in a hash map, so their order changes from run to run. Family
/// order, HELP, TYPE and UNIT lines stay as served.
fn sort_series(text: &str) -> String {
    let mut out = Vec::new();
    let mut samples: Vec<&str> = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            samples.sort_unstable();
            out.append(&mut samples);
            out.push(line);
        } else {
            samples.push(line);
        }
    }
    samples.sort_unstable();
    out.append(&mut samples);
    out.join("\n") + "\n"
}

/// `/metrics` after one backup (SIGUSR1) and one drill (SIGUSR2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_a_backup_and_a_drill() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = sample_source().await?;
    let port = free_port()?;
    let repo = Repo::dir(tmp.path());
    // Never scheduled (1 January) and no catch-up: only the signals work.
    let job_toml = app_job(
        &src,
        "[jobs.schedule]\nbackup = \"0 0 1 1 *\"\ncatch_up = false\n",
    );
    let config = tmp.path().join("refugio.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[agent]\nlisten = \"127.0.0.1:{port}\"\n\n[[jobs]]\n{job_toml}\n",
            repo.toml()
        ),
    )?;
    let agent = Agent::start(&config, port, tmp.path().join("agent.log"))?;
    let (status, content_type, _) = agent.get("/metrics")?;

    let ok = |name: &str| format!("{name}{{backup_job=\"app\",result=\"success\"}}");
    agent.signal(Signal::SIGUSR1)?;
    agent.wait("the backup", Duration::from_secs(60), |a| {
        Ok(sample(&a.metrics()?, &ok("refugio_backup_runs_total")) == Some(1.0))
    })?;
    agent.signal(Signal::SIGUSR2)?;
    // The drill's metrics, then the RPO the repository listing after it gives.
    agent.wait("the drill", Duration::from_secs(60), |a| {
        let m = a.metrics()?;
        Ok(sample(&m, &ok("refugio_drill_runs_total")) == Some(1.0)
            && sample(&m, "refugio_rpo_seconds{backup_job=\"app\"}").is_some())
    })?;
    let body = agent.metrics()?;
    let stopped = agent.stop()?;
    ensure!(stopped.success(), "agent exit {stopped}");

    // What the filters hide is checked against the repository first.
    let Repo::Dir(root) = &repo else {
        unreachable!()
    };
    let dir = only_backup_dir(root)?;
    let m: Value = serde_json::from_slice(&std::fs::read(dir.join("manifest.json"))?)?;
    let r: Value = serde_json::from_slice(&std::fs::read(receipt_path(&dir)?)?)?;
    let value = |s: &str| sample(&body, &format!("{s}{{backup_job=\"app\"}}"));
    let stored: u64 = m["artifacts"]
        .as_array()
        .context("artifacts")?
        .iter()
        .filter_map(|a| a["stored_size"].as_u64())
        .sum();
    assert_eq!(
        value("refugio_backup_last_stored_bytes"),
        Some(stored as f64)
    );
    let finished: DateTime<Utc> = m["finished_at"].as_str().context("finished_at")?.parse()?;
    let last = value("refugio_backup_last_success_timestamp_seconds").context("last success")?;
    assert!((last - finished.timestamp_millis() as f64 / 1000.0).abs() < 0.01);
    assert_eq!(
        value("refugio_rto_seconds"),
        r["rto"]["measured_seconds"].as_f64()
    );

    // Values that are times, durations or sizes; counters, flags, counts
    // and configured targets stay.
    let number = r"-?[0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?";
    let redact = |names: &str, with: &str| {
        (
            format!(r"(?m)^((?:{names})\{{[^}}]*\}}) {number}$"),
            format!("$1 [{with}]"),
        )
    };
    let filters = [
        redact(
            "refugio_backup_last_success_timestamp_seconds|refugio_drill_last_timestamp_seconds",
            "timestamp",
        ),
        redact(
            "refugio_backup_last_duration_seconds|refugio_rpo_seconds|refugio_rto_seconds",
            "seconds",
        ),
        redact(
            "refugio_backup_last_stored_bytes|refugio_backup_last_raw_bytes|refugio_repository_bytes",
            "bytes",
        ),
        (
            format!(
                r#"refugio_build_info\{{version="{}"\}}"#,
                regex_escape(env!("CARGO_PKG_VERSION"))
            ),
            r#"refugio_build_info{version="[version]"}"#.to_string(),
        ),
    ];
    let snapshot = format!(
        "status: {status}\ncontent-type: {content_type}\n\n{}",
        sort_series(&body)
    );
    insta::with_settings!({ filters => filters.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect::<Vec<_>>() }, {
        insta::assert_snapshot!("metrics", snapshot);
    });
    Ok(())
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let escape = !c.is_ascii_alphanumeric();
            escape.then_some('\\').into_iter().chain([c])
        })
        .collect()
}
