//! `[repository.authentication]`: the key this host signs with and the
//! public keys whose objects it accepts, by role (agents: manifests and
//! receipts; database servers: WAL).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use refugio_store::auth::{Authentication, KeyPair, TrustedKey};
use serde::Deserialize;

/// Overrides `signing_key`.
pub const SIGNING_KEY_ENV: &str = "REFUGIO_SIGNING_KEY_FILE";
/// The systemd credential (`LoadCredential=signing-key:…`) that overrides
/// `signing_key` too.
pub const SIGNING_KEY_CREDENTIAL: &str = "signing-key";

/// `[repository.authentication]`. File paths only: `Debug` prints nothing
/// secret.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthenticationConfig {
    /// This host's Ed25519 private key (PEM, PKCS#8): an agent's signs
    /// manifests and receipts, a database server's signs the WAL its
    /// `wal-push` archives. Overridden by `REFUGIO_SIGNING_KEY_FILE` and by
    /// the systemd credential `signing-key`. Hosts that only read (restore
    /// hosts, a drill's `wal-fetch`) need none.
    #[serde(default)]
    pub signing_key: Option<PathBuf>,
    /// Public keys (PEM, SPKI) whose manifests and receipts are accepted:
    /// the agents'. Several while a key is rotated.
    #[serde(default)]
    pub agent_keys: Vec<PathBuf>,
    /// Public keys whose WAL is accepted: the database servers' `wal-push`.
    #[serde(default)]
    pub server_keys: Vec<PathBuf>,
}

impl AuthenticationConfig {
    /// The signing key in force: `REFUGIO_SIGNING_KEY_FILE`, else the
    /// systemd credential `signing-key`, else `signing_key`.
    pub fn signing_key_path(&self) -> Option<PathBuf> {
        if let Some(path) = std::env::var_os(SIGNING_KEY_ENV).filter(|p| !p.is_empty()) {
            return Some(PathBuf::from(path));
        }
        if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            let credential = Path::new(&dir).join(SIGNING_KEY_CREDENTIAL);
            if credential.exists() {
                return Some(credential);
            }
        }
        self.signing_key.clone()
    }

    /// Reads the keys. `sign`: also this host's signing key (a reader
    /// that writes nothing, such as a drill server's `wal-fetch`, passes
    /// false and needs no access to it).
    pub fn load(&self, sign: bool) -> Result<Arc<Authentication>> {
        let read = |field: &str, paths: &[PathBuf]| -> Result<Vec<TrustedKey>> {
            paths
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    TrustedKey::from_file(p)
                        .with_context(|| format!("repository.authentication.{field}[{i}]"))
                })
                .collect()
        };
        let agents = read("agent_keys", &self.agent_keys)?;
        let servers = read("server_keys", &self.server_keys)?;
        let signer = match self.signing_key_path().filter(|_| sign) {
            Some(path) => Some(KeyPair::from_file(&path).with_context(|| {
                format!("repository.authentication.signing_key ({SIGNING_KEY_ENV}, the systemd credential {SIGNING_KEY_CREDENTIAL}, or the file)")
            })?),
            None => None,
        };
        Ok(Arc::new(Authentication::new(signer, agents, servers)))
    }

    /// Static checks: an authenticated repository that trusts no agent
    /// could read no backup.
    pub fn validate(&self, physical_jobs: &[&str]) -> Result<()> {
        if self.agent_keys.is_empty() {
            anyhow::bail!("repository.authentication.agent_keys: empty; list the public key of every agent that writes backups (at least this one's), or no backup could be read");
        }
        if let Some(job) = physical_jobs.first() {
            if self.server_keys.is_empty() {
                anyhow::bail!("repository.authentication.server_keys: empty, but job {job} is physical: its WAL is signed by the database server's wal-push; list that server's public key");
            }
        }
        Ok(())
    }
}
