//! A pg_dump backup taken at a fixed time, restored, drilled.

use std::time::Duration;

use anyhow::Result;
use refugio_core::{FixedClock, Pick};
use refugio_testkit::Cluster;
use tokio_util::sync::CancellationToken;

use crate::common::*;

/// The row counts of every table of `db`, as `schema.table count` lines.
async fn counts(cluster: &Cluster, db: &str) -> Result<String> {
    cluster
        .psql(
            db,
            "SELECT string_agg(format('%I.%I %s', schemaname, relname, n), E'\\n' ORDER BY schemaname, relname)
               FROM (SELECT schemaname, relname,
                            (xpath('/row/c/text()', query_to_xml(
                               format('SELECT count(*) AS c FROM %I.%I', schemaname, relname),
                               false, true, '')))[1]::text AS n
                       FROM pg_stat_user_tables) t",
        )
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_at_a_fixed_time_restores_whole_and_its_drill_reckons_rpo_by_that_clock(
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let repo = repository(dir.path())?;
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_sample(&src, "app").await?;
    let cancel = CancellationToken::new();
    let t0 = now();

    let opts = backup_options("app", &src, "app")?;
    let manifest = refugio_core::backup(&repo, &opts, &FixedClock(t0), &cancel).await?;
    // The clock names the backup and dates it.
    assert_eq!(manifest.backup_id, refugio_store::repo::backup_id(t0, 1));
    assert_eq!(manifest.started_at, t0);
    assert_eq!(repo.manifests("app").await?.len(), 1);

    let dst = Cluster::start(16).await?;
    let report =
        refugio_core::restore(&repo, &manifest, &restore_options(&dst, "copy")?, &cancel).await?;
    assert!(report.bytes_fetched > 0, "{report:?}");
    let (want, got) = (counts(&src, "app").await?, counts(&dst, "copy").await?);
    assert!(want.lines().count() >= 3, "the sample has tables: {want}");
    assert_eq!(got, want, "every table restored with its rows");

    // Drilled 3 hours after the backup, against an RPO of 2 hours: the
    // restore is good, the RPO is missed by the fixed clock's reckoning.
    let (picked, history) = refugio_core::drill::pick(&repo, "app", Pick::Newest).await?;
    assert_eq!(picked.backup_id, manifest.backup_id);
    let opts = drill_options(&dst, Duration::from_secs(2 * 3600))?;
    let receipt = refugio_core::drill(
        &repo,
        &picked,
        &history,
        &opts,
        &FixedClock(hours(t0, 3)),
        &cancel,
    )
    .await?;
    assert!(receipt.verified, "{:?}", receipt.failures);
    assert_eq!(receipt.started_at, hours(t0, 3));
    // From the data's time (stamped by the server, a moment after t0) to
    // the drill's.
    let rpo = receipt.rpo.measured_seconds.unwrap_or_default();
    assert!(
        (3.0 * 3600.0 - 120.0..=3.0 * 3600.0).contains(&rpo),
        "{:?}",
        receipt.rpo
    );
    assert_eq!(receipt.rpo.met, Some(false), "{:?}", receipt.rpo);

    // The status at a later fixed time sees the verified backup.
    let status = refugio_core::status::status_at(&repo, "app", hours(t0, 4)).await?;
    assert_eq!(status.backups, 1);
    assert_eq!(
        status.newest_verified_id.as_deref(),
        Some(manifest.backup_id.as_str())
    );
    Ok(())
}
