//! Multipart uploads to S3: starting one (with the CRC32 declaration the
//! checksum setting asks for) and [`S3Multipart`], which uploads each part
//! in its own task and completes or aborts the upload.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::client::{abort, ChecksumCalculation, Context, S3Store};
use crate::error::{Error, Result};
use crate::rate::RateLimiter;
use crate::MultipartUpload;

impl S3Store {
    /// CreateMultipartUpload; the parts go up through the returned
    /// [`S3Multipart`].
    pub(super) async fn put_multipart_impl(&self, key: &str) -> Result<Box<dyn MultipartUpload>> {
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
            .set_storage_class(self.storage_class.clone())
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
            limiter: self.limiter.clone(),
            context: Arc::clone(&self.context),
            next_part: 1,
            parts: Arc::new(Mutex::new(Vec::new())),
            tasks: TaskTracker::new(),
            cancel: CancellationToken::new(),
        }))
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
    /// `upload_rate_limit`: parts are sent paced, with their CRC32 worked out here.
    limiter: Option<Arc<RateLimiter>>,
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
        let checksum = (self.limiter.is_some() && self.algorithm.is_some())
            .then(|| super::paced::crc32(&data));
        let request = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.full_key)
            .upload_id(&self.upload_id)
            .part_number(part_number)
            .content_length(data.len() as i64)
            .set_checksum_algorithm(self.algorithm.clone())
            .set_checksum_crc32(checksum)
            .body(super::paced::body(data, self.limiter.as_ref()));
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
