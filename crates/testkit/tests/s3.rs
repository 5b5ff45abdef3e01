//! The S3 helpers, and the test servers when `scripts/services` runs them.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result};
use refugio_testkit::{dead_port, garage, moto, unique_prefix, S3Kind, S3Target};

#[test]
fn unique_prefixes_differ_and_are_key_safe() {
    let prefixes: HashSet<String> = (0..100).map(|_| unique_prefix("My test::case")).collect();
    assert_eq!(prefixes.len(), 100);
    for prefix in &prefixes {
        assert!(prefix.starts_with("t-my-test--case-"), "{prefix}");
        assert!(
            prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{prefix}"
        );
    }
}

#[test]
fn dead_port_refuses_connections() {
    let port = dead_port();
    assert_ne!(port, 0);
    let err =
        TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), Duration::from_secs(2))
            .expect_err("something listens on the dead port");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}

/// The target is complete and its endpoint accepts connections. Without
/// the services this fails, saying how to start them (never a silent pass;
/// the message itself is tested in `s3::tests`).
fn check_target(target: Result<S3Target>, endpoint_var: &str, kind: S3Kind) -> Result<()> {
    let target = target.with_context(|| format!("{endpoint_var} names the service's endpoint"))?;
    assert_eq!(target.kind, kind);
    assert!(!target.bucket.is_empty() && !target.region.is_empty());
    let debug = format!("{target:?}");
    assert!(debug.contains("<redacted>"), "{debug}");
    // moto's secret is "testing", like its access key, which may be shown.
    if target.secret_key != target.access_key {
        assert!(!debug.contains(&target.secret_key), "{debug}");
    }
    let hostport = target
        .endpoint
        .strip_prefix("http://")
        .context("endpoint is not http://")?;
    TcpStream::connect(hostport).with_context(|| format!("connecting to {}", target.endpoint))?;
    Ok(())
}

#[test]
fn moto_target() -> Result<()> {
    check_target(moto(), "REFUGIO_TEST_MOTO_ENDPOINT", S3Kind::Moto)
}

#[test]
fn garage_target() -> Result<()> {
    check_target(garage(), "REFUGIO_TEST_GARAGE_ENDPOINT", S3Kind::Garage)
}
