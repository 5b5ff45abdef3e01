//! A TCP front for a test cluster that records what clients send: it
//! listens on 127.0.0.1 (a free port of its own) and forwards each
//! connection, bytes unchanged, to the cluster's unix socket, keeping the
//! first [`RECORDED`] bytes every client sent. A test reads them back as
//! PostgreSQL protocol messages: which passwords a client really put on
//! the wire ([`PgFront::passwords_sent`]), whatever the client meant to do.
//!
//! The server sees a unix-socket client, so `pg_hba.conf`'s `local` lines
//! decide how it authenticates; `password` there makes it ask for the
//! password in clear text, which then appears in the recording. Clients
//! reach the same cluster under another name than [`Cluster::url`]'s
//! (`127.0.0.1:PORT` instead of a socket directory).
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use refugio_testkit::{Cluster, PgFront};
//!
//! let cluster = Cluster::start(16).await?;
//! let front = PgFront::start(&cluster)?;
//! let url = front.url("postgres", "postgres"); // postgres://postgres@127.0.0.1:PORT/postgres
//! // … a client connects to `url` …
//! assert!(front.passwords_sent().is_empty()); // trust: no password asked
//! # let _ = url;
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{Context, Result};

use crate::Cluster;

/// Bytes kept of what each client sent: the start-up and authentication
/// messages come first, well within it.
pub const RECORDED: usize = 64 * 1024;

/// `SSLRequest` and `GSSENCRequest` codes: answered `N` by a unix socket,
/// the client then sends its start-up message in the clear.
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
/// Protocol 3.0 in a start-up message.
const PROTOCOL_3: u32 = 196_608;

type Recorded = Arc<Mutex<HashMap<u64, Vec<u8>>>>;

/// See the module documentation. Dropping it stops listening and closes
/// the connections it forwards.
pub struct PgFront {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    recorded: Recorded,
    open: Arc<Mutex<HashMap<u64, TcpStream>>>,
    accept: Option<JoinHandle<()>>,
}

impl PgFront {
    /// Listens on a free 127.0.0.1 port in front of `cluster`'s socket.
    pub fn start(cluster: &Cluster) -> Result<PgFront> {
        let socket = cluster
            .socket_dir()
            .join(format!(".s.PGSQL.{}", cluster.port()));
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the PostgreSQL front")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let recorded: Recorded = Arc::default();
        let open: Arc<Mutex<HashMap<u64, TcpStream>>> = Arc::default();
        let accept = {
            let (stop, recorded, open) = (stop.clone(), recorded.clone(), open.clone());
            std::thread::Builder::new()
                .name(format!("pg-front-{}", addr.port()))
                .spawn(move || accept_loop(listener, socket, &stop, &recorded, &open))?
        };
        Ok(PgFront {
            addr,
            stop,
            recorded,
            open,
            accept: Some(accept),
        })
    }

    /// The front's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `postgres://user@127.0.0.1:PORT/db?sslmode=disable` (the socket
    /// behind it has no TLS anyway).
    pub fn url(&self, user: &str, db: &str) -> String {
        format!(
            "postgres://{user}@127.0.0.1:{}/{db}?sslmode=disable",
            self.addr.port()
        )
    }

    /// How many connections clients opened through the front.
    pub fn connections(&self) -> usize {
        lock(&self.recorded).len()
    }

    /// Everything recorded, of every connection, one after the other: for
    /// "this secret never crossed" assertions.
    pub fn all_sent(&self) -> Vec<u8> {
        let recorded = lock(&self.recorded);
        let mut ids: Vec<&u64> = recorded.keys().collect();
        ids.sort();
        ids.into_iter()
            .flat_map(|id| recorded[id].iter().copied())
            .collect()
    }

    /// The body of every `PasswordMessage` (`p`: a clear-text or MD5
    /// password, or a SASL response) clients sent, in connection order,
    /// the clear-text ones without their closing NUL.
    pub fn passwords_sent(&self) -> Vec<Vec<u8>> {
        let recorded = lock(&self.recorded);
        let mut ids: Vec<&u64> = recorded.keys().collect();
        ids.sort();
        ids.into_iter()
            .flat_map(|id| password_messages(&recorded[id]))
            .collect()
    }
}

impl Drop for PgFront {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        for client in lock(&self.open).values() {
            let _ = client.shutdown(Shutdown::Both);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn accept_loop(
    listener: TcpListener,
    socket: PathBuf,
    stop: &AtomicBool,
    recorded: &Recorded,
    open: &Arc<Mutex<HashMap<u64, TcpStream>>>,
) {
    let ids = AtomicU64::new(0);
    for client in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        let Ok(server) = UnixStream::connect(&socket) else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let id = ids.fetch_add(1, Ordering::Relaxed);
        lock(recorded).insert(id, Vec::new());
        if let Ok(c) = client.try_clone() {
            lock(open).insert(id, c);
        }
        let (recorded, open) = (recorded.clone(), open.clone());
        let _ = std::thread::Builder::new()
            .name(format!("pg-front-conn-{id}"))
            .spawn(move || {
                serve(client, server, id, &recorded);
                lock(&open).remove(&id);
            });
    }
}

/// Copies both ways until both sides are done, recording the client's side.
fn serve(client: TcpStream, server: UnixStream, id: u64, recorded: &Recorded) {
    let (Ok(mut client_w), Ok(mut server_r)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let down = std::thread::spawn(move || {
        let _ = std::io::copy(&mut server_r, &mut client_w);
        let _ = client_w.shutdown(Shutdown::Write);
    });
    let (mut from, mut to) = (client, server);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if let Some(kept) = lock(recorded).get_mut(&id) {
            let room = RECORDED.saturating_sub(kept.len()).min(n);
            kept.extend_from_slice(&buf[..room]);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = down.join();
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    let bytes: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

/// The `PasswordMessage` bodies in one client's stream: past the untyped
/// start-up packets (SSL/GSS requests, the start-up message), the typed
/// messages, each a type byte and a length that counts itself.
fn password_messages(stream: &[u8]) -> Vec<Vec<u8>> {
    let mut at = 0;
    loop {
        let (Some(len), Some(code)) = (be_u32(stream, at), be_u32(stream, at + 4)) else {
            return Vec::new();
        };
        at += len as usize;
        match code {
            SSL_REQUEST | GSSENC_REQUEST => continue,
            PROTOCOL_3 => break,
            // A cancel request or something else: no authentication here.
            _ => return Vec::new(),
        }
    }
    let mut out = Vec::new();
    while let (Some(&kind), Some(len)) = (stream.get(at), be_u32(stream, at + 1)) {
        let end = at + 1 + len as usize;
        let Some(body) = stream.get(at + 5..end) else {
            break;
        };
        if kind == b'p' {
            out.push(body.strip_suffix(&[0]).unwrap_or(body).to_vec());
        }
        at = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup() -> Vec<u8> {
        let params = b"user\0u\0database\0d\0\0";
        let mut m = ((8 + params.len()) as u32).to_be_bytes().to_vec();
        m.extend(PROTOCOL_3.to_be_bytes());
        m.extend(params);
        m
    }

    fn typed(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend(((4 + body.len()) as u32).to_be_bytes());
        m.extend(body);
        m
    }

    #[test]
    fn finds_password_messages_after_the_start_up() {
        let mut stream = 8u32.to_be_bytes().to_vec();
        stream.extend(SSL_REQUEST.to_be_bytes());
        stream.extend(startup());
        stream.extend(typed(b'p', b"hunter2\0"));
        stream.extend(typed(b'Q', b"SELECT 'p'\0"));
        assert_eq!(password_messages(&stream), vec![b"hunter2".to_vec()]);
        let mut no_password = startup();
        no_password.extend(typed(b'Q', b"SELECT 1\0"));
        assert!(password_messages(&no_password).is_empty());
        // Cut short: what is whole is read, nothing is made up.
        assert!(password_messages(&stream[..stream.len() - 20]).is_empty());
    }
}
