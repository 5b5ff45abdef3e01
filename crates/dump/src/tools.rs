//! The PostgreSQL tools refugio runs: which binary, and the environment
//! it runs in.
//!
//! **Which binary.** Client tools whose major version fits.
//!
//! A `pg_dump` can dump servers of its own major version and older; a
//! `pg_restore` reads archives written by its own major version and older.
//! So for a server (or archive) of major N we look for a tool of major >= N,
//! preferring the closest: the configured bindir (only that, when given),
//! then `/usr/lib/postgresql/*/bin`, then `PATH`.
//!
//! **The environment** of every process refugio starts: cleared, then an
//! explicit allow-list. refugio's own environment holds what a child must
//! not see — S3 keys (`AWS_*`), `PGPASSWORD`, `CREDENTIALS_DIRECTORY`,
//! `REFUGIO_*` (the age identity among them) — and a drill restores
//! content read from a repository that other hosts can write: whatever a
//! hostile archive makes a child run (`COPY … TO PROGRAM` in a drill's
//! server) sees only this.
//!
//! Every child gets `PATH`, `TZ` and `TMPDIR` from refugio, its own `HOME`,
//! and the C locale (`LANG`, `LC_ALL`): a tool's own messages are then the
//! same on every host, whatever language the host speaks. What else a
//! child gets is added by its caller, named: a libpq tool its connection's
//! variables ([`crate::SourceSpec::tool_env`]), the server of a physical
//! drill the store's credentials its `restore_command` needs.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Which client tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolKind {
    PgDump,
    PgDumpAll,
    PgRestore,
    Psql,
    /// Server binaries, for throwaway clusters (ephemeral drills).
    Initdb,
    Postgres,
    PgCtl,
    /// Physical base backups and their verification.
    PgBasebackup,
    PgVerifybackup,
}

impl ToolKind {
    pub fn binary(self) -> &'static str {
        match self {
            ToolKind::PgDump => "pg_dump",
            ToolKind::PgDumpAll => "pg_dumpall",
            ToolKind::PgRestore => "pg_restore",
            ToolKind::Psql => "psql",
            ToolKind::Initdb => "initdb",
            ToolKind::Postgres => "postgres",
            ToolKind::PgCtl => "pg_ctl",
            ToolKind::PgBasebackup => "pg_basebackup",
            ToolKind::PgVerifybackup => "pg_verifybackup",
        }
    }
}

/// A PostgreSQL version as `major.minor` (10+ numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PgVersion {
    pub major: u32,
    pub minor: u32,
}

impl PgVersion {
    /// From `server_version_num` (e.g. 160015).
    pub fn from_num(num: u32) -> Self {
        PgVersion {
            major: num / 10000,
            minor: num % 10000,
        }
    }

    /// From the first line of `pg_dump --version`:
    /// `pg_dump (PostgreSQL) 16.15` or `psql (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)`.
    pub fn parse_tool_output(s: &str) -> Option<Self> {
        let after = s.split(')').nth(1)?.trim();
        let token = after.split_whitespace().next()?;
        Self::parse(token)
    }

    /// From `16.15`, `17beta1`, `18.0`.
    pub fn parse(s: &str) -> Option<Self> {
        let digits_end = |t: &str| t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (maj, rest) = s.split_at(digits_end(s));
        let major = maj.parse().ok()?;
        let minor = rest
            .strip_prefix('.')
            .map(|r| &r[..digits_end(r)])
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        Some(PgVersion { major, minor })
    }
}

impl std::fmt::Display for PgVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// A client tool binary with its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tool {
    pub kind: ToolKind,
    pub path: PathBuf,
    pub version: PgVersion,
}

impl Tool {
    /// The directory holding the tool, to find its siblings.
    pub fn bindir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("/"))
    }
}

/// Runs `<path> --version` and parses it.
pub async fn probe(kind: ToolKind, path: &Path) -> std::result::Result<PgVersion, String> {
    let mut cmd = tokio::process::Command::new(path);
    clear_env(&mut cmd, None);
    let out = cmd
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run: {e}"))?;
    if !out.status.success() {
        return Err(format!("`--version` exited with {}", out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next().unwrap_or("");
    if !line.starts_with(kind.binary()) {
        return Err(format!("not {}: {line:?}", kind.binary()));
    }
    PgVersion::parse_tool_output(line).ok_or_else(|| format!("unrecognised version {line:?}"))
}

/// Whether `tool` (a pg_dump) compresses custom archives with zstd itself
/// (`--compress=zstd:N`: PostgreSQL 16 and later, built with libzstd).
/// Asked once per binary: pg_dump checks its compression option before it
/// connects, so a run pointed at a socket that does not exist answers
/// without touching any server.
pub async fn dumps_zstd(tool: &Tool) -> bool {
    static KNOWN: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<PathBuf, bool>>> =
        std::sync::OnceLock::new();
    if tool.kind != ToolKind::PgDump || tool.version.major < 16 {
        return false;
    }
    let known = KNOWN.get_or_init(Default::default);
    if let Some(answer) = known
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&tool.path)
    {
        return *answer;
    }
    let mut cmd = tokio::process::Command::new(&tool.path);
    clear_env(&mut cmd, None);
    let out = cmd
        .args([
            "--format=custom",
            "--compress=zstd:1",
            "--file=/dev/null",
            "--no-password",
            "--dbname=host=/nonexistent/refugio-zstd-probe port=1 dbname=probe user=probe",
        ])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await;
    let answer = match out {
        Ok(out) => zstd_probe_says_yes(&String::from_utf8_lossy(&out.stderr)),
        Err(_) => false,
    };
    tracing::debug!(pg_dump = %tool.path.display(), zstd = answer, "pg_dump zstd probe");
    known
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(tool.path.clone(), answer);
    answer
}

/// The probe's verdict from its stderr: pg_dump went on to connect (and
/// failed to) only if it accepted `--compress=zstd:1`; any complaint about
/// the compression, or anything unexpected, is a no.
fn zstd_probe_says_yes(stderr: &str) -> bool {
    !stderr.contains("compress") && stderr.contains("/nonexistent/refugio-zstd-probe")
}

/// Candidate paths in search order (see the module doc).
pub fn candidates(kind: ToolKind, bindir: Option<&Path>) -> Vec<PathBuf> {
    if let Some(dir) = bindir {
        return vec![dir.join(kind.binary())];
    }
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut dirs: Vec<(u32, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().parse::<u32>().ok()?;
                Some((n, e.path().join("bin").join(kind.binary())))
            })
            .filter(|(_, p)| p.exists())
            .collect();
        dirs.sort();
        out.extend(dirs.into_iter().map(|(_, p)| p));
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(kind.binary());
            if p.is_file() && !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

/// Finds the tool of the smallest major version >= `required.major`.
/// `what` names what the version belongs to, for the error ("server", "archive").
pub async fn find(kind: ToolKind, required: PgVersion, bindir: Option<&Path>) -> Result<Tool> {
    find_for(kind, required, &format!("PostgreSQL {required}"), bindir).await
}

/// Like [`find`], with `what` naming what needs the version in the error
/// (e.g. "an archive written by pg_dump 16.15").
pub async fn find_for(
    kind: ToolKind,
    required: PgVersion,
    what: &str,
    bindir: Option<&Path>,
) -> Result<Tool> {
    let mut found = Vec::new();
    let mut best: Option<Tool> = None;
    for path in candidates(kind, bindir) {
        match probe(kind, &path).await {
            Ok(version) => {
                found.push((path.clone(), version.to_string()));
                let fits = version.major >= required.major;
                let closer = best
                    .as_ref()
                    .is_none_or(|b| version.major < b.version.major);
                if fits && closer {
                    best = Some(Tool {
                        kind,
                        path,
                        version,
                    });
                }
            }
            Err(why) => found.push((path, why)),
        }
    }
    best.ok_or(Error::NoSuitableTool {
        tool: kind.binary(),
        required: what.to_string(),
        required_major: required.major,
        found,
    })
}

// The environment of a child.
/// Variables every child keeps from refugio's environment.
pub const KEPT: &[&str] = &["PATH", "TZ", "TMPDIR"];

/// The locale of every child: messages in English, the same on every host.
pub const C_LOCALE: &[(&str, &str)] = &[("LANG", "C"), ("LC_ALL", "C")];

/// libpq's connection variables, kept for a tool that connects to a server
/// the operator configured (a source, a target, a scratch server): sqlx
/// reads the same ones for refugio's own sessions, so a tool reaches the
/// same server with the same credentials. Never given to a tool that
/// connects to a server refugio runs itself (an ephemeral drill cluster).
pub const LIBPQ_CONNECTION: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSSLMODE",
    "PGSSLROOTCERT",
    "PGSSLCERT",
    "PGSSLKEY",
    "PGSSLCRL",
    "PGCONNECT_TIMEOUT",
];

/// refugio's `HOME`, if it has one.
pub fn own_home() -> Option<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from)
}

/// The allow-list every child starts from (see the module doc), with
/// `home` as its `HOME` (none: `/`).
pub fn base_env(home: Option<&Path>) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = KEPT
        .iter()
        .filter_map(|k| std::env::var_os(k).map(|v| (OsString::from(k), v)))
        .collect();
    env.push((
        "HOME".into(),
        home.map_or_else(|| OsString::from("/"), |h| h.as_os_str().to_os_string()),
    ));
    env.extend(C_LOCALE.iter().map(|(k, v)| ((*k).into(), (*v).into())));
    env
}

/// Those of `names` set in refugio's environment, with their values.
pub fn inherited_env(names: &[&str]) -> Vec<(String, OsString)> {
    names
        .iter()
        .filter_map(|k| std::env::var_os(k).map(|v| ((*k).to_string(), v)))
        .collect()
}

/// Clears `cmd`'s environment down to [`base_env`].
pub fn clear_env(cmd: &mut tokio::process::Command, home: Option<&Path>) {
    cmd.env_clear().envs(base_env(home));
}

/// [`clear_env`] for a `std::process::Command`.
pub fn clear_env_std(cmd: &mut std::process::Command, home: Option<&Path>) {
    cmd.env_clear().envs(base_env(home));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tool_versions() {
        let v = PgVersion::parse_tool_output("pg_dump (PostgreSQL) 16.15").unwrap();
        assert_eq!(
            v,
            PgVersion {
                major: 16,
                minor: 15
            }
        );
        let v = PgVersion::parse_tool_output("psql (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)")
            .unwrap();
        assert_eq!(
            v,
            PgVersion {
                major: 15,
                minor: 18
            }
        );
        let v = PgVersion::parse_tool_output("pg_dump (PostgreSQL) 17beta1").unwrap();
        assert_eq!(
            v,
            PgVersion {
                major: 17,
                minor: 0
            }
        );
        assert!(PgVersion::parse_tool_output("garbage").is_none());
    }

    #[test]
    fn zstd_probe_reads_pg_dump_stderr() {
        // PostgreSQL 16.15 with libzstd: it tried to connect.
        assert!(zstd_probe_says_yes(
            "pg_dump: error: connection to server on socket \"/nonexistent/refugio-zstd-probe/.s.PGSQL.1\" failed: No such file or directory"
        ));
        // Built without libzstd, or older than 16.
        assert!(!zstd_probe_says_yes(
            "pg_dump: error: this build does not support compression with zstd"
        ));
        assert!(!zstd_probe_says_yes(
            "pg_dump: error: invalid value \"zstd:1\" for option -Z/--compress"
        ));
        assert!(!zstd_probe_says_yes(""));
    }

    #[tokio::test]
    async fn zstd_probe_of_a_missing_binary_is_a_no() {
        let tool = Tool {
            kind: ToolKind::PgDump,
            path: PathBuf::from("/nonexistent/bin/pg_dump"),
            version: PgVersion {
                major: 16,
                minor: 0,
            },
        };
        assert!(!dumps_zstd(&tool).await);
    }

    #[test]
    fn server_version_num() {
        assert_eq!(PgVersion::from_num(160015).to_string(), "16.15");
        assert_eq!(PgVersion::from_num(150018).to_string(), "15.18");
    }

    #[tokio::test]
    async fn missing_bindir_names_versions() {
        let err = find(
            ToolKind::PgDump,
            PgVersion {
                major: 16,
                minor: 4,
            },
            Some(Path::new("/nonexistent/bin")),
        )
        .await
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("PostgreSQL 16.4"), "{msg}");
        assert!(msg.contains("/nonexistent/bin/pg_dump"), "{msg}");
    }

    #[test]
    fn the_base_has_the_c_locale_and_the_home_given_and_nothing_secret() {
        let env = base_env(Some(Path::new("/var/empty")));
        let get = |k: &str| {
            env.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.to_string_lossy().into_owned())
        };
        assert_eq!(get("HOME").as_deref(), Some("/var/empty"));
        assert_eq!(get("LC_ALL").as_deref(), Some("C"));
        assert_eq!(get("LANG").as_deref(), Some("C"));
        for (name, _) in &env {
            let name = name.to_string_lossy();
            assert!(
                ["PATH", "TZ", "TMPDIR", "HOME", "LANG", "LC_ALL"].contains(&name.as_ref()),
                "{name} is not on the allow-list"
            );
        }
    }
}
