//! How S3 requests survive transient trouble: the SDK's retry and timeout
//! settings ([`Retries`], set explicitly rather than left to the SDK's
//! defaults) and an interceptor that logs and counts every retried attempt
//! ([`RetryHook`]).
//!
//! The SDK retries a request on throttling, 5xx answers, timeouts and I/O
//! errors (a reset connection), with exponential backoff and jitter. An
//! upload part's body is an in-memory `Bytes`, so a retry resends the same
//! buffer: a part is kept until S3 acknowledges it. Downloads cut mid-body
//! are resumed by `download.rs`, which counts its resumes the same way.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::config::interceptors::{
    BeforeTransmitInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_s3::error::BoxError;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::retries::RequestAttempts;
use aws_smithy_types::config_bag::{Storable, StoreReplace};

/// Called once per retried request (or resumed download) with the S3
/// operation's name (`UploadPart`, `GetObject`, …): the agent counts them
/// in `refugio_store_retries_total{operation}`.
pub type RetryHook = Arc<dyn Fn(&str) + Send + Sync>;

/// Attempts and timeouts of every S3 request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retries {
    /// Attempts per request, the first included (so 5 = up to 4 retries);
    /// also the number of times one download may be resumed. At least 1.
    pub attempts: u32,
    /// Longest wait for a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Longest one attempt of a request may take, up to its response's
    /// headers (an upload part: sending the whole part); a stalled attempt
    /// is abandoned and retried. A download's body is watched instead by
    /// the SDK's stalled-stream protection (no byte for 5 s) and resumed.
    pub operation_timeout: Duration,
}

/// Default [`Retries::attempts`].
pub const DEFAULT_ATTEMPTS: u32 = 5;
/// Default [`Retries::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default [`Retries::operation_timeout`].
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(120);

impl Default for Retries {
    fn default() -> Self {
        Retries {
            attempts: DEFAULT_ATTEMPTS,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            operation_timeout: DEFAULT_OPERATION_TIMEOUT,
        }
    }
}

/// Logs every retried attempt (operation, key path, attempt, what went
/// wrong with the previous one) and tells the hook.
pub(super) struct RetryObserver {
    pub(super) hook: Option<RetryHook>,
    pub(super) store: String,
}

impl fmt::Debug for RetryObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryObserver")
            .field("hook", &self.hook.is_some())
            .field("store", &self.store)
            .finish()
    }
}

/// What went wrong with the previous attempt, kept for the next one's log.
#[derive(Debug, Clone)]
struct PreviousFailure(String);

impl Storable for PreviousFailure {
    type Storer = StoreReplace<Self>;
}

impl Intercept for RetryObserver {
    fn name(&self) -> &'static str {
        "refugio-retry-observer"
    }

    fn read_before_attempt(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let attempt = cfg.load::<RequestAttempts>().map_or(1, |a| a.attempts());
        if attempt <= 1 {
            return Ok(());
        }
        let operation = cfg.load::<Metadata>().map_or("unknown", |m| m.name());
        let path = context
            .request()
            .uri()
            .split('?')
            .next()
            .unwrap_or_default();
        let previous = cfg
            .load::<PreviousFailure>()
            .map_or("unknown", |p| p.0.as_str());
        tracing::warn!(store = %self.store, operation, path, attempt, previous = %previous,
            "store-retry: retrying a failed request");
        if let Some(hook) = &self.hook {
            hook(operation);
        }
        Ok(())
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(Err(error)) = context.output_or_error() {
            let status = context.response().map(|r| r.status().as_u16());
            let text = match status {
                Some(status) => format!("HTTP {status}"),
                None => refugio_print::chain(error),
            };
            cfg.interceptor_state().store_put(PreviousFailure(text));
        }
        Ok(())
    }
}
