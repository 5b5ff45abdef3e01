//! The environment of every process refugio starts: cleared, then an
//! explicit allow-list. refugio's own environment holds what a child must
//! not see — S3 keys (`AWS_*`), `PGPASSWORD`, `CREDENTIALS_DIRECTORY`,
//! `REFUGIO_*` (the age identity among them) — and a drill restores
//! content read from a repository that other hosts can write: whatever a
//! hostile archive makes a child run (`COPY … TO PROGRAM` in a drill's
//! server) sees only this.
//!
//! Every child gets `PATH`, `TZ` and `TMPDIR` from refugio, its own `HOME`,
//! and the C locale (`LANG`, `LC_ALL`): a tool's own messages are then the
//! same on every host, whatever language the host speaks. What else a
//! child gets is added by its caller, named: a libpq tool its connection's
//! variables ([`crate::SourceSpec::tool_env`]), the server of a physical
//! drill the store's credentials its `restore_command` needs.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Variables every child keeps from refugio's environment.
pub const KEPT: &[&str] = &["PATH", "TZ", "TMPDIR"];

/// The locale of every child: messages in English, the same on every host.
pub const C_LOCALE: &[(&str, &str)] = &[("LANG", "C"), ("LC_ALL", "C")];

/// libpq's connection variables, kept for a tool that connects to a server
/// the operator configured (a source, a target, a scratch server): sqlx
/// reads the same ones for refugio's own sessions, so a tool reaches the
/// same server with the same credentials. Never given to a tool that
/// connects to a server refugio runs itself (an ephemeral drill cluster).
pub const LIBPQ_CONNECTION: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSSLMODE",
    "PGSSLROOTCERT",
    "PGSSLCERT",
    "PGSSLKEY",
    "PGSSLCRL",
    "PGCONNECT_TIMEOUT",
];

/// refugio's `HOME`, if it has one.
pub fn own_home() -> Option<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from)
}

/// The allow-list every child starts from (see the module doc), with
/// `home` as its `HOME` (none: `/`).
pub fn base(home: Option<&Path>) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = KEPT
        .iter()
        .filter_map(|k| std::env::var_os(k).map(|v| (OsString::from(k), v)))
        .collect();
    env.push((
        "HOME".into(),
        home.map_or_else(|| OsString::from("/"), |h| h.as_os_str().to_os_string()),
    ));
    env.extend(C_LOCALE.iter().map(|(k, v)| ((*k).into(), (*v).into())));
    env
}

/// Those of `names` set in refugio's environment, with their values.
pub fn inherited(names: &[&str]) -> Vec<(String, OsString)> {
    names
        .iter()
        .filter_map(|k| std::env::var_os(k).map(|v| ((*k).to_string(), v)))
        .collect()
}

/// Clears `cmd`'s environment down to [`base`].
pub fn clear(cmd: &mut tokio::process::Command, home: Option<&Path>) {
    cmd.env_clear().envs(base(home));
}

/// [`clear`] for a `std::process::Command`.
pub fn clear_std(cmd: &mut std::process::Command, home: Option<&Path>) {
    cmd.env_clear().envs(base(home));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_has_the_c_locale_and_the_home_given_and_nothing_secret() {
        let env = base(Some(Path::new("/var/empty")));
        let get = |k: &str| {
            env.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.to_string_lossy().into_owned())
        };
        assert_eq!(get("HOME").as_deref(), Some("/var/empty"));
        assert_eq!(get("LC_ALL").as_deref(), Some("C"));
        assert_eq!(get("LANG").as_deref(), Some("C"));
        for (name, _) in &env {
            let name = name.to_string_lossy();
            assert!(
                ["PATH", "TZ", "TMPDIR", "HOME", "LANG", "LC_ALL"].contains(&name.as_ref()),
                "{name} is not on the allow-list"
            );
        }
    }
}
