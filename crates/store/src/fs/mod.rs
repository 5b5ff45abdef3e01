//! The directory backend: each key is a file under the root directory, `/`
//! in keys being directory separators.
//!
//! Writes are atomic and durable: an object is written under a hidden
//! temporary name in its final directory (`.<name>.refugio-tmp-<random>`
//! for `put`, `.<name>.refugio-partial-<random>` for multipart uploads),
//! fsynced, renamed to its final name, and the directory is fsynced. Every
//! directory created on the way is fsynced into its parent, so a crash
//! cannot lose the entry of a backup's directory and with it a committed
//! manifest. A reader therefore sees a whole object or none, and listings
//! never show the temporary files; `list_multipart_uploads` does, so that
//! garbage collection can remove what a crash left behind. A failed or
//! aborted write removes its temporary file and, like `delete`, the
//! directories that leaves empty: a failed backup leaves no directory.
//!
//! Dumps hold a whole database: files are created `0600` and directories
//! `0700` (the repository root too, when the store creates it), set
//! explicitly so the umask changes nothing. Existing directories keep
//! their mode.
//!
//! Limits of a file system compared with S3: a key cannot also be a
//! "directory" of other keys (`a` and `a/b` cannot both exist), and key
//! segments may not be empty, `.` or `..`.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};
use tokio_util::task::TaskTracker;

use crate::error::{Error, Result};
use crate::{ByteReader, MultipartUpload, ObjectMeta, ObjectStore, PendingUpload, PutOptions};

mod multipart;
use multipart::FsMultipart;

const TMP_MARKER: &str = ".refugio-tmp-";
const PARTIAL_MARKER: &str = ".refugio-partial-";
/// Read buffer of `get`: a small reader costs no blocking-pool hop per read.
const READ_BUFFER: usize = 256 * 1024;
/// Upload part size: written while still in the CPU's cache (design.md).
pub const FS_PART_SIZE: usize = 128 * 1024;
/// Mode of every file the store creates: the owner only.
const FILE_MODE: u32 = 0o600;
/// Mode of every directory the store creates: the owner only.
const DIR_MODE: u32 = 0o700;

/// Objects as files under a root directory.
#[derive(Debug, Clone)]
pub struct FsStore {
    root: PathBuf,
    describe: String,
}

impl FsStore {
    /// Opens (and creates, if missing) the directory `root`. Relative paths
    /// are resolved against the working directory now. Blocking.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        let root = std::path::absolute(&root).map_err(|source| Error::Io {
            op: "open",
            store: root.display().to_string(),
            key: String::new(),
            source,
        })?;
        let describe = url::Url::from_file_path(&root)
            .map(|u| u.to_string())
            .unwrap_or_else(|()| root.display().to_string());
        create_dirs(&root, &mut sync_dir).map_err(|source| Error::Io {
            op: "create directory",
            store: describe.clone(),
            key: String::new(),
            source,
        })?;
        Ok(FsStore { root, describe })
    }

    /// The absolute root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn io_error(&self, op: &'static str, key: &str, source: io::Error) -> Error {
        Error::Io {
            op,
            store: self.describe.clone(),
            key: key.to_string(),
            source,
        }
    }

    fn invalid_key(&self, key: &str, reason: &str) -> Error {
        Error::InvalidKey {
            store: self.describe.clone(),
            key: key.to_string(),
            reason: reason.to_string(),
        }
    }

    /// The file of `key`, after checking the key cannot escape the root or
    /// collide with temporary files.
    fn path_of(&self, key: &str) -> Result<PathBuf> {
        if key.is_empty() {
            return Err(self.invalid_key(key, "empty key"));
        }
        check_segments(key).map_err(|reason| self.invalid_key(key, reason))?;
        Ok(self.root.join(key))
    }

    /// Splits a listing prefix into the directory to walk (relative, with a
    /// trailing `/` unless empty) after checking it stays under the root.
    fn prefix_dir<'a>(&self, prefix: &'a str) -> Result<&'a str> {
        let dir = match prefix.rfind('/') {
            Some(i) => &prefix[..=i],
            None => "",
        };
        if !dir.is_empty() {
            check_segments(dir.trim_end_matches('/'))
                .map_err(|reason| self.invalid_key(prefix, reason))?;
        }
        Ok(dir)
    }

    async fn blocking<T, F>(&self, op: &'static str, key: &str, f: F) -> Result<T>
    where
        F: FnOnce() -> io::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        match tokio::task::spawn_blocking(f).await {
            Ok(result) => result.map_err(|source| self.io_error(op, key, source)),
            Err(join) => Err(self.io_error(op, key, io::Error::other(join.to_string()))),
        }
    }
}

fn check_segments(path: &str) -> std::result::Result<(), &'static str> {
    if path.starts_with('/') {
        return Err("keys are relative: no leading '/'");
    }
    if path.contains('\0') {
        return Err("NUL character");
    }
    for segment in path.split('/') {
        match segment {
            "" => return Err("empty segment (\"//\" or a trailing '/')"),
            "." | ".." => return Err("\".\" and \"..\" segments are not allowed"),
            s if s.contains(TMP_MARKER) || s.contains(PARTIAL_MARKER) => {
                return Err("names containing .refugio-tmp- or .refugio-partial- are reserved")
            }
            _ => {}
        }
    }
    Ok(())
}

/// For a temporary or partial file name, the name of the object it becomes.
fn pending_object_name(file_name: &str) -> Option<&str> {
    let rest = file_name.strip_prefix('.')?;
    rest.rsplit_once(PARTIAL_MARKER)
        .or_else(|| rest.rsplit_once(TMP_MARKER))
        .map(|(name, _)| name)
        .filter(|name| !name.is_empty())
}

fn is_internal(file_name: &str) -> bool {
    pending_object_name(file_name).is_some()
}

fn hidden_name(final_path: &Path, marker: &str) -> io::Result<PathBuf> {
    let name = final_path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "key has no file name"))?;
    let random: u64 = rand::random();
    Ok(final_path.with_file_name(format!(".{name}{marker}{random:016x}")))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and whichever of its ancestors are missing, each with
/// [`DIR_MODE`], and calls `sync` (`sync_dir` outside tests) on the parent
/// of every level it creates, top down: a directory entry is durable only
/// once its parent is fsynced, and an fsync of a file's directory does not
/// make that directory's own entry durable.
fn create_dirs(dir: &Path, sync: &mut dyn FnMut(&Path) -> io::Result<()>) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut level = dir;
    loop {
        match fs::metadata(level) {
            Ok(meta) if meta.is_dir() => break,
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a directory", level.display()),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing.push(level);
                match level.parent() {
                    Some(up) if !up.as_os_str().is_empty() => level = up,
                    _ => break,
                }
            }
            Err(e) => return Err(e),
        }
    }
    for level in missing.into_iter().rev() {
        match fs::DirBuilder::new().mode(DIR_MODE).create(level) {
            // The umask may have taken bits away: set the mode itself.
            Ok(()) => fs::set_permissions(level, Permissions::from_mode(DIR_MODE))?,
            // A concurrent writer made it; its entry may not be synced yet.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && level.is_dir() => {}
            Err(e) => return Err(e),
        }
        sync(level.parent().unwrap_or(Path::new("/")))?;
    }
    Ok(())
}

/// Creates `path` (which must not exist) with [`FILE_MODE`], creating its
/// parent directories. Retries when a concurrent `delete` removed a
/// just-created empty parent.
fn create_new_with_parents(path: &Path) -> io::Result<File> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    let mut attempt = 0;
    loop {
        create_dirs(parent, &mut sync_dir)?;
        match OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(path)
        {
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < 3 => attempt += 1,
            Err(e) => return Err(e),
            Ok(file) => {
                // As for directories: the umask only ever takes bits away.
                return match file.set_permissions(Permissions::from_mode(FILE_MODE)) {
                    Ok(()) => Ok(file),
                    Err(e) => {
                        let _ = fs::remove_file(path);
                        Err(e)
                    }
                };
            }
        }
    }
}

/// Removes the file of an object, then the directories that leaves empty
/// (up to `root`), then fsyncs the deepest directory still there, which
/// makes the removal durable. Deletes in one directory run concurrently
/// (prune deletes a backup's objects together) and race to remove it, so
/// a directory already gone is no error at any step: the object is.
fn remove_object(root: &Path, path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => return Ok(()),
        Err(e) => return Err(e),
    }
    let mut dir = path.parent().unwrap_or(root);
    while dir != root && dir.starts_with(root) {
        if fs::remove_dir(dir).is_err() {
            break; // not empty, already removed, or raced with a writer
        }
        dir = match dir.parent() {
            Some(up) => up,
            None => break,
        };
    }
    loop {
        match sync_dir(dir) {
            // Removed by a concurrent delete: its parent records that.
            Err(e) if e.kind() == io::ErrorKind::NotFound && dir != root => {
                dir = match dir.parent() {
                    Some(up) if up.starts_with(root) => up,
                    _ => return Err(e),
                };
            }
            other => return other,
        }
    }
}

fn mtime(meta: &fs::Metadata) -> Option<DateTime<Utc>> {
    meta.modified().ok().map(DateTime::<Utc>::from)
}

/// What a walk collects.
#[derive(Clone, Copy)]
enum Collect {
    Objects,
    Pending,
}

/// Walks `dir` (relative name `rel`, empty or ending in `/`) recursively.
fn walk(
    dir: &Path,
    rel: &str,
    what: Collect,
    out: &mut Vec<(String, String, fs::Metadata)>,
) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue; // not a key refugio could have written
        };
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            walk(&entry.path(), &format!("{rel}{name}/"), what, out)?;
            continue;
        }
        let meta = match entry.metadata() {
            Ok(_) if file_type.is_symlink() => match fs::metadata(entry.path()) {
                Ok(target) if target.is_file() => target,
                _ => continue,
            },
            Ok(meta) if meta.is_file() => meta,
            Ok(_) => continue,
            // Removed between read_dir and stat: a concurrent delete.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let keep = match what {
            Collect::Objects => !is_internal(&name),
            Collect::Pending => is_internal(&name),
        };
        if keep {
            out.push((format!("{rel}{name}"), name, meta));
        }
    }
    Ok(())
}

/// Whether `dir` holds at least one object, at any depth.
fn has_objects(dir: &Path) -> io::Result<bool> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            if has_objects(&entry.path())? {
                return Ok(true);
            }
        } else if !is_internal(name) && fs::metadata(entry.path()).is_ok_and(|m| m.is_file()) {
            return Ok(true);
        }
    }
    Ok(false)
}

#[async_trait]
impl ObjectStore for FsStore {
    fn fixed_part_size(&self) -> Option<usize> {
        Some(FS_PART_SIZE)
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }

    async fn put(&self, key: &str, data: Bytes, opts: PutOptions<'_>) -> Result<()> {
        if opts.retention.is_some() {
            return Err(Error::LockUnsupported {
                store: self.describe(),
                key: key.to_string(),
                reason: "this store has no object lock".into(),
            });
        }
        let path = self.path_of(key)?;
        let root = self.root.clone();
        self.blocking("put", key, move || {
            let tmp = hidden_name(&path, TMP_MARKER)?;
            let write = || -> io::Result<()> {
                let mut file = create_new_with_parents(&tmp)?;
                file.write_all(&data)?;
                file.sync_all()?;
                fs::rename(&tmp, &path)?;
                sync_dir(path.parent().unwrap_or(Path::new("/")))
            };
            write().inspect_err(|_| {
                let _ = remove_object(&root, &tmp);
            })
        })
        .await
    }

    async fn put_multipart(&self, key: &str) -> Result<Box<dyn MultipartUpload>> {
        let final_path = self.path_of(key)?;
        let target = final_path.clone();
        let (file, partial) = self
            .blocking("start upload of", key, move || {
                let partial = hidden_name(&target, PARTIAL_MARKER)?;
                let file = create_new_with_parents(&partial)?;
                Ok((file, partial))
            })
            .await?;
        Ok(Box::new(FsMultipart {
            root: self.root.clone(),
            store: self.describe.clone(),
            key: key.to_string(),
            file: Arc::new(file),
            partial,
            final_path,
            offset: 0,
            tasks: TaskTracker::new(),
            failed: Arc::new(AtomicBool::new(false)),
        }))
    }

    async fn get(&self, key: &str) -> Result<ByteReader> {
        let path = self.path_of(key)?;
        let not_found = || Error::NotFound {
            store: self.describe.clone(),
            key: key.to_string(),
        };
        let file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                return Err(not_found())
            }
            Err(e) => return Err(self.io_error("get", key, e)),
        };
        let meta = file
            .metadata()
            .await
            .map_err(|e| self.io_error("get", key, e))?;
        if !meta.is_file() {
            return Err(not_found());
        }
        Ok(Box::pin(tokio::io::BufReader::with_capacity(
            READ_BUFFER,
            file,
        )))
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let path = self.path_of(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(meta) if meta.is_file() => Ok(Some(ObjectMeta {
                key: key.to_string(),
                size: meta.len(),
                last_modified: mtime(&meta),
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            // A path component is a file: `a/b` when `a` is an object.
            Err(e) if e.kind() == io::ErrorKind::NotADirectory => Ok(None),
            Err(e) => Err(self.io_error("head", key, e)),
        }
    }

    /// Walks the directory of `prefix` when first polled and yields the
    /// matching objects sorted by key (byte order, as S3 does).
    fn list(&self, prefix: &str) -> BoxStream<'_, Result<ObjectMeta>> {
        let prefix = prefix.to_string();
        let dir = match self.prefix_dir(&prefix) {
            Ok(dir) => dir.to_string(),
            Err(e) => return stream::once(async move { Err(e) }).boxed(),
        };
        let start = self.root.join(&dir);
        let key = prefix.clone();
        let walked = async move {
            self.blocking("list", &key, move || {
                let mut found = Vec::new();
                walk(&start, &dir, Collect::Objects, &mut found)?;
                let mut objects: Vec<ObjectMeta> = found
                    .into_iter()
                    .filter(|(key, _, _)| key.starts_with(&prefix))
                    .map(|(key, _, meta)| ObjectMeta {
                        key,
                        size: meta.len(),
                        last_modified: mtime(&meta),
                    })
                    .collect();
                objects.sort_by(|a, b| a.key.cmp(&b.key));
                Ok(objects)
            })
            .await
        };
        stream::once(walked)
            .map_ok(|objects| stream::iter(objects.into_iter().map(Ok)))
            .try_flatten()
            .boxed()
    }

    async fn list_prefixes(&self, prefix: &str) -> Result<Vec<String>> {
        let dir = self.prefix_dir(prefix)?.to_string();
        let name_prefix = prefix[dir.len()..].to_string();
        let start = self.root.join(&dir);
        self.blocking("list", prefix, move || {
            let entries = match fs::read_dir(&start) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) if e.kind() == io::ErrorKind::NotADirectory => return Ok(Vec::new()),
                Err(e) => return Err(e),
            };
            let mut prefixes = Vec::new();
            for entry in entries {
                let entry = entry?;
                let Ok(name) = entry.file_name().into_string() else {
                    continue;
                };
                if name.starts_with(&name_prefix)
                    && entry.file_type()?.is_dir()
                    && has_objects(&entry.path())?
                {
                    prefixes.push(format!("{dir}{name}"));
                }
            }
            prefixes.sort();
            Ok(prefixes)
        })
        .await
    }

    /// Removes the file, then the directories it leaves empty (up to the
    /// root), so that deleted backups do not linger as empty prefixes.
    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path_of(key)?;
        let root = self.root.clone();
        self.blocking("delete", key, move || remove_object(&root, &path))
            .await
    }

    async fn list_multipart_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>> {
        let dir = self.prefix_dir(prefix)?.to_string();
        let start = self.root.join(&dir);
        let prefix = prefix.to_string();
        let key = prefix.clone();
        self.blocking("list uploads", &key, move || {
            let mut found = Vec::new();
            walk(&start, &dir, Collect::Pending, &mut found)?;
            let mut pending: Vec<PendingUpload> = found
                .into_iter()
                .filter_map(|(path, file_name, meta)| {
                    let object = pending_object_name(&file_name)?;
                    let dir = &path[..path.len() - file_name.len()];
                    let key = format!("{dir}{object}");
                    key.starts_with(&prefix).then(|| PendingUpload {
                        key,
                        upload_id: file_name,
                        initiated: mtime(&meta),
                    })
                })
                .collect();
            pending.sort_by(|a, b| (&a.key, &a.upload_id).cmp(&(&b.key, &b.upload_id)));
            Ok(pending)
        })
        .await
    }

    async fn abort_multipart(&self, upload: &PendingUpload) -> Result<()> {
        let path = self.path_of(&upload.key)?;
        let file_name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if upload.upload_id.contains('/')
            || pending_object_name(&upload.upload_id) != Some(file_name)
        {
            return Err(self.invalid_key(
                &upload.key,
                &format!("{:?} is not an upload of this key", upload.upload_id),
            ));
        }
        let (root, partial) = (self.root.clone(), path.with_file_name(&upload.upload_id));
        self.blocking("abort upload of", &upload.key, move || {
            remove_object(&root, &partial)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use tokio::io::AsyncReadExt;

    fn store() -> (tempfile::TempDir, FsStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FsStore::new(dir.path().join("repo")).expect("store");
        (dir, store)
    }

    async fn keys(store: &FsStore, prefix: &str) -> Vec<String> {
        let listed: Vec<ObjectMeta> = store.list(prefix).try_collect().await.expect("list");
        listed.into_iter().map(|m| m.key).collect()
    }

    #[tokio::test]
    async fn partial_files_are_hidden_until_complete() {
        let (_dir, store) = store();
        let mut upload = store.put_multipart("job/b1/data").await.expect("start");
        upload
            .put_part(Bytes::from_static(b"hello "))
            .await
            .expect("part 1");
        upload
            .put_part(Bytes::from_static(b"world"))
            .await
            .expect("part 2");
        assert!(keys(&store, "").await.is_empty());
        assert_eq!(store.head("job/b1/data").await.expect("head"), None);
        assert!(store
            .list_prefixes("job/")
            .await
            .expect("prefixes")
            .is_empty());
        let pending = store.list_multipart_uploads("job/").await.expect("pending");
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].key, "job/b1/data");
        assert!(pending[0].initiated.is_some());

        upload.complete().await.expect("complete");
        assert_eq!(keys(&store, "").await, vec!["job/b1/data"]);
        assert!(store
            .list_multipart_uploads("")
            .await
            .expect("pending")
            .is_empty());
        let mut text = String::new();
        store
            .get("job/b1/data")
            .await
            .expect("get")
            .read_to_string(&mut text)
            .await
            .expect("read");
        assert_eq!(text, "hello world");
    }

    #[tokio::test]
    async fn parts_written_out_of_order_land_at_their_offsets() {
        let (_dir, store) = store();
        let mut upload = store.put_multipart("k").await.expect("start");
        let first = upload.put_part(Bytes::from(vec![b'a'; 100_000]));
        let second = upload.put_part(Bytes::from(vec![b'b'; 10]));
        second.await.expect("second");
        first.await.expect("first");
        upload.complete().await.expect("complete");
        let mut data = Vec::new();
        store
            .get("k")
            .await
            .expect("get")
            .read_to_end(&mut data)
            .await
            .expect("read");
        assert_eq!(data.len(), 100_010);
        assert!(data[..100_000].iter().all(|&b| b == b'a'));
        assert_eq!(&data[100_000..], b"bbbbbbbbbb");
    }

    #[tokio::test]
    async fn pending_uploads_can_be_aborted_by_listing() {
        let (_dir, store) = store();
        let mut upload = store.put_multipart("a/b").await.expect("start");
        upload
            .put_part(Bytes::from_static(b"x"))
            .await
            .expect("part");
        drop(upload); // a crash: the partial file stays
        let pending = store.list_multipart_uploads("a/").await.expect("pending");
        assert_eq!(pending.len(), 1);
        let forged = PendingUpload {
            upload_id: "../../etc/passwd".into(),
            ..pending[0].clone()
        };
        assert!(matches!(
            store.abort_multipart(&forged).await,
            Err(Error::InvalidKey { .. })
        ));
        store.abort_multipart(&pending[0]).await.expect("abort");
        assert!(store
            .list_multipart_uploads("")
            .await
            .expect("pending")
            .is_empty());
        assert!(
            !store.root().join("a").exists(),
            "the emptied directory went too"
        );
    }

    #[tokio::test]
    async fn an_aborted_upload_leaves_no_emptied_directory() {
        let (_dir, store) = store();
        store
            .put("j/b2/x", Bytes::from_static(b"1"), PutOptions::default())
            .await
            .expect("put");
        let mut upload = store.put_multipart("j/b1/x").await.expect("start");
        upload
            .put_part(Bytes::from_static(b"x"))
            .await
            .expect("part");
        upload.abort().await.expect("abort");
        assert!(!store.root().join("j/b1").exists(), "emptied by the abort");
        assert!(store.root().join("j/b2/x").exists(), "the rest stays");
    }

    #[tokio::test]
    async fn list_is_in_byte_order_across_directories() {
        let (_dir, store) = store();
        for key in ["a/b", "a-c", "a/a/z", "b", "a.d"] {
            store
                .put(key, Bytes::from_static(b"1"), PutOptions::default())
                .await
                .expect("put");
        }
        assert_eq!(
            keys(&store, "").await,
            vec!["a-c", "a.d", "a/a/z", "a/b", "b"]
        );
        assert_eq!(keys(&store, "a/").await, vec!["a/a/z", "a/b"]);
        assert_eq!(keys(&store, "a").await, vec!["a-c", "a.d", "a/a/z", "a/b"]);
    }

    #[tokio::test]
    async fn delete_removes_emptied_directories() {
        let (_dir, store) = store();
        store
            .put("j/b1/x", Bytes::from_static(b"1"), PutOptions::default())
            .await
            .expect("put");
        store
            .put("j/b2/x", Bytes::from_static(b"1"), PutOptions::default())
            .await
            .expect("put");
        store.delete("j/b1/x").await.expect("delete");
        assert!(!store.root().join("j/b1").exists());
        assert!(store.root().join("j/b2").exists());
        assert_eq!(
            store.list_prefixes("j/").await.expect("prefixes"),
            vec!["j/b2"]
        );
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("stat").permissions().mode() & 0o7777
    }

    #[test]
    fn create_dirs_syncs_the_parent_of_every_level_it_creates() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let t = tmp.path();
        let mut synced = Vec::new();
        let mut record = |dir: &Path| {
            synced.push(dir.to_path_buf());
            Ok(())
        };
        create_dirs(&t.join("a/b/c"), &mut record).expect("create");
        assert_eq!(synced, vec![t.to_path_buf(), t.join("a"), t.join("a/b")]);
        for level in ["a", "a/b", "a/b/c"] {
            assert_eq!(mode(&t.join(level)), 0o700, "{level}");
        }

        synced.clear();
        let mut record = |dir: &Path| {
            synced.push(dir.to_path_buf());
            Ok(())
        };
        create_dirs(&t.join("a/b/d"), &mut record).expect("one more level");
        create_dirs(&t.join("a/b"), &mut record).expect("exists");
        assert_eq!(synced, vec![t.join("a/b")], "only the new level's parent");

        fs::write(t.join("f"), b"x").expect("file");
        synced.clear();
        let mut record = |dir: &Path| {
            synced.push(dir.to_path_buf());
            Ok(())
        };
        assert!(create_dirs(&t.join("f/g"), &mut record).is_err());
        assert!(create_dirs(&t.join("f"), &mut record).is_err());
        assert!(synced.is_empty(), "{synced:?}");

        // A failed sync fails the creation: the caller must not go on to
        // write into a directory whose entry may not survive a crash.
        let mut failing = |_: &Path| Err(io::Error::other("fsync failed"));
        assert!(create_dirs(&t.join("x/y"), &mut failing).is_err());
    }

    #[tokio::test]
    async fn files_and_directories_are_owner_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("new/repo");
        let store = FsStore::new(&root).expect("store");
        store
            .put(
                "j/b1/manifest.json",
                Bytes::from_static(b"{}"),
                PutOptions::default(),
            )
            .await
            .expect("put");
        let mut upload = store.put_multipart("j/b2/data").await.expect("start");
        upload
            .put_part(Bytes::from_static(b"x"))
            .await
            .expect("part");
        let pending = store.list_multipart_uploads("j/").await.expect("pending");
        let partial = root.join("j/b2").join(&pending[0].upload_id);
        assert_eq!(mode(&partial), 0o600, "partial file");
        upload.complete().await.expect("complete");
        for d in [
            "new",
            "new/repo",
            "new/repo/j",
            "new/repo/j/b1",
            "new/repo/j/b2",
        ] {
            assert_eq!(mode(&dir.path().join(d)), 0o700, "{d}");
        }
        for f in ["j/b1/manifest.json", "j/b2/data"] {
            assert_eq!(mode(&root.join(f)), 0o600, "{f}");
        }
        // A directory that was there keeps its mode.
        fs::set_permissions(root.join("j"), Permissions::from_mode(0o750)).expect("chmod");
        store
            .put("j/b3/x", Bytes::from_static(b"1"), PutOptions::default())
            .await
            .expect("put");
        assert_eq!(mode(&root.join("j")), 0o750);
        assert_eq!(mode(&root.join("j/b3")), 0o700);
    }

    #[tokio::test]
    async fn keys_cannot_escape_the_root_or_use_reserved_names() {
        let (_dir, store) = store();
        for key in [
            "../x",
            "a/../../x",
            "/etc/passwd",
            "a//b",
            "a/",
            "",
            "a/.b.refugio-partial-1",
        ] {
            let err = store
                .put(key, Bytes::new(), PutOptions::default())
                .await
                .expect_err(key);
            assert!(matches!(err, Error::InvalidKey { .. }), "{key}: {err:?}");
        }
        let listed: Result<Vec<ObjectMeta>> = store.list("../").try_collect().await;
        assert!(matches!(listed, Err(Error::InvalidKey { .. })));
    }
}
