//! Continuity of a physical job's WAL archive, from its listing alone:
//! every segment from each base backup's start on its timeline up to the
//! newest archived one (and at least to the backup's stop LSN) must be
//! there, and every later timeline must be whole from its first archived
//! segment to its newest. A missing segment is a gap, named by its first
//! and last segment; a base backup before a gap cannot be recovered past
//! it.
//!
//! Timelines are taken as one line, each promoted from the one before (a
//! recovery to `latest` follows them all): a gap on a later timeline cuts
//! every base backup on an earlier one, and where one timeline ends and
//! the next begins nothing may be missing (the next one begins at the old
//! timeline's `.partial` segment when the promoted server archived it, and
//! at most one segment after the old timeline's last one otherwise).
//! History files are not read (they may be encrypted and a check decrypts
//! nothing). A gap at the end of the newest timeline, after everything
//! archived, is *pending*: the WAL may not have been archived yet (a base
//! backup from a standby ends before the primary's next segment switch),
//! so it is not counted as damage, only as "could not check".

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
    /// Nothing newer is archived: the WAL may still be on its way (not
    /// damage yet, but no backup it cuts can count as verified).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
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
    /// Gaps (not pending ones) and conflicts: damage.
    pub fn damage_count(&self) -> u64 {
        (self.gaps.iter().filter(|g| !g.pending).count() + self.conflicts.len()) as u64
    }

    /// Gaps at the archive's end that may still be filled.
    pub fn pending(&self) -> impl Iterator<Item = &WalGap> {
        self.gaps.iter().filter(|g| g.pending)
    }

    /// Gaps that cut `backup_id`.
    pub fn cutting<'a>(&'a self, backup_id: &'a str) -> impl Iterator<Item = &'a WalGap> {
        self.gaps
            .iter()
            .filter(move |g| g.backups.iter().any(|b| b == backup_id))
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
    let archive = Archive::of(objects, segment_size, &mut chain);
    let mut runs = missing_runs(&archive.present, bases, segment_size);
    runs.extend(switch_gaps(&archive));
    // A gap on `tl` from..=to cuts the base backups on `tl` that start
    // before its end, and every one on an earlier timeline.
    let gap = |(tl, from, to, pending): Run| WalGap {
        timeline: tl,
        from: segment_name(tl, from, segment_size),
        to: segment_name(tl, to, segment_size),
        segments: to - from + 1,
        backups: bases
            .iter()
            .filter(|b| {
                b.timeline < tl || (b.timeline == tl && b.start.segment(segment_size) <= to)
            })
            .map(|b| b.backup_id.clone())
            .collect(),
        pending,
    };
    chain.gaps = merge(runs).into_iter().map(gap).collect();
    chain
}

/// A run of missing segments: (timeline, first, last, pending: maybe not
/// archived yet).
type Run = (u32, u64, u64, bool);

/// What the archive holds, by timeline.
struct Archive {
    /// The segments present (complete or `.partial`), by number.
    present: BTreeMap<u32, BTreeSet<u64>>,
    /// The newest `.partial` of each timeline: where the next one began.
    partial: BTreeMap<u32, u64>,
}

impl Archive {
    /// Reads the listing; conflicts (one name, two digests) and the newest
    /// segment go into `chain`.
    fn of(objects: &[WalObject], segment_size: u64, chain: &mut WalChain) -> Archive {
        let mut present: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
        let mut partial: BTreeMap<u32, u64> = BTreeMap::new();
        let mut digests: BTreeMap<&str, &str> = BTreeMap::new();
        let mut newest: Option<(u32, u64, &WalObject)> = None;
        for o in objects {
            if let Some(previous) = digests.insert(&o.name.name, &o.sha256) {
                if previous != o.sha256 && !chain.conflicts.contains(&o.name.name) {
                    chain.conflicts.push(o.name.name.clone());
                }
            }
            if !matches!(o.name.kind, WalKind::Segment | WalKind::Partial) {
                continue;
            }
            let n = o.name.segment_number(segment_size);
            present.entry(o.name.timeline).or_default().insert(n);
            if o.name.kind == WalKind::Partial {
                let p = partial.entry(o.name.timeline).or_insert(n);
                *p = (*p).max(n);
            }
            if o.name.kind == WalKind::Segment
                && newest.is_none_or(|(tl, seg, _)| (o.name.timeline, n) > (tl, seg))
            {
                newest = Some((o.name.timeline, n, o));
            }
        }
        if let Some((_, _, o)) = newest {
            chain.newest = Some(o.name.name.clone());
            chain.newest_at = o.last_modified;
        }
        Archive { present, partial }
    }
}

/// The runs of segments missing on each timeline, between the first and
/// the last that a base backup needs or the archive holds. A run past
/// everything archived on the newest timeline may just not be archived yet.
fn missing_runs(
    present: &BTreeMap<u32, BTreeSet<u64>>,
    bases: &[BaseNeeds],
    segment_size: u64,
) -> Vec<Run> {
    let newest_tl = present.keys().next_back().copied().unwrap_or(0);
    let mut runs: Vec<Run> = Vec::new();
    let mut timelines: BTreeSet<u32> = present.keys().copied().collect();
    timelines.extend(bases.iter().map(|b| b.timeline));
    for tl in timelines {
        let have = present.get(&tl).cloned().unwrap_or_default();
        let on_tl = bases.iter().filter(|b| b.timeline == tl);
        let first = on_tl
            .clone()
            .map(|b| b.start.segment(segment_size))
            .chain(have.first().copied())
            .min();
        let last = on_tl
            .map(|b| b.stop.segment(segment_size))
            .chain(have.last().copied())
            .max();
        let (Some(first), Some(last)) = (first, last) else {
            continue;
        };
        let mut run: Option<(u64, u64)> = None;
        for n in first..=last {
            if have.contains(&n) {
                if let Some((a, b)) = run.take() {
                    runs.push((tl, a, b, false));
                }
            } else {
                run = Some(run.map_or((n, n), |(a, _)| (a, n)));
            }
        }
        if let Some((a, b)) = run {
            runs.push((tl, a, b, tl >= newest_tl));
        }
    }
    runs
}

/// The gaps where one timeline hands over to the next.
fn switch_gaps(archive: &Archive) -> Vec<Run> {
    let mut runs = Vec::new();
    let archived: Vec<(&u32, &BTreeSet<u64>)> = archive.present.iter().collect();
    for pair in archived.windows(2) {
        let ((&old, old_have), (&new, new_have)) = (pair[0], pair[1]);
        let (Some(&old_last), Some(&new_first)) = (old_have.last(), new_have.first()) else {
            continue;
        };
        match archive.partial.get(&old) {
            Some(&switch) if new_first > switch => runs.push((new, switch, new_first - 1, false)),
            None if new_first > old_last + 1 => {
                runs.push((old, old_last + 1, new_first - 1, false))
            }
            _ => {}
        }
    }
    runs
}

/// A switch gap may overlap one found on its timeline: one gap.
fn merge(mut runs: Vec<Run>) -> Vec<Run> {
    runs.sort_unstable();
    let mut merged: Vec<Run> = Vec::new();
    for (tl, from, to, pending) in runs {
        match merged.last_mut() {
            Some(m) if m.0 == tl && from <= m.2 + 1 => {
                m.2 = m.2.max(to);
                m.3 &= pending;
            }
            _ => merged.push((tl, from, to, pending)),
        }
    }
    merged
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
            signature: None,
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
                    pending: false,
                },
                WalGap {
                    timeline: 2,
                    from: "00000002000000000000000B".into(),
                    to: "00000002000000000000000B".into(),
                    segments: 1,
                    // Recovery to latest from either follows timeline 2.
                    backups: vec!["old".into(), "new".into()],
                    pending: false,
                }
            ]
        );
    }

    #[test]
    fn wal_not_archived_yet_is_a_pending_gap() {
        let c = continuity(&segs(1, 1..=3), &[base("b", 1, 5, 6)]);
        assert_eq!(c.gaps.len(), 1);
        assert_eq!(c.gaps[0].from, "000000010000000000000004");
        assert_eq!(c.gaps[0].to, "000000010000000000000006");
        assert_eq!(c.gaps[0].backups, vec!["b".to_string()]);
        assert!(c.gaps[0].pending);
        assert_eq!(c.damage_count(), 0, "not damage yet");
        assert_eq!(c.pending().count(), 1);
        assert_eq!(c.cutting("b").count(), 1);
    }

    #[test]
    fn the_end_of_an_older_timeline_is_not_pending() {
        // The backup's WAL on timeline 1 never came, and timeline 2 has
        // moved on: it will not come.
        let mut o = segs(1, 1..=3);
        o.extend(segs(2, 7..=8));
        let c = continuity(&o, &[base("b", 1, 2, 5)]);
        let g: Vec<_> = c
            .gaps
            .iter()
            .map(|g| (g.timeline, g.segments, g.pending))
            .collect();
        // 4..5 short of the backup's stop, and 6 before timeline 2 begins.
        assert_eq!(g, vec![(1, 3, false)], "{:?}", c.gaps);
        assert_eq!(c.damage_count(), 1);
    }

    #[test]
    fn a_missing_segment_at_a_timeline_switch_is_a_gap() {
        // Promoted at segment 5: timeline 1's 5 is archived as .partial,
        // timeline 2 begins at 5, but its 5 and 6 are lost.
        let mut o = segs(1, 1..=4);
        o.push(obj("000000010000000000000005.partial", "p"));
        o.push(obj("00000002.history", "h"));
        o.extend(segs(2, 7..=9));
        let c = continuity(&o, &[base("b", 1, 2, 2)]);
        assert_eq!(c.gaps.len(), 1, "{:?}", c.gaps);
        let g = &c.gaps[0];
        assert_eq!(
            (g.timeline, g.from.as_str(), g.to.as_str()),
            (2, "000000020000000000000005", "000000020000000000000006")
        );
        assert_eq!(g.backups, vec!["b".to_string()]);
        assert!(!g.pending);

        // Whole: timeline 2 begins at the .partial's segment.
        let mut o = segs(1, 1..=4);
        o.push(obj("000000010000000000000005.partial", "p"));
        o.extend(segs(2, 5..=9));
        assert_eq!(continuity(&o, &[base("b", 1, 2, 2)]).gaps, vec![]);

        // Without a .partial (the old primary's last segments lost with
        // it): timeline 2 may begin one segment after timeline 1's last.
        let mut o = segs(1, 1..=4);
        o.extend(segs(2, 5..=9));
        assert_eq!(continuity(&o, &[base("b", 1, 2, 2)]).gaps, vec![]);
        let mut o = segs(1, 1..=4);
        o.extend(segs(2, 8..=9));
        let c = continuity(&o, &[base("b", 1, 2, 2), base("after", 2, 8, 8)]);
        assert_eq!(c.gaps.len(), 1, "{:?}", c.gaps);
        let g = &c.gaps[0];
        assert_eq!(
            (g.timeline, g.from.as_str(), g.to.as_str()),
            (1, "000000010000000000000005", "000000010000000000000007")
        );
        assert_eq!(
            g.backups,
            vec!["b".to_string()],
            "a base backup on timeline 2 is not cut"
        );
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
