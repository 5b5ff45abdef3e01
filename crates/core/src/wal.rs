//! The WAL archive of a physical job: `refugio wal-push` (PostgreSQL's
//! `archive_command`) and `refugio wal-fetch` (its `restore_command`), and
//! the listing that check, retention and drills read.
//!
//! Layout: `<job>/wal/<timeline>/<file>.<sha256>[.s<signature>].zst[.age]`, where
//! `<file>` is the name PostgreSQL gave (`000000010000000000000003`,
//! `00000002.history`, `….backup`, `….partial`) and `<sha256>` the
//! SHA-256 of its bytes as PostgreSQL wrote them. The digest in the name
//! does three jobs without a manifest per segment: a fetch checks the
//! bytes it writes against it (after decryption and decompression: end
//! to end), a push of the same file again finds it by listing and
//! succeeds, and a push of *different* bytes under a name already
//! archived is refused (it never overwrites: the first object stays).
//! Two processes pushing different bytes at the same moment (a split
//! brain) both store theirs, under different names; a fetch then refuses
//! to choose and names both. The digest of a WAL file reveals nothing of
//! its content beyond confirming a guess of all 16 MiB of it.
//!
//! In an authenticated repository (`[repository.authentication]`) the name
//! also carries the pushing server's Ed25519 signature of the rest of the
//! key ([`refugio_store::auth::WalSignature`]): the digest in the name
//! makes that a signature of the content too. Readers use only files a
//! trusted `server_keys` key signed; others are foreign: a fetch skips them
//! (and refuses a file that has only foreign copies), a push neither
//! counts them as archived nor refuses to archive beside them, retention
//! and continuity ignore them, `check` reports them.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use refugio_dump::wal::WalName;
use refugio_dump::Compression;
use refugio_store::auth::{Authentication, WalSignature};
use refugio_store::repo::Repository;
use refugio_store::upload::{upload_stream, UploadOptions};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

use crate::encryption::{self, Encrypting, Identities, Recipients};
use crate::error::{Error, Result};

/// One archived WAL file, as the listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalObject {
    pub key: String,
    pub name: WalName,
    /// SHA-256 of the file as PostgreSQL wrote it.
    pub sha256: String,
    pub compression: Compression,
    pub encrypted: bool,
    pub size: u64,
    pub last_modified: Option<DateTime<Utc>>,
    /// The pushing server's signature (an authenticated repository).
    pub signature: Option<WalSignature>,
}

/// What a WAL object's name says.
pub type ParsedName = (WalName, String, Compression, bool, Option<WalSignature>);

/// Reads `<file>.<sha256>[.s<signature>]<suffix>` (the part of a key after
/// the timeline folder); None for anything else.
pub fn parse_object_name(rest: &str) -> Option<ParsedName> {
    let parts: Vec<&str> = rest.split('.').collect();
    let at = parts
        .iter()
        .position(|p| p.len() == 64 && p.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))?;
    let name = WalName::parse(&parts[..at].join("."))?;
    let mut suffix = &parts[at + 1..];
    let signature = match suffix.first().and_then(|p| WalSignature::parse_part(p)) {
        Some(sig) => {
            suffix = &suffix[1..];
            Some(sig)
        }
        None => None,
    };
    let (compression, encrypted) = match suffix {
        [] => (Compression::None, false),
        ["age"] => (Compression::None, true),
        ["zst"] => (Compression::Zstd, false),
        ["zst", "age"] => (Compression::Zstd, true),
        ["gz"] => (Compression::Gzip, false),
        ["gz", "age"] => (Compression::Gzip, true),
        _ => return None,
    };
    Some((
        name,
        parts[at].to_string(),
        compression,
        encrypted,
        signature,
    ))
}

/// The key a WAL file is stored under.
pub fn object_key(
    job: &str,
    name: &WalName,
    sha256: &str,
    c: Compression,
    encrypted: bool,
    signature: Option<&WalSignature>,
) -> String {
    format!(
        "{}{}.{sha256}{}{}{}",
        Repository::wal_prefix(job, Some(&name.timeline_dir())),
        name.name,
        signature
            .map(|s| format!(".{}", s.to_part()))
            .unwrap_or_default(),
        c.suffix(),
        if encrypted { encryption::SUFFIX } else { "" }
    )
}

/// Every archived file of a job, in key order (timeline, then name). One
/// paginated listing; keys that are not WAL objects are skipped.
pub async fn list(repo: &Repository, job: &str) -> Result<Vec<WalObject>> {
    list_under(repo, &Repository::wal_prefix(job, None)).await
}

async fn list_under(repo: &Repository, prefix: &str) -> Result<Vec<WalObject>> {
    let mut out = Vec::new();
    let mut objects = repo.store().list(prefix);
    while let Some(o) = objects.try_next().await? {
        out.extend(WalObject::from_listed(&o.key, o.size, o.last_modified));
    }
    Ok(out)
}

impl WalObject {
    /// The archived file a listed key names; None for any other key.
    pub fn from_listed(
        key: &str,
        size: u64,
        last_modified: Option<DateTime<Utc>>,
    ) -> Option<WalObject> {
        let rest = key.rsplit('/').next()?;
        let (name, sha256, compression, encrypted, signature) = parse_object_name(rest)?;
        // A file in the folder of another timeline is not ours to read.
        if !key.ends_with(&format!("/{}/{rest}", name.timeline_dir())) {
            return None;
        }
        Some(WalObject {
            key: key.to_string(),
            name,
            sha256,
            compression,
            encrypted,
            size,
            last_modified,
            signature,
        })
    }

    /// The key without its signature part: what the signature signs.
    pub fn unsigned_key(&self) -> String {
        match &self.signature {
            Some(sig) => self.key.replacen(&format!(".{}", sig.to_part()), "", 1),
            None => self.key.clone(),
        }
    }

    /// Whether a key trusted for the server role signed it; Err: why not.
    pub fn authentic(&self, auth: &Authentication) -> std::result::Result<(), String> {
        auth.verify_wal(&self.unsigned_key(), &self.sha256, self.signature.as_ref())
    }
}

/// Splits archived files into those a reader may use (all of them in an
/// unauthenticated repository) and the foreign ones, each with why.
pub fn authentic(
    repo: &Repository,
    objects: Vec<WalObject>,
) -> (Vec<WalObject>, Vec<(WalObject, String)>) {
    let Some(auth) = repo.authentication() else {
        return (objects, Vec::new());
    };
    let mut trusted = Vec::new();
    let mut foreign = Vec::new();
    for o in objects {
        match o.authentic(auth) {
            Ok(()) => trusted.push(o),
            Err(why) => foreign.push((o, why)),
        }
    }
    (trusted, foreign)
}

/// The stored objects of one file name (normally one).
async fn find(repo: &Repository, job: &str, name: &WalName) -> Result<Vec<WalObject>> {
    let prefix = format!(
        "{}{}.",
        Repository::wal_prefix(job, Some(&name.timeline_dir())),
        name.name
    );
    let mut v = list_under(repo, &prefix).await?;
    v.retain(|o| o.name.name == name.name);
    Ok(v)
}

fn wal_name(given: &str) -> Result<WalName> {
    WalName::parse(given).ok_or_else(|| Error::NotWalName {
        given: given.to_string(),
    })
}

/// WAL that retention removes.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct WalPruned {
    pub files: u64,
    pub bytes: u64,
    /// Everything before this segment (the oldest kept base backup's
    /// start) goes; None: nothing goes.
    pub before: Option<String>,
}

impl WalPruned {
    /// Nothing to prune and no physical base backup to prune against.
    pub fn is_empty(&self) -> bool {
        self.files == 0 && self.before.is_none()
    }
}

/// The archived WAL no kept base backup needs: segments (and `.partial`
/// and `.backup` files) numbered before the oldest kept base backup's
/// start segment, on any timeline (recovery only reads forward from a
/// backup's start). History files always stay. Nothing goes when no kept
/// backup is a physical one.
pub fn prunable<'a>(
    archived: &[WalObject],
    kept: impl IntoIterator<Item = &'a refugio_store::manifest::Manifest>,
) -> (WalPruned, Vec<String>) {
    let mut oldest: Option<(u64, u64, String)> = None;
    for m in kept {
        let Some(p) = &m.physical else { continue };
        let Some(start) = refugio_dump::wal::Lsn::parse(&p.start_lsn) else {
            continue;
        };
        let seg = start.segment(p.wal_segment_size);
        if oldest.as_ref().is_none_or(|(s, _, _)| seg < *s) {
            let name = refugio_dump::wal::segment_name(p.timeline, seg, p.wal_segment_size);
            oldest = Some((seg, p.wal_segment_size, name));
        }
    }
    let Some((first, size, name)) = oldest else {
        return (WalPruned::default(), Vec::new());
    };
    let doomed: Vec<&WalObject> = archived
        .iter()
        .filter(|o| o.name.kind != refugio_dump::wal::WalKind::History)
        .filter(|o| o.name.segment_number(size) < first)
        .collect();
    (
        WalPruned {
            files: doomed.len() as u64,
            bytes: doomed.iter().map(|o| o.size).sum(),
            before: Some(name),
        },
        doomed.iter().map(|o| o.key.clone()).collect(),
    )
}

/// What `wal-push` is to archive.
#[derive(Debug, Clone)]
pub struct WalPushOptions {
    pub job: String,
    /// `%p`: the file, relative to the data directory (the command's
    /// working directory) or absolute.
    pub path: PathBuf,
    pub compression: Compression,
    pub compression_level: Option<i32>,
    pub encryption: Option<Recipients>,
}

/// What `wal-push` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalPushReport {
    pub key: String,
    /// False: the same bytes were archived before; nothing was written.
    pub stored: bool,
    /// Bytes of the file.
    pub raw_size: u64,
    /// Bytes stored (0 when already archived).
    pub stored_size: u64,
}

/// SHA-256 of the bytes read through it, readable after it was moved
/// into a pipeline.
struct Digesting<R> {
    inner: R,
    hash: Arc<Mutex<(Sha256, u64)>>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Digesting<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let mut h = self.hash.lock().unwrap_or_else(|p| p.into_inner());
            h.0.update(&buf.filled()[before..]);
            h.1 += (buf.filled().len() - before) as u64;
        }
        r
    }
}

fn local(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::WalFile {
        action: what.to_string(),
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

async fn digest_file(path: &Path) -> Result<(String, u64)> {
    let mut f = tokio::fs::File::open(path)
        .await
        .map_err(|e| local("opening", path, e))?;
    let mut h = Sha256::new();
    let mut n = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let k = f
            .read(&mut buf)
            .await
            .map_err(|e| local("reading", path, e))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((hex::encode(h.finalize()), n))
}

/// Archives one WAL file; returns only once it is durably stored (or was
/// already). Refuses different bytes under an archived name.
pub async fn push(repo: &Repository, opts: &WalPushOptions) -> Result<WalPushReport> {
    let file_name = opts
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = wal_name(&file_name)?;
    repo.can_sign_as(
        refugio_store::auth::Role::Server,
        &format!("WAL file {} of job {}", name.name, opts.job),
    )?;
    let (sha256, raw_size) = digest_file(&opts.path).await?;
    let (existing, foreign) = authentic(repo, find(repo, &opts.job, &name).await?);
    for (o, why) in &foreign {
        tracing::warn!(key = %o.key, reason = %why, "foreign-wal: not signed by a trusted server key; ignored (archiving beside it)");
    }
    if let Some(same) = existing.iter().find(|o| o.sha256 == sha256) {
        return Ok(WalPushReport {
            key: same.key.clone(),
            stored: false,
            raw_size,
            stored_size: 0,
        });
    }
    if let Some(other) = existing.first() {
        return Err(Error::WalOverwrite {
            name: name.name.clone(),
            key: other.key.clone(),
            existing: other.sha256.clone(),
            new: sha256,
            path: opts.path.display().to_string(),
        });
    }
    let encrypted = opts.encryption.is_some();
    let signature = match repo.authentication() {
        Some(auth) => {
            let unsigned = object_key(&opts.job, &name, &sha256, opts.compression, encrypted, None);
            Some(auth.sign_wal(&unsigned, &sha256)?)
        }
        None => None,
    };
    let key = object_key(
        &opts.job,
        &name,
        &sha256,
        opts.compression,
        encrypted,
        signature.as_ref(),
    );
    let file = tokio::fs::File::open(&opts.path)
        .await
        .map_err(|e| local("opening", &opts.path, e))?;
    let hash = Arc::new(Mutex::new((Sha256::new(), 0u64)));
    let read = Digesting {
        inner: file,
        hash: hash.clone(),
    };
    let compressed = opts.compression.encoder(read, opts.compression_level);
    let sealed: Pin<Box<dyn AsyncRead + Send>> = match &opts.encryption {
        Some(to) => Box::pin(Encrypting::new(compressed, to)?),
        None => compressed,
    };
    // A segment (16 MiB before compression) goes up in one PUT.
    let upload = UploadOptions {
        part_size: 32 * 1024 * 1024,
        concurrency: 2,
        expected_size: Some(raw_size),
    };
    let outcome = upload_stream(repo.store().as_ref(), &key, sealed, &upload)
        .await
        .map_err(|e| match e {
            refugio_store::Error::Source { source, .. } => local("reading", &opts.path, source),
            e => Error::Store(e),
        })?;
    let (h, n) = std::mem::take(&mut *hash.lock().unwrap_or_else(|p| p.into_inner()));
    let again = hex::encode(h.finalize());
    if again != sha256 || n != raw_size {
        let _ = repo.store().delete(&key).await;
        return Err(Error::WalChanged {
            path: opts.path.display().to_string(),
            before: sha256,
            after: again,
        });
    }
    Ok(WalPushReport {
        key,
        stored: true,
        raw_size,
        stored_size: outcome.size,
    })
}

/// What `wal-fetch` is to restore.
#[derive(Debug, Clone)]
pub struct WalFetchOptions {
    pub job: String,
    /// `%f`: the file PostgreSQL asks for.
    pub name: String,
    /// `%p`: where to write it.
    pub dest: PathBuf,
    pub identities: Option<Arc<Identities>>,
}

/// What `wal-fetch` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalFetched {
    /// Written to the destination, its digest checked.
    Restored { key: String, bytes: u64 },
    /// The archive has no such file (recovery ends there).
    NotFound,
}

/// Restores one archived WAL file to `dest`: decrypted, decompressed, and
/// written only if its bytes hash to the digest in its name (to a
/// temporary file first, renamed over `dest` once synced).
pub async fn fetch(repo: &Repository, opts: &WalFetchOptions) -> Result<WalFetched> {
    let name = wal_name(&opts.name)?;
    let (found, foreign) = authentic(repo, find(repo, &opts.job, &name).await?);
    for (o, why) in &foreign {
        tracing::warn!(key = %o.key, reason = %why, "foreign-wal: not signed by a trusted server key; not restored");
    }
    let object = match found.as_slice() {
        [] => {
            return match foreign.into_iter().next() {
                // Only foreign copies: refused, never "not archived" (a
                // recovery must not end quietly before it).
                Some((o, reason)) => Err(Error::Store(refugio_store::Error::Unauthenticated {
                    key: o.key,
                    reason,
                })),
                None => Ok(WalFetched::NotFound),
            };
        }
        [one] => one,
        many => {
            return Err(Error::WalTwice {
                name: name.name.clone(),
                keys: many.iter().map(|o| o.key.clone()).collect(),
                job: opts.job.clone(),
            })
        }
    };
    let reader = repo.store().get(&object.key).await?;
    let plain: Pin<Box<dyn AsyncRead + Send>> = if object.encrypted {
        encryption::decrypting(
            reader,
            opts.identities.as_deref(),
            &["the job's repository.encryption recipients".to_string()],
            &object.key,
        )
        .await?
    } else {
        reader
    };
    let mut decoded = object.compression.decoder(plain);
    let tmp = partial_path(&opts.dest);
    let result = async {
        let mut out = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| local("creating", &tmp, e))?;
        let mut h = Sha256::new();
        let mut n = 0u64;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let k = decoded
                .read(&mut buf)
                .await
                .map_err(|source| Error::Fetch {
                    key: object.key.clone(),
                    source,
                })?;
            if k == 0 {
                break;
            }
            h.update(&buf[..k]);
            n += k as u64;
            out.write_all(&buf[..k])
                .await
                .map_err(|e| local("writing", &tmp, e))?;
        }
        let got = hex::encode(h.finalize());
        if got != object.sha256 {
            return Err(Error::Damaged {
                key: object.key.clone(),
                detail: format!(
                    "it decodes to {n} bytes with SHA-256 {got}, not the {} its name records",
                    object.sha256
                ),
            });
        }
        out.sync_all()
            .await
            .map_err(|e| local("syncing", &tmp, e))?;
        drop(out);
        tokio::fs::rename(&tmp, &opts.dest)
            .await
            .map_err(|e| local("renaming into place", &opts.dest, e))?;
        Ok(n)
    }
    .await;
    match result {
        Ok(bytes) => Ok(WalFetched::Restored {
            key: object.key.clone(),
            bytes,
        }),
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            Err(e)
        }
    }
}

fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".refugio-partial");
    dest.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_round_trip() {
        let sha = "ab".repeat(32);
        for (name, c, enc) in [
            ("000000010000000000000003", Compression::Zstd, false),
            ("00000002.history", Compression::Zstd, true),
            (
                "000000010000000000000002.00000028.backup",
                Compression::None,
                false,
            ),
            ("000000020000000000000005.partial", Compression::Gzip, true),
        ] {
            let n = WalName::parse(name).unwrap();
            let sig = WalSignature {
                key_id: "0123456789abcdef".into(),
                signature: [7; 64],
            };
            for signature in [None, Some(&sig)] {
                let key = object_key("j", &n, &sha, c, enc, signature);
                let rest = key.rsplit('/').next().unwrap();
                assert!(rest.len() <= 255, "{rest}: longer than a file name may be");
                let (back, s, c2, e2, sig2) = parse_object_name(rest).unwrap();
                assert_eq!(
                    (back, s.as_str(), c2, e2, sig2.as_ref()),
                    (n.clone(), sha.as_str(), c, enc, signature),
                    "{key}"
                );
            }
        }
        assert!(object_key(
            "j",
            &WalName::parse("0000000A.history").unwrap(),
            &sha,
            Compression::Zstd,
            false,
            None
        )
        .starts_with("j/wal/0000000A/0000000A.history."));
        for bad in [
            "000000010000000000000003.zst",
            "000000010000000000000003.ABAB.zst",
            &format!("000000010000000000000003.{sha}.lz4"),
            &format!("notwal.{sha}.zst"),
        ] {
            assert_eq!(parse_object_name(bad), None, "{bad}");
        }
    }
}
