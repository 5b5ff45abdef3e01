//! zstd on a thread of its own, in independent frames.
//!
//! The stream is cut into [`FRAME`]-byte pieces: a task reads the input
//! into one while a thread compresses the other whole into one zstd frame
//! (`ZSTD_compressCCtx` on a contiguous buffer), then they swap; the
//! frames come out in order through a bounded channel. Concatenated frames are one valid
//! zstd stream: `zstd -d`, `unzstd` and refugio's decoder read it whole.
//!
//! Why not zstd's own worker (`nb_workers = 1`, as before): profiled with
//! scripts/bench (a Garage backup of a 439 MB dump, release build, perf
//! with DWARF stacks), the worker thread did the compressing (2.9 s), but
//! the task feeding it spent over a third of its 1 s in the worker pool's
//! mutexes (with one worker the pool takes no queued job, so the feeder
//! waits on the worker after every 128 KiB block) and copied every byte
//! into zstd's job buffers. Here the input is read straight into the
//! piece that is compressed, and the two sides meet once per piece.
//! And why not streaming zstd on one thread: small inputs push it into its
//! external-dictionary mode, about half again as slow (measured first; see
//! docs/design.md, Performance).
//!
//! Independent pieces cost a little ratio (no match reaches across a
//! boundary): at 2 MiB pieces, about as much as zstd's own 2 MiB jobs.

use std::io;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncRead;
use tokio::sync::mpsc;

use crate::pipe::{fill, ChunkReader};

/// Uncompressed bytes per frame.
pub const FRAME: usize = 2 * 1024 * 1024;
/// Uncompressed pieces in memory at most: one filling, one compressing.
const PIECES: usize = 2;
/// Compressed frames waiting for the consumer at most.
const FRAMES_QUEUED: usize = 2;

/// Compresses `input` with zstd at `level` in [`FRAME`]-sized frames on a
/// thread of its own; returns the compressed stream. An input error ends
/// the stream with that error, after the frames of the bytes before it.
/// Dropping the returned reader stops the thread and drops `input` (for a
/// dump: kills pg_dump) as soon as either next moves. Call it within a
/// tokio runtime: a task of it reads `input`.
pub fn compress<R: AsyncRead + Send + 'static>(input: R, level: i32) -> ChunkReader {
    // PIECES buffers go round: the task fills one while the thread
    // compresses the other, then they swap. No piece is allocated after
    // the first two, and the task waits for a free one (backpressure).
    let (spare_tx, spare) = mpsc::channel::<BytesMut>(PIECES);
    for _ in 0..PIECES {
        let _ = spare_tx.try_send(BytesMut::with_capacity(FRAME));
    }
    let (pieces_tx, pieces) = mpsc::channel::<io::Result<BytesMut>>(PIECES);
    let (frames_tx, frames) = mpsc::channel::<io::Result<Bytes>>(FRAMES_QUEUED);
    let watch = frames_tx.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = read_pieces(Box::pin(input), spare, &pieces_tx) => {}
            // The consumer went away: drop the input now.
            () = watch.closed() => {}
        }
    });
    let spawned = std::thread::Builder::new()
        .name("zstd".into())
        .spawn(move || compress_pieces(pieces, &spare_tx, &frames_tx, level));
    if let Err(e) = spawned {
        // No thread: the stream reports it (frames_tx went with the
        // closure, so only this error is left to read).
        let (tx, rx) = mpsc::channel(1);
        let _ = tx.try_send(Err(e));
        return ChunkReader::new(rx);
    }
    ChunkReader::new(frames)
}

/// The task: fills spare pieces from `input` and sends them to the thread;
/// the last may be shorter, and an empty input sends one empty piece (one
/// empty frame: an empty file is not a zstd stream). On an error, the
/// bytes before it, then the error.
async fn read_pieces<R: AsyncRead + Unpin>(
    mut input: R,
    mut spare: mpsc::Receiver<BytesMut>,
    pieces: &mpsc::Sender<io::Result<BytesMut>>,
) {
    let mut sent = false;
    while let Some(mut piece) = spare.recv().await {
        piece.clear();
        let read = fill(&mut input, &mut piece, FRAME).await;
        if !piece.is_empty() || !sent {
            sent = true;
            if pieces.send(Ok(piece)).await.is_err() {
                return;
            }
        }
        match read {
            Ok(false) => {}
            Ok(true) => return,
            Err(e) => {
                let _ = pieces.send(Err(e)).await;
                return;
            }
        }
    }
}

/// The thread: one frame per piece, in order, until the pieces end or
/// nobody reads the frames; each piece goes back to the task once
/// compressed.
fn compress_pieces(
    mut pieces: mpsc::Receiver<io::Result<BytesMut>>,
    spare: &mpsc::Sender<BytesMut>,
    frames: &mpsc::Sender<io::Result<Bytes>>,
    level: i32,
) {
    let mut cctx = zstd_safe::CCtx::create();
    // Every frame carries its content checksum (XXH64): a decoder, refugio's
    // or a stock `zstd -d`, refuses a damaged frame instead of returning
    // other bytes. The simple API (`compress`) would ignore it.
    let params = [
        zstd_safe::CParameter::ChecksumFlag(true),
        zstd_safe::CParameter::CompressionLevel(level),
    ];
    for p in params {
        if let Err(code) = cctx.set_parameter(p) {
            let _ = frames.blocking_send(Err(io::Error::other(format!(
                "zstd: {}",
                zstd_safe::get_error_name(code)
            ))));
            return;
        }
    }
    // Compressed into one buffer, then copied out at its size: a frame
    // waiting in the channel holds what it needs, not the worst case.
    let mut out = Vec::with_capacity(zstd_safe::compress_bound(FRAME));
    while let Some(piece) = pieces.blocking_recv() {
        let frame = piece.and_then(|piece| {
            out.clear();
            let done = cctx.compress2(&mut out, &piece);
            // Never full: PIECES buffers exist, and this one was taken.
            let _ = spare.try_send(piece);
            done.map_err(|code| {
                io::Error::other(format!("zstd: {}", zstd_safe::get_error_name(code)))
            })?;
            Ok(Bytes::copy_from_slice(&out))
        });
        let failed = frame.is_err();
        if frames.blocking_send(frame).is_err() || failed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::{AsyncReadExt, ReadBuf};

    async fn round_trip(data: &[u8]) -> Vec<u8> {
        let mut packed = Vec::new();
        compress(std::io::Cursor::new(data.to_vec()), 3)
            .read_to_end(&mut packed)
            .await
            .expect("compress");
        // What a stock `zstd -d` reads: every frame, concatenated.
        let mut back = Vec::new();
        crate::compress::Compression::Zstd
            .decoder(std::io::Cursor::new(packed))
            .read_to_end(&mut back)
            .await
            .expect("decompress");
        back
    }

    /// Inputs around the frame size come back whole, in order.
    #[tokio::test]
    async fn frames_round_trip_at_every_boundary() {
        for len in [0, 1, FRAME - 1, FRAME, FRAME + 1, 3 * FRAME + 12_345] {
            let data: Vec<u8> = (0..len as u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 % 37)
                .collect();
            assert!(round_trip(&data).await == data, "length {len}");
        }
    }

    /// A reader that gives some bytes, then fails.
    struct Failing(usize);

    impl AsyncRead for Failing {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if self.0 == 0 {
                return Poll::Ready(Err(io::Error::other("pg_dump failed")));
            }
            let n = self.0.min(buf.remaining()).min(100_000);
            buf.put_slice(&vec![7u8; n]);
            self.0 -= n;
            Poll::Ready(Ok(()))
        }
    }

    /// An input error reaches the reader, after the bytes before it: a
    /// failed pg_dump is never a complete-looking stream.
    #[tokio::test]
    async fn an_input_error_ends_the_stream_with_it() {
        let mut out = Vec::new();
        let err = compress(Failing(FRAME + 500_000), 3)
            .read_to_end(&mut out)
            .await
            .expect_err("the input failed");
        assert_eq!(err.to_string(), "pg_dump failed");
        assert!(!out.is_empty(), "the first frame came before the error");
    }

    /// An input that never answers, and says when it is dropped.
    struct Stalled(std::sync::Arc<std::sync::atomic::AtomicBool>);

    impl AsyncRead for Stalled {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    impl Drop for Stalled {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Dropping the stream drops its input even while the input is
    /// stalled (for a dump, that kills pg_dump on cancellation).
    #[tokio::test]
    async fn dropping_the_stream_drops_a_stalled_input() {
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stream = compress(Stalled(dropped.clone()), 3);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(
            !dropped.load(std::sync::atomic::Ordering::SeqCst),
            "dropped too early"
        );
        drop(stream);
        for _ in 0..200 {
            if dropped.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the input was still held 2 s after the stream was dropped");
    }

    /// The stock tool reads the frames as one file (the runbook's
    /// `zstd -dc database.dump.zst | pg_restore`).
    #[tokio::test]
    async fn stock_zstd_reads_every_frame() {
        let data: Vec<u8> = (0..(2 * FRAME + 777) as u32)
            .map(|i| (i % 251) as u8 ^ (i >> 11) as u8)
            .collect();
        let mut packed = Vec::new();
        compress(std::io::Cursor::new(data.clone()), 3)
            .read_to_end(&mut packed)
            .await
            .expect("compress");
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("frames.zst");
        std::fs::write(&file, &packed).expect("write");
        let out = std::process::Command::new("zstd")
            .arg("-dc")
            .arg(&file)
            .output()
            .expect("zstd (Debian's zstd package; scripts/install-test-deps installs it)");
        assert!(
            out.status.success(),
            "zstd -dc: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stdout == data,
            "zstd -dc gave {} bytes, not the {} written",
            out.stdout.len(),
            data.len()
        );
    }
}
