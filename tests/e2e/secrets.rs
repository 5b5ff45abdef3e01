//! Secrets end to end. A password given in the source URL's userinfo, in
//! its query string (`?password=`) or in a `password_file` reaches
//! pg_dump and pg_restore only through `PGPASSWORD` in their environment
//! (read from `/proc` while they run), and appears in no output, log,
//! manifest, receipt or listing. A password file others may read is
//! warned about. A failure is reported once, each cause once.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use futures::StreamExt;
use refugio_testkit::{s3, Cluster, SlowProxy, Slowdown, PASSWORD_USER, PASSWORD_USER_PASSWORD};
use tokio::io::AsyncReadExt;

use crate::common::*;

/// What no output may contain: the password without its last character
/// (`!`), so that its percent-encoded form (`%21`) is caught too.
const STEM: &str = "s3cret-Pa55word";

/// Rows of the source table: a dump of about 23 MiB, more than refugio
/// holds in memory with 5 MiB parts, so a slow store keeps pg_dump alive
/// (as in mid_stream.rs).
const ROWS: i64 = 300_000;

/// How the password is given.
#[derive(Debug, Clone, Copy)]
enum Way {
    Userinfo,
    Query,
    PasswordFile,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::Userinfo => "userinfo",
            Way::Query => "query",
            Way::PasswordFile => "file",
        }
    }

    /// A URL of `src`'s database `db` as [`PASSWORD_USER`], with the
    /// password in it this way (none for the password file).
    fn url(self, src: &Cluster, db: &str) -> String {
        match self {
            Way::Userinfo => src.url_as(PASSWORD_USER, Some(PASSWORD_USER_PASSWORD), db),
            Way::Query => format!(
                "{}&password={}",
                src.url_as(PASSWORD_USER, None, db),
                PASSWORD_USER_PASSWORD.replace('!', "%21")
            ),
            Way::PasswordFile => src.url_as(PASSWORD_USER, None, db),
        }
    }

    /// Arguments giving a URL's password file on the command line, as
    /// `flag FILE` (`--target-password-file`, `--scratch-password-file`):
    /// the job's `password_file` is the source's, and so is `PGPASSWORD`.
    fn password_file_args(self, flag: &'static str, file: &std::path::Path) -> Vec<String> {
        match self {
            Way::PasswordFile => vec![flag.to_string(), file.display().to_string()],
            _ => Vec::new(),
        }
    }
}

/// PIDs of the processes named `name` whose parent is `ppid` and whose
/// command line contains `marker`.
fn children(ppid: u32, name: &str, marker: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let parent = stat[close + 2..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if &stat[open + 1..close] == name
            && parent == Some(ppid)
            && proc_text(pid, "cmdline").is_ok_and(|c| c.contains(marker))
        {
            out.push(pid);
        }
    }
    out
}

/// `/proc/<pid>/<file>` with NULs as spaces.
fn proc_text(pid: u32, file: &str) -> Result<String> {
    let bytes = std::fs::read(format!("/proc/{pid}/{file}"))
        .with_context(|| format!("reading /proc/{pid}/{file}"))?;
    Ok(String::from_utf8_lossy(&bytes).replace('\0', " "))
}

/// What a running child was given.
struct Seen {
    cmdline: String,
    environ: String,
}

/// Starts refugio with `args`, waits for its child `tool` (the one whose
/// command line has `marker`), reads that child's command line and
/// environment, lets `proxy` run at full speed, and waits for refugio.
fn run_watching(
    args: &[&str],
    env: &[(String, String)],
    tool: &str,
    marker: &str,
    proxy: &SlowProxy,
) -> Result<(Output, Seen)> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_refugio"));
    cmd.args(args)
        .env_remove("REFUGIO_CONFIG")
        .env_remove("PGPASSWORD")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        // Debug logs too: pg_dump's stderr, sqlx's statements.
        .env("REFUGIO_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child: Child = cmd.spawn()?;
    let deadline = Instant::now() + Duration::from_secs(90);
    let seen = loop {
        if let Some(pid) = children(child.id(), tool, marker).first().copied() {
            let cmdline = proc_text(pid, "cmdline")?;
            let environ = proc_text(pid, "environ")?;
            break Seen { cmdline, environ };
        }
        if Instant::now() > deadline || child.try_wait()?.is_some() {
            proxy.set(Slowdown::NONE);
            let out = child.wait_with_output()?;
            bail!("{tool} never seen running: {}", all_output(&out));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    proxy.set(Slowdown::NONE);
    let out = child.wait_with_output()?;
    Ok((out, seen))
}

/// The child got the password through its environment, not its arguments.
fn assert_given_safely(tool: &str, way: Way, seen: &Seen) {
    assert!(
        seen.cmdline.contains("--dbname="),
        "{way:?}: really {tool}'s command line: {}",
        seen.cmdline
    );
    assert!(
        !seen.cmdline.contains(STEM),
        "{way:?}: password on {tool}'s command line: {}",
        seen.cmdline
    );
    assert!(
        seen.environ
            .contains(&format!("PGPASSWORD={PASSWORD_USER_PASSWORD}")),
        "{way:?}: {tool} has the password in PGPASSWORD"
    );
}

fn assert_ok_and_clean(what: &str, way: Way, out: &Output) {
    let text = all_output(out);
    assert!(out.status.success(), "{way:?} {what}: {text}");
    assert!(
        !text.contains(STEM),
        "{way:?} {what}: password in output or logs: {text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_password_reaches_children_only_through_their_environment() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_bulk(&src, "app", ROWS).await?;
    src.psql(
        "app",
        &format!("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {PASSWORD_USER}"),
    )
    .await?;
    let pwfile = tmp.path().join("pw");
    std::fs::write(&pwfile, format!("{PASSWORD_USER_PASSWORD}\n"))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pwfile, std::fs::Permissions::from_mode(0o600))?;
    }
    let moto = s3::moto()?;
    let proxy = SlowProxy::start(&moto, Slowdown::NONE)?;
    let repo = Repo::s3(proxy.target(), "secrets");
    let prefix = prefix_of(&repo);
    let env = repo.env();
    let bindir = src.bindir().display().to_string();
    let mut config = None;
    for way in [Way::Userinfo, Way::Query, Way::PasswordFile] {
        let name = way.name();
        let password_file = match way {
            Way::PasswordFile => format!("password_file = {:?}\n", pwfile.display().to_string()),
            _ => String::new(),
        };
        let path = tmp.path().join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "{}part_size = \"5MiB\"\nupload_concurrency = 1\n\n[[jobs]]\nname = \"app-{name}\"\n\
                 source = {:?}\n{password_file}pg_bindir = {:?}\nglobals = false\nattempts = 1\n",
                repo.toml(),
                way.url(&src, "app"),
                src.bindir().display().to_string()
            ),
        )?;
        let config_arg = path.display().to_string();

        // Backup: the store answers slowly, pg_dump stays blocked writing.
        proxy.set(Slowdown::delay(Duration::from_secs(2)));
        let (out, seen) = run_watching(
            &["--config", &config_arg, "backup"],
            &env,
            "pg_dump",
            "--snapshot=",
            &proxy,
        )?;
        assert_ok_and_clean("backup", way, &out);
        assert_given_safely("pg_dump", way, &seen);
        assert!(
            !all_output(&out).contains("password-file-exposed"),
            "{way:?}: a 0600 file is not warned about: {}",
            all_output(&out)
        );

        // Restore: the archive arrives slowly, pg_restore waits for it.
        let target = way.url(&src, &format!("restored_{name}"));
        proxy.set(Slowdown::rate(256 * 1024));
        let mut args = vec![
            "--config",
            config_arg.as_str(),
            "restore",
            "--backup",
            "latest",
            "--target",
            target.as_str(),
            "--create",
            "--no-owner",
            "--pg-bindir",
            bindir.as_str(),
            "--json",
            // A new database, but in the source's cluster.
            "--overwrite-source",
        ];
        let password_args = way.password_file_args("--target-password-file", &pwfile);
        args.extend(password_args.iter().map(String::as_str));
        let (out, seen) = run_watching(&args, &env, "pg_restore", "--dbname=", &proxy)?;
        assert_ok_and_clean("restore", way, &out);
        assert_given_safely("pg_restore", way, &seen);
        let restored = src
            .psql(&format!("restored_{name}"), "SELECT count(*) FROM bulk")
            .await?;
        assert_eq!(restored.trim(), ROWS.to_string(), "{way:?}: restored");

        // A drill into a scratch server given the same way: a receipt.
        let scratch = way.url(&src, "postgres");
        let mut args = vec![
            "--config",
            config_arg.as_str(),
            "verify",
            "--scratch",
            scratch.as_str(),
            "--pg-bindir",
            bindir.as_str(),
        ];
        let password_args = way.password_file_args("--scratch-password-file", &pwfile);
        args.extend(password_args.iter().map(String::as_str));
        let out = refugio(&args, &env);
        assert_ok_and_clean("verify", way, &out);
        config = Some(path);
    }

    let config = config.context("a config")?;
    let out = refugio(
        &["--config", &config.display().to_string(), "list", "--json"],
        &env,
    );
    assert_ok_and_clean("list --json", Way::PasswordFile, &out);
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    for way in [Way::Userinfo, Way::Query, Way::PasswordFile] {
        assert!(
            listed.contains(&format!("app-{}", way.name())),
            "{way:?} listed: {listed}"
        );
    }
    assert_no_secret_in_json_objects(&moto, &prefix).await?;
    observed(
        21,
        "password given in the URL's userinfo, in ?password= and in password_file: absent from every output, every child's /proc/<pid>/cmdline, list --json, and every manifest and receipt stored",
    );
    Ok(())
}

/// Every manifest and receipt in the repository, read as it is stored.
async fn assert_no_secret_in_json_objects(target: &s3::S3Target, prefix: &str) -> Result<()> {
    let store = open_s3(target, prefix).await?;
    let keys: Vec<String> = store
        .list("")
        .map(|m| m.map(|m| m.key))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<std::result::Result<_, _>>()?;
    let json: Vec<&String> = keys.iter().filter(|k| k.ends_with(".json")).collect();
    ensure!(
        json.iter().filter(|k| k.contains("manifest")).count() >= 3
            && json.iter().filter(|k| k.contains("/verify-")).count() >= 3,
        "manifests and receipts in the repository: {keys:?}"
    );
    for key in json {
        let mut text = String::new();
        store.get(key).await?.read_to_string(&mut text).await?;
        assert!(!text.contains(STEM), "password in {key}: {text}");
    }
    Ok(())
}

/// ssh's rule for private keys: a password file that group or others may
/// access is used, with a warning naming it and its mode.
#[test]
fn an_exposed_password_file_is_warned_about() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir()?;
    let pwfile = tmp.path().join("pw");
    std::fs::write(&pwfile, "hunter2\n")?;
    std::fs::set_permissions(&pwfile, std::fs::Permissions::from_mode(0o644))?;
    let repo = Repo::dir(tmp.path());
    // Nothing listens on port 1: the backup fails after reading the file.
    let config = write_config(
        tmp.path(),
        &repo,
        &format!(
            "name = \"app\"\nsource = \"postgres://u@127.0.0.1:1/db\"\npassword_file = {:?}\nattempts = 1\n",
            pwfile.display().to_string()
        ),
    );
    let out = refugio(
        &["--config", &config.display().to_string(), "backup"],
        &repo.env(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let warning = stderr
        .lines()
        .find(|l| l.contains("password-file-exposed"))
        .with_context(|| format!("no warning: {stderr}"))?;
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.contains(&pwfile.display().to_string()),
        "names the file: {warning}"
    );
    assert!(warning.contains("0644"), "gives the mode: {warning}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
    Ok(())
}

/// Nothing listens on port 1. The final error is printed once, with each
/// cause once, and no log line repeats it; the retries before it (3
/// attempts: the refusal is temporary) log their own failure, once each.
#[test]
fn a_refused_connection_is_reported_once() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let repo = tmp.path().join("repo").display().to_string();
    let source = "postgres://u@127.0.0.1:1/db";
    let backup = |log: &[&str]| {
        let mut args = log.to_vec();
        args.extend(["backup", "--source", source, "--repository", &repo]);
        refugio(&args, &[])
    };

    // Errors only: what is left is the final report.
    let out = backup(&["--log", "error"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.matches("Connection refused").count(),
        1,
        "once: {stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.starts_with("refugio: error: connecting to postgres://u@127.0.0.1:1/db failed"),
        "{stderr}"
    );

    // Default logging: two retries logged, then the report; each once.
    let out = backup(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("Connection refused"))
        .collect();
    assert_eq!(lines.len(), 3, "one per attempt: {stderr}");
    for line in &lines {
        assert_eq!(line.matches("Connection refused").count(), 1, "{line}");
    }
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("attempt failed"))
            .count(),
        2,
        "{stderr}"
    );
    assert!(lines[2].starts_with("refugio: error: "), "{stderr}");

    // JSON logs: the report is the one `command-failed` event.
    let out = backup(&["--log-format", "json", "--log", "error"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one event: {stderr}");
    let event: serde_json::Value = serde_json::from_str(stderr.trim())?;
    assert_eq!(event["fields"]["message"], "command-failed", "{event}");
    let error = event["fields"]["error"].as_str().unwrap_or_default();
    assert_eq!(error.matches("Connection refused").count(), 1, "{error}");
    Ok(())
}

/// Fault scenario 21, the agent's side: jobs whose password is in the
/// URL's userinfo, in `?password=` and in a `password_file` fail (their
/// database does not exist), so their errors, which name the server, go
/// into the log, the failure webhooks and the metrics' scrape; the
/// password is in none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_is_in_no_webhook_metric_or_agent_log() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(16).await?;
    let pwfile = tmp.path().join("pw");
    std::fs::write(&pwfile, format!("{PASSWORD_USER_PASSWORD}\n"))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pwfile, std::fs::Permissions::from_mode(0o600))?;
    }
    let (hook_port, bodies) = crate::agent_signals::webhook_receiver()?;
    let repo = Repo::dir(tmp.path());
    let port = free_port()?;
    let jobs: Vec<String> = [Way::Userinfo, Way::Query, Way::PasswordFile]
        .iter()
        .map(|&way| {
            let file = match way {
                Way::PasswordFile => format!("password_file = {:?}\n", pwfile.display().to_string()),
                _ => String::new(),
            };
            format!(
                "name = \"app-{}\"\nsource = {:?}\n{file}globals = false\n[jobs.schedule]\nbackup = \"0 0 1 1 *\"\ncatch_up = false\n",
                way.name(),
                way.url(&src, "missing")
            )
        })
        .collect();
    let config = agent_config(
        tmp.path(),
        &repo,
        port,
        &format!("webhook = {{ url = \"http://127.0.0.1:{hook_port}/hook\", attempts = 3, timeout = \"5s\" }}"),
        &jobs,
    );
    let agent = Agent::start(&config, &[], port, tmp.path().join("agent.log"))?;
    agent.signal(nix::sys::signal::Signal::SIGUSR1)?;
    // The receiver answers the first delivery 500: three events, four bodies.
    wait_until("three failure webhooks", Duration::from_secs(60), || {
        Ok(bodies.lock().map(|b| b.len()).unwrap_or(0) >= 4)
    })
    .with_context(|| agent.log_text())?;
    let (_, metrics) = http_get(port, "/metrics")?;
    let log = agent.log_text();
    agent.stop(Duration::from_secs(30))?;
    let bodies = bodies.lock().map(|b| b.clone()).unwrap_or_default();
    for way in ["userinfo", "query", "file"] {
        assert!(
            bodies
                .iter()
                .any(|b| b.contains(&format!("app-{way}")) && b.contains("\"failure\"")),
            "a failure webhook for app-{way}: {bodies:?}"
        );
    }
    assert!(
        bodies.iter().any(|b| b.contains("missing")),
        "the errors name the database: {bodies:?}"
    );
    for (what, text) in [
        ("webhook", bodies.join("\n")),
        ("metrics", metrics),
        ("log", log),
    ] {
        assert!(!text.contains(STEM), "password in the {what}: {text}");
    }
    observed(
        21,
        "the agent's side: three failing jobs (password in userinfo, ?password=, password_file): their failure webhooks, /metrics and the agent log name the server and database, never the password",
    );
    Ok(())
}
