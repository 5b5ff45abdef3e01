//! Authenticated repositories: every object refugio reads back as a
//! decision (a manifest, a drill receipt, a WAL file) carries an Ed25519
//! signature by the role that writes it, and readers accept each kind only
//! from the keys they trust for that role.
//!
//! Two roles: **agent** (the hosts that run backups and drills: manifests,
//! which bind every artifact by its SHA-256, and receipts) and **server**
//! (the database hosts, whose `wal-push` writes the WAL archive). A
//! database host holds the bucket credentials `wal-push` needs, so it can
//! write anywhere in the bucket; what it cannot do is sign as an agent, so
//! it cannot forge a backup or a drill's verdict.
//!
//! What is signed is a fixed text: a domain tag, the role, the object's key
//! and the SHA-256 of its content (for a WAL file, the digest its name
//! records, of the bytes PostgreSQL wrote): a signature is valid for one
//! object under one key and one role only. Manifests and receipts carry it
//! in a sidecar object (`<key>.sig`, written before the object itself, so a
//! committed manifest always has one); a WAL file carries it in its own
//! name ([`WalSignature`]), so the archive needs no extra request per file.
//!
//! Ed25519 (RFC 8032, `ed25519-dalek`): small keys and signatures, fast
//! verification, deterministic signing (no randomness needed at signing
//! time), and keys in the PEM formats `openssl genpkey -algorithm ed25519`
//! writes (PKCS#8 private, SPKI public). Keys rotate by listing the new
//! public key beside the old ones: a new signing key signs, every listed key
//! still verifies, and removing a key retires it.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Suffix of a manifest's or receipt's signature object.
pub const SIGNATURE_SUFFIX: &str = ".sig";
/// Largest signature object read.
pub const MAX_SIGNATURE_BYTES: u64 = 4096;
/// What the signed text starts with: a signature of refugio's is valid for
/// nothing else.
const DOMAIN: &str = "refugio-signature-v1";
const SIGNATURE_FORMAT: u32 = 1;
/// Prefix of the signature part of a WAL object's name.
const WAL_MARK: char = 's';
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Who writes a kind of object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Backups (manifests) and drills (receipts): `agent_keys`.
    Agent,
    /// `wal-push` on the database servers (the WAL archive): `server_keys`.
    Server,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Server => "server",
        }
    }

    /// The `[repository.authentication]` field listing this role's keys.
    pub fn field(self) -> &'static str {
        match self {
            Role::Agent => "agent_keys",
            Role::Server => "server_keys",
        }
    }
}

/// A key's short name: the first 8 bytes of the SHA-256 of its public key,
/// in hex. Printed in messages and stored in signatures.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

/// The SHA-256 of `bytes`, in hex.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn read_pem(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::Key {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// This host's private key. `Debug` prints its id and file only.
pub struct KeyPair {
    key: SigningKey,
    id: String,
    path: PathBuf,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("id", &self.id)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// Reads a PKCS#8 PEM Ed25519 private key (`openssl genpkey -algorithm
    /// ed25519`).
    pub fn from_file(path: &Path) -> Result<KeyPair> {
        let pem = read_pem(path)?;
        let key = SigningKey::from_pkcs8_pem(&pem).map_err(|_| Error::Key {
            path: path.display().to_string(),
            reason: "not an Ed25519 private key in PEM (PKCS#8; make one with `openssl genpkey -algorithm ed25519 -out FILE`)".into(),
        })?;
        Ok(KeyPair {
            id: key_id(&key.verifying_key()),
            key,
            path: path.to_path_buf(),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A public key trusted for one role.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    key: VerifyingKey,
    id: String,
}

impl TrustedKey {
    /// Reads an SPKI PEM Ed25519 public key (`openssl pkey -in KEY -pubout`).
    pub fn from_file(path: &Path) -> Result<TrustedKey> {
        let pem = read_pem(path)?;
        let key = VerifyingKey::from_public_key_pem(&pem).map_err(|_| Error::Key {
            path: path.display().to_string(),
            reason: "not an Ed25519 public key in PEM (SPKI; make one with `openssl pkey -in PRIVATE -pubout -out FILE`)".into(),
        })?;
        Ok(TrustedKey {
            id: key_id(&key),
            key,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

/// The sidecar object of a manifest or receipt.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureObject {
    format: u32,
    role: Role,
    key_id: String,
    /// The SHA-256 of the signed object's content.
    sha256: String,
    /// The Ed25519 signature, base64url.
    signature: String,
}

/// The signature part of a WAL object's name: `s<key id><signature>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalSignature {
    pub key_id: String,
    pub signature: [u8; 64],
}

impl WalSignature {
    /// The name part, without its dots.
    pub fn to_part(&self) -> String {
        format!("{WAL_MARK}{}{}", self.key_id, B64.encode(self.signature))
    }

    /// Reads a name part written by [`WalSignature::to_part`]; None for any
    /// other text.
    pub fn parse_part(part: &str) -> Option<WalSignature> {
        let rest = part.strip_prefix(WAL_MARK)?;
        if rest.len() != 16 + 86 || !rest.is_char_boundary(16) {
            return None;
        }
        let (id, sig) = rest.split_at(16);
        if !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let bytes = B64.decode(sig).ok()?;
        Some(WalSignature {
            key_id: id.to_string(),
            signature: bytes.try_into().ok()?,
        })
    }
}

/// `[repository.authentication]` in force: this host's signing key (if it
/// writes) and the public keys trusted for each role.
#[derive(Debug, Default)]
pub struct Authentication {
    signer: Option<KeyPair>,
    agents: Vec<TrustedKey>,
    servers: Vec<TrustedKey>,
}

impl Authentication {
    pub fn new(signer: Option<KeyPair>, agents: Vec<TrustedKey>, servers: Vec<TrustedKey>) -> Self {
        Authentication {
            signer,
            agents,
            servers,
        }
    }

    pub fn signer(&self) -> Option<&KeyPair> {
        self.signer.as_ref()
    }

    /// The keys trusted for `role`.
    pub fn trusted(&self, role: Role) -> &[TrustedKey] {
        match role {
            Role::Agent => &self.agents,
            Role::Server => &self.servers,
        }
    }

    /// Whether this host's signing key is trusted for `role`: what it
    /// signs as that role, its own readers accept.
    pub fn signs_as(&self, role: Role) -> bool {
        self.signer
            .as_ref()
            .is_some_and(|s| self.trusted(role).iter().any(|t| t.id == s.id))
    }

    fn message(role: Role, key: &str, sha256: &str) -> Vec<u8> {
        format!("{DOMAIN}\n{}\n{key}\n{sha256}\n", role.as_str()).into_bytes()
    }

    fn raw_sign(&self, role: Role, key: &str, sha256: &str) -> Result<(String, Signature)> {
        let signer = self.signer.as_ref().ok_or_else(|| Error::NoSigningKey {
            key: key.to_string(),
        })?;
        Ok((
            signer.id.clone(),
            signer.key.sign(&Self::message(role, key, sha256)),
        ))
    }

    /// The signature object for `key` whose content hashes to `sha256`.
    pub fn sign(&self, role: Role, key: &str, sha256: &str) -> Result<Vec<u8>> {
        let (key_id, sig) = self.raw_sign(role, key, sha256)?;
        let object = SignatureObject {
            format: SIGNATURE_FORMAT,
            role,
            key_id,
            sha256: sha256.to_string(),
            signature: B64.encode(sig.to_bytes()),
        };
        Ok(serde_json::to_vec(&object).expect("a signature serialises"))
    }

    /// The signature part of a WAL object's name; `unsigned_key` is the key
    /// the object would have without it.
    pub fn sign_wal(&self, unsigned_key: &str, sha256: &str) -> Result<WalSignature> {
        let (key_id, sig) = self.raw_sign(Role::Server, unsigned_key, sha256)?;
        Ok(WalSignature {
            key_id,
            signature: sig.to_bytes(),
        })
    }

    fn check(
        &self,
        role: Role,
        key: &str,
        sha256: &str,
        key_id: &str,
        signature: &Signature,
    ) -> std::result::Result<(), String> {
        let Some(trusted) = self.trusted(role).iter().find(|t| t.id == key_id) else {
            let other = match role {
                Role::Agent => Role::Server,
                Role::Server => Role::Agent,
            };
            return Err(if self.trusted(other).iter().any(|t| t.id == key_id) {
                format!(
                        "signed by {} key {key_id}, which may sign only what a{} {} writes, not this object",
                        other.as_str(),
                        if other == Role::Agent { "n" } else { "" },
                        match other {
                            Role::Agent => "agent (backups, drills)",
                            Role::Server => "database server's wal-push",
                        }
                    )
            } else {
                format!(
                        "signed by key {key_id}, which is not among repository.authentication.{} (a retired key, or not refugio's)",
                        role.field()
                    )
            });
        };
        trusted
            .key
            .verify(&Self::message(role, key, sha256), signature)
            .map_err(|_| format!("the signature by key {key_id} does not match the object"))
    }

    /// Checks a manifest's or receipt's signature object against the
    /// object's key and content. Err: why it is refused.
    pub fn verify(
        &self,
        role: Role,
        key: &str,
        content: &[u8],
        signature: Option<&[u8]>,
    ) -> std::result::Result<String, String> {
        let Some(bytes) = signature else {
            return Err(format!(
                "it has no signature ({key}{SIGNATURE_SUFFIX} is missing)"
            ));
        };
        let sig: SignatureObject = serde_json::from_slice(bytes)
            .map_err(|e| format!("its signature {key}{SIGNATURE_SUFFIX} is not readable: {e}"))?;
        if sig.format != SIGNATURE_FORMAT {
            return Err(format!(
                "its signature has format {}, this refugio reads {SIGNATURE_FORMAT}",
                sig.format
            ));
        }
        if sig.role != role {
            return Err(format!(
                "it is signed as written by a{} {}, but only a{} {} writes it",
                if sig.role == Role::Agent { "n" } else { "" },
                sig.role.as_str(),
                if role == Role::Agent { "n" } else { "" },
                role.as_str()
            ));
        }
        let actual = digest(content);
        if sig.sha256 != actual {
            return Err(format!(
                "its signature is for content with SHA-256 {}, but its SHA-256 is {actual}",
                sig.sha256
            ));
        }
        let raw: [u8; 64] = B64
            .decode(&sig.signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| "its signature is not 64 bytes of base64url".to_string())?;
        self.check(
            role,
            key,
            &actual,
            &sig.key_id,
            &Signature::from_bytes(&raw),
        )?;
        Ok(sig.key_id)
    }

    /// Checks a WAL object's in-name signature. `unsigned_key` is its key
    /// without the signature part, `sha256` the digest its name records.
    pub fn verify_wal(
        &self,
        unsigned_key: &str,
        sha256: &str,
        signature: Option<&WalSignature>,
    ) -> std::result::Result<(), String> {
        let Some(sig) = signature else {
            return Err("its name carries no signature".to_string());
        };
        self.check(
            Role::Server,
            unsigned_key,
            sha256,
            &sig.key_id,
            &Signature::from_bytes(&sig.signature),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (KeyPair, TrustedKey) {
        let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
        let public = key.verifying_key();
        (
            KeyPair {
                id: key_id(&public),
                key,
                path: PathBuf::from("mem"),
            },
            TrustedKey {
                id: key_id(&public),
                key: public,
            },
        )
    }

    #[test]
    fn a_signature_holds_for_one_object_one_content_one_role() {
        let (agent, agent_pub) = pair();
        let (_, server_pub) = pair();
        let auth = Authentication::new(Some(agent), vec![agent_pub], vec![server_pub]);
        let body = b"{\"format\":\"1.8\"}";
        let sig = auth
            .sign(Role::Agent, "j/1/manifest.json", &digest(body))
            .unwrap();
        assert!(auth
            .verify(Role::Agent, "j/1/manifest.json", body, Some(&sig))
            .is_ok());
        // Another key, other content, another role, no signature: refused.
        let moved = auth
            .verify(Role::Agent, "j/2/manifest.json", body, Some(&sig))
            .unwrap_err();
        assert!(moved.contains("does not match"), "{moved}");
        let changed = auth
            .verify(Role::Agent, "j/1/manifest.json", b"{}", Some(&sig))
            .unwrap_err();
        assert!(changed.contains("SHA-256"), "{changed}");
        let role = auth
            .verify(Role::Server, "j/1/manifest.json", body, Some(&sig))
            .unwrap_err();
        assert!(role.contains("only a server writes it"), "{role}");
        let none = auth
            .verify(Role::Agent, "j/1/manifest.json", body, None)
            .unwrap_err();
        assert!(none.contains("no signature"), "{none}");
    }

    #[test]
    fn a_server_key_cannot_sign_as_an_agent_and_retired_keys_fail() {
        let (server, server_pub) = pair();
        let (_, agent_pub) = pair();
        let db_host = Authentication::new(Some(server), vec![], vec![]);
        let forged = db_host
            .sign(Role::Agent, "j/1/manifest.json", &digest(b"m"))
            .unwrap();
        let reader = Authentication::new(None, vec![agent_pub.clone()], vec![server_pub]);
        let why = reader
            .verify(Role::Agent, "j/1/manifest.json", b"m", Some(&forged))
            .unwrap_err();
        assert!(why.contains("signed by server key"), "{why}");
        let retired = Authentication::new(None, vec![agent_pub], vec![]);
        let why = retired
            .verify(Role::Agent, "j/1/manifest.json", b"m", Some(&forged))
            .unwrap_err();
        assert!(
            why.contains("not among repository.authentication.agent_keys"),
            "{why}"
        );
    }

    #[test]
    fn wal_signatures_round_trip_through_a_name_part() {
        let (server, server_pub) = pair();
        let auth = Authentication::new(Some(server), vec![], vec![server_pub]);
        let sha = "ab".repeat(32);
        let sig = auth.sign_wal("j/wal/00000001/x", &sha).unwrap();
        let part = sig.to_part();
        assert!(!part.contains('.') && !part.contains('/'), "{part}");
        let back = WalSignature::parse_part(&part).unwrap();
        assert_eq!(back, sig);
        assert!(auth
            .verify_wal("j/wal/00000001/x", &sha, Some(&back))
            .is_ok());
        assert!(auth
            .verify_wal("j/wal/00000001/y", &sha, Some(&back))
            .is_err());
        assert!(auth.verify_wal("j/wal/00000001/x", &sha, None).is_err());
        assert_eq!(WalSignature::parse_part("zst"), None);
        assert_eq!(
            WalSignature::parse_part(&format!("s{}{}", "g".repeat(16), "A".repeat(86))),
            None
        );
    }
}
