//! Splitting segments into chunks: contiguous runs of a segment's frames, one aerender run each.
//!
//! A chunk of N frames of "1-100x5" covers 1, 6, ... (N frames of the segment, keeping its step).
//! Chunks never cross segment boundaries, the last chunk of a segment may be shorter, and the
//! chunks of a segment hold exactly its frames, in order.
//!
//! The size is the job's `chunk_size_frames`, or, when the job sets `chunk_target_ms` and the
//! median render time per frame of its template and composition is known, the frames that take
//! about that long: `clamp(target / ms_per_frame, 1, max)`.

use crate::model::frames::FrameRange;

/// Most frames in one task (agent `RenderSpec.frames`: "At most 10,000 frames in all").
pub const MAX_FRAMES_PER_TASK: u32 = 10_000;

/// How a job sizes its chunks (`render_jobs.chunk_size_frames`, `chunk_target_ms`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkPolicy {
    /// Frames per chunk while frame timings are unknown (clamped to 1..=[`MAX_FRAMES_PER_TASK`]).
    pub size_frames: u32,
    /// Aim for chunks of this much render time once frame timings are known.
    pub target_ms: Option<u32>,
}

impl ChunkPolicy {
    /// The policy stored in a job row; out-of-range values (which the CHECKs refuse anyway) are
    /// clamped rather than trusted.
    pub fn from_db(chunk_size_frames: i32, chunk_target_ms: Option<i32>) -> Self {
        Self {
            size_frames: u32::try_from(chunk_size_frames).unwrap_or(1),
            target_ms: chunk_target_ms.and_then(|ms| u32::try_from(ms).ok()).filter(|&ms| ms > 0),
        }
    }

    /// Frames per chunk, given the median render time per frame when it is known.
    pub fn frames_per_chunk(&self, median_ms_per_frame: Option<f64>) -> u32 {
        let fixed = self.size_frames.clamp(1, MAX_FRAMES_PER_TASK);
        match (self.target_ms, median_ms_per_frame) {
            (Some(target), Some(ms)) => frames_for_target(target, ms, MAX_FRAMES_PER_TASK).unwrap_or(fixed),
            _ => fixed,
        }
    }
}

/// Frames that render in about `target_ms` at `ms_per_frame`: `target / ms_per_frame` rounded
/// down, clamped to `1..=max_frames` (itself clamped to 1..=[`MAX_FRAMES_PER_TASK`]). `None`
/// when the timing is not a positive finite number (unknown, so the fixed size applies).
pub fn frames_for_target(target_ms: u32, ms_per_frame: f64, max_frames: u32) -> Option<u32> {
    if !(ms_per_frame.is_finite() && ms_per_frame > 0.0) {
        return None;
    }
    let max = max_frames.clamp(1, MAX_FRAMES_PER_TASK);
    let frames = (f64::from(target_ms) / ms_per_frame).floor();
    // Clamped into 1..=max before the cast, so the cast is exact.
    Some(frames.clamp(1.0, f64::from(max)) as u32)
}

/// The chunks of one segment's range, `frames_per_chunk` frames each (0 is read as 1), the last
/// one possibly shorter.
pub fn split(range: FrameRange, frames_per_chunk: u32) -> Chunks {
    Chunks { range, per_chunk: frames_per_chunk.max(1), next: 0 }
}

/// Iterator of [`split`].
#[derive(Clone, Debug)]
pub struct Chunks {
    range: FrameRange,
    per_chunk: u32,
    /// Index (in the range's frames) of the next chunk's first frame.
    next: u32,
}

impl Iterator for Chunks {
    type Item = FrameRange;

    fn next(&mut self) -> Option<FrameRange> {
        let count = self.range.frame_count();
        if self.next >= count {
            return None;
        }
        let last = self.next.saturating_add(self.per_chunk - 1).min(count - 1);
        let start = self.range.nth_frame(self.next)?;
        let end = self.range.nth_frame(last)?;
        self.next = last.saturating_add(1);
        // Frames of a valid range: never refused.
        FrameRange::new(start, end, self.range.step()).ok()
    }
}

/// One chunk of a job: which segment (its position) and which frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Position of the segment in the job (0-based).
    pub segment_index: usize,
    /// The chunk's frames.
    pub range: FrameRange,
}

/// Every chunk of a job's segments, in playback order.
pub fn split_segments(segments: &[FrameRange], frames_per_chunk: u32) -> Vec<Chunk> {
    segments
        .iter()
        .enumerate()
        .flat_map(|(segment_index, &range)| {
            split(range, frames_per_chunk).map(move |range| Chunk { segment_index, range })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::frames::{MAX_FRAME, parse_frames};
    use crate::model::testing::Rng;

    fn chunks(spec: &str, n: u32) -> Vec<String> {
        let range = parse_frames(spec).unwrap()[0];
        split(range, n).map(|c| c.to_string()).collect()
    }

    #[test]
    fn chunks_keep_the_step() {
        assert_eq!(chunks("1-100x5", 3), ["1-11x5", "16-26x5", "31-41x5", "46-56x5", "61-71x5", "76-86x5", "91-96x5"]);
        assert_eq!(chunks("1-100", 50), ["1-50", "51-100"]);
        assert_eq!(chunks("1-100", 30), ["1-30", "31-60", "61-90", "91-100"]);
        assert_eq!(chunks("1-100x5", 1)[..2], ["1", "6"]);
        assert_eq!(chunks("7", 10), ["7"]);
        assert_eq!(chunks("0-9", 0), chunks("0-9", 1));
        assert_eq!(chunks("0-9", u32::MAX), ["0-9"]);
    }

    #[test]
    fn the_top_of_the_frame_range_is_reachable() {
        let range = FrameRange::new(MAX_FRAME - 25, MAX_FRAME, 1).unwrap();
        let parts: Vec<_> = split(range, 10).collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[2].end(), MAX_FRAME);
        assert_eq!(parts[2].frame_count(), 6);
    }

    #[test]
    fn segments_are_never_crossed() {
        let segments = parse_frames("1,3,7-9").unwrap();
        let all = split_segments(&segments, 2);
        let summary: Vec<_> = all.iter().map(|c| (c.segment_index, c.range.to_string())).collect();
        assert_eq!(summary, [(0, "1".to_owned()), (1, "3".into()), (2, "7-8".into()), (2, "9".into())]);
    }

    #[test]
    fn target_time_sizes_chunks_once_timings_are_known() {
        assert_eq!(frames_for_target(60_000, 2_000.0, 100), Some(30));
        assert_eq!(frames_for_target(60_000, 7_000.0, 100), Some(8));
        assert_eq!(frames_for_target(60_000, 120_000.0, 100), Some(1));
        assert_eq!(frames_for_target(60_000, 0.5, 100), Some(100));
        assert_eq!(frames_for_target(60_000, 0.5, 0), Some(1));
        assert_eq!(frames_for_target(u32::MAX, 1e-9, u32::MAX), Some(MAX_FRAMES_PER_TASK));
        for unknown in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(frames_for_target(60_000, unknown, 100), None);
        }
        let policy = ChunkPolicy { size_frames: 10, target_ms: Some(60_000) };
        assert_eq!(policy.frames_per_chunk(None), 10);
        assert_eq!(policy.frames_per_chunk(Some(2_000.0)), 30);
        assert_eq!(policy.frames_per_chunk(Some(f64::NAN)), 10);
        let fixed = ChunkPolicy { size_frames: 10, target_ms: None };
        assert_eq!(fixed.frames_per_chunk(Some(2_000.0)), 10);
        assert_eq!(ChunkPolicy { size_frames: 0, target_ms: None }.frames_per_chunk(None), 1);
        assert_eq!(ChunkPolicy { size_frames: 100_000, target_ms: None }.frames_per_chunk(None), MAX_FRAMES_PER_TASK);
        assert_eq!(ChunkPolicy::from_db(25, Some(90_000)), ChunkPolicy { size_frames: 25, target_ms: Some(90_000) });
        assert_eq!(ChunkPolicy::from_db(-3, Some(0)), ChunkPolicy { size_frames: 1, target_ms: None });
    }

    #[test]
    fn property_chunks_partition_the_range() {
        let mut rng = Rng::new(0x0c4a_24b5);
        for _ in 0..3000 {
            let big = rng.chance(20);
            let start = rng.range(0, i64::from(MAX_FRAME)) as i32;
            let end = start.saturating_add(rng.range(0, if big { 1_000_000 } else { 500 }) as i32);
            let range = FrameRange::new(start, end, rng.range(1, 100) as i32).unwrap();
            let n = if big { rng.range(500, 20_000) } else { rng.range(1, 40) } as u32;
            let parts: Vec<_> = split(range, n).collect();
            let total: u64 = parts.iter().map(|c| u64::from(c.frame_count())).sum();
            assert_eq!(total, u64::from(range.frame_count()), "{range} by {n}");
            assert_eq!(parts.first().map(FrameRange::start), Some(range.start()));
            assert_eq!(parts.last().map(FrameRange::end), Some(range.end()));
            for (i, part) in parts.iter().enumerate() {
                let last = i + 1 == parts.len();
                assert!(part.frame_count() == n || (last && part.frame_count() < n), "{range} by {n}: {part}");
                assert!(part.frame_count() == 1 || part.step() == range.step());
                assert!(range.contains(part.start()) && range.contains(part.end()));
                if let Some(next) = parts.get(i + 1) {
                    assert_eq!(i64::from(next.start()), i64::from(part.end()) + i64::from(range.step()));
                }
            }
        }
    }
}
