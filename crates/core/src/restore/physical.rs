//! `refugio restore --physical`: a physical job's base backup unpacked
//! into an empty directory, set up to recover from the job's WAL archive
//! to a point (`recovery.signal`, `restore_command = '… wal-fetch %f %p'`,
//! the target, `recovery_target_action = 'promote'`, and `archive_mode =
//! off` unless the clone is to archive). Starting the server on that
//! directory replays the WAL and promotes at the target. The base tar is
//! unpacked by [`super::untar`]: regular files and directories only.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use refugio_dump::wal::Lsn;
use refugio_store::manifest::Manifest;
use refugio_store::repo::Repository;
use serde::Serialize;
use tokio_util::io::SyncIoBridge;

use super::fetch::{explain, open_artifact, refused};
use super::untar::{self, open_in_data_dir, UnpackError};
use super::{Decode, Sealing};
use crate::encryption::{self, Identities};
use crate::error::{Error, Result};

/// Where recovery stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// The end of the archived WAL.
    Latest,
    /// As soon as the base backup is consistent.
    Immediate,
    /// The last commit at or before this time.
    Time(DateTime<Utc>),
    /// This WAL position.
    Lsn(Lsn),
}

impl FromStr for RecoveryTarget {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim() {
            "latest" => Ok(RecoveryTarget::Latest),
            "immediate" => Ok(RecoveryTarget::Immediate),
            t => {
                if let Some(l) = Lsn::parse(t) {
                    return Ok(RecoveryTarget::Lsn(l));
                }
                DateTime::parse_from_rfc3339(t)
                    .or_else(|_| DateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f%#z"))
                    .map(|d| RecoveryTarget::Time(d.with_timezone(&Utc)))
                    .map_err(|_| format!("{t:?} is not a recovery target: give `latest`, `immediate`, an LSN (0/3000028) or a time with its offset (2026-12-02T14:05:00Z)"))
            }
        }
    }
}

impl fmt::Display for RecoveryTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecoveryTarget::Latest => f.write_str("latest"),
            RecoveryTarget::Immediate => f.write_str("immediate"),
            RecoveryTarget::Time(t) => write!(f, "{}", t.to_rfc3339()),
            RecoveryTarget::Lsn(l) => write!(f, "{l}"),
        }
    }
}

/// The settings for the target, as postgresql.conf lines.
fn target_settings(target: RecoveryTarget) -> Vec<String> {
    match target {
        RecoveryTarget::Latest => vec!["recovery_target_timeline = 'latest'".into()],
        RecoveryTarget::Immediate => vec![
            "recovery_target = 'immediate'".into(),
            "recovery_target_action = 'promote'".into(),
        ],
        RecoveryTarget::Time(t) => vec![
            format!(
                "recovery_target_time = '{}'",
                t.format("%Y-%m-%d %H:%M:%S%.6f+00")
            ),
            "recovery_target_timeline = 'latest'".into(),
            "recovery_target_action = 'promote'".into(),
        ],
        RecoveryTarget::Lsn(l) => vec![
            format!("recovery_target_lsn = '{l}'"),
            "recovery_target_timeline = 'latest'".into(),
            "recovery_target_action = 'promote'".into(),
        ],
    }
}

/// A string as a single-quoted postgresql.conf value.
pub fn conf_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A word for `/bin/sh`, single-quoted when it needs it.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.:=@%+,".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The base backup a target needs: the newest that was consistent before
/// it (`latest` and `immediate`: the newest). `backups` newest first.
pub fn choose_base(
    backups: &[Manifest],
    target: RecoveryTarget,
) -> std::result::Result<&Manifest, String> {
    let physical: Vec<&Manifest> = backups.iter().filter(|m| m.is_physical()).collect();
    let Some(newest) = physical.first() else {
        return Err("it holds no physical base backup".into());
    };
    let fits = |m: &&&Manifest| match target {
        RecoveryTarget::Latest | RecoveryTarget::Immediate => true,
        // Server-side times only: the target is the server's time, and
        // the writer host's clock may be wrong.
        RecoveryTarget::Time(t) => m.consistent_at() <= t,
        RecoveryTarget::Lsn(l) => m
            .physical
            .as_ref()
            .and_then(|p| Lsn::parse(&p.stop_lsn))
            .is_some_and(|stop| stop <= l),
    };
    match physical.iter().find(fits) {
        Some(m) => Ok(m),
        None => {
            let oldest = physical.last().unwrap_or(newest);
            Err(format!(
                "no base backup was consistent before {target}: the oldest, {}, was consistent at {} by the server's clock (stop LSN {})",
                oldest.backup_id,
                oldest.consistent_at().to_rfc3339(),
                oldest.physical.as_ref().map_or("?", |p| p.stop_lsn.as_str())
            ))
        }
    }
}

/// What a physical restore is to do.
#[derive(Debug, Clone)]
pub struct PhysicalRestoreOptions {
    pub target: RecoveryTarget,
    /// An empty (or missing) directory: the new data directory.
    pub target_dir: PathBuf,
    /// `restore_command` for the restored server, e.g.
    /// `/usr/bin/refugio --config /etc/refugio.toml wal-fetch --job main %f %p`.
    pub restore_command: String,
    pub identities: Option<Arc<Identities>>,
    /// Keep the source's `archive_mode` (a replacement primary that is to
    /// archive into the job); by default the clone gets `archive_mode =
    /// off`, so that once promoted it never archives into production's
    /// archive.
    pub keep_archiving: bool,
    /// Refuse a base tar stored unencrypted (see
    /// [`crate::RestoreOptions::require_encrypted`]).
    pub require_encrypted: bool,
}

/// What a restored clone gets unless it is to archive
/// (`PhysicalRestoreOptions::keep_archiving`).
const ARCHIVE_OFF: &str = "# A restored clone does not archive into the source's WAL archive (refugio restore --physical --keep-archiving keeps archiving).\narchive_mode = off\n";

/// What a physical restore did.
#[derive(Debug, Clone, Serialize)]
pub struct PhysicalRestoreReport {
    pub job: String,
    pub backup_id: String,
    pub target: String,
    pub target_dir: String,
    pub start_lsn: String,
    pub timeline: u32,
    pub bytes_fetched: u64,
    pub seconds: f64,
    /// How to start the server on the directory.
    pub start_hint: String,
    /// Whether `archive_mode = off` was written (no `--keep-archiving`).
    pub archive_mode_off: bool,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::TargetDir {
        action: what.to_string(),
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Refuses a directory that holds anything; creates a missing one (0700).
fn prepare_dir(dir: &Path) -> Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if let Some(Ok(e)) = entries.next() {
                return Err(Error::TargetDirNotEmpty {
                    dir: dir.display().to_string(),
                    entry: e.file_name().to_string_lossy().into_owned(),
                });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| io_err("creating", dir, e))?;
        }
        Err(e) => return Err(io_err("reading", dir, e)),
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| io_err("setting mode 0700 on", dir, e))
}

/// Unpacks the base backup of `manifest` into `opts.target_dir` and sets
/// up recovery to `opts.target`.
pub async fn restore_physical(
    repo: &Repository,
    manifest: &Manifest,
    opts: &PhysicalRestoreOptions,
) -> Result<PhysicalRestoreReport> {
    let started = Instant::now();
    let physical = manifest
        .physical
        .as_ref()
        .ok_or_else(|| Error::LogicalBackup {
            backup: manifest.backup_id.clone(),
        })?;
    prepare_dir(&opts.target_dir)?;
    let fetched = unpack_base(
        repo,
        manifest,
        opts.identities.as_deref(),
        opts.require_encrypted,
        &opts.target_dir,
    )
    .await?;
    write_recovery(
        &opts.target_dir,
        manifest,
        opts.target,
        &opts.restore_command,
        opts.keep_archiving,
    )?;
    let dir = opts.target_dir.display().to_string();
    Ok(PhysicalRestoreReport {
        job: manifest.job.clone(),
        backup_id: manifest.backup_id.clone(),
        target: opts.target.to_string(),
        target_dir: dir.clone(),
        start_lsn: physical.start_lsn.clone(),
        timeline: physical.timeline,
        bytes_fetched: fetched,
        seconds: started.elapsed().as_secs_f64(),
        start_hint: format!(
            "chown -R postgres: {d} && sudo -u postgres pg_ctl -D {d} start  (PostgreSQL {}: replays the archive to {}, then promotes)",
            manifest.server.version,
            opts.target,
            d = shell_quote(&dir)
        ),
        archive_mode_off: !opts.keep_archiving,
    })
}

/// Streams the base tar (digest checked, decrypted, decompressed) into
/// `dir`; returns the stored bytes fetched.
pub(crate) async fn unpack_base(
    repo: &Repository,
    manifest: &Manifest,
    identities: Option<&Identities>,
    require_encrypted: bool,
    dir: &Path,
) -> Result<u64> {
    let art = manifest.artifact("base").ok_or_else(|| Error::NoArtifact {
        backup: manifest.backup_id.clone(),
        kind: "base".into(),
    })?;
    let key = Repository::key(&manifest.job, &manifest.backup_id, &art.name);
    let seal = match art.encryption.as_str() {
        "none" if require_encrypted => return Err(super::unencrypted(&key)),
        "none" => None,
        encryption::AGE => Some(Sealing {
            recipients: manifest
                .encryption
                .as_ref()
                .map_or(&[][..], |e| e.recipients.as_slice()),
            identities,
        }),
        other => {
            return Err(Error::Artifact {
                key,
                detail: format!("encryption {other:?} is not supported by this refugio"),
            })
        }
    };
    let decode = Decode::of(art, &key, seal, None)?;
    let (reader, raw) = open_artifact(repo, &key, art, decode).await?;
    let target = dir.to_path_buf();
    let unpacked = tokio::task::spawn_blocking(move || {
        let mut bridge = SyncIoBridge::new(reader);
        untar::unpack(&mut bridge, &target)?;
        // The digest is checked at the end of the stored bytes: read past
        // the tar's end-of-archive blocks to the end.
        std::io::copy(&mut bridge, &mut std::io::sink())?;
        Ok::<_, UnpackError>(())
    })
    .await
    .map_err(|e| Error::Unpack {
        key: key.clone(),
        reason: e.to_string(),
    })?;
    match unpacked {
        Ok(()) => Ok(art.stored_size),
        Err(UnpackError::Io(e)) => Err(explain(repo, &key, art, e, raw).await),
        Err(UnpackError::Refused { entry, reason }) => {
            let why = Error::UnsafeEntry {
                key: key.clone(),
                entry,
                reason,
            };
            Err(refused(repo, &key, art, why, raw).await)
        }
    }
}

/// `recovery.signal` and the recovery settings (appended to
/// `postgresql.auto.conf`, which the server reads last), and, unless
/// `keep_archiving`, `archive_mode = off`. Neither file is written
/// through a link.
pub(crate) fn write_recovery(
    dir: &Path,
    manifest: &Manifest,
    target: RecoveryTarget,
    restore_command: &str,
    keep_archiving: bool,
) -> Result<()> {
    for stale in ["standby.signal", "postmaster.pid"] {
        // Removes a link itself, never what it points to.
        let _ = std::fs::remove_file(dir.join(stale));
    }
    let signal = dir.join("recovery.signal");
    open_in_data_dir(&signal, false)
        .and_then(|mut f| {
            f.write_all(
                format!(
                    "# refugio restore --physical: backup {} of job {}, to {target}\n",
                    manifest.backup_id, manifest.job
                )
                .as_bytes(),
            )?;
            f.sync_all()
        })
        .map_err(|e| io_err("writing", &signal, e))?;
    let auto = dir.join("postgresql.auto.conf");
    let mut f = open_in_data_dir(&auto, true).map_err(|e| io_err("opening", &auto, e))?;
    let mut text = format!(
        "\n# Added by refugio restore --physical (backup {}, target {target}).\nrestore_command = {}\n",
        manifest.backup_id,
        conf_quote(restore_command)
    );
    if !keep_archiving {
        text.push_str(ARCHIVE_OFF);
    }
    for line in target_settings(target) {
        text.push_str(&line);
        text.push('\n');
    }
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| io_err("writing", &auto, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!("latest".parse(), Ok(RecoveryTarget::Latest));
        assert_eq!("immediate".parse(), Ok(RecoveryTarget::Immediate));
        assert_eq!(
            "0/3000028".parse(),
            Ok(RecoveryTarget::Lsn(Lsn(0x300_0028)))
        );
        let t: RecoveryTarget = "2026-12-02T14:05:00+01:00".parse().unwrap();
        assert_eq!(t.to_string(), "2026-12-02T13:05:00+00:00");
        let t2: RecoveryTarget = "2026-12-02 13:05:00+00".parse().unwrap();
        assert_eq!(t, t2);
        assert!("yesterday"
            .parse::<RecoveryTarget>()
            .unwrap_err()
            .contains("latest"));
        assert_eq!(
            target_settings(t)[0],
            "recovery_target_time = '2026-12-02 13:05:00.000000+00'"
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(conf_quote("a 'b'"), "'a ''b'''");
        assert_eq!(shell_quote("/usr/bin/refugio"), "/usr/bin/refugio");
        assert_eq!(shell_quote("/a b/it's"), "'/a b/it'\\''s'");
    }
}
