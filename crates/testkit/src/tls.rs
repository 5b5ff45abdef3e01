//! Certificates for TLS tests, made with the `openssl` command line: a
//! throwaway CA ([`Ca`]), server certificates for 127.0.0.1, ::1 and
//! `localhost`, and client certificates with a chosen common name (a
//! PostgreSQL user, for `cert` authentication). EC P-256 keys, valid for
//! two days, unencrypted PEM (PKCS#8), files `0600`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// A certificate and its private key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A certificate authority of its own, in a directory the test owns.
#[derive(Debug, Clone)]
pub struct Ca {
    dir: PathBuf,
    name: String,
    /// The CA's certificate (PEM): what a client trusts.
    pub cert: PathBuf,
    key: PathBuf,
}

impl Ca {
    /// A new self-signed CA in `dir` (created if missing); its files are
    /// named after `name` (`<name>.pem`, `<name>.key`).
    pub fn new(dir: &Path, name: &str) -> Result<Ca> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let ca = Ca {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN=refugio test CA {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            path_str(&ca.key)?,
            "-out",
            path_str(&ca.cert)?,
        ])?;
        restrict(&ca.key)?;
        Ok(ca)
    }

    /// A server certificate signed by this CA, valid for `127.0.0.1`,
    /// `::1` and `localhost`.
    pub fn server_cert(&self, name: &str) -> Result<CertPair> {
        self.issue(
            name,
            "localhost",
            "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\n\
             extendedKeyUsage=serverAuth\n",
        )
    }

    /// A client certificate signed by this CA with common name `cn` (the
    /// user name PostgreSQL's `cert` authentication takes).
    pub fn client_cert(&self, name: &str, cn: &str) -> Result<CertPair> {
        self.issue(name, cn, "extendedKeyUsage=clientAuth\n")
    }

    fn issue(&self, name: &str, cn: &str, extensions: &str) -> Result<CertPair> {
        let pair = CertPair {
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}.key")),
        };
        let csr = self.dir.join(format!("{name}.csr"));
        let ext = self.dir.join(format!("{name}.ext"));
        std::fs::write(
            &ext,
            format!(
                "basicConstraints=critical,CA:FALSE\n\
                 keyUsage=critical,digitalSignature\n{extensions}"
            ),
        )
        .with_context(|| format!("writing {}", ext.display()))?;
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            path_str(&pair.key)?,
            "-out",
            path_str(&csr)?,
        ])?;
        restrict(&pair.key)?;
        let serial = format!("0x{:016x}", rand::random::<u64>());
        openssl(&[
            "x509",
            "-req",
            "-in",
            path_str(&csr)?,
            "-CA",
            path_str(&self.cert)?,
            "-CAkey",
            path_str(&self.key)?,
            "-set_serial",
            &serial,
            "-days",
            "2",
            "-extfile",
            path_str(&ext)?,
            "-out",
            path_str(&pair.cert)?,
        ])
        .with_context(|| format!("signing {name} with CA {}", self.name))?;
        Ok(pair)
    }
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

fn restrict(key: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 600 {}", key.display()))
}

/// Runs `openssl ARGS`, failing with its stderr (or saying how to install it).
fn openssl(args: &[&str]) -> Result<()> {
    let output = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context(
            "running openssl (the TLS tests make their certificates with it): \
             install Debian's openssl package, e.g. with scripts/install-test-deps",
        )?;
    if !output.status.success() {
        bail!(
            "openssl {} failed ({}): {}",
            args.first().copied().unwrap_or_default(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end()
        );
    }
    Ok(())
}

/// TLS for a [`crate::Cluster`]: the server listens on 127.0.0.1 (a port
/// of its own) with `ssl = on` and only `hostssl` lines for TCP, so a
/// client that does not speak TLS is refused.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The server's certificate and key (`ssl_cert_file`, `ssl_key_file`).
    pub server: CertPair,
    /// With a CA (`ssl_ca_file`), TCP clients authenticate with a client
    /// certificate signed by it whose common name is their user name
    /// (`hostssl … cert`); without, TCP clients are trusted.
    pub client_ca: Option<PathBuf>,
}

impl ServerTls {
    /// The `pg_hba.conf` line for TCP clients.
    pub(crate) fn hba_line(&self) -> String {
        let method = if self.client_ca.is_some() {
            "cert"
        } else {
            "trust"
        };
        format!("hostssl all all 127.0.0.1/32 {method}\n")
    }
}

/// Copies the files of `tls` into `dir` (created), `0600` and owned by
/// `owner` (the server's user) when given, as PostgreSQL demands of its key.
pub(crate) fn install(tls: &ServerTls, dir: &Path, owner: Option<u32>) -> Result<ServerTls> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    let chown = |p: &Path| -> Result<()> {
        if let Some(id) = owner {
            std::os::unix::fs::chown(p, Some(id), Some(id))
                .with_context(|| format!("chown {} to {id}", p.display()))?;
        }
        Ok(())
    };
    chown(dir)?;
    let copy = |from: &Path, name: &str| -> Result<PathBuf> {
        let to = dir.join(name);
        std::fs::copy(from, &to).with_context(|| format!("copying {}", from.display()))?;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600))?;
        chown(&to)?;
        Ok(to)
    };
    Ok(ServerTls {
        server: CertPair {
            cert: copy(&tls.server.cert, "server.crt")?,
            key: copy(&tls.server.key, "server.key")?,
        },
        client_ca: tls
            .client_ca
            .as_deref()
            .map(|ca| copy(ca, "client-ca.crt"))
            .transpose()?,
    })
}

/// The server's `-c` settings for its listener: TCP on 127.0.0.1 with TLS,
/// or (`None`) no TCP at all.
pub(crate) fn server_settings(tls: Option<&ServerTls>) -> Vec<String> {
    let Some(tls) = tls else {
        return vec!["-c".into(), "listen_addresses=".into()];
    };
    let mut settings = vec![
        "listen_addresses=127.0.0.1".to_string(),
        "ssl=on".into(),
        format!("ssl_cert_file={}", tls.server.cert.display()),
        format!("ssl_key_file={}", tls.server.key.display()),
    ];
    if let Some(ca) = &tls.client_ca {
        settings.push(format!("ssl_ca_file={}", ca.display()));
    }
    settings
        .into_iter()
        .flat_map(|s| ["-c".to_string(), s])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The certificates verify against their CA, and not against another.
    #[test]
    fn certificates_chain_to_their_ca_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::new(dir.path(), "ca").expect("CA");
        let other = Ca::new(dir.path(), "other").expect("other CA");
        let server = ca.server_cert("server").expect("server cert");
        let client = ca.client_cert("client", "postgres").expect("client cert");
        for pair in [&server, &client] {
            let cert = path_str(&pair.cert).expect("utf-8");
            openssl(&[
                "verify",
                "-CAfile",
                path_str(&ca.cert).expect("utf-8"),
                cert,
            ])
            .expect("verifies against its CA");
            assert!(
                openssl(&[
                    "verify",
                    "-CAfile",
                    path_str(&other.cert).expect("utf-8"),
                    cert
                ])
                .is_err(),
                "must not verify against another CA"
            );
        }
    }
}
