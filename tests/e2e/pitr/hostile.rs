//! A physical job's repository is untrusted input, and a restored clone
//! stays out of production (issue 25): a drill neutralises the source's
//! recovery commands; `restore --physical` writes `archive_mode = off`
//! unless `--keep-archiving`; a base tar whose `recovery.signal` and
//! `postgresql.auto.conf` are symbolic links out of the target is refused
//! by name (nothing is written through them) and its drill is
//! inconclusive, never failed.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use refugio_dump::Compression;
use refugio_store::repo::Repository;
use refugio_store::ObjectStore;
use refugio_testkit::{s3, Cluster};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use super::*;

async fn read_all(store: &dyn ObjectStore, key: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    store
        .get(key)
        .await?
        .read_to_end(&mut out)
        .await
        .with_context(|| format!("reading {key}"))?;
    Ok(out)
}

async fn coded(data: Vec<u8>, compression: Compression, encode: bool) -> Result<Vec<u8>> {
    let input = std::io::Cursor::new(data);
    let mut reader = if encode {
        compression.encoder(input, None)
    } else {
        compression.decoder(input)
    };
    let mut out = Vec::new();
    reader.read_to_end(&mut out).await?;
    Ok(out)
}

/// The base tar with `postgresql.auto.conf` and a `recovery.signal`
/// replaced by symbolic links to `outside`, in `postgresql.auto.conf`'s
/// place; every other entry as it was.
fn with_links_out(tar_bytes: &[u8], outside: &Path) -> Result<Vec<u8>> {
    let mut archive = tar::Archive::new(tar_bytes);
    let mut out = tar::Builder::new(Vec::new());
    let mut replaced = false;
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        if path == Path::new("postgresql.auto.conf") {
            for name in ["postgresql.auto.conf", "recovery.signal"] {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                h.set_mode(0o777);
                out.append_link(&mut h, name, outside)?;
            }
            replaced = true;
            continue;
        }
        let mut h = entry.header().clone();
        out.append_data(&mut h, &path, &mut entry)?;
    }
    anyhow::ensure!(replaced, "the base tar holds no postgresql.auto.conf");
    Ok(out.into_inner()?)
}

/// Rewrites the base tar of backup `id` with [`with_links_out`] and sets
/// its digest and sizes in the manifest to match, as a writer to the
/// bucket can.
async fn forge(store: &dyn ObjectStore, id: &str, outside: &Path) -> Result<String> {
    let mkey = Repository::manifest_key("main", id);
    let mut manifest: Value = serde_json::from_slice(&read_all(store, &mkey).await?)?;
    let art = manifest["artifacts"]
        .as_array_mut()
        .and_then(|a| a.iter_mut().find(|a| a["kind"] == "base"))
        .context("base artifact")?;
    let name = art["name"].as_str().context("name")?.to_string();
    let compression =
        Compression::parse(art["compression"].as_str().unwrap_or("")).context("compression")?;
    let key = Repository::key("main", id, &name);
    let plain = coded(read_all(store, &key).await?, compression, false).await?;
    let forged = with_links_out(&plain, outside)?;
    let raw_size = forged.len();
    let stored = coded(forged, compression, true).await?;
    let digest: String = Sha256::digest(&stored)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    art["sha256"] = digest.into();
    art["stored_size"] = stored.len().into();
    art["raw_size"] = raw_size.into();
    store
        .put(&key, stored.into(), refugio_store::PutOptions::default())
        .await?;
    store
        .put(
            &mkey,
            serde_json::to_vec_pretty(&manifest)?.into(),
            refugio_store::PutOptions::default(),
        )
        .await?;
    Ok(key)
}

#[tokio::test(flavor = "multi_thread")]
async fn clones_stay_out_of_production_and_a_base_tar_never_writes_through_a_link() -> Result<()> {
    let tmp = shared_tmp()?;
    let target = s3::moto()?;
    let config = tmp.path().join("refugio.toml");
    let src =
        Cluster::start_with_settings(16, &archiving(&config), &server_env(tmp.path())).await?;
    let s = Setup::new(tmp.path(), &target, &src, "")?;
    // Commands the restored server would run as the server's user: the
    // markers show whether they ran.
    let marks = tmp.path().join("marks");
    std::fs::create_dir(&marks)?;
    std::fs::set_permissions(&marks, std::fs::Permissions::from_mode(0o777))?;
    let recovery_end = marks.join("recovery-end-ran");
    let cleanup = marks.join("archive-cleanup-ran");
    // In the source's postgresql.auto.conf, so in its base backup (the
    // running server takes archive_mode from its command line).
    for sql in [
        "ALTER SYSTEM SET archive_mode = on".to_string(),
        format!(
            "ALTER SYSTEM SET recovery_end_command = 'touch {}'",
            recovery_end.display()
        ),
        format!(
            "ALTER SYSTEM SET archive_cleanup_command = 'touch {}'",
            cleanup.display()
        ),
    ] {
        one(&src, &sql).await?;
    }
    one(&src, "CREATE TABLE ticks (id bigserial PRIMARY KEY, written_at timestamptz NOT NULL DEFAULT clock_timestamp())").await?;
    ticks(&src, 5).await?;
    refugio_ok(&["--config", &s.cfg(), "backup", "--json"], &s.env)?;
    ticks(&src, 5).await?;
    switch_and_wait(&src).await?;

    // A drill recovers with none of the source's recovery commands.
    drill(&s, &[], 0, "passed")?;
    for m in [&recovery_end, &cleanup] {
        assert!(!m.exists(), "the drill ran {}", m.display());
    }
    observed(
        32,
        "a drill of a base backup whose postgresql.auto.conf sets recovery_end_command and archive_cleanup_command: passed, neither ran",
    );

    // A restored clone: archive_mode = off, and says so.
    let (clone, out) = restore_with(&s, 16, "latest", &[], &[]).await?;
    assert!(out.contains("archive_mode = off"), "{out}");
    let auto = std::fs::read_to_string(clone.data_dir().join("postgresql.auto.conf"))?;
    let last_archive_mode = auto
        .lines()
        .rfind(|l| l.trim_start().starts_with("archive_mode"))
        .unwrap_or_default();
    assert_eq!(last_archive_mode.trim(), "archive_mode = off", "{auto}");
    assert_eq!(one(&clone, "SHOW archive_mode").await?, "off");
    // What the drill kept from running, a restore runs (it is the
    // operator's own server): the marker is how the drill's check sees it.
    wait_until("recovery_end_command ran", Duration::from_secs(20), || {
        Ok(recovery_end.exists())
    })?;
    drop(clone);
    // --keep-archiving: the source's archiving stays.
    let (kept, out) = restore_with(&s, 16, "latest", &["--keep-archiving"], &[]).await?;
    assert!(out.contains("archiving is kept"), "{out}");
    let auto = std::fs::read_to_string(kept.data_dir().join("postgresql.auto.conf"))?;
    assert!(!auto.contains("archive_mode = off"), "{auto}");
    assert_eq!(one(&kept, "SHOW archive_mode").await?, "on");
    drop(kept);
    observed(
        31,
        "restore --physical: postgresql.auto.conf ends with archive_mode = off, the started clone shows archive_mode off; with --keep-archiving: on",
    );

    // A second base backup, forged: its tar's postgresql.auto.conf and
    // recovery.signal are links to a file outside the target.
    let out = refugio_ok(&["--config", &s.cfg(), "backup", "--json"], &s.env)?;
    let m: Value = serde_json::from_str(&out)?;
    let id = m["backup_id"].as_str().context("backup_id")?.to_string();
    ticks(&src, 5).await?;
    switch_and_wait(&src).await?;
    let outside = tmp.path().join("outside.conf");
    std::fs::write(&outside, "outside, untouched\n")?;
    let store = open_s3(&target, &s.prefix).await?;
    let key = forge(store.as_ref(), &id, &outside).await?;

    let dir = tmp.path().join("restored");
    let out = refugio(
        &[
            "--config",
            &s.cfg(),
            "restore",
            "--physical",
            "--to",
            "latest",
            "--target-dir",
            &dir.display().to_string(),
        ],
        &s.env,
    );
    let text = all_output(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(&key)
            && text.contains("\"postgresql.auto.conf\"")
            && text.contains("symbolic link"),
        "the refusal names the object and the entry: {text}"
    );
    assert_eq!(
        std::fs::read_to_string(&outside)?,
        "outside, untouched\n",
        "nothing was written through the links"
    );
    for name in ["postgresql.auto.conf", "recovery.signal"] {
        assert!(
            !std::fs::symlink_metadata(dir.join(name)).is_ok_and(|m| m.file_type().is_symlink()),
            "{name} was not made a link"
        );
    }

    // Its drill: inconclusive (forged content is not evidence against a
    // backup), and prune keeps it unverified, not failed.
    let r = drill(&s, &[], 3, "inconclusive")?;
    assert_eq!(r["backup_id"], id.as_str(), "{r}");
    assert!(
        r["failures"].to_string().contains("postgresql.auto.conf"),
        "{r}"
    );
    assert_eq!(std::fs::read_to_string(&outside)?, "outside, untouched\n");
    let out = refugio_ok(
        &[
            "--config",
            &s.cfg(),
            "prune",
            "--keep-last",
            "1",
            "--dry-run",
            "--json",
        ],
        &s.env,
    )?;
    let pruned: Value = serde_json::from_str(&out)?;
    assert_eq!(pruned[0]["states"][&id], "unverified", "{pruned}");
    observed(
        30,
        "base tar with postgresql.auto.conf/recovery.signal linked outside the target: restore exits non-zero naming the entry, the outside file unchanged; drill exit 3, inconclusive; prune keeps it unverified",
    );
    drop(src);
    Ok(())
}

/// A base backup stored unencrypted where `[repository.encryption]` is
/// configured (taken before encryption was turned on, or swapped in by a
/// bucket writer): `restore --physical` refuses before writing anything,
/// naming `--allow-unencrypted`; a drill is inconclusive; with the flag
/// the restore goes ahead.
#[tokio::test(flavor = "multi_thread")]
async fn an_unencrypted_base_backup_is_refused_where_encryption_is_configured() -> Result<()> {
    let tmp = shared_tmp()?;
    let target = s3::moto()?;
    let config = tmp.path().join("refugio.toml");
    let src =
        Cluster::start_with_settings(16, &archiving(&config), &server_env(tmp.path())).await?;
    let mut s = Setup::new(tmp.path(), &target, &src, "")?;
    one(&src, "CREATE TABLE ticks (id bigserial PRIMARY KEY, written_at timestamptz NOT NULL DEFAULT clock_timestamp())").await?;
    ticks(&src, 5).await?;
    refugio_ok(&["--config", &s.cfg(), "backup", "--json"], &s.env)?;
    ticks(&src, 5).await?;
    switch_and_wait(&src).await?;

    // Encryption turned on afterwards. The identity is readable by the
    // drill's server (uid 65534 under root): test keys only.
    let (secret, public) = refugio_core::encryption::generate();
    let identity = tmp.path().join("age.key");
    write_public(&identity, &format!("{secret}\n"))?;
    s.repo_toml.push_str(&format!(
        "\n[repository.encryption]\nrecipients = [{public:?}]\nidentity_file = {:?}\n",
        identity.display().to_string()
    ));
    s.write(&s.repo_toml)?;

    let dir = tmp.path().join("restored");
    let dir_text = dir.display().to_string();
    let restore = [
        "--config",
        &s.cfg(),
        "restore",
        "--physical",
        "--to",
        "latest",
        "--target-dir",
        &dir_text,
    ]
    .map(str::to_string);
    let out = refugio(
        &restore.iter().map(String::as_str).collect::<Vec<_>>(),
        &s.env,
    );
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("stored unencrypted") && text.contains("--allow-unencrypted"),
        "{text}"
    );
    assert!(
        !dir.join("PG_VERSION").exists(),
        "nothing restored before the refusal"
    );
    let r = drill(&s, &[], 3, "inconclusive")?;
    assert!(r.to_string().contains("--allow-unencrypted"), "{r}");

    let mut args: Vec<&str> = restore.iter().map(String::as_str).collect();
    args.push("--allow-unencrypted");
    refugio_ok(&args, &s.env)?;
    assert!(dir.join("PG_VERSION").exists(), "restored with the flag");
    observed(
        47,
        "a plaintext base backup read with [repository.encryption] configured: restore --physical exit 1 naming --allow-unencrypted, nothing written; physical drill exit 3 inconclusive; with the flag: restored",
    );
    Ok(())
}
