//! Drills of physical base backups (issue 14): the job's WAL archive is
//! judged from its listing first (a gap that cuts the base backup fails
//! the drill: the backup cannot reach the archive's newest point); then
//! the base backup is unpacked into an ephemeral cluster directory,
//! `pg_verifybackup` checks the files against the server's
//! `backup_manifest`, the server starts with `restore_command = refugio
//! wal-fetch`, replays the archive to the target (default: all of it) and
//! promotes; the job's SQL checks run on it. RTO is the whole: download,
//! unpack, verify, replay, start, checks. RPO is the age of the newest
//! archived WAL file at the drill's start, counted only when the drill
//! verified the backup.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use refugio_dump::tools::{self, ToolKind};
use refugio_dump::wal::WalKind;
use refugio_dump::PgVersion;
use refugio_store::manifest::Manifest;
use refugio_store::repo::Repository;
use sqlx::{Connection, PgConnection, Row};

use super::checks::{sql_check, Tally};
use super::{conclude, new_receipt, DrillOptions, PhysicalDrill};
use crate::ephemeral::EphemeralCluster;
use crate::error::{Error, Result};
use crate::receipt::{Receipt, SqlCheck};
use crate::restore::physical::{restore_physical, PhysicalRestoreOptions, RecoveryTarget};
use crate::wal_chain::{continuity, BaseNeeds};

/// The longest a drill waits for recovery to reach its target.
const RECOVERY_LIMIT: Duration = Duration::from_secs(6 * 3600);

/// The newest archived segment: (timeline, segment number, name, stored at).
type Newest = (u32, u64, String, Option<DateTime<Utc>>);

pub(super) async fn drill_physical(
    repo: &Repository,
    manifest: &Manifest,
    opts: &DrillOptions,
    now: DateTime<Utc>,
) -> Result<Receipt> {
    let Some(how) = &opts.physical else {
        // Not evidence against the backup: no receipt.
        return Err(Error::DrillNeedsConfig {
            backup: manifest.backup_id.clone(),
            job: manifest.job.clone(),
        });
    };
    let started = Instant::now();
    let mut receipt = new_receipt(manifest, opts, now, "ephemeral");
    let mut tally = Tally::default();

    let newest = match judge_archive(repo, manifest, &mut receipt, &mut tally).await {
        Ok(n) => n,
        Err(e) => {
            tally.unsure(
                &mut receipt,
                format!(
                    "listing the WAL archive of job {}: {}",
                    manifest.job,
                    refugio_print::chain(&e)
                ),
            );
            None
        }
    };
    if !tally.bad && !tally.unsure {
        let run = recover_and_check(
            repo,
            manifest,
            opts,
            how,
            newest.as_ref(),
            &mut receipt,
            &mut tally,
        );
        if let Err(e) = run.await {
            let text = refugio_print::chain(&e);
            if e.condemns() {
                tally.bad(&mut receipt, text);
            } else {
                tally.unsure(&mut receipt, text);
            }
        }
    }
    let rto = started.elapsed().as_secs_f64();
    // The recovery point is the newest archived WAL, when this drill
    // proved the way to it.
    let verified = !tally.bad && !tally.unsure;
    let point: Vec<(String, DateTime<Utc>)> = match (&newest, verified) {
        (Some((_, _, _, Some(at))), true) => vec![(manifest.backup_id.clone(), *at)],
        _ => Vec::new(),
    };
    let rpo = crate::measure::rpo(&point, now);
    conclude(
        repo, manifest, opts, receipt, &tally, rto, rpo, started, now,
    )
    .await
}

/// Gaps and conflicts in the archive that this base backup needs: the
/// backup is bad. Returns the newest archived segment.
async fn judge_archive(
    repo: &Repository,
    manifest: &Manifest,
    receipt: &mut Receipt,
    tally: &mut Tally,
) -> Result<Option<Newest>> {
    let objects = crate::wal::list(repo, &manifest.job).await?;
    let Some(needs) = BaseNeeds::of(manifest) else {
        tally.bad(
            receipt,
            format!(
                "backup {}: its manifest has no readable start and stop LSN",
                manifest.backup_id
            ),
        );
        return Ok(None);
    };
    let chain = continuity(&objects, std::slice::from_ref(&needs));
    for gap in chain.cutting(&manifest.backup_id) {
        if gap.pending {
            tally.unsure(
                receipt,
                format!(
                    "WAL not archived yet on timeline {}: {}..{} ({} segment(s)), which base backup {} needs, are not in the archive and nothing newer is (a base backup from a standby ends before the primary's next segment switch; the next drill looks again)",
                    gap.timeline, gap.from, gap.to, gap.segments, manifest.backup_id
                ),
            );
        } else {
            tally.bad(
                receipt,
                format!(
                    "WAL GAP on timeline {}: {}..{} ({} segment(s)) missing from the archive; base backup {} cannot be recovered past it",
                    gap.timeline, gap.from, gap.to, gap.segments, manifest.backup_id
                ),
            );
        }
    }
    for name in &chain.conflicts {
        tally.bad(
            receipt,
            format!(
                "WAL file {name} is archived twice with different content: recovery cannot choose"
            ),
        );
    }
    let size = needs.segment_size;
    let newest = objects
        .iter()
        .filter(|o| o.name.kind == WalKind::Segment)
        .map(|o| {
            (
                o.name.timeline,
                o.name.segment_number(size),
                o.name.name.clone(),
                o.last_modified,
            )
        })
        .max_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    Ok(newest)
}

/// Unpack, verify, start, wait for the promotion, check.
async fn recover_and_check(
    repo: &Repository,
    manifest: &Manifest,
    opts: &DrillOptions,
    how: &PhysicalDrill,
    newest: Option<&Newest>,
    receipt: &mut Receipt,
    tally: &mut Tally,
) -> Result<()> {
    let version = PgVersion::from_num(manifest.server.version_num);
    // Dropped on every way out (and on cancellation): the server stops,
    // the directory goes.
    let mut cluster =
        EphemeralCluster::for_base_backup(version, opts.bindir.as_deref(), how.restore_env.clone())
            .await?;
    receipt.scratch_server_version = Some(cluster.version.to_string());
    receipt.restore_tool = Some(format!("postgres {} (WAL replay)", cluster.version));
    let restored = restore_physical(
        repo,
        manifest,
        &PhysicalRestoreOptions {
            target: how.target,
            target_dir: cluster.data_dir(),
            restore_command: how.restore_command.clone(),
            identities: opts.identities.clone(),
            keep_archiving: false,
            require_encrypted: opts.require_encrypted,
        },
    )
    .await?;
    receipt.phases.fetch_restore_seconds = restored.seconds;
    for a in manifest.artifacts.iter().filter(|a| a.kind == "base") {
        receipt
            .digests_checked
            .push((a.name.clone(), a.sha256.clone()));
    }

    if manifest
        .physical
        .as_ref()
        .is_some_and(|p| p.backup_manifest.is_some())
    {
        verify_files(&cluster, opts, receipt, tally).await?;
        if tally.bad {
            return Ok(());
        }
    }

    probe_restore_command(&cluster, manifest, how, receipt, tally).await;
    if tally.unsure {
        return Ok(());
    }
    let replay = Instant::now();
    cluster.start_recovery()?;
    let mut conn = wait_promoted(&mut cluster, how, tally, receipt).await?;
    let Some(conn_ref) = conn.as_mut() else {
        return Ok(());
    };
    receipt.phases.recovery_seconds = Some(replay.elapsed().as_secs_f64());

    if let (RecoveryTarget::Latest, Some(newest)) = (how.target, newest) {
        reached_the_end(conn_ref, newest, receipt, tally).await?;
    }
    let superuser: String = sqlx::query("SELECT rolname FROM pg_roles WHERE oid = 10")
        .fetch_one(&mut *conn_ref)
        .await
        .and_then(|r| r.try_get(0))
        .map_err(restored_query)?;
    if let Some(c) = conn.take() {
        let _ = c.close().await;
    }
    let checks_started = Instant::now();
    for check in &opts.checks {
        run_check(&cluster, &superuser, check, receipt, tally).await?;
    }
    receipt.phases.checks_seconds = checks_started.elapsed().as_secs_f64();
    cluster.stop().await;
    Ok(())
}

/// `latest`: recovery must have reached the newest archived segment.
async fn reached_the_end(
    conn: &mut sqlx::PgConnection,
    newest: &Newest,
    receipt: &mut Receipt,
    tally: &mut Tally,
) -> Result<()> {
    let (tl, seg, name, _) = newest;
    let row = sqlx::query(
        "SELECT pg_walfile_name(pg_current_wal_lsn()) AS w, (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size') AS s",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(restored_query)?;
    let now_at: String = row.try_get("w").map_err(restored_query)?;
    let size: i64 = row.try_get("s").map_err(restored_query)?;
    let reached = refugio_dump::wal::WalName::parse(&now_at)
        .map(|w| w.segment_number(size as u64))
        .unwrap_or(0);
    if reached < *seg {
        tally.bad(
            receipt,
            format!(
                "recovery ended in segment {now_at}, before the archive's newest, {name} (timeline {tl}): the archived WAL does not replay to its end"
            ),
        );
    }
    Ok(())
}

/// One SQL check, in its database of the restored cluster as the cluster's
/// superuser: a database that is not there fails the drill, one that
/// cannot be reached makes it inconclusive.
async fn run_check(
    cluster: &EphemeralCluster,
    superuser: &str,
    check: &crate::drill::Check,
    receipt: &mut Receipt,
    tally: &mut Tally,
) -> Result<()> {
    let db = check.database.as_deref().unwrap_or("postgres");
    let spec = cluster.spec_as_superuser(superuser, db)?;
    match spec.connect().await {
        Ok(mut c) => {
            sql_check(&mut c, check, "", &check.database, receipt, tally).await;
            let _ = c.close().await;
        }
        Err(e) => {
            let text = format!(
                "SQL check {:?}: connecting to database {db} of the restored cluster: {}",
                check.sql,
                refugio_print::chain(&e)
            );
            receipt.checks.push(SqlCheck {
                sql: check.sql.clone(),
                ok: false,
                detail: text.clone(),
                database: check.database.clone(),
            });
            if missing_database(&e) {
                tally.bad(receipt, text);
            } else {
                tally.unsure(receipt, text);
            }
        }
    }
    Ok(())
}

/// Runs the server's `restore_command` once, as the server will, for the
/// base backup's first WAL segment (the archive listing holds it): a
/// command that cannot fetch it (a config file or credentials its user
/// cannot read, another environment) makes the drill inconclusive with
/// its own words, before recovery starts.
async fn probe_restore_command(
    cluster: &EphemeralCluster,
    manifest: &Manifest,
    how: &PhysicalDrill,
    receipt: &mut Receipt,
    tally: &mut Tally,
) {
    let Some(needs) = BaseNeeds::of(manifest) else {
        return;
    };
    let name = refugio_dump::wal::segment_name(
        needs.timeline,
        needs.start.segment(needs.segment_size),
        needs.segment_size,
    );
    let target = cluster.scratch_path("refugio-restore-command-probe");
    let command = substitute(&how.restore_command, &name, &target.display().to_string());
    let who = match EphemeralCluster::server_uid() {
        Some(uid) => format!(
            " as uid {uid} (the drill's server runs as that user because refugio runs as root)"
        ),
        None => String::new(),
    };
    let problem = match cluster
        .run_as_server(&command, Duration::from_secs(600))
        .await
    {
        Ok(out) if out.status.success() && target.exists() => None,
        Ok(out) => {
            let said = String::from_utf8_lossy(&out.stderr);
            let said: Vec<&str> = said
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            let mut said = said.join(" | ");
            if said.len() > 1500 {
                let cut = (0..=1500)
                    .rev()
                    .find(|&i| said.is_char_boundary(i))
                    .unwrap_or(0);
                said.truncate(cut);
                said.push('…');
            }
            Some(format!("{}: {said}", out.status))
        }
        Err(e) => Some(e.to_string()),
    };
    let _ = std::fs::remove_file(&target);
    if let Some(problem) = problem {
        tally.unsure(
            receipt,
            format!(
                "the restored server's restore_command ({}) run{who} could not fetch WAL file {name}, which the archive listing holds: {problem}",
                how.restore_command
            ),
        );
    }
}

/// `restore_command` with `%f`, `%p`, `%r` and `%%` replaced as
/// PostgreSQL replaces them.
fn substitute(command: &str, file: &str, path: &str) -> String {
    let mut out = String::with_capacity(command.len() + path.len());
    let mut chars = command.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('f') => out.push_str(file),
            Some('p') => out.push_str(path),
            Some('r') => out.push_str(file),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// A query on the restored cluster that failed: could not check.
fn restored_query(e: sqlx::Error) -> Error {
    Error::RestoredCluster {
        reason: e.to_string(),
    }
}

fn missing_database(e: &refugio_dump::Error) -> bool {
    e.to_string().contains("does not exist")
}

/// `pg_verifybackup --no-parse-wal` on the unpacked directory, against
/// the `backup_manifest` the tar carries (the WAL is the archive's, judged
/// apart). A mismatch condemns the backup; a missing tool is "could not
/// check".
async fn verify_files(
    cluster: &EphemeralCluster,
    opts: &DrillOptions,
    receipt: &mut Receipt,
    tally: &mut Tally,
) -> Result<()> {
    let what = format!("verifying a PostgreSQL {} base backup", cluster.version);
    let bindir = opts.bindir.as_deref().or(Some(cluster.bindir.as_path()));
    let tool = match tools::find_for(ToolKind::PgVerifybackup, cluster.version, &what, bindir).await
    {
        Ok(t) => t,
        Err(e) => {
            tally.unsure(receipt, format!("pg_verifybackup: {e}"));
            return Ok(());
        }
    };
    let mut cmd = tokio::process::Command::new(&tool.path);
    refugio_dump::tools::clear_env(&mut cmd, None);
    let out = cmd
        .arg("--no-parse-wal")
        .arg(cluster.data_dir())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| Error::ToolRun {
            tool: tool.path.display().to_string(),
            reason: e.to_string(),
        })?;
    let text = String::from_utf8_lossy(if out.status.success() {
        &out.stdout
    } else {
        &out.stderr
    })
    .trim()
    .to_string();
    let ok = out.status.success();
    receipt.checks.push(SqlCheck {
        sql: "pg_verifybackup --no-parse-wal".into(),
        ok,
        detail: text.clone(),
        database: None,
    });
    if !ok {
        tally.bad(
            receipt,
            format!("pg_verifybackup found the restored files differ from the server's backup_manifest: {text}"),
        );
    }
    Ok(())
}

/// Waits until the server left recovery. Returns a connection, or None
/// once the outcome is in the tally (the server stopped during recovery).
async fn wait_promoted(
    cluster: &mut EphemeralCluster,
    how: &PhysicalDrill,
    tally: &mut Tally,
    receipt: &mut Receipt,
) -> Result<Option<PgConnection>> {
    let spec = cluster.spec_as(&how.user, "postgres")?;
    let deadline = Instant::now() + RECOVERY_LIMIT;
    loop {
        if let Some(status) = cluster.exited() {
            let log = cluster.log_tail(15);
            let text = format!("the restored server stopped during recovery ({status}): {log}");
            if recovery_failed_on_the_data(&log) {
                tally.bad(receipt, text);
            } else {
                tally.unsure(receipt, text);
            }
            return Ok(None);
        }
        if let Ok(mut conn) = spec.connect().await {
            let in_recovery: bool = match sqlx::query("SELECT pg_is_in_recovery()")
                .fetch_one(&mut conn)
                .await
            {
                Ok(row) => row.try_get(0).map_err(restored_query)?,
                Err(_) => true,
            };
            if !in_recovery {
                return Ok(Some(conn));
            }
            let _ = conn.close().await;
        }
        if Instant::now() > deadline {
            tally.unsure(
                receipt,
                format!(
                    "recovery did not reach {} within {}s: {}",
                    how.target,
                    RECOVERY_LIMIT.as_secs(),
                    cluster.log_tail(5)
                ),
            );
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Server log lines that say the backup and its WAL cannot reach a
/// consistent state (against "I could not fetch": a wal-fetch exit above
/// 125). "recovery ended before configured recovery target was reached"
/// is not among them: a time after the archive's last commit ends so,
/// whatever the backup.
fn recovery_failed_on_the_data(log: &str) -> bool {
    // A fetch that failed comes first: what the server said after it is
    // about WAL it never got.
    if log.contains("could not restore file") {
        return false;
    }
    [
        "WAL ends before end of online backup",
        "WAL ends before consistent recovery point",
        "could not locate required checkpoint record",
        "could not locate a valid checkpoint record",
        "invalid checkpoint record",
        "requested timeline",
    ]
    .iter()
    .any(|m| log.contains(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_log_tells_bad_data_from_a_failed_fetch() {
        assert!(!recovery_failed_on_the_data(
            "FATAL:  recovery ended before configured recovery target was reached"
        ));
        assert!(recovery_failed_on_the_data(
            "FATAL:  WAL ends before consistent recovery point"
        ));
        assert!(!recovery_failed_on_the_data(
            "FATAL:  could not restore file \"000000010000000000000005\" from archive: command failed with exit code 126"
        ));
        assert!(!recovery_failed_on_the_data(
            "FATAL:  could not restore file \"000000010000000000000005\" from archive: command failed with exit code 126\nLOG:  could not locate a valid checkpoint record"
        ));
    }

    #[test]
    fn restore_command_placeholders_are_replaced_as_postgres_does() {
        assert_eq!(
            substitute(
                "refugio --config /c wal-fetch %f %p",
                "0000000100000000000000A1",
                "/d/x"
            ),
            "refugio --config /c wal-fetch 0000000100000000000000A1 /d/x"
        );
        assert_eq!(
            substitute("cp /a/%f \"%p\" # 100%% %q%", "F", "P"),
            "cp /a/F \"P\" # 100% %q%"
        );
    }
}
