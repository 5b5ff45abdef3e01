//! Check: the repository's integrity, without a restore (restic's `check
//! --read-data`, pgBackRest's `verify`).
//!
//! One paginated listing of the job's prefix gives every object's size; each
//! committed backup's manifest is read (a few at a time) and every artifact
//! it names (`manifest.artifacts`, whatever their number) must be listed
//! with the manifest's `stored_size`. With [`ReadData`] the chosen backups'
//! artifacts are also streamed back and their SHA-256 compared with the
//! manifest's (the digest is of the stored bytes, so nothing is decrypted
//! or decompressed).
//!
//! What the listing alone suggests is confirmed before it is reported: an
//! artifact absent from the listing or listed with another size is asked
//! for again (HEAD), and a missing one counts only while its manifest still
//! exists, so a backup committed or pruned while the check lists is never
//! reported damaged. "Checked and found bad" ([`CheckReport::damaged`],
//! [`CheckReport::missing`]) is kept apart from "could not check"
//! ([`CheckReport::unchecked`], or an `Err` when the listing or a manifest
//! read fails): only the first is damage.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use refugio_store::manifest::{Manifest, MANIFEST_NAME};
use refugio_store::repo::Repository;
use refugio_store::verified::{get_verified, verification_error};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::receipt::ReceiptName;

pub mod record;
mod report;
pub use report::{
    CheckOutcome, CheckReport, Damaged, DataRead, ForeignObject, Missing, Problem, Unchecked,
};

/// Default age after which objects without a manifest and multipart uploads
/// are reported (prune's default `gc_grace`).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);
/// Manifests read at once.
const MANIFEST_CONCURRENCY: usize = 16;
/// Artifacts streamed at once with `--read-data`.
const READ_CONCURRENCY: usize = 4;
/// Read buffer per artifact stream: memory is bounded by
/// `READ_CONCURRENCY` × this, whatever the artifacts' sizes.
const READ_BUFFER: usize = 256 * 1024;

/// Which backups' artifacts are streamed and re-hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadData {
    /// None: sizes only, from the listing.
    None,
    /// Every committed backup.
    All,
    /// One backup: an id or `latest`.
    Backup(String),
    /// Part `part` (1-based) of `of`: the backups whose id hashes to it, so
    /// `1/7` … `7/7` on seven days read every backup once.
    Subset { part: u32, of: u32 },
}

impl ReadData {
    /// Parses `--subset N/M` (1 ≤ N ≤ M).
    pub fn subset(spec: &str) -> std::result::Result<ReadData, String> {
        let bad = || format!("{spec:?} is not N/M with 1 <= N <= M (e.g. 1/7)");
        let (n, m) = spec.split_once('/').ok_or_else(bad)?;
        let part: u32 = n.trim().parse().map_err(|_| bad())?;
        let of: u32 = m.trim().parse().map_err(|_| bad())?;
        if part == 0 || part > of {
            return Err(bad());
        }
        Ok(ReadData::Subset { part, of })
    }

    /// How the report names it: `none`, `all`, `backup <id>`, `subset 1/7`.
    fn describe(&self) -> String {
        match self {
            ReadData::None => "none".into(),
            ReadData::All => "all".into(),
            ReadData::Backup(id) => format!("backup {id}"),
            ReadData::Subset { part, of } => format!("subset {part}/{of}"),
        }
    }
}

/// Whether backup `id` is in part `part` (1-based) of `of`: the first
/// eight bytes of SHA-256 of the id, modulo `of`. Deterministic, and every
/// id is in exactly one part.
pub fn in_subset(id: &str, part: u32, of: u32) -> bool {
    let digest = Sha256::digest(id.as_bytes());
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    of > 0 && u64::from_be_bytes(head) % u64::from(of) == u64::from(part.saturating_sub(1))
}

/// How a check runs.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// The job whose backups are checked.
    pub job: String,
    /// Which backups' artifacts are streamed and re-hashed.
    pub read_data: ReadData,
    /// Objects without a manifest and multipart uploads younger than this
    /// are a backup in progress, not reported ([`DEFAULT_GRACE`]).
    pub grace: Duration,
    /// Counters and phase for a progress display; None: not shown.
    pub progress: Option<std::sync::Arc<crate::Progress>>,
}

/// One object of the listing.
#[derive(Debug, Clone, Copy)]
struct Listed {
    size: u64,
    modified: Option<DateTime<Utc>>,
}

/// One backup id of the listing: its objects by name.
#[derive(Debug, Default)]
struct IdObjects {
    objects: BTreeMap<String, Listed>,
}

impl IdObjects {
    fn committed(&self) -> bool {
        self.objects.contains_key(MANIFEST_NAME)
    }

    fn newest(&self) -> Option<DateTime<Utc>> {
        self.objects.values().filter_map(|o| o.modified).max()
    }
}

/// Checks one job at the clock's time (which judges the grace period).
/// Cancelling stops between requests; a check changes nothing.
pub async fn check(
    repo: &Repository,
    opts: &CheckOptions,
    clock: &dyn Clock,
    cancel: &CancellationToken,
) -> Result<CheckReport> {
    tokio::select! {
        r = check_once(repo, opts, clock) => r,
        _ = cancel.cancelled() => Err(Error::Cancelled {
            what: format!("check of job {}", opts.job),
            detail: String::new(),
        }),
    }
}

async fn check_once(
    repo: &Repository,
    opts: &CheckOptions,
    clock: &dyn Clock,
) -> Result<CheckReport> {
    let started_at = clock.now();
    let job = opts.job.as_str();
    let ids = list_ids(repo, job).await?;
    let mut report = CheckReport::new(job, started_at, opts.read_data.describe());
    let horizon = repo.horizon(started_at);
    for (id, _) in ids.iter().filter(|(_, o)| o.committed()) {
        if crate::listing::id_time(id).is_some_and(|t| t > horizon) {
            tracing::warn!(job, backup = %id, "future-backup: dated later than now plus clock_tolerance; ignored by scheduling, latest, drills and retention");
            report.future.push(id.clone());
        }
    }
    let cutoff = crate::gc::cutoff(started_at, opts.grace);
    leftovers(repo, job, &ids, cutoff, &mut report).await?;
    let committed: Vec<String> = ids
        .iter()
        .filter(|(_, o)| o.committed())
        .map(|(id, _)| id.clone())
        .collect();
    let selected = selection(repo, job, &committed, &opts.read_data, &mut report)?;
    let (to_read, bases) =
        check_manifests(repo, job, &ids, committed, &*selected, &mut report).await?;
    read_artifacts(repo, job, to_read, opts.progress.as_ref(), &mut report).await?;
    let (archived, foreign) = crate::wal::authentic(repo, crate::wal::list(repo, job).await?);
    report.foreign.extend(
        foreign
            .into_iter()
            .map(|(o, reason)| ForeignObject { key: o.key, reason }),
    );
    if !bases.is_empty() || !archived.is_empty() {
        report.wal = Some(crate::wal_chain::continuity(&archived, &bases));
    }
    report.damaged.sort_by(|a, b| a.key.cmp(&b.key));
    report.missing.sort_by(|a, b| a.key.cmp(&b.key));
    report.unchecked.sort_by(|a, b| a.key.cmp(&b.key));
    report.outcome = report.judge();
    report.finished_at = clock.now();
    Ok(report)
}

/// The job's backup ids and their objects, from one listing (the WAL
/// archive aside).
async fn list_ids(repo: &Repository, job: &str) -> Result<BTreeMap<String, IdObjects>> {
    let prefix = format!("{job}/");
    let mut ids: BTreeMap<String, IdObjects> = BTreeMap::new();
    let mut listing = repo.store().list(&prefix);
    while let Some(o) = listing.try_next().await? {
        let rest = o.key.strip_prefix(&prefix).unwrap_or(&o.key);
        let Some((id, name)) = rest.split_once('/') else {
            continue;
        };
        // The WAL archive of a physical job is not a backup id, nor is
        // the record of the last check.
        if id == refugio_store::repo::WAL_DIR || id == refugio_store::repo::CHECKS_DIR {
            continue;
        }
        ids.entry(id.to_string()).or_default().objects.insert(
            name.to_string(),
            Listed {
                size: o.size,
                modified: o.last_modified,
            },
        );
    }
    Ok(ids)
}

/// Uncommitted ids: receipts (always worth saying), then the rest once
/// older than `cutoff` (younger ones are a backup in progress); and the
/// multipart uploads older than `cutoff`.
async fn leftovers(
    repo: &Repository,
    job: &str,
    ids: &BTreeMap<String, IdObjects>,
    cutoff: DateTime<Utc>,
    report: &mut CheckReport,
) -> Result<()> {
    for (id, objs) in ids.iter().filter(|(_, o)| !o.committed()) {
        let old = crate::gc::is_old(objs.newest(), cutoff);
        for name in objs.objects.keys() {
            let key = Repository::key(job, id, name);
            if ReceiptName::parse(name).is_some() {
                report.receipts_without_manifest.push(key);
            } else if old {
                report.orphans.push(key);
            }
        }
    }
    report.stale_uploads = crate::gc::stale_uploads(repo, job, cutoff)
        .await?
        .into_iter()
        .map(|u| u.key)
        .collect();
    Ok(())
}

/// Whether a committed backup's data is read, by its id.
type Selected = Box<dyn Fn(&str) -> bool + Send + Sync>;

/// Which committed backups' data is read, as `read_data` says; `--backup`
/// names its one backup in the report's scope.
fn selection(
    repo: &Repository,
    job: &str,
    committed: &[String],
    read_data: &ReadData,
    report: &mut CheckReport,
) -> Result<Selected> {
    Ok(match read_data {
        ReadData::None => Box::new(|_| false),
        ReadData::All => Box::new(|_| true),
        ReadData::Backup(spec) => {
            let id = match spec.as_str() {
                // Ids are UTC start times: the greatest is the newest.
                "latest" => committed.last().map(|id| id.to_string()),
                id => committed
                    .iter()
                    .find(|c| c.as_str() == id)
                    .map(|id| id.to_string()),
            };
            let Some(id) = id else {
                return Err(Error::Store(refugio_store::Error::BackupNotFound {
                    store: repo.describe(),
                    job: job.to_string(),
                    backup: spec.clone(),
                }));
            };
            report.read.scope = format!("backup {id}");
            Box::new(move |candidate| candidate == id)
        }
        &ReadData::Subset { part, of } => Box::new(move |id| in_subset(id, part, of)),
    })
}

/// An artifact to read: its backup id and the manifest's entry.
type ToRead = (String, refugio_store::manifest::Artifact);

/// Reads the committed backups' manifests, a few at a time, and checks
/// every artifact against the listing. Returns the whole artifacts of the
/// `selected` backups (to read) and what each base backup needs of WAL.
async fn check_manifests(
    repo: &Repository,
    job: &str,
    ids: &BTreeMap<String, IdObjects>,
    committed: Vec<String>,
    selected: &(dyn Fn(&str) -> bool + Send + Sync),
    report: &mut CheckReport,
) -> Result<(Vec<ToRead>, Vec<crate::wal_chain::BaseNeeds>)> {
    let mut manifests = futures::stream::iter(committed)
        .map(|id| async move {
            let read = repo.read_manifest(job, &id).await;
            (id, read)
        })
        .buffered(MANIFEST_CONCURRENCY);
    let mut to_read: Vec<ToRead> = Vec::new();
    let mut bases = Vec::new();
    while let Some((id, read)) = manifests.next().await {
        let id = id.as_str();
        let Some(m) = usable_manifest(job, id, read, report)? else {
            continue;
        };
        report.backups += 1;
        if let Some(needs) = crate::wal_chain::BaseNeeds::of(&m) {
            bases.push(needs);
        }
        let read_this = selected(id);
        if read_this {
            report.read.backups += 1;
        }
        let objs = &ids[id];
        for art in &m.artifacts {
            report.artifacts += 1;
            let key = Repository::key(job, id, &art.name);
            let listed = objs.objects.get(&art.name).map(|o| o.size);
            let whole = match listed {
                Some(size) if size == art.stored_size => true,
                // The listing suggests damage: ask again before saying so.
                _ => confirm(repo, job, id, &key, art.stored_size, report).await?,
            };
            if whole && read_this {
                to_read.push((id.to_string(), art.clone()));
            }
        }
    }
    Ok((to_read, bases))
}

/// A manifest as read: the manifest, or None with what it means in the
/// report (deleted since the listing: nothing; unreadable: damage; not
/// signed by a trusted key: foreign; too new a format: unchecked).
fn usable_manifest(
    job: &str,
    id: &str,
    read: std::result::Result<Option<Manifest>, refugio_store::Error>,
    report: &mut CheckReport,
) -> Result<Option<Manifest>> {
    let manifest_key = Repository::manifest_key(job, id);
    match read {
        Ok(Some(m)) => return Ok(Some(m)),
        // Deleted since the listing (a prune): not a backup any more.
        Ok(None) => {}
        Err(refugio_store::Error::InvalidManifest { reason, .. }) => {
            report.backups += 1;
            report.damaged.push(Damaged {
                backup_id: id.to_string(),
                key: manifest_key,
                problem: Problem::Manifest { reason },
            });
        }
        Err(refugio_store::Error::Unauthenticated { key, reason }) => {
            report.foreign.push(ForeignObject { key, reason });
        }
        Err(e @ refugio_store::Error::UnsupportedManifest { .. }) => {
            report.unchecked.push(Unchecked {
                backup_id: id.to_string(),
                key: manifest_key,
                error: e.to_string(),
            });
        }
        Err(e) => return Err(e.into()),
    }
    Ok(None)
}

/// Streams and re-hashes `to_read`, a few at a time, into the report.
async fn read_artifacts(
    repo: &Repository,
    job: &str,
    to_read: Vec<ToRead>,
    progress: Option<&std::sync::Arc<crate::Progress>>,
    report: &mut CheckReport,
) -> Result<()> {
    crate::progress::phase(progress, || {
        format!("reading {} artifacts of job {job}", to_read.len())
    });
    if let Some(p) = progress {
        p.add_total(to_read.iter().map(|(_, art)| art.stored_size).sum());
    }
    let mut reads = futures::stream::iter(to_read)
        .map(|(id, art)| async move {
            let key = Repository::key(job, &id, &art.name);
            let r = read_artifact(repo, &key, art.stored_size, &art.sha256, progress).await;
            (id, key, r)
        })
        .buffer_unordered(READ_CONCURRENCY);
    while let Some((id, key, r)) = reads.next().await {
        match r {
            Read::Whole(bytes) => {
                report.read.artifacts += 1;
                report.read.bytes += bytes;
            }
            Read::Bad(problem) => report.damaged.push(Damaged {
                backup_id: id,
                key,
                problem,
            }),
            Read::Gone => {
                if manifest_exists(repo, job, &id).await? {
                    report.missing.push(Missing { backup_id: id, key });
                }
            }
            Read::Failed(error) => report.unchecked.push(Unchecked {
                backup_id: id,
                key,
                error,
            }),
        }
    }
    Ok(())
}

/// Confirms with a HEAD what the listing suggested of artifact `key`
/// (absent, or another size): records it as missing or damaged, or
/// returns true when the stored object is whole after all (the listing
/// raced a write). A backup whose manifest is gone by now was pruned
/// meanwhile: nothing is recorded.
async fn confirm(
    repo: &Repository,
    job: &str,
    id: &str,
    key: &str,
    expected: u64,
    report: &mut CheckReport,
) -> Result<bool> {
    match repo.store().head(key).await? {
        Some(meta) if meta.size == expected => Ok(true),
        Some(meta) => {
            report.damaged.push(Damaged {
                backup_id: id.to_string(),
                key: key.to_string(),
                problem: Problem::Size {
                    expected,
                    actual: meta.size,
                },
            });
            Ok(false)
        }
        None => {
            if manifest_exists(repo, job, id).await? {
                report.missing.push(Missing {
                    backup_id: id.to_string(),
                    key: key.to_string(),
                });
            }
            Ok(false)
        }
    }
}

async fn manifest_exists(repo: &Repository, job: &str, id: &str) -> Result<bool> {
    Ok(repo
        .store()
        .head(&Repository::manifest_key(job, id))
        .await?
        .is_some())
}

/// What streaming one artifact back found.
enum Read {
    /// Read to its end with the manifest's size and digest: the bytes read.
    Whole(u64),
    /// Checked and found bad.
    Bad(Problem),
    /// Not there (any more).
    Gone,
    /// Could not be read: the error.
    Failed(String),
}

/// Streams artifact `key` and checks its size and SHA-256. A download that
/// ends early while the store still says the object is whole is a failed
/// read, not damage (a cut connection), as in a restore.
async fn read_artifact(
    repo: &Repository,
    key: &str,
    size: u64,
    sha256: &str,
    progress: Option<&std::sync::Arc<crate::Progress>>,
) -> Read {
    let mut reader = match get_verified(repo.store().as_ref(), key, size, sha256).await {
        Ok(r) => r,
        Err(refugio_store::Error::NotFound { .. }) => return Read::Gone,
        Err(e) => return Read::Failed(refugio_print::chain(&e)),
    };
    let mut buf = vec![0u8; READ_BUFFER];
    let error = loop {
        match reader.read(&mut buf).await {
            Ok(0) => return Read::Whole(reader.bytes_read()),
            Ok(n) => {
                if let Some(p) = progress {
                    p.read
                        .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                }
            }
            Err(e) => break e,
        }
    };
    match verification_error(&error) {
        Some(refugio_store::Error::SizeMismatch { actual, .. }) if *actual < size => {
            match repo.store().head(key).await {
                Ok(Some(meta)) if meta.size == size => Read::Failed(format!(
                    "the download ended after {actual} of {size} bytes while the stored object is whole"
                )),
                Ok(Some(meta)) => Read::Bad(Problem::Size {
                    expected: size,
                    actual: meta.size,
                }),
                Ok(None) => Read::Gone,
                Err(e) => Read::Failed(format!(
                    "the download ended early and the object's size could not be checked: {}",
                    refugio_print::chain(&e)
                )),
            }
        }
        Some(refugio_store::Error::SizeMismatch {
            expected, actual, ..
        }) => Read::Bad(Problem::Size {
            expected: *expected,
            actual: *actual,
        }),
        Some(refugio_store::Error::DigestMismatch {
            expected, actual, ..
        }) => Read::Bad(Problem::Digest {
            expected: expected.clone(),
            actual: actual.clone(),
        }),
        _ => Read::Failed(refugio_print::chain(&error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FixedClock;
    use bytes::Bytes;
    use refugio_store::PutOptions;

    use crate::fixtures::{backup, repo};

    async fn run(
        repo: &Repository,
        read_data: ReadData,
        now: DateTime<Utc>,
    ) -> Result<CheckReport> {
        let opts = CheckOptions {
            job: "app".into(),
            read_data,
            grace: DEFAULT_GRACE,
            progress: None,
        };
        check(repo, &opts, &FixedClock(now), &CancellationToken::new()).await
    }

    fn later() -> DateTime<Utc> {
        Utc::now() + chrono::Duration::days(2)
    }

    #[test]
    fn subsets_partition_the_backups() {
        let ids: Vec<String> = (0..700)
            .map(|i| format!("2026{:02}{:02}T{:02}0000Z", 1 + i % 12, 1 + i % 28, i % 24))
            .collect();
        let mut sizes = [0usize; 7];
        for id in &ids {
            let parts: Vec<u32> = (1..=7).filter(|p| in_subset(id, *p, 7)).collect();
            assert_eq!(parts.len(), 1, "{id} is in {parts:?}");
            sizes[parts[0] as usize - 1] += 1;
        }
        assert!(sizes.iter().all(|n| *n > 0), "{sizes:?}");
        assert!(in_subset("x", 1, 1));
        assert!(!in_subset("x", 1, 0));
    }

    #[test]
    fn subset_specs() {
        assert_eq!(
            ReadData::subset("1/7"),
            Ok(ReadData::Subset { part: 1, of: 7 })
        );
        assert_eq!(
            ReadData::subset("7/7"),
            Ok(ReadData::Subset { part: 7, of: 7 })
        );
        for bad in ["0/7", "8/7", "1", "a/b", "1/0", ""] {
            let e = ReadData::subset(bad).expect_err(bad);
            assert!(e.contains("N/M"), "{e}");
        }
    }

    #[tokio::test]
    async fn a_clean_repository_passes_and_damage_is_found() {
        let (_dir, repo) = repo();
        backup(
            &repo,
            "app",
            "20261128T060000Z",
            &[
                ("database.dump.zst", b"dump one"),
                ("globals.sql.zst", b"roles"),
            ],
        )
        .await;
        backup(
            &repo,
            "app",
            "20261128T120000Z",
            &[("database.dump.zst", b"dump two")],
        )
        .await;
        let r = run(&repo, ReadData::All, later()).await.expect("check");
        assert_eq!(r.outcome, CheckOutcome::Clean, "{r:?}");
        assert_eq!((r.backups, r.artifacts, r.read.artifacts), (2, 3, 3));
        assert_eq!(r.read.bytes, 21);

        // Same size, one byte changed: only reading finds it.
        let key = "app/20261128T060000Z/database.dump.zst";
        repo.store()
            .put(key, Bytes::from_static(b"dump 0ne"), PutOptions::default())
            .await
            .expect("put");
        let plain = run(&repo, ReadData::None, later()).await.expect("check");
        assert_eq!(plain.outcome, CheckOutcome::Clean, "{plain:?}");
        assert_eq!(plain.read.artifacts, 0);
        let read = run(&repo, ReadData::All, later()).await.expect("check");
        assert_eq!(read.outcome, CheckOutcome::Damaged);
        assert_eq!(read.damaged.len(), 1, "{read:?}");
        assert_eq!(read.damaged[0].key, key);
        assert!(matches!(read.damaged[0].problem, Problem::Digest { .. }));
        // The other backup only: the damaged one is not read.
        let other = run(&repo, ReadData::Backup("latest".into()), later())
            .await
            .expect("check");
        assert_eq!(other.outcome, CheckOutcome::Clean, "{other:?}");
        assert_eq!(other.read.scope, "backup 20261128T120000Z");
        assert_eq!(other.read.artifacts, 1);

        // Truncated and deleted: found from the listing alone.
        repo.store()
            .put(key, Bytes::from_static(b"dump"), PutOptions::default())
            .await
            .expect("put");
        repo.store()
            .delete("app/20261128T120000Z/database.dump.zst")
            .await
            .expect("delete");
        let r = run(&repo, ReadData::None, later()).await.expect("check");
        assert_eq!(r.outcome, CheckOutcome::Damaged);
        assert_eq!(
            r.damaged[0].problem,
            Problem::Size {
                expected: 8,
                actual: 4
            }
        );
        assert_eq!(
            r.missing,
            vec![Missing {
                backup_id: "20261128T120000Z".into(),
                key: "app/20261128T120000Z/database.dump.zst".into()
            }]
        );
        assert_eq!(r.damage_count(), 2);
    }

    #[tokio::test]
    async fn leftovers_are_reported_but_are_not_damage() {
        let (_dir, repo) = repo();
        backup(
            &repo,
            "app",
            "20261128T060000Z",
            &[("database.dump.zst", b"dump")],
        )
        .await;
        repo.store()
            .put(
                "app/20261127T000000Z/database.dump.zst",
                Bytes::from_static(b"partial"),
                PutOptions::default(),
            )
            .await
            .expect("put");
        repo.store()
            .put(
                "app/20261126T000000Z/verify-20261126T010000.000Z-ok.json",
                Bytes::from_static(b"{}"),
                PutOptions::default(),
            )
            .await
            .expect("put");
        // Within the grace period an uncommitted backup is one in progress.
        let now = run(&repo, ReadData::None, Utc::now()).await.expect("check");
        assert!(now.orphans.is_empty(), "{now:?}");
        let r = run(&repo, ReadData::None, later()).await.expect("check");
        assert_eq!(r.outcome, CheckOutcome::Clean);
        assert_eq!(r.orphans, vec!["app/20261127T000000Z/database.dump.zst"]);
        assert_eq!(
            r.receipts_without_manifest,
            vec!["app/20261126T000000Z/verify-20261126T010000.000Z-ok.json"]
        );
        assert_eq!(now.receipts_without_manifest, r.receipts_without_manifest);
    }

    #[tokio::test]
    async fn an_unreadable_manifest_is_damage_and_an_unknown_backup_an_error() {
        let (_dir, repo) = repo();
        repo.store()
            .put(
                "app/20261128T060000Z/manifest.json",
                Bytes::from_static(b"{ not json"),
                PutOptions::default(),
            )
            .await
            .expect("put");
        let r = run(&repo, ReadData::None, later()).await.expect("check");
        assert_eq!(r.outcome, CheckOutcome::Damaged);
        assert!(
            matches!(r.damaged[0].problem, Problem::Manifest { .. }),
            "{r:?}"
        );
        // Counted as a backup (a damaged one), not skipped.
        assert_eq!((r.backups, r.artifacts), (1, 0));
        let e = run(&repo, ReadData::Backup("20200101T000000Z".into()), later())
            .await
            .expect_err("no such backup");
        assert!(e.to_string().contains("20200101T000000Z"), "{e}");
    }

    #[tokio::test]
    async fn the_report_names_its_scope_and_what_it_read() {
        let (_dir, repo) = repo();
        for id in ["20261128T060000Z", "20261128T120000Z", "20261128T180000Z"] {
            backup(&repo, "app", id, &[("database.dump.zst", id.as_bytes())]).await;
        }
        let none = run(&repo, ReadData::None, later()).await.expect("check");
        assert_eq!(
            none.read,
            DataRead {
                scope: "none".into(),
                ..DataRead::default()
            }
        );
        assert_eq!(none.outcome.as_str(), "clean");
        // A logical job has no WAL to judge.
        assert!(none.wal.is_none(), "{none:?}");
        let all = run(&repo, ReadData::All, later()).await.expect("check");
        assert_eq!(
            all.read,
            DataRead {
                scope: "all".into(),
                backups: 3,
                artifacts: 3,
                bytes: 48,
            }
        );
        let one = run(&repo, ReadData::Backup("20261128T120000Z".into()), later())
            .await
            .expect("check");
        assert_eq!(
            (one.read.scope.as_str(), one.read.backups),
            ("backup 20261128T120000Z", 1)
        );
        let part = run(&repo, ReadData::Subset { part: 2, of: 3 }, later())
            .await
            .expect("check");
        assert_eq!(part.read.scope, "subset 2/3");
        let expected = ["20261128T060000Z", "20261128T120000Z", "20261128T180000Z"]
            .iter()
            .filter(|id| in_subset(id, 2, 3))
            .count() as u64;
        assert_eq!(
            (part.read.backups, part.read.artifacts),
            (expected, expected)
        );
        assert_eq!(
            [
                CheckOutcome::Clean,
                CheckOutcome::Damaged,
                CheckOutcome::Inconclusive
            ]
            .map(CheckOutcome::as_str),
            ["clean", "damaged", "inconclusive"]
        );
    }

    #[tokio::test]
    async fn wal_damage_counts_with_the_rest() {
        let (_dir, repo) = repo();
        backup(
            &repo,
            "app",
            "20261128T060000Z",
            &[("database.dump.zst", b"dump")],
        )
        .await;
        repo.store()
            .delete("app/20261128T060000Z/database.dump.zst")
            .await
            .expect("delete");
        let mut r = run(&repo, ReadData::None, later()).await.expect("check");
        assert_eq!(r.damage_count(), 1);
        r.wal = Some(crate::wal_chain::WalChain {
            conflicts: vec!["000000010000000000000003".into()],
            ..Default::default()
        });
        assert_eq!(r.damage_count(), 2);
    }

    #[tokio::test]
    async fn an_unsupported_manifest_is_unchecked_not_damage() {
        let (_dir, repo) = repo();
        backup(
            &repo,
            "app",
            "20261128T060000Z",
            &[("database.dump.zst", b"dump")],
        )
        .await;
        let newer = crate::fixtures::MANIFEST.replace("\"format\": \"1.4\"", "\"format\": \"9.0\"");
        assert_ne!(
            newer,
            crate::fixtures::MANIFEST,
            "the fixture names its format"
        );
        crate::fixtures::put(
            &repo,
            "app/20261128T120000Z/manifest.json",
            newer.as_bytes(),
        )
        .await;
        let r = run(&repo, ReadData::None, later()).await.expect("check");
        assert_eq!(r.outcome, CheckOutcome::Inconclusive, "{r:?}");
        assert_eq!(r.unchecked.len(), 1, "{r:?}");
        assert_eq!(r.unchecked[0].key, "app/20261128T120000Z/manifest.json");
        assert_eq!(r.damage_count(), 0);
    }

    /// A backup is from the future once its id is past now plus the
    /// clock tolerance (5 minutes), not at it.
    #[tokio::test]
    async fn the_future_starts_after_the_clock_tolerance() {
        let (_dir, repo) = repo();
        backup(
            &repo,
            "app",
            "20261128T060000Z",
            &[("database.dump.zst", b"dump")],
        )
        .await;
        let id_at = crate::fixtures::id_time("20261128T060000Z");
        let at_edge = id_at - chrono::Duration::minutes(5);
        let r = run(&repo, ReadData::None, at_edge).await.expect("check");
        assert!(r.future.is_empty(), "{r:?}");
        let r = run(
            &repo,
            ReadData::None,
            at_edge - chrono::Duration::seconds(1),
        )
        .await
        .expect("check");
        assert_eq!(r.future, ["20261128T060000Z"]);
        let r = run(&repo, ReadData::None, id_at + chrono::Duration::hours(1))
            .await
            .expect("check");
        assert!(r.future.is_empty(), "{r:?}");
    }

    /// Leftovers are reported once older than the grace period, not at it.
    #[tokio::test]
    async fn the_grace_period_ends_after_its_length() {
        let (_dir, repo) = repo();
        let key = "app/20261127T000000Z/database.dump.zst";
        crate::fixtures::put(&repo, key, b"partial").await;
        let written = crate::fixtures::modified(&repo, key).await;
        let grace = chrono::Duration::from_std(DEFAULT_GRACE).expect("grace");
        let r = run(&repo, ReadData::None, written + grace)
            .await
            .expect("check");
        assert!(r.orphans.is_empty(), "{r:?}");
        let r = run(
            &repo,
            ReadData::None,
            written + grace + chrono::Duration::milliseconds(1),
        )
        .await
        .expect("check");
        assert_eq!(r.orphans, [key]);
        // A day is the default: 2 hours is a backup in progress.
        let r = run(&repo, ReadData::None, written + chrono::Duration::hours(2))
            .await
            .expect("check");
        assert!(r.orphans.is_empty(), "{r:?}");
    }

    /// On S3: a multipart upload left behind is reported once it is older
    /// than the grace period, not at it; the check aborts nothing.
    #[tokio::test]
    async fn stale_uploads_are_reported_after_the_grace_period() {
        let repo = crate::fixtures::moto_repo("check-stale").await;
        backup(
            &repo,
            "app",
            "20261128T060000Z",
            &[("database.dump.zst", b"dump")],
        )
        .await;
        let key = "app/20261128T120000Z/database.dump.zst";
        let began = crate::fixtures::pending_upload(&repo, key).await;
        let grace = chrono::Duration::from_std(DEFAULT_GRACE).expect("grace");
        let r = run(&repo, ReadData::None, began + grace)
            .await
            .expect("check");
        assert!(r.stale_uploads.is_empty(), "{r:?}");
        let late = began + grace + chrono::Duration::seconds(1);
        let r = run(&repo, ReadData::None, late).await.expect("check");
        assert_eq!(r.stale_uploads, [key]);
        assert_eq!(r.outcome, CheckOutcome::Clean, "not damage: {r:?}");
        let still = repo
            .store()
            .list_multipart_uploads("app/")
            .await
            .expect("list");
        assert_eq!(still.len(), 1, "{still:?}");
    }

    /// The listing raced a writer: an artifact listed short is whole by
    /// the time it is looked at again (no damage); one listed missing
    /// belongs to a backup pruned meanwhile (nothing to report).
    #[tokio::test]
    async fn a_second_look_settles_what_the_listing_raced() {
        let (_dir, repo) = repo();
        backup(
            &repo,
            "app",
            "20261128T060000Z",
            &[("database.dump.zst", b"whole dump")],
        )
        .await;
        let key = "app/20261128T060000Z/database.dump.zst";
        crate::fixtures::put(&repo, key, b"half").await;
        let store = std::sync::Arc::clone(repo.store());
        let healed = crate::fixtures::Racing::around(
            &repo,
            key,
            crate::fixtures::On::Head,
            Box::new(move || {
                let store = std::sync::Arc::clone(&store);
                Box::pin(async move {
                    store
                        .put(
                            key,
                            Bytes::from_static(b"whole dump"),
                            PutOptions::default(),
                        )
                        .await
                        .expect("put");
                })
            }),
        );
        let r = run(&healed, ReadData::None, later()).await.expect("check");
        assert_eq!(r.outcome, CheckOutcome::Clean, "{r:?}");
        assert!(r.damaged.is_empty(), "{r:?}");

        repo.store().delete(key).await.expect("delete");
        let store = std::sync::Arc::clone(repo.store());
        let pruned = crate::fixtures::Racing::around(
            &repo,
            key,
            crate::fixtures::On::Head,
            Box::new(move || {
                let store = std::sync::Arc::clone(&store);
                Box::pin(async move {
                    store
                        .delete("app/20261128T060000Z/manifest.json")
                        .await
                        .expect("delete");
                })
            }),
        );
        let r = run(&pruned, ReadData::None, later()).await.expect("check");
        assert!(r.missing.is_empty(), "{r:?}");
        assert_eq!(r.outcome, CheckOutcome::Clean, "{r:?}");
    }

    /// A base backup with no WAL archived yet: the check judges the
    /// archive (and cannot vouch for the backup yet).
    #[tokio::test]
    async fn a_base_backup_without_its_wal_is_judged_against_the_archive() {
        let (_dir, repo) = repo();
        let fixture = include_str!("../../../store/tests/fixtures/manifest-1.7.json");
        let mut m = Manifest::parse("fixture", fixture.as_bytes()).expect("fixture");
        assert!(m.is_physical());
        m.job = "app".into();
        m.object_lock = None;
        for a in &m.artifacts {
            let body = vec![0u8; a.stored_size as usize];
            crate::fixtures::put(&repo, &Repository::key("app", &m.backup_id, &a.name), &body)
                .await;
        }
        repo.commit(&m).await.expect("commit");
        let r = run(&repo, ReadData::None, later()).await.expect("check");
        let wal = r.wal.as_ref().expect("a WAL report for a physical job");
        // The one segment it needs is not there yet: pending, not damage.
        assert_eq!(wal.gaps.len(), 1, "{r:?}");
        assert!(wal.gaps[0].pending, "{r:?}");
        assert_eq!(wal.gaps[0].backups, [m.backup_id.clone()]);
        assert_eq!(r.damage_count(), 0);
        assert_eq!(r.outcome, CheckOutcome::Inconclusive, "{r:?}");
    }

    /// Replaces `key` with `body` just before the check downloads it.
    fn replaced_before_the_read(
        repo: &Repository,
        key: &'static str,
        body: &'static [u8],
    ) -> Repository {
        let store = std::sync::Arc::clone(repo.store());
        crate::fixtures::Racing::around(
            repo,
            key,
            crate::fixtures::On::Get,
            Box::new(move || {
                let store = std::sync::Arc::clone(&store);
                Box::pin(async move {
                    store
                        .put(key, Bytes::from_static(body), PutOptions::default())
                        .await
                        .expect("put");
                })
            }),
        )
    }

    /// What a download that ends at the wrong length means: a cut
    /// connection while the stored object is whole cannot be judged; an
    /// object that is shorter or longer than its manifest says is damage.
    #[tokio::test]
    async fn a_short_download_is_damage_only_when_the_object_is_short() {
        let (_dir, repo) = repo();
        let key = "app/20261128T060000Z/database.dump.zst";
        backup(
            &repo,
            "app",
            "20261128T060000Z",
            &[("database.dump.zst", b"whole dump")],
        )
        .await;

        let cut = crate::fixtures::Racing::cutting(&repo, key, 4);
        let r = run(&cut, ReadData::All, later()).await.expect("check");
        assert!(r.damaged.is_empty(), "{r:?}");
        assert_eq!(r.unchecked.len(), 1, "{r:?}");
        assert!(
            r.unchecked[0].error.contains("ended after 4 of 10 bytes"),
            "{r:?}"
        );
        assert_eq!(r.outcome, CheckOutcome::Inconclusive);

        let shorter = replaced_before_the_read(&repo, key, b"whole");
        let r = run(&shorter, ReadData::All, later()).await.expect("check");
        assert_eq!(r.unchecked.len(), 0, "{r:?}");
        assert_eq!(
            r.damaged.first().map(|d| &d.problem),
            Some(&Problem::Size {
                expected: 10,
                actual: 5
            }),
            "{r:?}"
        );

        let longer = replaced_before_the_read(&repo, key, b"whole dump and more");
        let r = run(&longer, ReadData::All, later()).await.expect("check");
        assert_eq!(r.outcome, CheckOutcome::Damaged, "{r:?}");
        assert!(
            matches!(
                r.damaged.first().map(|d| &d.problem),
                Some(Problem::Size { expected: 10, .. })
            ),
            "{r:?}"
        );

        // Gone by the time it is read, its manifest still there: missing.
        crate::fixtures::put(&repo, key, b"whole dump").await;
        let gone = std::sync::Arc::clone(repo.store());
        let deleted = crate::fixtures::Racing::around(
            &repo,
            key,
            crate::fixtures::On::Get,
            Box::new(move || {
                let store = std::sync::Arc::clone(&gone);
                Box::pin(async move { store.delete(key).await.expect("delete") })
            }),
        );
        let r = run(&deleted, ReadData::All, later()).await.expect("check");
        assert_eq!(
            r.missing,
            [Missing {
                backup_id: "20261128T060000Z".into(),
                key: key.into()
            }]
        );
    }
}
