//! Outbox messages the orchestrator refused on a live stream, and what to do about it before the
//! next stream: RATE_LIMITED and UNAVAILABLE are sent again after a jittered backoff of their own;
//! an OVERSIZED message is made smaller (its log or report text cut, a frame report split) and
//! sent again at once. Every message is also made to fit the `max_message_bytes` the Welcome
//! announced before it first goes out, so a large log tail is cut here rather than refused there
//! (one kept under an earlier, larger limit is cut once the orchestrator refuses it).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use flatrender_proto::flatrender::agent::v1::SessionRequest;
use flatrender_proto::flatrender::agent::v1::session_request::Payload;
use prost::Message;

use super::backoff::Backoff;

/// Room for the envelope around a payload (seq, timestamp, field tags).
const ENVELOPE_BYTES: usize = 64;

/// When each refused message goes again.
#[derive(Debug, Default)]
pub struct Resends {
    /// By outbox key: the message's own backoff and when it is due (`None`: sent again, not due
    /// unless refused again).
    due: HashMap<String, (Backoff, Option<Instant>)>,
}

impl Resends {
    /// The message of `key` was refused for now: it goes again after its next backoff delay.
    pub fn schedule(&mut self, key: &str, now: Instant) -> Duration {
        let (backoff, at) = self.due.entry(key.to_string()).or_insert_with(|| (Backoff::new(), None));
        let delay = backoff.next_delay();
        *at = Some(now + delay);
        delay
    }

    /// The earliest due resend.
    pub fn next_due(&self) -> Option<Instant> {
        self.due.values().filter_map(|(_, at)| *at).min()
    }

    /// The keys due by `now`, in key order. Their backoff is kept (a second refusal draws its
    /// wait from a larger ceiling) until [`Resends::forget`].
    pub fn take_due(&mut self, now: Instant) -> Vec<String> {
        let mut keys = Vec::new();
        for (key, (_, at)) in &mut self.due {
            if at.is_some_and(|at| at <= now) {
                *at = None;
                keys.push(key.clone());
            }
        }
        keys.sort();
        keys
    }

    /// The message was settled (acked or refused for good).
    pub fn forget(&mut self, key: &str) {
        self.due.remove(key);
    }

    /// A new stream sends everything waiting anyway.
    pub fn clear(&mut self) {
        self.due.clear();
    }
}

/// The bytes `payload` takes in an envelope.
pub fn envelope_len(payload: &Payload) -> usize {
    SessionRequest { seq: u64::MAX, sent_at: None, payload: Some(payload.clone()) }.encoded_len() + ENVELOPE_BYTES
}

/// `payload` made to fit `limit` bytes: as it is when it fits, else cut or split until every part
/// fits. `None` when it cannot be made to fit (nothing left to cut): sending it would only be
/// refused again.
pub fn fit(payload: Payload, limit: usize) -> Option<Vec<Payload>> {
    let mut done = Vec::new();
    let mut todo = vec![payload];
    while let Some(next) = todo.pop() {
        if envelope_len(&next) <= limit {
            done.push(next);
            continue;
        }
        // Pushed last part first, so the first part is done first: order is kept.
        todo.extend(shrink(&next)?.into_iter().rev());
    }
    Some(done)
}

/// One step smaller, as one message with less text or two that together say the same: a result's
/// log tail halved (its end kept, where aerender's last words are) and its error message cut to
/// 500 characters; the larger of a crash report's texts halved (the report's start kept, where
/// the crashed thread is; the log's end); a frame report split in two. `None` when nothing is
/// left to cut.
pub fn shrink(payload: &Payload) -> Option<Vec<Payload>> {
    match payload {
        Payload::TaskResult(result) => {
            let mut smaller = result.clone();
            let message_cut = smaller.error.as_mut().is_some_and(|e| cut_to_chars(&mut e.message, 500));
            let tail_cut = halve_keeping_end(&mut smaller.log_tail);
            (message_cut || tail_cut).then(|| vec![Payload::TaskResult(smaller)])
        }
        Payload::CrashReport(crash) => {
            // The larger text is cut: the orchestrator's limits are per field.
            let mut smaller = crash.clone();
            let cut = if smaller.report_text.len() >= smaller.log_tail.len() {
                halve_keeping_start(&mut smaller.report_text)
            } else {
                halve_keeping_end(&mut smaller.log_tail)
            };
            cut.then(|| vec![Payload::CrashReport(smaller)])
        }
        Payload::FrameReport(report) if report.frames.len() > 1 => {
            let (mut first, mut second) = (report.clone(), report.clone());
            let half = report.frames.len() / 2;
            first.frames.truncate(half);
            second.frames.drain(..half);
            Some(vec![Payload::FrameReport(first), Payload::FrameReport(second)])
        }
        _ => None,
    }
}

/// Keeps the last half of `text` (on a character boundary); false when it was empty.
fn halve_keeping_end(text: &mut String) -> bool {
    if text.is_empty() {
        return false;
    }
    let mut start = text.len().div_ceil(2);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text.drain(..start);
    true
}

/// Keeps the first half of `text` (on a character boundary); false when it was empty.
fn halve_keeping_start(text: &mut String) -> bool {
    if text.is_empty() {
        return false;
    }
    let mut end = text.len() / 2;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    true
}

/// Cuts `text` to `max` characters; false when it was no longer.
fn cut_to_chars(text: &mut String, max: usize) -> bool {
    match text.char_indices().nth(max) {
        Some((end, _)) => {
            text.truncate(end);
            true
        }
        None => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use flatrender_proto::flatrender::agent::v1::{CrashReport, FrameOutput, FrameReport, TaskResult};
    use flatrender_proto::flatrender::render::v1 as pb;

    use super::*;

    fn result(log_tail: &str, message: &str) -> Payload {
        Payload::TaskResult(TaskResult {
            task_id: "t".into(),
            lease_epoch: 3,
            log_tail: log_tail.into(),
            error: Some(pb::RenderError { message: message.into(), ..Default::default() }),
            ..Default::default()
        })
    }

    #[test]
    fn a_message_that_fits_is_left_alone() {
        let payload = result("the end", "why");
        assert_eq!(fit(payload.clone(), 1024), Some(vec![payload]));
    }

    #[test]
    fn a_long_result_keeps_the_end_of_its_log_and_fits() {
        let log: String = (0..4000).map(|i| format!("line {i}\n")).collect();
        let fitted = fit(result(&log, &"é".repeat(2000)), 8 * 1024).unwrap();
        assert_eq!(fitted.len(), 1);
        let Payload::TaskResult(r) = &fitted[0] else { panic!("a result") };
        assert!(envelope_len(&fitted[0]) <= 8 * 1024);
        assert!(r.log_tail.ends_with("line 3999\n") && log.ends_with(&r.log_tail), "the end is kept");
        assert_eq!(r.error.as_ref().unwrap().message.chars().count(), 500);
        assert_eq!((r.task_id.as_str(), r.lease_epoch), ("t", 3), "the rest is untouched");
    }

    #[test]
    fn a_crash_report_keeps_the_start_of_its_text() {
        let text = format!("Process: aerender [42]\n{}", "x".repeat(100_000));
        let crash = Payload::CrashReport(CrashReport { report_text: text.clone(), ..Default::default() });
        let fitted = fit(crash, 16 * 1024).unwrap();
        let Payload::CrashReport(c) = &fitted[0] else { panic!("a crash report") };
        assert!(c.report_text.starts_with("Process: aerender [42]") && text.starts_with(&c.report_text));
    }

    #[test]
    fn a_frame_report_is_split_in_order() {
        let frames: Vec<FrameOutput> =
            (0..16).map(|f| FrameOutput { frame: f, file_id: "f".repeat(200), ..Default::default() }).collect();
        let report =
            Payload::FrameReport(FrameReport { task_id: "t".into(), lease_epoch: 1, frames, ..Default::default() });
        let limit = envelope_len(&report) / 3;
        let parts = fit(report, limit).unwrap();
        assert!(parts.len() >= 3 && parts.iter().all(|p| envelope_len(p) <= limit));
        let order: Vec<i32> = parts
            .iter()
            .flat_map(|p| match p {
                Payload::FrameReport(r) => r.frames.iter().map(|f| f.frame).collect::<Vec<_>>(),
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(order, (0..16).collect::<Vec<_>>(), "every frame once, in order");
    }

    #[test]
    fn what_cannot_shrink_is_given_up() {
        let frame = FrameOutput { frame: 1, file_id: "f".repeat(5000), ..Default::default() };
        let report = Payload::FrameReport(FrameReport {
            task_id: "t".into(),
            lease_epoch: 1,
            frames: vec![frame],
            ..Default::default()
        });
        assert_eq!(fit(report, 1024), None);
        assert_eq!(fit(result("", ""), 10), None);
    }

    #[test]
    fn refused_messages_come_due_after_a_growing_backoff() {
        let mut resends = Resends::default();
        let now = Instant::now();
        let first = resends.schedule("result.t.1", now);
        assert!(first <= Duration::from_millis(500) && first >= Duration::from_millis(50), "{first:?}");
        assert_eq!(resends.next_due(), Some(now + first));
        assert!(resends.take_due(now).is_empty(), "not yet");
        assert_eq!(resends.take_due(now + first), ["result.t.1"]);
        assert!(resends.take_due(now + Duration::from_secs(60)).is_empty(), "taken once until refused again");
        let second = resends.schedule("result.t.1", now);
        assert!(second >= Duration::from_millis(100), "the second wait is drawn from a larger ceiling: {second:?}");
        resends.forget("result.t.1");
        assert_eq!(resends.next_due(), None);
    }
}
