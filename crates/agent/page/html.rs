//! The page itself: server-rendered HTML, its style inline, no script, no
//! asset fetched from anywhere. Every text that comes from the repository
//! or from an error (which may quote it) is escaped: a repository's content
//! is not trusted.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use refugio_core::status::StatusReport;

use super::{age, esc, Failure, JobView, Snapshot};

/// A job's state at a glance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Light {
    Green,
    Amber,
    Red,
}

impl Light {
    fn as_str(self) -> &'static str {
        match self {
            Light::Green => "green",
            Light::Amber => "amber",
            Light::Red => "red",
        }
    }
}

const STYLE: &str = "
body{font-family:system-ui,sans-serif;margin:0 auto;max-width:60rem;padding:.5rem 1rem;color:#222}
h1{font-size:1.3rem}h2{font-size:1.1rem;margin-top:2rem}
table{border-collapse:collapse;width:100%;font-size:.9rem}
th,td{text-align:left;padding:.3rem .4rem;border-bottom:1px solid #ddd;vertical-align:top}
.light{display:inline-block;width:.8rem;height:.8rem;border-radius:50%;margin-right:.3rem;vertical-align:middle}
.light.green{background:#2e7d32}.light.amber{background:#f9a825}.light.red{background:#c62828}
.banner{background:#fdecea;border:1px solid #c62828;padding:.5rem;margin:.5rem 0}
.reasons{margin:.2rem 0 0 1.2rem;padding:0}
svg.timeline{width:100%;height:auto;background:#fafafa;border:1px solid #eee}
.timeline .label,.timeline .tick{font-size:9px;fill:#555}
.timeline .grid{stroke:#e4e4e4}
.mark.backup{stroke:#1565c0;stroke-width:2}
.mark.drill.passed{fill:#2e7d32}.mark.drill.failed{fill:#c62828}
.mark.drill.inconclusive{fill:#f9a825}.mark.drill.unknown,.mark.drill.unchecked{fill:#9e9e9e}
.mark.drill.unsigned{fill:#fff;stroke:#c62828;stroke-width:2}
.rpo{fill:none;stroke:#6a1b9a;stroke-width:1.5}.rpo-target{stroke:#c62828;stroke-dasharray:4 3}
.mark.wal{fill:#80cbc4}
.failures li{margin-bottom:.3rem}.failures code{white-space:pre-wrap;word-break:break-word}
@media (max-width:40rem){.wide{display:none}}
";

/// The page for `s` at `now`.
pub fn render(s: &Snapshot, now: DateTime<Utc>) -> String {
    let mut out = String::with_capacity(16 * 1024 + s.jobs.len() * 8 * 1024);
    let _ = write!(
        out,
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><title>refugio status — {host}</title><style>{STYLE}</style></head><body><h1>refugio on {host}</h1><p>Repository {repo}. Read {now}.</p>"#,
        host = esc(&s.hostname),
        repo = esc(&s.repository),
        now = now.format("%Y-%m-%d %H:%M:%S UTC"),
    );
    if let Some((why, since)) = &s.repository_problem {
        let _ = write!(
            out,
            r#"<div class="banner" id="repository-problem"><strong>The repository cannot be read</strong> (since {}, {} ago): {}. What follows is what was read before.</div>"#,
            since.format("%Y-%m-%d %H:%M UTC"),
            age((now - *since).num_seconds() as f64),
            esc(why)
        );
    }
    summary(&mut out, s, now);
    for j in &s.jobs {
        job_section(&mut out, s, j, now);
    }
    out.push_str("</body></html>\n");
    out
}

/// The table of every job at a glance.
fn summary(out: &mut String, s: &Snapshot, now: DateTime<Utc>) {
    out.push_str(r#"<table id="jobs"><thead><tr><th>job</th><th>state</th><th>last backup</th><th class="wide">RPO</th><th class="wide">RTO</th><th class="wide">last drill</th></tr></thead><tbody>"#);
    for j in &s.jobs {
        let (light, reasons) = judge(
            j,
            failures_of(s, &j.name),
            s.repository_problem.is_some(),
            now,
        );
        let r = j.report.as_ref();
        let _ = write!(
            out,
            r##"<tr class="job" data-job="{name}" data-state="{state}"><td><a href="#job-{name}">{name}</a></td><td><span class="light {state}"></span>{reason}</td><td>{last}</td><td class="wide">{rpo}</td><td class="wide">{rto}</td><td class="wide">{drill}</td></tr>"##,
            name = esc(&j.name),
            state = light.as_str(),
            reason = esc(reasons.first().map_or("", String::as_str)),
            last = r
                .and_then(|r| r.last_backup.as_ref())
                .map_or("none".into(), |b| format!(
                    "{} ago",
                    age(b.age_seconds as f64)
                )),
            rpo = r.map_or(String::new(), |r| objective(&r.rpo)),
            rto = r.map_or(String::new(), |r| objective(&r.rto)),
            drill = r
                .and_then(|r| r.last_drill.as_ref())
                .map_or("none".into(), |d| format!(
                    "{}, {} ago",
                    d.outcome,
                    age((now - d.finished_at).num_seconds() as f64)
                )),
        );
    }
    out.push_str("</tbody></table>");
}

fn failures_of<'a>(s: &'a Snapshot, job: &str) -> &'a [Failure] {
    s.failures.get(job).map_or(&[][..], Vec::as_slice)
}

/// One job: its state's reasons, its timeline, its facts, its failures.
fn job_section(out: &mut String, s: &Snapshot, j: &JobView, now: DateTime<Utc>) {
    let failures = failures_of(s, &j.name);
    let (light, reasons) = judge(j, failures, s.repository_problem.is_some(), now);
    let _ = write!(
        out,
        r#"<section class="job" id="job-{name}"><h2><span class="light {state}"></span>{name}</h2><ul class="reasons">"#,
        name = esc(&j.name),
        state = light.as_str()
    );
    for r in &reasons {
        let _ = write!(out, "<li>{}</li>", esc(r));
    }
    out.push_str("</ul>");
    let target = j.report.as_ref().and_then(|r| r.rpo.target_seconds);
    out.push_str(&super::timeline::svg(&j.name, &j.history, target));
    if let Some(r) = &j.report {
        facts(out, r, j.read_at, now);
    }
    out.push_str(r#"<h3>Last failures</h3><ul class="failures">"#);
    let drill_failures = j
        .report
        .as_ref()
        .and_then(|r| r.last_drill.as_ref())
        .filter(|d| d.outcome != "passed");
    if failures.is_empty() && drill_failures.is_none() {
        out.push_str("<li>none since the agent started</li>");
    }
    for f in failures.iter().rev() {
        let _ = write!(
            out,
            r#"<li class="failure"><strong>{} {}</strong> {} ago ({}): <code>{}</code></li>"#,
            esc(&f.task),
            esc(&f.verdict),
            age((now - f.at).num_seconds() as f64),
            f.at.format("%Y-%m-%d %H:%M UTC"),
            esc(&f.message)
        );
    }
    if let Some(d) = drill_failures {
        let _ = write!(
            out,
            r#"<li class="failure"><strong>drill {}</strong> of backup {} ({}): <code>{}</code></li>"#,
            d.outcome,
            esc(&d.backup_id),
            d.finished_at.format("%Y-%m-%d %H:%M UTC"),
            esc(&d.failures.join("; "))
        );
    }
    out.push_str("</ul></section>");
}

/// The report's figures in a small table.
fn facts(out: &mut String, r: &StatusReport, read_at: Option<DateTime<Utc>>, now: DateTime<Utc>) {
    let kind = match r.kind {
        Some(refugio_core::JobKind::Logical) => "logical",
        Some(refugio_core::JobKind::Physical) => "physical",
        None => "unknown",
    };
    let mut rows: Vec<(&str, String)> = vec![
        ("kind", kind.into()),
        (
            "backups",
            format!("{} ({})", r.backups, crate::output::human(r.bytes)),
        ),
        (
            "newest verified",
            r.newest_verified.clone().unwrap_or_else(|| "none".into()),
        ),
        (
            "recovery point",
            r.recovery_point.map_or("none".into(), |t| {
                format!(
                    "{} ({} ago)",
                    t.format("%Y-%m-%d %H:%M UTC"),
                    age((now - t).num_seconds() as f64)
                )
            }),
        ),
        ("RPO", objective(&r.rpo)),
        ("RTO", objective(&r.rto)),
    ];
    if let Some(w) = &r.wal {
        rows.push((
            "WAL archive",
            format!(
                "{} files, {}, {} to {}, last {} ago",
                w.files,
                crate::output::human(w.bytes),
                w.oldest.as_deref().unwrap_or("?"),
                w.newest.as_deref().unwrap_or("?"),
                w.lag_seconds.map_or("?".into(), |s| age(s as f64))
            ),
        ));
    }
    if let Some(c) = &r.last_check {
        rows.push((
            "last check",
            format!(
                "{} {} ago",
                c.outcome.as_str(),
                age((now - c.finished_at).num_seconds() as f64)
            ),
        ));
    }
    if let Some(t) = read_at {
        rows.push((
            "read",
            format!("{} ago", age((now - t).num_seconds() as f64)),
        ));
    }
    out.push_str(r#"<table class="facts">"#);
    for (k, v) in rows {
        let _ = write!(out, "<tr><th>{k}</th><td>{}</td></tr>", esc(&v));
    }
    out.push_str("</table>");
}

fn objective(o: &refugio_core::status::Objective) -> String {
    match (o.seconds, o.target_seconds) {
        (Some(s), Some(t)) => format!("{} of {}", age(s), age(t)),
        (Some(s), None) => age(s),
        (None, Some(t)) => format!("none (target {})", age(t)),
        (None, None) => "none".into(),
    }
}

/// A job's light and the reasons for it, worst first; the first reason is
/// the one the summary shows.
pub fn judge(
    j: &JobView,
    failures: &[Failure],
    repository_down: bool,
    now: DateTime<Utc>,
) -> (Light, Vec<String>) {
    let mut found: Vec<(Light, String)> = Vec::new();
    if repository_down {
        found.push((
            Light::Amber,
            format!(
                "the repository cannot be read: shown as read {}",
                j.read_at.map_or("never".into(), |t| format!(
                    "{} ago",
                    age((now - t).num_seconds() as f64)
                ))
            ),
        ));
    }
    let Some(r) = &j.report else {
        found.push((Light::Amber, "not read yet".into()));
        return finish(found);
    };
    objectives(r, &mut found);
    verdicts(r, &mut found);
    backups(r, failures, now, &mut found);
    if found.is_empty() {
        found.push((Light::Green, all_well(r, now)));
    }
    finish(found)
}

/// The RPO and RTO against their targets.
fn objectives(r: &StatusReport, found: &mut Vec<(Light, String)>) {
    match (r.rpo.met, r.rpo.seconds, r.rpo.target_seconds) {
        (Some(false), Some(s), Some(t)) => found.push((
            Light::Red,
            format!(
                "RPO target missed: the recovery point is {} old (target {})",
                age(s),
                age(t)
            ),
        )),
        (Some(false), _, Some(t)) => found.push((
            Light::Red,
            format!("RPO target missed: no verified backup (target {})", age(t)),
        )),
        _ => {}
    }
    match (r.rto.met, r.rto.seconds, r.rto.target_seconds) {
        (Some(false), Some(s), Some(t)) => found.push((
            Light::Red,
            format!(
                "RTO target missed: the last drill's restore took {} (target {})",
                age(s),
                age(t)
            ),
        )),
        (Some(false), _, Some(t)) => found.push((
            Light::Red,
            format!(
                "RTO target missed: no drill measured a restore (target {})",
                age(t)
            ),
        )),
        _ => {}
    }
}

/// The last drill's and the last check's verdicts.
fn verdicts(r: &StatusReport, found: &mut Vec<(Light, String)>) {
    if let Some(d) = &r.last_drill {
        let first = d
            .failures
            .first()
            .map_or(String::new(), |f| format!(": {f}"));
        match d.outcome {
            "failed" => found.push((Light::Red, format!("the last drill failed{first}"))),
            "inconclusive" => found.push((
                Light::Amber,
                format!("the last drill could not tell{first}"),
            )),
            _ => {}
        }
    }
    if let Some(c) = &r.last_check {
        match c.outcome.as_str() {
            "damaged" => found.push((
                Light::Red,
                format!("the last check found {} damaged", c.damaged),
            )),
            "inconclusive" => found.push((Light::Amber, "the last check could not tell".into())),
            _ => {}
        }
    }
}

/// No backup, none verified, the last one failed, some dated in the future.
fn backups(
    r: &StatusReport,
    failures: &[Failure],
    now: DateTime<Utc>,
    found: &mut Vec<(Light, String)>,
) {
    let last_backup = r.last_backup.as_ref().map(|b| b.started_at);
    if last_backup.is_none() {
        found.push((Light::Amber, "no backup yet".into()));
    } else if r.newest_verified.is_none() {
        found.push((Light::Amber, "no backup is verified by a drill yet".into()));
    }
    if let Some(f) = failures
        .iter()
        .rev()
        .find(|f| f.task == "backup" && last_backup.is_none_or(|b| f.at > b))
    {
        found.push((
            Light::Amber,
            format!(
                "the last backup failed {} ago",
                age((now - f.at).num_seconds() as f64)
            ),
        ));
    }
    if !r.future.is_empty() {
        found.push((
            Light::Amber,
            format!(
                "{} backup(s) dated in the future (a writer's clock was wrong)",
                r.future.len()
            ),
        ));
    }
}

/// What a green job's line says.
fn all_well(r: &StatusReport, now: DateTime<Utc>) -> String {
    let mut ok = vec![];
    if let Some(s) = r.rpo.seconds {
        ok.push(format!("recovery point {} old", age(s)));
    }
    if let Some(d) = &r.last_drill {
        ok.push(format!(
            "last drill passed {} ago",
            age((now - d.finished_at).num_seconds() as f64)
        ));
    }
    if ok.is_empty() {
        ok.push("all well".into());
    }
    ok.join("; ")
}

fn finish(mut found: Vec<(Light, String)>) -> (Light, Vec<String>) {
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    let light = found.first().map_or(Light::Green, |f| f.0);
    (light, found.into_iter().map(|f| f.1).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use refugio_core::history::{DrillMark, History, Pass};
    use refugio_core::status::{LastBackup, LastDrill, Objective};

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-08T12:00:00Z")
            .expect("time")
            .to_utc()
    }

    fn report(job: &str, rpo_hours: f64, drill: &'static str) -> StatusReport {
        let now = now();
        let rpo = Objective {
            seconds: Some(rpo_hours * 3600.0),
            target_seconds: Some(6.0 * 3600.0),
            met: Some(rpo_hours <= 6.0),
        };
        StatusReport {
            job: job.into(),
            kind: Some(refugio_core::JobKind::Logical),
            backups: 200,
            bytes: 1 << 30,
            last_backup: Some(LastBackup {
                id: "20261208T060000Z".into(),
                started_at: now - Duration::hours(6),
                finished_at: None,
                stored_bytes: Some(1 << 20),
                age_seconds: 6 * 3600,
            }),
            newest_verified: Some("20261208T060000Z".into()),
            recovery_point: Some(now - Duration::hours(6)),
            rpo,
            last_drill: Some(LastDrill {
                backup_id: "20261208T060000Z".into(),
                finished_at: now - Duration::hours(5),
                outcome: drill,
                failures: match drill {
                    "passed" => vec![],
                    _ => vec!["row count of trips: 10 expected, 9 restored <b>".into()],
                },
            }),
            rto: Objective::default(),
            pinned: vec![],
            last_check: None,
            wal: None,
            future: vec![],
        }
    }

    /// A job with `n` backups over the last 30 days, each drilled.
    fn view(job: &str, n: i64, drill: &'static str) -> JobView {
        let now = now();
        let mut h = History {
            from: Some(now - Duration::days(30)),
            to: Some(now),
            ..History::default()
        };
        for i in 0..n {
            let t = now - Duration::minutes(30 * 24 * 60 * (n - i) / n);
            let id = t.format("%Y%m%dT%H%M%SZ").to_string();
            h.drills.push(DrillMark {
                at: t + Duration::minutes(10),
                backup_id: id.clone(),
                verdict: if i == n - 1 { drill } else { "passed" },
                key: format!("{job}/{id}/verify.json"),
            });
            h.passes.push(Pass {
                at: t + Duration::minutes(10),
                backup_start: t,
                key: format!("{job}/{id}/verify.json"),
            });
            h.backups.push((id, t));
        }
        JobView {
            name: job.into(),
            report: Some(report(job, 6.0 - 0.1, drill)),
            history: h,
            read_at: Some(now - Duration::seconds(30)),
        }
    }

    /// 50 jobs and 10,000 backups: the page is drawn from memory well
    /// within a second (in a debug build, on a shared machine).
    #[test]
    fn fifty_jobs_and_ten_thousand_backups_render_within_a_second() {
        let s = Snapshot {
            repository: "s3://bucket/prefix".into(),
            hostname: "db1".into(),
            jobs: (0..50)
                .map(|i| view(&format!("job{i}"), 200, "passed"))
                .collect(),
            ..Snapshot::default()
        };
        let started = std::time::Instant::now();
        let html = render(&s, now());
        let took = started.elapsed();
        assert!(took < std::time::Duration::from_secs(1), "{took:?}");
        assert_eq!(html.matches(r#"class="mark backup""#).count(), 10_000);
        assert_eq!(html.matches(r#"<tr class="job""#).count(), 50);
        assert_eq!(html.matches(r#"data-state="green""#).count(), 50);
    }

    #[test]
    fn states_say_why_and_repository_text_is_escaped() {
        let mut failed = view("trips", 3, "failed");
        failed.history.backups[0].0 = "<script>alert(1)</script>".into();
        let inconclusive = view("users", 3, "inconclusive");
        let mut late = view("late", 3, "passed");
        late.report = Some(report("late", 7.5, "passed"));
        let s = Snapshot {
            repository: "file:///srv/backups".into(),
            hostname: "db1".into(),
            jobs: vec![failed, inconclusive, late],
            repository_problem: Some(("connection refused".into(), now() - Duration::minutes(3))),
            ..Snapshot::default()
        };
        let html = render(&s, now());
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;"));
        assert!(html.contains(r#"data-job="trips" data-state="red""#));
        assert!(html.contains("the last drill failed: row count of trips"));
        assert!(html.contains("9 restored &lt;b&gt;"));
        assert!(html.contains(r#"data-job="users" data-state="amber""#));
        assert!(html.contains(r#"data-job="late" data-state="red""#));
        assert!(
            html.contains("RPO target missed: the recovery point is 7h 30m old (target 6h)"),
            "{html}"
        );
        assert!(html.contains(r#"id="repository-problem""#));
        assert!(html.contains("connection refused"));
        assert_eq!(html.matches(r#"class="mark drill failed""#).count(), 1);
        assert_eq!(
            html.matches(r#"class="mark drill inconclusive""#).count(),
            1
        );
    }
}
