//! `refugio prune`, `pin`, `unpin`: the policy applied to real backups with
//! real drills, dry run and real run agreeing, garbage collected.

use anyhow::{Context, Result};
use refugio_testkit::{s3, Cluster, SlowProxy, Slowdown};
use serde_json::Value;

use crate::common::*;

fn prune_json(cfg: &str, env: &[(String, String)], dry: bool) -> Result<Value> {
    let mut args = vec!["--config", cfg, "prune", "--json"];
    if dry {
        args.push("--dry-run");
    }
    let out = refugio_ok(&args, env)?;
    let v: Value = serde_json::from_str(&out)?;
    Ok(v[0].clone())
}

fn kept(report: &Value) -> Vec<String> {
    let mut k: Vec<String> = report["decisions"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|d| d["keep"] == true)
                .filter_map(|d| d["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    k.sort();
    k
}

async fn policy_round(repo: Repo, name: &str) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let repo = match repo {
        Repo::Dir(_) => Repo::dir(tmp.path()),
        other => other,
    };
    let env = repo.env();
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_sample(&src, "app").await?;
    let scratch = Cluster::start(16).await?;
    let extra = format!(
        "scratch = {:?}\nglobals = false\nretention = {{ keep_last = 2, min_verified = 1, gc_grace = \"1h\" }}\n",
        scratch.url("postgres")
    );
    let config = write_config(tmp.path(), &repo, &job("app", &src, "app", &extra));
    let cfg = config.to_str().unwrap_or_default();
    let bindir = src.bindir().display().to_string();
    let mut ids = Vec::new();
    for i in 0..4 {
        refugio_ok(&["--config", cfg, "backup"], &env)?;
        let newest = list(&config, &env)?
            .first()
            .and_then(|m| m["backup_id"].as_str().map(str::to_string))
            .context("id")?;
        if i < 3 {
            refugio_ok(
                &[
                    "--config",
                    cfg,
                    "verify",
                    "--backup",
                    &newest,
                    "--pg-bindir",
                    &bindir,
                ],
                &env,
            )?;
        }
        ids.push(newest);
        // Distinct seconds, so ids and times order the same way.
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    }
    // b0..b2 verified, b3 awaiting its drill. keep_last 2 (verified) → b1, b2; b3 kept; b0 goes.
    let dry = prune_json(cfg, &env, true)?;
    assert_eq!(
        kept(&dry),
        vec![ids[1].clone(), ids[2].clone(), ids[3].clone()],
        "{name}: {dry}"
    );
    let b3 = dry["decisions"]
        .as_array()
        .and_then(|a| a.iter().find(|d| d["id"] == ids[3].as_str()))
        .context("b3")?;
    assert_eq!(b3["reasons"][0], "awaiting_drill");
    assert_eq!(list(&config, &env)?.len(), 4, "dry run deletes nothing");

    // Pin the oldest: now nothing goes.
    refugio_ok(&["--config", cfg, "pin", &ids[0]], &env)?;
    let pinned = prune_json(cfg, &env, true)?;
    assert_eq!(kept(&pinned).len(), 4, "{pinned}");
    refugio_ok(&["--config", cfg, "unpin", &ids[0]], &env)?;

    let real = prune_json(cfg, &env, false)?;
    assert_eq!(
        real["decisions"], dry["decisions"],
        "dry run and prune agree"
    );
    assert_eq!(real["deleted_backups"], serde_json::json!([ids[0]]));
    let left: Vec<String> = list(&config, &env)?
        .iter()
        .filter_map(|m| m["backup_id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(left, vec![ids[3].clone(), ids[2].clone(), ids[1].clone()]);
    // Nothing of the deleted backup remains (receipts included).
    let again = prune_json(cfg, &env, true)?;
    assert_eq!(
        again["orphans"].as_array().map(Vec::len),
        Some(0),
        "{again}"
    );
    if let Repo::Dir(dir) = &repo {
        assert!(
            files_under(dir).iter().all(|f| !f.contains(&ids[0])),
            "{:?}",
            files_under(dir)
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_keeps_what_the_policy_says_on_a_directory() -> Result<()> {
    policy_round(Repo::Dir(std::path::PathBuf::new()), "dir").await
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_keeps_what_the_policy_says_on_moto() -> Result<()> {
    policy_round(Repo::s3(s3::moto()?, "prune"), "moto").await
}

#[tokio::test(flavor = "multi_thread")]
async fn gc_removes_orphans_and_stale_uploads_after_the_grace_period() -> Result<()> {
    let target = s3::moto()?;
    let tmp = tempfile::tempdir()?;
    let repo = Repo::s3(target.clone(), "gc");
    let env = repo.env();
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    let config = write_config(
        tmp.path(),
        &repo,
        &job(
            "app",
            &src,
            "app",
            "retention = { keep_last = 3, gc_grace = \"1h\" }\n",
        ),
    );
    let cfg = config.to_str().unwrap_or_default();
    refugio_ok(&["--config", cfg, "backup"], &env)?;
    let Repo::S3 { prefix, .. } = &repo else {
        unreachable!()
    };
    let store = open_s3(&target, prefix).await?;
    // The grace period is judged at a given time, not at whenever the
    // prune gets to it: "within" stays within on a slow machine, and
    // "after" needs no sleep.
    let before_writes = chrono::Utc::now();
    // What a crashed backup leaves: an artifact without manifest, and an
    // unfinished multipart upload.
    store
        .put(
            "app/20200101T000000Z/database.dump.zst",
            bytes::Bytes::from_static(b"partial"),
            refugio_store::PutOptions::default(),
        )
        .await?;
    let upload = store
        .put_multipart("app/20200101T000001Z/database.dump.zst")
        .await?;
    drop(upload);
    assert_eq!(store.list_multipart_uploads("app/").await?.len(), 1);
    let after_grace = chrono::Utc::now() + chrono::Duration::seconds(3603);
    // Within the grace period: reported nowhere, kept.
    let early = prune_ok_at(&config, &repo, true, before_writes).await?;
    assert_eq!(
        early["orphans"].as_array().map(Vec::len),
        Some(0),
        "{early}"
    );
    let dry = prune_ok_at(&config, &repo, true, after_grace).await?;
    assert_eq!(
        dry["orphans"],
        serde_json::json!(["app/20200101T000000Z/database.dump.zst"])
    );
    assert_eq!(dry["stale_uploads"].as_array().map(Vec::len), Some(1));
    prune_ok_at(&config, &repo, false, after_grace).await?;
    assert!(
        store
            .head("app/20200101T000000Z/database.dump.zst")
            .await?
            .is_none(),
        "orphan deleted"
    );
    assert_eq!(
        store.list_multipart_uploads("app/").await?.len(),
        0,
        "upload aborted"
    );
    assert_eq!(list(&config, &env)?.len(), 1, "the committed backup stays");
    Ok(())
}

/// kill -9 in the middle of a real prune, then prune again: never a manifest
/// without its artifacts, and every orphan collected.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_prune_leaves_only_orphans_that_the_next_prune_collects() -> Result<()> {
    use futures::{StreamExt, TryStreamExt};
    let target = s3::moto()?;
    let tmp = tempfile::tempdir()?;
    // refugio reaches moto through a proxy, at full speed until the prune.
    let proxy = SlowProxy::start(&target, Slowdown::NONE)?;
    let repo = Repo::s3(proxy.target(), "kill9");
    let env = repo.env();
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_sample(&src, "app").await?;
    let scratch = Cluster::start(16).await?;
    let extra = format!(
        "scratch = {:?}\nglobals = false\nretention = {{ keep_last = 1, gc_grace = \"1h\" }}\n",
        scratch.url("postgres")
    );
    let config = write_config(tmp.path(), &repo, &job("app", &src, "app", &extra));
    let cfg = config.to_str().unwrap_or_default();
    refugio_ok(&["--config", cfg, "backup"], &env)?;
    let bindir = src.bindir().display().to_string();
    refugio_ok(&["--config", cfg, "verify", "--pg-bindir", &bindir], &env)?;
    let real = list(&config, &env)?
        .into_iter()
        .next()
        .context("manifest")?;
    let real_id = real["backup_id"].as_str().context("id")?.to_string();

    // 300 older verified backups, cloned from the real one's objects.
    let Repo::S3 { prefix, .. } = &repo else {
        unreachable!()
    };
    let store = open_s3(&target, prefix).await?;
    let objects: Vec<refugio_store::ObjectMeta> =
        store.list(&format!("app/{real_id}/")).try_collect().await?;
    let mut originals = Vec::new();
    for o in &objects {
        let mut buf = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut store.get(&o.key).await?, &mut buf).await?;
        originals.push((
            o.key.rsplit('/').next().unwrap_or_default().to_string(),
            buf,
        ));
    }
    let base =
        chrono::DateTime::parse_from_rfc3339("2020-01-01T00:00:00Z")?.with_timezone(&chrono::Utc);
    let n = 300;
    futures::stream::iter(0..n)
        .map(|i| {
            let store = store.clone();
            let originals = &originals;
            async move {
                let at = base + chrono::Duration::hours(i);
                let id = refugio_store::repo::backup_id(at, 1);
                let mut manifest = None;
                for (name, bytes) in originals {
                    let mut body = bytes.clone();
                    if name.ends_with(".json") {
                        let mut v: Value = serde_json::from_slice(bytes)?;
                        v["backup_id"] = id.clone().into();
                        if name == "manifest.json" {
                            v["snapshot_at"] = serde_json::to_value(at)?;
                        }
                        body = serde_json::to_vec(&v)?;
                    }
                    let key = format!("app/{id}/{name}");
                    if name == "manifest.json" {
                        manifest = Some((key, body));
                    } else {
                        store
                            .put(
                                &key,
                                bytes::Bytes::from(body),
                                refugio_store::PutOptions::default(),
                            )
                            .await?;
                    }
                }
                let (key, body) = manifest.context("manifest")?;
                store
                    .put(
                        &key,
                        bytes::Bytes::from(body),
                        refugio_store::PutOptions::default(),
                    )
                    .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    let manifests = |store: std::sync::Arc<dyn refugio_store::ObjectStore>| async move {
        let keys: Vec<String> = store
            .list("app/")
            .try_filter_map(|o| {
                futures::future::ready(Ok(o.key.ends_with("/manifest.json").then_some(o.key)))
            })
            .try_collect()
            .await?;
        anyhow::Ok(keys)
    };
    assert_eq!(manifests(store.clone()).await?.len(), n as usize + 1);

    // Slow by construction: every delete request (a POST of DeleteObjects)
    // waits 250 ms, so the four batches in flight delete at most 8 backups
    // a second and the kill lands mid-way on any machine; the test's own
    // requests go to moto directly.
    proxy.set(Slowdown {
        delay: std::time::Duration::from_millis(250),
        only_method: Some("POST"),
        bytes_per_second: None,
    });
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_refugio"))
        // One backup per batch: many requests, so the kill lands mid-way.
        .args(["--config", cfg, "prune", "--batch", "1"])
        .env_remove("REFUGIO_CONFIG")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let left = manifests(store.clone()).await?.len();
        if left < n as usize - 20 {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "prune made no progress"
        );
        anyhow::ensure!(
            child.try_wait()?.is_none(),
            "prune finished before it could be killed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    }
    child.kill()?; // SIGKILL
    child.wait()?;
    proxy.set(Slowdown::NONE);
    // A delete the proxy still holds reaches the store after the kill:
    // let it land before looking (else the next prune may list a manifest
    // that is gone by the time it reads it, keep that backup as unreadable,
    // and leave its artifacts for the run after).
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;

    // Every manifest still there has all its artifacts.
    let keys: Vec<String> = store.list("app/").map_ok(|o| o.key).try_collect().await?;
    let remaining = manifests(store.clone()).await?;
    assert!(remaining.len() > 1, "killed mid-way");
    for m in &remaining {
        let dir = m.trim_end_matches("manifest.json");
        for (name, _) in &originals {
            assert!(
                keys.contains(&format!("{dir}{name}")),
                "{m} lost its {name}"
            );
        }
    }
    // The orphans are judged past the grace period (1 h, its floor).
    let later = chrono::Utc::now() + chrono::Duration::hours(2);
    prune_ok_at(&config, &repo, false, later).await?;
    let after: Vec<String> = store.list("app/").map_ok(|o| o.key).try_collect().await?;
    assert!(
        after
            .iter()
            .all(|k| k.starts_with(&format!("app/{real_id}/"))),
        "only the kept backup remains: {after:?}"
    );
    assert_eq!(list(&config, &env)?.len(), 1);
    Ok(())
}

/// `from`'s tree copied to `to` (which must not exist).
fn copy_tree(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Four backups in a directory repository, the three oldest drilled,
/// `keep_last = 1`: prune deletes the two older verified backups, receipts
/// included, and exits 0. The deletes of a backup's objects run together
/// and race to remove its emptied directory, so the prune is repeated on
/// fresh copies of the repository until a race would have shown.
#[tokio::test(flavor = "multi_thread")]
async fn prune_of_verified_backups_in_a_directory_succeeds() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let repo = Repo::dir(tmp.path());
    let env = repo.env();
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_sample(&src, "app").await?;
    let scratch = Cluster::start(16).await?;
    let extra = format!(
        "scratch = {:?}\nretention = {{ keep_last = 1, gc_grace = \"1h\" }}\n",
        scratch.url("postgres")
    );
    let config = write_config(tmp.path(), &repo, &job("app", &src, "app", &extra));
    let cfg = config.to_str().unwrap_or_default();
    let bindir = src.bindir().display().to_string();
    let mut ids = Vec::new();
    for i in 0..4 {
        refugio_ok(&["--config", cfg, "backup"], &env)?;
        let newest = list(&config, &env)?
            .first()
            .and_then(|m| m["backup_id"].as_str().map(str::to_string))
            .context("id")?;
        if i < 3 {
            refugio_ok(
                &[
                    "--config",
                    cfg,
                    "verify",
                    "--backup",
                    &newest,
                    "--pg-bindir",
                    &bindir,
                ],
                &env,
            )?;
        }
        ids.push(newest);
        // Distinct seconds, so ids and times order the same way.
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    }
    let Repo::Dir(dir) = &repo else {
        unreachable!()
    };
    for id in &ids[..3] {
        let receipts: Vec<String> = files_under(&dir.join("app").join(id))
            .into_iter()
            .filter(|f| f.starts_with("verify-") && f.ends_with("-ok.json"))
            .collect();
        assert_eq!(receipts.len(), 1, "{id} drilled: {receipts:?}");
    }
    let pristine = tmp.path().join("pristine");
    copy_tree(dir, &pristine)?;

    for round in 0..30 {
        if round > 0 {
            std::fs::remove_dir_all(dir)?;
            copy_tree(&pristine, dir)?;
        }
        let out = refugio(&["--config", cfg, "prune", "--json"], &env);
        let text = all_output(&out);
        assert!(out.status.success(), "round {round}: prune failed:\n{text}");
        let report: Value = serde_json::from_slice(&out.stdout)?;
        let report = &report[0];
        assert_eq!(report["failed_deletes"], serde_json::json!([]), "{report}");
        assert_eq!(
            report["deleted_backups"],
            serde_json::json!([ids[1], ids[0]]),
            "{report}"
        );
        let files = files_under(dir);
        for gone in &ids[..2] {
            assert!(
                files.iter().all(|f| !f.contains(gone.as_str())),
                "round {round}: {gone} left {files:?}"
            );
            assert!(!dir.join("app").join(gone).exists(), "{gone}'s directory");
        }
        for kept in &ids[2..] {
            assert!(
                files.contains(&format!("app/{kept}/manifest.json")),
                "round {round}: {kept} kept: {files:?}"
            );
        }
    }
    let again = prune_json(cfg, &env, false)?;
    assert_eq!(again["deleted_backups"], serde_json::json!([]), "{again}");
    assert_eq!(again["orphans"], serde_json::json!([]), "{again}");
    Ok(())
}

/// The binary run by `sh` under `umask`; otherwise as [`refugio_ok`].
fn refugio_ok_with_umask(umask: &str, args: &[&str], env: &[(String, String)]) -> Result<String> {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("umask {umask} && exec \"$@\""))
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_refugio"))
        .args(args)
        .env_remove("REFUGIO_CONFIG")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_PROFILE")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(std::process::Stdio::null())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "refugio {args:?} under umask {umask} failed ({}):\n{}",
        out.status,
        all_output(&out)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Every directory (the root included) and file under `dir`, with its
/// permission bits.
fn modes_under(dir: &std::path::Path) -> Result<Vec<(String, bool, u32)>> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let meta = std::fs::metadata(&d)?;
        out.push((
            d.display().to_string(),
            true,
            meta.permissions().mode() & 0o7777,
        ));
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                todo.push(entry.path());
            } else {
                let mode = entry.metadata()?.permissions().mode() & 0o7777;
                out.push((entry.path().display().to_string(), false, mode));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// A directory repository holds whole databases: whatever the umask, the
/// files of a real backup, its drill receipt and its pin are 0600 and its
/// directories (the repository root refugio creates included) 0700. The
/// backup runs under umask 000 (files would be world-readable), the drill
/// and the pin under 0277 (the mode would lose the owner's write bit).
#[tokio::test(flavor = "multi_thread")]
async fn directory_repository_is_owner_only_whatever_the_umask() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let repo = Repo::dir(tmp.path());
    let env = repo.env();
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_sample(&src, "app").await?;
    let scratch = Cluster::start(16).await?;
    let extra = format!("scratch = {:?}\n", scratch.url("postgres"));
    let config = write_config(tmp.path(), &repo, &job("app", &src, "app", &extra));
    let cfg = config.to_str().unwrap_or_default();
    let bindir = src.bindir().display().to_string();
    refugio_ok_with_umask("000", &["--config", cfg, "backup"], &env)?;
    let id = list(&config, &env)?
        .first()
        .and_then(|m| m["backup_id"].as_str().map(str::to_string))
        .context("id")?;
    refugio_ok_with_umask(
        "0277",
        &["--config", cfg, "verify", "--pg-bindir", &bindir],
        &env,
    )?;
    refugio_ok_with_umask("0277", &["--config", cfg, "pin", &id], &env)?;

    let Repo::Dir(dir) = &repo else {
        unreachable!()
    };
    let names = files_under(&dir.join("app").join(&id));
    for expected in [
        "manifest.json",
        "database.dump.zst",
        "globals.sql.zst",
        "pinned",
    ] {
        assert!(names.iter().any(|n| n == expected), "{expected}: {names:?}");
    }
    assert!(
        names.iter().any(|n| n.starts_with("verify-")),
        "receipt: {names:?}"
    );
    let modes = modes_under(dir)?;
    assert_eq!(
        modes.iter().filter(|(_, is_dir, _)| *is_dir).count(),
        3,
        "{modes:?}"
    );
    let wrong: Vec<_> = modes
        .iter()
        .filter(|(_, is_dir, mode)| *mode != if *is_dir { 0o700 } else { 0o600 })
        .map(|(path, _, mode)| format!("{path}: {mode:o}"))
        .collect();
    assert!(wrong.is_empty(), "{wrong:?}");
    Ok(())
}
