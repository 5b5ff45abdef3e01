//! Exit codes: 0 success; 1 the operation failed; 2 bad usage or
//! configuration (clap's and ours).

use std::process::ExitCode;

/// A mistake in the invocation or the configuration: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{}", crate::output::error_chain(.0))]
pub struct UsageError(anyhow::Error);

/// Marks `e` as a usage error.
pub fn usage(e: anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(UsageError(e))
}

/// The exit code of a failed command.
pub fn code_of(e: &anyhow::Error) -> ExitCode {
    if e.downcast_ref::<UsageError>().is_some() {
        ExitCode::from(2)
    } else {
        ExitCode::from(1)
    }
}
