//! ffmpeg's `-progress` output: blocks of `key=value` lines, each ended by
//! `progress=continue` (or `progress=end`). Everything else it prints (errors on stderr, which
//! reach us through the same callback) is kept as a short tail for the error message.

use std::collections::VecDeque;
use std::time::Duration;

/// How many lines of other output are kept for an error message.
const TAIL_LINES: usize = 20;

/// One progress report.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Progress {
    /// Output frames encoded so far.
    pub frames: u64,
    /// The frames the output will have.
    pub expected_frames: u64,
    /// Output time encoded so far.
    pub out_time: Duration,
    /// 0.0..=100.0, from the frames.
    pub percent: f64,
    /// The last report (`progress=end`).
    pub done: bool,
}

/// Splits output into lines and turns `-progress` blocks into [`Progress`].
#[derive(Debug, Default)]
pub struct ProgressParser {
    expected_frames: u64,
    partial: Vec<u8>,
    frames: u64,
    out_time: Duration,
    tail: VecDeque<String>,
}

impl ProgressParser {
    pub fn new(expected_frames: u64) -> Self {
        Self { expected_frames, ..Self::default() }
    }

    /// Takes a piece of output (not necessarily whole lines); calls `report` at each block's end.
    pub fn feed(&mut self, bytes: &[u8], mut report: impl FnMut(Progress)) {
        self.partial.extend_from_slice(bytes);
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line).trim().to_owned();
            if let Some(progress) = self.line(&line) {
                report(progress);
            }
        }
    }

    fn line(&mut self, line: &str) -> Option<Progress> {
        if line.is_empty() {
            return None;
        }
        let Some((key, value)) = line.split_once('=').filter(|(key, _)| is_progress_key(key)) else {
            if self.tail.len() == TAIL_LINES {
                self.tail.pop_front();
            }
            self.tail.push_back(line.to_owned());
            return None;
        };
        let value = value.trim();
        match key {
            "frame" => self.frames = value.parse().unwrap_or(self.frames),
            // "N/A" before the first packet.
            "out_time_us" => {
                if let Ok(us) = value.parse::<u64>() {
                    self.out_time = Duration::from_micros(us);
                }
            }
            "progress" => {
                let percent = if self.expected_frames == 0 {
                    0.0
                } else {
                    (self.frames as f64 * 100.0 / self.expected_frames as f64).min(100.0)
                };
                return Some(Progress {
                    frames: self.frames,
                    expected_frames: self.expected_frames,
                    out_time: self.out_time,
                    percent,
                    done: value == "end",
                });
            }
            _ => {}
        }
        None
    }

    /// The last lines that were not progress (ffmpeg's errors), oldest first.
    pub fn tail(&self) -> String {
        let mut lines: Vec<&str> = self.tail.iter().map(String::as_str).collect();
        let rest = String::from_utf8_lossy(&self.partial);
        if !rest.trim().is_empty() {
            lines.push(rest.trim());
        }
        lines.join("\n")
    }
}

fn is_progress_key(key: &str) -> bool {
    matches!(
        key,
        "frame"
            | "fps"
            | "bitrate"
            | "total_size"
            | "out_time_us"
            | "out_time_ms"
            | "out_time"
            | "dup_frames"
            | "drop_frames"
            | "speed"
            | "progress"
    ) || key.starts_with("stream_")
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: &str = "frame=15\nfps=0.00\nstream_0_0_q=28.0\nbitrate=N/A\ntotal_size=48\n\
                         out_time_us=500000\nout_time_ms=500000\nout_time=00:00:00.500000\n\
                         dup_frames=0\ndrop_frames=0\nspeed=1x\nprogress=continue\n";

    #[test]
    fn blocks_become_reports_even_when_split_anywhere() {
        let mut parser = ProgressParser::new(60);
        let mut reports = Vec::new();
        let text = format!("{BLOCK}frame=60\nout_time_us=N/A\nprogress=end\n");
        for piece in text.as_bytes().chunks(7) {
            parser.feed(piece, |p| reports.push(p));
        }
        assert_eq!(reports.len(), 2);
        assert_eq!(reports[0].frames, 15);
        assert_eq!(reports[0].out_time, Duration::from_millis(500));
        assert!((reports[0].percent - 25.0).abs() < 1e-9 && !reports[0].done);
        assert_eq!((reports[1].frames, reports[1].percent, reports[1].done), (60, 100.0, true));
        assert_eq!(reports[1].out_time, Duration::from_millis(500), "N/A keeps the last time");
        assert_eq!(parser.tail(), "");
    }

    #[test]
    fn other_output_is_the_tail() {
        let mut parser = ProgressParser::new(10);
        parser.feed(b"[png @ 0x1] Invalid PNG signature\nframe=1\nError opening input files: x\nunfinished", |_| {});
        assert_eq!(parser.tail(), "[png @ 0x1] Invalid PNG signature\nError opening input files: x\nunfinished");
        for i in 0..30 {
            parser.feed(format!("line {i}\n").as_bytes(), |_| {});
        }
        assert!(parser.tail().starts_with("line 10\n") || parser.tail().starts_with("line 11\n"));
    }
}
