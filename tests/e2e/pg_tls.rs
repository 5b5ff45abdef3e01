//! TLS to the source (issue 12): `sslmode`, `sslrootcert`, `sslcert` and
//! `sslkey` as job fields, against a PostgreSQL 16 server with `ssl = on`
//! whose CA and certificates the test makes with openssl. TCP connections
//! to it must use TLS (`hostssl` only), so a backup that works spoke TLS.

use std::path::Path;

use anyhow::{Context, Result};
use refugio_testkit::{s3, Ca, Cluster, ServerTls};
use rstest::rstest;

use crate::common::*;

/// A server with TLS (client certificates signed by `client_ca` required
/// when given), a database `app` with the sample, and the CA that signed
/// its certificate.
async fn tls_server(dir: &Path, client_ca: Option<&Ca>) -> Result<(Cluster, Ca)> {
    let ca = Ca::new(dir, "ca")?;
    let tls = ServerTls {
        server: ca.server_cert("server")?,
        client_ca: client_ca.map(|c| c.cert.clone()),
    };
    let cluster = Cluster::start_tls(16, &tls).await?;
    cluster.create_database("app").await?;
    refugio_testkit::load_sample(&cluster, "app").await?;
    Ok((cluster, ca))
}

/// A job for `app` over TCP, with `tls` (TOML lines) and `source_query`
/// appended to the URL.
fn tls_job(cluster: &Cluster, source_query: &str, tls: &str) -> String {
    format!(
        "name = \"app\"\nsource = {:?}\npg_bindir = {:?}\n{tls}",
        format!("{}{source_query}", cluster.tcp_url("postgres", "app")),
        cluster.bindir().display().to_string()
    )
}

fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// Restores the newest backup into a fresh cluster and compares the row
/// counts with the manifest's and the source's.
async fn restores_identically(cfg: &Path, env: &[(String, String)], src: &Cluster) -> Result<()> {
    let manifests = list(cfg, env)?;
    anyhow::ensure!(manifests.len() == 1, "one backup: {manifests:?}");
    let dst = Cluster::start(16).await?;
    let target = dst.url("app");
    let bindir = dst.bindir().display().to_string();
    refugio_ok(
        &[
            "--config",
            cfg.to_str().unwrap_or_default(),
            "restore",
            "--backup",
            "latest",
            "--target",
            &target,
            "--create",
            "--globals",
            "--pg-bindir",
            &bindir,
        ],
        env,
    )?;
    let restored = row_counts(&dst, "app").await?;
    assert_eq!(
        restored,
        manifest_counts(&manifests[0]),
        "restored = manifest"
    );
    assert_eq!(restored, row_counts(src, "app").await?, "restored = source");
    Ok(())
}

#[rstest]
#[case::directory(false)]
#[case::moto(true)]
#[tokio::test(flavor = "multi_thread")]
async fn tls_verify_full_backs_up_and_restores(#[case] on_s3: bool) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let repo = if on_s3 {
        Repo::s3(s3::moto()?, "pg-tls")
    } else {
        Repo::dir(tmp.path())
    };
    let env = repo.env();
    let (src, ca) = tls_server(&tmp.path().join("pki"), None).await?;
    let job = tls_job(
        &src,
        "",
        &format!(
            "sslmode = \"verify-full\"\nsslrootcert = {}\n",
            toml_path(&ca.cert)
        ),
    );
    let config = write_config(tmp.path(), &repo, &job);
    let cfg = config.to_str().unwrap_or_default();

    let check = refugio_ok(&["--config", cfg, "config", "check"], &env)?;
    assert!(check.contains("ok   job app: source"), "{check}");
    assert!(
        check.contains("sslmode=verify-full"),
        "the URL shown names the mode: {check}"
    );
    let out = refugio_ok(&["--config", cfg, "backup"], &env)?;
    assert!(out.contains("committed"), "{out}");
    restores_identically(&config, &env, &src).await
}

/// The same settings written in the URL's query still work, without job fields.
#[tokio::test(flavor = "multi_thread")]
async fn tls_settings_in_the_url_still_work() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let repo = Repo::dir(tmp.path());
    let env = repo.env();
    let (src, ca) = tls_server(&tmp.path().join("pki"), None).await?;
    let query = format!("?sslmode=verify-full&sslrootcert={}", ca.cert.display());
    let config = write_config(tmp.path(), &repo, &tls_job(&src, &query, ""));
    let cfg = config.to_str().unwrap_or_default();
    let out = refugio_ok(&["--config", cfg, "backup"], &env)?;
    assert!(out.contains("committed"), "{out}");
    restores_identically(&config, &env, &src).await
}

/// A CA that did not sign the server's certificate: `backup` and
/// `config check` fail at once (no retry: it is permanent), naming the CA
/// file and the verification failure. A missing CA file is named too, and
/// a job field that contradicts the URL is a configuration error.
#[tokio::test(flavor = "multi_thread")]
async fn tls_wrong_ca_is_a_clear_error() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let repo = Repo::dir(tmp.path());
    let env = repo.env();
    let (src, _ca) = tls_server(&tmp.path().join("pki"), None).await?;
    let wrong = Ca::new(&tmp.path().join("other"), "wrong-ca")?;
    let config = write_config(
        tmp.path(),
        &repo,
        &tls_job(
            &src,
            "",
            &format!(
                "sslmode = \"verify-full\"\nsslrootcert = {}\n",
                toml_path(&wrong.cert)
            ),
        ),
    );
    let cfg = config.to_str().unwrap_or_default();
    let ca_path = wrong.cert.display().to_string();

    let out = refugio(&["--config", cfg, "backup"], &env);
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for needle in [
        "not signed by a CA in sslrootcert",
        ca_path.as_str(),
        "UnknownIssuer",
    ] {
        assert!(
            text.contains(needle),
            "backup should say {needle:?}: {text}"
        );
    }
    assert!(
        !text.contains("retrying"),
        "a wrong CA is not retried: {text}"
    );
    assert!(list(&config, &env)?.is_empty(), "nothing committed");

    let out = refugio(&["--config", cfg, "config", "check"], &env);
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("FAIL job app"))
        .with_context(|| format!("a failed check of the job: {text}"))?;
    assert!(line.contains("not signed by a CA in sslrootcert"), "{line}");
    assert!(line.contains(&ca_path), "{line}");

    // A CA file that is not there.
    let missing = tmp.path().join("no-such-ca.pem");
    write_config(
        tmp.path(),
        &repo,
        &tls_job(
            &src,
            "",
            &format!(
                "sslmode = \"verify-full\"\nsslrootcert = {}\n",
                toml_path(&missing)
            ),
        ),
    );
    let out = refugio(&["--config", cfg, "config", "check"], &env);
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("sslrootcert {} cannot be read", missing.display())),
        "{text}"
    );

    // The field and the URL disagree: refused when the file is loaded.
    write_config(
        tmp.path(),
        &repo,
        &tls_job(&src, "?sslmode=require", "sslmode = \"verify-full\"\n"),
    );
    let out = refugio(&["--config", cfg, "list"], &env);
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("sslmode is set both in the connection URL (sslmode=require)"),
        "{text}"
    );
    assert!(text.contains("\"verify-full\""), "{text}");
    Ok(())
}

/// A server that asks for a client certificate (`hostssl … cert`):
/// `sslcert` and `sslkey` let the backup in; without them it is refused.
#[tokio::test(flavor = "multi_thread")]
async fn tls_client_certificate() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let repo = Repo::dir(tmp.path());
    let env = repo.env();
    let clients = Ca::new(&tmp.path().join("clients"), "client-ca")?;
    let (src, ca) = tls_server(&tmp.path().join("pki"), Some(&clients)).await?;
    let client = clients.client_cert("postgres-client", "postgres")?;
    let server_only = format!(
        "sslmode = \"verify-full\"\nsslrootcert = {}\n",
        toml_path(&ca.cert)
    );

    let config = write_config(tmp.path(), &repo, &tls_job(&src, "", &server_only));
    let cfg = config.to_str().unwrap_or_default();
    let out = refugio(&["--config", cfg, "backup"], &env);
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("connection requires a valid client certificate"),
        "{text}"
    );

    let with_client = format!(
        "{server_only}sslcert = {}\nsslkey = {}\n",
        toml_path(&client.cert),
        toml_path(&client.key)
    );
    write_config(tmp.path(), &repo, &tls_job(&src, "", &with_client));
    let out = refugio_ok(&["--config", cfg, "backup"], &env)?;
    assert!(out.contains("committed"), "{out}");
    restores_identically(&config, &env, &src).await
}
