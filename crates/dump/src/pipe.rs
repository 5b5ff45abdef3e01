//! A child's stdout read by a thread of its own, handed to async code in
//! chunks through a bounded channel.
//!
//! Why not tokio's `ChildStdout`: a pipe watched by epoll wakes its reader
//! for every write into it (Linux wakes epoll waiters on each pipe write,
//! not only when the pipe was empty), and pg_dump writes 4 KiB at a time.
//! Profiled with scripts/bench on the 2-core test machine (an 838 MiB dump):
//! 160,000 `epoll_wait` returns and 186,000 futex calls in refugio, over a
//! second of system time taken from pg_dump and the server, which need both
//! cores. A thread blocked in `read(2)` is woken only when the pipe was empty;
//! and after a short read it sleeps [`PAUSE`] so the pipe fills meanwhile:
//! about 20,000 reads for the same dump, and the async side sees 256 KiB
//! chunks.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::process::ChildStdout;
use tokio::sync::mpsc;

/// Bytes asked of each `read(2)`.
const CHUNK: usize = 256 * 1024;
/// Chunks waiting in the channel at most (with the pipe's 1 MiB, what a
/// slow consumer lets pg_dump run ahead by).
const QUEUED: usize = 4;
/// A read shorter than this found the pipe nearly empty.
const SHORT_READ: usize = 64 * 1024;
/// How long the thread waits after a short read: at pg_dump's pace
/// (50–150 MB/s) the pipe gains 50–150 KiB meanwhile.
const PAUSE: Duration = Duration::from_millis(1);

/// Pipe capacity asked for between a tool and refugio: Linux's default
/// maximum for unprivileged processes (`/proc/sys/fs/pipe-max-size`).
pub const PIPE_SIZE: i32 = 1024 * 1024;

/// Raises a pipe's capacity from 64 KiB to [`PIPE_SIZE`], so that the
/// tool on the other end runs on while refugio is busy for a moment. Best
/// effort: a system with a lower limit keeps the default.
pub fn widen_pipe(fd: &impl AsRawFd) {
    use nix::fcntl::{fcntl, FcntlArg};
    if let Err(e) = fcntl(fd.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(PIPE_SIZE)) {
        tracing::debug!(error = %e, "pipe capacity left at the default");
    }
}

/// Chunks sent by a thread, read as a stream: a child's stdout (see the
/// module doc), or the zstd thread's frames ([`crate::frames`]). Dropping
/// it ends the thread: its next send fails (for a pipe, or its read sees
/// EOF once the child is gone).
pub struct ChunkReader {
    chunks: mpsc::Receiver<io::Result<Bytes>>,
    pending: Bytes,
    ended: bool,
}

impl ChunkReader {
    /// Reads what a thread sends into `chunks`, in order; an error ends
    /// the stream.
    pub(crate) fn new(chunks: mpsc::Receiver<io::Result<Bytes>>) -> Self {
        ChunkReader {
            chunks,
            pending: Bytes::new(),
            ended: false,
        }
    }

    /// Takes `stdout` off the reactor and starts its reading thread.
    pub fn pipe(tool: &str, stdout: ChildStdout) -> io::Result<Self> {
        // Blocking again, and no longer watched by epoll.
        let fd: OwnedFd = stdout.into_owned_fd()?;
        widen_pipe(&fd);
        let mut file = std::fs::File::from(fd);
        let (tx, chunks) = mpsc::channel(QUEUED);
        std::thread::Builder::new()
            .name(format!("{tool}-stdout"))
            .spawn(move || {
                let mut buf = vec![0u8; CHUNK];
                loop {
                    match file.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            let chunk = Bytes::copy_from_slice(&buf[..n]);
                            if tx.blocking_send(Ok(chunk)).is_err() {
                                break;
                            }
                            if n < SHORT_READ {
                                std::thread::sleep(PAUSE);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            let _ = tx.blocking_send(Err(e));
                            break;
                        }
                    }
                }
            })?;
        Ok(ChunkReader::new(chunks))
    }
}

/// Reads `input` ahead on a task of its own, up to [`QUEUED`] chunks of
/// [`CHUNK`] bytes, so that whatever produces it (a download and its
/// digest, a decryption) runs on one core while the reader of the result
/// (a decompressor) runs on the other. Dropping the returned reader ends
/// the task and drops `input`. Call it within a tokio runtime.
pub fn read_ahead<R: AsyncRead + Send + 'static>(input: R) -> ChunkReader {
    let (tx, chunks) = mpsc::channel(QUEUED);
    tokio::spawn(async move {
        let mut input = Box::pin(input);
        let read = async {
            loop {
                // Whole chunks: a download gives a few KiB per read.
                let mut chunk = BytesMut::with_capacity(CHUNK);
                let read = fill(&mut input, &mut chunk, CHUNK).await;
                if !chunk.is_empty() && tx.send(Ok(chunk.freeze())).await.is_err() {
                    return;
                }
                match read {
                    Ok(false) => {}
                    Ok(true) => return,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
        };
        tokio::select! {
            () = read => {}
            // The reader went away while the input was slow: drop it now.
            () = tx.closed() => {}
        }
    });
    ChunkReader::new(chunks)
}

/// Reads into `buf` until it holds `size` bytes (`Ok(false)`) or the
/// input ends (`Ok(true)`). On an error, `buf` keeps what came before it.
pub(crate) async fn fill<R: AsyncRead + Unpin>(
    input: &mut R,
    buf: &mut BytesMut,
    size: usize,
) -> io::Result<bool> {
    while buf.len() < size {
        if input.read_buf(buf).await? == 0 {
            return Ok(true);
        }
    }
    Ok(false)
}

impl AsyncRead for ChunkReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.ended || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            match futures::ready!(this.chunks.poll_recv(cx)) {
                Some(Ok(chunk)) => this.pending = chunk,
                Some(Err(e)) => {
                    this.ended = true;
                    return Poll::Ready(Err(e));
                }
                None => {
                    this.ended = true;
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Every byte a child writes arrives, in order, however it is cut.
    #[tokio::test]
    async fn passes_a_childs_output_through_whole() {
        let mut child = tokio::process::Command::new("sh")
            .args(["-c", "head -c 3000000 /dev/urandom | tee /dev/stderr"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("sh");
        let stdout = child.stdout.take().expect("stdout");
        let mut stderr = child.stderr.take().expect("stderr");
        let mut reader = ChunkReader::pipe("sh", stdout).expect("reader");
        let (mut got, mut want) = (Vec::new(), Vec::new());
        let (a, b) = tokio::join!(reader.read_to_end(&mut got), stderr.read_to_end(&mut want));
        a.expect("stdout");
        b.expect("stderr");
        assert_eq!(got.len(), 3_000_000);
        assert!(got == want, "the bytes differ from what the child wrote");
        assert!(child.wait().await.expect("wait").success());
    }
}
