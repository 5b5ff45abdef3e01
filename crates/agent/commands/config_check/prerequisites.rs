//! What a job's drills and, for a physical job, its base backups and WAL
//! archiving need, checked before they run: a drill's scratch server
//! reachable with the right to create databases and no older than the
//! source, or `initdb` and `postgres` for an ephemeral cluster; a physical
//! job's REPLICATION, `wal_level`, `archive_mode` and an `archive_command`
//! that calls `refugio … wal-push` with this config.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use refugio_core::{JobKind, Scratch};
use refugio_dump::tools::{self, ToolKind};
use refugio_dump::PgVersion;
use sqlx::{Connection, Executor, Row};

use super::Check;
use crate::job::Job;
use crate::output::error_chain;

fn check(what: &str, result: Result<String>) -> Check {
    match result {
        Ok(detail) => Check {
            what: what.to_string(),
            ok: true,
            detail,
            warning: false,
        },
        Err(e) => Check {
            what: what.to_string(),
            ok: false,
            detail: error_chain(&e),
            warning: false,
        },
    }
}

fn warning(what: &str, detail: String) -> Check {
    Check {
        what: what.to_string(),
        ok: true,
        detail,
        warning: true,
    }
}

/// The source's PostgreSQL version (None: unreachable, which the source's
/// own check reports).
async fn source_version(job: &Job) -> Option<PgVersion> {
    let source = job.source().ok()?;
    let mut conn = source.connect().await.ok()?;
    let facts = refugio_dump::snapshot::server_facts(&mut conn, &source)
        .await
        .ok()?;
    let _ = conn.close().await;
    Some(facts.pg_version())
}

/// The drill's prerequisites; None when the job has no scratch (no
/// drills) or its source cannot be reached.
pub(super) async fn drill_check(job: &Job) -> Option<Check> {
    let scratch = job.drill_scratch()?;
    let what = format!("job {} drills", job.name);
    let version = source_version(job).await?;
    let bindir = job.config.pg_bindir.as_deref();
    let result = match Scratch::parse(scratch, job.config.scratch_password_file.as_deref()) {
        Ok(Scratch::Ephemeral) => ephemeral(job.kind, version, bindir).await,
        Ok(Scratch::Server(spec)) => scratch_server(&spec, version).await,
        Err(e) => Err(anyhow::Error::from(e).context("scratch")),
    };
    Some(check(&what, result))
}

/// `initdb` and `postgres` for a throwaway cluster: of at least the
/// source's major for a pg_dump backup, of exactly it for a base backup.
async fn ephemeral(kind: JobKind, version: PgVersion, bindir: Option<&Path>) -> Result<String> {
    let what = format!("an ephemeral drill cluster for a PostgreSQL {version} backup");
    let initdb = tools::find_for(ToolKind::Initdb, version, &what, bindir).await?;
    if kind == JobKind::Physical && initdb.version.major != version.major {
        return Err(anyhow!(
            "a drill of a PostgreSQL {version} base backup needs PostgreSQL {} binaries (initdb, postgres); the closest found is {} in {} (set the job's pg_bindir)",
            version.major,
            initdb.version,
            initdb.bindir().display()
        ));
    }
    let postgres = initdb.bindir().join("postgres");
    if !postgres.is_file() {
        return Err(anyhow!(
            "{} has initdb but no postgres: install the server package of PostgreSQL {}",
            initdb.bindir().display(),
            initdb.version.major
        ));
    }
    Ok(format!(
        "ephemeral clusters with initdb and postgres {} from {}",
        initdb.version,
        initdb.bindir().display()
    ))
}

/// A scratch server: reachable, allowed to create databases, and no older
/// than the source (a dump does not restore into an older server).
async fn scratch_server(spec: &refugio_dump::SourceSpec, version: PgVersion) -> Result<String> {
    let admin = spec.with_database("postgres");
    let mut conn = admin.connect().await?;
    let row = conn
        .fetch_one(
            "SELECT current_setting('server_version_num')::int AS num, \
                    (SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user) AS createdb",
        )
        .await
        .with_context(|| format!("asking {}", admin.redacted()))?;
    let _ = conn.close().await;
    let scratch = PgVersion::from_num(u32::try_from(row.get::<i32, _>("num")).unwrap_or(0));
    if !row.get::<Option<bool>, _>("createdb").unwrap_or(false) {
        return Err(anyhow!(
            "scratch server {}: its role may not create databases; a drill creates and drops refugio_drill_* databases (ALTER ROLE … CREATEDB)",
            admin.redacted()
        ));
    }
    if scratch.major < version.major {
        return Err(anyhow!(
            "scratch server {} runs PostgreSQL {scratch}, older than the source's {version}: a dump restores only into the same major or a newer one",
            admin.redacted()
        ));
    }
    Ok(format!(
        "scratch server {} reachable: PostgreSQL {scratch}, may create databases",
        admin.redacted()
    ))
}

/// A physical job's server: REPLICATION for pg_basebackup, `wal_level`,
/// and on a primary `archive_mode` and an `archive_command` running
/// `refugio --config <this file> wal-push`.
pub(super) async fn physical_checks(
    job: &Job,
    physical_jobs: usize,
    config_path: Option<&Path>,
) -> Vec<Check> {
    if job.kind != JobKind::Physical {
        return Vec::new();
    }
    let what = format!("job {} physical", job.name);
    let settings = match read_settings(job).await {
        Ok(s) => s,
        Err(e) => return vec![check(&what, Err(e))],
    };
    let judged = settings.judge();
    let fine = judged.is_ok();
    let mut out = vec![check(&what, judged)];
    if settings.standby || !fine {
        return out;
    }
    let archive = format!("job {} archive_command", job.name);
    match &settings.archive_command {
        None => out.push(warning(
            &archive,
            "could not read archive_command (its role needs pg_read_all_settings or superuser): check by hand that it runs `refugio --config FILE wal-push %p`".into(),
        )),
        Some(cmd) if !cmd.contains("wal-push") => out.push(check(
            &archive,
            Err(anyhow!(
                "archive_command = {cmd:?} does not run `refugio … wal-push %p`: the WAL this job's base backups need is not archived into its repository"
            )),
        )),
        Some(cmd) => {
            let named = config_path.map(|p| p.display().to_string());
            if let Some(path) = named.filter(|p| !cmd.contains(p.as_str())) {
                out.push(warning(
                    &archive,
                    format!("archive_command = {cmd:?} does not name this config file ({path}): wal-push reads the repository from `--config FILE` (PostgreSQL's archiver has no REFUGIO_CONFIG); fine only if the database host keeps the same config elsewhere"),
                ));
            } else if physical_jobs > 1 && !cmd.contains(&format!("--job {}", job.name)) {
                out.push(warning(
                    &archive,
                    format!("archive_command = {cmd:?} has no `--job {}`: with several physical jobs, wal-push needs it", job.name),
                ));
            } else {
                out.push(check(&archive, Ok(format!("archive_command = {cmd:?}"))));
            }
        }
    }
    out
}

/// What the physical checks read from the server.
struct Settings {
    replication: bool,
    wal_level: String,
    archive_mode: String,
    archive_command: Option<String>,
    standby: bool,
}

impl Settings {
    fn judge(&self) -> Result<String> {
        if !self.replication {
            return Err(anyhow!(
                "the role lacks REPLICATION: pg_basebackup needs it (ALTER ROLE … REPLICATION)"
            ));
        }
        if !matches!(self.wal_level.as_str(), "replica" | "logical") {
            return Err(anyhow!(
                "wal_level = {}: base backups and the WAL archive need replica or logical",
                self.wal_level
            ));
        }
        if self.standby {
            return Ok(format!(
                "REPLICATION, wal_level = {}; a standby: its primary archives the WAL (check the primary's archive_command)",
                self.wal_level
            ));
        }
        if !matches!(self.archive_mode.as_str(), "on" | "always") {
            return Err(anyhow!(
                "archive_mode = {}: set archive_mode = on (a restart) and archive_command to `refugio --config FILE wal-push %p`",
                self.archive_mode
            ));
        }
        Ok(format!(
            "REPLICATION, wal_level = {}, archive_mode = {}",
            self.wal_level, self.archive_mode
        ))
    }
}

async fn read_settings(job: &Job) -> Result<Settings> {
    let source = job.source()?;
    let mut conn = source.connect().await?;
    let row = conn
        .fetch_one(
            "SELECT (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user) AS replication, \
                    current_setting('wal_level') AS wal_level, \
                    current_setting('archive_mode') AS archive_mode, \
                    pg_is_in_recovery() AS standby",
        )
        .await
        .with_context(|| format!("reading the settings of {}", source.redacted()))?;
    // Hidden from roles without pg_read_all_settings: None, not an error.
    let archive_command =
        sqlx::query_scalar::<_, String>("SELECT current_setting('archive_command')")
            .fetch_one(&mut conn)
            .await
            .ok();
    let _ = conn.close().await;
    Ok(Settings {
        replication: row.get::<Option<bool>, _>("replication").unwrap_or(false),
        wal_level: row.get("wal_level"),
        archive_mode: row.get("archive_mode"),
        archive_command,
        standby: row.get("standby"),
    })
}
