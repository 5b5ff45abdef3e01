//! Prune over a directory repository: states from receipts, the policy's
//! decisions carried out (manifest and every object of a doomed backup
//! gone, kept ones untouched), dry runs, backups from the future, garbage
//! collection of dead uploads and not of running ones.

use std::collections::BTreeSet;

use chrono::TimeZone;

use super::*;
use crate::clock::FixedClock;
use crate::fixtures::{backup, drilled, keys, put, repo};
use crate::receipt::Outcome;

fn noon() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0).unwrap()
}

fn options(policy: Policy) -> PruneOptions {
    PruneOptions {
        job: "app".into(),
        policy,
        grace: GC_GRACE_FLOOR,
        object_lock: false,
        dry_run: false,
        batch: DELETE_BATCH,
        physical: false,
    }
}

fn keep_last_and_verified() -> Policy {
    Policy {
        keep_last: 1,
        min_verified: 1,
        ..Policy::default()
    }
}

async fn run(repo: &Repository, opts: &PruneOptions, now: DateTime<Utc>) -> Result<PruneReport> {
    prune(repo, opts, &FixedClock(now), &CancellationToken::new()).await
}

/// Six backups an hour apart, each with a different drill history.
async fn six(repo: &Repository) {
    for h in 0..6 {
        let id = format!("20261128T0{h}0000Z");
        backup(repo, "app", &id, &[("database.dump.zst", id.as_bytes())]).await;
    }
    // 00: an old refugio's receipt that says "not verified".
    put(
        repo,
        "app/20261128T000000Z/verify-20261128T001000.000Z.json",
        br#"{"verified": false}"#,
    )
    .await;
    // 01: an old refugio's receipt that says "verified".
    put(
        repo,
        "app/20261128T010000Z/verify-20261128T011000.000Z.json",
        br#"{"verified": true}"#,
    )
    .await;
    drilled(repo, "app", "20261128T020000Z", Outcome::Failed).await;
    drilled(repo, "app", "20261128T030000Z", Outcome::Passed).await;
    // A failed drill and a later passing one: verified.
    drilled(repo, "app", "20261128T030000Z", Outcome::Failed).await;
    drilled(repo, "app", "20261128T040000Z", Outcome::Inconclusive).await;
    // 05: not drilled yet.
}

fn ids(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn receipts_decide_the_states_and_doomed_backups_go_whole() {
    let (_dir, repo) = repo();
    six(&repo).await;
    let before = keys(&repo, "app/").await;
    let r = run(&repo, &options(keep_last_and_verified()), noon())
        .await
        .expect("prune");
    let states: Vec<(&str, State)> = r.states.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(
        states,
        [
            ("20261128T000000Z", State::Failed),
            ("20261128T010000Z", State::Verified),
            ("20261128T020000Z", State::Failed),
            ("20261128T030000Z", State::Verified),
            ("20261128T040000Z", State::Unverified),
            ("20261128T050000Z", State::Unverified),
        ]
    );
    // The newest verified (03) and what is newer (not drilled yet) stay.
    let kept: Vec<&str> = r
        .decisions
        .iter()
        .filter(|d| d.keep)
        .map(|d| d.id.as_str())
        .collect();
    assert_eq!(
        kept,
        ["20261128T050000Z", "20261128T040000Z", "20261128T030000Z"]
    );
    assert_eq!(
        r.deleted_backups,
        ids(&["20261128T020000Z", "20261128T010000Z", "20261128T000000Z"])
    );
    assert!(!r.has_errors(), "{r:?}");
    assert!(r.failed_deletes.is_empty() && r.orphans.is_empty(), "{r:?}");
    // Every object of a deleted backup is gone; the others are untouched.
    let after = keys(&repo, "app/").await;
    let expected: Vec<String> = before
        .iter()
        .filter(|k| {
            !r.deleted_backups
                .iter()
                .any(|id| k.starts_with(&format!("app/{id}/")))
        })
        .cloned()
        .collect();
    assert_eq!(after, expected);
    assert!(after
        .iter()
        .any(|k| k.starts_with("app/20261128T030000Z/verify-")));
    // A second run has nothing left to do.
    let again = run(&repo, &options(keep_last_and_verified()), noon())
        .await
        .expect("prune");
    assert!(again.deleted_backups.is_empty(), "{again:?}");
    assert_eq!(keys(&repo, "app/").await, after);
}

#[tokio::test]
async fn a_dry_run_decides_the_same_and_deletes_nothing() {
    let (_dir, repo) = repo();
    six(&repo).await;
    let before = keys(&repo, "app/").await;
    let mut opts = options(keep_last_and_verified());
    opts.dry_run = true;
    let dry = run(&repo, &opts, noon()).await.expect("dry run");
    assert!(dry.dry_run);
    assert!(dry.deleted_backups.is_empty(), "{dry:?}");
    assert_eq!(keys(&repo, "app/").await, before);
    opts.dry_run = false;
    let real = run(&repo, &opts, noon()).await.expect("prune");
    let doomed = |r: &PruneReport| -> BTreeSet<String> {
        r.decisions
            .iter()
            .filter(|d| !d.keep)
            .map(|d| d.id.clone())
            .collect()
    };
    assert_eq!(doomed(&dry), doomed(&real));
    assert_eq!(doomed(&real).len(), 3);
    assert_eq!(
        doomed(&real),
        real.deleted_backups
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>()
    );
}

#[tokio::test]
async fn one_backup_per_batch_deletes_them_all_newest_first() {
    let (_dir, repo) = repo();
    six(&repo).await;
    let mut opts = options(keep_last_and_verified());
    opts.batch = 1;
    let r = run(&repo, &opts, noon()).await.expect("prune");
    assert_eq!(
        r.deleted_backups,
        ids(&["20261128T020000Z", "20261128T010000Z", "20261128T000000Z"])
    );
    for id in &r.deleted_backups {
        assert!(keys(&repo, &format!("app/{id}/")).await.is_empty(), "{id}");
    }
    // Batch 0 means one at a time, not none.
    let (_dir2, repo2) = crate::fixtures::repo();
    six(&repo2).await;
    opts.batch = 0;
    let r = run(&repo2, &opts, noon()).await.expect("prune");
    assert_eq!(r.deleted_backups.len(), 3, "{r:?}");
}

#[tokio::test]
async fn a_pinned_backup_stays_whatever_the_policy() {
    let (_dir, repo) = repo();
    six(&repo).await;
    put(&repo, "app/20261128T000000Z/pinned", b"kept for the audit").await;
    let r = run(&repo, &options(keep_last_and_verified()), noon())
        .await
        .expect("prune");
    assert_eq!(
        r.deleted_backups,
        ids(&["20261128T020000Z", "20261128T010000Z"])
    );
    assert!(!keys(&repo, "app/20261128T000000Z/").await.is_empty());
}

#[tokio::test]
async fn a_backup_from_the_future_is_left_out_and_left_alone() {
    let (_dir, repo) = repo();
    six(&repo).await;
    // Written by a host whose clock ran an hour ahead.
    backup(
        &repo,
        "app",
        "20261128T130000Z",
        &[("database.dump.zst", b"x")],
    )
    .await;
    let policy = Policy {
        keep_last: 1,
        ..Policy::default()
    };
    let r = run(&repo, &options(policy), noon()).await.expect("prune");
    assert_eq!(r.future, ids(&["20261128T130000Z"]));
    assert!(!r.states.contains_key("20261128T130000Z"), "{r:?}");
    assert!(r.decisions.iter().all(|d| d.id != "20261128T130000Z"));
    // The policy counts the newest real backup as the last one; the
    // future one's objects are all still there.
    assert!(r
        .decisions
        .iter()
        .any(|d| d.keep && d.id == "20261128T050000Z"));
    assert_eq!(
        r.deleted_backups,
        ids(&["20261128T020000Z", "20261128T010000Z", "20261128T000000Z"])
    );
    assert_eq!(keys(&repo, "app/20261128T130000Z/").await.len(), 2);
    // Within the clock tolerance it is an ordinary backup, and the newest,
    // awaiting its drill.
    let r = run(
        &repo,
        &options(Policy {
            keep_last: 1,
            ..Policy::default()
        }),
        noon() + chrono::Duration::minutes(58),
    )
    .await
    .expect("prune");
    assert!(r.future.is_empty(), "{r:?}");
    assert_eq!(r.states.get("20261128T130000Z"), Some(&State::Unverified));
    let newest = &r.decisions[0];
    assert_eq!(newest.id, "20261128T130000Z");
    assert!(newest.keep, "{r:?}");
}

#[test]
fn grace_has_a_floor() {
    let e = check_grace("app", GC_GRACE_FLOOR - Duration::from_secs(1)).expect_err("below");
    assert!(e.to_string().contains("app"), "{e}");
    check_grace("app", GC_GRACE_FLOOR).expect("the floor itself");
}

#[test]
fn only_deletes_refused_for_another_reason_than_a_lock_are_errors() {
    let mut r = PruneReport {
        job: "app".into(),
        dry_run: false,
        decisions: Vec::new(),
        states: BTreeMap::new(),
        deleted_backups: Vec::new(),
        frees_bytes: 0,
        locked: Vec::new(),
        failed_deletes: Vec::new(),
        orphans: Vec::new(),
        stale_uploads: Vec::new(),
        running: Vec::new(),
        future: Vec::new(),
        foreign: Vec::new(),
        wal_pruned: Default::default(),
        wal_gaps: Vec::new(),
    };
    assert!(!r.has_errors());
    let locked = refugio_store::Error::Locked {
        store: "s3://bucket".into(),
        key: "app/x/manifest.json".into(),
        until: None,
    };
    r.failed_deletes
        .push(failed("app/x/manifest.json".into(), &locked));
    assert!(r.failed_deletes[0].locked);
    assert!(!r.has_errors());
    let io = refugio_store::Error::Io {
        op: "delete",
        key: "app/y/manifest.json".into(),
        store: "/repo".into(),
        source: std::io::Error::other("disk gone"),
    };
    r.failed_deletes
        .push(failed("app/y/manifest.json".into(), &io));
    assert!(!r.failed_deletes[1].locked);
    assert!(r.failed_deletes[1].error.contains("disk gone"), "{r:?}");
    assert!(r.has_errors());
}

/// An upload older than the grace period whose claim does not change is
/// dead: its objects are collected. One whose claim beats is running: left
/// alone, whatever its age. Within the grace period nothing is touched.
#[tokio::test(start_paused = true)]
async fn dead_uploads_are_collected_and_running_ones_are_not() {
    let (_dir, repo) = repo();
    six(&repo).await;
    put(&repo, "app/20261128T070000Z/database.dump.zst", b"half").await;
    put(&repo, "app/20261128T070000Z/claim-host-a", b"1").await;
    put(&repo, "app/20261128T080000Z/database.dump.zst", b"half").await;
    put(&repo, "app/20261128T080000Z/claim-host-b", b"1").await;
    // No claim at all (an older refugio): age alone decides.
    put(&repo, "app/20261128T090000Z/database.dump.zst", b"old").await;
    let policy = Policy {
        keep_last: 10,
        ..Policy::default()
    };
    // Within the grace period (the objects were written just now).
    let r = run(&repo, &options(policy.clone()), Utc::now())
        .await
        .expect("prune");
    assert!(r.orphans.is_empty() && r.running.is_empty(), "{r:?}");

    // Two days later by the prune's clock: 08's writer beats meanwhile, at
    // the heartbeat's pace (first after one interval).
    let beat_repo = repo.clone();
    let beat = refugio_store::repo::HEARTBEAT_INTERVAL;
    let beating = tokio::spawn(async move {
        for n in 2.. {
            tokio::time::sleep(beat).await;
            put(
                &beat_repo,
                "app/20261128T080000Z/claim-host-b",
                format!("{n}").as_bytes(),
            )
            .await;
        }
    });
    let later = Utc::now() + chrono::Duration::days(2);
    let watched = tokio::time::Instant::now();
    let r = run(&repo, &options(policy), later).await.expect("prune");
    let watched = watched.elapsed();
    beating.abort();
    // Prune watched the claims for two and a half beats (paused time: only
    // its own wait counts).
    assert!(
        watched >= beat * 2 && watched < beat * 3,
        "watched {watched:?}"
    );
    assert_eq!(r.running, ids(&["20261128T080000Z"]), "{r:?}");
    assert_eq!(
        r.orphans,
        ids(&[
            "app/20261128T070000Z/claim-host-a",
            "app/20261128T070000Z/database.dump.zst",
            "app/20261128T090000Z/database.dump.zst",
        ])
    );
    assert!(keys(&repo, "app/20261128T070000Z/").await.is_empty());
    assert!(keys(&repo, "app/20261128T090000Z/").await.is_empty());
    assert_eq!(keys(&repo, "app/20261128T080000Z/").await.len(), 2);
    // A claim that goes while prune watches (its backup just committed or
    // gave up) is not garbage yet either.
    let gone = repo.clone();
    let going = tokio::spawn(async move {
        tokio::time::sleep(beat).await;
        gone.store()
            .delete("app/20261128T080000Z/claim-host-b")
            .await
            .expect("delete");
    });
    let r = run(
        &repo,
        &options(Policy {
            keep_last: 10,
            ..Policy::default()
        }),
        later,
    )
    .await
    .expect("prune");
    going.await.expect("the claim went");
    assert_eq!(r.running, ids(&["20261128T080000Z"]), "{r:?}");
    assert!(r.orphans.is_empty(), "{r:?}");
    assert_eq!(keys(&repo, "app/20261128T080000Z/").await.len(), 1);
    // Committed backups are never garbage, however old.
    assert!(r.deleted_backups.is_empty(), "{r:?}");
    assert_eq!(keys(&repo, "app/20261128T050000Z/").await.len(), 2);
}

#[tokio::test]
async fn a_cancelled_prune_says_so() {
    let (_dir, repo) = repo();
    six(&repo).await;
    let cancel = CancellationToken::new();
    cancel.cancel();
    let e = prune(
        &repo,
        &options(keep_last_and_verified()),
        &FixedClock(noon()),
        &cancel,
    )
    .await
    .expect_err("cancelled");
    assert!(matches!(e, Error::Cancelled { .. }), "{e}");
    // However far it got (a directory store answers without waiting), no
    // manifest is left without its artifacts: only orphans, if anything.
    let checked = crate::check::check(
        &repo,
        &crate::check::CheckOptions {
            job: "app".into(),
            read_data: crate::check::ReadData::None,
            grace: crate::check::DEFAULT_GRACE,
            progress: None,
        },
        &FixedClock(noon()),
        &CancellationToken::new(),
    )
    .await
    .expect("check");
    assert_eq!(checked.damage_count(), 0, "{checked:?}");
    assert!(checked.backups >= 3, "{checked:?}");
}

/// On S3: a multipart upload older than the grace period is aborted
/// (reported in a dry run, aborted by the real one); a younger one stays.
#[tokio::test]
async fn stale_uploads_are_aborted_after_the_grace_period() {
    let repo = crate::fixtures::moto_repo("prune-stale").await;
    backup(
        &repo,
        "app",
        "20261128T060000Z",
        &[("database.dump.zst", b"dump")],
    )
    .await;
    let key = "app/20261128T120000Z/database.dump.zst";
    let began = crate::fixtures::pending_upload(&repo, key).await;
    let grace = chrono::Duration::from_std(GC_GRACE_FLOOR).expect("grace");
    let policy = Policy {
        keep_last: 1,
        ..Policy::default()
    };
    let r = run(&repo, &options(policy.clone()), began + grace)
        .await
        .expect("prune");
    assert!(r.stale_uploads.is_empty(), "{r:?}");
    let late = began + grace + chrono::Duration::seconds(1);
    let mut dry = options(policy.clone());
    dry.dry_run = true;
    let r = run(&repo, &dry, late).await.expect("dry run");
    assert_eq!(r.stale_uploads, [key]);
    assert_eq!(
        repo.store()
            .list_multipart_uploads("app/")
            .await
            .expect("list")
            .len(),
        1
    );
    let r = run(&repo, &options(policy), late).await.expect("prune");
    assert_eq!(r.stale_uploads, [key]);
    assert!(r.failed_deletes.is_empty(), "{r:?}");
    assert!(repo
        .store()
        .list_multipart_uploads("app/")
        .await
        .expect("list")
        .is_empty());
    // The committed backup is not garbage.
    assert_eq!(keys(&repo, "app/20261128T060000Z/").await.len(), 2);
}

/// A job with a WAL archive is pruned as a physical one even when its
/// options do not say so: the WAL before the oldest kept base backup's
/// start goes with the backups; a gap that cuts a base backup makes it
/// count as unverified, whatever its drill said.
#[tokio::test]
async fn the_wal_goes_with_the_base_backups_that_needed_it() {
    let (_dir, repo) = repo();
    crate::fixtures::base_backup(&repo, "app", "20261202T060000Z", 7).await;
    crate::fixtures::base_backup(&repo, "app", "20261202T120000Z", 10).await;
    drilled(&repo, "app", "20261202T060000Z", Outcome::Passed).await;
    drilled(&repo, "app", "20261202T120000Z", Outcome::Passed).await;
    let mut wal = Vec::new();
    for segment in 5..=11 {
        wal.push(crate::fixtures::archived_segment(&repo, "app", segment).await);
    }
    let policy = Policy {
        keep_last: 1,
        ..Policy::default()
    };
    let now = Utc.with_ymd_and_hms(2026, 12, 2, 18, 0, 0).unwrap();
    let mut dry = options(policy.clone());
    dry.dry_run = true;
    let r = run(&repo, &dry, now).await.expect("dry run");
    assert!(r.wal_gaps.is_empty(), "{r:?}");
    assert_eq!(r.wal_pruned.files, 5, "{r:?}");
    assert_eq!(
        r.wal_pruned.before.as_deref(),
        Some("00000001000000000000000A")
    );
    assert_eq!(keys(&repo, "app/wal/").await.len(), 7);

    let r = run(&repo, &options(policy.clone()), now)
        .await
        .expect("prune");
    assert_eq!(r.deleted_backups, ids(&["20261202T060000Z"]));
    assert_eq!(keys(&repo, "app/wal/").await, wal[5..].to_vec());

    // A gap in what the newest base backup needs: it counts as unverified.
    repo.store().delete(&wal[5]).await.expect("delete");
    let r = run(&repo, &dry, now).await.expect("dry run");
    assert_eq!(
        r.states.get("20261202T120000Z"),
        Some(&State::Unverified),
        "{r:?}"
    );
    assert_eq!(r.wal_gaps.len(), 1, "{r:?}");
    assert_eq!(r.wal_gaps[0].backups, ids(&["20261202T120000Z"]));
}

/// Leftovers are collected once older than `gc_grace`, not at it.
#[tokio::test]
async fn the_grace_period_ends_after_its_length() {
    let (_dir, repo) = repo();
    let key = "app/20261127T000000Z/database.dump.zst";
    put(&repo, key, b"partial").await;
    let written = crate::fixtures::modified(&repo, key).await;
    let grace = chrono::Duration::from_std(GC_GRACE_FLOOR).expect("grace");
    let policy = Policy {
        keep_last: 1,
        ..Policy::default()
    };
    let r = run(&repo, &options(policy.clone()), written + grace)
        .await
        .expect("prune");
    assert!(r.orphans.is_empty(), "{r:?}");
    assert_eq!(keys(&repo, "app/").await, [key]);
    let r = run(
        &repo,
        &options(policy),
        written + grace + chrono::Duration::milliseconds(1),
    )
    .await
    .expect("prune");
    assert_eq!(r.orphans, [key]);
    assert!(keys(&repo, "app/").await.is_empty());
}

/// Under S3 Object Lock a doomed backup whose lock runs past now is kept
/// and reported with its date, and nothing of it is touched; at its date
/// it goes like any other.
#[tokio::test]
async fn a_locked_backup_is_kept_until_its_date() {
    let repo = crate::fixtures::moto_locked_repo().await;
    for h in 0..3 {
        let id = format!("20261128T0{h}0000Z");
        backup(&repo, "app", &id, &[("database.dump.zst", id.as_bytes())]).await;
        drilled(&repo, "app", &id, Outcome::Passed).await;
    }
    let until = Utc::now() + chrono::Duration::days(1);
    let until = until - chrono::Duration::nanoseconds(until.timestamp_subsec_nanos().into());
    repo.store()
        .set_retention(
            "app/20261128T000000Z/manifest.json",
            &refugio_store::Retention {
                mode: refugio_store::LockMode::Governance,
                until,
            },
        )
        .await
        .expect("lock");
    let mut opts = options(Policy {
        keep_last: 1,
        ..Policy::default()
    });
    opts.object_lock = true;
    // Before its date: kept and reported with the date, nothing tried.
    let r = run(&repo, &opts, until - chrono::Duration::seconds(1))
        .await
        .expect("prune");
    assert_eq!(r.locked.len(), 1, "{r:?}");
    assert_eq!(
        (r.locked[0].id.as_str(), r.locked[0].until),
        ("20261128T000000Z", until)
    );
    assert_eq!(r.deleted_backups, ids(&["20261128T010000Z"]), "{r:?}");
    assert!(r.failed_deletes.is_empty(), "{r:?}");
    assert_eq!(keys(&repo, "app/20261128T000000Z/").await.len(), 3);
    // At its date: it goes.
    let r = run(&repo, &opts, until).await.expect("prune");
    assert!(r.locked.is_empty(), "{r:?}");
    assert_eq!(r.deleted_backups, ids(&["20261128T000000Z"]), "{r:?}");
}

/// A manifest delete the store refuses leaves that backup whole (its
/// artifacts too) and is reported; the rest of the batch goes.
#[tokio::test]
async fn a_refused_delete_spares_its_backup_and_not_the_others() {
    let (_dir, plain) = repo();
    six(&plain).await;
    let repo = crate::fixtures::Racing::refusing(&plain, "app/20261128T010000Z/manifest.json");
    let r = run(&repo, &options(keep_last_and_verified()), noon())
        .await
        .expect("prune");
    assert_eq!(
        r.deleted_backups,
        ids(&["20261128T020000Z", "20261128T000000Z"])
    );
    assert_eq!(r.failed_deletes.len(), 1, "{r:?}");
    assert_eq!(
        r.failed_deletes[0].key,
        "app/20261128T010000Z/manifest.json"
    );
    assert!(r.failed_deletes[0].locked, "{r:?}");
    assert_eq!(keys(&plain, "app/20261128T010000Z/").await.len(), 3);
    assert!(keys(&plain, "app/20261128T020000Z/").await.is_empty());
    assert!(keys(&plain, "app/20261128T000000Z/").await.is_empty());
}
