//! The name patterns of a job's scope: `*` (any run of characters) and `?`
//! (one character), matched case-sensitively against names as the
//! catalog spells them, and resolved in the snapshot (or the server's
//! catalog, for databases) so that what is counted and what is dumped
//! agree by construction.

use sqlx::{PgConnection, Row};

use crate::conn::SourceSpec;
use crate::error::{Error, Result};

/// Whether `s` matches the glob `pattern`.
pub fn glob(pattern: &str, s: &str) -> bool {
    fn go(p: &[char], s: &[char]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some('*'), _) => go(&p[1..], s) || (!s.is_empty() && go(p, &s[1..])),
            (Some('?'), Some(_)) => go(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &s[1..]),
            _ => false,
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = s.chars().collect();
    go(&p, &s)
}

/// Whether table `schema.name` matches one of `patterns`: a pattern with a
/// `.` is matched against `schema.name`, one without against `name`.
pub fn table_matches(patterns: &[String], schema: &str, name: &str) -> bool {
    let full = format!("{schema}.{name}");
    patterns.iter().any(|p| {
        if p.contains('.') {
            glob(p, &full)
        } else {
            glob(p, name)
        }
    })
}

/// Which databases of a server a whole-server job dumps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseScope {
    /// Patterns of databases to dump (`*` for all).
    pub include: Vec<String>,
    /// Patterns of databases left out.
    pub exclude: Vec<String>,
}

impl DatabaseScope {
    /// Whether `name` is in scope.
    pub fn contains(&self, name: &str) -> bool {
        self.include.iter().any(|p| glob(p, name)) && !self.exclude.iter().any(|p| glob(p, name))
    }

    /// The databases of the server `spec` names that are in scope, sorted
    /// by name: templates never (and databases that refuse connections),
    /// `postgres` like any other.
    pub async fn resolve(&self, conn: &mut PgConnection, spec: &SourceSpec) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT datname FROM pg_database \
             WHERE NOT datistemplate AND datallowconn ORDER BY datname COLLATE \"C\"",
        )
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| Error::Query {
            url: spec.redacted(),
            what: "listing databases".into(),
            source: e,
        })?;
        Ok(rows
            .iter()
            .map(|r| r.get::<String, _>("datname"))
            .filter(|n| self.contains(n))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_patterns() {
        let p = vec!["public.audit_*".to_string(), "tmp_?".to_string()];
        assert!(table_matches(&p, "public", "audit_log"));
        assert!(!table_matches(&p, "other", "audit_log"));
        assert!(table_matches(&p, "any", "tmp_1"));
        assert!(!table_matches(&p, "any", "tmp_12"));
    }

    #[test]
    fn database_scope() {
        let all = DatabaseScope {
            include: vec!["*".into()],
            exclude: vec!["scratch_*".into(), "Temp".into()],
        };
        assert!(all.contains("postgres"));
        assert!(all.contains("café trips"));
        assert!(!all.contains("scratch_1"));
        assert!(!all.contains("Temp"));
        assert!(all.contains("temp"), "patterns are case-sensitive");
        let some = DatabaseScope {
            include: vec!["app_*".into(), "billing".into()],
            exclude: vec![],
        };
        assert!(some.contains("app_eu") && some.contains("billing"));
        assert!(!some.contains("postgres") && !some.contains("billing2"));
    }
}
