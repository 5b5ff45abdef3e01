//! Reading objects back with their size and SHA-256 checked on the fly.
//!
//! [`VerifiedReader`] passes data through as it is read (it never holds
//! the object) and fails the read with [`std::io::ErrorKind::InvalidData`]
//! as soon as the object proves longer than expected, and at EOF if its
//! size or digest differ. The `io::Error` wraps the store's
//! [`Error::SizeMismatch`] or [`Error::DigestMismatch`]; get it back with
//! [`verification_error`]. A consumer must therefore read to EOF (and see
//! `Ok(0)`) before trusting what it read.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, ReadBuf};

use crate::error::{Error, Result};
use crate::{ByteReader, ObjectStore};

/// An `AsyncRead` pass-through that counts and hashes what goes through.
#[derive(Debug)]
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    size: u64,
}

impl<R> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            size: 0,
        }
    }

    /// Bytes read so far and their SHA-256 (lowercase hex).
    pub fn finish(&self) -> (u64, String) {
        (self.size, hex::encode(self.hasher.clone().finalize()))
    }

    /// Bytes read so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The wrapped reader.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for HashingReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let new = &buf.filled()[before..];
            this.hasher.update(new);
            this.size += new.len() as u64;
        }
        polled
    }
}

/// Wraps a reader of object `key` and checks it against the expected size
/// and SHA-256; see the module documentation.
#[derive(Debug)]
pub struct VerifiedReader<R> {
    key: String,
    inner: HashingReader<R>,
    expected_size: u64,
    expected_sha256: String,
    /// Set once EOF was reached and checked, or a mismatch was found.
    outcome: Option<std::result::Result<(), Mismatch>>,
}

#[derive(Debug, Clone)]
enum Mismatch {
    Size(u64),
    Digest(String),
}

impl<R> VerifiedReader<R> {
    fn error(&self, mismatch: &Mismatch) -> io::Error {
        let error = match mismatch {
            Mismatch::Size(actual) => Error::SizeMismatch {
                key: self.key.clone(),
                expected: self.expected_size,
                actual: *actual,
            },
            Mismatch::Digest(actual) => Error::DigestMismatch {
                key: self.key.clone(),
                expected: self.expected_sha256.clone(),
                actual: actual.clone(),
            },
        };
        io::Error::new(io::ErrorKind::InvalidData, error)
    }

    /// Bytes passed through so far.
    pub fn bytes_read(&self) -> u64 {
        self.inner.size()
    }

    /// Whether EOF was reached with the expected size and digest.
    pub fn is_verified(&self) -> bool {
        matches!(self.outcome, Some(Ok(())))
    }
}

/// Wraps `reader`, the content of object `key`, to check it has
/// `expected_size` bytes with SHA-256 `expected_sha256` (hex, any case).
pub fn verified<R: AsyncRead + Unpin>(
    key: &str,
    reader: R,
    expected_size: u64,
    expected_sha256: &str,
) -> VerifiedReader<R> {
    VerifiedReader {
        key: key.to_string(),
        inner: HashingReader::new(reader),
        expected_size,
        expected_sha256: expected_sha256.to_ascii_lowercase(),
        outcome: None,
    }
}

/// Streams object `key` from `store`, verified; see [`verified`].
pub async fn get_verified(
    store: &dyn ObjectStore,
    key: &str,
    expected_size: u64,
    expected_sha256: &str,
) -> Result<VerifiedReader<ByteReader>> {
    let reader = store.get(key).await?;
    Ok(verified(key, reader, expected_size, expected_sha256))
}

/// The size or digest mismatch inside an error from a [`VerifiedReader`].
pub fn verification_error(error: &io::Error) -> Option<&Error> {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<Error>())
        .filter(|e| matches!(e, Error::SizeMismatch { .. } | Error::DigestMismatch { .. }))
}

impl<R: AsyncRead + Unpin> AsyncRead for VerifiedReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &self.outcome {
            Some(Ok(())) => return Poll::Ready(Ok(())),
            Some(Err(mismatch)) => return Poll::Ready(Err(self.error(mismatch))),
            None => {}
        }
        let before = buf.filled().len();
        let wanted = buf.remaining();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        let read = buf.filled().len() - before;
        let size = this.inner.size();
        let mismatch = if size > this.expected_size {
            Some(Mismatch::Size(size))
        } else if read == 0 && wanted > 0 {
            let (size, digest) = this.inner.finish();
            if size != this.expected_size {
                Some(Mismatch::Size(size))
            } else if digest != this.expected_sha256 {
                Some(Mismatch::Digest(digest))
            } else {
                this.outcome = Some(Ok(()));
                None
            }
        } else {
            None
        };
        match mismatch {
            Some(mismatch) => {
                // Hand out nothing of a read that proved the object wrong.
                buf.set_filled(before);
                let error = this.error(&mismatch);
                this.outcome = Some(Err(mismatch));
                Poll::Ready(Err(error))
            }
            None => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    const DATA: &[u8] = b"the quick brown fox jumps over the lazy dog";

    fn sha(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    async fn read_all<R: AsyncRead + Unpin>(mut reader: R) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        // A small buffer, to go through many reads.
        let mut chunk = [0u8; 7];
        loop {
            let n = reader.read(&mut chunk).await?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&chunk[..n]);
        }
    }

    #[tokio::test]
    async fn exact_content_passes_through() {
        let mut reader = verified("k", DATA, DATA.len() as u64, &sha(DATA).to_uppercase());
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await.expect("verified");
        assert_eq!(out, DATA);
        assert!(reader.is_verified());
        assert_eq!(reader.bytes_read(), DATA.len() as u64);
        // Reading again after EOF stays at EOF.
        assert_eq!(reader.read(&mut [0u8; 4]).await.expect("eof"), 0);
    }

    #[tokio::test]
    async fn flipped_byte_is_a_digest_mismatch_at_eof() {
        let mut corrupt = DATA.to_vec();
        corrupt[10] ^= 0x01;
        let err = read_all(verified(
            "job/b/x",
            &corrupt[..],
            DATA.len() as u64,
            &sha(DATA),
        ))
        .await
        .expect_err("corrupt");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        match verification_error(&err) {
            Some(Error::DigestMismatch {
                key,
                expected,
                actual,
            }) => {
                assert_eq!(key, "job/b/x");
                assert_eq!(expected, &sha(DATA));
                assert_eq!(actual, &sha(&corrupt));
            }
            other => panic!("expected DigestMismatch, got {other:?}"),
        }
        assert!(err.to_string().contains("job/b/x"), "{err}");
    }

    #[tokio::test]
    async fn truncated_object_is_a_size_mismatch_at_eof() {
        let short = &DATA[..DATA.len() - 3];
        let err = read_all(verified("k", short, DATA.len() as u64, &sha(DATA)))
            .await
            .expect_err("truncated");
        match verification_error(&err) {
            Some(Error::SizeMismatch {
                expected, actual, ..
            }) => {
                assert_eq!(*expected, DATA.len() as u64);
                assert_eq!(*actual, short.len() as u64);
            }
            other => panic!("expected SizeMismatch, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn too_long_object_fails_as_soon_as_it_passes_the_size() {
        let long: Vec<u8> = DATA.iter().chain(b"and more").copied().collect();
        let mut reader = verified("k", &long[..], DATA.len() as u64, &sha(DATA));
        let mut passed = Vec::new();
        let mut chunk = [0u8; 7];
        let err = loop {
            match reader.read(&mut chunk).await {
                Ok(0) => panic!("reached EOF without error"),
                Ok(n) => passed.extend_from_slice(&chunk[..n]),
                Err(e) => break e,
            }
        };
        assert!(
            matches!(verification_error(&err), Some(Error::SizeMismatch { .. })),
            "{err}"
        );
        assert!(
            passed.len() <= DATA.len(),
            "no byte beyond the expected size is handed out"
        );
        // The error sticks.
        assert!(reader.read(&mut chunk).await.is_err());
    }

    #[tokio::test]
    async fn empty_object() {
        let out = read_all(verified("k", &b""[..], 0, &sha(b"")))
            .await
            .expect("empty verifies");
        assert!(out.is_empty());
        let err = read_all(verified("k", &b""[..], 1, &sha(b"")))
            .await
            .expect_err("size 1 expected");
        assert!(matches!(
            verification_error(&err),
            Some(Error::SizeMismatch { .. })
        ));
    }

    #[tokio::test]
    async fn hashing_reader_counts_and_hashes() {
        let mut reader = HashingReader::new(DATA);
        let out = read_all(&mut reader).await.expect("read");
        assert_eq!(out, DATA);
        assert_eq!(reader.finish(), (DATA.len() as u64, sha(DATA)));
    }
}
