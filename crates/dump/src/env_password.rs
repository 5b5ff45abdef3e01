//! `PGPASSWORD`, the source's password: taken out of the process
//! environment once at start-up ([`adopt_env_password`]) and kept here for
//! [`SourceSpec::source`](crate::SourceSpec::source) alone.

use std::sync::OnceLock;

/// libpq's password variable: the source's password when set.
pub(crate) const PGPASSWORD: &str = "PGPASSWORD";

/// `PGPASSWORD` as refugio started with it, once [`adopt_env_password`]
/// has moved it here.
static ENV_PASSWORD: OnceLock<Option<String>> = OnceLock::new();

/// Takes `PGPASSWORD` out of the process environment and keeps it as the
/// source's password ([`SourceSpec::source`](crate::SourceSpec::source)): then neither sqlx (which
/// reads `PGPASSWORD` for every connection without a password) nor a child
/// process can hand it to a scratch server or a restore target. Call it
/// first thing in `main`, while the process has one thread (changing the
/// environment races with threads reading it); later calls do nothing.
pub fn adopt_env_password() {
    ENV_PASSWORD.get_or_init(|| {
        let password = std::env::var(PGPASSWORD).ok();
        std::env::remove_var(PGPASSWORD);
        password.filter(|p| !p.is_empty())
    });
}

/// The adopted `PGPASSWORD` (None when not adopted, or not set).
pub(crate) fn env_password() -> Option<String> {
    ENV_PASSWORD.get().cloned().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SourceSpec;

    /// The adopted `PGPASSWORD` goes to the source alone, and only when
    /// the source has no password of its own.
    #[test]
    fn the_environment_password_is_the_sources_only() {
        let _ = ENV_PASSWORD.set(Some("from-env".into()));
        let password = |s: &SourceSpec| {
            s.tool_env()
                .into_iter()
                .find(|(k, _)| *k == PGPASSWORD)
                .map(|(_, v)| v)
        };
        let source = SourceSpec::source("postgres://u@h/db", None, None).unwrap();
        assert_eq!(password(&source).as_deref(), Some("from-env"));
        let own = SourceSpec::source("postgres://u:in-url@h/db", None, None).unwrap();
        assert_eq!(password(&own).as_deref(), Some("in-url"));
        let scratch = SourceSpec::new("postgres://u@h/db", None, None).unwrap();
        assert_eq!(password(&scratch), None, "a scratch server or target");
    }
}
