//! `[jobs.restore_on_signal]`: where SIGUSR2 restores the job's newest
//! verified backup after its drill (a staging database refreshed from
//! production, say), and the checks that it is not the job's own source:
//! by name when the config is loaded, by system identifier (the cluster's,
//! which its replicas share) before each restore and in `config check`.

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use refugio_dump::SourceSpec;
use refugio_print::{redact_url, SecretUrl};

/// `[jobs.restore_on_signal]`. Its `Debug` redacts the target's password
/// (its type does).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreOnSignal {
    /// Database URL the backup is restored into (created if missing). For
    /// a whole-server job: the server, every database under its own name.
    pub target: SecretUrl,
    /// File whose first line is the target's password. The target never
    /// gets the source's password. Default none: the target URL's own, or
    /// libpq's password file (`~/.pgpass`).
    #[serde(default)]
    pub password_file: Option<std::path::PathBuf>,
    /// Drop and recreate the backup's objects in a target that has tables.
    /// Without it such a target is refused (the restore fails, nothing is
    /// changed). Default false.
    #[serde(default)]
    pub clean: bool,
    /// Apply the backup's roles first. Default false.
    #[serde(default)]
    pub globals: bool,
    /// Do not restore object ownership. Default false.
    #[serde(default)]
    pub no_owner: bool,
}

/// Where a URL's server is: host (a socket directory counts as this host)
/// and port.
fn server_of(url: &str) -> Result<(String, u16)> {
    let u = url::Url::parse(url).with_context(|| format!("{} is not a URL", redact_url(url)))?;
    let param = |k: &str| {
        u.query_pairs()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.into_owned())
    };
    let host = param("host").unwrap_or_else(|| u.host_str().unwrap_or("localhost").to_string());
    let port = match param("port") {
        Some(p) => p
            .parse()
            .with_context(|| format!("port {p:?} of {}", redact_url(url)))?,
        None => u.port().unwrap_or(5432),
    };
    // This machine, by name, address or socket: one server per port.
    let local = host.starts_with('/')
        || matches!(
            host.trim_matches(['[', ']']),
            "localhost" | "127.0.0.1" | "::1" | ""
        );
    let host = if local {
        "this host".to_string()
    } else {
        host.to_ascii_lowercase()
    };
    Ok((host, port))
}

impl RestoreOnSignal {
    /// Refuses a target that is the job's own `source`: the same server
    /// and database (for a whole-server job, the same server).
    pub fn validate(&self, source: &SourceSpec, whole_server: bool) -> Result<()> {
        let target = SourceSpec::new(&self.target, None, None).context("target")?;
        if server_of(&self.target)? != server_of(&source.redacted())? {
            return Ok(());
        }
        let same = match (whole_server, target.database(), source.database()) {
            (true, _, _) => true,
            (false, Some(t), Some(s)) => t == s,
            (false, None, _) => true,
            (false, Some(_), None) => false,
        };
        if same {
            bail!(
                "target {} is the job's own source ({}): a restore there would overwrite the data it backs up",
                target.redacted(),
                source.redacted()
            );
        }
        Ok(())
    }

    /// The target, with its own password file if any.
    pub fn target_spec(&self) -> Result<SourceSpec> {
        SourceSpec::new(&self.target, None, self.password_file.as_deref())
            .context("restore_on_signal.target")
    }
}

/// What a refused `restore_on_signal` tells the operator.
pub const REFUSAL_HINT: &str = "restore_on_signal never restores into its job's source cluster (its primary or any replica): point `target` at another cluster";

#[cfg(test)]
mod tests {
    use super::*;

    /// A job's source, and whether the job is whole-server.
    fn job(source: &str, databases: Option<Vec<String>>) -> (SourceSpec, bool) {
        (
            SourceSpec::new(source, None, None).expect("url"),
            databases.is_some(),
        )
    }

    fn check(target: &str, (source, whole): &(SourceSpec, bool)) -> Result<()> {
        RestoreOnSignal {
            target: target.into(),
            password_file: None,
            clean: false,
            globals: false,
            no_owner: false,
        }
        .validate(source, *whole)
    }

    #[test]
    fn the_jobs_own_source_is_refused() {
        let j = job("postgres://u@db.internal:5432/trips", None);
        let e = check("postgres://other:pw@DB.internal/trips", &j).unwrap_err();
        assert!(e.to_string().contains("own source"), "{e}");
        assert!(!e.to_string().contains("pw"), "{e}");
        check("postgres://u@db.internal:5432/trips_staging", &j).expect("another database");
        check("postgres://u@staging.internal:5432/trips", &j).expect("another server");
        check("postgres://u@db.internal:5433/trips", &j).expect("another port");
        // A socket and localhost are this host, on the same port.
        let local = job("postgres://u@localhost/trips?host=/run/postgresql", None);
        assert!(check("postgres://u@127.0.0.1:5432/trips", &local).is_err());
        // A whole-server job: the same server is refused whatever database.
        let all = job("postgres://u@db.internal/", Some(vec!["*".into()]));
        assert!(check("postgres://u@db.internal/staging", &all).is_err());
        check("postgres://u@staging.internal/", &all).expect("another server");
    }

    #[test]
    fn debug_redacts_the_target() {
        let r = RestoreOnSignal {
            target: "postgres://u:hunter2@h/db".into(),
            password_file: None,
            clean: true,
            globals: false,
            no_owner: false,
        };
        assert!(!format!("{r:?}").contains("hunter2"));
    }
}
