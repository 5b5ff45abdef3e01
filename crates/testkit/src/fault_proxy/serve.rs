//! One client connection: read a request, decide its fate, forward it (or
//! not) to the server on this connection's own server connection, forward
//! the response; again while both sides keep the connection alive.

use std::io::{self, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use nix::sys::socket::{setsockopt, sockopt};

use super::http::{copy_message, drain_body, Conn, Out, Pace, RequestHead, ResponseHead, Stop};
use super::rule::Fault;
use super::Shared;

/// How long a request with `Expect: 100-continue` waits for the server's
/// `100 Continue` before its body is sent anyway (curl waits 1 s too).
const CONTINUE_WAIT: Duration = Duration::from_secs(1);
/// How long opening a connection to the server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How a client connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Orderly: FIN after the last response (or the client left first).
    Close,
    /// TCP RST, by a fault (already counted) or because the server could
    /// not be reached.
    Reset,
    /// The proxy stops or refuses connections; the socket is already shut.
    Abandon,
}

/// Serves `client` until the connection ends, then unregisters it.
pub(super) fn serve(shared: &Shared, id: u64, epoch: u64, client: TcpStream) {
    let mut client = Conn::new(client);
    let mut server: Option<Conn<TcpStream>> = None;
    let end = loop {
        if let Err(end) = exchange(shared, id, epoch, &mut client, &mut server) {
            break end;
        }
    };
    // The registry holds clones of both sockets; they must be closed before
    // ours for a reset to happen at our close.
    shared.unregister(id);
    drop(server);
    let client = client.into_inner();
    match end {
        End::Close => {
            let _ = client.shutdown(Shutdown::Write);
        }
        End::Reset => reset(client),
        End::Abandon => {}
    }
}

/// Closes `stream` with a TCP RST instead of a FIN: SO_LINGER on with a zero
/// timeout makes close(2) abort the connection.
pub(super) fn reset(stream: TcpStream) {
    let linger = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = setsockopt(&stream, sockopt::Linger, &linger);
    drop(stream);
}

/// One request and its response; `Ok` when the connection stays open.
fn exchange(
    shared: &Shared,
    id: u64,
    epoch: u64,
    client: &mut Conn<TcpStream>,
    server: &mut Option<Conn<TcpStream>>,
) -> Result<(), End> {
    let head = match client.read_head() {
        Ok(Some(head)) => head,
        Ok(None) | Err(_) => return Err(End::Close),
    };
    let request = match RequestHead::parse(&head) {
        Ok(request) => request,
        Err(stop) => {
            tracing::debug!(connection = id, "fault proxy: request head: {stop}");
            let _ = client.get_mut().write_all(
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
            return Err(End::Close);
        }
    };
    let plan = shared.decide(&request);
    let pace = || shared.pace(epoch, &plan.throttles);
    let (mut cut_request, mut cut_response) = (None, None);
    match &plan.fault {
        Some((_, Fault::Respond { status, body })) => {
            return answer(shared, client, &request, *status, body, &pace);
        }
        Some((_, Fault::Reset)) => return Err(fault_reset(shared)),
        Some((rule, Fault::Stall(time))) => {
            if !shared.stall(*rule, epoch, *time) {
                return Err(End::Abandon);
            }
        }
        Some((_, Fault::ResetRequestAfter(bytes))) => cut_request = Some(*bytes),
        Some((_, Fault::ResetResponseAfter(bytes))) => cut_response = Some(*bytes),
        Some((_, Fault::Throttle(_))) | None => {}
    }

    let server = connect(shared, id, server)?;
    // Counts are taken before the last byte goes out, so that a test that
    // has seen the outcome reads final counts.
    let mut count_request = || shared.count(|t| t.forwarded += 1);
    let mut early = None;
    let mut server_left = false;
    // With `Expect: 100-continue` the head goes first, alone.
    let mut request_head = &head[..];
    if request.expects_continue {
        if Out::new(server.get_mut(), None, &pace).head(&head).is_err() {
            return Err(upstream_error(shared));
        }
        request_head = b"";
        early = await_continue(client, server, &request, &pace)?;
    }
    let sent = match early {
        Some(_) => Ok(()),
        None => copy_message(
            request_head,
            client,
            request.framing,
            &mut Out::new(server.get_mut(), cut_request, &pace),
            &mut count_request,
        ),
    };
    match sent {
        Ok(()) if cut_request.is_none() => {}
        Ok(()) | Err(Stop::Cut) => return Err(fault_reset(shared)),
        Err(Stop::Abandoned) => return Err(End::Abandon),
        // The server stopped reading: it may still have answered.
        Err(stop @ Stop::Write(_)) => {
            tracing::debug!(
                connection = id,
                "fault proxy: request to the server: {stop}"
            );
            server_left = true;
        }
        Err(stop @ (Stop::Read(_) | Stop::Malformed(_))) => {
            tracing::debug!(
                connection = id,
                "fault proxy: request from the client: {stop}"
            );
            return Err(End::Close);
        }
    }

    let (response_head, response) = match early {
        Some(early) => early,
        None => read_response(shared, client, server, &request, &pace)?,
    };
    let mut count_response = || {
        if cut_response.is_some() {
            // The whole response fit in the budget: the reset follows.
            shared.count(|t| t.resets += 1);
        } else {
            shared.count(|t| t.responses += 1);
        }
    };
    let sent = copy_message(
        &response_head,
        server,
        response.framing,
        &mut Out::new(client.get_mut(), cut_response, &pace),
        &mut count_response,
    );
    match sent {
        Ok(()) if cut_response.is_none() => {}
        Ok(()) => return Err(End::Reset),
        Err(Stop::Cut) => return Err(fault_reset(shared)),
        Err(Stop::Abandoned) => return Err(End::Abandon),
        Err(stop @ (Stop::Read(_) | Stop::Malformed(_))) => {
            tracing::debug!(
                connection = id,
                "fault proxy: response from the server: {stop}"
            );
            return Err(upstream_error(shared));
        }
        Err(stop @ Stop::Write(_)) => {
            tracing::debug!(
                connection = id,
                "fault proxy: response to the client: {stop}"
            );
            return Err(End::Close);
        }
    }
    if request.close || response.close || server_left {
        return Err(End::Close);
    }
    Ok(())
}

/// A reset by a fault, counted before it happens.
fn fault_reset(shared: &Shared) -> End {
    shared.count(|t| t.resets += 1);
    End::Reset
}

/// The server failed the exchange: counted, and the client's connection
/// closed as the server's was.
fn upstream_error(shared: &Shared) -> End {
    shared.count(|t| t.upstream_errors += 1);
    End::Close
}

/// Answers `request` with a made-up response after reading its body.
fn answer(
    shared: &Shared,
    client: &mut Conn<TcpStream>,
    request: &RequestHead,
    status: u16,
    body: &[u8],
    pace: &dyn Fn() -> Pace,
) -> Result<(), End> {
    if request.expects_continue {
        // So that the client sends the body, which is then read and dropped.
        client
            .get_mut()
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .map_err(|_| End::Close)?;
    }
    drain_body(client, request.framing, pace).map_err(|_| End::Close)?;
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nx-amz-request-id: refugio-fault-proxy\r\n",
        reason(status)
    );
    if !body.is_empty() {
        head.push_str("content-type: application/xml\r\n");
    }
    let head_only = request.method == "HEAD";
    let len = if head_only { 0 } else { body.len() };
    head.push_str(&format!("content-length: {len}\r\n"));
    if request.close {
        head.push_str("connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut message = head.into_bytes();
    if !head_only {
        message.extend_from_slice(body);
    }
    // Counted first, so that a test that has seen the answer reads it.
    shared.count(|t| t.answered += 1);
    Out::new(client.get_mut(), None, pace)
        .head(&message)
        .map_err(|_| End::Close)?;
    if request.close {
        Err(End::Close)
    } else {
        Ok(())
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        409 => "Conflict",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Fault",
    }
}

/// The connection's server connection, opened (again) if there is none or
/// the server closed it while the client was idle.
fn connect<'a>(
    shared: &Shared,
    id: u64,
    server: &'a mut Option<Conn<TcpStream>>,
) -> Result<&'a mut Conn<TcpStream>, End> {
    if server.as_ref().is_some_and(|conn| !idle_and_open(conn)) {
        *server = None;
    }
    if server.is_none() {
        let stream = match TcpStream::connect_timeout(&shared.upstream, CONNECT_TIMEOUT) {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(
                    connection = id,
                    "fault proxy: connecting to the server: {error}"
                );
                shared.count(|t| t.upstream_errors += 1);
                return Err(End::Reset);
            }
        };
        let _ = stream.set_nodelay(true);
        if !shared.register_server(id, &stream) {
            return Err(End::Abandon);
        }
        *server = Some(Conn::new(stream));
    }
    server.as_mut().ok_or(End::Abandon)
}

/// Whether a kept-alive server connection is still open and silent.
fn idle_and_open(conn: &Conn<TcpStream>) -> bool {
    let stream = conn.get_ref();
    if conn.has_buffered() || stream.set_nonblocking(true).is_err() {
        return false;
    }
    let peeked = stream.peek(&mut [0u8; 1]);
    let _ = stream.set_nonblocking(false);
    matches!(peeked, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

type Response = (Vec<u8>, ResponseHead);

/// After the head of an `Expect: 100-continue` request: forwards the
/// server's `100 Continue`, or returns its final answer if it gives one
/// before the body; if the server says nothing for a while, the body goes
/// anyway (as clients do).
fn await_continue(
    client: &mut Conn<TcpStream>,
    server: &mut Conn<TcpStream>,
    request: &RequestHead,
    pace: &dyn Fn() -> Pace,
) -> Result<Option<Response>, End> {
    if server
        .get_ref()
        .set_read_timeout(Some(CONTINUE_WAIT))
        .is_err()
    {
        return Err(End::Close);
    }
    let head = server.read_head();
    if server.get_ref().set_read_timeout(None).is_err() {
        return Err(End::Close);
    }
    let head = match head {
        Ok(Some(head)) => head,
        Err(Stop::Read(e))
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            return Ok(None)
        }
        Ok(None) | Err(_) => return Err(End::Close),
    };
    let response = ResponseHead::parse(&head, &request.method).map_err(|_| End::Close)?;
    if response.is_interim() {
        Out::new(client.get_mut(), None, pace)
            .head(&head)
            .map_err(|_| End::Close)?;
        return Ok(None);
    }
    // A final answer before the body: the body may still come, so the
    // connection ends after this response.
    let close = ResponseHead {
        close: true,
        ..response
    };
    Ok(Some((head, close)))
}

/// The server's final response head, forwarding interim ones.
fn read_response(
    shared: &Shared,
    client: &mut Conn<TcpStream>,
    server: &mut Conn<TcpStream>,
    request: &RequestHead,
    pace: &dyn Fn() -> Pace,
) -> Result<Response, End> {
    loop {
        let head = match server.read_head() {
            Ok(Some(head)) => head,
            Ok(None) => {
                tracing::debug!("fault proxy: the server closed without a response");
                return Err(upstream_error(shared));
            }
            Err(stop) => {
                tracing::debug!("fault proxy: response head from the server: {stop}");
                return Err(upstream_error(shared));
            }
        };
        let response = match ResponseHead::parse(&head, &request.method) {
            Ok(response) => response,
            Err(stop) => {
                tracing::debug!("fault proxy: response head from the server: {stop}");
                return Err(upstream_error(shared));
            }
        };
        if !response.is_interim() {
            return Ok((head, response));
        }
        Out::new(client.get_mut(), None, pace)
            .head(&head)
            .map_err(|_| End::Close)?;
    }
}
