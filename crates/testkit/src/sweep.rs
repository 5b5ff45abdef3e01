//! Cleaning up after test processes that died: every cluster directory
//! names its owning process (pid and start time); a later start stops the
//! servers of, and removes, directories whose owner is gone.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use nix::sys::signal::kill;
use nix::unistd::Pid;

/// Clusters live in `/tmp/refugio-pg-XXXXXX`. Short on purpose: a unix socket
/// path is at most 107 bytes, and `TMPDIR` may be long.
pub(crate) const TMP_ROOT: &str = "/tmp";
pub(crate) const DIR_PREFIX: &str = "refugio-pg-";
/// File in a cluster directory naming the process that owns the cluster, so a
/// later start can clean up after a test process that was killed.
pub(crate) const OWNER_FILE: &str = "owner";

pub(crate) fn signal(pid: u32, sig: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(pid), sig);
    }
}

/// How long a stale server gets to stop before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// "pid starttime" of this process: the pid alone could be reused.
pub(crate) fn owner_record() -> String {
    let pid = std::process::id();
    format!("{pid} {}\n", process_start_time(pid).unwrap_or_default())
}

/// Field 22 of /proc/PID/stat: when the process started, in clock ticks since boot.
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// Stops the servers of, and removes, cluster directories whose owning test
/// process no longer exists (killed by a timeout, say, so its Drop never ran).
/// Best effort: a failure here must not fail the test that starts a cluster.
pub(crate) fn sweep_stale_clusters() {
    let Ok(entries) = fs::read_dir(TMP_ROOT) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        let dir = entry.path();
        // No owner file yet: another process is creating it right now.
        let Ok(owner) = fs::read_to_string(dir.join(OWNER_FILE)) else {
            continue;
        };
        let mut fields = owner.split_whitespace().map(str::parse::<u64>);
        let (Some(Ok(pid)), Some(Ok(start))) = (fields.next(), fields.next()) else {
            continue;
        };
        let owner_alive = u32::try_from(pid)
            .ok()
            .and_then(process_start_time)
            .is_some_and(|now| now == start);
        if owner_alive {
            continue;
        }
        let data = dir.join("data");
        if let Some(pid) = stale_postmaster(&data) {
            tracing::warn!(dir = %dir.display(), pid, "stopping a cluster left behind by a dead test process");
            signal(pid, Signal::SIGQUIT);
            let deadline = Instant::now() + STOP_TIMEOUT;
            while postmaster_running(pid, &data) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if postmaster_running(pid, &data) {
                signal(pid, Signal::SIGKILL);
            }
        }
        let _ = fs::remove_dir_all(&dir);
    }
}

/// The pid in `data/postmaster.pid`, if that process is still the postmaster
/// of `data` (its command line names the directory).
fn stale_postmaster(data: &Path) -> Option<u32> {
    let pidfile = fs::read_to_string(data.join("postmaster.pid")).ok()?;
    let pid: u32 = pidfile.lines().next()?.trim().parse().ok()?;
    postmaster_running(pid, data).then_some(pid)
}

fn postmaster_running(pid: u32, data: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let needle = data.as_os_str().as_encoded_bytes();
    cmdline.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_time_is_readable() {
        assert!(process_start_time(std::process::id()).is_some());
        assert!(owner_record().starts_with(&format!("{} ", std::process::id())));
    }
}
