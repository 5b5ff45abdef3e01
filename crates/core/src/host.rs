//! This host's name, for markers others read (scratch database owners,
//! webhook events).

/// The kernel's host name, `unknown` when it cannot be read.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
