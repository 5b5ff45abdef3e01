//! `refugio check` end to end, on a directory and on Garage: a clean
//! repository passes; a truncated artifact and a deleted one are found
//! from the listing, a byte changed in place only with `--read-data`;
//! `--backup` and `--subset` read what they say; orphans and receipts
//! without a manifest are reported but are not damage; exit codes 0, 1
//! and 3 (could not check); the agent's scheduled check, its metrics and
//! its webhook. The 1,000-backup measurement is an ignored test here too.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures::TryStreamExt;
use refugio_store::ObjectStore;
use refugio_testkit::{s3, Cluster};
use serde_json::Value;
use tokio::io::AsyncReadExt;

use crate::common::*;

/// The store behind `repo`, opened by the test itself.
async fn store_of(repo: &Repo) -> Result<Arc<dyn ObjectStore>> {
    match repo {
        Repo::Dir(dir) => Ok(refugio_store::open(
            &refugio_store::RepositoryLocation::Directory(dir.clone()),
            &Default::default(),
        )
        .await?),
        Repo::S3 { target, prefix } => open_s3(target, prefix).await,
    }
}

async fn read_object(store: &Arc<dyn ObjectStore>, key: &str) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    store.get(key).await?.read_to_end(&mut buf).await?;
    Ok(buf)
}

/// Copies backup `from` of job `job` to a new id (manifest last, its
/// `backup_id` rewritten): a second committed backup with the same bytes.
async fn clone_backup(store: &Arc<dyn ObjectStore>, job: &str, from: &str, to: &str) -> Result<()> {
    let objects: Vec<refugio_store::ObjectMeta> =
        store.list(&format!("{job}/{from}/")).try_collect().await?;
    let mut manifest = None;
    for o in objects {
        let name = o.key.rsplit('/').next().unwrap_or_default().to_string();
        let body = read_object(store, &o.key).await?;
        if name == "manifest.json" {
            let mut v: Value = serde_json::from_slice(&body)?;
            v["backup_id"] = to.into();
            manifest = Some(serde_json::to_vec(&v)?);
        } else {
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
            &format!("{job}/{to}/manifest.json"),
            Bytes::from(manifest.context("no manifest")?),
            refugio_store::PutOptions::default(),
        )
        .await?;
    Ok(())
}

/// `refugio <args> check --json …`: (exit code, reports, all output).
fn check_json(
    base: &[&str],
    extra: &[&str],
    env: &[(String, String)],
) -> Result<(i32, Vec<Value>, String)> {
    let mut args = base.to_vec();
    args.push("check");
    args.push("--json");
    args.extend_from_slice(extra);
    let out = refugio(&args, env);
    let text = all_output(&out);
    let code = out.status.code().context("killed")?;
    let reports: Vec<Value> = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("check --json output ({code}): {text}"))?;
    Ok((code, reports, text))
}

fn keys(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|x| {
                    x.as_str()
                        .or_else(|| x["key"].as_str())
                        .unwrap_or_default()
                        .to_string()
                })
                .collect()
        })
        .unwrap_or_default()
}

const IDS: [&str; 3] = ["20200101T000000Z", "20200102T000000Z", "20200103T000000Z"];

/// One real backup of the sample database (a dump and globals), cloned
/// into three older ones; then every kind of damage, one at a time.
async fn damage_round(repo: Repo, name: &str) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let repo = match repo {
        Repo::Dir(_) => Repo::dir(tmp.path()),
        other => other,
    };
    let env = repo.env();
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_sample(&src, "app").await?;
    let config = write_config(tmp.path(), &repo, &job("app", &src, "app", ""));
    let cfg = config.to_str().unwrap_or_default();
    refugio_ok(&["--config", cfg, "backup"], &env)?;
    let real = list(&config, &env)?
        .first()
        .and_then(|m| m["backup_id"].as_str().map(str::to_string))
        .context("id")?;
    let store = store_of(&repo).await?;
    for id in IDS {
        clone_backup(&store, "app", &real, id).await?;
    }
    let base = ["--config", cfg];

    // Clean: sizes, then digests, all match.
    let (code, r, text) = check_json(&base, &[], &env)?;
    assert_eq!(code, 0, "{name}: {text}");
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0]["outcome"], "clean", "{name}: {}", r[0]);
    assert_eq!(r[0]["backups"], 4);
    assert_eq!(r[0]["artifacts"], 8, "dump and globals of each");
    assert_eq!(r[0]["read"]["artifacts"], 0);
    let (code, r, text) = check_json(&base, &["--read-data"], &env)?;
    assert_eq!(code, 0, "{name}: {text}");
    assert_eq!(r[0]["read"]["artifacts"], 8, "{}", r[0]);
    assert_eq!(r[0]["read"]["backups"], 4);

    // Leftovers: an orphan (old enough, two days on) and a receipt whose
    // manifest is gone. Reported, not damage.
    let orphan = "app/20190101T000000Z/database.dump.zst";
    let receipt = "app/20190102T000000Z/verify-20190102T010000.000Z-ok.json";
    store
        .put(
            orphan,
            Bytes::from_static(b"partial"),
            refugio_store::PutOptions::default(),
        )
        .await?;
    store
        .put(
            receipt,
            Bytes::from_static(b"{}"),
            refugio_store::PutOptions::default(),
        )
        .await?;
    // Two days on (the check called in-process with a fixed clock).
    let later = chrono::Utc::now() + chrono::Duration::days(2);
    let (report, human, code) = check_at(&config, &repo, later).await?;
    let (code, r, text) = (i32::from(code), vec![report], human.clone());
    assert_eq!(code, 0, "{name}: leftovers are not damage: {text}");
    assert_eq!(r[0]["outcome"], "clean");
    assert_eq!(keys(&r[0]["orphans"]), vec![orphan]);
    assert_eq!(keys(&r[0]["receipts_without_manifest"]), vec![receipt]);
    // Within the grace period the orphan is a backup in progress.
    let (_, r, _) = check_json(&base, &[], &env)?;
    assert_eq!(keys(&r[0]["orphans"]), Vec::<String>::new(), "{}", r[0]);
    let text = human;
    assert_eq!(Some(code), Some(0), "{text}");
    assert!(
        text.contains(orphan) && text.contains("not damage"),
        "{text}"
    );
    store.delete(orphan).await?;
    store.delete(receipt).await?;

    // One byte changed, same size: only reading finds it.
    let dump_name = |id: &str| format!("app/{id}/database.dump.zst");
    let flipped = dump_name(IDS[1]);
    let mut body = read_object(&store, &flipped).await?;
    let mid = body.len() / 2;
    body[mid] ^= 0x01;
    store
        .put(
            &flipped,
            Bytes::from(body),
            refugio_store::PutOptions::default(),
        )
        .await?;
    let (code, r, text) = check_json(&base, &[], &env)?;
    assert_eq!(
        (code, r[0]["outcome"].as_str()),
        (0, Some("clean")),
        "{name}: {text}"
    );
    let (code, r, text) = check_json(&base, &["--read-data"], &env)?;
    assert_eq!(code, 1, "{name}: {text}");
    assert_eq!(r[0]["outcome"], "damaged");
    assert_eq!(keys(&r[0]["damaged"]), vec![flipped.clone()], "{}", r[0]);
    assert_eq!(r[0]["damaged"][0]["problem"], "digest");
    assert_eq!(r[0]["damaged"][0]["backup_id"], IDS[1]);
    // The human report names the key.
    let human = refugio(&["--config", cfg, "check", "--read-data"], &env);
    assert_eq!(human.status.code(), Some(1));
    assert!(
        all_output(&human).contains(&format!("DAMAGED  {flipped}")),
        "{}",
        all_output(&human)
    );

    // --backup reads that backup only.
    let (code, r, text) = check_json(&base, &["--read-data", "--backup", IDS[2]], &env)?;
    assert_eq!(code, 0, "{name}: {text}");
    assert_eq!(r[0]["read"]["backups"], 1);
    assert_eq!(r[0]["read"]["artifacts"], 2);
    let (code, _, text) = check_json(&base, &["--read-data", "--backup", IDS[1]], &env)?;
    assert_eq!(code, 1, "{name}: {text}");
    let (code, r, _) = check_json(&base, &["--read-data", "--backup", "latest"], &env)?;
    assert_eq!(code, 0);
    assert_eq!(r[0]["read"]["scope"], format!("backup {real}"));
    let out = refugio(
        &[
            "--config",
            cfg,
            "check",
            "--read-data",
            "--backup",
            "20000101T000000Z",
        ],
        &env,
    );
    assert_eq!(out.status.code(), Some(2), "{}", all_output(&out));
    assert!(all_output(&out).contains("20000101T000000Z"));

    // --subset: the parts split the backups, and only the part holding the
    // changed backup finds it.
    let mut read_backups = 0;
    for part in 1..=3u32 {
        let spec = format!("{part}/3");
        let (code, r, text) = check_json(&base, &["--read-data", "--subset", &spec], &env)?;
        let holds = refugio_core::check::in_subset(IDS[1], part, 3);
        assert_eq!(code, if holds { 1 } else { 0 }, "{name} {spec}: {text}");
        read_backups += r[0]["read"]["backups"].as_u64().context("backups")?;
        assert_eq!(r[0]["read"]["scope"], format!("subset {spec}"));
    }
    assert_eq!(read_backups, 4, "every backup in exactly one part");
    let out = refugio(&["--config", cfg, "check", "--job", "apq"], &env);
    assert_eq!(out.status.code(), Some(2), "{}", all_output(&out));
    assert!(
        all_output(&out).contains("jobs there: app"),
        "{}",
        all_output(&out)
    );
    let out = refugio(&["--config", cfg, "check", "--subset", "1/3"], &env);
    assert_eq!(out.status.code(), Some(2), "--subset needs --read-data");
    let out = refugio(
        &["--config", cfg, "check", "--read-data", "--subset", "4/3"],
        &env,
    );
    assert_eq!(out.status.code(), Some(2), "{}", all_output(&out));

    // Truncated, and deleted: found from the listing alone.
    let truncated = dump_name(IDS[0]);
    let body = read_object(&store, &truncated).await?;
    store
        .put(
            &truncated,
            Bytes::from(body[..body.len() / 2].to_vec()),
            refugio_store::PutOptions::default(),
        )
        .await?;
    let deleted = format!("app/{}/globals.sql.zst", IDS[2]);
    store.delete(&deleted).await?;
    let (code, r, text) = check_json(&base, &[], &env)?;
    assert_eq!(code, 1, "{name}: {text}");
    assert_eq!(keys(&r[0]["damaged"]), vec![truncated.clone()], "{}", r[0]);
    assert_eq!(r[0]["damaged"][0]["problem"], "size");
    assert_eq!(
        r[0]["damaged"][0]["actual"].as_u64(),
        Some(body.len() as u64 / 2)
    );
    assert_eq!(keys(&r[0]["missing"]), vec![deleted.clone()]);
    let human = refugio(&["--config", cfg, "check"], &env);
    let text = all_output(&human);
    assert_eq!(human.status.code(), Some(1));
    assert!(
        text.contains(&format!("MISSING  {deleted}")) && text.contains(&truncated),
        "{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn check_finds_damage_in_a_directory_repository() -> Result<()> {
    damage_round(Repo::Dir(std::path::PathBuf::new()), "dir").await
}

#[tokio::test(flavor = "multi_thread")]
async fn check_finds_damage_on_garage() -> Result<()> {
    damage_round(Repo::s3(s3::garage()?, "check"), "garage").await
}

/// A store that cannot be reached is "could not check" (exit 3), never
/// damage (exit 1); so is a directory repository that does not exist.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_that_cannot_be_read_is_not_damage() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let target = s3::garage()?;
    let dead = s3::S3Target {
        endpoint: format!("http://127.0.0.1:{}", s3::dead_port()),
        ..target
    };
    let repo = Repo::s3(dead, "check-dead");
    let config = tmp.path().join("refugio.toml");
    std::fs::write(
        &config,
        repo.toml()
            .replace("[repository]\n", "[repository]\nattempts = 1\n"),
    )?;
    let cfg = config.to_str().unwrap_or_default();
    for args in [
        vec!["--config", cfg, "check"],
        vec!["--config", cfg, "check", "--job", "app", "--read-data"],
    ] {
        let out = refugio(&args, &repo.env());
        let text = all_output(&out);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {text}");
        assert!(
            !text.contains("DAMAGED") && !text.contains("damaged"),
            "{text}"
        );
        assert!(text.contains("cannot connect"), "{text}");
    }
    let missing = tmp.path().join("no-such-repo");
    let out = refugio(
        &[
            "check",
            "--repository",
            missing.to_str().unwrap_or_default(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(3), "{}", all_output(&out));
    assert!(all_output(&out).contains("does not exist"));
    Ok(())
}

/// `[jobs.schedule] check` in the agent: a clean check sets
/// `refugio_check_last_success_timestamp_seconds`; a truncated artifact
/// turns `refugio_check_damaged_objects` to 1, counts a failure and sends
/// a failure webhook naming the key; repaired, a recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_checks_on_schedule_and_exports_the_result() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let repo = Repo::dir(tmp.path());
    let env = repo.env();
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_sample(&src, "app").await?;
    let (hook_port, bodies) = crate::agent_signals::webhook_receiver()?;
    let port = free_port()?;
    let job_toml = job(
        "app",
        &src,
        "app",
        "globals = false\n[jobs.schedule]\ncheck = { every = \"1s\" }\ncheck_read_data = 1\ncatch_up = false\n",
    );
    let config = agent_config(
        tmp.path(),
        &repo,
        port,
        &format!("webhook = {{ url = \"http://127.0.0.1:{hook_port}/hook\", attempts = 3, timeout = \"5s\" }}"),
        &[job_toml],
    );
    let cfg = config.to_str().unwrap_or_default();
    refugio_ok(&["--config", cfg, "backup"], &env)?;
    let id = list(&config, &env)?
        .first()
        .and_then(|m| m["backup_id"].as_str().map(str::to_string))
        .context("id")?;
    let agent = Agent::start(&config, &env, port, tmp.path().join("agent.log"))?;
    let success = "refugio_check_last_success_timestamp_seconds{backup_job=\"app\"}";
    let damaged = "refugio_check_damaged_objects{backup_job=\"app\"}";
    let failures = "refugio_check_runs_total{backup_job=\"app\",result=\"failure\"}";
    wait_until("a clean scheduled check", Duration::from_secs(60), || {
        Ok(agent.metric(success)?.is_some())
    })
    .with_context(|| agent.log_text())?;
    assert_eq!(agent.metric(damaged)?, Some(0.0));
    assert_eq!(agent.metric(failures)?, Some(0.0));

    let Repo::Dir(dir) = &repo else {
        unreachable!()
    };
    let dump = dir.join("app").join(&id).join("database.dump.zst");
    let original = std::fs::read(&dump)?;
    std::fs::write(&dump, &original[..original.len() - 1])?;
    wait_until(
        "a check that finds the damage",
        Duration::from_secs(60),
        || Ok(agent.metric(damaged)? == Some(1.0)),
    )
    .with_context(|| agent.log_text())?;
    assert!(agent.metric(failures)?.unwrap_or_default() >= 1.0);
    let key = format!("app/{id}/database.dump.zst");
    assert!(
        agent.log_text().contains("check-found-damage") && agent.log_text().contains(&key),
        "{}",
        agent.log_text()
    );
    let find = |event: &str| -> Result<Option<Value>> {
        for b in bodies.lock().expect("lock").iter() {
            let v: Value = serde_json::from_str(b)?;
            if v["event"] == event && v["task"] == "check" {
                return Ok(Some(v));
            }
        }
        Ok(None)
    };
    wait_until("the failure webhook", Duration::from_secs(30), || {
        Ok(find("failure")?.is_some())
    })?;
    let failure = find("failure")?.context("failure")?;
    assert_eq!(failure["outcome"], "damaged", "{failure}");
    assert!(
        failure["error"].as_str().unwrap_or_default().contains(&key),
        "{failure}"
    );

    std::fs::write(&dump, &original)?;
    wait_until("the recovery webhook", Duration::from_secs(60), || {
        Ok(find("recovery")?.is_some())
    })
    .with_context(|| agent.log_text())?;
    assert_eq!(agent.metric(damaged)?, Some(0.0));
    let status = agent.stop(Duration::from_secs(30))?;
    assert!(status.success(), "{status}");
    // The agent recorded its last check: `refugio status` says so, and it
    // is neither a backup nor garbage.
    let shown: Value =
        serde_json::from_str(&refugio_ok(&["--config", cfg, "status", "--json"], &env)?)?;
    assert_eq!(shown[0]["last_check"]["outcome"], "clean", "{shown}");
    assert_eq!(shown[0]["backups"], 1, "{shown}");
    let later = chrono::Utc::now() + chrono::Duration::days(2);
    let (r, text, _) = check_at(&config, &repo, later).await?;
    assert_eq!(keys(&r["orphans"]), Vec::<String>::new(), "{text}");
    Ok(())
}

/// The measurement in docs/performance.md: plain `refugio check` of 1,000 backups
/// (a dump and globals each, written directly through the store API) on
/// Garage. Ignored: run it with
/// `cargo nextest run --test e2e --run-ignored only -E 'test(/check_of_1000/)' --no-capture`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement; writes 3,000 objects to Garage"]
async fn check_of_1000_backups_on_garage() -> Result<()> {
    use futures::StreamExt;
    const COUNT: usize = 1000;
    let tmp = tempfile::tempdir()?;
    let repo = Repo::s3(s3::garage()?, "check-bench");
    let env = repo.env();
    let store = store_of(&repo).await?;
    let fixture = include_str!("../../crates/store/tests/fixtures/manifest-1.4.json");
    let base =
        chrono::DateTime::parse_from_rfc3339("2020-01-01T00:00:00Z")?.with_timezone(&chrono::Utc);
    let written = std::time::Instant::now();
    futures::stream::iter(0..COUNT)
        .map(|i| {
            let store = store.clone();
            async move {
                let id =
                    refugio_store::repo::backup_id(base + chrono::Duration::hours(6 * i as i64), 1);
                let mut m: Value = serde_json::from_str(fixture)?;
                m["job"] = "app".into();
                m["backup_id"] = id.clone().into();
                m.as_object_mut().context("object")?.remove("object_lock");
                m.as_object_mut().context("object")?.remove("encryption");
                let mut artifacts = Vec::new();
                for (name, kind) in [
                    ("database.dump.zst", "database"),
                    ("globals.sql.zst", "globals"),
                ] {
                    let body = format!("{kind} of backup {id}\n").repeat(64);
                    let digest = sha2::Digest::finalize(sha2::Digest::chain_update(
                        <sha2::Sha256 as sha2::Digest>::new(),
                        body.as_bytes(),
                    ));
                    let mut a = m["artifacts"][0].clone();
                    a["name"] = name.into();
                    a["kind"] = kind.into();
                    a["encryption"] = "none".into();
                    a["stored_size"] = body.len().into();
                    a["sha256"] = hex_of(&digest).into();
                    artifacts.push(a);
                    store
                        .put(
                            &format!("app/{id}/{name}"),
                            Bytes::from(body),
                            refugio_store::PutOptions::default(),
                        )
                        .await?;
                }
                m["artifacts"] = artifacts.into();
                store
                    .put(
                        &format!("app/{id}/manifest.json"),
                        Bytes::from(serde_json::to_vec(&m)?),
                        refugio_store::PutOptions::default(),
                    )
                    .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await?;
    eprintln!(
        "wrote {COUNT} backups in {:.1}s",
        written.elapsed().as_secs_f64()
    );
    let config = tmp.path().join("refugio.toml");
    std::fs::write(&config, repo.toml())?;
    let cfg = config.to_str().unwrap_or_default();
    let mut runs = Vec::new();
    for _ in 0..3 {
        let t = std::time::Instant::now();
        let (code, r, text) = check_json(&["--config", cfg], &[], &env)?;
        runs.push(t.elapsed().as_secs_f64());
        assert_eq!(code, 0, "{text}");
        assert_eq!(r[0]["backups"], COUNT as u64);
        assert_eq!(r[0]["artifacts"], 2 * COUNT as u64);
    }
    let t = std::time::Instant::now();
    let (code, r, text) = check_json(&["--config", cfg], &["--read-data"], &env)?;
    let read = t.elapsed().as_secs_f64();
    assert_eq!(code, 0, "{text}");
    assert_eq!(r[0]["read"]["artifacts"], 2 * COUNT as u64);
    eprintln!(
        "refugio check of {COUNT} backups on Garage: {} s (three runs); with --read-data {read:.1} s",
        runs.iter()
            .map(|s| format!("{s:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let deleted = store
        .delete_many(
            &store
                .list("app/")
                .map_ok(|o| o.key)
                .try_collect::<Vec<_>>()
                .await?,
        )
        .await?;
    assert!(deleted.is_empty(), "{deleted:?}");
    Ok(())
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
