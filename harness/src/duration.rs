//! Durations as people type them: `500ms`, `30s`, `10m`, `1h`, `1h30m`,
//! parsed and printed by the well-kept `humantime` crate (it replaced a
//! hand-written parser: same syntax, nothing here is hot).
//!
//! Here so that every tool that drives nodes (heraldctl, the chaos suite,
//! the benchmark) takes the same syntax without depending on heraldctl.

use std::time::Duration;

/// Parses a duration made of one or more `<integer><unit>` parts (`ms`, `s`,
/// `m`, `h`, `d` and humantime's longer names), by the `humantime` crate.
/// A bare number is refused: `--ttl 30` could mean seconds or milliseconds,
/// and guessing wrong is worse than asking.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    use humantime::DurationError as E;
    humantime::parse_duration(text.trim()).map_err(|e| {
        let why = match e {
            E::Empty => "empty duration".to_string(),
            E::UnknownUnit { unit, .. } if unit.is_empty() => "missing unit".to_string(),
            E::UnknownUnit { unit, .. } => format!("unknown unit {unit:?}"),
            E::NumberExpected(_) | E::InvalidCharacter(_) => "expected a number".to_string(),
            E::NumberOverflow => "too large".to_string(),
        };
        format!("invalid duration {text:?}: {why} (use e.g. 500ms, 30s, 10m, 1h, 1h30m)")
    })
}

/// Whole milliseconds, saturating, for the protocol's `*_ms` fields.
pub fn as_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The exact rendering of a millisecond count that [`parse_duration`]
/// reads back: `90000` → `1m 30s`, `1500` → `1s 500ms` (humantime's).
pub fn format_millis(ms: u64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    humantime::format_duration(Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration(" 0s "), Ok(Duration::ZERO));
    }

    #[test]
    fn compound() {
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1s500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        for (bad, hint) in [
            ("", "empty"),
            ("30", "missing unit"),
            ("10x", "unknown unit"),
            ("s", "expected a number"),
            ("-5s", "expected a number"),
            ("99999999999999999999s", "too large"),
            ("9999999999999999999d", "too large"),
        ] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(err.contains(hint), "{bad:?}: {err}");
        }
    }

    #[test]
    fn formatting_round_trips() {
        for ms in [
            0,
            1,
            999,
            1000,
            1500,
            60_000,
            90_000,
            3_600_000,
            86_400_000 + 1,
        ] {
            let text = format_millis(ms);
            assert_eq!(parse_duration(&text).map(as_millis), Ok(ms), "{text}");
        }
        assert_eq!(format_millis(90_000), "1m 30s");
    }
}
