//! The byte path of one artifact: a child's output → compression → age →
//! digest and count → upload, cancellable; and the cleanup of an
//! uncommitted backup's artifacts.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use refugio_dump::CountingReader;
use refugio_store::manifest::Artifact;
use refugio_store::repo::Repository;
use refugio_store::upload::{upload_stream, UploadOptions, UploadOutcome};
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::BackupOptions;
use crate::encryption::{self, Encrypting};
use crate::progress;

/// Stops a stream with an error once the token is cancelled, so the
/// uploader aborts as it would for any producer failure.
struct Cancellable<R> {
    inner: R,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<R> Cancellable<R> {
    fn new(inner: R, token: &CancellationToken) -> Self {
        Cancellable {
            inner,
            cancelled: Box::pin(token.clone().cancelled_owned()),
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Cancellable<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.cancelled.as_mut().poll(cx).is_ready() {
            // Not ErrorKind::Interrupted: readers retry that kind.
            return Poll::Ready(Err(io::Error::other("backup cancelled by signal")));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

/// Streams one child's output through the compressor into `key`; returns
/// the upload and the raw (uncompressed) byte count.
pub(super) async fn store_stream(
    repo: &Repository,
    key: &str,
    output: refugio_dump::ChildOutput,
    opts: &BackupOptions,
    upload: &UploadOptions,
    cancel: &CancellationToken,
) -> std::result::Result<(UploadOutcome, u64), refugio_store::Error> {
    let counted = CountingReader::new(output);
    let raw = counted.counter();
    let shown = progress::counting(counted, opts.progress.as_ref(), |p| &p.read);
    let compressed = opts.compression.encoder(shown, opts.compression_level);
    // pg_dump → compressor → age → digest and count → upload: plaintext
    // never touches disk.
    let sealed: Pin<Box<dyn AsyncRead + Send>> = match &opts.encryption {
        Some(to) => Box::pin(
            Encrypting::new(compressed, to)
                .map_err(|e| refugio_store::Error::Other(e.to_string()))?,
        ),
        None => compressed,
    };
    let sealed = progress::counting(sealed, opts.progress.as_ref(), |p| &p.stored);
    let stream = Cancellable::new(sealed, cancel);
    let outcome = upload_stream(repo.store().as_ref(), key, stream, upload).await?;
    Ok((outcome, raw.load(Ordering::Relaxed)))
}

/// The manifest's entry for an uploaded artifact.
pub(super) fn artifact(
    name: String,
    kind: &str,
    format: &str,
    opts: &BackupOptions,
    outcome: UploadOutcome,
    raw: u64,
) -> Artifact {
    Artifact {
        name,
        kind: kind.into(),
        format: format.into(),
        compression: opts.compression.as_str().into(),
        encryption: match opts.encryption {
            Some(_) => encryption::AGE.into(),
            None => "none".into(),
        },
        raw_size: raw,
        stored_size: outcome.size,
        sha256: outcome.sha256,
    }
}

/// Removes artifacts of an uncommitted backup (best effort: leftovers are
/// orphans without a manifest, invisible to readers, collected later).
pub(super) async fn discard(repo: &Repository, job: &str, id: &str, artifacts: &[Artifact]) {
    for a in artifacts {
        let key = Repository::key(job, id, &a.name);
        if let Err(e) = repo.store().delete(&key).await {
            tracing::warn!(key, error = %refugio_store::error::chain(&e), "orphan-left");
        }
    }
}
