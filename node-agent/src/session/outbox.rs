//! The on-disk outbox: task results, frame reports and crash reports stay here until the
//! orchestrator acks them (it acks once they are in its database). A lost connection or an agent
//! restart resends them on the next stream; the orchestrator deduplicates, so a message sent
//! twice is harmless and a message never sent is impossible.
//!
//! Each message is one file, `<key>.msg`: the protobuf encoding of a `SessionRequest` with no
//! sequence number (one is given at each send). Files are written to a temporary name, synced and
//! renamed, so a crash leaves either the whole message or none.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use flatrender_proto::flatrender::agent::v1::SessionRequest;
use flatrender_proto::flatrender::agent::v1::session_request::Payload;
use prost::Message;

const EXTENSION: &str = "msg";

/// Messages waiting for their ack.
#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
    /// By key, in key order (results sort after frames of the same task: "frames." < "result.").
    waiting: BTreeMap<String, Payload>,
    /// Which key each sent sequence number carried, on the current stream.
    in_flight: HashMap<u64, String>,
}

impl Outbox {
    /// Opens (creating) the outbox in `dir` and loads what an earlier run left. An unreadable
    /// message is moved aside (`.bad`) rather than blocking the rest.
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut waiting = BTreeMap::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let Some(key) = key_of(&path) else { continue };
            let decoded = std::fs::read(&path).ok().and_then(|b| SessionRequest::decode(b.as_slice()).ok());
            match decoded.and_then(|m| m.payload) {
                Some(payload) => {
                    waiting.insert(key, payload);
                }
                None => {
                    tracing::warn!(path = %path.display(), "an outbox message does not decode; set aside");
                    std::fs::rename(&path, path.with_extension("bad"))?;
                }
            }
        }
        Ok(Self { dir: dir.to_path_buf(), waiting, in_flight: HashMap::new() })
    }

    /// Keeps `payload` under `key` (replacing an earlier message of that key) until acked: in
    /// memory, and on disk for the next run unless writing fails (the error says so).
    pub fn put(&mut self, key: &str, payload: Payload) -> io::Result<()> {
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad outbox key {key:?}")));
        }
        let bytes = SessionRequest { seq: 0, sent_at: None, payload: Some(payload.clone()) }.encode_to_vec();
        // Kept in memory even when the disk refuses it: it is still resent on this run.
        self.waiting.insert(key.to_string(), payload);
        let path = self.path(key);
        let temp = path.with_extension("tmp");
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, &path)
    }

    /// Whether a message whose key starts with `prefix` waits.
    pub fn has_prefix(&self, prefix: &str) -> bool {
        self.waiting.range(prefix.to_string()..).next().is_some_and(|(key, _)| key.starts_with(prefix))
    }

    /// Everything waiting, in key order, to send on a new stream.
    pub fn waiting(&self) -> impl Iterator<Item = (&str, &Payload)> {
        self.waiting.iter().map(|(k, p)| (k.as_str(), p))
    }

    /// Whether a message of `key` waits.
    pub fn contains(&self, key: &str) -> bool {
        self.waiting.contains_key(key)
    }

    /// Notes that the message of `key` went out as `seq` on the current stream.
    pub fn sent(&mut self, key: &str, seq: u64) {
        self.in_flight.insert(seq, key.to_string());
    }

    /// A new stream: sequence numbers start again, everything waiting is sent again.
    pub fn new_stream(&mut self) {
        self.in_flight.clear();
    }

    /// The orchestrator acked (or finally refused) the message sent as `seq`: it is removed.
    /// Returns its key, or `None` for a seq that carried no outbox message.
    pub fn settle(&mut self, seq: u64) -> io::Result<Option<String>> {
        let Some(key) = self.in_flight.remove(&seq) else { return Ok(None) };
        self.remove(&key)?;
        Ok(Some(key))
    }

    /// The orchestrator refused the message sent as `seq` for now: it stays, to be sent again.
    /// Returns its key, or `None` for a seq that carried no outbox message.
    pub fn unsend(&mut self, seq: u64) -> Option<String> {
        self.in_flight.remove(&seq)
    }

    /// The message waiting under `key`.
    pub fn get(&self, key: &str) -> Option<&Payload> {
        self.waiting.get(key)
    }

    /// Drops the message of `key`, sent or not.
    pub fn remove(&mut self, key: &str) -> io::Result<()> {
        // A later send of the same key may still be in flight; that one's ack finds it gone.
        self.in_flight.retain(|_, k| k != key);
        if self.waiting.remove(key).is_some() {
            match std::fs::remove_file(self.path(key)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.{EXTENSION}"))
    }
}

fn key_of(path: &Path) -> Option<String> {
    (path.extension()? == EXTENSION).then(|| path.file_stem()?.to_str().map(str::to_string))?
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use flatrender_proto::flatrender::agent::v1::{CrashReport, TaskResult};

    use super::*;

    fn result(task: &str) -> Payload {
        Payload::TaskResult(TaskResult { task_id: task.into(), lease_epoch: 7, ..TaskResult::default() })
    }

    #[test]
    fn messages_survive_a_restart_until_acked() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::open(dir.path()).unwrap();
        outbox.put("result.t1.7", result("t1")).unwrap();
        outbox.put("crash.c1", Payload::CrashReport(CrashReport::default())).unwrap();
        outbox.sent("result.t1.7", 4);
        drop(outbox);

        // A restart: both are still there, to be sent again.
        let mut outbox = Outbox::open(dir.path()).unwrap();
        let keys: Vec<&str> = outbox.waiting().map(|(k, _)| k).collect();
        assert_eq!(keys, ["crash.c1", "result.t1.7"]);
        assert_eq!(outbox.waiting().nth(1).unwrap().1, &result("t1"));
        // Sequence numbers of the old stream mean nothing on the new one.
        assert_eq!(outbox.settle(4).unwrap(), None);
        outbox.sent("result.t1.7", 2);
        outbox.sent("result.t1.7", 5);
        assert_eq!(outbox.settle(2).unwrap().as_deref(), Some("result.t1.7"));
        assert_eq!(outbox.settle(5).unwrap(), None, "the resend's ack finds it settled");
        assert!(!outbox.contains("result.t1.7"));
        drop(outbox);
        let outbox = Outbox::open(dir.path()).unwrap();
        assert_eq!(outbox.waiting().map(|(k, _)| k).collect::<Vec<_>>(), ["crash.c1"]);
    }

    #[test]
    fn a_tasks_frame_reports_are_found_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::open(dir.path()).unwrap();
        outbox.put("frames.t1.7.aaa", result("t1")).unwrap();
        outbox.put("result.t1.7", result("t1")).unwrap();
        assert!(outbox.has_prefix("frames.t1.7."));
        assert!(!outbox.has_prefix("frames.t1.8."), "another epoch");
        assert!(!outbox.has_prefix("frames.t2.7."), "another task");
        outbox.remove("frames.t1.7.aaa").unwrap();
        assert!(!outbox.has_prefix("frames.t1.7."));
    }

    #[test]
    fn a_damaged_message_is_set_aside_and_bad_keys_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("result.x.1.msg"), b"\xff\xff\xff").unwrap();
        std::fs::write(dir.path().join("leftover.tmp"), b"half").unwrap();
        let mut outbox = Outbox::open(dir.path()).unwrap();
        assert_eq!(outbox.waiting().count(), 0);
        assert!(dir.path().join("result.x.1.bad").exists());
        assert!(outbox.put("../escape", result("t")).is_err());
        assert!(outbox.put("", result("t")).is_err());
    }
}
