//! Downloads that survive a cut: [`Resuming`] reads a GetObject body and,
//! when the body breaks off (a reset connection, a stall caught by the
//! SDK's stalled-stream protection, a body shorter than its length), asks
//! again for the rest with a ranged GET (`Range: bytes=N-`) pinned to the
//! object's ETag (`If-Match`), so that the bytes go on from where they
//! stopped, from the same object. The caller's digest still covers every
//! byte end to end: a resume that went wrong is a digest mismatch, never a
//! silent success.

use std::io;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::operation::get_object::{GetObjectError, GetObjectOutput};
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::io::{AsyncRead, ReadBuf};

use super::client::{is_missing_object, S3Store};
use crate::error::{Error, Result};
use crate::ByteReader;

impl S3Store {
    /// GetObject, resumed where a cut body stopped (at most
    /// `attempts - 1` times per download).
    pub(super) async fn get_impl(&self, key: &str) -> Result<ByteReader> {
        let output = self.get_from(key, 0, None).await?;
        let etag = output.e_tag().map(str::to_string);
        let size = output.content_length().map(|l| l.max(0) as u64);
        Ok(Box::pin(Resuming {
            store: self.clone(),
            key: key.to_string(),
            etag,
            size,
            offset: 0,
            resumes: 0,
            state: State::Reading(Box::pin(output.body.into_async_read())),
        }))
    }

    /// GetObject from byte `offset` on (a ranged GET when `offset > 0`,
    /// pinned to `etag` when given).
    async fn get_from(
        &self,
        key: &str,
        offset: u64,
        etag: Option<&str>,
    ) -> Result<GetObjectOutput> {
        let mut request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full_key(key));
        if offset > 0 {
            request = request
                .range(format!("bytes={offset}-"))
                .set_if_match(etag.map(str::to_string));
        }
        let output = match request.send().await {
            Ok(output) => output,
            Err(e) if is_missing_object(&e) => return Err(self.context.not_found(key)),
            Err(e) if e.code() == Some("InvalidObjectState") => {
                let class = match e.as_service_error() {
                    Some(GetObjectError::InvalidObjectState(state)) => {
                        state.storage_class().map(|c| c.as_str().to_string())
                    }
                    _ => None,
                };
                return Err(self.archived(key, class).await);
            }
            Err(e) => return Err(self.context.error("GetObject", key, &e)),
        };
        if offset > 0 {
            let expected = format!("bytes {offset}-");
            let range = output.content_range().unwrap_or_default();
            if !range.starts_with(&expected) {
                return Err(Error::S3 {
                    op: "GetObject",
                    store: self.context.store.clone(),
                    key: key.to_string(),
                    message: format!(
                        "resuming at byte {offset}: the store answered Content-Range {range:?} instead of {expected}…"
                    ),
                    temporary: false,
                });
            }
        }
        Ok(output)
    }
}

impl S3Store {
    /// The error for an object S3 will not serve before a restore, naming
    /// its storage class (from the error, else from a HeadObject).
    async fn archived(&self, key: &str, class: Option<String>) -> Error {
        let full_key = self.full_key(key);
        let class = match class {
            Some(class) => class,
            None => self
                .client
                .head_object()
                .bucket(&self.bucket)
                .key(&full_key)
                .send()
                .await
                .ok()
                .and_then(|h| h.storage_class().map(|c| c.as_str().to_string()))
                .unwrap_or_else(|| "an archive class".into()),
        };
        Error::Archived {
            store: self.context.store.clone(),
            key: key.to_string(),
            storage_class: class,
            restore_command: format!(
                "aws s3api restore-object --bucket {} --key {full_key} --restore-request Days=7",
                self.bucket
            ),
        }
    }
}

enum State {
    Reading(ByteReader),
    Reopening(BoxFuture<'static, Result<ByteReader>>),
}

/// A GetObject body that resumes after a cut; see the module.
struct Resuming {
    store: S3Store,
    key: String,
    etag: Option<String>,
    /// The object's length, from the first response.
    size: Option<u64>,
    /// Bytes delivered so far.
    offset: u64,
    /// Resumes so far.
    resumes: u32,
    state: State,
}

impl Resuming {
    /// Starts a ranged GET for the rest, or gives `cause` back when the
    /// download has been resumed as often as the settings allow.
    fn resume(&mut self, cause: io::Error) -> io::Result<()> {
        if self.resumes + 1 >= self.store.retries.attempts {
            return Err(cause);
        }
        self.resumes += 1;
        let (store, key, etag, offset, resumes) = (
            self.store.clone(),
            self.key.clone(),
            self.etag.clone(),
            self.offset,
            self.resumes,
        );
        tracing::warn!(store = %store.context.store, key = %key, offset, resume = resumes,
            error = %refugio_print::chain(&cause),
            "store-retry: a download was cut; resuming it from where it stopped");
        if let Some(hook) = &store.on_retry {
            hook("GetObject");
        }
        let backoff = Duration::from_millis(200u64 << (resumes - 1).min(5));
        self.state = State::Reopening(
            async move {
                tokio::time::sleep(backoff).await;
                let output = store.get_from(&key, offset, etag.as_deref()).await?;
                Ok(Box::pin(output.body.into_async_read()) as ByteReader)
            }
            .boxed(),
        );
        Ok(())
    }
}

impl AsyncRead for Resuming {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Reading(body) => {
                    let before = buf.filled().len();
                    match body.as_mut().poll_read(cx, buf) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(())) => {
                            let read = (buf.filled().len() - before) as u64;
                            this.offset += read;
                            let short = this.size.is_some_and(|size| this.offset < size);
                            if read > 0 || !short {
                                return Poll::Ready(Ok(()));
                            }
                            let cause = io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                format!(
                                    "the body ended at byte {} of {}",
                                    this.offset,
                                    this.size.unwrap_or_default()
                                ),
                            );
                            if let Err(e) = this.resume(cause) {
                                return Poll::Ready(Err(e));
                            }
                        }
                        Poll::Ready(Err(cause)) => {
                            // Bytes of this poll that were read before the
                            // error (none, for the SDK's body) count too.
                            this.offset += (buf.filled().len() - before) as u64;
                            if let Err(e) = this.resume(cause) {
                                return Poll::Ready(Err(e));
                            }
                        }
                    }
                }
                State::Reopening(future) => match future.poll_unpin(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(body)) => this.state = State::Reading(body),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
                },
            }
        }
    }
}
