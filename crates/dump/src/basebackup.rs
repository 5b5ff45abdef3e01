//! Physical base backups: `pg_basebackup -D - -Ft -X none` as a stream
//! (the data directory as one tar on stdout, its `backup_manifest`
//! injected at the end by pg_basebackup; started by
//! [`crate::spawn::pg_basebackup`]), and what refugio reads out of
//! that tar as it passes: `backup_label` (start LSN, timeline, start time)
//! and `backup_manifest` (the WAL range the backup needs). The stream is
//! not changed: [`TarWatch`] only looks.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use chrono::{DateTime, NaiveDateTime, Utc};
use tokio::io::{AsyncRead, ReadBuf};

use crate::wal::Lsn;

/// Name of the label file in a base backup.
pub const BACKUP_LABEL: &str = "backup_label";
/// Name of the server's manifest in a base backup (PostgreSQL 13+).
pub const BACKUP_MANIFEST: &str = "backup_manifest";
/// Largest `backup_manifest` kept in memory (it lists every file with its
/// checksum: about 150 bytes a file).
pub const MAX_MANIFEST: usize = 64 * 1024 * 1024;

/// What `backup_label` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupLabel {
    pub start_lsn: Lsn,
    pub checkpoint_lsn: Option<Lsn>,
    pub timeline: u32,
    pub start_time: Option<DateTime<Utc>>,
    /// `primary` or `standby`.
    pub from: String,
    /// The file as it was.
    pub text: String,
}

impl BackupLabel {
    /// Parses the label; None when a required line (start location,
    /// timeline) is missing.
    pub fn parse(text: &str) -> Option<BackupLabel> {
        let mut fields = HashMap::new();
        for line in text.lines() {
            if let Some((k, v)) = line.split_once(':') {
                fields.insert(k.trim().to_string(), v.trim().to_string());
            }
        }
        let first = |k: &str| {
            fields
                .get(k)
                .and_then(|v| v.split_whitespace().next().map(str::to_string))
        };
        let start_lsn = Lsn::parse(&first("START WAL LOCATION")?)?;
        let timeline = first("START TIMELINE")?.parse().ok()?;
        // `2026-12-02 07:58:04 UTC` (the server's log_timezone).
        let start_time = fields.get("START TIME").and_then(|t| {
            let (stamp, zone) = t.rsplit_once(' ')?;
            let naive = NaiveDateTime::parse_from_str(stamp, "%Y-%m-%d %H:%M:%S").ok()?;
            (zone == "UTC" || zone == "GMT").then(|| naive.and_utc())
        });
        Some(BackupLabel {
            start_lsn,
            checkpoint_lsn: first("CHECKPOINT LOCATION").and_then(|l| Lsn::parse(&l)),
            timeline,
            start_time,
            from: first("BACKUP FROM").unwrap_or_else(|| "primary".into()),
            text: text.to_string(),
        })
    }
}

/// One WAL range of a `backup_manifest`: what replay needs, at least, for
/// the backup to be consistent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalRange {
    pub timeline: u32,
    pub start: Lsn,
    pub end: Lsn,
}

/// The `WAL-Ranges` of a `backup_manifest` (JSON).
pub fn manifest_wal_ranges(manifest: &[u8]) -> Option<Vec<WalRange>> {
    let v: serde_json::Value = serde_json::from_slice(manifest).ok()?;
    v.get("WAL-Ranges")?
        .as_array()?
        .iter()
        .map(|r| {
            Some(WalRange {
                timeline: u32::try_from(r.get("Timeline")?.as_u64()?).ok()?,
                start: Lsn::parse(r.get("Start-LSN")?.as_str()?)?,
                end: Lsn::parse(r.get("End-LSN")?.as_str()?)?,
            })
        })
        .collect()
}

/// The members [`TarWatch`] kept, by name.
#[derive(Debug, Default, Clone)]
pub struct Captured {
    pub files: HashMap<String, Vec<u8>>,
    /// Members that were larger than their limit (kept: none of it).
    pub too_large: Vec<String>,
    /// Whether the stream ended with the tar's end-of-archive blocks.
    pub complete: bool,
}

enum State {
    /// Collecting a 512-byte header.
    Header,
    /// Inside a member's data: bytes left, then the padding to 512.
    Data { left: u64, pad: u64 },
    /// After the end-of-archive block(s).
    End,
}

/// Passes a tar stream through unchanged and keeps the members named in
/// `wanted` (up to their byte limit) as they go by.
pub struct TarWatch<R> {
    inner: R,
    wanted: Vec<(String, usize)>,
    state: State,
    header: Vec<u8>,
    current: Option<(String, Vec<u8>, usize)>,
    captured: Arc<Mutex<Captured>>,
}

impl<R> TarWatch<R> {
    pub fn new(inner: R, wanted: &[(&str, usize)]) -> Self {
        TarWatch {
            inner,
            wanted: wanted.iter().map(|(n, l)| (n.to_string(), *l)).collect(),
            state: State::Header,
            header: Vec::with_capacity(512),
            current: None,
            captured: Arc::new(Mutex::new(Captured::default())),
        }
    }

    /// What was kept so far; complete once the stream ended.
    pub fn captured(&self) -> Arc<Mutex<Captured>> {
        self.captured.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Captured> {
        self.captured.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn observe(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match &mut self.state {
                State::End => return Ok(()),
                State::Header => {
                    let take = (512 - self.header.len()).min(data.len());
                    self.header.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if self.header.len() == 512 {
                        self.on_header()?;
                    }
                }
                State::Data { left, pad } => {
                    if *left > 0 {
                        let take = usize::try_from(*left).unwrap_or(usize::MAX).min(data.len());
                        if let Some((_, buf, limit)) = &mut self.current {
                            if buf.len() + take <= *limit {
                                buf.extend_from_slice(&data[..take]);
                            } else {
                                let (name, _, _) = self.current.take().expect("just matched");
                                self.captured
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .too_large
                                    .push(name);
                            }
                        }
                        *left -= take as u64;
                        data = &data[take..];
                    } else {
                        let take = usize::try_from(*pad).unwrap_or(usize::MAX).min(data.len());
                        *pad -= take as u64;
                        data = &data[take..];
                    }
                    if let State::Data { left: 0, pad: 0 } = self.state {
                        self.state = State::Header;
                        if let Some((name, buf, _)) = self.current.take() {
                            self.lock().files.insert(name, buf);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn on_header(&mut self) -> io::Result<()> {
        let h = std::mem::take(&mut self.header);
        if h.iter().all(|&b| b == 0) {
            self.state = State::End;
            self.lock().complete = true;
            return Ok(());
        }
        let size = tar_size(&h[124..136]).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "tar header with a bad size field",
            )
        })?;
        let name = tar_name(&h);
        let kind = h[156];
        // Regular files carry data; so do pax/GNU extension headers (their
        // data is metadata, skipped like any other).
        let has_data = !matches!(kind, b'1' | b'2' | b'3' | b'4' | b'5' | b'6');
        let size = if has_data { size } else { 0 };
        self.current = self
            .wanted
            .iter()
            .find(|(n, _)| *n == name && matches!(kind, b'0' | 0))
            .map(|(n, limit)| (n.clone(), Vec::new(), *limit));
        let pad = (512 - size % 512) % 512;
        if size == 0 {
            if let Some((name, buf, _)) = self.current.take() {
                self.lock().files.insert(name, buf);
            }
            self.state = State::Header;
        } else {
            self.state = State::Data { left: size, pad };
        }
        Ok(())
    }
}

/// A tar size field: octal digits (space/NUL terminated), or GNU base-256.
fn tar_size(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let digits: String = field
        .iter()
        .take_while(|&&b| b != 0 && b != b' ')
        .map(|&b| char::from(b))
        .collect::<String>()
        .trim()
        .to_string();
    if digits.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(&digits, 8).ok()
}

/// A member's name: ustar prefix + name, without a leading `./`.
fn tar_name(h: &[u8]) -> String {
    let field = |r: &[u8]| {
        let end = r.iter().position(|&b| b == 0).unwrap_or(r.len());
        String::from_utf8_lossy(&r[..end]).into_owned()
    };
    let name = field(&h[0..100]);
    let full = if &h[257..262] == b"ustar" {
        let prefix = field(&h[345..500]);
        if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        }
    } else {
        name
    };
    full.strip_prefix("./").map(str::to_string).unwrap_or(full)
}

impl<R: AsyncRead + Unpin> AsyncRead for TarWatch<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                self.observe(&buf.filled()[before..])?;
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn header(name: &str, size: usize, kind: u8) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let s = format!("{size:011o}\0");
        h[124..136].copy_from_slice(s.as_bytes());
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h
    }

    fn member(name: &str, data: &[u8]) -> Vec<u8> {
        let mut v = header(name, data.len(), b'0');
        v.extend_from_slice(data);
        v.resize(v.len() + (512 - data.len() % 512) % 512, 0);
        v
    }

    #[tokio::test]
    async fn members_are_kept_as_they_pass_in_any_chunking() {
        let label =
            b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nSTART TIMELINE: 1\n";
        let big = vec![7u8; 3000];
        let mut tar = header("pg_wal/", 0, b'5');
        tar.extend(member("./backup_label", label));
        tar.extend(member("base/1/1259", &big));
        tar.extend(member("backup_manifest", br#"{"WAL-Ranges": []}"#));
        tar.extend(member("too_big", &big));
        tar.extend(vec![0u8; 1024]);
        for chunk in [1usize, 7, 512, 100_000] {
            let reader = tokio_util::io::StreamReader::new(futures::stream::iter(
                tar.chunks(chunk)
                    .map(|c| Ok::<_, io::Error>(bytes::Bytes::copy_from_slice(c)))
                    .collect::<Vec<_>>(),
            ));
            let mut w = TarWatch::new(
                reader,
                &[
                    ("backup_label", 1024),
                    ("backup_manifest", 1024),
                    ("too_big", 100),
                ],
            );
            let seen = w.captured();
            let mut out = Vec::new();
            w.read_to_end(&mut out).await.unwrap();
            assert_eq!(out, tar, "the stream passes unchanged");
            let seen = seen.lock().unwrap().clone();
            assert!(seen.complete);
            assert_eq!(seen.files["backup_label"], label);
            assert_eq!(seen.files["backup_manifest"], br#"{"WAL-Ranges": []}"#);
            assert_eq!(seen.too_large, vec!["too_big".to_string()]);
            assert!(!seen.files.contains_key("base/1/1259"));
        }
    }

    #[tokio::test]
    async fn a_cut_tar_is_not_complete() {
        let mut tar = member("backup_label", b"x");
        tar.truncate(700);
        let mut w = TarWatch::new(&tar[..], &[("backup_label", 10)]);
        let seen = w.captured();
        tokio::io::copy(&mut w, &mut tokio::io::sink())
            .await
            .unwrap();
        assert!(!seen.lock().unwrap().complete);
    }

    #[test]
    fn labels_and_manifest_ranges_parse() {
        let text = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
                    CHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\n\
                    BACKUP FROM: standby\nSTART TIME: 2026-12-02 07:58:04 UTC\n\
                    LABEL: pg_basebackup base backup\nSTART TIMELINE: 3\n";
        let l = BackupLabel::parse(text).unwrap();
        assert_eq!(l.start_lsn, Lsn(0x200_0028));
        assert_eq!(l.checkpoint_lsn, Some(Lsn(0x200_0060)));
        assert_eq!(l.timeline, 3);
        assert_eq!(l.from, "standby");
        assert_eq!(
            l.start_time.unwrap().to_rfc3339(),
            "2026-12-02T07:58:04+00:00"
        );
        assert_eq!(BackupLabel::parse("LABEL: x\n"), None);
        let m = br#"{"Files": [], "WAL-Ranges": [
            { "Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100" }
        ], "Manifest-Checksum": "x"}"#;
        assert_eq!(
            manifest_wal_ranges(m).unwrap(),
            vec![WalRange {
                timeline: 1,
                start: Lsn(0x200_0028),
                end: Lsn(0x200_0100)
            }]
        );
        assert_eq!(manifest_wal_ranges(b"{}"), None);
    }
}
