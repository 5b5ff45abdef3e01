//! Backup → restore into a fresh cluster → identical schema, counts equal
//! to the manifest, on PG 15 and 16, to a directory, moto and Garage.

use anyhow::{Context, Result};
use refugio_testkit::{s3, Cluster};
use rstest::rstest;

use crate::common::*;

#[derive(Debug, Clone, Copy)]
enum Backend {
    Dir,
    Moto,
    Garage,
}

fn repo_for(backend: Backend, tmp: &std::path::Path, name: &str) -> Result<Repo> {
    Ok(match backend {
        Backend::Dir => Repo::dir(tmp),
        Backend::Moto => Repo::s3(s3::moto()?, name),
        Backend::Garage => Repo::s3(s3::garage()?, name),
    })
}

async fn round_trip(
    major: u32,
    backend: Backend,
    job_extra: &str,
    restore_extra: &[&str],
) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let repo = repo_for(backend, tmp.path(), &format!("rt{major}"))?;
    let env = repo.env();
    let src = Cluster::start(major).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_sample(&src, "app").await?;
    let config = write_config(tmp.path(), &repo, &job("app", &src, "app", job_extra));
    let cfg = config.to_str().unwrap_or_default();

    let out = refugio_ok(&["--config", cfg, "backup"], &env)?;
    assert!(out.contains("committed"), "{out}");
    let manifests = list(&config, &env)?;
    assert_eq!(manifests.len(), 1, "one committed backup");
    let m = &manifests[0];
    assert_eq!(m["format"], refugio_store::manifest::FORMAT);
    assert!(
        m["schema_fingerprint"]
            .as_str()
            .is_some_and(|f| f.len() == 64),
        "{m}"
    );
    assert_eq!(m["database"], "app");
    assert_eq!(
        m["server"]["version_num"].as_u64().map(|v| v / 10000),
        Some(u64::from(major))
    );
    // Who compressed the dump: refugio on the stream by default; pg_dump
    // inside the archive with archive_compression, when it is 16 or later
    // (an older one falls back to the stream).
    let dump = &m["artifacts"][0];
    let in_archive = job_extra.contains("archive_compression = true");
    if job_extra.is_empty() || in_archive {
        let expected = if in_archive && major >= 16 {
            serde_json::json!(["database.dump", "none", "zstd:3"])
        } else {
            serde_json::json!(["database.dump.zst", "zstd", null])
        };
        assert_eq!(
            serde_json::json!([
                dump["name"],
                dump["compression"],
                dump["archive_compression"]
            ]),
            expected,
            "pg_dump {major}: {dump}"
        );
    }
    let source_counts = row_counts(&src, "app").await?;
    assert_eq!(
        manifest_counts(m),
        source_counts,
        "manifest counts = source counts"
    );
    assert!(
        m["large_objects"].as_i64().unwrap_or(0) > 0,
        "sample has large objects"
    );

    // Text listing names the backup too.
    let text = refugio_ok(&["--config", cfg, "list"], &env)?;
    assert!(
        text.contains(m["backup_id"].as_str().unwrap_or("?")),
        "{text}"
    );

    let dst = Cluster::start(major).await?;
    let target = dst.url("app");
    let bindir = dst.bindir().display().to_string();
    let mut args = vec![
        "--config",
        cfg,
        "restore",
        "--backup",
        "latest",
        "--target",
        &target,
        "--create",
        "--globals",
        "--pg-bindir",
        &bindir,
    ];
    args.extend_from_slice(restore_extra);
    refugio_ok(&args, &env)?;

    assert_eq!(
        src.schema_dump("app").await?,
        dst.schema_dump("app").await?,
        "schemas identical"
    );
    assert_eq!(
        row_counts(&dst, "app").await?,
        manifest_counts(m),
        "restored counts = manifest"
    );
    // The schema fingerprint taken in the snapshot matches the restored schema.
    let mut conn = refugio_dump::SourceSpec::new(&dst.url("app"), None, None)?
        .connect()
        .await?;
    let (restored_fp, objects) = refugio_dump::fingerprint::schema_fingerprint(&mut conn).await?;
    assert!(
        objects > 20,
        "the listing covers the sample's objects: {objects}"
    );
    assert_eq!(
        m["schema_fingerprint_v2"].as_str(),
        Some(restored_fp.as_str()),
        "schema fingerprint"
    );
    // Content, not only counts: every table's rows (bytea, non-ASCII
    // names and all) and every large object, digest for digest.
    let (before, after) = (
        content_digests(&src, "app").await?,
        content_digests(&dst, "app").await?,
    );
    assert!(
        before.len() > 3,
        "the sample's tables and large objects are digested: {before:?}"
    );
    assert_eq!(before, after, "restored content = source content");
    let lo_sql = "SELECT count(*) FROM pg_largeobject_metadata";
    assert_eq!(
        src.psql("app", lo_sql).await?,
        dst.psql("app", lo_sql).await?,
        "large objects restored"
    );
    let owner = dst
        .psql(
            "app",
            "SELECT tableowner FROM pg_tables WHERE tablename = 'trips'",
        )
        .await?;
    assert_eq!(
        owner.trim(),
        "trip_owner",
        "ownership restored with the role from globals"
    );
    Ok(())
}

#[rstest]
#[case::pg15_dir(15, Backend::Dir)]
#[case::pg16_dir(16, Backend::Dir)]
#[case::pg17_dir(17, Backend::Dir)]
#[case::pg18_dir(18, Backend::Dir)]
#[case::pg15_moto(15, Backend::Moto)]
#[case::pg16_moto(16, Backend::Moto)]
#[case::pg15_garage(15, Backend::Garage)]
#[case::pg16_garage(16, Backend::Garage)]
#[tokio::test(flavor = "multi_thread")]
async fn backup_and_restore_identically(
    #[case] major: u32,
    #[case] backend: Backend,
) -> Result<()> {
    round_trip(major, backend, "", &[]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_gzip_round_trip() -> Result<()> {
    round_trip(
        16,
        Backend::Dir,
        "format = \"plain\"\ncompression = \"gzip\"\n",
        &[],
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn parallel_restore_from_a_temporary_file() -> Result<()> {
    round_trip(16, Backend::Moto, "", &["--jobs", "2"]).await
}

/// `archive_compression`: pg_dump 16 compresses inside the archive;
/// refugio restores it streamed and with `--jobs 2` (its temporary file
/// stays compressed); pg_dump 15 cannot, and the stream is compressed.
#[rstest]
#[case::pg16_garage_streamed(16, Backend::Garage, &[])]
#[case::pg16_dir_jobs(16, Backend::Dir, &["--jobs", "2"])]
#[case::pg15_falls_back(15, Backend::Dir, &[])]
#[tokio::test(flavor = "multi_thread")]
async fn archive_compression_round_trip(
    #[case] major: u32,
    #[case] backend: Backend,
    #[case] restore_extra: &[&str],
) -> Result<()> {
    round_trip(
        major,
        backend,
        "archive_compression = true\n",
        restore_extra,
    )
    .await
}

/// The stock-tool path of an `archive_compression` backup: the stored
/// `database.dump` is checked with `sha256sum` and restored by a bare
/// `pg_restore -j 2` (docs/runbook-restore.md).
#[tokio::test(flavor = "multi_thread")]
async fn a_bare_pg_restore_reads_an_archive_pg_dump_compressed() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let repo = Repo::dir(tmp.path());
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_sample(&src, "app").await?;
    let config = write_config(
        tmp.path(),
        &repo,
        &job(
            "app",
            &src,
            "app",
            "archive_compression = true\nglobals = false\n",
        ),
    );
    let cfg = config.to_str().unwrap_or_default();
    refugio_ok(&["--config", cfg, "backup"], &[])?;
    let m = list(&config, &[])?.into_iter().next().context("manifest")?;
    let art = &m["artifacts"][0];
    assert_eq!(art["archive_compression"], "zstd:3", "{art}");
    let Repo::Dir(root) = &repo else {
        anyhow::bail!("a directory repository")
    };
    let file = root.join(format!(
        "app/{}/{}",
        m["backup_id"].as_str().context("id")?,
        art["name"].as_str().context("name")?
    ));
    let digest = std::process::Command::new("sha256sum")
        .arg(&file)
        .output()?;
    assert!(
        String::from_utf8_lossy(&digest.stdout).starts_with(art["sha256"].as_str().unwrap_or("?")),
        "sha256sum of the stored file = the manifest's"
    );
    let dst = Cluster::start(16).await?;
    dst.create_database("app").await?;
    let out = std::process::Command::new(dst.bindir().join("pg_restore"))
        .args(["-j", "2", "--no-owner", "--exit-on-error", "-d"])
        .arg(dst.url("app"))
        .arg(&file)
        .output()?;
    assert!(out.status.success(), "{}", all_output(&out));
    assert_eq!(row_counts(&dst, "app").await?, manifest_counts(&m));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn zero_config_backup_writes_to_the_default_directory() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(16).await?;
    src.create_database("trips").await?;
    refugio_testkit::sample::load_sample(&src, "trips").await?;
    let url = src.url("trips");
    // The binary's cwd is the temp dir: ./refugio-backups lands there.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_refugio"))
        .args(["backup", "--source", &url])
        .env_remove("REFUGIO_CONFIG")
        .env(
            "PATH",
            format!(
                "{}:{}",
                src.bindir().display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .current_dir(tmp.path())
        .output()?;
    assert!(out.status.success(), "{}", all_output(&out));
    let files = files_under(&tmp.path().join("refugio-backups"));
    assert!(
        files
            .iter()
            .any(|f| f.starts_with("trips/") && f.ends_with("/manifest.json")),
        "{files:?}"
    );
    assert!(
        files.iter().any(|f| f.ends_with("/database.dump.zst")),
        "{files:?}"
    );
    assert!(
        files.iter().any(|f| f.ends_with("/globals.sql.zst")),
        "{files:?}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_refugio"))
        .args(["list", "--json"])
        .env_remove("REFUGIO_CONFIG")
        .current_dir(tmp.path())
        .output()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v.as_array().map(Vec::len), Some(1));
    assert_eq!(v[0]["job"], "trips");

    // `refugio verify` needs no config either (issue 12's zero-config
    // parity): the repository's one job, an ephemeral scratch cluster.
    let bindir = src.bindir().display().to_string();
    let verify = |extra: &[&str]| -> Result<std::process::Output> {
        let mut args = vec!["verify", "--json", "--pg-bindir", bindir.as_str()];
        args.extend_from_slice(extra);
        Ok(std::process::Command::new(env!("CARGO_BIN_EXE_refugio"))
            .args(&args)
            .env_remove("REFUGIO_CONFIG")
            .current_dir(tmp.path())
            .output()?)
    };
    let out = verify(&[])?;
    let r: serde_json::Value =
        serde_json::from_slice(&out.stdout).with_context(|| all_output(&out))?;
    assert_eq!(r["outcome"], "passed", "{r}");
    assert_eq!(r["scratch_kind"], "ephemeral", "{r}");
    assert_eq!(r["job"], "trips", "{r}");
    assert!(out.status.success(), "{}", all_output(&out));

    // With two jobs in the repository, --job picks; without it, a usage
    // error names them.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_refugio"))
        .args(["backup", "--source", &src.url("postgres")])
        .env_remove("REFUGIO_CONFIG")
        .env(
            "PATH",
            format!(
                "{}:{}",
                src.bindir().display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .current_dir(tmp.path())
        .output()?;
    assert!(out.status.success(), "{}", all_output(&out));
    let out = verify(&[])?;
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("postgres") && text.contains("trips") && text.contains("--job"),
        "{text}"
    );
    let out = verify(&["--job", "trips"])?;
    assert!(out.status.success(), "{}", all_output(&out));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_from_a_streaming_standby_records_replay_facts() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let primary = Cluster::start(16).await?;
    primary.create_database("app").await?;
    refugio_testkit::sample::load_sample(&primary, "app").await?;
    let standby = Cluster::start_standby(&primary).await?;
    assert_eq!(
        standby
            .psql("postgres", "SELECT pg_is_in_recovery()")
            .await?,
        "t"
    );
    let repo = Repo::dir(tmp.path());
    let config = write_config(tmp.path(), &repo, &job("app", &standby, "app", ""));
    let cfg = config.to_str().unwrap_or_default();
    refugio_ok(&["--config", cfg, "backup"], &[])?;
    let m = list(&config, &[])?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no manifest"))?;
    assert_eq!(m["server"]["in_recovery"], true, "{m}");
    assert!(
        m["server"]["lsn"].as_str().is_some_and(|l| l.contains('/')),
        "replay LSN: {m}"
    );
    assert_eq!(manifest_counts(&m), row_counts(&primary, "app").await?);

    let dst = Cluster::start(16).await?;
    let target = dst.url("app");
    let bindir = dst.bindir().display().to_string();
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
            "--globals",
            "--pg-bindir",
            &bindir,
        ],
        &[],
    )?;
    assert_eq!(row_counts(&dst, "app").await?, manifest_counts(&m));
    assert_eq!(
        primary.schema_dump("app").await?,
        dst.schema_dump("app").await?
    );
    Ok(())
}
