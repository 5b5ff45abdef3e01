//! The status page (`/`) and its data (`/status.json`), served by the
//! agent beside `/metrics` when `[agent] status_page = true`.
//!
//! The page is drawn from what the agent last read, never from a read made
//! for the request: the agent's minutely repository check fills the
//! [`Board`] (each job's status report and last days), the task runner adds
//! failures as they happen. So a request costs no repository call, the page
//! answers as fast with 50 jobs as with one, and it stays up while the
//! store is down, saying so and showing what was read before.
//!
//! Nothing on the page changes state: it has no form, no script, and the
//! endpoints answer GET (and HEAD) only.

mod html;
mod timeline;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};
use refugio_core::history::History;
use refugio_core::status::StatusReport;
use refugio_store::repo::Repository;

pub use html::render;

/// Failures kept per job.
pub const FAILURES_KEPT: usize = 5;

/// Receipt signatures checked per refresh at most (the rest wait for the
/// next: a long history is vetted over a few minutes, never in one go).
const VETTED_PER_REFRESH: usize = 32;

/// What the page shows, as the agent last read it.
#[derive(Debug, Default)]
pub struct Board {
    state: Mutex<Snapshot>,
    /// In an authenticated repository: whether a receipt named passed is
    /// signed by a trusted agent, by key (receipts do not change).
    signed: Mutex<HashMap<String, bool>>,
}

/// A copy of the board for one request.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// The repository, as refugio names it (no secret).
    pub repository: String,
    pub hostname: String,
    /// The jobs in the config's order.
    pub jobs: Vec<JobView>,
    /// Failures by job, newest last.
    pub failures: BTreeMap<String, Vec<Failure>>,
    /// Why the last repository check failed, and since when checks fail
    /// (None while they pass).
    pub repository_problem: Option<(String, DateTime<Utc>)>,
}

/// One job as last read.
#[derive(Debug, Clone)]
pub struct JobView {
    pub name: String,
    pub report: Option<StatusReport>,
    pub history: History,
    /// When the report was read (None: not yet).
    pub read_at: Option<DateTime<Utc>>,
}

/// A task that failed, as the agent saw it end.
#[derive(Debug, Clone)]
pub struct Failure {
    pub at: DateTime<Utc>,
    /// `backup`, `drill`, `prune`, `check`, `restore`.
    pub task: String,
    /// `failed`, or a drill's or check's verdict (`inconclusive`, `damaged`).
    pub verdict: String,
    /// The error chain (refugio's messages carry no secret).
    pub message: String,
}

impl Board {
    pub fn new() -> Board {
        Board::default()
    }

    fn state(&self) -> MutexGuard<'_, Snapshot> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The jobs of the configuration in force (its order); jobs gone from
    /// it are dropped, their failures with them.
    pub fn set_jobs(&self, repository: &str, hostname: &str, names: &[String]) {
        let mut s = self.state();
        s.repository = repository.to_string();
        s.hostname = hostname.to_string();
        let old = std::mem::take(&mut s.jobs);
        s.jobs = names
            .iter()
            .map(|n| {
                old.iter()
                    .find(|j| &j.name == n)
                    .cloned()
                    .unwrap_or_else(|| JobView {
                        name: n.clone(),
                        report: None,
                        history: History::default(),
                        read_at: None,
                    })
            })
            .collect();
        s.failures.retain(|job, _| names.contains(job));
    }

    /// A job's fresh report and history.
    pub fn set_job(&self, name: &str, report: StatusReport, history: History, at: DateTime<Utc>) {
        let mut s = self.state();
        if let Some(j) = s.jobs.iter_mut().find(|j| j.name == name) {
            j.report = Some(report);
            j.history = history;
            j.read_at = Some(at);
        }
    }

    /// The repository check's result: `Err(why)` while it fails.
    pub fn set_repository(&self, result: Result<(), String>, at: DateTime<Utc>) {
        let mut s = self.state();
        s.repository_problem = match (result, s.repository_problem.take()) {
            (Ok(()), _) => None,
            (Err(why), Some((_, since))) => Some((why, since)),
            (Err(why), None) => Some((why, at)),
        };
    }

    /// A task that failed (the newest [`FAILURES_KEPT`] per job are kept).
    pub fn failed(&self, job: &str, failure: Failure) {
        let mut s = self.state();
        let list = s.failures.entry(job.to_string()).or_default();
        list.push(failure);
        if list.len() > FAILURES_KEPT {
            list.remove(0);
        }
    }

    /// In an authenticated repository, checks the signatures of the
    /// receipts `history` names passed that are not checked yet, a few per
    /// call (once per receipt: receipts do not change); a store that fails
    /// leaves them for the next call.
    pub async fn check_signatures(&self, repo: &Repository, history: &History) {
        if repo.authentication().is_none() {
            return;
        }
        let unknown: Vec<String> = {
            let signed = self.signed.lock().unwrap_or_else(PoisonError::into_inner);
            history
                .pass_keys()
                .filter(|k| !signed.contains_key(*k))
                .take(VETTED_PER_REFRESH)
                .map(String::from)
                .collect()
        };
        for key in unknown {
            let ok = refugio_core::receipt::any_authentic(repo, std::slice::from_ref(&key)).await;
            if let Ok(ok) = ok {
                self.signed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(key, ok);
            }
        }
    }

    /// In an authenticated repository, keeps the passes of `history` whose
    /// receipts a trusted agent signed; the others are marked `unsigned`
    /// or (not checked yet) `unchecked`, and move no RPO.
    pub fn vet(&self, repo: &Repository, history: &mut History) {
        if repo.authentication().is_none() {
            return;
        }
        let signed = self.signed.lock().unwrap_or_else(PoisonError::into_inner);
        history.vet(|k| signed.get(k).copied());
    }

    pub fn snapshot(&self) -> Snapshot {
        self.state().clone()
    }

    /// What `/status.json` answers: the reports read so far, in the
    /// config's order (the same objects as `refugio status --json`).
    pub fn reports(&self) -> Vec<StatusReport> {
        self.state()
            .jobs
            .iter()
            .filter_map(|j| j.report.clone())
            .collect()
    }
}

/// A duration in seconds, for people (`45s`, `12m`, `7h 5m`, as `refugio status` writes them).
pub(crate) fn age(seconds: f64) -> String {
    crate::output::span(seconds.max(0.0))
}

/// `s` escaped for HTML text and attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(n: i64) -> Failure {
        Failure {
            at: DateTime::from_timestamp(n, 0).expect("time"),
            task: "backup".into(),
            verdict: "failed".into(),
            message: format!("failure {n}"),
        }
    }

    #[test]
    fn failures_are_bounded_and_go_with_their_job() {
        let b = Board::new();
        b.set_jobs("file:///r", "h", &["a".into(), "b".into()]);
        for n in 0..8 {
            b.failed("a", failure(n));
        }
        b.failed("b", failure(0));
        let s = b.snapshot();
        let kept: Vec<_> = s.failures["a"].iter().map(|f| f.message.as_str()).collect();
        assert_eq!(
            kept,
            [
                "failure 3",
                "failure 4",
                "failure 5",
                "failure 6",
                "failure 7"
            ]
        );
        b.set_jobs("file:///r", "h", &["a".into()]);
        let s = b.snapshot();
        assert!(!s.failures.contains_key("b"));
        assert_eq!(s.jobs.len(), 1);
    }

    #[test]
    fn a_failing_repository_keeps_its_first_failure_time() {
        let b = Board::new();
        let t = |n| DateTime::from_timestamp(n, 0).expect("time");
        b.set_repository(Err("down".into()), t(10));
        b.set_repository(Err("still down".into()), t(70));
        assert_eq!(
            b.snapshot().repository_problem,
            Some(("still down".to_string(), t(10)))
        );
        b.set_repository(Ok(()), t(130));
        assert_eq!(b.snapshot().repository_problem, None);
    }
}
