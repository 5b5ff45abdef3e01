//! Fixtures for core's own tests: a directory repository, committed
//! backups with their artifacts, drill receipts, claims and pins.

use refugio_store::PutOptions;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use refugio_store::manifest::Manifest;
use refugio_store::repo::Repository;
use sha2::{Digest, Sha256};

use crate::receipt::{Objective, Outcome, Phases, Receipt};

pub(crate) const MANIFEST: &str = include_str!("../../store/tests/fixtures/manifest-1.4.json");

/// A repository in a fresh directory (kept while the guard lives).
pub(crate) fn repo() -> (tempfile::TempDir, Repository) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = refugio_store::fs::FsStore::new(dir.path()).expect("store");
    (dir, Repository::new(Arc::new(store)))
}

/// SHA-256 of `body`, in hex.
pub(crate) fn hex(body: &[u8]) -> String {
    Sha256::digest(body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The time a backup id says (`YYYYMMDDTHHMMSSZ`).
pub(crate) fn id_time(id: &str) -> DateTime<Utc> {
    refugio_store::repo::id_time(id).expect("a backup id with a time")
}

/// Commits logical backup `id` of job `j`, taken at the id's time, with one
/// artifact per `(name, body)`.
pub(crate) async fn backup(
    repo: &Repository,
    j: &str,
    id: &str,
    artifacts: &[(&str, &[u8])],
) -> Manifest {
    let mut m = Manifest::parse("fixture", MANIFEST.as_bytes()).expect("fixture");
    m.job = j.into();
    m.backup_id = id.into();
    m.object_lock = None;
    if let Some(t) = refugio_store::repo::id_time(id) {
        m.snapshot_at = t;
        m.data_at = None;
        m.started_at = t;
        m.finished_at = t + chrono::Duration::seconds(1);
    }
    let template = m.artifacts[0].clone();
    m.artifacts = artifacts
        .iter()
        .map(|(name, body)| {
            let mut a = template.clone();
            a.name = (*name).into();
            a.stored_size = body.len() as u64;
            a.sha256 = hex(body);
            a
        })
        .collect();
    for (name, body) in artifacts {
        repo.store()
            .put(
                &Repository::key(j, id, name),
                Bytes::copy_from_slice(body),
                PutOptions::default(),
            )
            .await
            .expect("put");
    }
    repo.commit(&m).await.expect("commit");
    m
}

/// A drill receipt of backup `id` with this outcome.
pub(crate) fn receipt(j: &str, id: &str, outcome: Outcome) -> Receipt {
    let at = id_time(id) + chrono::Duration::minutes(10);
    let unknown = Objective {
        measured_seconds: None,
        target_seconds: None,
        met: None,
    };
    Receipt {
        format: crate::receipt::RECEIPT_FORMAT.into(),
        job: j.into(),
        backup_id: id.into(),
        started_at: at,
        finished_at: at + chrono::Duration::seconds(5),
        verified: outcome == Outcome::Passed,
        passed: outcome == Outcome::Passed,
        outcome: Some(outcome),
        failures: Vec::new(),
        notes: Vec::new(),
        refugio_version: "test".into(),
        scratch_kind: "ephemeral".into(),
        scratch_server_version: None,
        restore_tool: None,
        digests_checked: Vec::new(),
        counts: Vec::new(),
        large_objects: None,
        schema_fingerprint: None,
        checks: Vec::new(),
        databases: Vec::new(),
        phases: Phases::default(),
        rto: unknown.clone(),
        rpo: unknown,
        rpo_detail: crate::measure::rpo(&[], at),
    }
}

/// Stores a drill receipt of backup `id` under its name; returns its key.
pub(crate) async fn drilled(repo: &Repository, j: &str, id: &str, outcome: Outcome) -> String {
    let r = receipt(j, id, outcome);
    let key = Repository::key(j, id, &r.name());
    let body = serde_json::to_vec(&r).expect("json");
    repo.store()
        .put(&key, Bytes::from(body), PutOptions::default())
        .await
        .expect("put receipt");
    key
}

/// Stores an object under `key`.
pub(crate) async fn put(repo: &Repository, key: &str, body: &[u8]) {
    repo.store()
        .put(key, Bytes::copy_from_slice(body), PutOptions::default())
        .await
        .expect("put");
}

/// Every key under `prefix`, sorted.
pub(crate) async fn keys(repo: &Repository, prefix: &str) -> Vec<String> {
    use futures::TryStreamExt;
    let mut keys: Vec<String> = repo
        .store()
        .list(prefix)
        .map_ok(|o| o.key)
        .try_collect()
        .await
        .expect("list");
    keys.sort();
    keys
}

/// The moto test server and the options to reach it (fails, saying how to
/// start it, when `scripts/services` is not running).
fn moto() -> (refugio_testkit::s3::S3Target, refugio_store::s3::S3Options) {
    let target = refugio_testkit::s3::moto().expect("the moto test server");
    let options = refugio_store::s3::S3Options {
        region: Some(target.region.clone()),
        endpoint: Some(target.endpoint.clone()),
        force_path_style: true,
        static_credentials: Some((target.access_key.clone(), target.secret_key.clone())),
        ..refugio_store::s3::S3Options::default()
    };
    (target, options)
}

/// When the store says `key` was last written.
pub(crate) async fn modified(repo: &Repository, key: &str) -> DateTime<Utc> {
    repo.store()
        .head(key)
        .await
        .expect("head")
        .and_then(|m| m.last_modified)
        .expect("a modification time")
}

/// A repository under a fresh prefix of the moto test server (fails,
/// saying how to start it, when `scripts/services` is not running).
pub(crate) async fn moto_repo(name: &str) -> Repository {
    let (target, options) = moto();
    let prefix = format!("core/{}", refugio_testkit::s3::unique_prefix(name));
    let store = refugio_store::s3::S3Store::new(&target.bucket, &prefix, &options)
        .await
        .expect("S3 store");
    Repository::new(Arc::new(store))
}

/// Starts a multipart upload of `key` and leaves it pending; returns when
/// the server says it began.
pub(crate) async fn pending_upload(repo: &Repository, key: &str) -> DateTime<Utc> {
    let upload = repo.store().put_multipart(key).await.expect("start upload");
    drop(upload);
    let pending = repo
        .store()
        .list_multipart_uploads(key)
        .await
        .expect("list uploads");
    pending
        .iter()
        .find(|u| u.key == key)
        .and_then(|u| u.initiated)
        .expect("the upload is listed with its start time")
}

/// What a [`Racing`] store does before answering for its key.
pub(crate) type Hook = Box<dyn Fn() -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// Which request of its key a [`Racing`] store interferes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum On {
    /// Runs the hook before the HEAD.
    Head,
    /// Runs the hook before the GET.
    Get,
    /// Refuses to delete the key (as under object lock).
    Delete,
}

/// A store that lets another writer in between an operation's listing
/// and its next look at one key (a hook run before a HEAD or a GET), or
/// whose download of that key is cut short.
pub(crate) struct Racing {
    inner: Arc<dyn refugio_store::ObjectStore>,
    key: String,
    on: On,
    hook: Option<Hook>,
    cut_after: Option<u64>,
}

impl Racing {
    /// `repo`'s store, with `hook` run before each `on` request of `key`.
    pub(crate) fn around(repo: &Repository, key: &str, on: On, hook: Hook) -> Repository {
        Repository::new(Arc::new(Racing {
            inner: Arc::clone(repo.store()),
            key: key.to_string(),
            on,
            hook: Some(hook),
            cut_after: None,
        }))
    }

    /// `repo`'s store, which refuses to delete `key` (as a store does an
    /// object under lock).
    pub(crate) fn refusing(repo: &Repository, key: &str) -> Repository {
        Repository::new(Arc::new(Racing {
            inner: Arc::clone(repo.store()),
            key: key.to_string(),
            on: On::Delete,
            hook: None,
            cut_after: None,
        }))
    }

    /// `repo`'s store, whose downloads of `key` end after `bytes` (a
    /// connection cut mid-way; the stored object stays whole).
    pub(crate) fn cutting(repo: &Repository, key: &str, bytes: u64) -> Repository {
        Repository::new(Arc::new(Racing {
            inner: Arc::clone(repo.store()),
            key: key.to_string(),
            on: On::Get,
            hook: None,
            cut_after: Some(bytes),
        }))
    }

    async fn before(&self, key: &str, on: On) {
        if key == self.key && on == self.on {
            if let Some(hook) = &self.hook {
                hook().await;
            }
        }
    }
}

impl std::fmt::Debug for Racing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Racing({:?} at {})", self.inner, self.key)
    }
}

#[async_trait::async_trait]
impl refugio_store::ObjectStore for Racing {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn put(&self, key: &str, data: Bytes, opts: PutOptions<'_>) -> refugio_store::Result<()> {
        self.inner.put(key, data, opts).await
    }
    async fn put_multipart(
        &self,
        key: &str,
    ) -> refugio_store::Result<Box<dyn refugio_store::MultipartUpload>> {
        self.inner.put_multipart(key).await
    }
    async fn get(&self, key: &str) -> refugio_store::Result<refugio_store::ByteReader> {
        self.before(key, On::Get).await;
        let reader = self.inner.get(key).await?;
        Ok(match self.cut_after {
            Some(n) if key == self.key => {
                Box::pin(tokio::io::AsyncReadExt::take(reader, n)) as refugio_store::ByteReader
            }
            _ => reader,
        })
    }
    async fn head(&self, key: &str) -> refugio_store::Result<Option<refugio_store::ObjectMeta>> {
        self.before(key, On::Head).await;
        self.inner.head(key).await
    }
    fn list(
        &self,
        prefix: &str,
    ) -> futures::stream::BoxStream<'_, refugio_store::Result<refugio_store::ObjectMeta>> {
        self.inner.list(prefix)
    }
    async fn list_prefixes(&self, prefix: &str) -> refugio_store::Result<Vec<String>> {
        self.inner.list_prefixes(prefix).await
    }
    async fn delete(&self, key: &str) -> refugio_store::Result<()> {
        if key == self.key && self.on == On::Delete {
            return Err(refugio_store::Error::Locked {
                store: self.inner.describe(),
                key: key.to_string(),
                until: None,
            });
        }
        self.inner.delete(key).await
    }
    async fn list_multipart_uploads(
        &self,
        prefix: &str,
    ) -> refugio_store::Result<Vec<refugio_store::PendingUpload>> {
        self.inner.list_multipart_uploads(prefix).await
    }
    async fn abort_multipart(
        &self,
        upload: &refugio_store::PendingUpload,
    ) -> refugio_store::Result<()> {
        self.inner.abort_multipart(upload).await
    }
}

/// Commits a base backup of job `j` (timeline 1, 16 MiB segments) whose
/// WAL starts in segment `start_segment`, taken at the id's time.
pub(crate) async fn base_backup(
    repo: &Repository,
    j: &str,
    id: &str,
    start_segment: u64,
) -> Manifest {
    let fixture = include_str!("../../store/tests/fixtures/manifest-1.7.json");
    let mut m = Manifest::parse("fixture", fixture.as_bytes()).expect("fixture");
    m.job = j.into();
    m.backup_id = id.into();
    m.object_lock = None;
    let t = id_time(id);
    m.snapshot_at = t;
    m.started_at = t;
    m.finished_at = t + chrono::Duration::seconds(1);
    let p = m.physical.as_mut().expect("a physical fixture");
    p.start_lsn = format!("0/{:X}", start_segment * 0x100_0000 + 0x28);
    p.stop_lsn = format!("0/{:X}", start_segment * 0x100_0000 + 0x100);
    p.start_time = t;
    for a in &m.artifacts {
        put(
            repo,
            &Repository::key(j, id, &a.name),
            &vec![0u8; a.stored_size as usize],
        )
        .await;
    }
    repo.commit(&m).await.expect("commit");
    m
}

/// Archives WAL segment `segment` of timeline 1 for job `j`; returns its key.
pub(crate) async fn archived_segment(repo: &Repository, j: &str, segment: u64) -> String {
    let name = refugio_dump::wal::segment_name(1, segment, 16 * 1024 * 1024);
    let body = format!("segment {name}");
    let key = format!("{j}/wal/00000001/{name}.{}.zst", hex(body.as_bytes()));
    put(repo, &key, body.as_bytes()).await;
    key
}

/// A repository in a new moto bucket with S3 Object Lock enabled (it can
/// only be enabled when a bucket is created).
pub(crate) async fn moto_locked_repo() -> Repository {
    let (target, options) = moto();
    let bucket = format!(
        "core-lock-{}",
        refugio_testkit::s3::unique_prefix("b")
            .to_lowercase()
            .replace(['_', '/'], "-")
    );
    let admin = refugio_store::s3::S3Store::new(&target.bucket, "", &options)
        .await
        .expect("S3 store");
    admin
        .client()
        .create_bucket()
        .bucket(&bucket)
        .object_lock_enabled_for_bucket(true)
        .send()
        .await
        .expect("a bucket with object lock");
    let store = refugio_store::s3::S3Store::new(&bucket, "", &options)
        .await
        .expect("S3 store");
    Repository::new(Arc::new(store))
}

/// A PostgreSQL server's error with this SQLSTATE.
pub(crate) fn sqlstate(code: &'static str) -> sqlx::Error {
    sqlx::Error::Database(Box::new(Sqlstate(code)))
}

#[derive(Debug)]
struct Sqlstate(&'static str);

impl std::fmt::Display for Sqlstate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "error {}", self.0)
    }
}

impl std::error::Error for Sqlstate {}

impl sqlx::error::DatabaseError for Sqlstate {
    fn message(&self) -> &str {
        self.0
    }
    fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
        Some(std::borrow::Cow::Borrowed(self.0))
    }
    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }
    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }
    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }
    fn kind(&self) -> sqlx::error::ErrorKind {
        sqlx::error::ErrorKind::Other
    }
}
