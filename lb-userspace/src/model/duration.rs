//! Durations as people write them: `"500ms"`, `"10m"`, `"1m30s"`. The config file, the
//! CLI, the API and `xlb status` all use this one spelling.
//!
//! Owns: parsing and formatting. Must not touch: which durations are allowed (limits).

use std::{fmt, str::FromStr, time::Duration};

const NANOS_PER: [(&str, u128); 6] = [
    ("h", 3_600_000_000_000),
    ("m", 60_000_000_000),
    ("s", 1_000_000_000),
    ("ms", 1_000_000),
    ("us", 1_000),
    ("ns", 1),
];

/// Parses `"500ms"`, `"10m"`, `"1h"`, `"2m30s"`, `"250us"`: integers with units
/// h, m, s, ms, us, ns, largest first, each unit at most once.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = |why: &str| {
        format!(
            "invalid duration {s:?}: {why} (e.g. \"500ms\", \"10m\", \"1m30s\"; units h, m, s, ms, us, ns)"
        )
    };
    if s.is_empty() {
        return Err(bad("empty"));
    }
    let mut rest = s;
    let mut total: u128 = 0;
    let mut last_unit = None;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad("expected a number"));
        }
        let (number, after) = rest.split_at(digits);
        let letters = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(letters);
        if unit.is_empty() {
            return Err(bad(&format!("missing unit after {number}")));
        }
        let Some(index) = NANOS_PER.iter().position(|(u, _)| *u == unit) else {
            return Err(bad(&format!("unknown unit {unit:?}")));
        };
        if last_unit.is_some_and(|last| index <= last) {
            return Err(bad("units must go from largest to smallest, each once"));
        }
        last_unit = Some(index);
        total = number
            .parse::<u128>()
            .ok()
            .and_then(|n| n.checked_mul(NANOS_PER[index].1))
            .and_then(|n| n.checked_add(total))
            .ok_or_else(|| bad("too large"))?;
        rest = after;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| bad("too large"))?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

/// The inverse of [`parse_duration`]: `"500ms"`, `"10m"`, `"1m30s"`, `"0s"`.
pub fn format_duration(d: Duration) -> String {
    let mut rest = d.as_nanos();
    if rest == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, nanos) in NANOS_PER {
        let n = rest / nanos;
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
            rest %= nanos;
        }
    }
    out
}

/// A [`Duration`] that displays and parses in the human spelling; lets clap show the
/// model's default durations (`default_value_t`) without writing them twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_duration(s).map(HumanDuration)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = [
            ("500ms", Duration::from_millis(500)),
            ("10m", Duration::from_secs(600)),
            ("1s", Duration::from_secs(1)),
            ("1h", Duration::from_secs(3600)),
            ("2m30s", Duration::from_secs(150)),
            ("1h30m", Duration::from_secs(5400)),
            ("250us", Duration::from_micros(250)),
            ("1s500ms", Duration::from_millis(1500)),
            ("7ns", Duration::from_nanos(7)),
            ("0s", Duration::ZERO),
            ("90s", Duration::from_secs(90)),
        ];
        for (s, d) in ok {
            assert_eq!(parse_duration(s), Ok(d), "{s}");
            assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{s}");
        }
        for (d, s) in [
            (Duration::from_millis(500), "500ms"),
            (Duration::from_secs(600), "10m"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(3600 * 48), "48h"),
            (Duration::new(1, 1), "1s1ns"),
            (Duration::ZERO, "0s"),
            (Duration::MAX, "5124095576030431h15s999ms999us999ns"),
        ] {
            assert_eq!(format_duration(d), s);
            assert_eq!(parse_duration(s), Ok(d));
        }
        for (s, why) in [
            ("", "empty"),
            ("10", "missing unit"),
            ("-1s", "expected a number"),
            ("1x", "unknown unit \"x\""),
            ("1.5s", "missing unit"),
            ("s", "expected a number"),
            ("1s1m", "largest to smallest"),
            ("1s1s", "largest to smallest"),
            ("1 s", "missing unit"),
            ("5124095576030431h16s", "too large"),
            ("999999999999999999999999999999999999999999h", "too large"),
        ] {
            let err = parse_duration(s).unwrap_err();
            assert!(err.contains(why), "{s:?}: {err}");
        }
    }
}
