//! `refugio status` against a real backup and drill: exit 1 while a target
//! is missed, 0 once met; the same from `--repository` alone; a job that
//! is nowhere is bad usage.

use anyhow::{Context, Result};
use refugio_testkit::Cluster;
use serde_json::Value;

use crate::common::*;

fn status(args: &[&str], env: &[(String, String)]) -> Result<(i32, String)> {
    let out = refugio(args, env);
    let code = out.status.code().context("killed")?;
    Ok((
        code,
        String::from_utf8_lossy(&out.stdout).into_owned() + &all_output(&out),
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn status_judges_each_job_against_its_targets() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let repo = Repo::dir(tmp.path());
    let env = repo.env();
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_sample(&src, "app").await?;
    let extra = format!(
        "scratch = {:?}\nglobals = false\ntargets = {{ rpo = \"1h\", rto = \"1h\" }}\n",
        src.url("postgres")
    );
    let config = write_config(tmp.path(), &repo, &job("app", &src, "app", &extra));
    let cfg = config.to_str().context("path")?;

    // Nothing backed up: the RPO target cannot be met.
    std::fs::create_dir_all(tmp.path().join("repo"))?;
    let (code, text) = status(&["--config", cfg, "status"], &env)?;
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("TARGET MISSED") && text.contains("last backup    none"),
        "{text}"
    );

    refugio_ok(&["--config", cfg, "backup"], &env)?;
    // Backed up, not drilled: still nothing verified.
    let (code, text) = status(&["--config", cfg, "status"], &env)?;
    assert_eq!(code, 1, "{text}");
    let bindir = src.bindir().display().to_string();
    refugio_ok(&["--config", cfg, "verify", "--pg-bindir", &bindir], &env)?;
    let id = list(&config, &env)?[0]["backup_id"]
        .as_str()
        .context("id")?
        .to_string();

    let (code, out) = status(&["--config", cfg, "status", "--json"], &env)?;
    assert_eq!(code, 0, "{out}");
    let json = refugio_ok(&["--config", cfg, "status", "--json"], &env)?;
    let v: Value = serde_json::from_str(&json)?;
    let r = &v[0];
    assert_eq!(r["job"], "app");
    assert_eq!(r["kind"], "logical");
    assert_eq!(r["backups"], 1);
    assert_eq!(r["last_backup"]["id"], id.as_str());
    assert_eq!(r["newest_verified"], id.as_str());
    assert_eq!(r["rpo"]["met"], true, "{r}");
    assert_eq!(r["rpo"]["target_seconds"], 3600.0);
    assert_eq!(r["last_drill"]["outcome"], "passed", "{r}");
    assert_eq!(r["rto"]["met"], true, "{r}");
    let (code, text) = status(&["--config", cfg, "status"], &env)?;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains(&format!("verified       {id}")), "{text}");
    assert!(text.contains("(target 1h: met)"), "{text}");

    // No config: the repository's jobs, no targets.
    let Repo::Dir(dir) = &repo else {
        unreachable!()
    };
    let url = format!("file://{}", dir.display());
    let json = refugio_ok(&["status", "--repository", &url, "--json"], &env)?;
    let v: Value = serde_json::from_str(&json)?;
    assert_eq!(v[0]["kind"], "logical", "{v}");
    assert_eq!(v[0]["newest_verified"], id.as_str());
    assert_eq!(v[0]["rpo"]["met"], Value::Null);

    let (code, text) = status(&["--config", cfg, "status", "--job", "nope"], &env)?;
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("job nope"), "{text}");
    Ok(())
}

/// A six-hourly schedule cannot meet a six-hour RPO: `config check` warns
/// and names a schedule that would (a warning, not a failure).
#[tokio::test(flavor = "multi_thread")]
async fn config_check_warns_of_a_target_the_schedule_cannot_meet() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let repo = Repo::dir(tmp.path());
    let env = repo.env();
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    let body = |schedule: &str| {
        job(
            "app",
            &src,
            "app",
            &format!(
                "scratch = \"ephemeral\"\ntargets = {{ rpo = \"6h\", rto = \"2h\" }}\n[jobs.schedule]\nbackup = {schedule:?}\ndrill_after_backup = true\n"
            ),
        )
    };
    std::fs::create_dir_all(tmp.path().join("repo"))?;
    let config = write_config(tmp.path(), &repo, &body("0 */6 * * *"));
    let cfg = config.to_str().context("path")?;
    let text = refugio_ok(&["--config", cfg, "config", "check"], &env)?;
    let warning = text
        .lines()
        .find(|l| l.starts_with("warn job app targets:"))
        .with_context(|| text.clone())?;
    assert!(
        warning.contains("missed every cycle") && warning.contains("\"0 */4 * * *\""),
        "{warning}"
    );
    let json: Value = serde_json::from_str(&refugio_ok(
        &["--config", cfg, "config", "check", "--json"],
        &env,
    )?)?;
    let w = json
        .as_array()
        .and_then(|a| a.iter().find(|c| c["what"] == "job app targets"))
        .context("targets check")?;
    assert_eq!(
        (w["ok"].clone(), w["warning"].clone()),
        (Value::Bool(true), Value::Bool(true))
    );

    // The schedule it names meets the target.
    let config = write_config(tmp.path(), &repo, &body("0 */4 * * *"));
    let text = refugio_ok(
        &[
            "--config",
            config.to_str().context("path")?,
            "config",
            "check",
        ],
        &env,
    )?;
    assert!(
        text.contains("ok   job app targets: the schedule can meet them"),
        "{text}"
    );
    Ok(())
}
