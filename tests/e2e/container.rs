//! The container image as shipped (docker/Dockerfile, built by
//! `scripts/container-image` from Debian's packages, with the binary these
//! tests were built with) run by podman: the image's own user, entrypoint
//! and command, a read-only root file system with a tmpfs on /tmp only (where
//! the Dockerfile says refugio writes), `--network=host --init`, against a
//! throwaway PostgreSQL 15 cluster (the image's tools are Debian's 15) and
//! Garage. SIGUSR1 by `podman kill` backs up into Garage, SIGUSR2 drills in
//! an ephemeral cluster inside the container, `/readyz` and the image's
//! HEALTHCHECK answer, and `podman stop` ends it cleanly in time.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use futures::TryStreamExt;
use refugio_testkit::{s3, Cluster};
use serde_json::Value;
use tokio::io::AsyncReadExt;

use crate::common::*;

/// The runtime image `scripts/container-image` builds.
pub const IMAGE: &str = "localhost/refugio:test";
/// The image's non-root user (docker/Dockerfile, `REFUGIO_UID`).
const IMAGE_UID: &str = "10001";
/// The port the image's HEALTHCHECK asks (`EXPOSE 9187`).
const HEALTH_PORT: u16 = 9187;
/// `podman stop`'s grace period; the config's shutdown_timeout is shorter.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// podman with the project's settings (runc, ulimits):
/// docker/test/containers.conf, as `scripts/container-image` uses it.
pub fn podman(args: &[&str]) -> Command {
    let mut cmd = Command::new("podman");
    cmd.args(args)
        .env(
            "CONTAINERS_CONF",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/test/containers.conf"),
        )
        .stdin(Stdio::null());
    cmd
}

/// Runs podman, demanding success; returns stdout.
pub fn podman_ok(args: &[&str]) -> Result<String> {
    let out = podman(args)
        .output()
        .context("running podman (install it with scripts/install-test-deps)")?;
    ensure!(
        out.status.success(),
        "podman {args:?} failed ({}): {}",
        out.status,
        all_output(&out)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Fails, saying how to build it, unless `image` exists and holds the
/// binary these tests were built with (the label `scripts/container-image`
/// sets): an image of an older binary would test old code.
pub fn require_image(image: &str) -> Result<()> {
    const HOW: &str =
        "build the images with `cargo test --workspace --no-run && scripts/container-image` \
                       (scripts/test does), after scripts/install-test-deps";
    let out = podman(&[
        "image",
        "inspect",
        "--format",
        "{{index .Labels \"org.refugio.binary-sha256\"}}",
        image,
    ])
    .output()
    .with_context(|| format!("podman is not installed: {HOW}"))?;
    if !out.status.success() {
        bail!(
            "no image {image}: {HOW} ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let label = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let sum = Command::new("sha256sum")
        .arg(env!("CARGO_BIN_EXE_refugio"))
        .output()
        .context("sha256sum")?;
    let ours = String::from_utf8_lossy(&sum.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    ensure!(
        label == ours,
        "{image} holds another refugio binary (sha256 {label:?}, these tests' is {ours}): {HOW}"
    );
    Ok(())
}

/// Held while a test uses 127.0.0.1:9187 (the port of the image's
/// HEALTHCHECK, on the host network): the container and compose tests take
/// turns, also across processes (nextest runs each test in its own).
pub fn health_port_lock() -> Result<nix::fcntl::Flock<std::fs::File>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("refugio-test-port-9187.lock"))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("locking the port 9187 lock file: {e}"))
}

/// Removes what a killed earlier run of these tests left (its Drop never
/// ran): containers and volumes named `refugio-test-<pid>…` whose process
/// is gone. A leftover container would hold port 9187.
pub fn remove_stale() -> Result<()> {
    let stale = |name: &str| {
        name.strip_prefix("refugio-test-")
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| {
                pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
            })
    };
    let containers = podman_ok(&[
        "ps",
        "-a",
        "--filter",
        "name=^refugio-test-",
        "--format",
        "{{.Names}}",
    ])?;
    for name in containers.lines().filter(|n| stale(n)) {
        podman_ok(&["rm", "-f", "-t", "0", name])?;
    }
    let volumes = podman_ok(&["volume", "ls", "--format", "{{.Name}}"])?;
    for name in volumes.lines().filter(|n| stale(n)) {
        podman_ok(&["volume", "rm", "-f", name])?;
    }
    Ok(())
}

/// A container removed (`podman rm -f`) when dropped.
pub struct Container {
    pub name: String,
}

impl Container {
    pub fn logs(&self) -> String {
        podman(&["logs", &self.name])
            .output()
            .map(|o| all_output(&o))
            .unwrap_or_default()
    }

    fn exec(&self, args: &[&str]) -> Output {
        let mut all = vec!["exec", self.name.as_str()];
        all.extend_from_slice(args);
        podman(&all).output().expect("podman exec")
    }

    fn inspect(&self, format: &str) -> Result<String> {
        Ok(podman_ok(&["inspect", "--format", format, &self.name])?
            .trim()
            .to_string())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "-f", "-t", "0", &self.name]).output();
    }
}

/// The keys under `prefix` in the store.
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

/// Waits until `f` returns `Some`, polling every half second.
async fn wait_for<T, F, Fut>(what: &str, limit: Duration, ctr: &Container, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!(
                "{what}: not within {limit:?}; container log:\n{}",
                ctr.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_image_backs_up_drills_and_stops_cleanly() -> Result<()> {
    require_image(IMAGE)?;
    let target = s3::garage()?;
    let repo = Repo::s3(target.clone(), "container");
    let Repo::S3 { prefix, .. } = &repo else {
        unreachable!()
    };
    let src = Cluster::start(15).await?;
    src.create_database("app").await?;
    let counts = refugio_testkit::sample::load_sample(&src, "app").await?;
    // The container's user (uid 10001) reaches the cluster's socket through
    // its directory, bind-mounted at the same path.
    let socket_dir = src.socket_dir().to_path_buf();
    std::fs::set_permissions(
        &socket_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )?;

    let tmp = tempfile::tempdir()?;
    // The image's HEALTHCHECK asks 127.0.0.1:9187 (host network: the
    // host's port): the port refugio's docs and compose file use.
    let _port_lock = health_port_lock()?;
    remove_stale()?;
    let port = HEALTH_PORT;
    ensure!(
        std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
        "port {port} on 127.0.0.1 is taken: the container's HEALTHCHECK needs it; stop what listens there"
    );
    // No schedule: only the signals act. Secrets come from the environment.
    let config = tmp.path().join("refugio.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nlisten = \"127.0.0.1:{port}\"\nshutdown_timeout = \"30s\"\n\n{}\n\
             [[jobs]]\nname = \"app\"\nsource = {:?}\nscratch = \"ephemeral\"\n\
             checks = [\"SELECT count(*) > 0 FROM trips\"]\n\
             targets = {{ rpo = \"6h\", rto = \"1h\" }}\n",
            repo.toml(),
            src.url("app"),
        ),
    )?;
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;

    let name = format!("refugio-test-{}", std::process::id());
    let ctr = Container { name: name.clone() };
    let mount_config = format!("{}:/etc/refugio/refugio.toml:ro", config.display());
    let mount_socket = format!("{0}:{0}", socket_dir.display());
    let stop_timeout = STOP_TIMEOUT.as_secs().to_string();
    let mut run = podman(&[
        "run",
        "--detach",
        "--name",
        &name,
        "--read-only",
        // Only what is named below is writable: /tmp (drill clusters).
        "--read-only-tmpfs=false",
        "--tmpfs",
        "/tmp:rw,size=512m,mode=1777",
        "--network=host",
        "--init",
        "--stop-timeout",
        &stop_timeout,
        "-v",
        &mount_config,
        "-v",
        &mount_socket,
        // The values come from podman's environment, not its command line.
        "-e",
        "AWS_ACCESS_KEY_ID",
        "-e",
        "AWS_SECRET_ACCESS_KEY",
        "-e",
        "AWS_EC2_METADATA_DISABLED=true",
        "-e",
        "REFUGIO_LOG=info,tokio_cron_scheduler=warn",
        IMAGE,
    ]);
    run.envs(repo.env());
    let out = run.output().context("podman run")?;
    ensure!(
        out.status.success(),
        "podman run failed: {}",
        all_output(&out)
    );

    // Up and ready: scheduler running, Garage reachable.
    wait_for("/readyz 200", Duration::from_secs(60), &ctr, || async {
        Ok(matches!(http_get(port, "/readyz"), Ok((200, _))).then_some(()))
    })
    .await?;
    // As shipped: its user, a read-only root, the image's entrypoint.
    let id = ctr.exec(&["id", "-u"]);
    assert_eq!(String::from_utf8_lossy(&id.stdout).trim(), IMAGE_UID);
    assert_eq!(ctr.inspect("{{.HostConfig.ReadonlyRootfs}}")?, "true");
    let write = ctr.exec(&["touch", "/var/lib/refugio/probe"]);
    assert!(
        !write.status.success(),
        "the root file system is writable: {}",
        all_output(&write)
    );
    assert_eq!(
        ctr.inspect("{{.Config.User}}")?,
        format!("{IMAGE_UID}:{IMAGE_UID}")
    );
    assert!(ctr.inspect("{{.Path}} {{.Args}}")?.contains("refugio"));

    // SIGUSR1: a backup, committed (manifest) in Garage.
    podman_ok(&["kill", "--signal", "USR1", &name])?;
    let store = open_s3(&target, prefix).await?;
    let manifest_key = wait_for(
        "the backup's manifest in Garage",
        Duration::from_secs(120),
        &ctr,
        || {
            let store = store.clone();
            async move {
                Ok(keys(&store, "app/")
                    .await?
                    .into_iter()
                    .find(|k| k.ends_with("/manifest.json")))
            }
        },
    )
    .await?;
    let manifest = read_json(&store, &manifest_key).await?;
    assert_eq!(manifest["job"], "app", "{manifest}");
    assert_eq!(
        manifest_counts(&manifest),
        counts,
        "row counts in the manifest"
    );
    assert_eq!(
        manifest["server"]["version_num"]
            .as_i64()
            .map(|v| v / 10000),
        Some(15),
        "{manifest}"
    );
    // pg_dump is the image's (Debian's 15, in the container).
    assert!(
        manifest["pg_dump_version"]
            .as_str()
            .is_some_and(|v| v.starts_with("15.")),
        "{manifest}"
    );
    let backup_dir = manifest_key.trim_end_matches("manifest.json").to_string();

    // SIGUSR2: a drill in an ephemeral cluster inside the container; its
    // receipt lands beside the manifest.
    podman_ok(&["kill", "--signal", "USR2", &name])?;
    let receipt_key = wait_for(
        "the drill's receipt",
        Duration::from_secs(180),
        &ctr,
        || {
            let (store, dir) = (store.clone(), backup_dir.clone());
            async move {
                Ok(keys(&store, &dir).await?.into_iter().find(|k| {
                    k.rsplit('/')
                        .next()
                        .is_some_and(|n| n.starts_with("verify-"))
                }))
            }
        },
    )
    .await?;
    let receipt = read_json(&store, &receipt_key).await?;
    assert_eq!(receipt["passed"], true, "{receipt}");
    assert_eq!(receipt["verified"], true, "{receipt}");
    assert!(
        receipt["counts"]
            .as_array()
            .is_some_and(|c| !c.is_empty() && c.iter().all(|c| c["ok"] == true)),
        "row counts restored: {receipt}"
    );
    assert_eq!(receipt["checks"][0]["ok"], true, "{receipt}");
    assert!(
        receipt["scratch_server_version"]
            .as_str()
            .is_some_and(|v| v.starts_with("15")),
        "drilled in the image's PostgreSQL 15: {receipt}"
    );

    // Still ready, and the image's HEALTHCHECK passes.
    let (status, body) = http_get(port, "/readyz")?;
    assert_eq!(status, 200, "{body}");
    let health = podman(&["healthcheck", "run", &name]).output()?;
    assert!(
        health.status.success(),
        "HEALTHCHECK: {}",
        all_output(&health)
    );

    // `podman stop`: SIGTERM through the init, a clean exit well within the
    // grace period (podman would SIGKILL after it: exit 137).
    let t0 = Instant::now();
    podman_ok(&["stop", "-t", &stop_timeout, &name])?;
    let took = t0.elapsed();
    let code = ctr.inspect("{{.State.ExitCode}}")?;
    let logs = ctr.logs();
    assert_eq!(code, "0", "exit code; log:\n{logs}");
    assert!(took < STOP_TIMEOUT, "stopped after {took:?}");
    assert!(logs.contains("agent-stopped"), "log:\n{logs}");
    assert!(!logs.contains("did not finish"), "log:\n{logs}");
    assert_eq!(ctr.inspect("{{.State.Status}}")?, "exited");
    drop(ctr);
    let left = podman_ok(&[
        "ps",
        "-a",
        "--filter",
        &format!("name=^{name}$"),
        "--format",
        "{{.Names}}",
    ])?;
    assert_eq!(left.trim(), "", "container removed");
    Ok(())
}
