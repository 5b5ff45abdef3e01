//! Every process refugio starts gets a cleared environment and an
//! allow-list: a drill of a backup whose restore runs a program on the
//! drill's server (`COPY … TO PROGRAM`, what a hostile archive's SQL can
//! do as the drill's superuser) and restore tools that record what they
//! were given find none of refugio's secrets.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};
use refugio_testkit::Cluster;
use serde_json::Value;

use crate::common::*;

/// Secrets in refugio's environment, by name and value.
const SECRETS: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "AKIDREFUGIOCHILDENV"),
    ("AWS_SECRET_ACCESS_KEY", "aws-secret-refugio-child-env"),
    ("PGPASSWORD", "pg-secret-refugio-child-env"),
    (
        "CREDENTIALS_DIRECTORY",
        "/run/credentials/refugio-child-env",
    ),
    ("REFUGIO_X", "refugio-x-child-env"),
];

/// A bin directory of links to `real`'s programs, with `pg_restore` and
/// `psql` replaced by scripts that write their environment to
/// `seen/<tool>.<pid>.env` before running the real tool.
fn recording_bindir(real: &Path, dir: &Path, seen: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for e in std::fs::read_dir(real)? {
        let e = e?;
        let name = e.file_name();
        let n = name.to_string_lossy();
        if n == "pg_restore" || n == "psql" {
            let script = format!(
                "#!/bin/sh\nenv > {}/{n}.$$.env\nexec {} \"$@\"\n",
                seen.display(),
                e.path().display()
            );
            let path = dir.join(&name);
            std::fs::write(&path, script)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        } else {
            std::os::unix::fs::symlink(e.path(), dir.join(&name))?;
        }
    }
    Ok(())
}

fn assert_no_secret(what: &str, env: &str) {
    for (name, value) in SECRETS {
        assert!(
            !env.contains(value) && !env.lines().any(|l| l.starts_with(&format!("{name}="))),
            "{what} was given {name}:\n{env}"
        );
    }
    assert!(
        !env.lines().any(|l| l.starts_with("REFUGIO_")),
        "{what} was given a REFUGIO_ variable:\n{env}"
    );
}

/// Fault scenario 37.
#[tokio::test(flavor = "multi_thread")]
async fn a_drills_server_and_tools_get_none_of_refugios_secrets() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))?;
    let seen = tmp.path().join("seen");
    std::fs::create_dir(&seen)?;
    // The drill's server may run as uid 65534.
    std::fs::set_permissions(&seen, std::fs::Permissions::from_mode(0o777))?;
    let server_env = seen.join("server.env");
    let server_uid = seen.join("server.uid");

    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    // A CHECK constraint calling a function that runs a program: loading
    // the table's data runs it on the drill's server, in pg_restore's
    // superuser session.
    let program = format!(
        "env > {} ; id -u > {}",
        server_env.display(),
        server_uid.display()
    );
    let literal = format!("'{}'", program.replace('\'', "''"));
    src.psql(
        "app",
        &format!(
            "CREATE FUNCTION public.leak(int) RETURNS boolean LANGUAGE plpgsql AS $f$\n\
             BEGIN EXECUTE format('COPY (SELECT 1) TO PROGRAM %L', {literal}); RETURN true; END\n\
             $f$;\n\
             CREATE TABLE t (a int CHECK (public.leak(a)));\n\
             INSERT INTO t VALUES (1);\n"
        ),
    )
    .await?;
    // Written by the source's own insert: not what is under test.
    let _ = std::fs::remove_file(&server_env);
    let _ = std::fs::remove_file(&server_uid);

    let repo = Repo::dir(tmp.path());
    let config = write_config(
        tmp.path(),
        &repo,
        &job("app", &src, "app", "scratch = \"ephemeral\"\n"),
    );
    let cfg = config.to_str().unwrap_or_default();
    let bindir = tmp.path().join("bin");
    recording_bindir(src.bindir(), &bindir, &seen)?;
    let env: Vec<(String, String)> = SECRETS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    refugio_ok(&["--config", cfg, "backup"], &[])?;
    let bin = bindir.display().to_string();
    let out = refugio(
        &["--config", cfg, "verify", "--json", "--pg-bindir", &bin],
        &env,
    );
    let text = all_output(&out);
    let r: Value = serde_json::from_slice(&out.stdout).with_context(|| text.clone())?;
    assert_eq!(r["outcome"], "passed", "{r}\n{text}");

    let server = std::fs::read_to_string(&server_env)
        .with_context(|| format!("the restore ran no program on the drill's server: {text}"))?;
    assert_no_secret("the drill's server (COPY TO PROGRAM)", &server);
    // (postgres itself unsets LC_ALL and sets each LC_* it uses.)
    assert!(
        server.lines().any(|l| l == "LANG=C") && server.lines().any(|l| l == "LC_MESSAGES=C"),
        "C locale for the server:\n{server}"
    );
    assert!(
        server
            .lines()
            .any(|l| l.starts_with("HOME=") && l.contains("refugio-drill-")),
        "the server's HOME is its cluster directory:\n{server}"
    );
    let uid = std::fs::read_to_string(&server_uid)?.trim().to_string();
    if nix::unistd::geteuid().is_root() {
        assert_eq!(uid, "65534", "as root the drill's server runs as nobody");
    }

    let mut tools = Vec::new();
    for e in std::fs::read_dir(&seen)? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if let Some(tool) = name.split('.').next().filter(|t| *t != "server") {
            let env = std::fs::read_to_string(seen.join(&name))?;
            assert_no_secret(&name, &env);
            assert!(
                env.lines().any(|l| l == "LC_ALL=C"),
                "{name}: C locale:\n{env}"
            );
            tools.push(tool.to_string());
        }
    }
    tools.sort();
    tools.dedup();
    assert_eq!(
        tools,
        ["pg_restore", "psql"],
        "both restore tools ran and recorded their environment"
    );
    observed(
        37,
        &format!(
            "refugio ran with AWS keys, PGPASSWORD, CREDENTIALS_DIRECTORY and REFUGIO_X set: the drill passed; the program its restore ran on the drill's server (uid {uid}) and every pg_restore/psql run saw none of them, LC_ALL=C"
        ),
    );
    Ok(())
}
