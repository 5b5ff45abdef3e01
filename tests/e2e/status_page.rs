//! The status page in a real browser: an agent with `status_page = true`
//! over a repository holding a logical job's backups (one drill passed,
//! one failed on a damaged backup, the last one inconclusive) and a
//! physical job's base backup with its WAL archive. Headless Chromium
//! loads `/`; the test reads the DOM it built (jobs, states, the
//! timeline's marks) and saves a screenshot under `target/`. Then the
//! store goes away: the page stays up and says so.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use refugio_testkit::Cluster;
use serde_json::Value;

use crate::common::*;

/// Chromium as this machine runs it: headless, no sandbox (root), and none
/// of its own network traffic (the machine has no outside network).
fn chromium(profile: &Path, args: &[&str]) -> Result<std::process::Output> {
    let bin = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context(
            "Chromium is not installed (Debian package chromium): run scripts/install-test-deps",
        )?;
    let out = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!(
            "chromium {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// The DOM Chromium built from the page.
fn browse(profile: &Path, url: &str) -> Result<String> {
    let out = chromium(profile, &["--dump-dom", url])?;
    Ok(String::from_utf8(out.stdout)?)
}

/// Waits until `/status.json` holds a report of `jobs` jobs.
fn wait_for_reports(port: u16, jobs: usize, limit: Duration) -> Result<()> {
    wait_until(&format!("the reports of {jobs} jobs"), limit, || {
        let (code, body) = http_get(port, "/status.json")?;
        let reports = serde_json::from_str::<Value>(&body).ok();
        Ok(code == 200 && reports.and_then(|v| v.as_array().map(Vec::len)) == Some(jobs))
    })
}

/// The section of the DOM for `job` (its summary row excluded).
fn section<'a>(dom: &'a str, job: &str) -> &'a str {
    let start = dom
        .find(&format!(r#"<section class="job" id="job-{job}">"#))
        .unwrap_or(dom.len());
    let rest = &dom[start..];
    &rest[..rest.find("</section>").unwrap_or(rest.len())]
}

/// Fields that move with the clock, removed before comparing reports.
fn still(mut v: Value) -> Value {
    if let Some(list) = v.as_array_mut() {
        for r in list {
            for path in [
                &["last_backup", "age_seconds"][..],
                &["rpo", "seconds"],
                &["rpo", "met"],
                &["wal", "lag_seconds"],
            ] {
                let (last, parents) = path.split_last().expect("path");
                let mut node = &mut *r;
                for p in parents {
                    node = &mut node[*p];
                }
                if let Some(o) = node.as_object_mut() {
                    o.remove(*last);
                }
            }
        }
    }
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_in_a_browser() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // Readable by the server's user, whose archive_command reads the
    // config and writes the WAL into the directory repository.
    let tmp = tempfile::Builder::new()
        .prefix("refugio-page-")
        .tempdir_in("/tmp")?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))?;
    let repo = Repo::dir(tmp.path());
    let Repo::Dir(repo_dir) = &repo else {
        unreachable!()
    };
    std::fs::create_dir_all(repo_dir)?;
    std::fs::set_permissions(repo_dir, std::fs::Permissions::from_mode(0o777))?;
    let config = tmp.path().join("refugio.toml");
    let archiving = vec![
        "archive_mode=on".to_string(),
        format!(
            "archive_command={} --config {} wal-push %p",
            env!("CARGO_BIN_EXE_refugio"),
            config.display()
        ),
        "archive_timeout=2s".to_string(),
    ];
    let server_env = [("REFUGIO_LOG".to_string(), "warn".to_string())];
    let src = Cluster::start_with_settings(16, &archiving, &server_env).await?;
    // The sample grants to this role; a cluster started with settings
    // does not make it.
    let role = refugio_testkit::PASSWORD_USER;
    src.psql("postgres", &format!("CREATE ROLE {role} LOGIN"))
        .await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_sample(&src, "app").await?;
    let port = free_port()?;
    // A password in the source URL (unused: the cluster trusts local
    // connections) that must appear nowhere on the page.
    const SECRET: &str = "page-Secret-pw1";
    let trips = job(
        "trips",
        &src,
        "app",
        &format!(
            "scratch = {:?}\nglobals = false\ntargets = {{ rpo = \"6h\" }}\nschedule = {{ backup = \"0 3 1 1 *\" }}\n",
            src.url("postgres")
        ),
    )
    .replace(
        &format!("source = {:?}", src.url("app")),
        &format!("source = {:?}", src.url_as("postgres", Some(SECRET), "app")),
    );
    assert!(trips.contains(SECRET), "{trips}");
    let main = format!(
        "name = \"main\"\nkind = \"physical\"\nsource = {:?}\npg_bindir = {:?}\nschedule = {{ backup = \"0 3 1 1 *\" }}\n",
        src.url("postgres"),
        src.bindir().display().to_string()
    );
    let agent_extra = "status_page = true\nbackoff = { attempts = 1 }\n";
    let written = agent_config(tmp.path(), &repo, port, agent_extra, &[trips.clone(), main]);
    assert_eq!(written, config);
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644))?;
    let cfg = config.to_str().context("path")?;
    let env = repo.env();

    // Three logical backups: the oldest drilled and passed, the second
    // damaged and failed, the newest inconclusive (its scratch server
    // unreachable).
    for _ in 0..3 {
        refugio_ok(&["--config", cfg, "backup", "--job", "trips"], &env)?;
    }
    let ids: Vec<String> = list(&config, &env)?
        .iter()
        .filter(|m| m["job"] == "trips")
        .filter_map(|m| m["backup_id"].as_str().map(String::from))
        .collect();
    let [newest, damaged, oldest] = &ids[..] else {
        bail!("three backups of trips expected: {ids:?}")
    };
    let bindir = src.bindir().display().to_string();
    let verify = |id: &str| {
        let args = ["--config", cfg, "verify", "--job", "trips", "--backup", id];
        refugio(&[&args[..], &["--pg-bindir", &bindir]].concat(), &env)
    };
    let out = verify(oldest);
    assert_eq!(out.status.code(), Some(0), "{}", all_output(&out));
    let artifact: PathBuf = repo_dir
        .join("trips")
        .join(damaged)
        .join("database.dump.zst");
    let mut bytes = std::fs::read(&artifact)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&artifact, bytes)?;
    let out = verify(damaged);
    assert_eq!(out.status.code(), Some(1), "{}", all_output(&out));
    // A check the server cannot parse says nothing of the backup.
    let unsure = tmp.path().join("unsure.toml");
    let text = std::fs::read_to_string(&config)?;
    std::fs::write(
        &unsure,
        text.replacen(
            "globals = false\n",
            "globals = false\nchecks = [\"SELEC true\"]\n",
            1,
        ),
    )?;
    let out = refugio(
        &[
            "--config",
            unsure.to_str().context("path")?,
            "verify",
            "--job",
            "trips",
            "--backup",
            newest,
            "--pg-bindir",
            &bindir,
        ],
        &env,
    );
    assert_eq!(out.status.code(), Some(3), "{}", all_output(&out));

    // The physical job: a base backup, its WAL archived by the server.
    refugio_ok(&["--config", cfg, "backup", "--job", "main"], &env)?;

    let agent = Agent::start(&config, &env, port, tmp.path().join("agent.log"))?;
    wait_for_reports(port, 2, Duration::from_secs(60))?;

    // The page's headers, and its data against `refugio status --json`.
    let (head, body) = http_get_with_head(port, "/")?;
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("cache-control: no-store"), "{head}");
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(!body.contains("<script"), "the page has no script");
    let (_, json) = http_get_with_head(port, "/status.json")?;
    let served: Value = serde_json::from_str(&json)?;
    let printed: Value =
        serde_json::from_str(&refugio_ok(&["--config", cfg, "status", "--json"], &env)?)?;
    assert_eq!(still(served), still(printed));

    // The browser's DOM.
    let profile = tempfile::tempdir()?;
    let url = format!("http://127.0.0.1:{port}/");
    let dom = browse(profile.path(), &url)?;
    assert!(
        dom.contains(r#"<tr class="job" data-job="trips" data-state="amber">"#),
        "{dom}"
    );
    assert!(
        dom.contains(r#"<tr class="job" data-job="main" data-state="amber">"#),
        "{dom}"
    );
    let t = section(&dom, "trips");
    assert!(t.contains("the last drill could not tell"), "{t}");
    assert_eq!(t.matches(r#"class="mark backup""#).count(), 3, "{t}");
    for (verdict, id) in [
        ("passed", oldest),
        ("failed", damaged),
        ("inconclusive", newest),
    ] {
        assert!(
            t.contains(&format!(
                r#"class="mark drill {verdict}" data-backup="{id}""#
            )),
            "{verdict} drill of {id}: {t}"
        );
    }
    assert!(t.contains(r#"<polyline class="rpo""#), "{t}");
    assert!(t.contains(r#"class="rpo-target""#), "{t}");
    assert!(
        t.contains(r#"class="failure""#),
        "the failed drill's message: {t}"
    );
    let m = section(&dom, "main");
    assert_eq!(m.matches(r#"class="mark backup""#).count(), 1, "{m}");
    assert!(m.contains(r#"class="mark wal""#), "{m}");
    assert!(m.contains("no backup is verified by a drill yet"), "{m}");
    assert!(!dom.contains(r#"id="repository-problem""#));
    assert!(
        !dom.contains(SECRET) && !json.contains(SECRET),
        "a secret on the page"
    );

    // A screenshot for people to look at.
    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/status-page.png");
    chromium(
        profile.path(),
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1000,1500",
            &url,
        ],
    )?;
    let png = std::fs::read(&shot)?;
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    // And as a phone shows it.
    let phone = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/status-page-phone.png");
    chromium(
        profile.path(),
        &[
            &format!("--screenshot={}", phone.display()),
            "--window-size=390,1400",
            &url,
        ],
    )?;
    assert!(std::fs::read(&phone)?.starts_with(b"\x89PNG"));

    // The store goes away: a backup fails, the page stays up and says so,
    // showing what it read before.
    let away = tmp.path().join("repo.away");
    std::fs::rename(repo_dir, &away)?;
    std::fs::write(repo_dir, "not a directory")?;
    agent.signal(nix::sys::signal::Signal::SIGUSR1)?;
    wait_until(
        "the page saying the store is down",
        Duration::from_secs(60),
        || {
            let (code, body) = http_get(port, "/")?;
            Ok(code == 200 && body.contains(r#"id="repository-problem""#))
        },
    )?;
    let dom = browse(profile.path(), &url)?;
    assert!(dom.contains("The repository cannot be read"), "{dom}");
    let t = section(&dom, "trips");
    assert_eq!(t.matches(r#"class="mark backup""#).count(), 3, "{t}");
    assert!(t.contains("backup failed"), "{t}");
    assert!(!dom.contains(SECRET), "a secret on the page");
    std::fs::remove_file(repo_dir)?;
    std::fs::rename(&away, repo_dir)?;
    let status = agent.stop(Duration::from_secs(60))?;
    assert!(status.success(), "{status}");
    Ok(())
}

/// 50 jobs and 10,000 backups (a real backup and its drill receipt cloned
/// under new ids over the last 30 days): the agent reads them once a
/// minute, and the page answers from what it read within a second.
#[tokio::test(flavor = "multi_thread")]
async fn fifty_jobs_and_ten_thousand_backups_answer_within_a_second() -> Result<()> {
    const JOBS: usize = 50;
    const PER_JOB: i64 = 200;
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_sample(&src, "app").await?;
    let repo = Repo::dir(tmp.path());
    let Repo::Dir(repo_dir) = &repo else {
        unreachable!()
    };
    let port = free_port()?;
    let job_text = |name: &str| {
        job(
            name,
            &src,
            "app",
            &format!(
                "scratch = {:?}\nglobals = false\ntargets = {{ rpo = \"6h\" }}\nschedule = {{ backup = \"0 3 1 1 *\" }}\n",
                src.url("postgres")
            ),
        )
    };
    let names: Vec<String> = (0..JOBS).map(|i| format!("job{i:02}")).collect();
    let jobs: Vec<String> = names.iter().map(|n| job_text(n)).collect();
    let config = agent_config(tmp.path(), &repo, port, "status_page = true\n", &jobs[..1]);
    let cfg = config.to_str().context("path")?;
    let env = repo.env();
    refugio_ok(&["--config", cfg, "backup", "--job", "job00"], &env)?;
    let bindir = src.bindir().display().to_string();
    refugio_ok(
        &[
            "--config",
            cfg,
            "verify",
            "--job",
            "job00",
            "--pg-bindir",
            &bindir,
        ],
        &env,
    )?;
    let template_id = list(&config, &env)?[0]["backup_id"]
        .as_str()
        .context("id")?
        .to_string();
    let template = repo_dir.join("job00").join(&template_id);
    let manifest: Value = serde_json::from_slice(&std::fs::read(template.join("manifest.json"))?)?;
    let receipt = std::fs::read_dir(&template)?
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().starts_with("verify-"))
        .context("the template's receipt")?;
    let receipt_name = receipt.file_name();
    let receipt_body = std::fs::read(receipt.path())?;
    std::fs::remove_dir_all(repo_dir.join("job00"))?;
    let now = chrono::Utc::now();
    for name in &names {
        for n in 0..PER_JOB {
            let t = now - chrono::Duration::minutes((30 * 24 * 60 - 60) * (PER_JOB - n) / PER_JOB);
            let id = t.format("%Y%m%dT%H%M%SZ").to_string();
            let dir = repo_dir.join(name).join(&id);
            std::fs::create_dir_all(&dir)?;
            let mut m = manifest.clone();
            m["job"] = name.as_str().into();
            m["backup_id"] = id.as_str().into();
            std::fs::write(dir.join("manifest.json"), serde_json::to_vec(&m)?)?;
            std::fs::write(dir.join(&receipt_name), &receipt_body)?;
        }
    }
    let config = agent_config(tmp.path(), &repo, port, "status_page = true\n", &jobs);
    let agent = Agent::start(&config, &env, port, tmp.path().join("agent.log"))?;
    wait_for_reports(port, JOBS, Duration::from_secs(120))?;
    let mut times = Vec::new();
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let (code, body) = http_get(port, "/")?;
        times.push(started.elapsed());
        assert_eq!(code, 200);
        assert_eq!(body.matches(r#"<tr class="job""#).count(), JOBS);
        assert_eq!(
            body.matches(r#"class="mark backup""#).count(),
            JOBS * PER_JOB as usize
        );
    }
    times.sort();
    let median = times[times.len() / 2];
    eprintln!(
        "status page, {JOBS} jobs and {} backups: answered in {times:?} (median {median:?})",
        JOBS * PER_JOB as usize
    );
    assert!(median < Duration::from_secs(1), "{times:?}");
    let status = agent.stop(Duration::from_secs(60))?;
    assert!(status.success(), "{status}");
    Ok(())
}
