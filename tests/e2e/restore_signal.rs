//! `[jobs.restore_on_signal]`: SIGUSR2 drills, then restores the newest
//! verified backup into the target (a staging database), logged, counted
//! and reported to the webhook like other tasks.

use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::Signal;
use refugio_testkit::Cluster;
use serde_json::Value;

use crate::agent_signals::webhook_receiver;
use crate::common::*;

fn restore_events(bodies: &std::sync::Mutex<Vec<String>>) -> Vec<Value> {
    bodies
        .lock()
        .expect("lock")
        .iter()
        .filter_map(|b| serde_json::from_str::<Value>(b).ok())
        .filter(|v| v["task"] == "restore")
        .collect()
}

#[rstest::rstest]
#[case::directory(false)]
#[case::garage(true)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_drills_then_restores_the_newest_verified_backup_into_the_target(
    #[case] garage: bool,
) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let repo = match garage {
        false => Repo::dir(tmp.path()),
        true => Repo::s3(refugio_testkit::s3::garage()?, "usr2"),
    };
    let env = repo.env();
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    src.psql(
        "app",
        "CREATE TABLE trips (id int PRIMARY KEY, km int); \
         INSERT INTO trips SELECT g, g * 3 FROM generate_series(1, 250) g;",
    )
    .await?;
    let staging = Cluster::start(16).await?;
    staging.create_database("trips_staging").await?;
    staging
        .psql(
            "trips_staging",
            "CREATE TABLE trips (id int PRIMARY KEY, km int); INSERT INTO trips VALUES (1, 0);",
        )
        .await?;
    let (hook_port, bodies) = webhook_receiver()?;
    let port = free_port()?;
    let app = job(
        "app",
        &src,
        "app",
        &format!(
            "globals = false\nscratch = {:?}\n\
             [jobs.restore_on_signal]\ntarget = {:?}\nclean = true\n\
             [jobs.schedule]\nbackup = \"0 0 1 1 *\"\ncatch_up = false\n",
            src.url("postgres"),
            staging.url("trips_staging")
        ),
    );
    let config = agent_config(
        tmp.path(),
        &repo,
        port,
        &format!("webhook = {{ url = \"http://127.0.0.1:{hook_port}/hook\", attempts = 3, timeout = \"5s\" }}"),
        &[app],
    );
    let agent = Agent::start(&config, &env, port, tmp.path().join("agent.log"))?;

    // Nothing verified yet: the drill has nothing to drill and the restore
    // fails, as a task: logged, counted, reported.
    agent.signal(Signal::SIGUSR2)?;
    wait_until("a failed restore", Duration::from_secs(30), || {
        Ok(
            agent.metric("refugio_restore_runs_total{backup_job=\"app\",result=\"failure\"}")?
                == Some(1.0),
        )
    })
    .with_context(|| agent.log_text())?;
    wait_until(
        "the restore's failure webhook",
        Duration::from_secs(30),
        || {
            Ok(restore_events(&bodies)
                .iter()
                .any(|e| e["event"] == "failure"))
        },
    )
    .with_context(|| agent.log_text())?;
    let failure = restore_events(&bodies)
        .into_iter()
        .find(|e| e["event"] == "failure")
        .context("failure event")?;
    assert!(
        failure["error"]
            .as_str()
            .is_some_and(|e| e.contains("no verified backup")),
        "{failure}"
    );
    assert_eq!(
        staging
            .psql("trips_staging", "SELECT count(*) FROM trips")
            .await?,
        "1",
        "the target is untouched"
    );

    // A backup, then USR2: a drill verifies it, then it is restored.
    agent.signal(Signal::SIGUSR1)?;
    wait_until("a backup", Duration::from_secs(30), || {
        Ok(backups(&config, &env)?.len() == 1)
    })
    .with_context(|| agent.log_text())?;
    agent.signal(Signal::SIGUSR2)?;
    wait_until("a restore", Duration::from_secs(60), || {
        Ok(
            agent.metric("refugio_restore_runs_total{backup_job=\"app\",result=\"success\"}")?
                == Some(1.0),
        )
    })
    .with_context(|| agent.log_text())?;
    let m = &backups(&config, &env)?[0];
    assert_eq!(m["verification"]["verified"], true, "drilled first: {m}");
    assert_eq!(
        staging
            .psql(
                "trips_staging",
                "SELECT count(*) || ':' || sum(km) FROM trips"
            )
            .await?,
        src.psql("app", "SELECT count(*) || ':' || sum(km) FROM trips")
            .await?,
        "the staging database holds the backup's rows"
    );
    wait_until(
        "the restore's recovery webhook",
        Duration::from_secs(30),
        || {
            Ok(restore_events(&bodies)
                .iter()
                .any(|e| e["event"] == "recovery"))
        },
    )
    .with_context(|| agent.log_text())?;
    let log = agent.log_text();
    assert!(
        log.contains("restore-started") && log.contains("restore-finished"),
        "{log}"
    );
    assert!(agent.stop(Duration::from_secs(30))?.success());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_target_that_is_the_jobs_own_source_is_refused_at_load() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let repo = Repo::dir(tmp.path());
    let src = Cluster::start(16).await?;
    let body = job(
        "app",
        &src,
        "app",
        &format!(
            "[jobs.restore_on_signal]\ntarget = {:?}\nclean = true\n",
            src.url("app")
        ),
    );
    let config = write_config(tmp.path(), &repo, &body);
    let out = refugio(
        &["--config", config.to_str().unwrap_or_default(), "list"],
        &[],
    );
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("restore_on_signal") && text.contains("own source"),
        "{text}"
    );
    Ok(())
}
