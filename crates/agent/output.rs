//! Small pieces of human-readable output.

/// An error with its causes, each once (`refugio_print::chain`):
/// what refugio prints and logs instead of anyhow's `{:#}`, which repeats
/// the causes that other crates' errors (sqlx's) embed in their message.
pub fn error_chain(e: &anyhow::Error) -> String {
    refugio_print::chain(e.as_ref())
}

/// `12.3 MiB`.
pub fn human(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

/// A duration for people: `45s`, `12m 5s`, `2h 14m`, `3d 4h`.
pub fn span(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    let (major, minor) = match s {
        0..60 => return format!("{s}s"),
        60..3600 => ((s / 60, "m"), (s % 60, "s")),
        3600..86400 => ((s / 3600, "h"), (s % 3600 / 60, "m")),
        _ => ((s / 86400, "d"), (s % 86400 / 3600, "h")),
    };
    match minor.0 {
        0 => format!("{}{}", major.0, major.1),
        n => format!("{}{} {n}{}", major.0, major.1, minor.1),
    }
}

/// A measured duration for people: tenths of a second under a minute
/// (`12.3s`), else as [`span`].
pub fn duration(seconds: f64) -> String {
    if seconds < 60.0 {
        format!("{:.1}s", seconds.max(0.0))
    } else {
        span(seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_as_durations() {
        assert_eq!(span(0.4), "0s");
        assert_eq!(span(59.0), "59s");
        assert_eq!(span(725.0), "12m 5s");
        assert_eq!(span(6.0 * 3600.0), "6h");
        assert_eq!(span(8040.0), "2h 14m");
        assert_eq!(span(3.0 * 86400.0 + 4.0 * 3600.0 + 59.0), "3d 4h");
        assert_eq!(span(-5.0), "0s");
    }

    #[test]
    fn durations_keep_tenths_under_a_minute() {
        assert_eq!(duration(12.34), "12.3s");
        assert_eq!(duration(95.25), "1m 35s");
    }
}
