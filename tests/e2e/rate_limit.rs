//! `upload_rate_limit` (issue 12): a backup of incompressible data at a
//! low limit goes up at the limit, within ±20 %, to a directory and to
//! Garage (strict signatures and checksums: the paced request bodies carry
//! their CRC32 as a header), and restores identically.

use anyhow::{Context, Result};
use refugio_testkit::{s3, Cluster};
use rstest::rstest;

use crate::common::*;

/// 1 MiB/s: the ~6 MiB dump takes about 6 s, long beside the start-up of
/// pg_dump and the first part's fill, which the measurement includes.
const LIMIT: u64 = 1 << 20;

/// 96 rows of 64 KiB of random bytes (gen_random_uuid's, 16 at a time):
/// about 6 MiB that zstd cannot shrink (pg_dump writes bytea as hex,
/// which zstd brings back to about the random bytes' size).
const NOISE: &str = "CREATE TABLE noise AS
SELECT g AS id,
       (SELECT string_agg(uuid_send(gen_random_uuid()), ''::bytea)
          FROM generate_series(1, 4096) WHERE g > 0) AS blob
FROM generate_series(1, 96) AS g";

const DIGEST: &str =
    "SELECT count(*) || ':' || md5(string_agg(blob, ''::bytea ORDER BY id)) FROM noise";

#[rstest]
#[case::directory(false)]
#[case::garage(true)]
#[tokio::test(flavor = "multi_thread")]
async fn upload_rate_limit_holds_within_20_percent(#[case] on_s3: bool) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let repo = if on_s3 {
        Repo::s3(s3::garage()?, "rate-limit")
    } else {
        Repo::dir(tmp.path())
    };
    let env = repo.env();
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    src.psql("app", NOISE).await?;
    let path = tmp.path().join("refugio.toml");
    std::fs::write(
        &path,
        format!(
            "{}upload_rate_limit = \"1MiB/s\"\npart_size = \"5MiB\"\n\n[[jobs]]\n{}",
            repo.toml(),
            job("app", &src, "app", "globals = false\n")
        ),
    )?;
    let cfg = path.to_str().unwrap_or_default();
    let started = std::time::Instant::now();
    refugio_ok(&["--config", cfg, "backup"], &env)?;
    let wall = started.elapsed().as_secs_f64();

    let m = &list(&path, &env)?[0];
    let dump = m["artifacts"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["kind"] == "database"))
        .context("database artifact")?;
    let stored = dump["stored_size"].as_u64().context("stored_size")? as f64;
    let seconds = m["durations"]["dump_seconds"]
        .as_f64()
        .context("dump_seconds")?;
    assert!(
        stored > 5.5 * 1024.0 * 1024.0,
        "incompressible: {stored} bytes stored"
    );
    let rate = stored / seconds;
    let ratio = rate / LIMIT as f64;
    eprintln!(
        "upload_rate_limit 1MiB/s ({}): {stored} bytes in {seconds:.2} s = {:.3} MiB/s ({:+.1} %)",
        if on_s3 { "Garage" } else { "directory" },
        rate / f64::from(1 << 20),
        (ratio - 1.0) * 100.0
    );
    assert!(
        (0.8..=1.2).contains(&ratio),
        "{stored} bytes in {seconds:.2} s is {rate:.0} bytes/s, not within 20 % of {LIMIT}"
    );
    // By the test's own clock too: refugio's timing is not taken on trust.
    // The whole command (start-up and commit included) never went faster
    // than the limit allows.
    assert!(
        seconds <= wall,
        "refugio says the dump took {seconds:.2} s, the command took {wall:.2} s"
    );
    assert!(
        stored / wall <= 1.2 * LIMIT as f64,
        "{stored} bytes went up in {wall:.2} s of wall time: {:.0} bytes/s, above the limit {LIMIT}",
        stored / wall
    );

    let dst = Cluster::start(16).await?;
    let (target, bindir) = (dst.url("app"), dst.bindir().display().to_string());
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
            "--pg-bindir",
            &bindir,
        ],
        &env,
    )?;
    assert_eq!(
        dst.psql("app", DIGEST).await?,
        src.psql("app", DIGEST).await?
    );
    Ok(())
}
