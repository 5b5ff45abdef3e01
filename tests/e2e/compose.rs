//! docker/compose.yml started by podman-compose with the test override
//! docker/test/compose.test.yml (local images built by
//! `scripts/container-image`, host network, the test Garage as S3): primary,
//! replica, s3, refugio, Prometheus and Alertmanager come up; refugio's
//! catch-up backs up both jobs (the logical `trips` from the replica, the
//! physical `pitr` from the primary, whose WAL the primary archives with
//! wal-push) and drills them; Prometheus scrapes refugio and loads the alert
//! rules; `down -v` leaves no container, volume or network of the project.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use futures::TryStreamExt;
use refugio_testkit::s3;
use serde_json::Value;
use tokio::io::AsyncReadExt;

use crate::common::*;
use crate::container::{health_port_lock, podman, podman_ok, remove_stale, require_image};

const SERVICES: &[&str] = &[
    "primary",
    "replica",
    "s3",
    "refugio",
    "prometheus",
    "alertmanager",
];
/// Images with refugio's binary in them.
const IMAGES: &[&str] = &["localhost/refugio:test", "localhost/refugio-primary:test"];

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// podman-compose from the venv scripts/install-test-deps makes.
fn podman_compose_bin() -> Result<PathBuf> {
    let prefix =
        std::env::var("REFUGIO_TEST_PREFIX").unwrap_or_else(|_| "/opt/refugio-test".into());
    let bin = Path::new(&prefix).join("compose-venv/bin/podman-compose");
    ensure!(
        bin.is_file(),
        "podman-compose is not installed ({} is missing): run scripts/install-test-deps",
        bin.display()
    );
    Ok(bin)
}

/// The stack of one test: `down -v` when dropped.
struct Stack {
    bin: PathBuf,
    /// docker/test/compose.test.yml with `${RT_DIR}` in place (podman-compose
    /// does not interpolate `!override` lists).
    override_file: PathBuf,
    project: String,
    env: Vec<(String, String)>,
}

impl Stack {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-p")
            .arg(&self.project)
            .arg("-f")
            .arg(repo_path("docker/compose.yml"))
            .arg("-f")
            .arg(&self.override_file)
            .args(args)
            .env("CONTAINERS_CONF", repo_path("docker/test/containers.conf"))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(std::process::Stdio::null());
        cmd
    }

    /// Runs podman-compose; its output (which names the S3 keys it passes
    /// to podman) is shown only as its last lines, and only on failure.
    fn run(&self, args: &[&str]) -> Result<()> {
        let out = self
            .command(args)
            .output()
            .context("running podman-compose")?;
        if !out.status.success() {
            let text = all_output(&out);
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            let redacted: Vec<String> = tail
                .into_iter()
                .rev()
                .map(|l| {
                    self.env
                        .iter()
                        .filter(|(k, _)| k.starts_with("AWS_SECRET"))
                        .fold(l.to_string(), |l, (_, v)| l.replace(v.as_str(), "<secret>"))
                })
                .collect();
            bail!(
                "podman-compose {args:?} failed ({}):\n{}",
                out.status,
                redacted.join("\n")
            );
        }
        Ok(())
    }

    fn logs(&self, service: &str) -> String {
        podman(&[
            "logs",
            "--tail",
            "60",
            &format!("{}_{service}_1", self.project),
        ])
        .output()
        .map(|o| all_output(&o))
        .unwrap_or_default()
    }

    fn all_logs(&self) -> String {
        SERVICES
            .iter()
            .map(|s| format!("--- {s}:\n{}", self.logs(s)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// What podman still has of the project: containers, volumes, networks.
    fn leftovers(&self) -> Result<String> {
        let label = format!("label=io.podman.compose.project={}", self.project);
        let mut left = String::new();
        for (what, args) in [
            (
                "containers",
                vec!["ps", "-a", "--filter", &label, "--format", "{{.Names}}"],
            ),
            (
                "volumes",
                vec!["volume", "ls", "--filter", &label, "--format", "{{.Name}}"],
            ),
            (
                "networks",
                vec!["network", "ls", "--filter", &label, "--format", "{{.Name}}"],
            ),
        ] {
            let out = podman_ok(&args)?;
            if !out.trim().is_empty() {
                left.push_str(&format!("{what}: {}\n", out.trim()));
            }
        }
        // Named the compose way, whatever their labels.
        let volumes = podman_ok(&["volume", "ls", "--format", "{{.Name}}"])?;
        for v in volumes
            .lines()
            .filter(|v| v.starts_with(&format!("{}_", self.project)))
        {
            left.push_str(&format!("volume {v}\n"));
        }
        Ok(left)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.command(&["down", "-v", "-t", "5"]).output();
    }
}

/// `text` with each `(from, to)` replaced; fails when `from` is not there
/// (the shipped file changed: the test must follow).
fn substitute(text: &str, what: &str, pairs: &[(&str, String)]) -> Result<String> {
    let mut out = text.to_string();
    for (from, to) in pairs {
        ensure!(out.contains(from), "{what}: no {from:?} to replace");
        out = out.replace(from, to);
    }
    Ok(out)
}

/// GET `path` on 127.0.0.1:`port` as JSON (with curl: Prometheus answers
/// large bodies chunked).
fn get_json(port: u16, path: &str) -> Result<Value> {
    let url = format!("http://127.0.0.1:{port}{path}");
    let out = Command::new("curl")
        .args(["-fsS", "--max-time", "10", &url])
        .output()
        .context("running curl")?;
    ensure!(out.status.success(), "GET {url}: {}", all_output(&out));
    serde_json::from_slice(&out.stdout).with_context(|| format!("GET {url}: not JSON"))
}

/// One Prometheus query's result vector.
fn prom_query(port: u16, query_encoded: &str) -> Result<Vec<Value>> {
    let v = get_json(port, &format!("/api/v1/query?query={query_encoded}"))?;
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

async fn keys(
    store: &std::sync::Arc<dyn refugio_store::ObjectStore>,
    prefix: &str,
) -> Result<Vec<String>> {
    Ok(store.list(prefix).map_ok(|o| o.key).try_collect().await?)
}

async fn read_json(
    store: &std::sync::Arc<dyn refugio_store::ObjectStore>,
    key: &str,
) -> Result<Value> {
    let mut body = Vec::new();
    store.get(key).await?.read_to_end(&mut body).await?;
    serde_json::from_slice(&body).with_context(|| format!("{key}: JSON"))
}

/// Polls `check` every second until it gives `Some`, or fails with the
/// stack's logs.
async fn wait_for<T, F, Fut>(stack: &Stack, what: &str, limit: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() >= deadline {
            bail!(
                "{what}: not within {limit:?} (last error: {last})\n{}",
                stack.all_logs()
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The backup of `job` with a passed drill: (manifest, receipt).
async fn drilled_backup(
    store: &std::sync::Arc<dyn refugio_store::ObjectStore>,
    job: &str,
) -> Result<Option<(Value, Value)>> {
    let all = keys(store, &format!("{job}/")).await?;
    for m in all.iter().filter(|k| k.ends_with("/manifest.json")) {
        let dir = m.trim_end_matches("manifest.json");
        let receipt = all.iter().find(|k| {
            k.starts_with(dir)
                && k.rsplit('/')
                    .next()
                    .is_some_and(|n| n.starts_with("verify-"))
        });
        if let Some(r) = receipt {
            return Ok(Some((
                read_json(store, m).await?,
                read_json(store, r).await?,
            )));
        }
    }
    Ok(None)
}

/// Ports of the stack's services on the host network.
struct Ports {
    primary: u16,
    replica: u16,
    refugio: u16,
    prometheus: u16,
    alertmanager: u16,
}

/// The shipped refugio.toml and prometheus.yml, pointed at this stack's
/// addresses and the test bucket, and the override with `dir` in it, all
/// written into `dir`; returns the override's path.
fn write_configs(
    dir: &Path,
    ports: &Ports,
    target: &s3::S3Target,
    prefix: &str,
) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let refugio_toml = substitute(
        &std::fs::read_to_string(repo_path("docker/refugio.toml"))?,
        "docker/refugio.toml",
        &[
            (
                "listen = \"0.0.0.0:9187\"",
                format!("listen = \"127.0.0.1:{}\"", ports.refugio),
            ),
            (
                "url = \"s3://refugio-backups/demo\"",
                format!("url = \"s3://{}/{prefix}\"", target.bucket),
            ),
            (
                "region = \"us-east-1\"",
                format!("region = {:?}", target.region),
            ),
            (
                "endpoint = \"http://s3:9000\"",
                format!("endpoint = {:?}", target.endpoint),
            ),
            ("@replica:5432/", format!("@127.0.0.1:{}/", ports.replica)),
            ("@primary:5432/", format!("@127.0.0.1:{}/", ports.primary)),
        ],
    )?;
    let prometheus_yml = substitute(
        &std::fs::read_to_string(repo_path("docker/prometheus/prometheus.yml"))?,
        "docker/prometheus/prometheus.yml",
        &[
            ("scrape_interval: 15s", "scrape_interval: 2s".into()),
            ("evaluation_interval: 15s", "evaluation_interval: 2s".into()),
            (
                "\"alertmanager:9093\"",
                format!("\"127.0.0.1:{}\"", ports.alertmanager),
            ),
            (
                "\"refugio:9187\"",
                format!("\"127.0.0.1:{}\"", ports.refugio),
            ),
        ],
    )?;
    // Read by the containers' users (refugio's uid 10001 among them).
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    for (name, text) in [
        ("refugio.toml", &refugio_toml),
        ("prometheus.yml", &prometheus_yml),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
    }
    let override_file = dir.join("compose.test.yml");
    std::fs::write(
        &override_file,
        std::fs::read_to_string(repo_path("docker/test/compose.test.yml"))?
            .replace("${RT_DIR}", &dir.display().to_string()),
    )?;
    Ok(override_file)
}

/// Both jobs backed up and drilled by refugio's catch-up, the primary's
/// WAL archived.
async fn assert_backed_up_and_drilled(
    stack: &Stack,
    store: &std::sync::Arc<dyn refugio_store::ObjectStore>,
) -> Result<()> {
    // The replica may still be cloning when refugio starts: the agent retries.
    let long = Duration::from_secs(300);
    let (m, r) = wait_for(stack, "a drilled backup of trips", long, || {
        drilled_backup(store, "trips")
    })
    .await?;
    assert_eq!(
        m["server"]["in_recovery"], true,
        "dumped from the replica: {m}"
    );
    assert!(
        m["tables"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["name"] == "trips" && t["rows"] == 10000)),
        "{m}"
    );
    assert_eq!(r["passed"], true, "{r}");
    assert_eq!(r["checks"][0]["ok"], true, "{r}");
    let (m, r) = wait_for(stack, "a drilled backup of pitr", long, || {
        drilled_backup(store, "pitr")
    })
    .await?;
    assert_eq!(m["job"], "pitr", "{m}");
    assert_eq!(
        m["server"]["in_recovery"], false,
        "the primary's cluster: {m}"
    );
    assert_eq!(r["passed"], true, "{r}");
    // The primary archives its WAL with the image's refugio (wal-push).
    wait_for(
        stack,
        "WAL archived by the primary",
        Duration::from_secs(120),
        || async { Ok((!keys(store, "pitr/wal/").await?.is_empty()).then_some(())) },
    )
    .await?;
    Ok(())
}

/// Prometheus scrapes refugio (up, and refugio's series of both jobs), has
/// every alert rule of docker/prometheus/alerts.yml loaded and healthy, and
/// sends to the stack's Alertmanager, which runs the shipped config.
async fn assert_monitored(stack: &Stack, ports: &Ports) -> Result<()> {
    let (prometheus, alertmanager) = (ports.prometheus, ports.alertmanager);
    wait_for(
        stack,
        "Prometheus: up{job=\"refugio\"} == 1",
        Duration::from_secs(60),
        || async {
            let r = prom_query(prometheus, "up%7Bjob%3D%22refugio%22%7D")?;
            Ok((r.len() == 1 && r[0]["value"][1] == "1").then_some(()))
        },
    )
    .await?;
    wait_for(
        stack,
        "Prometheus: refugio's backup metrics",
        Duration::from_secs(60),
        || async {
            let r = prom_query(prometheus, "refugio_backup_last_success_timestamp_seconds")?;
            let jobs: Vec<&str> = r
                .iter()
                .filter_map(|s| s["metric"]["backup_job"].as_str())
                .collect();
            Ok((jobs.contains(&"trips") && jobs.contains(&"pitr")).then_some(()))
        },
    )
    .await?;
    let shipped = std::fs::read_to_string(repo_path("docker/prometheus/alerts.yml"))?
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    let rules = get_json(prometheus, "/api/v1/rules")?;
    let groups = rules["data"]["groups"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let group = groups
        .iter()
        .find(|g| g["name"] == "refugio")
        .context("no rule group refugio")?;
    let loaded = group["rules"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        loaded.len(),
        shipped,
        "every alert rule of alerts.yml loaded: {group}"
    );
    assert!(
        loaded.iter().all(|r| r["health"] == "ok"),
        "rules evaluate: {group}"
    );
    let url = format!("127.0.0.1:{alertmanager}");
    wait_for(
        stack,
        "Prometheus sees Alertmanager",
        Duration::from_secs(60),
        || async {
            let v = get_json(prometheus, "/api/v1/alertmanagers")?;
            let active = v["data"]["activeAlertmanagers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            Ok(active
                .iter()
                .any(|a| a["url"].as_str().is_some_and(|u| u.contains(&url)))
                .then_some(()))
        },
    )
    .await?;
    let status = get_json(alertmanager, "/api/v2/status")?;
    assert!(
        status["config"]["original"]
            .as_str()
            .is_some_and(|c| c.contains("receiver: team")),
        "the shipped alertmanager.yml: {status}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_stack_backs_up_drills_and_is_scraped() -> Result<()> {
    for image in IMAGES {
        require_image(image)?;
    }
    for base in [
        "localhost/refugio-base:test",
        "localhost/refugio-monitor:test",
    ] {
        podman_ok(&["image", "exists", base])
            .with_context(|| format!("no {base}: run scripts/container-image"))?;
    }
    let bin = podman_compose_bin()?;
    let target = s3::garage()?;
    let prefix = s3::unique_prefix("compose");
    let store = open_s3(&target, &prefix).await?;

    // refugio on the host network listens on the port of the image's
    // HEALTHCHECK; the others on free ports.
    let _port_lock = health_port_lock()?;
    remove_stale()?;
    let free: Vec<u16> = (0..4).map(|_| free_port()).collect::<Result<_>>()?;
    let ports = Ports {
        primary: free[0],
        replica: free[1],
        refugio: 9187,
        prometheus: free[2],
        alertmanager: free[3],
    };
    ensure!(
        std::net::TcpListener::bind(("127.0.0.1", ports.refugio)).is_ok(),
        "port {} on 127.0.0.1 is taken: refugio's container needs it; stop what listens there",
        ports.refugio
    );
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let override_file = write_configs(dir, &ports, &target, &prefix)?;
    let project = format!("refugio-test-{}", std::process::id());
    let stack = Stack {
        bin,
        override_file,
        project: project.clone(),
        env: vec![
            ("RT_DIR".into(), dir.display().to_string()),
            ("RT_PRIMARY_PORT".into(), ports.primary.to_string()),
            ("RT_REPLICA_PORT".into(), ports.replica.to_string()),
            ("RT_PROMETHEUS_PORT".into(), ports.prometheus.to_string()),
            (
                "RT_ALERTMANAGER_PORT".into(),
                ports.alertmanager.to_string(),
            ),
            ("RT_S3_ENDPOINT".into(), target.endpoint.clone()),
            ("RT_S3_REGION".into(), target.region.clone()),
            ("AWS_ACCESS_KEY_ID".into(), target.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), target.secret_key.clone()),
        ],
    };
    // The images are local: nothing to build or pull.
    let mut up = vec!["up", "-d", "--no-build"];
    up.extend_from_slice(SERVICES);
    stack.run(&up)?;

    // Every service runs (none exited: s3 reached the host's S3).
    let running = podman_ok(&[
        "ps",
        "--filter",
        &format!("label=io.podman.compose.project={project}"),
        "--format",
        "{{.Names}}",
    ])?;
    for s in SERVICES {
        ensure!(
            running.lines().any(|n| n == format!("{project}_{s}_1")),
            "service {s} is not running ({running:?})\n{}",
            stack.all_logs()
        );
    }
    assert_backed_up_and_drilled(&stack, &store).await?;
    assert_monitored(&stack, &ports).await?;
    // The shipped config turns the status page on: both jobs on it.
    let (code, page) = http_get(ports.refugio, "/")?;
    ensure!(code == 200, "the status page answered {code}");
    for job in ["trips", "pitr"] {
        ensure!(
            page.contains(&format!(r#"<tr class="job" data-job="{job}""#)),
            "job {job} is not on the status page:\n{page}"
        );
    }

    // down -v: nothing of the project is left.
    stack.run(&["down", "-v", "-t", "30"])?;
    let left = stack.leftovers()?;
    assert_eq!(left, "", "left behind by down -v");
    Ok(())
}
