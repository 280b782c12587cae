//! Durations written as text, one grammar for the config file and the CLI:
//! a number with a unit (`250ms`, `10s`, `5m`, `5min`, `1h`, `30d`, `2w`), a
//! sum of them (`1d12h`, `1m 30s`), or a bare number of seconds (`10`).

use std::time::Duration;

/// Parses a duration (see the module doc); the error says what to write.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    let bad = |why: &str| {
        format!("`{text}` is not a duration ({why}; e.g. 250ms, 10s, 5m, 1h, 7d, 1d12h)")
    };
    if text.is_empty() {
        return Err(bad("it is empty"));
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        let n: u64 = text.parse().map_err(|_| bad("too large"))?;
        return Ok(Duration::from_secs(n));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad("a number must come before each unit"));
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad("too large"))?;
        rest = rest[digits..].trim_start();
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let (unit, after) = rest.split_at(unit_len);
        let millis_per: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" | "min" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            "" => return Err(bad("each number needs a unit: ms, s, m, h, d or w")),
            _ => {
                return Err(bad(&format!(
                    "unknown unit `{unit}`: use ms, s, m, h, d or w"
                )))
            }
        };
        let term = n.checked_mul(millis_per).ok_or_else(|| bad("too large"))?;
        total = total
            .checked_add(Duration::from_millis(term))
            .ok_or_else(|| bad("too large"))?;
        rest = after.trim_start();
    }
    Ok(total)
}

/// For `#[serde(with = "schemas::duration::text")]` fields.
pub mod text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn every_form_the_config_and_the_cli_took_before_still_parses() {
        // The config's forms.
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("10s").unwrap(), secs(10));
        assert_eq!(parse_duration("10").unwrap(), secs(10));
        assert_eq!(parse_duration(" 10 s ").unwrap(), secs(10));
        assert_eq!(parse_duration("5m").unwrap(), secs(300));
        assert_eq!(parse_duration("5min").unwrap(), secs(300));
        assert_eq!(parse_duration("1h").unwrap(), secs(3_600));
        // `floe snapshots prune --older-than`'s forms.
        assert_eq!(parse_duration("30d").unwrap(), secs(30 * 86_400));
        assert_eq!(parse_duration("2w").unwrap(), secs(14 * 86_400));
        assert_eq!(parse_duration("1d12h").unwrap(), secs(86_400 + 12 * 3_600));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        // Sums with spaces, and milliseconds inside a sum.
        assert_eq!(parse_duration("1m 30s").unwrap(), secs(90));
        assert_eq!(
            parse_duration("1s500ms").unwrap(),
            Duration::from_millis(1_500)
        );
    }

    #[test]
    fn what_is_not_a_duration_is_refused_saying_why() {
        for (text, why) in [
            ("", "empty"),
            ("5 parsecs", "unknown unit `parsecs`"),
            ("h", "a number must come before"),
            ("1d12", "each number needs a unit"),
            ("-5s", "a number must come before"),
            ("1.5h", "each number needs a unit"),
            ("99999999999999999999s", "too large"),
        ] {
            let e = parse_duration(text).unwrap_err();
            assert!(e.contains(why) && e.contains("e.g."), "{text:?}: {e}");
        }
    }
}
