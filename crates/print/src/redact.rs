//! Secrets in text: redaction of passwords in connection strings and
//! URLs, and the types that hold a secret-bearing value and show it only
//! redacted (`Debug`), so the structures that hold them can derive
//! `Debug`. The text itself is reached by `Deref` (to `&str`), never by
//! `Display`: printing one is a decision the caller spells out.

use std::fmt;
use std::ops::Deref;

use serde::Deserialize;
use url::Url;

/// What a redacted password reads as.
pub const REDACTED: &str = "***";
/// The query parameter and conninfo keyword of a password.
pub const PASSWORD_PARAM: &str = "password";

/// A connection URL that may carry a password (a source, a scratch server,
/// a restore target, a repository or its endpoint): `Debug` shows it
/// through [`redact_url`].
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redact_url(&self.0), f)
    }
}

impl Deref for SecretUrl {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<String> for SecretUrl {
    fn from(s: String) -> Self {
        SecretUrl(s)
    }
}

impl From<&str> for SecretUrl {
    fn from(s: &str) -> Self {
        SecretUrl(s.to_string())
    }
}

impl std::str::FromStr for SecretUrl {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(SecretUrl(s.to_string()))
    }
}

/// Free text that may hold a password (an extra argument such as
/// `--dbname=host=h password=…`): `Debug` shows it through [`redact_text`].
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SecretText(String);

impl fmt::Debug for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redact_text(&self.0), f)
    }
}

impl Deref for SecretText {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<String> for SecretText {
    fn from(s: String) -> Self {
        SecretText(s)
    }
}

/// Replaces every password in a connection string with `***`, for
/// messages about URLs (also ones that could not be parsed, or are not
/// postgres:// URLs, or key=value conninfo): the userinfo's password and
/// the value of every query parameter or keyword ending in `password`.
pub fn redact_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some(REDACTED));
            }
            if let Some(query) = u.query() {
                let query = query
                    .split('&')
                    .map(|segment| match segment.split_once('=') {
                        Some((key, _)) if is_password_key(key) => format!("{key}={REDACTED}"),
                        _ => segment.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join("&");
                u.set_query(Some(&query));
            }
            // Keywords too: a URL without a base (`host:5432 password=…`)
            // parses, as a path.
            redact_keywords(u.as_str())
        }
        Err(_) => redact_text(url),
    }
}

/// A query key (percent-encoded) that names a password.
fn is_password_key(key: &str) -> bool {
    percent_encoding::percent_decode_str(key)
        .decode_utf8_lossy()
        .to_ascii_lowercase()
        .ends_with(PASSWORD_PARAM)
}

/// Text-level redaction, for what URL parsing does not cover: on each line,
/// the userinfo password after `scheme://user:` up to the line's last `@`,
/// and the value after any `password =` (case-insensitive; a quoted value
/// up to its closing quote, a bare one up to white space or `&`).
pub fn redact_text(text: &str) -> String {
    text.split('\n')
        .map(|line| redact_keywords(&redact_userinfo(line)))
        .collect::<Vec<_>>()
        .join("\n")
}

fn redact_userinfo(line: &str) -> String {
    let Some(scheme_end) = line.find("://") else {
        return line.to_string();
    };
    let start = scheme_end + 3;
    let rest = &line[start..];
    if let Some(at) = rest.rfind('@') {
        if let Some(colon) = rest[..at].find(':') {
            if &rest[colon + 1..at] != REDACTED {
                return format!("{}{REDACTED}{}", &line[..start + colon + 1], &rest[at..]);
            }
        }
    }
    line.to_string()
}

fn redact_keywords(line: &str) -> String {
    let lower = line.to_ascii_lowercase();
    let bytes = line.as_bytes();
    let mut out = String::with_capacity(line.len());
    let mut copied = 0;
    let mut search = 0;
    while let Some(found) = lower[search..].find(PASSWORD_PARAM) {
        let mut i = search + found + PASSWORD_PARAM.len();
        search = i;
        while i < bytes.len() && (bytes[i] == b' ' || bytes[i] == b'\t') {
            i += 1;
        }
        if i >= bytes.len() || bytes[i] != b'=' {
            continue;
        }
        i += 1;
        while i < bytes.len() && (bytes[i] == b' ' || bytes[i] == b'\t') {
            i += 1;
        }
        let value_start = i;
        if i < bytes.len() && bytes[i] == b'\'' {
            i += 1;
            while i < bytes.len() && bytes[i] != b'\'' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i = (i + 1).min(bytes.len());
        } else {
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() && bytes[i] != b'&' {
                i += 1;
            }
        }
        // Indices stop only at ASCII bytes or the end: char boundaries.
        out.push_str(&line[copied..value_start]);
        out.push_str(REDACTED);
        copied = i;
        search = i;
    }
    out.push_str(&line[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The types show their text redacted, reach it whole by `Deref`, and
    /// deserialize from a plain string.
    #[test]
    fn secret_types_debug_redacted_and_deref_whole() {
        let url = SecretUrl::from("postgres://u:hunter2@h/db?sslmode=require");
        assert_eq!(
            format!("{url:?}"),
            "\"postgres://u:***@h/db?sslmode=require\""
        );
        assert_eq!(&*url, "postgres://u:hunter2@h/db?sslmode=require");
        let text = SecretText::from("--dbname=host=h password=hunter2".to_string());
        assert!(!format!("{text:?}").contains("hunter2"), "{text:?}");
        assert_eq!(&*text, "--dbname=host=h password=hunter2");
        #[derive(Deserialize, Debug)]
        struct Holder {
            url: SecretUrl,
            args: Vec<SecretText>,
        }
        let h: Holder = serde_json::from_str(
            r#"{"url": "postgres://u:hunter2@h/db", "args": ["password=hunter2"]}"#,
        )
        .unwrap();
        assert_eq!(&*h.url, "postgres://u:hunter2@h/db");
        assert_eq!(&*h.args[0], "password=hunter2");
        assert!(!format!("{h:?}").contains("hunter2"), "{h:?}");
    }
}
