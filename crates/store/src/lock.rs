//! S3 Object Lock, as refugio uses it: a retention date on every artifact
//! and manifest at upload, so neither refugio's prune nor anyone holding the
//! bucket's credentials can delete a backup before that date.
//!
//! refugio never takes immutability on trust. A store that accepts lock
//! headers without enforcing them (Garage 2.x does) would make a manifest's
//! lock claim a lie, so [`crate::ObjectStore::probe_object_lock`] proves
//! enforcement by writing a locked probe object and trying to delete it.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Object Lock retention mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    /// Users with `s3:BypassGovernanceRetention` can still delete.
    Governance,
    /// Nobody, not even the root account, can delete before the date.
    Compliance,
}

impl fmt::Display for LockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LockMode::Governance => "governance",
            LockMode::Compliance => "compliance",
        })
    }
}

/// A retention set on one object.
// Part of the manifest (`object_lock`): unknown fields are judged by
// `Manifest::parse` per format minor, not denied here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    pub mode: LockMode,
    pub until: DateTime<Utc>,
}

/// What a probe of the store found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockProbe {
    /// The store refused to delete a locked probe object: locks are real.
    Enforced,
    /// Locks would not protect anything; the reason says why (API not
    /// implemented, bucket without object lock, delete not refused…).
    NotEnforced(String),
}
