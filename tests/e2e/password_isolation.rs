//! A password goes only to the server it belongs to. The source's password
//! is given the usual way, `PGPASSWORD` in refugio's environment; a scratch
//! server and a restore target ask for a clear-text password (`pg_hba`
//! method `password`) behind a [`PgFront`], which records the bytes every
//! client sends. Without credentials of their own they get none (the drill
//! cannot start, the restore fails: nothing is sent but an empty answer);
//! with their own password file they get that one; the source's password
//! is in no byte sent to them either way.

use anyhow::Result;
use refugio_testkit::{Cluster, PgFront, PASSWORD_USER, PASSWORD_USER_PASSWORD};

use crate::common::*;

/// The scratch server's own role and password.
const SCRATCH_USER: &str = "drill_user";
const SCRATCH_PASSWORD: &str = "scratch-only-Pw";

/// A scratch server whose role [`SCRATCH_USER`] authenticates with a
/// clear-text password (`password` over its socket, which the front
/// reaches).
async fn cleartext_scratch() -> Result<Cluster> {
    let scratch = Cluster::start(16).await?;
    scratch
        .psql(
            "postgres",
            &format!("CREATE ROLE {SCRATCH_USER} LOGIN CREATEDB PASSWORD '{SCRATCH_PASSWORD}'"),
        )
        .await?;
    let hba = scratch.data_dir().join("pg_hba.conf");
    let rest = std::fs::read_to_string(&hba)?;
    std::fs::write(&hba, format!("local all {SCRATCH_USER} password\n{rest}"))?;
    scratch.psql("postgres", "SELECT pg_reload_conf()").await?;
    Ok(scratch)
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scratch_server_or_target_never_receives_the_source_password() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let repo = Repo::dir(tmp.path());
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    src.psql(
        "app",
        &format!(
            "CREATE TABLE trips (id int PRIMARY KEY, km int); \
             INSERT INTO trips SELECT g, g FROM generate_series(1, 100) g; \
             GRANT SELECT ON trips TO {PASSWORD_USER};"
        ),
    )
    .await?;
    let scratch = cleartext_scratch().await?;
    let front = PgFront::start(&scratch)?;
    let pwfile = tmp.path().join("scratch-pw");
    std::fs::write(&pwfile, format!("{SCRATCH_PASSWORD}\n"))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pwfile, std::fs::Permissions::from_mode(0o600))?;
    }
    // The source's password, the way the docs offer: PGPASSWORD.
    let mut env = repo.env();
    env.push(("PGPASSWORD".into(), PASSWORD_USER_PASSWORD.into()));
    let write = |scratch_password_file: &str| {
        write_config(
            tmp.path(),
            &repo,
            &format!(
                "name = \"app\"\nsource = {:?}\npg_bindir = {:?}\nglobals = false\n\
                 scratch = {:?}\n{scratch_password_file}",
                src.url_as(PASSWORD_USER, None, "app"),
                src.bindir().display().to_string(),
                front.url(SCRATCH_USER, "postgres"),
            ),
        )
        .display()
        .to_string()
    };
    let config = write("");
    // The source gets its password: the backup works.
    refugio_ok(&["--config", &config, "backup"], &env)?;

    // A drill into the scratch server, which has no password of its own
    // configured: it cannot log in, and the source's is not offered.
    let out = refugio(&["--config", &config, "verify"], &env);
    let text = all_output(&out);
    assert!(!out.status.success(), "{text}");
    assert!(!text.contains("the backup is bad"), "{text}");
    assert!(
        front.connections() > 0,
        "the drill reached the scratch server"
    );
    assert!(
        !contains(&front.all_sent(), PASSWORD_USER_PASSWORD),
        "the source's password was sent to the scratch server: {:?}",
        front
            .passwords_sent()
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect::<Vec<_>>()
    );
    assert!(
        front.passwords_sent().iter().all(|p| p.is_empty()),
        "only empty answers: {:?}",
        front.passwords_sent()
    );

    // A CLI restore into that server without its own password: the same.
    let target = front.url(SCRATCH_USER, "restored");
    let bindir = src.bindir().display().to_string();
    let restore = |extra: &[&str]| {
        let mut args = vec![
            "--config",
            config.as_str(),
            "restore",
            "--backup",
            "latest",
            "--target",
            target.as_str(),
            "--create",
            "--no-owner",
            "--pg-bindir",
            bindir.as_str(),
        ];
        args.extend_from_slice(extra);
        refugio(&args, &env)
    };
    let out = restore(&[]);
    assert!(!out.status.success(), "{}", all_output(&out));
    assert!(!contains(&front.all_sent(), PASSWORD_USER_PASSWORD));

    // With their own password files, each gets its own password: the
    // recording does hold what was sent.
    let pwfile_arg = pwfile.display().to_string();
    let out = restore(&["--target-password-file", &pwfile_arg]);
    assert!(out.status.success(), "{}", all_output(&out));
    assert_eq!(
        scratch
            .psql("restored", "SELECT count(*) FROM trips")
            .await?,
        "100"
    );
    let config = write(&format!("scratch_password_file = {pwfile_arg:?}\n"));
    let out = refugio(&["--config", &config, "verify"], &env);
    assert!(out.status.success(), "{}", all_output(&out));
    let sent = front.passwords_sent();
    assert!(
        sent.iter().any(|p| p == SCRATCH_PASSWORD.as_bytes()),
        "the scratch's own password went to it: {sent:?}"
    );
    assert!(
        !contains(&front.all_sent(), PASSWORD_USER_PASSWORD),
        "the source's password was sent to the scratch server"
    );
    observed(
        42,
        "a scratch server and a restore target asking for a clear-text password (recorded on the wire) never received the source's PGPASSWORD: without their own credentials they got an empty answer (drill not passed, restore failed), with their own password_file exactly that one",
    );
    Ok(())
}
