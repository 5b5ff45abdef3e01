//! A physical job in an authenticated repository: the database server's
//! `wal-push` signs each WAL file in its name with the server key, the
//! agent signs the base backup's manifest; a drill's `wal-fetch` (which
//! holds public keys only) replays only WAL a trusted server key signed.
//! An unsigned copy of a segment is foreign: not replayed (the drill is
//! inconclusive, never failed), named by `check`, and no obstacle once the
//! signed one is back beside it.

use anyhow::{Context, Result};
use futures::TryStreamExt;
use refugio_testkit::{s3, Cluster};
use serde_json::Value;
use tokio::io::AsyncReadExt;

use super::*;
use crate::authentication::{auth_toml, key_id, keypair};

#[tokio::test(flavor = "multi_thread")]
async fn only_wal_signed_by_a_server_key_is_replayed() -> Result<()> {
    let tmp = shared_tmp()?;
    let keys = tmp.path().join("keys");
    std::fs::create_dir(&keys)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o755))?;
    }
    let (agent_key, agent_pub) = keypair(&keys, "agent")?;
    let (server_key, server_pub) = keypair(&keys, "db-1")?;
    let server_id = key_id(&server_pub)?;
    let target = s3::moto()?;
    let config = tmp.path().join("refugio.toml");
    // The database server signs with its key (the environment variable
    // overrides signing_key); the agent's commands with the agent's.
    let mut server = server_env(tmp.path());
    server.push((
        "REFUGIO_SIGNING_KEY_FILE".into(),
        server_key.display().to_string(),
    ));
    let src = Cluster::start_with_settings(16, &archiving(&config), &server).await?;
    let mut s = Setup::new(tmp.path(), &target, &src, "")?;
    s.repo_toml
        .push_str(&auth_toml(None, &[&agent_pub], &[&server_pub]));
    s.write(&s.repo_toml)?;
    s.env.push((
        "REFUGIO_SIGNING_KEY_FILE".into(),
        agent_key.display().to_string(),
    ));

    one(&src, "CREATE TABLE ticks (id bigserial PRIMARY KEY, written_at timestamptz NOT NULL DEFAULT clock_timestamp())").await?;
    ticks(&src, 5).await?;
    let out = refugio_ok(&["--config", &s.cfg(), "backup", "--json"], &s.env)?;
    let m: Value = serde_json::from_str(&out)?;
    ticks(&src, 5).await?;
    switch_and_wait(&src).await?;

    // The segment recovery needs after the base backup's first.
    let start = refugio_dump::wal::Lsn::parse(m["physical"]["start_lsn"].as_str().unwrap_or(""))
        .context("start_lsn")?;
    let next = refugio_dump::wal::segment_name(1, start.segment(16 << 20) + 1, 16 << 20);
    let store = open_s3(&target, &s.prefix).await?;
    let wal: Vec<String> = store
        .list("main/wal/")
        .map_ok(|o| o.key)
        .try_collect()
        .await?;
    let signed = wal
        .iter()
        .find(|k| k.contains(&format!("/{next}.")))
        .with_context(|| format!("{next} archived: {wal:?}"))?
        .clone();
    assert!(
        signed.contains(&format!(".s{server_id}")),
        "signed by the server key in its name: {signed}"
    );
    drill(&s, &[], 0, "passed")?;

    // The agent's key is not a server key: its wal-push is refused before
    // anything is stored.
    let stray = tmp.path().join("000000010000000000000099");
    std::fs::write(&stray, vec![7u8; 1024])?;
    let out = refugio(
        &[
            "--config",
            &s.cfg(),
            "wal-push",
            &stray.display().to_string(),
        ],
        &s.env,
    );
    let text = all_output(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("not among repository.authentication.server_keys"),
        "{text}"
    );

    // Whoever can write to the bucket but holds no server key puts the
    // segment back unsigned (its bytes even genuine), the signed one gone.
    let mut bytes = Vec::new();
    store.get(&signed).await?.read_to_end(&mut bytes).await?;
    let part = signed
        .split('.')
        .find(|p| p.starts_with('s') && p.len() == 103)
        .context("the signature part")?;
    let unsigned = signed.replacen(&format!(".{part}"), "", 1);
    store
        .put(
            &unsigned,
            bytes.clone().into(),
            refugio_store::PutOptions::default(),
        )
        .await?;
    store.delete(&signed).await?;

    let fetched = tmp.path().join("fetched");
    let out = refugio(
        &[
            "--config",
            &s.cfg(),
            "wal-fetch",
            &next,
            &fetched.display().to_string(),
        ],
        &s.env,
    );
    let text = all_output(&out);
    let fetch_code = out.status.code().unwrap_or(0);
    assert!(fetch_code > 125, "{text}");
    assert!(
        text.contains(&unsigned) && text.contains("carries no signature"),
        "{text}"
    );
    assert!(!fetched.exists(), "nothing written: {text}");
    let r = drill(&s, &[], 3, "inconclusive")?;
    let out = refugio(&["--config", &s.cfg(), "check"], &s.env);
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(text.contains(&format!("FOREIGN  {unsigned}")), "{text}");

    // The signed segment back beside the unsigned copy: the fetch takes
    // the signed one, the drill passes.
    store
        .put(&signed, bytes.into(), refugio_store::PutOptions::default())
        .await?;
    drill(&s, &[], 0, "passed")?;
    observed(
        50,
        &format!(
            "WAL signed in its name by server key {server_id}: drill passed; {next} re-uploaded unsigned: wal-fetch exit {} naming it, drill inconclusive ({} failure(s)), check FOREIGN exit 3; the signed copy back beside it: drill passed; wal-push with the agent's key refused",
            fetch_code,
            r["failures"].as_array().map_or(0, Vec::len)
        ),
    );
    Ok(())
}
