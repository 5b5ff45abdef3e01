//! Compression of the dump stream and its inverse, plus a byte counter.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use async_compression::tokio::bufread::{GzipDecoder, GzipEncoder, ZstdDecoder};
use async_compression::Level;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, BufReader, ReadBuf};

/// Read buffer in front of the compressor and decompressor.
const BUF: usize = 128 * 1024;

/// How an artifact is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Zstd,
    Gzip,
    None,
}

impl Compression {
    /// File name suffix (`.zst`, `.gz`, or nothing).
    pub fn suffix(self) -> &'static str {
        match self {
            Compression::Zstd => ".zst",
            Compression::Gzip => ".gz",
            Compression::None => "",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Compression::Zstd => "zstd",
            Compression::Gzip => "gzip",
            Compression::None => "none",
        }
    }

    /// Parses the manifest/config spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "zstd" => Some(Compression::Zstd),
            "gzip" => Some(Compression::Gzip),
            "none" => Some(Compression::None),
            _ => None,
        }
    }

    /// Wraps `input` in this compressor. `level` None = the codec's default
    /// (zstd 3, gzip 6).
    pub fn encoder<R: AsyncRead + Send + 'static>(
        self,
        input: R,
        level: Option<i32>,
    ) -> Pin<Box<dyn AsyncRead + Send>> {
        let level = level.map_or(Level::Default, Level::Precise);
        let input = BufReader::with_capacity(BUF, input);
        match self {
            // On a thread of its own, in whole frames: see crate::frames.
            Compression::Zstd => Box::pin(crate::frames::compress(
                input,
                async_compression::zstd::CParameter::quality(level),
            )),
            Compression::Gzip => Box::pin(GzipEncoder::with_quality(input, level)),
            Compression::None => Box::pin(input),
        }
    }

    /// Wraps `input` in the matching decompressor.
    pub fn decoder<R: AsyncRead + Send + 'static>(
        self,
        input: R,
    ) -> Pin<Box<dyn AsyncRead + Send>> {
        let input = BufReader::with_capacity(BUF, input);
        match self {
            Compression::Zstd => {
                let mut d = ZstdDecoder::new(input);
                d.multiple_members(true);
                Box::pin(d)
            }
            Compression::Gzip => {
                let mut d = GzipDecoder::new(input);
                d.multiple_members(true);
                Box::pin(d)
            }
            Compression::None => Box::pin(input),
        }
    }
}

/// Counts the bytes that pass through; the count is shared so it can be read
/// after the reader has been moved into a pipeline.
pub struct CountingReader<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R> CountingReader<R> {
    pub fn new(inner: R) -> Self {
        CountingReader {
            inner,
            count: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Counts into `count`, which others may share (a progress total).
    pub fn with_counter(inner: R, count: Arc<AtomicU64>) -> Self {
        CountingReader { inner, count }
    }

    /// A handle to the running count.
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.count.clone()
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for CountingReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn round_trips_every_codec() {
        let data: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for c in [Compression::Zstd, Compression::Gzip, Compression::None] {
            let counted = CountingReader::new(std::io::Cursor::new(data.clone()));
            let n = counted.counter();
            let mut enc = c.encoder(counted, None);
            let mut packed = Vec::new();
            enc.read_to_end(&mut packed).await.unwrap();
            assert_eq!(n.load(Ordering::Relaxed), data.len() as u64);
            let mut dec = c.decoder(std::io::Cursor::new(packed));
            let mut back = Vec::new();
            dec.read_to_end(&mut back).await.unwrap();
            assert_eq!(back, data, "{c:?}");
        }
    }

    /// Any flipped byte of a zstd artifact is an error when it is decoded,
    /// never other bytes: every frame carries its content checksum.
    #[tokio::test]
    async fn corrupt_zstd_is_an_error() {
        // Not all one byte: literals a flip can change without breaking
        // the frame's structure, so only the checksum can tell.
        let data: Vec<u8> = (0..100_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut enc = Compression::Zstd.encoder(std::io::Cursor::new(data.clone()), None);
        let mut packed = Vec::new();
        enc.read_to_end(&mut packed).await.unwrap();
        let mut clean = Vec::new();
        Compression::Zstd
            .decoder(std::io::Cursor::new(packed.clone()))
            .read_to_end(&mut clean)
            .await
            .unwrap();
        assert_eq!(clean, data, "the untouched stream decodes");
        for at in (0..packed.len()).step_by(packed.len() / 40 + 1) {
            let mut bad = packed.clone();
            bad[at] ^= 0x01;
            let mut back = Vec::new();
            let r = Compression::Zstd
                .decoder(std::io::Cursor::new(bad))
                .read_to_end(&mut back)
                .await;
            assert!(
                r.is_err(),
                "a flipped bit at byte {at} of {} decoded without error ({} bytes, {} as written)",
                packed.len(),
                back.len(),
                if back == data {
                    "the same"
                } else {
                    "not the same"
                }
            );
        }
    }
}
