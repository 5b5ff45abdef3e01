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
//! a directory store is wrapped in [`LimitedStore`], whose uploads are read
//! through [`Paced`] by [`crate::upload::upload_stream`], so parts fill at
//! the rate and are written in part-sized bursts. Memory is unchanged:
//! pacing holds back the same bounded part buffers, and a slow send slows
//! the producer (pg_dump) as a slow store does.

use crate::PutOptions;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Instant, Sleep};

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

    /// How long sending `bytes` takes at the limit.
    pub fn length(&self, bytes: usize) -> Duration {
        Duration::from_secs_f64(bytes as f64 / self.bytes_per_second as f64)
    }
}

/// An `AsyncRead` that delivers at most the limiter's rate: each read of
/// up to one chunk reserves its slot, and the next read waits for the
/// slot's end.
pub struct Paced<R> {
    inner: R,
    limiter: Option<Arc<RateLimiter>>,
    wait: Option<Pin<Box<Sleep>>>,
}

impl<R> Paced<R> {
    /// `inner` paced by `limiter`; without one, `inner` as it is.
    pub fn new(inner: R, limiter: Option<Arc<RateLimiter>>) -> Self {
        Paced {
            inner,
            limiter,
            wait: None,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Paced<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let Some(limiter) = this.limiter.clone() else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        if let Some(wait) = this.wait.as_mut() {
            if std::future::Future::poll(wait.as_mut(), cx).is_pending() {
                return Poll::Pending;
            }
            this.wait = None;
        }
        let room = buf.remaining().min(limiter.chunk());
        let mut chunk = ReadBuf::new(buf.initialize_unfilled_to(room));
        let result = Pin::new(&mut this.inner).poll_read(cx, &mut chunk);
        let read = chunk.filled().len();
        if let Poll::Ready(Ok(())) = &result {
            buf.advance(read);
            if read > 0 {
                let end = limiter.reserve(read) + limiter.length(read);
                this.wait = Some(Box::pin(tokio::time::sleep_until(end)));
            }
        }
        result
    }
}

/// A store whose artifact uploads go at most at the limiter's rate: it
/// hands the limiter to [`crate::upload::upload_stream`], which reads the
/// data through [`Paced`]; everything else is the inner store's.
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
    fn upload_limiter(&self) -> Option<Arc<RateLimiter>> {
        Some(Arc::clone(&self.limiter))
    }
    fn fixed_part_size(&self) -> Option<usize> {
        self.inner.fixed_part_size()
    }
    async fn put(&self, key: &str, data: Bytes, opts: PutOptions<'_>) -> Result<()> {
        self.inner.put(key, data, opts).await
    }
    async fn put_multipart(&self, key: &str) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart(key).await
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

    /// Two readers sharing a limiter deliver every byte and take as long
    /// as their total at the rate (paused clock: exact).
    #[tokio::test(start_paused = true)]
    async fn paced_readers_share_the_rate() {
        let limiter = RateLimiter::new(64 * 1024);
        let data = vec![7u8; 128 * 1024];
        let started = Instant::now();
        let read = |limiter: Arc<RateLimiter>, data: Vec<u8>| async move {
            let mut out = Vec::new();
            Paced::new(&data[..], Some(limiter))
                .read_to_end(&mut out)
                .await
                .expect("read");
            out
        };
        let (a, b) = tokio::join!(
            read(Arc::clone(&limiter), data.clone()),
            read(Arc::clone(&limiter), data.clone())
        );
        assert_eq!((a, b), (data.clone(), data));
        // 256 KiB at 64 KiB/s: 4 s (the EOF read waits for the last slot's end).
        // (The timer rounds each wait up to the next millisecond.)
        let took = started.elapsed().as_secs_f64();
        assert!((4.0..4.05).contains(&took), "took {took} s");
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_limiter_a_paced_reader_is_its_inner_reader() {
        let data = vec![1u8; 1 << 20];
        let started = Instant::now();
        let mut out = Vec::new();
        Paced::new(&data[..], None)
            .read_to_end(&mut out)
            .await
            .expect("read");
        assert_eq!(out, data);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
