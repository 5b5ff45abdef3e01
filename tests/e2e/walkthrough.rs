//! docs/deploy.md's production walkthrough, as written: its `refugio.toml`
//! loads unchanged, and with the hosts, bucket and endpoint pointed at
//! test servers (a PostgreSQL 16 with TLS, as the walkthrough's
//! `sslmode = "require"` needs; Garage) `config check` passes.

use anyhow::{Context, Result};
use refugio_testkit::tls::{Ca, ServerTls};
use refugio_testkit::{s3, Cluster};

use crate::common::*;

const DEPLOY: &str = include_str!("../../docs/deploy.md");
const MARK: &str = "<!-- walkthrough-config: refugio.toml -->";

/// The walkthrough's config: the ```toml block after the marker.
fn walkthrough_config() -> Result<String> {
    let after = DEPLOY
        .split_once(MARK)
        .context("docs/deploy.md has no walkthrough config marker")?
        .1;
    let body = after
        .trim_start()
        .strip_prefix("```toml\n")
        .context("the marker is not followed by a ```toml block")?;
    let end = body.find("\n```").context("the toml block does not end")?;
    Ok(body[..end + 1].to_string())
}

#[test]
fn the_walkthrough_config_loads_as_written() -> Result<()> {
    let text = walkthrough_config()?;
    let cfg = refugio::config::Config::parse(&text, None)?;
    let names: Vec<&str> = cfg.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["trips", "pitr"]);
    assert_eq!(cfg.jobs[1].kind, refugio_core::JobKind::Physical);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_walkthrough_config_passes_config_check_against_test_servers() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let ca = Ca::new(&tmp.path().join("ca"), "ca")?;
    let tls = ServerTls {
        server: ca.server_cert("server")?,
        client_ca: None,
    };
    let mut pg = Cluster::start_tls(16, &tls).await?;
    pg.create_database("trips").await?;
    pg.psql(
        "postgres",
        "CREATE ROLE refugio LOGIN REPLICATION; GRANT pg_read_all_data TO refugio;",
    )
    .await?;
    pg.psql(
        "trips",
        "CREATE TABLE trips AS SELECT g AS id FROM generate_series(1, 10) g",
    )
    .await?;
    let store = s3::garage()?;
    let repo = Repo::s3(store.clone(), "walkthrough");
    let Repo::S3 { prefix, .. } = &repo else {
        unreachable!()
    };
    let host = format!("127.0.0.1:{}", pg.port());
    let text = walkthrough_config()?
        .replace("db-replica.internal:5432", &host)
        .replace("db-primary.internal:5432", &host)
        .replace(
            "url = \"s3://trips-backups/refugio\"\nregion = \"eu-west-1\"",
            &format!(
                "url = \"s3://{}/{prefix}\"\nregion = {:?}\nendpoint = {:?}\nforce_path_style = true",
                store.bucket, store.region, store.endpoint
            ),
        );
    anyhow::ensure!(
        !text.contains("trips-backups"),
        "the repository was not replaced:\n{text}"
    );
    let path = tmp.path().join("refugio.toml");
    std::fs::write(&path, &text)?;
    // Step 6 of the walkthrough: the primary archives with wal-push.
    pg.psql(
        "postgres",
        &format!(
            "ALTER SYSTEM SET archive_mode = 'on'; ALTER SYSTEM SET archive_command = '{} --config {} wal-push %p';",
            env!("CARGO_BIN_EXE_refugio"),
            path.display()
        ),
    )
    .await?;
    pg.restart().await?;
    // The walkthrough installs the client tools on the PATH.
    let mut env = repo.env();
    env.push((
        "PATH".into(),
        format!(
            "{}:{}",
            pg.bindir().display(),
            std::env::var("PATH").unwrap_or_default()
        ),
    ));
    let out = refugio(
        &[
            "--config",
            path.to_str().context("path")?,
            "config",
            "check",
        ],
        &env,
    );
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(!text.lines().any(|l| l.starts_with("FAIL")), "{text}");
    for line in [
        "ok   job trips targets: the schedule can meet them",
        "ok   job pitr physical: REPLICATION, wal_level = replica, archive_mode = on",
        "ok   job pitr archive_command:",
        "ok   job trips drills: ephemeral clusters with initdb and postgres 16.",
    ] {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }
    Ok(())
}
