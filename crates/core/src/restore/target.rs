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
               AND NOT starts_with(n.nspname, 'pg_temp_') \
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

/// pg_restore's own words (its messages are in the C locale: its
/// environment is cleared) for an archive it cannot read: the bytes, which
/// matched the manifest's digest, are not a valid archive.
const ARCHIVE_STRUCTURE: &[&str] = &[
    "did not find magic string in file header",
    "could not read from input file: end of file",
    "unexpected end of file",
    "could not uncompress data",
    "could not decompress data",
    "possibly corrupt archive",
    "perhaps a corrupt TOC",
    "found unexpected block ID",
    "unrecognized data block type",
    "invalid compression code",
    "invalid dumpId",
    "invalid dependency",
    "invalid creation date in header",
    "has wrong seek position",
    "unexpected data offset flag",
];

/// Why a restore tool's failure condemns the backup, or None when it
/// proves nothing against it (see [`refugio_dump::sqlstate`]): the server
/// refused a statement with a content SQLSTATE (psql prints it; for
/// pg_restore it is read from the log of a server refugio runs, written
/// since `log_from`), or pg_restore found the archive malformed.
/// Anything else — a server that refused for a reason of its own, ran out
/// of something, went away, or a pg_restore failure on a server whose log
/// refugio cannot read — leaves the backup unjudged.
pub(super) fn content_refused(
    target: &SourceSpec,
    tool: &str,
    stderr_tail: &str,
    log_from: Option<u64>,
) -> Option<String> {
    let code = if tool == "pg_restore" {
        let malformed = stderr_tail
            .lines()
            .filter_map(|l| l.strip_prefix("pg_restore: error: "))
            .find(|l| {
                !l.starts_with("could not execute query")
                    && ARCHIVE_STRUCTURE.iter().any(|p| l.contains(p))
            });
        if let Some(l) = malformed {
            return Some(format!("pg_restore cannot read the archive: {l}"));
        }
        // What the server refused (a statement, a COPY's data) and why:
        // only the log of a server refugio runs says.
        let own = target.own_server()?;
        refugio_dump::sqlstate::first_in_log(&own.log, log_from?)?
    } else {
        refugio_dump::sqlstate::in_psql_output(stderr_tail)
            .into_iter()
            .next()?
    };
    refugio_dump::sqlstate::refuses_content(&code).then(|| {
        format!(
            "the server refused the backup's content (SQLSTATE {code}, class {})",
            &code[..2]
        )
    })
}

/// Where the log of `target`'s server is now, when refugio runs it: the
/// start of the lines of a restore about to begin.
pub(super) fn log_mark(target: &SourceSpec) -> Option<u64> {
    target
        .own_server()
        .map(|own| refugio_dump::sqlstate::log_mark(&own.log))
}

/// A restore tool that exited non-zero: its verdict on the content
/// ([`content_refused`]), else the environment's failure.
pub(super) fn tool_failed(
    target: &SourceSpec,
    e: refugio_dump::Error,
    log_from: Option<u64>,
) -> Error {
    let why = match &e {
        refugio_dump::Error::ToolFailed {
            tool, stderr_tail, ..
        } => content_refused(target, tool, stderr_tail, log_from),
        _ => None,
    };
    match why {
        Some(why) => Error::Rejected {
            why,
            tool_error: Box::new(e),
        },
        None => Error::Pg(e),
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

/// Checks every target of `plan` (exists, or `create`; empty, or
/// `clean`), then creates the missing ones; returns the target database
/// names. A refusal changes nothing, and names every offending database.
pub(super) async fn preflight(
    plan: &[(refugio_store::manifest::DumpUnit<'_>, SourceSpec)],
    opts: &super::RestoreOptions,
) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let mut to_create = Vec::new();
    let mut missing = Vec::new();
    let mut occupied = Vec::new();
    for (_, to) in plan {
        let database = to.database().ok_or_else(|| Error::Artifact {
            key: "target".into(),
            detail: "the target URL names no database".into(),
        })?;
        let state = inspect(to, &database).await?;
        if !state.exists {
            match opts.create {
                true => to_create.push((to, database.clone())),
                false => missing.push(database.clone()),
            }
        }
        if state.tables > 0 && !opts.clean {
            occupied.push(crate::error::Occupied {
                database: database.clone(),
                tables: state.tables,
                example: state.example,
            });
        }
        names.push(database);
    }
    let server = opts.target.redacted();
    // Occupied databases first: they are what --clean would overwrite.
    if !occupied.is_empty() {
        return Err(Error::TargetNotEmpty {
            target: server,
            occupied,
        });
    }
    if !missing.is_empty() {
        return Err(Error::TargetMissing {
            target: server,
            databases: missing,
        });
    }
    for (to, database) in to_create {
        create(to, &database).await?;
    }
    Ok(names)
}
