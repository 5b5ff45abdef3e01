//! The repository side of refugio: where backups live and how they are
//! written and read back. It knows object stores (S3 and a local directory)
//! and the repository layout (`<job>/<backup-id>/…`, `manifest.json` as the
//! commit point), and nothing of PostgreSQL: artifacts are opaque byte
//! streams with a size and a SHA-256.
//!
//! The [`ObjectStore`] trait is a small core modelled on arrow-rs'
//! `object_store`: `put`, `put_multipart`, `get`, `list`, `delete`, plus the
//! multipart-upload housekeeping retention needs. [`upload::upload_stream`]
//! turns any `AsyncRead` into a multipart upload with a bounded number of
//! parts in flight (backpressure), hashing as it goes; [`verified`] checks
//! size and digest while streaming an object back.

pub mod auth;
pub mod error;
pub mod fs;
mod layout;
pub mod location;
pub mod lock;
pub mod manifest;
pub mod rate;
pub mod repo;
pub mod retention;
pub mod s3;
pub mod upload;
pub mod verified;

use std::fmt;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use tokio::io::AsyncRead;

pub use error::{Error, Result};
pub use location::{open, open_existing, ChecksumCalculation, RepositoryLocation, S3Options};
pub use lock::{LockMode, LockProbe, Retention};

/// A stream of an object's bytes.
pub type ByteReader = Pin<Box<dyn AsyncRead + Send>>;

/// What a listing says of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Key relative to the store's root (its prefix already removed).
    pub key: String,
    pub size: u64,
    pub last_modified: Option<DateTime<Utc>>,
}

/// A multipart upload that was started and neither completed nor aborted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingUpload {
    /// Key relative to the store's root.
    pub key: String,
    /// Backend-specific handle (S3 upload id; file name of the partial file).
    pub upload_id: String,
    pub initiated: Option<DateTime<Utc>>,
}

/// How [`ObjectStore::put`] writes an object. The default: a small object
/// (a manifest, a receipt, a claim, a pin), no retention.
#[derive(Debug, Clone, Copy, Default)]
pub struct PutOptions<'a> {
    /// A whole artifact that fit in one part (the single-request case of
    /// [`upload::upload_stream`]): the S3 store gives it the configured
    /// storage class and paces it under `upload_rate_limit`, as it does
    /// multipart uploads (which are artifacts only).
    pub artifact: bool,
    /// Written under this Object Lock retention; stores without object
    /// lock refuse.
    pub retention: Option<&'a Retention>,
}

impl PutOptions<'_> {
    /// An artifact's options.
    pub const ARTIFACT: PutOptions<'static> = PutOptions {
        artifact: true,
        retention: None,
    };
}

/// The storage backend core. Keys are relative to the store's root (an S3
/// bucket + prefix, or a directory) and use `/` as separator.
#[async_trait]
pub trait ObjectStore: Send + Sync + fmt::Debug + 'static {
    /// Where this store points, for messages: `s3://bucket/prefix` or
    /// `file:///path`. Never contains a secret.
    fn describe(&self) -> String;

    /// Stores an object in one request, atomically (readers see the whole
    /// object or none), as `opts` say: an artifact, or with an object-lock
    /// retention (which stores without object lock refuse).
    async fn put(&self, key: &str, data: Bytes, opts: PutOptions<'_>) -> Result<()>;

    /// `Some(n)`: this store takes parts of any size and any number of
    /// them, and [`upload::upload_stream`] cuts every stream into parts of
    /// `n` bytes, whatever the upload options say. `None` (S3, the
    /// default): parts follow S3's limits ([`MIN_PART_SIZE`], [`MAX_PARTS`]).
    fn fixed_part_size(&self) -> Option<usize> {
        None
    }

    /// Starts a multipart upload. Nothing is visible under `key` until
    /// [`MultipartUpload::complete`] succeeds.
    async fn put_multipart(&self, key: &str) -> Result<Box<dyn MultipartUpload>>;

    /// Streams an object. `Error::NotFound` when it does not exist.
    async fn get(&self, key: &str) -> Result<ByteReader>;

    /// Size and time of one object, `None` when it does not exist.
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>>;

    /// Every object whose key starts with `prefix`, recursively, in key
    /// order, fetched page by page as the stream is polled.
    fn list(&self, prefix: &str) -> BoxStream<'_, Result<ObjectMeta>>;

    /// The "directories" one level below `prefix` (which ends in `/` or is
    /// empty): S3 common prefixes with delimiter `/`. Returned without the
    /// trailing `/`, relative to the store root, sorted.
    async fn list_prefixes(&self, prefix: &str) -> Result<Vec<String>>;

    /// Deletes an object; deleting a missing object is not an error.
    async fn delete(&self, key: &str) -> Result<()>;

    /// Multipart uploads under `prefix` that were never completed or aborted.
    async fn list_multipart_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>>;

    /// Aborts a pending multipart upload found by `list_multipart_uploads`.
    async fn abort_multipart(&self, upload: &PendingUpload) -> Result<()>;

    /// Deletes many objects; the failures come back one per key (a locked
    /// object, say) while the others are deleted. `Err` only when the
    /// store could not be asked at all. S3 batches 1,000 keys a request.
    async fn delete_many(&self, keys: &[String]) -> Result<Vec<(String, Error)>> {
        Ok(delete_each(self, keys).await)
    }

    /// Sets an Object Lock retention on a stored object (its current
    /// version). Stores without object lock refuse.
    async fn set_retention(&self, key: &str, _retention: &Retention) -> Result<()> {
        Err(Error::LockUnsupported {
            store: self.describe(),
            key: key.to_string(),
            reason: "this store has no object lock".into(),
        })
    }

    /// The retention of an object, `None` when it has none.
    async fn retention(&self, _key: &str) -> Result<Option<Retention>> {
        Ok(None)
    }

    /// Proves (or disproves) that the store enforces object lock in `mode`,
    /// by writing a locked probe object under `probe_prefix` and trying to
    /// delete it.
    async fn probe_object_lock(&self, _probe_prefix: &str) -> Result<LockProbe> {
        Ok(LockProbe::NotEnforced(format!(
            "{} has no object lock (only S3 buckets created with object lock enabled have it)",
            self.describe()
        )))
    }
}

/// Deletes `keys` one request each, 16 at a time; the failures, per key.
/// The default of [`ObjectStore::delete_many`].
pub async fn delete_each<S: ObjectStore + ?Sized>(
    store: &S,
    keys: &[String],
) -> Vec<(String, Error)> {
    use futures::StreamExt;
    futures::stream::iter(keys.iter().cloned())
        .map(|key| async move {
            let r = store.delete(&key).await;
            r.err().map(|e| (key, e))
        })
        .buffer_unordered(16)
        .filter_map(futures::future::ready)
        .collect()
        .await
}

/// One multipart upload in progress (object_store's `MultipartUpload`).
#[async_trait]
pub trait MultipartUpload: Send {
    /// Starts uploading the next part (parts are numbered in call order) and
    /// returns a future that resolves when that part is stored. Several
    /// part futures may be in flight at once; the caller bounds how many.
    /// Every part but the last must be at least [`MIN_PART_SIZE`] bytes.
    fn put_part(&mut self, data: Bytes) -> BoxFuture<'static, Result<()>>;

    /// Makes the object visible under its key. Call only after every part
    /// future has resolved successfully.
    async fn complete(self: Box<Self>) -> Result<()>;

    /// Discards the upload and every stored part.
    async fn abort(self: Box<Self>) -> Result<()>;
}

/// S3's minimum size of every part but the last.
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;
/// S3's maximum part size.
pub const MAX_PART_SIZE: usize = 5 * 1024 * 1024 * 1024;
/// S3's maximum number of parts in one upload.
pub const MAX_PARTS: usize = 10_000;
