//! End-to-end tests of the `refugio` binary against real PostgreSQL
//! clusters (15 and 16) and real S3 servers (moto, Garage) started by
//! `scripts/services start` (or `scripts/test`).

mod agent;
mod agent_signals;
mod alerting;
mod authentication;
mod check;
mod child_env;
mod clocks;
mod common;
mod container;
mod drill;
mod encryption;
mod exclude;
mod failures;
mod faults;
mod hostile;
mod hygiene;
mod job_lock;
mod locale;
mod lock;
mod memory;
mod mid_stream;
mod outcomes;
mod password_isolation;
mod pg_tls;
mod pitr;
mod progress;
mod prune;
mod rate_limit;
mod replica_lag;
mod restore_signal;
mod roundtrip;
mod s3_options;
mod schema_limits;
mod secrets;
mod server_jobs;
mod snapshot_metrics;
mod snapshot_support;
mod snapshots;
mod status;
mod status_page;
mod store_faults;
mod target_identity;
mod walkthrough;
mod zero_config;
