//! A running task seen from outside: its bytes so far in `/metrics`
//! (`refugio_task_running`, `refugio_task_progress_bytes`, every 10 s) and a
//! `task-progress` log line every minute, so a three-hour dump under
//! `refugio run` is not silent between its start and its end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use refugio_core::Progress;
use refugio_schedule::TaskKind;

use crate::metrics::Metrics;

/// How often the bytes gauge is updated.
const TICK: Duration = Duration::from_secs(10);
/// How many ticks between two log lines.
const TICKS_PER_LINE: u32 = 6;

/// Watches one task while it lives; dropping it marks the task ended.
pub(super) struct Watch {
    progress: Arc<Progress>,
    metrics: Arc<Metrics>,
    job: String,
    task: &'static str,
    ticker: tokio::task::JoinHandle<()>,
}

impl Watch {
    pub(super) fn start(metrics: Arc<Metrics>, job: &str, kind: TaskKind) -> Watch {
        let task = kind.as_str();
        metrics.task_running(job, task, true);
        let progress = Progress::new();
        let ticker = tokio::spawn({
            let (p, m, job) = (Arc::clone(&progress), Arc::clone(&metrics), job.to_string());
            async move {
                let started = Instant::now();
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + TICK, TICK);
                let mut n = 0u32;
                loop {
                    tick.tick().await;
                    n += 1;
                    let bytes = p.stored_bytes().max(p.read_bytes());
                    m.task_progress(&job, task, bytes);
                    if n % TICKS_PER_LINE == 0 {
                        log_line(&job, task, &p, started.elapsed());
                    }
                }
            }
        });
        Watch {
            progress,
            metrics,
            job: job.to_string(),
            task,
            ticker,
        }
    }

    /// The counters the task's operation adds to.
    pub(super) fn progress(&self) -> Arc<Progress> {
        Arc::clone(&self.progress)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.ticker.abort();
        self.metrics.task_running(&self.job, self.task, false);
    }
}

fn log_line(job: &str, task: &str, p: &Progress, elapsed: Duration) {
    let total = p.total_bytes();
    tracing::info!(
        job,
        task,
        phase = %p.phase(),
        read_bytes = p.read_bytes(),
        stored_bytes = p.stored_bytes(),
        total_bytes = (total > 0).then_some(total),
        elapsed_seconds = elapsed.as_secs(),
        "task-progress"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[tokio::test(start_paused = true)]
    async fn a_running_task_shows_its_bytes_until_it_ends() {
        let m = Arc::new(Metrics::new());
        let w = Watch::start(Arc::clone(&m), "trips", TaskKind::Backup);
        let running = r#"refugio_task_running{backup_job="trips",task="backup"} "#;
        let bytes = r#"refugio_task_progress_bytes{backup_job="trips",task="backup"} "#;
        assert!(m.render().contains(&format!("{running}1\n")));
        w.progress().stored.store(5000, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(11)).await;
        let text = m.render();
        assert!(text.contains(&format!("{bytes}5000\n")), "{text}");
        drop(w);
        let text = m.render();
        assert!(text.contains(&format!("{running}0\n")), "{text}");
        assert!(!text.contains(bytes), "{text}");
    }
}
