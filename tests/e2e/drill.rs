//! Restore drills (`refugio verify`) against real clusters: a scratch
//! server, receipts in the repository, failures named, nothing left behind.

use anyhow::{Context, Result};
use refugio_testkit::{s3, Cluster, SlowProxy, Slowdown};
use rstest::rstest;
use serde_json::Value;

use crate::common::*;

struct Setup {
    tmp: tempfile::TempDir,
    _src: Cluster,
    scratch: Cluster,
    config: std::path::PathBuf,
    manifest: Value,
}

/// A backed-up sample database and a scratch server; `extra` goes into the job.
async fn setup(major: u32, extra: &str) -> Result<Setup> {
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(major).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_sample(&src, "app").await?;
    let scratch = Cluster::start(major).await?;
    let repo = Repo::dir(tmp.path());
    let job_extra = format!("scratch = {:?}\n{extra}", scratch.url("postgres"));
    let config = write_config(tmp.path(), &repo, &job("app", &src, "app", &job_extra));
    refugio_ok(
        &["--config", config.to_str().unwrap_or_default(), "backup"],
        &[],
    )?;
    let manifest = list(&config, &[])?.into_iter().next().context("manifest")?;
    Ok(Setup {
        tmp,
        _src: src,
        scratch,
        config,
        manifest,
    })
}

impl Setup {
    fn verify(&self, extra: &[&str]) -> std::process::Output {
        let bindir = self.scratch.bindir().display().to_string();
        let mut args = vec![
            "--config",
            self.config.to_str().unwrap_or_default(),
            "verify",
            "--json",
            "--pg-bindir",
            &bindir,
        ];
        args.extend_from_slice(extra);
        refugio(&args, &[])
    }

    fn backup_dir(&self) -> std::path::PathBuf {
        self.tmp
            .path()
            .join("repo/app")
            .join(self.manifest["backup_id"].as_str().unwrap_or("?"))
    }

    fn receipts(&self) -> Vec<Value> {
        files_under(&self.backup_dir())
            .into_iter()
            .filter(|f| f.starts_with("verify-"))
            .filter_map(|f| std::fs::read(self.backup_dir().join(f)).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect()
    }

    async fn drill_databases(&self) -> Result<String> {
        self.scratch.psql("postgres", "SELECT string_agg(datname, ',') FROM pg_database WHERE datname LIKE 'refugio_drill_%'").await
    }
}

#[rstest]
#[case::pg15(15)]
#[case::pg16(16)]
#[case::pg17(17)]
#[case::pg18(18)]
#[tokio::test(flavor = "multi_thread")]
async fn a_good_backup_passes_its_drill(#[case] major: u32) -> Result<()> {
    let s = setup(
        major,
        "checks = [\"SELECT count(*) > 0 FROM trips\"]\ntargets = { rpo = \"6h\", rto = \"2h\" }\n",
    )
    .await?;
    let out = s.verify(&[]);
    let text = all_output(&out);
    assert!(out.status.success(), "{text}");
    let r: Value = serde_json::from_slice(&out.stdout).context("receipt JSON")?;
    assert_eq!(r["passed"], true);
    assert_eq!(r["verified"], true);
    assert_eq!(
        r["counts"].as_array().map(Vec::len),
        s.manifest["tables"].as_array().map(Vec::len)
    );
    assert!(r["counts"].as_array().is_some_and(|c| c
        .iter()
        .all(|c| c["ok"] == true && c["expected"] == c["actual"])));
    let art = s.manifest["artifacts"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["kind"] == "database"))
        .context("artifact")?;
    assert_eq!(r["digests_checked"][0][1], art["sha256"]);
    let fingerprints = (
        r["schema_fingerprint"][0].as_str().unwrap_or_default(),
        r["schema_fingerprint"][1].as_str().unwrap_or_default(),
    );
    assert!(
        fingerprints.0.len() >= 64 && fingerprints.0 == fingerprints.1,
        "the source's and the restored copy's fingerprints, present and equal: {fingerprints:?}"
    );
    assert_eq!(r["checks"][0]["ok"], true);
    assert_eq!(r["rto"]["met"], true);
    assert_eq!(r["rpo"]["met"], true);
    assert!(r["scratch_server_version"]
        .as_str()
        .is_some_and(|v| v.starts_with(&major.to_string())));
    // The receipt is in the repository, beside the manifest, identical.
    let stored = s.receipts();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0], r);
    // list shows the backup as verified, with its RTO.
    let l = list(&s.config, &[])?;
    assert_eq!(l[0]["verification"]["verified"], true, "{}", l[0]);
    assert!(l[0]["verification"]["rto_seconds"].as_f64().is_some());
    assert_eq!(s.drill_databases().await?, "", "scratch database dropped");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flipped_byte_fails_at_fetch_and_restores_nothing() -> Result<()> {
    let s = setup(16, "").await?;
    let art = s.backup_dir().join("database.dump.zst");
    let mut bytes = std::fs::read(&art)?;
    let i = bytes.len() / 3;
    bytes[i] ^= 0x40;
    std::fs::write(&art, bytes)?;
    let out = s.verify(&[]);
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let r: Value = serde_json::from_slice(&out.stdout).context("receipt JSON")?;
    let failures = r["failures"].to_string();
    assert!(
        failures.contains("SHA-256") && failures.contains("database.dump.zst"),
        "{failures}"
    );
    assert_eq!(
        r["counts"].as_array().map(Vec::len),
        Some(0),
        "nothing was checked: nothing restored"
    );
    assert_eq!(s.drill_databases().await?, "");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_data_loss_in_the_manifest_fails_the_count_check() -> Result<()> {
    let s = setup(16, "").await?;
    let path = s.backup_dir().join("manifest.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    let tables = m["tables"].as_array_mut().context("tables")?;
    let trips = tables
        .iter_mut()
        .find(|t| t["name"] == "trips")
        .context("trips")?;
    trips["rows"] = 121.into();
    std::fs::write(&path, serde_json::to_vec_pretty(&m)?)?;
    let out = s.verify(&[]);
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("table public.trips: expected 121 rows (manifest), restored 120"),
        "{text}"
    );
    assert_eq!(s.drill_databases().await?, "");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_sql_check_is_named() -> Result<()> {
    let s = setup(
        16,
        "checks = [\"SELECT count(*) > 0 FROM trips\", \"SELECT count(*) > 1000000 FROM trips\"]\n",
    )
    .await?;
    let out = s.verify(&[]);
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let r: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(r["checks"][0]["ok"], true);
    assert_eq!(r["checks"][1]["ok"], false);
    assert!(
        r["failures"]
            .to_string()
            .contains("SELECT count(*) > 1000000 FROM trips"),
        "{r}"
    );
    assert_eq!(r["verified"], false);
    Ok(())
}

#[rstest]
#[case::impossible("1ms", false)]
#[case::generous("2h", true)]
#[tokio::test(flavor = "multi_thread")]
async fn rto_target_is_measured(#[case] rto: &str, #[case] met: bool) -> Result<()> {
    let s = setup(16, &format!("targets = {{ rto = {rto:?} }}\n")).await?;
    let out = s.verify(&[]);
    let text = all_output(&out);
    let r: Value = serde_json::from_slice(&out.stdout).with_context(|| text.clone())?;
    assert_eq!(r["rto"]["met"], met, "{r}");
    assert!(r["rto"]["measured_seconds"]
        .as_f64()
        .is_some_and(|s| s > 0.0));
    assert_eq!(out.status.success(), met, "{text}");
    if !met {
        assert!(text.contains("RTO target missed"), "{text}");
        assert_eq!(r["verified"], true, "the backup itself is fine");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn leftovers_of_a_crashed_drill_are_dropped() -> Result<()> {
    let s = setup(16, "").await?;
    s.scratch
        .create_database("refugio_drill_20200101t000000z")
        .await?;
    let out = s.verify(&[]);
    assert!(out.status.success(), "{}", all_output(&out));
    assert_eq!(s.drill_databases().await?, "");
    Ok(())
}

/// A TMPDIR of the test's own for refugio, where its ephemeral clusters
/// live (0755: a drill's server may run as another user).
fn private_tmp() -> Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("refugio-test-tmp-")
        .tempdir_in("/tmp")?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    Ok(dir)
}

/// The drill cluster directories under `root`.
fn drill_dirs(root: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(root)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("refugio-drill-"))
                .collect()
        })
        .unwrap_or_default()
}

#[rstest]
#[case::pg15(15)]
#[case::pg16(16)]
#[tokio::test(flavor = "multi_thread")]
async fn an_ephemeral_cluster_restores_roles_and_is_removed(#[case] major: u32) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(major).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_sample(&src, "app").await?;
    let repo = Repo::dir(tmp.path());
    let extra = "scratch = \"ephemeral\"\nchecks = [\"SELECT tableowner = 'trip_owner' FROM pg_tables WHERE tablename = 'trips'\"]\n";
    let config = write_config(tmp.path(), &repo, &job("app", &src, "app", extra));
    let cfg = config.to_str().unwrap_or_default();
    refugio_ok(&["--config", cfg, "backup"], &[])?;
    let bindir = src.bindir().display().to_string();
    // refugio's TMPDIR is the test's own: the drill's cluster directory is
    // seen there while it runs, and must be gone after.
    let tmpdir = private_tmp()?;
    let verify = refugio_command(
        &["--config", cfg, "verify", "--json", "--pg-bindir", &bindir],
        &[("TMPDIR".into(), tmpdir.path().display().to_string())],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()?;
    let waiting = std::thread::spawn(move || verify.wait_with_output());
    let mut seen = Vec::new();
    while !waiting.is_finished() {
        for d in drill_dirs(tmpdir.path()) {
            if !seen.contains(&d) {
                seen.push(d);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let out = waiting
        .join()
        .map_err(|_| anyhow::anyhow!("the waiting thread panicked"))??;
    let text = all_output(&out);
    assert!(out.status.success(), "{text}");
    let r: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(r["scratch_kind"], "ephemeral");
    assert_eq!(
        r["checks"][0]["ok"], true,
        "ownership restored with the roles: {r}"
    );
    assert!(r["scratch_server_version"]
        .as_str()
        .is_some_and(|v| v.starts_with(&major.to_string())));
    // The drill's cluster directory was there while it ran, and is gone.
    assert_eq!(seen.len(), 1, "one drill cluster directory: {seen:?}");
    assert_eq!(
        drill_dirs(tmpdir.path()),
        Vec::<String>::new(),
        "the drill's cluster directory was left behind"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_drills_cluster_directory_is_removed_by_the_next() -> Result<()> {
    // A leftover as a crashed drill leaves it: owner process gone.
    let dead = std::process::Command::new("true").spawn()?;
    let dead_pid = dead.id();
    let mut dead = dead;
    dead.wait()?;
    let leftover = std::env::temp_dir().join("refugio-drill-crashedtest");
    std::fs::create_dir_all(leftover.join("data"))?;
    std::fs::write(leftover.join("refugio-owner.pid"), dead_pid.to_string())?;
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_sample(&src, "app").await?;
    let repo = Repo::dir(tmp.path());
    let config = write_config(
        tmp.path(),
        &repo,
        &job("app", &src, "app", "scratch = \"ephemeral\"\n"),
    );
    let cfg = config.to_str().unwrap_or_default();
    refugio_ok(&["--config", cfg, "backup"], &[])?;
    let bindir = src.bindir().display().to_string();
    refugio_ok(&["--config", cfg, "verify", "--pg-bindir", &bindir], &[])?;
    assert!(!leftover.exists(), "leftover removed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn rpo_and_largest_gap_come_from_verified_backups_snapshot_times() -> Result<()> {
    let s = setup(16, "targets = { rpo = \"2h\" }\n").await?;
    let cfg = s.config.to_str().unwrap_or_default();
    refugio_ok(&["--config", cfg, "backup"], &[])?;
    refugio_ok(&["--config", cfg, "backup"], &[])?;
    let mut ids: Vec<String> = list(&s.config, &[])?
        .iter()
        .filter_map(|m| m["backup_id"].as_str().map(str::to_string))
        .collect();
    ids.sort();
    assert_eq!(ids.len(), 3);
    // Space the snapshots: 13 h, 7 h and 1 h ago (a 6 h schedule).
    let now = chrono::Utc::now();
    for (id, hours_ago) in ids.iter().zip([13, 7, 1]) {
        let path = s.tmp.path().join("repo/app").join(id).join("manifest.json");
        let mut m: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
        let at = now - chrono::Duration::hours(hours_ago);
        m["snapshot_at"] = serde_json::to_value(at)?;
        std::fs::write(&path, serde_json::to_vec_pretty(&m)?)?;
    }
    let bindir = s.scratch.bindir().display().to_string();
    let mut last = Value::Null;
    for id in &ids {
        let out = refugio(
            &[
                "--config",
                cfg,
                "verify",
                "--json",
                "--pg-bindir",
                &bindir,
                "--backup",
                id,
            ],
            &[],
        );
        last = serde_json::from_slice(&out.stdout).with_context(|| all_output(&out))?;
    }
    let rpo = &last["rpo_detail"];
    assert_eq!(rpo["verified_backups"], 3, "{last}");
    assert_eq!(
        rpo["largest_gap_seconds"].as_f64(),
        Some(21600.0),
        "6 h between verified snapshots"
    );
    assert_eq!(
        rpo["newest_verified"].as_str(),
        ids.last().map(String::as_str)
    );
    let secs = rpo["seconds"].as_f64().context("rpo seconds")?;
    assert!(
        (3600.0..3600.0 + 300.0).contains(&secs),
        "RPO ≈ 1 h: {secs}"
    );
    assert_eq!(last["rpo"]["met"], true, "1 h < 2 h target");
    // Without a passing drill of the newest, the recovery point is the 7 h old one.
    let newest = ids.last().context("id")?;
    let art = s
        .tmp
        .path()
        .join("repo/app")
        .join(newest)
        .join("database.dump.zst");
    let mut bytes = std::fs::read(&art)?;
    bytes[10] ^= 1;
    std::fs::write(&art, bytes)?;
    for f in files_under(&s.tmp.path().join("repo/app").join(newest)) {
        if f.starts_with("verify-") {
            std::fs::remove_file(s.tmp.path().join("repo/app").join(newest).join(f))?;
        }
    }
    let out = refugio(
        &[
            "--config",
            cfg,
            "verify",
            "--json",
            "--pg-bindir",
            &bindir,
            "--backup",
            newest,
        ],
        &[],
    );
    let r: Value = serde_json::from_slice(&out.stdout).with_context(|| all_output(&out))?;
    assert_eq!(r["verified"], false);
    assert_eq!(
        r["rpo_detail"]["newest_verified"].as_str(),
        Some(ids[1].as_str())
    );
    assert_eq!(r["rpo"]["met"], false, "7 h > 2 h target: {r}");
    assert!(all_output(&out).contains("RPO target missed"));
    Ok(())
}

#[rstest]
#[case::server(false)]
#[case::ephemeral(true)]
#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_during_a_drill_removes_the_scratch(#[case] ephemeral: bool) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_bulk(&src, "app", 100_000).await?;
    let scratch = Cluster::start(16).await?;
    // Slow by construction, not by row volume: the drill reads the backup
    // through a proxy that, once the backup is stored, passes 256 KiB/s.
    // pg_restore cannot finish before the whole dump (about 8 MiB) has
    // arrived, as its last chunk is held back until then, so it is still
    // restoring when SIGINT lands, on any machine.
    let proxy = SlowProxy::start(&s3::moto()?, Slowdown::NONE)?;
    let repo = Repo::s3(proxy.target(), "drill-sigint");
    let env = repo.env();
    let target = if ephemeral {
        "ephemeral".to_string()
    } else {
        scratch.url("postgres")
    };
    let config = write_config(
        tmp.path(),
        &repo,
        &job(
            "app",
            &src,
            "app",
            &format!("scratch = {target:?}\nglobals = false\n"),
        ),
    );
    let cfg = config.to_str().unwrap_or_default();
    refugio_ok(&["--config", cfg, "backup"], &env)?;
    proxy.set(Slowdown::rate(256 * 1024));
    let bindir = src.bindir().display().to_string();
    let tmpdir = private_tmp()?;
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_refugio"))
        .args(["--config", cfg, "verify", "--pg-bindir", &bindir])
        .env_remove("REFUGIO_CONFIG")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("TMPDIR", tmpdir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    // Wait until the restore is under way: pg_restore is a child of refugio.
    wait_for_restore(child.id())?;
    assert_eq!(
        drill_dirs(tmpdir.path()).len(),
        usize::from(ephemeral),
        "the drill's cluster directory while it restores"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )?;
    let out = child.wait_with_output()?;
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("drill cancelled"), "{text}");
    let left = scratch
        .psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'refugio_drill_%'",
        )
        .await?;
    assert_eq!(left, "0");
    assert_eq!(
        drill_dirs(tmpdir.path()),
        Vec::<String>::new(),
        "the interrupted drill's cluster directory remains"
    );
    Ok(())
}
