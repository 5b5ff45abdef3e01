//! What a check reports: the damage it found, what it could not check,
//! and the leftovers that are not damage.

use chrono::{DateTime, Utc};
use serde::Serialize;

/// What is wrong with a damaged object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Problem {
    /// The stored size differs from the manifest's `stored_size`.
    Size { expected: u64, actual: u64 },
    /// The stored bytes' SHA-256 differs from the manifest's `sha256`.
    Digest { expected: String, actual: String },
    /// The manifest itself cannot be read as one (not JSON, a field
    /// missing, stored under another job or id).
    Manifest { reason: String },
}

/// A stored object that does not match its manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Damaged {
    pub backup_id: String,
    pub key: String,
    #[serde(flatten)]
    pub problem: Problem,
}

/// An artifact the manifest names that the store does not have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Missing {
    pub backup_id: String,
    pub key: String,
}

/// An object that could not be checked (a read that failed, a manifest of
/// a format this refugio does not read). Not evidence against it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unchecked {
    pub backup_id: String,
    pub key: String,
    pub error: String,
}

/// An object refused as not signed by a trusted key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ForeignObject {
    pub key: String,
    pub reason: String,
}

/// What the check found, as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckOutcome {
    /// Everything checked matches its manifest.
    Clean,
    /// An artifact is missing or does not match its manifest (or a
    /// manifest is unreadable).
    Damaged,
    /// No damage found, but something could not be checked.
    Inconclusive,
}

impl CheckOutcome {
    /// `clean`, `damaged`, `inconclusive`.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckOutcome::Clean => "clean",
            CheckOutcome::Damaged => "damaged",
            CheckOutcome::Inconclusive => "inconclusive",
        }
    }
}

/// Artifacts streamed back with `--read-data`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DataRead {
    /// `none`, `all`, `backup <id>`, `subset N/M`.
    pub scope: String,
    pub backups: u64,
    pub artifacts: u64,
    pub bytes: u64,
}

/// What one job's check found.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub job: String,
    pub outcome: CheckOutcome,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// Committed backups whose artifacts were checked against the listing.
    pub backups: u64,
    /// Artifacts checked against the listing.
    pub artifacts: u64,
    /// Artifacts streamed and re-hashed.
    pub read: DataRead,
    /// Objects that do not match their manifest: damage.
    pub damaged: Vec<Damaged>,
    /// Artifacts a manifest names that are not stored: damage.
    pub missing: Vec<Missing>,
    /// Objects that could not be checked.
    pub unchecked: Vec<Unchecked>,
    /// Objects under a backup id without a manifest (receipts aside), older
    /// than the grace period: left by a failed backup or an interrupted
    /// prune, collected by the next prune. Not damage.
    pub orphans: Vec<String>,
    /// Multipart uploads older than the grace period. Not damage.
    pub stale_uploads: Vec<String>,
    /// Drill receipts of a backup whose manifest is gone (deleted by hand,
    /// or by a prune that was interrupted). Not damage: no committed backup
    /// lost anything.
    pub receipts_without_manifest: Vec<String>,
    /// Committed backups whose id is later than now plus the repository's
    /// `clock_tolerance` (a writer's clock was wrong): ignored by
    /// scheduling, `latest`, drills and retention. Not damage; a warning.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub future: Vec<String>,
    /// Objects the repository's authentication refuses (a manifest no
    /// trusted agent key signed, a WAL file no trusted server key signed):
    /// not refugio's or written before signing was configured. Never used,
    /// counted or deleted; not damage, but nothing vouches for them
    /// (inconclusive).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub foreign: Vec<ForeignObject>,
    /// A physical job's WAL archive: its continuity from each base backup
    /// on (gaps and conflicts are damage). None: no physical backup and
    /// no archive.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wal: Option<crate::wal_chain::WalChain>,
}

impl CheckReport {
    /// Damaged and missing objects, WAL gaps and conflicts.
    pub fn damage_count(&self) -> u64 {
        (self.damaged.len() + self.missing.len()) as u64
            + self.wal.as_ref().map_or(0, |w| w.damage_count())
    }

    /// A clean report of nothing yet, started (and finished) at
    /// `started_at`, reading `scope`.
    pub fn new(job: &str, started_at: DateTime<Utc>, scope: String) -> CheckReport {
        CheckReport {
            job: job.to_string(),
            outcome: CheckOutcome::Clean,
            started_at,
            finished_at: started_at,
            backups: 0,
            artifacts: 0,
            read: DataRead {
                scope,
                ..DataRead::default()
            },
            damaged: Vec::new(),
            missing: Vec::new(),
            unchecked: Vec::new(),
            orphans: Vec::new(),
            stale_uploads: Vec::new(),
            receipts_without_manifest: Vec::new(),
            future: Vec::new(),
            foreign: Vec::new(),
            wal: None,
        }
    }

    /// Damage first; then anything not checked, not vouched for, or WAL
    /// not archived yet; else clean.
    pub(super) fn judge(&self) -> CheckOutcome {
        if self.damage_count() > 0 {
            CheckOutcome::Damaged
        } else if !self.unchecked.is_empty()
            || !self.foreign.is_empty()
            || self
                .wal
                .as_ref()
                .is_some_and(|w| w.pending().next().is_some())
        {
            CheckOutcome::Inconclusive
        } else {
            CheckOutcome::Clean
        }
    }
}
