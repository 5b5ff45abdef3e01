//! Command-line interface (clap derive): one subcommand per verb. The
//! arguments that are database or repository URLs may hold a password:
//! their `Debug` redacts it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use refugio_print::SecretUrl;

/// refugio: scheduled PostgreSQL backups that are proven by restoring them.
#[derive(Debug, Parser)]
#[command(name = "refugio", version, about, long_about = None, after_help = crate::exit::help())]
pub struct Cli {
    /// Configuration file (TOML). Without one, commands take --source and
    /// --repository (default ./refugio-backups).
    #[arg(long, short = 'c', env = "REFUGIO_CONFIG", global = true)]
    pub config: Option<PathBuf>,

    /// Log format: `text` (journald-friendly) or `json` (containers).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "REFUGIO_LOG_FORMAT", global = true)]
    pub log_format: LogFormat,

    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `refugio=debug`.
    #[arg(
        long,
        default_value = "info,tokio_cron_scheduler=warn",
        env = "REFUGIO_LOG",
        global = true
    )]
    pub log: String,

    /// No progress display (it is shown on a terminal only, on stderr,
    /// for backup, restore, verify and check --read-data).
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: back up, drill, prune and check on schedule; signals
    /// (USR1 backup, USR2 drill, HUP reload, TERM stop); HTTP metrics.
    Run,
    /// Take one backup now.
    Backup(BackupArgs),
    /// List the committed backups, newest first.
    List(ListArgs),
    /// Each job against its targets: last backup, newest verified backup
    /// and the RPO, last drill and the RTO, pins, the WAL archive. Exits 1
    /// when a target is missed.
    Status(StatusArgs),
    /// Restore a backup into a database.
    Restore(RestoreArgs),
    /// Run a restore drill: restore into a scratch database, check, measure RPO/RTO, record a receipt.
    Verify(VerifyArgs),
    /// Apply the retention policy and collect garbage (orphans, stale uploads).
    Prune(PruneArgs),
    /// Check the repository's integrity: every artifact stored with its
    /// manifest's size (and, with --read-data, its SHA-256), no restore.
    Check(CheckArgs),
    /// Protect a backup from every retention rule.
    Pin(PinArgs),
    /// Remove a backup's pin.
    Unpin(PinArgs),
    /// Archive one WAL file of a physical job: the server's
    /// `archive_command = '/usr/local/bin/refugio --config
    /// /etc/refugio/refugio.toml wal-push %p'` (the archiver has no
    /// REFUGIO_CONFIG). Exits 0 only once it is
    /// stored; the same file again succeeds, different bytes under an
    /// archived name are refused.
    WalPush(WalPushArgs),
    /// Restore one archived WAL file: the `restore_command = 'refugio
    /// --config FILE wal-fetch %f %p'` that `restore --physical` writes
    /// for a recovering server. Exits 1 when the archive
    /// does not have it, 126 when it could not be fetched or checked.
    WalFetch(WalFetchArgs),
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

/// Where the repository is, overriding the config.
#[derive(Debug, Args, Clone)]
pub struct RepoArgs {
    /// Repository URL: `s3://bucket/prefix`, `file:///path` or a path.
    /// Overrides `[repository] url`. Default ./refugio-backups.
    #[arg(long, env = "REFUGIO_REPOSITORY")]
    pub repository: Option<SecretUrl>,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Job to run (from the config). Default: the only job.
    #[arg(long)]
    pub job: Option<String>,
    /// Source database URL, for a backup without a config file.
    /// Prefer PGPASSWORD or ~/.pgpass over a password in the URL.
    #[arg(long, conflicts_with = "config")]
    pub source: Option<SecretUrl>,
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Print the manifest as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Job whose backups to list. Default: every job in the repository.
    #[arg(long)]
    pub job: Option<String>,
    #[command(flatten)]
    pub repo: RepoArgs,
    /// JSON output (an array of manifests).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Job to show. Default: every job of the config and the repository.
    #[arg(long)]
    pub job: Option<String>,
    #[command(flatten)]
    pub repo: RepoArgs,
    /// JSON output (an array, one object per job).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Backup id, or `latest`. With --physical, default: the newest base
    /// backup consistent before --to.
    #[arg(long, required_unless_present = "physical")]
    pub backup: Option<String>,
    /// Target database URL. Its database is where the data goes; for a
    /// whole-server backup without --database, its server is where every
    /// database goes, each under its own name.
    #[arg(
        long,
        required_unless_present = "physical",
        conflicts_with = "physical"
    )]
    pub target: Option<SecretUrl>,
    /// File whose first line is the target's password. The target never
    /// gets the source's (`PGPASSWORD` is the source's); without this, the
    /// URL's own password or libpq's password file (`~/.pgpass`).
    #[arg(long, requires = "target")]
    pub target_password_file: Option<PathBuf>,
    /// Restore even when the target is the backup's (or the job's) source
    /// cluster, identified by its system identifier (a replica of it
    /// counts, under whatever name): the restore then replaces that
    /// cluster's databases it names. Without it such a restore is refused
    /// before anything is changed.
    #[arg(long, conflicts_with = "physical")]
    pub overwrite_source: bool,
    /// Restore a physical job's base backup into a new data directory
    /// (--target-dir), set up to recover from the WAL archive to --to.
    #[arg(long, requires = "target_dir")]
    pub physical: bool,
    /// With --physical: where recovery stops: `latest` (default: the end
    /// of the archive), `immediate` (the base backup's end), a time with
    /// its offset (`2026-12-02T14:05:00Z`) or an LSN (`0/3000028`).
    #[arg(long, requires = "physical", default_value = "latest")]
    pub to: String,
    /// With --physical: the new data directory (must be empty or missing).
    #[arg(long, requires = "physical")]
    pub target_dir: Option<PathBuf>,
    /// With --physical: keep the source's archiving. Without it the
    /// restored postgresql.auto.conf gets `archive_mode = off`, so that a
    /// promoted clone never archives into the source's WAL archive; give
    /// it for a replacement primary that is to archive into the job.
    #[arg(long, requires = "physical")]
    pub keep_archiving: bool,
    /// Of a whole-server backup, the one database to restore (into the
    /// target URL's database, or under its own name if the URL names none).
    #[arg(long)]
    pub database: Option<String>,
    /// Job the backup belongs to. Default: the only job in the repository.
    #[arg(long)]
    pub job: Option<String>,
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Restore over a database that already has tables (drops and recreates the backup's objects).
    #[arg(long)]
    pub clean: bool,
    /// Create the target database if it does not exist.
    #[arg(long)]
    pub create: bool,
    /// Apply the backup's roles and tablespaces (pg_dumpall --globals-only) first.
    #[arg(long)]
    pub globals: bool,
    /// Parallel pg_restore jobs. Above 1 the archive is downloaded to a
    /// temporary file first (needs free space for the archive: its stored
    /// size when pg_dump compressed it, its raw size otherwise).
    #[arg(long, default_value_t = 1)]
    pub jobs: u32,
    /// Directory for that temporary file. Default: $TMPDIR or /tmp.
    #[arg(long)]
    pub temp_dir: Option<PathBuf>,
    /// Do not restore object ownership.
    #[arg(long)]
    pub no_owner: bool,
    /// Directory of pg_restore/psql to use. Default: search for the closest
    /// major version >= the backup's pg_dump.
    #[arg(long)]
    pub pg_bindir: Option<PathBuf>,
    /// With `[repository.encryption]` configured, accept artifacts stored
    /// unencrypted (backups written before encryption was configured);
    /// without it they are refused.
    #[arg(long)]
    pub allow_unencrypted: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Job to drill (from the config). Default: the only job.
    #[arg(long)]
    pub job: Option<String>,
    /// Backup id, `latest`, or `unverified` (the newest backup without a passing drill).
    #[arg(long, default_value = "latest")]
    pub backup: String,
    /// Scratch server URL, overriding the job's `scratch`.
    #[arg(long)]
    pub scratch: Option<SecretUrl>,
    /// File whose first line is the password of the scratch server (the
    /// source's password is never sent there). Default: with the job's own
    /// `scratch`, its `scratch_password_file`.
    #[arg(long)]
    pub scratch_password_file: Option<PathBuf>,
    /// A physical job: where the drill's recovery stops: `latest` (the
    /// default: all of the archive), `immediate`, a time or an LSN. With
    /// `--backup latest`, the base backup is the newest that ended before it.
    #[arg(long)]
    pub to: Option<String>,
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Directory of pg_restore/psql to use.
    #[arg(long)]
    pub pg_bindir: Option<PathBuf>,
    /// With `[repository.encryption]` configured, accept artifacts stored
    /// unencrypted (backups written before encryption was configured);
    /// without it such a drill is inconclusive.
    #[arg(long)]
    pub allow_unencrypted: bool,
    /// Print the receipt as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Job to prune. Default: every job of the config with a retention
    /// policy; with the retention flags, the repository's only job.
    #[arg(long)]
    pub job: Option<String>,
    /// Only print the decisions.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub retention: RetentionArgs,
    #[command(flatten)]
    pub repo: RepoArgs,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
    /// Backups deleted per batch (manifests of a batch, then their
    /// artifacts). Hidden: tests use small batches to interrupt a prune.
    #[arg(long, hide = true, default_value_t = refugio_core::prune::DELETE_BATCH)]
    pub batch: usize,
}

/// A retention policy on the command line, for a job the config gives
/// none (zero config); named after `[jobs.retention]`'s fields, with the
/// same defaults. A job with a policy in the config refuses them.
#[derive(Debug, Clone, Default, Args)]
pub struct RetentionArgs {
    /// Keep the newest N verified backups (retention.keep_last).
    #[arg(long, value_name = "N")]
    pub keep_last: Option<u32>,
    /// Keep the newest verified backup of each of the last N hours.
    #[arg(long, value_name = "N")]
    pub keep_hourly: Option<u32>,
    /// … of each of the last N days.
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<u32>,
    /// … of each of the last N ISO weeks.
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<u32>,
    /// … of each of the last N months.
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<u32>,
    /// … of each of the last N years.
    #[arg(long, value_name = "N")]
    pub keep_yearly: Option<u32>,
    /// Keep every verified backup younger than this (e.g. `2d`).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub keep_within: Option<std::time::Duration>,
    /// Never fewer verified backups than this. Default 1.
    #[arg(long, value_name = "N")]
    pub min_verified: Option<u32>,
    /// IANA time zone of the period boundaries. Default UTC.
    #[arg(long, value_name = "ZONE")]
    pub time_zone: Option<String>,
    /// Collect orphans and multipart uploads older than this. Default 24h.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub gc_grace: Option<std::time::Duration>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Job to check. Default: every job in the repository.
    #[arg(long)]
    pub job: Option<String>,
    /// Also stream every artifact back and compare its SHA-256 with the
    /// manifest's (of the stored bytes: nothing is decrypted).
    #[arg(long)]
    pub read_data: bool,
    /// With --read-data: read only this backup (an id, or `latest`).
    #[arg(long, requires = "read_data", conflicts_with = "subset")]
    pub backup: Option<String>,
    /// With --read-data: read only part N of M of the backups (`1/7`),
    /// chosen by a hash of the backup id; 1/7 … 7/7 cover every backup.
    #[arg(long, requires = "read_data", value_name = "N/M")]
    pub subset: Option<String>,
    #[command(flatten)]
    pub repo: RepoArgs,
    /// JSON output (an array of reports, one per job).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct WalPushArgs {
    /// Physical job whose archive it goes to. Default: the config's only
    /// job of kind = "physical".
    #[arg(long)]
    pub job: Option<String>,
    /// `%p`: the file (relative to the data directory, the command's
    /// working directory).
    pub path: PathBuf,
}

#[derive(Debug, Args)]
pub struct WalFetchArgs {
    /// Physical job whose archive it comes from. Default: the config's
    /// only job of kind = "physical".
    #[arg(long)]
    pub job: Option<String>,
    /// `%f`: the name of the file the server asks for.
    pub name: String,
    /// `%p`: where to write it.
    pub dest: PathBuf,
}

#[derive(Debug, Args)]
pub struct PinArgs {
    /// Backup id (or `latest`).
    pub backup: String,
    /// Job of the backup. Default: the only job.
    #[arg(long)]
    pub job: Option<String>,
    #[command(flatten)]
    pub repo: RepoArgs,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the config file and test that every source and the repository are reachable.
    Check {
        /// Report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Logs go to stderr; stdout is for command output.
pub fn init_logging(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(&cli.log).unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_target(false).init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debug of the parsed command line: no password of `--source`,
    /// `--target`, `--scratch` or `--repository`.
    #[test]
    fn debug_output_carries_no_secrets() {
        for args in [
            &["refugio", "backup", "--source", "postgres://u:hunter2@h/db"][..],
            &[
                "refugio",
                "backup",
                "--source",
                "postgres://u@h/db?password=hunter2",
            ],
            &[
                "refugio",
                "restore",
                "--backup",
                "latest",
                "--target",
                "postgres://u:hunter2@h/db",
            ],
            &[
                "refugio",
                "verify",
                "--scratch",
                "postgres://u@h/postgres?password=hunter2",
            ],
            &[
                "refugio",
                "list",
                "--repository",
                "file://u:hunter2@/srv/backups",
            ],
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            let text = format!("{cli:?}");
            assert!(!text.contains("hunter2"), "{text}");
            assert!(text.contains("***"), "{text}");
        }
    }
}
