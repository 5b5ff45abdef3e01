//! Small pieces the sections share: serde defaults and value parsers.

use anyhow::Result;

/// A `time_zone` value: an IANA zone name.
pub(super) fn parse_tz(name: &str) -> Result<chrono_tz::Tz> {
    name.parse::<chrono_tz::Tz>().map_err(|_| {
        anyhow::anyhow!("time_zone {name:?} is not an IANA time zone (e.g. \"Europe/Madrid\")")
    })
}

pub(super) fn yes() -> bool {
    true
}

pub(super) fn one() -> u32 {
    1
}
