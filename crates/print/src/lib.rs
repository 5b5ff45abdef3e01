//! What refugio prints, printed safely: an error with its causes, each
//! once ([`chain`]), and secrets never ([`redact`]: passwords in URLs and
//! connection strings redacted; [`SecretUrl`] and [`SecretText`], which
//! hold a secret-bearing value and show it only redacted). Every crate of
//! refugio prints through it; it depends on none of them.

pub mod redact;

pub use redact::{redact_text, redact_url, SecretText, SecretUrl};

/// `e` and its causes, `: `-separated, each once: a cause whose text the
/// message so far already ends with is left out, for errors of other
/// crates that embed their source in their message while also returning
/// it from `source()` (sqlx's "error communicating with database: {0}",
/// the AWS SDK's). For any error, not only the store's; an
/// `anyhow::Error` goes in as `e.as_ref()`.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !cause_text.is_empty() && !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    /// Like sqlx's Io error: its text embeds its source, which it also
    /// returns from `source()`.
    #[derive(Debug)]
    struct RepeatsItsSource(io::Error);

    impl std::fmt::Display for RepeatsItsSource {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "communicating: {}", self.0)
        }
    }

    impl std::error::Error for RepeatsItsSource {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn each_cause_once_in_order() {
        let inner = io::Error::other(RepeatsItsSource(io::Error::from(
            io::ErrorKind::ConnectionRefused,
        )));
        assert_eq!(chain(&inner), "communicating: connection refused");
        let outer = io::Error::other(Wrapped(inner));
        assert_eq!(
            chain(&outer),
            "reading k: communicating: connection refused"
        );
    }

    #[derive(Debug)]
    struct Wrapped(io::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("reading k")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
}
