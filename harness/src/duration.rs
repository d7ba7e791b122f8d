//! Durations as people type them: `500ms`, `30s`, `10m`, `1h`, `1h30m`.
//!
//! Here so that every tool that drives nodes (heraldctl, the chaos suite,
//! the benchmark) takes the same syntax without depending on heraldctl.

use std::time::Duration;

/// Parses a duration made of one or more `<integer><unit>` parts, with units
/// `ms`, `s`, `m`, `h` and `d`. A bare number is refused: `--ttl 30` could
/// mean seconds or milliseconds, and guessing wrong is worse than asking.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration (expected e.g. 500ms, 30s, 10m, 1h)".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "invalid duration {text:?}: expected a number at {rest:?}"
            ));
        }
        let (number, tail) = rest.split_at(digits);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let value: u64 = number
            .parse()
            .map_err(|_| format!("invalid duration {text:?}: {number} is too large"))?;
        let part = match unit {
            "ms" => Some(Duration::from_millis(value)),
            "s" => Some(Duration::from_secs(value)),
            "m" => value.checked_mul(60).map(Duration::from_secs),
            "h" => value.checked_mul(3600).map(Duration::from_secs),
            "d" => value.checked_mul(86_400).map(Duration::from_secs),
            "" => {
                return Err(format!(
                    "invalid duration {text:?}: missing unit (use ms, s, m, h or d)"
                ));
            }
            other => {
                return Err(format!(
                    "invalid duration {text:?}: unknown unit {other:?} (use ms, s, m, h or d)"
                ));
            }
        };
        total = part
            .and_then(|p| total.checked_add(p))
            .ok_or_else(|| format!("invalid duration {text:?}: too large"))?;
        rest = tail;
    }
    Ok(total)
}

/// Whole milliseconds, saturating, for the protocol's `*_ms` fields.
pub fn as_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The shortest exact rendering of a millisecond count in the same syntax
/// [`parse_duration`] reads: `90000` → `1m30s`, `1500` → `1s500ms`.
pub fn format_millis(ms: u64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    let mut rest = ms;
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
        ("ms", 1),
    ] {
        if rest >= size {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    out
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
    }

    #[test]
    fn errors_say_what_is_wrong() {
        for (bad, hint) in [
            ("", "empty"),
            ("30", "missing unit"),
            ("10x", "unknown unit"),
            ("s", "expected a number"),
            ("-5s", "expected a number"),
            ("1.5s", "unknown unit"),
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
        assert_eq!(format_millis(90_000), "1m30s");
    }
}
