//! Request bodies paced by `upload_rate_limit` ([`crate::rate`]): the body
//! hands hyper one chunk at a time, each at the time the shared limiter
//! reserved for it, so the bytes on the wire follow the limit whatever the
//! number of parts in flight. A retried request rebuilds the body from the
//! same buffer (and is paced again: retried bytes count too).
//!
//! A paced body is a stream to the SDK, which would then send a CRC32 as an
//! aws-chunked trailer; not every store takes that. So the CRC32 is worked
//! out here and set as the `x-amz-checksum-crc32` header, as the SDK does
//! for an in-memory body.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_types::body::SdkBody;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::rate::RateLimiter;

/// `data` as a request body, paced by `limiter` when there is one.
pub(super) fn body(data: Bytes, limiter: Option<&Arc<RateLimiter>>) -> ByteStream {
    match limiter {
        None => ByteStream::from(data),
        Some(limiter) => {
            let limiter = Arc::clone(limiter);
            ByteStream::new(SdkBody::retryable(move || {
                SdkBody::from_body_1_x(PacedBody {
                    data: data.clone(),
                    limiter: Arc::clone(&limiter),
                    wait: None,
                })
            }))
        }
    }
}

/// The CRC32 of `data` as `x-amz-checksum-crc32` carries it (base64 of
/// the big-endian value).
pub(super) fn crc32(data: &[u8]) -> String {
    aws_smithy_types::base64::encode(crc32fast::hash(data).to_be_bytes())
}

struct PacedBody {
    /// What is left to send.
    data: Bytes,
    limiter: Arc<RateLimiter>,
    /// The next chunk's length and the wait for its reserved time.
    wait: Option<(usize, Pin<Box<Sleep>>)>,
}

impl http_body::Body for PacedBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        loop {
            if let Some((n, wait)) = this.wait.as_mut() {
                if wait.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let n = *n;
                this.wait = None;
                return Poll::Ready(Some(Ok(Frame::data(this.data.split_to(n)))));
            }
            if this.data.is_empty() {
                return Poll::Ready(None);
            }
            let n = this.data.len().min(this.limiter.chunk());
            let at = this.limiter.reserve(n);
            if at <= Instant::now() {
                return Poll::Ready(Some(Ok(Frame::data(this.data.split_to(n)))));
            }
            this.wait = Some((n, Box::pin(tokio::time::sleep_until(at))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;

    /// The body delivers every byte, in order, in chunks no larger than the
    /// limiter's, and takes as long as the limit says (paused clock).
    #[tokio::test(start_paused = true)]
    async fn a_paced_body_takes_its_time_and_keeps_every_byte() {
        let data: Bytes = (0..=255u8)
            .cycle()
            .take(300 * 1024)
            .collect::<Vec<_>>()
            .into();
        let limiter = RateLimiter::new(100 * 1024);
        let mut body = PacedBody {
            data: data.clone(),
            limiter: Arc::clone(&limiter),
            wait: None,
        };
        let started = Instant::now();
        let mut received = Vec::new();
        while let Some(frame) =
            futures::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            let chunk = frame.expect("infallible").into_data().expect("data frame");
            assert!(chunk.len() <= limiter.chunk());
            received.extend_from_slice(&chunk);
        }
        assert_eq!(received, data.to_vec());
        // 300 KiB at 100 KiB/s: the last chunk is reserved at 3 s minus one chunk.
        let took = started.elapsed().as_secs_f64();
        let last = limiter.chunk() as f64 / (100.0 * 1024.0);
        assert!((took - (3.0 - last)).abs() < 0.01, "took {took}");
        assert!(body.is_end_stream());
    }

    #[test]
    fn crc32_is_base64_big_endian() {
        // CRC32 of "123456789" is 0xCBF43926.
        assert_eq!(crc32(b"123456789"), "y/Q5Jg==");
    }
}
