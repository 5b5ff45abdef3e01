//! Zero-config parity (issue 12): `prune`, `check`, `pin` and `unpin` with
//! `--repository` alone (the job inferred, retention from flags), `list`
//! of every job, and a repository that does not exist is an error naming
//! it (a directory, or a bucket on Garage), never an empty repository.

use std::path::Path;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures::TryStreamExt;
use refugio_testkit::{s3, Cluster};
use serde_json::Value;
use tokio::io::AsyncReadExt;

use crate::common::*;

/// `refugio backup --source <db> --repository <dir>`, no config; pg_dump
/// from the cluster's bindir on PATH.
fn backup(src: &Cluster, db: &str, repo: &Path) -> Result<()> {
    let path = format!(
        "{}:{}",
        src.bindir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = refugio(
        &[
            "backup",
            "--source",
            &src.url(db),
            "--repository",
            repo.to_str().unwrap_or_default(),
        ],
        &[("PATH".to_string(), path)],
    );
    anyhow::ensure!(out.status.success(), "backup: {}", all_output(&out));
    Ok(())
}

/// Copies backup `from` of `job` to `to`, with a passing drill receipt
/// (retention reads a backup's state from its receipts' names alone).
async fn verified_copy(
    store: &dyn refugio_store::ObjectStore,
    job: &str,
    from: &str,
    to: &str,
) -> Result<()> {
    let objects: Vec<refugio_store::ObjectMeta> =
        store.list(&format!("{job}/{from}/")).try_collect().await?;
    let mut manifest = None;
    for o in objects {
        let name = o.key.rsplit('/').next().unwrap_or_default().to_string();
        let mut body = Vec::new();
        store.get(&o.key).await?.read_to_end(&mut body).await?;
        if name == "manifest.json" {
            let mut v: Value = serde_json::from_slice(&body)?;
            v["backup_id"] = to.into();
            manifest = Some(serde_json::to_vec(&v)?);
        } else if !name.starts_with("verify-") {
            store
                .put(
                    &format!("{job}/{to}/{name}"),
                    Bytes::from(body),
                    refugio_store::PutOptions::default(),
                )
                .await?;
        }
    }
    store
        .put(
            &format!("{job}/{to}/verify-{}T010000.000Z-ok.json", &to[..8]),
            Bytes::from_static(b"{\"verified\": true}"),
            refugio_store::PutOptions::default(),
        )
        .await?;
    store
        .put(
            &format!("{job}/{to}/manifest.json"),
            Bytes::from(manifest.context("manifest")?),
            refugio_store::PutOptions::default(),
        )
        .await?;
    Ok(())
}

fn ids(report: &Value, keep: bool) -> Vec<String> {
    let mut v: Vec<String> = report["decisions"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|d| d["keep"] == keep)
                .filter_map(|d| d["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Runs the binary with `args`: (exit code, stdout + stderr, stdout).
fn run(args: &[&str]) -> (Option<i32>, String, Vec<u8>) {
    let out = refugio(args, &[]);
    (out.status.code(), all_output(&out), out.stdout)
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_pin_unpin_and_check_need_only_the_repository() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("repo");
    let repo = dir.to_str().unwrap_or_default().to_string();
    let src = Cluster::start(16).await?;
    src.create_database("trips").await?;
    refugio_testkit::sample::load_sample(&src, "trips").await?;
    backup(&src, "trips", &dir)?;
    let store = refugio_store::open(
        &refugio_store::RepositoryLocation::Directory(dir.clone()),
        &Default::default(),
    )
    .await?;
    let (_, _, out) = run(&["list", "--repository", &repo, "--json"]);
    let listed: Value = serde_json::from_slice(&out)?;
    let real = listed[0]["backup_id"].as_str().context("id")?.to_string();
    let old = [
        "20200101T000000Z",
        "20200102T000000Z",
        "20200103T000000Z",
        "20200104T000000Z",
    ];
    for id in old {
        verified_copy(store.as_ref(), "trips", &real, id).await?;
    }

    // No policy anywhere: a usage error naming the flags.
    let (code, text, _) = run(&["prune", "--repository", &repo]);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("--keep-last") && text.contains("--keep-daily"),
        "{text}"
    );

    // --keep-last from the command line; the job is the repository's one.
    let prune = |extra: &[&str]| -> Result<Value> {
        let mut args = vec!["prune", "--repository", repo.as_str(), "--json"];
        args.extend_from_slice(extra);
        let (code, text, out) = run(&args);
        anyhow::ensure!(code == Some(0), "prune {extra:?}: {text}");
        let v: Value = serde_json::from_slice(&out)?;
        Ok(v[0].clone())
    };
    let dry = prune(&["--keep-last", "2", "--dry-run"])?;
    assert_eq!(dry["job"], "trips");
    // The two newest verified copies; the real backup awaits its drill.
    assert_eq!(
        ids(&dry, true),
        vec![old[2].to_string(), old[3].to_string(), real.clone()],
        "{dry}"
    );
    assert_eq!(
        ids(&dry, false),
        vec![old[0].to_string(), old[1].to_string()]
    );
    // Other knobs parse and apply: every backup is younger than 100 years.
    let within = prune(&[
        "--keep-within",
        "36500d",
        "--min-verified",
        "2",
        "--gc-grace",
        "1h",
        "--dry-run",
    ])?;
    assert_eq!(ids(&within, false), Vec::<String>::new(), "{within}");
    let daily = prune(&[
        "--keep-daily",
        "1",
        "--time-zone",
        "Europe/Madrid",
        "--dry-run",
    ])?;
    assert_eq!(
        ids(&daily, true),
        vec![old[3].to_string(), real.clone()],
        "{daily}"
    );
    let (code, text, _) = run(&[
        "prune",
        "--repository",
        &repo,
        "--time-zone",
        "Mars/Olympus",
        "--keep-last",
        "1",
    ]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("Mars/Olympus"), "{text}");

    // pin / unpin with --repository alone.
    let (code, text, _) = run(&["pin", old[0], "--repository", &repo]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!("backup {} of job trips pinned", old[0])),
        "{text}"
    );
    let pinned = prune(&["--keep-last", "2", "--dry-run"])?;
    assert_eq!(ids(&pinned, false), vec![old[1].to_string()], "{pinned}");
    let (code, text, _) = run(&["unpin", old[0], "--repository", &repo]);
    assert_eq!(code, Some(0), "{text}");

    let real_run = prune(&["--keep-last", "2"])?;
    assert_eq!(
        real_run["deleted_backups"],
        serde_json::json!([old[1], old[0]]),
        "{real_run}"
    );
    let (_, _, out) = run(&["list", "--repository", &repo, "--json"]);
    assert_eq!(
        serde_json::from_slice::<Value>(&out)?
            .as_array()
            .map(Vec::len),
        Some(3)
    );

    // check needs no config either.
    let (code, text, out) = run(&["check", "--repository", &repo, "--read-data", "--json"]);
    assert_eq!(code, Some(0), "{text}");
    let r: Value = serde_json::from_slice(&out)?;
    assert_eq!(
        (r[0]["job"].as_str(), r[0]["backups"].as_u64()),
        (Some("trips"), Some(3))
    );

    // A second job: --job picks; without it, a usage error names both.
    src.create_database("orders").await?;
    backup(&src, "orders", &dir)?;
    for args in [
        vec![
            "prune",
            "--repository",
            repo.as_str(),
            "--keep-last",
            "1",
            "--dry-run",
        ],
        vec!["pin", "latest", "--repository", repo.as_str()],
    ] {
        let (code, text, _) = run(&args);
        assert_eq!(code, Some(2), "{args:?}: {text}");
        assert!(
            text.contains("orders") && text.contains("trips") && text.contains("--job"),
            "{text}"
        );
    }
    let only = prune(&["--job", "orders", "--keep-last", "1", "--dry-run"])?;
    assert_eq!(only["job"], "orders");
    let (code, text, _) = run(&["pin", "latest", "--job", "orders", "--repository", &repo]);
    assert_eq!(code, Some(0), "{text}");

    // With a config that sets a policy for the job, the flags are refused;
    // a config job without one takes them.
    let with_policy = write_config(
        tmp.path(),
        &Repo::Dir(dir.clone()),
        &job("trips", &src, "trips", "retention = { keep_last = 5 }\n"),
    );
    let cfg = with_policy.to_str().unwrap_or_default();
    let (code, text, _) = run(&["--config", cfg, "prune", "--keep-last", "1", "--dry-run"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("trips") && text.contains("retention policy in the config"),
        "{text}"
    );
    let (code, text, _) = run(&["--config", cfg, "prune", "--dry-run"]);
    assert_eq!(code, Some(0), "the config's policy alone: {text}");
    let without = write_config(
        tmp.path(),
        &Repo::Dir(dir.clone()),
        &job("trips", &src, "trips", ""),
    );
    let cfg = without.to_str().unwrap_or_default();
    let (code, text, _) = run(&["--config", cfg, "prune", "--dry-run"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("--keep-last"), "{text}");
    let (code, text, _) = run(&["--config", cfg, "prune", "--keep-last", "1", "--dry-run"]);
    assert_eq!(code, Some(0), "{text}");
    Ok(())
}

/// `list` without `--job` lists every job of the repository, with a config
/// or without.
#[tokio::test(flavor = "multi_thread")]
async fn list_without_job_lists_every_job() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("repo");
    let repo = dir.to_str().unwrap_or_default().to_string();
    let src = Cluster::start(16).await?;
    for db in ["trips", "orders"] {
        src.create_database(db).await?;
        backup(&src, db, &dir)?;
    }
    let (code, text, out) = run(&["list", "--repository", &repo, "--json"]);
    assert_eq!(code, Some(0), "{text}");
    let v: Value = serde_json::from_slice(&out)?;
    let mut jobs: Vec<&str> = v
        .as_array()
        .context("array")?
        .iter()
        .filter_map(|m| m["job"].as_str())
        .collect();
    jobs.sort();
    assert_eq!(jobs, vec!["orders", "trips"]);
    let (_, text, _) = run(&["list", "--repository", &repo]);
    assert!(text.contains("orders") && text.contains("trips"), "{text}");
    // A config naming one job still lists both without --job.
    let config = write_config(
        tmp.path(),
        &Repo::Dir(dir.clone()),
        &job("trips", &src, "trips", ""),
    );
    assert_eq!(list(&config, &[])?.len(), 2);
    let (_, _, out) = run(&["list", "--repository", &repo, "--job", "orders", "--json"]);
    assert_eq!(
        serde_json::from_slice::<Value>(&out)?
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    Ok(())
}

/// A typo must not look like an empty repository: every command that reads
/// a directory repository that does not exist fails naming it, and creates
/// nothing; a backup into a new directory still creates it.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_directory_repository_is_an_error_naming_it() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let missing = tmp.path().join("typo").join("repo");
    let m = missing.to_str().unwrap_or_default();
    let url = format!("file://{m}");
    for args in [
        vec!["list", "--repository", m],
        vec!["list", "--repository", url.as_str(), "--json"],
        vec![
            "restore",
            "--repository",
            m,
            "--backup",
            "latest",
            "--target",
            "postgres://localhost/x",
        ],
        vec!["verify", "--repository", m],
        vec!["check", "--repository", m],
        vec!["prune", "--repository", m, "--keep-last", "1"],
        vec!["prune", "--repository", m],
        vec!["pin", "latest", "--repository", m],
    ] {
        let (code, text, out) = run(&args);
        assert!(matches!(code, Some(1..=3)), "{args:?}: {code:?} {text}");
        assert!(
            text.contains("does not exist") && text.contains(m),
            "{args:?}: {text}"
        );
        assert!(!text.contains("no backups"), "{args:?}: {text}");
        assert!(
            out.is_empty(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out)
        );
        assert!(!tmp.path().join("typo").exists(), "{args:?} created it");
    }
    // An existing, empty directory is an empty repository.
    std::fs::create_dir_all(&missing)?;
    let (code, text, _) = run(&["list", "--repository", m]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("no backups"), "{text}");
    std::fs::remove_dir_all(tmp.path().join("typo"))?;

    let src = Cluster::start(16).await?;
    src.create_database("trips").await?;
    backup(&src, "trips", &missing)?;
    assert!(
        missing.join("trips").is_dir(),
        "backup created the repository"
    );
    let (code, text, _) = run(&["list", "--repository", m]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("trips"), "{text}");
    Ok(())
}

/// A bucket that does not exist (Garage: NoSuchBucket) is an error naming
/// the bucket and the endpoint, for every read command.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_bucket_is_an_error_naming_it_and_the_endpoint() -> Result<()> {
    let target = s3::garage()?;
    let tmp = tempfile::tempdir()?;
    let bucket = format!("no-such-bucket-{}", &s3::unique_prefix("x")[4..]);
    let repo = Repo::S3 {
        target: s3::S3Target {
            bucket: bucket.clone(),
            ..target.clone()
        },
        prefix: "p".into(),
    };
    let config = tmp.path().join("refugio.toml");
    std::fs::write(&config, repo.toml())?;
    let cfg = config.to_str().unwrap_or_default();
    for args in [
        vec!["--config", cfg, "list"],
        vec![
            "--config",
            cfg,
            "restore",
            "--backup",
            "latest",
            "--target",
            "postgres://localhost/x",
        ],
        vec!["--config", cfg, "verify"],
        vec!["--config", cfg, "check"],
        vec!["--config", cfg, "prune", "--keep-last", "1"],
    ] {
        let out = refugio(&args, &repo.env());
        let text = all_output(&out);
        assert!(!out.status.success(), "{args:?}: {text}");
        assert!(
            text.contains(&format!(
                "bucket {bucket} does not exist at {}",
                target.endpoint
            )),
            "{args:?}: {text}"
        );
        assert!(!text.contains("no backups"), "{text}");
    }
    Ok(())
}
