//! Clocks and garbage collection (issue 25, points 2 and 7): a backup
//! dated in the future is reported and ignored, backups are ordered by the
//! server's time, `gc_grace` has a floor, and prune's garbage collection
//! never touches a running backup.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use refugio_testkit::{s3, Cluster};
use serde_json::Value;

use crate::common::*;

/// What a host whose clock was once wrong leaves behind.
const FUTURE_ID: &str = "29991231T000000Z";

/// PostgreSQL 16 with the sample data in database `app`.
async fn sample_source() -> Result<Cluster> {
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_sample(&src, "app").await?;
    Ok(src)
}

/// Moves backup `id` of a directory repository to `new_id`, as a host
/// whose clock said another time would have written it: the id and the
/// host-clock times change, the server's `snapshot_at` does not.
fn redate(repo_dir: &Path, id: &str, new_id: &str, shift: chrono::Duration) -> Result<()> {
    let from = repo_dir.join("app").join(id);
    let to = repo_dir.join("app").join(new_id);
    std::fs::rename(&from, &to)?;
    let path = to.join("manifest.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    m["backup_id"] = new_id.into();
    for field in ["started_at", "finished_at"] {
        let t: chrono::DateTime<chrono::Utc> = m[field].as_str().context("host time")?.parse()?;
        m[field] = (t + shift).to_rfc3339().into();
    }
    std::fs::write(&path, serde_json::to_vec(&m)?)?;
    Ok(())
}

/// A copy of committed backup `id` of a directory repository under `new_id`.
fn copy_backup(repo_dir: &Path, id: &str, new_id: &str) -> Result<()> {
    let from = repo_dir.join("app").join(id);
    let to = repo_dir.join("app").join(new_id);
    std::fs::create_dir_all(&to)?;
    for entry in std::fs::read_dir(&from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    let path = to.join("manifest.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    m["backup_id"] = new_id.into();
    std::fs::write(&path, serde_json::to_vec(&m)?)?;
    Ok(())
}

fn ids(config: &Path, env: &[(String, String)]) -> Result<Vec<String>> {
    Ok(list(config, env)?
        .iter()
        .filter_map(|m| m["backup_id"].as_str().map(str::to_string))
        .collect())
}

/// Scenario 33: a committed backup dated 2999 used to make the agent skip
/// every scheduled run ("another replica already did this run").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_dated_in_the_future_does_not_stop_scheduled_backups() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let repo = Repo::dir(tmp.path());
    let env = repo.env();
    let src = sample_source().await?;
    let port = free_port()?;
    let job_toml = job(
        "app",
        &src,
        "app",
        "globals = false\n[jobs.schedule]\nbackup = { every = \"3s\" }\n",
    );
    let config = agent_config(tmp.path(), &repo, port, "", &[job_toml]);
    let cfg = config.to_str().unwrap_or_default();
    refugio_ok(&["--config", cfg, "backup"], &env)?;
    let real = ids(&config, &env)?.first().cloned().context("a backup")?;
    let Repo::Dir(dir) = &repo else {
        unreachable!()
    };
    copy_backup(dir, &real, FUTURE_ID)?;
    assert!(ids(&config, &env)?.contains(&FUTURE_ID.to_string()));

    let agent = Agent::start(&config, &env, port, tmp.path().join("agent.log"))?;
    let t0 = Instant::now();
    wait_until("two scheduled backups", Duration::from_secs(60), || {
        let new = ids(&config, &env)?
            .into_iter()
            .filter(|id| *id != real && id != FUTURE_ID)
            .count();
        Ok(new >= 2)
    })
    .with_context(|| agent.log_text())?;
    let took = t0.elapsed();
    let future = agent
        .metric("refugio_repository_future_backups{backup_job=\"app\"}")?
        .context("no refugio_repository_future_backups")?;
    assert_eq!(future, 1.0);
    let log = agent.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("future-backups") && l.contains(FUTURE_ID)),
        "the agent logs the future-dated backup by name:\n{log}"
    );
    let status = agent.stop(Duration::from_secs(40))?;
    assert!(status.success(), "exit {status}");

    let out = refugio(&["--config", cfg, "check"], &env);
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(0), "not damage: {text}");
    assert!(
        text.contains(&format!(
            "WARNING  backup {FUTURE_ID} is dated in the future"
        )),
        "{text}"
    );
    let checked: Value =
        serde_json::from_str(&refugio_ok(&["--config", cfg, "check", "--json"], &env)?)?;
    assert_eq!(checked[0]["future"], serde_json::json!([FUTURE_ID]));
    // `latest` is the newest real backup, never the future one.
    let latest = ids(&config, &env)?
        .into_iter()
        .find(|id| id != FUTURE_ID)
        .context("real backups")?;
    let restored = Cluster::start(16).await?;
    let (target, bindir) = (restored.url("app"), restored.bindir().display().to_string());
    let out = refugio_ok(
        &[
            "--config",
            cfg,
            "restore",
            "--backup",
            "latest",
            "--target",
            &target,
            "--create",
            "--no-owner",
            "--pg-bindir",
            &bindir,
        ],
        &env,
    )?;
    assert!(out.contains(&latest) && !out.contains(FUTURE_ID), "{out}");
    observed(
        33,
        &format!(
            "a committed backup {FUTURE_ID} (a copy of a real one) beside a real one; the agent, scheduled every 3 s, made 2 new backups in {:.1} s; refugio_repository_future_backups = 1; the log names it (future-backups); `check` exits 0 with a WARNING naming it; `restore --backup latest` restored {latest}, not it",
            took.as_secs_f64()
        ),
    );
    Ok(())
}

/// Scenario 34: a host clock an hour behind writes a new backup whose id
/// sorts before the verified one; prune keeps it for its drill, `latest`
/// is it, and once verified it is the one kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_clock_behind_does_not_get_the_new_backup_pruned_before_its_drill() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let repo = Repo::dir(tmp.path());
    let env = repo.env();
    let src = sample_source().await?;
    let scratch = Cluster::start(16).await?;
    let extra = format!(
        "scratch = {:?}\nglobals = false\nretention = {{ keep_last = 1 }}\n",
        scratch.url("postgres")
    );
    let config = write_config(tmp.path(), &repo, &job("app", &src, "app", &extra));
    let cfg = config.to_str().unwrap_or_default();
    let bindir = src.bindir().display().to_string();
    refugio_ok(&["--config", cfg, "backup"], &env)?;
    let verified = ids(&config, &env)?.first().cloned().context("b1")?;
    refugio_ok(
        &[
            "--config",
            cfg,
            "verify",
            "--backup",
            &verified,
            "--pg-bindir",
            &bindir,
        ],
        &env,
    )?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    refugio_ok(&["--config", cfg, "backup"], &env)?;
    let taken = ids(&config, &env)?
        .into_iter()
        .find(|id| *id != verified)
        .context("b2")?;
    // Its host's clock was an hour behind.
    let behind = chrono::Duration::hours(-1);
    let at = refugio_store::repo::id_time(&taken).context("id time")? + behind;
    let new = refugio_store::repo::backup_id(at, 1);
    let Repo::Dir(dir) = &repo else {
        unreachable!()
    };
    redate(dir, &taken, &new, behind)?;
    assert!(new < verified, "{new} sorts before {verified} by id");

    assert_eq!(
        ids(&config, &env)?,
        vec![new.clone(), verified.clone()],
        "newest first by server time"
    );
    let report: Value =
        serde_json::from_str(&refugio_ok(&["--config", cfg, "prune", "--json"], &env)?)?;
    let report = &report[0];
    let decision = report["decisions"]
        .as_array()
        .and_then(|a| a.iter().find(|d| d["id"] == new.as_str()))
        .context("a decision for the new backup")?;
    assert_eq!(decision["keep"], true, "{report}");
    assert_eq!(
        decision["reasons"],
        serde_json::json!(["awaiting_drill"]),
        "{report}"
    );
    assert_eq!(report["deleted_backups"], serde_json::json!([]), "{report}");

    // The drill of `latest` is its drill; then it is the one kept.
    let out = refugio_ok(&["--config", cfg, "verify", "--pg-bindir", &bindir], &env)?;
    assert!(out.contains(&new), "latest is the new backup: {out}");
    let report: Value =
        serde_json::from_str(&refugio_ok(&["--config", cfg, "prune", "--json"], &env)?)?;
    assert_eq!(
        report[0]["deleted_backups"],
        serde_json::json!([verified]),
        "{report}"
    );
    assert_eq!(ids(&config, &env)?, vec![new.clone()]);
    observed(
        34,
        &format!(
            "backup {verified} verified, then a newer one redated an hour back to {new} (a host clock behind; the server's snapshot time kept): list, prune and latest order by the server time: prune kept {new} (awaiting_drill) and deleted nothing; `verify` of latest drilled {new}; the next prune deleted {verified}"
        ),
    );
    Ok(())
}

/// Scenario 35: `gc_grace` below its floor is refused, in the config and
/// on the command line, naming the field and the floor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_grace_below_its_floor_is_refused_naming_the_field_and_the_floor() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let repo = Repo::dir(tmp.path());
    let env = repo.env();
    std::fs::create_dir_all(tmp.path().join("repo"))?;
    let path = tmp.path().join("refugio.toml");
    std::fs::write(
        &path,
        format!(
            "{}\n[[jobs]]\nname = \"app\"\nsource = \"postgres://refugio@127.0.0.1:1/app\"\nretention = {{ keep_last = 1, gc_grace = \"30m\" }}\n",
            repo.toml()
        ),
    )?;
    let cfg = path.to_str().unwrap_or_default();
    let out = refugio(&["--config", cfg, "prune"], &env);
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(2), "a usage error: {text}");
    assert!(
        text.contains("retention: gc_grace: 30m is below its floor of 1h"),
        "{text}"
    );
    let url = format!("file://{}", tmp.path().join("repo").display());
    let out = refugio(
        &[
            "prune",
            "--repository",
            &url,
            "--job",
            "app",
            "--keep-last",
            "1",
            "--gc-grace",
            "10m",
        ],
        &env,
    );
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("gc_grace: 10m is below its floor of 1h"),
        "{text}"
    );
    observed(
        35,
        "gc_grace = \"30m\" in the config and --gc-grace 10m on the command line: prune exits 2 with `retention: gc_grace: 30m is below its floor of 1h` (and 10m); nothing is pruned",
    );
    Ok(())
}

/// 480 rows of 64 KiB of random bytes: about 30 MiB that zstd cannot
/// shrink, 30 s of upload at 1 MiB/s.
const NOISE: &str = "CREATE TABLE noise AS
SELECT g AS id,
       (SELECT string_agg(uuid_send(gen_random_uuid()), ''::bytea)
          FROM generate_series(1, 4096) WHERE g > 0) AS blob
FROM generate_series(1, 480) AS g";

const DIGEST: &str =
    "SELECT count(*) || ':' || md5(string_agg(blob, ''::bytea ORDER BY id)) FROM noise";

/// Scenario 36: a slow backup to S3 (moto, Garage) and a prune
/// at the `gc_grace` floor, judging two hours later (a fixed clock), run
/// together: the backup's claim and multipart upload are "old", yet the
/// claim beats, so GC leaves them alone; the backup commits whole.
#[rstest::rstest]
#[case::moto(false)]
#[case::garage(true)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prune_at_the_floor_beside_a_slow_backup_leaves_it_whole(
    #[case] on_garage: bool,
) -> Result<()> {
    let store = if on_garage {
        s3::garage()?
    } else {
        s3::moto()?
    };
    let tmp = tempfile::tempdir()?;
    let repo = Repo::s3(store.clone(), "gc-running");
    let env = repo.env();
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    src.psql("app", NOISE).await?;
    let path = tmp.path().join("refugio.toml");
    std::fs::write(
        &path,
        format!(
            "{}upload_rate_limit = \"1MiB/s\"\npart_size = \"5MiB\"\n\n[[jobs]]\n{}",
            repo.toml(),
            job(
                "app",
                &src,
                "app",
                "retention = { keep_last = 1, gc_grace = \"1h\" }\n"
            )
        ),
    )?;
    let cfg = path.to_str().unwrap_or_default();
    let mut backup = refugio_command(&["--config", cfg, "backup"], &env)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let prefix = prefix_of(&repo);
    wait_until(
        "the backup's multipart upload",
        Duration::from_secs(60),
        || Ok(multipart_uploads_left(&store, &prefix)? >= 1),
    )?;
    // Two hours on, the claim and the upload are an hour past gc_grace.
    // (The prune called in-process with a fixed clock.)
    let later = chrono::Utc::now() + chrono::Duration::hours(2);
    let t0 = Instant::now();
    let report = Value::Array(vec![prune_ok_at(&path, &repo, false, later).await?]);
    let pruned_in = t0.elapsed();
    let report = &report[0];
    anyhow::ensure!(
        backup.try_wait()?.is_none(),
        "the backup finished before the prune did: this test proves nothing ({report})"
    );
    assert_eq!(report["orphans"], serde_json::json!([]), "{report}");
    assert_eq!(report["stale_uploads"], serde_json::json!([]), "{report}");
    let running = report["running"].as_array().map(Vec::len);
    assert_eq!(running, Some(1), "{report}");
    assert!(
        multipart_uploads_left(&store, &prefix)? >= 1,
        "the upload goes on"
    );

    let out = backup.wait_with_output()?;
    let text = all_output(&out);
    assert!(out.status.success(), "the backup commits: {text}");
    let backups = list(&path, &env)?;
    assert_eq!(backups.len(), 1);
    let id = backups[0]["backup_id"].as_str().context("id")?.to_string();
    assert_eq!(report["running"], serde_json::json!([id]), "{report}");
    let checked = refugio(&["--config", cfg, "check"], &env);
    assert_eq!(checked.status.code(), Some(0), "{}", all_output(&checked));
    let dst = Cluster::start(16).await?;
    let (target, bindir) = (dst.url("app"), dst.bindir().display().to_string());
    refugio_ok(
        &[
            "--config",
            cfg,
            "restore",
            "--backup",
            "latest",
            "--target",
            &target,
            "--create",
            "--pg-bindir",
            &bindir,
        ],
        &env,
    )?;
    let digest = src.psql("app", DIGEST).await?;
    assert_eq!(dst.psql("app", DIGEST).await?, digest);
    // Once committed its claim is gone: the next prune, as late, finds no
    // garbage and nothing running.
    let after = Value::Array(vec![prune_ok_at(&path, &repo, false, later).await?]);
    assert_eq!(after[0]["orphans"], serde_json::json!([]), "{after}");
    assert_eq!(after[0]["running"], Value::Null, "{after}");
    assert_eq!(multipart_uploads_left(&store, &prefix)?, 0);
    let note = format!(
        "prune at now + 2h with gc_grace = 1h (the floor) during a 1 MiB/s backup of ~30 MiB to {}: took {:.1} s, running = [{id}], 0 orphans, 0 stale uploads; the backup went on, committed, `check` clean, restored identical ({digest})",
        if on_garage { "Garage" } else { "moto" },
        pruned_in.as_secs_f64()
    );
    observed(36, &note);
    Ok(())
}
