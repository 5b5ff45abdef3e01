//! Standby set-up details: what `pg_basebackup -R` writes, made to work
//! with the server it is for.

use std::path::Path;

use anyhow::{Context, Result};

/// `-R` writes `primary_conninfo` with every option the client's libpq
/// knows; a server built against an older libpq refuses unknown ones (e.g.
/// `sslcertmode`) and its WAL receiver never starts. Keeps only what
/// streaming from the primary's socket needs.
pub(crate) fn trim_primary_conninfo(data: &Path, socket_dir: &Path, port: u16) -> Result<()> {
    let auto = data.join("postgresql.auto.conf");
    let conf =
        std::fs::read_to_string(&auto).with_context(|| format!("reading {}", auto.display()))?;
    let conninfo = format!(
        "primary_conninfo = 'host={} port={port} user=postgres'",
        socket_dir.display()
    );
    let lines: Vec<String> = conf
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("primary_conninfo") {
                conninfo.clone()
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(&auto, lines.join("\n") + "\n")
        .with_context(|| format!("writing {}", auto.display()))
}
