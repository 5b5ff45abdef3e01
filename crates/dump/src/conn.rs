//! The source (or target) database: its URL, where the password comes from,
//! its TLS settings, and how they are handed to sqlx and to libpq tools
//! (the password without ever appearing on a command line or in a message).
//!
//! A password may be written in the URL's userinfo (`postgres://u:pw@h/db`)
//! or as the `password` query parameter (`?password=pw`); both are taken out
//! of the URL that is kept, shown and passed to tools, and travel on only as
//! `PGPASSWORD` in a tool's environment. `sslpassword` (the passphrase of an
//! encrypted client key) is refused: libpq has no environment variable for
//! it, so a tool could only get it on its command line, and sqlx cannot use
//! an encrypted key at all.
//!
//! A password belongs to one server. `PGPASSWORD` in refugio's environment
//! is the *source's* ([`crate::adopt_env_password`] takes it out of the process
//! environment at start-up, before sqlx or any child could read it, and
//! [`SourceSpec::source`] gives it to the source alone); a scratch server
//! or a restore target ([`SourceSpec::new`]) uses its own credentials: its
//! URL, its password file, or libpq's password file (`~/.pgpass`,
//! `PGPASSFILE`), whose entries name the server they are for.

//!
//! **TLS** to PostgreSQL: libpq's `sslmode`, `sslrootcert`, `sslcert` and
//! `sslkey`, written in the URL's query or given as job fields.
//!
//! Fields are merged into the URL ([`TlsSettings::merge_into`]), and the URL
//! is what both sides read: sqlx parses it for refugio's own connections,
//! and libpq tools (`pg_dump`, `pg_dumpall`, `pg_restore`, `psql`) get it as
//! `--dbname`. So the two can never disagree. A field and a URL parameter
//! that say different things are refused: neither silently wins.
//!
//! One difference remains between the two clients: sqlx (rustls) trusts the
//! public web roots *and* `sslrootcert`, libpq only `sslrootcert` (default
//! `~/.postgresql/root.crt`, which sqlx does not read). With `verify-ca` or
//! `verify-full`, name `sslrootcert` explicitly.
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use url::Url;

use crate::env_password::{env_password, PGPASSWORD};
use crate::error::{Error, Result};

/// Query parameters whose value is a secret, compared after
/// percent-decoding and ignoring ASCII case: libpq's `password`, and
/// `sslpassword`. (Any `…password` key is redacted in messages.)
use refugio_print::redact::PASSWORD_PARAM;
const SSL_PASSWORD_PARAM: &str = "sslpassword";

/// What is shown instead of a secret.
use refugio_print::redact::{redact_url, REDACTED};

/// A PostgreSQL connection as configured: URL (libpq URI syntax, unix
/// sockets as `?host=/dir`), an optional database that overrides the URL's,
/// and an optional password file.
#[derive(Clone)]
pub struct SourceSpec {
    /// The URL without any password (userinfo or query parameter).
    url: Url,
    password: Option<String>,
    /// Set when refugio runs this server itself (an ephemeral drill cluster).
    own: Option<OwnServer>,
}

/// A server refugio runs itself: an ephemeral drill cluster, superuser
/// `postgres` with trust over a socket in `dir`, its log in `log`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnServer {
    /// The cluster's directory: the `HOME` of the tools that connect to it.
    pub dir: PathBuf,
    /// The server's log, written with [`OWN_SERVER_LOG_PREFIX`]: where a
    /// restore tool's failure is read by SQLSTATE (pg_restore does not
    /// print it).
    pub log: PathBuf,
    /// The role is a superuser of it, so sessions and tools may ask for
    /// `lc_messages = C` (superuser-only before PostgreSQL 15).
    pub superuser: bool,
}

/// `log_line_prefix` of a server refugio runs: every line of a session
/// carries its SQLSTATE (`%e`) and application name (`%a`).
pub const OWN_SERVER_LOG_PREFIX: &str = "%m [%p] %qsqlstate=%e app=%a: ";

impl std::fmt::Debug for SourceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceSpec")
            .field("url", &self.redacted())
            .field("password", &self.password.as_ref().map(|_| REDACTED))
            .finish()
    }
}

impl SourceSpec {
    /// The job's source: like [`SourceSpec::new`], and without a password
    /// of its own (file, URL) the `PGPASSWORD` refugio started with (see
    /// [`crate::adopt_env_password`]).
    pub fn source(url: &str, database: Option<&str>, password_file: Option<&Path>) -> Result<Self> {
        let mut spec = SourceSpec::new(url, database, password_file)?;
        if spec.password.is_none() {
            spec.password = env_password();
        }
        Ok(spec)
    }

    /// Parses `url`; `database` replaces the URL's database; `password_file`
    /// is read (first line, trailing newline removed) and wins over a
    /// password in the URL; of those, the `password` query parameter wins
    /// over the userinfo's, as in libpq. Without any, libpq's password file
    /// applies (`~/.pgpass`/`PGPASSFILE`), for sqlx and tools alike; not
    /// `PGPASSWORD`, which is the source's ([`SourceSpec::source`]). A
    /// password file that group or others may access is used, and logged
    /// as a warning (like ssh's private keys).
    pub fn new(url: &str, database: Option<&str>, password_file: Option<&Path>) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidUrl {
            url: redact_url(url),
            reason,
        };
        let mut parsed = Url::parse(url).map_err(|e| {
            invalid(if !url.contains("://") && url.contains('=') {
                "key=value connection strings are not supported; write it as a URL, \
                 postgres://user@host:port/database?param=value"
                    .to_string()
            } else {
                e.to_string()
            })
        })?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(invalid(format!(
                "scheme must be postgres:// or postgresql://, not {}://",
                parsed.scheme()
            )));
        }
        let userinfo_password = parsed
            .password()
            .map(percent_encoding_decode)
            .transpose()
            .map_err(invalid)?;
        let _ = parsed.set_password(None);
        let query_password = take_query_password(&mut parsed).map_err(invalid)?;
        let mut password = query_password.or(userinfo_password);
        if let Some(db) = database {
            parsed.set_path(&format!("/{}", encode_path_segment(db)));
        }
        if let Some(path) = password_file {
            password = Some(read_password_file(path)?);
        }
        let spec = SourceSpec {
            url: parsed,
            password,
            own: None,
        };
        spec.validate()?;
        Ok(spec)
    }

    /// The same connection with TLS settings given beside the URL (a job's
    /// `sslmode`, `sslrootcert`, `sslcert`, `sslkey`), merged into the URL
    /// so that sqlx and the libpq tools both get them (see the module doc).
    /// A setting the URL already has with another value is refused.
    pub fn with_tls(mut self, tls: &TlsSettings) -> Result<Self> {
        tls.merge_into(&mut self.url)
            .map_err(|c| Error::TlsConflict {
                url: self.redacted(),
                param: c.param,
                in_url: c.in_url,
                in_field: c.in_field,
            })?;
        self.validate()?;
        Ok(self)
    }

    /// Rejects what sqlx cannot parse, and a client certificate without its
    /// key, now, with the redacted URL.
    fn validate(&self) -> Result<()> {
        check_pairing(&self.url).map_err(|reason| Error::InvalidUrl {
            url: self.redacted(),
            reason,
        })?;
        self.connect_options().map(drop)
    }

    /// The same connection, to a server refugio runs itself (see
    /// [`OwnServer`]): its tools get none of libpq's variables from
    /// refugio's environment, and, as its superuser, every session asks
    /// for messages in the C locale.
    pub fn run_by_refugio(mut self, own: OwnServer) -> Self {
        self.own = Some(own);
        self
    }

    /// The server refugio runs, when it runs this one.
    pub fn own_server(&self) -> Option<&OwnServer> {
        self.own.as_ref()
    }

    /// The URL without password, safe for logs and for tool arguments.
    pub fn redacted(&self) -> String {
        self.url.to_string()
    }

    /// The database name (from the URL path), if any.
    pub fn database(&self) -> Option<String> {
        let p = self.url.path().trim_start_matches('/');
        if p.is_empty() {
            None
        } else {
            percent_encoding_decode(p).ok()
        }
    }

    /// The same server with another database (maintenance connections, scratch databases).
    pub fn with_database(&self, db: &str) -> SourceSpec {
        let mut s = self.clone();
        s.url.set_path(&format!("/{}", encode_path_segment(db)));
        s
    }

    /// Options for sqlx.
    pub fn connect_options(&self) -> Result<PgConnectOptions> {
        let mut opts =
            PgConnectOptions::from_str(self.url.as_str()).map_err(|e| Error::InvalidUrl {
                url: self.redacted(),
                reason: e.to_string(),
            })?;
        if let Some(p) = &self.password {
            opts = opts.password(p);
        }
        if self.own.as_ref().is_some_and(|o| o.superuser) {
            // Our own superuser: messages in English whatever the
            // server's lc_messages (a restored base backup's may be any).
            opts = opts.options([("lc_messages", "C")]);
        }
        Ok(opts
            .application_name("refugio")
            .log_statements(tracing::log::LevelFilter::Trace))
    }

    /// Opens one connection. A TLS file the URL names must be readable
    /// first, and a TLS failure says which setting to look at.
    pub async fn connect(&self) -> Result<PgConnection> {
        let opts = self.connect_options()?;
        check_files(&self.url).map_err(|(param, path, source)| Error::TlsFile {
            url: self.redacted(),
            param,
            path,
            source,
        })?;
        PgConnection::connect_with(&opts).await.map_err(|source| {
            match describe_failure(&self.url, source) {
                Ok((problem, source)) => Error::Tls {
                    url: self.redacted(),
                    problem,
                    source,
                },
                Err(source) => Error::Connect {
                    url: self.redacted(),
                    source: scrub(source, self.password.as_deref()),
                },
            }
        })
    }

    /// `--dbname` value for libpq tools: the URL without the password.
    pub fn tool_dbname(&self) -> String {
        self.url.to_string()
    }

    /// Environment for libpq tools: the password, when we hold one; on a
    /// server refugio runs, as its superuser, messages in the C locale
    /// (`PGOPTIONS`).
    pub fn tool_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("PGAPPNAME", "refugio".to_string())];
        if let Some(p) = &self.password {
            env.push((PGPASSWORD, p.clone()));
        }
        if self.own.as_ref().is_some_and(|o| o.superuser) {
            env.push(("PGOPTIONS", "-c lc_messages=C".to_string()));
        }
        env
    }

    /// What a libpq tool connecting here keeps of refugio's environment:
    /// for a configured server, libpq's connection variables (sqlx reads
    /// them too), `PGPASSWORD` only when no password is configured; for a
    /// server refugio runs, nothing.
    pub fn inherited_tool_env(&self) -> Vec<(String, std::ffi::OsString)> {
        if self.own.is_some() {
            return Vec::new();
        }
        crate::tools::inherited_env(crate::tools::LIBPQ_CONNECTION)
            .into_iter()
            .filter(|(k, _)| !(k == "PGPASSWORD" && self.password.is_some()))
            .collect()
    }

    /// The `HOME` of a tool connecting here: the cluster's directory of a
    /// server refugio runs, else refugio's (`~/.pgpass`,
    /// `~/.postgresql/root.crt`).
    pub fn tool_home(&self) -> Option<PathBuf> {
        match &self.own {
            Some(own) => Some(own.dir.clone()),
            None => crate::tools::own_home(),
        }
    }

    /// A libpq tool's environment, cleared (see [`crate::tools`]):
    /// the allow-list, what it keeps of refugio's environment
    /// ([`Self::inherited_tool_env`]), then [`Self::tool_env`].
    pub fn apply_tool_env(&self, cmd: &mut tokio::process::Command) {
        crate::tools::clear_env(cmd, self.tool_home().as_deref());
        cmd.envs(self.inherited_tool_env()).envs(self.tool_env());
    }

    /// Environment variables a libpq tool must not inherit from refugio:
    /// a password there would be sent to whatever server the tool connects
    /// to. [`SourceSpec::tool_env`] sets the one that belongs to it.
    pub const INHERITED_SECRETS: &'static [&'static str] = &[PGPASSWORD];

    /// The configured password file, for messages.
    pub fn has_password(&self) -> bool {
        self.password.is_some()
    }
}

/// Makes sure a sqlx error message cannot carry the password (sqlx does not
/// echo it, but a server message could quote a connection string).
fn scrub(e: sqlx::Error, password: Option<&str>) -> sqlx::Error {
    match password {
        Some(p) if !p.is_empty() && chain_text(&e).contains(p) => {
            sqlx::Error::Configuration(chain_text(&e).replace(p, REDACTED).into())
        }
        _ => e,
    }
}

/// Every message of `e`'s chain, for the scrub above (repetitions do no harm).
fn chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Removes the `password` parameters from `url`'s query and returns the
/// last one's value (libpq's rule); refuses `sslpassword`. The other
/// parameters stay exactly as written: libpq decodes `%XX` only, so
/// re-encoding them as a form (`+` for spaces) would change them.
fn take_query_password(url: &mut Url) -> std::result::Result<Option<String>, String> {
    let Some(query) = url.query() else {
        return Ok(None);
    };
    let mut password = None;
    let mut kept = Vec::new();
    for segment in query.split('&') {
        let (key, value) = segment.split_once('=').unwrap_or((segment, ""));
        let key = percent_encoding::percent_decode_str(key)
            .decode_utf8_lossy()
            .to_ascii_lowercase();
        match key.as_str() {
            PASSWORD_PARAM => password = Some(percent_encoding_decode(value)?),
            SSL_PASSWORD_PARAM => {
                return Err(
                    "sslpassword is not supported: libpq tools could only receive it on \
                     their command line, and refugio's own connection cannot use an encrypted \
                     client key; use a key without passphrase (sslkey=…), readable only by \
                     refugio's user"
                        .to_string(),
                )
            }
            _ => kept.push(segment),
        }
    }
    let kept = kept.join("&");
    url.set_query((!kept.is_empty()).then_some(kept.as_str()));
    Ok(password)
}

/// The first line of the password file; warns when group or others may
/// access it.
fn read_password_file(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::PasswordFile {
        path: path.to_path_buf(),
        source,
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o7777;
            if let Some(who) = exposed_to(mode) {
                tracing::warn!(
                    file = %path.display(),
                    mode = %format_args!("{mode:04o}"),
                    accessible_to = who,
                    hint = "make it readable by its owner only (chmod 600)",
                    "password-file-exposed"
                );
            }
        }
    }
    Ok(text.lines().next().unwrap_or("").to_string())
}

/// Who besides the owner may access a file of this mode, if anyone (the
/// check ssh makes of private keys: any permission bit for group or others).
fn exposed_to(mode: u32) -> Option<&'static str> {
    match (mode & 0o070 != 0, mode & 0o007 != 0) {
        (true, true) => Some("group and others"),
        (true, false) => Some("group"),
        (false, true) => Some("others"),
        (false, false) => None,
    }
}

fn percent_encoding_decode(s: &str) -> std::result::Result<String, String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|e| format!("not UTF-8 after percent-decoding: {e}"))
}

fn encode_path_segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A path as given in configuration (for password files).
pub fn expand(p: &str) -> PathBuf {
    PathBuf::from(p)
}

// TLS: the settings beside a URL, merged into it, and checked.

/// Characters of a query value passed through as they are; everything else
/// is percent-encoded. `+` is encoded: sqlx would read it as a space where
/// libpq keeps it.
const VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    /// The value as libpq writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// TLS settings given beside a URL (a job's `sslmode`, `sslrootcert`,
/// `sslcert`, `sslkey`). `None`: not set here (the URL's, or libpq's and
/// sqlx's defaults, apply).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: Option<SslMode>,
    /// CA certificates (PEM) the server's certificate must chain to.
    pub root_cert: Option<PathBuf>,
    /// Client certificate (PEM), for servers that ask for one.
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM, without passphrase).
    pub key: Option<PathBuf>,
}

/// A job field that says something else than the URL's parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub param: &'static str,
    pub in_url: String,
    pub in_field: String,
}

impl TlsSettings {
    /// The settings as libpq query parameters.
    fn params(&self) -> Vec<(&'static str, String)> {
        let path = |p: &Path| p.to_string_lossy().into_owned();
        let mut out = Vec::new();
        if let Some(mode) = self.mode {
            out.push(("sslmode", mode.as_str().to_string()));
        }
        if let Some(p) = &self.root_cert {
            out.push(("sslrootcert", path(p)));
        }
        if let Some(p) = &self.cert {
            out.push(("sslcert", path(p)));
        }
        if let Some(p) = &self.key {
            out.push(("sslkey", path(p)));
        }
        out
    }

    /// Appends every setting to `url`'s query, unless the URL already says
    /// the same; a different value there is a [`Conflict`].
    pub fn merge_into(&self, url: &mut Url) -> Result<(), Conflict> {
        let mut query = url.query().unwrap_or_default().to_string();
        for (param, value) in self.params() {
            match query_param(url, param) {
                Some(in_url) if in_url == value => {}
                Some(in_url) => {
                    return Err(Conflict {
                        param,
                        in_url,
                        in_field: value,
                    })
                }
                None => {
                    if !query.is_empty() {
                        query.push('&');
                    }
                    query.push_str(param);
                    query.push('=');
                    query.extend(percent_encoding::utf8_percent_encode(&value, VALUE));
                }
            }
        }
        url.set_query((!query.is_empty()).then_some(query.as_str()));
        Ok(())
    }
}

/// The last value of query parameter `key` (libpq's rule), percent-decoded.
pub(crate) fn query_param(url: &Url, key: &str) -> Option<String> {
    url.query()?.split('&').rev().find_map(|segment| {
        let (k, v) = segment.split_once('=').unwrap_or((segment, ""));
        let k = percent_encoding::percent_decode_str(k).decode_utf8_lossy();
        (k == key).then(|| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

/// What is wrong with the TLS files `url` names, before connecting: a
/// client certificate without its key (or the other way round), or a file
/// that cannot be read. Without this check sqlx reports a missing file as
/// an I/O error without its name, which also reads as connection trouble
/// worth a retry.
pub(crate) fn check_files(url: &Url) -> Result<(), (&'static str, PathBuf, std::io::Error)> {
    for param in ["sslrootcert", "sslcert", "sslkey"] {
        let Some(value) = query_param(url, param) else {
            continue;
        };
        let path = PathBuf::from(value);
        if let Err(e) = std::fs::File::open(&path) {
            return Err((param, path, e));
        }
    }
    Ok(())
}

/// A client certificate without its key, or a key without its certificate
/// (sqlx needs both, and libpq would look for the other in
/// `~/.postgresql`), or `sslrootcert=system` (PostgreSQL 16's "the
/// system's roots", which sqlx would take for a file name).
pub(crate) fn check_pairing(url: &Url) -> Result<(), String> {
    if query_param(url, "sslrootcert").as_deref() == Some("system") {
        return Err(
            "sslrootcert=system is not supported (refugio's own connections would read it as a file name); name the CA file"
                .into(),
        );
    }
    match (
        query_param(url, "sslcert").is_some(),
        query_param(url, "sslkey").is_some(),
    ) {
        (true, false) => Err("sslcert is set without sslkey; set both".into()),
        (false, true) => Err("sslkey is set without sslcert; set both".into()),
        _ => Ok(()),
    }
}

pub use crate::error::TlsCause;

/// When `e` is a TLS failure: what went wrong, in words that name the
/// setting to look at (the CA file, the host name, the client
/// certificate), and its cause; otherwise `e` back.
pub(crate) fn describe_failure(
    url: &Url,
    e: sqlx::Error,
) -> Result<(String, TlsCause), sqlx::Error> {
    let mode = query_param(url, "sslmode").unwrap_or_else(|| "prefer".into());
    let cause: TlsCause = match e {
        sqlx::Error::Io(io) if io.get_ref().is_some_and(|i| i.is::<rustls::Error>()) => {
            match io.into_inner() {
                Some(inner) => inner,
                None => return Err(sqlx::Error::Protocol("unreachable: no inner error".into())),
            }
        }
        sqlx::Error::Tls(inner) => inner,
        other => return Err(other),
    };
    let Some(err) = cause.downcast_ref::<rustls::Error>() else {
        let problem = if cause.to_string().contains("does not support TLS") {
            format!("the server does not offer TLS (its ssl setting is off), and sslmode={mode} requires it")
        } else {
            format!("TLS setup failed (sslmode={mode})")
        };
        return Ok((problem, cause));
    };
    use rustls::CertificateError as C;
    let against = match query_param(url, "sslrootcert") {
        Some(path) => format!("sslrootcert {path}"),
        None => "the trusted roots (no sslrootcert is set)".into(),
    };
    let host = url.host_str().unwrap_or("?");
    let problem = match err {
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => format!(
            "the server's certificate did not verify (sslmode={mode}): it is not signed by a CA in {against}"
        ),
        rustls::Error::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            format!(
                "the server's certificate is not valid for host {host} (sslmode={mode} checks the name; verified against {against})"
            )
        }
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            format!("the server's certificate has expired (sslmode={mode})")
        }
        rustls::Error::InvalidCertificate(_) => {
            format!("the server's certificate did not verify (sslmode={mode}, against {against})")
        }
        rustls::Error::AlertReceived(alert) => format!(
            "the server ended the TLS handshake ({alert:?}); if it asks for a client certificate, check sslcert and sslkey"
        ),
        _ => format!("the TLS handshake failed (sslmode={mode})"),
    };
    Ok((problem, cause))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_never_in_the_tool_url() {
        let s = SourceSpec::new(
            "postgres://app:hunter2@db.example:5433/prod?sslmode=require",
            None,
            None,
        )
        .unwrap();
        assert!(!s.tool_dbname().contains("hunter2"));
        assert!(!s.redacted().contains("hunter2"));
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(
            s.tool_env()
                .iter()
                .find(|(k, _)| *k == "PGPASSWORD")
                .unwrap()
                .1,
            "hunter2"
        );
        assert_eq!(s.database().as_deref(), Some("prod"));
    }

    #[test]
    fn database_override_and_escapes() {
        let s = SourceSpec::new(
            "postgres://app:p%40ss@localhost/x?host=/tmp/sock",
            Some("café db"),
            None,
        )
        .unwrap();
        assert_eq!(s.database().as_deref(), Some("café db"));
        assert_eq!(s.tool_env()[1].1, "p@ss");
    }

    #[test]
    fn redacts_unparseable_urls() {
        assert_eq!(
            redact_url("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert!(!redact_url("postgres://u:sec ret@[bad/db").contains("sec ret"));
    }

    #[test]
    fn rejects_other_schemes() {
        let e = SourceSpec::new("mysql://u:pw@h/db", None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("mysql://") && !e.contains("pw@"), "{e}");
    }

    #[test]
    fn password_file_wins() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "from-file\n").unwrap();
        let s = SourceSpec::new("postgres://u:in-url@h/db", None, Some(&f)).unwrap();
        assert_eq!(s.tool_env()[1].1, "from-file");
        let e =
            SourceSpec::new("postgres://u@h/db", None, Some(Path::new("/no/such"))).unwrap_err();
        assert!(e.to_string().contains("/no/such"));
    }

    /// A `password=` in the query string is a password like the userinfo's:
    /// never in the tool URL, the redacted URL, Debug or an error; given to
    /// tools as PGPASSWORD.
    #[test]
    fn query_password_is_taken_out_of_the_url() {
        for url in [
            "postgres://u@127.0.0.1:1/db?password=hunter2",
            "postgres://u@127.0.0.1:1/db?sslmode=disable&password=hunter2&application_name=x",
            "postgres://u:other@127.0.0.1:1/db?password=hunter2",
            "postgres://u@127.0.0.1:1/db?pass%77ord=hunter2",
        ] {
            let s = SourceSpec::new(url, None, None).unwrap();
            for shown in [s.tool_dbname(), s.redacted(), format!("{s:?}")] {
                assert!(!shown.contains("hunter2"), "{url}: {shown}");
            }
            let env = s.tool_env();
            let pw = env
                .iter()
                .find(|(k, _)| *k == "PGPASSWORD")
                .map(|(_, v)| v.as_str());
            assert_eq!(
                pw,
                Some("hunter2"),
                "{url}: the query's password wins, as in libpq"
            );
        }
        let s = SourceSpec::new(
            "postgres://u@h/db?sslmode=disable&password=p%26w&application_name=x",
            None,
            None,
        )
        .unwrap();
        assert_eq!(
            s.tool_dbname(),
            "postgres://u@h/db?sslmode=disable&application_name=x",
            "the other parameters stay as written"
        );
        assert_eq!(s.tool_env()[1].1, "p&w");
        let s = SourceSpec::new("postgres://u@h/db?password=hunter2", Some("other"), None).unwrap();
        assert_eq!(s.tool_dbname(), "postgres://u@h/other");
    }

    /// Job TLS fields reach sqlx and the libpq tools the same way: in the
    /// URL, which the tools get as `--dbname` (and never with the password).
    #[test]
    fn tls_fields_reach_sqlx_and_the_tools() {
        let tls = TlsSettings {
            mode: Some(crate::SslMode::VerifyFull),
            root_cert: Some("/etc/refugio/ca.pem".into()),
            cert: Some("/etc/refugio/client.pem".into()),
            key: Some("/etc/refugio/client.key".into()),
        };
        let s = SourceSpec::new("postgres://u:hunter2@db:5432/app", None, None)
            .and_then(|s| s.with_tls(&tls))
            .unwrap();
        assert_eq!(
            s.tool_dbname(),
            "postgres://u@db:5432/app?sslmode=verify-full&sslrootcert=/etc/refugio/ca.pem\
             &sslcert=/etc/refugio/client.pem&sslkey=/etc/refugio/client.key"
        );
        let opts = s.connect_options().unwrap();
        assert!(matches!(
            opts.get_ssl_mode(),
            sqlx::postgres::PgSslMode::VerifyFull
        ));
        assert!(!format!("{s:?}").contains("hunter2"));
        // A key without its certificate is refused up front.
        let half = TlsSettings {
            key: Some("/k".into()),
            ..TlsSettings::default()
        };
        let e = SourceSpec::new("postgres://u@db/app", None, None)
            .and_then(|s| s.with_tls(&half))
            .unwrap_err();
        assert!(
            e.to_string().contains("sslkey is set without sslcert"),
            "{e}"
        );
    }

    /// `sslpassword` (the client key's passphrase) cannot reach libpq tools
    /// except on their command line, and sqlx cannot use an encrypted key:
    /// refused, with the URL redacted.
    #[test]
    fn ssl_password_is_refused_without_showing_it() {
        let e = SourceSpec::new(
            "postgres://u@h/db?sslkey=/k.pem&sslpassword=hunter2",
            None,
            None,
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(text.contains("sslpassword"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    /// Messages about strings that are not even URLs, or not ours, keep no
    /// password either: key=value conninfo, query parameters, userinfo.
    #[test]
    fn redaction_of_anything_url_like() {
        for (input, kept) in [
            ("host=h user=u password=hunter2 dbname=db", "dbname=db"),
            ("host=h password = 'hun ter2' dbname=db", "dbname=db"),
            ("host=h password='hunter2\\' x' dbname=db", "dbname=db"),
            (
                "postgres://u@h/db?password=hunter2&sslmode=require",
                "sslmode=require",
            ),
            ("postgres://u@h/db?sslpassword=hunter2", "postgres://u@h/db"),
            ("postgres://u@h/db?PASSWORD=hunter2", "postgres://u@h/db"),
            ("mysql://u:hunter2@h/db", "mysql://u:***@h/db"),
            (
                "postgres://u:hunter2@[bad/db?password=hunter2",
                "postgres://u:",
            ),
            ("x:1 password=hunter2", "x:1"),
        ] {
            let r = redact_url(input);
            assert!(
                !r.contains("hunter2") && !r.contains("hun ter2"),
                "{input}: {r}"
            );
            assert!(r.contains(kept), "{input}: {r} should keep {kept}");
            assert!(r.contains("***"), "{input}: {r}");
        }
        assert_eq!(
            redact_url("postgres://u@h/db?host=/tmp"),
            "postgres://u@h/db?host=/tmp"
        );
    }

    #[test]
    fn conninfo_strings_are_refused_without_showing_the_password() {
        let e = SourceSpec::new("host=h user=u password=hunter2 dbname=db", None, None)
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("postgres://"), "says what to write instead: {e}");
    }

    /// Like ssh: a password file that group or others may read is used, and
    /// logged as a warning naming the file and its mode.
    #[test]
    fn exposed_password_file_is_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "from-file\n").unwrap();
        let logged = |mode: u32| {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            let buf = LogBuffer::default();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(buf.clone())
                .with_ansi(false)
                .finish();
            let spec = tracing::subscriber::with_default(subscriber, || {
                SourceSpec::new("postgres://u@h/db", None, Some(&f)).unwrap()
            });
            assert_eq!(spec.tool_env()[1].1, "from-file", "used anyway");
            buf.text()
        };
        for mode in [0o644, 0o640, 0o604, 0o660] {
            let text = logged(mode);
            assert!(text.contains("WARN"), "{mode:o}: {text}");
            assert!(text.contains(&f.display().to_string()), "{mode:o}: {text}");
            assert!(text.contains(&format!("{mode:04o}")), "{mode:o}: {text}");
            assert!(!text.contains("from-file"), "{text}");
        }
        for mode in [0o600, 0o400] {
            assert_eq!(logged(mode), "", "{mode:o}");
        }
    }

    /// Collects what a test's subscriber writes.
    #[derive(Clone, Default)]
    struct LogBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl LogBuffer {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    impl std::io::Write for LogBuffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
        type Writer = LogBuffer;
        fn make_writer(&'a self) -> LogBuffer {
            self.clone()
        }
    }
}

#[cfg(test)]
mod tls_tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).expect("test URL")
    }

    #[test]
    fn fields_are_appended_encoded_and_read_back() {
        let tls = TlsSettings {
            mode: Some(SslMode::VerifyFull),
            root_cert: Some("/etc/refugio/ca one+two.pem".into()),
            cert: None,
            key: None,
        };
        let mut u = url("postgres://u@db:5432/app?application_name=x");
        tls.merge_into(&mut u).expect("no conflict");
        assert_eq!(
            u.as_str(),
            "postgres://u@db:5432/app?application_name=x&sslmode=verify-full&sslrootcert=/etc/refugio/ca%20one%2Btwo.pem"
        );
        assert_eq!(
            query_param(&u, "sslrootcert").as_deref(),
            Some("/etc/refugio/ca one+two.pem")
        );
        // Merging again is a no-op: the URL already says the same.
        let before = u.to_string();
        tls.merge_into(&mut u).expect("same values");
        assert_eq!(u.as_str(), before);
    }

    #[test]
    fn a_field_that_contradicts_the_url_is_a_conflict() {
        let tls = TlsSettings {
            mode: Some(SslMode::VerifyFull),
            ..TlsSettings::default()
        };
        let mut u = url("postgres://u@db/app?sslmode=require");
        let conflict = tls.merge_into(&mut u).expect_err("conflict");
        assert_eq!(
            conflict,
            Conflict {
                param: "sslmode",
                in_url: "require".into(),
                in_field: "verify-full".into()
            }
        );
        let mut same = url("postgres://u@db/app?sslmode=verify-full");
        tls.merge_into(&mut same).expect("agreeing values");
        assert_eq!(same.as_str(), "postgres://u@db/app?sslmode=verify-full");
    }

    #[test]
    fn certificate_and_key_go_together() {
        assert!(check_pairing(&url("postgres://h/d?sslcert=/c")).is_err());
        assert!(check_pairing(&url("postgres://h/d?sslkey=/k")).is_err());
        assert!(check_pairing(&url("postgres://h/d?sslcert=/c&sslkey=/k")).is_ok());
        assert!(check_pairing(&url("postgres://h/d")).is_ok());
    }

    #[test]
    fn unreadable_files_are_named() {
        let (param, path, _) =
            check_files(&url("postgres://h/d?sslrootcert=/no/such/ca.pem")).expect_err("missing");
        assert_eq!(param, "sslrootcert");
        assert_eq!(path, PathBuf::from("/no/such/ca.pem"));
        assert!(check_pairing(&url("postgres://h/d?sslrootcert=system")).is_err());
    }

    #[test]
    fn serde_names_are_libpq_s() {
        let m: SslMode = serde_json::from_str("\"verify-full\"").expect("parses");
        assert_eq!(m, SslMode::VerifyFull);
        assert_eq!(m.as_str(), "verify-full");
        assert!(serde_json::from_str::<SslMode>("\"verify_full\"").is_err());
    }
}
