//! Drill receipts: what a drill wrote beside the manifest, how their names
//! say the outcome (`verify-<time>-ok.json` / `-failed.json`; older refugio
//! wrote `verify-<time>.json`), and the one place receipts are read back.

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use refugio_store::auth::Role;
use refugio_store::repo::Repository;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::measure::Rpo;

/// Receipt format version (1.1 added `outcome`; 1.2 the per-database
/// results of whole-server backups: `databases`, and `database` on counts
/// and checks; 1.3 `notes`).
pub const RECEIPT_FORMAT: &str = "1.3";
/// Largest receipt read back; a bigger object is not one of ours.
const MAX_RECEIPT_BYTES: u64 = 16 * 1024 * 1024;

/// One table's count compared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CountCheck {
    pub table: String,
    pub expected: i64,
    pub actual: Option<i64>,
    pub ok: bool,
    /// The table's database, in a whole-server backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
}

/// One SQL check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SqlCheck {
    pub sql: String,
    pub ok: bool,
    pub detail: String,
    /// The database it ran in, in a whole-server backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
}

/// One database of a whole-server backup, as its drill found it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatabaseChecked {
    pub name: String,
    /// `(manifest, restored)` large objects.
    pub large_objects: Option<(i64, i64)>,
    /// `(manifest, restored)` schema fingerprints.
    pub schema_fingerprint: Option<(String, String)>,
}

/// A recovery objective (RPO or RTO): what a drill measured, the target
/// the job sets for it, and whether it was met.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Objective {
    pub measured_seconds: Option<f64>,
    pub target_seconds: Option<f64>,
    pub met: Option<bool>,
}

/// Wall times of the drill's phases, seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Phases {
    /// Fetch, digest check, decompression and restore (streamed together).
    pub fetch_restore_seconds: f64,
    pub analyze_seconds: f64,
    pub checks_seconds: f64,
    /// A physical drill: the server's start, WAL replay and promotion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_seconds: Option<f64>,
}

/// What a drill says of the backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Restored, every check held: the backup is verified.
    Passed,
    /// The backup itself is bad: a digest or size mismatch the store
    /// confirms, bytes that do not decompress, a restore tool that refused
    /// the content, a count, fingerprint or SQL check that does not hold.
    /// Only this marks a backup failed for retention.
    Failed,
    /// The drill could not run or finish (store or scratch server
    /// unreachable, no space, a tool missing): the backup stays unverified
    /// and is drilled again later.
    Inconclusive,
}

impl Outcome {
    /// `passed`, `failed`, `inconclusive`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Failed => "failed",
            Outcome::Inconclusive => "inconclusive",
        }
    }
}

/// The restore receipt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub format: String,
    pub job: String,
    pub backup_id: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// Restore and every check passed (the backup is verified).
    pub verified: bool,
    /// `verified` and every target met.
    pub passed: bool,
    /// Passed, failed (the backup is bad) or inconclusive (could not
    /// check). Absent in receipts of format 1.0: see [`Receipt::outcome`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    pub failures: Vec<String>,
    /// What the drill could not compare and did not count for or against
    /// the backup (e.g. a fingerprint of an algorithm that cannot tell a
    /// tool's limit from damage).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    pub refugio_version: String,
    pub scratch_kind: String,
    pub scratch_server_version: Option<String>,
    pub restore_tool: Option<String>,
    /// Artifact digests checked while streaming: name → sha256.
    pub digests_checked: Vec<(String, String)>,
    pub counts: Vec<CountCheck>,
    pub large_objects: Option<(i64, i64)>,
    pub schema_fingerprint: Option<(String, String)>,
    pub checks: Vec<SqlCheck>,
    /// Per database, in a whole-server backup (then `large_objects` and
    /// `schema_fingerprint` above are empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<DatabaseChecked>,
    pub phases: Phases,
    pub rto: Objective,
    pub rpo: Objective,
    pub rpo_detail: Rpo,
}

impl Receipt {
    /// The drill's outcome; receipts of format 1.0 knew only "verified or
    /// not", and said failed for both a bad backup and one not checked.
    pub fn outcome(&self) -> Outcome {
        match self.outcome {
            Some(o) => o,
            None if self.verified => Outcome::Passed,
            None => Outcome::Failed,
        }
    }

    /// Object name beside the manifest: `verify-<time>-ok.json` when the
    /// backup restored and passed its checks, `-failed.json` when the drill
    /// found it bad, `-inconclusive.json` when it could not tell, so
    /// retention can tell the three apart from a listing alone.
    pub fn name(&self) -> String {
        format!(
            "verify-{}-{}.json",
            self.started_at.format("%Y%m%dT%H%M%S%.3fZ"),
            match self.outcome() {
                Outcome::Passed => "ok",
                Outcome::Failed => "failed",
                Outcome::Inconclusive => "inconclusive",
            }
        )
    }
}

/// What a receipt's object name says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptName {
    /// `verify-<time>-ok.json`: the backup was verified.
    Ok,
    /// `verify-<time>-failed.json`: the drill found the backup bad.
    Failed,
    /// `verify-<time>-inconclusive.json`: the drill could not tell.
    Inconclusive,
    /// `verify-<time>.json` (refugio < 0.2): the outcome is inside.
    Legacy,
}

impl ReceiptName {
    /// Classifies an object name (the part after `<job>/<id>/`); `None`
    /// when it is not a receipt.
    pub fn parse(name: &str) -> Option<ReceiptName> {
        if !name.starts_with("verify-") || !name.ends_with(".json") {
            return None;
        }
        Some(if name.ends_with("-ok.json") {
            ReceiptName::Ok
        } else if name.ends_with("-failed.json") {
            ReceiptName::Failed
        } else if name.ends_with("-inconclusive.json") {
            ReceiptName::Inconclusive
        } else {
            ReceiptName::Legacy
        })
    }
}

/// Reads one receipt object; `None` when it is gone or not a receipt this
/// refugio can parse (logged).
/// In an authenticated repository, a receipt no trusted agent key signed
/// is refused the same way (logged as foreign).
pub async fn read(repo: &Repository, key: &str) -> Result<Option<Receipt>> {
    let Some(bytes) = read_authentic(repo, key).await? else {
        return Ok(None);
    };
    match serde_json::from_slice::<Receipt>(&bytes) {
        Ok(r) => Ok(Some(r)),
        Err(e) => {
            tracing::warn!(key, error = %e, "receipt-unreadable");
            Ok(None)
        }
    }
}

/// A receipt's bytes, if it exists and (in an authenticated repository)
/// is signed by a trusted agent key; a refused one is logged and None.
async fn read_authentic(repo: &Repository, key: &str) -> Result<Option<bytes::Bytes>> {
    let Some(bytes) = repo.read_small(key, MAX_RECEIPT_BYTES).await? else {
        return Ok(None);
    };
    match repo.authenticate(key, &bytes, Role::Agent).await {
        Ok(()) => Ok(Some(bytes)),
        Err(refugio_store::Error::Unauthenticated { reason, .. }) => {
            tracing::warn!(
                key,
                reason,
                "foreign-receipt: not signed by a trusted agent key; ignored"
            );
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether any of these receipts (named by their outcome) is one to
/// believe: in an unauthenticated repository any is; in an authenticated
/// one, only a receipt signed by a trusted agent key (a forged `-failed`
/// receipt must not get a good backup deleted, nor a forged `-ok` one keep
/// a bad backup as the verified one).
pub async fn any_authentic(repo: &Repository, keys: &[String]) -> Result<bool> {
    if repo.authentication().is_none() {
        return Ok(!keys.is_empty());
    }
    for key in keys {
        if read_authentic(repo, key).await?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether any of these outcome-less (legacy) receipts says "verified".
/// An authenticated repository believes none (they predate signatures).
/// Only the `verified` field is read, so receipts of any older layout count.
pub async fn any_verified(repo: &Repository, keys: &[String]) -> Result<bool> {
    if repo.authentication().is_some() {
        return Ok(false);
    }
    for key in keys {
        let Some(bytes) = repo.read_small(key, MAX_RECEIPT_BYTES).await? else {
            continue;
        };
        let verified = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("verified").and_then(serde_json::Value::as_bool))
            .unwrap_or(false);
        if verified {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Every receipt of a job: (backup id, receipt).
pub async fn read_all(repo: &Repository, job: &str) -> Result<Vec<(String, Receipt)>> {
    let prefix = format!("{job}/");
    let keys: Vec<String> = repo
        .store()
        .list(&prefix)
        .try_filter_map(|m| {
            let keep = m
                .key
                .rsplit('/')
                .next()
                .and_then(ReceiptName::parse)
                .is_some();
            futures::future::ready(Ok(keep.then_some(m.key)))
        })
        .try_collect()
        .await?;
    let mut out = Vec::new();
    for key in keys {
        if let Some(rec) = read(repo, &key).await? {
            out.push((rec.backup_id.clone(), rec));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{backup, drilled, put, receipt, repo};

    #[test]
    fn outcomes_and_names() {
        assert_eq!(
            [Outcome::Passed, Outcome::Failed, Outcome::Inconclusive].map(Outcome::as_str),
            ["passed", "failed", "inconclusive"]
        );
        let mut r = receipt("app", "20261128T060000Z", Outcome::Inconclusive);
        assert_eq!(r.outcome(), Outcome::Inconclusive);
        assert_eq!(r.name(), "verify-20261128T061000.000Z-inconclusive.json");
        r.outcome = Some(Outcome::Failed);
        assert_eq!(r.name(), "verify-20261128T061000.000Z-failed.json");
        r.outcome = Some(Outcome::Passed);
        assert_eq!(r.name(), "verify-20261128T061000.000Z-ok.json");
        // Receipts of refugio before outcomes: `verified` says it.
        r.outcome = None;
        r.verified = true;
        assert_eq!(r.outcome(), Outcome::Passed);
        r.verified = false;
        assert_eq!(r.outcome(), Outcome::Failed);
        for (outcome, name) in [
            (Outcome::Passed, ReceiptName::Ok),
            (Outcome::Failed, ReceiptName::Failed),
            (Outcome::Inconclusive, ReceiptName::Inconclusive),
        ] {
            let r = receipt("app", "20261128T060000Z", outcome);
            assert_eq!(ReceiptName::parse(&r.name()), Some(name));
        }
    }

    #[test]
    fn only_verify_json_objects_are_receipts() {
        for name in [
            "xverify-20261128T060000.123Z-ok.json",
            "verify-20261128T060000.123Z-ok.json.sig",
            "verify-20261128T060000.123Z-ok.txt",
            "claim-verify-ok.json",
        ] {
            assert_eq!(ReceiptName::parse(name), None, "{name}");
        }
    }

    #[tokio::test]
    async fn receipts_are_read_back_and_listed_per_backup() {
        let (_dir, repo) = repo();
        backup(
            &repo,
            "app",
            "20261128T060000Z",
            &[("database.dump.zst", b"a")],
        )
        .await;
        let ok = drilled(&repo, "app", "20261128T060000Z", Outcome::Passed).await;
        // A receipt with a long failure list (2 MiB) is still read whole.
        let mut big = receipt("app", "20261128T120000Z", Outcome::Failed);
        big.failures = vec!["x".repeat(1024); 2048];
        let big_key = Repository::key("app", "20261128T120000Z", &big.name());
        put(&repo, &big_key, &serde_json::to_vec(&big).expect("json")).await;
        // Not a receipt this refugio reads: skipped, not an error.
        let junk = "app/20261128T180000Z/verify-20261128T181000.000Z-ok.json";
        put(&repo, junk, b"{ not json").await;

        let back = read(&repo, &ok).await.expect("read").expect("a receipt");
        assert_eq!(back, receipt("app", "20261128T060000Z", Outcome::Passed));
        assert_eq!(
            read(&repo, &big_key).await.expect("read"),
            Some(big.clone())
        );
        assert_eq!(read(&repo, junk).await.expect("read"), None);
        assert_eq!(
            read(&repo, "app/none/verify-x-ok.json")
                .await
                .expect("read"),
            None
        );

        let mut all = read_all(&repo, "app").await.expect("read_all");
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let ids: Vec<&str> = all.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["20261128T060000Z", "20261128T120000Z"]);
        assert_eq!(all[1].1, big);
        assert!(read_all(&repo, "other").await.expect("read_all").is_empty());
    }

    #[tokio::test]
    async fn legacy_receipts_say_verified_inside() {
        let (_dir, repo) = repo();
        let yes = "app/20261128T060000Z/verify-20261128T061000.000Z.json";
        let no = "app/20261128T060000Z/verify-20261128T071000.000Z.json";
        let odd = "app/20261128T060000Z/verify-20261128T081000.000Z.json";
        put(&repo, yes, br#"{"verified": true, "layout": "0.1"}"#).await;
        put(&repo, no, br#"{"verified": false}"#).await;
        put(&repo, odd, b"[1, 2]").await;
        let keys = |k: &[&str]| k.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(any_verified(&repo, &keys(&[no, odd, yes]))
            .await
            .expect("read"));
        assert!(!any_verified(&repo, &keys(&[no, odd])).await.expect("read"));
        assert!(!any_verified(&repo, &[]).await.expect("read"));
        // Unauthenticated: a receipt's name is believed.
        assert!(any_authentic(&repo, &keys(&[no])).await.expect("read"));
        assert!(!any_authentic(&repo, &[]).await.expect("read"));
    }

    #[test]
    fn names_say_the_outcome() {
        assert_eq!(
            ReceiptName::parse("verify-20261128T060000.123Z-ok.json"),
            Some(ReceiptName::Ok)
        );
        assert_eq!(
            ReceiptName::parse("verify-20261128T060000.123Z-failed.json"),
            Some(ReceiptName::Failed)
        );
        assert_eq!(
            ReceiptName::parse("verify-20261128T060000.123Z-inconclusive.json"),
            Some(ReceiptName::Inconclusive)
        );
        assert_eq!(
            ReceiptName::parse("verify-20261128T060000.123Z.json"),
            Some(ReceiptName::Legacy)
        );
        assert_eq!(ReceiptName::parse("manifest.json"), None);
        assert_eq!(ReceiptName::parse("pinned"), None);
    }
}
