//! The fault proxy at the HTTP and TCP level, with raw clients: bodies
//! (`Content-Length`, chunked) pass unchanged on kept-alive connections,
//! `Expect: 100-continue` works, a reset is an RST after exactly the bytes
//! asked for, refusal is ECONNREFUSED. Most run against a small recording
//! HTTP server in the test; those against moto need `scripts/services`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use refugio_testkit::fault_proxy::SLOW_DOWN_XML;
use refugio_testkit::{
    dead_port, moto, unique_prefix, FaultProxy, Rule, RuleStats, S3Kind, S3Target,
};

/// A request as the recording server got it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Got {
    method: String,
    target: String,
    body: Vec<u8>,
    /// The body ended as framed (not cut off by the connection's end).
    complete: bool,
}

/// An HTTP/1.1 server that records requests and echoes their bodies, as
/// `Content-Length` or, for a chunked request, in two chunks; answers
/// `Expect: 100-continue`; keeps connections alive.
struct Recorder {
    target: S3Target,
    got: Arc<Mutex<Vec<Got>>>,
    connections: Arc<Mutex<u64>>,
}

impl Recorder {
    fn start() -> Result<Recorder> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let got: Arc<Mutex<Vec<Got>>> = Arc::default();
        let connections: Arc<Mutex<u64>> = Arc::default();
        {
            let (got, connections) = (got.clone(), connections.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming().flatten() {
                    *connections.lock().expect("lock") += 1;
                    let got = got.clone();
                    std::thread::spawn(move || {
                        let _ = serve_recorded(conn, &got);
                    });
                }
            });
        }
        Ok(Recorder {
            target: local_target(port),
            got,
            connections,
        })
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().expect("lock").clone()
    }

    fn connections(&self) -> u64 {
        *self.connections.lock().expect("lock")
    }

    /// Waits until `n` requests were recorded (a truncated one is recorded
    /// when its connection ends, after the client saw the reset).
    fn wait_for(&self, n: usize) -> Result<Vec<Got>> {
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            let got = self.got();
            if got.len() >= n {
                return Ok(got);
            }
            ensure!(Instant::now() < until, "the server got {got:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A plain HTTP server on 127.0.0.1:`port`, dressed as an S3 target.
fn local_target(port: u16) -> S3Target {
    S3Target {
        kind: S3Kind::Moto,
        endpoint: format!("http://127.0.0.1:{port}"),
        region: "us-east-1".into(),
        bucket: "b".into(),
        access_key: "k".into(),
        secret_key: "s".into(),
    }
}

fn serve_recorded(conn: TcpStream, got: &Mutex<Vec<Got>>) -> Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut conn = conn;
    loop {
        let Some(head) = read_head(&mut reader)? else {
            return Ok(());
        };
        let first = head.lines().next().unwrap_or_default().to_string();
        let mut words = first.split(' ');
        let (method, target) = (
            words.next().unwrap_or_default().to_string(),
            words.next().unwrap_or_default().to_string(),
        );
        let chunked = header(&head, "transfer-encoding").is_some_and(|v| v.contains("chunked"));
        if header(&head, "expect").is_some() {
            conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let mut body = Vec::new();
        let complete = if chunked {
            read_chunked(&mut reader, &mut body).is_ok()
        } else {
            let len: usize = header(&head, "content-length").map_or(Ok(0), str::parse)?;
            let read = (&mut reader).take(len as u64).read_to_end(&mut body)?;
            read == len
        };
        got.lock().expect("lock").push(Got {
            method,
            target,
            body: body.clone(),
            complete,
        });
        if !complete {
            return Ok(());
        }
        if chunked {
            let (a, b) = body.split_at(body.len() / 2);
            write!(
                conn,
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
            )?;
            for part in [a, b].into_iter().filter(|p| !p.is_empty()) {
                write!(conn, "{:x}\r\n", part.len())?;
                conn.write_all(part)?;
                conn.write_all(b"\r\n")?;
            }
            conn.write_all(b"0\r\n\r\n")?;
        } else {
            write!(
                conn,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                body.len()
            )?;
            conn.write_all(&body)?;
        }
    }
}

/// A head through its empty line; `None` at EOF before it.
fn read_head(reader: &mut impl BufRead) -> Result<Option<String>> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            if head.is_empty() {
                return Ok(None);
            }
            bail!("EOF in a head: {head:?}");
        }
        head.push_str(&line);
        if line == "\r\n" {
            return Ok(Some(head));
        }
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn read_chunked(reader: &mut impl BufRead, body: &mut Vec<u8>) -> Result<()> {
    loop {
        let mut line = String::new();
        ensure!(reader.read_line(&mut line)? > 0, "EOF in a chunked body");
        let size = usize::from_str_radix(line.split(';').next().unwrap_or_default().trim(), 16)?;
        if size == 0 {
            loop {
                let mut trailer = String::new();
                ensure!(reader.read_line(&mut trailer)? > 0, "EOF in trailers");
                if trailer == "\r\n" {
                    return Ok(());
                }
            }
        }
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk)?;
        body.extend_from_slice(&chunk[..size]);
    }
}

/// A response: its head and its body (de-chunked).
fn read_response(reader: &mut impl BufRead) -> Result<(String, Vec<u8>)> {
    let head = read_head(reader)?.context("the connection closed")?;
    let mut body = Vec::new();
    if header(&head, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        read_chunked(reader, &mut body)?;
    } else if !head.starts_with("HTTP/1.1 1") {
        let len: usize = header(&head, "content-length").map_or(Ok(0), str::parse)?;
        body.resize(len, 0);
        reader.read_exact(&mut body)?;
    }
    Ok((head, body))
}

fn connect(endpoint: &str) -> Result<(TcpStream, BufReader<TcpStream>)> {
    let conn = TcpStream::connect(endpoint.trim_start_matches("http://"))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let reader = BufReader::new(conn.try_clone()?);
    Ok((conn, reader))
}

/// Everything the peer sends until it closes, and how it closed: `Ok` for
/// a FIN, the error (ECONNRESET for an RST) otherwise.
fn read_until_closed(conn: &mut impl Read) -> (Vec<u8>, io::Result<()>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return (got, Ok(())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return (got, Err(e)),
        }
    }
}

/// moto lets anonymous requests create objects but not read or replace
/// them; it does not check signatures, so any credentials will do.
const MOTO_AUTH: &str = "authorization: AWS4-HMAC-SHA256 \
    Credential=testing/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00\r\n";

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn stats(matched: u64, injected: u64) -> RuleStats {
    RuleStats { matched, injected }
}

#[test]
fn length_and_chunked_bodies_pass_unchanged_on_one_kept_alive_connection() -> Result<()> {
    let server = Recorder::start()?;
    let proxy = FaultProxy::start(&server.target)?;
    let (mut conn, mut reader) = connect(&proxy.endpoint())?;

    let body = data(300_000);
    write!(
        conn,
        "POST /b/one HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )?;
    conn.write_all(&body)?;
    let (head, echoed) = read_response(&mut reader)?;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(echoed, body);

    // Chunk extensions and trailers pass too; the echo comes back chunked.
    conn.write_all(
        b"PUT /b/two?partNumber=1 HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n\
          5;name=value\r\nhello\r\n1\r\n,\r\n6\r\n world\r\n0\r\nx-trailer: yes\r\n\r\n",
    )?;
    let (head, echoed) = read_response(&mut reader)?;
    assert!(header(&head, "transfer-encoding").is_some(), "{head}");
    assert_eq!(echoed, b"hello, world");

    conn.write_all(b"GET /b/three HTTP/1.1\r\nhost: x\r\n\r\n")?;
    let (head, echoed) = read_response(&mut reader)?;
    assert!(
        head.starts_with("HTTP/1.1 200") && echoed.is_empty(),
        "{head}"
    );

    let got = server.got();
    let seen: Vec<(&str, &str, usize, bool)> = got
        .iter()
        .map(|g| {
            (
                g.method.as_str(),
                g.target.as_str(),
                g.body.len(),
                g.complete,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("POST", "/b/one", 300_000, true),
            ("PUT", "/b/two?partNumber=1", 12, true),
            ("GET", "/b/three", 0, true),
        ]
    );
    assert_eq!(server.connections(), 1);
    let totals = proxy.totals();
    assert_eq!(
        (
            totals.connections,
            totals.requests,
            totals.forwarded,
            totals.responses
        ),
        (1, 3, 3, 3)
    );
    Ok(())
}

#[test]
fn an_answer_reads_the_body_after_100_continue_and_keeps_the_connection() -> Result<()> {
    let server = Recorder::start()?;
    let proxy = FaultProxy::start(&server.target)?;
    let put = proxy.add(Rule::new().method("PUT").nth(1).respond(503, SLOW_DOWN_XML));
    let head = proxy.add(Rule::new().method("HEAD").respond(404, ""));
    let (mut conn, mut reader) = connect(&proxy.endpoint())?;

    // The proxy itself says 100 Continue, then takes the body and answers.
    conn.write_all(
        b"PUT /b/k HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n",
    )?;
    let (interim, _) = read_response(&mut reader)?;
    assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim}");
    conn.write_all(b"hello")?;
    let (answer, body) = read_response(&mut reader)?;
    assert!(
        answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{answer}"
    );
    assert_eq!(header(&answer, "content-type"), Some("application/xml"));
    assert_eq!(body, SLOW_DOWN_XML.as_bytes());

    // A HEAD's answer has no body, whatever the rule's.
    conn.write_all(b"HEAD /b/k HTTP/1.1\r\nhost: x\r\n\r\n")?;
    let (answer, body) = read_response(&mut reader)?;
    assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");
    assert!(body.is_empty());

    // The same connection goes on, to the server this time.
    conn.write_all(b"PUT /b/k HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nworld")?;
    let (answer, body) = read_response(&mut reader)?;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(body, b"world");

    let got = server.got();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].body, b"world");
    assert_eq!(proxy.stats(put), stats(2, 1));
    assert_eq!(proxy.stats(head), stats(1, 1));
    let totals = proxy.totals();
    assert_eq!(
        (totals.connections, totals.answered, totals.forwarded),
        (1, 2, 1)
    );
    Ok(())
}

#[test]
fn expect_100_continue_is_relayed_from_moto() -> Result<()> {
    let moto = moto()?;
    let proxy = FaultProxy::start(&moto)?;
    let key = format!(
        "/{}/fault-proxy/{}/expect",
        moto.bucket,
        unique_prefix("expect")
    );
    let body = data(70_000);
    let (mut conn, mut reader) = connect(&proxy.endpoint())?;
    write!(
        conn,
        "PUT {key} HTTP/1.1\r\nhost: x\r\n{MOTO_AUTH}content-length: {}\r\nexpect: 100-continue\r\n\r\n",
        body.len()
    )?;
    let (interim, _) = read_response(&mut reader)?;
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    conn.write_all(&body)?;
    // moto (werkzeug) says 100 Continue a second time before its answer.
    let answer = loop {
        let (head, _) = read_response(&mut reader)?;
        if !head.starts_with("HTTP/1.1 100") {
            break head;
        }
    };
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let (mut direct, mut direct_reader) = connect(&moto.endpoint)?;
    write!(direct, "GET {key} HTTP/1.1\r\nhost: x\r\n{MOTO_AUTH}\r\n")?;
    let (head, stored) = read_response(&mut direct_reader)?;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(stored, body);
    assert_eq!(proxy.totals().forwarded, 1);
    Ok(())
}

#[test]
fn a_response_reset_is_an_rst_after_exactly_k_body_bytes_from_moto() -> Result<()> {
    let moto = moto()?;
    let key = format!("/{}/fault-proxy/{}/cut", moto.bucket, unique_prefix("cut"));
    let body = data(100_000);
    let (mut direct, mut direct_reader) = connect(&moto.endpoint)?;
    write!(
        direct,
        "PUT {key} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )?;
    direct.write_all(&body)?;
    let (head, _) = read_response(&mut direct_reader)?;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    let proxy = FaultProxy::start(&moto)?;
    let cut = proxy.add(
        Rule::new()
            .method("GET")
            .path(&key)
            .reset_response_after(10_000),
    );
    let (mut conn, _) = connect(&proxy.endpoint())?;
    write!(conn, "GET {key} HTTP/1.1\r\nhost: x\r\n{MOTO_AUTH}\r\n")?;
    let (got, closed) = read_until_closed(&mut conn);
    let err = closed.expect_err("an RST, not a FIN");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    let text = String::from_utf8_lossy(&got);
    let head_len = text.find("\r\n\r\n").context("no head")? + 4;
    assert!(text.starts_with("HTTP/1.1 200"), "{text:.200}");
    assert_eq!(&got[head_len..], &body[..10_000]);
    assert_eq!(proxy.stats(cut), stats(1, 1));
    let totals = proxy.totals();
    assert_eq!(
        (totals.forwarded, totals.responses, totals.resets),
        (1, 0, 1)
    );
    Ok(())
}

#[test]
fn a_request_reset_truncates_the_request_at_the_server() -> Result<()> {
    let server = Recorder::start()?;
    let proxy = FaultProxy::start(&server.target)?;
    let cut = proxy.add(Rule::new().method("POST").reset_request_after(30_000));
    let (mut conn, _) = connect(&proxy.endpoint())?;
    let body = data(100_000);
    write!(
        conn,
        "POST /b/k HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )?;
    // The reset may already hit the writes.
    let _ = conn.write_all(&body);
    let (got, closed) = read_until_closed(&mut conn);
    assert!(got.is_empty(), "{got:?}");
    let err = closed.expect_err("an RST, not a FIN");
    assert!(
        matches!(
            err.kind(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
        ),
        "{err}"
    );

    let got = server.wait_for(1)?;
    assert_eq!((got[0].body.len(), got[0].complete), (30_000, false));
    assert_eq!(got[0].body, body[..30_000]);
    assert_eq!(proxy.stats(cut), stats(1, 1));
    let totals = proxy.totals();
    assert_eq!((totals.forwarded, totals.resets), (0, 1));
    Ok(())
}

#[test]
fn a_reset_on_arrival_opens_no_server_connection() -> Result<()> {
    let server = Recorder::start()?;
    let proxy = FaultProxy::start(&server.target)?;
    let reset = proxy.add(Rule::new().reset());
    let (mut conn, _) = connect(&proxy.endpoint())?;
    conn.write_all(b"GET /b/k HTTP/1.1\r\nhost: x\r\n\r\n")?;
    let (got, closed) = read_until_closed(&mut conn);
    assert!(got.is_empty());
    assert_eq!(
        closed.expect_err("an RST").kind(),
        io::ErrorKind::ConnectionReset
    );
    assert_eq!(proxy.stats(reset), stats(1, 1));
    assert_eq!(server.connections(), 0);
    assert_eq!(proxy.totals().resets, 1);
    Ok(())
}

#[test]
fn refusal_closes_open_connections_and_refuses_new_ones_until_lifted() -> Result<()> {
    let server = Recorder::start()?;
    let proxy = FaultProxy::start(&server.target)?;
    let (mut idle, mut idle_reader) = connect(&proxy.endpoint())?;
    idle.write_all(b"GET /b/k HTTP/1.1\r\nhost: x\r\n\r\n")?;
    read_response(&mut idle_reader)?;

    proxy.refuse_connections(true)?;
    let (rest, closed) = read_until_closed(&mut idle_reader);
    assert!(rest.is_empty() && closed.is_ok(), "{rest:?} {closed:?}");
    let err = connect(&proxy.endpoint()).expect_err("refused");
    let err = err.downcast_ref::<io::Error>().context("an I/O error")?;
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    proxy.refuse_connections(true)?;

    proxy.refuse_connections(false)?;
    let (mut conn, mut reader) = connect(&proxy.endpoint())?;
    conn.write_all(b"GET /b/k HTTP/1.1\r\nhost: x\r\n\r\n")?;
    let (head, _) = read_response(&mut reader)?;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let totals = proxy.totals();
    assert_eq!(
        (totals.connections, totals.requests, totals.responses),
        (2, 2, 2)
    );
    Ok(())
}

#[test]
fn dropping_the_proxy_releases_a_stalled_request() -> Result<()> {
    let server = Recorder::start()?;
    let proxy = FaultProxy::start(&server.target)?;
    let stall = proxy.add(Rule::new().stall_forever());
    let (mut conn, _) = connect(&proxy.endpoint())?;
    conn.write_all(b"GET /b/k HTTP/1.1\r\nhost: x\r\n\r\n")?;
    let until = Instant::now() + Duration::from_secs(5);
    while proxy.stats(stall).injected == 0 {
        ensure!(Instant::now() < until, "the request never arrived");
        std::thread::sleep(Duration::from_millis(10));
    }
    let started = Instant::now();
    drop(proxy);
    let (got, closed) = read_until_closed(&mut conn);
    assert!(got.is_empty() && closed.is_ok(), "{got:?} {closed:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(server.got().is_empty());
    Ok(())
}

#[test]
fn an_unreachable_server_resets_the_client_and_counts_an_upstream_error() -> Result<()> {
    let proxy = FaultProxy::start(&local_target(dead_port()))?;
    let (mut conn, _) = connect(&proxy.endpoint())?;
    conn.write_all(b"GET /b/k HTTP/1.1\r\nhost: x\r\n\r\n")?;
    let (got, closed) = read_until_closed(&mut conn);
    assert!(got.is_empty());
    assert_eq!(
        closed.expect_err("an RST").kind(),
        io::ErrorKind::ConnectionReset
    );
    let totals = proxy.totals();
    assert_eq!(
        (totals.requests, totals.upstream_errors, totals.resets),
        (1, 1, 0)
    );
    Ok(())
}
