//! One `[[jobs]]` entry: what to back up and how, its drills' targets and
//! checks, and the mapping to the operations' options.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;

use refugio_dump::snapshot::RowCountMode;
use refugio_dump::{Compression, DumpFormat, SourceSpec, SslMode, TlsSettings};
use refugio_print::{SecretText, SecretUrl};

use super::retention::RetentionConfig;
use super::schedule::ScheduleConfig;
use super::values::{one, yes};

/// One `[[jobs]]` entry. Its `Debug` redacts passwords in `source`,
/// `scratch` and `extra_args` (their types do).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    /// Job name: the repository folder. Letters, digits, `-`, `_`, `.`. Required.
    pub name: String,
    /// `logical` (default: pg_dump of one database or of `databases`) or
    /// `physical`: the whole cluster as `pg_basebackup` base backups plus
    /// the WAL archive that `refugio wal-push` fills (the server's
    /// `archive_command`), restored to a point in time.
    #[serde(default)]
    pub kind: refugio_core::JobKind,
    /// Source connection URL, libpq syntax (`postgres://user@host:5432/db`,
    /// unix socket: `?host=/run/postgresql`). Required. A password here
    /// works but is discouraged: use `password_file` or `PGPASSWORD`/`~/.pgpass`
    /// (`PGPASSWORD` is the source's alone: no scratch server or restore
    /// target receives it).
    pub source: SecretUrl,
    /// Database to dump. Default: the URL's database.
    #[serde(default)]
    pub database: Option<String>,
    /// A whole-server job: the databases to dump, names or `*`/`?` globs
    /// (`["*"]`: all). Each is dumped in its own snapshot into its own
    /// artifact of one backup, with the globals once. Templates are never
    /// dumped. The job connects to the URL's database, or `postgres`.
    /// Default none (the one database `database` or the URL names).
    #[serde(default)]
    pub databases: Option<Vec<String>>,
    /// Databases a whole-server job leaves out (names or globs). Default none.
    #[serde(default)]
    pub exclude_databases: Vec<String>,
    /// File whose first line is the password. Default none (libpq's sources).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// libpq's `sslmode` for the source: `disable`, `allow`, `prefer`,
    /// `require`, `verify-ca`, `verify-full`. Default: the URL's, else
    /// `PGSSLMODE`, else `prefer`. Merged into the URL for sqlx and the
    /// libpq tools alike; a different `sslmode` in the URL is an error.
    #[serde(default)]
    pub sslmode: Option<SslMode>,
    /// CA certificates (PEM) the source's certificate must chain to. Default none.
    #[serde(default)]
    pub sslrootcert: Option<PathBuf>,
    /// Client certificate (PEM), with `sslkey`. Default none.
    #[serde(default)]
    pub sslcert: Option<PathBuf>,
    /// The client certificate's key (PEM, no passphrase; mode 0600). Default none.
    #[serde(default)]
    pub sslkey: Option<PathBuf>,
    /// `custom` (default; pg_restore, parallel restore) or `plain` (SQL for `gunzip | psql`).
    #[serde(default = "default_format")]
    pub format: DumpFormat,
    /// `zstd` (default), `gzip` or `none`.
    #[serde(default = "default_compression")]
    pub compression: Compression,
    /// Compression level. Default: zstd 3, gzip 6.
    #[serde(default)]
    pub compression_level: Option<i32>,
    /// Custom format with zstd: pg_dump (16+, built with zstd) compresses
    /// inside the archive, which a bare `pg_restore` reads. Default false:
    /// refugio compresses the stream (faster, see docs/design.md).
    #[serde(default)]
    pub archive_compression: bool,
    /// Also store `pg_dumpall --globals-only` (roles, tablespaces). Default true.
    #[serde(default = "yes")]
    pub globals: bool,
    /// Directory holding pg_dump/pg_dumpall to use (only that one).
    /// Default: search `/usr/lib/postgresql/*/bin`, then `PATH`, for the
    /// closest major version >= the server's.
    #[serde(default)]
    pub pg_bindir: Option<PathBuf>,
    /// Tables left out (`schema.table` or `table`, `*`/`?` globs): passed to
    /// pg_dump as `--exclude-table` and left out of the row counts. Default none.
    #[serde(default)]
    pub exclude_tables: Vec<String>,
    /// When set, only the tables these patterns match are dumped (their
    /// data and definitions); every other table is left out (as by
    /// `exclude_tables`), the rest of the schema is kept. Default: all.
    #[serde(default)]
    pub include_tables: Vec<String>,
    /// Tables whose definition is dumped but not their rows (pg_dump's
    /// `--exclude-table-data`), resolved like `exclude_tables`; the
    /// manifest marks them and drills do not count them. Default none.
    #[serde(default)]
    pub exclude_table_data: Vec<String>,
    /// Extra pg_dump arguments, passed as they are (after refugio's own).
    /// refugio does not interpret them: an argument that leaves data out
    /// makes the manifest's row counts disagree with the dump. Default none.
    #[serde(default)]
    pub extra_args: Vec<SecretText>,
    /// How long pg_dump (and refugio's snapshot) waits for a table lock
    /// before giving up; the backup is then retried. Default `30s`.
    #[serde(default = "default_lock_wait", with = "humantime_serde")]
    pub lock_wait_timeout: Duration,
    /// On a standby: the most its data may lag behind the primary (the last
    /// replayed commit, while replay is paused, behind, or cut off).
    /// Default `5m`; `"0s"` turns the check off.
    #[serde(default = "default_max_replica_lag", with = "humantime_serde")]
    pub max_replica_lag: Duration,
    /// `refuse` (default: no backup, a temporary error) or `flag` (back up,
    /// record the data's time, warn) when a standby lags more than that.
    #[serde(default)]
    pub on_replica_lag: refugio_core::ReplicaLag,
    /// Attempts of `refugio backup` on a lock timeout or another temporary
    /// failure, 2 s, 4 s, 8 s… apart (the agent uses `agent.backoff`). Default 3.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// `exact` (default: `count(*)` per table in the snapshot) or `estimated` (`reltuples`).
    #[serde(default)]
    pub row_counts: RowCountMode,
    /// Where restore drills restore: a server URL where refugio may create
    /// and drop `refugio_drill_*` databases, or `"ephemeral"`: a throwaway
    /// cluster refugio starts itself (roles restored too). Default none
    /// (`refugio verify` then needs `--scratch`).
    #[serde(default)]
    pub scratch: Option<SecretUrl>,
    /// File whose first line is the password for `scratch` (a server URL).
    /// The scratch server never gets the source's password. Default none:
    /// the scratch URL's own, or libpq's password file (`~/.pgpass`).
    #[serde(default)]
    pub scratch_password_file: Option<PathBuf>,
    /// When `refugio run` backs up, drills, prunes and checks this job. Default: never.
    #[serde(default)]
    pub schedule: ScheduleConfig,
    /// Recovery targets checked by drills: `{ rpo = "6h", rto = "2h" }`. Default none.
    #[serde(default)]
    pub targets: Targets,
    /// SQL checks run on the restored database by drills; each must return
    /// one row with one true value. A string runs in every database of the
    /// backup; `{ database = "trips", sql = "…" }` in that one only.
    /// Default none.
    #[serde(default)]
    pub checks: Vec<CheckConfig>,
    /// Parallel pg_restore jobs in drills. Default 1.
    #[serde(default = "one")]
    pub drill_jobs: u32,
    /// Retention policy applied by `refugio prune`. Default none (prune
    /// then refuses to run for this job).
    #[serde(default)]
    pub retention: Option<RetentionConfig>,
    /// Where SIGUSR2 restores the newest verified backup after its drill.
    /// Default none.
    #[serde(default)]
    pub restore_on_signal: Option<super::restore_signal::RestoreOnSignal>,
}

impl JobConfig {
    /// The source, as the job names it (its TLS fields merged into the
    /// URL). A whole-server job whose URL names no database connects to
    /// `postgres` (its lock, its probes, the globals), as its backups do.
    pub fn source_spec(&self) -> Result<SourceSpec> {
        let spec = SourceSpec::source(
            &self.source,
            self.database.as_deref(),
            self.password_file.as_deref(),
        )
        .and_then(|s| s.with_tls(&self.tls()))
        .with_context(|| format!("job {}: source", self.name))?;
        Ok(match (&self.databases, spec.database()) {
            (Some(_), None) => spec.with_database("postgres"),
            _ => spec,
        })
    }

    /// The job's `sslmode`, `sslrootcert`, `sslcert` and `sslkey`.
    pub fn tls(&self) -> TlsSettings {
        TlsSettings {
            mode: self.sslmode,
            root_cert: self.sslrootcert.clone(),
            cert: self.sslcert.clone(),
            key: self.sslkey.clone(),
        }
    }

    /// Where this job's drills restore: `scratch`; a physical job's are
    /// always an ephemeral cluster.
    pub fn drill_scratch(&self) -> Option<&str> {
        match self.kind {
            refugio_core::JobKind::Physical => Some("ephemeral"),
            refugio_core::JobKind::Logical => self.scratch.as_deref(),
        }
    }
}

/// One drill check: SQL, optionally bound to one database of a
/// whole-server backup.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum CheckConfig {
    /// Runs in every database of the backup.
    Sql(String),
    /// `{ database = "trips", sql = "SELECT count(*) > 0 FROM trips" }`.
    In(CheckIn),
}

/// A check bound to a database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckIn {
    pub database: String,
    pub sql: String,
}

impl CheckConfig {
    pub fn check(&self) -> refugio_core::drill::Check {
        match self {
            CheckConfig::Sql(sql) => refugio_core::drill::Check::everywhere(sql),
            CheckConfig::In(c) => refugio_core::drill::Check {
                sql: c.sql.clone(),
                database: Some(c.database.clone()),
            },
        }
    }
}

/// `targets = { rpo = "6h", rto = "2h" }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Targets {
    /// Largest acceptable age of the newest verified backup.
    #[serde(default, with = "humantime_serde")]
    pub rpo: Option<Duration>,
    /// Longest acceptable restore (fetch to end of checks).
    #[serde(default, with = "humantime_serde")]
    pub rto: Option<Duration>,
}

fn default_format() -> DumpFormat {
    DumpFormat::Custom
}
fn default_compression() -> Compression {
    Compression::Zstd
}

fn default_lock_wait() -> Duration {
    Duration::from_secs(30)
}
fn default_max_replica_lag() -> Duration {
    Duration::from_secs(300)
}
fn default_attempts() -> u32 {
    3
}

/// A job built from command-line flags alone (zero-config start).
pub fn adhoc_job(source: &str, name: Option<&str>) -> Result<JobConfig> {
    let spec = refugio_dump::SourceSpec::new(source, None, None).context("--source")?;
    let db = spec.database().unwrap_or_else(|| "postgres".into());
    let name = match name {
        Some(n) => n.to_string(),
        None => {
            let cleaned: String = db
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            if refugio_store::repo::valid_segment(&cleaned) {
                cleaned
            } else {
                "default".into()
            }
        }
    };
    // Through serde, for the defaults; from values, not TOML text, so no
    // message can quote the URL.
    let mut table = toml::Table::new();
    table.insert("name".into(), toml::Value::String(name));
    table.insert("source".into(), toml::Value::String(source.to_string()));
    let job: JobConfig = toml::Value::Table(table)
        .try_into()
        .context("building the job from --source")?;
    Ok(job)
}

/// The `restore_command` a restored server runs: this binary, the same
/// config file (absolute), `wal-fetch` for the job.
pub fn wal_fetch_command(config: &Path, job: &str) -> Result<String> {
    use refugio_core::restore::physical::shell_quote;
    let exe = std::env::current_exe().context("finding the refugio binary's path")?;
    let config = std::path::absolute(config)
        .with_context(|| format!("making {} absolute", config.display()))?;
    Ok(format!(
        "{} --config {} wal-fetch --job {} %f %p",
        shell_quote(&exe.to_string_lossy()),
        shell_quote(&config.to_string_lossy()),
        shell_quote(job)
    ))
}
