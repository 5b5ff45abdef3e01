//! Feeding a restore tool from a stream that may still turn out bad.
//!
//! The digest of an artifact is known only at its end, after the tool has
//! read almost all of it. So the feeder always holds the latest chunk back
//! and writes it only once the source has ended cleanly (size and digest
//! verified). A bad source makes the feeder stop with the tool still short
//! of its input's end; the caller kills the tool, and with
//! `--single-transaction` nothing it did is committed.

use std::io;

use refugio_dump::script::{Refused, ScriptGuard};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Chunk size of the feeder (two buffers of this size are held).
pub const CHUNK: usize = 256 * 1024;

/// Outcome of feeding.
#[derive(Debug)]
pub enum FeedError {
    /// The source failed (digest, size, decompression, network).
    Source(io::Error),
    /// The tool stopped reading (it exited); its exit status tells why.
    Sink(io::Error),
    /// The content is not what pg_dump writes: a psql meta-command.
    Refused(Refused),
}

/// How a psql script is framed and checked on its way to psql.
#[derive(Debug)]
pub struct ScriptFrame {
    /// Written before the content (psql's restricted mode, `BEGIN`).
    pub head: String,
    /// Written only after the content ended cleanly (`COMMIT`): a feed cut
    /// short, or a refugio killed mid-stream, leaves psql at EOF inside an
    /// open transaction, which the server rolls back.
    pub tail: String,
}

/// Like [`feed_held_back`], for a psql script: `frame.head` first, the
/// content through a [`ScriptGuard`] (a meta-command line stops the feed,
/// the tool short of its input's end), `frame.tail` after a clean end.
pub async fn feed_script<R, W>(
    mut src: R,
    mut sink: W,
    frame: &ScriptFrame,
) -> Result<u64, FeedError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut guard = ScriptGuard::new();
    let mut input = vec![0u8; CHUNK];
    // What the guard passed and is not yet written: held back until the
    // next read succeeds, so the last chunk waits for the source's end.
    let mut held: Vec<u8> = frame.head.as_bytes().to_vec();
    let mut next: Vec<u8> = Vec::with_capacity(CHUNK);
    let mut written = 0u64;
    loop {
        let n = src.read(&mut input).await.map_err(FeedError::Source)?;
        if n == 0 {
            break;
        }
        next.clear();
        guard
            .push(&input[..n], &mut next)
            .map_err(FeedError::Refused)?;
        if !held.is_empty() {
            sink.write_all(&held).await.map_err(FeedError::Sink)?;
            written += held.len() as u64;
        }
        std::mem::swap(&mut held, &mut next);
    }
    guard.finish(&mut held).map_err(FeedError::Refused)?;
    held.extend_from_slice(frame.tail.as_bytes());
    sink.write_all(&held).await.map_err(FeedError::Sink)?;
    written += held.len() as u64;
    sink.shutdown().await.map_err(FeedError::Sink)?;
    Ok(written)
}

/// Copies `src` to `sink`, writing the last chunk only after `src` reached a
/// clean EOF; closes `sink` at the end. Returns bytes written.
pub async fn feed_held_back<R, W>(mut src: R, mut sink: W) -> Result<u64, FeedError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut held = vec![0u8; CHUNK];
    let mut held_len = 0usize;
    let mut next = vec![0u8; CHUNK];
    let mut written = 0u64;
    loop {
        let n = src.read(&mut next).await.map_err(FeedError::Source)?;
        if n == 0 {
            break;
        }
        if held_len > 0 {
            sink.write_all(&held[..held_len])
                .await
                .map_err(FeedError::Sink)?;
            written += held_len as u64;
        }
        std::mem::swap(&mut held, &mut next);
        held_len = n;
    }
    if held_len > 0 {
        sink.write_all(&held[..held_len])
            .await
            .map_err(FeedError::Sink)?;
        written += held_len as u64;
    }
    sink.shutdown().await.map_err(FeedError::Sink)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::ReadBuf;

    /// Yields `data` in small reads, then fails instead of EOF.
    struct FailsAtEnd {
        data: Vec<u8>,
        pos: usize,
    }

    impl AsyncRead for FailsAtEnd {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if self.pos == self.data.len() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "digest mismatch",
                )));
            }
            let n = (self.data.len() - self.pos).min(1000).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.data[start..start + n]);
            self.pos += n;
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn clean_source_is_copied_whole() {
        let data: Vec<u8> = (0..1_000_000u32).map(|i| i as u8).collect();
        let mut out = Vec::new();
        let n = feed_held_back(&data[..], &mut out).await.unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(out, data);
    }

    #[tokio::test]
    async fn failing_source_never_delivers_its_last_chunk() {
        let data: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let mut out = Vec::new();
        let r = feed_held_back(
            FailsAtEnd {
                data: data.clone(),
                pos: 0,
            },
            &mut out,
        )
        .await;
        assert!(matches!(r, Err(FeedError::Source(_))));
        assert!(out.len() < data.len(), "the tail must be held back");
        assert_eq!(&data[..out.len()], &out[..]);
    }

    fn frame() -> ScriptFrame {
        ScriptFrame {
            head: "\\restrict K\nBEGIN;\n".into(),
            tail: "COMMIT;\n".into(),
        }
    }

    #[tokio::test]
    async fn a_script_is_framed_and_commits_only_after_a_clean_end() {
        let script: String = (0..50_000)
            .map(|i| format!("INSERT INTO t VALUES ({i});\n"))
            .collect();
        let mut out = Vec::new();
        feed_script(script.as_bytes(), &mut out, &frame())
            .await
            .unwrap();
        let out = String::from_utf8(out).unwrap();
        assert_eq!(out, format!("\\restrict K\nBEGIN;\n{script}COMMIT;\n"));

        let mut cut = Vec::new();
        let r = feed_script(
            FailsAtEnd {
                data: script.clone().into_bytes(),
                pos: 0,
            },
            &mut cut,
            &frame(),
        )
        .await;
        assert!(matches!(r, Err(FeedError::Source(_))));
        let cut = String::from_utf8(cut).unwrap();
        assert!(cut.starts_with("\\restrict K\nBEGIN;\n"));
        assert!(
            !cut.contains("COMMIT"),
            "a failed source must never reach COMMIT"
        );
        assert!(cut.len() < script.len());
    }

    #[tokio::test]
    async fn a_meta_command_stops_the_feed_before_psql_sees_it() {
        let mut script = String::from("SELECT 1;\n");
        script.push_str(&"-- filler line\n".repeat(40_000));
        script.push_str("\\! touch /tmp/pwned\nSELECT 2;\n");
        let mut out = Vec::new();
        let r = feed_script(script.as_bytes(), &mut out, &frame()).await;
        match r {
            Err(FeedError::Refused(e)) => assert_eq!((e.line, e.command.as_str()), (40_002, "\\!")),
            other => panic!("expected a refusal, got {other:?}"),
        }
        let out = String::from_utf8(out).unwrap();
        assert!(!out.contains("pwned") && !out.contains("COMMIT"));
    }
}
