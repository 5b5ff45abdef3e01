//! The configuration file (TOML), one module per section. Every field is
//! documented with its default here and in docs/configuration.md; unknown
//! fields are errors. Secrets are not meant to live here: passwords come
//! from libpq's sources or `password_file`, AWS credentials from the
//! standard AWS chain.

mod agent;
mod authentication;
mod encryption;
pub mod job;
pub mod repository;
pub mod restore_signal;
mod retention;
mod schedule;
mod values;

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::job::Job;

pub use agent::AgentConfig;
pub use job::{adhoc_job, wal_fetch_command, JobConfig};
pub use repository::RepositoryConfig;
pub use retention::RetentionConfig;

/// The file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
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

/// The configuration in force: the file checked, its jobs resolved once
/// (at load, and again on every reload).
#[derive(Debug, Clone)]
pub struct Config {
    pub repository: RepositoryConfig,
    pub jobs: Vec<Job>,
    pub agent: AgentConfig,
}

impl Config {
    /// Reads, checks and resolves a file; errors name the file and the field.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        Config::parse(&text, Some(path)).with_context(|| format!("config file {}", path.display()))
    }

    /// Parses, checks and resolves the text of a file read from `path`
    /// (a physical job's restored clusters fetch WAL through it).
    pub fn parse(text: &str, path: Option<&Path>) -> Result<Config> {
        // TOML's message quotes the offending line, which may be a URL
        // with a password.
        let file: ConfigFile = toml::from_str(text).map_err(|e| {
            anyhow::anyhow!("{}", refugio_print::redact_text(e.to_string().trim_end()))
        })?;
        Config::resolve(file, path)
    }

    /// No config file: every default, no jobs.
    pub fn empty() -> Config {
        Config {
            repository: Default::default(),
            jobs: Vec::new(),
            agent: Default::default(),
        }
    }

    /// Checks what serde cannot (names, sizes, duplicates, what one
    /// setting needs of another) and resolves every job.
    pub fn resolve(file: ConfigFile, path: Option<&Path>) -> Result<Config> {
        let ConfigFile {
            repository,
            jobs,
            agent,
        } = file;
        check_repository(&repository, &jobs)?;
        check_agent(&agent, &jobs)?;
        let mut seen = std::collections::HashSet::new();
        for (i, j) in jobs.iter().enumerate() {
            if !refugio_store::repo::valid_segment(&j.name) {
                bail!("jobs[{i}].name: {:?} must be 1-128 letters, digits, '-', '_' or '.', not starting with '.'", j.name);
            }
            if !seen.insert(&j.name) {
                bail!("jobs[{i}].name: {:?} is used by two jobs", j.name);
            }
        }
        let jobs = jobs
            .iter()
            .enumerate()
            .map(|(i, j)| Job::resolve(i, j, &repository, path))
            .collect::<Result<Vec<Job>>>()?;
        Ok(Config {
            repository,
            jobs,
            agent,
        })
    }

    /// The job named `name`, or the only job when `name` is None.
    pub fn job(&self, name: Option<&str>) -> Result<&Job> {
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

/// The `[repository]` table; `jobs` for the settings that name them.
fn check_repository(r: &RepositoryConfig, jobs: &[JobConfig]) -> Result<()> {
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
    if !(1..=100).contains(&r.attempts) {
        bail!(
            "repository.attempts: {} is not within 1..=100 (the first attempt counts)",
            r.attempts
        );
    }
    for (field, value) in [
        ("connect_timeout", r.connect_timeout),
        ("operation_timeout", r.operation_timeout),
    ] {
        if value.is_zero() {
            bail!("repository.{field}: must be longer than 0s");
        }
    }
    if let Some(e) = &r.encryption {
        e.recipients()?;
    }
    if let Some(a) = &r.authentication {
        let physical: Vec<&str> = jobs
            .iter()
            .filter(|j| j.kind == refugio_core::JobKind::Physical)
            .map(|j| j.name.as_str())
            .collect();
        a.validate(&physical)?;
    }
    let location = refugio_store::RepositoryLocation::parse(&r.url).context("repository.url")?;
    let on_s3 = matches!(location, refugio_store::RepositoryLocation::S3 { .. });
    for (field, set) in [
        ("storage_class", r.storage_class.is_some()),
        ("ca_file", r.ca_file.is_some()),
    ] {
        if set && !on_s3 {
            bail!(
                "repository.{field}: only S3 repositories have it; {} is a directory",
                refugio_print::redact_url(&r.url)
            );
        }
    }
    if let Some(class) = &r.storage_class {
        if class.is_empty()
            || !class
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        {
            bail!(
                "repository.storage_class: {class:?} is not an S3 storage class name (e.g. \"STANDARD_IA\", \"GLACIER_IR\", \"INTELLIGENT_TIERING\")"
            );
        }
    }
    if let (Some(rate), true) = (r.upload_rate_limit, on_s3) {
        // Parts in flight share the rate: each takes this long to send,
        // and one attempt may take at most operation_timeout.
        let per_part = r.part_size as f64 * r.upload_concurrency as f64 / rate as f64;
        if per_part >= r.operation_timeout.as_secs_f64() {
            bail!(
                "repository.upload_rate_limit: at {rate} bytes/s, {} parts of {} bytes in flight take {per_part:.0}s each to send, more than operation_timeout ({}s); raise operation_timeout, or lower part_size or upload_concurrency",
                r.upload_concurrency,
                r.part_size,
                r.operation_timeout.as_secs()
            );
        }
    }
    if let Some(lock) = &r.object_lock {
        if !matches!(location, refugio_store::RepositoryLocation::S3 { .. }) {
            bail!(
                "repository.object_lock: object lock needs an S3 repository; {} is not one",
                refugio_print::redact_url(&r.url)
            );
        }
        if !(1..=36500).contains(&lock.days) {
            bail!(
                "repository.object_lock.days: {} is not within 1..=36500",
                lock.days
            );
        }
    }
    Ok(())
}

/// The `[agent]` table.
fn check_agent(a: &AgentConfig, jobs: &[JobConfig]) -> Result<()> {
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
        if !jobs.iter().any(|j| &j.name == name) {
            bail!("agent.signal_jobs: no job named {name:?}");
        }
    }
    if let Some(w) = &a.webhook {
        crate::webhook::Webhook::new(w)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::repository::parse_size;
    use super::*;
    use refugio_dump::DumpFormat;
    use std::time::Duration;

    #[rstest::rstest]
    #[case("50MiB/s", Ok(50 << 20))]
    #[case("500KiB/s", Ok(500 << 10))]
    #[case("10MB/s", Ok(10_000_000))]
    #[case(" 2 MiB/s ", Ok(2 << 20))]
    #[case("1000/s", Err("below the minimum"))]
    #[case("50MiB", Err("e.g. \"50MiB/s\""))]
    #[case("50Mbit/s", Err("invalid size unit"))]
    #[case("fast/s", Err("invalid size"))]
    fn upload_rates(#[case] text: &str, #[case] expected: std::result::Result<u64, &str>) {
        match (super::repository::parse_rate(text), expected) {
            (Ok(rate), Ok(want)) => assert_eq!(rate, want, "{text}"),
            (Err(e), Err(want)) => assert!(e.contains(want), "{text}: {e}"),
            (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
        }
    }

    /// The S3 options are checked against the repository they are for,
    /// and errors name the field.
    #[test]
    fn s3_options_are_checked() {
        let load = |repo: &str| -> Result<Config> {
            let cfg = Config::parse(repo, None)?;
            Ok(cfg)
        };
        let s3 = "[repository]\nurl = \"s3://b/p\"\n";
        let cfg = load(&format!(
            "{s3}storage_class = \"STANDARD_IA\"\nca_file = \"/etc/ca.pem\"\nupload_rate_limit = \"50MiB/s\"\n"
        ))
        .expect("valid");
        let opts = cfg.repository.s3_options(None);
        assert_eq!(opts.storage_class.as_deref(), Some("STANDARD_IA"));
        assert_eq!(opts.upload_rate_limit, Some(50 << 20));
        let dir = "[repository]\nurl = \"/srv/backups\"\n";
        for field in [
            "storage_class = \"STANDARD_IA\"",
            "ca_file = \"/etc/ca.pem\"",
        ] {
            let e = format!("{:#}", load(&format!("{dir}{field}\n")).unwrap_err());
            assert!(e.contains("only S3 repositories"), "{e}");
        }
        // A directory takes a rate limit.
        assert!(load(&format!("{dir}upload_rate_limit = \"1MiB/s\"\n")).is_ok());
        let e = format!(
            "{:#}",
            load(&format!("{s3}storage_class = \"standard ia\"\n")).unwrap_err()
        );
        assert!(e.contains("repository.storage_class"), "{e}");
        let e = format!(
            "{:#}",
            load(&format!("{s3}upload_rate_limit = \"fast\"\n")).unwrap_err()
        );
        assert!(e.contains("repository.upload_rate_limit"), "{e}");
        // 3 parts of 8 MiB at 64 KiB/s: 384 s each, beyond operation_timeout.
        let e = format!(
            "{:#}",
            load(&format!("{s3}upload_rate_limit = \"64KiB/s\"\n")).unwrap_err()
        );
        assert!(e.contains("operation_timeout"), "{e}");
    }

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
                cfg.jobs.iter().any(|j| j.config.schedule.backup.is_some()),
                "{file}: no backup schedule"
            );
        }
    }

    #[test]
    fn schedules_and_agent_settings_are_checked() {
        let base = "[[jobs]]\nname = \"a\"\nsource = \"postgres://h/db\"\n";
        let load = |extra: &str| -> Result<Config> {
            let cfg = Config::parse(&format!("{base}{extra}"), None)?;
            Ok(cfg)
        };
        // A valid schedule, and the same with one unknown field: only the
        // field makes the difference, and the error names it.
        let schedule = "[jobs.schedule]\nbackup = \"0 */6 * * *\"\n";
        load(schedule).expect("the schedule without the unknown field is valid");
        let unknown = load(&format!("{schedule}retention_placeholder = 1\n"))
            .expect_err("unknown field in schedule must be refused");
        assert!(
            format!("{unknown:#}").contains("retention_placeholder"),
            "{unknown:#}"
        );
        let cfg =
            load("[jobs.schedule]\nbackup = \"0 */6 * * *\"\ntime_zone = \"Europe/Madrid\"\n")
                .expect("valid");
        assert!(cfg.jobs[0].config.schedule.catch_up);
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
            let cfg = Config::parse(&format!("[agent]\n{a}\n{base}"), None)?;
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
        let e = Config::parse(
            "[repository]\nurl = \"/tmp/x\"\nobject_lock = { mode = \"compliance\", days = 7 }\n",
            None,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("S3"), "{e:#}");
        let e = Config::parse(
            "[repository]\nurl = \"s3://b/p\"\nobject_lock = { mode = \"compliance\", days = 0 }\n",
            None,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("days"), "{e:#}");
        let e = toml::from_str::<ConfigFile>(
            "[repository]\nurl = \"s3://b/p\"\nobject_lock = { mode = \"forever\", days = 3 }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("forever"), "{e}");
    }

    #[test]
    fn unknown_fields_are_named() {
        let e = toml::from_str::<ConfigFile>("[repository]\nurl = \"x\"\npart_sise = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("part_sise"), "{e}");
        let e = toml::from_str::<ConfigFile>(
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
        let cfg: ConfigFile = toml::from_str(
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
        assert!(Config::parse("[repository]\npart_size = \"1MiB\"\n", None)
            .unwrap_err()
            .to_string()
            .contains("repository.part_size"));
        assert!(Config::parse(
            "[[jobs]]\nname = \"a\"\nsource = \"postgres://h/db\"\n[[jobs]]\nname = \"a\"\nsource = \"postgres://h/db\"\n",
            None,
        )
        .unwrap_err()
            .to_string()
            .contains("jobs[1].name"));
        assert!(Config::parse(
            "[[jobs]]\nname = \"a/b\"\nsource = \"postgres://h/db\"\n",
            None
        )
        .unwrap_err()
        .to_string()
        .contains("jobs[0].name"));
    }

    /// Debug output of the config and of each part holding a secret: no
    /// password (userinfo, `?password=`), no webhook token.
    #[test]
    fn debug_output_carries_no_secrets() {
        let cfg = Config::parse(
            "[repository]\nurl = \"s3://b/p\"\nendpoint = \"https://key:hunter2@minio.example\"\n\
             [agent]\nwebhook = { url = \"https://hooks.example.com/services/hunter2\" }\n\
             [[jobs]]\nname = \"a\"\nsource = \"postgres://u:hunter2@h/db?sslmode=require\"\n\
             scratch = \"postgres://u@s/postgres?password=hunter2\"\n\
             extra_args = [\"--dbname=host=h password=hunter2\"]\n",
            None,
        )
        .unwrap();
        for text in [
            format!("{cfg:?}"),
            format!("{:?}", cfg.jobs[0]),
            format!("{:?}", cfg.repository),
            format!("{:?}", cfg.agent),
        ] {
            assert!(!text.contains("hunter2"), "{text}");
        }
        let job = format!("{:?}", cfg.jobs[0]);
        assert!(
            job.contains("postgres://u:***@h/db?sslmode=require"),
            "{job}"
        );
        assert!(job.contains("s/postgres?password=***"), "{job}");
        assert!(format!("{:?}", cfg.repository).contains("minio.example"));
    }

    /// A config file TOML cannot parse: the message quotes the line, less
    /// its password.
    #[test]
    fn a_broken_line_is_quoted_without_its_password() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("refugio.toml");
        for line in [
            "source = \"postgres://u:hunter2@h/db",
            "source = \"postgres://u@h/db?password=hunter2",
        ] {
            std::fs::write(&path, format!("[[jobs]]\nname = \"a\"\n{line}\n")).unwrap();
            let e = format!("{:#}", Config::load(&path).unwrap_err());
            assert!(e.contains("postgres://u"), "the line is quoted: {e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn adhoc_job_takes_the_database_name() {
        let j = adhoc_job("postgres://u:pw@h/trips", None).unwrap();
        assert_eq!(j.name, "trips");
        let j = adhoc_job("postgres://u@h/my%20db", None).unwrap();
        assert_eq!(j.name, "my_db");
    }
}
