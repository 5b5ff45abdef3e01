//! Standby set-up details: what `pg_basebackup -R` writes, made to work
//! with the server it is for.

use std::path::Path;

use std::process::Stdio;

use anyhow::{anyhow, Context, Result};

use crate::Cluster;

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

impl Cluster {
    /// Starts a hot standby of `primary`: `pg_basebackup -R` over the
    /// primary's socket (streaming replication), then the server in its own
    /// directory. It replays the primary's changes and accepts read-only
    /// connections.
    pub async fn start_standby(primary: &Cluster) -> Result<Cluster> {
        let bindir = primary.bindir().to_path_buf();
        let mut cluster = Cluster::empty(primary.major(), bindir)?;
        let output = cluster
            .server_command("pg_basebackup")
            .arg("-D")
            .arg(cluster.data_dir())
            .args([
                "-R",
                "-X",
                "stream",
                "--no-sync",
                "--checkpoint=fast",
                "-U",
                "postgres",
                "-h",
            ])
            .arg(primary.socket_dir())
            .args(["-p", &primary.port().to_string()])
            .stdin(Stdio::null())
            .output()
            .await
            .context("running pg_basebackup")?;
        if !output.status.success() {
            return Err(anyhow!(
                "pg_basebackup failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        trim_primary_conninfo(cluster.data_dir(), primary.socket_dir(), primary.port())?;
        cluster.spawn_server()?;
        cluster.wait_ready().await?;
        Ok(cluster)
    }
}
