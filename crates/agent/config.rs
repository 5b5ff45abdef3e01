//! The configuration file (TOML). Every field is documented with its
//! default here and in docs/configuration.md; unknown fields are errors.
//! Secrets are not meant to live here: passwords come from libpq's sources
//! or `password_file`, AWS credentials from the standard AWS chain.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Deserializer};

use refugio_dump::snapshot::RowCountMode;
use refugio_dump::{Compression, DumpFormat};
use refugio_store::location::{ChecksumCalculation, S3Options};

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where backups are stored. Default: a directory `./refugio-backups`.
    #[serde(default)]
    pub repository: RepositoryConfig,
    /// What to back up. At least one job.
    #[serde(default)]
    pub jobs: Vec<JobConfig>,
    /// The long-running agent (`refugio run`). Defaults fit a systemd service.
    #[serde(default)]
    pub agent: AgentConfig,
}

/// `[agent]`: settings of `refugio run`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// HTTP address of `/metrics`, `/healthz`, `/readyz`. Default
    /// `127.0.0.1:9187`; `""` turns HTTP off.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Tasks (backup, drill, prune of any job) running at once. Default 2.
    #[serde(default = "two")]
    pub max_concurrent_tasks: usize,
    /// On SIGTERM/SIGINT, how long running tasks get to stop cleanly
    /// (abort uploads, drop scratch databases) before the agent exits. Default 60s.
    #[serde(default = "default_shutdown", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// `/readyz` also requires every job with an RPO target to meet it. Default false.
    #[serde(default)]
    pub ready_requires_rpo: bool,
    /// Jobs SIGUSR1 (backup) and SIGUSR2 (drill) act on. Default: all.
    #[serde(default)]
    pub signal_jobs: Vec<String>,
    /// Retry of failed tasks with exponential backoff (temporary errors only).
    #[serde(default)]
    pub backoff: refugio_schedule::Backoff,
    /// JSON POST on every failed task and on the first success after a
    /// failure: `{ url = "https://…", attempts = 3, timeout = "10s" }`.
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            listen: default_listen(),
            max_concurrent_tasks: 2,
            shutdown_timeout: default_shutdown(),
            ready_requires_rpo: false,
            signal_jobs: Vec::new(),
            backoff: refugio_schedule::Backoff::default(),
            webhook: None,
        }
    }
}

/// `webhook = { url = "https://…", attempts = 3, timeout = "10s" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// http:// or https:// URL; may carry a token (it is never logged).
    pub url: String,
    /// Delivery attempts. Default 3.
    #[serde(default = "three")]
    pub attempts: u32,
    /// Timeout of one attempt. Default 10s.
    #[serde(default = "ten_seconds", with = "humantime_serde")]
    pub timeout: Duration,
}

fn three() -> u32 {
    3
}
fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}

fn default_listen() -> String {
    "127.0.0.1:9187".into()
}
fn default_shutdown() -> Duration {
    Duration::from_secs(60)
}
fn two() -> usize {
    2
}

/// `[jobs.schedule]`: when `refugio run` backs up, drills and prunes a job.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Cron (5 fields, or 6 with seconds) or `{ every = "6h" }`. Default: none.
    #[serde(default)]
    pub backup: Option<refugio_schedule::TriggerSpec>,
    /// Restore drill of the latest backup. Default: none.
    #[serde(default)]
    pub drill: Option<refugio_schedule::TriggerSpec>,
    /// Retention (needs `retention`). Default: none.
    #[serde(default)]
    pub prune: Option<refugio_schedule::TriggerSpec>,
    /// IANA time zone of cron expressions. Default "UTC".
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Random delay in [0, jitter) before each scheduled run. Default 0.
    #[serde(default, with = "humantime_serde")]
    pub jitter: Option<Duration>,
    /// Drill each new backup right after it is committed. Default false.
    #[serde(default)]
    pub drill_after_backup: bool,
    /// At start, back up now when the newest backup in the repository is
    /// older than the backup schedule's interval. Default true.
    #[serde(default = "yes")]
    pub catch_up: bool,
}

impl ScheduleConfig {
    /// The time zone of cron expressions.
    pub fn tz(&self) -> Result<chrono_tz::Tz> {
        match &self.time_zone {
            None => Ok(chrono_tz::UTC),
            Some(name) => parse_tz(name),
        }
    }
}

/// `[repository]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    /// `s3://bucket/prefix`, `file:///abs/path` or a path. Default `./refugio-backups`.
    #[serde(default = "default_repository_url")]
    pub url: String,
    /// S3 region. Default: from the AWS chain (`AWS_REGION`, profile), else `us-east-1`.
    #[serde(default)]
    pub region: Option<String>,
    /// S3 endpoint for S3-compatible stores (MinIO, Garage, Ceph…). Default: AWS.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), needed by most
    /// S3-compatible stores. Default false.
    #[serde(default)]
    pub force_path_style: bool,
    /// The SDK's request checksum calculation: `when_supported` (default) or `when_required`.
    #[serde(default)]
    pub checksum_calculation: ChecksumSetting,
    /// Size of upload parts. Default `8MiB` (minimum `5MiB`); grows
    /// automatically for very large dumps so they stay under 10,000 parts.
    #[serde(default = "default_part_size", deserialize_with = "de_size")]
    pub part_size: u64,
    /// Parts uploaded at once. Default 3. Memory ≈ part_size × (this + 1).
    #[serde(default = "default_concurrency")]
    pub upload_concurrency: usize,
    /// Server-side encryption header: `AES256` or `aws:kms`. Default none.
    #[serde(default)]
    pub sse: Option<String>,
    /// KMS key id with `sse = "aws:kms"`. Default none (the bucket's key).
    #[serde(default)]
    pub sse_kms_key_id: Option<String>,
    /// S3 Object Lock on every artifact and manifest:
    /// `{ mode = "governance" | "compliance", days = N }`. Default none.
    /// The bucket must have been created with object lock enabled;
    /// `refugio config check` proves the store enforces it.
    #[serde(default)]
    pub object_lock: Option<ObjectLockConfig>,
}

/// `object_lock = { mode = "compliance", days = 30 }`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectLockConfig {
    pub mode: refugio_store::LockMode,
    /// Days each object stays undeletable after it is written. 1..=36500.
    pub days: u32,
}

impl ObjectLockConfig {
    /// The retention for an object written at `now`.
    pub fn retention(&self, now: chrono::DateTime<chrono::Utc>) -> refugio_store::Retention {
        refugio_store::Retention {
            mode: self.mode,
            until: now + chrono::Duration::days(i64::from(self.days)),
        }
    }
}

impl Default for RepositoryConfig {
    fn default() -> Self {
        RepositoryConfig {
            url: default_repository_url(),
            region: None,
            endpoint: None,
            force_path_style: false,
            checksum_calculation: ChecksumSetting::default(),
            part_size: default_part_size(),
            upload_concurrency: default_concurrency(),
            sse: None,
            sse_kms_key_id: None,
            object_lock: None,
        }
    }
}

/// `checksum_calculation`.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ChecksumSetting {
    #[default]
    WhenSupported,
    WhenRequired,
}

/// One `[[jobs]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    /// Job name: the repository folder. Letters, digits, `-`, `_`, `.`. Required.
    pub name: String,
    /// Source connection URL, libpq syntax (`postgres://user@host:5432/db`,
    /// unix socket: `?host=/run/postgresql`). Required. A password here
    /// works but is discouraged: use `password_file` or `PGPASSWORD`/`~/.pgpass`.
    pub source: String,
    /// Database to dump. Default: the URL's database.
    #[serde(default)]
    pub database: Option<String>,
    /// File whose first line is the password. Default none (libpq's sources).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// `custom` (default; pg_restore, parallel restore) or `plain` (SQL for `gunzip | psql`).
    #[serde(default = "default_format")]
    pub format: DumpFormat,
    /// `zstd` (default), `gzip` or `none`.
    #[serde(default = "default_compression")]
    pub compression: Compression,
    /// Compression level. Default: zstd 3, gzip 6.
    #[serde(default)]
    pub compression_level: Option<i32>,
    /// Also store `pg_dumpall --globals-only` (roles, tablespaces). Default true.
    #[serde(default = "yes")]
    pub globals: bool,
    /// Directory holding pg_dump/pg_dumpall to use (only that one).
    /// Default: search `/usr/lib/postgresql/*/bin`, then `PATH`, for the
    /// closest major version >= the server's.
    #[serde(default)]
    pub pg_bindir: Option<PathBuf>,
    /// Tables left out (`schema.table` or `table`, `*`/`?` globs): passed to
    /// pg_dump as `--exclude-table` and left out of the row counts. Default none.
    #[serde(default)]
    pub exclude_tables: Vec<String>,
    /// Extra pg_dump arguments, passed as they are (after refugio's own).
    /// refugio does not interpret them: an argument that leaves data out
    /// makes the manifest's row counts disagree with the dump. Default none.
    #[serde(default)]
    pub extra_args: Vec<String>,
    /// How long pg_dump (and refugio's snapshot) waits for a table lock
    /// before giving up; the backup is then retried. Default `30s`.
    #[serde(default = "default_lock_wait", with = "humantime_serde")]
    pub lock_wait_timeout: Duration,
    /// Attempts on a lock timeout or another temporary failure. Default 3.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// `exact` (default: `count(*)` per table in the snapshot) or `estimated` (`reltuples`).
    #[serde(default)]
    pub row_counts: RowCountMode,
    /// Where restore drills restore: a server URL where refugio may create
    /// and drop `refugio_drill_*` databases, or `"ephemeral"`: a throwaway
    /// cluster refugio starts itself (roles restored too). Default none
    /// (`refugio verify` then needs `--scratch`).
    #[serde(default)]
    pub scratch: Option<String>,
    /// When `refugio run` backs up, drills and prunes this job. Default: never.
    #[serde(default)]
    pub schedule: ScheduleConfig,
    /// Recovery targets checked by drills: `{ rpo = "6h", rto = "2h" }`. Default none.
    #[serde(default)]
    pub targets: Targets,
    /// SQL checks run on the restored database by drills; each must return
    /// one row with one true value. Default none.
    #[serde(default)]
    pub checks: Vec<String>,
    /// Parallel pg_restore jobs in drills. Default 1.
    #[serde(default = "one")]
    pub drill_jobs: u32,
    /// Retention policy applied by `refugio prune`. Default none (prune
    /// then refuses to run for this job).
    #[serde(default)]
    pub retention: Option<RetentionConfig>,
}

/// `retention = { keep_daily = 7, keep_weekly = 4, min_verified = 2 }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Newest N verified backups. Default 0.
    #[serde(default)]
    pub keep_last: u32,
    /// Newest verified backup in each of the last N hours/days/weeks/months/years. Default 0.
    #[serde(default)]
    pub keep_hourly: u32,
    #[serde(default)]
    pub keep_daily: u32,
    #[serde(default)]
    pub keep_weekly: u32,
    #[serde(default)]
    pub keep_monthly: u32,
    #[serde(default)]
    pub keep_yearly: u32,
    /// Every verified backup younger than this (e.g. "2d"). Default none.
    #[serde(default, with = "humantime_serde")]
    pub keep_within: Option<Duration>,
    /// Never fewer verified backups than this. Default 1.
    #[serde(default = "one")]
    pub min_verified: u32,
    /// IANA time zone of period boundaries, e.g. "Europe/Madrid". Default "UTC".
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Objects without a manifest and multipart uploads older than this are
    /// garbage-collected by prune. Default "24h".
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub gc_grace: Duration,
}

/// A `time_zone` value: an IANA zone name.
fn parse_tz(name: &str) -> Result<chrono_tz::Tz> {
    name.parse::<chrono_tz::Tz>().map_err(|_| {
        anyhow::anyhow!("time_zone {name:?} is not an IANA time zone (e.g. \"Europe/Madrid\")")
    })
}

impl RetentionConfig {
    /// The pure policy.
    pub fn policy(&self) -> Result<refugio_store::retention::Policy> {
        let tz = match &self.time_zone {
            Some(name) => Some(parse_tz(name)?),
            None => None,
        };
        let p = refugio_store::retention::Policy {
            keep_last: self.keep_last,
            keep_hourly: self.keep_hourly,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            keep_yearly: self.keep_yearly,
            keep_within: self.keep_within,
            min_verified: self.min_verified,
            tz,
        };
        let rules_empty = refugio_store::retention::Policy {
            min_verified: 0,
            ..p.clone()
        }
        .is_empty();
        if rules_empty {
            bail!("the policy has no keep rule (keep_last, keep_hourly … keep_yearly, keep_within): it would keep only min_verified backups; say so with keep_last instead");
        }
        Ok(p)
    }
}

fn default_grace() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// `targets = { rpo = "6h", rto = "2h" }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Targets {
    /// Largest acceptable age of the newest verified backup.
    #[serde(default, with = "humantime_serde")]
    pub rpo: Option<Duration>,
    /// Longest acceptable restore (fetch to end of checks).
    #[serde(default, with = "humantime_serde")]
    pub rto: Option<Duration>,
}

fn default_repository_url() -> String {
    "./refugio-backups".into()
}
fn default_part_size() -> u64 {
    8 * 1024 * 1024
}
fn default_concurrency() -> usize {
    3
}
fn default_format() -> DumpFormat {
    DumpFormat::Custom
}
fn default_compression() -> Compression {
    Compression::Zstd
}
fn yes() -> bool {
    true
}
fn default_lock_wait() -> Duration {
    Duration::from_secs(30)
}
fn default_attempts() -> u32 {
    3
}
fn one() -> u32 {
    1
}

/// Parses `"8MiB"`, `"16 MB"`, `"5242880"` or a TOML integer.
fn de_size<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(u64),
        S(String),
    }
    match Raw::deserialize(d)? {
        Raw::N(n) => Ok(n),
        Raw::S(s) => parse_size(&s).map_err(serde::de::Error::custom),
    }
}

/// `"8MiB"` → 8388608.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected e.g. \"8MiB\""))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => {
            return Err(format!(
                "invalid size unit {other:?} in {s:?} (use B, KiB, MiB, GiB, KB, MB, GB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

impl Config {
    /// Reads and validates a file; errors name the file and the field.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        let cfg: Config = toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "config file {}: {}",
                path.display(),
                e.to_string().trim_end()
            )
        })?;
        cfg.validate()
            .with_context(|| format!("config file {}", path.display()))?;
        Ok(cfg)
    }

    /// Checks what serde cannot: names, sizes, duplicates.
    pub fn validate(&self) -> Result<()> {
        let r = &self.repository;
        if (r.part_size as usize) < refugio_store::MIN_PART_SIZE {
            bail!(
                "repository.part_size: {} bytes is below S3's minimum of 5MiB",
                r.part_size
            );
        }
        if r.part_size as usize > refugio_store::MAX_PART_SIZE {
            bail!(
                "repository.part_size: {} bytes is above S3's maximum of 5GiB",
                r.part_size
            );
        }
        if r.upload_concurrency == 0 || r.upload_concurrency > 64 {
            bail!(
                "repository.upload_concurrency: {} is not within 1..=64",
                r.upload_concurrency
            );
        }
        let location =
            refugio_store::RepositoryLocation::parse(&r.url).context("repository.url")?;
        if let Some(lock) = &r.object_lock {
            if !matches!(location, refugio_store::RepositoryLocation::S3 { .. }) {
                bail!(
                    "repository.object_lock: object lock needs an S3 repository; {} is not one",
                    r.url
                );
            }
            if !(1..=36500).contains(&lock.days) {
                bail!(
                    "repository.object_lock.days: {} is not within 1..=36500",
                    lock.days
                );
            }
        }
        let a = &self.agent;
        if !a.listen.is_empty() && a.listen.parse::<std::net::SocketAddr>().is_err() {
            bail!(
                "agent.listen: {:?} is not an address:port (e.g. \"127.0.0.1:9187\"; \"\" turns HTTP off)",
                a.listen
            );
        }
        if a.max_concurrent_tasks == 0 {
            bail!("agent.max_concurrent_tasks: must be at least 1");
        }
        for name in &a.signal_jobs {
            if !self.jobs.iter().any(|j| &j.name == name) {
                bail!("agent.signal_jobs: no job named {name:?}");
            }
        }
        if let Some(w) = &a.webhook {
            crate::webhook::Webhook::new(w)?;
        }
        let mut seen = std::collections::HashSet::new();
        for (i, j) in self.jobs.iter().enumerate() {
            if !refugio_store::repo::valid_segment(&j.name) {
                bail!("jobs[{i}].name: {:?} must be 1-128 letters, digits, '-', '_' or '.', not starting with '.'", j.name);
            }
            if !seen.insert(&j.name) {
                bail!("jobs[{i}].name: {:?} is used by two jobs", j.name);
            }
            refugio_dump::SourceSpec::new(&j.source, j.database.as_deref(), None)
                .with_context(|| format!("jobs[{i}] ({}).source", j.name))?;
            if let Some(l) = j.compression_level {
                let ok = match j.compression {
                    Compression::Zstd => (1..=22).contains(&l),
                    Compression::Gzip => (0..=9).contains(&l),
                    Compression::None => false,
                };
                if !ok {
                    bail!(
                        "jobs[{i}] ({}).compression_level: {l} is not valid for {}",
                        j.name,
                        j.compression.as_str()
                    );
                }
            }
            if let Some(scratch) = j.scratch.as_deref().filter(|s| *s != "ephemeral") {
                refugio_dump::SourceSpec::new(scratch, None, None)
                    .with_context(|| format!("jobs[{i}] ({}).scratch", j.name))?;
            }
            if let Some(r) = &j.retention {
                r.policy()
                    .with_context(|| format!("jobs[{i}] ({}).retention", j.name))?;
            }
            let sched = &j.schedule;
            let tz = sched
                .tz()
                .with_context(|| format!("jobs[{i}] ({}).schedule.time_zone", j.name))?;
            for (what, spec) in [
                ("backup", &sched.backup),
                ("drill", &sched.drill),
                ("prune", &sched.prune),
            ] {
                if let Some(spec) = spec {
                    spec.resolve(tz)
                        .with_context(|| format!("jobs[{i}] ({}).schedule.{what}", j.name))?;
                }
            }
            if (sched.drill.is_some() || sched.drill_after_backup) && j.scratch.is_none() {
                bail!(
                    "jobs[{i}] ({}).schedule: drills are scheduled but the job has no `scratch` (a server URL or \"ephemeral\")",
                    j.name
                );
            }
            if sched.prune.is_some() && j.retention.is_none() {
                bail!(
                    "jobs[{i}] ({}).schedule.prune: the job has no `retention` policy",
                    j.name
                );
            }
            if j.attempts == 0 {
                bail!("jobs[{i}] ({}).attempts: must be at least 1", j.name);
            }
        }
        Ok(())
    }

    /// The job named `name`, or the only job when `name` is None.
    pub fn job(&self, name: Option<&str>) -> Result<&JobConfig> {
        match name {
            Some(n) => self.jobs.iter().find(|j| j.name == n).with_context(|| {
                format!(
                    "no job named {n:?} in the config (jobs: {})",
                    self.jobs
                        .iter()
                        .map(|j| j.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }),
            None => match self.jobs.as_slice() {
                [one] => Ok(one),
                [] => bail!("the config has no [[jobs]]"),
                many => bail!(
                    "the config has several jobs ({}); choose one with --job",
                    many.iter()
                        .map(|j| j.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
        }
    }
}

impl RepositoryConfig {
    /// Options for the S3 backend.
    pub fn s3_options(&self) -> S3Options {
        S3Options {
            region: self.region.clone(),
            endpoint: self.endpoint.clone(),
            force_path_style: self.force_path_style,
            checksum_calculation: match self.checksum_calculation {
                ChecksumSetting::WhenSupported => ChecksumCalculation::WhenSupported,
                ChecksumSetting::WhenRequired => ChecksumCalculation::WhenRequired,
            },
            sse: self.sse.clone(),
            sse_kms_key_id: self.sse_kms_key_id.clone(),
            versioned_deletes: self.object_lock.is_some(),
            ..S3Options::default()
        }
    }
}

/// A job built from command-line flags alone (zero-config start).
pub fn adhoc_job(source: &str, name: Option<&str>) -> Result<JobConfig> {
    let spec = refugio_dump::SourceSpec::new(source, None, None).context("--source")?;
    let db = spec.database().unwrap_or_else(|| "postgres".into());
    let name = match name {
        Some(n) => n.to_string(),
        None => {
            let cleaned: String = db
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            if refugio_store::repo::valid_segment(&cleaned) {
                cleaned
            } else {
                "default".into()
            }
        }
    };
    let toml = format!("name = {name:?}\nsource = {source:?}\n");
    let job: JobConfig = toml::from_str(&toml).context("building the job from --source")?;
    Ok(job)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("refugio.example.toml");
        let cfg = Config::load(&path).unwrap();
        assert!(!cfg.jobs.is_empty());
        assert!(cfg.repository.url.starts_with("s3://"));
    }

    /// The configs shipped for the container and systemd load and validate
    /// (schedules, agent settings), so deployments start from a good file.
    #[test]
    fn shipped_deployment_configs_validate() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for file in ["docker/refugio.toml", "systemd/refugio.toml.example"] {
            let cfg = Config::load(&root.join(file)).unwrap_or_else(|e| panic!("{file}: {e:#}"));
            assert!(!cfg.jobs.is_empty(), "{file}");
            assert!(
                cfg.jobs.iter().any(|j| j.schedule.backup.is_some()),
                "{file}: no backup schedule"
            );
        }
    }

    #[test]
    fn schedules_and_agent_settings_are_checked() {
        let base = "[[jobs]]\nname = \"a\"\nsource = \"postgres://h/db\"\n";
        let load = |extra: &str| -> Result<Config> {
            let cfg: Config = toml::from_str(&format!("{base}{extra}"))?;
            cfg.validate()?;
            Ok(cfg)
        };
        let unknown = load("[jobs.schedule]\nbackup = \"0 */6 * * *\"\nprune = { every = \"1d\" }\nretention_placeholder = 1\n");
        assert!(
            unknown.is_err(),
            "unknown field in schedule must be refused"
        );
        let cfg =
            load("[jobs.schedule]\nbackup = \"0 */6 * * *\"\ntime_zone = \"Europe/Madrid\"\n")
                .expect("valid");
        assert!(cfg.jobs[0].schedule.catch_up);
        let e = format!(
            "{:#}",
            load("[jobs.schedule]\nbackup = \"0 */6 * *\"\n").unwrap_err()
        );
        assert!(e.contains("0 */6 * *"), "{e}");
        let e = format!(
            "{:#}",
            load("[jobs.schedule]\ndrill = { every = \"1h\" }\n").unwrap_err()
        );
        assert!(e.contains("scratch"), "{e}");
        let e = format!(
            "{:#}",
            load("[jobs.schedule]\nprune = { every = \"1h\" }\n").unwrap_err()
        );
        assert!(e.contains("retention"), "{e}");
        let e = format!(
            "{:#}",
            load("[jobs.schedule]\ntime_zone = \"Mars/Olympus\"\n").unwrap_err()
        );
        assert!(e.contains("Mars/Olympus"), "{e}");
        let agent = |a: &str| -> Result<Config> {
            let cfg: Config = toml::from_str(&format!("[agent]\n{a}\n{base}"))?;
            cfg.validate()?;
            Ok(cfg)
        };
        assert!(
            format!("{:#}", agent("listen = \"localhost\"").unwrap_err()).contains("agent.listen")
        );
        assert!(format!("{:#}", agent("signal_jobs = [\"b\"]").unwrap_err()).contains("\"b\""));
        assert!(format!(
            "{:#}",
            agent("webhook = { url = \"ftp://x\" }").unwrap_err()
        )
        .contains("webhook"));
        assert!(agent("webhook = { url = \"https://hooks.example.com/x\" }").is_ok());
        assert_eq!(agent("").expect("defaults").agent.listen, "127.0.0.1:9187");
    }

    #[test]
    fn object_lock_needs_s3_and_sane_days() {
        let e = toml::from_str::<Config>(
            "[repository]\nurl = \"/tmp/x\"\nobject_lock = { mode = \"compliance\", days = 7 }\n",
        )
        .map_err(anyhow::Error::from)
        .and_then(|c| c.validate().map(|_| c))
        .unwrap_err();
        assert!(format!("{e:#}").contains("S3"), "{e:#}");
        let e = toml::from_str::<Config>(
            "[repository]\nurl = \"s3://b/p\"\nobject_lock = { mode = \"compliance\", days = 0 }\n",
        )
        .map_err(anyhow::Error::from)
        .and_then(|c| c.validate().map(|_| c))
        .unwrap_err();
        assert!(format!("{e:#}").contains("days"), "{e:#}");
        let e = toml::from_str::<Config>(
            "[repository]\nurl = \"s3://b/p\"\nobject_lock = { mode = \"forever\", days = 3 }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("forever"), "{e}");
    }

    #[test]
    fn unknown_fields_are_named() {
        let e = toml::from_str::<Config>("[repository]\nurl = \"x\"\npart_sise = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("part_sise"), "{e}");
        let e = toml::from_str::<Config>(
            "[[jobs]]\nname = \"a\"\nsource = \"postgres://h/db\"\ncompresion = \"zstd\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("compresion"), "{e}");
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("8MiB").unwrap(), 8 << 20);
        assert_eq!(parse_size("16 MB").unwrap(), 16_000_000);
        assert_eq!(parse_size("5242880").unwrap(), 5 << 20);
        assert!(parse_size("8 parsecs").is_err());
        let cfg: Config = toml::from_str(
            "[repository]\npart_size = \"16MiB\"\n[[jobs]]\nname = \"a\"\nsource = \"postgres://h/db\"\nlock_wait_timeout = \"90s\"\n",
        )
        .unwrap();
        assert_eq!(cfg.repository.part_size, 16 << 20);
        assert_eq!(cfg.jobs[0].lock_wait_timeout, Duration::from_secs(90));
        assert_eq!(cfg.jobs[0].format, DumpFormat::Custom);
        assert!(cfg.jobs[0].globals);
    }

    #[test]
    fn validation_names_the_field() {
        let cfg: Config = toml::from_str("[repository]\npart_size = \"1MiB\"\n").unwrap();
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("repository.part_size"));
        let cfg: Config = toml::from_str(
            "[[jobs]]\nname = \"a\"\nsource = \"postgres://h/db\"\n[[jobs]]\nname = \"a\"\nsource = \"postgres://h/db\"\n",
        )
        .unwrap();
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("jobs[1].name"));
        let cfg: Config =
            toml::from_str("[[jobs]]\nname = \"a/b\"\nsource = \"postgres://h/db\"\n").unwrap();
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("jobs[0].name"));
    }

    #[test]
    fn adhoc_job_takes_the_database_name() {
        let j = adhoc_job("postgres://u:pw@h/trips", None).unwrap();
        assert_eq!(j.name, "trips");
        let j = adhoc_job("postgres://u@h/my%20db", None).unwrap();
        assert_eq!(j.name, "my_db");
    }
}
