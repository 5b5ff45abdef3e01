//! Throwaway PostgreSQL clusters for drills (`scratch = "ephemeral"`):
//! initdb into a fresh directory under the system temp dir, a server on a
//! unix socket in that directory (no TCP port), run as an unprivileged user
//! (65534) when refugio runs as root, removed afterwards. A directory left
//! by a crashed drill (its owner process gone) is removed by the next one,
//! its server stopped by the PID it recorded once that PID is proven to be
//! a postgres of that directory.
//!
//! The server and everything it starts (a hostile archive's `COPY … TO
//! PROGRAM`, a physical drill's `restore_command`) get a cleared
//! environment: `PATH`, `TZ`, `TMPDIR`, the C locale, `HOME` = the
//! cluster's directory, and — for a physical drill only — the variables
//! its `restore_command` needs to read the store, named by the caller
//! ([`EphemeralCluster::for_base_backup`]). Nothing else of refugio's
//! environment (S3 keys, `PGPASSWORD`, `CREDENTIALS_DIRECTORY`,
//! `REFUGIO_*`) reaches it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use refugio_dump::tools::{self, PgVersion, Tool, ToolKind};
use refugio_dump::SourceSpec;

use crate::error::{Error, Result};

/// Directory name prefix of ephemeral clusters.
pub const DIR_PREFIX: &str = "refugio-drill-";
const OWNER_FILE: &str = "refugio-owner.pid";
const NOBODY: u32 = 65534;
const PORT: u16 = 5432;

/// `action` on `target` (a path or a command) failed with `e`.
fn io_err(
    action: &'static str,
    target: impl std::fmt::Display,
    e: impl std::fmt::Display,
) -> Error {
    Error::EphemeralIo {
        action,
        target: target.to_string(),
        reason: e.to_string(),
    }
}

/// A running throwaway cluster; dropping it stops the server and removes
/// the directory.
pub struct EphemeralCluster {
    dir: PathBuf,
    server: Option<tokio::process::Child>,
    /// The server's lifeline ([`Lifeline`]): stops it if refugio dies
    /// without its cleanup running (SIGKILL, the OOM killer).
    lifeline: Option<Lifeline>,
    /// What the server gets beyond the allow-list (a physical drill's
    /// store credentials for its `restore_command`).
    server_env: Vec<(String, std::ffi::OsString)>,
    pub version: PgVersion,
    pub bindir: PathBuf,
}

impl std::fmt::Debug for EphemeralCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EphemeralCluster")
            .field("dir", &self.dir)
            .finish()
    }
}

fn as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A command run as the cluster's server runs: its user, in its
/// directory, with a cleared environment whose `HOME` is the directory
/// (not refugio's: no `~/.pgpass`, no `~/.aws`), plus `extra`.
fn server_cmd(
    tool: &Path,
    dir: &Path,
    extra: &[(String, std::ffi::OsString)],
) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(tool);
    c.current_dir(dir).stdin(Stdio::null());
    refugio_dump::tools::clear_env(&mut c, Some(dir));
    c.envs(extra.iter().map(|(k, v)| (k, v)));
    if as_root() {
        c.uid(NOBODY).gid(NOBODY);
    }
    c
}

/// `chown -R` to the server's user (files unpacked by root).
fn chown_tree(path: &Path) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(NOBODY), Some(NOBODY))
        .map_err(|e| io_err("chown", path.display(), e))?;
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
        let entries = std::fs::read_dir(path).map_err(|e| io_err("reading", path.display(), e))?;
        for e in entries {
            let e = e.map_err(|e| io_err("reading", path.display(), e))?;
            chown_tree(&e.path())?;
        }
    }
    Ok(())
}

fn pid_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether `pid` is the postmaster of `data`: its executable is a
/// `postgres` binary and its command line names `data` (as `-D`, the way
/// drills start it) or its working directory is `data` (a postmaster
/// changes into its data directory). Else `Err` says what it is instead.
/// A PID read from a file in a world-writable temp dir proves nothing: it
/// may have been reused, or written by anyone.
fn own_postmaster(pid: i32, data: &Path) -> std::result::Result<(), String> {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let exe = std::fs::read_link(proc_dir.join("exe"))
        .map_err(|e| format!("its executable cannot be read ({e})"))?;
    let name = exe
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A binary replaced by a package upgrade reads `postgres (deleted)`.
    if name.trim_end_matches(" (deleted)") != "postgres" {
        return Err(format!("it runs {}, not postgres", exe.display()));
    }
    let data = std::fs::canonicalize(data).unwrap_or_else(|_| data.to_path_buf());
    let same = |p: &Path| std::fs::canonicalize(p).is_ok_and(|p| p == data);
    let cmdline = std::fs::read(proc_dir.join("cmdline")).unwrap_or_default();
    let names_data = cmdline
        .split(|b| *b == 0)
        .any(|arg| !arg.is_empty() && same(Path::new(&*String::from_utf8_lossy(arg))));
    let in_data = std::fs::read_link(proc_dir.join("cwd")).is_ok_and(|cwd| same(&cwd));
    if names_data || in_data {
        Ok(())
    } else {
        Err(format!(
            "it is a postgres server of another data directory ({})",
            String::from_utf8_lossy(&cmdline).replace('\0', " ").trim()
        ))
    }
}

/// Removes clusters of crashed drills: directories whose owner process is
/// gone. A server still running in one is stopped only when it is proven
/// to be that directory's ([`own_postmaster`]); any other process the PID
/// file names is left alone, and the log says so.
pub fn sweep(root: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(root) else {
        return removed;
    };
    for e in entries.flatten() {
        let path = e.path();
        if !e.file_name().to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        let owner = std::fs::read_to_string(path.join(OWNER_FILE))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        if owner.is_some_and(pid_alive) {
            continue;
        }
        let data = path.join("data");
        if let Some(pid) = std::fs::read_to_string(data.join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
            .filter(|pid| *pid > 0 && pid_alive(*pid))
        {
            match own_postmaster(pid, &data) {
                Ok(()) => {
                    // The dead drill's server: stop it.
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGQUIT,
                    );
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while pid_alive(pid) && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
                Err(why) => tracing::warn!(
                    dir = %path.display(),
                    pid,
                    reason = %why,
                    "drill-cluster-leftover-pid-not-ours: process left alone"
                ),
            }
        }
        if std::fs::remove_dir_all(&path).is_ok() {
            removed.push(path);
        }
    }
    removed
}

impl EphemeralCluster {
    /// Starts a cluster whose major version is the closest >= `server`
    /// (from `bindir`, else the usual search).
    pub async fn start(server: PgVersion, bindir: Option<&Path>) -> Result<EphemeralCluster> {
        let what = format!("an ephemeral drill cluster for a PostgreSQL {server} backup");
        let initdb: Tool = tools::find_for(ToolKind::Initdb, server, &what, bindir).await?;
        let mut cluster = Self::prepare(initdb.version, initdb.bindir(), Vec::new())?;
        let data = cluster.data_dir();
        let out = server_cmd(&initdb.path, &cluster.dir, &[])
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .output()
            .await
            .map_err(|e| io_err("running", initdb.path.display(), e))?;
        if !out.status.success() {
            return Err(Error::EphemeralInitdb {
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        cluster.spawn(&[])?;
        let spec = cluster.spec("postgres")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match spec.connect().await {
                Ok(c) => {
                    drop(c);
                    break;
                }
                Err(e) if Instant::now() > deadline => {
                    return Err(Error::EphemeralStart {
                        reason: refugio_print::chain(&e),
                        log: cluster.log_tail(40),
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        Ok(cluster)
    }

    /// A cluster directory for a physical base backup of a PostgreSQL
    /// `server` cluster: binaries of exactly its major version (from
    /// `bindir`, else the usual search), an empty `data_dir()` to unpack
    /// into, no server yet ([`Self::start_recovery`] starts it).
    /// `server_env`: what its `restore_command` needs beyond the
    /// allow-list (the store's credentials), all the server gets of
    /// refugio's environment.
    pub async fn for_base_backup(
        server: PgVersion,
        bindir: Option<&Path>,
        server_env: Vec<(String, std::ffi::OsString)>,
    ) -> Result<EphemeralCluster> {
        let what = format!("a drill of a PostgreSQL {server} base backup (the same major version)");
        let initdb: Tool = tools::find_for(ToolKind::Initdb, server, &what, bindir).await?;
        if initdb.version.major != server.major {
            return Err(Error::EphemeralVersion {
                server: server.to_string(),
                major: server.major,
                found: initdb.version.to_string(),
                bindir: initdb.bindir().display().to_string(),
            });
        }
        Self::prepare(initdb.version, initdb.bindir(), server_env)
    }

    /// A fresh directory (owner file; owned by the server's user).
    fn prepare(
        version: PgVersion,
        bindir: &Path,
        server_env: Vec<(String, std::ffi::OsString)>,
    ) -> Result<EphemeralCluster> {
        let root = std::env::temp_dir();
        for old in sweep(&root) {
            tracing::warn!(dir = %old.display(), "drill-cluster-leftover-removed");
        }
        // 0700 (its owner is the server's user): the directory holds the
        // server's socket and log, for nobody else to reach.
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(&root)
            .map_err(|e| io_err("creating a directory in", root.display(), e))?
            .keep();
        let cluster = EphemeralCluster {
            dir: dir.clone(),
            server: None,
            lifeline: None,
            server_env,
            version,
            bindir: bindir.to_path_buf(),
        };
        std::fs::write(dir.join(OWNER_FILE), std::process::id().to_string())
            .map_err(|e| io_err("writing", dir.join(OWNER_FILE).display(), e))?;
        if as_root() {
            std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY))
                .map_err(|e| io_err("chown", dir.display(), e))?;
        }
        Ok(cluster)
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The last `lines` lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The server's exit status, once it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.server
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Starts the server on a data directory unpacked from a base backup
    /// (recovery set up in it): owned by the server's user, its own
    /// `pg_hba.conf` (trust over the socket only), never archiving (a
    /// drill's new timeline must not reach the job's archive) and none of
    /// the source's commands run at the end of recovery or on restart
    /// points (`recovery_end_command`, `archive_cleanup_command`: they
    /// act on production's archive).
    pub fn start_recovery(&mut self) -> Result<()> {
        let data = self.data_dir();
        let hba = self.dir.join("drill_hba.conf");
        std::fs::write(&hba, "local all all trust\n")
            .map_err(|e| io_err("writing", hba.display(), e))?;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io_err("chmod", data.display(), e))?;
        if as_root() {
            chown_tree(&data)?;
            let _ = std::os::unix::fs::chown(&hba, Some(NOBODY), Some(NOBODY));
        }
        self.spawn(&[
            format!("hba_file={}", hba.display()),
            format!("ident_file={}", hba.display()),
            "archive_mode=off".into(),
            "archive_command=".into(),
            "archive_cleanup_command=".into(),
            "recovery_end_command=".into(),
            "hot_standby=on".into(),
        ])
    }

    /// Starts `postgres` on the data directory, on a socket in the
    /// cluster's directory only, with `settings` (`name=value`) added.
    fn spawn(&mut self, settings: &[String]) -> Result<()> {
        let postgres = self.bindir.join("postgres");
        let log_path = self.dir.join("server.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| io_err("creating", log_path.display(), e))?;
        if as_root() {
            let _ = std::os::unix::fs::chown(&log_path, Some(NOBODY), Some(NOBODY));
        }
        let mut cmd = server_cmd(&postgres, &self.dir, &self.server_env);
        cmd.arg("-D")
            .arg(self.data_dir())
            .args(["-c", "listen_addresses=", "-c", &format!("port={PORT}")])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", self.dir.display()))
            .args([
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "synchronous_commit=off",
                // Messages in English, each line with its SQLSTATE: a
                // restore tool's failure is judged by it.
                "-c",
                "lc_messages=C",
            ])
            .arg("-c")
            .arg(format!(
                "log_line_prefix={}",
                refugio_dump::OWN_SERVER_LOG_PREFIX
            ));
        for s in settings {
            cmd.arg("-c").arg(s);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| io_err("starting", postgres.display(), e))?;
        self.lifeline = child.id().and_then(|pid| Lifeline::watch(pid as i32));
        self.server = Some(child);
        Ok(())
    }

    /// Runs `command` with `sh -c` as the server runs its
    /// `restore_command`: its user and environment, in the cluster's
    /// directory; killed after `limit`.
    pub async fn run_as_server(
        &self,
        command: &str,
        limit: Duration,
    ) -> Result<std::process::Output> {
        let run = server_cmd(Path::new("/bin/sh"), &self.dir, &self.server_env)
            .arg("-c")
            .arg(command)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(limit, run).await {
            Ok(out) => out.map_err(|e| io_err("running /bin/sh -c", command, e)),
            Err(_) => Err(Error::EphemeralTimeout {
                command: command.to_string(),
                seconds: limit.as_secs(),
            }),
        }
    }

    /// A path in the cluster's directory (writable by the server's user).
    pub fn scratch_path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The server's user when refugio runs as root (uid 65534), else None.
    pub fn server_uid() -> Option<u32> {
        as_root().then_some(NOBODY)
    }

    /// Connection to a database of this cluster as its initdb superuser.
    pub fn spec(&self, db: &str) -> Result<SourceSpec> {
        self.spec_with("postgres", db, true)
    }

    /// Connection to a database of this cluster as `user`.
    pub fn spec_as(&self, user: &str, db: &str) -> Result<SourceSpec> {
        self.spec_with(user, db, false)
    }

    /// Connection as `user`, a superuser of the cluster (sessions then ask
    /// for `lc_messages = C`).
    pub fn spec_as_superuser(&self, user: &str, db: &str) -> Result<SourceSpec> {
        self.spec_with(user, db, true)
    }

    fn spec_with(&self, user: &str, db: &str, superuser: bool) -> Result<SourceSpec> {
        let host: String =
            url::form_urlencoded::byte_serialize(self.dir.to_string_lossy().as_bytes()).collect();
        // form encoding writes a space as `+`, which a URL's user and
        // path do not decode.
        let enc = |s: &str| {
            url::form_urlencoded::byte_serialize(s.as_bytes())
                .collect::<String>()
                .replace('+', "%20")
        };
        let (user, db) = (enc(user), enc(db));
        Ok(SourceSpec::new(
            &format!("postgres://{user}@localhost:{PORT}/{db}?host={host}"),
            None,
            None,
        )?
        .run_by_refugio(refugio_dump::OwnServer {
            dir: self.dir.clone(),
            log: self.dir.join("server.log"),
            superuser,
        }))
    }

    /// Stops the server (fast shutdown) and removes the directory.
    pub async fn stop(mut self) {
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        self.lifeline.take();
        if let Some(mut child) = self.server.take() {
            if let Some(pid) = child.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGINT,
                );
            }
            if tokio::time::timeout(Duration::from_secs(30), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for EphemeralCluster {
    fn drop(&mut self) {
        self.lifeline.take();
        if let Some(child) = self.server.as_mut() {
            if let Some(pid) = child.id() {
                // Immediate shutdown; the directory goes right after.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGQUIT,
                );
                let deadline = Instant::now() + Duration::from_secs(10);
                while pid_alive(pid as i32) && Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A drill server's lifeline: a small `sh` whose standard input is a pipe
/// only refugio holds (Rust opens pipes close-on-exec, so no other child
/// inherits it). While refugio lives, the shell waits on `read`; when
/// refugio dies without its cleanup running (SIGKILL, the OOM killer), the
/// kernel closes the pipe, `read` returns, and the shell sends the server
/// SIGQUIT (immediate shutdown): a drill's throwaway server never outlives
/// refugio by more than a moment. The directory stays for the next drill's
/// sweep. It is armed right after the server is spawned: a refugio killed
/// within that instant leaves the server to the next drill's sweep, as
/// before. On a normal stop refugio kills the shell first (dropping the
/// lifeline), so it never signals a server that is already gone.
struct Lifeline(std::process::Child);

impl Lifeline {
    /// None (logged) when the shell cannot start: the drill goes on, as
    /// before there was a lifeline.
    fn watch(pid: i32) -> Option<Lifeline> {
        let mut cmd = std::process::Command::new("/bin/sh");
        refugio_dump::tools::clear_env_std(&mut cmd, None);
        cmd.arg("-c")
            .arg("read -r _; kill -QUIT \"$0\" 2>/dev/null")
            .arg(pid.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        match cmd.spawn() {
            Ok(child) => Some(Lifeline(child)),
            Err(e) => {
                tracing::warn!(error = %e, "drill-lifeline-not-started: the drill's server is stopped by refugio's cleanup only");
                None
            }
        }
    }
}

impl Drop for Lifeline {
    fn drop(&mut self) {
        // Killed before its pipe closes: it never reaches its `kill`.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
