//! The source (or target) database: its URL, where the password comes from,
//! and how it is handed to sqlx and to libpq tools without ever appearing on
//! a command line or in a message.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use url::Url;

use crate::error::{Error, Result};

/// A PostgreSQL connection as configured: URL (libpq URI syntax, unix
/// sockets as `?host=/dir`), an optional database that overrides the URL's,
/// and an optional password file.
#[derive(Clone)]
pub struct SourceSpec {
    url: Url,
    password: Option<String>,
}

impl std::fmt::Debug for SourceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceSpec")
            .field("url", &self.redacted())
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl SourceSpec {
    /// Parses `url`; `database` replaces the URL's database; `password_file`
    /// is read (first line, trailing newline removed) and wins over a
    /// password in the URL. Otherwise libpq's own sources apply
    /// (`PGPASSWORD`, `~/.pgpass`/`PGPASSFILE`), for sqlx and tools alike.
    pub fn new(url: &str, database: Option<&str>, password_file: Option<&Path>) -> Result<Self> {
        let mut parsed = Url::parse(url).map_err(|e| Error::InvalidUrl {
            url: redact_url(url),
            reason: e.to_string(),
        })?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(Error::InvalidUrl {
                url: redact_url(url),
                reason: format!(
                    "scheme must be postgres:// or postgresql://, not {}://",
                    parsed.scheme()
                ),
            });
        }
        let mut password = parsed
            .password()
            .map(|p| {
                percent_encoding_decode(p).map_err(|reason| Error::InvalidUrl {
                    url: redact_url(url),
                    reason,
                })
            })
            .transpose()?;
        let _ = parsed.set_password(None);
        if let Some(db) = database {
            parsed.set_path(&format!("/{}", encode_path_segment(db)));
        }
        if let Some(path) = password_file {
            let text = std::fs::read_to_string(path).map_err(|source| Error::PasswordFile {
                path: path.to_path_buf(),
                source,
            })?;
            password = Some(text.lines().next().unwrap_or("").to_string());
        }
        let spec = SourceSpec {
            url: parsed,
            password,
        };
        // Reject what sqlx cannot parse now, with the redacted URL.
        spec.connect_options()?;
        Ok(spec)
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
        Ok(opts
            .application_name("refugio")
            .log_statements(tracing::log::LevelFilter::Trace))
    }

    /// Opens one connection.
    pub async fn connect(&self) -> Result<PgConnection> {
        let opts = self.connect_options()?;
        PgConnection::connect_with(&opts)
            .await
            .map_err(|source| Error::Connect {
                url: self.redacted(),
                source: scrub(source, self.password.as_deref()),
            })
    }

    /// `--dbname` value for libpq tools: the URL without the password.
    pub fn tool_dbname(&self) -> String {
        self.url.to_string()
    }

    /// Environment for libpq tools: the password, when we hold one.
    pub fn tool_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("PGAPPNAME", "refugio".to_string())];
        if let Some(p) = &self.password {
            env.push(("PGPASSWORD", p.clone()));
        }
        env
    }

    /// The configured password file, for messages.
    pub fn has_password(&self) -> bool {
        self.password.is_some()
    }
}

/// Makes sure a sqlx error message cannot carry the password (sqlx does not
/// echo it, but a server message could quote a connection string).
fn scrub(e: sqlx::Error, password: Option<&str>) -> sqlx::Error {
    match password {
        Some(p) if !p.is_empty() && e.to_string().contains(p) => {
            sqlx::Error::Configuration(e.to_string().replace(p, "***").into())
        }
        _ => e,
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

/// Replaces the password in a URL-ish string with `***`, for messages
/// about URLs that could not even be parsed.
pub fn redact_url(url: &str) -> String {
    if let Ok(mut u) = Url::parse(url) {
        if u.password().is_some() {
            let _ = u.set_password(Some("***"));
        }
        return u.to_string();
    }
    // Unparseable: cut anything between "://user:" and "@".
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        if let Some(at) = rest.rfind('@') {
            let userinfo = &rest[..at];
            if let Some(colon) = userinfo.find(':') {
                return format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &rest[at..]
                );
            }
        }
    }
    url.to_string()
}

/// A path as given in configuration (for password files).
pub fn expand(p: &str) -> PathBuf {
    PathBuf::from(p)
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
}
