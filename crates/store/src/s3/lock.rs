//! S3 Object Lock: writing a locked object, setting and reading an
//! object's retention, and proving that a bucket enforces the lock.

use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, ObjectLockMode, ObjectLockRetention, ObjectLockRetentionMode,
};
use bytes::Bytes;
use chrono::Utc;

use super::client::{is_missing_object, to_chrono, to_smithy, S3Store};
use crate::error::Result;
use crate::lock::{LockMode, LockProbe, Retention};
use crate::ObjectStore;

impl S3Store {
    pub(super) async fn put_retained_impl(
        &self,
        key: &str,
        data: Bytes,
        retention: &Retention,
    ) -> Result<()> {
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

    pub(super) async fn set_retention_impl(&self, key: &str, retention: &Retention) -> Result<()> {
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

    pub(super) async fn retention_impl(&self, key: &str) -> Result<Option<Retention>> {
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

    /// Whether the bucket says it has object lock: None when it does, else
    /// why not (a store that does not know the request says no too).
    async fn bucket_locks(&self) -> Result<Option<LockProbe>> {
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
                    return Ok(Some(LockProbe::NotEnforced(format!(
                        "bucket {} does not have object lock enabled (it can only be enabled when the bucket is created)",
                        self.bucket
                    ))));
                }
            }
            Err(e) if matches!(e, SdkError::ServiceError(_)) => {
                let err = self
                    .context
                    .error("GetObjectLockConfiguration", bucket_key, &e);
                return Ok(Some(LockProbe::NotEnforced(format!(
                    "the store does not report object lock for bucket {}: {err}",
                    self.bucket
                ))));
            }
            Err(e) => {
                return Err(self
                    .context
                    .error("GetObjectLockConfiguration", bucket_key, &e))
            }
        }
        Ok(None)
    }

    pub(super) async fn probe_object_lock_impl(&self, probe_prefix: &str) -> Result<LockProbe> {
        if let Some(not) = self.bucket_locks().await? {
            return Ok(not);
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
            .put_retained_impl(
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
            if self.delete_version(&key, version, false).await {
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
            self.delete_version(&key, version, true).await;
        }
        Ok(verdict)
    }

    /// Deletes one version of `key` (`bypass`: past a governance lock);
    /// whether the store let it.
    async fn delete_version(&self, key: &str, version: &str, bypass: bool) -> bool {
        let mut request = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .version_id(version);
        if bypass {
            request = request.bypass_governance_retention(true);
        }
        request.send().await.is_ok()
    }
}
