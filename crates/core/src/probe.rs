//! Can a job run? Connects to its source, reads the server facts and finds
//! the pg_dump that fits (for `refugio config check`).

use std::path::Path;

use refugio_dump::snapshot;
use refugio_dump::tools::{self, Tool, ToolKind};
use refugio_dump::{ServerFacts, SourceSpec};
use sqlx::Connection;

use crate::error::Result;

/// What the source and the tool search said.
#[derive(Debug)]
pub struct SourceProbe {
    pub facts: ServerFacts,
    pub pg_dump: Tool,
}

/// Connects to `source` and finds a pg_dump for it (in `bindir` only, when given).
pub async fn source(source: &SourceSpec, bindir: Option<&Path>) -> Result<SourceProbe> {
    let mut conn = source.connect().await?;
    let facts = snapshot::server_facts(&mut conn, source).await?;
    let _ = conn.close().await;
    let pg_dump = tools::find(ToolKind::PgDump, facts.pg_version(), bindir).await?;
    Ok(SourceProbe { facts, pg_dump })
}
