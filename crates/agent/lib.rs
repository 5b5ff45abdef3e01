//! The `refugio` binary's library, wiring only: the command line, the
//! configuration file resolved into jobs and mapped to the options of
//! refugio-core's operations, the long-running agent (`refugio run`:
//! scheduler wiring, signals, advisory locks, HTTP metrics and health,
//! webhook) and the output of each command. `main.rs` only starts it.
//!
//! A library so the end-to-end tests can resolve a job from a real config
//! file and call an operation in-process with a fixed clock.
//!
//! Exit codes: the table in `exit.rs` (`exit::CODES`).

pub mod cli;
pub mod commands;
pub mod config;
#[cfg(test)]
mod docs_tests;
pub mod exit;
mod http;
pub mod job;
mod metrics;
mod objectives;
mod output;
mod page;
mod progress;
pub mod repo;
mod run;
mod signals;
mod task;
mod webhook;
