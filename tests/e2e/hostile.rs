//! A repository is untrusted input: a script a repository writer altered
//! (with the manifest's digests fixed up to match) never runs a command on
//! the host, and is reported as foreign content (inconclusive), never as a
//! bad backup; a plain-format restore cut short commits nothing; an
//! unencrypted artifact in an encrypted repository is refused.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use refugio_testkit::Cluster;
use rstest::rstest;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::common::*;

/// Rewrites the decompressed content of the artifact of `kind` in backup
/// directory `dir` with `edit`, recompresses it with the same tool and
/// sets the manifest's digest and sizes to match: what a writer of the
/// repository can do without any key.
pub fn forge_artifact(dir: &Path, kind: &str, edit: impl FnOnce(Vec<u8>) -> Vec<u8>) -> Result<()> {
    let manifest_path = dir.join("manifest.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&manifest_path)?)?;
    let art = m["artifacts"]
        .as_array_mut()
        .and_then(|a| a.iter_mut().find(|a| a["kind"] == kind))
        .with_context(|| format!("no {kind} artifact in {}", manifest_path.display()))?;
    let name = art["name"].as_str().context("artifact name")?.to_string();
    let tool = match art["compression"].as_str() {
        Some("zstd") => "zstd",
        Some("gzip") => "gzip",
        other => anyhow::bail!("compression {other:?} not handled by the test"),
    };
    let path = dir.join(&name);
    let plain = pipe(tool, &["-d", "-c"], &std::fs::read(&path)?)?;
    let raw = edit(plain);
    let stored = pipe(tool, &["-c"], &raw)?;
    std::fs::write(&path, &stored)?;
    art["sha256"] = hex::encode(Sha256::digest(&stored)).into();
    art["stored_size"] = (stored.len() as u64).into();
    art["raw_size"] = (raw.len() as u64).into();
    std::fs::write(&manifest_path, serde_json::to_vec_pretty(&m)?)?;
    Ok(())
}

fn pipe(tool: &str, args: &[&str], input: &[u8]) -> Result<Vec<u8>> {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {tool} (install it: scripts/install-test-deps)"))?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let input = input.to_vec();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &input));
    let out = child.wait_with_output()?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    ensure!(out.status.success(), "{tool} {args:?} failed");
    Ok(out.stdout)
}

/// Where a meta-command is put in the script.
#[derive(Debug, Clone, Copy)]
enum Placement {
    /// A line of its own (refused by refugio's line check).
    OwnLine,
    /// After SQL on the same line (refused by psql's restricted mode).
    MidLine,
}

fn inject(script: Vec<u8>, marker: &Path, at: Placement) -> Vec<u8> {
    let mut s = String::from_utf8(script).expect("a UTF-8 script");
    let cmd = format!("\\! touch {}", marker.display());
    let line = match at {
        Placement::OwnLine => format!("{cmd}\n"),
        Placement::MidLine => format!("SELECT 1; {cmd}\n"),
    };
    // Before pg_dump's closing \unrestrict, as an appended line would be.
    match s.rfind("\\unrestrict ") {
        Some(i) => s.insert_str(i, &line),
        None => s.push_str(&line),
    }
    s.into_bytes()
}

/// A PostgreSQL 16 cluster whose database `app` holds `rows` trips.
async fn trips_source(rows: u32) -> Result<Cluster> {
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    src.psql(
        "app",
        &format!(
            "CREATE TABLE trips (id int); INSERT INTO trips SELECT generate_series(1, {rows});"
        ),
    )
    .await?;
    Ok(src)
}

/// A PostgreSQL 16 cluster with an empty database `app`: a restore target.
async fn empty_app() -> Result<Cluster> {
    let dst = Cluster::start(16).await?;
    dst.create_database("app").await?;
    Ok(dst)
}

/// The number of tables in `app`'s public schema, as psql prints it.
async fn public_tables(c: &Cluster) -> Result<String> {
    c.psql(
        "app",
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
    )
    .await
}

fn bindir(c: &Cluster) -> String {
    c.bindir().display().to_string()
}

fn backup_dir(tmp: &Path, job: &str, config: &Path) -> Result<PathBuf> {
    let m = list(config, &[])?
        .into_iter()
        .next()
        .context("no backup listed")?;
    let id = m["backup_id"].as_str().context("backup_id")?;
    Ok(tmp.join("repo").join(job).join(id))
}

/// A meta-command appended to the globals of a backup: the drill (an
/// ephemeral cluster, which applies the globals with psql) runs nothing,
/// is inconclusive (exit 3), and names the artifact; a restore with
/// --globals refuses the same way and leaves the target untouched.
#[rstest]
#[case::own_line(Placement::OwnLine)]
#[case::mid_line(Placement::MidLine)]
#[tokio::test(flavor = "multi_thread")]
async fn a_meta_command_in_the_globals_never_runs(#[case] at: Placement) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = trips_source(100).await?;
    let repo = Repo::dir(tmp.path());
    let config = write_config(
        tmp.path(),
        &repo,
        &job("app", &src, "app", "scratch = \"ephemeral\"\n"),
    );
    let cfg = config.to_str().context("path")?;
    refugio_ok(&["--config", cfg, "backup"], &[])?;
    let dir = backup_dir(tmp.path(), "app", &config)?;
    // The untouched backup drills passed: the forgery is what changes it.
    let out = refugio(&["--config", cfg, "verify", "--json"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", all_output(&out));

    let marker = tmp.path().join("marker-file");
    forge_artifact(&dir, "globals", |s| inject(s, &marker, at))?;
    let out = refugio(&["--config", cfg, "verify", "--json"], &[]);
    let text = all_output(&out);
    assert!(!marker.exists(), "{at:?}: the meta-command ran: {text}");
    assert_eq!(out.status.code(), Some(3), "{at:?}: inconclusive: {text}");
    let r: Value = serde_json::from_slice(&out.stdout).with_context(|| text.clone())?;
    assert_eq!(r["outcome"], "inconclusive", "{r}");
    let failure = r.to_string();
    assert!(
        failure.contains("globals.sql") && failure.contains("meta-command"),
        "{at:?}: the receipt names the artifact and why: {failure}"
    );

    let dst = empty_app().await?;
    let target = dst.url("app");
    let out = refugio(
        &[
            "--config",
            cfg,
            "restore",
            "--backup",
            "latest",
            "--globals",
            "--target",
            &target,
            "--pg-bindir",
            &bindir(&src),
        ],
        &[],
    );
    let text = all_output(&out);
    assert!(!marker.exists(), "{at:?}: the restore ran it: {text}");
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("meta-command"), "{text}");
    let tables = public_tables(&dst).await?;
    assert_eq!(
        tables.trim(),
        "0",
        "no data restored after the refusal: {text}"
    );
    observed(
        29,
        &format!(
            "`\\! touch` {} in the globals (digests fixed up): not run by verify nor restore; drill exit 3 inconclusive naming the artifact",
            match at {
                Placement::OwnLine => "on a line of its own",
                Placement::MidLine => "after SQL on a line",
            }
        ),
    );
    Ok(())
}

/// A plain-format dump altered the same way: restore refuses it, runs
/// nothing, and commits none of it.
#[tokio::test(flavor = "multi_thread")]
async fn a_meta_command_in_a_plain_dump_never_runs_and_nothing_is_committed() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = trips_source(1000).await?;
    let repo = Repo::dir(tmp.path());
    let config = write_config(
        tmp.path(),
        &repo,
        &job("app", &src, "app", "format = \"plain\"\nglobals = false\n"),
    );
    let cfg = config.to_str().context("path")?;
    refugio_ok(&["--config", cfg, "backup"], &[])?;
    let dir = backup_dir(tmp.path(), "app", &config)?;
    let marker = tmp.path().join("marker-plain");
    forge_artifact(&dir, "database", |s| inject(s, &marker, Placement::MidLine))?;

    let dst = empty_app().await?;
    let out = refugio(
        &[
            "--config",
            cfg,
            "restore",
            "--backup",
            "latest",
            "--target",
            &dst.url("app"),
            "--pg-bindir",
            &bindir(&src),
        ],
        &[],
    );
    let text = all_output(&out);
    assert!(!marker.exists(), "the meta-command ran: {text}");
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("meta-command"), "{text}");
    let tables = public_tables(&dst).await?;
    assert_eq!(tables.trim(), "0", "nothing committed: {text}");
    observed(
        29,
        "`\\! touch` after SQL in a plain dump: restore exit 1 naming the meta-command, not run, no table committed",
    );
    Ok(())
}

/// refugio SIGKILLed while psql restores a plain dump: psql reads to the
/// end of what it got and exits; the server rolls the open transaction
/// back. (psql's --single-transaction would COMMIT at that EOF: a table of
/// integers cut anywhere in its COPY data is still valid input.)
#[tokio::test(flavor = "multi_thread")]
async fn a_plain_restore_whose_refugio_is_killed_commits_nothing() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = trips_source(4000000).await?;
    let repo = Repo::dir(tmp.path());
    let config = write_config(
        tmp.path(),
        &repo,
        &job("app", &src, "app", "format = \"plain\"\nglobals = false\n"),
    );
    let cfg = config.to_str().context("path")?;
    refugio_ok(&["--config", cfg, "backup"], &[])?;

    let dst = empty_app().await?;
    let target = dst.url("app");
    let mut child = refugio_command(
        &[
            "--config",
            cfg,
            "restore",
            "--backup",
            "latest",
            "--target",
            &target,
            "--pg-bindir",
            &bindir(&src),
        ],
        &[],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()?;
    let pid = child.id();
    // Wait until psql is copying rows into the target, then kill refugio.
    let deadline = Instant::now() + Duration::from_secs(60);
    let psql = loop {
        ensure!(Instant::now() < deadline, "psql never started copying");
        if let Some(p) = children_named(pid, "psql").first().copied() {
            let copying = dst
                .psql(
                    "app",
                    "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY public.trips%'",
                )
                .await?;
            if copying.trim() == "1" {
                break p;
            }
        }
        ensure!(
            child.try_wait()?.is_none(),
            "the restore ended before it could be killed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    child.kill()?;
    child.wait()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !process_gone(psql) {
        ensure!(
            Instant::now() < deadline,
            "psql still runs after refugio died"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The backend may still be rolling back: wait for it to leave.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let busy = dst
            .psql("app", "SELECT count(*) FROM pg_stat_activity WHERE datname = 'app' AND pid <> pg_backend_pid() AND backend_type = 'client backend'")
            .await?;
        if busy.trim() == "0" || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tables = public_tables(&dst).await?;
    assert_eq!(
        tables.trim(),
        "0",
        "a killed plain restore committed a table"
    );
    observed(
        46,
        "refugio SIGKILLed while psql copied 4,000,000 rows of a plain dump: psql exited at EOF, no table committed on the target",
    );
    Ok(())
}

/// A backup stored without encryption, read through a config that has
/// `[repository.encryption]` (as a writer who swapped plaintext in would
/// have it): restore refuses it naming `--allow-unencrypted`, the drill is
/// inconclusive; with the flag both go through.
#[tokio::test(flavor = "multi_thread")]
async fn an_unencrypted_artifact_is_refused_where_encryption_is_configured() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir()?;
    let src = trips_source(100).await?;
    let repo = Repo::dir(tmp.path());
    let body = job(
        "app",
        &src,
        "app",
        &format!("scratch = {:?}\nglobals = false\n", src.url("postgres")),
    );
    let plain_config = write_config(tmp.path(), &repo, &body);
    refugio_ok(
        &["--config", plain_config.to_str().context("path")?, "backup"],
        &[],
    )?;

    let (secret, public) = refugio_core::encryption::generate();
    let identity = tmp.path().join("id.key");
    std::fs::write(&identity, format!("{secret}\n"))?;
    std::fs::set_permissions(&identity, std::fs::Permissions::from_mode(0o600))?;
    let config = tmp.path().join("encrypted.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[repository.encryption]\nrecipients = [{public:?}]\nidentity_file = {:?}\n\n[[jobs]]\n{body}\n",
            repo.toml(),
            identity.display().to_string()
        ),
    )?;
    let cfg = config.to_str().context("path")?;

    let dst = empty_app().await?;
    let target = dst.url("app");
    let bin = bindir(&src);
    let restore = [
        "--config",
        cfg,
        "restore",
        "--backup",
        "latest",
        "--target",
        &target,
        "--pg-bindir",
        &bin,
    ];
    let out = refugio(&restore, &[]);
    let text = all_output(&out);
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("stored unencrypted") && text.contains("--allow-unencrypted"),
        "{text}"
    );
    let tables = public_tables(&dst).await?;
    assert_eq!(tables.trim(), "0", "refused before the target was touched");

    let out = refugio(&["--config", cfg, "verify", "--json"], &[]);
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(3), "inconclusive: {text}");
    assert!(text.contains("--allow-unencrypted"), "{text}");

    let out = refugio(
        &["--config", cfg, "verify", "--json", "--allow-unencrypted"],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", all_output(&out));
    let mut with_flag = restore.to_vec();
    with_flag.push("--allow-unencrypted");
    refugio_ok(&with_flag, &[])?;
    let rows = dst.psql("app", "SELECT count(*) FROM trips").await?;
    assert_eq!(rows.trim(), "100");
    observed(
        47,
        "a plaintext backup read with [repository.encryption] configured: restore exit 1 naming --allow-unencrypted, target untouched; drill exit 3 inconclusive; with the flag: drill passed, 100 rows restored",
    );
    Ok(())
}
