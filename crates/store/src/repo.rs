//! The repository layout on top of an [`ObjectStore`]:
//! `<job>/<backup-id>/manifest.json` (the commit point) beside the
//! artifacts. Listing finds manifests; a backup prefix without a manifest
//! is an unfinished or failed backup and does not exist for readers.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use tokio::io::AsyncReadExt;

use crate::auth::{Authentication, Role, MAX_SIGNATURE_BYTES, SIGNATURE_SUFFIX};
use crate::error::{Error, Result};
pub use crate::layout::{backup_id, id_time, valid_segment};
use crate::manifest::{Manifest, MANIFEST_NAME};
use crate::{ObjectStore, PutOptions};

/// Largest manifest we read; a manifest lists tables, so it can be large,
/// but not unbounded.
const MAX_MANIFEST_BYTES: u64 = 64 * 1024 * 1024;
/// Manifests fetched at once when listing.
const LIST_CONCURRENCY: usize = 16;

/// How far ahead of this host's clock a backup may be dated before it
/// counts as dated in the future (`clock_tolerance`): 5 minutes.
pub const DEFAULT_CLOCK_TOLERANCE: std::time::Duration = std::time::Duration::from_secs(300);

/// A repository: a store plus the layout.
#[derive(Debug, Clone)]
pub struct Repository {
    store: Arc<dyn ObjectStore>,
    /// Backups dated later than now plus this are reported and ignored
    /// by `latest` and by [`Repository::manifests`].
    clock_tolerance: std::time::Duration,
    /// `[repository.authentication]`: signs what this host writes and
    /// refuses what no trusted key signed. None: an unauthenticated
    /// repository (anyone who can write to the store is trusted).
    auth: Option<Arc<Authentication>>,
}

/// A committed backup whose manifest the repository's authentication
/// refuses: reported, never restored, drilled, counted or deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Foreign {
    pub id: String,
    pub key: String,
    pub reason: String,
}

/// The folder of a physical job's WAL archive: `<job>/wal/<timeline>/…`.
/// Never a backup id (those are times: `20261128T060000Z`).
pub const WAL_DIR: &str = "wal";
/// Folder of a job's last repository check by the agent
/// (`<job>/checks/last.json`): not a backup id either.
pub const CHECKS_DIR: &str = "checks";

/// Name prefix of the objects by which a backup claims its id
/// ([`Repository::claim_backup_id`]).
pub const CLAIM_PREFIX: &str = "claim-";

/// How often a running backup rewrites its claim (its heartbeat), so that
/// garbage collection can tell a running backup from a dead one whatever
/// their age and whatever the clocks say.
pub const HEARTBEAT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// A backup id claimed by this process, and the object that claims it.
#[derive(Debug, Clone)]
pub struct Claim {
    pub id: String,
    key: String,
}

/// A claim's heartbeat ([`Repository::keep_claimed`]): beats while it
/// lives; [`Heartbeat::stop`] ends it before the claim goes.
pub struct Heartbeat {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Heartbeat {
    /// Stops beating; after it returns no beat is in flight, so the
    /// claim can be deleted without a late beat writing it again.
    pub async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl Repository {
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Repository {
            store,
            clock_tolerance: DEFAULT_CLOCK_TOLERANCE,
            auth: None,
        }
    }

    /// The same repository, signing and authenticating with `auth`.
    pub fn with_authentication(mut self, auth: Option<Arc<Authentication>>) -> Self {
        self.auth = auth;
        self
    }

    /// The authentication in force; None: unauthenticated.
    pub fn authentication(&self) -> Option<&Authentication> {
        self.auth.as_deref()
    }

    /// Writes a small object (a receipt) signed as `role` when the
    /// repository is authenticated: the signature first, so the object
    /// never exists unsigned.
    pub async fn put_signed(&self, key: &str, body: Bytes, role: Role) -> Result<()> {
        if let Some(auth) = &self.auth {
            let sig = auth.sign(role, key, &crate::auth::digest(&body))?;
            self.store
                .put(
                    &format!("{key}{SIGNATURE_SUFFIX}"),
                    Bytes::from(sig),
                    PutOptions::default(),
                )
                .await?;
        }
        self.store.put(key, body, PutOptions::default()).await
    }

    /// Refuses, before any work, to write as `role` what readers of this
    /// repository would refuse: an authenticated repository and no signing
    /// key, or one not trusted for the role. `what` names the work.
    pub fn can_sign_as(&self, role: Role, what: &str) -> Result<()> {
        let Some(auth) = &self.auth else {
            return Ok(());
        };
        match auth.signer() {
            None => Err(Error::NoSigningKey {
                key: what.to_string(),
            }),
            Some(s) if !auth.signs_as(role) => Err(Error::Key {
                path: s.path().display().to_string(),
                reason: format!(
                    "its public key {} is not among repository.authentication.{}: readers of this repository would refuse {what}",
                    s.id(),
                    role.field()
                ),
            }),
            Some(_) => Ok(()),
        }
    }

    /// Checks that `content`, read from `key`, is signed by a key trusted
    /// for `role` (always Ok in an unauthenticated repository).
    pub async fn authenticate(&self, key: &str, content: &[u8], role: Role) -> Result<()> {
        let Some(auth) = &self.auth else {
            return Ok(());
        };
        let sig_key = format!("{key}{SIGNATURE_SUFFIX}");
        let sig = match self.read_small(&sig_key, MAX_SIGNATURE_BYTES).await {
            Ok(sig) => sig,
            Err(Error::TooLarge { .. }) => {
                return Err(Error::Unauthenticated {
                    key: key.to_string(),
                    reason: format!(
                        "its signature {sig_key} is larger than {MAX_SIGNATURE_BYTES} bytes"
                    ),
                })
            }
            Err(e) => return Err(e),
        };
        auth.verify(role, key, content, sig.as_deref())
            .map(|_| ())
            .map_err(|reason| Error::Unauthenticated {
                key: key.to_string(),
                reason,
            })
    }

    /// The same repository with another `clock_tolerance`.
    pub fn with_clock_tolerance(mut self, tolerance: std::time::Duration) -> Self {
        self.clock_tolerance = tolerance;
        self
    }

    /// How far ahead of this host's clock a backup may be dated.
    pub fn clock_tolerance(&self) -> std::time::Duration {
        self.clock_tolerance
    }

    /// The latest time a backup may be dated at `now`: later ones are
    /// dated in the future (a writer's clock was wrong). A tolerance
    /// beyond the calendar: the end of time (nothing is in the future).
    pub fn horizon(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        chrono::Duration::from_std(self.clock_tolerance)
            .ok()
            .and_then(|tolerance| now.checked_add_signed(tolerance))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// `s3://…` or `file://…`, for messages.
    pub fn describe(&self) -> String {
        self.store.describe()
    }

    /// Key of an object of a backup.
    pub fn key(job: &str, id: &str, name: &str) -> String {
        format!("{job}/{id}/{name}")
    }

    /// Prefix of a job's WAL archive, or of one timeline's folder in it
    /// (`timeline`: 8 hex digits).
    pub fn wal_prefix(job: &str, timeline: Option<&str>) -> String {
        match timeline {
            Some(tl) => format!("{job}/{WAL_DIR}/{tl}/"),
            None => format!("{job}/{WAL_DIR}/"),
        }
    }

    /// Key of a backup's manifest.
    pub fn manifest_key(job: &str, id: &str) -> String {
        Self::key(job, id, MANIFEST_NAME)
    }

    /// Jobs that have anything in the repository.
    pub async fn jobs(&self) -> Result<Vec<String>> {
        let mut v = self.store.list_prefixes("").await?;
        v.retain(|j| valid_segment(j));
        Ok(v)
    }

    /// Whether any object of backup `id` of `job` exists (other than
    /// `except`).
    async fn id_taken(&self, job: &str, id: &str, except: Option<&str>) -> Result<bool> {
        let prefix = format!("{job}/{id}/");
        let mut objects = self.store.list(&prefix);
        while let Some(o) = objects.next().await.transpose()? {
            if Some(o.key.as_str()) != except {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Claims a fresh backup id for a start time: the first of
    /// `20261128T060000Z`, `…-2`, `…-3`… with nothing stored under it, for
    /// this process alone. Two processes backing up one job in the same
    /// second (say agents on two hosts whose job locks live on different
    /// servers) would otherwise both pick the free id, upload under it, and
    /// overwrite each other's artifacts. So each writes a claim object
    /// (`claim-<random>`) under the id and then lists the id: it has the id
    /// only if its claim is the only object there; otherwise it deletes its
    /// claim and tries the next id. Both cannot win: each writes before it
    /// lists, so the later lister sees the other's claim (on any store with
    /// read-after-write listings, as S3, Garage and a directory have). It
    /// needs no conditional write, which not every store honours (Garage
    /// 2.5 ignores `If-None-Match`).
    pub async fn claim_backup_id(&self, job: &str, start: DateTime<Utc>) -> Result<Claim> {
        let token = format!("{:016x}", rand::random::<u64>());
        let mut n = 1;
        while n < 1000 {
            let id = backup_id(start, n);
            if self.id_taken(job, &id, None).await? {
                n += 1;
                continue;
            }
            let key = Self::key(job, &id, &format!("{CLAIM_PREFIX}{token}"));
            self.store
                .put(
                    &key,
                    Bytes::from_static(b"refugio: this backup id is taken\n"),
                    PutOptions::default(),
                )
                .await?;
            if !self.id_taken(job, &id, Some(&key)).await? {
                return Ok(Claim { id, key });
            }
            // Another process claimed it at the same moment: give it up.
            if let Err(e) = self.store.delete(&key).await {
                tracing::warn!(key, error = %refugio_print::chain(&e), "orphan-left");
            }
            tracing::info!(
                job,
                id,
                "backup-id-taken: another process claimed this id; trying the next"
            );
            let pause = rand::random::<u64>() % 200;
            tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
            n += 1;
        }
        Err(Error::Other(format!(
            "job {job}: more than 999 backups started at {start}"
        )))
    }

    /// Rewrites the claim with beat number `n`: a running backup's
    /// heartbeat ([`HEARTBEAT_INTERVAL`]). Prune reads a claim twice, a
    /// few beats apart: a claim that changed belongs to a running backup.
    async fn beat(&self, claim: &Claim, n: u64) -> Result<()> {
        let body = format!("refugio: this backup id is taken\nbeat {n}\n");
        self.store
            .put(&claim.key, Bytes::from(body), PutOptions::default())
            .await
    }

    /// Drops a claim once its backup is committed or given up (best
    /// effort: a leftover claim is one more object of the backup, deleted
    /// with it, or an orphan the garbage collection removes).
    pub async fn release_claim(&self, claim: &Claim) {
        if let Err(e) = self.store.delete(&claim.key).await {
            tracing::warn!(key = %claim.key, error = %refugio_print::chain(&e), "orphan-left");
        }
    }

    /// Starts a running backup's heartbeat: `claim` rewritten every
    /// [`HEARTBEAT_INTERVAL`] while the returned [`Heartbeat`] lives, so
    /// prune's garbage collection leaves its claim and uploads alone however
    /// old they are (a CLI backup holds no lock prune could ask, and an
    /// agent's lock lives on a database server prune may not reach; the
    /// repository is what both share). The claim itself is beat 0.
    pub fn keep_claimed(&self, claim: &Claim) -> Heartbeat {
        let (repo, claim) = (self.clone(), claim.clone());
        let task = tokio::spawn(async move {
            let mut n = 0u64;
            loop {
                tokio::time::sleep(HEARTBEAT_INTERVAL).await;
                n += 1;
                // A missed beat is retried at the next: prune waits for
                // several before it calls a claim dead.
                if let Err(e) = repo.beat(&claim, n).await {
                    tracing::warn!(backup = %claim.id, error = %refugio_print::chain(&e), "heartbeat-missed");
                }
            }
        });
        Heartbeat { task: Some(task) }
    }

    /// Reads a small object (a manifest, a receipt) whole, refusing one
    /// larger than `limit` bytes; `None` when it does not exist. The one
    /// place small objects are read: nothing is buffered without a bound.
    pub async fn read_small(&self, key: &str, limit: u64) -> Result<Option<Bytes>> {
        let mut reader = match self.store.get(key).await {
            Ok(r) => r,
            Err(Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut buf = Vec::new();
        (&mut reader)
            .take(limit.saturating_add(1))
            .read_to_end(&mut buf)
            .await
            .map_err(|source| Error::Io {
                op: "reading",
                store: self.describe(),
                key: key.to_string(),
                source,
            })?;
        if buf.len() as u64 > limit {
            return Err(Error::TooLarge {
                store: self.describe(),
                key: key.to_string(),
                limit,
            });
        }
        Ok(Some(Bytes::from(buf)))
    }

    /// Reads one manifest; `None` when the backup is not committed.
    pub async fn read_manifest(&self, job: &str, id: &str) -> Result<Option<Manifest>> {
        let key = Self::manifest_key(job, id);
        let buf = match self.read_small(&key, MAX_MANIFEST_BYTES).await {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(None),
            Err(Error::TooLarge { .. }) => {
                return Err(Error::InvalidManifest {
                    key,
                    reason: format!("larger than {MAX_MANIFEST_BYTES} bytes"),
                })
            }
            Err(e) => return Err(e),
        };
        self.authenticate(&key, &buf, Role::Agent).await?;
        let m = Manifest::parse(&key, &buf)?;
        if m.job != job || m.backup_id != id {
            return Err(Error::InvalidManifest {
                key,
                reason: format!(
                    "it describes job {:?} backup {:?}, but is stored under job {job:?} backup {id:?}",
                    m.job, m.backup_id
                ),
            });
        }
        Ok(Some(m))
    }

    /// Committed backups of a job, newest first by the server-side time
    /// ([`Manifest::server_time`]), without those dated in the future
    /// ([`Repository::future`]: reported, never `latest`, never drilled).
    pub async fn manifests(&self, job: &str) -> Result<Vec<Manifest>> {
        let horizon = self.horizon(Utc::now());
        let (dated, future): (Vec<Manifest>, Vec<Manifest>) = self
            .manifests_all(job)
            .await?
            .into_iter()
            .partition(|m| !m.dated_after(horizon));
        for m in &future {
            tracing::warn!(job, backup = %m.backup_id, "future-backup: dated later than this host's clock plus clock_tolerance; ignored (a writer's clock was wrong)");
        }
        Ok(dated)
    }

    /// Every committed backup of a job, those dated in the future too,
    /// newest first by the server-side time, without those whose manifest
    /// the repository's authentication refuses (logged;
    /// [`Repository::manifests_audited`] returns them).
    pub async fn manifests_all(&self, job: &str) -> Result<Vec<Manifest>> {
        let (out, foreign) = self.manifests_audited(job).await?;
        for f in &foreign {
            tracing::warn!(job, backup = %f.id, reason = %f.reason, "foreign-backup: its manifest is not signed by a trusted agent key; ignored (never restored, drilled, counted or deleted)");
        }
        Ok(out)
    }

    /// Every committed backup of a job, newest first by the server-side
    /// time, and apart those whose manifest is refused as unauthenticated.
    /// Manifests are found by listing (paginated) and read a few at a time.
    pub async fn manifests_audited(&self, job: &str) -> Result<(Vec<Manifest>, Vec<Foreign>)> {
        let prefix = format!("{job}/");
        let ids: Vec<String> = self
            .store
            .list(&prefix)
            .try_filter_map(|meta| {
                let id = meta
                    .key
                    .strip_prefix(&prefix)
                    .and_then(|rest| rest.strip_suffix(&format!("/{MANIFEST_NAME}")))
                    .filter(|id| valid_segment(id))
                    .map(str::to_string);
                futures::future::ready(Ok(id))
            })
            .try_collect()
            .await?;
        let read: Vec<(String, Option<Manifest>, Option<String>)> = futures::stream::iter(ids)
            .map(|id| async move {
                match self.read_manifest(job, &id).await {
                    Ok(m) => Ok((id, m, None)),
                    Err(Error::Unauthenticated { reason, .. }) => Ok((id, None, Some(reason))),
                    Err(e) => Err(e),
                }
            })
            .buffer_unordered(LIST_CONCURRENCY)
            .try_collect()
            .await?;
        let mut out = Vec::new();
        let mut foreign = Vec::new();
        for (id, m, refused) in read {
            match (m, refused) {
                (Some(m), _) => out.push(m),
                (None, Some(reason)) => foreign.push(Foreign {
                    key: Self::manifest_key(job, &id),
                    id,
                    reason,
                }),
                (None, None) => {}
            }
        }
        out.sort_by(|a, b| b.cmp_time(a));
        foreign.sort_by(|a, b| b.id.cmp(&a.id));
        Ok((out, foreign))
    }

    /// `latest` (the newest committed backup by server time, not dated in
    /// the future) or an id → the committed manifest, or a clear error.
    pub async fn resolve(&self, job: &str, spec: &str) -> Result<Manifest> {
        let not_found = || Error::BackupNotFound {
            store: self.describe(),
            job: job.to_string(),
            backup: spec.to_string(),
        };
        if spec == "latest" {
            return self
                .manifests(job)
                .await?
                .into_iter()
                .next()
                .ok_or_else(not_found);
        }
        if !valid_segment(spec) {
            return Err(not_found());
        }
        self.read_manifest(job, spec).await?.ok_or_else(not_found)
    }

    /// Writes the manifest: the commit. Call only after every artifact it
    /// names is stored. In an authenticated repository its signature is
    /// written first, so a committed manifest always has one.
    /// With `m.object_lock` set, the manifest (and its signature) is
    /// written locked in the same request.
    pub async fn commit(&self, m: &Manifest) -> Result<()> {
        let key = Self::manifest_key(&m.job, &m.backup_id);
        let body = Bytes::from(m.to_json());
        let mut objects = Vec::with_capacity(2);
        if let Some(auth) = &self.auth {
            let sig = auth.sign(Role::Agent, &key, &crate::auth::digest(&body))?;
            objects.push((format!("{key}{SIGNATURE_SUFFIX}"), Bytes::from(sig)));
        }
        objects.push((key, body));
        for (key, body) in objects {
            let opts = PutOptions {
                retention: m.object_lock.as_ref(),
                ..PutOptions::default()
            };
            self.store.put(&key, body, opts).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time() {
        let t = DateTime::parse_from_rfc3339("2026-11-28T06:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(backup_id(t, 1), "20261128T060000Z");
        assert_eq!(backup_id(t, 2), "20261128T060000Z-2");
        assert!(backup_id(t, 1) < backup_id(t, 2));
        assert!(backup_id(t, 2) < backup_id(t + chrono::Duration::seconds(1), 1));
    }

    /// The horizon is now plus the tolerance; a tolerance the calendar
    /// cannot hold is the end of time, not a panic.
    #[tokio::test]
    async fn the_horizon_never_overflows() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::fs::FsStore::new(dir.path()).unwrap();
        let repo = Repository::new(Arc::new(store));
        let now = Utc::now();
        let five = repo
            .clone()
            .with_clock_tolerance(std::time::Duration::from_secs(300));
        assert_eq!(five.horizon(now), now + chrono::Duration::minutes(5));
        let forever = repo.with_clock_tolerance(std::time::Duration::MAX);
        assert_eq!(forever.horizon(now), DateTime::<Utc>::MAX_UTC);
    }

    #[test]
    fn segments() {
        assert!(valid_segment("trips"));
        assert!(valid_segment("20261128T060000Z-2"));
        for bad in ["", ".", "..", ".hidden", "a/b", "a b", "é"] {
            assert!(!valid_segment(bad), "{bad}");
        }
    }
}
