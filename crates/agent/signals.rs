//! SIGTERM and SIGINT: the one place they turn into a stop, for the agent's
//! main loop and for the one-shot commands.

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// SIGTERM and SIGINT, installed (so neither kills the process any more).
pub struct Stop {
    term: Signal,
    int: Signal,
}

impl Stop {
    /// Installs both handlers.
    pub fn install() -> std::io::Result<Stop> {
        Ok(Stop {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for the next SIGTERM or SIGINT; returns its name.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Cancels `token` at the first SIGTERM or SIGINT (a command then aborts
/// its uploads, drops its scratch database, and commits nothing).
pub fn cancel_on_stop(token: CancellationToken) {
    let mut stop = match Stop::install() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "no SIGTERM/SIGINT handler");
            return;
        }
    };
    tokio::spawn(async move {
        let name = stop.recv().await;
        tracing::warn!(
            signal = name,
            "signal received: cancelling, nothing will be committed"
        );
        token.cancel();
    });
}
