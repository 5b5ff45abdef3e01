//! Listing and deleting in S3: objects (ListObjectsV2), common prefixes,
//! object versions and version-wise deletes, batched deletes
//! (DeleteObjects), and multipart uploads left pending.

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};

use super::client::{abort, is_missing_object, to_chrono, S3Store, TEMPORARY_CODES};
use crate::error::{Error, Result};
use crate::{ObjectMeta, ObjectStore, PendingUpload};

impl S3Store {
    /// Version ids (and delete markers) of exactly `key`.
    pub(super) async fn versions(&self, key: &str) -> Result<Vec<String>> {
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

    pub(super) fn list_impl(&self, prefix: &str) -> BoxStream<'_, Result<ObjectMeta>> {
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

    pub(super) async fn list_prefixes_impl(&self, prefix: &str) -> Result<Vec<String>> {
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

    pub(super) async fn delete_impl(&self, key: &str) -> Result<()> {
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

    pub(super) async fn delete_many_impl(&self, keys: &[String]) -> Result<Vec<(String, Error)>> {
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

    pub(super) async fn list_multipart_uploads_impl(
        &self,
        prefix: &str,
    ) -> Result<Vec<PendingUpload>> {
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

    pub(super) async fn abort_multipart_impl(&self, upload: &PendingUpload) -> Result<()> {
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
