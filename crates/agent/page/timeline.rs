//! A job's last days as an inline SVG: a row of backups, a row of drill
//! verdicts, the RPO a verified backup gave over time against its target,
//! and for a physical job the span its WAL archive covers. Every mark
//! carries a class (`mark backup`, `mark drill passed`, …) and a `<title>`
//! (shown on hover, read by screen readers).

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use refugio_core::history::History;

use super::{age, esc};

const WIDTH: f64 = 720.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 10.0;
const BACKUPS_Y: f64 = 18.0;
const DRILLS_Y: f64 = 42.0;
const RPO_TOP: f64 = 60.0;
const RPO_BOTTOM: f64 = 120.0;
const WAL_Y: f64 = 132.0;
const HEIGHT: f64 = 150.0;

/// The picture of `h`; `rpo_target` in seconds.
pub fn svg(job: &str, h: &History, rpo_target: Option<f64>) -> String {
    let (Some(from), Some(to)) = (h.from, h.to) else {
        return String::new();
    };
    let span = (to - from).num_seconds().max(1) as f64;
    let x = |t: DateTime<Utc>| {
        let f = ((t - from).num_seconds() as f64 / span).clamp(0.0, 1.0);
        LEFT + f * (WIDTH - LEFT - RIGHT)
    };
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="timeline" data-job="{}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="the last 30 days of job {}">"#,
        esc(job),
        esc(job)
    );
    axis(&mut s, from, to, &x);
    for (id, t) in &h.backups {
        let _ = write!(
            s,
            r#"<line class="mark backup" data-id="{}" x1="{:.1}" x2="{:.1}" y1="{}" y2="{}"><title>backup {} started {}</title></line>"#,
            esc(id),
            x(*t),
            x(*t),
            BACKUPS_Y - 7.0,
            BACKUPS_Y + 7.0,
            esc(id),
            t.format("%Y-%m-%d %H:%M UTC")
        );
    }
    for d in &h.drills {
        let _ = write!(
            s,
            r#"<circle class="mark drill {}" data-backup="{}" cx="{:.1}" cy="{DRILLS_Y}" r="5"><title>drill of {}: {} at {}</title></circle>"#,
            d.verdict,
            esc(&d.backup_id),
            x(d.at),
            esc(&d.backup_id),
            d.verdict,
            d.at.format("%Y-%m-%d %H:%M UTC")
        );
    }
    rpo(&mut s, h, rpo_target, &x);
    if let Some((oldest, newest)) = h.wal {
        let (a, b) = (x(oldest), x(newest));
        let _ = write!(
            s,
            r#"<rect class="mark wal" x="{a:.1}" y="{}" width="{:.1}" height="8"><title>WAL archived from {} to {}</title></rect>"#,
            WAL_Y - 4.0,
            (b - a).max(1.0),
            oldest.format("%Y-%m-%d %H:%M UTC"),
            newest.format("%Y-%m-%d %H:%M UTC")
        );
    }
    s.push_str("</svg>");
    s
}

/// Row labels and a tick per week.
fn axis(s: &mut String, from: DateTime<Utc>, to: DateTime<Utc>, x: &dyn Fn(DateTime<Utc>) -> f64) {
    for (label, y) in [
        ("backups", BACKUPS_Y),
        ("drills", DRILLS_Y),
        ("RPO", (RPO_TOP + RPO_BOTTOM) / 2.0),
        ("WAL", WAL_Y),
    ] {
        let _ = write!(
            s,
            r#"<text class="label" x="4" y="{:.1}">{label}</text>"#,
            y + 4.0
        );
    }
    let mut t = from;
    while t <= to {
        let _ = write!(
            s,
            r#"<line class="grid" x1="{:.1}" x2="{:.1}" y1="4" y2="{}"/><text class="tick" x="{:.1}" y="{}">{}</text>"#,
            x(t),
            x(t),
            HEIGHT - 12.0,
            x(t),
            HEIGHT - 1.0,
            t.format("%d %b")
        );
        t += chrono::Duration::days(7);
    }
}

/// The RPO as a sawtooth: from each verified step it grows with time,
/// and falls when a drill verifies a newer backup; the target dashed.
fn rpo(s: &mut String, h: &History, target: Option<f64>, x: &dyn Fn(DateTime<Utc>) -> f64) {
    let (Some(from), Some(to)) = (h.from, h.to) else {
        return;
    };
    // (time, RPO seconds) at each corner.
    let mut corners: Vec<(DateTime<Utc>, f64)> = Vec::new();
    let steps = h.verified_steps();
    for (i, (at, start)) in steps.iter().enumerate() {
        let begin = (*at).max(from);
        let end = steps.get(i + 1).map_or(to, |n| n.0).min(to);
        if end < begin {
            continue;
        }
        corners.push((begin, (begin - *start).num_seconds() as f64));
        corners.push((end, (end - *start).num_seconds() as f64));
    }
    let top = corners
        .iter()
        .map(|c| c.1)
        .chain(target.map(|t| t * 1.25))
        .fold(1.0_f64, f64::max);
    let y = |v: f64| RPO_BOTTOM - (v / top).clamp(0.0, 1.0) * (RPO_BOTTOM - RPO_TOP);
    if let Some(t) = target {
        let _ = write!(
            s,
            r#"<line class="rpo-target" x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}"><title>RPO target {}</title></line>"#,
            WIDTH - RIGHT,
            y(t),
            y(t),
            age(t)
        );
    }
    if corners.is_empty() {
        return;
    }
    let points: Vec<String> = corners
        .iter()
        .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
        .collect();
    let worst = corners.iter().map(|c| c.1).fold(0.0_f64, f64::max);
    let _ = write!(
        s,
        r#"<polyline class="rpo" points="{}"><title>RPO from verified backups (at most {})</title></polyline>"#,
        points.join(" "),
        age(worst)
    );
}
