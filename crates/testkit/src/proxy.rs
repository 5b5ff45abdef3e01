//! A slow store on purpose: a TCP proxy on 127.0.0.1 in front of an S3 test
//! server that holds each HTTP request back for a fixed time and can cap the
//! bytes per second, so a test can make a backup, a restore or a prune take
//! at least a known time whatever the speed of the machine (and without
//! burning CPU on large dumps to get there).
//!
//! It forwards bytes unchanged; it only knows HTTP/1.1 enough to see where a
//! request starts: the first bytes a client sends after the server last
//! spoke (clients send the next request on a connection only after reading
//! the previous response). The proxy runs on its own threads, not on the
//! test's tokio runtime, so a test that blocks its workers does not stall
//! it.
//!
//! ```no_run
//! # fn example() -> anyhow::Result<()> {
//! use std::time::Duration;
//! use refugio_testkit::{moto, SlowProxy, Slowdown};
//!
//! // Every request to moto through the proxy waits 2 s before it is sent.
//! let proxy = SlowProxy::start(&moto()?, Slowdown::delay(Duration::from_secs(2)))?;
//! let slow = proxy.target(); // moto, with the proxy's endpoint
//! proxy.set(Slowdown::NONE); // and now at full speed
//! # let _ = slow;
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::s3::S3Target;

/// Largest chunk copied at once (and the unit of rate pacing).
const CHUNK: usize = 64 * 1024;

/// How [`SlowProxy`] slows the traffic; can be changed while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Slowdown {
    /// How long each request is held before the proxy forwards it. Default
    /// zero.
    pub delay: Duration,
    /// Only requests with this HTTP method (`"POST"`, `"DELETE"`…) are held.
    /// Default `None`: every request.
    pub only_method: Option<&'static str>,
    /// Bytes per second at most, per connection and direction. Default
    /// `None`: unlimited.
    pub bytes_per_second: Option<u64>,
}

impl Slowdown {
    /// No slowdown: the proxy forwards at full speed.
    pub const NONE: Slowdown = Slowdown {
        delay: Duration::ZERO,
        only_method: None,
        bytes_per_second: None,
    };

    /// Every request held for `delay`.
    pub fn delay(delay: Duration) -> Slowdown {
        Slowdown {
            delay,
            ..Slowdown::NONE
        }
    }

    /// At most `bytes_per_second` per connection and direction.
    pub fn rate(bytes_per_second: u64) -> Slowdown {
        Slowdown {
            bytes_per_second: Some(bytes_per_second.max(1)),
            ..Slowdown::NONE
        }
    }

    /// Whether a request that starts with `head` is held.
    fn holds(&self, head: &[u8]) -> bool {
        !self.delay.is_zero()
            && self.only_method.is_none_or(|method| {
                head.starts_with(method.as_bytes()) && head.get(method.len()) == Some(&b' ')
            })
    }
}

type Connections = Mutex<HashMap<u64, (TcpStream, TcpStream)>>;

/// The proxy; stops and closes its connections on drop.
pub struct SlowProxy {
    addr: SocketAddr,
    upstream: S3Target,
    slowdown: Arc<Mutex<Slowdown>>,
    stop: Arc<AtomicBool>,
    connections: Arc<Connections>,
    accept: Option<JoinHandle<()>>,
    /// Requests held so far (whatever their slowdown).
    held: Arc<AtomicU64>,
}

impl SlowProxy {
    /// Listens on a free 127.0.0.1 port and forwards to `upstream`'s
    /// endpoint (`http://host:port`).
    pub fn start(upstream: &S3Target, slowdown: Slowdown) -> Result<SlowProxy> {
        let hostport = upstream
            .endpoint
            .strip_prefix("http://")
            .with_context(|| format!("{} is not an http:// endpoint", upstream.endpoint))?
            .trim_end_matches('/');
        let to = hostport
            .to_socket_addrs()
            .with_context(|| format!("resolving {hostport}"))?
            .next()
            .with_context(|| format!("{hostport} resolves to nothing"))?;
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the proxy")?;
        let addr = listener.local_addr()?;
        let slowdown = Arc::new(Mutex::new(slowdown));
        let stop = Arc::new(AtomicBool::new(false));
        let connections: Arc<Connections> = Arc::default();
        let held = Arc::new(AtomicU64::new(0));
        let accept = {
            let (slowdown, stop, connections, held) = (
                slowdown.clone(),
                stop.clone(),
                connections.clone(),
                held.clone(),
            );
            std::thread::Builder::new()
                .name(format!("slow-proxy-{}", addr.port()))
                .spawn(move || accept_loop(listener, to, &slowdown, &stop, &connections, &held))?
        };
        Ok(SlowProxy {
            addr,
            upstream: upstream.clone(),
            slowdown,
            stop,
            connections,
            accept: Some(accept),
            held,
        })
    }

    /// How many requests the proxy has held (delayed) so far: proof that a
    /// slowdown met the requests it was meant for.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::SeqCst)
    }

    /// `http://127.0.0.1:PORT` of the proxy.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The upstream target reached through the proxy.
    pub fn target(&self) -> S3Target {
        S3Target {
            endpoint: self.endpoint(),
            ..self.upstream.clone()
        }
    }

    /// Changes the slowdown; requests that start from now on get it.
    pub fn set(&self, slowdown: Slowdown) {
        *lock(&self.slowdown) = slowdown;
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        for (client, server) in lock(&self.connections).values() {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn accept_loop(
    listener: TcpListener,
    to: SocketAddr,
    slowdown: &Arc<Mutex<Slowdown>>,
    stop: &AtomicBool,
    connections: &Arc<Connections>,
    held: &Arc<AtomicU64>,
) {
    let ids = AtomicU64::new(0);
    for client in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        let Ok(server) = TcpStream::connect(to) else {
            // The client sees a closed connection, as if the server were down.
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let id = ids.fetch_add(1, Ordering::Relaxed);
        if let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) {
            lock(connections).insert(id, (c, s));
        }
        let (slowdown, connections, held) = (slowdown.clone(), connections.clone(), held.clone());
        let _ = std::thread::Builder::new()
            .name(format!("slow-proxy-conn-{id}"))
            .spawn(move || {
                serve(client, server, &slowdown, &held);
                lock(&connections).remove(&id);
            });
    }
}

/// Copies both ways until both sides are done.
fn serve(client: TcpStream, server: TcpStream, slowdown: &Arc<Mutex<Slowdown>>, held: &AtomicU64) {
    // Set by the server-to-client copy before it forwards a response, so the
    // client's next bytes (sent only after reading it) start a request.
    let server_spoke = Arc::new(AtomicBool::new(true));
    let (Ok(client_w), Ok(server_r)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let down = {
        let (slowdown, server_spoke) = (slowdown.clone(), server_spoke.clone());
        std::thread::spawn(move || {
            copy(server_r, client_w, &slowdown, |_, _| {
                server_spoke.store(true, Ordering::SeqCst);
            })
        })
    };
    copy(client, server, slowdown, |head, s| {
        if server_spoke.swap(false, Ordering::SeqCst) && s.holds(head) {
            held.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(s.delay);
        }
    });
    let _ = down.join();
}

/// Copies `from` to `to` until EOF or an error, calling `before` with each
/// chunk before forwarding it and pacing to the byte rate; then half-closes
/// `to` (and `from` on an error, so the other direction ends too).
fn copy(
    mut from: TcpStream,
    mut to: TcpStream,
    slowdown: &Mutex<Slowdown>,
    mut before: impl FnMut(&[u8], &Slowdown),
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let s = *lock(slowdown);
        let want = s
            .bytes_per_second
            .map_or(CHUNK, |r| (r / 20).clamp(1, CHUNK as u64) as usize);
        let n = match from.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => {
                let _ = from.shutdown(Shutdown::Both);
                break;
            }
        };
        before(&buf[..n], &s);
        if to.write_all(&buf[..n]).is_err() {
            let _ = from.shutdown(Shutdown::Both);
            break;
        }
        if let Some(rate) = s.bytes_per_second {
            std::thread::sleep(Duration::from_secs_f64(n as f64 / rate as f64));
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_requests_by_method_only_when_delaying() {
        let all = Slowdown::delay(Duration::from_millis(1));
        assert!(all.holds(b"GET /b/k HTTP/1.1\r\n"));
        assert!(all.holds(b"partial body after 100-continue"));
        let posts = Slowdown {
            only_method: Some("POST"),
            ..all
        };
        assert!(posts.holds(b"POST /b?delete HTTP/1.1\r\n"));
        assert!(!posts.holds(b"GET /b/k HTTP/1.1\r\n"));
        assert!(!posts.holds(b"POSTAL"));
        assert!(!Slowdown::NONE.holds(b"GET / HTTP/1.1\r\n"));
        assert!(!Slowdown::rate(10).holds(b"GET / HTTP/1.1\r\n"));
    }
}
