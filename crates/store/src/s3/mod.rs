//! The S3 backend, on aws-sdk-s3: AWS itself and S3-compatible servers
//! (MinIO, Garage, moto) through a custom endpoint.
//!
//! Checksums: with [`ChecksumCalculation::WhenSupported`] (the default)
//! multipart uploads declare CRC32 on `CreateMultipartUpload` and on every
//! `UploadPart`, and carry each part's returned CRC32 into
//! `CompleteMultipartUpload`. Leaving the algorithm undeclared while the SDK
//! adds per-part CRC32s anyway makes Garage (2.5) reject the completion with
//! `InvalidDigest`. With `WhenRequired` no checksum is declared or sent.

mod client;
mod download;
mod endpoint;
mod list;
mod lock;
mod multipart;
mod paced;
mod retries;

use crate::PutOptions;
use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use futures::stream::BoxStream;

use crate::error::{Error, Result};
use crate::lock::{LockProbe, Retention};
use crate::{ByteReader, MultipartUpload, ObjectMeta, ObjectStore, PendingUpload};
use client::{is_missing_object, to_chrono};

pub use client::{needs_thaw, ChecksumCalculation, S3Options, S3Store};
pub use endpoint::plaintext_remote;
pub use retries::{
    Retries, RetryHook, DEFAULT_ATTEMPTS, DEFAULT_CONNECT_TIMEOUT, DEFAULT_OPERATION_TIMEOUT,
};

#[async_trait]
impl ObjectStore for S3Store {
    fn describe(&self) -> String {
        self.context.store.clone()
    }

    async fn put(&self, key: &str, data: Bytes, opts: PutOptions<'_>) -> Result<()> {
        if let Some(retention) = opts.retention {
            return self.put_retained_impl(key, data, retention).await;
        }
        if opts.artifact {
            return self.put_artifact(key, data).await;
        }
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .content_length(data.len() as i64)
            .body(ByteStream::from(data))
            .set_server_side_encryption(self.sse.clone())
            .set_ssekms_key_id(self.sse_kms_key_id.clone())
            .send()
            .await
            .map_err(|e| self.context.error("PutObject", key, &e))?;
        Ok(())
    }

    async fn put_multipart(&self, key: &str) -> Result<Box<dyn MultipartUpload>> {
        self.put_multipart_impl(key).await
    }

    /// GetObject; a body cut mid-way is resumed with ranged GETs.
    async fn get(&self, key: &str) -> Result<ByteReader> {
        self.get_impl(key).await
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await
        {
            Ok(output) => Ok(Some(ObjectMeta {
                key: key.to_string(),
                size: output.content_length().unwrap_or(0).max(0) as u64,
                last_modified: to_chrono(output.last_modified()),
            })),
            Err(e) if is_missing_object(&e) => Ok(None),
            Err(e) => Err(self.context.error("HeadObject", key, &e)),
        }
    }

    /// ListObjectsV2, one request per page as the stream is polled.
    fn list(&self, prefix: &str) -> BoxStream<'_, Result<ObjectMeta>> {
        self.list_impl(prefix)
    }

    async fn list_prefixes(&self, prefix: &str) -> Result<Vec<String>> {
        self.list_prefixes_impl(prefix).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.delete_impl(key).await
    }

    /// DeleteObjects, 1,000 keys a request (per-version deletes in a
    /// versioned bucket).
    async fn delete_many(&self, keys: &[String]) -> Result<Vec<(String, Error)>> {
        self.delete_many_impl(keys).await
    }

    async fn set_retention(&self, key: &str, retention: &Retention) -> Result<()> {
        self.set_retention_impl(key, retention).await
    }

    /// From HeadObject's lock headers (AWS sends them to callers allowed
    /// `s3:GetObjectRetention`; moto 5.2 has no GetObjectRetention).
    async fn retention(&self, key: &str) -> Result<Option<Retention>> {
        self.retention_impl(key).await
    }

    async fn probe_object_lock(&self, probe_prefix: &str) -> Result<LockProbe> {
        self.probe_object_lock_impl(probe_prefix).await
    }

    async fn list_multipart_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>> {
        self.list_multipart_uploads_impl(prefix).await
    }

    async fn abort_multipart(&self, upload: &PendingUpload) -> Result<()> {
        self.abort_multipart_impl(upload).await
    }
}

impl S3Store {
    /// PutObject in the configured storage class, paced under the upload
    /// rate limit.
    async fn put_artifact(&self, key: &str, data: Bytes) -> Result<()> {
        let checksum = (self.limiter.is_some()
            && self.checksums == ChecksumCalculation::WhenSupported)
            .then(|| paced::crc32(&data));
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .content_length(data.len() as i64)
            .set_checksum_crc32(checksum)
            .body(paced::body(data, self.limiter.as_ref()))
            .set_storage_class(self.storage_class.clone())
            .set_server_side_encryption(self.sse.clone())
            .set_ssekms_key_id(self.sse_kms_key_id.clone())
            .send()
            .await
            .map_err(|e| self.context.error("PutObject", key, &e))?;
        Ok(())
    }
}
