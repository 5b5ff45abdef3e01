//! `refugio wal-push` and `wal-fetch` on their own (issue 14).

use anyhow::{Context, Result};
use refugio_testkit::{s3, Cluster};

use super::*;

/// wal-push and wal-fetch on their own: same bytes again succeed,
/// different bytes under an archived name are refused, a missing file is
/// a quiet exit 1, an unreachable store exit 126; encrypted WAL round trip.
#[tokio::test(flavor = "multi_thread")]
async fn wal_push_refuses_overwrites_and_wal_fetch_speaks_postgres_protocol() -> Result<()> {
    let tmp = shared_tmp()?;
    let target = s3::garage()?;
    let src = Cluster::start(16).await?;
    let (secret, public) = refugio_core::encryption::generate();
    let identity = tmp.path().join("age.key");
    std::fs::write(&identity, format!("{secret}\n"))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&identity, std::fs::Permissions::from_mode(0o600))?;
    }
    let s = Setup::new(tmp.path(), &target, &src, "")?;
    let encrypted = format!(
        "{}\n[repository.encryption]\nrecipients = [{public:?}]\nidentity_file = {:?}\n",
        s.repo_toml,
        identity.display().to_string()
    );
    s.write(&encrypted)?;
    let cfg = s.cfg();

    let seg = tmp.path().join("000000010000000000000007");
    let body: Vec<u8> = (0..16 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&seg, &body)?;
    let seg_arg = seg.display().to_string();
    refugio_ok(&["--config", &cfg, "wal-push", &seg_arg], &s.env)?;
    refugio_ok(&["--config", &cfg, "wal-push", &seg_arg], &s.env)
        .context("the same bytes again")?;

    let mut other = body.clone();
    other[100] ^= 1;
    std::fs::write(&seg, &other)?;
    let out = refugio(&["--config", &cfg, "wal-push", &seg_arg], &s.env);
    assert_eq!(out.status.code(), Some(1), "{}", all_output(&out));
    let text = all_output(&out);
    assert!(
        text.contains("refusing to overwrite") && text.contains("000000010000000000000007"),
        "{text}"
    );
    assert_eq!(text.trim().lines().count(), 1, "one clear line: {text}");

    let dest = tmp.path().join("RECOVERYXLOG");
    let dest_arg = dest.display().to_string();
    let fetch_args = |name: &'static str| ["--config", &cfg, "wal-fetch", name, &dest_arg];
    refugio_ok(&fetch_args("000000010000000000000007"), &s.env)?;
    assert!(
        std::fs::read(&dest)? == body,
        "decrypted and decompressed to the first bytes pushed"
    );

    let out = refugio(&fetch_args("000000010000000000000008"), &s.env);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        all_output(&out).trim().is_empty(),
        "a missing file is quiet: {}",
        all_output(&out)
    );

    // Without the identity: it exists but cannot be delivered, so recovery
    // must stop (126), not end early.
    s.write(&format!(
        "{}\n[repository.encryption]\nrecipients = [{public:?}]\n",
        s.repo_toml
    ))?;
    let out = refugio(&fetch_args("000000010000000000000007"), &s.env);
    assert_eq!(out.status.code(), Some(126), "{}", all_output(&out));
    // The store down: 126 too.
    let dead = s.repo_toml.replace(
        &target.endpoint,
        &format!("http://127.0.0.1:{}", s3::dead_port()),
    );
    s.write(&dead)?;
    let out = refugio(&fetch_args("000000010000000000000007"), &s.env);
    assert_eq!(out.status.code(), Some(126), "{}", all_output(&out));
    let out = refugio(&["--config", &cfg, "wal-push", &seg_arg], &s.env);
    assert_eq!(out.status.code(), Some(1), "{}", all_output(&out));
    // No config: a clear line, non-zero.
    let out = refugio(&["wal-push", &seg_arg], &s.env);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        all_output(&out).contains("needs a config file"),
        "{}",
        all_output(&out)
    );
    let out = refugio(&["--config", &cfg, "wal-push", "/etc/passwd"], &s.env);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        all_output(&out).contains("not a WAL file name"),
        "{}",
        all_output(&out)
    );
    Ok(())
}
