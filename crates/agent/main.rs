//! The `refugio` binary, wiring only: the command line, the configuration
//! file mapped to the options of refugio-core's operations, the
//! long-running agent (`refugio run`: scheduler wiring, signals, advisory
//! locks, HTTP metrics and health, webhook) and the output of each command.
//!
//! Exit codes: the table in `exit.rs` (`exit::CODES`).

mod cli;
mod commands;
mod config;
mod exit;
mod http;
mod job;
mod lock;
mod metrics;
mod output;
mod progress;
mod repo;
mod retry;
mod run;
mod signals;
mod webhook;

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
