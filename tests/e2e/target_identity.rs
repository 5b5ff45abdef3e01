//! Restore targets are identified by their cluster's `system_identifier`,
//! not by their URL: a job backs up a streaming replica (through its unix
//! socket), and its primary, the same cluster, is reached under another
//! name (TCP on 127.0.0.1, through a [`PgFront`]). `config check` reports
//! the `restore_on_signal` target as the source's cluster; the CLI restore
//! is refused before any database is created unless `--overwrite-source`;
//! `restore_on_signal` is refused whatever.

use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::Signal;
use refugio_testkit::{Cluster, PgFront};

use crate::common::*;

/// The databases of `cluster`, sorted, comma-separated.
async fn databases(cluster: &Cluster) -> Result<String> {
    cluster
        .psql(
            "postgres",
            "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database",
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_into_the_source_cluster_under_another_name_is_refused() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let repo = Repo::dir(tmp.path());
    let env = repo.env();
    let primary = Cluster::start(16).await?;
    primary.create_database("app").await?;
    primary
        .psql(
            "app",
            "CREATE TABLE trips (id int PRIMARY KEY, km int); \
             INSERT INTO trips SELECT g, g * 3 FROM generate_series(1, 250) g;",
        )
        .await?;
    let replica = Cluster::start_standby(&primary).await?;
    let scratch = Cluster::start(16).await?;
    // The primary under another name: 127.0.0.1:PORT, not a socket.
    let front = PgFront::start(&primary)?;
    let system_identifier = primary
        .psql(
            "postgres",
            "SELECT system_identifier FROM pg_control_system()",
        )
        .await?;
    assert_eq!(
        replica
            .psql(
                "postgres",
                "SELECT system_identifier FROM pg_control_system()"
            )
            .await?,
        system_identifier,
        "a streaming replica shares its primary's identifier"
    );
    let staging = front.url("postgres", "app_staging");
    let port = free_port()?;
    let body = job(
        "app",
        &replica,
        "app",
        &format!(
            "globals = false\nscratch = {:?}\n\
             [jobs.restore_on_signal]\ntarget = {staging:?}\nclean = true\n\
             [jobs.schedule]\nbackup = \"0 0 1 1 *\"\ncatch_up = false\n",
            scratch.url("postgres"),
        ),
    );
    let config = agent_config(tmp.path(), &repo, port, "", &[body]);
    let config_arg = config.display().to_string();
    let before = databases(&primary).await?;

    // config check asks the target who it is.
    let out = refugio(&["--config", &config_arg, "config", "check"], &env);
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("restore_on_signal target"))
        .with_context(|| format!("no restore_on_signal line: {text}"))?;
    assert!(line.starts_with("FAIL"), "{line}");
    for part in [
        system_identifier.as_str(),
        &format!("127.0.0.1:{}", front.port()),
        &replica.socket_dir().display().to_string(),
    ] {
        assert!(line.contains(part), "names {part}: {line}");
    }
    // A target that cannot be asked: not passed as fine.
    let unreachable = tmp.path().join("unreachable.toml");
    std::fs::write(
        &unreachable,
        std::fs::read_to_string(&config)?.replace(
            &staging,
            &format!(
                "postgres://postgres@127.0.0.1:{}/app_staging",
                refugio_testkit::dead_port()
            ),
        ),
    )?;
    let out = refugio(
        &[
            "--config",
            &unreachable.display().to_string(),
            "config",
            "check",
        ],
        &env,
    );
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("FAIL") && l.contains("could not check which cluster target")),
        "{text}"
    );

    // A backup of the replica, then a CLI restore into the primary under
    // its other name: refused before anything is created.
    refugio_ok(&["--config", &config_arg, "backup"], &env)?;
    let restored = front.url("postgres", "app_restored");
    let bindir = primary.bindir().display().to_string();
    let restore = |extra: &[&str]| {
        let mut args = vec![
            "--config",
            config_arg.as_str(),
            "restore",
            "--backup",
            "latest",
            "--target",
            restored.as_str(),
            "--create",
            "--pg-bindir",
            bindir.as_str(),
        ];
        args.extend_from_slice(extra);
        refugio(&args, &env)
    };
    let out = restore(&[]);
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for part in [
        system_identifier.as_str(),
        &restored,
        "--overwrite-source",
        "nothing was changed",
    ] {
        assert!(text.contains(part), "names {part}: {text}");
    }
    assert_eq!(
        databases(&primary).await?,
        before,
        "no database created on the source cluster"
    );

    // --overwrite-source: done, and said.
    let out = restore(&["--overwrite-source"]);
    let text = all_output(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("restore-overwrites-source") && text.contains(&system_identifier),
        "says what it replaces: {text}"
    );
    assert_eq!(
        primary
            .psql("app_restored", "SELECT count(*) FROM trips")
            .await?,
        "250"
    );
    let before = databases(&primary).await?;

    // restore_on_signal: the drill verifies the backup, the restore is
    // refused (no flag can allow it), the primary untouched.
    let agent = Agent::start(&config, &env, port, tmp.path().join("agent.log"))?;
    agent.signal(Signal::SIGUSR2)?;
    wait_until("a refused restore", Duration::from_secs(60), || {
        Ok(
            agent.metric("refugio_restore_runs_total{backup_job=\"app\",result=\"failure\"}")?
                == Some(1.0),
        )
    })
    .with_context(|| agent.log_text())?;
    let log = agent.log_text();
    assert!(
        log.contains("restore_on_signal never restores into its job's source cluster")
            && log.contains(&system_identifier),
        "{log}"
    );
    let m = &backups(&config, &env)?[0];
    assert_eq!(m["verification"]["verified"], true, "drilled first: {m}");
    assert_eq!(databases(&primary).await?, before, "the primary untouched");
    assert!(agent.stop(Duration::from_secs(30))?.success());
    observed(
        41,
        "restore into the source cluster under another name (replica as source over its socket, its primary as target on 127.0.0.1): config check FAILs naming both URLs and the system identifier; CLI restore refused before any CREATE DATABASE unless --overwrite-source; restore_on_signal refused, primary untouched",
    );
    Ok(())
}
