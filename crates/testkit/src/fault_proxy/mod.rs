//! A scripted, deterministic fault proxy: an HTTP/1.1 proxy on 127.0.0.1 in
//! front of an S3 test server (moto, Garage) that a test tells which
//! requests to answer with an error, to cut, to hold or to slow down, and
//! that counts what it did so the test can assert on it.
//!
//! ```no_run
//! # fn example() -> anyhow::Result<()> {
//! use refugio_testkit::fault_proxy::{FaultProxy, Rule, SLOW_DOWN_XML};
//! use refugio_testkit::moto;
//!
//! let proxy = FaultProxy::start(&moto()?)?;
//! let target = proxy.target(); // moto, reached at proxy.endpoint()
//! // Every 5th UploadPart is answered 503 SlowDown, without reaching moto.
//! let slow_down = proxy.add(
//!     Rule::new()
//!         .method("PUT")
//!         .query_contains("partNumber=")
//!         .every(5)
//!         .respond(503, SLOW_DOWN_XML),
//! );
//! // The first download of a dump is reset after 64 KiB of its body.
//! let cut = proxy.add(
//!     Rule::new()
//!         .method("GET")
//!         .path_ends_with("/database.dump.zst")
//!         .nth(1)
//!         .reset_response_after(64 * 1024),
//! );
//! // … run refugio against `target` …
//! assert_eq!(proxy.stats(slow_down).injected, 2);
//! assert_eq!(proxy.stats(cut).injected, 1);
//! proxy.refuse_connections(true)?; // the server is down
//! proxy.refuse_connections(false)?; // and back
//! # let _ = target;
//! # Ok(())
//! # }
//! ```
//!
//! # Rules
//!
//! A [`Rule`] matches requests by method, path and query (as sent; with
//! path-style addressing the path begins with the bucket), picks some of the
//! matching ones (the Nth, every Nth, the first N, all after N; default
//! all) and does one thing to them. Rules can be added and cleared while
//! requests flow ([`FaultProxy::add`], [`FaultProxy::clear`]); the handle is
//! `Sync`. Every request is counted against every rule in force, in the
//! order the proxy finished reading request heads, under one lock: with the
//! same requests in the same order a rule picks the same ones. Requests a
//! client sends concurrently (parallel part uploads) are counted in the
//! order their heads arrive, which the test may not control: to pick one
//! of them, match what sets it apart (`query_contains("partNumber=3&")`).
//!
//! Of the rules that pick a request, the first added decides its fault; a
//! throttle also applies alongside another fault. Every rule counts every
//! request it matches, also one that another rule's fault took; and a
//! client's retry is a new request: `nth(1)` fails the first attempt, and
//! the retry is the rule's 2nd match.
//!
//! Counts ([`FaultProxy::stats`], [`FaultProxy::totals`]) are taken before
//! the bytes that let the client see an outcome go out (the last byte of a
//! response, the RST of a reset), so once a client call has returned, a
//! test reads final counts without waiting.
//!
//! # The faults, on the wire
//!
//! - [`Rule::respond`]: the proxy reads the request's body (sending `100
//!   Continue` first if the client expects one) and throws it away, then
//!   answers the status with the body as `application/xml` and a
//!   `Content-Length`, and keeps the connection open. The server never sees
//!   the request. [`SLOW_DOWN_XML`] and [`INTERNAL_ERROR_XML`] are S3 error
//!   bodies the AWS SDK parses (code `SlowDown`, `InternalError`).
//! - [`Rule::reset`]: the connection to the client is closed with a TCP RST
//!   (SO_LINGER on, zero timeout, then close) as soon as the request head is
//!   read; nothing is forwarded.
//! - [`Rule::reset_request_after`]: the head and the first K body bytes go
//!   to the server, then the client connection is reset and the server
//!   connection closed (FIN): the server sees a truncated request. (A body
//!   of K bytes or fewer reaches the server whole; the reset then comes
//!   before any response.)
//! - [`Rule::reset_response_after`]: the request goes to the server whole;
//!   the response head and the first K bytes of the response body go to the
//!   client, then the client connection is reset. K counts body bytes as
//!   sent, chunked framing included, never the head.
//! - [`Rule::stall`], [`Rule::stall_forever`]: the request head is held
//!   (nothing forwarded, nothing answered, the connection open) for the time
//!   or until the rule is cleared, then forwarded as usual.
//! - [`Rule::throttle`]: the request and its response are written in pieces
//!   of a 20th of the rate, each followed by a pause, so each direction
//!   carries at most B bytes per second; clearing the rule restores full
//!   speed at the next piece.
//! - [`FaultProxy::refuse_connections`]: the listening socket is closed, so
//!   connecting gets ECONNREFUSED as from a server that is down, and every
//!   open connection is shut down (FIN both ways; requests in flight fail,
//!   held requests are dropped). Turning it off listens again on the same
//!   port.
//!
//! # HTTP
//!
//! Each client connection gets its own server connection, opened on its
//! first forwarded request and opened again when the server closed it while
//! the client was idle. Requests on a connection are handled one after the
//! other (HTTP/1.1 keep-alive, no pipelining): bodies are delimited by
//! `Content-Length`, `Transfer-Encoding: chunked` or (responses) the end of
//! the connection, and copied unchanged. `Expect: 100-continue` is honoured
//! (the server's `100 Continue` is forwarded; after a second without one
//! the body is sent anyway), though aws-sdk-s3 does not send it. A response
//! with `Connection: close` (moto sends it on every response) ends the
//! client connection after it. The proxy runs on its own threads (one per
//! connection), not on the test's tokio runtime, so a test that blocks its
//! workers does not stall it.

mod http;
mod rule;
mod serve;

use std::collections::HashMap;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub use rule::{Rule, RuleId, RuleStats};

use crate::s3::S3Target;
use http::{Pace, RequestHead};
use rule::{Active, Plan};

/// An S3 `SlowDown` error body, as S3 sends with a 503.
pub const SLOW_DOWN_XML: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
    <Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message>\
    <RequestId>refugio-fault-proxy</RequestId></Error>";

/// An S3 `InternalError` body, as S3 sends with a 500.
pub const INTERNAL_ERROR_XML: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
    <Error><Code>InternalError</Code><Message>We encountered an internal error. \
    Please try again.</Message><RequestId>refugio-fault-proxy</RequestId></Error>";

/// How many requests [`FaultProxy::seen`] remembers.
const MAX_SEEN: usize = 100_000;
/// How long switching refusal on or off may take before it is an error.
const SWITCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Counts over the proxy's life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyTotals {
    /// Client connections accepted (refused ones never reach the proxy).
    pub connections: u64,
    /// Request heads read.
    pub requests: u64,
    /// Requests forwarded to the server whole, head and body.
    pub forwarded: u64,
    /// Server responses forwarded to the client whole.
    pub responses: u64,
    /// Requests the proxy answered itself ([`Rule::respond`]).
    pub answered: u64,
    /// Client connections reset by a fault.
    pub resets: u64,
    /// Server connections that could not be opened, or that closed or sent
    /// garbage instead of a (whole) response.
    pub upstream_errors: u64,
}

/// A request as the proxy saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRequest {
    /// `GET`, `PUT`…
    pub method: String,
    /// Path and query as sent: `/bucket/key?x-id=GetObject`.
    pub target: String,
    /// The rules whose fault it got (none: forwarded untouched).
    pub rules: Vec<RuleId>,
}

/// The fault proxy; stops and closes its connections on drop.
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: S3Target,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

/// The clones of a connection's sockets, to shut them from outside.
struct Sockets {
    client: TcpStream,
    server: Option<TcpStream>,
}

impl Sockets {
    fn shut(&self) {
        let _ = self.client.shutdown(Shutdown::Both);
        if let Some(server) = &self.server {
            let _ = server.shutdown(Shutdown::Both);
        }
    }
}

#[derive(Default)]
struct State {
    /// In force, in the order added.
    rules: Vec<Active>,
    /// Indexed by [`RuleId`], kept after a rule is cleared.
    stats: Vec<RuleStats>,
    totals: ProxyTotals,
    seen: Vec<SeenRequest>,
    connections: HashMap<u64, Sockets>,
    next_connection: u64,
    /// Bumped when refusal shuts the open connections: their threads give
    /// up instead of going on with a shut socket.
    epoch: u64,
    refusing: bool,
    listening: bool,
    rebind_error: Option<String>,
    stopping: bool,
}

/// What the handle and the connection threads share.
struct Shared {
    upstream: SocketAddr,
    state: Mutex<State>,
    /// Signalled on every change of rules or of the switches.
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, state: MutexGuard<'a, State>, until: Instant) -> MutexGuard<'a, State> {
        let left = until.saturating_duration_since(Instant::now());
        self.changed
            .wait_timeout(state, left)
            .map_or_else(|e| e.into_inner().0, |(state, _)| state)
    }

    fn count(&self, f: impl FnOnce(&mut ProxyTotals)) {
        f(&mut self.lock().totals);
    }

    fn decide(&self, request: &RequestHead) -> Plan {
        let mut state = self.lock();
        let State {
            rules,
            stats,
            totals,
            seen,
            ..
        } = &mut *state;
        totals.requests += 1;
        let plan = rule::decide(rules, stats, request);
        if seen.len() < MAX_SEEN {
            seen.push(SeenRequest {
                method: request.method.clone(),
                target: request.target.clone(),
                rules: plan.rules(),
            });
        }
        plan
    }

    /// The pace of a request's next piece: the lowest rate of its throttles
    /// still in force.
    fn pace(&self, epoch: u64, throttles: &[(RuleId, u64)]) -> Pace {
        let state = self.lock();
        if state.stopping || state.epoch != epoch {
            return Pace::Abandon;
        }
        throttles
            .iter()
            .filter(|(id, _)| state.rules.iter().any(|a| a.id == *id))
            .map(|(_, rate)| *rate)
            .min()
            .map_or(Pace::Free, Pace::Rate)
    }

    /// Holds a request for `time` (`None`: no limit) or until `rule` is
    /// cleared; false when the connection is to be given up instead.
    fn stall(&self, rule: RuleId, epoch: u64, time: Option<Duration>) -> bool {
        let until = time.map(|t| Instant::now() + t);
        let mut state = self.lock();
        loop {
            if state.stopping || state.epoch != epoch {
                return false;
            }
            if !state.rules.iter().any(|a| a.id == rule) {
                return true;
            }
            state = match until {
                Some(until) if Instant::now() >= until => return true,
                Some(until) => self.wait(state, until),
                None => self
                    .changed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
            };
        }
    }

    /// Records a connection's server socket; false if the connection was
    /// shut meanwhile.
    fn register_server(&self, id: u64, server: &TcpStream) -> bool {
        let mut state = self.lock();
        match (state.connections.get_mut(&id), server.try_clone()) {
            (Some(sockets), Ok(clone)) => {
                sockets.server = Some(clone);
                true
            }
            _ => false,
        }
    }

    fn unregister(&self, id: u64) {
        self.lock().connections.remove(&id);
    }
}

impl FaultProxy {
    /// Listens on a free 127.0.0.1 port and forwards to `upstream`'s
    /// endpoint (`http://host:port`), with no rules.
    pub fn start(upstream: &S3Target) -> Result<FaultProxy> {
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
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the fault proxy")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream: to,
            state: Mutex::new(State {
                listening: true,
                ..State::default()
            }),
            changed: Condvar::new(),
        });
        let accept = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("fault-proxy-{}", addr.port()))
                .spawn(move || accept_loop(&shared, listener, addr))?
        };
        Ok(FaultProxy {
            addr,
            upstream: upstream.clone(),
            shared,
            accept: Some(accept),
        })
    }

    /// `http://127.0.0.1:PORT` of the proxy.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The upstream target, reached through the proxy.
    pub fn target(&self) -> S3Target {
        S3Target {
            endpoint: self.endpoint(),
            ..self.upstream.clone()
        }
    }

    /// Puts `rule` in force, after the rules already there; requests whose
    /// head is read from now on are counted against it.
    pub fn add(&self, rule: Rule) -> RuleId {
        let mut state = self.shared.lock();
        let id = RuleId(state.stats.len());
        state.stats.push(RuleStats::default());
        state.rules.push(Active { id, rule });
        id
    }

    /// Takes `rule` out of force: held requests go on, throttled ones speed
    /// up. Its counts stay readable. Clearing it again does nothing.
    pub fn clear(&self, rule: RuleId) {
        self.shared.lock().rules.retain(|a| a.id != rule);
        self.shared.changed.notify_all();
    }

    /// Clears every rule.
    pub fn clear_all(&self) {
        self.shared.lock().rules.clear();
        self.shared.changed.notify_all();
    }

    /// `rule`'s counts so far (zero for a rule of another proxy).
    pub fn stats(&self, rule: RuleId) -> RuleStats {
        self.shared
            .lock()
            .stats
            .get(rule.0)
            .copied()
            .unwrap_or_default()
    }

    /// The proxy's counts so far.
    pub fn totals(&self) -> ProxyTotals {
        self.shared.lock().totals
    }

    /// Every request so far (the first 100 000), in the order counted.
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.shared.lock().seen.clone()
    }

    /// With `true`, closes the listening socket (new connections get
    /// ECONNREFUSED) and shuts every open connection; returns once the port
    /// is closed. With `false`, listens on the same port again; fails if
    /// another socket took the port meanwhile.
    pub fn refuse_connections(&self, refuse: bool) -> Result<()> {
        let mut state = self.shared.lock();
        if state.refusing == refuse {
            return Ok(());
        }
        state.refusing = refuse;
        state.rebind_error = None;
        if refuse {
            state.epoch += 1;
            for sockets in std::mem::take(&mut state.connections).values() {
                sockets.shut();
            }
        }
        drop(state);
        self.shared.changed.notify_all();
        if refuse {
            // Wakes the accept loop, which then sees the switch.
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        }
        let until = Instant::now() + SWITCH_TIMEOUT;
        let mut state = self.shared.lock();
        loop {
            if state.listening != refuse {
                return Ok(());
            }
            if let Some(error) = &state.rebind_error {
                bail!("listening on {} again: {error}", self.addr);
            }
            if Instant::now() >= until {
                bail!(
                    "the fault proxy on {} did not switch refusal within {SWITCH_TIMEOUT:?}",
                    self.addr
                );
            }
            state = self.shared.wait(state, until);
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.stopping = true;
        let listening = state.listening;
        for sockets in std::mem::take(&mut state.connections).values() {
            sockets.shut();
        }
        drop(state);
        self.shared.changed.notify_all();
        if listening {
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        }
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// Accepts connections and starts a thread for each; closes and reopens
/// the listening socket as refusal is switched.
fn accept_loop(shared: &Arc<Shared>, listener: TcpListener, addr: SocketAddr) {
    let mut listener = Some(listener);
    loop {
        let Some(open) = listener.take() else {
            let mut state = shared.lock();
            while state.refusing && !state.stopping {
                state = shared
                    .changed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if state.stopping {
                return;
            }
            drop(state);
            let bound = rebind(addr);
            let mut state = shared.lock();
            match bound {
                Ok(open) => {
                    state.listening = true;
                    listener = Some(open);
                }
                Err(error) => {
                    state.rebind_error = Some(error.to_string());
                    state.refusing = true;
                }
            }
            drop(state);
            shared.changed.notify_all();
            continue;
        };
        let accepted = open.accept();
        let mut state = shared.lock();
        if state.stopping {
            return;
        }
        if state.refusing {
            if let Ok((client, _)) = accepted {
                serve::reset(client);
            }
            drop(open);
            state.listening = false;
            drop(state);
            shared.changed.notify_all();
            continue;
        }
        listener = Some(open);
        let Ok((client, _)) = accepted else {
            drop(state);
            // Out of descriptors or the like: let it pass rather than spin.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let Ok(clone) = client.try_clone() else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let id = state.next_connection;
        state.next_connection += 1;
        state.totals.connections += 1;
        state.connections.insert(
            id,
            Sockets {
                client: clone,
                server: None,
            },
        );
        let epoch = state.epoch;
        drop(state);
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("fault-proxy-{}-{id}", addr.port()))
                .spawn(move || serve::serve(&shared, id, epoch, client))
        };
        if thread.is_err() {
            shared.unregister(id);
        }
    }
}

/// Binds `addr` again; the port may take a moment to be free.
fn rebind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let mut tries = 0;
    loop {
        match TcpListener::bind(addr) {
            Ok(listener) => return Ok(listener),
            Err(e) if tries >= 50 => return Err(e),
            Err(_) => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handle_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<FaultProxy>();
    }
}
