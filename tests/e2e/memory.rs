//! Bounded memory, as a test and not only a benchmark: a backup of a
//! table of about 300 MB to a real S3 server (moto) keeps refugio's peak
//! resident set under 64 MiB. The bound comes from buffers of fixed size
//! (zstd frames, upload parts in flight), not from the data, so it is
//! deterministic enough to assert, unlike a duration.

use std::time::Duration;

use anyhow::{Context, Result};
use refugio_testkit::{s3, Cluster};

use crate::common::*;

/// refugio's own high-water mark of resident memory (`VmHWM`), in KiB.
fn peak_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_of_300_mb_stays_under_64_mib() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    src.psql(
        "app",
        "CREATE TABLE big AS SELECT g AS id, \
         md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text) AS payload \
         FROM generate_series(1, 2500000) g;",
    )
    .await?;
    let size: u64 = src
        .psql("app", "SELECT pg_total_relation_size('big')")
        .await?
        .trim()
        .parse()
        .context("table size")?;
    assert!(
        size > 250 << 20,
        "a table of a few hundred MB: {size} bytes"
    );
    let repo = Repo::s3(s3::moto()?, "memory");
    let env = repo.env();
    let config = write_config(
        tmp.path(),
        &repo,
        &job("app", &src, "app", "globals = false\n"),
    );
    let cfg = config.to_str().context("path")?;
    let mut child = refugio_command(&["--config", cfg, "backup", "--json"], &env)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let pid = child.id();
    // VmHWM only grows: the last reading before the process ends is its
    // peak up to then (the commit after the upload allocates little).
    let mut peak = 0;
    while child.try_wait()?.is_none() {
        if let Some(kib) = peak_kib(pid) {
            peak = peak.max(kib);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output()?;
    assert!(out.status.success(), "{}", all_output(&out));
    let m: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let raw = m["artifacts"][0]["raw_size"].as_u64().unwrap_or(0);
    assert!(raw > 200 << 20, "the dump is a few hundred MB: {raw} bytes");
    assert!(peak > 0, "refugio's memory was read while it ran");
    assert!(
        peak < 64 * 1024,
        "peak RSS {} MiB backing up {} MiB",
        peak / 1024,
        raw >> 20
    );
    eprintln!("peak RSS {} MiB for a {} MiB dump", peak / 1024, raw >> 20);
    Ok(())
}
