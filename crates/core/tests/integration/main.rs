//! refugio-core's operations called directly, as a library user calls
//! them: against a directory repository and throwaway PostgreSQL clusters
//! (testkit), with a fixed clock where time decides (backup ids, drills,
//! RPO, retention, grace periods). No binary, no config file.
//!
//! Needs PostgreSQL 16's binaries (`scripts/install-test-deps`).

mod common;
mod logical;
mod repository;
