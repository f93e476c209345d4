//! Crash reports: when After Effects dies or hangs during a task, the orchestrator hears of it
//! with the task, so it can count a node's crashes (and quarantine one that keeps crashing) and
//! an operator can read what happened. The report After Effects' crash reporter wrote is taken
//! from the watched crash-report folders; one too large for the message is uploaded whole.

use std::time::{Duration, Instant};

use flatrender_proto::flatrender::agent::v1 as agent_pb;
use flatrender_proto::flatrender::render::v1 as pb;

use super::{Resources, TaskContext};
use crate::crash_watch::CrashFile;
use crate::session::tasks::TaskEvent;

/// The protocol's limits.
const MAX_MESSAGE_CHARS: usize = 500;
const MAX_LOG_TAIL_BYTES: usize = 64 * 1024;

/// What is known of a crash when the run ends.
#[derive(Debug)]
pub struct Crash {
    pub kind: pb::CrashKind,
    /// When the run started: reports written since then are this run's.
    pub run_started: Instant,
    /// The renderer's process id: a report that names it is this run's.
    pub pid: Option<u32>,
    pub ae_version: String,
    pub process_name: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// The verdict's message, used when no crash report says better.
    pub message: String,
    pub log_tail: String,
}

/// Collects the crash reporter's file (after the task's result went out: waiting for it must not
/// hold the result back) and sends the crash report.
pub async fn report(resources: &Resources, ctx: &TaskContext, crash: Crash) {
    // A hang leaves no crash report; only a crash is worth waiting for one: one that names this
    // run's process, else one that names no other run's (see crash_watch).
    let file = match (&resources.config.crash_watch, crash.kind) {
        (Some(watch), pb::CrashKind::AeCrash) => {
            watch.reports_for(crash.run_started, resources.config.crash_settle, crash.pid).await.into_iter().next()
        }
        _ => None,
    };
    let crash_report_file_id = match &file {
        Some(file) if file.truncated => upload(resources, file).await,
        _ => String::new(),
    };
    let message = file.as_ref().map_or(crash.message.as_str(), |f| f.summary.as_str());
    let report = agent_pb::CrashReport {
        crash_id: uuid::Uuid::new_v4().to_string(),
        kind: crash.kind as i32,
        task_id: ctx.task_id.clone(),
        lease_epoch: ctx.lease_epoch,
        ae_version: crash.ae_version,
        process_name: crash.process_name,
        exit_code: crash.exit_code,
        signal: crash.signal,
        occurred_at: Some(std::time::SystemTime::now().into()),
        message: message.chars().take(MAX_MESSAGE_CHARS).collect(),
        report_text: file.map(|f| f.text).unwrap_or_default(),
        crash_report_file_id,
        log_tail: tail(&crash.log_tail, MAX_LOG_TAIL_BYTES).to_string(),
    };
    let _ = ctx.events.send(TaskEvent::Crash(report));
}

/// The whole report (or minidump), stored apart from the message; a failure only loses the
/// part of the report beyond the message's 256 KiB.
async fn upload(resources: &Resources, file: &CrashFile) -> String {
    let header = agent_pb::UploadHeader {
        // Not the task's: its lease ended with its result, and a crash is the node's fact.
        task_id: String::new(),
        lease_epoch: 0,
        kind: agent_pb::ObjectKind::CrashReport as i32,
        frame: -1,
        file_name: file.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        content_type: if file.binary { "application/octet-stream" } else { "text/plain" }.into(),
        size_bytes: 0,
        sha256: String::new(),
    };
    match resources.transfers.upload_file(header, &file.path).await {
        Ok(stored) => stored.file_id,
        Err(error) => {
            tracing::warn!(path = %file.path.display(), %error, "a crash report could not be uploaded");
            String::new()
        }
    }
}

/// The last `max` bytes of `text`, on a character boundary.
fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// How long the crash reporter gets to finish writing, by default.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    #[test]
    fn the_tail_keeps_whole_characters() {
        assert_eq!(super::tail("abcdef", 3), "def");
        assert_eq!(super::tail("aé", 1), "");
        assert_eq!(super::tail("ab", 10), "ab");
    }
}
