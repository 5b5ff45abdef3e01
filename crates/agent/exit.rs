//! Exit codes: 0 success; 1 the operation failed; 2 bad usage or
//! configuration (clap's and ours); 3 (`refugio check` only) the
//! repository could not be checked.

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

/// Exit code of [`CouldNotCheck`] (and of a check that found no damage
/// but could not read everything).
pub const COULD_NOT_CHECK: u8 = 3;

/// Marks `e` as "the repository could not be checked".
pub fn could_not_check(e: anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(CouldNotCheck(e))
}

/// The exit code of a failed command.
pub fn code_of(e: &anyhow::Error) -> ExitCode {
    if e.downcast_ref::<UsageError>().is_some() {
        ExitCode::from(2)
    } else if e.downcast_ref::<CouldNotCheck>().is_some() {
        ExitCode::from(COULD_NOT_CHECK)
    } else {
        ExitCode::from(1)
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
