//! A job, resolved once: a `[[jobs]]` entry checked and lowered into what
//! the operations take, when the configuration is loaded (and on every
//! reload). The commands and the agent's tasks take a `&Job`; each option
//! struct of an operation is built from the configuration here and
//! nowhere else.
//!
//! Secrets are read when used, not at load: the source's and the
//! scratch's password files and the decryption keys are read by each
//! operation, so a rotated file needs no reload.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use refugio_core::wal::{WalFetchOptions, WalPushOptions};
use refugio_core::{
    BackupOptions, CheckOptions, DrillOptions, JobKind, LogicalOptions, PruneOptions, Scratch,
};
use refugio_dump::pattern::DatabaseScope;
use refugio_dump::{Compression, DumpFormat, SourceSpec};
use refugio_schedule::{TaskKind, Trigger};

use crate::config::job::{wal_fetch_command, JobConfig};
use crate::config::repository::RepositoryConfig;

/// One job of the configuration, checked and resolved.
#[derive(Debug, Clone)]
pub struct Job {
    /// The job's name: its folder in the repository.
    pub name: String,
    pub kind: JobKind,
    /// The entry as written (for the settings that need no resolving).
    pub config: JobConfig,
    /// A whole-server job's databases; None for a one-database job.
    pub scope: Option<DatabaseScope>,
    /// The tasks `refugio run` schedules, their cron expressions
    /// evaluated in the job's time zone.
    pub triggers: Vec<(TaskKind, Trigger)>,
    /// The retention policy, checked; None: the job is not pruned.
    pub retention: Option<refugio_store::retention::Policy>,
    /// The repository settings a backup's upload and a drill's keys use.
    repository: RepositoryConfig,
    /// The configuration file (a physical job's restored clusters fetch
    /// WAL through it).
    config_path: Option<PathBuf>,
}

impl Job {
    /// Checks the `i`th `[[jobs]]` entry and resolves it; errors name the
    /// entry (`jobs[i] (name)`) and the field.
    pub fn resolve(
        i: usize,
        j: &JobConfig,
        repository: &RepositoryConfig,
        config_path: Option<&Path>,
    ) -> Result<Job> {
        let at = format!("jobs[{i}] ({})", j.name);
        SourceSpec::new(&j.source, j.database.as_deref(), None)
            .and_then(|s| s.with_tls(&j.tls()))
            .with_context(|| format!("{at}.source"))?;
        check_scope(&at, j)?;
        if j.kind == JobKind::Physical {
            check_physical(&at, j)?;
        }
        check_compression(&at, j)?;
        check_scratch(&at, j)?;
        let retention = match &j.retention {
            Some(r) => Some(r.policy().with_context(|| format!("{at}.retention"))?),
            None => None,
        };
        let triggers = resolve_schedule(&at, j)?;
        if let Some(r) = &j.restore_on_signal {
            let source = j.source_spec()?;
            r.validate(&source, j.databases.is_some())
                .with_context(|| format!("{at}.restore_on_signal"))?;
        }
        if j.attempts == 0 {
            bail!("{at}.attempts: must be at least 1");
        }
        Ok(Job {
            name: j.name.clone(),
            kind: j.kind,
            config: j.clone(),
            scope: j.databases.as_ref().map(|include| DatabaseScope {
                include: include.clone(),
                exclude: j.exclude_databases.clone(),
            }),
            triggers,
            retention,
            repository: repository.clone(),
            config_path: config_path.map(Path::to_path_buf),
        })
    }

    /// The source, with its password (read now: `password_file`, the
    /// URL's, or `PGPASSWORD`).
    pub fn source(&self) -> Result<SourceSpec> {
        self.config.source_spec()
    }

    /// The job's source cluster as it is now, by its system identifier,
    /// for a restore to refuse writing into. None when the source cannot
    /// be asked (logged): the backup's manifest still names its source.
    pub async fn source_cluster(&self) -> Option<refugio_core::restore::identity::SourceCluster> {
        let spec = self.source().ok()?;
        match refugio_core::restore::identity::system_identifier(&spec).await {
            Ok(system_identifier) => Some(refugio_core::restore::identity::SourceCluster {
                system_identifier,
                name: format!("job {}'s source {}", self.name, spec.redacted()),
            }),
            Err(e) => {
                tracing::warn!(job = %self.name, source = %spec.redacted(),
                    error = %refugio_print::chain(&e), "source-unidentified");
                None
            }
        }
    }

    /// How `refugio backup` retries a lock timeout or another temporary
    /// failure: `attempts` in all, 2 s, 4 s, 8 s… between them. (The agent
    /// retries with `agent.backoff`.)
    pub fn backoff(&self) -> refugio_schedule::Backoff {
        refugio_schedule::Backoff {
            attempts: self.config.attempts,
            initial: std::time::Duration::from_secs(2),
            max: std::time::Duration::from_secs(10),
        }
    }

    /// Where this job's drills restore: `scratch`; a physical job's are
    /// always an ephemeral cluster.
    pub fn drill_scratch(&self) -> Option<&str> {
        self.config.drill_scratch()
    }

    /// Options of one backup attempt (`attempt` counts from 1).
    pub fn backup_options(&self, attempt: u32) -> Result<BackupOptions> {
        let (j, repo) = (&self.config, &self.repository);
        Ok(BackupOptions {
            job: self.name.clone(),
            kind: self.kind,
            source: self.source()?,
            compression: j.compression,
            compression_level: j.compression_level,
            pg_bindir: j.pg_bindir.clone(),
            part_size: usize::try_from(repo.part_size).unwrap_or(usize::MAX),
            upload_concurrency: repo.upload_concurrency,
            object_lock: repo.object_lock.as_ref().map(|l| l.lock()),
            attempt,
            encryption: repo.recipients()?,
            progress: None,
            logical: LogicalOptions {
                format: j.format,
                archive_compression: j.archive_compression,
                globals: j.globals,
                exclude_tables: j.exclude_tables.clone(),
                include_tables: j.include_tables.clone(),
                exclude_table_data: j.exclude_table_data.clone(),
                databases: self.scope.clone(),
                extra_args: j.extra_args.iter().map(|a| a.to_string()).collect(),
                lock_wait_timeout: j.lock_wait_timeout,
                row_counts: j.row_counts,
                max_replica_lag: (!j.max_replica_lag.is_zero()).then_some(j.max_replica_lag),
                on_replica_lag: j.on_replica_lag,
            },
        })
    }

    /// Options of a drill into `scratch` (`"ephemeral"` or a server URL,
    /// whose password is the first line of `password_file` when given)
    /// with the restore tools in `bindir` (None: search).
    pub fn drill_options(
        &self,
        scratch: &str,
        password_file: Option<&Path>,
        bindir: Option<PathBuf>,
    ) -> Result<DrillOptions> {
        let j = &self.config;
        let scratch = Scratch::parse(scratch, password_file)
            .with_context(|| format!("job {}: scratch", self.name))?;
        Ok(DrillOptions {
            physical: self.physical_drill()?,
            checks: j.checks.iter().map(|c| c.check()).collect(),
            rpo_target: j.targets.rpo,
            rto_target: j.targets.rto,
            jobs: j.drill_jobs,
            ..drill_options(&self.repository, scratch, bindir)?
        })
    }

    /// The drill the agent runs: into the job's own scratch, with its own
    /// tools.
    pub fn scheduled_drill_options(&self) -> Result<DrillOptions> {
        let scratch = self.drill_scratch().ok_or_else(|| {
            anyhow!(
                "job {}: no scratch target: set `scratch` (a server URL or \"ephemeral\")",
                self.name
            )
        })?;
        self.drill_options(
            scratch,
            self.config.scratch_password_file.as_deref(),
            self.config.pg_bindir.clone(),
        )
    }

    /// How a drill of this physical job recovers its base backup: the
    /// restored cluster fetches WAL through the configuration file (None
    /// without one, or for a logical job).
    fn physical_drill(&self) -> Result<Option<refugio_core::PhysicalDrill>> {
        let Some(config) = self
            .config_path
            .as_deref()
            .filter(|_| self.kind == JobKind::Physical)
        else {
            return Ok(None);
        };
        let user = self.source()?.connect_options()?.get_username().to_string();
        Ok(Some(refugio_core::PhysicalDrill {
            restore_command: wal_fetch_command(config, &self.name)?,
            restore_env: self.repository.wal_fetch_env(),
            user,
            target: refugio_core::restore::physical::RecoveryTarget::Latest,
        }))
    }

    /// Options of the restore SIGUSR2 makes into the job's
    /// `restore_on_signal` target (None: the job has none): the drill's
    /// parallel jobs and tools; never into any of `sources` (the job's
    /// source cluster, when it could be asked) nor the backup's own source.
    pub fn signal_restore_options(
        &self,
        sources: Vec<refugio_core::restore::identity::SourceCluster>,
    ) -> Result<Option<refugio_core::RestoreOptions>> {
        let Some(to) = &self.config.restore_on_signal else {
            return Ok(None);
        };
        Ok(Some(refugio_core::RestoreOptions {
            target: to.target_spec()?,
            clean: to.clean,
            create: true,
            globals: to.globals,
            jobs: self.config.drill_jobs.max(1),
            no_owner: to.no_owner,
            bindir: self.config.pg_bindir.clone(),
            temp_dir: None,
            identities: self.repository.identities()?,
            require_encrypted: self.repository.encryption.is_some(),
            database: None,
            progress: None,
            guard: Some(refugio_core::restore::identity::TargetGuard {
                sources,
                overwrite_source: false,
                hint: crate::config::restore_signal::REFUSAL_HINT.into(),
            }),
        }))
    }

    /// Options of a prune under the job's retention policy (None: the job
    /// has none).
    pub fn prune_options(&self, dry_run: bool, batch: usize) -> Option<PruneOptions> {
        let policy = self.retention.clone()?;
        let grace = self.config.retention.as_ref()?.gc_grace;
        Some(prune_options(
            &self.name,
            policy,
            grace,
            &self.repository,
            dry_run,
            batch,
            self.kind == JobKind::Physical,
        ))
    }

    /// Options of archiving the WAL file `path` (relative to the data
    /// directory) into this job.
    pub fn wal_push_options(&self, path: PathBuf) -> Result<WalPushOptions> {
        Ok(WalPushOptions {
            job: self.name.clone(),
            path,
            compression: self.config.compression,
            compression_level: self.config.compression_level,
            encryption: self.repository.recipients()?,
        })
    }

    /// Options of fetching WAL file `name` of this job's archive to `dest`.
    pub fn wal_fetch_options(&self, name: String, dest: PathBuf) -> Result<WalFetchOptions> {
        Ok(WalFetchOptions {
            job: self.name.clone(),
            name,
            dest,
            identities: self.repository.identities()?,
        })
    }

    /// The targets its status is judged against.
    pub fn targets(&self) -> refugio_core::status::Targets {
        refugio_core::status::Targets {
            rpo: self.config.targets.rpo,
            rto: self.config.targets.rto,
        }
    }

    /// Options of a repository check of this job.
    pub fn check_options(&self, read_data: refugio_core::ReadData) -> CheckOptions {
        check_options(&self.name, Some(self), read_data)
    }
}

/// Options of a drill with no job's settings (a repository without a
/// config file: no SQL checks, no targets, one restore job) into
/// `scratch`, with the tools in `bindir` (None: search) and the keys
/// `repository` names.
pub fn drill_options(
    repository: &RepositoryConfig,
    scratch: Scratch,
    bindir: Option<PathBuf>,
) -> Result<DrillOptions> {
    Ok(DrillOptions {
        scratch,
        checks: Vec::new(),
        rpo_target: None,
        rto_target: None,
        jobs: 1,
        bindir,
        identities: repository.identities()?,
        require_encrypted: repository.encryption.is_some(),
        progress: None,
        physical: None,
    })
}

/// Options of a prune of `job` under `policy`.
pub fn prune_options(
    job: &str,
    policy: refugio_store::retention::Policy,
    grace: std::time::Duration,
    repository: &RepositoryConfig,
    dry_run: bool,
    batch: usize,
    physical: bool,
) -> PruneOptions {
    PruneOptions {
        job: job.to_string(),
        policy,
        grace,
        object_lock: repository.object_lock.is_some(),
        dry_run,
        batch,
        physical,
    }
}

/// Options of a check of the repository's job `name`, which the
/// configuration names as `job` (its retention's grace) or does not.
pub fn check_options(
    name: &str,
    job: Option<&Job>,
    read_data: refugio_core::ReadData,
) -> CheckOptions {
    CheckOptions {
        job: name.to_string(),
        read_data,
        grace: job
            .and_then(|j| j.config.retention.as_ref())
            .map_or(refugio_core::check::DEFAULT_GRACE, |r| r.gc_grace),
        progress: None,
    }
}

/// `databases` and `exclude_databases` make a whole-server job together.
fn check_scope(at: &str, j: &JobConfig) -> Result<()> {
    if let Some(dbs) = &j.databases {
        if j.database.is_some() {
            bail!("{at}: `database` and `databases` exclude each other: `databases` makes a whole-server job");
        }
        if dbs.is_empty() || dbs.iter().any(|d| d.is_empty()) {
            bail!("{at}.databases: give names or patterns, e.g. [\"*\"]");
        }
    } else if !j.exclude_databases.is_empty() {
        bail!("{at}.exclude_databases: only a whole-server job (`databases = [...]`) excludes databases");
    }
    Ok(())
}

/// A physical job has none of the logical job's settings.
fn check_physical(at: &str, j: &JobConfig) -> Result<()> {
    let logical_only = [
        ("database", j.database.is_some()),
        ("databases", j.databases.is_some()),
        ("exclude_databases", !j.exclude_databases.is_empty()),
        ("include_tables", !j.include_tables.is_empty()),
        ("exclude_tables", !j.exclude_tables.is_empty()),
        ("exclude_table_data", !j.exclude_table_data.is_empty()),
        ("extra_args", !j.extra_args.is_empty()),
        ("archive_compression", j.archive_compression),
        ("format", j.format != DumpFormat::Custom),
        ("restore_on_signal", j.restore_on_signal.is_some()),
    ];
    let set: Vec<&str> = logical_only
        .iter()
        .filter(|(_, on)| *on)
        .map(|(f, _)| *f)
        .collect();
    if j.scratch.as_deref().is_some_and(|s| s != "ephemeral") {
        bail!("{at}.scratch: a physical job's drills recover its base backup in an ephemeral cluster of their own; set scratch = \"ephemeral\" or leave it out");
    }
    if !set.is_empty() {
        bail!("{at}: kind = \"physical\" backs up the whole cluster with pg_basebackup; {} appl{} to logical (pg_dump) jobs only", set.join(", "), if set.len() == 1 { "ies" } else { "y" });
    }
    Ok(())
}

fn check_compression(at: &str, j: &JobConfig) -> Result<()> {
    if j.archive_compression
        && (j.format != DumpFormat::Custom || j.compression != Compression::Zstd)
    {
        bail!(
            "{at}.archive_compression: pg_dump compresses only a custom archive with zstd; this job has format {} and compression {}",
            j.format.as_str(),
            j.compression.as_str()
        );
    }
    if let Some(l) = j.compression_level {
        let ok = match j.compression {
            Compression::Zstd => (1..=22).contains(&l),
            Compression::Gzip => (0..=9).contains(&l),
            Compression::None => false,
        };
        if !ok {
            bail!(
                "{at}.compression_level: {l} is not valid for {}",
                j.compression.as_str()
            );
        }
    }
    Ok(())
}

fn check_scratch(at: &str, j: &JobConfig) -> Result<()> {
    if let Some(scratch) = j.scratch.as_deref().filter(|s| *s != "ephemeral") {
        SourceSpec::new(scratch, None, None).with_context(|| format!("{at}.scratch"))?;
    } else if j.scratch_password_file.is_some() {
        bail!("{at}.scratch_password_file: the job's `scratch` is not a server URL");
    }
    Ok(())
}

/// The job's triggers, and the schedule's settings that need others.
fn resolve_schedule(at: &str, j: &JobConfig) -> Result<Vec<(TaskKind, Trigger)>> {
    let sched = &j.schedule;
    let tz = sched
        .tz()
        .with_context(|| format!("{at}.schedule.time_zone"))?;
    let mut triggers = Vec::new();
    for (kind, spec) in [
        (TaskKind::Backup, &sched.backup),
        (TaskKind::Drill, &sched.drill),
        (TaskKind::Prune, &sched.prune),
        (TaskKind::Check, &sched.check),
    ] {
        if let Some(spec) = spec {
            let trigger = spec
                .resolve(tz)
                .with_context(|| format!("{at}.schedule.{}", kind.as_str()))?;
            triggers.push((kind, trigger));
        }
    }
    if (sched.drill.is_some() || sched.drill_after_backup) && j.drill_scratch().is_none() {
        bail!("{at}.schedule: drills are scheduled but the job has no `scratch` (a server URL or \"ephemeral\")");
    }
    if sched.prune.is_some() && j.retention.is_none() {
        bail!("{at}.schedule.prune: the job has no `retention` policy");
    }
    Ok(triggers)
}
