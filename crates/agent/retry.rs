//! The one retry layer: an operation that fails with a temporary error
//! (network or store trouble, a server restarting, a lock timeout) runs
//! again after a backoff; anything else fails at once. The operations in
//! refugio-core make one attempt each and say whether their errors are
//! temporary; this decides from that.

use std::fmt;
use std::future::Future;

use anyhow::Result;
use refugio_schedule::Backoff;
use tokio_util::sync::CancellationToken;

/// Runs `op` (given the attempt number, from 1) until it succeeds, fails
/// permanently, or has had `backoff.attempts` tries. Each failed attempt
/// but the last is logged with its whole chain (the last one is returned,
/// to be reported once by the caller).
pub async fn retry<T, F, Fut>(backoff: &Backoff, cancel: &CancellationToken, mut op: F) -> Result<T>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    refugio_schedule::retry(
        backoff,
        |e: &Chained| is_temporary(&e.0),
        cancel,
        |attempt| {
            let attempt = op(attempt);
            async move { attempt.await.map_err(Chained) }
        },
    )
    .await
    .map_err(|e| e.0)
}

/// An error whose `Display` is its chain, each cause once: what the retry
/// log line shows (an `anyhow::Error`'s `Display` is its outermost message
/// only, which may not say why).
struct Chained(anyhow::Error);

impl fmt::Display for Chained {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::output::error_chain(&self.0))
    }
}

/// Temporary: network and store trouble, a server restarting, a lock
/// timeout. Permanent: everything else (auth, missing binary, bad config,
/// failed checks). Any cause in the chain that says "temporary" decides.
pub fn is_temporary(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        if let Some(core) = c.downcast_ref::<refugio_core::Error>() {
            return core.is_temporary();
        }
        if let Some(s) = c.downcast_ref::<refugio_store::Error>() {
            return s.is_temporary();
        }
        if let Some(d) = c.downcast_ref::<refugio_dump::Error>() {
            return d.is_temporary();
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return refugio_core::error::io_temporary(io);
        }
        if let Some(db) = c.downcast_ref::<sqlx::Error>() {
            return match db {
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => true,
                // 57P03 cannot_connect_now (starting up), 57P01 admin_shutdown.
                sqlx::Error::Database(d) => {
                    matches!(d.code().as_deref(), Some("57P03" | "57P01" | "53300"))
                }
                _ => false,
            };
        }
        false
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::anyhow;

    #[test]
    fn temporary_errors() {
        let store = refugio_store::Error::S3 {
            op: "PutObject",
            store: "s3://b".into(),
            key: "k".into(),
            message: "SlowDown".into(),
            temporary: true,
        };
        assert!(is_temporary(&anyhow::Error::from(store).context("backup")));
        assert!(!is_temporary(&anyhow!("pg_dump 15 cannot dump server 16")));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(is_temporary(&anyhow::Error::from(refused)));
    }
}
