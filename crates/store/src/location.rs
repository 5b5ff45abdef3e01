//! Where a repository lives: parsing repository URLs and opening the store.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::fs::FsStore;
use crate::rate::{LimitedStore, RateLimiter};
use crate::s3::S3Store;
use crate::ObjectStore;

// The S3 options belong to the S3 backend; re-exported here, where `open`
// takes them, for the `location::{ChecksumCalculation, S3Options}` paths.
pub use crate::s3::{ChecksumCalculation, S3Options};

/// A repository's place: a local directory or an S3 bucket with an optional
/// key prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepositoryLocation {
    /// A directory; relative paths are resolved against the working
    /// directory when the store is opened.
    Directory(PathBuf),
    /// An S3 bucket; `prefix` has no leading or trailing `/` and is empty
    /// for the bucket's root.
    S3 { bucket: String, prefix: String },
}

impl RepositoryLocation {
    /// Parses a repository URL:
    /// - `file:///abs/path`, `/abs/path`, `relative/path`, `./rel`: a directory;
    /// - `s3://bucket` or `s3://bucket/some/prefix`: an S3 bucket (the
    ///   prefix is stored without leading or trailing `/`).
    ///
    /// Anything that starts like a URL scheme (`name:`) is taken as one, so
    /// a relative directory whose first name contains `:` is written
    /// `./name:…`.
    pub fn parse(url: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidLocation {
            url: redact(url),
            reason: reason.to_string(),
        };
        if url.trim().is_empty() {
            return Err(invalid(
                "empty; expected s3://bucket/prefix, file:///path or a directory path",
            ));
        }
        if url.trim() != url {
            return Err(invalid("leading or trailing whitespace"));
        }
        let Some((scheme, rest)) = split_scheme(url) else {
            return Ok(RepositoryLocation::Directory(PathBuf::from(url)));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "s3" => parse_s3(rest).map_err(|reason| invalid(&reason)),
            "file" => parse_file(url).map_err(|reason| invalid(&reason)),
            other => Err(invalid(&format!(
                "unknown scheme {other:?}; supported are s3:// and file:// (or a plain directory path)"
            ))),
        }
    }
}

/// `Some((scheme, rest after ':'))` when `url` starts with a URL scheme.
fn split_scheme(url: &str) -> Option<(&str, &str)> {
    let colon = url.find(':')?;
    let scheme = &url[..colon];
    let mut chars = scheme.chars();
    let first = chars.next()?;
    let is_scheme = first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    is_scheme.then(|| (scheme, &url[colon + 1..]))
}

fn parse_s3(rest: &str) -> std::result::Result<RepositoryLocation, String> {
    let Some(rest) = rest.strip_prefix("//") else {
        return Err("an S3 location is written s3://bucket or s3://bucket/prefix".into());
    };
    if rest.contains(['?', '#']) {
        return Err("query strings and fragments are not supported".into());
    }
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err("no bucket name".into());
    }
    if bucket.contains('@') {
        return Err(
            "credentials do not belong in the URL; use the AWS credential chain (environment, profile, instance role)"
                .into(),
        );
    }
    if let Some(bad) = bucket
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(format!("bucket name {bucket:?} contains {bad:?}"));
    }
    let prefix = prefix.trim_matches('/');
    if prefix.split('/').any(|segment| segment.is_empty()) && !prefix.is_empty() {
        return Err(format!(
            "prefix {prefix:?} contains an empty segment (\"//\")"
        ));
    }
    if prefix
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        return Err(format!("prefix {prefix:?} contains \".\" or \"..\""));
    }
    Ok(RepositoryLocation::S3 {
        bucket: bucket.to_string(),
        prefix: prefix.to_string(),
    })
}

fn parse_file(url: &str) -> std::result::Result<RepositoryLocation, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("not a valid file URL: {e}"))?;
    match parsed.host_str() {
        None | Some("") | Some("localhost") => {}
        Some(host) => {
            return Err(format!(
                "file URLs on another host ({host}) are not supported; use file:///absolute/path"
            ))
        }
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err("query strings and fragments are not supported".into());
    }
    let path = parsed
        .to_file_path()
        .map_err(|()| "a file URL needs an absolute path: file:///absolute/path".to_string())?;
    Ok(RepositoryLocation::Directory(path))
}

/// The URL with any `user:password@` part removed, for messages.
fn redact(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            return format!("{scheme}://***@{}", &rest[at + 1..]);
        }
    }
    url.to_string()
}

impl fmt::Display for RepositoryLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RepositoryLocation::S3 { bucket, prefix } if prefix.is_empty() => {
                write!(f, "s3://{bucket}")
            }
            RepositoryLocation::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            RepositoryLocation::Directory(path) => {
                if path.is_absolute() {
                    if let Ok(url) = url::Url::from_file_path(path) {
                        return write!(f, "{url}");
                    }
                    write!(f, "{}", path.display())
                } else if split_scheme(&path.to_string_lossy()).is_some() {
                    // Keep `name:…` from reading as a URL scheme.
                    write!(f, "{}", Path::new(".").join(path).display())
                } else {
                    write!(f, "{}", path.display())
                }
            }
        }
    }
}

/// Opens the store: a directory (created if missing) or an S3 bucket (not
/// contacted yet: the first request happens on first use). The S3 options'
/// `upload_rate_limit` applies to a directory too ([`LimitedStore`]).
pub async fn open(location: &RepositoryLocation, s3: &S3Options) -> Result<Arc<dyn ObjectStore>> {
    match location {
        RepositoryLocation::Directory(path) => {
            let path = path.clone();
            let store = tokio::task::spawn_blocking(move || FsStore::new(path))
                .await
                .map_err(|e| Error::Other(format!("opening the directory store failed: {e}")))??;
            Ok(match s3.upload_rate_limit {
                Some(rate) => Arc::new(LimitedStore::new(Arc::new(store), RateLimiter::new(rate))),
                None => Arc::new(store),
            })
        }
        RepositoryLocation::S3 { bucket, prefix } => {
            Ok(Arc::new(S3Store::new(bucket, prefix, s3).await?))
        }
    }
}

/// Opens the store of a repository that must exist already, for commands
/// that only read it (or change what is in it): a directory that does not
/// exist is [`Error::NoRepository`] instead of an empty repository, so a
/// typo cannot pass for "no backups". An S3 bucket is not contacted yet; a
/// missing one is [`Error::NoSuchBucket`] at the first request.
pub async fn open_existing(
    location: &RepositoryLocation,
    s3: &S3Options,
) -> Result<Arc<dyn ObjectStore>> {
    if let RepositoryLocation::Directory(path) = location {
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.clone());
        let store = url::Url::from_file_path(&absolute)
            .map(|u| u.to_string())
            .unwrap_or_else(|()| absolute.display().to_string());
        let missing = |reason: &str| Error::NoRepository {
            store: store.clone(),
            reason: reason.to_string(),
        };
        match std::fs::metadata(&absolute) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(missing("it is not a directory")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(missing(
                    "no such directory (check --repository or [repository] url; `refugio backup` creates a new one)",
                ))
            }
            // Permissions and the like: the store's own error says it.
            Err(_) => {}
        }
    }
    open(location, s3).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn dir(p: &str) -> RepositoryLocation {
        RepositoryLocation::Directory(PathBuf::from(p))
    }

    fn s3(bucket: &str, prefix: &str) -> RepositoryLocation {
        RepositoryLocation::S3 {
            bucket: bucket.into(),
            prefix: prefix.into(),
        }
    }

    #[rstest]
    #[case(
        "file:///var/backups/pg",
        dir("/var/backups/pg"),
        "file:///var/backups/pg"
    )]
    #[case("file://localhost/var/b", dir("/var/b"), "file:///var/b")]
    #[case(
        "file:///srv/with%20space",
        dir("/srv/with space"),
        "file:///srv/with%20space"
    )]
    #[case("/var/backups/pg", dir("/var/backups/pg"), "file:///var/backups/pg")]
    #[case("relative/path", dir("relative/path"), "relative/path")]
    #[case("./rel", dir("./rel"), "./rel")]
    #[case("./odd:name", dir("./odd:name"), "./odd:name")]
    #[case("s3://bucket", s3("bucket", ""), "s3://bucket")]
    #[case("s3://bucket/", s3("bucket", ""), "s3://bucket")]
    #[case(
        "s3://bucket/some/prefix",
        s3("bucket", "some/prefix"),
        "s3://bucket/some/prefix"
    )]
    #[case(
        "s3://bucket//some/prefix/",
        s3("bucket", "some/prefix"),
        "s3://bucket/some/prefix"
    )]
    #[case("S3://my.bucket-1/p", s3("my.bucket-1", "p"), "s3://my.bucket-1/p")]
    fn parses(#[case] url: &str, #[case] expected: RepositoryLocation, #[case] display: &str) {
        let parsed = RepositoryLocation::parse(url).expect("valid location");
        assert_eq!(parsed, expected);
        assert_eq!(parsed.to_string(), display);
        // The canonical form parses back to the same location.
        assert_eq!(
            RepositoryLocation::parse(display).expect("canonical form parses"),
            expected
        );
    }

    #[rstest]
    #[case("", "empty")]
    #[case("s3://", "no bucket")]
    #[case("s3:///prefix", "no bucket")]
    #[case("s3:bucket", "s3://bucket")]
    #[case("gs://bucket/x", "unknown scheme \"gs\"")]
    #[case("http://example.com/x", "unknown scheme \"http\"")]
    #[case("s3://bucket/a//b", "empty segment")]
    #[case("s3://bucket/a/../b", "\"..\"")]
    #[case("s3://bucket?versionId=1", "query")]
    #[case("s3://bu cket", "contains ' '")]
    #[case("file://otherhost/x", "another host")]
    #[case(" /leading/space", "whitespace")]
    fn rejects(#[case] url: &str, #[case] what: &str) {
        let err = RepositoryLocation::parse(url).expect_err("invalid location");
        let Error::InvalidLocation { url: named, reason } = &err else {
            panic!("expected InvalidLocation, got {err:?}");
        };
        assert_eq!(named, url);
        assert!(
            reason.contains(what),
            "reason {reason:?} should mention {what:?}"
        );
        assert!(err.to_string().contains(&format!("{url:?}")), "{err}");
    }

    #[tokio::test]
    async fn a_missing_directory_is_no_repository_for_readers_only() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("typo");
        let location = RepositoryLocation::Directory(path.clone());
        let e = open_existing(&location, &S3Options::default())
            .await
            .expect_err("missing directory");
        assert!(matches!(e, Error::NoRepository { .. }), "{e:?}");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        assert!(!path.exists(), "a reader creates nothing");
        let file = tmp.path().join("file");
        std::fs::write(&file, b"x").expect("write");
        let e = open_existing(&RepositoryLocation::Directory(file), &S3Options::default())
            .await
            .expect_err("a file");
        assert!(e.to_string().contains("not a directory"), "{e}");
        open(&location, &S3Options::default()).await.expect("open");
        assert!(path.is_dir(), "a writer creates it");
        open_existing(&location, &S3Options::default())
            .await
            .expect("now it exists");
    }

    #[test]
    fn credentials_in_the_url_are_rejected_and_not_repeated() {
        let err =
            RepositoryLocation::parse("s3://AKIAXXX:s3cr3t@bucket/p").expect_err("credentials");
        let text = err.to_string();
        assert!(!text.contains("s3cr3t"), "{text}");
        assert!(!text.contains("AKIAXXX"), "{text}");
        assert!(text.contains("credential"), "{text}");
    }
}
