//! How keys are named: a path segment refugio accepts (a job, a backup
//! id) and the backup ids made of times. Pure functions, used by the
//! repository and the manifest alike (re-exported from `repo`).

use chrono::{DateTime, Utc};

/// Whether a job name or backup id can be used as one path segment.
pub fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s != "."
        && s != ".."
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// The start time encoded in a backup id (`20261128T060000Z[-n]`), by
/// the clock of the host that took it.
pub fn id_time(id: &str) -> Option<DateTime<Utc>> {
    let stamp = id.get(..16)?;
    chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ")
        .ok()
        .map(|t| t.and_utc())
}

/// The backup id for a start time: `20261128T060000Z`, with `-N` appended
/// when `n > 1` (several backups started in the same second).
pub fn backup_id(start: DateTime<Utc>, n: u32) -> String {
    let base = start.format("%Y%m%dT%H%M%SZ").to_string();
    if n <= 1 {
        base
    } else {
        format!("{base}-{n}")
    }
}
