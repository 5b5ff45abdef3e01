//! `[repository.encryption]`: the age recipients every backup is encrypted
//! to, and where the identities that decrypt them come from.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use refugio_core::{Identities, Recipients};
use serde::Deserialize;

/// Overrides `identity_file`.
pub const IDENTITY_ENV: &str = "REFUGIO_AGE_IDENTITY_FILE";
/// The systemd credential (`LoadCredential=age-identity:…`) that overrides
/// `identity_file` too.
pub const IDENTITY_CREDENTIAL: &str = "age-identity";

/// `[repository.encryption]`. Only public keys and file paths: `Debug`
/// prints nothing secret.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// Public keys (`age1…`) every backup is encrypted to.
    #[serde(default)]
    pub recipients: Vec<String>,
    /// A file of public keys, `age -R` format; adds to `recipients`.
    #[serde(default)]
    pub recipients_file: Option<PathBuf>,
    /// Private keys (`age -i` format, several allowed) for restore,
    /// verify and drills. Overridden by `REFUGIO_AGE_IDENTITY_FILE` and by
    /// the systemd credential `age-identity`.
    #[serde(default)]
    pub identity_file: Option<PathBuf>,
}

impl EncryptionConfig {
    /// The recipients of the next backup: `recipients` plus those of
    /// `recipients_file`, read now (so a changed file applies to the next
    /// backup).
    pub fn recipients(&self) -> Result<Recipients> {
        let inline = (!self.recipients.is_empty())
            .then(|| Recipients::parse(&self.recipients, "repository.encryption.recipients"))
            .transpose()?;
        let from_file = self
            .recipients_file
            .as_deref()
            .map(Recipients::from_file)
            .transpose()?;
        match (inline, from_file) {
            (Some(a), Some(b)) => Ok(a.merged(b)),
            (Some(one), None) | (None, Some(one)) => Ok(one),
            (None, None) => anyhow::bail!(
                "repository.encryption: no recipients: set `recipients` (age1… public keys) or `recipients_file`"
            ),
        }
    }
}

/// The identity file in force: `REFUGIO_AGE_IDENTITY_FILE`, else the
/// systemd credential `age-identity`, else `identity_file`.
pub fn identity_path(configured: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(IDENTITY_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let credential = Path::new(&dir).join(IDENTITY_CREDENTIAL);
        if credential.exists() {
            return Some(credential);
        }
    }
    configured.map(Path::to_path_buf)
}

/// The identities for restores and drills; None when none is configured
/// anywhere.
pub fn identities(configured: Option<&Path>) -> Result<Option<Arc<Identities>>> {
    let Some(path) = identity_path(configured) else {
        return Ok(None);
    };
    let ids = Identities::from_file(&path)
        .with_context(|| format!("reading the age identities ({IDENTITY_ENV}, the systemd credential {IDENTITY_CREDENTIAL}, or repository.encryption.identity_file)"))?;
    Ok(Some(Arc::new(ids)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_and_the_file_are_merged_each_once() {
        let (_, a) = refugio_core::encryption::generate();
        let (_, b) = refugio_core::encryption::generate();
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("recipients.txt");
        std::fs::write(&file, format!("# team keys\n{a}\n\n{b}\n")).expect("write");
        let cfg = EncryptionConfig {
            recipients: vec![a.clone()],
            recipients_file: Some(file),
            identity_file: None,
        };
        assert_eq!(cfg.recipients().expect("recipients").names(), [a, b]);
        let none = EncryptionConfig::default().recipients().expect_err("none");
        assert!(none.to_string().contains("no recipients"), "{none}");
    }
}
