//! Restore drills: restore a backup into a scratch database, check it
//! against its manifest, measure RTO and RPO against the targets, write a
//! receipt ([`Receipt`], `verify-<time>-ok.json`) beside the manifest, drop
//! the scratch database whatever happened.

use std::path::PathBuf;
use std::time::{Duration, Instant};

mod checks;
mod physical;
mod scratch;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use refugio_dump::SourceSpec;
use refugio_store::manifest::Manifest;
use refugio_store::repo::Repository;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::measure;
use crate::receipt::{self, Objective, Phases, Receipt, RECEIPT_FORMAT};
use checks::{run_checks, Tally};
pub use scratch::{drop_scratch, scratch_name, SCRATCH_GRACE, SCRATCH_LOCK};
use scratch::{prepare_scratch, scratch_names};

/// Prefix of scratch databases; leftovers with it are dropped by the next drill.
pub const SCRATCH_PREFIX: &str = "refugio_drill_";

/// Where a drill restores.
#[derive(Debug, Clone)]
pub enum Scratch {
    /// A server where refugio may create and drop `refugio_drill_*` databases.
    Server(SourceSpec),
    /// A throwaway cluster refugio starts itself; roles are restored too.
    Ephemeral,
}

/// How to run a drill.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    pub scratch: Scratch,
    /// SQL checks, each must return one row with one true value.
    pub checks: Vec<Check>,
    pub rpo_target: Option<Duration>,
    pub rto_target: Option<Duration>,
    /// Parallel restore jobs.
    pub jobs: u32,
    pub bindir: Option<PathBuf>,
    /// Private keys for encrypted backups; without a matching one the
    /// drill is inconclusive, never failed.
    pub identities: Option<std::sync::Arc<crate::encryption::Identities>>,
    /// Refuse artifacts stored unencrypted (see
    /// [`crate::RestoreOptions::require_encrypted`]): such a drill is
    /// inconclusive.
    pub require_encrypted: bool,
    /// Counters and phase for a progress display; None: not shown.
    pub progress: Option<std::sync::Arc<crate::Progress>>,
    /// How a physical job's base backup is recovered (None: a drill of a
    /// physical backup is refused, no receipt written).
    pub physical: Option<PhysicalDrill>,
}

/// A physical job's drill: the base backup recovered in an ephemeral
/// cluster (whatever `scratch` says) from the job's WAL archive.
#[derive(Debug, Clone)]
pub struct PhysicalDrill {
    /// The restored cluster's `restore_command`, e.g. `/usr/bin/refugio
    /// --config /etc/refugio.toml wal-fetch --job main %f %p`.
    pub restore_command: String,
    /// What the restored server (and so `restore_command`) gets of
    /// refugio's environment beyond the allow-list of
    /// [`refugio_dump::tools`]: the store's credentials, named.
    /// A hostile base backup's server can read these, and nothing else.
    pub restore_env: Vec<(String, std::ffi::OsString)>,
    /// A role of the backed-up cluster to connect as (the job's source
    /// role); checks run as its bootstrap superuser.
    pub user: String,
    /// Where recovery stops.
    pub target: crate::restore::physical::RecoveryTarget,
}

/// One SQL check of a drill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub sql: String,
    /// The database it runs in, of a whole-server backup. None: every
    /// database the backup holds (a one-database backup's one).
    pub database: Option<String>,
}

impl Check {
    /// A check that runs in every database.
    pub fn everywhere(sql: &str) -> Check {
        Check {
            sql: sql.to_string(),
            database: None,
        }
    }
}

impl Scratch {
    /// A job's `scratch` setting: `"ephemeral"` or a server URL, with
    /// the server's own password file if any (never the source's password).
    pub fn parse(url: &str, password_file: Option<&std::path::Path>) -> Result<Scratch> {
        Ok(if url == "ephemeral" {
            Scratch::Ephemeral
        } else {
            Scratch::Server(SourceSpec::new(url, None, password_file)?)
        })
    }
}

/// Which backup of a job a drill restores.
#[derive(Debug, Clone, Copy)]
pub enum Pick<'a> {
    /// The newest committed backup.
    Newest,
    /// The newest backup no drill has verified yet.
    Unverified,
    /// `latest` or a backup id.
    Spec(&'a str),
}

/// The backup `pick` names and every committed manifest of the job (newest
/// first, for RPO).
pub async fn pick(
    repo: &Repository,
    job: &str,
    pick: Pick<'_>,
) -> Result<(Manifest, Vec<Manifest>)> {
    let history = repo.manifests(job).await?;
    let manifest = match pick {
        Pick::Newest => history
            .first()
            .cloned()
            .ok_or_else(|| Error::NothingToDrill {
                job: job.to_string(),
                store: repo.describe(),
            })?,
        Pick::Unverified => {
            let done = receipt::read_all(repo, job).await?;
            history
                .iter()
                .find(|m| !done.iter().any(|(id, r)| *id == m.backup_id && r.verified))
                .cloned()
                .ok_or_else(|| Error::AllVerified {
                    job: job.to_string(),
                })?
        }
        Pick::Spec(spec) => repo.resolve(job, spec).await?,
    };
    Ok((manifest, history))
}

/// Runs one drill of `manifest` and writes its receipt. `history` is every
/// committed manifest of the job (for RPO); `clock` says when the drill
/// runs. Cancelling stops it mid-way (child processes killed, an ephemeral
/// cluster removed with it) and drops a server's scratch database before
/// returning [`Error::Cancelled`]; no receipt is written then.
pub async fn drill(
    repo: &Repository,
    manifest: &Manifest,
    history: &[Manifest],
    opts: &DrillOptions,
    clock: &dyn Clock,
    cancel: &CancellationToken,
) -> Result<Receipt> {
    // Its receipt is signed: a drill whose verdict readers would refuse
    // does not start.
    repo.can_sign_as(
        refugio_store::auth::Role::Agent,
        &format!("the receipt of a drill of job {}", manifest.job),
    )?;
    if manifest.is_physical() {
        tracing::info!(job = %manifest.job, backup = %manifest.backup_id, "drill-started");
        // Dropping the drill stops its cluster and removes its directory.
        return tokio::select! {
            r = physical::drill_physical(repo, manifest, opts, clock.now()) => r,
            _ = cancel.cancelled() => Err(Error::Cancelled {
                what: "drill".into(),
                detail: "its ephemeral cluster removed".into(),
            }),
        };
    }
    let base = scratch_name(&manifest.backup_id);
    let names = scratch_names(&base, manifest.database_names().len(), manifest.is_server());
    tracing::info!(job = %manifest.job, backup = %manifest.backup_id, scratch = %base,
        databases = names.len(), "drill-started");
    let run = drill_once(repo, manifest, history, opts, clock.now(), &names);
    tokio::select! {
        r = run => r,
        _ = cancel.cancelled() => {
            if let Scratch::Server(spec) = &opts.scratch {
                let admin = spec.with_database("postgres");
                for name in &names {
                    drop_scratch(&admin, name).await?;
                }
            }
            Err(Error::Cancelled {
                what: "drill".into(),
                detail: format!("scratch database(s) {} removed", names.join(", ")),
            })
        }
    }
}

async fn drill_once(
    repo: &Repository,
    manifest: &Manifest,
    history: &[Manifest],
    opts: &DrillOptions,
    now: DateTime<Utc>,
    names: &[String],
) -> Result<Receipt> {
    let started = Instant::now();
    // An ephemeral cluster lives for this drill only; dropping it (also on
    // cancellation) stops it and removes its directory.
    let (cluster, server, kind) = match &opts.scratch {
        Scratch::Server(spec) => (None, spec.clone(), "server"),
        Scratch::Ephemeral => {
            let c = crate::ephemeral::EphemeralCluster::start(
                refugio_dump::PgVersion::from_num(manifest.server.version_num),
                opts.bindir.as_deref(),
            )
            .await?;
            let spec = c.spec("postgres")?;
            (Some(c), spec, "ephemeral")
        }
    };
    let admin = server.with_database("postgres");
    let dropped = prepare_scratch(&admin, names, now).await?;
    if !dropped.is_empty() {
        tracing::warn!(databases = ?dropped, "drill-leftovers-dropped");
    }
    let mut receipt = new_receipt(manifest, opts, now, kind);

    let ephemeral = cluster.is_some();
    let mut tally = Tally::default();
    let checked = run_checks(
        repo,
        manifest,
        opts,
        &server,
        names,
        ephemeral,
        &mut receipt,
        &mut tally,
    )
    .await;
    if let Err(e) = checked {
        if e.condemns() {
            tally.bad(&mut receipt, refugio_print::chain(&e));
        } else {
            tally.unsure(&mut receipt, refugio_print::chain(&e));
        }
    }
    // The scratch databases go whatever happened; failing to drop one is
    // reported but says nothing about the backup.
    for name in names {
        if let Err(e) = drop_scratch(&admin, name).await {
            receipt.failures.push(format!(
                "dropping scratch database {name}: {}",
                refugio_print::chain(&e)
            ));
        }
    }
    let rto = started.elapsed().as_secs_f64();
    let verified_now = !tally.bad && !tally.unsure;
    // RPO over verified backups: earlier receipts plus this one.
    let mut verified: Vec<(String, DateTime<Utc>)> = Vec::new();
    let earlier = receipt::read_all(repo, &manifest.job)
        .await
        .unwrap_or_default();
    for m in history {
        let ok = earlier
            .iter()
            .any(|(id, r)| id == &m.backup_id && r.verified)
            || (m.backup_id == manifest.backup_id && verified_now);
        if ok {
            verified.push((m.backup_id.clone(), m.recovery_point()));
        }
    }
    let rpo = measure::rpo(&verified, now);
    conclude(
        repo, manifest, opts, receipt, &tally, rto, rpo, started, now,
    )
    .await
}

/// A receipt of a drill of `manifest` starting at `now`, nothing checked yet.
fn new_receipt(
    manifest: &Manifest,
    opts: &DrillOptions,
    now: DateTime<Utc>,
    kind: &str,
) -> Receipt {
    Receipt {
        format: RECEIPT_FORMAT.into(),
        job: manifest.job.clone(),
        backup_id: manifest.backup_id.clone(),
        started_at: now,
        finished_at: now,
        verified: false,
        passed: false,
        outcome: None,
        failures: Vec::new(),
        notes: Vec::new(),
        refugio_version: env!("CARGO_PKG_VERSION").into(),
        scratch_kind: kind.into(),
        scratch_server_version: None,
        restore_tool: None,
        digests_checked: Vec::new(),
        counts: Vec::new(),
        large_objects: None,
        schema_fingerprint: None,
        checks: Vec::new(),
        databases: Vec::new(),
        phases: Phases::default(),
        rto: Objective {
            measured_seconds: None,
            target_seconds: opts.rto_target.map(|d| d.as_secs_f64()),
            met: None,
        },
        rpo: Objective {
            measured_seconds: None,
            target_seconds: opts.rpo_target.map(|d| d.as_secs_f64()),
            met: None,
        },
        rpo_detail: measure::rpo(&[], now),
    }
}

/// The verdict (from `tally`), RTO and RPO against the targets; writes
/// the receipt beside the manifest.
#[allow(clippy::too_many_arguments)]
async fn conclude(
    repo: &Repository,
    manifest: &Manifest,
    opts: &DrillOptions,
    mut receipt: Receipt,
    tally: &Tally,
    rto: f64,
    rpo: measure::Rpo,
    started: Instant,
    now: DateTime<Utc>,
) -> Result<Receipt> {
    receipt.verified = !tally.bad && !tally.unsure;
    receipt.outcome = Some(tally.outcome());
    receipt.rpo_detail = rpo;
    receipt.rto.measured_seconds = Some(rto);
    receipt.rto.met = opts.rto_target.map(|t| rto <= t.as_secs_f64());
    receipt.rpo.measured_seconds = receipt.rpo_detail.seconds;
    receipt.rpo.met = opts.rpo_target.map(|t| {
        receipt
            .rpo_detail
            .seconds
            .is_some_and(|s| s <= t.as_secs_f64())
    });
    if receipt.rto.met == Some(false) {
        receipt.failures.push(format!(
            "RTO target missed: restore and checks took {rto:.1}s, target {:.1}s",
            receipt.rto.target_seconds.unwrap_or_default()
        ));
    }
    if receipt.rpo.met == Some(false) {
        receipt.failures.push(match receipt.rpo_detail.seconds {
            Some(s) => format!(
                "RPO target missed: newest verified backup is {s:.0}s old, target {:.0}s",
                receipt.rpo.target_seconds.unwrap_or_default()
            ),
            None => "RPO target missed: no verified backup".to_string(),
        });
    }
    receipt.passed = receipt.failures.is_empty();
    receipt.finished_at =
        now + chrono::Duration::milliseconds(started.elapsed().as_millis() as i64);

    let key = Repository::key(&manifest.job, &manifest.backup_id, &receipt.name());
    let mut json = serde_json::to_vec_pretty(&receipt).unwrap_or_default();
    json.push(b'\n');
    repo.put_signed(&key, Bytes::from(json), refugio_store::auth::Role::Agent)
        .await?;
    Ok(receipt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{backup, keys, repo};
    use crate::receipt::Outcome;

    fn options(rto: Option<u64>, rpo: Option<u64>) -> DrillOptions {
        DrillOptions {
            scratch: Scratch::Ephemeral,
            checks: Vec::new(),
            rpo_target: rpo.map(Duration::from_secs),
            rto_target: rto.map(Duration::from_secs),
            jobs: 1,
            bindir: None,
            identities: None,
            require_encrypted: false,
            progress: None,
            physical: None,
        }
    }

    /// Concludes a drill of a fresh backup (5 s ago by the monotonic
    /// clock) whose newest verified backup is `rpo_age` s old (None:
    /// none), with this tally and RTO.
    async fn concluded(
        opts: &DrillOptions,
        tally: Tally,
        rto: f64,
        rpo_age: Option<i64>,
    ) -> (Receipt, Vec<String>) {
        let (_dir, repo) = repo();
        let m = backup(
            &repo,
            "app",
            "20261128T060000Z",
            &[("database.dump.zst", b"a")],
        )
        .await;
        let now = m.finished_at + chrono::Duration::minutes(10);
        let verified: Vec<(String, DateTime<Utc>)> = rpo_age
            .map(|s| {
                (
                    "20261128T060000Z".to_string(),
                    now - chrono::Duration::seconds(s),
                )
            })
            .into_iter()
            .collect();
        let started = Instant::now()
            .checked_sub(Duration::from_secs(5))
            .expect("a monotonic clock past 5 s");
        let receipt = new_receipt(&m, opts, now, "ephemeral");
        let r = conclude(
            &repo,
            &m,
            opts,
            receipt,
            &tally,
            rto,
            measure::rpo(&verified, now),
            started,
            now,
        )
        .await
        .expect("conclude");
        let elapsed = r.finished_at - now;
        assert!(
            elapsed >= chrono::Duration::seconds(5) && elapsed < chrono::Duration::seconds(300),
            "finished {elapsed} after the start"
        );
        (r, keys(&repo, "app/20261128T060000Z/verify-").await)
    }

    #[tokio::test]
    async fn targets_met_at_their_bounds_pass() {
        let opts = options(Some(20), Some(600));
        let (r, stored) = concluded(&opts, Tally::default(), 20.0, Some(600)).await;
        assert!(r.verified && r.passed, "{r:?}");
        assert_eq!(r.outcome, Some(Outcome::Passed));
        assert_eq!((r.rto.met, r.rpo.met), (Some(true), Some(true)));
        assert_eq!(r.rto.measured_seconds, Some(20.0));
        assert_eq!(r.rpo.measured_seconds, Some(600.0));
        assert_eq!(
            r.rpo_detail.newest_verified.as_deref(),
            Some("20261128T060000Z")
        );
        assert!(r.failures.is_empty(), "{r:?}");
        assert_eq!(
            stored,
            [format!("app/20261128T060000Z/{}", r.name())],
            "the receipt is stored under its name"
        );
        assert!(stored[0].ends_with("-ok.json"));
        // No targets: nothing to meet.
        let (r, _) = concluded(&options(None, None), Tally::default(), 9e9, None).await;
        assert_eq!((r.rto.met, r.rpo.met), (None, None));
        assert!(r.passed, "{r:?}");
    }

    #[tokio::test]
    async fn a_missed_target_fails_the_drill_but_not_the_backup() {
        let opts = options(Some(20), Some(600));
        let (r, stored) = concluded(&opts, Tally::default(), 20.5, Some(601)).await;
        assert!(r.verified && !r.passed, "{r:?}");
        assert_eq!(r.outcome(), Outcome::Passed);
        assert_eq!((r.rto.met, r.rpo.met), (Some(false), Some(false)));
        assert_eq!(
            r.failures,
            [
                "RTO target missed: restore and checks took 20.5s, target 20.0s",
                "RPO target missed: newest verified backup is 601s old, target 600s",
            ]
        );
        assert!(stored[0].ends_with("-ok.json"), "{stored:?}");
        let (r, _) = concluded(&opts, Tally::default(), 1.0, None).await;
        assert_eq!(r.failures, ["RPO target missed: no verified backup"]);
        assert_eq!(r.rpo.met, Some(false));
    }

    #[tokio::test]
    async fn the_tally_decides_the_verdict() {
        let opts = options(None, None);
        let unsure = Tally {
            bad: false,
            unsure: true,
        };
        let (r, stored) = concluded(&opts, unsure, 1.0, Some(1)).await;
        assert!(!r.verified, "{r:?}");
        assert_eq!(r.outcome, Some(Outcome::Inconclusive));
        assert!(stored[0].ends_with("-inconclusive.json"), "{stored:?}");
        let bad = Tally {
            bad: true,
            unsure: false,
        };
        let (r, stored) = concluded(&opts, bad, 1.0, Some(1)).await;
        assert!(!r.verified, "{r:?}");
        assert_eq!(r.outcome, Some(Outcome::Failed));
        assert!(stored[0].ends_with("-failed.json"), "{stored:?}");
    }

    #[tokio::test]
    async fn pick_finds_the_newest_and_the_newest_not_yet_verified() {
        let (_dir, repo) = repo();
        let e = pick(&repo, "app", Pick::Newest).await.expect_err("empty");
        assert!(matches!(e, Error::NothingToDrill { .. }), "{e}");
        for id in ["20261128T060000Z", "20261128T120000Z"] {
            backup(&repo, "app", id, &[("database.dump.zst", id.as_bytes())]).await;
        }
        let (m, history) = pick(&repo, "app", Pick::Newest).await.expect("pick");
        assert_eq!(m.backup_id, "20261128T120000Z");
        assert_eq!(history.len(), 2);
        let (m, _) = pick(&repo, "app", Pick::Spec("20261128T060000Z"))
            .await
            .expect("pick");
        assert_eq!(m.backup_id, "20261128T060000Z");
        // The newest passed its drill; the other only failed one.
        crate::fixtures::drilled(&repo, "app", "20261128T120000Z", Outcome::Passed).await;
        crate::fixtures::drilled(&repo, "app", "20261128T060000Z", Outcome::Failed).await;
        let (m, _) = pick(&repo, "app", Pick::Unverified).await.expect("pick");
        assert_eq!(m.backup_id, "20261128T060000Z");
        crate::fixtures::drilled(&repo, "app", "20261128T060000Z", Outcome::Passed).await;
        let e = pick(&repo, "app", Pick::Unverified)
            .await
            .expect_err("all verified");
        assert!(matches!(e, Error::AllVerified { .. }), "{e}");
    }

    #[test]
    fn scratch_and_checks() {
        assert!(matches!(
            Scratch::parse("ephemeral", None).expect("parse"),
            Scratch::Ephemeral
        ));
        assert!(matches!(
            Scratch::parse("postgresql://127.0.0.1/postgres", None).expect("parse"),
            Scratch::Server(_)
        ));
        assert_eq!(
            Check::everywhere("SELECT true"),
            Check {
                sql: "SELECT true".into(),
                database: None
            }
        );
    }
}
