//! The `refugio` binary: parses the command line and runs a command on
//! an async runtime (everything else is in the library, `lib.rs`).

use refugio::{cli, commands, exit};
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // PGPASSWORD is the source's: moved out of the environment while this
    // process has one thread, so no scratch server or target receives it.
    refugio_dump::adopt_env_password();
    let args = cli::Cli::parse();
    cli::init_logging(&args);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("refugio: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    let code = runtime.block_on(commands::dispatch(args));
    // Background aborts/cleanups get a moment to finish.
    runtime.shutdown_timeout(std::time::Duration::from_secs(10));
    code
}
