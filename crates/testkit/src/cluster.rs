//! Throwaway PostgreSQL clusters: `initdb` into a fresh directory under
//! `/tmp`, a server listening only on a unix socket in that directory, and
//! helpers to talk to it with the cluster's own client tools or with sqlx.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::Signal;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::io::AsyncWriteExt;

use crate::sweep::{signal, DIR_PREFIX, OWNER_FILE, TMP_ROOT};
use crate::tls::ServerTls;

/// Password-protected role present in every cluster: authenticated with
/// scram-sha-256 over the socket (every other role is trusted), member of
/// `pg_read_all_data` (so it can dump every database) and with CREATEDB.
pub const PASSWORD_USER: &str = "refugio_pw";
/// The password of [`PASSWORD_USER`].
pub const PASSWORD_USER_PASSWORD: &str = "s3cret-Pa55word!";

/// The server's port. Only the socket file name depends on it
/// (`.s.PGSQL.5432`), and every cluster has its own socket directory, so all
/// clusters can share it. Set explicitly so `PGPORT` in the environment of the
/// tests changes neither the server nor the URLs.
const PORT: u16 = 5432;
/// `nobody`/`nogroup`: PostgreSQL refuses to run as root.
const UNPRIVILEGED_ID: u32 = 65534;
const SERVER_LOG: &str = "server.log";
const START_TIMEOUT: Duration = Duration::from_secs(90);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
const DROP_TIMEOUT: Duration = Duration::from_secs(15);
/// Libpq settings in the test's environment that would otherwise change which
/// server, user or password the client tools use.
const CLIENT_ENV_REMOVE: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGDATABASE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGSSLMODE",
    "PGREQUIRESSL",
    "PGCONNECT_TIMEOUT",
    "PGTARGETSESSIONATTRS",
];

/// Where the binaries of PostgreSQL `major` are.
///
/// `$REFUGIO_PG{major}_BINDIR` when set; otherwise `/usr/lib/postgresql/15/bin`
/// for 15 (Debian's package) and `/opt/refugio-test/pg/{major}/bin` for any
/// other major (what `scripts/install-test-deps` installs). Fails, saying how
/// to install it, when that directory has no `postgres` binary.
pub fn pg_bindir(major: u32) -> Result<PathBuf> {
    let var = format!("REFUGIO_PG{major}_BINDIR");
    let dir = match std::env::var_os(&var) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ if major == 15 => PathBuf::from("/usr/lib/postgresql/15/bin"),
        _ => PathBuf::from(format!("/opt/refugio-test/pg/{major}/bin")),
    };
    if !dir.join("postgres").is_file() {
        bail!(
            "PostgreSQL {major} is not installed: {} has no `postgres` binary; \
             run `scripts/install-test-deps` (or `scripts/test`, which runs it), \
             or point {var} at another bin directory",
            dir.display()
        );
    }
    Ok(dir)
}

/// A PostgreSQL server of its own for one test.
///
/// Superuser `postgres` with trust authentication over a unix socket in
/// [`Cluster::socket_dir`] (no TCP), plus [`PASSWORD_USER`]. `wal_level =
/// replica` and `max_wal_senders = 5`, so a standby can be built from it.
/// Dropping it stops the server and removes its directory. With
/// [`Cluster::start_tls`] it also listens on 127.0.0.1 with TLS.
pub struct Cluster {
    major: u32,
    bindir: PathBuf,
    dir: PathBuf,
    data: PathBuf,
    /// [`PORT`], or with TLS a free TCP port of its own.
    port: u16,
    /// The server's TLS files, copied into `dir/tls`; `None`: no TCP.
    tls: Option<ServerTls>,
    /// The postmaster, started by us; `None` once stopped.
    server: Option<Child>,
    /// Whether `dir` is already gone (after [`Cluster::stop`]).
    removed: bool,
    /// More `-c name=value` settings of the server ([`Cluster::start_with_settings`]).
    settings: Vec<String>,
    /// More environment of the server (its archive/restore commands see it).
    server_env: Vec<(String, String)>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("major", &self.major)
            .field("dir", &self.dir)
            .field("pid", &self.server_pid())
            .finish()
    }
}

impl Cluster {
    /// Creates and starts a cluster of PostgreSQL `major` and waits until it
    /// accepts connections.
    pub async fn start(major: u32) -> Result<Cluster> {
        Cluster::start_with(major, None).await
    }

    /// Like [`Cluster::start`], with more server settings (`name=value`,
    /// given to the postmaster as `-c`; kept on restarts) and environment
    /// (what an `archive_command` sees), e.g. `archive_mode=on`.
    pub async fn start_with_settings(
        major: u32,
        settings: &[String],
        env: &[(String, String)],
    ) -> Result<Cluster> {
        let bindir = pg_bindir(major)?;
        crate::sweep::sweep_stale_clusters();
        let mut cluster = Cluster::empty(major, bindir)?;
        cluster.settings = settings.to_vec();
        cluster.server_env = env.to_vec();
        cluster.initdb().await?;
        cluster.spawn_server()?;
        cluster.wait_ready().await?;
        Ok(cluster)
    }

    /// A cluster directory with no data directory and no server yet: a
    /// restore writes [`Cluster::data_dir`], then [`Cluster::start_existing`]
    /// starts the server on it.
    pub fn unstarted(major: u32) -> Result<Cluster> {
        let bindir = pg_bindir(major)?;
        crate::sweep::sweep_stale_clusters();
        Cluster::empty(major, bindir)
    }

    /// Starts the server on the data directory something else wrote
    /// (owned by the server's user first, when we are root), with these
    /// settings and environment, and waits until it accepts connections
    /// (a recovering server accepts them once consistent).
    pub async fn start_existing(
        &mut self,
        settings: &[String],
        env: &[(String, String)],
    ) -> Result<()> {
        if running_as_root() {
            let status = std::process::Command::new("chown")
                .args(["-R", "65534:65534"])
                .arg(&self.data)
                .status()
                .context("running chown")?;
            if !status.success() {
                bail!("chown -R {} failed: {status}", self.data.display());
            }
        }
        self.settings = settings.to_vec();
        self.server_env = env.to_vec();
        self.spawn_server()?;
        self.wait_ready().await
    }

    /// Like [`Cluster::start`], and also listening on 127.0.0.1
    /// ([`Cluster::tcp_url`]) with `ssl = on` and the given certificates;
    /// TCP connections must use TLS (`hostssl` only).
    pub async fn start_tls(major: u32, tls: &ServerTls) -> Result<Cluster> {
        Cluster::start_with(major, Some(tls)).await
    }

    async fn start_with(major: u32, tls: Option<&ServerTls>) -> Result<Cluster> {
        let bindir = pg_bindir(major)?;
        crate::sweep::sweep_stale_clusters();

        let mut cluster = Cluster::empty(major, bindir)?;

        cluster.initdb().await?;
        let mut tcp = String::new();
        if let Some(tls) = tls {
            let owner = running_as_root().then_some(UNPRIVILEGED_ID);
            let installed = crate::tls::install(tls, &cluster.dir.join("tls"), owner)?;
            tcp = installed.hba_line();
            cluster.tls = Some(installed);
            cluster.port = crate::s3::dead_port();
        }
        // Overwrite rather than replace: the file keeps the owner (the server's
        // user) and mode that initdb gave it.
        fs::write(
            cluster.data.join("pg_hba.conf"),
            format!(
                "# written by refugio-testkit\n\
                 local all {PASSWORD_USER} scram-sha-256\n\
                 local all all trust\n\
                 local replication all trust\n{tcp}"
            ),
        )
        .context("writing pg_hba.conf")?;
        cluster.spawn_server()?;
        cluster.wait_ready().await?;
        cluster
            .psql(
                "postgres",
                &format!(
                    "CREATE ROLE {PASSWORD_USER} LOGIN CREATEDB PASSWORD '{PASSWORD_USER_PASSWORD}';\n\
                     GRANT pg_read_all_data TO {PASSWORD_USER};\n"
                ),
            )
            .await
            .context("creating the password-protected role")?;
        Ok(cluster)
    }

    /// A fresh cluster directory (owned by the server's user), no server yet.
    /// From here on, Drop removes the directory whatever fails.
    pub(crate) fn empty(major: u32, bindir: PathBuf) -> Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir_in(TMP_ROOT)
            .context("creating the cluster directory under /tmp")?
            .keep();
        let cluster = Cluster {
            major,
            data: dir.join("data"),
            dir,
            bindir,
            port: PORT,
            tls: None,
            server: None,
            removed: false,
            settings: Vec::new(),
            server_env: Vec::new(),
        };
        fs::write(cluster.dir.join(OWNER_FILE), crate::sweep::owner_record())
            .context("writing the cluster's owner file")?;
        if running_as_root() {
            std::os::unix::fs::chown(&cluster.dir, Some(UNPRIVILEGED_ID), Some(UNPRIVILEGED_ID))
                .with_context(|| format!("chown {} to 65534", cluster.dir.display()))?;
        }
        Ok(cluster)
    }

    /// The PostgreSQL major version of the server and its client tools.
    pub fn major(&self) -> u32 {
        self.major
    }

    /// The directory holding this cluster's binaries (and client tools).
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// The directory of the server's unix socket (`.s.PGSQL.5432`); the data
    /// directory (`data/`) and the server log (`server.log`) are in it too.
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// The server's data directory (owned by uid 65534 when tests run as root).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The port in the socket's name (`.s.PGSQL.<port>`), and with TLS
    /// the TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// With TLS ([`Cluster::start_tls`]): the URL of `db` as `user` over
    /// TCP, `postgres://user@127.0.0.1:PORT/db`, without any TLS parameter.
    pub fn tcp_url(&self, user: &str, db: &str) -> String {
        format!(
            "postgres://{}@127.0.0.1:{}/{}",
            percent_encode(user, false),
            self.port,
            percent_encode(db, false)
        )
    }

    /// The postmaster's process id, while it runs.
    pub fn server_pid(&self) -> Option<u32> {
        self.server.as_ref().map(Child::id)
    }

    /// The last `lines` lines of the server log.
    pub fn server_log_tail(&self, lines: usize) -> String {
        log_tail(&self.dir.join(SERVER_LOG), lines)
    }

    /// URL for the superuser `postgres` (trusted, no password) to `db`, e.g.
    /// `postgres://postgres@localhost:5432/app?host=/tmp/refugio-pg-Ab12Cd`.
    ///
    /// Accepted by libpq (`psql "$URL"`, `pg_dump --dbname "$URL"`) and by
    /// sqlx's `PgConnectOptions::from_str`: both take the socket directory
    /// from the `host` query parameter, which overrides the `localhost` in the
    /// authority. The explicit port keeps `PGPORT` from changing the socket name.
    pub fn url(&self, db: &str) -> String {
        self.url_as("postgres", None, db)
    }

    /// Like [`Cluster::url`] for another user, with `password` in the URL when
    /// given. User, password and database name are percent-encoded.
    pub fn url_as(&self, user: &str, password: Option<&str>, db: &str) -> String {
        let mut userinfo = percent_encode(user, false);
        if let Some(password) = password {
            userinfo.push(':');
            userinfo.push_str(&percent_encode(password, false));
        }
        format!(
            "postgres://{userinfo}@localhost:{}/{}?host={}",
            self.port,
            percent_encode(db, false),
            percent_encode(&self.dir.to_string_lossy(), true)
        )
    }

    /// `CREATE DATABASE name` (the name is quoted as an identifier).
    pub async fn create_database(&self, name: &str) -> Result<()> {
        self.psql(
            "postgres",
            &format!("CREATE DATABASE {}", quote_ident(name)),
        )
        .await
        .with_context(|| format!("creating database {name:?}"))?;
        Ok(())
    }

    /// Runs `sql` (any number of statements, read from stdin) in `db` as
    /// `postgres` with this cluster's psql (`-X -q -v ON_ERROR_STOP=1 -At`)
    /// and returns what the queries printed: unaligned, tuples only, no
    /// command tags, with one trailing newline removed (`"1"` for `SELECT 1`).
    /// Fails at the first failing statement, with psql's stderr in the error.
    pub async fn psql(&self, db: &str, sql: &str) -> Result<String> {
        let mut child = self
            .client("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-f", "-", "-d"])
            .arg(self.url(db))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", self.bindir.join("psql").display()))?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| anyhow!("psql's stdin is not piped"))?;
        let sql_bytes = sql.as_bytes().to_vec();
        // Feed stdin while collecting the output: a large script with a large
        // result would otherwise block on a full pipe.
        let feed = async move {
            let result = stdin.write_all(&sql_bytes).await;
            drop(stdin);
            result
        };
        let (fed, output) = tokio::join!(feed, child.wait_with_output());
        let output = output.context("waiting for psql")?;
        if !output.status.success() {
            bail!(
                "psql on database {db:?} failed ({}): {}\nSQL: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim_end(),
                abbreviate(sql, 300)
            );
        }
        fed.context("writing SQL to psql")?;
        let mut stdout = String::from_utf8(output.stdout).context("psql printed non-UTF-8")?;
        if stdout.ends_with('\n') {
            stdout.pop();
        }
        Ok(stdout)
    }

    /// A sqlx pool (at most 2 connections) to `db` as `postgres`, built from
    /// [`Cluster::url`].
    pub async fn pool(&self, db: &str) -> Result<sqlx::PgPool> {
        let options = PgConnectOptions::from_str(&self.url(db))
            .with_context(|| format!("parsing {}", self.url(db)))?;
        PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(options)
            .await
            .with_context(|| format!("connecting to {}", self.url(db)))
    }

    /// `pg_dump --schema-only` of `db` with this cluster's pg_dump, without the
    /// `\restrict KEY` / `\unrestrict KEY` lines (a random key per run since
    /// 15.14/16.10/17.6), so dumps of identical schemas compare equal.
    pub async fn schema_dump(&self, db: &str) -> Result<String> {
        let output = self
            .client("pg_dump")
            .args(["--schema-only", "--no-password", "--dbname"])
            .arg(self.url(db))
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("running {}", self.bindir.join("pg_dump").display()))?;
        if !output.status.success() {
            bail!(
                "pg_dump --schema-only of {db:?} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim_end()
            );
        }
        let dump = String::from_utf8(output.stdout).context("pg_dump printed non-UTF-8")?;
        Ok(strip_restrict_lines(&dump))
    }

    /// Stops the server now (fast shutdown: what `pg_ctl stop -m fast` sends)
    /// and removes the cluster's directory.
    pub async fn stop(mut self) -> Result<()> {
        self.shut_down_fast().await?;
        self.removed = true;
        fs::remove_dir_all(&self.dir).with_context(|| format!("removing {}", self.dir.display()))
    }

    /// Restarts the server as `pg_ctl restart -m fast` does: every session
    /// is terminated (its client sees the connection closed), the server
    /// shuts down, and a new one on the same data directory and socket
    /// accepts connections again when this returns. The log is appended to.
    pub async fn restart(&mut self) -> Result<()> {
        self.shut_down_fast().await?;
        self.spawn_server()?;
        self.wait_ready().await
    }

    /// Fast shutdown (SIGINT), waited for; nothing when not running.
    async fn shut_down_fast(&mut self) -> Result<()> {
        let Some(mut server) = self.server.take() else {
            return Ok(());
        };
        let pid = server.id();
        signal(pid, Signal::SIGINT);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = server.try_wait().context("waiting for the server")? {
                if !status.success() {
                    bail!(
                        "the server exited with {status} on fast shutdown; log:\n{}",
                        self.server_log_tail(20)
                    );
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let tail = self.server_log_tail(20);
                // Put it back so Drop shuts it down the hard way.
                self.server = Some(server);
                bail!("the server (pid {pid}) did not stop within {STOP_TIMEOUT:?}; log:\n{tail}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn initdb(&self) -> Result<()> {
        let mut last_error = String::new();
        // C.UTF-8 is the wanted locale; `--no-locale` (C, still UTF8) is the
        // fallback for a build or machine without it.
        for locale in ["--locale=C.UTF-8", "--no-locale"] {
            let output = self
                .server_command("initdb")
                .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
                .arg(locale)
                .arg("-D")
                .arg(&self.data)
                .stdin(Stdio::null())
                .output()
                .await
                .with_context(|| format!("running {}", self.bindir.join("initdb").display()))?;
            if output.status.success() {
                return Ok(());
            }
            last_error = format!(
                "initdb {locale} failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            // initdb removes what it created on failure, but be sure.
            let _ = fs::remove_dir_all(&self.data);
        }
        Err(anyhow!(last_error))
    }

    pub(crate) fn spawn_server(&mut self) -> Result<()> {
        let log_path = self.dir.join(SERVER_LOG);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let log_err = log.try_clone().context("duplicating the log file handle")?;
        let mut command = std::process::Command::new(self.bindir.join("postgres"));
        command
            .arg("-D")
            .arg(&self.data)
            .args(["-c", &format!("port={}", self.port)])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", self.dir.display()))
            .args(["-c", "fsync=off"])
            .args(["-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off"])
            .args(["-c", "wal_level=replica"])
            .args(["-c", "max_wal_senders=5"])
            .args(crate::tls::server_settings(self.tls.as_ref()))
            .args(
                self.settings
                    .iter()
                    .flat_map(|s| ["-c".to_string(), s.clone()]),
            )
            .envs(
                self.server_env
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        if running_as_root() {
            std::os::unix::process::CommandExt::uid(&mut command, UNPRIVILEGED_ID);
            std::os::unix::process::CommandExt::gid(&mut command, UNPRIVILEGED_ID);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", self.bindir.join("postgres").display()))?;
        self.server = Some(child);
        Ok(())
    }

    pub(crate) async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(server) = self.server.as_mut() {
                if let Some(status) = server.try_wait().context("checking the server")? {
                    self.server = None;
                    bail!(
                        "PostgreSQL {} exited during start-up ({status}); log:\n{}",
                        self.major,
                        self.server_log_tail(30)
                    );
                }
            }
            let ready = self
                .client("pg_isready")
                .arg("-q")
                .arg("-h")
                .arg(&self.dir)
                .args([
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                ])
                .args(["-t", "2"])
                .stdin(Stdio::null())
                .status()
                .await
                .context("running pg_isready")?;
            if ready.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "PostgreSQL {} did not accept connections within {START_TIMEOUT:?} \
                     (socket dir {}); log:\n{}",
                    self.major,
                    self.dir.display(),
                    self.server_log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A client tool of this cluster, run as the current user with a clean
    /// libpq environment, killed if the test drops its future.
    fn client(&self, tool: &str) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(self.bindir.join(tool));
        for var in CLIENT_ENV_REMOVE {
            command.env_remove(var);
        }
        command.kill_on_drop(true);
        command
    }

    /// A server-side tool, run as uid/gid 65534 when we are root.
    pub(crate) fn server_command(&self, tool: &str) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(self.bindir.join(tool));
        // The server's user must be able to read its working directory.
        command.current_dir(&self.dir).kill_on_drop(true);
        if running_as_root() {
            command.uid(UNPRIVILEGED_ID).gid(UNPRIVILEGED_ID);
        }
        command
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            // Immediate shutdown: nothing to keep, and Drop must not wait long.
            shut_down_child(&mut server, Signal::SIGQUIT, DROP_TIMEOUT);
        }
        if !self.removed {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Sends `first`, waits up to `timeout` for the child to exit, then SIGKILLs
/// and reaps it.
fn shut_down_child(child: &mut Child, first: Signal, timeout: Duration) -> Option<ExitStatus> {
    signal(child.id(), first);
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    child.wait().ok()
}

fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn log_tail(path: &Path, lines: usize) -> String {
    match fs::read_to_string(path) {
        Ok(log) => {
            let all: Vec<&str> = log.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(err) => format!("(cannot read {}: {err})", path.display()),
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters (and `/`
/// when `keep_slash`). Both libpq and sqlx decode `%XX`; sqlx's query parser
/// would also turn `+` into a space where libpq keeps it, so `+` is encoded.
fn percent_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `name` as an SQL identifier in double quotes.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn strip_restrict_lines(dump: &str) -> String {
    dump.lines()
        .filter(|line| !(line.starts_with("\\restrict ") || line.starts_with("\\unrestrict ")))
        .map(|line| format!("{line}\n"))
        .collect()
}

fn abbreviate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_keeps_unreserved_only() {
        assert_eq!(
            percent_encode("s3cret-Pa55word!", false),
            "s3cret-Pa55word%21"
        );
        assert_eq!(percent_encode("a b+c/é", false), "a%20b%2Bc%2F%C3%A9");
        assert_eq!(
            percent_encode("/tmp/refugio-pg-x", true),
            "/tmp/refugio-pg-x"
        );
    }

    #[test]
    fn restrict_lines_are_removed() {
        let dump = "--\n\\restrict AbC123\nCREATE TABLE t ();\n\\unrestrict AbC123\n";
        assert_eq!(strip_restrict_lines(dump), "--\nCREATE TABLE t ();\n");
    }

    #[test]
    fn quote_ident_doubles_quotes() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
