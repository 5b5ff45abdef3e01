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
/// failed checks). Any cause in the chain that says "temporary" decides
/// (core's one classifier, [`refugio_core::error::temporary_cause`]).
pub fn is_temporary(e: &anyhow::Error) -> bool {
    e.chain().any(refugio_core::error::temporary_cause)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::anyhow;

    fn s3(temporary: bool) -> refugio_store::Error {
        refugio_store::Error::S3 {
            op: "PutObject",
            store: "s3://b".into(),
            key: "k".into(),
            message: if temporary {
                "SlowDown"
            } else {
                "AccessDenied"
            }
            .into(),
            temporary,
        }
    }

    /// The verdict comes from the cause, however deep in the chain and
    /// whichever crate's error wraps it; the same kind of error is
    /// temporary or permanent by what it says.
    #[test]
    fn temporary_errors() {
        for (temporary, expected) in [(true, true), (false, false)] {
            // Bare, under anyhow context, and inside core's commit error.
            let bare = anyhow::Error::from(s3(temporary));
            let context = anyhow::Error::from(s3(temporary))
                .context("uploading")
                .context("backup of job a");
            let wrapped = anyhow::Error::from(refugio_core::Error::Commit {
                job: "a".into(),
                source: Box::new(s3(temporary)),
            })
            .context("backup");
            for e in [bare, context, wrapped] {
                assert_eq!(is_temporary(&e), expected, "{e:#}");
            }
        }
        assert!(!is_temporary(&anyhow!("pg_dump 15 cannot dump server 16")));
        for (kind, expected) in [
            (std::io::ErrorKind::ConnectionRefused, true),
            (std::io::ErrorKind::ConnectionReset, true),
            (std::io::ErrorKind::PermissionDenied, false),
            (std::io::ErrorKind::NotFound, false),
        ] {
            let e = anyhow::Error::from(std::io::Error::from(kind)).context("connecting");
            assert_eq!(is_temporary(&e), expected, "{kind:?}");
        }
        assert!(is_temporary(&anyhow::Error::from(
            sqlx::Error::PoolTimedOut
        )));
        assert!(!is_temporary(&anyhow::Error::from(
            sqlx::Error::RowNotFound
        )));
    }
}
