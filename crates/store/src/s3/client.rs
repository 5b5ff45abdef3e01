//! The S3 store itself: its options, building the client, and what every
//! request shares (the error mapping with its [`Context`], time conversions,
//! aborting a multipart upload).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::types::{ServerSideEncryption, StorageClass};
use aws_sdk_s3::Client;
use chrono::{DateTime, Utc};

use super::endpoint;
use super::retries::{Retries, RetryHook, RetryObserver};
use crate::error::{Error, Result};
use crate::rate::RateLimiter;
use refugio_print::chain;

/// Region used when neither the options nor the AWS chain name one.
const DEFAULT_REGION: &str = "us-east-1";

/// Service error codes worth a retry whatever their HTTP status.
pub(super) const TEMPORARY_CODES: &[&str] = &[
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
    /// Attempts and timeouts of every request; default [`Retries::default`].
    pub retries: Retries,
    /// Told of every retried request and resumed download; default none.
    pub on_retry: Option<RetryHook>,
    /// `x-amz-storage-class` of every artifact (`STANDARD_IA`,
    /// `GLACIER_IR`, …); manifests, receipts, claims and pins stay in the
    /// bucket's default class. Default none (the bucket's default).
    pub storage_class: Option<String>,
    /// A PEM bundle of CA certificates trusted besides the system's, for
    /// an HTTPS endpoint with a private CA. Default none.
    pub ca_file: Option<PathBuf>,
    /// Artifact bytes sent per second at most, in total; [`crate::open`]
    /// applies it to directory stores too. Default none (no limit).
    pub upload_rate_limit: Option<u64>,
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
            .field("versioned_deletes", &self.versioned_deletes)
            .field("retries", &self.retries)
            .field("on_retry", &self.on_retry.is_some())
            .field("storage_class", &self.storage_class)
            .field("ca_file", &self.ca_file)
            .field("upload_rate_limit", &self.upload_rate_limit)
            .finish()
    }
}

/// What errors need to name: the store and how it is reached.
#[derive(Debug)]
pub(super) struct Context {
    /// `s3://bucket/prefix`.
    pub(super) store: String,
    /// The endpoint URL, or "AWS S3 (<region>)".
    pub(super) endpoint: String,
    pub(super) bucket: String,
    /// `ca_file`, for the message of a certificate that does not verify.
    pub(super) ca_file: Option<PathBuf>,
}

impl Context {
    pub(super) fn error<E>(&self, op: &'static str, key: &str, err: &SdkError<E>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let (message, temporary) = match err {
            SdkError::DispatchFailure(_) if endpoint::certificate_failure(err).is_some() => {
                let hint = match &self.ca_file {
                    Some(ca) => format!(
                        "it must chain to a CA in repository.ca_file {} or in the system's trust store",
                        ca.display()
                    ),
                    None => "for a private CA, set repository.ca_file to its PEM certificate bundle"
                        .to_string(),
                };
                (
                    format!(
                        "the TLS certificate of {} did not verify ({hint}): {}",
                        self.endpoint,
                        chain(err)
                    ),
                    false,
                )
            }
            SdkError::DispatchFailure(_) if endpoint::credentials_failure(err).is_some() => (
                format!(
                    "no usable S3 credentials for {} (the AWS chain: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE and the shared credentials file, which must be readable by this process's user; web identity, ECS/EC2 roles): {}",
                    self.endpoint,
                    chain(err)
                ),
                false,
            ),
            SdkError::DispatchFailure(failure) => (
                format!("cannot connect to {}: {}", self.endpoint, chain(err)),
                failure.is_io() || failure.is_timeout() || failure.is_other(),
            ),
            SdkError::TimeoutError(_) => (
                format!("timed out talking to {}: {}", self.endpoint, chain(err)),
                true,
            ),
            SdkError::ConstructionFailure(_) => (chain(err), false),
            _ if err.code() == Some("NoSuchBucket") => {
                return Error::NoSuchBucket {
                    store: self.store.clone(),
                    bucket: self.bucket.clone(),
                    endpoint: self.endpoint.clone(),
                }
            }
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

    pub(super) fn not_found(&self, key: &str) -> Error {
        Error::NotFound {
            store: self.store.clone(),
            key: key.to_string(),
        }
    }
}

/// Whether objects of storage class `class` must be restored (thawed) with
/// S3's RestoreObject before they can be read: S3 answers a GetObject on
/// them with `InvalidObjectState`.
pub fn needs_thaw(class: &str) -> bool {
    matches!(class, "GLACIER" | "DEEP_ARCHIVE")
}

/// Whether an error says the object does not exist (not the bucket).
pub(super) fn is_missing_object<E: ProvideErrorMetadata>(err: &SdkError<E>) -> bool {
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

pub(super) fn to_smithy(time: DateTime<Utc>) -> aws_sdk_s3::primitives::DateTime {
    aws_sdk_s3::primitives::DateTime::from_secs(time.timestamp())
}

pub(super) fn to_chrono(time: Option<&aws_sdk_s3::primitives::DateTime>) -> Option<DateTime<Utc>> {
    time.and_then(|t| DateTime::from_timestamp(t.secs(), t.subsec_nanos()))
}

/// AbortMultipartUpload; an upload that is already gone is not an error.
/// Shared by the store (pending uploads) and by an upload in progress.
pub(super) async fn abort(
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

/// An S3 bucket, optionally under a key prefix.
#[derive(Clone)]
pub struct S3Store {
    pub(super) client: Client,
    pub(super) bucket: String,
    /// Without leading or trailing `/`; empty for the bucket's root.
    prefix: String,
    pub(super) checksums: ChecksumCalculation,
    pub(super) sse: Option<ServerSideEncryption>,
    pub(super) sse_kms_key_id: Option<String>,
    pub(super) versioned_deletes: bool,
    pub(super) retries: Retries,
    pub(super) on_retry: Option<RetryHook>,
    pub(super) storage_class: Option<StorageClass>,
    pub(super) limiter: Option<Arc<RateLimiter>>,
    pub(super) context: Arc<Context>,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("store", &self.context.store)
            .field("endpoint", &self.context.endpoint)
            .field("checksums", &self.checksums)
            .field("sse", &self.sse)
            .field("versioned_deletes", &self.versioned_deletes)
            .field("retries", &self.retries)
            .field("storage_class", &self.storage_class)
            .field(
                "upload_rate_limit",
                &self.limiter.as_ref().map(|l| l.bytes_per_second()),
            )
            .finish_non_exhaustive()
    }
}

/// The SDK's configuration from aws-config's defaults and `options` (the
/// region, static credentials, endpoint, CA file), and the region in force.
async fn sdk_config(options: &S3Options) -> Result<(aws_sdk_s3::config::Builder, Region)> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(region) = &options.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some((id, secret)) = &options.static_credentials {
        loader =
            loader.credentials_provider(Credentials::new(id, secret, None, None, "refugio-static"));
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
    if let Some(url) = &options.endpoint {
        config = config.endpoint_url(url);
        endpoint::warn_if_plaintext(url);
    }
    if let Some(class) = options.storage_class.as_deref().filter(|c| needs_thaw(c)) {
        if endpoint::first_time(format!("storage class {class}")) {
            tracing::warn!(
                storage_class = class,
                "storage-class-archive: artifacts are written to an archive class; each must be restored (thawed) in S3 before a restore or drill can read it, and until then drills are inconclusive"
            );
        }
    }
    if let Some(ca_file) = &options.ca_file {
        config = config.http_client(endpoint::http_client(ca_file)?);
    }
    Ok((config, region))
}

impl S3Store {
    /// Builds the client from aws-config's defaults and `options`. Does not
    /// contact S3 (nor, when `options` name the region and credentials, any
    /// AWS metadata service).
    pub async fn new(bucket: &str, prefix: &str, options: &S3Options) -> Result<Self> {
        let (config, region) = sdk_config(options).await?;
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
        let prefix = prefix.trim_matches('/').to_string();
        let store = if prefix.is_empty() {
            format!("s3://{bucket}")
        } else {
            format!("s3://{bucket}/{prefix}")
        };
        let retries = options.retries;
        if retries.attempts == 0 {
            return Err(Error::Other(format!(
                "{store}: attempts must be at least 1 (the first attempt counts)"
            )));
        }
        let config = config
            .force_path_style(options.force_path_style)
            .request_checksum_calculation(request)
            .response_checksum_validation(response)
            .retry_config(RetryConfig::standard().with_max_attempts(retries.attempts))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(retries.connect_timeout)
                    .operation_attempt_timeout(retries.operation_timeout)
                    .build(),
            )
            .retry_classifier(endpoint::NoRetryOnBadCertificate)
            .interceptor(RetryObserver {
                hook: options.on_retry.clone(),
                store: store.clone(),
            })
            .build();
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
            retries,
            on_retry: options.on_retry.clone(),
            storage_class: options.storage_class.as_deref().map(StorageClass::from),
            limiter: options.upload_rate_limit.map(RateLimiter::new),
            context: Arc::new(Context {
                store,
                endpoint,
                bucket: bucket.to_string(),
                ca_file: options.ca_file.clone(),
            }),
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

    /// `full` with the store prefix removed; `None` if outside it.
    pub(super) fn relative<'a>(&self, full: &'a str) -> Option<&'a str> {
        if self.prefix.is_empty() {
            Some(full)
        } else {
            full.strip_prefix(self.prefix.as_str())?.strip_prefix('/')
        }
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
