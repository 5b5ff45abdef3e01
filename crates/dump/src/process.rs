//! Child processes whose output is a stream: EOF is not success. The
//! stream ends cleanly only once the child has exited 0; otherwise its last
//! read is an error carrying the exit status and the tail of its stderr.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader, ReadBuf};
use tokio::process::{Child, ChildStderr};
use tokio::task::JoinHandle;

use crate::error::Error;
use crate::pipe::ChunkReader;

/// Bytes of stderr kept for error messages.
const STDERR_TAIL_BYTES: usize = 8 * 1024;

/// What libpq and the server print when a tool lost its server, or could
/// not reach it, because the server restarted, shut down or crashed (or
/// the connection dropped): `server closed the connection unexpectedly`,
/// `FATAL: terminating connection due to administrator command`, `the
/// database system is shutting down` (or `starting up`), `Is the server
/// running …?` after a refused connection.
const CONNECTION_LOST: &[&str] = &[
    "server closed the connection unexpectedly",
    "terminating connection",
    "the database system is",
    "no connection to the server",
    "could not receive data from server",
    "could not send data to server",
    "Is the server running",
];

/// Whether a tool's stderr says it lost (or could not reach) its server:
/// the whole operation is worth running again once the server is back.
pub fn connection_lost(stderr_tail: &str) -> bool {
    CONNECTION_LOST.iter().any(|p| stderr_tail.contains(p))
}

/// The last lines a child wrote to stderr (bounded), collected by a task.
#[derive(Clone, Default)]
pub struct StderrTail {
    lines: Arc<Mutex<VecDeque<String>>>,
}

impl StderrTail {
    /// Drains `stderr` in the background, keeping the last few KiB; each line is
    /// also logged at debug level.
    pub fn collect(tool: &'static str, stderr: ChildStderr) -> (StderrTail, JoinHandle<()>) {
        let tail = StderrTail::default();
        let lines = tail.lines.clone();
        let handle = tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                tracing::debug!(tool, "{line}");
                let mut q = lines.lock().unwrap_or_else(|p| p.into_inner());
                q.push_back(line);
                let mut total: usize = q.iter().map(|l| l.len() + 1).sum();
                while total > STDERR_TAIL_BYTES && q.len() > 1 {
                    total -= q.pop_front().map_or(0, |l| l.len() + 1);
                }
            }
        });
        (tail, handle)
    }

    /// The kept lines joined with `\n`.
    pub fn text(&self) -> String {
        let q = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        q.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

/// Turns a finished child into `Ok` or a [`Error::ToolFailed`].
pub async fn check_exit(
    tool: &'static str,
    child: &mut Child,
    tail: &StderrTail,
    stderr_task: Option<JoinHandle<()>>,
) -> Result<(), Error> {
    let status = child.wait().await?;
    if let Some(t) = stderr_task {
        // stderr reaches EOF when the child exits; wait so the tail is complete.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), t).await;
    }
    if status.success() {
        return Ok(());
    }
    let stderr_tail = tail.text();
    // pg_dump's --lock-wait-timeout is a statement_timeout around its
    // LOCK TABLE: "canceling statement due to statement timeout … query
    // was: LOCK TABLE …".
    let lock_timeout = stderr_tail.contains("could not obtain lock")
        || stderr_tail.contains("canceling statement due to lock timeout")
        || (stderr_tail.contains("canceling statement due to statement timeout")
            && stderr_tail.contains("LOCK TABLE"));
    Err(Error::ToolFailed {
        tool,
        status,
        connection_lost: connection_lost(&stderr_tail),
        stderr_tail,
        lock_timeout,
    })
}

enum State {
    Reading,
    Waiting(BoxFuture<'static, Result<(), Error>>),
    Done,
}

/// A child's stdout as an `AsyncRead` that reports the child's failure:
/// after stdout's EOF it waits for the exit status, and a non-zero exit
/// turns the EOF into an `io::Error` wrapping [`Error::ToolFailed`].
/// Dropping it kills the child.
pub struct ChildOutput {
    tool: &'static str,
    stdout: ChunkReader,
    child: Option<Child>,
    tail: StderrTail,
    stderr_task: Option<JoinHandle<()>>,
    state: State,
}

impl ChildOutput {
    /// Takes over a child spawned with piped stdout and stderr.
    pub fn new(tool: &'static str, mut child: Child) -> io::Result<Self> {
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other(format!("{tool}: stdout was not piped")))?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| io::Error::other(format!("{tool}: stderr was not piped")))?;
        let (tail, task) = StderrTail::collect(tool, stderr);
        let stdout = ChunkReader::pipe(tool, stdout)?;
        Ok(ChildOutput {
            tool,
            stdout,
            child: Some(child),
            tail,
            stderr_task: Some(task),
            state: State::Reading,
        })
    }

    /// The child's PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// The stderr tail so far.
    pub fn stderr_tail(&self) -> String {
        self.tail.text()
    }
}

impl AsyncRead for ChildOutput {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Reading => {
                    let before = buf.filled().len();
                    match Pin::new(&mut this.stdout).poll_read(cx, buf) {
                        Poll::Ready(Ok(())) if buf.filled().len() == before => {
                            // EOF on stdout: now the exit status decides.
                            let Some(mut child) = this.child.take() else {
                                this.state = State::Done;
                                continue;
                            };
                            let tool = this.tool;
                            let tail = this.tail.clone();
                            let task = this.stderr_task.take();
                            this.state = State::Waiting(
                                async move { check_exit(tool, &mut child, &tail, task).await }
                                    .boxed(),
                            );
                        }
                        other => return other,
                    }
                }
                State::Waiting(fut) => {
                    let res = futures::ready!(fut.as_mut().poll(cx));
                    this.state = State::Done;
                    return Poll::Ready(res.map_err(io::Error::other));
                }
                State::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl Drop for ChildOutput {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

/// Finds our [`Error`] inside an `io::Error` produced by a stream, if it is there.
pub fn tool_error(e: &io::Error) -> Option<&Error> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<Error>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_that_went_away_is_a_lost_connection() {
        // pg_dump 16 when the server restarted under its COPY.
        let restarted = "pg_dump: error: Dumping the contents of table \"bulk\" failed: PQgetCopyData() failed.\n\
            pg_dump: detail: Error message from server: server closed the connection unexpectedly\n\
            \tThis probably means the server terminated abnormally\n\
            \tbefore or while processing the request.\n\
            pg_dump: detail: Command was: COPY public.bulk (id, payload) TO stdout;";
        assert!(connection_lost(restarted));
        assert!(connection_lost(
            "pg_dump: error: FATAL:  terminating connection due to administrator command"
        ));
        assert!(connection_lost("pg_dump: error: connection to server on socket \"/tmp/x/.s.PGSQL.5432\" failed: FATAL:  the database system is starting up"));
        assert!(connection_lost("pg_dump: error: connection to server on socket \"/tmp/x/.s.PGSQL.5432\" failed: No such file or directory\n\tIs the server running locally and accepting connections on that socket?"));
        // The content, the tool or the credentials: not a lost connection.
        assert!(!connection_lost(
            "pg_dump: error: no matching tables were found"
        ));
        assert!(!connection_lost("pg_dump: error: connection to server on socket \"/tmp/x/.s.PGSQL.5432\" failed: FATAL:  password authentication failed for user \"u\""));
        assert!(!connection_lost(
            "pg_dump: error: query failed: ERROR:  permission denied for table t"
        ));
        // Killed: nothing on stderr says the server went away.
        assert!(!connection_lost(""));
    }
}
