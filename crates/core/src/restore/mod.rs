//! `refugio restore`: one committed backup into one database.

use std::path::PathBuf;
use std::time::Instant;

mod fetch;
pub mod identity;
pub mod physical;
mod target;
mod untar;

use refugio_dump::process::{check_exit, StderrTail};
use refugio_dump::script;
use refugio_dump::spawn::{self, RestoreArgs};
use refugio_dump::tools::{self, PgVersion, ToolKind};
use refugio_dump::{Compression, SourceSpec};
use refugio_store::manifest::{Artifact, DumpUnit, Manifest};
use refugio_store::repo::Repository;
use refugio_store::verified;
use serde::Serialize;
use std::pin::Pin;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::encryption::{self, Identities};
use crate::error::{Error, Result};
use crate::feed::{feed_held_back, feed_script, FeedError, ScriptFrame};
use fetch::{explain, open_artifact};
use target::{check_temp_space, log_mark, tool_failed};

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
    /// `[repository.encryption]` is configured and the caller did not
    /// accept plaintext (`--allow-unencrypted`): an artifact stored
    /// unencrypted is refused as foreign, never restored (no silent
    /// downgrade by whoever can write the repository).
    pub require_encrypted: bool,
    /// Of a whole-server backup, the one database to restore (into the
    /// target URL's database, or under its own name when the URL names
    /// none). None: every database, each under its own name on the
    /// target's server. A one-database backup accepts only its own name.
    pub database: Option<String>,
    /// Counters and phase for a progress display; None: not shown.
    pub progress: Option<Arc<crate::Progress>>,
    /// Which source clusters the target must not be (by system
    /// identifier), checked before anything is changed. None: not checked
    /// (drills, whose scratch databases are their own).
    pub guard: Option<identity::TargetGuard>,
}

/// How an artifact's stored bytes turn into the archive: decrypted when
/// sealed, then decompressed.
#[derive(Clone, Copy)]
struct Decode<'a> {
    compression: Compression,
    seal: Option<Sealing<'a>>,
    progress: Option<&'a Arc<crate::Progress>>,
}

impl<'a> Decode<'a> {
    /// How artifact `art` (stored as `key`) is read back: its compression,
    /// as the manifest names it, and `seal`.
    fn of(
        art: &Artifact,
        key: &str,
        seal: Option<Sealing<'a>>,
        progress: Option<&'a Arc<crate::Progress>>,
    ) -> Result<Decode<'a>> {
        let compression = Compression::parse(&art.compression).ok_or_else(|| Error::Artifact {
            key: key.to_string(),
            detail: format!("unknown compression {:?}", art.compression),
        })?;
        Ok(Decode {
            compression,
            seal,
            progress,
        })
    }
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
        "none" if opts.require_encrypted => Err(unencrypted(key)),
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

/// An artifact stored in plaintext where encryption is configured.
pub(crate) fn unencrypted(key: &str) -> Error {
    Error::Foreign {
        key: key.to_string(),
        detail: "it is stored unencrypted, while [repository.encryption] is configured (whoever can write the repository could swap in plaintext); if it was written before encryption was configured, pass --allow-unencrypted to accept it".into(),
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
    /// The target database(s), `, `-joined.
    pub database: String,
    /// Each target database restored, in order.
    pub databases: Vec<String>,
    pub target: String,
    pub tool: String,
    pub tool_version: String,
    pub bytes_fetched: u64,
    pub globals_applied: bool,
    pub seconds: f64,
    /// The source cluster this restore overwrote, when allowed
    /// (`--overwrite-source`): its name and system identifier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overwrote_source: Option<String>,
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
    if manifest.is_physical() {
        return Err(Error::PhysicalBackup {
            backup: manifest.backup_id.clone(),
            job: manifest.job.clone(),
        });
    }
    let units = units_of(manifest)?;
    let available = || units.iter().map(|u| u.database.to_string()).collect();
    let unknown = |database: &str| Error::UnknownDatabase {
        backup: manifest.backup_id.clone(),
        database: database.to_string(),
        available: available(),
    };
    let url_database = opts.target.database();
    let plan: Vec<(DumpUnit<'_>, SourceSpec)> = match (&opts.database, manifest.is_server()) {
        // A one-database backup goes where the target URL says.
        (picked, false) => {
            let unit = units[0].clone();
            if picked.as_deref().is_some_and(|p| p != unit.database) {
                return Err(unknown(picked.as_deref().unwrap_or_default()));
            }
            vec![(unit, opts.target.clone())]
        }
        // One database of a whole-server backup: into the URL's database,
        // or under its own name when the URL names none.
        (Some(picked), true) => {
            let unit = units
                .iter()
                .find(|u| u.database == picked)
                .cloned()
                .ok_or_else(|| unknown(picked))?;
            let to = match &url_database {
                Some(_) => opts.target.clone(),
                None => opts.target.with_database(picked),
            };
            vec![(unit, to)]
        }
        // Every database of it, each under its own name on the URL's server.
        (None, true) => units
            .iter()
            .map(|u| (u.clone(), opts.target.with_database(u.database)))
            .collect(),
    };
    if let Some(p) = &opts.progress {
        p.add_total(plan.iter().map(|(u, _)| u.artifact.stored_size).sum());
    }
    restore_units(repo, manifest, &plan, opts).await
}

/// The dumped databases of `manifest`; one that lists a missing artifact
/// cannot be restored.
pub(crate) fn units_of(manifest: &Manifest) -> Result<Vec<DumpUnit<'_>>> {
    manifest.units().map_err(|e| Error::NoArtifact {
        backup: manifest.backup_id.clone(),
        kind: format!("database ({e})"),
    })
}

/// Restores each unit of `plan` into its target database. Everything that
/// can refuse is checked for every target before any is changed: the
/// restore tool, the identity of an encrypted backup, temporary space,
/// targets missing (without `create`) or holding tables (without `clean`).
pub(crate) async fn restore_units(
    repo: &Repository,
    manifest: &Manifest,
    plan: &[(DumpUnit<'_>, SourceSpec)],
    opts: &RestoreOptions,
) -> Result<RestoreReport> {
    let started = Instant::now();
    let Some((first, _)) = plan.first() else {
        return Err(Error::NoArtifact {
            backup: manifest.backup_id.clone(),
            kind: "database".into(),
        });
    };
    let custom = first.artifact.format == "custom";
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

    let key_of = |a: &Artifact| Repository::key(&manifest.job, &manifest.backup_id, &a.name);
    // The artifacts share one encryption: one header opened proves the key.
    let first_key = key_of(first.artifact);
    if let Some(seal) = sealing(manifest, first.artifact, &first_key, opts)? {
        check_identity(repo, &first_key, first.artifact, seal).await?;
    }
    // `--jobs N` needs the whole archive on disk (one at a time): refuse
    // before anything is created or downloaded when the largest cannot fit.
    if custom && opts.jobs > 1 {
        let dir = opts.temp_dir.clone().unwrap_or_else(std::env::temp_dir);
        let largest = plan.iter().map(|(u, _)| u.artifact.raw_size).max();
        check_temp_space(&dir, largest.unwrap_or_default())?;
    }
    // Who the target is, before anything is created or written.
    let overwritten = match &opts.guard {
        Some(guard) => {
            let names: Vec<String> = plan.iter().filter_map(|(_, to)| to.database()).collect();
            identity::check(&opts.target, manifest, guard, &names).await?
        }
        None => None,
    };
    let databases = target::preflight(plan, opts).await?;

    let globals_applied = if opts.globals {
        let Some(g) = manifest.artifact("globals") else {
            return Err(Error::NoArtifact {
                backup: manifest.backup_id.clone(),
                kind: "globals".into(),
            });
        };
        crate::progress::phase(opts.progress.as_ref(), || "applying globals".into());
        apply_globals(repo, manifest, g, opts, dumped_by).await?;
        true
    } else {
        false
    };
    let mut fetched = 0;
    for (unit, to) in plan {
        let t = Instant::now();
        fetched += restore_unit(repo, manifest, unit, to, &tool, opts).await?;
        if plan.len() > 1 {
            tracing::info!(backup = %manifest.backup_id, database = %unit.database,
                target = %to.redacted(), seconds = t.elapsed().as_secs_f64(), "database-restored");
        }
    }
    Ok(RestoreReport {
        job: manifest.job.clone(),
        backup_id: manifest.backup_id.clone(),
        database: databases.join(", "),
        databases,
        target: opts.target.redacted(),
        tool: tool.path.display().to_string(),
        tool_version: tool.version.to_string(),
        bytes_fetched: fetched,
        globals_applied,
        seconds: started.elapsed().as_secs_f64(),
        overwrote_source: overwritten
            .map(|o| format!("{} (system identifier {})", o.name, o.system_identifier)),
    })
}

/// Restores one unit into `to`: streamed, or (a custom archive with
/// `--jobs` above 1) fetched to a temporary file first. Returns the bytes
/// fetched.
async fn restore_unit(
    repo: &Repository,
    manifest: &Manifest,
    unit: &DumpUnit<'_>,
    to: &SourceSpec,
    tool: &refugio_dump::Tool,
    opts: &RestoreOptions,
) -> Result<u64> {
    let art = unit.artifact;
    let key = Repository::key(&manifest.job, &manifest.backup_id, &art.name);
    let seal = sealing(manifest, art, &key, opts)?;
    let decode = Decode::of(art, &key, seal, opts.progress.as_ref())?;
    let parallel = art.format == "custom" && opts.jobs > 1;
    crate::progress::phase(opts.progress.as_ref(), || {
        let verb = if parallel {
            "fetching to a temporary file"
        } else {
            "restoring"
        };
        format!("{verb} {}", unit.database)
    });
    if parallel {
        restore_parallel(repo, &key, art, decode, tool, to, opts).await
    } else {
        restore_streaming(repo, &key, art, decode, tool, to, opts).await
    }
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
    let frame = script_frame(&psql, &key, false)?;
    let target = opts.target.with_database("postgres");
    let mut child = spawn::psql(&psql, &target, false, false)?;
    let stdin = child.stdin.take().ok_or(Error::GlobalsFeed {
        what: "psql stdin",
        reason: "not piped".into(),
    })?;
    let stderr = child.stderr.take().ok_or(Error::GlobalsFeed {
        what: "psql stderr",
        reason: "not piped".into(),
    })?;
    let (tail, task) = StderrTail::collect("psql", stderr);
    let fed = feed_script(&sql[..], stdin, &frame).await;
    if let Err(FeedError::Refused(refused)) = fed {
        let _ = child.kill().await;
        return Err(Error::Foreign {
            key,
            detail: refused.to_string(),
        });
    }
    check_exit("psql", &mut child, &tail, Some(task)).await?;
    if let Err(FeedError::Sink(e) | FeedError::Source(e)) = fed {
        return Err(Error::GlobalsFeed {
            what: "writing to psql",
            reason: e.to_string(),
        });
    }
    let text = tail.text();
    if let Some(e) = restricted_refusal(&key, &text) {
        return Err(e);
    }
    // A role or tablespace the target already has (SQLSTATE 42710,
    // duplicate_object) is expected; any other error is not. By code, not
    // words: the target speaks its own lc_messages.
    let unexpected: Vec<String> = text
        .lines()
        .filter(|l| {
            refugio_dump::sqlstate::in_psql_output(l)
                .first()
                .is_some_and(|c| c != "42710")
        })
        .map(str::to_string)
        .collect();
    if !unexpected.is_empty() {
        return Err(Error::Globals { errors: unexpected });
    }
    Ok(())
}

/// How a script from `key` reaches `psql`: in restricted mode under a
/// random key (see [`refugio_dump::script`]), and for a database's dump in
/// one transaction that only the clean end of the content commits. A psql
/// without restricted mode is not fed repository content at all.
fn script_frame(psql: &refugio_dump::Tool, key: &str, transaction: bool) -> Result<ScriptFrame> {
    if !script::psql_can_restrict(psql.version) {
        return Err(Error::Artifact {
            key: key.to_string(),
            detail: format!(
                "{} is psql {}, which cannot refuse the meta-commands a script could carry (restricted mode came in psql 13.22, 14.19, 15.14, 16.10, 17.6, 18); install a newer minor release or set pg_bindir; nothing was restored",
                psql.path.display(),
                psql.version
            ),
        });
    }
    use rand::Rng;
    let secret: String = rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    let mut head = script::ScriptGuard::restrict_line(&secret);
    let mut tail = String::new();
    if transaction {
        head.push_str("BEGIN;\n");
        tail.push_str("\nCOMMIT;\n");
    }
    Ok(ScriptFrame { head, tail })
}

/// psql's own refusal of a meta-command of `key` in restricted mode (it
/// runs in the C locale), as foreign content naming the line it printed.
fn restricted_refusal(key: &str, stderr: &str) -> Option<Error> {
    let line = stderr
        .lines()
        .find(|l| l.contains(script::RESTRICTED_MESSAGE))?;
    Some(Error::Foreign {
        key: key.to_string(),
        detail: format!("psql refused a meta-command in it: {line}"),
    })
}

/// One job: artifact → digest check → decompress → tool stdin, in one
/// transaction that commits only if the whole artifact checked out.
async fn restore_streaming(
    repo: &Repository,
    key: &str,
    art: &Artifact,
    decode: Decode<'_>,
    tool: &refugio_dump::Tool,
    to: &SourceSpec,
    opts: &RestoreOptions,
) -> Result<u64> {
    let custom = art.format == "custom";
    // A plain script: restricted psql, in a transaction only a clean end
    // of the content commits (not psql's --single-transaction, which
    // commits at any EOF, even that of a refugio killed mid-stream).
    let frame = if custom {
        None
    } else {
        Some(script_frame(tool, key, true)?)
    };
    let (plain, raw) = open_artifact(repo, key, art, decode).await?;
    let log_from = log_mark(to);
    let mut child = if custom {
        let args = RestoreArgs {
            jobs: 1,
            clean: opts.clean,
            no_owner: opts.no_owner,
            single_transaction: true,
        };
        spawn::pg_restore(tool, to, &args, None)?
    } else {
        spawn::psql(tool, to, true, false)?
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
    refugio_dump::pipe::widen_pipe(&stdin);
    let fed = match &frame {
        Some(frame) => feed_script(plain, stdin, frame).await,
        None => feed_held_back(plain, stdin).await,
    };
    match fed {
        Ok(_) => {
            if let Err(e) = check_exit(name, &mut child, &tail, Some(task)).await {
                return Err(restricted_refusal(key, &tail.text())
                    .unwrap_or_else(|| tool_failed(to, e, log_from)));
            }
            Ok(art.stored_size)
        }
        Err(FeedError::Refused(refused)) => {
            // Killed short of its input's end: its transaction never commits.
            let _ = child.kill().await;
            Err(Error::Foreign {
                key: key.into(),
                detail: refused.to_string(),
            })
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
                return Err(restricted_refusal(key, &tail.text())
                    .unwrap_or_else(|| tool_failed(to, e, log_from)));
            }
            Err(Error::Artifact {
                key: key.into(),
                detail: format!("{name} exited before reading the whole archive"),
            })
        }
    }
}

/// Several jobs: the archive goes to a temporary file first (pg_restore -j
/// needs to seek), fully verified before pg_restore starts.
async fn restore_parallel(
    repo: &Repository,
    key: &str,
    art: &Artifact,
    decode: Decode<'_>,
    tool: &refugio_dump::Tool,
    to: &SourceSpec,
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
    // 0700 said explicitly: tempfile's directories otherwise get 0777 less
    // the umask (0755 under the usual 022), readable by every user.
    let private = tempfile::Builder::new()
        .prefix(".refugio-restore-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir_in(&dir)
        .map_err(temp_error)?;
    let tmp = tempfile::Builder::new()
        .prefix("archive-")
        .suffix(".dump")
        .tempfile_in(private.path())
        .map_err(temp_error)?;
    let (mut plain, raw) = open_artifact(repo, key, art, decode).await?;
    let mut file = tokio::fs::File::from_std(tmp.reopen().map_err(|source| Error::TempFile {
        dir: dir.display().to_string(),
        source,
    })?);
    // 256 KiB at a time (tokio::io::copy moves 8 KiB): fewer turns of the
    // decoder and of the blocking pool behind the file.
    let mut chunk = vec![0u8; 256 * 1024];
    loop {
        let n = match plain.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => return Err(explain(repo, key, art, e, raw).await),
        };
        file.write_all(&chunk[..n])
            .await
            .map_err(|source| Error::TempFile {
                dir: dir.display().to_string(),
                source,
            })?;
    }
    file.flush().await.map_err(|source| Error::TempFile {
        dir: dir.display().to_string(),
        source,
    })?;
    drop(file);
    crate::progress::phase(opts.progress.as_ref(), || {
        format!("pg_restore --jobs {}", opts.jobs)
    });

    let args = RestoreArgs {
        jobs: opts.jobs,
        clean: opts.clean,
        no_owner: opts.no_owner,
        single_transaction: false,
    };
    let log_from = log_mark(to);
    let mut child = spawn::pg_restore(tool, to, &args, Some(tmp.path()))?;
    let stderr = child.stderr.take().ok_or_else(|| Error::Artifact {
        key: key.into(),
        detail: "pg_restore stderr not piped".into(),
    })?;
    let (tail, task) = StderrTail::collect("pg_restore", stderr);
    if let Err(e) = check_exit("pg_restore", &mut child, &tail, Some(task)).await {
        return Err(tool_failed(to, e, log_from));
    }
    Ok(art.stored_size)
}
