//! Exit codes: one table ([`CODES`]) that the commands, `main` and the
//! docs follow (`refugio --help` ends with it; docs/configuration.md
//! carries it as a list, and a test holds it there).

use std::process::ExitCode;

/// A mistake in the invocation or the configuration: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{}", crate::output::error_chain(.0))]
pub struct UsageError(anyhow::Error);

/// Marks `e` as a usage error.
pub fn usage(e: anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(UsageError(e))
}

/// A check that could not look (the store unreachable, a listing that
/// failed): exit code 3, never 1, which says the repository is damaged.
#[derive(Debug, thiserror::Error)]
#[error("{}", crate::output::error_chain(.0))]
pub struct CouldNotCheck(anyhow::Error);

/// The operation failed: a backup, restore or prune; `verify`: the drill
/// failed; `check`: damage; `status`: a target is missed; `wal-fetch`:
/// the file is not archived.
pub const FAILED: u8 = 1;
/// Bad usage or an invalid configuration (clap's and ours).
pub const USAGE: u8 = 2;
/// Could not check: a drill that was inconclusive (a foreign backup
/// included), a repository check that could not look at everything.
pub const COULD_NOT_CHECK: u8 = 3;
/// `wal-fetch`: the file is archived but could not be fetched or checked
/// (PostgreSQL's `restore_command` protocol: recovery stops rather than
/// ending early).
pub const FETCH_FAILED: u8 = 126;

/// Every exit code refugio uses, and what it means.
pub const CODES: &[(u8, &str)] = &[
    (0, "success"),
    (
        FAILED,
        "the operation failed: a backup, restore or prune; `verify`: the drill failed (the backup is bad, or a target was missed); `check`: damage; `status`: a target is missed; `wal-fetch`: the file is not archived",
    ),
    (USAGE, "bad usage or an invalid configuration"),
    (
        COULD_NOT_CHECK,
        "could not check: `verify` inconclusive (a foreign backup included), `check` could not look at everything, `status` could not read the repository",
    ),
    (
        FETCH_FAILED,
        "`wal-fetch`: the file is archived but could not be fetched or checked (recovery stops rather than ending early)",
    ),
];

/// [`CODES`] as `refugio --help` ends.
pub fn help() -> String {
    let mut text = String::from("Exit codes:\n");
    for (code, meaning) in CODES {
        text.push_str(&format!("  {code:<4}{meaning}\n"));
    }
    text
}

/// Marks `e` as "the repository could not be checked".
pub fn could_not_check(e: anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(CouldNotCheck(e))
}

/// The exit code of a failed command.
pub fn code_of(e: &anyhow::Error) -> ExitCode {
    if e.downcast_ref::<UsageError>().is_some() {
        ExitCode::from(USAGE)
    } else if e.downcast_ref::<CouldNotCheck>().is_some() {
        ExitCode::from(COULD_NOT_CHECK)
    } else {
        ExitCode::from(FAILED)
    }
}

/// Whether `e` is, somewhere in its chain, content refused because no
/// trusted key signed it (`[repository.authentication]`): foreign, which
/// a drill reports as inconclusive, never as a bad backup.
pub fn is_foreign(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<refugio_store::Error>(),
            Some(refugio_store::Error::Unauthenticated { .. })
        ) || matches!(
            c.downcast_ref::<refugio_core::Error>(),
            Some(refugio_core::Error::Store(
                refugio_store::Error::Unauthenticated { .. }
            ))
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`CODES`] as the Markdown list docs/configuration.md carries.
    fn markdown() -> String {
        CODES
            .iter()
            .map(|(code, meaning)| format!("- `{code}` {meaning}\n"))
            .collect()
    }

    #[test]
    fn the_docs_carry_the_table() {
        let docs = include_str!("../../docs/configuration.md");
        let table = markdown();
        assert!(
            docs.contains(&table),
            "docs/configuration.md does not carry the exit codes as exit.rs has them:\n{table}"
        );
        assert!(help().contains("  126 `wal-fetch`"), "{}", help());
        let codes: Vec<u8> = CODES.iter().map(|(c, _)| *c).collect();
        assert_eq!(codes, [0, FAILED, USAGE, COULD_NOT_CHECK, FETCH_FAILED]);
    }
}
