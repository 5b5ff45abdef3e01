//! Command lines of the PostgreSQL tools. The password goes through the
//! environment (`PGPASSWORD`), never the arguments; `--no-password` makes
//! a tool fail instead of prompting. A tool's environment is cleared down
//! to an allow-list ([`crate::tools`]) and the C locale.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::conn::SourceSpec;
use crate::error::{Error, Result};
use crate::process::ChildOutput;
use crate::tools::Tool;
use crate::DumpFormat;

/// What `pg_dump` is asked to do.
#[derive(Debug, Clone)]
pub struct DumpArgs<'a> {
    pub format: DumpFormat,
    /// `pg_dump --snapshot`; None on a server where we could not export one.
    pub snapshot: Option<&'a str>,
    pub lock_wait_timeout: Duration,
    pub exclude_tables: &'a [String],
    /// `--exclude-table-data` (exact, quoted names).
    pub exclude_table_data: &'a [String],
    /// Passed through after ours, uninterpreted.
    pub extra_args: &'a [String],
    /// Of a custom archive, pg_dump's own `--compress` (e.g. `zstd:3`):
    /// each table's data compressed inside the archive, by pg_dump's
    /// process. None: `--compress=0`, the stream compressed by refugio.
    pub archive_compression: Option<&'a str>,
}

fn base(tool: &Tool, source: &SourceSpec) -> Command {
    let mut cmd = Command::new(&tool.path);
    source.apply_tool_env(&mut cmd);
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

fn spawn(tool: &Tool, mut cmd: Command) -> Result<Child> {
    cmd.spawn().map_err(|source| Error::Spawn {
        tool: tool.kind.binary(),
        path: tool.path.clone(),
        source,
    })
}

/// The arguments of a `pg_dump` run (without the program).
pub fn pg_dump_args(source: &SourceSpec, args: &DumpArgs<'_>) -> Vec<String> {
    let mut v = vec![
        "--no-password".to_string(),
        format!("--dbname={}", source.tool_dbname()),
        format!(
            "--lock-wait-timeout={}",
            args.lock_wait_timeout.as_millis().max(1)
        ),
    ];
    match args.format {
        // Compressed inside by pg_dump (a bare `pg_restore` reads it), or
        // not at all: then our zstd/gzip stage compresses the stream and
        // `zstd -d | pg_restore` restores it.
        DumpFormat::Custom => v.extend([
            "--format=custom".into(),
            format!("--compress={}", args.archive_compression.unwrap_or("0")),
        ]),
        DumpFormat::Plain => v.push("--format=plain".into()),
    }
    if let Some(s) = args.snapshot {
        v.push(format!("--snapshot={s}"));
    }
    for t in args.exclude_tables {
        v.push(format!("--exclude-table={t}"));
    }
    for t in args.exclude_table_data {
        v.push(format!("--exclude-table-data={t}"));
    }
    v.extend(args.extra_args.iter().cloned());
    v
}

/// Starts `pg_dump`; its stdout is the returned stream.
pub fn pg_dump(tool: &Tool, source: &SourceSpec, args: &DumpArgs<'_>) -> Result<ChildOutput> {
    let mut cmd = base(tool, source);
    cmd.args(pg_dump_args(source, args))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = spawn(tool, cmd)?;
    Ok(ChildOutput::new("pg_dump", child)?)
}

/// Starts `pg_basebackup -D - -Ft -X none --checkpoint=fast` over a
/// replication connection to `source`; its stdout is the tar of the data
/// directory (read as it passes by [`crate::basebackup::TarWatch`]).
/// `-X none`: the WAL comes from the archive, so pg_basebackup ends once
/// the server has archived the backup's last segment.
pub fn pg_basebackup(tool: &Tool, source: &SourceSpec) -> Result<ChildOutput> {
    let mut cmd = base(tool, source);
    cmd.arg("--no-password")
        .arg(format!("--dbname={}", source.tool_dbname()))
        .args(["-D", "-", "-Ft", "-X", "none", "--checkpoint=fast"])
        .args(["--label", "refugio base backup"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = spawn(tool, cmd)?;
    Ok(ChildOutput::new("pg_basebackup", child)?)
}

/// Starts `pg_dumpall --globals-only` (roles, tablespaces). Without
/// superuser rights role passwords cannot be read, so they are left out.
pub fn pg_dumpall_globals(
    tool: &Tool,
    source: &SourceSpec,
    superuser: bool,
) -> Result<ChildOutput> {
    let mut cmd = base(tool, source);
    cmd.arg("--no-password")
        .arg(format!("--dbname={}", source.tool_dbname()))
        .arg("--globals-only");
    if !superuser {
        cmd.arg("--no-role-passwords");
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = spawn(tool, cmd)?;
    Ok(ChildOutput::new("pg_dumpall", child)?)
}

/// How `pg_restore` runs.
#[derive(Debug, Clone, Default)]
pub struct RestoreArgs {
    /// Parallel jobs; > 1 needs `input` to be a file.
    pub jobs: u32,
    /// Drop objects before recreating them.
    pub clean: bool,
    /// Do not restore ownership (`--no-owner`).
    pub no_owner: bool,
    /// `--single-transaction`: all or nothing (not with jobs > 1).
    pub single_transaction: bool,
}

/// Starts `pg_restore` into `target`, reading the archive from stdin
/// (`input` None) or from a file.
pub fn pg_restore(
    tool: &Tool,
    target: &SourceSpec,
    args: &RestoreArgs,
    input: Option<&Path>,
) -> Result<Child> {
    let mut cmd = base(tool, target);
    cmd.arg("--no-password")
        .arg(format!("--dbname={}", target.tool_dbname()))
        .arg("--exit-on-error");
    if args.jobs > 1 {
        cmd.arg(format!("--jobs={}", args.jobs));
    }
    if args.single_transaction {
        cmd.arg("--single-transaction");
    }
    if args.clean {
        cmd.args(["--clean", "--if-exists"]);
    }
    if args.no_owner {
        cmd.arg("--no-owner");
    }
    match input {
        Some(p) => {
            cmd.arg(p).stdin(Stdio::null());
        }
        None => {
            cmd.stdin(Stdio::piped());
        }
    }
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    spawn(tool, cmd)
}

/// Starts `psql` reading SQL from stdin into `target`. With
/// `stop_on_error` the first error aborts (`ON_ERROR_STOP=1`); with
/// `single_transaction` nothing is committed unless all of it runs.
pub fn psql(
    tool: &Tool,
    target: &SourceSpec,
    stop_on_error: bool,
    single_transaction: bool,
) -> Result<Child> {
    let mut cmd = base(tool, target);
    // VERBOSITY=verbose: every server error carries its SQLSTATE
    // (`ERROR:  42601: …`), which is what a failure is judged by.
    cmd.args(["--no-password", "-X", "-q", "-v", "VERBOSITY=verbose"])
        .arg(format!("--dbname={}", target.tool_dbname()))
        .args([
            "-v",
            if stop_on_error {
                "ON_ERROR_STOP=1"
            } else {
                "ON_ERROR_STOP=0"
            },
        ]);
    if single_transaction {
        cmd.arg("--single-transaction");
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    spawn(tool, cmd)
}
