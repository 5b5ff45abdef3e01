//! S3 Object Lock: locked backups survive prune, the server's refusal is
//! reported without failing the rest, and a store that does not enforce
//! locks (Garage) is detected and never trusted.

use anyhow::{Context, Result};
use refugio_testkit::{s3, Cluster};
use serde_json::Value;

use crate::common::*;

const LOCK: &str = "object_lock = { mode = \"governance\", days = 1 }\n";

fn config_file(dir: &std::path::Path, name: &str, repo: &Repo, lock: bool, job: &str) -> String {
    let path = dir.join(name);
    let repo_toml = if lock {
        format!("{}{LOCK}", repo.toml())
    } else {
        repo.toml()
    };
    std::fs::write(&path, format!("{repo_toml}\n[[jobs]]\n{job}\n")).expect("config");
    path.display().to_string()
}

fn ids(v: &Value, field: &str) -> Vec<String> {
    let mut out: Vec<String> = v[field]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().or(x["id"].as_str()).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn newest_id(cfg: &str, env: &[(String, String)]) -> Result<String> {
    list(std::path::Path::new(cfg), env)?
        .first()
        .and_then(|m| m["backup_id"].as_str().map(str::to_string))
        .context("no backup listed")
}

#[tokio::test]
async fn locked_backups_survive_prune_and_refusals_are_reported_on_moto() -> Result<()> {
    let moto = s3::moto()?;
    // Object lock must be enabled when a bucket is created: a bucket of our own.
    let bucket = format!(
        "refugio-lock-{}",
        refugio_testkit::s3::unique_prefix("b")
            .to_lowercase()
            .replace(['_', '/'], "-")
    );
    let admin = refugio_store::s3::S3Store::new(
        &moto.bucket,
        "",
        &refugio_store::S3Options {
            region: Some(moto.region.clone()),
            endpoint: Some(moto.endpoint.clone()),
            force_path_style: true,
            static_credentials: Some((moto.access_key.clone(), moto.secret_key.clone())),
            ..Default::default()
        },
    )
    .await?;
    admin
        .client()
        .create_bucket()
        .bucket(&bucket)
        .object_lock_enabled_for_bucket(true)
        .send()
        .await
        .context("creating a bucket with object lock")?;
    let target = s3::S3Target {
        bucket: bucket.clone(),
        ..moto.clone()
    };
    let repo = Repo::s3(target.clone(), "lock");
    let env = repo.env();
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_sample(&src, "app").await?;
    let scratch = Cluster::start(16).await?;
    let job_toml = job(
        "app",
        &src,
        "app",
        &format!(
            "scratch = {:?}\nglobals = false\nretention = {{ keep_last = 1, min_verified = 1 }}\n",
            scratch.url("postgres")
        ),
    );
    let plain = config_file(tmp.path(), "plain.toml", &repo, false, &job_toml);
    let locked = config_file(tmp.path(), "locked.toml", &repo, true, &job_toml);
    let bindir = src.bindir().display().to_string();

    // The store proves it enforces the lock.
    let check = refugio_ok(&["--config", &locked, "config", "check"], &env)?;
    assert!(check.contains("enforced"), "{check}");

    // Two backups without lock, two with.
    let mut all = Vec::new();
    for cfg in [&plain, &plain, &locked, &locked] {
        refugio_ok(&["--config", cfg, "backup"], &env)?;
        all.push(newest_id(cfg, &env)?);
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    }
    refugio_ok(
        &[
            "--config",
            &locked,
            "verify",
            "--backup",
            &all[3],
            "--pg-bindir",
            &bindir,
        ],
        &env,
    )?;
    let listed = list(std::path::Path::new(&locked), &env)?;
    for m in &listed {
        let id = m["backup_id"].as_str().unwrap_or_default();
        let is_locked = m["object_lock"].is_object();
        assert_eq!(
            is_locked,
            id == all[2] || id == all[3],
            "manifest {id}: {m}"
        );
    }
    // The server holds the retention on the artifacts, not just the manifest says so.
    let store = open_s3(
        &target,
        match &repo {
            Repo::S3 { prefix, .. } => prefix,
            Repo::Dir(_) => unreachable!(),
        },
    )
    .await?;
    let artifact = format!("app/{}/database.dump.zst", all[2]);
    let r = store
        .retention(&artifact)
        .await?
        .context("no retention on the artifact")?;
    assert_eq!(r.mode, refugio_store::LockMode::Governance);
    assert!(
        r.until > chrono::Utc::now() + chrono::Duration::hours(23),
        "{r:?}"
    );

    // keep_last 1 keeps the verified newest; the two unlocked go; the
    // locked third is deferred with its date.
    let out = refugio_ok(&["--config", &locked, "prune", "--json"], &env)?;
    let report: Value = serde_json::from_str::<Value>(&out)?[0].clone();
    assert_eq!(
        ids(&report, "deleted_backups"),
        vec![all[0].clone(), all[1].clone()],
        "{report:#}"
    );
    assert_eq!(ids(&report, "locked"), vec![all[2].clone()], "{report:#}");
    assert!(
        report["locked"][0]["until"].as_str().is_some(),
        "{report:#}"
    );
    let left: Vec<String> = list(std::path::Path::new(&locked), &env)?
        .iter()
        .filter_map(|m| m["backup_id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(left, vec![all[3].clone(), all[2].clone()]);

    // Two days on, refugio's own reckoning says the lock expired, but the
    // server (real clock) still refuses: reported, exit 0, nothing lost.
    // (The prune called in-process with a fixed clock.)
    let later = chrono::Utc::now() + chrono::Duration::days(2);
    let (report, code) = prune_at(std::path::Path::new(&locked), &repo, false, later).await?;
    assert!(code == 0, "{report:#}");
    let failed = report["failed_deletes"]
        .as_array()
        .context("failed_deletes")?;
    assert_eq!(failed.len(), 1, "{report:#}");
    assert_eq!(failed[0]["locked"], true, "{report:#}");
    assert_eq!(
        failed[0]["key"].as_str(),
        Some(format!("app/{}/manifest.json", all[2]).as_str())
    );
    assert!(ids(&report, "deleted_backups").is_empty(), "{report:#}");
    // The refused backup is whole: manifest and artifact still there.
    assert!(store.head(&artifact).await?.is_some());
    let left = list(std::path::Path::new(&locked), &env)?;
    assert_eq!(left.len(), 2);

    // A version delete straight to the store: refused, with the date.
    let versioned = refugio_store::s3::S3Store::new(
        &bucket,
        match &repo {
            Repo::S3 { prefix, .. } => prefix,
            Repo::Dir(_) => unreachable!(),
        },
        &refugio_store::S3Options {
            region: Some(moto.region.clone()),
            endpoint: Some(moto.endpoint.clone()),
            force_path_style: true,
            static_credentials: Some((moto.access_key.clone(), moto.secret_key.clone())),
            versioned_deletes: true,
            ..Default::default()
        },
    )
    .await?;
    use refugio_store::ObjectStore;
    match versioned
        .delete(&format!("app/{}/manifest.json", all[3]))
        .await
    {
        Err(refugio_store::Error::Locked { until, .. }) => assert!(until.is_some()),
        other => panic!("expected a lock refusal, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn garage_object_lock_is_detected_as_not_enforced() -> Result<()> {
    let repo = Repo::s3(s3::garage()?, "lock");
    let env = repo.env();
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_sample(&src, "app").await?;
    let cfg = config_file(
        tmp.path(),
        "locked.toml",
        &repo,
        true,
        &job("app", &src, "app", "globals = false\n"),
    );
    let out = refugio(&["--config", &cfg, "config", "check"], &env);
    let text = all_output(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("NOT enforced"), "{text}");
    assert!(
        !text.contains("\"enforced\"") && !text.contains(": enforced"),
        "{text}"
    );

    // A backup that cannot be locked fails and commits nothing.
    let out = refugio(&["--config", &cfg, "backup"], &env);
    let text = all_output(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("object_lock"), "{text}");
    assert!(list(std::path::Path::new(&cfg), &env)?.is_empty());
    Ok(())
}
