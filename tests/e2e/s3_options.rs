//! `[repository]` S3 options of issue 12: `storage_class` (artifacts only;
//! an archived backup restores with a clear error and drills inconclusive)
//! and `ca_file` (an HTTPS endpoint signed by a private CA, here testkit's
//! TLS proxy in front of the S3 test servers).

use anyhow::{Context, Result};
use futures::TryStreamExt;
use refugio_store::ObjectStore;
use refugio_testkit::s3::{self, S3Target};
use refugio_testkit::{Ca, Cluster, TlsProxy};
use rstest::rstest;
use serde_json::Value;

use crate::common::*;

/// Every object under `prefix` with its storage class as HeadObject
/// reports it (`None`: the default, STANDARD).
async fn storage_classes(target: &S3Target, prefix: &str) -> Result<Vec<(String, Option<String>)>> {
    let opts = refugio_store::S3Options {
        region: Some(target.region.clone()),
        endpoint: Some(target.endpoint.clone()),
        force_path_style: true,
        static_credentials: Some((target.access_key.clone(), target.secret_key.clone())),
        ..Default::default()
    };
    let store = refugio_store::s3::S3Store::new(&target.bucket, prefix, &opts).await?;
    let objects: Vec<refugio_store::ObjectMeta> = store.list("").try_collect().await?;
    let mut out = Vec::new();
    for object in objects {
        let head = store
            .client()
            .head_object()
            .bucket(store.bucket())
            .key(store.full_key(&object.key))
            .send()
            .await
            .with_context(|| format!("HeadObject {}", object.key))?;
        out.push((
            object.key,
            head.storage_class().map(|c| c.as_str().to_string()),
        ));
    }
    Ok(out)
}

fn repo_with(repo: &Repo, extra: &str) -> String {
    format!("{}{extra}", repo.toml())
}

fn write(dir: &std::path::Path, repository: &str, job: &str) -> std::path::PathBuf {
    let path = dir.join("refugio.toml");
    std::fs::write(&path, format!("{repository}\n[[jobs]]\n{job}\n")).expect("writing config");
    path
}

/// Artifacts (a multipart dump and a single-PUT globals file) go up in
/// the configured class; the manifest stays STANDARD. On Garage, which
/// has no storage classes, the header is accepted and the backup works
/// the same. Either way the backup restores identically.
#[rstest]
#[case::moto(s3::S3Kind::Moto)]
#[case::garage(s3::S3Kind::Garage)]
#[tokio::test(flavor = "multi_thread")]
async fn storage_class_applies_to_artifacts_not_manifests(#[case] kind: s3::S3Kind) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let target = match kind {
        s3::S3Kind::Moto => s3::moto()?,
        s3::S3Kind::Garage => s3::garage()?,
    };
    let repo = Repo::s3(target.clone(), "storage-class");
    let Repo::S3 { prefix, .. } = &repo else {
        unreachable!()
    };
    let env = repo.env();
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::load_sample(&src, "app").await?;
    // About 8 MiB after zstd: a multipart upload of 5 MiB parts.
    refugio_testkit::load_bulk(&src, "app", 100_000).await?;
    let config = write(
        tmp.path(),
        &repo_with(
            &repo,
            "storage_class = \"STANDARD_IA\"\npart_size = \"5MiB\"\n",
        ),
        &job("app", &src, "app", ""),
    );
    let cfg = config.to_str().unwrap_or_default();
    refugio_ok(&["--config", cfg, "backup"], &env)?;

    let classes = storage_classes(&target, prefix).await?;
    let class_of = |suffix: &str| {
        classes
            .iter()
            .find(|(k, _)| k.ends_with(suffix))
            .map(|(_, c)| c.clone())
            .with_context(|| format!("no {suffix} in {classes:?}"))
    };
    let manifest = class_of("/manifest.json")?;
    assert!(
        manifest.is_none() || manifest.as_deref() == Some("STANDARD"),
        "manifests stay STANDARD: {classes:?}"
    );
    if kind == s3::S3Kind::Moto {
        assert_eq!(
            class_of("/database.dump.zst")?.as_deref(),
            Some("STANDARD_IA"),
            "{classes:?}"
        );
        assert_eq!(
            class_of("/globals.sql.zst")?.as_deref(),
            Some("STANDARD_IA"),
            "{classes:?}"
        );
    }
    let m = &list(&config, &env)?[0];
    let dump = m["artifacts"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["kind"] == "database"))
        .context("database artifact")?;
    assert!(
        dump["stored_size"].as_u64().unwrap_or(0) > 5 << 20,
        "the dump went up in parts: {dump}"
    );

    let dst = Cluster::start(16).await?;
    let (target_url, bindir) = (dst.url("app"), dst.bindir().display().to_string());
    refugio_ok(
        &[
            "--config",
            cfg,
            "restore",
            "--backup",
            "latest",
            "--target",
            &target_url,
            "--create",
            "--globals",
            "--pg-bindir",
            &bindir,
        ],
        &env,
    )?;
    assert_eq!(row_counts(&dst, "app").await?, manifest_counts(m));
    Ok(())
}

/// In GLACIER (moto answers GetObject with InvalidObjectState until the
/// object is restored): `list` works (the manifest is STANDARD), a restore
/// fails before touching anything and says which key, which class and
/// that it must be thawed first; a drill is inconclusive, never failed.
#[tokio::test(flavor = "multi_thread")]
async fn an_archived_backup_needs_a_thaw_and_its_drill_is_inconclusive() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let target = s3::moto()?;
    let repo = Repo::s3(target.clone(), "glacier");
    let Repo::S3 { prefix, .. } = &repo else {
        unreachable!()
    };
    let env = repo.env();
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::load_sample(&src, "app").await?;
    let scratch = Cluster::start(16).await?;
    let config = write(
        tmp.path(),
        &repo_with(&repo, "storage_class = \"GLACIER\"\n"),
        &job(
            "app",
            &src,
            "app",
            &format!("scratch = {:?}\n", scratch.url("postgres")),
        ),
    );
    let cfg = config.to_str().unwrap_or_default();
    let out = refugio(&["--config", cfg, "backup"], &env);
    let text = all_output(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("storage-class-archive"),
        "warned at start: {text}"
    );
    let classes = storage_classes(&target, prefix).await?;
    assert!(
        classes
            .iter()
            .any(|(k, c)| k.ends_with("/database.dump.zst") && c.as_deref() == Some("GLACIER")),
        "{classes:?}"
    );
    assert_eq!(
        list(&config, &env)?.len(),
        1,
        "listing reads STANDARD manifests"
    );

    let dst = Cluster::start(16).await?;
    let (target_url, bindir) = (dst.url("app"), dst.bindir().display().to_string());
    let out = refugio(
        &[
            "--config",
            cfg,
            "restore",
            "--backup",
            "latest",
            "--target",
            &target_url,
            "--create",
            "--pg-bindir",
            &bindir,
        ],
        &env,
    );
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for needle in [
        "database.dump.zst",
        "storage class GLACIER",
        "restored (thawed)",
        "aws s3api restore-object",
    ] {
        assert!(
            text.contains(needle),
            "restore should say {needle:?}: {text}"
        );
    }
    assert!(!text.contains("retrying"), "not worth a retry: {text}");

    let out = refugio(
        &["--config", cfg, "verify", "--json", "--pg-bindir", &bindir],
        &env,
    );
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(3), "{text}");
    let receipt: Value = serde_json::from_slice(&out.stdout).with_context(|| text.clone())?;
    assert_eq!(receipt["outcome"], "inconclusive", "{receipt}");
    assert!(
        receipt["failures"].to_string().contains("GLACIER"),
        "{receipt}"
    );
    let keys: Vec<String> = storage_classes(&target, prefix)
        .await?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert!(
        keys.iter().any(|k| k.ends_with("-inconclusive.json")),
        "{keys:?}"
    );
    assert!(
        !keys.iter().any(|k| k.ends_with("-failed.json")),
        "never failed: {keys:?}"
    );
    Ok(())
}

/// An HTTPS endpoint whose certificate a private CA signed: with `ca_file`
/// the backup and the restore work through it; without, every command
/// fails at once (not retried) with a certificate error that points at
/// `ca_file`, and the store is never reached.
#[rstest]
#[case::moto(s3::S3Kind::Moto)]
#[case::garage(s3::S3Kind::Garage)]
#[tokio::test(flavor = "multi_thread")]
async fn ca_file_trusts_a_private_endpoint(#[case] kind: s3::S3Kind) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let plain = match kind {
        s3::S3Kind::Moto => s3::moto()?,
        s3::S3Kind::Garage => s3::garage()?,
    };
    let ca = Ca::new(&tmp.path().join("pki"), "private-ca")?;
    let proxy = TlsProxy::start(&plain.endpoint, &ca.server_cert("s3")?)?;
    let target = S3Target {
        endpoint: proxy.endpoint(),
        ..plain.clone()
    };
    let repo = Repo::s3(target, "ca-file");
    let env = repo.env();
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::load_sample(&src, "app").await?;
    let job = job("app", &src, "app", "");

    // Without ca_file: refused, clearly, at once.
    let config = write(tmp.path(), &repo.toml(), &job);
    let cfg = config.to_str().unwrap_or_default();
    let out = refugio(&["--config", cfg, "backup"], &env);
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for needle in [
        "did not verify",
        "repository.ca_file",
        "UnknownIssuer",
        proxy.endpoint().as_str(),
    ] {
        assert!(
            text.contains(needle),
            "backup should say {needle:?}: {text}"
        );
    }
    assert!(
        !text.contains("retrying") && !text.contains("store-retry"),
        "not retried: {text}"
    );
    // The proxy counts the refused handshake on its own thread, maybe
    // after refugio has exited: wait for it.
    wait_until(
        "the proxy to count the refused handshake",
        std::time::Duration::from_secs(10),
        || Ok(proxy.refused() >= 1),
    )
    .with_context(|| format!("{proxy:?}"))?;
    assert_eq!(proxy.accepted(), 0, "{proxy:?}");
    let out = refugio(&["--config", cfg, "config", "check"], &env);
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL") && text.contains("did not verify"),
        "{text}"
    );

    // With it: through TLS, end to end.
    write(
        tmp.path(),
        &repo_with(
            &repo,
            &format!("ca_file = {:?}\n", ca.cert.display().to_string()),
        ),
        &job,
    );
    refugio_ok(&["--config", cfg, "backup"], &env)?;
    assert!(proxy.accepted() >= 1, "{proxy:?}");
    let m = &list(&config, &env)?[0];
    let dst = Cluster::start(16).await?;
    let (target_url, bindir) = (dst.url("app"), dst.bindir().display().to_string());
    refugio_ok(
        &[
            "--config",
            cfg,
            "restore",
            "--backup",
            "latest",
            "--target",
            &target_url,
            "--create",
            "--globals",
            "--pg-bindir",
            &bindir,
        ],
        &env,
    )?;
    assert_eq!(row_counts(&dst, "app").await?, manifest_counts(m));

    // A ca_file that holds no certificate is named.
    let bogus = tmp.path().join("bogus.pem");
    std::fs::write(&bogus, "not a certificate\n")?;
    write(
        tmp.path(),
        &repo_with(
            &repo,
            &format!("ca_file = {:?}\n", bogus.display().to_string()),
        ),
        &job,
    );
    let out = refugio(&["--config", cfg, "list"], &env);
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("repository.ca_file {}", bogus.display())),
        "{text}"
    );
    assert!(text.contains("holds no certificate"), "{text}");
    Ok(())
}
