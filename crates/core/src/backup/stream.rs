//! The byte path of one artifact: a child's output → compression → age →
//! digest and count → upload, cancellable; and the cleanup of an
//! uncommitted backup's artifacts.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use refugio_dump::{Compression, CountingReader, DumpFormat};
use refugio_store::manifest::Artifact;
use refugio_store::repo::Repository;
use refugio_store::upload::{upload_stream, UploadOptions, UploadOutcome};
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::BackupOptions;
use crate::encryption::{self, Encrypting};
use crate::error::Result;
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

/// Where an artifact's compression happens.
#[derive(Debug, Clone)]
pub(super) struct Packing {
    /// refugio's stage on the stream the tool wrote.
    pub stream: Compression,
    /// pg_dump's own inside a custom archive (`zstd:3`); then `stream` is
    /// `None`.
    pub archive: Option<String>,
}

impl Packing {
    /// For a database's dump: with `archive_compression`, a custom format
    /// and zstd, pg_dump 16+ built with zstd compresses inside the archive
    /// (a bare `pg_restore` reads it); anything else is compressed by
    /// refugio on the stream, which scripts/bench measured faster (pg_dump
    /// compresses in the thread that also reads from the server; refugio's
    /// zstd worker runs beside it).
    pub async fn for_dump(opts: &BackupOptions, pg_dump: &refugio_dump::Tool) -> Packing {
        let in_archive = opts.logical.archive_compression
            && opts.logical.format == DumpFormat::Custom
            && opts.compression == Compression::Zstd
            && refugio_dump::tools::dumps_zstd(pg_dump).await;
        if in_archive {
            let spec = format!("zstd:{}", opts.compression_level.unwrap_or(3));
            tracing::debug!(job = %opts.job, compression = %spec, "pg_dump compresses the archive itself");
            return Packing {
                stream: Compression::None,
                archive: Some(spec),
            };
        }
        if opts.logical.archive_compression {
            tracing::warn!(job = %opts.job, pg_dump = %pg_dump.path.display(), version = %pg_dump.version,
                "archive-compression-unavailable: archive_compression needs format custom, compression zstd and a pg_dump of 16 or later built with zstd; refugio compresses the stream instead");
        }
        Packing::stream(opts)
    }

    /// refugio's compression on the stream, as the job says (globals,
    /// plain SQL, pg_dump before 16).
    pub fn stream(opts: &BackupOptions) -> Packing {
        Packing {
            stream: opts.compression,
            archive: None,
        }
    }
}

/// Streams one child's output through the compressor into `key`; returns
/// the upload and the raw (uncompressed) byte count.
pub(super) async fn store_stream(
    repo: &Repository,
    key: &str,
    output: impl AsyncRead + Send + Unpin + 'static,
    packing: &Packing,
    opts: &BackupOptions,
    upload: &UploadOptions,
    cancel: &CancellationToken,
) -> std::result::Result<(UploadOutcome, u64), refugio_store::Error> {
    let counted = CountingReader::new(output);
    let raw = counted.counter();
    let shown = progress::counting(counted, opts.progress.as_ref(), |p| &p.read);
    let compressed = packing.stream.encoder(shown, opts.compression_level);
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
    packing: &Packing,
    opts: &BackupOptions,
    outcome: UploadOutcome,
    raw: u64,
) -> Artifact {
    Artifact {
        name,
        kind: kind.into(),
        format: format.into(),
        compression: packing.stream.as_str().into(),
        archive_compression: packing.archive.clone(),
        encryption: match opts.encryption {
            Some(_) => encryption::AGE.into(),
            None => "none".into(),
        },
        raw_size: raw,
        stored_size: outcome.size,
        sha256: outcome.sha256,
    }
}

/// What one backup attempt has stored so far. The attempt's one way out on
/// a failure before its commit: [`Stored::or_discard`] removes every
/// artifact stored, so a failed attempt leaves nothing behind but what GC
/// would collect anyway.
pub(super) struct Stored<'a> {
    repo: &'a Repository,
    job: &'a str,
    id: &'a str,
    artifacts: Vec<Artifact>,
}

impl<'a> Stored<'a> {
    pub(super) fn new(repo: &'a Repository, job: &'a str, id: &'a str) -> Stored<'a> {
        Stored {
            repo,
            job,
            id,
            artifacts: Vec::new(),
        }
    }

    pub(super) fn push(&mut self, artifact: Artifact) {
        self.artifacts.push(artifact);
    }

    /// A step's result: its value, or, on an error, every artifact stored
    /// so far removed and the error returned.
    pub(super) async fn or_discard<T>(&self, result: Result<T>) -> Result<T> {
        if result.is_err() {
            discard(self.repo, self.job, self.id, &self.artifacts).await;
        }
        result
    }

    /// The artifacts, for the manifest that commits them.
    pub(super) fn into_artifacts(self) -> Vec<Artifact> {
        self.artifacts
    }
}

/// Removes artifacts of an uncommitted backup (best effort: leftovers are
/// orphans without a manifest, invisible to readers, collected later).
async fn discard(repo: &Repository, job: &str, id: &str, artifacts: &[Artifact]) {
    for a in artifacts {
        let key = Repository::key(job, id, &a.name);
        if let Err(e) = repo.store().delete(&key).await {
            tracing::warn!(key, error = %refugio_print::chain(&e), "orphan-left");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use refugio_store::PutOptions;

    fn stored_artifact(name: &str, bytes: &[u8]) -> Artifact {
        Artifact {
            name: name.into(),
            kind: "database".into(),
            format: "custom".into(),
            compression: "none".into(),
            archive_compression: None,
            encryption: "none".into(),
            raw_size: bytes.len() as u64,
            stored_size: bytes.len() as u64,
            sha256: crate::fixtures::hex(bytes),
        }
    }

    /// A step that fails removes every artifact the attempt stored; a step
    /// that succeeds removes nothing and hands its value on.
    #[tokio::test]
    async fn a_failed_step_discards_what_the_attempt_stored() {
        let (_dir, repo) = crate::fixtures::repo();
        let id = "20261128T060000Z";
        let mut stored = Stored::new(&repo, "app", id);
        for name in ["database.dump", "globals.sql"] {
            let key = Repository::key("app", id, name);
            repo.store()
                .put(&key, Bytes::from_static(b"data"), PutOptions::default())
                .await
                .expect("put");
            stored.push(stored_artifact(name, b"data"));
        }
        let kept = stored.or_discard(Ok(7)).await.expect("ok passes");
        assert_eq!(kept, 7);
        for name in ["database.dump", "globals.sql"] {
            let key = Repository::key("app", id, name);
            assert!(
                repo.store().head(&key).await.expect("head").is_some(),
                "{key}"
            );
        }
        let failed: Result<()> = Err(crate::Error::NoDatabase { job: "app".into() });
        let e = stored
            .or_discard(failed)
            .await
            .expect_err("the error passes");
        assert!(matches!(e, crate::Error::NoDatabase { .. }), "{e}");
        for name in ["database.dump", "globals.sql"] {
            let key = Repository::key("app", id, name);
            assert!(
                repo.store().head(&key).await.expect("head").is_none(),
                "{key} left behind"
            );
        }
        assert_eq!(stored.into_artifacts().len(), 2);
    }
}
