//! Process and name hygiene: a drill's cleanup signals only a postmaster
//! proven to be its own, the scratch sweep drops only databases whose name
//! starts with `refugio_drill_` (not whatever `LIKE 'refugio_drill_%'`
//! matches), and a database named with `"`, `\` and a newline still gives
//! valid OpenMetrics text.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use refugio_testkit::Cluster;
use serde_json::Value;

use crate::common::*;

const NOBODY: u32 = 65534;

fn as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A process that has exited (reaped: ours).
fn exited(child: &mut Child) -> bool {
    matches!(child.try_wait(), Ok(Some(_)))
}

/// The PID of a dead process.
fn dead_pid() -> Result<u32> {
    let mut c = Command::new("true").spawn()?;
    let pid = c.id();
    c.wait()?;
    Ok(pid)
}

/// A `refugio-drill-*` directory as a crashed drill leaves it: owner gone,
/// `data/postmaster.pid` naming `pid`.
fn leftover(root: &Path, name: &str, pid: u32) -> Result<std::path::PathBuf> {
    let dir = root.join(format!("refugio-drill-{name}"));
    std::fs::create_dir_all(dir.join("data"))?;
    std::fs::write(dir.join("refugio-owner.pid"), dead_pid()?.to_string())?;
    std::fs::write(
        dir.join("data/postmaster.pid"),
        format!("{pid}\n{}\n", dir.join("data").display()),
    )?;
    Ok(dir)
}

/// A crashed drill's real cluster in `root`: initdb'd, its postmaster
/// running (as the drill runs it: uid 65534 under root), owner gone.
fn crashed_drill_cluster(root: &Path, bindir: &Path) -> Result<(std::path::PathBuf, Child)> {
    let dir = root.join("refugio-drill-crashedown");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("refugio-owner.pid"), dead_pid()?.to_string())?;
    let as_server = |cmd: &mut Command| {
        if as_root() {
            cmd.uid(NOBODY).gid(NOBODY);
        }
    };
    if as_root() {
        std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY))?;
    }
    let data = dir.join("data");
    let mut initdb = Command::new(bindir.join("initdb"));
    initdb
        .current_dir(&dir)
        .args(["-U", "postgres", "--auth=trust", "--no-sync", "--no-locale"])
        .args(["-E", "UTF8", "-D"])
        .arg(&data)
        .stdout(Stdio::null());
    as_server(&mut initdb);
    let out = initdb.output()?;
    anyhow::ensure!(out.status.success(), "initdb: {}", all_output(&out));
    let mut postgres = Command::new(bindir.join("postgres"));
    postgres
        .current_dir(&dir)
        .arg("-D")
        .arg(&data)
        .args(["-c", "listen_addresses=", "-c", "port=5432", "-c"])
        .arg(format!("unix_socket_directories={}", dir.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    as_server(&mut postgres);
    let child = postgres.spawn()?;
    let socket = dir.join(".s.PGSQL.5432");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        if Instant::now() > deadline {
            bail!("the leftover cluster's server did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((dir, child))
}

/// The postmaster PID of a running test cluster.
fn postmaster_pid(cluster: &Cluster) -> Result<u32> {
    let text = std::fs::read_to_string(cluster.data_dir().join("postmaster.pid"))?;
    Ok(text
        .lines()
        .next()
        .context("empty postmaster.pid")?
        .trim()
        .parse()?)
}

/// Leftover drill directories name three processes: the crashed drill's
/// own postmaster (stopped), an unrelated `sleep` and the source
/// cluster's postmaster (both left alone). The drill passes and every
/// leftover directory is removed.
#[tokio::test(flavor = "multi_thread")]
async fn a_drills_cleanup_signals_only_its_own_leftover_postmaster() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    // refugio's $TMPDIR, where drills make (and sweep) their clusters;
    // the server's user must be able to reach it.
    let root = tempfile::tempdir()?;
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755))?;
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_sample(&src, "app").await?;

    let (own_dir, mut own) = crashed_drill_cluster(root.path(), src.bindir())?;
    let mut sleeper = Command::new("sleep").arg("300").spawn()?;
    let sleep_dir = leftover(root.path(), "foreignsleep", sleeper.id())?;
    let src_pid = postmaster_pid(&src)?;
    let src_dir = leftover(root.path(), "foreignpostgres", src_pid)?;

    let repo = Repo::dir(tmp.path());
    let config = write_config(
        tmp.path(),
        &repo,
        &job("app", &src, "app", "scratch = \"ephemeral\"\n"),
    );
    let cfg = config.to_str().unwrap_or_default();
    refugio_ok(&["--config", cfg, "backup"], &[])?;
    let bindir = src.bindir().display().to_string();
    let tmpdir = root.path().display().to_string();
    let out = refugio(
        &["--config", cfg, "verify", "--json", "--pg-bindir", &bindir],
        &[("TMPDIR".to_string(), tmpdir)],
    );
    let text = all_output(&out);
    let outcome = serde_json::from_slice::<Value>(&out.stdout)
        .map(|r| r["outcome"].clone())
        .with_context(|| text.clone())?;
    let sleeper_alive = !exited(&mut sleeper);
    let _ = sleeper.kill();
    let _ = sleeper.wait();

    assert_eq!(outcome, "passed", "{text}");
    assert!(sleeper_alive, "an unrelated process was signalled: {text}");
    assert_eq!(
        src.psql("app", "SELECT count(*) FROM trips").await?,
        "120",
        "the source cluster's postmaster survived the sweep"
    );
    assert_eq!(postmaster_pid(&src)?, src_pid, "and was not restarted");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !exited(&mut own) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let own_stopped = exited(&mut own);
    if !own_stopped {
        let _ = own.kill();
    }
    assert!(
        own_stopped,
        "the crashed drill's own server was stopped: {text}"
    );
    for d in [&own_dir, &sleep_dir, &src_dir] {
        assert!(!d.exists(), "{} removed", d.display());
    }
    let left_alone = text.matches("drill-cluster-leftover-pid-not-ours").count();
    assert_eq!(left_alone, 2, "each foreign PID is logged: {text}");
    assert!(text.contains("not postgres"), "{text}");
    assert!(text.contains("another data directory"), "{text}");
    observed(
        44,
        "leftover drill dirs naming a sleep and the source postmaster: both left alone (logged); \
         the crashed drill's own postmaster stopped; drill passed",
    );
    Ok(())
}

/// A scratch server holding `refugioXdrillYfoo` (which `LIKE
/// 'refugio_drill_%'` matches) and a real leftover: the drill's sweep drops
/// only the leftover.
#[tokio::test(flavor = "multi_thread")]
async fn the_scratch_sweep_drops_only_refugio_drill_databases() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    src.psql("app", "CREATE TABLE t (id int); INSERT INTO t VALUES (1);")
        .await?;
    let scratch = Cluster::start(16).await?;
    scratch.create_database("refugioXdrillYfoo").await?;
    scratch.create_database("refugio_drill_x").await?;
    scratch
        .create_database("refugio_drill_20200101t000000z")
        .await?;
    let repo = Repo::dir(tmp.path());
    let extra = format!("scratch = {:?}\n", scratch.url("postgres"));
    let config = write_config(tmp.path(), &repo, &job("app", &src, "app", &extra));
    let cfg = config.to_str().unwrap_or_default();
    refugio_ok(&["--config", cfg, "backup"], &[])?;
    let bindir = src.bindir().display().to_string();
    let out = refugio(&["--config", cfg, "verify", "--pg-bindir", &bindir], &[]);
    assert!(out.status.success(), "{}", all_output(&out));
    let left = scratch
        .psql(
            "postgres",
            "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database \
             WHERE datname NOT IN ('postgres', 'template0', 'template1')",
        )
        .await?;
    assert_eq!(left, "refugioXdrillYfoo", "only refugio_drill_* dropped");
    observed(
        44,
        "scratch server: refugioXdrillYfoo kept, refugio_drill_* leftovers dropped",
    );
    Ok(())
}

/// One parsed sample: name, labels (unescaped), value.
type Sample = (String, Vec<(String, String)>, f64);

fn metric_name(s: &str) -> bool {
    let mut b = s.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

/// A strict reader of the OpenMetrics text format: metadata lines, samples
/// whose label values use only the `\\`, `\"` and `\n` escapes, each
/// sample in the family its `# TYPE` line opened, `# EOF` last.
fn parse_openmetrics(text: &str) -> Result<Vec<Sample>> {
    let Some(body) = text.strip_suffix("# EOF\n") else {
        bail!("does not end with # EOF");
    };
    let mut family = String::new();
    let mut samples = Vec::new();
    for (n, line) in body.lines().enumerate() {
        let n = n + 1;
        if let Some(meta) = line.strip_prefix("# ") {
            let mut parts = meta.splitn(3, ' ');
            let kind = parts.next().unwrap_or_default();
            let name = parts.next().unwrap_or_default();
            anyhow::ensure!(
                matches!(kind, "HELP" | "TYPE" | "UNIT") && metric_name(name),
                "line {n}: bad metadata {line:?}"
            );
            if kind == "TYPE" {
                family = name.to_string();
            }
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .with_context(|| format!("line {n}: no value: {line:?}"))?;
        let name = &line[..name_end];
        anyhow::ensure!(metric_name(name), "line {n}: bad name {name:?}");
        anyhow::ensure!(
            !family.is_empty() && name.starts_with(family.as_str()),
            "line {n}: sample {name} outside its family {family}"
        );
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(mut l) = rest.strip_prefix('{') {
            loop {
                if let Some(after) = l.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let eq = l
                    .find("=\"")
                    .with_context(|| format!("line {n}: bad label in {line:?}"))?;
                let key = &l[..eq];
                anyhow::ensure!(metric_name(key), "line {n}: bad label name {key:?}");
                let mut value = String::new();
                let mut chars = l[eq + 2..].char_indices();
                let end = loop {
                    match chars.next() {
                        Some((i, '"')) => break i,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, '\\')) => value.push('\\'),
                            Some((_, '"')) => value.push('"'),
                            Some((_, 'n')) => value.push('\n'),
                            other => bail!("line {n}: bad escape {other:?} in {line:?}"),
                        },
                        Some((_, c)) => value.push(c),
                        None => bail!("line {n}: unterminated label value in {line:?}"),
                    }
                };
                labels.push((key.to_string(), value));
                l = &l[eq + 2 + end + 1..];
                l = l.strip_prefix(',').unwrap_or(l);
            }
        }
        let value = rest
            .strip_prefix(' ')
            .with_context(|| format!("line {n}: no value in {line:?}"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .with_context(|| format!("line {n}: bad value {v:?}"))?,
        };
        samples.push((name.to_string(), labels, value));
    }
    Ok(samples)
}

/// A database named with `"`, `\` and a newline, backed up by the agent's
/// whole-server job: `/metrics` stays valid OpenMetrics text and the
/// per-database series carries the name exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_database_names_give_valid_metric_labels() -> Result<()> {
    // The reader is strict: the same name unescaped is rejected.
    let raw = "# TYPE m gauge\nm{database=\"a\"b\nc\"} 1\n# EOF\n";
    assert!(parse_openmetrics(raw).is_err(), "an unescaped label passed");

    let hostile = "we\"ird\\path\nname";
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(16).await?;
    src.create_database(hostile).await?;
    let port = free_port()?;
    let repo = Repo::dir(tmp.path());
    let job_toml = format!(
        "name = \"all\"\nsource = {:?}\npg_bindir = {:?}\ndatabases = [\"*\"]\n\
         [jobs.schedule]\nbackup = \"0 3 * * *\"\n",
        src.url("postgres"),
        src.bindir().display().to_string()
    );
    let config = agent_config(tmp.path(), &repo, port, "", &[job_toml]);
    let agent = Agent::start(&config, &repo.env(), port, tmp.path().join("agent.log"))?;
    // The catch-up backup of an empty repository runs at once.
    let family = "refugio_backup_last_database_stored_bytes";
    wait_until("the per-database series", Duration::from_secs(60), || {
        let (_, body) = http_get(agent.port(), "/metrics")?;
        Ok(body.lines().any(|l| l.starts_with(family)))
    })
    .with_context(|| agent.log_text())?;
    let (status, body) = http_get(agent.port(), "/metrics")?;
    assert_eq!(status, 200);
    let samples = parse_openmetrics(&body).with_context(|| body.clone())?;
    let databases: Vec<&str> = samples
        .iter()
        .filter(|(name, _, _)| name == family)
        .flat_map(|(_, labels, _)| labels.iter())
        .filter(|(k, _)| k == "database")
        .map(|(_, v)| v.as_str())
        .collect();
    assert!(databases.contains(&hostile), "{databases:?} in\n{body}");
    assert!(databases.contains(&"postgres"), "{databases:?}");
    observed(
        45,
        &format!(
            "database {hostile:?}: /metrics parsed strictly ({} samples), label carries the exact name",
            samples.len()
        ),
    );
    Ok(())
}

/// refugio SIGKILLed mid-drill (as the OOM killer would): the drill's
/// throwaway server stops within seconds through its lifeline, not at the
/// next drill's sweep.
#[tokio::test(flavor = "multi_thread")]
async fn a_drills_server_stops_when_refugio_is_killed() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    src.psql(
        "app",
        "CREATE TABLE trips (id int, note text); \
         INSERT INTO trips SELECT g, repeat('x', 100) FROM generate_series(1, 300000) g;",
    )
    .await?;
    let repo = Repo::dir(tmp.path());
    let config = write_config(
        tmp.path(),
        &repo,
        &job(
            "app",
            &src,
            "app",
            "scratch = \"ephemeral\"\nglobals = false\n",
        ),
    );
    let cfg = config.to_str().context("path")?;
    refugio_ok(&["--config", cfg, "backup"], &[])?;
    let mut child = refugio_command(&["--config", cfg, "verify"], &[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    // Killed while pg_restore loads the server (its lifeline is armed the
    // moment after the server is spawned).
    let postmaster = loop {
        if let (Some(p), false) = (
            children_named(pid, "postgres").first().copied(),
            children_named(pid, "pg_restore").is_empty(),
        ) {
            break p;
        }
        if exited(&mut child) {
            bail!("the drill ended before its server and pg_restore were seen");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("no drill server and pg_restore appeared within 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    child.kill()?;
    child.wait()?;
    let killed = Instant::now();
    while !process_gone(postmaster) {
        if killed.elapsed() > Duration::from_secs(20) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(postmaster as i32),
                nix::sys::signal::Signal::SIGQUIT,
            );
            bail!("the drill's server (pid {postmaster}) outlived its SIGKILLed refugio by 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    observed(
        51,
        &format!(
            "refugio SIGKILLed mid-drill: its throwaway server (pid {postmaster}) was gone {:.1} s later",
            killed.elapsed().as_secs_f64()
        ),
    );
    Ok(())
}

/// CREATE DATABASE and its marking COMMENT are two statements: a database
/// another drill has created and not yet marked is not swept by this
/// drill's sweep (both take the scratch lock), and this drill waits for
/// the other to finish marking. Without the lock the sweep takes the
/// unmarked database for an abandoned one and drops it under the other
/// drill.
#[tokio::test(flavor = "multi_thread")]
async fn a_scratch_database_between_create_and_mark_is_not_swept() -> Result<()> {
    use std::io::Write;
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    src.psql("app", "CREATE TABLE t (id int); INSERT INTO t VALUES (1);")
        .await?;
    let scratch = Cluster::start(16).await?;
    let repo = Repo::dir(tmp.path());
    let extra = format!("scratch = {:?}\nglobals = false\n", scratch.url("postgres"));
    let config = write_config(tmp.path(), &repo, &job("app", &src, "app", &extra));
    let cfg = config.to_str().unwrap_or_default();
    refugio_ok(&["--config", cfg, "backup"], &[])?;

    // Another drill, between its CREATE DATABASE and its COMMENT: a psql
    // session holding the scratch lock, its database not yet marked.
    let (k1, k2) = refugio_core::drill::SCRATCH_LOCK;
    let mut other = Command::new(scratch.bindir().join("psql"))
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &scratch.url("postgres"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = other.stdin.take().context("psql stdin")?;
    writeln!(
        stdin,
        "SELECT pg_advisory_lock({k1}, {k2});\nCREATE DATABASE refugio_drill_inflight;"
    )?;
    stdin.flush()?;
    wait_until(
        "the other drill's database",
        Duration::from_secs(20),
        || {
            Ok(std::process::Command::new(scratch.bindir().join("psql"))
                .args(["-X", "-At", "-d", &scratch.url("postgres"), "-c"])
                .arg("SELECT count(*) FROM pg_database WHERE datname = 'refugio_drill_inflight'")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "1")
                .unwrap_or(false))
        },
    )?;

    let bindir = src.bindir().display().to_string();
    let mut drill = refugio_command(&["--config", cfg, "verify", "--pg-bindir", &bindir], &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // The drill waits on the lock while the other drill has not marked.
    std::thread::sleep(Duration::from_secs(3));
    let waited = !exited(&mut drill);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    writeln!(
        stdin,
        "COMMENT ON DATABASE refugio_drill_inflight IS 'refugio drill host={} pid={} started={}';\nSELECT pg_advisory_unlock({k1}, {k2});",
        host.trim(),
        std::process::id(),
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )?;
    stdin.flush()?;
    let out = drill.wait_with_output()?;
    assert!(out.status.success(), "{}", all_output(&out));
    assert!(
        waited,
        "the drill did not wait for the other drill's lock: {}",
        all_output(&out)
    );
    let left = scratch
        .psql(
            "postgres",
            "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database \
             WHERE datname LIKE 'refugio%'",
        )
        .await?;
    assert_eq!(
        left, "refugio_drill_inflight",
        "the other drill's database kept, this drill's own dropped"
    );
    drop(stdin);
    let _ = other.wait();
    observed(
        44,
        "a drill started while another held the scratch lock between CREATE DATABASE and COMMENT: it waited, then passed; the other's database kept",
    );
    Ok(())
}
