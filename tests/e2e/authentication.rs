//! Authenticated repositories (`[repository.authentication]`): manifests
//! and receipts are signed by an agent key, and readers accept them only
//! from the keys they trust for that role. A database host (whose key
//! signs WAL) can neither write a backup nor forge one that a reader uses;
//! a forged backup is inconclusive and foreign, never drilled, restored,
//! counted by retention or deleted; keys rotate.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use refugio_store::auth::{digest, Authentication, KeyPair, Role, TrustedKey};
use refugio_testkit::Cluster;
use serde_json::Value;

use crate::common::*;

/// An Ed25519 key pair made by openssl, as docs/security.md tells
/// operators to: (private, public). Readable by everyone: test keys only.
pub fn keypair(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf)> {
    use std::os::unix::fs::PermissionsExt;
    let key = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    for args in [
        vec!["genpkey", "-algorithm", "ed25519", "-out", path_str(&key)?],
        vec![
            "pkey",
            "-in",
            path_str(&key)?,
            "-pubout",
            "-out",
            path_str(&public)?,
        ],
    ] {
        let out = std::process::Command::new("openssl")
            .args(&args)
            .output()
            .context("running openssl (scripts/install-test-deps installs it)")?;
        ensure!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for p in [&key, &public] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644))?;
    }
    Ok((key, public))
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().context("a UTF-8 path")
}

/// The id refugio prints for a public key.
pub fn key_id(public: &Path) -> Result<String> {
    Ok(TrustedKey::from_file(public)?.id().to_string())
}

/// `[repository.authentication]`.
pub fn auth_toml(signing: Option<&Path>, agents: &[&Path], servers: &[&Path]) -> String {
    let list = |keys: &[&Path]| {
        keys.iter()
            .map(|k| format!("{:?}", k.display().to_string()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "[repository.authentication]\n{}agent_keys = [{}]\nserver_keys = [{}]\n",
        signing
            .map(|k| format!("signing_key = {:?}\n", k.display().to_string()))
            .unwrap_or_default(),
        list(agents),
        list(servers)
    )
}

fn config_file(tmp: &Path, file: &str, repo: &Repo, auth: &str, job: &str) -> Result<String> {
    let path = tmp.join(file);
    std::fs::write(&path, format!("{}{auth}\n[[jobs]]\n{job}\n", repo.toml()))?;
    Ok(path.display().to_string())
}

fn ids(config: &str) -> Result<Vec<String>> {
    Ok(list(Path::new(config), &[])?
        .iter()
        .filter_map(|m| m["backup_id"].as_str().map(str::to_string))
        .collect())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        std::fs::copy(e.path(), to.join(e.file_name()))?;
    }
    Ok(())
}

/// Signs `app/<id>/manifest.json` as an agent would, with `key`: what a
/// host holding a key that is not an agent's can do.
fn sign_manifest(dir: &Path, id: &str, key: &Path) -> Result<()> {
    let by = Authentication::new(Some(KeyPair::from_file(key)?), Vec::new(), Vec::new());
    let object = format!("app/{id}/manifest.json");
    let body = std::fs::read(dir.join("manifest.json"))?;
    let sig = by.sign(Role::Agent, &object, &digest(&body))?;
    std::fs::write(dir.join("manifest.json.sig"), sig)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_host_can_neither_forge_a_backup_nor_get_a_good_one_deleted_and_keys_rotate(
) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let keys = tmp.path().join("keys");
    std::fs::create_dir(&keys)?;
    let (a1, a1_pub) = keypair(&keys, "agent-1")?;
    let (a2, a2_pub) = keypair(&keys, "agent-2")?;
    let (server, server_pub) = keypair(&keys, "db-1")?;
    let (a1_id, a2_id) = (key_id(&a1_pub)?, key_id(&a2_pub)?);

    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    src.psql(
        "app",
        "CREATE TABLE trips (id int); INSERT INTO trips SELECT generate_series(1, 100);",
    )
    .await?;
    let repo = Repo::dir(tmp.path());
    let job_text = job(
        "app",
        &src,
        "app",
        "scratch = \"ephemeral\"\nretention = { keep_last = 1, gc_grace = \"1h\" }\n",
    );
    let plain = config_file(tmp.path(), "plain.toml", &repo, "", &job_text)?;
    let agent = config_file(
        tmp.path(),
        "agent.toml",
        &repo,
        &auth_toml(Some(&a1), &[&a1_pub], &[&server_pub]),
        &job_text,
    )?;

    // config check says what is trusted, and when nothing is.
    let out = refugio_ok(&["--config", &agent, "config", "check"], &[])?;
    assert!(
        out.contains(&format!("this host signs as agent with key {a1_id}")),
        "{out}"
    );
    let out = refugio_ok(&["--config", &plain, "config", "check"], &[])?;
    assert!(out.contains("UNAUTHENTICATED"), "{out}");

    // A signed backup, drilled: its manifest and receipt carry signatures.
    refugio_ok(&["--config", &agent, "backup"], &[])?;
    let id1 = ids(&agent)?.first().cloned().context("the backup")?;
    let dir1 = tmp.path().join("repo/app").join(&id1);
    let out = refugio(&["--config", &agent, "verify", "--json"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", all_output(&out));
    let sigs: Vec<String> = files_under(&dir1)
        .into_iter()
        .filter(|f| f.ends_with(".sig"))
        .collect();
    assert_eq!(
        sigs.len(),
        2,
        "a manifest and a receipt signature: {sigs:?}"
    );
    let sig: Value = serde_json::from_slice(&std::fs::read(dir1.join("manifest.json.sig"))?)?;
    assert_eq!(sig["key_id"], a1_id.as_str(), "{sig}");

    // A forged record of a clean repository check, unsigned: read where
    // nothing is authenticated, ignored by an authenticated status.
    let checks = tmp.path().join("repo/app/checks");
    std::fs::create_dir_all(&checks)?;
    let forged = serde_json::json!({
        "job": "app", "outcome": "clean", "finished_at": chrono::Utc::now(),
        "backups": 1, "artifacts": 1, "damaged": 0, "read_scope": "all",
    });
    std::fs::write(checks.join("last.json"), serde_json::to_vec(&forged)?)?;
    let st: Value =
        serde_json::from_str(&refugio_ok(&["--config", &plain, "status", "--json"], &[])?)?;
    assert_eq!(st[0]["last_check"]["outcome"], "clean", "{st}");
    let st: Value =
        serde_json::from_str(&refugio_ok(&["--config", &agent, "status", "--json"], &[])?)?;
    assert_eq!(st[0]["last_check"], Value::Null, "{st}");
    std::fs::remove_dir_all(&checks)?;

    // The database host's key signs WAL, not backups: refused before any
    // work, nothing written.
    let db_host = config_file(
        tmp.path(),
        "db-host.toml",
        &repo,
        &auth_toml(Some(&server), &[&a1_pub], &[&server_pub]),
        &job_text,
    )?;
    let out = refugio(&["--config", &db_host, "backup"], &[]);
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("not among repository.authentication.agent_keys"),
        "{text}"
    );
    assert_eq!(ids(&agent)?, vec![id1.clone()]);

    // A forged backup: the good one copied under a newer id, a psql
    // meta-command put into its globals (digest fixed up), the manifest
    // signed with the database host's key as if by an agent. The copied
    // receipt (signed for the first backup's key) says "ok".
    let id2 = (chrono::Utc::now() + chrono::Duration::seconds(60))
        .format("%Y%m%dT%H%M%SZ")
        .to_string();
    let dir2 = tmp.path().join("repo/app").join(&id2);
    copy_dir(&dir1, &dir2)?;
    let manifest_path = dir2.join("manifest.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&manifest_path)?)?;
    m["backup_id"] = id2.clone().into();
    std::fs::write(&manifest_path, serde_json::to_vec_pretty(&m)?)?;
    let marker = tmp.path().join("marker-file");
    crate::hostile::forge_artifact(&dir2, "globals", |s| {
        let mut s = s;
        s.extend_from_slice(format!("\\! touch {}\n", marker.display()).as_bytes());
        s
    })?;
    sign_manifest(&dir2, &id2, &server)?;
    let manifest_key = format!("app/{id2}/manifest.json");

    // Unauthenticated, the forgery would win: newest and "verified", it
    // would get the good backup deleted (keep_last = 1).
    let out = refugio_ok(&["--config", &plain, "prune", "--dry-run", "--json"], &[])?;
    let dry: Value = serde_json::from_str::<Value>(&out)?[0].take();
    let would_go: Vec<&str> = dry["decisions"]
        .as_array()
        .context("decisions")?
        .iter()
        .filter(|d| d["keep"] == false)
        .filter_map(|d| d["id"].as_str())
        .collect();
    assert_eq!(would_go, vec![id1.as_str()], "{dry}");

    // Authenticated: not drilled (inconclusive, foreign), not restored,
    // not listed, reported by check, and prune neither counts nor deletes.
    let out = refugio(&["--config", &agent, "verify", "--backup", &id2], &[]);
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(
        text.contains("foreign")
            && text.contains(&manifest_key)
            && text.contains("signed by server key"),
        "{text}"
    );
    let dst = Cluster::start(16).await?;
    dst.create_database("app").await?;
    let out = refugio(
        &[
            "--config",
            &agent,
            "restore",
            "--backup",
            &id2,
            "--globals",
            "--target",
            &dst.url("app"),
        ],
        &[],
    );
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&manifest_key) && text.contains("not written by a trusted key"),
        "{text}"
    );
    assert!(!marker.exists(), "the forged globals ran");
    assert_eq!(
        dst.psql(
            "app",
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        )
        .await?
        .trim(),
        "0"
    );
    assert_eq!(
        ids(&agent)?,
        vec![id1.clone()],
        "list shows only the good one"
    );
    let out = refugio(&["--config", &agent, "check"], &[]);
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(text.contains(&format!("FOREIGN  {manifest_key}")), "{text}");
    let out = refugio_ok(&["--config", &agent, "prune", "--json"], &[])?;
    let pruned: Value = serde_json::from_str::<Value>(&out)?[0].take();
    assert_eq!(pruned["foreign"], serde_json::json!([id2]), "{pruned}");
    assert_eq!(pruned["deleted_backups"], serde_json::json!([]), "{pruned}");
    assert!(dir1.join("manifest.json").exists() && dir2.join("manifest.json").exists());

    // The status page believes no receipt by its name: the forged
    // backup's copied "ok" is drawn unsigned, the good one's passed.
    let port = free_port()?;
    let paged = tmp.path().join("paged.toml");
    std::fs::write(
        &paged,
        format!(
            "{}\n[agent]\nlisten = \"127.0.0.1:{port}\"\nstatus_page = true\n",
            std::fs::read_to_string(&agent)?
        ),
    )?;
    let running = Agent::start(&paged, &[], port, tmp.path().join("agent.log"))?;
    let limit = std::time::Duration::from_secs(60);
    wait_until("the page's vetted timeline", limit, || {
        let (code, body) = http_get(port, "/")?;
        Ok(code == 200 && body.contains("mark drill unsigned"))
    })?;
    let (_, page) = http_get(port, "/")?;
    for (verdict, id) in [("unsigned", &id2), ("passed", &id1)] {
        let mark = format!(r#"class="mark drill {verdict}" data-backup="{id}""#);
        assert!(page.contains(&mark), "{mark}: {page}");
    }
    running.stop(limit)?;
    observed(
        48,
        &format!(
            "a backup forged with the database host's key (meta-command in its globals, a copied ok receipt): verify exit 3 foreign, restore exit 1 naming {manifest_key}, nothing ran or was restored, check FOREIGN exit 3, prune kept both (unauthenticated, prune would have deleted the good one); backup with the database host's key refused before any work"
        ),
    );

    // Rotation: a second agent key signs, the first still verifies.
    let rotating = config_file(
        tmp.path(),
        "rotating.toml",
        &repo,
        &auth_toml(Some(&a2), &[&a1_pub, &a2_pub], &[&server_pub]),
        &job_text,
    )?;
    refugio_ok(&["--config", &rotating, "backup"], &[])?;
    let listed = ids(&rotating)?;
    let id3 = listed.first().cloned().context("the new backup")?;
    assert_eq!(listed, vec![id3.clone(), id1.clone()]);
    let sig: Value = serde_json::from_slice(&std::fs::read(
        tmp.path()
            .join("repo/app")
            .join(&id3)
            .join("manifest.json.sig"),
    )?)?;
    assert_eq!(sig["key_id"], a2_id.as_str(), "{sig}");
    for id in [&id1, &id3] {
        let out = refugio(&["--config", &rotating, "verify", "--backup", id], &[]);
        assert_eq!(out.status.code(), Some(0), "{id}: {}", all_output(&out));
    }
    // The first key retired: its backup is foreign, kept, and said so.
    let retired = config_file(
        tmp.path(),
        "retired.toml",
        &repo,
        &auth_toml(Some(&a2), &[&a2_pub], &[&server_pub]),
        &job_text,
    )?;
    assert_eq!(ids(&retired)?, vec![id3.clone()]);
    let out = refugio(&["--config", &retired, "check"], &[]);
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(
        text.contains(&format!("FOREIGN  app/{id1}/manifest.json"))
            && text.contains(&format!(
                "signed by key {a1_id}, which is not among repository.authentication.agent_keys"
            )),
        "{text}"
    );
    let out = refugio_ok(&["--config", &retired, "prune", "--json"], &[])?;
    let pruned: Value = serde_json::from_str::<Value>(&out)?[0].take();
    assert_eq!(pruned["foreign"], serde_json::json!([id1, id2]), "{pruned}");
    assert_eq!(pruned["deleted_backups"], serde_json::json!([]), "{pruned}");
    assert!(dir1.join("manifest.json").exists());
    observed(
        49,
        &format!(
            "agent key rotated: the new key {a2_id} signs, backups of the old key {a1_id} still drill passed while both are listed; the old key retired: its backup is FOREIGN in check, kept by prune"
        ),
    );
    Ok(())
}
