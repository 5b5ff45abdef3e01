//! Throwaway clusters on every supported major: start, sample data, URLs for
//! sqlx and libpq, the password role, and cleanup.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;

use anyhow::{Context, Result};
use refugio_testkit::{
    load_bulk, load_sample, pg_bindir, Cluster, PASSWORD_USER, PASSWORD_USER_PASSWORD,
};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, Row};

const EXPECTED_SAMPLE: &[(&str, &str, i64)] = &[
    ("billing", "invoices", 40),
    ("public", "attachments", 2),
    ("public", "café_ñandú", 4),
    ("public", "documents", 10),
    ("public", "events", 25),
    ("public", "riders", 3),
    ("public", "trips", 120),
];

#[tokio::test]
async fn cluster_15_full_cycle() -> Result<()> {
    full_cycle(15).await
}

#[tokio::test]
async fn cluster_16_full_cycle() -> Result<()> {
    full_cycle(16).await
}

async fn full_cycle(major: u32) -> Result<()> {
    let cluster = Cluster::start(major).await?;
    assert_eq!(cluster.major(), major);
    let dir = cluster.socket_dir().to_path_buf();
    let pid = cluster.server_pid().context("server pid")?;
    assert!(
        dir.join(".s.PGSQL.5432").exists(),
        "socket in {}",
        dir.display()
    );

    let version: u32 = cluster
        .psql("postgres", "SHOW server_version_num")
        .await?
        .parse()?;
    assert_eq!(version / 10000, major);

    cluster.create_database("app").await?;
    let tables = load_sample(&cluster, "app").await?;
    let expected: Vec<(String, String, i64)> = EXPECTED_SAMPLE
        .iter()
        .map(|(s, t, n)| (s.to_string(), t.to_string(), *n))
        .collect();
    assert_eq!(tables, expected);

    // Every user table is in the list, with its real row count (via sqlx,
    // which also proves url() works for sqlx).
    let pool = cluster.pool("app").await?;
    let rows = sqlx::query(
        "SELECT schemaname::text, relname::text FROM pg_stat_user_tables ORDER BY 1, 2",
    )
    .fetch_all(&pool)
    .await?;
    let mut actual = Vec::new();
    for row in rows {
        let schema: String = row.get(0);
        let table: String = row.get(1);
        let count: i64 =
            sqlx::query_scalar(&format!("SELECT count(*) FROM \"{schema}\".\"{table}\""))
                .fetch_one(&pool)
                .await?;
        actual.push((schema, table, count));
    }
    assert_eq!(actual, expected);
    let owner: String =
        sqlx::query_scalar("SELECT tableowner::text FROM pg_tables WHERE tablename = 'trips'")
            .fetch_one(&pool)
            .await?;
    assert_eq!(owner, "trip_owner");
    let los: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_largeobject_metadata")
        .fetch_one(&pool)
        .await?;
    assert_eq!(los, 2);
    let tip: String = sqlx::query_scalar("SELECT fare_with_tip(10)::text")
        .fetch_one(&pool)
        .await?;
    assert_eq!(tip, "11.00");
    let who: (String, String) =
        sqlx::query_as("SELECT current_user::text, current_database()::text")
            .fetch_one(&pool)
            .await?;
    assert_eq!(who, ("postgres".to_string(), "app".to_string()));
    pool.close().await;

    // url() as libpq sees it, straight from the command line.
    let out = run_tool(
        &cluster,
        "psql",
        &[
            "-X",
            "-At",
            "-c",
            "SELECT count(*) FROM trips",
            &cluster.url("app"),
        ],
    )
    .await?;
    assert_eq!(out.trim(), "120");
    let dump = run_tool(&cluster, "pg_dump", &["--dbname", &cluster.url("app")]).await?;
    assert!(dump.contains("CREATE TABLE public.trips"), "{dump}");

    // Schema dumps of the same schema compare equal.
    let first = cluster.schema_dump("app").await?;
    let second = cluster.schema_dump("app").await?;
    assert_eq!(first, second);
    assert!(!first.contains("\\restrict"), "{first}");
    assert!(first.contains("café_ñandú"));

    // A second database with the same sample has the same schema.
    cluster.create_database("app copy").await?;
    load_sample(&cluster, "app copy").await?;
    assert_eq!(cluster.schema_dump("app copy").await?, first);

    // Bulk rows of ~100 bytes.
    load_bulk(&cluster, "app", 2000).await?;
    let stats = cluster
        .psql(
            "app",
            "SELECT count(*), min(length(payload)), max(length(payload)), count(DISTINCT payload) FROM bulk",
        )
        .await?;
    assert_eq!(stats, "2000|100|100|2000");

    check_password_user(&cluster).await?;

    cluster.stop().await?;
    assert!(!dir.exists(), "{} is left behind", dir.display());
    assert!(!process_exists(pid), "postmaster {pid} still runs");
    Ok(())
}

async fn check_password_user(cluster: &Cluster) -> Result<()> {
    let with_password = cluster.url_as(PASSWORD_USER, Some(PASSWORD_USER_PASSWORD), "app");
    let without_password = cluster.url_as(PASSWORD_USER, None, "app");
    let wrong_password = cluster.url_as(PASSWORD_USER, Some("wrong"), "app");

    // sqlx
    let mut conn = PgConnectOptions::from_str(&with_password)?
        .connect()
        .await?;
    let user: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&mut conn)
        .await?;
    assert_eq!(user, PASSWORD_USER);
    // pg_read_all_data: it can read a table it neither owns nor was granted.
    let trips: i64 = sqlx::query_scalar("SELECT count(*) FROM trips")
        .fetch_one(&mut conn)
        .await?;
    assert_eq!(trips, 120);
    conn.close().await?;
    for url in [&without_password, &wrong_password] {
        let err = PgConnectOptions::from_str(url)?
            .connect()
            .await
            .err()
            .with_context(|| format!("{url} connected"))?;
        let msg = err.to_string();
        assert!(msg.contains("password"), "{msg}");
    }

    // libpq: psql and pg_dump with the password in the URL.
    let out = run_tool(
        cluster,
        "psql",
        &["-X", "-At", "-c", "SELECT current_user", &with_password],
    )
    .await?;
    assert_eq!(out.trim(), PASSWORD_USER);
    let dump = run_tool(cluster, "pg_dump", &["--dbname", &with_password]).await?;
    assert!(dump.contains("COPY public.trips"), "{dump}");
    for url in [&without_password, &wrong_password] {
        let err = run_tool(cluster, "psql", &["-X", "-w", "-At", "-c", "SELECT 1", url])
            .await
            .err()
            .with_context(|| format!("psql {url} connected"))?;
        let msg = format!("{err:#}");
        assert!(msg.contains("password"), "{msg}");
    }

    // CREATEDB
    let mut conn = PgConnectOptions::from_str(&cluster.url_as(
        PASSWORD_USER,
        Some(PASSWORD_USER_PASSWORD),
        "postgres",
    ))?
    .connect()
    .await?;
    sqlx::query("CREATE DATABASE made_by_pw_user")
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(())
}

/// Runs a client tool of the cluster with a clean environment; Err with its
/// stderr when it fails.
async fn run_tool(cluster: &Cluster, tool: &str, args: &[&str]) -> Result<String> {
    let output = tokio::process::Command::new(cluster.bindir().join(tool))
        .args(args)
        .env_remove("PGPASSWORD")
        .env_remove("PGHOST")
        .env_remove("PGPORT")
        .stdin(Stdio::null())
        .output()
        .await?;
    anyhow::ensure!(
        output.status.success(),
        "{tool} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

fn process_exists(pid: u32) -> bool {
    // A zombie has no command line; only a live process counts.
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
}

#[tokio::test]
async fn url_with_odd_database_name_works_for_sqlx_and_libpq() -> Result<()> {
    let cluster = Cluster::start(16).await?;
    let name = "odd db+name/é?&=%";
    cluster.create_database(name).await?;
    let url = cluster.url(name);
    assert!(
        url.starts_with("postgres://postgres@localhost:5432/"),
        "{url}"
    );

    let pool = cluster.pool(name).await?;
    let db: String = sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(&pool)
        .await?;
    assert_eq!(db, name);
    pool.close().await;

    let out = run_tool(
        &cluster,
        "psql",
        &["-X", "-At", "-c", "SELECT current_database()", &url],
    )
    .await?;
    assert_eq!(out.trim_end(), name);
    assert_eq!(cluster.psql(name, "SELECT 1; SELECT 2").await?, "1\n2");
    Ok(())
}

#[tokio::test]
async fn psql_error_carries_stderr() -> Result<()> {
    let cluster = Cluster::start(15).await?;
    let err = cluster
        .psql(
            "postgres",
            "SELECT 1; SELECT * FROM no_such_table; SELECT 3",
        )
        .await
        .err()
        .context("the failing statement succeeded")?;
    let msg = format!("{err:#}");
    assert!(msg.contains("no_such_table"), "{msg}");
    assert!(msg.contains("does not exist"), "{msg}");
    Ok(())
}

#[tokio::test]
async fn drop_stops_the_server_and_removes_the_directory_even_on_panic() -> Result<()> {
    let (tx, rx) = tokio::sync::oneshot::channel::<(PathBuf, u32)>();
    let task = tokio::spawn(async move {
        let cluster = Cluster::start(15).await.expect("cluster start");
        let pid = cluster.server_pid().expect("server pid");
        tx.send((cluster.socket_dir().to_path_buf(), pid))
            .expect("send");
        panic!("a test failing while its cluster runs");
    });
    let (dir, pid) = rx.await?;
    assert!(task.await.is_err(), "the task should have panicked");
    assert!(!dir.exists(), "{} is left behind", dir.display());
    assert!(!process_exists(pid), "postmaster {pid} still runs");

    // Plain drop, too.
    let cluster = Cluster::start(16).await?;
    let dir = cluster.socket_dir().to_path_buf();
    let pid = cluster.server_pid().context("server pid")?;
    drop(cluster);
    assert!(!dir.exists(), "{} is left behind", dir.display());
    assert!(!process_exists(pid), "postmaster {pid} still runs");
    Ok(())
}

#[test]
fn missing_binaries_say_how_to_install_them() {
    let err = pg_bindir(99).expect_err("no PostgreSQL 99 here");
    let msg = err.to_string();
    assert!(msg.contains("scripts/install-test-deps"), "{msg}");
    assert!(msg.contains("/opt/refugio-test/pg/99/bin"), "{msg}");
}

#[test]
fn known_bindirs() -> Result<()> {
    assert_eq!(pg_bindir(15)?, Path::new("/usr/lib/postgresql/15/bin"));
    if std::env::var_os("REFUGIO_PG16_BINDIR").is_none() {
        assert_eq!(pg_bindir(16)?, Path::new("/opt/refugio-test/pg/16/bin"));
    }
    Ok(())
}

/// Env var that turns `helper_hold_cluster` from a no-op into the helper.
const HELPER_ENV: &str = "REFUGIO_TESTKIT_HOLD_CLUSTER_HELPER";

/// Helper for the next test, run in a child process: starts a cluster, says
/// where, and waits to be killed. A no-op when run as an ordinary test.
#[tokio::test]
#[ignore = "helper process for stale_clusters_of_killed_tests_are_swept"]
async fn helper_hold_cluster() -> Result<()> {
    if std::env::var_os(HELPER_ENV).is_none() {
        return Ok(());
    }
    let cluster = Cluster::start(15).await?;
    println!(
        "CLUSTER {} {}",
        cluster.server_pid().context("pid")?,
        cluster.socket_dir().display()
    );
    // Bounded, in case the parent test dies before killing us.
    tokio::time::sleep(std::time::Duration::from_secs(300)).await;
    Ok(())
}

/// A test process killed outright (a timeout, say) never runs Drop; the next
/// Cluster::start stops its server and removes its directory.
#[tokio::test]
async fn stale_clusters_of_killed_tests_are_swept() -> Result<()> {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let mut helper = tokio::process::Command::new(std::env::current_exe()?)
        .args(["helper_hold_cluster", "--exact", "--ignored", "--nocapture"])
        .env(HELPER_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = helper.stdout.take().context("helper stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let (pid, dir) = loop {
        let line = lines
            .next_line()
            .await?
            .context("the helper exited without starting a cluster")?;
        if let Some(rest) = line.strip_prefix("CLUSTER ") {
            let (pid, dir) = rest.split_once(' ').context("helper line")?;
            break (pid.parse::<u32>()?, PathBuf::from(dir));
        }
    };
    helper.kill().await?;
    helper.wait().await?;
    assert!(
        process_exists(pid),
        "the orphaned postmaster should still run"
    );
    assert!(dir.exists());

    let cluster = Cluster::start(15).await?;
    assert!(!dir.exists(), "{} was not swept", dir.display());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while process_exists(pid) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(!process_exists(pid), "orphaned postmaster {pid} still runs");
    cluster.stop().await?;
    Ok(())
}
