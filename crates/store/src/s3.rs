//! The S3 backend, on aws-sdk-s3: AWS itself and S3-compatible servers
//! (MinIO, Garage, moto) through a custom endpoint.
//!
//! Checksums: with [`ChecksumCalculation::WhenSupported`] (the default)
//! multipart uploads declare CRC32 on `CreateMultipartUpload` and on every
//! `UploadPart`, and carry each part's returned CRC32 into
//! `CompleteMultipartUpload`. Leaving the algorithm undeclared while the SDK
//! adds per-part CRC32s anyway makes Garage (2.5) reject the completion with
//! `InvalidDigest`. With `WhenRequired` no checksum is declared or sent.

use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier,
    ObjectLockMode, ObjectLockRetention, ObjectLockRetentionMode, ServerSideEncryption,
};
use aws_sdk_s3::Client;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::stream::{self, BoxStream};
use futures::{FutureExt, StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::{Error, Result};
use crate::lock::{LockMode, LockProbe, Retention};
use crate::{ByteReader, MultipartUpload, ObjectMeta, ObjectStore, PendingUpload};

/// Region used when neither the options nor the AWS chain name one.
const DEFAULT_REGION: &str = "us-east-1";

/// Service error codes worth a retry whatever their HTTP status.
const TEMPORARY_CODES: &[&str] = &[
    "SlowDown",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
    "Throttling",
    "ThrottlingException",
    "OperationAborted",
];

/// Whether the store computes request checksums when the service supports
/// them, or only when an operation requires one. Maps to aws-sdk-s3's
/// `RequestChecksumCalculation` and `ResponseChecksumValidation`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ChecksumCalculation {
    /// The SDK default: CRC32 checksums on uploads (refugio declares the
    /// algorithm on multipart uploads), validation of downloads.
    #[default]
    WhenSupported,
    /// Only where an operation requires it; for S3-compatible servers that
    /// reject flexible checksums.
    WhenRequired,
}

/// How to reach S3. Every field's default fits AWS itself. `Debug` shows
/// the access key id but never the secret.
#[derive(Clone, Default)]
pub struct S3Options {
    /// Region; default: from the AWS chain (`AWS_REGION`, profile), else
    /// `us-east-1`.
    pub region: Option<String>,
    /// Custom endpoint URL (MinIO, Garage, moto); `None` = AWS.
    pub endpoint: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`), which most
    /// S3-compatible servers need; default false (virtual-hosted style).
    pub force_path_style: bool,
    /// Request checksums; default `WhenSupported`.
    pub checksum_calculation: ChecksumCalculation,
    /// `x-amz-server-side-encryption` value, e.g. `AES256` or `aws:kms`;
    /// default none (the bucket's default encryption applies).
    pub sse: Option<String>,
    /// KMS key for `aws:kms`; default none (the AWS-managed key).
    pub sse_kms_key_id: Option<String>,
    /// (access key id, secret access key), for tests; default `None` = the
    /// standard AWS credential chain (environment, profile, IMDS, …).
    pub static_credentials: Option<(String, String)>,
    /// Delete every version of an object instead of adding a delete marker.
    /// Set with object lock: its buckets are versioned, and only deleting a
    /// version frees space (or is refused while the version is locked).
    pub versioned_deletes: bool,
}

impl fmt::Debug for S3Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Options")
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("force_path_style", &self.force_path_style)
            .field("checksum_calculation", &self.checksum_calculation)
            .field("sse", &self.sse)
            .field("sse_kms_key_id", &self.sse_kms_key_id)
            .field(
                "static_credentials",
                &self
                    .static_credentials
                    .as_ref()
                    .map(|(id, _)| (id, "<redacted>")),
            )
            .finish()
    }
}

/// What errors need to name: the store and how it is reached.
#[derive(Debug)]
struct Context {
    /// `s3://bucket/prefix`.
    store: String,
    /// The endpoint URL, or "AWS S3 (<region>)".
    endpoint: String,
}

impl Context {
    fn error<E>(&self, op: &'static str, key: &str, err: &SdkError<E>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let (message, temporary) = match err {
            SdkError::DispatchFailure(failure) => (
                format!("cannot connect to {}: {}", self.endpoint, chain(err)),
                failure.is_io() || failure.is_timeout() || failure.is_other(),
            ),
            SdkError::TimeoutError(_) => (
                format!("timed out talking to {}: {}", self.endpoint, chain(err)),
                true,
            ),
            SdkError::ConstructionFailure(_) => (chain(err), false),
            _ => {
                let status = err.raw_response().map(|r| r.status().as_u16());
                let code = err.code();
                let temporary = matches!(status, Some(s) if s >= 500 || s == 429 || s == 408)
                    || code.is_some_and(|c| TEMPORARY_CODES.contains(&c))
                    || matches!(err, SdkError::ResponseError(_));
                let status = status.map(|s| format!(" (HTTP {s})")).unwrap_or_default();
                let message = match (code, err.message()) {
                    (Some(code), Some(message)) => format!("{code}: {message}{status}"),
                    (Some(code), None) => format!("{code}{status}"),
                    _ => format!("{}{status}", chain(err)),
                };
                (message, temporary)
            }
        };
        Error::S3 {
            op,
            store: self.store.clone(),
            key: key.to_string(),
            message,
            temporary,
        }
    }

    fn not_found(&self, key: &str) -> Error {
        Error::NotFound {
            store: self.store.clone(),
            key: key.to_string(),
        }
    }
}

/// The error and its sources, `: `-separated. `DisplayErrorContext` would
/// also append the raw HTTP response (headers and body) of service errors.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some layers repeat their source's text; keep it once.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Whether an error says the object does not exist (not the bucket).
fn is_missing_object<E: ProvideErrorMetadata>(err: &SdkError<E>) -> bool {
    if !matches!(err, SdkError::ServiceError(_)) {
        return false;
    }
    match err.code() {
        Some("NoSuchKey" | "NotFound") => true,
        Some("NoSuchBucket") => false,
        _ => err
            .raw_response()
            .is_some_and(|r| r.status().as_u16() == 404),
    }
}

fn to_smithy(time: DateTime<Utc>) -> aws_sdk_s3::primitives::DateTime {
    aws_sdk_s3::primitives::DateTime::from_secs(time.timestamp())
}

fn to_chrono(time: Option<&aws_sdk_s3::primitives::DateTime>) -> Option<DateTime<Utc>> {
    time.and_then(|t| DateTime::from_timestamp(t.secs(), t.subsec_nanos()))
}

/// An S3 bucket, optionally under a key prefix.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    /// Without leading or trailing `/`; empty for the bucket's root.
    prefix: String,
    checksums: ChecksumCalculation,
    sse: Option<ServerSideEncryption>,
    sse_kms_key_id: Option<String>,
    versioned_deletes: bool,
    context: Arc<Context>,
}

impl S3Store {
    /// Builds the client from aws-config's defaults and `options`. Does not
    /// contact S3 (nor, when `options` name the region and credentials, any
    /// AWS metadata service).
    pub async fn new(bucket: &str, prefix: &str, options: &S3Options) -> Result<Self> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = &options.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some((id, secret)) = &options.static_credentials {
            loader = loader.credentials_provider(Credentials::new(
                id,
                secret,
                None,
                None,
                "refugio-static",
            ));
        }
        let shared = loader.load().await;
        let mut config = aws_sdk_s3::config::Builder::from(&shared);
        let region = match shared.region() {
            Some(region) => region.clone(),
            None => {
                let region = Region::new(DEFAULT_REGION);
                config = config.region(region.clone());
                region
            }
        };
        if let Some(endpoint) = &options.endpoint {
            config = config.endpoint_url(endpoint);
        }
        let (request, response) = match options.checksum_calculation {
            ChecksumCalculation::WhenSupported => (
                RequestChecksumCalculation::WhenSupported,
                ResponseChecksumValidation::WhenSupported,
            ),
            ChecksumCalculation::WhenRequired => (
                RequestChecksumCalculation::WhenRequired,
                ResponseChecksumValidation::WhenRequired,
            ),
        };
        let config = config
            .force_path_style(options.force_path_style)
            .request_checksum_calculation(request)
            .response_checksum_validation(response)
            .build();
        let prefix = prefix.trim_matches('/').to_string();
        let store = if prefix.is_empty() {
            format!("s3://{bucket}")
        } else {
            format!("s3://{bucket}/{prefix}")
        };
        let endpoint = options
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("AWS S3 ({region})"));
        Ok(S3Store {
            client: Client::from_conf(config),
            bucket: bucket.to_string(),
            prefix,
            checksums: options.checksum_calculation,
            sse: options.sse.as_deref().map(ServerSideEncryption::from),
            sse_kms_key_id: options.sse_kms_key_id.clone(),
            versioned_deletes: options.versioned_deletes,
            context: Arc::new(Context { store, endpoint }),
        })
    }

    /// The SDK client, for what the trait does not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The full S3 key of `key`.
    pub fn full_key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    /// Version ids (and delete markers) of exactly `key`.
    async fn versions(&self, key: &str) -> Result<Vec<String>> {
        let full = self.full_key(key);
        let mut ids = Vec::new();
        let mut markers: (Option<String>, Option<String>) = (None, None);
        loop {
            let page = self
                .client
                .list_object_versions()
                .bucket(&self.bucket)
                .prefix(&full)
                .set_key_marker(markers.0.take())
                .set_version_id_marker(markers.1.take())
                .send()
                .await
                .map_err(|e| self.context.error("ListObjectVersions", key, &e))?;
            ids.extend(
                page.versions()
                    .iter()
                    .filter(|v| v.key() == Some(full.as_str()))
                    .filter_map(|v| v.version_id().map(str::to_string)),
            );
            ids.extend(
                page.delete_markers()
                    .iter()
                    .filter(|v| v.key() == Some(full.as_str()))
                    .filter_map(|v| v.version_id().map(str::to_string)),
            );
            if page.is_truncated() != Some(true) {
                break;
            }
            markers = (
                page.next_key_marker().map(str::to_string),
                page.next_version_id_marker().map(str::to_string),
            );
            if markers.0.is_none() {
                break;
            }
        }
        Ok(ids)
    }

    /// Deletes every version of `key`; a locked version makes it
    /// `Error::Locked` (with the date when the store tells it).
    async fn delete_versions(&self, key: &str) -> Result<()> {
        for version in self.versions(key).await? {
            let r = self
                .client
                .delete_object()
                .bucket(&self.bucket)
                .key(self.full_key(key))
                .version_id(&version)
                .send()
                .await;
            match r {
                Ok(_) => {}
                Err(e) if is_missing_object(&e) => {}
                Err(e) if e.code() == Some("AccessDenied") => {
                    let until = self.retention(key).await.ok().flatten().map(|r| r.until);
                    return Err(Error::Locked {
                        store: self.context.store.clone(),
                        key: key.to_string(),
                        until,
                    });
                }
                Err(e) => return Err(self.context.error("DeleteObject", key, &e)),
            }
        }
        Ok(())
    }

    /// `full` with the store prefix removed; `None` if outside it.
    fn relative<'a>(&self, full: &'a str) -> Option<&'a str> {
        if self.prefix.is_empty() {
            Some(full)
        } else {
            full.strip_prefix(self.prefix.as_str())?.strip_prefix('/')
        }
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    fn describe(&self) -> String {
        self.context.store.clone()
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
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
        let full_key = self.full_key(key);
        let algorithm = match self.checksums {
            ChecksumCalculation::WhenSupported => Some(ChecksumAlgorithm::Crc32),
            ChecksumCalculation::WhenRequired => None,
        };
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&full_key)
            .set_checksum_algorithm(algorithm.clone())
            .set_server_side_encryption(self.sse.clone())
            .set_ssekms_key_id(self.sse_kms_key_id.clone())
            .send()
            .await
            .map_err(|e| self.context.error("CreateMultipartUpload", key, &e))?;
        let upload_id = created.upload_id().ok_or_else(|| Error::S3 {
            op: "CreateMultipartUpload",
            store: self.context.store.clone(),
            key: key.to_string(),
            message: "the response carries no upload id".into(),
            temporary: false,
        })?;
        Ok(Box::new(S3Multipart {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            full_key,
            key: key.to_string(),
            upload_id: upload_id.to_string(),
            algorithm,
            context: Arc::clone(&self.context),
            next_part: 1,
            parts: Arc::new(Mutex::new(Vec::new())),
            tasks: TaskTracker::new(),
            cancel: CancellationToken::new(),
        }))
    }

    async fn get(&self, key: &str) -> Result<ByteReader> {
        let output = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await
            .map_err(|e| {
                if is_missing_object(&e) {
                    self.context.not_found(key)
                } else {
                    self.context.error("GetObject", key, &e)
                }
            })?;
        Ok(Box::pin(output.body.into_async_read()))
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
        let full_prefix = self.full_key(prefix);
        let prefix = prefix.to_string();
        // State: None = done, Some(token) = fetch the page after `token`
        // (None for the first page).
        stream::try_unfold(Some(None::<String>), move |state| {
            let full_prefix = full_prefix.clone();
            let prefix = prefix.clone();
            async move {
                let Some(token) = state else {
                    return Ok(None);
                };
                let page = self
                    .client
                    .list_objects_v2()
                    .bucket(&self.bucket)
                    .prefix(full_prefix)
                    .set_continuation_token(token)
                    .send()
                    .await
                    .map_err(|e| self.context.error("ListObjectsV2", &prefix, &e))?;
                let objects: Vec<Result<ObjectMeta>> = page
                    .contents()
                    .iter()
                    .filter_map(|object| {
                        let key = self.relative(object.key()?)?;
                        Some(Ok(ObjectMeta {
                            key: key.to_string(),
                            size: object.size().unwrap_or(0).max(0) as u64,
                            last_modified: to_chrono(object.last_modified()),
                        }))
                    })
                    .collect();
                let next = match (page.is_truncated(), page.next_continuation_token()) {
                    (Some(true), Some(token)) => Some(Some(token.to_string())),
                    (Some(true), None) => {
                        return Err(Error::S3 {
                            op: "ListObjectsV2",
                            store: self.context.store.clone(),
                            key: prefix,
                            message: "truncated listing without a continuation token".into(),
                            temporary: false,
                        })
                    }
                    _ => None,
                };
                Ok(Some((stream::iter(objects), next)))
            }
        })
        .try_flatten()
        .boxed()
    }

    async fn list_prefixes(&self, prefix: &str) -> Result<Vec<String>> {
        let mut prefixes = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(self.full_key(prefix))
                .delimiter("/")
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| self.context.error("ListObjectsV2", prefix, &e))?;
            prefixes.extend(
                page.common_prefixes()
                    .iter()
                    .filter_map(|p| self.relative(p.prefix()?))
                    .map(|p| p.trim_end_matches('/').to_string()),
            );
            match (page.is_truncated(), page.next_continuation_token()) {
                (Some(true), Some(next)) => token = Some(next.to_string()),
                _ => break,
            }
        }
        prefixes.sort();
        prefixes.dedup();
        Ok(prefixes)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        if self.versioned_deletes {
            return self.delete_versions(key).await;
        }
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_missing_object(&e) => Ok(()),
            Err(e) => Err(self.context.error("DeleteObject", key, &e)),
        }
    }

    /// DeleteObjects, 1,000 keys a request (per-version deletes in a
    /// versioned bucket).
    async fn delete_many(&self, keys: &[String]) -> Result<Vec<(String, Error)>> {
        if self.versioned_deletes {
            // `delete` goes by version: one key at a time.
            return Ok(crate::delete_each(self, keys).await);
        }
        let mut failures = Vec::new();
        for chunk in keys.chunks(1000) {
            let objects = chunk
                .iter()
                .map(|k| ObjectIdentifier::builder().key(self.full_key(k)).build())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| Error::Other(format!("DeleteObjects: {e}")))?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| Error::Other(format!("DeleteObjects: {e}")))?;
            let first = chunk.first().map(String::as_str).unwrap_or("");
            let out = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| self.context.error("DeleteObjects", first, &e))?;
            for err in out.errors() {
                let full = err.key().unwrap_or_default();
                let key = self.relative(full).unwrap_or(full).to_string();
                if err.code() == Some("NoSuchKey") {
                    continue;
                }
                let code = err.code().unwrap_or("error");
                let message = err.message().unwrap_or("");
                failures.push((
                    key.clone(),
                    Error::S3 {
                        op: "DeleteObjects",
                        store: self.context.store.clone(),
                        key,
                        message: format!("{code}: {message}"),
                        temporary: TEMPORARY_CODES.contains(&code),
                    },
                ));
            }
        }
        Ok(failures)
    }

    async fn put_retained(&self, key: &str, data: Bytes, retention: &Retention) -> Result<()> {
        // S3 wants a body checksum with lock headers, whatever the
        // configured checksum calculation.
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .content_length(data.len() as i64)
            .body(ByteStream::from(data))
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .object_lock_mode(match retention.mode {
                LockMode::Governance => ObjectLockMode::Governance,
                LockMode::Compliance => ObjectLockMode::Compliance,
            })
            .object_lock_retain_until_date(to_smithy(retention.until))
            .set_server_side_encryption(self.sse.clone())
            .set_ssekms_key_id(self.sse_kms_key_id.clone())
            .send()
            .await
            .map_err(|e| self.context.error("PutObject", key, &e))?;
        Ok(())
    }

    async fn set_retention(&self, key: &str, retention: &Retention) -> Result<()> {
        let lock = ObjectLockRetention::builder()
            .mode(match retention.mode {
                LockMode::Governance => ObjectLockRetentionMode::Governance,
                LockMode::Compliance => ObjectLockRetentionMode::Compliance,
            })
            .retain_until_date(to_smithy(retention.until))
            .build();
        self.client
            .put_object_retention()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .retention(lock)
            .send()
            .await
            .map_err(|e| self.context.error("PutObjectRetention", key, &e))?;
        Ok(())
    }

    /// From HeadObject's lock headers (AWS sends them to callers allowed
    /// `s3:GetObjectRetention`; moto 5.2 has no GetObjectRetention).
    async fn retention(&self, key: &str) -> Result<Option<Retention>> {
        let out = match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if is_missing_object(&e) => return Ok(None),
            Err(e) => return Err(self.context.error("HeadObject", key, &e)),
        };
        let mode = match out.object_lock_mode() {
            Some(ObjectLockMode::Compliance) => LockMode::Compliance,
            Some(ObjectLockMode::Governance) => LockMode::Governance,
            _ => return Ok(None),
        };
        Ok(to_chrono(out.object_lock_retain_until_date()).map(|until| Retention { mode, until }))
    }

    async fn probe_object_lock(&self, probe_prefix: &str) -> Result<LockProbe> {
        let bucket_key = "(bucket object lock configuration)";
        match self
            .client
            .get_object_lock_configuration()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(out) => {
                let enabled = out
                    .object_lock_configuration()
                    .and_then(|c| c.object_lock_enabled())
                    .is_some_and(|e| e.as_str() == "Enabled");
                if !enabled {
                    return Ok(LockProbe::NotEnforced(format!(
                        "bucket {} does not have object lock enabled (it can only be enabled when the bucket is created)",
                        self.bucket
                    )));
                }
            }
            Err(e) if matches!(e, SdkError::ServiceError(_)) => {
                let err = self
                    .context
                    .error("GetObjectLockConfiguration", bucket_key, &e);
                return Ok(LockProbe::NotEnforced(format!(
                    "the store does not report object lock for bucket {}: {err}",
                    self.bucket
                )));
            }
            Err(e) => {
                return Err(self
                    .context
                    .error("GetObjectLockConfiguration", bucket_key, &e))
            }
        }
        // The bucket says it locks; prove it. Governance mode so the probe
        // can be removed right after (with the bypass permission), and a
        // short date so it expires soon if that permission is missing.
        let key = format!(
            "{}/probe-{}",
            probe_prefix.trim_end_matches('/'),
            Utc::now().format("%Y%m%dT%H%M%S%.6fZ")
        );
        let retention = Retention {
            mode: LockMode::Governance,
            until: Utc::now() + chrono::Duration::minutes(2),
        };
        if let Err(e) = self
            .put_retained(
                &key,
                Bytes::from_static(b"refugio object lock probe\n"),
                &retention,
            )
            .await
        {
            return Ok(LockProbe::NotEnforced(format!(
                "writing a locked probe object failed: {e}"
            )));
        }
        let versions = match self.versions(&key).await {
            Ok(v) => v,
            Err(e) => {
                let _ = self.delete(&key).await;
                return Ok(LockProbe::NotEnforced(format!(
                    "listing the versions of the probe object {key} failed: {e}"
                )));
            }
        };
        let mut refused = !versions.is_empty();
        for version in &versions {
            let r = self
                .client
                .delete_object()
                .bucket(&self.bucket)
                .key(self.full_key(&key))
                .version_id(version)
                .send()
                .await;
            if r.is_ok() {
                refused = false;
            }
        }
        let verdict = if refused {
            LockProbe::Enforced
        } else {
            LockProbe::NotEnforced(format!(
                "the store accepted a locked object ({key}) and then let it be deleted: it does not enforce object lock"
            ))
        };
        // Clean up (governance bypass); a probe that stays expires in minutes.
        for version in &versions {
            let _ = self
                .client
                .delete_object()
                .bucket(&self.bucket)
                .key(self.full_key(&key))
                .version_id(version)
                .bypass_governance_retention(true)
                .send()
                .await;
        }
        Ok(verdict)
    }

    async fn list_multipart_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>> {
        let mut pending = Vec::new();
        let mut markers: (Option<String>, Option<String>) = (None, None);
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(self.full_key(prefix))
                .set_key_marker(markers.0.take())
                .set_upload_id_marker(markers.1.take())
                .send()
                .await
                .map_err(|e| self.context.error("ListMultipartUploads", prefix, &e))?;
            pending.extend(page.uploads().iter().filter_map(|upload| {
                Some(PendingUpload {
                    key: self.relative(upload.key()?)?.to_string(),
                    upload_id: upload.upload_id()?.to_string(),
                    initiated: to_chrono(upload.initiated()),
                })
            }));
            if page.is_truncated() != Some(true) {
                break;
            }
            markers = (
                page.next_key_marker().map(str::to_string),
                page.next_upload_id_marker().map(str::to_string),
            );
            if markers.0.is_none() {
                break;
            }
        }
        Ok(pending)
    }

    async fn abort_multipart(&self, upload: &PendingUpload) -> Result<()> {
        abort(
            &self.client,
            &self.bucket,
            &self.full_key(&upload.key),
            &upload.key,
            &upload.upload_id,
            &self.context,
        )
        .await
    }
}

async fn abort(
    client: &Client,
    bucket: &str,
    full_key: &str,
    key: &str,
    upload_id: &str,
    context: &Context,
) -> Result<()> {
    match client
        .abort_multipart_upload()
        .bucket(bucket)
        .key(full_key)
        .upload_id(upload_id)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        // Already completed or aborted.
        Err(e) if e.code() == Some("NoSuchUpload") => Ok(()),
        Err(e) => Err(context.error("AbortMultipartUpload", key, &e)),
    }
}

/// A multipart upload in progress. Each part is uploaded by its own task
/// (so parts progress while the caller reads the next one); the tasks are
/// tracked so that `abort` cancels and waits for them before aborting,
/// and no part lands after the abort.
struct S3Multipart {
    client: Client,
    bucket: String,
    full_key: String,
    key: String,
    upload_id: String,
    algorithm: Option<ChecksumAlgorithm>,
    context: Arc<Context>,
    next_part: i32,
    parts: Arc<Mutex<Vec<CompletedPart>>>,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

impl S3Multipart {
    fn upload_part(&mut self, data: Bytes) -> tokio::task::JoinHandle<Result<()>> {
        let part_number = self.next_part;
        self.next_part += 1;
        let request = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.full_key)
            .upload_id(&self.upload_id)
            .part_number(part_number)
            .content_length(data.len() as i64)
            .set_checksum_algorithm(self.algorithm.clone())
            .body(ByteStream::from(data));
        let (parts, context, key, cancel) = (
            Arc::clone(&self.parts),
            Arc::clone(&self.context),
            self.key.clone(),
            self.cancel.clone(),
        );
        self.tasks.spawn(async move {
            let output = tokio::select! {
                () = cancel.cancelled() => {
                    return Err(Error::Other(format!("upload of part {part_number} of {key} was cancelled")));
                }
                output = request.send() => output,
            };
            let output = output.map_err(|e| context.error("UploadPart", &key, &e))?;
            let part = CompletedPart::builder()
                .part_number(part_number)
                .set_e_tag(output.e_tag().map(str::to_string))
                .set_checksum_crc32(output.checksum_crc32().map(str::to_string))
                .build();
            parts.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(part);
            Ok(())
        })
    }

    async fn settle(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    async fn abort_inner(&self) -> Result<()> {
        abort(
            &self.client,
            &self.bucket,
            &self.full_key,
            &self.key,
            &self.upload_id,
            &self.context,
        )
        .await
    }
}

#[async_trait]
impl MultipartUpload for S3Multipart {
    fn put_part(&mut self, data: Bytes) -> BoxFuture<'static, Result<()>> {
        let task = self.upload_part(data);
        let key = self.key.clone();
        async move {
            task.await.unwrap_or_else(|join| {
                Err(Error::Other(format!(
                    "uploading a part of {key} failed: {join}"
                )))
            })
        }
        .boxed()
    }

    /// CompleteMultipartUpload with the parts in order. When it fails (or a
    /// part was missing) the upload is aborted, so that no parts linger.
    async fn complete(mut self: Box<Self>) -> Result<()> {
        if self.next_part == 1 {
            // S3 needs at least one part; an empty object has one empty part.
            self.upload_part(Bytes::new());
        }
        self.settle().await;
        let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let started = (self.next_part - 1) as usize;
        if parts.len() != started {
            let _ = self.abort_inner().await;
            return Err(Error::S3 {
                op: "CompleteMultipartUpload",
                store: self.context.store.clone(),
                key: self.key.clone(),
                message: format!("only {} of {started} parts were uploaded", parts.len()),
                temporary: false,
            });
        }
        parts.sort_by_key(|p| p.part_number());
        let completed = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.full_key)
            .upload_id(&self.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await;
        if let Err(e) = completed {
            let error = self.context.error("CompleteMultipartUpload", &self.key, &e);
            if let Err(abort_error) = self.abort_inner().await {
                tracing::warn!(key = %self.key, error = %abort_error, "aborting the failed upload failed too");
            }
            return Err(error);
        }
        Ok(())
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        self.cancel.cancel();
        self.settle().await;
        self.abort_inner().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_debug_hides_the_secret() {
        let options = S3Options {
            static_credentials: Some(("AKIDPUBLIC".into(), "very-secret-key".into())),
            ..S3Options::default()
        };
        let text = format!("{options:?}");
        assert!(text.contains("AKIDPUBLIC"), "{text}");
        assert!(!text.contains("very-secret-key"), "{text}");
    }
}
