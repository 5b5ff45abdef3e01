//! The restore target: whether its databases exist and are empty, creating
//! them, and reading a restore tool's failure as the environment's or the
//! content's.

use refugio_dump::snapshot::quote_ident;
use refugio_dump::SourceSpec;
use sqlx::{Connection, Executor, Row};

use crate::error::{Error, Result};

/// What a target database holds before a restore.
#[derive(Debug, Clone)]
pub(super) struct TargetState {
    pub exists: bool,
    /// User tables in it, and one of them.
    pub tables: i64,
    pub example: String,
}

/// Whether `target`'s database exists, and how many user tables it has.
pub(super) async fn inspect(target: &SourceSpec, database: &str) -> Result<TargetState> {
    let admin = target.with_database("postgres");
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
    let _ = conn.close().await;
    if !exists {
        return Ok(TargetState {
            exists,
            tables: 0,
            example: String::new(),
        });
    }
    let mut conn = target.connect().await?;
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
            url: target.redacted(),
            what: "checking that the target is empty".into(),
            source: e,
        })?;
    let _ = conn.close().await;
    Ok(TargetState {
        exists,
        tables: row.get("n"),
        example: row.get::<Option<String>, _>("example").unwrap_or_default(),
    })
}

/// `CREATE DATABASE` on `target`'s server.
pub(super) async fn create(target: &SourceSpec, database: &str) -> Result<()> {
    let admin = target.with_database("postgres");
    let mut conn = admin.connect().await?;
    conn.execute(format!("CREATE DATABASE {}", quote_ident(database)).as_str())
        .await
        .map_err(|e| refugio_dump::Error::Query {
            url: admin.redacted(),
            what: format!("CREATE DATABASE {database}"),
            source: e,
        })?;
    let _ = conn.close().await;
    Ok(())
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
pub(super) async fn tool_failed(target: &SourceSpec, e: refugio_dump::Error) -> Error {
    let environment = match &e {
        refugio_dump::Error::ToolFailed { stderr_tail, .. } => {
            ENVIRONMENT_ERRORS.iter().any(|p| stderr_tail.contains(p))
                || stderr_tail
                    .lines()
                    .any(|l| l.contains("role \"") && l.contains("does not exist"))
                || target.connect().await.is_err()
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
pub(super) fn check_temp_space(dir: &std::path::Path, needed: u64) -> Result<()> {
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
