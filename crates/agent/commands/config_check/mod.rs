//! `refugio config check`: the file, the repository, object lock, every
//! source, and every `restore_on_signal` target (not the source's cluster).

mod prerequisites;
use std::process::ExitCode;

use anyhow::{anyhow, Result};

use crate::config::Config;
use crate::exit::usage;
use crate::job::Job;
use crate::output::error_chain;

/// One line per check.
#[derive(Debug, Default, serde::Serialize)]
pub(super) struct Check {
    pub(super) what: String,
    pub(super) ok: bool,
    pub(super) detail: String,
    /// Not a failure, but what will go wrong as configured (a target the
    /// schedule cannot meet).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    warning: bool,
}

/// With `[repository.encryption]`: a probe encrypted to the recipients
/// and, with an identity here, decrypted; whether this host can restore
/// and drill. A host that only backs up needs no identity, unless one of
/// its jobs drills (`scratch`).
async fn encryption_check(cfg: &Config) -> Option<Check> {
    let enc = cfg.repository.encryption.as_ref()?;
    let what = "encryption (age)".to_string();
    let fail = |detail: String| Check {
        what: what.clone(),
        ok: false,
        detail,
        warning: false,
    };
    let to = match enc.recipients() {
        Ok(to) => to,
        Err(e) => return Some(fail(error_chain(&e))),
    };
    let ids = match cfg.repository.identities() {
        Ok(ids) => ids,
        Err(e) => return Some(fail(error_chain(&e))),
    };
    let drills = cfg.jobs.iter().any(|j| j.drill_scratch().is_some());
    let recipients = format!(
        "{} recipient(s): {}",
        to.names().len(),
        to.names().join(", ")
    );
    Some(match refugio_core::encryption::probe(&to, ids.as_deref()).await {
        Ok(Some(true)) => Check {
            what,
            ok: true,
            detail: format!(
                "backups are encrypted to {recipients}; the identity from {} decrypts them: this host can restore and drill",
                ids.as_ref().map_or("?", |i| i.origin())
            ), warning: false },
        Ok(Some(false)) => fail(format!(
            "backups are encrypted to {recipients}; identity {} (from {}) matches none of them: this host cannot restore or drill new backups",
            ids.as_ref().map_or(String::new(), |i| i.publics().join(", ")),
            ids.as_ref().map_or("?", |i| i.origin())
        )),
        Ok(None) => Check {
            what,
            ok: !drills,
            detail: format!(
                "backups are encrypted to {recipients}; no identity on this host (identity_file, REFUGIO_AGE_IDENTITY_FILE, credential age-identity): it cannot restore{}",
                if drills { ", and this config's drills would be inconclusive" } else { " (fine for a host that only backs up)" }
            ), warning: false },
        Err(e) => fail(error_chain(&anyhow::Error::from(e))),
    })
}

/// `[repository.authentication]`, or that there is none: whether what
/// this host writes would be accepted by readers of this config, and by
/// whom it accepts what.
fn authentication_check(cfg: &Config) -> Check {
    let what = "authentication".to_string();
    let Some(conf) = &cfg.repository.authentication else {
        return Check {
            what,
            ok: true,
            detail: "none: the repository is UNAUTHENTICATED; whoever can write to it (a database host holding wal-push's credentials, anyone with the bucket's keys) can forge backups, WAL and drill verdicts that this host would trust; configure [repository.authentication] (docs/security.md)".into(), warning: false };
    };
    let auth = match conf.load(true) {
        Ok(a) => a,
        Err(e) => {
            return Check {
                what,
                ok: false,
                detail: error_chain(&e),
                warning: false,
            }
        }
    };
    use refugio_store::auth::Role;
    let ids = |role: Role| {
        auth.trusted(role)
            .iter()
            .map(|k| k.id().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let trusts = format!(
        "manifests and receipts signed by agent key(s) {}; WAL by server key(s) {}",
        ids(Role::Agent),
        if auth.trusted(Role::Server).is_empty() {
            "(none)".to_string()
        } else {
            ids(Role::Server)
        }
    );
    match auth.signer() {
        None => Check {
            what,
            ok: true,
            detail: format!("accepts {trusts}; no signing key on this host: it can restore and check, not back up, drill or push WAL"), warning: false },
        Some(s) => {
            let roles: Vec<&str> = [Role::Agent, Role::Server]
                .into_iter()
                .filter(|r| auth.signs_as(*r))
                .map(Role::as_str)
                .collect();
            Check {
                what,
                ok: !roles.is_empty(),
                detail: if roles.is_empty() {
                    format!("this host's signing key {} is in neither agent_keys nor server_keys: what it writes would be refused; accepts {trusts}", s.id())
                } else {
                    format!("this host signs as {} with key {}; accepts {trusts}", roles.join(" and "), s.id())
                }, warning: false }
        }
    }
}

/// A job's `restore_on_signal` target, by what its server says it is: not
/// the job's source cluster (a replica or another name of it included).
async fn restore_target_check(job: &Job) -> Option<Check> {
    use refugio_core::restore::identity::system_identifier;
    let r = job.config.restore_on_signal.as_ref()?;
    let what = format!("job {} restore_on_signal target", job.name);
    let fail = |detail: String| Check {
        what: what.clone(),
        ok: false,
        detail,
        warning: false,
    };
    let (target, source) = match (r.target_spec(), job.source()) {
        (Ok(t), Ok(s)) => (t, s),
        (Err(e), _) | (_, Err(e)) => return Some(fail(error_chain(&e))),
    };
    let target_id = system_identifier(&target.with_database("postgres")).await;
    let source_id = system_identifier(&source).await;
    Some(match (target_id, source_id) {
        (Ok(t), Ok(s)) if t == s => fail(format!(
            "target {} is job {}'s source {}: both are the cluster with system identifier {t} (the same server, or a replica of it, whatever the URLs say); {}",
            target.redacted(),
            job.name,
            source.redacted(),
            crate::config::restore_signal::REFUSAL_HINT
        )),
        (Ok(t), Ok(s)) => Check {
            what,
            ok: true,
            detail: format!(
                "target {} is another cluster (system identifier {t}) than the source (system identifier {s})",
                target.redacted()
            ), warning: false },
        (Err(e), _) => fail(format!(
            "could not check which cluster target {} is: {}",
            target.redacted(),
            refugio_print::chain(&e)
        )),
        (Ok(_), Err(e)) => fail(format!(
            "could not check that target {} is not the source's cluster: the source {} did not say which it is: {}",
            target.redacted(),
            source.redacted(),
            refugio_print::chain(&e)
        )),
    })
}

/// The repository: reachable, and what it holds.
async fn repository_check(cfg: &Config) -> Check {
    let repo_what = format!(
        "repository {}",
        refugio_print::redact_url(&cfg.repository.url)
    );
    match crate::repo::open(cfg, None).await {
        Ok(repo) => match repo.jobs().await {
            Ok(jobs) => Check {
                what: repo_what,
                ok: true,
                detail: format!("reachable, {} job(s) stored", jobs.len()),
                warning: false,
            },
            Err(e) => Check {
                what: repo_what,
                ok: false,
                detail: refugio_print::chain(&e),
                warning: false,
            },
        },
        Err(e) => Check {
            what: repo_what,
            ok: false,
            detail: error_chain(&e),
            warning: false,
        },
    }
}

/// The object lock the repository is configured with: probed.
async fn object_lock_check(cfg: &Config) -> Option<Check> {
    let lock = cfg.repository.object_lock.as_ref()?;
    let what = format!("object lock ({}, {} days)", lock.mode, lock.days);
    let probe = async {
        let repo = crate::repo::open(cfg, None).await?;
        anyhow::Ok(repo.store().probe_object_lock(LOCK_PROBE_PREFIX).await?)
    }
    .await;
    Some(match probe {
        Ok(refugio_store::LockProbe::Enforced) => Check {
            what,
            ok: true,
            detail: "enforced: the store refused to delete a locked probe object".into(), warning: false },
        Ok(refugio_store::LockProbe::NotEnforced(reason)) => Check {
            what,
            ok: false,
            detail: format!("NOT enforced, backups would not be immutable: {reason}. Backups fail while object_lock is configured on this store"), warning: false },
        Err(e) => Check {
            what,
            ok: false,
            detail: format!("could not be probed: {}", error_chain(&e)), warning: false },
    })
}

/// A job's source: reachable, its server and tools, a whole-server job's
/// databases.
async fn source_check(job: &Job) -> Check {
    let what = format!("job {}", job.name);
    let detail = async {
        let source = job.source()?;
        let probe = refugio_core::probe::source(&source, job.config.pg_bindir.as_deref()).await?;
        let (facts, tool) = (probe.facts, probe.pg_dump);
        // A whole-server job: which databases its next backup holds.
        let scope = match &job.scope {
            Some(scope) => {
                let mut conn = source.connect().await?;
                let names = scope.resolve(&mut conn, &source).await?;
                if names.is_empty() {
                    anyhow::bail!(
                        "no database on {} matches databases = {:?} (exclude_databases = {:?})",
                        source.redacted(),
                        scope.include,
                        scope.exclude
                    );
                }
                format!("; databases in scope: {}", names.join(", "))
            }
            None => String::new(),
        };
        anyhow::Ok(format!(
            "source {} reachable: PostgreSQL {}{}, pg_dump {} at {}{scope}",
            source.redacted(),
            facts.version,
            if facts.in_recovery { " (standby)" } else { "" },
            tool.version,
            tool.path.display()
        ))
    }
    .await;
    match detail {
        Ok(d) => Check {
            what,
            ok: true,
            detail: d,
            warning: false,
        },
        Err(e) => Check {
            what,
            ok: false,
            detail: error_chain(&e),
            warning: false,
        },
    }
}

/// Where `config check` writes its object-lock probe (not a job: job
/// names cannot start with '.').
const LOCK_PROBE_PREFIX: &str = ".refugio-lock-probe";

/// Whether the job's schedule can meet its targets, with what the
/// repository says its backups and drills take (nothing measured when it
/// cannot be read: the schedule alone is judged).
async fn targets_check(cfg: &Config, job: &Job) -> Vec<Check> {
    let targets = job.targets();
    if targets.rpo.is_none() && targets.rto.is_none() {
        return Vec::new();
    }
    let repo = crate::repo::open_existing(cfg, None).await.ok();
    let warnings = crate::objectives::check(repo.as_ref(), job, chrono::Utc::now()).await;
    if warnings.is_empty() {
        return vec![Check {
            what: format!("job {} targets", job.name),
            ok: true,
            detail: "the schedule can meet them".into(),
            ..Check::default()
        }];
    }
    warnings
        .into_iter()
        .map(|w| Check {
            what: format!("job {} targets", job.name),
            ok: true,
            detail: w,
            warning: true,
        })
        .collect()
}

pub async fn config_check(
    cfg: Config,
    config_path: Option<std::path::PathBuf>,
    json: bool,
) -> Result<ExitCode> {
    let mut checks = Vec::new();
    if config_path.is_none() {
        return Err(usage(anyhow!(
            "config check needs a config file (--config FILE or REFUGIO_CONFIG)"
        )));
    }
    checks.push(Check {
        what: "config".into(),
        ok: true,
        detail: "parsed and valid".into(),
        warning: false,
    });
    if cfg.jobs.is_empty() {
        checks.push(Check {
            what: "jobs".into(),
            ok: false,
            detail: "no [[jobs]] defined: nothing would be backed up".into(),
            warning: false,
        });
    }
    checks.push(repository_check(&cfg).await);
    checks.extend(object_lock_check(&cfg).await);
    checks.extend(encryption_check(&cfg).await);
    checks.push(authentication_check(&cfg));
    let physical = cfg
        .jobs
        .iter()
        .filter(|j| j.kind == refugio_core::JobKind::Physical)
        .count();
    for job in &cfg.jobs {
        checks.push(source_check(job).await);
        checks.extend(prerequisites::physical_checks(job, physical, config_path.as_deref()).await);
        checks.extend(prerequisites::drill_check(job).await);
        checks.extend(restore_target_check(job).await);
        checks.extend(targets_check(&cfg, job).await);
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    if json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        for c in &checks {
            println!(
                "{} {}: {}",
                match (c.ok, c.warning) {
                    (false, _) => "FAIL",
                    (true, true) => "warn",
                    (true, false) => "ok  ",
                },
                c.what,
                c.detail
            );
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::exit::FAILED)
    })
}
