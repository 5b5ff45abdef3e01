//! `[repository]`: where backups are stored, S3 settings, object lock.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use refugio_print::SecretUrl;
use refugio_store::location::{ChecksumCalculation, S3Options};
use refugio_store::s3::{Retries, RetryHook};

use super::authentication::AuthenticationConfig;
use super::encryption::EncryptionConfig;

/// The AWS SDK's environment (credentials chain, region, endpoints): what
/// a physical drill's `restore_command` may need to read an S3 repository.
const AWS_CHAIN: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_EC2_METADATA_DISABLED",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_USE_FIPS_ENDPOINT",
    "AWS_USE_DUALSTACK_ENDPOINT",
];

/// `[repository]`. Its `Debug` redacts any password in `url` and
/// `endpoint` (their type does).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    /// `s3://bucket/prefix`, `file:///abs/path` or a path. Default `./refugio-backups`.
    #[serde(default = "default_repository_url")]
    pub url: SecretUrl,
    /// S3 region. Default: from the AWS chain (`AWS_REGION`, profile), else `us-east-1`.
    #[serde(default)]
    pub region: Option<String>,
    /// S3 endpoint for S3-compatible stores (MinIO, Garage, Ceph…). Default: AWS.
    #[serde(default)]
    pub endpoint: Option<SecretUrl>,
    /// Path-style addressing (`endpoint/bucket/key`), needed by most
    /// S3-compatible stores. Default false.
    #[serde(default)]
    pub force_path_style: bool,
    /// The SDK's request checksum calculation: `when_supported` (default) or `when_required`.
    #[serde(default)]
    pub checksum_calculation: ChecksumSetting,
    /// Size of upload parts. Default `8MiB` (minimum `5MiB`); grows
    /// automatically for very large dumps so they stay under 10,000 parts.
    #[serde(default = "default_part_size", deserialize_with = "de_size")]
    pub part_size: u64,
    /// Parts uploaded at once. Default 3. Memory ≈ part_size × (this + 1).
    #[serde(default = "default_concurrency")]
    pub upload_concurrency: usize,
    /// Server-side encryption header: `AES256` or `aws:kms`. Default none.
    #[serde(default)]
    pub sse: Option<String>,
    /// KMS key id with `sse = "aws:kms"`. Default none (the bucket's key).
    #[serde(default)]
    pub sse_kms_key_id: Option<String>,
    /// S3 Object Lock on every artifact and manifest:
    /// `{ mode = "governance" | "compliance", days = N }`. Default none.
    /// The bucket must have been created with object lock enabled;
    /// `refugio config check` proves the store enforces it.
    #[serde(default)]
    pub object_lock: Option<ObjectLockConfig>,
    /// Attempts per S3 request, the first included (throttling, 5xx,
    /// timeouts and reset connections are retried with backoff); also how
    /// often one download may be resumed. Default 5.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Longest wait for a connection to S3. Default `5s`.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest one attempt of an S3 request may take (an upload part: the
    /// whole part) before it is abandoned and retried. Default `2m`.
    #[serde(default = "default_operation_timeout", with = "humantime_serde")]
    pub operation_timeout: Duration,
    /// S3 storage class of every artifact (`STANDARD_IA`, `GLACIER_IR`,
    /// …); manifests, receipts, claims and pins stay in the bucket's
    /// default class. Default none (the bucket's default, usually STANDARD).
    #[serde(default)]
    pub storage_class: Option<String>,
    /// A PEM bundle of CA certificates trusted (besides the system's) for
    /// an `https://` endpoint with a private CA. Default none.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Most artifact bytes sent to the store per second, in total:
    /// `"50MiB/s"`, `"500KiB/s"`, `"10MB/s"`. Default none (no limit).
    #[serde(default, deserialize_with = "de_rate")]
    pub upload_rate_limit: Option<u64>,
    /// Client-side encryption with age; default none.
    #[serde(default)]
    pub encryption: Option<EncryptionConfig>,
    /// Signed objects and the keys trusted for each role; default none
    /// (an unauthenticated repository: `config check` says so).
    #[serde(default)]
    pub authentication: Option<AuthenticationConfig>,
    /// How far ahead of this host's clock a backup may be dated (its id,
    /// or its server time) before it counts as dated in the future: such
    /// a backup is reported and ignored by scheduling, catch-up, `latest`,
    /// drills and retention. Default `5m`.
    #[serde(default = "default_clock_tolerance", with = "humantime_serde")]
    pub clock_tolerance: Duration,
}

/// `object_lock = { mode = "compliance", days = 30 }`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectLockConfig {
    pub mode: refugio_store::LockMode,
    /// Days each object stays undeletable after it is written. 1..=36500.
    pub days: u32,
}

impl ObjectLockConfig {
    /// The backup's object-lock option.
    pub fn lock(&self) -> refugio_core::ObjectLock {
        refugio_core::ObjectLock {
            mode: self.mode,
            days: self.days,
        }
    }
}

impl Default for RepositoryConfig {
    fn default() -> Self {
        RepositoryConfig {
            url: default_repository_url(),
            region: None,
            endpoint: None,
            force_path_style: false,
            checksum_calculation: ChecksumSetting::default(),
            part_size: default_part_size(),
            upload_concurrency: default_concurrency(),
            sse: None,
            sse_kms_key_id: None,
            object_lock: None,
            attempts: default_attempts(),
            connect_timeout: default_connect_timeout(),
            operation_timeout: default_operation_timeout(),
            storage_class: None,
            ca_file: None,
            upload_rate_limit: None,
            encryption: None,
            authentication: None,
            clock_tolerance: default_clock_tolerance(),
        }
    }
}

/// `checksum_calculation`.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ChecksumSetting {
    #[default]
    WhenSupported,
    WhenRequired,
}

fn default_repository_url() -> SecretUrl {
    "./refugio-backups".into()
}
fn default_part_size() -> u64 {
    8 * 1024 * 1024
}
fn default_concurrency() -> usize {
    3
}
fn default_clock_tolerance() -> Duration {
    refugio_store::repo::DEFAULT_CLOCK_TOLERANCE
}
fn default_attempts() -> u32 {
    refugio_store::s3::DEFAULT_ATTEMPTS
}
fn default_connect_timeout() -> Duration {
    refugio_store::s3::DEFAULT_CONNECT_TIMEOUT
}
fn default_operation_timeout() -> Duration {
    refugio_store::s3::DEFAULT_OPERATION_TIMEOUT
}

/// Parses `"8MiB"`, `"16 MB"`, `"5242880"` or a TOML integer.
fn de_size<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(u64),
        S(String),
    }
    match Raw::deserialize(d)? {
        Raw::N(n) => Ok(n),
        Raw::S(s) => parse_size(&s).map_err(serde::de::Error::custom),
    }
}

/// `upload_rate_limit = "50MiB/s"`.
fn de_rate<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<u64>, D::Error> {
    let text = String::deserialize(d)?;
    parse_rate(&text)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("repository.upload_rate_limit: {e}")))
}

/// Smallest `upload_rate_limit`.
const MIN_RATE: u64 = 1024;

/// `"50MiB/s"` → 52428800 bytes per second (a size, then `/s`).
pub fn parse_rate(s: &str) -> std::result::Result<u64, String> {
    let Some(size) = s.trim().strip_suffix("/s") else {
        return Err(format!(
            "invalid rate {s:?}: expected a size per second, e.g. \"50MiB/s\", \"500KiB/s\", \"10MB/s\""
        ));
    };
    let rate = parse_size(size)?;
    if rate < MIN_RATE {
        return Err(format!("rate {s:?} is below the minimum of 1KiB/s"));
    }
    Ok(rate)
}

/// `"8MiB"` → 8388608.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected e.g. \"8MiB\""))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => {
            return Err(format!(
                "invalid size unit {other:?} in {s:?} (use B, KiB, MiB, GiB, KB, MB, GB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

impl RepositoryConfig {
    /// The recipients of the next backup; None without encryption.
    pub fn recipients(&self) -> anyhow::Result<Option<refugio_core::Recipients>> {
        self.encryption.as_ref().map(|e| e.recipients()).transpose()
    }

    /// The authentication in force (None: unauthenticated). `sign`: load
    /// this host's signing key too.
    pub fn authentication(
        &self,
        sign: bool,
    ) -> anyhow::Result<Option<std::sync::Arc<refugio_store::auth::Authentication>>> {
        self.authentication
            .as_ref()
            .map(|a| a.load(sign))
            .transpose()
    }

    /// The identities for restores and drills, wherever they are
    /// configured (see [`super::encryption::identities`]); None: none.
    pub fn identities(&self) -> anyhow::Result<Option<std::sync::Arc<refugio_core::Identities>>> {
        super::encryption::identities(
            self.encryption
                .as_ref()
                .and_then(|e| e.identity_file.as_deref()),
        )
    }

    /// What a physical drill's server gets of refugio's environment, for
    /// its `restore_command` (`refugio wal-fetch`) to read this
    /// repository: the AWS chain's variables (an S3 repository only) and,
    /// with encryption, the identity file found through
    /// `REFUGIO_AGE_IDENTITY_FILE` or the systemd credential (as
    /// `REFUGIO_AGE_IDENTITY_FILE`; `CREDENTIALS_DIRECTORY` itself is not
    /// passed). Nothing else: a hostile base backup's server can read
    /// exactly these. A logical drill's server and every tool get none.
    pub fn wal_fetch_env(&self) -> Vec<(String, std::ffi::OsString)> {
        let mut env = Vec::new();
        if self.url.starts_with("s3://") {
            env.extend(refugio_dump::tools::inherited_env(AWS_CHAIN));
            // The server's HOME is its cluster directory: point the SDK
            // at refugio's own shared files, which it would have read.
            // (As root the server runs as an unprivileged user who could
            // not read root's ~/.aws anyway.)
            if refugio_core::ephemeral::EphemeralCluster::server_uid().is_none() {
                if let Some(home) = refugio_dump::tools::own_home() {
                    for (var, file) in [
                        ("AWS_SHARED_CREDENTIALS_FILE", "credentials"),
                        ("AWS_CONFIG_FILE", "config"),
                    ] {
                        let path = home.join(".aws").join(file);
                        if std::env::var_os(var).is_none() && path.is_file() {
                            env.push((var.to_string(), path.into_os_string()));
                        }
                    }
                }
            }
        }
        if self.encryption.is_some() {
            let configured = self
                .encryption
                .as_ref()
                .and_then(|e| e.identity_file.as_deref());
            if let Some(path) = super::encryption::identity_path(configured)
                .filter(|p| Some(p.as_path()) != configured)
            {
                env.push((
                    super::encryption::IDENTITY_ENV.to_string(),
                    path.into_os_string(),
                ));
            }
        }
        env
    }

    /// Options for the S3 backend; `on_retry` is told of every retried
    /// request (the agent's `refugio_store_retries_total`).
    pub fn s3_options(&self, on_retry: Option<RetryHook>) -> S3Options {
        S3Options {
            region: self.region.clone(),
            endpoint: self.endpoint.as_deref().map(str::to_string),
            force_path_style: self.force_path_style,
            checksum_calculation: match self.checksum_calculation {
                ChecksumSetting::WhenSupported => ChecksumCalculation::WhenSupported,
                ChecksumSetting::WhenRequired => ChecksumCalculation::WhenRequired,
            },
            sse: self.sse.clone(),
            sse_kms_key_id: self.sse_kms_key_id.clone(),
            versioned_deletes: self.object_lock.is_some(),
            retries: Retries {
                attempts: self.attempts,
                connect_timeout: self.connect_timeout,
                operation_timeout: self.operation_timeout,
            },
            on_retry,
            storage_class: self.storage_class.clone(),
            ca_file: self.ca_file.clone(),
            upload_rate_limit: self.upload_rate_limit,
            ..S3Options::default()
        }
    }
}
