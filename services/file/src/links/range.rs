//! Which bytes a `GET` asks for: the `Range` header of RFC 9110 §14, single ranges only.
//!
//! - `bytes=a-b`, `bytes=a-`, `bytes=-n`: one range → `206 Partial Content` (a last position past
//!   the end is cut at the end; a suffix longer than the file is the whole file).
//! - A range starting at or past the end, and `bytes=-0` → `416 Range Not Satisfiable`.
//! - Several ranges are answered with the whole file (`200`), as RFC 9110 allows: multipart
//!   responses help nobody here and cost a lot.
//! - Another unit, or a header that does not parse, is ignored (`200`), as RFC 9110 requires.

/// What to send of a `size`-byte file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requested {
    /// Everything (`200`).
    Whole,
    /// `length` bytes (at least one) from `offset` (`206`).
    Part {
        /// The first byte, 0-based.
        offset: u64,
        /// How many bytes.
        length: u64,
    },
    /// Nothing that exists (`416`).
    Unsatisfiable,
}

impl Requested {
    /// What `header` (the `Range` value, if any) asks of a `size`-byte file.
    pub fn parse(header: Option<&str>, size: u64) -> Self {
        let Some(header) = header else { return Self::Whole };
        let Some((unit, set)) = header.trim().split_once('=') else { return Self::Whole };
        if !unit.trim().eq_ignore_ascii_case("bytes") {
            return Self::Whole;
        }
        let mut ranges = set.split(',').map(str::trim).filter(|range| !range.is_empty());
        let (Some(range), None) = (ranges.next(), ranges.next()) else { return Self::Whole };
        let Some((first, last)) = range.split_once('-') else { return Self::Whole };
        match (position(first.trim()), position(last.trim())) {
            // bytes=-n: the last n bytes.
            (None, Some(suffix)) if first.trim().is_empty() => {
                if suffix == 0 || size == 0 {
                    Self::Unsatisfiable
                } else {
                    let length = suffix.min(size);
                    Self::Part { offset: size - length, length }
                }
            }
            // bytes=a-
            (Some(offset), None) if last.trim().is_empty() => Self::from_to(offset, u64::MAX, size),
            // bytes=a-b
            (Some(offset), Some(end)) if offset <= end => Self::from_to(offset, end, size),
            _ => Self::Whole,
        }
    }

    /// Bytes `offset..=end` of a `size`-byte file, the end cut at the file's end.
    fn from_to(offset: u64, end: u64, size: u64) -> Self {
        if offset >= size { Self::Unsatisfiable } else { Self::Part { offset, length: end.min(size - 1) - offset + 1 } }
    }
}

/// A byte position: 1*DIGIT, saturating (a position beyond `u64` is past any file's end).
fn position(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.bytes().fold(0_u64, |n, digit| n.saturating_mul(10).saturating_add(u64::from(digit - b'0'))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(offset: u64, length: u64) -> Requested {
        Requested::Part { offset, length }
    }

    #[test]
    fn single_ranges() {
        let parse = |header: &str| Requested::parse(Some(header), 1000);
        assert_eq!(parse("bytes=0-499"), part(0, 500));
        assert_eq!(parse("bytes=500-999"), part(500, 500));
        assert_eq!(parse("bytes=500-5000"), part(500, 500));
        assert_eq!(parse("bytes=999-999"), part(999, 1));
        assert_eq!(parse("bytes=900-"), part(900, 100));
        assert_eq!(parse("bytes=0-"), part(0, 1000));
        assert_eq!(parse("bytes=-100"), part(900, 100));
        assert_eq!(parse("bytes=-5000"), part(0, 1000));
        assert_eq!(parse(" Bytes = 1 - 2 ,"), part(1, 2));
        assert_eq!(parse("bytes=0-99999999999999999999999"), part(0, 1000));
    }

    #[test]
    fn unsatisfiable_ranges() {
        let parse = |header: &str| Requested::parse(Some(header), 1000);
        assert_eq!(parse("bytes=1000-"), Requested::Unsatisfiable);
        assert_eq!(parse("bytes=1000-2000"), Requested::Unsatisfiable);
        assert_eq!(parse("bytes=99999999999999999999999-"), Requested::Unsatisfiable);
        assert_eq!(parse("bytes=-0"), Requested::Unsatisfiable);
        assert_eq!(Requested::parse(Some("bytes=0-"), 0), Requested::Unsatisfiable);
        assert_eq!(Requested::parse(Some("bytes=-1"), 0), Requested::Unsatisfiable);
    }

    #[test]
    fn everything_else_is_the_whole_file() {
        let parse = |header: &str| Requested::parse(Some(header), 1000);
        assert_eq!(Requested::parse(None, 1000), Requested::Whole);
        for header in [
            "bytes=0-1,5-9",
            "bytes=0-1, -5",
            "items=0-1",
            "bytes=5-1",
            "bytes=-",
            "bytes=a-b",
            "bytes=1-2-3",
            "bytes=+1-2",
            "bytes=",
            "bytes",
            "",
        ] {
            assert_eq!(parse(header), Requested::Whole, "{header}");
        }
    }
}
