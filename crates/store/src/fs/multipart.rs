//! The directory backend's multipart upload: parts written at their
//! offsets into a hidden partial file beside the final one.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio_util::task::TaskTracker;

use super::{remove_object, sync_dir};
use crate::error::{Error, Result};
use crate::MultipartUpload;

/// A multipart upload into a hidden partial file beside the final one.
/// Each part is written at its offset by a blocking-pool task, so parts
/// may be in flight together; `complete` renames the file into place.
pub(super) struct FsMultipart {
    pub(super) root: PathBuf,
    pub(super) store: String,
    pub(super) key: String,
    pub(super) file: Arc<File>,
    pub(super) partial: PathBuf,
    pub(super) final_path: PathBuf,
    pub(super) offset: u64,
    pub(super) tasks: TaskTracker,
    pub(super) failed: Arc<AtomicBool>,
}

impl FsMultipart {
    fn io_error(&self, op: &'static str, source: io::Error) -> Error {
        Error::Io {
            op,
            store: self.store.clone(),
            key: self.key.clone(),
            source,
        }
    }

    /// Waits for the part writes still running.
    async fn settle(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

#[async_trait]
impl MultipartUpload for FsMultipart {
    fn put_part(&mut self, data: Bytes) -> BoxFuture<'static, Result<()>> {
        let offset = self.offset;
        self.offset += data.len() as u64;
        let file = Arc::clone(&self.file);
        let failed = Arc::clone(&self.failed);
        let task = self.tasks.spawn_blocking(move || {
            let result = file.write_all_at(&data, offset);
            if result.is_err() {
                failed.store(true, Ordering::SeqCst);
            }
            result
        });
        let (store, key) = (self.store.clone(), self.key.clone());
        async move {
            let result = match task.await {
                Ok(result) => result,
                Err(join) => Err(io::Error::other(join.to_string())),
            };
            result.map_err(|source| Error::Io {
                op: "upload part of",
                store,
                key,
                source,
            })
        }
        .boxed()
    }

    async fn complete(self: Box<Self>) -> Result<()> {
        self.settle().await;
        if self.failed.load(Ordering::SeqCst) {
            let _ = self.abort_inner().await;
            return Err(self.io_error(
                "complete upload of",
                io::Error::other("a part failed to write"),
            ));
        }
        let (file, partial, final_path) = (
            Arc::clone(&self.file),
            self.partial.clone(),
            self.final_path.clone(),
        );
        let finish = tokio::task::spawn_blocking(move || -> io::Result<()> {
            file.sync_all()?;
            fs::rename(&partial, &final_path)?;
            sync_dir(final_path.parent().unwrap_or(Path::new("/")))
        })
        .await
        .unwrap_or_else(|join| Err(io::Error::other(join.to_string())));
        if let Err(source) = finish {
            let _ = self.abort_inner().await;
            return Err(self.io_error("complete upload of", source));
        }
        Ok(())
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        self.settle().await;
        self.abort_inner().await
    }
}

impl FsMultipart {
    async fn abort_inner(&self) -> Result<()> {
        let (root, partial) = (self.root.clone(), self.partial.clone());
        let removed = tokio::task::spawn_blocking(move || remove_object(&root, &partial))
            .await
            .unwrap_or_else(|join| Err(io::Error::other(join.to_string())));
        removed.map_err(|source| self.io_error("abort upload of", source))
    }
}
