//! The slow proxy against a tiny HTTP/1.1 echo server: bytes arrive
//! unchanged, and every request, even on a kept-alive connection, takes at
//! least the delay; a byte rate makes a transfer take at least size / rate.
//! Only lower bounds are asserted: those hold on any machine.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use refugio_testkit::{S3Kind, S3Target, SlowProxy, Slowdown};

/// Answers each request on a connection with its body, until EOF.
fn echo_server() -> Result<S3Target> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || -> Result<()> {
                let mut reader = BufReader::new(conn.try_clone()?);
                let mut conn = conn;
                loop {
                    let mut len = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line)? == 0 {
                            return Ok(());
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse()?;
                        }
                    }
                    let mut body = vec![0u8; len];
                    reader.read_exact(&mut body)?;
                    write!(conn, "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n")?;
                    conn.write_all(&body)?;
                }
            });
        }
    });
    Ok(S3Target {
        kind: S3Kind::Moto,
        endpoint: format!("http://127.0.0.1:{port}"),
        region: "us-east-1".into(),
        bucket: "b".into(),
        access_key: "k".into(),
        secret_key: "s".into(),
    })
}

/// One POST of `body` on `conn`; returns the response body.
fn post(conn: &mut TcpStream, body: &[u8]) -> Result<Vec<u8>> {
    write!(
        conn,
        "POST /b/k HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )?;
    conn.write_all(body)?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut len = 0usize;
    let mut line = String::new();
    loop {
        line.clear();
        anyhow::ensure!(reader.read_line(&mut line)? > 0, "connection closed");
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse()?;
        }
    }
    let mut got = vec![0u8; len];
    reader.read_exact(&mut got)?;
    Ok(got)
}

fn connect(proxy: &SlowProxy) -> Result<TcpStream> {
    let hostport = proxy.endpoint();
    let hostport = hostport.strip_prefix("http://").context("endpoint")?;
    let conn = TcpStream::connect(hostport)?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    Ok(conn)
}

#[test]
fn every_request_waits_for_the_delay_and_arrives_unchanged() -> Result<()> {
    let upstream = echo_server()?;
    let delay = Duration::from_millis(300);
    let proxy = SlowProxy::start(&upstream, Slowdown::delay(delay))?;
    assert_eq!(
        proxy.target(),
        S3Target {
            endpoint: proxy.endpoint(),
            ..upstream
        }
    );
    let mut conn = connect(&proxy)?;
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    for _ in 0..3 {
        let t = Instant::now();
        assert_eq!(post(&mut conn, &body)?, body);
        assert!(t.elapsed() >= delay, "took {:?}", t.elapsed());
    }
    Ok(())
}

#[test]
fn a_byte_rate_bounds_the_transfer_time_and_can_be_lifted() -> Result<()> {
    let proxy = SlowProxy::start(&echo_server()?, Slowdown::rate(100_000))?;
    let mut conn = connect(&proxy)?;
    let body = vec![7u8; 50_000];
    let t = Instant::now();
    assert_eq!(post(&mut conn, &body)?, body);
    // 50 kB each way at 100 kB/s: 0.5 s each, less the last chunk's pause.
    assert!(
        t.elapsed() >= Duration::from_millis(800),
        "took {:?}",
        t.elapsed()
    );
    proxy.set(Slowdown::NONE);
    assert_eq!(post(&mut conn, &body)?, body);
    Ok(())
}
