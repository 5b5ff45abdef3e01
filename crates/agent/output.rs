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
