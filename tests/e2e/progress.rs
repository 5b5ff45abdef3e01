//! The progress display: drawn on a terminal (stderr a tty, here util-linux
//! `script`'s pseudo-terminal), never into a pipe or a log, never with
//! `--quiet`.

use std::process::Command;

use anyhow::{Context, Result};
use refugio_testkit::Cluster;

use crate::common::*;

/// Runs refugio under a pseudo-terminal; returns what the terminal showed.
fn on_a_terminal(args: &[&str], env: &[(String, String)]) -> Result<(bool, String)> {
    let bin = env!("CARGO_BIN_EXE_refugio");
    let quoted: Vec<String> = std::iter::once(bin)
        .chain(args.iter().copied())
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect();
    let out = Command::new("script")
        .args(["-q", "-e", "-c", &quoted.join(" "), "/dev/null"])
        .env_remove("REFUGIO_CONFIG")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("REFUGIO_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .context("running util-linux script (Debian package util-linux)")?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

#[rstest::rstest]
#[case::directory(false)]
#[case::garage(true)]
#[tokio::test(flavor = "multi_thread")]
async fn progress_is_drawn_on_a_terminal_only_and_not_with_quiet(
    #[case] garage: bool,
) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    // Enough rows for the dump to take a few ticks of the display.
    refugio_testkit::sample::load_bulk(&src, "app", 400_000).await?;
    let repo = match garage {
        false => Repo::dir(tmp.path()),
        true => Repo::s3(refugio_testkit::s3::garage()?, "progress"),
    };
    let env = repo.env();
    let config = write_config(
        tmp.path(),
        &repo,
        &job("app", &src, "app", "globals = false\n"),
    );
    let cfg = config.to_str().unwrap_or_default();

    let (ok, shown) = on_a_terminal(&["--config", cfg, "backup"], &env)?;
    assert!(ok, "{shown}");
    assert!(
        shown.contains("from pg_dump") && shown.contains("stored") && shown.contains("dumping app"),
        "the terminal shows phase and bytes: {shown}"
    );
    let (ok, quiet) = on_a_terminal(&["--config", cfg, "--quiet", "backup"], &env)?;
    assert!(ok, "{quiet}");
    assert!(!quiet.contains("from pg_dump"), "--quiet: {quiet}");
    assert!(quiet.contains("committed"), "{quiet}");

    // Not a terminal: nothing but the result and the logs.
    let out = refugio(&["--config", cfg, "backup"], &env);
    let text = all_output(&out);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("from pg_dump"), "{text}");

    let dst = Cluster::start(16).await?;
    let bindir = src.bindir().display().to_string();
    let target = dst.url("app");
    let (ok, shown) = on_a_terminal(
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
    assert!(ok, "{shown}");
    assert!(
        shown.contains("restoring app") && shown.contains("fetched") && shown.contains('%'),
        "{shown}"
    );

    // A drill shows its restore.
    let scratch = dst.url("postgres");
    let (ok, shown) = on_a_terminal(
        &[
            "--config",
            cfg,
            "verify",
            "--scratch",
            &scratch,
            "--pg-bindir",
            &bindir,
        ],
        &env,
    )?;
    assert!(ok, "{shown}");
    assert!(
        shown.contains("restored") && shown.contains("PASSED"),
        "{shown}"
    );

    // check --read-data shows what it reads (from Garage: a directory's
    // 90 MiB are read before the display's first tick); --quiet does not.
    let (ok, shown) = on_a_terminal(&["--config", cfg, "check", "--read-data"], &env)?;
    assert!(ok, "{shown}");
    assert!(
        !garage || shown.contains("artifacts of job app"),
        "the terminal shows the read: {shown}"
    );
    let (ok, quiet) = on_a_terminal(&["--config", cfg, "--quiet", "check", "--read-data"], &env)?;
    assert!(ok, "{quiet}");
    assert!(!quiet.contains("artifacts of job app"), "--quiet: {quiet}");
    Ok(())
}
