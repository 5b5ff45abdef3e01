//! Continuity of a physical job's WAL archive, from its listing alone:
//! every segment from each base backup's start on its timeline up to the
//! newest archived one (and at least to the backup's stop LSN) must be
//! there, and every later timeline must be whole from its first archived
//! segment to its newest. A missing segment is a gap, named by its first
//! and last segment; a base backup before a gap cannot be recovered past
//! it. Timeline history files are not read (they may be encrypted and a
//! check decrypts nothing): where a timeline begins is its first archived
//! segment.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use refugio_dump::wal::{segment_name, Lsn, WalKind};
use serde::Serialize;

use crate::wal::WalObject;

/// What a base backup needs of the archive.
#[derive(Debug, Clone)]
pub struct BaseNeeds {
    pub backup_id: String,
    pub timeline: u32,
    pub start: Lsn,
    pub stop: Lsn,
    pub segment_size: u64,
}

impl BaseNeeds {
    /// What a physical backup's manifest says it needs; None for a
    /// logical backup or LSNs that do not parse.
    pub fn of(m: &refugio_store::manifest::Manifest) -> Option<BaseNeeds> {
        let p = m.physical.as_ref()?;
        Some(BaseNeeds {
            backup_id: m.backup_id.clone(),
            timeline: p.timeline,
            start: Lsn::parse(&p.start_lsn)?,
            stop: Lsn::parse(&p.stop_lsn)?,
            segment_size: p.wal_segment_size,
        })
    }
}

/// Missing segments, in a row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WalGap {
    pub timeline: u32,
    /// First missing segment.
    pub from: String,
    /// Last missing segment.
    pub to: String,
    pub segments: u64,
    /// Base backups whose recovery passes through it.
    pub backups: Vec<String>,
}

/// The archive as the check saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WalChain {
    /// Archived files (segments, history, backup and partial files).
    pub files: u64,
    pub bytes: u64,
    /// The newest archived segment and when it was stored: the RPO now.
    pub newest: Option<String>,
    pub newest_at: Option<DateTime<Utc>>,
    pub gaps: Vec<WalGap>,
    /// Names archived twice with different content (two servers
    /// archiving into one job): a restore refuses to choose.
    pub conflicts: Vec<String>,
}

impl WalChain {
    /// Gaps and conflicts: damage.
    pub fn damage_count(&self) -> u64 {
        (self.gaps.len() + self.conflicts.len()) as u64
    }
}

/// Judges `objects` (one listing of the archive) against `bases`.
pub fn continuity(objects: &[WalObject], bases: &[BaseNeeds]) -> WalChain {
    let segment_size = bases.first().map_or(16 * 1024 * 1024, |b| b.segment_size);
    let mut chain = WalChain {
        files: objects.len() as u64,
        bytes: objects.iter().map(|o| o.size).sum(),
        ..WalChain::default()
    };
    let mut present: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
    let mut digests: BTreeMap<&str, &str> = BTreeMap::new();
    let mut newest: Option<(u32, u64, &WalObject)> = None;
    for o in objects {
        if let Some(previous) = digests.insert(&o.name.name, &o.sha256) {
            if previous != o.sha256 && !chain.conflicts.contains(&o.name.name) {
                chain.conflicts.push(o.name.name.clone());
            }
        }
        if matches!(o.name.kind, WalKind::Segment | WalKind::Partial) {
            let n = o.name.segment_number(segment_size);
            present.entry(o.name.timeline).or_default().insert(n);
            if o.name.kind == WalKind::Segment
                && newest.is_none_or(|(tl, seg, _)| (o.name.timeline, n) > (tl, seg))
            {
                newest = Some((o.name.timeline, n, o));
            }
        }
    }
    if let Some((_, _, o)) = newest {
        chain.newest = Some(o.name.name.clone());
        chain.newest_at = o.last_modified;
    }
    let mut timelines: BTreeSet<u32> = present.keys().copied().collect();
    timelines.extend(bases.iter().map(|b| b.timeline));
    for tl in timelines {
        let have = present.get(&tl).cloned().unwrap_or_default();
        let on_tl: Vec<&BaseNeeds> = bases.iter().filter(|b| b.timeline == tl).collect();
        let first = on_tl
            .iter()
            .map(|b| b.start.segment(segment_size))
            .chain(have.first().copied())
            .min();
        let last = on_tl
            .iter()
            .map(|b| b.stop.segment(segment_size))
            .chain(have.last().copied())
            .max();
        let (Some(first), Some(last)) = (first, last) else {
            continue;
        };
        let mut run: Option<(u64, u64)> = None;
        let close = |run: (u64, u64), chain: &mut WalChain| {
            let (from, to) = run;
            chain.gaps.push(WalGap {
                timeline: tl,
                from: segment_name(tl, from, segment_size),
                to: segment_name(tl, to, segment_size),
                segments: to - from + 1,
                backups: on_tl
                    .iter()
                    .filter(|b| b.start.segment(segment_size) <= to)
                    .map(|b| b.backup_id.clone())
                    .collect(),
            });
        };
        for n in first..=last {
            if have.contains(&n) {
                if let Some(r) = run.take() {
                    close(r, &mut chain);
                }
            } else {
                run = Some(run.map_or((n, n), |(a, _)| (a, n)));
            }
        }
        if let Some(r) = run {
            close(r, &mut chain);
        }
    }
    chain
}

#[cfg(test)]
mod tests {
    use super::*;
    use refugio_dump::wal::WalName;
    use refugio_dump::Compression;

    const SEG: u64 = 16 * 1024 * 1024;

    fn obj(name: &str, sha: &str) -> WalObject {
        WalObject {
            key: format!("j/wal/x/{name}"),
            name: WalName::parse(name).unwrap(),
            sha256: sha.repeat(64),
            compression: Compression::Zstd,
            encrypted: false,
            size: 10,
            last_modified: None,
        }
    }

    fn base(id: &str, tl: u32, start: u64, stop: u64) -> BaseNeeds {
        BaseNeeds {
            backup_id: id.into(),
            timeline: tl,
            start: Lsn(start * SEG + 40),
            stop: Lsn(stop * SEG + 256),
            segment_size: SEG,
        }
    }

    fn segs(tl: u32, range: std::ops::RangeInclusive<u64>) -> Vec<WalObject> {
        range.map(|n| obj(&segment_name(tl, n, SEG), "a")).collect()
    }

    #[test]
    fn a_whole_archive_has_no_gap() {
        let mut o = segs(1, 2..=9);
        o.push(obj("000000010000000000000002.00000028.backup", "b"));
        o.push(obj("00000002.history", "c"));
        o.extend(segs(2, 7..=8));
        let c = continuity(&o, &[base("b1", 1, 2, 2)]);
        assert_eq!(c.gaps, vec![]);
        assert_eq!(c.newest.as_deref(), Some("000000020000000000000008"));
        assert_eq!(c.damage_count(), 0);
    }

    #[test]
    fn gaps_are_named_with_the_backups_they_cut() {
        let mut o = segs(1, 2..=4);
        o.extend(segs(1, 7..=9));
        o.extend(segs(2, 10..=10));
        o.extend(segs(2, 12..=12));
        let c = continuity(&o, &[base("old", 1, 2, 2), base("new", 1, 8, 8)]);
        assert_eq!(
            c.gaps,
            vec![
                WalGap {
                    timeline: 1,
                    from: "000000010000000000000005".into(),
                    to: "000000010000000000000006".into(),
                    segments: 2,
                    backups: vec!["old".into()],
                },
                WalGap {
                    timeline: 2,
                    from: "00000002000000000000000B".into(),
                    to: "00000002000000000000000B".into(),
                    segments: 1,
                    backups: vec![],
                }
            ]
        );
    }

    #[test]
    fn a_backup_whose_wal_never_arrived_is_a_gap() {
        let c = continuity(&segs(1, 1..=3), &[base("b", 1, 5, 6)]);
        assert_eq!(c.gaps.len(), 1);
        assert_eq!(c.gaps[0].from, "000000010000000000000004");
        assert_eq!(c.gaps[0].to, "000000010000000000000006");
        assert_eq!(c.gaps[0].backups, vec!["b".to_string()]);
    }

    #[test]
    fn one_name_with_two_contents_is_a_conflict() {
        let mut o = segs(1, 1..=2);
        o.push(obj("000000010000000000000002", "f"));
        let c = continuity(&o, &[]);
        assert_eq!(c.conflicts, vec!["000000010000000000000002".to_string()]);
        assert_eq!(c.damage_count(), 1);
    }
}
