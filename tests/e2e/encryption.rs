//! Client-side encryption with age (issue 11): backups encrypted to the
//! configured recipients on every backend, restored and drilled with the
//! identity; refused before the target is touched without one or with the
//! wrong one (a drill is then inconclusive, never failed); key rotation.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use refugio_testkit::{s3, Cluster};
use rstest::rstest;
use serde_json::Value;

use crate::common::*;

/// A key pair: the identity file (0600) and the public key.
fn key_pair(dir: &Path, name: &str) -> Result<(PathBuf, String)> {
    use std::os::unix::fs::PermissionsExt;
    let (secret, public) = refugio_core::encryption::generate();
    let path = dir.join(format!("{name}.key"));
    std::fs::write(&path, format!("# public key: {public}\n{secret}\n"))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok((path, public))
}

/// A config with `[repository.encryption]` (the recipients, and the
/// identity files joined into one, when any) and one job.
fn config(
    dir: &Path,
    repo: &Repo,
    src: &Cluster,
    recipients: &[&str],
    identities: &[&Path],
) -> Result<PathBuf> {
    let mut section = format!("\n[repository.encryption]\nrecipients = {recipients:?}\n");
    if !identities.is_empty() {
        use std::os::unix::fs::PermissionsExt;
        let mut text = String::new();
        for id in identities {
            text.push_str(&std::fs::read_to_string(id)?);
        }
        let joined = dir.join(format!("identities-{}.txt", rand_suffix()));
        std::fs::write(&joined, text)?;
        std::fs::set_permissions(&joined, std::fs::Permissions::from_mode(0o600))?;
        section.push_str(&format!(
            "identity_file = {:?}\n",
            joined.display().to_string()
        ));
    }
    let path = dir.join(format!("refugio-{}.toml", rand_suffix()));
    std::fs::write(
        &path,
        format!(
            "{}{section}\n[[jobs]]\n{}",
            repo.toml(),
            job(
                "app",
                src,
                "app",
                &format!("scratch = {:?}\n", src.url("postgres"))
            )
        ),
    )?;
    Ok(path)
}

/// Environment naming `identity` by REFUGIO_AGE_IDENTITY_FILE.
fn env_with_identity(identity: &Path) -> Vec<(String, String)> {
    vec![(
        "REFUGIO_AGE_IDENTITY_FILE".into(),
        identity.display().to_string(),
    )]
}

fn rand_suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// The stored bytes of an artifact, wherever the repository is.
async fn stored(repo: &Repo, key: &str) -> Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    match repo {
        Repo::Dir(p) => out = std::fs::read(p.join(key))?,
        Repo::S3 { target, prefix } => {
            open_s3(target, prefix)
                .await?
                .get(key)
                .await?
                .read_to_end(&mut out)
                .await?;
        }
    }
    Ok(out)
}

fn restore(
    config: &Path,
    backup: &str,
    dst: &Cluster,
    db: &str,
    env: &[(String, String)],
) -> std::process::Output {
    let bindir = dst.bindir().display().to_string();
    refugio(
        &[
            "--config",
            config.to_str().unwrap_or_default(),
            "restore",
            "--backup",
            backup,
            "--target",
            &dst.url(db),
            "--create",
            "--globals",
            "--pg-bindir",
            &bindir,
        ],
        env,
    )
}

async fn database_exists(c: &Cluster, db: &str) -> Result<bool> {
    let n = c
        .psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{db}'"),
        )
        .await?;
    Ok(n.trim() == "1")
}

#[derive(Debug, Clone, Copy)]
enum Backend {
    Dir,
    Moto,
    Garage,
}

/// Backup, restore and drill of an encrypted backup, and the refusals
/// without an identity or with the wrong one, on every backend.
#[rstest]
#[case::dir_pg15(Backend::Dir, 15)]
#[case::moto_pg16(Backend::Moto, 16)]
#[case::garage_pg16(Backend::Garage, 16)]
#[tokio::test(flavor = "multi_thread")]
async fn encrypted_backups_restore_with_the_identity_and_only_with_it(
    #[case] backend: Backend,
    #[case] major: u32,
) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let repo = match backend {
        Backend::Dir => Repo::dir(tmp.path()),
        Backend::Moto => Repo::s3(s3::moto()?, "age"),
        Backend::Garage => Repo::s3(s3::garage()?, "age"),
    };
    let env = repo.env();
    let src = Cluster::start(major).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_sample(&src, "app").await?;
    let (key, public) = key_pair(tmp.path(), "a")?;
    let (other, other_public) = key_pair(tmp.path(), "other")?;
    let with_key = config(tmp.path(), &repo, &src, &[&public], &[&key])?;
    let cfg = with_key.to_str().unwrap_or_default();

    let out = refugio_ok(&["--config", cfg, "backup"], &env)?;
    assert!(out.contains("committed"), "{out}");
    let m = list(&with_key, &env)?
        .into_iter()
        .next()
        .context("manifest")?;
    let id = m["backup_id"].as_str().context("id")?.to_string();
    assert_eq!(m["encryption"]["scheme"], "age", "{m}");
    assert_eq!(
        m["encryption"]["recipients"],
        serde_json::json!([public]),
        "{m}"
    );
    let names: Vec<&str> = m["artifacts"]
        .as_array()
        .context("artifacts")?
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["database.dump.zst.age", "globals.sql.zst.age"],
        "{m}"
    );
    for a in m["artifacts"].as_array().context("artifacts")? {
        assert_eq!(a["encryption"], "age", "{a}");
        let bytes = stored(
            &repo,
            &format!("app/{id}/{}", a["name"].as_str().unwrap_or("?")),
        )
        .await?;
        assert!(
            bytes.starts_with(b"age-encryption.org/v1\n"),
            "{} is stored as age",
            a["name"]
        );
    }

    // Restore with the identity: identical.
    let dst = Cluster::start(major).await?;
    let out = restore(&with_key, &id, &dst, "app", &env);
    assert!(out.status.success(), "{}", all_output(&out));
    assert_eq!(
        row_counts(&dst, "app").await?,
        row_counts(&src, "app").await?
    );
    assert_eq!(src.schema_dump("app").await?, dst.schema_dump("app").await?);

    // A parallel restore decrypts into its temporary file (pg_restore -j
    // needs a file it can seek), private to refugio while it exists (a 0700
    // directory, a 0600 file), and removes both.
    let temp = tempfile::tempdir()?;
    let bindir = dst.bindir().display().to_string();
    let restore_parallel = refugio_command(
        &[
            "--config",
            cfg,
            "restore",
            "--backup",
            &id,
            "--target",
            &dst.url("parallel"),
            "--create",
            "--jobs",
            "2",
            "--temp-dir",
            &temp.path().display().to_string(),
            "--pg-bindir",
            &bindir,
        ],
        &env,
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()?;
    let waiting = std::thread::spawn(move || restore_parallel.wait_with_output());
    let mut modes: Option<(u32, u32)> = None;
    while !waiting.is_finished() {
        use std::os::unix::fs::PermissionsExt;
        for d in std::fs::read_dir(temp.path())?.flatten() {
            let dir_mode = d.metadata().map(|m| m.permissions().mode() & 0o777);
            let file_mode = std::fs::read_dir(d.path())
                .ok()
                .and_then(|mut files| files.next())
                .and_then(|f| f.ok())
                .and_then(|f| f.metadata().ok())
                .map(|m| m.permissions().mode() & 0o777);
            if let (Ok(dm), Some(fm)) = (dir_mode, file_mode) {
                modes.get_or_insert((dm, fm));
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let out = waiting
        .join()
        .map_err(|_| anyhow::anyhow!("the waiting thread panicked"))??;
    assert!(out.status.success(), "{}", all_output(&out));
    assert_eq!(
        modes,
        Some((0o700, 0o600)),
        "the decrypted archive, while it existed: a 0600 file in a 0700 directory"
    );
    assert_eq!(
        row_counts(&dst, "parallel").await?,
        row_counts(&src, "app").await?
    );
    assert_eq!(
        std::fs::read_dir(temp.path())?.count(),
        0,
        "temporary file removed"
    );

    // A drill decrypts too.
    let v = refugio(
        &["--config", cfg, "verify", "--json", "--backup", &id],
        &env,
    );
    let r: Value = serde_json::from_slice(&v.stdout).with_context(|| all_output(&v))?;
    assert_eq!(r["outcome"], "passed", "{r}");
    if let Repo::Dir(root) = &repo {
        // An ephemeral drill cluster decrypts the same way.
        let v = refugio(
            &[
                "--config",
                cfg,
                "verify",
                "--json",
                "--backup",
                &id,
                "--scratch",
                "ephemeral",
            ],
            &env,
        );
        let r: Value = serde_json::from_slice(&v.stdout).with_context(|| all_output(&v))?;
        assert_eq!(r["outcome"], "passed", "ephemeral: {r}");
        assert_eq!(r["scratch_kind"], "ephemeral", "{r}");
        // No key material in any manifest or receipt.
        for f in files_under(root).iter().filter(|f| f.ends_with(".json")) {
            let text = std::fs::read_to_string(root.join(f))?;
            assert!(!text.contains("AGE-SECRET-KEY"), "key material in {f}");
        }
    }

    // No identity: refused before the target is touched; the drill is
    // inconclusive.
    let no_key = config(tmp.path(), &repo, &src, &[&public], &[])?;
    let out = restore(&no_key, &id, &dst, "none", &env);
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("no age identity is configured") && text.contains(&public),
        "names what is missing: {text}"
    );
    assert!(
        !database_exists(&dst, "none").await?,
        "the target was not created"
    );
    let v = refugio(
        &[
            "--config",
            no_key.to_str().unwrap_or_default(),
            "verify",
            "--json",
            "--backup",
            &id,
        ],
        &env,
    );
    let r: Value = serde_json::from_slice(&v.stdout).with_context(|| all_output(&v))?;
    assert_eq!(
        r["outcome"], "inconclusive",
        "never failed without a key: {r}"
    );

    // The wrong identity: refused before the target, both keys named.
    let wrong = config(tmp.path(), &repo, &src, &[&public], &[&other])?;
    let out = restore(&wrong, &id, &dst, "wrong", &env);
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&other_public) && text.contains("does not match") && text.contains(&public),
        "names the identity and the recipients: {text}"
    );
    assert!(!text.contains("AGE-SECRET-KEY"), "no key material: {text}");
    assert!(
        !database_exists(&dst, "wrong").await?,
        "the target was not created"
    );
    let v = refugio(
        &[
            "--config",
            wrong.to_str().unwrap_or_default(),
            "verify",
            "--json",
            "--backup",
            &id,
        ],
        &env,
    );
    let r: Value = serde_json::from_slice(&v.stdout).with_context(|| all_output(&v))?;
    assert_eq!(
        r["outcome"], "inconclusive",
        "never failed with the wrong key: {r}"
    );
    // The last drill (with the wrong key) left the backup inconclusive,
    // never failed: retention will not delete it for that.
    let m = list(&with_key, &env)?
        .into_iter()
        .next()
        .context("manifest")?;
    assert_ne!(m["verification"]["outcome"], "failed", "{m}");
    Ok(())
}

/// Key rotation: backups under key A, then the recipients switch to B.
/// With identities A + B both restore; with B alone only the B backup
/// does, and the A backup's refusal names recipient A.
#[tokio::test(flavor = "multi_thread")]
async fn after_a_key_rotation_old_backups_restore_with_the_old_identity() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let repo = Repo::s3(s3::garage()?, "age-rotation");
    let env = repo.env();
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_sample(&src, "app").await?;
    let (a, a_public) = key_pair(tmp.path(), "a")?;
    let (b, b_public) = key_pair(tmp.path(), "b")?;
    let under_a = config(tmp.path(), &repo, &src, &[&a_public], &[&a])?;
    refugio_ok(
        &["--config", under_a.to_str().unwrap_or_default(), "backup"],
        &env,
    )?;
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let under_b = config(tmp.path(), &repo, &src, &[&b_public], &[&a, &b])?;
    refugio_ok(
        &["--config", under_b.to_str().unwrap_or_default(), "backup"],
        &env,
    )?;
    let backups = list(&under_b, &env)?;
    let id_of = |public: &str| -> Result<String> {
        backups
            .iter()
            .find(|m| m["encryption"]["recipients"] == serde_json::json!([public]))
            .and_then(|m| m["backup_id"].as_str())
            .map(str::to_string)
            .with_context(|| format!("a backup to {public}"))
    };
    let (id_a, id_b) = (id_of(&a_public)?, id_of(&b_public)?);

    let dst = Cluster::start(16).await?;
    for (id, db) in [(&id_a, "a_with_both"), (&id_b, "b_with_both")] {
        let out = restore(&under_b, id, &dst, db, &env);
        assert!(out.status.success(), "{}", all_output(&out));
        assert_eq!(row_counts(&dst, db).await?, row_counts(&src, "app").await?);
    }
    let only_b = config(tmp.path(), &repo, &src, &[&b_public], &[&b])?;
    let out = restore(&only_b, &id_b, &dst, "b_alone", &env);
    assert!(out.status.success(), "{}", all_output(&out));
    let out = restore(&only_b, &id_a, &dst, "a_with_b", &env);
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&a_public) && text.contains(&b_public),
        "names recipient A and the identity B it tried: {text}"
    );
    assert!(!database_exists(&dst, "a_with_b").await?);

    // The key can stay out of the config: REFUGIO_AGE_IDENTITY_FILE, and
    // the systemd credential age-identity, override identity_file.
    let mut by_env = env.clone();
    by_env.push(("REFUGIO_AGE_IDENTITY_FILE".into(), a.display().to_string()));
    let out = restore(&only_b, &id_a, &dst, "a_by_env", &by_env);
    assert!(out.status.success(), "{}", all_output(&out));
    let credentials = tmp.path().join("credentials");
    std::fs::create_dir(&credentials)?;
    std::fs::copy(&a, credentials.join("age-identity"))?;
    let mut by_credential = env.clone();
    by_credential.push((
        "CREDENTIALS_DIRECTORY".into(),
        credentials.display().to_string(),
    ));
    let out = restore(&only_b, &id_a, &dst, "a_by_credential", &by_credential);
    assert!(out.status.success(), "{}", all_output(&out));
    assert_eq!(
        row_counts(&dst, "a_by_credential").await?,
        row_counts(&src, "app").await?
    );
    Ok(())
}

/// The runbook's stock-tool path with an independent age implementation
/// (Debian's `age`, the Go reference): `age -d -i identity | zstd -dc |
/// pg_restore` restores refugio's encrypted backup, and the stored digest
/// matches `sha256sum`. A truncated copy does not decrypt.
#[tokio::test(flavor = "multi_thread")]
async fn the_stock_age_tool_restores_an_encrypted_backup() -> Result<()> {
    let age = std::path::Path::new("/usr/bin/age");
    anyhow::ensure!(
        age.exists(),
        "the `age` tool is missing: run scripts/install-test-deps (Debian package age)"
    );
    let tmp = tempfile::tempdir()?;
    let repo = Repo::dir(tmp.path());
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_sample(&src, "app").await?;
    let (key, public) = key_pair(tmp.path(), "a")?;
    let cfg = config(tmp.path(), &repo, &src, &[&public], &[&key])?;
    refugio_ok(
        &["--config", cfg.to_str().unwrap_or_default(), "backup"],
        &[],
    )?;
    let m = list(&cfg, &[])?.into_iter().next().context("manifest")?;
    let id = m["backup_id"].as_str().context("id")?;
    let art = &m["artifacts"][0];
    let Repo::Dir(root) = &repo else {
        anyhow::bail!("a directory repository")
    };
    let file = root.join(format!("app/{id}/{}", art["name"].as_str().unwrap_or("?")));
    let digest = std::process::Command::new("sha256sum")
        .arg(&file)
        .output()?;
    assert!(
        String::from_utf8_lossy(&digest.stdout).starts_with(art["sha256"].as_str().unwrap_or("?")),
        "sha256sum of the stored file = the manifest's"
    );

    let dst = Cluster::start(16).await?;
    dst.create_database("app").await?;
    let (pg_restore, psql) = (dst.bindir().join("pg_restore"), dst.bindir().join("psql"));
    let globals = root.join(format!("app/{id}/globals.sql.zst.age"));
    // As docs/runbook-restore.md: the roles first, then the database.
    let script = format!(
        "set -o pipefail; age -d -i {key} {globals} | zstd -dc | {psql} -X -q -d {admin:?} >/dev/null \
         && age -d -i {key} {file} | zstd -dc | {pg_restore} -d {target:?} --exit-on-error --single-transaction",
        key = key.display(),
        globals = globals.display(),
        psql = psql.display(),
        admin = dst.url("postgres"),
        file = file.display(),
        pg_restore = pg_restore.display(),
        target = dst.url("app"),
    );
    let out = std::process::Command::new("bash")
        .args(["-c", &script])
        .output()?;
    assert!(out.status.success(), "{}", all_output(&out));
    assert_eq!(
        row_counts(&dst, "app").await?,
        row_counts(&src, "app").await?
    );

    let bytes = std::fs::read(&file)?;
    let cut = tmp.path().join("cut.age");
    std::fs::write(&cut, &bytes[..bytes.len() - 100])?;
    let out = std::process::Command::new("age")
        .args(["-d", "-i"])
        .arg(&key)
        .arg(&cut)
        .stdout(std::process::Stdio::null())
        .output()?;
    assert!(
        !out.status.success(),
        "a truncated age file must not decrypt"
    );
    Ok(())
}

/// An age file cut short whose manifest was made to agree (size and
/// digest of the cut bytes): the digest check passes, age refuses the
/// missing last chunk, and the drill is *failed*, naming the artifact.
#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_age_file_fails_the_drill_by_name() -> Result<()> {
    use sha2::Digest;
    let tmp = tempfile::tempdir()?;
    let repo = Repo::dir(tmp.path());
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_sample(&src, "app").await?;
    let (key, public) = key_pair(tmp.path(), "a")?;
    let cfg = config(tmp.path(), &repo, &src, &[&public], &[&key])?;
    let cfg_s = cfg.to_str().unwrap_or_default();
    refugio_ok(&["--config", cfg_s, "backup"], &[])?;
    let m = list(&cfg, &[])?.into_iter().next().context("manifest")?;
    let id = m["backup_id"].as_str().context("id")?.to_string();
    let Repo::Dir(root) = &repo else {
        anyhow::bail!("a directory repository")
    };
    let dir = root.join(format!("app/{id}"));
    let file = dir.join("database.dump.zst.age");
    let bytes = std::fs::read(&file)?;
    let cut = &bytes[..bytes.len() - 100];
    std::fs::write(&file, cut)?;
    let manifest_path = dir.join("manifest.json");
    let mut manifest: Value = serde_json::from_slice(&std::fs::read(&manifest_path)?)?;
    manifest["artifacts"][0]["stored_size"] = serde_json::json!(cut.len());
    manifest["artifacts"][0]["sha256"] = serde_json::json!(hex_of(&sha2::Sha256::digest(cut)));
    std::fs::write(&manifest_path, serde_json::to_vec_pretty(&manifest)?)?;

    let v = refugio(
        &["--config", cfg_s, "verify", "--json", "--backup", &id],
        &[],
    );
    let r: Value = serde_json::from_slice(&v.stdout).with_context(|| all_output(&v))?;
    assert_eq!(r["outcome"], "failed", "{r}");
    let failures = r["failures"].to_string();
    assert!(
        failures.contains("database.dump.zst.age") && failures.contains("decrypt"),
        "names the artifact and why: {failures}"
    );

    // A header that is not age, its manifest made to agree: failed too
    // (the digest matched, so it is the stored bytes, not the download).
    let mut bad = bytes.clone();
    bad[0] = b'x';
    std::fs::write(&file, &bad)?;
    manifest["artifacts"][0]["stored_size"] = serde_json::json!(bad.len());
    manifest["artifacts"][0]["sha256"] = serde_json::json!(hex_of(&sha2::Sha256::digest(&bad)));
    std::fs::write(&manifest_path, serde_json::to_vec_pretty(&manifest)?)?;
    let v = refugio(
        &["--config", cfg_s, "verify", "--json", "--backup", &id],
        &[],
    );
    let r: Value = serde_json::from_slice(&v.stdout).with_context(|| all_output(&v))?;
    assert_eq!(r["outcome"], "failed", "{r}");
    let failures = r["failures"].to_string();
    assert!(failures.contains("age header"), "{failures}");
    Ok(())
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `config check` encrypts a probe to the recipients and decrypts it with
/// the identity here; it says when this host cannot restore or drill.
#[tokio::test(flavor = "multi_thread")]
async fn config_check_proves_this_host_can_decrypt_or_says_why_not() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let repo = Repo::dir(tmp.path());
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    let (a, a_public) = key_pair(tmp.path(), "a")?;
    let (_, b_public) = key_pair(tmp.path(), "b")?;
    let line = |config: &Path| -> Result<(bool, Value)> {
        let out = refugio(
            &[
                "--config",
                config.to_str().unwrap_or_default(),
                "config",
                "check",
                "--json",
            ],
            &[],
        );
        let v: Value = serde_json::from_slice(&out.stdout).with_context(|| all_output(&out))?;
        let check = v
            .as_array()
            .and_then(|c| c.iter().find(|c| c["what"] == "encryption (age)").cloned())
            .with_context(|| format!("no encryption line: {v}"))?;
        Ok((out.status.success(), check))
    };
    let (ok, c) = line(&config(tmp.path(), &repo, &src, &[&a_public], &[&a])?)?;
    assert!(ok && c["ok"] == true, "{c}");
    // An identity file others may read is warned about (by path, never
    // by content).
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o644))?;
    }
    let mut exposed = env_with_identity(&a);
    exposed.push(("REFUGIO_LOG".into(), "warn".into()));
    let out = refugio(
        &[
            "--config",
            config(tmp.path(), &repo, &src, &[&a_public], &[])?
                .to_str()
                .unwrap_or_default(),
            "config",
            "check",
        ],
        &exposed,
    );
    let text = all_output(&out);
    assert!(
        text.contains("identity-file-exposed") && text.contains(&a.display().to_string()),
        "{text}"
    );
    assert!(!text.contains("AGE-SECRET-KEY"), "{text}");
    assert!(
        c["detail"]
            .as_str()
            .unwrap_or("")
            .contains("can restore and drill"),
        "{c}"
    );

    let (ok, c) = line(&config(tmp.path(), &repo, &src, &[&b_public], &[&a])?)?;
    assert!(!ok && c["ok"] == false, "{c}");
    let detail = c["detail"].as_str().unwrap_or("");
    assert!(
        detail.contains(&a_public) && detail.contains(&b_public),
        "{c}"
    );

    let (ok, c) = line(&config(tmp.path(), &repo, &src, &[&a_public], &[])?)?;
    assert!(
        !ok && c["ok"] == false,
        "the job drills, so a missing identity fails: {c}"
    );
    assert!(
        c["detail"].as_str().unwrap_or("").contains("inconclusive"),
        "{c}"
    );
    let text = serde_json::to_string(&c)?;
    assert!(!text.contains("AGE-SECRET-KEY"), "{text}");
    Ok(())
}
