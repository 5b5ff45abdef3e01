//! The S3 test servers started by `scripts/services start` (moto and Garage,
//! on 127.0.0.1), found through the `REFUGIO_TEST_*` variables it writes to
//! `.test-services/env`, plus small helpers for S3 tests.

use std::net::{Ipv4Addr, TcpListener};

use anyhow::{anyhow, Result};
use rand::Rng;

/// Which S3 implementation a target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3Kind {
    /// moto's server mode: permissive, accepts any keys.
    Moto,
    /// Garage, single node: checks signatures, region `garage`.
    Garage,
}

/// Where a test S3 server is and how to reach it. Use path-style addressing.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Target {
    /// Which server this is.
    pub kind: S3Kind,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// Signing region.
    pub region: String,
    /// A bucket that exists; tests share it, so use [`unique_prefix`].
    pub bucket: String,
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
}

impl std::fmt::Debug for S3Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Target")
            .field("kind", &self.kind)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

const MOTO_MISSING: &str = "moto is not running: start the test services with \
     `scripts/services start` and `source .test-services/env`, or run `scripts/test`";
const GARAGE_MISSING: &str = "Garage is not running: start the test services with \
     `scripts/services start` and `source .test-services/env`, or run `scripts/test`";

/// The moto server: `REFUGIO_TEST_MOTO_ENDPOINT` and `REFUGIO_TEST_MOTO_BUCKET`
/// (required), `REFUGIO_TEST_MOTO_REGION` (default `us-east-1`),
/// `REFUGIO_TEST_MOTO_ACCESS_KEY` / `_SECRET_KEY` (default `testing`; moto
/// accepts any).
pub fn moto() -> Result<S3Target> {
    Ok(S3Target {
        kind: S3Kind::Moto,
        endpoint: required("REFUGIO_TEST_MOTO_ENDPOINT", MOTO_MISSING)?,
        bucket: required("REFUGIO_TEST_MOTO_BUCKET", MOTO_MISSING)?,
        region: optional("REFUGIO_TEST_MOTO_REGION", "us-east-1"),
        access_key: optional("REFUGIO_TEST_MOTO_ACCESS_KEY", "testing"),
        secret_key: optional("REFUGIO_TEST_MOTO_SECRET_KEY", "testing"),
    })
}

/// The Garage server: `REFUGIO_TEST_GARAGE_ENDPOINT`, `_BUCKET`,
/// `_ACCESS_KEY`, `_SECRET_KEY` (all required) and `_REGION` (default `garage`).
pub fn garage() -> Result<S3Target> {
    Ok(S3Target {
        kind: S3Kind::Garage,
        endpoint: required("REFUGIO_TEST_GARAGE_ENDPOINT", GARAGE_MISSING)?,
        bucket: required("REFUGIO_TEST_GARAGE_BUCKET", GARAGE_MISSING)?,
        access_key: required("REFUGIO_TEST_GARAGE_ACCESS_KEY", GARAGE_MISSING)?,
        secret_key: required("REFUGIO_TEST_GARAGE_SECRET_KEY", GARAGE_MISSING)?,
        region: optional("REFUGIO_TEST_GARAGE_REGION", "garage"),
    })
}

fn required(var: &str, missing: &str) -> Result<String> {
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => Ok(value),
        _ => Err(anyhow!("{missing} ({var} is not set)")),
    }
}

fn optional(var: &str, default: &str) -> String {
    std::env::var(var)
        .ok()
        .filter(|value| !value.is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// A fresh key prefix for one test, `t-<name>-<16 hex digits>` (no trailing
/// slash), with `name` reduced to lowercase ASCII letters, digits and `-`.
pub fn unique_prefix(name: &str) -> String {
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let suffix: u64 = rand::thread_rng().gen();
    format!("t-{name}-{suffix:016x}")
}

/// A 127.0.0.1 port with nothing listening on it (bound to port 0, then
/// released), for "server unreachable" tests. Another process could take it
/// in between, which is unlikely enough for tests.
pub fn dead_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or_else(|err| panic!("binding 127.0.0.1:0: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test that needs a service it cannot find fails saying how to
    /// start it, naming the variable.
    #[test]
    fn a_missing_service_names_the_variable_and_how_to_start_it() {
        let var = "REFUGIO_TEST_NEVER_SET_BY_ANYONE_ENDPOINT";
        assert!(std::env::var_os(var).is_none());
        let msg = required(var, MOTO_MISSING)
            .expect_err("an unset variable")
            .to_string();
        assert!(
            msg.contains("scripts/services start") && msg.contains(var),
            "{msg}"
        );
    }
}
