//! Client-side encryption with age (age-encryption.org/v1, X25519): the
//! public keys a backup is encrypted to ([`Recipients`]), the private keys
//! that decrypt it ([`Identities`]), and the two stream stages of the
//! pipelines: [`Encrypting`] between the compressor and the digest on the
//! backup path, [`decrypting`] between the digest check and the
//! decompressor on the restore path.
//!
//! age's STREAM construction seals 64 KiB chunks, each authenticated, the
//! last one marked as last: memory stays flat, and a truncated or altered
//! file fails to decrypt. The digest in the manifest covers the stored
//! (encrypted) bytes, so damage is still told apart from a missing key:
//! bytes that match the digest and do not decrypt are damage; no identity,
//! or none that matches, means "could not check" (a drill is
//! inconclusive). Key material is never printed: [`Identities`] shows its
//! public keys only.

use std::fmt;
use std::io::{self, Write};
use std::path::Path;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use age::secrecy::ExposeSecret;
use age::stream::StreamWriter;
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

use crate::error::{Error, Result};

/// The manifest's name of the scheme, on the backup and on each artifact.
pub const AGE: &str = "age";
/// Stored names of encrypted artifacts end in this.
pub const SUFFIX: &str = ".age";

/// Plaintext read per encrypted chunk: age's chunk size.
const CHUNK: usize = 64 * 1024;

/// The public keys (`age1…`) a backup is encrypted to: all a backup needs.
/// They are not secret, and the manifest records them.
#[derive(Clone)]
pub struct Recipients {
    keys: Vec<age::x25519::Recipient>,
    names: Vec<String>,
}

impl fmt::Debug for Recipients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.names).finish()
    }
}

impl Recipients {
    /// Parses `age1…` keys; `origin` names where they come from in errors
    /// (`repository.encryption.recipients`, a file).
    pub fn parse<S: AsRef<str>>(keys: &[S], origin: &str) -> Result<Self> {
        let mut out = Recipients {
            keys: Vec::new(),
            names: Vec::new(),
        };
        for (n, key) in keys.iter().enumerate() {
            let key = key.as_ref().trim();
            let parsed =
                age::x25519::Recipient::from_str(key).map_err(|e| Error::NotRecipient {
                    origin: origin.to_string(),
                    entry: n + 1,
                    key: key.to_string(),
                    reason: e.to_string(),
                })?;
            if !out.names.iter().any(|k| k == key) {
                out.names.push(key.to_string());
                out.keys.push(parsed);
            }
        }
        if out.keys.is_empty() {
            return Err(Error::NoRecipients {
                origin: origin.to_string(),
            });
        }
        Ok(out)
    }

    /// Reads a recipients file in `age -R` format: one `age1…` key per
    /// line, `#` comments and blank lines ignored.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::KeyFile {
            origin: format!("recipients file {}", path.display()),
            reason: e.to_string(),
        })?;
        let keys: Vec<&str> = key_lines(&text).collect();
        Self::parse(&keys, &format!("recipients file {}", path.display()))
    }

    /// The public keys, as the manifest records them.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Every recipient of `self` and `more`, `self`'s first, each once.
    pub fn merged(mut self, more: Recipients) -> Recipients {
        for (key, name) in more.keys.into_iter().zip(more.names) {
            if !self.names.contains(&name) {
                self.names.push(name);
                self.keys.push(key);
            }
        }
        self
    }

    fn encryptor(&self) -> Result<age::Encryptor> {
        age::Encryptor::with_recipients(self.keys.iter().map(|k| k as &dyn age::Recipient)).map_err(
            |e| Error::Age {
                step: "setting up encryption",
                reason: e.to_string(),
            },
        )
    }
}

/// Non-comment, non-blank lines of a key file, trimmed.
fn key_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// Private keys (`AGE-SECRET-KEY-1…`) that decrypt backups: for restore,
/// verify, drills. Several may be given, which is how backups taken before
/// a key rotation still restore. `Debug` shows the public keys only.
pub struct Identities {
    keys: Vec<age::x25519::Identity>,
    publics: Vec<String>,
    /// Where they were read from, for messages.
    origin: String,
}

impl fmt::Debug for Identities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identities")
            .field("origin", &self.origin)
            .field("public_keys", &self.publics)
            .finish()
    }
}

impl Identities {
    /// Reads an identity file in `age -i` format (`age-keygen` output: one
    /// `AGE-SECRET-KEY-1…` per line, `#` comments). Errors name the file
    /// and the line, never its content. A file that group or others may
    /// read is warned about.
    pub fn from_file(path: &Path) -> Result<Self> {
        let origin = format!("identity file {}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| Error::KeyFile {
            origin: origin.clone(),
            reason: e.to_string(),
        })?;
        warn_if_exposed(path);
        Self::parse(&text, origin)
    }

    /// Parses identities from text; `origin` names them in messages.
    pub fn parse(text: &str, origin: String) -> Result<Self> {
        let mut keys = Vec::new();
        let mut publics = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = age::x25519::Identity::from_str(line).map_err(|_| Error::NotIdentity {
                origin: origin.clone(),
                line: n + 1,
            })?;
            let public = key.to_public().to_string();
            if !publics.contains(&public) {
                publics.push(public);
                keys.push(key);
            }
        }
        if keys.is_empty() {
            return Err(Error::NoIdentities { origin });
        }
        Ok(Identities {
            keys,
            publics,
            origin,
        })
    }

    /// The public keys of these identities (their recipients).
    pub fn publics(&self) -> &[String] {
        &self.publics
    }

    /// Where they were read from.
    pub fn origin(&self) -> &str {
        &self.origin
    }
}

#[cfg(unix)]
fn warn_if_exposed(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{mode:04o}"),
                "identity-file-exposed: group or others may read this age identity file; chmod 600 it");
        }
    }
}

#[cfg(not(unix))]
fn warn_if_exposed(_path: &Path) {}

/// Where the encryptor writes: a buffer the reader side drains.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A reader of the age encryption of `inner`'s bytes: at most one 64 KiB
/// chunk (and its ciphertext) in memory at a time, and nothing on disk.
/// The file is finished (its last chunk sealed as last) only when `inner`
/// ends cleanly; an error of `inner` is passed on, so a failed dump never
/// becomes a complete-looking encrypted file.
pub struct Encrypting<R> {
    inner: R,
    writer: Option<StreamWriter<Sink>>,
    sink: Sink,
    /// Bytes of the sink's buffer already handed out.
    taken: usize,
    chunk: Box<[u8]>,
}

impl<R> Encrypting<R> {
    /// Encrypts `inner` to `recipients`. The age header is produced at
    /// once (it is the first thing read).
    pub fn new(inner: R, recipients: &Recipients) -> Result<Self> {
        let sink = Sink::default();
        let writer = recipients
            .encryptor()?
            .wrap_output(sink.clone())
            .map_err(|e| Error::Age {
                step: "writing the age header",
                reason: e.to_string(),
            })?;
        Ok(Encrypting {
            inner,
            writer: Some(writer),
            sink,
            taken: 0,
            chunk: vec![0u8; CHUNK].into_boxed_slice(),
        })
    }

    /// Copies buffered ciphertext into `buf`; whether anything was copied.
    fn drain(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let mut out = self.sink.0.lock().unwrap_or_else(PoisonError::into_inner);
        if self.taken >= out.len() {
            return false;
        }
        let n = buf.remaining().min(out.len() - self.taken);
        buf.put_slice(&out[self.taken..self.taken + n]);
        self.taken += n;
        if self.taken == out.len() {
            out.clear();
            self.taken = 0;
        }
        n > 0
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Encrypting<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.drain(buf) {
                return Poll::Ready(Ok(()));
            }
            let Some(writer) = this.writer.as_mut() else {
                return Poll::Ready(Ok(())); // finished and drained: EOF
            };
            let mut chunk = ReadBuf::new(&mut this.chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut chunk) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if chunk.filled().is_empty() => {
                    if let Some(writer) = this.writer.take() {
                        writer.finish()?;
                    }
                }
                Poll::Ready(Ok(())) => writer.write_all(chunk.filled())?,
            }
        }
    }
}

/// Opens the age file `reader` holds with `identities`: the header is read
/// and a file key unwrapped before anything is returned, so a missing or
/// wrong identity fails before a restore touches its target. `key` names
/// the artifact and `recipients` (from the manifest) what it is encrypted
/// to, in errors. A header that is not age is damage (the caller has
/// checked nothing yet: it decides by the digest).
pub async fn decrypting<R>(
    reader: R,
    identities: Option<&Identities>,
    recipients: &[String],
    key: &str,
) -> Result<Pin<Box<dyn AsyncRead + Send>>>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let Some(identities) = identities else {
        return Err(Error::NoIdentity {
            key: key.to_string(),
            recipients: recipients.join(", "),
        });
    };
    let buffered = futures::io::BufReader::new(reader.compat());
    let decryptor = age::Decryptor::new_async_buffered(buffered)
        .await
        .map_err(|e| header_error(key, e))?;
    let stream = decryptor
        .decrypt_async(identities.keys.iter().map(|k| k as &dyn age::Identity))
        .map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => Error::WrongIdentity {
                key: key.to_string(),
                recipients: recipients.join(", "),
                identities: identities.publics.join(", "),
                origin: identities.origin.clone(),
            },
            other => header_error(key, other),
        })?;
    Ok(Box::pin(stream.compat()))
}

fn header_error(key: &str, e: age::DecryptError) -> Error {
    match e {
        age::DecryptError::Io(io) => Error::Fetch {
            key: key.to_string(),
            source: io,
        },
        other => Error::Damaged {
            key: key.to_string(),
            detail: format!("its age header does not parse: {other}"),
        },
    }
}

/// `config check`'s probe: a few bytes encrypted to `to` and, when
/// identities are given, decrypted again. `None`: no identities to try;
/// `Some(false)`: none of them opens what `to` can read.
pub async fn probe(to: &Recipients, identities: Option<&Identities>) -> Result<Option<bool>> {
    use tokio::io::AsyncReadExt;
    let plain = b"refugio encryption probe";
    let mut sealed = Vec::new();
    Encrypting::new(&plain[..], to)?
        .read_to_end(&mut sealed)
        .await
        .map_err(|e| Error::Age {
            step: "encrypting the probe",
            reason: e.to_string(),
        })?;
    let Some(ids) = identities else {
        return Ok(None);
    };
    match decrypting(io::Cursor::new(sealed), Some(ids), to.names(), "probe").await {
        Ok(mut reader) => {
            let mut back = Vec::new();
            reader
                .read_to_end(&mut back)
                .await
                .map_err(|e| Error::Age {
                    step: "decrypting the probe",
                    reason: e.to_string(),
                })?;
            Ok(Some(back == plain))
        }
        Err(Error::WrongIdentity { .. }) => Ok(Some(false)),
        Err(e) => Err(e),
    }
}

/// A fresh identity, for `config check`'s probe and for tests: its secret
/// text (`AGE-SECRET-KEY-1…`) and its public key.
pub fn generate() -> (String, String) {
    let key = age::x25519::Identity::generate();
    let public = key.to_public().to_string();
    (key.to_string().expose_secret().to_string(), public)
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use tokio::io::AsyncReadExt;

    use super::*;

    async fn encrypt(data: &[u8], to: &Recipients) -> Vec<u8> {
        let mut out = Vec::new();
        Encrypting::new(data, to)
            .expect("encryptor")
            .read_to_end(&mut out)
            .await
            .expect("encrypt");
        out
    }

    fn pair() -> (Identities, Recipients) {
        let (secret, public) = generate();
        (
            Identities::parse(&format!("# a key\n{secret}\n"), "test".into()).expect("identity"),
            Recipients::parse(&[public], "test").expect("recipient"),
        )
    }

    #[tokio::test]
    async fn round_trips_large_inputs_and_refuses_a_truncated_file() {
        let (ids, to) = pair();
        let data: Vec<u8> = (0..300_000u32).flat_map(|n| n.to_le_bytes()).collect();
        let sealed = encrypt(&data, &to).await;
        assert!(sealed.starts_with(b"age-encryption.org/v1\n"));
        let mut plain = Vec::new();
        decrypting(Cursor::new(sealed.clone()), Some(&ids), to.names(), "k")
            .await
            .expect("decryptor")
            .read_to_end(&mut plain)
            .await
            .expect("decrypt");
        assert_eq!(plain, data);

        // age's payload: a 16-byte nonce after the header (which ends with
        // the `---` MAC line), then chunks of 64 KiB + a 16-byte tag, the
        // last one marked as last. A file cut at a chunk boundary is whole
        // chunks, every tag valid, none marked last: still refused, as is
        // one cut inside a chunk.
        let mac_line = sealed
            .windows(4)
            .position(|w| w == b"\n---")
            .expect("the header's MAC line");
        let header_end = mac_line
            + 1
            + sealed[mac_line + 1..]
                .iter()
                .position(|b| *b == b'\n')
                .expect("end of the MAC line")
            + 1;
        const CHUNK: usize = 64 * 1024 + 16;
        let payload = header_end + 16;
        let chunks = (sealed.len() - payload).div_ceil(CHUNK);
        assert!(chunks > 3, "{chunks} chunks");
        let boundary = payload + 2 * CHUNK;
        for (what, at) in [
            ("at a chunk boundary", boundary),
            ("at the last chunk's start", payload + (chunks - 1) * CHUNK),
            ("inside a chunk", boundary + 1000),
            ("1000 bytes short", sealed.len() - 1000),
        ] {
            let mut out = Vec::new();
            let read = decrypting(
                Cursor::new(sealed[..at].to_vec()),
                Some(&ids),
                to.names(),
                "k",
            )
            .await
            .expect("header fine")
            .read_to_end(&mut out)
            .await;
            assert!(
                read.is_err(),
                "a file cut {what} (byte {at} of {}) decrypted to {} bytes",
                sealed.len(),
                out.len()
            );
        }
    }

    #[tokio::test]
    async fn an_empty_input_is_a_valid_file() {
        let (ids, to) = pair();
        let sealed = encrypt(b"", &to).await;
        let mut plain = Vec::new();
        decrypting(Cursor::new(sealed), Some(&ids), to.names(), "k")
            .await
            .expect("decryptor")
            .read_to_end(&mut plain)
            .await
            .expect("decrypt");
        assert!(plain.is_empty());
    }

    #[tokio::test]
    async fn a_missing_or_wrong_identity_is_named_and_never_the_secret() {
        let (_, to) = pair();
        let (other, _) = pair();
        let sealed = encrypt(b"secret rows", &to).await;
        let none = decrypting(
            Cursor::new(sealed.clone()),
            None,
            to.names(),
            "app/x/database.dump.zst.age",
        )
        .await
        .err()
        .expect("refused");
        let text = none.to_string();
        assert!(
            text.contains("no age identity") && text.contains(&to.names()[0]),
            "{text}"
        );
        let wrong = decrypting(
            Cursor::new(sealed),
            Some(&other),
            to.names(),
            "app/x/database.dump.zst.age",
        )
        .await
        .err()
        .expect("refused");
        let text = wrong.to_string();
        assert!(
            text.contains(&other.publics()[0]) && text.contains(&to.names()[0]),
            "{text}"
        );
        assert!(!text.contains("AGE-SECRET-KEY"), "{text}");
        assert!(!format!("{other:?}").contains("AGE-SECRET-KEY"));
    }

    #[test]
    fn bad_keys_are_named_by_place_not_content() {
        let e = Identities::parse("AGE-SECRET-KEY-1NOTAKEY\n", "identity file f".into())
            .expect_err("bad");
        assert!(e.to_string().contains("line 1"), "{e}");
        assert!(!e.to_string().contains("NOTAKEY"), "{e}");
        let e =
            Recipients::parse(&["age1nope"], "repository.encryption.recipients").expect_err("bad");
        assert!(e.to_string().contains("entry 1"), "{e}");
    }
}
