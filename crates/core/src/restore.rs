//! `refugio restore`: one committed backup into one database.

use std::path::PathBuf;
use std::time::Instant;

use refugio_dump::process::{check_exit, tool_error, StderrTail};
use refugio_dump::snapshot::quote_ident;
use refugio_dump::spawn::{self, RestoreArgs};
use refugio_dump::tools::{self, PgVersion, ToolKind};
use refugio_dump::{Compression, SourceSpec};
use refugio_store::manifest::{Artifact, Manifest};
use refugio_store::repo::Repository;
use refugio_store::verified;
use serde::Serialize;
use sqlx::{Connection, Executor, Row};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio_util::sync::CancellationToken;

use crate::encryption::{self, Identities};
use crate::error::{Error, Result};
use crate::feed::{feed_held_back, FeedError};

/// Largest globals artifact we accept (roles and tablespaces: small).
const MAX_GLOBALS: u64 = 64 * 1024 * 1024;

/// What to restore where, and how.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The target database (its name is the URL's database).
    pub target: SourceSpec,
    /// Restore over existing objects (`pg_restore --clean --if-exists`).
    pub clean: bool,
    /// Create the target database when it does not exist.
    pub create: bool,
    /// Apply the backup's roles and tablespaces first.
    pub globals: bool,
    /// Parallel `pg_restore` jobs; > 1 downloads the archive to a temporary
    /// file first (`pg_restore -j` cannot read a pipe).
    pub jobs: u32,
    /// Skip ownership (`--no-owner`).
    pub no_owner: bool,
    /// Directory of the restore tools; None = search (see `refugio_dump::tools`).
    pub bindir: Option<PathBuf>,
    /// Where the temporary archive goes when `jobs > 1`; None = the system temp dir.
    pub temp_dir: Option<PathBuf>,
    /// Private keys for encrypted backups; None: none configured (an
    /// encrypted backup is then refused before the target is touched).
    pub identities: Option<Arc<Identities>>,
}

/// How an artifact's stored bytes turn into the archive: decrypted when
/// sealed, then decompressed.
#[derive(Clone, Copy)]
struct Decode<'a> {
    compression: Compression,
    seal: Option<Sealing<'a>>,
}

/// How an artifact is encrypted, and what may open it.
#[derive(Clone, Copy)]
struct Sealing<'a> {
    /// The manifest's recipients, for messages.
    recipients: &'a [String],
    identities: Option<&'a Identities>,
}

/// The sealing of `art`: None when it is stored unencrypted.
fn sealing<'a>(
    manifest: &'a Manifest,
    art: &Artifact,
    key: &str,
    opts: &'a RestoreOptions,
) -> Result<Option<Sealing<'a>>> {
    match art.encryption.as_str() {
        "none" => Ok(None),
        encryption::AGE => Ok(Some(Sealing {
            recipients: manifest
                .encryption
                .as_ref()
                .map_or(&[][..], |e| e.recipients.as_slice()),
            identities: opts.identities.as_deref(),
        })),
        other => Err(Error::Artifact {
            key: key.to_string(),
            detail: format!("encryption {other:?} is not supported by this refugio"),
        }),
    }
}

/// Opens the age header of `key` with the configured identities, and
/// closes it again: a missing or wrong identity fails here, before the
/// target is touched.
async fn check_identity(
    repo: &Repository,
    key: &str,
    art: &Artifact,
    seal: Sealing<'_>,
) -> Result<()> {
    if seal.identities.is_none() {
        return encryption::decrypting(tokio::io::empty(), None, seal.recipients, key)
            .await
            .map(drop);
    }
    let reader =
        verified::get_verified(repo.store().as_ref(), key, art.stored_size, &art.sha256).await?;
    encryption::decrypting(reader, seal.identities, seal.recipients, key)
        .await
        .map(drop)
}

/// What a restore did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub job: String,
    pub backup_id: String,
    pub database: String,
    pub target: String,
    pub tool: String,
    pub tool_version: String,
    pub bytes_fetched: u64,
    pub globals_applied: bool,
    pub seconds: f64,
}

/// Restores `manifest`'s backup from `repo` as `opts` say. Cancelling
/// kills the restore tool before it commits (a single-transaction restore
/// leaves nothing) and returns [`Error::Cancelled`].
pub async fn restore(
    repo: &Repository,
    manifest: &Manifest,
    opts: &RestoreOptions,
    cancel: &CancellationToken,
) -> Result<RestoreReport> {
    tokio::select! {
        r = restore_into(repo, manifest, opts) => r,
        _ = cancel.cancelled() => Err(Error::Cancelled {
            what: format!("restore of backup {}", manifest.backup_id),
            detail: "the restore tool was stopped".into(),
        }),
    }
}

/// [`restore`] without cancellation (the drill cancels around it).
pub(crate) async fn restore_into(
    repo: &Repository,
    manifest: &Manifest,
    opts: &RestoreOptions,
) -> Result<RestoreReport> {
    let started = Instant::now();
    let db_art = manifest
        .artifact("database")
        .ok_or_else(|| Error::NoArtifact {
            backup: manifest.backup_id.clone(),
            kind: "database".into(),
        })?;
    let custom = db_art.format == "custom";
    let dumped_by =
        PgVersion::parse(&manifest.pg_dump_version).unwrap_or(PgVersion { major: 0, minor: 0 });
    let kind = if custom {
        ToolKind::PgRestore
    } else {
        ToolKind::Psql
    };
    let what = format!(
        "backup {} (written by pg_dump {})",
        manifest.backup_id, manifest.pg_dump_version
    );
    let tool = tools::find_for(kind, dumped_by, &what, opts.bindir.as_deref()).await?;
    let database = opts.target.database().ok_or_else(|| Error::Artifact {
        key: "target".into(),
        detail: "the target URL names no database".into(),
    })?;

    let key = Repository::key(&manifest.job, &manifest.backup_id, &db_art.name);
    let seal = sealing(manifest, db_art, &key, opts)?;
    if let Some(seal) = seal {
        check_identity(repo, &key, db_art, seal).await?;
    }
    // `--jobs N` needs the whole archive on disk: refuse before anything
    // is created or downloaded when it cannot fit.
    if custom && opts.jobs > 1 {
        let dir = opts.temp_dir.clone().unwrap_or_else(std::env::temp_dir);
        check_temp_space(&dir, db_art.raw_size)?;
    }
    prepare_target(opts, &database).await?;

    let mut globals_applied = false;
    if opts.globals {
        match manifest.artifact("globals") {
            Some(g) => {
                apply_globals(repo, manifest, g, opts, dumped_by).await?;
                globals_applied = true;
            }
            None => {
                return Err(Error::NoArtifact {
                    backup: manifest.backup_id.clone(),
                    kind: "globals".into(),
                })
            }
        }
    }

    let compression = Compression::parse(&db_art.compression).ok_or_else(|| Error::Artifact {
        key: key.clone(),
        detail: format!("unknown compression {:?}", db_art.compression),
    })?;
    let decode = Decode { compression, seal };

    let fetched = if custom && opts.jobs > 1 {
        restore_parallel(repo, &key, db_art, decode, &tool, opts).await?
    } else {
        restore_streaming(repo, &key, db_art, decode, &tool, opts, custom).await?
    };

    Ok(RestoreReport {
        job: manifest.job.clone(),
        backup_id: manifest.backup_id.clone(),
        database,
        target: opts.target.redacted(),
        tool: tool.path.display().to_string(),
        tool_version: tool.version.to_string(),
        bytes_fetched: fetched,
        globals_applied,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Creates the database when asked, and refuses a non-empty one without `--clean`.
async fn prepare_target(opts: &RestoreOptions, database: &str) -> Result<()> {
    let admin = opts.target.with_database("postgres");
    let mut conn = admin.connect().await?;
    let exists: bool =
        sqlx::query("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS e")
            .bind(database)
            .fetch_one(&mut conn)
            .await
            .map_err(|e| refugio_dump::Error::Query {
                url: admin.redacted(),
                what: "checking the target database".into(),
                source: e,
            })?
            .get("e");
    if !exists {
        if !opts.create {
            return Err(Error::TargetMissing {
                target: opts.target.redacted(),
                database: database.to_string(),
            });
        }
        conn.execute(format!("CREATE DATABASE {}", quote_ident(database)).as_str())
            .await
            .map_err(|e| refugio_dump::Error::Query {
                url: admin.redacted(),
                what: format!("CREATE DATABASE {database}"),
                source: e,
            })?;
    }
    let _ = conn.close().await;

    let mut conn = opts.target.connect().await?;
    let row = conn
        .fetch_one(
            "SELECT count(*) AS n, min(n.nspname || '.' || c.relname) AS example \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') \
               AND n.nspname NOT LIKE 'pg_temp_%' \
               AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
                               AND d.objid = c.oid AND d.deptype = 'e')",
        )
        .await
        .map_err(|e| refugio_dump::Error::Query {
            url: opts.target.redacted(),
            what: "checking that the target is empty".into(),
            source: e,
        })?;
    let _ = conn.close().await;
    let tables: i64 = row.get("n");
    if tables > 0 && !opts.clean {
        return Err(Error::TargetNotEmpty {
            target: opts.target.redacted(),
            database: database.to_string(),
            tables,
            example: row.get::<Option<String>, _>("example").unwrap_or_default(),
        });
    }
    Ok(())
}

/// Fetches the globals whole (they are small) with their digest checked,
/// then applies them with psql. "already exists" errors are expected (the
/// bootstrap superuser, roles restored before) and tolerated; any other
/// error fails the restore.
async fn apply_globals(
    repo: &Repository,
    manifest: &Manifest,
    art: &Artifact,
    opts: &RestoreOptions,
    dumped_by: PgVersion,
) -> Result<()> {
    let key = Repository::key(&manifest.job, &manifest.backup_id, &art.name);
    if art.raw_size > MAX_GLOBALS {
        return Err(Error::Artifact {
            key,
            detail: format!("globals of {} bytes exceed {MAX_GLOBALS}", art.raw_size),
        });
    }
    let compression = Compression::parse(&art.compression).ok_or_else(|| Error::Artifact {
        key: key.clone(),
        detail: format!("unknown compression {:?}", art.compression),
    })?;
    let reader =
        verified::get_verified(repo.store().as_ref(), &key, art.stored_size, &art.sha256).await?;
    let plain: Pin<Box<dyn AsyncRead + Send>> = match sealing(manifest, art, &key, opts)? {
        Some(seal) => {
            encryption::decrypting(reader, seal.identities, seal.recipients, &key).await?
        }
        None => Box::pin(reader),
    };
    let mut sql = Vec::new();
    compression
        .decoder(plain)
        .take(MAX_GLOBALS)
        .read_to_end(&mut sql)
        .await
        .map_err(|source| Error::Fetch {
            key: key.clone(),
            source,
        })?;

    let what = format!(
        "the globals of backup {} (written by pg_dumpall {})",
        manifest.backup_id, manifest.pg_dump_version
    );
    let psql = tools::find_for(ToolKind::Psql, dumped_by, &what, opts.bindir.as_deref()).await?;
    let target = opts.target.with_database("postgres");
    let mut child = spawn::psql(&psql, &target, false, false)?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| Error::Globals("psql stdin not piped".into()))?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| Error::Globals("psql stderr not piped".into()))?;
    let (tail, task) = StderrTail::collect("psql", stderr);
    let fed = feed_held_back(&sql[..], stdin).await;
    check_exit("psql", &mut child, &tail, Some(task)).await?;
    if let Err(FeedError::Sink(e) | FeedError::Source(e)) = fed {
        return Err(Error::Globals(format!("writing to psql: {e}")));
    }
    let unexpected: Vec<String> = tail
        .text()
        .lines()
        .filter(|l| l.contains("ERROR:") && !l.contains("already exists"))
        .map(str::to_string)
        .collect();
    if !unexpected.is_empty() {
        return Err(Error::Globals(unexpected.join("\n")));
    }
    Ok(())
}

/// One job: artifact → digest check → decompress → tool stdin, in one
/// transaction that commits only if the whole artifact checked out.
async fn restore_streaming(
    repo: &Repository,
    key: &str,
    art: &Artifact,
    decode: Decode<'_>,
    tool: &refugio_dump::Tool,
    opts: &RestoreOptions,
    custom: bool,
) -> Result<u64> {
    let (plain, raw) = open_artifact(repo, key, art, decode).await?;
    let mut child = if custom {
        let args = RestoreArgs {
            jobs: 1,
            clean: opts.clean,
            no_owner: opts.no_owner,
            single_transaction: true,
        };
        spawn::pg_restore(tool, &opts.target, &args, None)?
    } else {
        spawn::psql(tool, &opts.target, true, true)?
    };
    let name = tool.kind.binary();
    let stdin = child.stdin.take().ok_or_else(|| Error::Artifact {
        key: key.into(),
        detail: format!("{name} stdin not piped"),
    })?;
    let stderr = child.stderr.take().ok_or_else(|| Error::Artifact {
        key: key.into(),
        detail: format!("{name} stderr not piped"),
    })?;
    let (tail, task) = StderrTail::collect(name, stderr);
    match feed_held_back(plain, stdin).await {
        Ok(_) => {
            if let Err(e) = check_exit(name, &mut child, &tail, Some(task)).await {
                return Err(tool_failed(opts, e).await);
            }
            Ok(art.stored_size)
        }
        Err(FeedError::Source(source)) => {
            // Kill before the tool sees the end of its input: its single
            // transaction never commits.
            let _ = child.kill().await;
            Err(explain(repo, key, art, source, raw).await)
        }
        Err(FeedError::Sink(_)) => {
            // The tool stopped reading: its exit status and stderr say why.
            if let Err(e) = check_exit(name, &mut child, &tail, Some(task)).await {
                return Err(tool_failed(opts, e).await);
            }
            Err(Error::Artifact {
                key: key.into(),
                detail: format!("{name} exited before reading the whole archive"),
            })
        }
    }
}

/// A reader that stays reachable after it was moved into a decoder, so the
/// raw stream can be drained to its end when decoding fails.
struct Shared<R>(Arc<Mutex<R>>);

impl Shared<Raw> {
    /// Whether the raw stream was read to its end with size and digest as
    /// the manifest says.
    fn is_verified(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_verified()
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Shared<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let mut inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        Pin::new(&mut *inner).poll_read(cx, buf)
    }
}

/// Opens an artifact with size and digest checks (on the stored bytes),
/// decrypting when sealed, decompressing; keeps a handle on the raw stream
/// for [`explain`].
async fn open_artifact(
    repo: &Repository,
    key: &str,
    art: &Artifact,
    decode: Decode<'_>,
) -> Result<(Pin<Box<dyn AsyncRead + Send>>, Shared<Raw>)> {
    let reader =
        verified::get_verified(repo.store().as_ref(), key, art.stored_size, &art.sha256).await?;
    let shared = Arc::new(Mutex::new(reader));
    let plain: Pin<Box<dyn AsyncRead + Send>> = match decode.seal {
        Some(seal) => {
            let opened = encryption::decrypting(
                Shared(shared.clone()),
                seal.identities,
                seal.recipients,
                key,
            )
            .await;
            match opened {
                Ok(reader) => reader,
                // A header that does not parse is damage only if the stored
                // bytes match the manifest; else the download went wrong.
                Err(Error::Damaged { detail, .. }) => {
                    let cause = std::io::Error::new(std::io::ErrorKind::InvalidData, detail);
                    return Err(explain(repo, key, art, cause, Shared(shared)).await);
                }
                Err(e) => return Err(e),
            }
        }
        None => Box::pin(Shared(shared.clone())),
    };
    let decoded = decode.compression.decoder(plain);
    Ok((decoded, Shared(shared)))
}

type Raw = verified::VerifiedReader<refugio_store::ByteReader>;

/// A decoding error may be the symptom of damaged stored bytes: read the
/// rest of the raw stream so its size/digest check can name the real cause.
/// Bytes that match the manifest and still do not decode are damage too.
async fn explain(
    repo: &Repository,
    key: &str,
    art: &Artifact,
    decode_error: std::io::Error,
    mut raw: Shared<Raw>,
) -> Error {
    if is_store_error(&decode_error) {
        return fetch_error(repo, key, art, decode_error).await;
    }
    match tokio::io::copy(&mut raw, &mut tokio::io::sink()).await {
        Err(e) if is_store_error(&e) => fetch_error(repo, key, art, e).await,
        Ok(_) if raw.is_verified() => Error::Damaged {
            key: key.into(),
            detail: format!(
                "its bytes match the manifest's size and SHA-256 but do not decrypt or decompress: {decode_error}"
            ),
        },
        _ => fetch_error(repo, key, art, decode_error).await,
    }
}

fn is_store_error(e: &std::io::Error) -> bool {
    e.get_ref()
        .is_some_and(|i| i.downcast_ref::<refugio_store::Error>().is_some())
}

/// Tells "the stored object is bad" from "the download went wrong". A
/// digest mismatch, or a size mismatch the store confirms, is damage; a
/// download that ended early while the store still holds the whole object
/// (a cut connection) is not, and neither is any other store or network
/// error: those mean the backup could not be checked.
async fn fetch_error(
    repo: &Repository,
    key: &str,
    art: &Artifact,
    source: std::io::Error,
) -> Error {
    let inner = source
        .get_ref()
        .and_then(|e| e.downcast_ref::<refugio_store::Error>());
    match inner {
        Some(refugio_store::Error::SizeMismatch { actual, .. }) if *actual < art.stored_size => {
            match repo.store().head(key).await {
                Ok(Some(meta)) if meta.size == art.stored_size => Error::Fetch {
                    key: key.into(),
                    source: std::io::Error::other(format!(
                        "the download ended after {actual} of {} bytes while the stored object is whole",
                        art.stored_size
                    )),
                },
                Ok(_) => Error::Damaged {
                    key: key.into(),
                    detail: inner.map(ToString::to_string).unwrap_or_default(),
                },
                Err(e) => Error::Fetch {
                    key: key.into(),
                    source: std::io::Error::other(format!(
                        "the download ended early and the object's size could not be checked: {e}"
                    )),
                },
            }
        }
        Some(e @ (refugio_store::Error::SizeMismatch { .. } | refugio_store::Error::DigestMismatch { .. })) => {
            Error::Damaged {
                key: key.into(),
                detail: e.to_string(),
            }
        }
        Some(_) => Error::Fetch {
            key: key.into(),
            source,
        },
        None => match tool_error(&source) {
            Some(t) => Error::Artifact {
                key: key.into(),
                detail: t.to_string(),
            },
            None => Error::Fetch {
                key: key.into(),
                source,
            },
        },
    }
}

/// What in a restore tool's stderr says the environment failed, not the
/// backup: the server went away, ran out of something, or lacks what the
/// backup needs from outside it (an extension's files, a role).
const ENVIRONMENT_ERRORS: &[&str] = &[
    "could not connect",
    "connection to server",
    "server closed the connection",
    "terminating connection",
    "the database system is",
    "No space left on device",
    "could not extend file",
    "out of memory",
    "too many connections",
    "could not open extension control file",
    "could not access file",
    "could not write to file",
    "canceling statement",
];

/// A restore tool that exited non-zero: its verdict on the content, or the
/// environment's failure (reachable target, stderr about resources).
async fn tool_failed(opts: &RestoreOptions, e: refugio_dump::Error) -> Error {
    let environment = match &e {
        refugio_dump::Error::ToolFailed { stderr_tail, .. } => {
            ENVIRONMENT_ERRORS.iter().any(|p| stderr_tail.contains(p))
                || stderr_tail
                    .lines()
                    .any(|l| l.contains("role \"") && l.contains("does not exist"))
                || opts.target.connect().await.is_err()
        }
        _ => true,
    };
    if environment {
        Error::Pg(e)
    } else {
        Error::Rejected(Box::new(e))
    }
}

/// Whether `dir` has room for `needed` bytes (and a margin of 1 %).
fn check_temp_space(dir: &std::path::Path, needed: u64) -> Result<()> {
    let stat = nix::sys::statvfs::statvfs(dir).map_err(|e| Error::TempFile {
        dir: dir.display().to_string(),
        source: std::io::Error::from(e),
    })?;
    let free = stat.blocks_available().saturating_mul(stat.fragment_size());
    let wanted = needed.saturating_add(needed / 100);
    if free < wanted {
        return Err(Error::NoSpace {
            dir: dir.display().to_string(),
            needed: wanted,
            free,
        });
    }
    Ok(())
}

/// Several jobs: the archive goes to a temporary file first (pg_restore -j
/// needs to seek), fully verified before pg_restore starts.
async fn restore_parallel(
    repo: &Repository,
    key: &str,
    art: &Artifact,
    decode: Decode<'_>,
    tool: &refugio_dump::Tool,
    opts: &RestoreOptions,
) -> Result<u64> {
    let dir = opts.temp_dir.clone().unwrap_or_else(std::env::temp_dir);
    let temp_error = |source| Error::TempFile {
        dir: dir.display().to_string(),
        source,
    };
    // A private directory (0700) holding the archive file (0600), both
    // removed on every path: for an encrypted backup the file holds the
    // decrypted archive (pg_restore -j cannot read age, nor a pipe).
    let private = tempfile::Builder::new()
        .prefix(".refugio-restore-")
        .tempdir_in(&dir)
        .map_err(temp_error)?;
    let tmp = tempfile::Builder::new()
        .prefix("archive-")
        .suffix(".dump")
        .tempfile_in(private.path())
        .map_err(temp_error)?;
    let (mut plain, raw) = open_artifact(repo, key, art, decode).await?;
    let file = tokio::fs::File::from_std(tmp.reopen().map_err(|source| Error::TempFile {
        dir: dir.display().to_string(),
        source,
    })?);
    let mut writer = tokio::io::BufWriter::with_capacity(256 * 1024, file);
    if let Err(e) = tokio::io::copy(&mut plain, &mut writer).await {
        return Err(explain(repo, key, art, e, raw).await);
    }
    use tokio::io::AsyncWriteExt;
    writer.flush().await.map_err(|source| Error::TempFile {
        dir: dir.display().to_string(),
        source,
    })?;
    drop(writer);

    let args = RestoreArgs {
        jobs: opts.jobs,
        clean: opts.clean,
        no_owner: opts.no_owner,
        single_transaction: false,
    };
    let mut child = spawn::pg_restore(tool, &opts.target, &args, Some(tmp.path()))?;
    let stderr = child.stderr.take().ok_or_else(|| Error::Artifact {
        key: key.into(),
        detail: "pg_restore stderr not piped".into(),
    })?;
    let (tail, task) = StderrTail::collect("pg_restore", stderr);
    if let Err(e) = check_exit("pg_restore", &mut child, &tail, Some(task)).await {
        return Err(tool_failed(opts, e).await);
    }
    Ok(art.stored_size)
}
