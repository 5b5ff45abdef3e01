//! PostgreSQL's write-ahead log, as names and positions: LSNs (`0/3000028`),
//! the files `archive_command` hands over (segments
//! `000000010000000000000003`, `00000002.history`, `….00000028.backup`,
//! `….partial`) and the segment arithmetic that says which segments a
//! range of WAL needs. Nothing here reads a file.

use std::fmt;

/// A WAL position (`pg_lsn`): `X/Y`, the high and low 32 bits in hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Parses `X/Y` (as PostgreSQL prints it, any case).
    pub fn parse(s: &str) -> Option<Lsn> {
        let (hi, lo) = s.trim().split_once('/')?;
        if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
            return None;
        }
        let hi = u32::from_str_radix(hi, 16).ok()?;
        let lo = u32::from_str_radix(lo, 16).ok()?;
        Some(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }

    /// The segment number holding this position.
    pub fn segment(self, segment_size: u64) -> u64 {
        self.0 / segment_size.max(1)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// What kind of file `archive_command` hands over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalKind {
    /// A whole segment: `TTTTTTTTXXXXXXXXYYYYYYYY`.
    Segment,
    /// A timeline history file: `TTTTTTTT.history`.
    History,
    /// A backup history file: `<segment>.<offset>.backup`.
    Backup,
    /// The last, partial segment of an old timeline: `<segment>.partial`.
    Partial,
}

/// A parsed WAL file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalName {
    pub name: String,
    pub kind: WalKind,
    pub timeline: u32,
    /// Of a segment (or `.backup`/`.partial`): the 16 hex digits after
    /// the timeline, the `log` and `seg` halves; 0 for a history file.
    log: u32,
    seg: u32,
}

fn hex8(s: &str) -> Option<u32> {
    (s.len() == 8 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u32::from_str_radix(s, 16).ok())
        .flatten()
}

impl WalName {
    /// Parses a file name (no directory); None for anything else, so a
    /// hostile or mistaken argument never becomes an object key.
    pub fn parse(name: &str) -> Option<WalName> {
        let upper = |s: &str| s.bytes().all(|b| !b.is_ascii_lowercase());
        if !upper(name.split('.').next().unwrap_or("")) {
            return None;
        }
        let segment = |s: &str| -> Option<(u32, u32, u32)> {
            if s.len() != 24 {
                return None;
            }
            Some((hex8(&s[..8])?, hex8(&s[8..16])?, hex8(&s[16..])?))
        };
        let made = |kind, (timeline, log, seg)| WalName {
            name: name.to_string(),
            kind,
            timeline,
            log,
            seg,
        };
        let parts: Vec<&str> = name.split('.').collect();
        match parts.as_slice() {
            [s] => segment(s).map(|t| made(WalKind::Segment, t)),
            [t, "history"] => hex8(t).map(|tl| made(WalKind::History, (tl, 0, 0))),
            [s, "partial"] => segment(s).map(|t| made(WalKind::Partial, t)),
            [s, off, "backup"] if hex8(off).is_some() => {
                segment(s).map(|t| made(WalKind::Backup, t))
            }
            _ => None,
        }
        .filter(|w| w.timeline > 0)
    }

    /// The timeline as the archive's directory names it: 8 hex digits.
    pub fn timeline_dir(&self) -> String {
        format!("{:08X}", self.timeline)
    }

    /// The segment number (for segments, `.partial` and `.backup` files),
    /// given the cluster's segment size.
    pub fn segment_number(&self, segment_size: u64) -> u64 {
        let per_log = 0x1_0000_0000 / segment_size.max(1);
        u64::from(self.log) * per_log + u64::from(self.seg)
    }
}

/// The name of segment `segno` of `timeline`.
pub fn segment_name(timeline: u32, segno: u64, segment_size: u64) -> String {
    let per_log = 0x1_0000_0000 / segment_size.max(1);
    format!(
        "{timeline:08X}{:08X}{:08X}",
        segno / per_log,
        segno % per_log
    )
}

/// The timeline directory name of timeline `tl`: 8 hex digits.
pub fn timeline_dir(tl: u32) -> String {
    format!("{tl:08X}")
}

/// One line of a timeline history file: timeline `parent` ended at
/// `switch` (the next timeline began there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimelineSwitch {
    pub parent: u32,
    pub switch: Lsn,
}

/// Parses a `.history` file: `<parent tli>\t<switch lsn>\t<reason>` per
/// line, comments and blank lines ignored.
pub fn parse_history(text: &str) -> Vec<TimelineSwitch> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') {
                return None;
            }
            let mut f = l.split_whitespace();
            let parent = f.next()?.parse().ok()?;
            let switch = Lsn::parse(f.next()?)?;
            Some(TimelineSwitch { parent, switch })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 * 1024 * 1024;

    #[test]
    fn lsns_round_trip() {
        let l = Lsn::parse("0/3000028").unwrap();
        assert_eq!(l.0, 0x300_0028);
        assert_eq!(l.to_string(), "0/3000028");
        assert_eq!(Lsn::parse("1A/FF").unwrap().to_string(), "1A/FF");
        assert_eq!(Lsn::parse("16/b374d848").unwrap().0, 0x16_b374_d848);
        for bad in ["", "0", "/1", "1/", "x/1", "123456789/0", "0/1/2"] {
            assert_eq!(Lsn::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn names_are_parsed_and_strangers_refused() {
        let s = WalName::parse("000000010000000000000003").unwrap();
        assert_eq!((s.kind, s.timeline), (WalKind::Segment, 1));
        assert_eq!(s.segment_number(SEG), 3);
        let s = WalName::parse("0000000200000001000000FE").unwrap();
        assert_eq!(s.segment_number(SEG), 256 + 0xFE);
        assert_eq!(segment_name(2, 256 + 0xFE, SEG), "0000000200000001000000FE");
        let h = WalName::parse("0000000A.history").unwrap();
        assert_eq!(
            (h.kind, h.timeline_dir()),
            (WalKind::History, "0000000A".into())
        );
        let b = WalName::parse("000000010000000000000002.00000028.backup").unwrap();
        assert_eq!((b.kind, b.timeline), (WalKind::Backup, 1));
        let p = WalName::parse("000000010000000000000005.partial").unwrap();
        assert_eq!(p.kind, WalKind::Partial);
        for bad in [
            "",
            "../etc/passwd",
            "pg_wal/000000010000000000000003",
            "00000001000000000000000",
            "0000000100000000000000030",
            "000000010000000000000003.zst",
            "00000000.history",
            "000000000000000000000003",
            "0000000a.history",
            "000000010000000000000002.backup",
            "RECOVERYHISTORY",
        ] {
            assert_eq!(WalName::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn segment_arithmetic_follows_the_segment_size() {
        let one_gib = 1024 * 1024 * 1024;
        assert_eq!(segment_name(1, 5, one_gib), "000000010000000100000001");
        let n = WalName::parse("000000010000000100000001").unwrap();
        assert_eq!(n.segment_number(one_gib), 5);
        assert_eq!(Lsn::parse("0/3000028").unwrap().segment(SEG), 3);
    }

    #[test]
    fn history_files_are_read() {
        let text = "1\t0/3000158\tno recovery target specified\n\n2\t0/5000000\tat restore point\n";
        assert_eq!(
            parse_history(text),
            vec![
                TimelineSwitch {
                    parent: 1,
                    switch: Lsn(0x300_0158)
                },
                TimelineSwitch {
                    parent: 2,
                    switch: Lsn(0x500_0000)
                }
            ]
        );
    }
}
