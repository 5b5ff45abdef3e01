//! TLS to PostgreSQL: libpq's `sslmode`, `sslrootcert`, `sslcert` and
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

use serde::{Deserialize, Serialize};
use url::Url;

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

/// A TLS failure's cause, without sqlx's wrapping (whose `Io` variant would
/// make the failure read as connection trouble worth a retry).
pub type TlsCause = Box<dyn std::error::Error + Send + Sync>;

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
