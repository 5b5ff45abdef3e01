//! Whether a job's schedule can meet its targets. The RPO is the age of
//! the newest verified recovery point: just before the next backup is
//! verified, a logical job's is its backup interval plus the time a backup
//! and its drill take. A target below that is missed every cycle; the
//! warning names a schedule that would meet it. A physical job's RPO is
//! the newest archived WAL's age (the server's `archive_timeout`, not the
//! schedule), so only its drills matter here. The RTO target is held
//! against the last drill's measured RTO.

use std::time::Duration;

use chrono::{DateTime, Utc};
use refugio_core::status::StatusReport;
use refugio_core::JobKind;
use refugio_schedule::TaskKind;

use crate::job::Job;
use crate::output::span;

/// What the repository says the job's backups and drills take.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Measured {
    /// The newest backup, start to commit.
    pub backup: Option<Duration>,
    /// The last drill's RTO.
    pub drill: Option<Duration>,
}

impl Measured {
    /// From a job's status report.
    pub fn of(r: &StatusReport) -> Measured {
        Measured {
            backup: r
                .last_backup
                .as_ref()
                .and_then(|b| (b.finished_at? - b.started_at).to_std().ok()),
            drill: r.rto.seconds.map(Duration::from_secs_f64),
        }
    }
}

/// Why `job`'s targets cannot be met, judged from its schedule and what
/// `repo` says its backups and drills take (the schedule alone without a
/// repository or when it cannot be read). Empty for a job without targets.
pub async fn check(
    repo: Option<&refugio_store::repo::Repository>,
    job: &Job,
    now: DateTime<Utc>,
) -> Vec<String> {
    let targets = job.targets();
    if targets.rpo.is_none() && targets.rto.is_none() {
        return Vec::new();
    }
    let measured = match repo {
        Some(repo) => refugio_core::status::report(repo, &job.name, Some(job.kind), targets, now)
            .await
            .map(|r| Measured::of(&r))
            .unwrap_or_default(),
        None => Measured::default(),
    };
    warnings(job, measured, now)
}

/// Why `job`'s targets cannot be met, one sentence each (none: they can,
/// as far as the schedule and the measurements tell).
pub fn warnings(job: &Job, measured: Measured, now: DateTime<Utc>) -> Vec<String> {
    let mut out = Vec::new();
    let targets = job.targets();
    let trigger = |kind: TaskKind| {
        job.triggers
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, t)| t)
    };
    let drills = job.drill_scratch().is_some()
        && (job.config.schedule.drill_after_backup || trigger(TaskKind::Drill).is_some());
    if let Some(rpo) = targets.rpo {
        if !drills {
            out.push(format!(
                "job {}: targets.rpo = {} cannot be met: no drill is scheduled (set `scratch` and drill_after_backup or a drill schedule), so no backup gets verified and the RPO only grows",
                job.name,
                span(rpo.as_secs_f64())
            ));
        } else if job.kind == JobKind::Logical {
            out.extend(logical_rpo(job, rpo, measured, now));
        }
    }
    if let (Some(rto), Some(took)) = (targets.rto, measured.drill) {
        if took > rto {
            out.push(format!(
                "job {}: targets.rto = {} is below the last drill's RTO of {}: a restore takes longer than the target allows",
                job.name,
                span(rto.as_secs_f64()),
                span(took.as_secs_f64())
            ));
        }
    }
    out
}

/// A logical job's worst RPO: the backup interval, plus a backup, plus
/// the wait for its drill and the drill itself.
fn logical_rpo(job: &Job, rpo: Duration, m: Measured, now: DateTime<Utc>) -> Option<String> {
    let backup = job
        .triggers
        .iter()
        .find(|(k, _)| *k == TaskKind::Backup)
        .map(|(_, t)| t)?;
    let interval = backup.interval(now);
    let drill_wait = match job.config.schedule.drill_after_backup {
        true => Duration::ZERO,
        false => job
            .triggers
            .iter()
            .find(|(k, _)| *k == TaskKind::Drill)
            .map_or(Duration::ZERO, |(_, t)| t.interval(now)),
    };
    let work = m.backup.unwrap_or_default() + m.drill.unwrap_or_default() + drill_wait;
    let worst = interval.saturating_add(work);
    // Unmeasured, a backup and a drill still take some time: a schedule
    // as long as the target misses it.
    if worst < rpo && !(m.backup.is_none() && interval >= rpo) {
        return None;
    }
    let measured = match (m.backup, m.drill) {
        (Some(b), Some(d)) => format!(
            "the last backup took {} and the last drill {}",
            span(b.as_secs_f64()),
            span(d.as_secs_f64())
        ),
        _ => "a backup and its drill take time (not measured yet)".to_string(),
    };
    let room = rpo.saturating_sub(work);
    Some(format!(
        "job {}: targets.rpo = {} is missed every cycle: backups every {}{}, and {measured}, so the newest verified backup is up to {} old before the next one is verified; {}",
        job.name,
        span(rpo.as_secs_f64()),
        span(interval.as_secs_f64()),
        if drill_wait.is_zero() { String::new() } else { format!(" with a drill every {}", span(drill_wait.as_secs_f64())) },
        span(worst.as_secs_f64()),
        match suggest(room, m.backup.unwrap_or_default()) {
            Some(cron) => format!("a backup schedule of {cron:?} (with drill_after_backup = true) would meet it"),
            None => "no backup schedule can meet it: raise the target".to_string(),
        }
    ))
}

/// The longest cron schedule, of those that divide a day evenly, whose
/// interval is under `room` (strictly: a backup is never free) and no
/// shorter than a backup takes (`backup`: a job's backups never overlap).
fn suggest(room: Duration, backup: Duration) -> Option<String> {
    const HOURS: [u64; 7] = [12, 8, 6, 4, 3, 2, 1];
    const MINUTES: [u64; 6] = [30, 20, 15, 10, 5, 1];
    let fits = |d: Duration| d < room && d >= backup;
    if let Some(h) = HOURS.iter().find(|h| fits(Duration::from_secs(**h * 3600))) {
        return Some(format!("0 */{h} * * *"));
    }
    MINUTES
        .iter()
        .find(|m| fits(Duration::from_secs(**m * 60)))
        .map(|m| format!("*/{m} * * * *"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(schedule: &str, targets: &str) -> Job {
        let text = format!(
            "[[jobs]]\nname = \"trips\"\nsource = \"postgres://refugio@db/trips\"\nscratch = \"ephemeral\"\ntargets = {targets}\n[jobs.schedule]\n{schedule}\n"
        );
        crate::config::Config::parse(&text, None)
            .expect("config")
            .jobs
            .remove(0)
    }

    const SIX: &str = "{ rpo = \"6h\", rto = \"2h\" }";

    #[test]
    fn six_hourly_backups_cannot_meet_a_six_hour_rpo() {
        let j = job("backup = \"0 */6 * * *\"\ndrill_after_backup = true", SIX);
        let w = warnings(&j, Measured::default(), Utc::now());
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("missed every cycle"), "{}", w[0]);
        assert!(w[0].contains("\"0 */4 * * *\""), "{}", w[0]);
        // Measured: 20 minutes of backup and drill still leave 4-hourly.
        let m = Measured {
            backup: Some(Duration::from_secs(900)),
            drill: Some(Duration::from_secs(300)),
        };
        assert!(warnings(&j, m, Utc::now())[0].contains("\"0 */4 * * *\""));
    }

    #[test]
    fn a_schedule_with_room_meets_its_targets() {
        let j = job("backup = \"0 */4 * * *\"\ndrill_after_backup = true", SIX);
        let m = Measured {
            backup: Some(Duration::from_secs(1800)),
            drill: Some(Duration::from_secs(1200)),
        };
        assert_eq!(warnings(&j, m, Utc::now()), Vec::<String>::new());
        assert_eq!(
            warnings(&j, Measured::default(), Utc::now()),
            Vec::<String>::new()
        );
    }

    #[test]
    fn slow_backups_and_drills_count_and_the_rto_is_held_against_the_last_drill() {
        let j = job("backup = \"0 */4 * * *\"\ndrill_after_backup = true", SIX);
        let m = Measured {
            backup: Some(Duration::from_secs(2 * 3600)),
            drill: Some(Duration::from_secs(3 * 3600)),
        };
        let w = warnings(&j, m, Utc::now());
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("up to 9h old"), "{}", w[0]);
        assert!(w[0].contains("no backup schedule can meet it"), "{}", w[0]);
        assert!(
            w[1].contains("targets.rto = 2h is below the last drill's RTO of 3h"),
            "{}",
            w[1]
        );
    }

    #[test]
    fn without_drills_nothing_is_ever_verified() {
        let j = job("backup = \"0 */1 * * *\"", SIX);
        let w = warnings(&j, Measured::default(), Utc::now());
        assert!(
            w.len() == 1 && w[0].contains("no drill is scheduled"),
            "{w:?}"
        );
    }

    #[test]
    fn suggestions_leave_room() {
        let h = |n: u64| Duration::from_secs(n * 3600);
        assert_eq!(suggest(h(6), h(0)).as_deref(), Some("0 */4 * * *"));
        assert_eq!(suggest(h(1), h(0)).as_deref(), Some("*/30 * * * *"));
        assert_eq!(suggest(Duration::from_secs(30), h(0)), None);
        // Backups of 2 hours cannot start every 30 minutes.
        assert_eq!(suggest(h(1), h(2)), None);
    }
}
