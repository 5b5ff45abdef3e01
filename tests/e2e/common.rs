//! Helpers: running the binary, writing configs, reading manifests, and
//! running the agent ([`Agent`]) and talking to it.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use refugio_testkit::s3::{self, S3Target};
use refugio_testkit::Cluster;
use serde_json::Value;

/// Where a test's backups go.
pub enum Repo {
    Dir(PathBuf),
    S3 { target: S3Target, prefix: String },
}

impl Repo {
    pub fn dir(tmp: &Path) -> Repo {
        Repo::Dir(tmp.join("repo"))
    }

    pub fn s3(target: S3Target, name: &str) -> Repo {
        Repo::S3 {
            prefix: refugio_testkit::s3::unique_prefix(name),
            target,
        }
    }

    /// The `[repository]` section.
    pub fn toml(&self) -> String {
        match self {
            Repo::Dir(p) => format!("[repository]\nurl = {:?}\n", format!("file://{}", p.display())),
            Repo::S3 { target, prefix } => format!(
                "[repository]\nurl = \"s3://{}/{}\"\nendpoint = {:?}\nregion = {:?}\nforce_path_style = true\n",
                target.bucket, prefix, target.endpoint, target.region
            ),
        }
    }

    /// Environment the binary needs for this repository (credentials).
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![("AWS_EC2_METADATA_DISABLED".to_string(), "true".to_string())];
        if let Repo::S3 { target, .. } = self {
            env.push(("AWS_ACCESS_KEY_ID".into(), target.access_key.clone()));
            env.push(("AWS_SECRET_ACCESS_KEY".into(), target.secret_key.clone()));
        }
        env
    }
}

/// A config file in `dir` with the repository and one job.
pub fn write_config(dir: &Path, repo: &Repo, job: &str) -> PathBuf {
    let path = dir.join("refugio.toml");
    std::fs::write(&path, format!("{}\n[[jobs]]\n{job}\n", repo.toml())).expect("writing config");
    path
}

/// A job section body for `cluster`'s database `db`.
pub fn job(name: &str, cluster: &Cluster, db: &str, extra: &str) -> String {
    format!(
        "name = {name:?}\nsource = {:?}\npg_bindir = {:?}\n{extra}",
        cluster.url(db),
        cluster.bindir().display().to_string()
    )
}

/// The binary with `args` and `env`; never inherits AWS credentials.
pub fn refugio_command(args: &[&str], env: &[(String, String)]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_refugio"));
    cmd.args(args)
        .env_remove("REFUGIO_CONFIG")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_PROFILE")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("REFUGIO_LOG", "info")
        .stdin(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs the binary with `args` and `env`; never inherits AWS credentials.
pub fn refugio(args: &[&str], env: &[(String, String)]) -> Output {
    refugio_command(args, env)
        .output()
        .expect("running refugio")
}

/// Runs and demands success; returns stdout.
pub fn refugio_ok(args: &[&str], env: &[(String, String)]) -> Result<String> {
    let out = refugio(args, env);
    if !out.status.success() {
        bail!(
            "refugio {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Text of stdout + stderr, for assertions on failures.
pub fn all_output(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `refugio list --json` for the config.
pub fn list(config: &Path, env: &[(String, String)]) -> Result<Vec<Value>> {
    let out = refugio_ok(
        &[
            "--config",
            config.to_str().unwrap_or_default(),
            "list",
            "--json",
        ],
        env,
    )?;
    let v: Value = serde_json::from_str(&out).context("list --json output")?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

/// Row counts of every user table in `db`, via the cluster's psql.
pub async fn row_counts(cluster: &Cluster, db: &str) -> Result<Vec<(String, String, i64)>> {
    let tables = cluster
        .psql(
            db,
            "SELECT n.nspname || E'\\t' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog','information_schema') ORDER BY 1",
        )
        .await?;
    let mut out = Vec::new();
    for line in tables.lines().filter(|l| !l.is_empty()) {
        let (s, t) = line.split_once('\t').context("psql output")?;
        let n = cluster
            .psql(
                db,
                &format!(
                    "SELECT count(*) FROM \"{}\".\"{}\"",
                    s.replace('"', "\"\""),
                    t.replace('"', "\"\"")
                ),
            )
            .await?;
        out.push((s.to_string(), t.to_string(), n.trim().parse()?));
    }
    Ok(out)
}

/// The manifest's table counts, sorted like [`row_counts`].
pub fn manifest_counts(m: &Value) -> Vec<(String, String, i64)> {
    let mut v: Vec<(String, String, i64)> = m["tables"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|t| {
                    (
                        t["schema"].as_str().unwrap_or_default().to_string(),
                        t["name"].as_str().unwrap_or_default().to_string(),
                        t["rows"].as_i64().unwrap_or(-1),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Every file under `dir`, relative, sorted.
pub fn files_under(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, d: &Path, out: &mut Vec<String>) {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(base, &p, out);
                } else if let Ok(rel) = p.strip_prefix(base) {
                    out.push(rel.display().to_string());
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The store of an S3 repository at `prefix`, opened with the test server's credentials.
pub async fn open_s3(
    target: &S3Target,
    prefix: &str,
) -> Result<std::sync::Arc<dyn refugio_store::ObjectStore>> {
    let loc =
        refugio_store::RepositoryLocation::parse(&format!("s3://{}/{}", target.bucket, prefix))?;
    let opts = refugio_store::S3Options {
        region: Some(target.region.clone()),
        endpoint: Some(target.endpoint.clone()),
        force_path_style: true,
        static_credentials: Some((target.access_key.clone(), target.secret_key.clone())),
        ..Default::default()
    };
    Ok(refugio_store::open(&loc, &opts).await?)
}

/// A running `refugio run`; killed (SIGKILL) if the test drops it running.
pub struct Agent {
    child: Child,
    port: u16,
    pub log: PathBuf,
}

impl Agent {
    /// The port its HTTP server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn start(
        config: &Path,
        env: &[(String, String)],
        port: u16,
        log: PathBuf,
    ) -> Result<Agent> {
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
        let mut agent = Agent { child, port, log };
        agent.wait_ready()?;
        Ok(agent)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok((200, _)) = http_get(self.port, "/readyz") {
                return Ok(());
            }
            // An agent that exited (a config it refused) is not waited for.
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the agent exited before it was ready ({status}); log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("agent not ready within 60 s; log:\n{}", self.log_text())
    }

    /// `kill -9`, and the exit status once it is reaped.
    pub fn kill_9(mut self) -> Result<std::process::ExitStatus> {
        self.signal(Signal::SIGKILL)?;
        Ok(self.child.wait()?)
    }

    pub fn signal(&self, sig: Signal) -> Result<()> {
        kill(Pid::from_raw(self.child.id() as i32), sig)?;
        Ok(())
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The whole /metrics exposition.
    pub fn metrics_text(&self) -> Result<String> {
        let (status, body) = http_get(self.port, "/metrics")?;
        anyhow::ensure!(status == 200, "/metrics answered {status}");
        Ok(body)
    }

    /// The series of metric `name` (a counter's `…_total`) whose labels
    /// start with `labels_prefix`: (rest of the labels, value). Strict: a
    /// renamed metric or label is an empty list, never a silent 0.
    pub fn series(&self, name: &str, labels_prefix: &str) -> Result<Vec<(String, f64)>> {
        let body = self.metrics_text()?;
        let prefix = format!("{name}{{{labels_prefix}");
        Ok(body
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .filter_map(|rest| {
                let (labels, value) = rest.rsplit_once(' ')?;
                Some((labels.to_string(), value.parse().ok()?))
            })
            .collect())
    }

    pub fn metric(&self, line_prefix: &str) -> Result<Option<f64>> {
        let (status, body) = http_get(self.port, "/metrics")?;
        anyhow::ensure!(status == 200, "/metrics answered {status}");
        Ok(metric_value(&body, line_prefix))
    }

    /// SIGTERM, then the exit status (within `limit`).
    pub fn stop(mut self, limit: Duration) -> Result<std::process::ExitStatus> {
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

/// A free 127.0.0.1 port for an agent's HTTP listener.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A GET over a plain TCP connection to 127.0.0.1: (status, body).
pub fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let (head, body) = http_get_with_head(port, path)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status")?;
    Ok((status, body))
}

/// A GET as [`http_get`]: the head (status line and headers, as sent)
/// and the body.
pub fn http_get_with_head(port: u16, path: &str) -> Result<(String, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Ok((head.to_string(), body.to_string()))
}

/// The value of the first sample line starting with `prefix`.
pub fn metric_value(body: &str, prefix: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Polls `cond` every 200 ms until it holds, for at most `limit`.
pub fn wait_until(
    what: &str,
    limit: Duration,
    mut cond: impl FnMut() -> Result<bool>,
) -> Result<()> {
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

/// The repository's manifests, newest first (`refugio list --json`).
pub fn backups(config: &Path, env: &[(String, String)]) -> Result<Vec<Value>> {
    list(config, env)
}

/// Config: repository, `[agent]` on `port`, and the jobs.
pub fn agent_config(
    dir: &Path,
    repo: &Repo,
    port: u16,
    agent_extra: &str,
    jobs: &[String],
) -> PathBuf {
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

/// Pending multipart uploads under `prefix`, from a blocking context.
pub fn multipart_uploads_left(target: &s3::S3Target, prefix: &str) -> Result<usize> {
    let rt = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| {
        rt.block_on(async {
            let store = open_s3(target, prefix).await?;
            anyhow::Ok(store.list_multipart_uploads("").await?.len())
        })
    })
}

/// The key prefix of an S3 repository (empty for a directory).
pub fn prefix_of(repo: &Repo) -> String {
    match repo {
        Repo::S3 { prefix, .. } => prefix.clone(),
        Repo::Dir(_) => String::new(),
    }
}

/// Waits until refugio process `pid` runs its restoring pg_restore (not the
/// `--version` probe that picks the tool).
pub fn wait_for_restore(pid: u32) -> Result<()> {
    let me = pid.to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let restoring = std::fs::read_dir("/proc")?.flatten().any(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            stat.contains("(pg_restore)")
                && stat
                    .split(") ")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().nth(1))
                    == Some(me.as_str())
                && !String::from_utf8_lossy(&cmdline).contains("--version")
        });
        if restoring {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the drill never started restoring"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Records what a fault scenario of issue 10's suite observed, for the
/// table `scripts/faults` prints: a line appended to
/// `$REFUGIO_FAULTS_DIR/NN.txt` (one per test or case; nothing when the
/// variable is unset). Call it after the assertions, with
/// the facts they checked (numbers, outcomes), so that the table shows what
/// happened, not what was hoped for.
pub fn observed(scenario: u32, text: &str) {
    let Some(dir) = std::env::var_os("REFUGIO_FAULTS_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let _ = std::fs::create_dir_all(&dir);
    let line = text.replace('\n', " ");
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{scenario:02}.txt")))
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
    // And which test case saw it (the harness names the test's thread
    // after the test): `scripts/faults` counts a scenario observed only
    // when every case its filter selects recorded.
    let case = std::thread::current()
        .name()
        .unwrap_or("unnamed")
        .replace('/', "_");
    let cases = dir.join(format!("{scenario:02}.cases"));
    let recorded =
        std::fs::create_dir_all(&cases).and_then(|()| std::fs::write(cases.join(&case), b""));
    if let Err(e) = written.and(recorded) {
        eprintln!(
            "cannot record scenario {scenario}'s observation in {}: {e}",
            dir.display()
        );
    }
}

/// A small filesystem a test mounts itself (tmpfs, as root) and unmounts
/// on drop.
pub struct SmallTmpfs {
    dir: tempfile::TempDir,
}

impl SmallTmpfs {
    pub fn mount(size: &str) -> Result<SmallTmpfs> {
        let dir = tempfile::tempdir()?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "mounting a {size} tmpfs for a disk-full test failed (the test suite runs as root, as scripts/test does): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(SmallTmpfs { dir })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).output();
    }
}

/// PIDs of processes named `name` whose parent is `ppid`.
pub fn children_named(ppid: u32, name: &str) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // pid (comm) state ppid ...
            let Some(close) = stat.rfind(')') else {
                continue;
            };
            let comm = &stat[stat.find('(').map_or(0, |i| i + 1)..close];
            let ppid_field = stat[close + 2..]
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u32>().ok());
            if comm == name && ppid_field == Some(ppid) {
                out.push(pid);
            }
        }
    }
    out
}

/// The pg_dump child of process `ppid` that dumps (`--snapshot=` on its
/// command line), not a `pg_dump --version` probe.
pub fn dumping_pg_dump(ppid: u32) -> Option<u32> {
    children_named(ppid, "pg_dump").into_iter().find(|pid| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains("--snapshot="))
            .unwrap_or(false)
    })
}

/// Whether process `pid` is gone (or a zombie).
pub fn process_gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
        .unwrap_or(true)
}

/// A digest of every user table's rows (MD5 of their text forms, sorted)
/// and of the large objects' contents: what a round trip keeps is compared
/// by content, bytea and non-ASCII names included, not only by counts.
pub async fn content_digests(c: &Cluster, db: &str) -> Result<Vec<(String, String)>> {
    let tables = c
        .psql(
            db,
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables \
             WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
        )
        .await?;
    let mut parts: Vec<String> = tables
        .lines()
        .filter(|t| !t.is_empty())
        .map(|t| {
            let literal = t.replace('\'', "''");
            format!(
                "SELECT '{literal}', (SELECT md5(coalesce(string_agg(r::text, E'\\n' ORDER BY r::text), '')) FROM {t} r)"
            )
        })
        .collect();
    parts.push(
        "SELECT 'large objects', md5(coalesce(string_agg(oid::text || ':' || md5(lo_get(oid)), ',' ORDER BY oid), '')) \
         FROM pg_largeobject_metadata"
            .to_string(),
    );
    let out = c
        .psql(db, &format!("{};", parts.join(" UNION ALL ")))
        .await?;
    let mut v: Vec<(String, String)> = out
        .lines()
        .filter_map(|l| l.rsplit_once('|'))
        .map(|(t, d)| (t.to_string(), d.to_string()))
        .collect();
    v.sort();
    Ok(v)
}

/// The config file's repository, opened in-process as the binary opens it
/// (its store options, clock tolerance and authentication), with the S3
/// credentials given directly rather than read from this process's
/// environment.
pub async fn open_repository(
    cfg: &refugio::config::Config,
    repo: &Repo,
) -> Result<refugio_store::repo::Repository> {
    let loc = refugio_store::RepositoryLocation::parse(&cfg.repository.url)?;
    let opts = refugio_store::S3Options {
        static_credentials: match repo {
            Repo::Dir(_) => None,
            Repo::S3 { target, .. } => Some((target.access_key.clone(), target.secret_key.clone())),
        },
        ..cfg.repository.s3_options(None)
    };
    let store = refugio_store::open_existing(&loc, &opts).await?;
    Ok(refugio_store::repo::Repository::new(store)
        .with_clock_tolerance(cfg.repository.clock_tolerance)
        .with_authentication(cfg.repository.authentication(true)?))
}

/// The report of `refugio prune [--dry-run] --job JOB` (None: the config
/// file's only job) had it run at `now`: the job resolved from the file as
/// the binary resolves it, and the operation called in-process with a
/// fixed clock (the binary always reads the system's).
pub async fn prune_report_at(
    config: &Path,
    repo: &Repo,
    job: Option<&str>,
    dry_run: bool,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<refugio_core::PruneReport> {
    let cfg = refugio::config::Config::load(config)?;
    let opts = cfg
        .job(job)?
        .prune_options(dry_run, refugio_core::prune::DELETE_BATCH)
        .context("the config's job has no retention policy")?;
    let repository = open_repository(&cfg, repo).await?;
    Ok(refugio_core::prune(
        &repository,
        &opts,
        &refugio_core::FixedClock(now),
        &tokio_util::sync::CancellationToken::new(),
    )
    .await?)
}

/// What `refugio prune --json [--dry-run]` reports for the config file's
/// only job had it run at `now` ([`prune_report_at`]), and its exit code.
pub async fn prune_at(
    config: &Path,
    repo: &Repo,
    dry_run: bool,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(Value, u8)> {
    let report = prune_report_at(config, repo, None, dry_run, now).await?;
    let code = refugio::commands::prune::exit_code(std::slice::from_ref(&report));
    Ok((serde_json::to_value(&report)?, code))
}

/// [`prune_at`]'s report, of a prune that succeeded (exit 0).
pub async fn prune_ok_at(
    config: &Path,
    repo: &Repo,
    dry_run: bool,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Value> {
    let (report, code) = prune_at(config, repo, dry_run, now).await?;
    anyhow::ensure!(code == 0, "prune exit {code}: {report}");
    Ok(report)
}

/// What `refugio check` reports for the config file's only job had it run
/// at `now` (as [`prune_at`]): the report as `--json` prints it, the text
/// it prints for people, and its exit code.
pub async fn check_at(
    config: &Path,
    repo: &Repo,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(Value, String, u8)> {
    let cfg = refugio::config::Config::load(config)?;
    let opts = cfg
        .job(None)?
        .check_options(refugio_core::check::ReadData::None);
    let repository = open_repository(&cfg, repo).await?;
    let report = refugio_core::check(
        &repository,
        &opts,
        &refugio_core::FixedClock(now),
        &tokio_util::sync::CancellationToken::new(),
    )
    .await?;
    let code = refugio::commands::check::exit_code(std::slice::from_ref(&report));
    let text = refugio::commands::check::report_text(&report);
    Ok((serde_json::to_value(&report)?, text, code))
}
