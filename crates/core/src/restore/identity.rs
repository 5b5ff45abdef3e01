//! Who a restore target is. A URL is only a name: `localhost`, `127.0.0.1`,
//! a socket directory, a DNS alias or a streaming replica can all lead to
//! the cluster a backup came from. Before anything is changed, the
//! target's server is asked its `system_identifier` (which a replica shares
//! with its primary), and a restore into the backup's own source cluster
//! (from its manifest) or the job's source (asked just before) is refused
//! unless the caller allows it.

use refugio_dump::SourceSpec;
use refugio_store::manifest::Manifest;
use sqlx::{Connection, Row};

use crate::error::{Error, Result};

/// The query that identifies a cluster; readable by any role by default.
const SYSTEM_IDENTIFIER_SQL: &str = "SELECT system_identifier::text AS id FROM pg_control_system()";

/// A cluster a restore must not write into without consent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceCluster {
    /// Its `pg_control_system().system_identifier`.
    pub system_identifier: String,
    /// What it is, for messages, e.g. `job app's source
    /// postgres://app@db1/app` (a redacted URL).
    pub name: String,
}

/// What a restore checks of its target before changing anything.
#[derive(Debug, Clone, Default)]
pub struct TargetGuard {
    /// Clusters besides the backup's own source (which its manifest
    /// names): the job's source as it is now, say.
    pub sources: Vec<SourceCluster>,
    /// Restore into one of them anyway, saying what is replaced
    /// (`restore --overwrite-source`).
    pub overwrite_source: bool,
    /// What a refusal tells the operator, e.g. `pass --overwrite-source to
    /// restore there anyway`.
    pub hint: String,
}

/// A target identified as a source cluster whose overwrite was allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overwritten {
    pub system_identifier: String,
    pub name: String,
}

/// The `system_identifier` of the cluster `server` connects to.
pub async fn system_identifier(server: &SourceSpec) -> Result<String> {
    let mut conn = server.connect().await?;
    let id = sqlx::query(SYSTEM_IDENTIFIER_SQL)
        .fetch_one(&mut conn)
        .await
        .map(|r| r.get::<String, _>("id"))
        .map_err(|e| {
            Error::Pg(refugio_dump::Error::Query {
                url: server.redacted(),
                what: "reading the system identifier (pg_control_system())".into(),
                source: e,
            })
        });
    let _ = conn.close().await;
    id
}

/// The clusters `manifest`'s restore must not overwrite: `guard`'s, then
/// the backup's own source when its manifest recorded its identifier.
fn protected(manifest: &Manifest, guard: &TargetGuard) -> Vec<SourceCluster> {
    let mut all = guard.sources.clone();
    if let Some(id) = &manifest.server.system_identifier {
        all.push(SourceCluster {
            system_identifier: id.clone(),
            name: format!(
                "the source of backup {} (job {})",
                manifest.backup_id, manifest.job
            ),
        });
    }
    all
}

/// Checks `target` against the source clusters of `manifest` and `guard`:
/// Ok(None) when it is another cluster (or there is nothing to compare
/// with), Ok(Some) when it is one of them and `guard` allows overwriting
/// it; otherwise the refusal. `databases` are what the restore would
/// write, for the log line that says what is replaced.
pub(crate) async fn check(
    target: &SourceSpec,
    manifest: &Manifest,
    guard: &TargetGuard,
    databases: &[String],
) -> Result<Option<Overwritten>> {
    let sources = protected(manifest, guard);
    if sources.is_empty() {
        tracing::debug!(target = %target.redacted(), "target-not-identified: no source system identifier known");
        return Ok(None);
    }
    let hint = if guard.hint.is_empty() {
        String::new()
    } else {
        format!("; {}", guard.hint)
    };
    // Through the `postgres` database, like the restore's own checks (the
    // target database may not exist yet). Unreachable: the restore fails
    // here, as it would a moment later.
    let id = match system_identifier(&target.with_database("postgres")).await {
        Ok(id) => id,
        // Reached, but it would not say who it is (pg_control_system()
        // revoked): it cannot be told apart from the source.
        Err(Error::Pg(e @ refugio_dump::Error::Query { .. })) => {
            if guard.overwrite_source {
                tracing::warn!(target = %target.redacted(), error = %e,
                    "target-unidentified: restoring anyway (overwrite allowed)");
                return Ok(None);
            }
            return Err(Error::TargetUnidentified {
                target: target.redacted(),
                reason: refugio_print::chain(&e),
                sources: sources
                    .iter()
                    .map(|s| format!("{} (system identifier {})", s.name, s.system_identifier))
                    .collect::<Vec<_>>()
                    .join(", "),
                hint,
            });
        }
        Err(e) => return Err(e),
    };
    let Some(source) = sources.into_iter().find(|s| s.system_identifier == id) else {
        return Ok(None);
    };
    if !guard.overwrite_source {
        return Err(Error::TargetIsSource {
            target: target.redacted(),
            source_name: source.name,
            system_identifier: id,
            hint,
        });
    }
    tracing::warn!(target = %target.redacted(), source = %source.name, system_identifier = %id,
        databases = %databases.join(", "),
        "restore-overwrites-source: the target is the source cluster; its databases named here are replaced");
    Ok(Some(Overwritten {
        system_identifier: id,
        name: source.name,
    }))
}
