//! Reading an artifact back: size and digest checked on the stored bytes,
//! decrypted when sealed, decompressed; and telling "the stored object is
//! bad" from "the download went wrong" when decoding fails.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use refugio_dump::process::tool_error;
use refugio_store::manifest::Artifact;
use refugio_store::repo::Repository;
use refugio_store::verified;
use tokio::io::{AsyncRead, ReadBuf};

use super::Decode;
use crate::encryption;
use crate::error::Error;
use crate::progress::counting;
use crate::Result;

/// A reader that stays reachable after it was moved into a decoder, so the
/// raw stream can be drained to its end when decoding fails.
pub(super) struct Shared<R>(Arc<Mutex<R>>);

impl Shared<Raw> {
    /// Whether the raw stream was read to its end with size and digest as
    /// the manifest says.
    fn is_verified(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_verified()
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Shared<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let mut inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        Pin::new(&mut *inner).poll_read(cx, buf)
    }
}

/// Opens an artifact with size and digest checks (on the stored bytes),
/// decrypting when sealed, decompressing; keeps a handle on the raw stream
/// for [`explain`].
pub(super) async fn open_artifact(
    repo: &Repository,
    key: &str,
    art: &Artifact,
    decode: Decode<'_>,
) -> Result<(Pin<Box<dyn AsyncRead + Send>>, Shared<Raw>)> {
    let reader =
        verified::get_verified(repo.store().as_ref(), key, art.stored_size, &art.sha256).await?;
    let shared = Arc::new(Mutex::new(reader));
    let plain: Pin<Box<dyn AsyncRead + Send>> = match decode.seal {
        Some(seal) => {
            let opened = encryption::decrypting(
                counting(Shared(shared.clone()), decode.progress, |p| &p.stored),
                seal.identities,
                seal.recipients,
                key,
            )
            .await;
            match opened {
                Ok(reader) => reader,
                // A header that does not parse is damage only if the stored
                // bytes match the manifest; else the download went wrong.
                Err(Error::Damaged { detail, .. }) => {
                    let cause = std::io::Error::new(std::io::ErrorKind::InvalidData, detail);
                    return Err(explain(repo, key, art, cause, Shared(shared)).await);
                }
                Err(e) => return Err(e),
            }
        }
        None => Box::pin(counting(Shared(shared.clone()), decode.progress, |p| {
            &p.stored
        })),
    };
    // Download, digest and decryption on one core, decompression on the
    // other (the restore's tool takes its share too).
    let plain = refugio_dump::pipe::read_ahead(plain);
    let decoded = counting(decode.compression.decoder(plain), decode.progress, |p| {
        &p.read
    });
    Ok((Box::pin(decoded), Shared(shared)))
}

pub(super) type Raw = verified::VerifiedReader<refugio_store::ByteReader>;

/// A decoding error may be the symptom of damaged stored bytes: read the
/// rest of the raw stream so its size/digest check can name the real cause.
/// Bytes that match the manifest and still do not decode are damage too.
pub(super) async fn explain(
    repo: &Repository,
    key: &str,
    art: &Artifact,
    decode_error: std::io::Error,
    mut raw: Shared<Raw>,
) -> Error {
    if is_store_error(&decode_error) {
        return fetch_error(repo, key, art, decode_error).await;
    }
    match tokio::io::copy(&mut raw, &mut tokio::io::sink()).await {
        Err(e) if is_store_error(&e) => fetch_error(repo, key, art, e).await,
        Ok(_) if raw.is_verified() => Error::Damaged {
            key: key.into(),
            detail: format!(
                "its bytes match the manifest's size and SHA-256 but do not decrypt or decompress: {decode_error}"
            ),
        },
        _ => fetch_error(repo, key, art, decode_error).await,
    }
}

/// Content refused as not refugio's (`why`) while decoding: if the
/// rest of the stored bytes do not match the manifest, that is damage (or
/// a failed download) and said so; if they match, the refusal stands.
pub(super) async fn refused(
    repo: &Repository,
    key: &str,
    art: &Artifact,
    why: Error,
    mut raw: Shared<Raw>,
) -> Error {
    match tokio::io::copy(&mut raw, &mut tokio::io::sink()).await {
        // The verified reader ends in an error unless size and digest match.
        Ok(_) => why,
        Err(e) if is_store_error(&e) => fetch_error(repo, key, art, e).await,
        Err(e) => Error::Fetch {
            key: key.into(),
            source: e,
        },
    }
}

fn is_store_error(e: &std::io::Error) -> bool {
    e.get_ref()
        .is_some_and(|i| i.downcast_ref::<refugio_store::Error>().is_some())
}

/// Tells "the stored object is bad" from "the download went wrong". A
/// digest mismatch, or a size mismatch the store confirms, is damage; a
/// download that ended early while the store still holds the whole object
/// (a cut connection) is not, and neither is any other store or network
/// error: those mean the backup could not be checked.
async fn fetch_error(
    repo: &Repository,
    key: &str,
    art: &Artifact,
    source: std::io::Error,
) -> Error {
    let inner = source
        .get_ref()
        .and_then(|e| e.downcast_ref::<refugio_store::Error>());
    match inner {
        Some(refugio_store::Error::SizeMismatch { actual, .. }) if *actual < art.stored_size => {
            match repo.store().head(key).await {
                Ok(Some(meta)) if meta.size == art.stored_size => Error::Fetch {
                    key: key.into(),
                    source: std::io::Error::other(format!(
                        "the download ended after {actual} of {} bytes while the stored object is whole",
                        art.stored_size
                    )),
                },
                Ok(_) => Error::Damaged {
                    key: key.into(),
                    detail: inner.map(ToString::to_string).unwrap_or_default(),
                },
                Err(e) => Error::Fetch {
                    key: key.into(),
                    source: std::io::Error::other(format!(
                        "the download ended early and the object's size could not be checked: {e}"
                    )),
                },
            }
        }
        Some(e @ (refugio_store::Error::SizeMismatch { .. } | refugio_store::Error::DigestMismatch { .. })) => {
            Error::Damaged {
                key: key.into(),
                detail: e.to_string(),
            }
        }
        Some(_) => Error::Fetch {
            key: key.into(),
            source,
        },
        None => match tool_error(&source) {
            Some(t) => Error::Artifact {
                key: key.into(),
                detail: t.to_string(),
            },
            None => Error::Fetch {
                key: key.into(),
                source,
            },
        },
    }
}
