//! Retry with exponential backoff, for temporary failures (the repository
//! unreachable for a minute, the database restarting).

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// How often and how patiently to retry. In configuration:
/// `{ attempts = 4, initial = "30s", max = "10m" }`, every field optional.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Backoff {
    /// Attempts in all, the first included; 1 means no retry. Default 4;
    /// 0 is treated as 1 (the operation always runs once).
    pub attempts: u32,
    /// The wait after the first failed attempt; it doubles after each
    /// further failure. Default 30s.
    #[serde(with = "humantime_serde")]
    pub initial: Duration,
    /// The longest wait between attempts. Default 10m.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            attempts: 4,
            initial: Duration::from_secs(30),
            max: Duration::from_secs(600),
        }
    }
}

/// Each wait is scaled by a random factor in `1 ± JITTER`, so that tasks
/// that failed together do not retry in lockstep.
const JITTER: f64 = 0.1;

impl Backoff {
    /// The nominal wait after failed attempt number `attempt` (1-based; 0
    /// counts as 1): `initial · 2^(attempt-1)`, capped at `max`. Without
    /// jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1);
        2u32.checked_pow(doublings)
            .and_then(|factor| self.initial.checked_mul(factor))
            .map_or(self.max, |delay| delay.min(self.max))
    }

    /// [`delay`](Backoff::delay) scaled by `factor` (the jitter), still
    /// capped at `max`.
    fn jittered_delay(&self, attempt: u32, factor: f64) -> Duration {
        let delay = self.delay(attempt);
        // `try_from`, not `mul_f64`, which panics on overflow.
        Duration::try_from_secs_f64(delay.as_secs_f64() * factor)
            .unwrap_or(delay)
            .min(self.max)
    }

    /// The attempt count, at least 1.
    fn attempts(&self) -> u32 {
        self.attempts.max(1)
    }
}

/// A random jitter factor in `[1 - JITTER, 1 + JITTER]`. The thread-local
/// generator stays inside this function so `retry`'s future remains `Send`.
fn jitter_factor() -> f64 {
    rand::thread_rng().gen_range(1.0 - JITTER..=1.0 + JITTER)
}

/// Runs `op` until it succeeds, fails with an error `is_temporary` calls
/// permanent, or has been tried `backoff.attempts` times; returns its last
/// result.
///
/// `op` receives the attempt number, starting at 1. Between attempts it
/// waits [`Backoff::delay`] ±10 %, logging the attempt, the wait and the
/// error (`E`'s `Display`) at warn level; the final error is not logged
/// here but returned, to be logged once where it is handled. The first
/// attempt always runs; if `cancel` fires during a wait (or has fired when
/// one would start), `retry` returns the last error at once.
pub async fn retry<T, E, F, Fut>(
    backoff: &Backoff,
    is_temporary: impl Fn(&E) -> bool,
    cancel: &CancellationToken,
    mut op: F,
) -> Result<T, E>
where
    E: Display,
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let attempts = backoff.attempts();
    let mut attempt = 1;
    loop {
        let error = match op(attempt).await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        if attempt >= attempts || !is_temporary(&error) || cancel.is_cancelled() {
            return Err(error);
        }
        let delay = backoff.jittered_delay(attempt, jitter_factor());
        tracing::warn!(
            attempt,
            attempts,
            delay = %humantime::format_duration(delay),
            error = %error,
            "attempt failed, retrying"
        );
        tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(error),
            () = tokio::time::sleep(delay) => {}
        }
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use rstest::rstest;
    use tokio::time::Instant;

    use super::*;

    #[derive(Debug, PartialEq)]
    enum Failure {
        Temporary(u32),
        Permanent(u32),
    }

    impl Display for Failure {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                Failure::Temporary(n) => write!(f, "temporary failure {n}"),
                Failure::Permanent(n) => write!(f, "permanent failure {n}"),
            }
        }
    }

    fn is_temporary(e: &Failure) -> bool {
        matches!(e, Failure::Temporary(_))
    }

    fn backoff(attempts: u32, initial: u64, max: u64) -> Backoff {
        Backoff {
            attempts,
            initial: Duration::from_secs(initial),
            max: Duration::from_secs(max),
        }
    }

    #[rstest]
    #[case(1, 30)]
    #[case(2, 60)]
    #[case(3, 120)]
    #[case(4, 240)]
    #[case(5, 480)]
    #[case(6, 600)]
    #[case(7, 600)]
    #[case(0, 30)]
    #[case(33, 600)]
    #[case(u32::MAX, 600)]
    fn delay_doubles_up_to_max(#[case] attempt: u32, #[case] seconds: u64) {
        assert_eq!(
            Backoff::default().delay(attempt),
            Duration::from_secs(seconds)
        );
    }

    #[test]
    fn delay_never_exceeds_max_even_when_initial_does() {
        let b = backoff(4, 900, 600);
        assert_eq!(b.delay(1), Duration::from_secs(600));
        assert_eq!(b.delay(2), Duration::from_secs(600));
    }

    #[test]
    fn delay_overflow_saturates_at_max() {
        let b = Backoff {
            attempts: 100,
            initial: Duration::MAX,
            max: Duration::MAX,
        };
        assert_eq!(b.delay(2), Duration::MAX);
        assert_eq!(b.jittered_delay(2, 1.1), Duration::MAX);
        assert!(b.jittered_delay(2, 0.9) < Duration::MAX);
    }

    #[rstest]
    #[case(1, 0.9, 27)]
    #[case(1, 1.1, 33)]
    #[case(5, 1.1, 528)]
    // At the cap, jitter only shortens.
    #[case(6, 1.1, 600)]
    #[case(6, 0.9, 540)]
    fn jitter_scales_and_stays_under_max(
        #[case] attempt: u32,
        #[case] factor: f64,
        #[case] seconds: u64,
    ) {
        let got = Backoff::default().jittered_delay(attempt, factor);
        assert_eq!(got.as_secs(), seconds, "{got:?}");
    }

    #[test]
    fn jitter_factor_is_within_ten_percent() {
        for _ in 0..1000 {
            let factor = jitter_factor();
            assert!((0.9..=1.1).contains(&factor), "{factor}");
        }
    }

    #[test]
    fn config_defaults_and_durations() {
        #[derive(Deserialize)]
        struct Config {
            retry: Backoff,
        }
        let all: Config =
            toml::from_str("[retry]\nattempts = 6\ninitial = \"5s\"\nmax = \"2m 30s\"\n").unwrap();
        assert_eq!(all.retry, backoff(6, 5, 150));
        let defaults: Config = toml::from_str("[retry]\n").unwrap();
        assert_eq!(defaults.retry, Backoff::default());
        assert_eq!(defaults.retry, backoff(4, 30, 600));
        let partial: Config = toml::from_str("retry = { max = \"1h\" }").unwrap();
        assert_eq!(partial.retry, backoff(4, 30, 3600));
    }

    #[test]
    fn config_errors_are_clear() {
        let unknown = toml::from_str::<Backoff>("attempt = 3")
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("unknown field `attempt`"), "{unknown}");
        let bad = toml::from_str::<Backoff>("initial = \"soon\"")
            .unwrap_err()
            .to_string();
        assert!(bad.contains("initial"), "{bad}");
    }

    /// Runs `retry` over a scripted sequence of outcomes; returns the result,
    /// the attempt numbers `op` saw and the (virtual) time it took.
    async fn run_script(
        b: Backoff,
        cancel: &CancellationToken,
        script: Vec<Result<&'static str, Failure>>,
    ) -> (Result<&'static str, Failure>, Vec<u32>, Duration) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(script.into_iter()));
        let started = Instant::now();
        let result = retry(&b, is_temporary, cancel, |attempt| {
            let seen = Arc::clone(&seen);
            let script = Arc::clone(&script);
            async move {
                seen.lock().unwrap().push(attempt);
                script
                    .lock()
                    .unwrap()
                    .next()
                    .expect("op called more often than scripted")
            }
        })
        .await;
        let seen = seen.lock().unwrap().clone();
        (result, seen, started.elapsed())
    }

    fn within_jitter(elapsed: Duration, nominal_secs: u64) -> bool {
        let nominal = Duration::from_secs(nominal_secs);
        elapsed >= nominal.mul_f64(0.9)
            && elapsed <= nominal.mul_f64(1.1) + Duration::from_millis(5)
    }

    #[tokio::test(start_paused = true)]
    async fn success_at_once_does_not_wait() {
        let cancel = CancellationToken::new();
        let (result, seen, elapsed) =
            run_script(Backoff::default(), &cancel, vec![Ok("done")]).await;
        assert_eq!(result, Ok("done"));
        assert_eq!(seen, [1]);
        assert_eq!(elapsed, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn temporary_errors_are_retried_until_success() {
        let cancel = CancellationToken::new();
        let script = vec![
            Err(Failure::Temporary(1)),
            Err(Failure::Temporary(2)),
            Ok("done"),
        ];
        let (result, seen, elapsed) = run_script(Backoff::default(), &cancel, script).await;
        assert_eq!(result, Ok("done"));
        assert_eq!(seen, [1, 2, 3]);
        // 30 s + 60 s, each ±10 %.
        assert!(within_jitter(elapsed, 90), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_the_last_attempt_with_its_error() {
        let cancel = CancellationToken::new();
        let script = (1..=4).map(|n| Err(Failure::Temporary(n))).collect();
        let (result, seen, elapsed) = run_script(backoff(4, 10, 25), &cancel, script).await;
        assert_eq!(result, Err(Failure::Temporary(4)));
        assert_eq!(seen, [1, 2, 3, 4]);
        // 10 s + 20 s + 25 s (capped); no wait after the last attempt.
        assert!(elapsed >= Duration::from_secs(9 + 18 + 22), "{elapsed:?}");
        assert!(elapsed <= Duration::from_secs(11 + 22 + 25), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried() {
        let cancel = CancellationToken::new();
        let script = vec![Err(Failure::Temporary(1)), Err(Failure::Permanent(2))];
        let (result, seen, elapsed) = run_script(Backoff::default(), &cancel, script).await;
        assert_eq!(result, Err(Failure::Permanent(2)));
        assert_eq!(seen, [1, 2]);
        assert!(within_jitter(elapsed, 30), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn one_attempt_or_zero_means_no_retry() {
        for attempts in [0, 1] {
            let cancel = CancellationToken::new();
            let script = vec![Err(Failure::Temporary(1))];
            let (result, seen, elapsed) =
                run_script(backoff(attempts, 30, 600), &cancel, script).await;
            assert_eq!(result, Err(Failure::Temporary(1)));
            assert_eq!(seen, [1]);
            assert_eq!(elapsed, Duration::ZERO);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_during_a_wait_returns_the_last_error_at_once() {
        let cancel = CancellationToken::new();
        let canceller = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            canceller.cancel();
        });
        let script = vec![Err(Failure::Temporary(1)), Ok("never")];
        let (result, seen, elapsed) = run_script(Backoff::default(), &cancel, script).await;
        assert_eq!(result, Err(Failure::Temporary(1)));
        assert_eq!(seen, [1]);
        assert_eq!(elapsed, Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn already_cancelled_runs_once_and_does_not_wait() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        let script = vec![Err(Failure::Temporary(1))];
        let (result, seen, elapsed) = run_script(Backoff::default(), &cancel, script).await;
        assert_eq!(result, Err(Failure::Temporary(1)));
        assert_eq!(seen, [1]);
        assert_eq!(elapsed, Duration::ZERO);
    }

    /// Compile-time: a retried future can move across threads (checked by
    /// the type checker, so not a test that could fail at run time).
    const _: fn() = || {
        fn assert_send<T: Send>(_: &T) {}
        let b = Backoff::default();
        let cancel = CancellationToken::new();
        let future = retry(
            &b,
            |_: &Failure| true,
            &cancel,
            |_| async { Ok::<_, Failure>(()) },
        );
        assert_send(&future);
    };
}
