//! What the snapshot tests share: JSON that keeps its key order,
//! redactions that check the shape of what they hide, and the sample source.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use chrono::DateTime;
use insta::internals::{Content, ContentPath, Redaction};
use refugio_testkit::Cluster;

use crate::common::*;

/// JSON that keeps the key order of its objects (serde_json's `Value`
/// sorts keys in this build), so a snapshot pins the order fields are
/// written in, not just their names.
#[derive(Debug, Clone)]
pub(crate) enum Json {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    pub(crate) fn parse(text: &str) -> Result<Json> {
        Ok(serde_json::from_str(text)?)
    }
}

impl serde::Serialize for Json {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self {
            Json::Null => s.serialize_unit(),
            Json::Bool(b) => s.serialize_bool(*b),
            Json::Number(n) => n.serialize(s),
            Json::String(v) => s.serialize_str(v),
            Json::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for i in items {
                    seq.serialize_element(i)?;
                }
                seq.end()
            }
            Json::Object(fields) => {
                let mut map = s.serialize_map(Some(fields.len()))?;
                for (k, v) in fields {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> serde::Deserialize<'de> for Json {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Json, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Json;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_unit<E>(self) -> std::result::Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_bool<E>(self, b: bool) -> std::result::Result<Json, E> {
                Ok(Json::Bool(b))
            }
            fn visit_i64<E>(self, n: i64) -> std::result::Result<Json, E> {
                Ok(Json::Number(n.into()))
            }
            fn visit_u64<E>(self, n: u64) -> std::result::Result<Json, E> {
                Ok(Json::Number(n.into()))
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> std::result::Result<Json, E> {
                serde_json::Number::from_f64(n)
                    .map(Json::Number)
                    .ok_or_else(|| E::custom("not a finite number"))
            }
            fn visit_str<E>(self, v: &str) -> std::result::Result<Json, E> {
                Ok(Json::String(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Json, A::Error> {
                let mut items = Vec::new();
                while let Some(i) = seq.next_element()? {
                    items.push(i);
                }
                Ok(Json::Array(items))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Json, A::Error> {
                let mut fields = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    fields.push(entry);
                }
                Ok(Json::Object(fields))
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------
// Redactions that check what they hide: a value of the wrong shape (a time
// that is no longer RFC 3339, a digest that is not SHA-256 hex, a size that
// became a string) fails the test instead of disappearing behind the
// placeholder.

pub(crate) fn check(
    what: &'static str,
    ok: impl Fn(&Content) -> bool + Send + Sync + 'static,
) -> Redaction {
    insta::dynamic_redaction(move |value: Content, path: ContentPath<'_>| {
        assert!(ok(&value), "{path}: {value:?} is not {what}");
        format!("[{what}]")
    })
}

pub(crate) fn text(c: &Content) -> Option<&str> {
    c.resolve_inner().as_str()
}

pub(crate) fn number(c: &Content) -> Option<f64> {
    let c = c.resolve_inner();
    c.as_f64()
        .or_else(|| c.as_u64().map(|n| n as f64))
        .or_else(|| c.as_i64().map(|n| n as f64))
}

/// An RFC 3339 time.
pub(crate) fn time() -> Redaction {
    check("time", |c| {
        text(c).is_some_and(|s| DateTime::parse_from_rfc3339(s).is_ok())
    })
}

/// A backup id: the UTC start time, `20261128T060000Z`.
pub(crate) fn backup_id() -> Redaction {
    check("backup_id", |c| text(c).is_some_and(is_backup_id))
}

pub(crate) fn is_backup_id(s: &str) -> bool {
    chrono::NaiveDateTime::parse_from_str(s, "%Y%m%dT%H%M%SZ")
        .is_ok_and(|t| refugio_store::repo::backup_id(t.and_utc(), 1) == s)
}

/// Lowercase SHA-256 hex.
pub(crate) fn sha256() -> Redaction {
    check("sha256", |c| {
        text(c).is_some_and(|s| {
            s.len() == 64
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
    })
}

/// A schema fingerprint of the current algorithm: `v2:` and SHA-256 hex.
pub(crate) fn fingerprint() -> Redaction {
    check("fingerprint", |c| {
        text(c)
            .and_then(|s| s.strip_prefix("v2:"))
            .is_some_and(|s| {
                s.len() == 64
                    && s.bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            })
    })
}

/// A whole number of bytes, more than zero.
pub(crate) fn bytes() -> Redaction {
    check("bytes", |c| {
        c.resolve_inner().as_u64().is_some_and(|n| n > 0)
    })
}

/// Seconds: a number, not negative.
pub(crate) fn seconds() -> Redaction {
    check("seconds", |c| number(c).is_some_and(|n| n >= 0.0))
}

/// This build's version (`CARGO_PKG_VERSION`).
pub(crate) fn this_version() -> Redaction {
    check("version", |c| text(c) == Some(env!("CARGO_PKG_VERSION")))
}

/// `16.4`, or a packager's `16.4 (Debian 16.4-1)`.
pub(crate) fn is_pg16_version(s: &str) -> bool {
    let version = s.split(' ').next().unwrap_or_default();
    version
        .strip_prefix("16.")
        .is_some_and(|minor| minor.parse::<u32>().is_ok())
}

/// A PostgreSQL 16 version: `16.4`.
pub(crate) fn pg16_version() -> Redaction {
    check("pg16 version", |c| text(c).is_some_and(is_pg16_version))
}

/// A tool and its PostgreSQL 16 version, `pg_restore 16.4`: the name stays.
pub(crate) fn tool_version() -> Redaction {
    insta::dynamic_redaction(|value: Content, path: ContentPath<'_>| {
        let tool = text(&value)
            .and_then(|s| s.split_once(' '))
            .filter(|(_, v)| is_pg16_version(v))
            .map(|(tool, _)| tool.to_string());
        match tool {
            Some(tool) => format!("{tool} [pg16 version]"),
            None => panic!("{path}: {value:?} is not a tool and its version"),
        }
    })
}

// ---------------------------------------------------------------------------
// Real runs.

/// PostgreSQL 16 with the sample data in database `app`.
pub(crate) async fn sample_source() -> Result<Cluster> {
    let src = Cluster::start(16).await?;
    src.create_database("app").await?;
    refugio_testkit::sample::load_sample(&src, "app").await?;
    Ok(src)
}

/// The job `app`: the sample database, drilled on the same server (its
/// `refugio_drill_*` scratch databases), with targets and one SQL check.
pub(crate) fn app_job(src: &Cluster, extra: &str) -> String {
    job(
        "app",
        src,
        "app",
        &format!(
            "scratch = {:?}\ntargets = {{ rpo = \"1h\", rto = \"1h\" }}\nchecks = [\"SELECT count(*) = 3 FROM riders\"]\n{extra}",
            src.url("postgres")
        ),
    )
}

/// The one backup of `app` in a directory repository: its directory.
pub(crate) fn only_backup_dir(repo: &Path) -> Result<PathBuf> {
    let ids: Vec<_> = std::fs::read_dir(repo.join("app"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    match ids.as_slice() {
        [one] => Ok(one.clone()),
        other => bail!("expected one backup, found {other:?}"),
    }
}

pub(crate) fn receipt_path(dir: &Path) -> Result<PathBuf> {
    let names: Vec<String> = files_under(dir)
        .into_iter()
        .filter(|f| f.starts_with("verify-"))
        .collect();
    match names.as_slice() {
        [one] => Ok(dir.join(one)),
        other => bail!("expected one receipt, found {other:?}"),
    }
}
