//! `upload_rate_limit`: a cap on the artifact bytes a store is sent per
//! second, shared by everything uploaded through one opened store (the
//! parts of one upload in flight together, and the uploads of several
//! backups an agent runs at once), so it is a total, not a per-stream
//! rate.
//!
//! [`RateLimiter`] hands out send times: each chunk of bytes reserves the
//! next free slot on one timeline (`bytes / rate` long), so whatever the
//! number of concurrent senders the bytes add up to the rate, with no
//! burst beyond one chunk. The S3 store paces every request body it sends
//! chunk by chunk (`s3::paced`), which is what keeps a link from filling;
//! a directory store is wrapped in [`LimitedStore`], which paces its own
//! artifact writes part by part (parts of 128 KiB), so uploaders know
//! nothing of the limit. Memory is unchanged:
//! pacing holds back the same bounded part buffers, and a slow send slows
//! the producer (pg_dump) as a slow store does.

use crate::PutOptions;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::FutureExt;
use tokio::time::Instant;

use crate::error::Result;
use crate::lock::{LockProbe, Retention};
use crate::{ByteReader, MultipartUpload, ObjectMeta, ObjectStore, PendingUpload};

/// Largest chunk one reservation covers.
const MAX_CHUNK: usize = 64 * 1024;
/// Smallest chunk (below it, per-chunk overhead dominates).
const MIN_CHUNK: usize = 1024;
/// Chunks per second at the limit, at least: each concurrent stream gets
/// bytes often enough that no stalled-stream protection fires.
const CHUNKS_PER_SECOND: u64 = 16;
/// How late a sender may be and still have its slot where the last one
/// ended: timer rounding and scheduling delays do not lower the rate. Also
/// the most that can go at once after an idle while (a tenth of a second's
/// worth).
const TOLERANCE: Duration = Duration::from_millis(100);

/// Send times for at most `bytes_per_second`, shared by every sender.
#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_second: u64,
    /// When the next byte may go: the end of the last reservation.
    next: Mutex<Option<Instant>>,
}

impl RateLimiter {
    /// A limiter for `bytes_per_second` (at least 1).
    pub fn new(bytes_per_second: u64) -> Arc<RateLimiter> {
        Arc::new(RateLimiter {
            bytes_per_second: bytes_per_second.max(1),
            next: Mutex::new(None),
        })
    }

    /// The limit, in bytes per second.
    pub fn bytes_per_second(&self) -> u64 {
        self.bytes_per_second
    }

    /// How many bytes to send per reservation: about a sixteenth of a
    /// second's worth, between 1 KiB and 64 KiB.
    pub fn chunk(&self) -> usize {
        usize::try_from(self.bytes_per_second / CHUNKS_PER_SECOND)
            .unwrap_or(MAX_CHUNK)
            .clamp(MIN_CHUNK, MAX_CHUNK)
    }

    /// Reserves the next `bytes` and returns when they may be sent: where
    /// the previous reservation ends, or, when the timeline has been idle,
    /// now (less up to [`TOLERANCE`]: a time already past means "at once").
    pub fn reserve(&self, bytes: usize) -> Instant {
        let now = Instant::now();
        let earliest = now.checked_sub(TOLERANCE).unwrap_or(now);
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let start = next.map_or(now, |n| n.max(earliest));
        *next = Some(start + self.length(bytes));
        start
    }

    /// Reserves the next `bytes` and returns when their slot ends: when
    /// they have been sent at the limit.
    pub fn slot_end(&self, bytes: usize) -> Instant {
        self.reserve(bytes) + self.length(bytes)
    }

    /// How long sending `bytes` takes at the limit.
    pub fn length(&self, bytes: usize) -> Duration {
        Duration::from_secs_f64(bytes as f64 / self.bytes_per_second as f64)
    }
}

/// A store whose artifact uploads go at most at the limiter's rate, paced
/// by the store itself (as object_store's `ThrottledStore`), so uploaders
/// need not know: an artifact `put` waits for its slot on the limiter's
/// timeline, then writes; a multipart upload hands each part to the inner
/// upload at once (parts keep their call order) and reports it stored no
/// earlier than its slot's end, so an uploader, which bounds the parts in
/// flight, is held to the rate and the store is at most those parts ahead
/// of it. Everything else is the inner store's.
#[derive(Debug)]
pub struct LimitedStore {
    inner: Arc<dyn ObjectStore>,
    limiter: Arc<RateLimiter>,
}

impl LimitedStore {
    pub fn new(inner: Arc<dyn ObjectStore>, limiter: Arc<RateLimiter>) -> Self {
        LimitedStore { inner, limiter }
    }
}

#[async_trait]
impl ObjectStore for LimitedStore {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn fixed_part_size(&self) -> Option<usize> {
        self.inner.fixed_part_size()
    }
    async fn put(&self, key: &str, data: Bytes, opts: PutOptions<'_>) -> Result<()> {
        if opts.artifact {
            tokio::time::sleep_until(self.limiter.slot_end(data.len())).await;
        }
        self.inner.put(key, data, opts).await
    }
    async fn put_multipart(&self, key: &str) -> Result<Box<dyn MultipartUpload>> {
        Ok(Box::new(PacedUpload {
            inner: self.inner.put_multipart(key).await?,
            limiter: Arc::clone(&self.limiter),
        }))
    }
    async fn get(&self, key: &str) -> Result<ByteReader> {
        self.inner.get(key).await
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        self.inner.head(key).await
    }
    fn list(&self, prefix: &str) -> BoxStream<'_, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }
    async fn list_prefixes(&self, prefix: &str) -> Result<Vec<String>> {
        self.inner.list_prefixes(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key).await
    }
    async fn list_multipart_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>> {
        self.inner.list_multipart_uploads(prefix).await
    }
    async fn abort_multipart(&self, upload: &PendingUpload) -> Result<()> {
        self.inner.abort_multipart(upload).await
    }
    async fn delete_many(&self, keys: &[String]) -> Result<Vec<(String, crate::Error)>> {
        self.inner.delete_many(keys).await
    }
    async fn set_retention(&self, key: &str, retention: &Retention) -> Result<()> {
        self.inner.set_retention(key, retention).await
    }
    async fn retention(&self, key: &str) -> Result<Option<Retention>> {
        self.inner.retention(key).await
    }
    async fn probe_object_lock(&self, probe_prefix: &str) -> Result<LockProbe> {
        self.inner.probe_object_lock(probe_prefix).await
    }
}

/// A multipart upload of a [`LimitedStore`]: each part resolves no earlier
/// than the end of its slot, reserved when the part is handed over.
struct PacedUpload {
    inner: Box<dyn MultipartUpload>,
    limiter: Arc<RateLimiter>,
}

#[async_trait]
impl MultipartUpload for PacedUpload {
    fn put_part(&mut self, data: Bytes) -> BoxFuture<'static, Result<()>> {
        let end = self.limiter.slot_end(data.len());
        let part = self.inner.put_part(data);
        async move {
            part.await?;
            tokio::time::sleep_until(end).await;
            Ok(())
        }
        .boxed()
    }

    async fn complete(self: Box<Self>) -> Result<()> {
        self.inner.complete().await
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        self.inner.abort().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Reservations of several senders line up on one timeline: the total
    /// is the rate, whoever sends.
    #[tokio::test(start_paused = true)]
    async fn reservations_add_up_across_senders() {
        let limiter = RateLimiter::new(1000);
        let t0 = Instant::now();
        assert_eq!(limiter.reserve(500), t0, "an idle timeline sends at once");
        assert_eq!(limiter.reserve(250), t0 + Duration::from_millis(500));
        assert_eq!(limiter.reserve(250), t0 + Duration::from_millis(750));
        // After an idle while, at most TOLERANCE of credit was saved up.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let now = Instant::now();
        assert_eq!(limiter.reserve(1000), now - TOLERANCE);
        assert_eq!(limiter.reserve(1), now - TOLERANCE + Duration::from_secs(1));
    }

    #[test]
    fn chunks_are_a_sixteenth_of_a_second_within_bounds() {
        assert_eq!(RateLimiter::new(2 << 20).chunk(), 64 * 1024);
        assert_eq!(RateLimiter::new(512 * 1024).chunk(), 32 * 1024);
        assert_eq!(RateLimiter::new(1).chunk(), 1024);
    }

    /// Two uploads through one limited store, each a put and parts, take
    /// as long as their total at the rate (paused clock: exact), and store
    /// every byte in order.
    #[tokio::test(start_paused = true)]
    async fn a_limited_store_paces_its_artifact_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inner: Arc<dyn ObjectStore> =
            Arc::new(crate::fs::FsStore::new(dir.path()).expect("store"));
        let store = LimitedStore::new(inner, RateLimiter::new(64 * 1024));
        let data: Vec<u8> = (0..128 * 1024).map(|i| (i % 251) as u8).collect();
        let started = Instant::now();
        let upload = |key: &'static str| {
            let (store, data) = (&store, data.clone());
            async move {
                let mut up = store.put_multipart(key).await.expect("start");
                let parts: Vec<_> = data
                    .chunks(32 * 1024)
                    .map(|c| up.put_part(Bytes::copy_from_slice(c)))
                    .collect();
                for p in parts {
                    p.await.expect("part");
                }
                up.complete().await.expect("complete");
            }
        };
        tokio::join!(upload("a"), upload("b"));
        // 256 KiB at 64 KiB/s: 4 s (the timer rounds each wait up to the
        // next millisecond).
        let took = started.elapsed().as_secs_f64();
        assert!((4.0..4.05).contains(&took), "took {took} s");
        for key in ["a", "b"] {
            let mut out = Vec::new();
            store
                .get(key)
                .await
                .expect("get")
                .read_to_end(&mut out)
                .await
                .expect("read");
            assert_eq!(out, data, "{key}");
        }
        // An artifact put waits for its slot; anything else does not.
        let started = Instant::now();
        let body = Bytes::from(vec![0u8; 64 * 1024]);
        store
            .put("m", body.clone(), PutOptions::default())
            .await
            .expect("put");
        assert_eq!(started.elapsed(), Duration::ZERO);
        store
            .put("p", body, PutOptions::ARTIFACT)
            .await
            .expect("put");
        let took = started.elapsed().as_secs_f64();
        assert!((0.9..1.05).contains(&took), "took {took} s");
    }
}
