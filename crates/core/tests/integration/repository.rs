//! Retention and garbage by a fixed clock: three backups a day apart,
//! drilled, pruned; an orphan that is garbage only once the grace period
//! has passed, for check and prune alike.

use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use refugio_core::{CheckOptions, FixedClock, Pick, ReadData};
use refugio_store::PutOptions;
use refugio_testkit::Cluster;
use tokio_util::sync::CancellationToken;

use crate::common::*;

#[tokio::test(flavor = "multi_thread")]
async fn prune_and_check_decide_by_the_clock_they_are_given() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let repo = repository(dir.path())?;
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    src.psql(
        "app",
        "CREATE TABLE trips AS SELECT g AS id FROM generate_series(1, 100) g",
    )
    .await?;
    let cancel = CancellationToken::new();
    // Three days ago, two days ago, yesterday; each drilled an hour later.
    let t0 = hours(now(), -72);
    let mut ids = Vec::new();
    for day in 0..3 {
        let at = hours(t0, 24 * day);
        let opts = backup_options("app", &src, "app")?;
        let m = refugio_core::backup(&repo, &opts, &FixedClock(at), &cancel).await?;
        let (picked, history) =
            refugio_core::drill::pick(&repo, "app", Pick::Spec(&m.backup_id)).await?;
        let drill = drill_options(&src, Duration::from_secs(86400))?;
        let r = refugio_core::drill(
            &repo,
            &picked,
            &history,
            &drill,
            &FixedClock(hours(at, 1)),
            &cancel,
        )
        .await?;
        assert!(r.verified, "{}: {:?}", m.backup_id, r.failures);
        ids.push(m.backup_id);
    }
    assert!(ids[0] < ids[1] && ids[1] < ids[2], "{ids:?}");

    // What a crashed backup leaves: an artifact without a manifest,
    // written now (its file time).
    let orphan = "app/20200101T000000Z/database.dump.zst";
    repo.store()
        .put(
            orphan,
            Bytes::from_static(b"partial"),
            PutOptions::default(),
        )
        .await?;

    let repo = &repo;
    let check = |at| async move {
        let opts = CheckOptions {
            job: "app".into(),
            read_data: ReadData::All,
            grace: refugio_core::prune::GC_GRACE_FLOOR,
            progress: None,
        };
        refugio_core::check(repo, &opts, &FixedClock(at), &CancellationToken::new()).await
    };
    // Within the grace period the orphan could be a running backup's.
    let early = check(now()).await?;
    assert_eq!(
        early.outcome,
        refugio_core::CheckOutcome::Clean,
        "{early:?}"
    );
    assert!(early.orphans.is_empty(), "{:?}", early.orphans);
    assert_eq!((early.backups, early.read.backups), (3, 3));
    // Two hours on it is garbage (not damage).
    let late = check(hours(now(), 2)).await?;
    assert_eq!(late.outcome, refugio_core::CheckOutcome::Clean, "{late:?}");
    assert_eq!(late.orphans, vec![orphan.to_string()]);

    // keep_last = 2: the oldest goes, whatever the time; the orphan only
    // once the grace period has passed. A dry run and the prune agree.
    let prune = |at, dry| async move {
        let opts = prune_options("app", 2, dry);
        refugio_core::prune(repo, &opts, &FixedClock(at), &CancellationToken::new()).await
    };
    let dry = prune(now(), true).await?;
    let doomed: Vec<&str> = dry
        .decisions
        .iter()
        .filter(|d| !d.keep)
        .map(|d| d.id.as_str())
        .collect();
    assert_eq!(doomed, vec![ids[0].as_str()], "{dry:?}");
    assert!(
        dry.orphans.is_empty() && dry.deleted_backups.is_empty(),
        "{dry:?}"
    );
    let real = prune(hours(now(), 2), false).await?;
    assert_eq!(real.decisions, dry.decisions);
    assert_eq!(real.deleted_backups, vec![ids[0].clone()]);
    assert_eq!(real.orphans, vec![orphan.to_string()]);
    assert!(
        repo.store().head(orphan).await?.is_none(),
        "orphan collected"
    );
    let left: Vec<String> = repo
        .manifests("app")
        .await?
        .into_iter()
        .map(|m| m.backup_id)
        .collect();
    assert_eq!(left, vec![ids[2].clone(), ids[1].clone()]);
    Ok(())
}
