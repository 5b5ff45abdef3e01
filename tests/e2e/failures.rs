//! Failure cases, each asserting the exact outcome: nothing committed,
//! nothing left behind, a clear error that names what went wrong and never
//! the password. Backups caught while running are in `mid_stream.rs`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use refugio_testkit::{s3, Cluster, PASSWORD_USER};

use crate::common::*;

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_s3_is_a_clear_error() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    let port = s3::dead_port();
    let config = tmp.path().join("refugio.toml");
    std::fs::write(
        &config,
        format!(
            "[repository]\nurl = \"s3://nowhere/x\"\nendpoint = \"http://127.0.0.1:{port}\"\nregion = \"us-east-1\"\nforce_path_style = true\n\n[[jobs]]\n{}",
            job("app", &src, "app", "")
        ),
    )?;
    let env = vec![
        ("AWS_ACCESS_KEY_ID".to_string(), "k".to_string()),
        ("AWS_SECRET_ACCESS_KEY".to_string(), "s".to_string()),
    ];
    let started = Instant::now();
    let out = refugio(
        &["--config", config.to_str().unwrap_or_default(), "backup"],
        &env,
    );
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("127.0.0.1:{port}")),
        "names the endpoint: {text}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "fails in bounded time"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_is_reported_without_the_password() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    let repo = Repo::dir(tmp.path());
    let wrong = "Wr0ng-but-s3cret-guess";
    let config = write_config(
        tmp.path(),
        &repo,
        &format!(
            "name = \"app\"\nsource = {:?}\npg_bindir = {:?}\n",
            src.url_as(PASSWORD_USER, Some(wrong), "app"),
            src.bindir().display().to_string()
        ),
    );
    let out = refugio(
        &["--config", config.to_str().unwrap_or_default(), "backup"],
        &repo.env(),
    );
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("password authentication failed"), "{text}");
    assert!(!text.contains(wrong), "password leaked: {text}");
    assert!(files_under(&tmp.path().join("repo"))
        .iter()
        .all(|f| !f.ends_with("manifest.json")));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn no_suitable_pg_dump_names_both_versions() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    let repo = Repo::dir(tmp.path());
    let pg15 = refugio_testkit::pg_bindir(15)?;
    let config = write_config(
        tmp.path(),
        &repo,
        &format!(
            "name = \"app\"\nsource = {:?}\npg_bindir = {:?}\n",
            src.url("app"),
            pg15.display().to_string()
        ),
    );
    let out = refugio(
        &["--config", config.to_str().unwrap_or_default(), "backup"],
        &repo.env(),
    );
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("PostgreSQL 16."), "server version: {text}");
    assert!(text.contains("(15."), "pg_dump version found: {text}");
    assert!(
        text.contains(&pg15.join("pg_dump").display().to_string()),
        "{text}"
    );
    assert!(
        files_under(&tmp.path().join("repo")).is_empty(),
        "nothing written"
    );
    Ok(())
}

/// Backs up the sample database into a directory repository; returns
/// (tempdir, cluster, config path, manifest).
async fn one_backup() -> Result<(
    tempfile::TempDir,
    Cluster,
    std::path::PathBuf,
    serde_json::Value,
)> {
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_sample(&src, "app").await?;
    let repo = Repo::dir(tmp.path());
    let config = write_config(tmp.path(), &repo, &job("app", &src, "app", ""));
    refugio_ok(
        &["--config", config.to_str().unwrap_or_default(), "backup"],
        &[],
    )?;
    let m = list(&config, &[])?
        .into_iter()
        .next()
        .context("a manifest")?;
    Ok((tmp, src, config, m))
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupted_artifact_is_refused_and_restores_nothing() -> Result<()> {
    let (tmp, _src, config, m) = one_backup().await?;
    let id = m["backup_id"].as_str().context("id")?;
    let art = tmp
        .path()
        .join("repo/app")
        .join(id)
        .join("database.dump.zst");
    let mut bytes = std::fs::read(&art)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&art, bytes)?;
    let dst = Cluster::start(16).await?;
    dst.create_database("app").await?;
    let target = dst.url("app");
    let bindir = dst.bindir().display().to_string();
    let out = refugio(
        &[
            "--config",
            config.to_str().unwrap_or_default(),
            "restore",
            "--backup",
            id,
            "--target",
            &target,
            "--no-owner",
            "--pg-bindir",
            &bindir,
        ],
        &[],
    );
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("database.dump.zst"),
        "names the object: {text}"
    );
    assert!(
        text.contains("SHA-256 is") && text.contains("the manifest says"),
        "digest or decode error: {text}"
    );
    let tables = dst.psql("app", "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog','information_schema')").await?;
    assert_eq!(tables.trim(), "0", "nothing restored");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_manifest_format_is_a_clear_error() -> Result<()> {
    let (tmp, _src, config, m) = one_backup().await?;
    let id = m["backup_id"].as_str().context("id")?;
    let path = tmp.path().join("repo/app").join(id).join("manifest.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    v["format"] = "9.0".into();
    std::fs::write(&path, serde_json::to_vec(&v)?)?;
    let out = refugio(
        &["--config", config.to_str().unwrap_or_default(), "list"],
        &[],
    );
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("format 9.0 is not supported") && text.contains("manifest.json"),
        "{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn non_empty_target_is_refused_without_clean() -> Result<()> {
    let (_tmp, _src, config, _m) = one_backup().await?;
    let cfg = config.to_str().unwrap_or_default();
    let dst = Cluster::start(16).await?;
    dst.create_database("app").await?;
    dst.psql(
        "app",
        "CREATE TABLE precious (id int); INSERT INTO precious VALUES (1), (2)",
    )
    .await?;
    let target = dst.url("app");
    let bindir = dst.bindir().display().to_string();
    let out = refugio(
        &[
            "--config",
            cfg,
            "restore",
            "--backup",
            "latest",
            "--target",
            &target,
            "--no-owner",
            "--pg-bindir",
            &bindir,
        ],
        &[],
    );
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("--clean") && text.contains("public.precious"),
        "{text}"
    );
    assert_eq!(
        dst.psql("app", "SELECT count(*) FROM precious")
            .await?
            .trim(),
        "2",
        "untouched"
    );
    let tables = dst
        .psql(
            "app",
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
        )
        .await?;
    assert_eq!(tables.trim(), "1", "nothing restored");
    // With --clean it goes through, and the unrelated table stays.
    refugio_ok(
        &[
            "--config",
            cfg,
            "restore",
            "--backup",
            "latest",
            "--target",
            &target,
            "--no-owner",
            "--clean",
            "--pg-bindir",
            &bindir,
        ],
        &[],
    )?;
    assert_eq!(
        dst.psql("app", "SELECT count(*) FROM precious")
            .await?
            .trim(),
        "2"
    );
    assert!(
        dst.psql("app", "SELECT count(*) FROM trips")
            .await?
            .trim()
            .parse::<i64>()?
            > 0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_target_database_needs_create() -> Result<()> {
    let (_tmp, _src, config, _m) = one_backup().await?;
    let dst = Cluster::start(16).await?;
    let target = dst.url("nope");
    let bindir = dst.bindir().display().to_string();
    let out = refugio(
        &[
            "--config",
            config.to_str().unwrap_or_default(),
            "restore",
            "--backup",
            "latest",
            "--target",
            &target,
            "--pg-bindir",
            &bindir,
        ],
        &[],
    );
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("nope") && text.contains("--create"), "{text}");
    Ok(())
}

/// Runs the binary like [`refugio`] in the background: the receiver hears
/// of each line of its stderr that contains `needle`, the task yields its
/// output once it exits.
fn refugio_watching(
    args: &[&str],
    env: &[(String, String)],
    needle: &'static str,
) -> Result<(
    std::sync::mpsc::Receiver<()>,
    tokio::task::JoinHandle<std::process::Output>,
)> {
    use std::io::{BufRead, Read};
    let mut child = refugio_command(args, env)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut stdout = child.stdout.take().context("refugio's stdout")?;
    let stderr = child.stderr.take().context("refugio's stderr")?;
    let (seen, heard) = std::sync::mpsc::channel();
    let task = tokio::task::spawn_blocking(move || {
        let out = std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = stdout.read_to_end(&mut bytes);
            bytes
        });
        let mut err = Vec::new();
        for line in std::io::BufReader::new(stderr)
            .split(b'\n')
            .map_while(std::io::Result::ok)
        {
            if String::from_utf8_lossy(&line).contains(needle) {
                let _ = seen.send(());
            }
            err.extend_from_slice(&line);
            err.push(b'\n');
        }
        std::process::Output {
            stdout: out.join().unwrap_or_default(),
            stderr: err,
            status: child.wait().expect("waiting for refugio"),
        }
    });
    Ok((heard, task))
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_truncate_neither_hangs_nor_commits_wrong_counts() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_sample(&src, "app").await?;
    let repo = Repo::dir(tmp.path());
    let config = write_config(
        tmp.path(),
        &repo,
        &job(
            "app",
            &src,
            "app",
            "lock_wait_timeout = \"1s\"\nattempts = 5\n",
        ),
    );

    // A reader holds a lock on trips; a TRUNCATE queues behind it. Any new
    // lock on trips (ours, pg_dump's) now queues behind the TRUNCATE.
    let pool = src.pool("app").await?;
    let mut reader = pool.begin().await?;
    sqlx::query("SELECT count(*) FROM trips")
        .execute(&mut *reader)
        .await?;
    let truncate_url = src.url("app");
    let bindir = src.bindir().to_path_buf();
    let truncate = tokio::spawn(async move {
        tokio::process::Command::new(bindir.join("psql"))
            .args([truncate_url.as_str(), "-X", "-c", "TRUNCATE trips CASCADE"])
            .output()
            .await
    });
    // Wait until the TRUNCATE is really waiting.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND mode = 'AccessExclusiveLock'",
        )
        .fetch_one(&pool)
        .await?;
        if waiting > 0 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "TRUNCATE never queued");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cfg = config.to_str().unwrap_or_default().to_string();
    let (retrying, backup) = refugio_watching(&["--config", &cfg, "backup"], &[], "retry")?;
    // Once the first attempt has hit the lock timeout (refugio logs its
    // retry; a fixed sleep could end before a slow machine even got to the
    // lock), release the reader: the TRUNCATE goes through and a retry
    // succeeds.
    tokio::task::spawn_blocking(move || retrying.recv_timeout(Duration::from_secs(60)))
        .await?
        .context("the first attempt never hit the lock timeout")?;
    reader.rollback().await?;
    let out = tokio::time::timeout(Duration::from_secs(120), backup)
        .await
        .context("backup hung")??;
    let text = all_output(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("retry"),
        "the lock timeout was hit and retried: {text}"
    );
    let t = truncate.await??;
    assert!(
        t.status.success(),
        "TRUNCATE: {}",
        String::from_utf8_lossy(&t.stderr)
    );

    let m = list(&config, &[])?.into_iter().next().context("manifest")?;
    assert!(m["attempts"].as_u64().unwrap_or(0) >= 2, "{m}");
    let dst = Cluster::start(16).await?;
    let target = dst.url("app");
    let bindir = dst.bindir().display().to_string();
    refugio_ok(
        &[
            "--config",
            config.to_str().unwrap_or_default(),
            "restore",
            "--backup",
            "latest",
            "--target",
            &target,
            "--create",
            "--globals",
            "--pg-bindir",
            &bindir,
        ],
        &[],
    )?;
    assert_eq!(
        row_counts(&dst, "app").await?,
        manifest_counts(&m),
        "manifest counts = dump contents"
    );
    let trips = manifest_counts(&m)
        .into_iter()
        .find(|(_, t, _)| t == "trips")
        .context("trips in manifest")?;
    assert_eq!(
        trips.2, 0,
        "the TRUNCATE committed before the successful snapshot"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn config_check_reports_one_line_per_problem() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    let repo = Repo::dir(tmp.path());
    let good = write_config(tmp.path(), &repo, &job("app", &src, "app", ""));
    let out = refugio(
        &[
            "--config",
            good.to_str().unwrap_or_default(),
            "config",
            "check",
        ],
        &[],
    );
    let text = all_output(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("ok   job app") && text.contains("PostgreSQL 16."),
        "{text}"
    );

    // A source that is down and a typo in a field: each named.
    let bad = tmp.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "{}\n[[jobs]]\nname = \"down\"\nsource = \"postgres://postgres:topsecret@localhost:5432/app?host=/nonexistent\"\n",
            repo.toml()
        ),
    )?;
    let out = refugio(
        &[
            "--config",
            bad.to_str().unwrap_or_default(),
            "config",
            "check",
        ],
        &[],
    );
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL job down"), "{text}");
    assert!(!text.contains("topsecret"), "{text}");

    let typo = tmp.path().join("typo.toml");
    std::fs::write(&typo, format!("{}\npart_sise = 5\n", repo.toml()))?;
    let out = refugio(
        &[
            "--config",
            typo.to_str().unwrap_or_default(),
            "config",
            "check",
        ],
        &[],
    );
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("part_sise") && text.contains("typo.toml"),
        "{text}"
    );
    Ok(())
}

/// `restore --jobs 2` needs the whole archive in its temporary directory:
/// with too little room there it refuses before creating or downloading
/// anything, naming the directory and the sizes.
#[tokio::test(flavor = "multi_thread")]
async fn a_parallel_restore_without_temp_space_refuses_before_downloading() -> Result<()> {
    let (_tmp, _src, config, m) = one_backup().await?;
    let id = m["backup_id"].as_str().context("id")?;
    let raw = m["artifacts"][0]["raw_size"].as_u64().context("raw size")?;
    // Smaller than the archive (the sample's is about 28 KiB).
    anyhow::ensure!(
        raw > 16 * 1024,
        "sample archive of {raw} bytes is too small"
    );
    let small = SmallTmpfs::mount("8k")?;
    let dst = Cluster::start(16).await?;
    let bindir = dst.bindir().display().to_string();
    let temp = small.path().display().to_string();
    let out = refugio(
        &[
            "--config",
            config.to_str().unwrap_or_default(),
            "restore",
            "--backup",
            id,
            "--target",
            &dst.url("app"),
            "--create",
            "--jobs",
            "2",
            "--temp-dir",
            &temp,
            "--pg-bindir",
            &bindir,
        ],
        &[],
    );
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&temp) && text.contains("free") && text.contains("--jobs 1"),
        "names the directory, the sizes and the way out: {text}"
    );
    let created = dst
        .psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname = 'app'",
        )
        .await?;
    assert_eq!(created, "0", "the target database was not even created");
    assert_eq!(
        std::fs::read_dir(small.path())?.count(),
        0,
        "no partial temporary file"
    );
    observed(
        13,
        "restore --jobs 2 with an 8 KiB temp dir: exit 1 naming the directory, the sizes and --jobs 1, before creating the database or any temporary file",
    );
    Ok(())
}

/// Wrong credentials on Garage (which checks signatures): a clear error
/// naming the store and what it said, exit 1, nothing committed, and the
/// secret key is printed nowhere.
#[tokio::test(flavor = "multi_thread")]
async fn wrong_s3_credentials_on_garage_are_a_clear_error_without_the_secret() -> Result<()> {
    let mut target = s3::garage()?;
    let secret = "Wr0ngSecretKey-never-printed-5f3a9c";
    target.secret_key = secret.to_string();
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_sample(&src, "app").await?;
    let repo = Repo::s3(target.clone(), "wrong-credentials");
    let env = repo.env();
    let config = write_config(
        tmp.path(),
        &repo,
        &job("app", &src, "app", "globals = false\n"),
    );
    let cfg = config.to_str().unwrap_or_default();
    let out = refugio(&["--config", cfg, "backup"], &env);
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("s3://{}", target.bucket)),
        "names the store: {text}"
    );
    assert!(
        text.contains("403")
            || text.contains("AccessDenied")
            || text.contains("InvalidAccessKeyId")
            || text.contains("SignatureDoesNotMatch")
            || text.contains("Forbidden"),
        "says what the store answered: {text}"
    );
    assert!(!text.contains(secret), "the secret key was printed: {text}");
    let check = refugio(&["--config", cfg, "config", "check"], &env);
    let ctext = all_output(&check);
    assert_eq!(check.status.code(), Some(1), "{ctext}");
    assert!(
        !ctext.contains(secret),
        "config check printed the secret: {ctext}"
    );
    // With the right credentials, nothing was committed.
    let good = Repo::S3 {
        target: s3::garage()?,
        prefix: prefix_of(&repo),
    };
    let good_config = write_config(tmp.path(), &good, &job("app", &src, "app", ""));
    assert!(
        list(&good_config, &good.env())?.is_empty(),
        "nothing committed"
    );
    observed(
        20,
        "wrong secret key on Garage: exit 1 naming the store and its answer; the secret appears in no output; nothing committed",
    );
    Ok(())
}
