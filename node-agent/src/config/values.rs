//! Human-friendly values shared by the file, the environment and the flags: byte sizes
//! ("50GiB") and durations ("90s", "2h").

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A number of bytes, written as a plain integer or with a unit: `B`, decimal `kB`/`MB`/`GB`/`TB`,
/// binary `KiB`/`MiB`/`GiB`/`TiB` (units are case-insensitive; `1.5GiB` and `50 GB` work).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn bytes(self) -> u64 {
        self.0
    }
}

const UNITS: [(&str, u64); 9] = [
    ("b", 1),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("tb", 1_000_000_000_000),
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("tib", 1 << 40),
];

impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (number, unit) = split_number(text)?;
        let unit_lower = unit.to_ascii_lowercase();
        let factor = if unit.is_empty() {
            1
        } else {
            UNITS.iter().find(|(name, _)| *name == unit_lower).map(|(_, factor)| *factor).ok_or_else(|| {
                format!("unknown size unit {unit:?} in {text:?} (use B, kB, MB, GB, TB, KiB, MiB, GiB or TiB)")
            })?
        };
        scale(number, factor).map(ByteSize).ok_or_else(|| format!("size {text:?} is out of range"))
    }
}

impl fmt::Display for ByteSize {
    /// The largest binary unit that divides the value exactly, so printing and parsing round-trip.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, factor) in [("TiB", 1u64 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if self.0 != 0 && self.0.is_multiple_of(factor) {
                return write!(f, "{}{name}", self.0 / factor);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte count or a size such as \"50GiB\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v).map(ByteSize).map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

/// A duration, written with a unit (`500ms`, `90s`, `15m`, `2h`, or combined: `1h30m`) or, in the
/// file, as a plain integer of seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl std::str::FromStr for HumanDuration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err("empty duration".to_owned());
        }
        if let Ok(secs) = trimmed.parse::<u64>() {
            return Ok(HumanDuration(Duration::from_secs(secs)));
        }
        let mut total = Duration::ZERO;
        let mut rest = trimmed;
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
            let unit_end = rest[digits..].find(|c: char| c.is_ascii_digit()).map_or(rest.len(), |i| digits + i);
            let number: f64 = rest[..digits]
                .parse()
                .map_err(|_| format!("invalid duration {text:?} (e.g. \"90s\", \"15m\", \"2h\")"))?;
            let millis_per_unit = match rest[digits..unit_end].trim() {
                "ms" => 1.0,
                "s" => 1_000.0,
                "m" | "min" => 60_000.0,
                "h" => 3_600_000.0,
                unit => return Err(format!("unknown duration unit {unit:?} in {text:?} (use ms, s, m or h)")),
            };
            let millis = number * millis_per_unit;
            if !millis.is_finite() || millis > 1e15 {
                return Err(format!("duration {text:?} is out of range"));
            }
            // Whole milliseconds are all the agent needs; truncation is intended.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let millis = millis as u64;
            total += Duration::from_millis(millis);
            rest = &rest[unit_end..];
        }
        Ok(HumanDuration(total))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.as_millis();
        if !millis.is_multiple_of(1000) {
            return write!(f, "{millis}ms");
        }
        let secs = millis / 1000;
        if secs != 0 && secs.is_multiple_of(3600) {
            write!(f, "{}h", secs / 3600)
        } else if secs != 0 && secs.is_multiple_of(60) {
            write!(f, "{}m", secs / 60)
        } else {
            write!(f, "{secs}s")
        }
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("seconds or a duration such as \"90s\", \"15m\", \"2h\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<HumanDuration, E> {
                u64::try_from(v)
                    .map(|s| HumanDuration(Duration::from_secs(s)))
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<HumanDuration, E> {
                Ok(HumanDuration(Duration::from_secs(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_any(DurationVisitor)
    }
}

/// Splits "1.5 GiB" into (1.5, "GiB").
fn split_number(text: &str) -> Result<(f64, &str), String> {
    let trimmed = text.trim();
    let end = trimmed.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(trimmed.len());
    let number = trimmed[..end]
        .parse::<f64>()
        .map_err(|_| format!("invalid size {text:?} (e.g. \"50GiB\", \"500MB\", \"1073741824\")"))?;
    Ok((number, trimmed[end..].trim()))
}

fn scale(number: f64, factor: u64) -> Option<u64> {
    // Factors are powers of 2 or 10 far below 2^53, so the product is exact enough.
    #[allow(clippy::cast_precision_loss)]
    let value = number * factor as f64;
    // u64::MAX as f64 rounds up to 2^64, so `<` keeps the cast in range.
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    (value.is_finite() && value >= 0.0 && value < u64::MAX as f64).then(|| value.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_and_without_units() {
        let parse = |s: &str| s.parse::<ByteSize>().map(ByteSize::bytes);
        assert_eq!(parse("1024"), Ok(1024));
        assert_eq!(parse("50GiB"), Ok(50 << 30));
        assert_eq!(parse("50 gib"), Ok(50 << 30));
        assert_eq!(parse("500MB"), Ok(500_000_000));
        assert_eq!(parse("1.5KiB"), Ok(1536));
        assert_eq!(parse("2TiB"), Ok(2 << 40));
        assert!(parse("5 parsecs").unwrap_err().contains("unknown size unit"));
        assert!(parse("GiB").is_err());
        assert!(parse("-5GiB").is_err());
        assert!(parse("99999999999TiB").is_err());
    }

    #[test]
    fn sizes_print_back_as_they_parse() {
        for bytes in [0, 1, 1023, 1024, 50 << 30, (3 << 40) + 512] {
            let printed = ByteSize(bytes).to_string();
            assert_eq!(printed.parse::<ByteSize>(), Ok(ByteSize(bytes)), "{printed}");
        }
        assert_eq!(ByteSize(50 << 30).to_string(), "50GiB");
    }

    #[test]
    fn durations_parse_and_print() {
        let parse = |s: &str| s.parse::<HumanDuration>().map(|d| d.0);
        assert_eq!(parse("60"), Ok(Duration::from_secs(60)));
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse("soon").is_err());
        assert!(parse("5 fortnights").is_err());
        assert!(parse("").is_err());
        for text in ["250ms", "5s", "2h", "15m", "90s"] {
            let d: HumanDuration = text.parse().unwrap();
            assert_eq!(d.to_string().parse::<HumanDuration>(), Ok(d));
        }
        assert_eq!(HumanDuration(Duration::from_secs(7200)).to_string(), "2h");
    }
}
