//! Streaming uploads: any `AsyncRead` into an object, in parts, with a
//! bounded number of parts in flight, hashed and counted on the way.

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::{Error, Result};
use crate::{MultipartUpload, ObjectStore, PutOptions, MAX_PARTS, MAX_PART_SIZE, MIN_PART_SIZE};

/// Parts per part-size step: the part size doubles every this many parts.
/// 900 rather than 1,000 so that even a 5 MiB base reaches S3's 5 TiB
/// object limit within 10,000 parts (doubling every 1,000 parts tops out
/// at 4.9 TiB).
pub const PARTS_PER_SIZE_STEP: usize = 900;

/// How [`upload_stream`] cuts and sends the stream.
#[derive(Debug, Clone)]
pub struct UploadOptions {
    /// Size of the first parts, raised to at least [`MIN_PART_SIZE`];
    /// default 8 MiB. Parts grow as the stream does, see [`part_size_for`].
    pub part_size: usize,
    /// Parts in flight at most (at least 1); default 3. Memory use is at
    /// most `(concurrency + 1) × part size`.
    pub concurrency: usize,
    /// Expected total size, if known: raises the part size up front so the
    /// stream fits in half of [`MAX_PARTS`] without growing. Default none.
    pub expected_size: Option<u64>,
}

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions {
            part_size: 8 * 1024 * 1024,
            concurrency: 3,
            expected_size: None,
        }
    }
}

/// What was uploaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadOutcome {
    /// Bytes read from the stream and stored.
    pub size: u64,
    /// SHA-256 of those bytes, lowercase hex.
    pub sha256: String,
    /// Parts sent (1 when the stream fit in a single `put`).
    pub parts: usize,
}

/// Size of part `part_index` (0-based) for a base part size: `base`,
/// doubled every [`PARTS_PER_SIZE_STEP`] parts, capped at [`MAX_PART_SIZE`].
pub fn part_size_for(part_index: usize, base: usize) -> usize {
    let base = base.clamp(MIN_PART_SIZE, MAX_PART_SIZE);
    let doublings = (part_index / PARTS_PER_SIZE_STEP).min(usize::BITS as usize - 1) as u32;
    base.checked_shl(doublings)
        .filter(|size| size >> doublings == base)
        .unwrap_or(MAX_PART_SIZE)
        .min(MAX_PART_SIZE)
}

/// The base part size for `options`: at least [`MIN_PART_SIZE`], and
/// large enough that `expected_size` fits in `MAX_PARTS / 2` parts.
pub fn base_part_size(options: &UploadOptions) -> usize {
    const MIB: u64 = 1024 * 1024;
    let mut base = options.part_size.clamp(MIN_PART_SIZE, MAX_PART_SIZE) as u64;
    if let Some(expected) = options.expected_size {
        let needed = expected.div_ceil((MAX_PARTS / 2) as u64).div_ceil(MIB) * MIB;
        base = base.max(needed);
    }
    base.min(MAX_PART_SIZE as u64) as usize
}

/// Aborts the upload it holds when dropped before [`AbortOnDrop::take`]:
/// the drop spawns the abort on the current tokio runtime, so that a caller
/// dropping [`upload_stream`]'s future (a cancelled backup) leaves no parts
/// behind. If there is no runtime, or it shuts down before the spawned task
/// runs, the upload stays pending until garbage collection finds it with
/// [`ObjectStore::list_multipart_uploads`].
struct AbortOnDrop {
    upload: Option<Box<dyn MultipartUpload>>,
    key: String,
}

impl AbortOnDrop {
    fn put_part(&mut self, data: bytes::Bytes) -> BoxFuture<'static, Result<()>> {
        match self.upload.as_mut() {
            Some(upload) => upload.put_part(data),
            None => futures::future::ready(Err(Error::Other(format!(
                "upload of {} already finished",
                self.key
            ))))
            .boxed(),
        }
    }

    /// Completes the upload; from here on a drop no longer aborts (a
    /// failing `complete` aborts by itself).
    async fn complete(mut self) -> Result<()> {
        match self.upload.take() {
            Some(upload) => upload.complete().await,
            None => Err(Error::Other(format!(
                "upload of {} already finished",
                self.key
            ))),
        }
    }

    /// Aborts now, logging (not returning) a failure: the caller returns
    /// the error that made it abort.
    async fn abort(mut self) {
        if let Some(upload) = self.upload.take() {
            if let Err(error) = upload.abort().await {
                tracing::warn!(key = %self.key, error = %error, "aborting the upload failed; it stays pending until garbage collection");
            }
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        let Some(upload) = self.upload.take() else {
            return;
        };
        let key = std::mem::take(&mut self.key);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    match upload.abort().await {
                        Ok(()) => tracing::debug!(%key, "cancelled upload aborted"),
                        Err(error) => tracing::warn!(%key, %error, "aborting the cancelled upload failed; it stays pending until garbage collection"),
                    }
                });
            }
            Err(_) => {
                tracing::warn!(%key, "upload cancelled outside a tokio runtime; it stays pending until garbage collection")
            }
        }
    }
}

/// Reads up to `size` bytes (fewer only at EOF), hashing them, into a
/// spare buffer when one is big enough.
async fn read_part<R: AsyncRead + Unpin>(
    reader: &mut R,
    size: usize,
    hasher: &mut Sha256,
    spare: &mut Vec<BytesMut>,
) -> std::io::Result<BytesMut> {
    let mut buffer = match spare.pop() {
        Some(mut buffer) if buffer.capacity() >= size => {
            buffer.clear();
            buffer
        }
        _ => BytesMut::with_capacity(size),
    };
    while buffer.len() < size {
        let before = buffer.len();
        let read = (&mut *reader)
            .take((size - before) as u64)
            .read_buf(&mut buffer)
            .await?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[before..]);
    }
    Ok(buffer)
}

/// Uploads `reader` to EOF as object `key`.
///
/// The stream is read in parts ([`part_size_for`]), hashed (SHA-256) and
/// counted as it goes. A stream that fits in the first part is stored with
/// one `put`; a longer one becomes a multipart upload with at most
/// `opts.concurrency` parts in flight: before reading the next part it
/// waits for a slot, so a slow store slows the producer (backpressure) and
/// memory stays within `(concurrency + 1)` part buffers.
///
/// If the reader fails (returned as [`Error::Source`]), a part fails, or
/// the returned future is dropped before it finishes, the upload is
/// aborted: nothing appears under `key` and no parts are left (on drop the
/// abort runs as a spawned task, see the module source's `AbortOnDrop`).
pub async fn upload_stream(
    store: &dyn ObjectStore,
    key: &str,
    mut reader: impl AsyncRead + Unpin + Send,
    opts: &UploadOptions,
) -> Result<UploadOutcome> {
    let base = base_part_size(opts);
    let fixed = store.fixed_part_size();
    let size_of = |index: usize| fixed.unwrap_or_else(|| part_size_for(index, base));
    let concurrency = opts.concurrency.max(1);
    let mut hasher = Sha256::new();
    let source_error = |source| Error::Source {
        key: key.to_string(),
        source,
    };

    // Part buffers come back once their part is stored and are read into
    // again: no page faults on fresh 8 MiB buffers for every part, and a
    // peak that does not depend on how the allocator keeps freed ones.
    let mut spare: Vec<BytesMut> = Vec::new();
    let first = read_part(&mut reader, size_of(0), &mut hasher, &mut spare)
        .await
        .map_err(source_error)?;
    let mut size = first.len() as u64;
    if first.len() < size_of(0) {
        store.put(key, first.freeze(), PutOptions::ARTIFACT).await?;
        return Ok(UploadOutcome {
            size,
            sha256: hex::encode(hasher.finalize()),
            parts: 1,
        });
    }

    let mut upload = AbortOnDrop {
        upload: Some(store.put_multipart(key).await?),
        key: key.to_string(),
    };
    let shape = Shape {
        key,
        size_of: &size_of,
        concurrency,
        fixed: fixed.is_some(),
    };
    let sent = send_parts(
        &mut upload,
        &mut reader,
        &mut hasher,
        &mut spare,
        first,
        &shape,
    )
    .await;
    let (more, parts) = match sent {
        Ok(sent) => sent,
        Err(error) => {
            upload.abort().await;
            return Err(error);
        }
    };
    size += more;
    upload.complete().await?;
    Ok(UploadOutcome {
        size,
        sha256: hex::encode(hasher.finalize()),
        parts,
    })
}

/// How a multipart upload cuts its stream.
struct Shape<'a> {
    key: &'a str,
    /// The size of the part at an index.
    size_of: &'a (dyn Fn(usize) -> usize + Sync),
    /// Parts in flight at most.
    concurrency: usize,
    /// The store takes parts of one fixed size (a directory), not S3's
    /// growing ones, and no part limit.
    fixed: bool,
}

/// Sends `first` and the rest of `reader` as parts of `upload`, at most
/// `shape.concurrency` in flight; returns the bytes sent after `first`
/// and the number of parts. On an error the caller aborts the upload.
async fn send_parts<R: AsyncRead + Unpin + Send>(
    upload: &mut AbortOnDrop,
    reader: &mut R,
    hasher: &mut Sha256,
    spare: &mut Vec<BytesMut>,
    first: BytesMut,
    shape: &Shape<'_>,
) -> Result<(u64, usize)> {
    let (key, size_of) = (shape.key, shape.size_of);
    let source_error = |source| Error::Source {
        key: key.to_string(),
        source,
    };
    let mut in_flight: FuturesUnordered<BoxFuture<'static, (Result<()>, Bytes)>> =
        FuturesUnordered::new();
    let send = |upload: &mut AbortOnDrop, part: BytesMut| {
        let part = part.freeze();
        let kept = part.clone();
        upload.put_part(part).map(move |done| (done, kept)).boxed()
    };
    // A stored part's buffer, once the store let go of it.
    let reuse = |spare: &mut Vec<BytesMut>, kept: Bytes| {
        if let Ok(buffer) = kept.try_into_mut() {
            spare.push(buffer);
        }
    };
    let first_size = first.len() as u64;
    in_flight.push(send(upload, first));
    let (mut size, mut parts) = (first_size, 1);
    loop {
        // Surface failed parts early, then wait for a free slot.
        while let Some(Some((done, kept))) = in_flight.next().now_or_never() {
            done?;
            reuse(spare, kept);
        }
        while in_flight.len() >= shape.concurrency {
            if let Some((done, kept)) = in_flight.next().await {
                done?;
                reuse(spare, kept);
            }
        }
        if !shape.fixed && parts >= MAX_PARTS {
            // Only reachable with a stream beyond S3's 5 TiB object limit.
            let mut probe = [0u8; 1];
            match reader.read(&mut probe).await.map_err(source_error)? {
                0 => break,
                _ => {
                    return Err(Error::Other(format!(
                        "the data for {key} exceeds {MAX_PARTS} parts ({size} bytes read): larger than an object can be"
                    )))
                }
            }
        }
        let part = read_part(reader, size_of(parts), hasher, spare)
            .await
            .map_err(source_error)?;
        if part.is_empty() {
            break;
        }
        let last = part.len() < size_of(parts);
        size += part.len() as u64;
        parts += 1;
        in_flight.push(send(upload, part));
        if last {
            break;
        }
    }
    while let Some((done, _)) = in_flight.next().await {
        done?;
    }
    Ok((size - first_size, parts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use std::collections::BTreeMap;
    use std::io;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};
    use std::time::Duration;

    use async_trait::async_trait;
    use bytes::Bytes;
    use futures::stream::BoxStream;
    use tokio::io::ReadBuf;

    use crate::{ByteReader, ObjectMeta, PendingUpload};

    /// Shared record of what the fake store saw.
    #[derive(Debug, Default)]
    struct Record {
        puts: Mutex<Vec<(String, Bytes)>>,
        parts: Mutex<BTreeMap<usize, Bytes>>,
        in_flight: AtomicUsize,
        max_in_flight: AtomicUsize,
        aborted: AtomicBool,
        completed: AtomicBool,
    }

    /// A store whose parts take `delay` each and part `fail_part` fails.
    #[derive(Debug)]
    struct FakeStore {
        record: Arc<Record>,
        delay: Duration,
        fail_part: Option<usize>,
    }

    impl FakeStore {
        fn new(delay: Duration, fail_part: Option<usize>) -> Self {
            FakeStore {
                record: Arc::default(),
                delay,
                fail_part,
            }
        }
    }

    fn unsupported<T>() -> Result<T> {
        Err(Error::Other("not supported by the fake".into()))
    }

    #[async_trait]
    impl ObjectStore for FakeStore {
        fn describe(&self) -> String {
            "fake://".into()
        }
        async fn put(&self, key: &str, data: Bytes, _: PutOptions<'_>) -> Result<()> {
            self.record
                .puts
                .lock()
                .expect("lock")
                .push((key.to_string(), data));
            Ok(())
        }
        async fn put_multipart(&self, _key: &str) -> Result<Box<dyn MultipartUpload>> {
            Ok(Box::new(FakeUpload {
                record: Arc::clone(&self.record),
                delay: self.delay,
                fail_part: self.fail_part,
                next: 0,
            }))
        }
        async fn get(&self, _key: &str) -> Result<ByteReader> {
            unsupported()
        }
        async fn head(&self, _key: &str) -> Result<Option<ObjectMeta>> {
            unsupported()
        }
        fn list(&self, _prefix: &str) -> BoxStream<'_, Result<ObjectMeta>> {
            futures::stream::empty().boxed()
        }
        async fn list_prefixes(&self, _prefix: &str) -> Result<Vec<String>> {
            unsupported()
        }
        async fn delete(&self, _key: &str) -> Result<()> {
            unsupported()
        }
        async fn list_multipart_uploads(&self, _prefix: &str) -> Result<Vec<PendingUpload>> {
            unsupported()
        }
        async fn abort_multipart(&self, _upload: &PendingUpload) -> Result<()> {
            unsupported()
        }
    }

    struct FakeUpload {
        record: Arc<Record>,
        delay: Duration,
        fail_part: Option<usize>,
        next: usize,
    }

    #[async_trait]
    impl MultipartUpload for FakeUpload {
        fn put_part(&mut self, data: Bytes) -> BoxFuture<'static, Result<()>> {
            let index = self.next;
            self.next += 1;
            let record = Arc::clone(&self.record);
            let now = record.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            record.max_in_flight.fetch_max(now, Ordering::SeqCst);
            let (delay, fail) = (self.delay, self.fail_part == Some(index));
            async move {
                tokio::time::sleep(delay).await;
                record.in_flight.fetch_sub(1, Ordering::SeqCst);
                if fail {
                    return Err(Error::Other(format!("part {index} failed")));
                }
                record.parts.lock().expect("lock").insert(index, data);
                Ok(())
            }
            .boxed()
        }
        async fn complete(self: Box<Self>) -> Result<()> {
            self.record.completed.store(true, Ordering::SeqCst);
            Ok(())
        }
        async fn abort(self: Box<Self>) -> Result<()> {
            self.record.aborted.store(true, Ordering::SeqCst);
            Ok(())
        }
    }

    /// Yields `data`, then stays pending forever (a stalled producer).
    struct Stalling(io::Cursor<Vec<u8>>);

    impl AsyncRead for Stalling {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let before = buf.filled().len();
            match Pin::new(&mut self.0).poll_read(cx, buf) {
                Poll::Ready(Ok(())) if buf.filled().len() == before => Poll::Pending,
                other => other,
            }
        }
    }

    fn options(concurrency: usize) -> UploadOptions {
        UploadOptions {
            part_size: MIN_PART_SIZE,
            concurrency,
            expected_size: None,
        }
    }

    fn input(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn parts_in_flight_never_exceed_the_concurrency() {
        let store = FakeStore::new(Duration::from_millis(20), None);
        let data = input(7 * MIN_PART_SIZE + 99);
        let outcome = upload_stream(&store, "k", &data[..], &options(2))
            .await
            .expect("upload");
        assert_eq!(outcome.parts, 8);
        assert_eq!(outcome.size, data.len() as u64);
        assert_eq!(outcome.sha256, hex::encode(Sha256::digest(&data)));
        assert_eq!(store.record.max_in_flight.load(Ordering::SeqCst), 2);
        assert!(store.record.completed.load(Ordering::SeqCst));
        assert!(!store.record.aborted.load(Ordering::SeqCst));
        let parts = store.record.parts.lock().expect("lock");
        let joined: Vec<u8> = parts.values().flat_map(|p| p.iter().copied()).collect();
        assert_eq!(joined, data);
        assert!(store.record.puts.lock().expect("lock").is_empty());
    }

    #[tokio::test]
    async fn a_failed_part_aborts_and_returns_its_error() {
        let store = FakeStore::new(Duration::from_millis(1), Some(2));
        let data = input(6 * MIN_PART_SIZE);
        let error = upload_stream(&store, "k", &data[..], &options(3))
            .await
            .expect_err("part 2 fails");
        assert!(error.to_string().contains("part 2 failed"), "{error}");
        assert!(store.record.aborted.load(Ordering::SeqCst));
        assert!(!store.record.completed.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_dropped_upload_is_aborted_in_the_background() {
        let store = FakeStore::new(Duration::from_millis(1), None);
        let reader = Stalling(io::Cursor::new(input(2 * MIN_PART_SIZE + 5)));
        let options = options(2);
        let upload = upload_stream(&store, "k", reader, &options);
        assert!(tokio::time::timeout(Duration::from_millis(200), upload)
            .await
            .is_err());
        for _ in 0..100 {
            if store.record.aborted.load(Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            store.record.aborted.load(Ordering::SeqCst),
            "the drop aborted the upload"
        );
        assert!(!store.record.completed.load(Ordering::SeqCst));
    }

    #[rstest]
    #[case(0)]
    #[case(1)]
    #[case(MIN_PART_SIZE - 1)]
    #[tokio::test]
    async fn a_stream_shorter_than_a_part_is_one_put(#[case] len: usize) {
        let store = FakeStore::new(Duration::ZERO, None);
        let data = input(len);
        let outcome = upload_stream(&store, "k", &data[..], &options(3))
            .await
            .expect("upload");
        assert_eq!((outcome.size, outcome.parts), (len as u64, 1));
        let puts = store.record.puts.lock().expect("lock");
        assert_eq!(puts.len(), 1);
        assert_eq!(puts[0].0, "k");
        assert_eq!(&puts[0].1[..], &data[..]);
        assert!(store.record.parts.lock().expect("lock").is_empty());
    }

    const MIB: usize = 1024 * 1024;
    const TIB: u64 = 1024 * 1024 * 1024 * 1024;

    fn capacity(base: usize) -> u64 {
        (0..MAX_PARTS).map(|i| part_size_for(i, base) as u64).sum()
    }

    #[rstest]
    #[case(MIN_PART_SIZE)]
    #[case(8 * MIB)]
    #[case(64 * MIB)]
    #[case(MAX_PART_SIZE)]
    fn five_tib_fits_in_max_parts(#[case] base: usize) {
        assert!(
            capacity(base) >= 5 * TIB,
            "base {base}: {} bytes",
            capacity(base)
        );
    }

    #[test]
    fn part_sizes_double_per_step_and_are_capped() {
        assert_eq!(part_size_for(0, 8 * MIB), 8 * MIB);
        assert_eq!(part_size_for(PARTS_PER_SIZE_STEP - 1, 8 * MIB), 8 * MIB);
        assert_eq!(part_size_for(PARTS_PER_SIZE_STEP, 8 * MIB), 16 * MIB);
        assert_eq!(part_size_for(3 * PARTS_PER_SIZE_STEP, 8 * MIB), 64 * MIB);
        assert_eq!(part_size_for(MAX_PARTS - 1, 8 * MIB), MAX_PART_SIZE);
        assert_eq!(part_size_for(usize::MAX, 8 * MIB), MAX_PART_SIZE);
        assert_eq!(
            part_size_for(0, 1),
            MIN_PART_SIZE,
            "raised to the S3 minimum"
        );
        assert_eq!(part_size_for(0, usize::MAX), MAX_PART_SIZE);
        let sizes: Vec<usize> = (0..MAX_PARTS)
            .map(|i| part_size_for(i, MIN_PART_SIZE))
            .collect();
        assert!(sizes.windows(2).all(|w| w[0] <= w[1]), "never shrinks");
    }

    #[rstest]
    #[case(None, 8 * MIB)]
    #[case(Some(10 * 1024 * MIB as u64), 8 * MIB)]
    #[case(Some(TIB), 210 * MIB)]
    #[case(Some(100 * TIB), MAX_PART_SIZE)]
    fn expected_size_raises_the_base(#[case] expected: Option<u64>, #[case] base: usize) {
        let options = UploadOptions {
            expected_size: expected,
            ..UploadOptions::default()
        };
        assert_eq!(base_part_size(&options), base);
        if let Some(expected) = expected.filter(|&e| e <= 5 * TIB) {
            assert!((base as u64) * (MAX_PARTS as u64 / 2) >= expected);
        }
    }
}
