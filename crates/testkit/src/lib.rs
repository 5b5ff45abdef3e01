//! Test-only helpers for refugio's crate and end-to-end tests: throwaway
//! PostgreSQL clusters (one per test, each in its own short directory under
//! `/tmp`, stopped and removed on drop even when the test panics), sample and
//! bulk data to back up, the S3 test servers (moto, Garage) that
//! `scripts/services` starts, a proxy that makes a store slow on purpose
//! ([`SlowProxy`]), for tests that need an operation to take at least some
//! time, and a scripted fault proxy ([`FaultProxy`]) that answers chosen S3
//! requests with errors, resets, stalls or throttles them, refuses
//! connections, and counts what it did, for the fault-injection tests.
//! For TLS tests: a throwaway CA and certificates made with openssl
//! ([`Ca`]), clusters that also listen on 127.0.0.1 with `ssl = on`
//! ([`Cluster::start_tls`]), and an HTTPS front for the S3 servers
//! ([`TlsProxy`]). A TCP front for a cluster that records what clients send
//! ([`PgFront`]), to see which password really went where. Nothing here is
//! meant for production code.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use refugio_testkit::{load_sample, Cluster};
//!
//! let cluster = Cluster::start(16).await?;
//! cluster.create_database("app").await?;
//! let tables = load_sample(&cluster, "app").await?;
//! // postgres://postgres@localhost:5432/app?host=/tmp/refugio-pg-…
//! let url = cluster.url("app");
//! let trips = cluster.psql("app", "SELECT count(*) FROM trips").await?;
//! assert_eq!(trips, "120");
//! # let _ = (tables, url);
//! cluster.stop().await?;
//! # Ok(())
//! # }
//! ```
//!
//! PostgreSQL binaries, moto and Garage are installed by
//! `scripts/install-test-deps`; `scripts/services start` runs the S3 servers
//! and writes `.test-services/env` (source it before `cargo test`), and
//! `scripts/test` does all of it.

pub mod cluster;
pub mod fault_proxy;
pub mod pg_front;
pub mod proxy;
pub mod s3;
pub mod sample;
mod standby;
mod sweep;
pub mod tls;
pub mod tls_proxy;

pub use cluster::{pg_bindir, Cluster, PASSWORD_USER, PASSWORD_USER_PASSWORD};
pub use fault_proxy::{FaultProxy, Rule, RuleId, RuleStats};
pub use pg_front::PgFront;
pub use proxy::{SlowProxy, Slowdown};
pub use s3::{dead_port, garage, moto, unique_prefix, S3Kind, S3Target};
pub use sample::{load_bulk, load_sample};
pub use tls::{Ca, CertPair, ServerTls};
pub use tls_proxy::TlsProxy;
