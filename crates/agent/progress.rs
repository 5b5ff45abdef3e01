//! Progress on a terminal for `backup`, `restore`, `verify` (and `check
//! --read-data`): the operation's counters ([`refugio_core::Progress`])
//! drawn by indicatif on stderr every 200 ms: phase, bytes, rate, elapsed
//! time. Off when stderr is not a terminal (services, pipes, CI) and with
//! `--quiet`; the agent never draws one.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use refugio_core::Progress;

use crate::output::human;

static QUIET: AtomicBool = AtomicBool::new(false);

/// `--quiet`: no progress display.
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// What the two counters mean for an operation.
#[derive(Debug, Clone, Copy)]
pub struct Labels {
    /// [`Progress::read`]: `from pg_dump`, `restored`, `read`.
    pub read: &'static str,
    /// [`Progress::stored`]: `stored`, `fetched`; None: not shown.
    pub stored: Option<&'static str>,
    /// Whose rate is shown: the stored counter's (else the read one's).
    pub rate_of_stored: bool,
}

pub const BACKUP: Labels = Labels {
    read: "from pg_dump",
    stored: Some("stored"),
    rate_of_stored: false,
};
pub const RESTORE: Labels = Labels {
    read: "restored",
    stored: Some("fetched"),
    rate_of_stored: true,
};
pub const CHECK: Labels = Labels {
    read: "read",
    stored: None,
    rate_of_stored: false,
};

/// A progress display while it lives; cleared when dropped.
pub struct Shown {
    progress: Arc<Progress>,
    bar: ProgressBar,
    task: tokio::task::JoinHandle<()>,
}

impl Shown {
    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }
}

impl Drop for Shown {
    fn drop(&mut self) {
        self.task.abort();
        self.bar.finish_and_clear();
    }
}

/// The line drawn: `restoring app · 1.2 GiB fetched · 3.4 GiB restored · 80.1 MiB/s`.
pub fn line(p: &Progress, labels: Labels, elapsed: Duration) -> String {
    let read = p.read_bytes();
    let stored = p.stored_bytes();
    let mut parts = Vec::new();
    let phase = p.phase();
    if !phase.is_empty() {
        parts.push(phase);
    }
    parts.push(format!("{} {}", human(read), labels.read));
    if let Some(l) = labels.stored {
        parts.push(format!("{} {l}", human(stored)));
    }
    let rated = if labels.rate_of_stored { stored } else { read };
    let secs = elapsed.as_secs_f64();
    if secs > 0.5 {
        parts.push(format!("{}/s", human((rated as f64 / secs) as u64)));
    }
    // A percentage and what is left at the rate so far, when the total is
    // known and the count has not passed it.
    let total = p.total_bytes();
    if total > 0 && rated <= total {
        let done = rated as f64 / total as f64;
        parts.push(format!("{:.0}%", done * 100.0));
        if secs > 2.0 && rated > 0 {
            let left = secs * (total - rated) as f64 / rated as f64;
            parts.push(format!("ETA {}", crate::output::span(left)));
        }
    }
    parts.join(" · ")
}

/// Starts a display for an operation, unless `--quiet` or stderr is not a
/// terminal (then None: the operation runs without counters).
pub fn start(labels: Labels) -> Option<Shown> {
    if QUIET.load(Ordering::Relaxed) || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(5));
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let progress = Progress::new();
    let (p, b) = (progress.clone(), bar.clone());
    let started = Instant::now();
    let task = tokio::spawn(async move {
        // The first draw after 200 ms: an operation that ends sooner
        // leaves the terminal alone.
        let every = Duration::from_millis(200);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tick.tick().await;
            b.set_message(line(&p, labels, started.elapsed()));
            b.tick();
        }
    });
    Some(Shown {
        progress,
        bar,
        task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_says_phase_bytes_and_rate() {
        let p = Progress::new();
        p.set_phase("dumping app");
        p.read.store(10 * 1024 * 1024, Ordering::Relaxed);
        p.stored.store(3 * 1024 * 1024, Ordering::Relaxed);
        let l = line(&p, BACKUP, Duration::from_secs(2));
        assert_eq!(
            l,
            "dumping app · 10.0 MiB from pg_dump · 3.0 MiB stored · 5.0 MiB/s"
        );
        let l = line(&p, RESTORE, Duration::from_secs(2));
        assert!(l.ends_with("1.5 MiB/s"), "{l}");
        // With a total: how far, and what is left at this rate.
        p.add_total(12 * 1024 * 1024);
        let l = line(&p, RESTORE, Duration::from_secs(10));
        assert!(l.ends_with("25% · ETA 30s"), "{l}");
        assert!(!line(&p, CHECK, Duration::ZERO).contains("stored"));
    }
}
