//! Whole-server jobs (`databases = ["*"]`): one backup holds every
//! database in scope, each from its own snapshot, plus the globals once;
//! restores take one database or all of them; drills check each.

use std::time::Duration;

use anyhow::{Context, Result};
use refugio_testkit::{s3, Cluster};
use rstest::rstest;
use serde_json::Value;

use crate::common::*;

/// A database name with a space and non-ASCII characters.
const ODD: &str = "café trips ñ";

/// Per user table of `db`: `schema.table count md5-of-every-row`, sorted:
/// equal lists mean the same rows.
async fn data_digest(cluster: &Cluster, db: &str) -> Result<Vec<String>> {
    let tables = cluster
        .psql(
            db,
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog','information_schema') ORDER BY 1",
        )
        .await?;
    let mut out = Vec::new();
    for t in tables.lines().filter(|l| !l.is_empty()) {
        let d = cluster
            .psql(
                db,
                &format!(
                    "SELECT count(*) || ' ' || coalesce(md5(string_agg(x, E'\\n' ORDER BY x)), '-') \
                     FROM (SELECT r::text AS x FROM {t} r) s"
                ),
            )
            .await?;
        out.push(format!("{t} {d}"));
    }
    Ok(out)
}

/// Three databases in scope (`app` with the sample schema, [`ODD`], and
/// `postgres` with a table) and one excluded by pattern.
async fn server_with_databases(major: u32) -> Result<Cluster> {
    let src = Cluster::start(major).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_sample(&src, "app").await?;
    src.create_database(ODD).await?;
    src.psql(
        ODD,
        "CREATE TABLE \"Étapes\" (id int PRIMARY KEY, nom text); \
         INSERT INTO \"Étapes\" SELECT g, 'étape ' || g FROM generate_series(1, 42) g; \
         CREATE TABLE riders (id serial, name text); INSERT INTO riders (name) VALUES ('Zoë'), ('Ørjan');",
    )
    .await?;
    src.psql(
        "postgres",
        "CREATE TABLE ops_notes (id int, note text); INSERT INTO ops_notes VALUES (1, 'kept');",
    )
    .await?;
    src.create_database("scratch_tmp").await?;
    src.psql(
        "scratch_tmp",
        "CREATE TABLE junk (id int); INSERT INTO junk VALUES (1);",
    )
    .await?;
    Ok(src)
}

fn names(m: &Value) -> Vec<String> {
    m["databases"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| d["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[derive(Debug, Clone, Copy)]
enum Backend {
    Dir,
    Garage,
}

#[rstest]
#[case::pg16_directory(16, Backend::Dir)]
#[case::pg16_garage(16, Backend::Garage)]
#[case::pg15_directory(15, Backend::Dir)]
#[tokio::test(flavor = "multi_thread")]
async fn a_whole_server_backup_restores_every_database_identically(
    #[case] major: u32,
    #[case] backend: Backend,
) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let repo = match backend {
        Backend::Dir => Repo::dir(tmp.path()),
        Backend::Garage => Repo::s3(s3::garage()?, "server"),
    };
    let env = repo.env();
    let src = server_with_databases(major).await?;
    let extra = format!(
        "databases = [\"*\"]\nexclude_databases = [\"scratch_*\"]\nscratch = {:?}\n\
         checks = [\"SELECT true\", {{ database = {ODD:?}, sql = \"SELECT count(*) = 42 FROM \\\"Étapes\\\"\" }}]\n",
        src.url("postgres")
    );
    // The source URL names no database: a whole-server job needs none.
    let body = job("all", &src, "", &extra);
    let config = write_config(tmp.path(), &repo, &body);
    let cfg = config.to_str().unwrap_or_default();

    let out = refugio_ok(&["--config", cfg, "backup"], &env)?;
    assert!(out.contains("3 databases"), "{out}");
    let m = list(&config, &env)?
        .into_iter()
        .next()
        .context("a manifest")?;
    assert_eq!(names(&m), vec!["app", ODD, "postgres"], "{m}");
    let dbs = m["databases"].as_array().context("databases")?;
    let artifacts = m["artifacts"].as_array().context("artifacts")?;
    // One artifact per database, plus the globals once.
    assert_eq!(artifacts.len(), 4, "{m}");
    assert_eq!(
        artifacts.iter().filter(|a| a["kind"] == "globals").count(),
        1
    );
    for d in dbs {
        let art = d["artifact"].as_str().context("artifact")?;
        assert!(
            artifacts.iter().any(|a| a["name"] == art),
            "{art} listed in artifacts"
        );
        assert_eq!(d["schema_fingerprint"].as_str().map(str::len), Some(64));
    }
    let odd = &dbs[1];
    let etapes = odd["tables"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["name"] == "Étapes"))
        .context("Étapes counted")?;
    assert_eq!(etapes["rows"], 42);
    let text = refugio_ok(&["--config", cfg, "list"], &env)?;
    assert!(
        text.contains("(3 databases)") && text.contains(ODD),
        "list shows the databases: {text}"
    );

    // The drill restores and checks every database.
    let bindir = src.bindir().display().to_string();
    let out = refugio(
        &["--config", cfg, "verify", "--json", "--pg-bindir", &bindir],
        &env,
    );
    let text = all_output(&out);
    assert!(out.status.success(), "{text}");
    let receipt: Value = serde_json::from_slice(&out.stdout).context("receipt")?;
    assert_eq!(receipt["outcome"], "passed", "{receipt}");
    assert_eq!(
        receipt["databases"].as_array().map(Vec::len),
        Some(3),
        "{receipt}"
    );
    let checks = receipt["checks"].as_array().context("checks")?;
    // "SELECT true" in each of the three, the bound one in ODD only.
    assert_eq!(checks.len(), 4, "{receipt}");
    assert!(checks.iter().all(|c| c["ok"] == true), "{receipt}");
    assert!(
        receipt["counts"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["database"] == ODD && c["actual"] == 42)),
        "{receipt}"
    );
    let leftovers = src
        .psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'refugio_drill_%'",
        )
        .await?;
    assert_eq!(leftovers, "0", "every scratch database dropped");

    // Restore all: every database under its own name on the target server.
    let dst = Cluster::start(major).await?;
    let restore = |target: String, more: &[&str]| {
        let mut args: Vec<String> = [
            "--config",
            cfg,
            "restore",
            "--backup",
            "latest",
            "--pg-bindir",
            bindir.as_str(),
            "--target",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(target);
        args.extend(more.iter().map(|s| s.to_string()));
        refugio(&args.iter().map(String::as_str).collect::<Vec<_>>(), &env)
    };
    let server_url = dst.url("postgres");
    let out = restore(server_url.clone(), &[]);
    let text = all_output(&out);
    assert!(
        !out.status.success() && text.contains("--create") && text.contains(ODD),
        "missing databases are named, --create suggested: {text}"
    );
    let out = restore(server_url.clone(), &["--create", "--globals"]);
    let text = all_output(&out);
    assert!(out.status.success(), "{text}");
    // The postgres database was restored into, not created.
    for db in ["app", ODD, "postgres"] {
        assert_eq!(
            data_digest(&src, db).await?,
            data_digest(&dst, db).await?,
            "rows of {db} identical"
        );
        assert_eq!(
            src.schema_dump(db).await?,
            dst.schema_dump(db).await?,
            "schema of {db} identical"
        );
    }
    let excluded = dst
        .psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname = 'scratch_tmp'",
        )
        .await?;
    assert_eq!(excluded, "0", "excluded by pattern: not in the backup");

    // Again, without --clean: refused before anything changes.
    dst.psql(ODD, "INSERT INTO riders (name) VALUES ('marker')")
        .await?;
    let before = data_digest(&dst, ODD).await?;
    let out = restore(server_url.clone(), &["--create"]);
    let text = all_output(&out);
    assert!(
        !out.status.success()
            && text.contains("--clean")
            && text.contains("app")
            && text.contains(ODD),
        "every occupied database named: {text}"
    );
    assert_eq!(data_digest(&dst, ODD).await?, before, "nothing changed");

    // One database, by name, into another database.
    let out = restore(dst.url("only_odd"), &["--database", ODD, "--create"]);
    let text = all_output(&out);
    assert!(out.status.success(), "{text}");
    assert_eq!(
        data_digest(&src, ODD).await?,
        data_digest(&dst, "only_odd").await?
    );
    let out = restore(dst.url("x"), &["--database", "nope", "--create"]);
    let text = all_output(&out);
    assert!(
        !out.status.success() && text.contains("nope") && text.contains("app, "),
        "an unknown database names what the backup holds: {text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn patterns_choose_databases_and_a_new_database_is_picked_up() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let repo = Repo::dir(tmp.path());
    let src = Cluster::start(16).await?;
    for db in ["app_eu", "app_us", "billing", "other"] {
        src.create_database(db).await?;
        src.psql(
            db,
            "CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2);",
        )
        .await?;
    }
    let extra =
        "databases = [\"app_*\", \"billing\"]\nexclude_databases = [\"*_us\"]\nglobals = false\n";
    let config = write_config(tmp.path(), &repo, &job("apps", &src, "postgres", extra));
    let cfg = config.to_str().unwrap_or_default();
    let checked = refugio_ok(&["--config", cfg, "config", "check"], &[])?;
    assert!(
        checked.contains("databases in scope: app_eu, billing"),
        "{checked}"
    );
    refugio_ok(&["--config", cfg, "backup"], &[])?;
    src.create_database("app_asia").await?;
    src.psql(
        "app_asia",
        "CREATE TABLE t (id int); INSERT INTO t VALUES (7);",
    )
    .await?;
    refugio_ok(&["--config", cfg, "backup"], &[])?;
    let all = list(&config, &[])?;
    assert_eq!(all.len(), 2);
    // Newest first.
    assert_eq!(names(&all[0]), vec!["app_asia", "app_eu", "billing"]);
    assert_eq!(names(&all[1]), vec!["app_eu", "billing"]);
    assert_eq!(all[0]["database"], "app_*,billing");

    // No database in scope: an error naming the patterns, nothing stored.
    let none = "databases = [\"nothing_*\"]\nglobals = false\n";
    let config = write_config(tmp.path(), &repo, &job("none", &src, "postgres", none));
    let out = refugio(
        &["--config", config.to_str().unwrap_or_default(), "backup"],
        &[],
    );
    let text = all_output(&out);
    assert!(
        !out.status.success() && text.contains("nothing_*"),
        "{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn database_and_databases_exclude_each_other() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let repo = Repo::dir(tmp.path());
    let src = Cluster::start(16).await?;
    let extra = "database = \"app\"\ndatabases = [\"*\"]\n";
    let config = write_config(tmp.path(), &repo, &job("bad", &src, "postgres", extra));
    let out = refugio(
        &["--config", config.to_str().unwrap_or_default(), "backup"],
        &[],
    );
    let text = all_output(&out);
    assert!(
        !out.status.success() && text.contains("`database` and `databases`"),
        "{text}"
    );
    Ok(())
}

/// A database dropped after the run listed the databases (here: while the
/// first one is being dumped) is left out with a warning; the backup of
/// the others commits.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_dropped_during_the_run_is_left_out() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let repo = Repo::dir(tmp.path());
    let src = Cluster::start(16).await?;
    src.create_database("a_big").await?;
    refugio_testkit::sample::load_bulk(&src, "a_big", 600_000).await?;
    src.create_database("z_gone").await?;
    let extra = "databases = [\"a_big\", \"z_*\"]\nglobals = false\n";
    let config = write_config(tmp.path(), &repo, &job("srv", &src, "postgres", extra));
    let cfg = config.to_str().unwrap_or_default().to_string();
    let child = refugio_command(&["--config", &cfg, "backup"], &[])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let pid = child.id();
    wait_until("pg_dump of a_big", Duration::from_secs(30), || {
        Ok(dumping_pg_dump(pid).is_some())
    })?;
    src.psql("postgres", "DROP DATABASE z_gone WITH (FORCE)")
        .await?;
    let out = child.wait_with_output()?;
    let text = all_output(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("database-vanished"), "{text}");
    let m = list(&config, &[])?.into_iter().next().context("manifest")?;
    assert_eq!(names(&m), vec!["a_big"], "{m}");
    Ok(())
}
