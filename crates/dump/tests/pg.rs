//! The dump crate against real PostgreSQL 15 and 16: tool discovery,
//! snapshots, and the lock-queue trap that `--lock-wait-timeout` breaks.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use refugio_dump::snapshot::{RowCountMode, Snapshot, SnapshotOptions};
use refugio_dump::spawn::{self, DumpArgs};
use refugio_dump::tools::{self, ToolKind};
use refugio_dump::{DumpFormat, Error, SourceSpec};
use refugio_testkit::Cluster;
use rstest::rstest;
use tokio::io::AsyncReadExt;

fn opts() -> SnapshotOptions {
    SnapshotOptions {
        lock_timeout: Duration::from_secs(2),
        row_counts: RowCountMode::Exact,
        exclude_tables: vec![],
        include_tables: vec![],
        exclude_table_data: vec![],
    }
}

#[rstest]
#[case(15)]
#[case(16)]
#[case(17)]
#[case(18)]
#[tokio::test(flavor = "multi_thread")]
async fn snapshot_counts_match_and_dump_reads_it(#[case] major: u32) -> Result<()> {
    let c = Cluster::start(major).await?;
    c.create_database("app").await?;
    let expected = refugio_testkit::sample::load_sample(&c, "app").await?;
    let spec = SourceSpec::new(&c.url("app"), None, None)?;
    let snap = Snapshot::take(&spec, &opts()).await?;
    assert_eq!(snap.facts.version_num / 10000, major);
    assert!(!snap.facts.in_recovery);
    assert!(snap.facts.lsn.is_some());
    let mut got: Vec<(String, String, i64)> = snap
        .tables
        .iter()
        .map(|t| (t.schema.clone(), t.name.clone(), t.rows))
        .collect();
    got.sort();
    let mut want = expected.clone();
    want.sort();
    assert_eq!(got, want);

    // Rows added after the snapshot are not in the dump.
    c.psql("app", "INSERT INTO trips (rider_id, started_at, distance_km, fare) SELECT rider_id, started_at, distance_km, fare FROM trips LIMIT 1").await?;
    let tool = tools::find(ToolKind::PgDump, snap.facts.pg_version(), Some(c.bindir())).await?;
    let args = DumpArgs {
        format: DumpFormat::Plain,
        snapshot: Some(&snap.id),
        lock_wait_timeout: Duration::from_secs(5),
        exclude_tables: &[],
        exclude_table_data: &[],
        extra_args: &[],
        archive_compression: None,
    };
    let mut out = spawn::pg_dump(&tool, &spec, &args)?;
    let mut sql = String::new();
    out.read_to_string(&mut sql).await?;
    snap.release().await;
    let trips = want
        .iter()
        .find(|(_, t, _)| t == "trips")
        .context("trips")?
        .2;
    let copy = sql
        .split("COPY public.trips ")
        .nth(1)
        .context("COPY trips")?;
    let rows = copy.lines().skip(1).take_while(|l| *l != "\\.").count() as i64;
    assert_eq!(
        rows, trips,
        "the dump holds the snapshot's rows, not the later insert"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_status_is_checked_after_eof() -> Result<()> {
    let c = Cluster::start(16).await?;
    c.create_database("app").await?;
    let spec = SourceSpec::new(&c.url("app"), None, None)?;
    let tool = tools::find(
        ToolKind::PgDump,
        refugio_dump::PgVersion {
            major: 16,
            minor: 0,
        },
        Some(c.bindir()),
    )
    .await?;
    let bad = ["--table=no_such_table_anywhere".to_string()];
    let args = DumpArgs {
        format: DumpFormat::Custom,
        snapshot: None,
        lock_wait_timeout: Duration::from_secs(5),
        exclude_tables: &[],
        exclude_table_data: &[],
        extra_args: &bad,
        archive_compression: None,
    };
    let mut out = spawn::pg_dump(&tool, &spec, &args)?;
    let mut buf = Vec::new();
    let err = out
        .read_to_end(&mut buf)
        .await
        .expect_err("pg_dump fails: no matching table");
    let inner = refugio_dump::process::tool_error(&err).context("a ToolFailed inside")?;
    match inner {
        Error::ToolFailed {
            tool,
            stderr_tail,
            lock_timeout,
            ..
        } => {
            assert_eq!(*tool, "pg_dump");
            assert!(stderr_tail.contains("no matching tables"), "{stderr_tail}");
            assert!(!lock_timeout);
        }
        other => panic!("unexpected {other}"),
    }
    assert!(!inner.is_temporary(), "a bad argument is permanent");
    Ok(())
}

/// A server restart (fast shutdown, start) is temporary trouble whichever
/// way a client meets it: pg_dump caught mid-COPY fails with an error
/// marked as a lost connection, and a query on a connection the restart
/// ended fails with an error marked temporary; both are worth a retry.
#[tokio::test(flavor = "multi_thread")]
async fn a_restart_under_pg_dump_and_a_session_is_temporary() -> Result<()> {
    let mut c = Cluster::start(16).await?;
    c.create_database("app").await?;
    // Several MiB of COPY output: more than the pipe and socket buffers, so
    // pg_dump is still dumping while the test does not read.
    refugio_testkit::sample::load_bulk(&c, "app", 50_000).await?;
    let spec = SourceSpec::new(&c.url("app"), None, None)?;
    let tool = tools::find(
        ToolKind::PgDump,
        refugio_dump::PgVersion {
            major: 16,
            minor: 0,
        },
        Some(c.bindir()),
    )
    .await?;
    let args = DumpArgs {
        format: DumpFormat::Custom,
        snapshot: None,
        lock_wait_timeout: Duration::from_secs(5),
        exclude_tables: &[],
        exclude_table_data: &[],
        extra_args: &[],
        archive_compression: None,
    };
    let mut out = spawn::pg_dump(&tool, &spec, &args)?;
    let mut first = vec![0u8; 64 * 1024];
    out.read_exact(&mut first).await?;
    let mut conn = spec.connect().await?;
    c.restart().await?;

    let mut rest = Vec::new();
    let err = out
        .read_to_end(&mut rest)
        .await
        .expect_err("pg_dump fails: its server went away");
    let inner = refugio_dump::process::tool_error(&err).context("a ToolFailed inside")?;
    match inner {
        Error::ToolFailed {
            connection_lost,
            lock_timeout,
            stderr_tail,
            ..
        } => {
            assert!(*connection_lost, "{stderr_tail}");
            assert!(!lock_timeout);
        }
        other => panic!("unexpected {other}"),
    }
    assert!(inner.is_temporary(), "{inner}");

    let source = sqlx::query("SELECT 1")
        .execute(&mut conn)
        .await
        .expect_err("the restart ended the session");
    let e = Error::Query {
        url: spec.redacted(),
        what: "a query after a restart".into(),
        source,
    };
    assert!(e.is_temporary(), "{e}: {:?}", std::error::Error::source(&e));
    Ok(())
}

/// The trap: our snapshot holds ACCESS SHARE on `trips`; a TRUNCATE queues
/// behind it; pg_dump's LOCK TABLE queues behind the TRUNCATE. Without a
/// lock wait timeout that never ends. With one, pg_dump fails quickly with
/// an error marked as a lock timeout (retryable), and the snapshot's counts
/// were never contradicted by a dump.
#[tokio::test(flavor = "multi_thread")]
async fn lock_queue_behind_truncate_times_out_instead_of_hanging() -> Result<()> {
    let c = Cluster::start(16).await?;
    c.create_database("app").await?;
    refugio_testkit::sample::load_sample(&c, "app").await?;
    let spec = SourceSpec::new(&c.url("app"), None, None)?;
    let snap = Snapshot::take(&spec, &opts()).await?;

    let url = c.url("app");
    let psql = c.bindir().join("psql");
    let truncate = tokio::spawn(async move {
        tokio::process::Command::new(psql)
            .args([url.as_str(), "-X", "-c", "TRUNCATE trips CASCADE"])
            .output()
            .await
    });
    let pool = c.pool("app").await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM pg_locks WHERE NOT granted")
        .fetch_one(&pool)
        .await?
        == 0
    {
        anyhow::ensure!(Instant::now() < deadline, "TRUNCATE never waited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let tool = tools::find(ToolKind::PgDump, snap.facts.pg_version(), Some(c.bindir())).await?;
    let args = DumpArgs {
        format: DumpFormat::Custom,
        snapshot: Some(&snap.id),
        lock_wait_timeout: Duration::from_millis(500),
        exclude_tables: &[],
        exclude_table_data: &[],
        extra_args: &[],
        archive_compression: None,
    };
    let started = Instant::now();
    let mut out = spawn::pg_dump(&tool, &spec, &args)?;
    let mut sink = Vec::new();
    let err = tokio::time::timeout(Duration::from_secs(30), out.read_to_end(&mut sink))
        .await
        .context("pg_dump hung")?
        .expect_err("lock timeout");
    assert!(started.elapsed() < Duration::from_secs(20));
    let inner = refugio_dump::process::tool_error(&err).context("ToolFailed")?;
    assert!(
        inner.is_temporary(),
        "a lock timeout is worth a retry: {inner}"
    );
    snap.release().await;
    let t = truncate.await??;
    assert!(t.status.success());
    assert_eq!(
        c.psql("app", "SELECT count(*) FROM trips").await?.trim(),
        "0"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn finds_the_closest_fitting_pg_dump() -> Result<()> {
    let b16 = refugio_testkit::pg_bindir(16)?;
    let t = tools::find(
        ToolKind::PgDump,
        refugio_dump::PgVersion {
            major: 16,
            minor: 2,
        },
        Some(&b16),
    )
    .await?;
    assert_eq!(t.version.major, 16);
    let b15 = refugio_testkit::pg_bindir(15)?;
    let e = tools::find(
        ToolKind::PgDump,
        refugio_dump::PgVersion {
            major: 16,
            minor: 2,
        },
        Some(&b15),
    )
    .await
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("PostgreSQL 16.2") && msg.contains("(15."),
        "{msg}"
    );
    // Without a bindir the system search finds Debian's 15 for a 15 server.
    let t = tools::find(
        ToolKind::PgDump,
        refugio_dump::PgVersion {
            major: 15,
            minor: 0,
        },
        None,
    )
    .await?;
    assert!(t.version.major >= 15);
    Ok(())
}
