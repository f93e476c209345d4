//! Frame ranges and the frame spec grammar of `Segment.frames` (render_job.proto):
//!
//! ```text
//! spec  = item *( "," item )          ; ASCII spaces around tokens ignored, <= 1,024 characters
//! item  = frame [ "-" frame [ "x" step ] ]
//! frame = 1*10DIGIT                   ; 0..=2147483647
//! step  = 1*3DIGIT                    ; 1..=100
//! ```
//!
//! Items must ascend without overlapping; each becomes one stored segment. Ranges are
//! end-inclusive and normalized: `end` is the last frame actually rendered ("1-10x4" is 1..=9
//! step 4) and a single frame has step 1, so equal frame sets are equal values.

use std::fmt;

use flatrender_proto::flatrender::render::v1 as pb;

use crate::error::{RenderError, Result};

/// The largest comp frame number.
pub const MAX_FRAME: i32 = i32::MAX;
/// The largest step (aerender `-i`).
pub const MAX_STEP: i32 = 100;
/// The longest frame spec, in characters.
pub const MAX_SPEC_CHARS: usize = 1024;
const MAX_FRAME_DIGITS: usize = 10;
const MAX_STEP_DIGITS: usize = 3;

/// Comp frames `start, start + step, ...` up to `end` inclusive; always normalized (see the
/// module). The columns `frame_start`/`frame_end`/`frame_step` of segments and tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FrameRange {
    start: i32,
    end: i32,
    step: i32,
}

/// Why a frame spec or range is refused: the reason of the `INVALID_ARGUMENT` (the caller puts
/// the field path first, e.g. "segments[2].frames: reversed range 9-3").
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameSpecError {
    /// The spec is empty or only spaces.
    #[error("must not be empty")]
    Empty,
    /// The spec is longer than [`MAX_SPEC_CHARS`].
    #[error("must be at most 1024 characters")]
    TooLong,
    /// An item between commas is empty ("1,,3"); 1-based.
    #[error("item {0} is empty")]
    EmptyItem(usize),
    /// A token is not a decimal number.
    #[error("{0:?} is not a number")]
    NotANumber(String),
    /// A range or step misses its number ("1-", "1-5x").
    #[error("missing {what} in {item:?}")]
    Missing {
        /// "frame" or "step".
        what: &'static str,
        /// The item as written.
        item: String,
    },
    /// A negative frame.
    #[error("negative frame {0}")]
    Negative(String),
    /// A frame above [`MAX_FRAME`] or with more than 10 digits.
    #[error("frame {0} is above 2147483647")]
    FrameTooLarge(String),
    /// A step outside 1..=100 (or with more than 3 digits).
    #[error("step {0} is outside 1..=100")]
    StepOutOfRange(String),
    /// start > end.
    #[error("reversed range {start}-{end}")]
    Reversed {
        /// First frame as given.
        start: i64,
        /// Last frame as given.
        end: i64,
    },
    /// A step on a single frame ("5x2").
    #[error("step on a single frame {0:?}")]
    StepOnSingleFrame(String),
    /// An item starts before the previous one ("7,3").
    #[error("items out of order: {item:?} after {previous:?}")]
    OutOfOrder {
        /// The earlier item as written.
        previous: String,
        /// The offending item as written.
        item: String,
    },
    /// An item starts at or before the previous one's last frame ("1-10,5-20").
    #[error("overlapping items {previous:?} and {item:?}")]
    Overlapping {
        /// The earlier item as written.
        previous: String,
        /// The offending item as written.
        item: String,
    },
}

impl FrameRange {
    /// The range `start..=end` by `step`, normalized. Refuses a negative start, `start > end` and
    /// a step outside 1..=100.
    pub fn new(start: i32, end: i32, step: i32) -> Result<Self, FrameSpecError> {
        if start < 0 {
            return Err(FrameSpecError::Negative(start.to_string()));
        }
        if start > end {
            return Err(FrameSpecError::Reversed { start: start.into(), end: end.into() });
        }
        if !(1..=MAX_STEP).contains(&step) {
            return Err(FrameSpecError::StepOutOfRange(step.to_string()));
        }
        let span = (i64::from(end) - i64::from(start)) / i64::from(step) * i64::from(step);
        // start + span <= end, so it fits in i32.
        let end = i32::try_from(i64::from(start) + span).unwrap_or(end);
        let step = if start == end { 1 } else { step };
        Ok(Self { start, end, step })
    }

    /// One frame.
    pub fn single(frame: i32) -> Result<Self, FrameSpecError> {
        Self::new(frame, frame, 1)
    }

    /// From a message (agent reports, stored ranges sent back): step 0 is read as 1, and `field`
    /// is named in the error.
    pub fn from_pb(field: &str, range: &pb::FrameRange) -> Result<Self> {
        let step = if range.step == 0 { 1 } else { range.step };
        Self::new(range.start, range.end, step).map_err(|e| RenderError::invalid(field, e.to_string()))
    }

    /// The protobuf form.
    pub fn to_pb(self) -> pb::FrameRange {
        pb::FrameRange { start: self.start, end: self.end, step: self.step }
    }

    /// First frame.
    pub fn start(&self) -> i32 {
        self.start
    }

    /// Last frame rendered (inclusive).
    pub fn end(&self) -> i32 {
        self.end
    }

    /// Increment, 1..=100.
    pub fn step(&self) -> i32 {
        self.step
    }

    /// Frames in the range, as the generated `frame_count` column computes it. At most 2^31
    /// ("0-2147483647"), which is why this is `u32`.
    pub fn frame_count(&self) -> u32 {
        // Never negative: end >= start and step >= 1.
        u32::try_from((self.end - self.start) / self.step).unwrap_or(0) + 1
    }

    /// Whether `frame` is rendered by this range.
    pub fn contains(&self, frame: i32) -> bool {
        (self.start..=self.end).contains(&frame) && (frame - self.start) % self.step == 0
    }

    /// The `index`-th frame (0-based), if the range has that many.
    pub fn nth_frame(&self, index: u32) -> Option<i32> {
        if index >= self.frame_count() {
            return None;
        }
        i32::try_from(i64::from(self.start) + i64::from(index) * i64::from(self.step)).ok()
    }

    /// The frames in order.
    pub fn frames(&self) -> impl Iterator<Item = i32> + use<> {
        // `step` is 1..=100, so the cast is lossless.
        (self.start..=self.end).step_by(self.step as usize)
    }
}

impl IntoIterator for FrameRange {
    type Item = i32;
    type IntoIter = std::iter::StepBy<std::ops::RangeInclusive<i32>>;

    fn into_iter(self) -> Self::IntoIter {
        (self.start..=self.end).step_by(self.step as usize)
    }
}

/// The spec item: "42", "1-100" or "1-96x5".
impl fmt::Display for FrameRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.start == self.end, self.step) {
            (true, _) => write!(f, "{}", self.start),
            (false, 1) => write!(f, "{}-{}", self.start, self.end),
            (false, step) => write!(f, "{}-{}x{step}", self.start, self.end),
        }
    }
}

/// Parses a frame spec into its items in order (see the module for the grammar).
pub fn parse_frames(spec: &str) -> Result<Vec<FrameRange>, FrameSpecError> {
    let spec = trim_spaces(spec);
    if spec.is_empty() {
        return Err(FrameSpecError::Empty);
    }
    if spec.chars().count() > MAX_SPEC_CHARS {
        return Err(FrameSpecError::TooLong);
    }
    let mut ranges: Vec<FrameRange> = Vec::new();
    let mut previous = "";
    for (index, item) in spec.split(',').enumerate() {
        let item = trim_spaces(item);
        if item.is_empty() {
            return Err(FrameSpecError::EmptyItem(index + 1));
        }
        let range = parse_item(item)?;
        if let Some(last) = ranges.last() {
            if range.start < last.start {
                return Err(FrameSpecError::OutOfOrder { previous: previous.into(), item: item.into() });
            }
            if range.start <= last.end {
                return Err(FrameSpecError::Overlapping { previous: previous.into(), item: item.into() });
            }
        }
        ranges.push(range);
        previous = item;
    }
    Ok(ranges)
}

/// The spec of `ranges` ("1,3,7-9"); [`parse_frames`] reads it back to the same ranges when they
/// ascend without overlapping.
pub fn format_frames(ranges: &[FrameRange]) -> String {
    ranges.iter().map(FrameRange::to_string).collect::<Vec<_>>().join(",")
}

fn trim_spaces(text: &str) -> &str {
    text.trim_matches(' ')
}

/// One item, already trimmed and not empty.
fn parse_item(item: &str) -> Result<FrameRange, FrameSpecError> {
    if let Some(rest) = item.strip_prefix('-') {
        return Err(negative_or_not_a_number(item, rest));
    }
    let Some((first, rest)) = item.split_once('-') else {
        // A single frame, or a step written on one ("5x2").
        if let Some((frame, step)) = split_step(item)
            && parse_number(frame, MAX_FRAME_DIGITS).is_ok()
            && parse_number(step, MAX_STEP_DIGITS).is_ok()
        {
            return Err(FrameSpecError::StepOnSingleFrame(item.into()));
        }
        let frame = frame_number(item, item)?;
        return FrameRange::single(frame);
    };
    let start = frame_number(first, item)?;
    let rest = trim_spaces(rest);
    if let Some(after) = rest.strip_prefix('-') {
        return Err(negative_or_not_a_number(rest, after));
    }
    let (end, step) = match split_step(rest) {
        Some((end, step)) => (end, Some(step)),
        None => (rest, None),
    };
    let end = frame_number(end, item)?;
    let step = match step {
        Some(step) => step_number(step, item)?,
        None => 1,
    };
    if start > end {
        return Err(FrameSpecError::Reversed { start: start.into(), end: end.into() });
    }
    FrameRange::new(start, end, step)
}

/// "a x b" split at the first `x` (either case: grammar literals are case-insensitive).
fn split_step(text: &str) -> Option<(&str, &str)> {
    let at = text.find(['x', 'X'])?;
    Some((trim_spaces(&text[..at]), trim_spaces(&text[at + 1..])))
}

fn negative_or_not_a_number(token: &str, digits_after_minus: &str) -> FrameSpecError {
    let digits = trim_spaces(digits_after_minus);
    let digits = &digits[..digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len())];
    if digits.is_empty() {
        FrameSpecError::NotANumber(token.into())
    } else {
        FrameSpecError::Negative(format!("-{digits}"))
    }
}

enum NumberError {
    Missing,
    NotDigits,
    TooLarge,
}

/// Decimal digits only, at most `max_digits` of them.
fn parse_number(token: &str, max_digits: usize) -> Result<u64, NumberError> {
    let token = trim_spaces(token);
    if token.is_empty() {
        return Err(NumberError::Missing);
    }
    if !token.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NumberError::NotDigits);
    }
    if token.len() > max_digits {
        return Err(NumberError::TooLarge);
    }
    token.parse().map_err(|_| NumberError::TooLarge)
}

fn frame_number(token: &str, item: &str) -> Result<i32, FrameSpecError> {
    let token = trim_spaces(token);
    match parse_number(token, MAX_FRAME_DIGITS) {
        Ok(n) => i32::try_from(n).map_err(|_| FrameSpecError::FrameTooLarge(token.into())),
        Err(NumberError::Missing) => Err(FrameSpecError::Missing { what: "frame", item: item.into() }),
        Err(NumberError::NotDigits) => Err(FrameSpecError::NotANumber(token.into())),
        Err(NumberError::TooLarge) => Err(FrameSpecError::FrameTooLarge(token.into())),
    }
}

fn step_number(token: &str, item: &str) -> Result<i32, FrameSpecError> {
    let token = trim_spaces(token);
    match parse_number(token, MAX_STEP_DIGITS) {
        Ok(n @ 1..=100) => Ok(n as i32),
        Ok(_) | Err(NumberError::TooLarge) => Err(FrameSpecError::StepOutOfRange(token.into())),
        Err(NumberError::Missing) => Err(FrameSpecError::Missing { what: "step", item: item.into() }),
        Err(NumberError::NotDigits) => Err(FrameSpecError::NotANumber(token.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::Rng;

    fn range(start: i32, end: i32, step: i32) -> FrameRange {
        FrameRange::new(start, end, step).unwrap()
    }

    fn parsed(spec: &str) -> Vec<(i32, i32, i32)> {
        parse_frames(spec).unwrap().iter().map(|r| (r.start(), r.end(), r.step())).collect()
    }

    fn refused(spec: &str) -> String {
        parse_frames(spec).unwrap_err().to_string()
    }

    #[test]
    fn the_proto_examples() {
        assert_eq!(parsed("1-100"), [(1, 100, 1)]);
        assert_eq!(parse_frames("1-100").unwrap()[0].frame_count(), 100);
        assert_eq!(parsed("1-100x5"), [(1, 96, 5)]);
        assert_eq!(parse_frames("1-100x5").unwrap()[0].frames().collect::<Vec<_>>()[..3], [1, 6, 11]);
        assert_eq!(parsed("1,3,7-9"), [(1, 1, 1), (3, 3, 1), (7, 9, 1)]);
        assert_eq!(parsed("42"), [(42, 42, 1)]);
        assert_eq!(parsed("1-10x4"), [(1, 9, 4)]);
    }

    #[test]
    fn spaces_around_tokens_are_ignored() {
        assert_eq!(parsed("  1 - 100 x 5 ,  200 ,300-301  "), [(1, 96, 5), (200, 200, 1), (300, 301, 1)]);
        assert_eq!(parsed("0-2147483647X100"), [(0, 2_147_483_600, 100)]);
        assert_eq!(refused("1 0"), "\"1 0\" is not a number");
        assert_eq!(refused("\t1"), "\"\\t1\" is not a number");
    }

    #[test]
    fn boundaries() {
        assert_eq!(parsed("0"), [(0, 0, 1)]);
        assert_eq!(parsed("2147483647"), [(MAX_FRAME, MAX_FRAME, 1)]);
        assert_eq!(parsed("0-2147483647")[0], (0, MAX_FRAME, 1));
        assert_eq!(parse_frames("0-2147483647").unwrap()[0].frame_count(), 1 << 31);
        assert_eq!(refused("2147483648"), "frame 2147483648 is above 2147483647");
        assert_eq!(refused("1-99999999999"), "frame 99999999999 is above 2147483647");
        assert_eq!(parsed("1-2x1"), [(1, 2, 1)]);
        assert_eq!(parsed("1-200x100"), [(1, 101, 100)]);
        assert_eq!(refused("1-200x101"), "step 101 is outside 1..=100");
        assert_eq!(refused("1-200x0"), "step 0 is outside 1..=100");
        assert_eq!(refused("1-200x1000"), "step 1000 is outside 1..=100");
        let items: Vec<String> = (0..205).map(|i| (i * 10).to_string()).collect();
        assert_eq!(parse_frames(&items.join(",")).unwrap().len(), 205);
        let too_long = format!("1,{}", " ".repeat(1022)) + "3";
        assert_eq!(too_long.len(), 1025);
        assert_eq!(refused(&too_long), "must be at most 1024 characters");
        let just_fits = format!("1,{}", " ".repeat(1021)) + "3";
        assert_eq!(parsed(&just_fits), [(1, 1, 1), (3, 3, 1)]);
    }

    #[test]
    fn malformed_specs_are_refused_with_a_reason() {
        assert_eq!(refused(""), "must not be empty");
        assert_eq!(refused("   "), "must not be empty");
        assert_eq!(refused("1,,3"), "item 2 is empty");
        assert_eq!(refused(",1"), "item 1 is empty");
        assert_eq!(refused("1,"), "item 2 is empty");
        assert_eq!(refused("abc"), "\"abc\" is not a number");
        assert_eq!(refused("six"), "\"six\" is not a number");
        assert_eq!(refused("1-b"), "\"b\" is not a number");
        assert_eq!(refused("1-5xz"), "\"z\" is not a number");
        assert_eq!(refused("+5"), "\"+5\" is not a number");
        assert_eq!(refused("1.5"), "\"1.5\" is not a number");
        assert_eq!(refused("1-2-3"), "\"2-3\" is not a number");
        assert_eq!(refused("-"), "\"-\" is not a number");
        assert_eq!(refused("-5"), "negative frame -5");
        assert_eq!(refused("- 5-9"), "negative frame -5");
        assert_eq!(refused("3--5"), "negative frame -5");
        assert_eq!(refused("1-"), "missing frame in \"1-\"");
        assert_eq!(refused("1-5x"), "missing step in \"1-5x\"");
        assert_eq!(refused("9-3"), "reversed range 9-3");
        assert_eq!(refused("5x2"), "step on a single frame \"5x2\"");
        assert_eq!(refused("5 x 2"), "step on a single frame \"5 x 2\"");
        assert_eq!(refused("1-10,5-20"), "overlapping items \"1-10\" and \"5-20\"");
        assert_eq!(refused("1-10,10"), "overlapping items \"1-10\" and \"10\"");
        assert_eq!(refused("1-10x4,9"), "overlapping items \"1-10x4\" and \"9\"");
        assert_eq!(refused("7,3"), "items out of order: \"3\" after \"7\"");
        assert_eq!(refused("1,1"), "overlapping items \"1\" and \"1\"");
        assert_eq!(refused("00000000001"), "frame 00000000001 is above 2147483647");
        assert_eq!(refused("1-5x0100"), "step 0100 is outside 1..=100");
    }

    #[test]
    fn a_stepped_range_may_end_right_before_the_next_item() {
        assert_eq!(parsed("1-10x4,10"), [(1, 9, 4), (10, 10, 1)]);
        assert_eq!(parsed("5-5x3"), [(5, 5, 1)]);
    }

    #[test]
    fn ranges_normalize_count_and_contain() {
        let r = range(1, 10, 4);
        assert_eq!((r.start(), r.end(), r.step(), r.frame_count()), (1, 9, 4, 3));
        assert_eq!(r.frames().collect::<Vec<_>>(), [1, 5, 9]);
        assert_eq!(r.into_iter().collect::<Vec<_>>(), [1, 5, 9]);
        assert!(r.contains(5) && r.contains(9) && r.contains(1));
        assert!(!r.contains(4) && !r.contains(10) && !r.contains(0) && !r.contains(-3));
        assert_eq!((r.nth_frame(0), r.nth_frame(2), r.nth_frame(3)), (Some(1), Some(9), None));
        assert_eq!(range(4, 6, 5), range(4, 4, 1));
        assert_eq!(range(4, 6, 5).to_string(), "4");
        let top = range(MAX_FRAME - 3, MAX_FRAME, 1);
        assert_eq!(top.frames().collect::<Vec<_>>().len(), 4);
        assert_eq!(FrameRange::new(-1, 3, 1), Err(FrameSpecError::Negative("-1".into())));
        assert_eq!(FrameRange::new(3, 2, 1), Err(FrameSpecError::Reversed { start: 3, end: 2 }));
        assert_eq!(FrameRange::new(1, 2, 0), Err(FrameSpecError::StepOutOfRange("0".into())));
        assert_eq!(FrameRange::new(1, 2, 101), Err(FrameSpecError::StepOutOfRange("101".into())));
    }

    #[test]
    fn protobuf_ranges_name_the_field() {
        let r = FrameRange::from_pb("range", &pb::FrameRange { start: 1, end: 10, step: 0 }).unwrap();
        assert_eq!(r.to_pb(), pb::FrameRange { start: 1, end: 10, step: 1 });
        let r = FrameRange::from_pb("range", &pb::FrameRange { start: 1, end: 10, step: 4 }).unwrap();
        assert_eq!(r.to_pb(), pb::FrameRange { start: 1, end: 9, step: 4 });
        let err = FrameRange::from_pb("results[0].range", &pb::FrameRange { start: 9, end: 3, step: 1 }).unwrap_err();
        assert_eq!(err.to_string(), "results[0].range: reversed range 9-3");
    }

    /// Random ascending, non-overlapping ranges.
    fn random_ranges(rng: &mut Rng) -> Vec<FrameRange> {
        let mut ranges = Vec::new();
        let mut next = rng.range(0, 1000);
        for _ in 0..rng.range(1, 12) {
            let start = next;
            let end = if rng.chance(30) { start } else { start + rng.range(0, 5000) };
            let step = if rng.chance(50) { 1 } else { rng.range(1, 100) };
            let start = i32::try_from(start).unwrap_or(MAX_FRAME);
            let end = i32::try_from(end).unwrap_or(MAX_FRAME);
            let r = range(start, end, i32::try_from(step).unwrap());
            ranges.push(r);
            if r.end() == MAX_FRAME {
                break;
            }
            let gap = if rng.chance(10) { 1 << 30 } else { 50 };
            next = i64::from(r.end()) + rng.range(1, gap);
        }
        ranges
    }

    /// Puts random spaces around the tokens of a formatted spec.
    fn with_spaces(spec: &str, rng: &mut Rng) -> String {
        let mut out = String::new();
        for c in spec.chars() {
            let punctuation = matches!(c, ',' | '-' | 'x');
            if punctuation && rng.chance(30) {
                out.push(' ');
            }
            out.push(c);
            if punctuation && rng.chance(30) {
                out.push_str("  ");
            }
        }
        out
    }

    #[test]
    fn property_parse_of_format_round_trips() {
        let mut rng = Rng::new(0x5eed_f4a3);
        for _ in 0..2000 {
            let ranges = random_ranges(&mut rng);
            let spec = format_frames(&ranges);
            assert_eq!(parse_frames(&spec).unwrap(), ranges, "{spec}");
            let spaced = with_spaces(&spec, &mut rng);
            if spaced.len() <= MAX_SPEC_CHARS {
                assert_eq!(parse_frames(&spaced).unwrap(), ranges, "{spaced:?}");
            }
            for r in &ranges {
                assert_eq!(r.frames().count() as u64, u64::from(r.frame_count()));
                assert_eq!(r.frames().last(), Some(r.end()));
            }
        }
    }

    #[test]
    fn property_overlapping_or_out_of_order_items_are_refused() {
        let mut rng = Rng::new(0xbad_04de);
        for _ in 0..2000 {
            let mut ranges = random_ranges(&mut rng);
            let at = rng.range(0, ranges.len() as i64 - 1) as usize;
            let earlier = ranges[at];
            // A range starting at or before a previous item's last frame, anywhere after it.
            let start = rng.range(0, i64::from(earlier.end())) as i32;
            let end = start.saturating_add(rng.range(0, 3000) as i32);
            let bad = range(start, end, rng.range(1, 100) as i32);
            let insert_at = rng.range(at as i64 + 1, ranges.len() as i64) as usize;
            ranges.insert(insert_at, bad);
            let spec = format_frames(&ranges);
            match parse_frames(&spec) {
                Err(FrameSpecError::Overlapping { .. } | FrameSpecError::OutOfOrder { .. }) => {}
                other => panic!("{spec}: {other:?}"),
            }
        }
    }
}
