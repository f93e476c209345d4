//! Template bundles for the cache, fetched with `DownloadObject` on behalf of the tasks that name
//! them. The orchestrator serves a bundle only under the lease of a task that needs it, and a
//! download is cut off when that lease ends. One download may serve several tasks (the cache
//! fetches a bundle once), so it runs under any of their leases: the newest first, and when that
//! lease ends — at the open or midway — it goes on from the same byte under another task's. Each
//! task's download time limit counts the same way: a download that runs past one task's deadline
//! goes on for the tasks whose deadlines are later, and is given up when none is left.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use flatrender_proto::flatrender::agent::v1 as agent_pb;
use futures_util::{Stream, StreamExt, TryStreamExt};
use tokio::time::Instant;
use tokio_util::io::StreamReader;

use crate::cache::{BundleRef, Fetch, FetchBody};
use crate::transfer::{Object, TaskLease, TransferError, Transfers};

/// The bytes of one object from an offset on, as the orchestrator sends them.
pub type Parts = Pin<Box<dyn Stream<Item = Result<Bytes, tonic::Status>> + Send>>;

/// Opens a file download under a task's lease (the orchestrator's `DownloadObject`; a fake in
/// tests).
pub trait Open: Clone + Send + Sync + 'static {
    fn open(
        &self,
        lease: &TaskLease,
        file_id: &str,
        offset: u64,
    ) -> impl Future<Output = Result<Parts, tonic::Status>> + Send;
}

impl Open for Transfers {
    async fn open(&self, lease: &TaskLease, file_id: &str, offset: u64) -> Result<Parts, tonic::Status> {
        let (_, parts) =
            Transfers::open(self, lease, &Object::File(file_id.to_string()), offset).await.map_err(|e| match e {
                TransferError::Refused(status) => status,
                other => tonic::Status::unavailable(other.to_string()),
            })?;
        Ok(Box::pin(parts.try_filter_map(|part| async move {
            Ok(match part.part {
                Some(agent_pb::download_object_response::Part::Data(data)) => Some(data),
                _ => None,
            })
        })))
    }
}

/// A task's claim on a bundle: its lease may carry the bundle's download until this is dropped.
#[derive(Clone, Debug)]
struct Need {
    id: u64,
    lease: TaskLease,
    file_id: String,
    /// The task's download time limit ends here.
    deadline: Instant,
}

#[derive(Default)]
struct Needs {
    next_id: u64,
    /// Per bundle SHA-256, oldest first.
    by_sha256: HashMap<String, Vec<Need>>,
}

/// Which tasks need which bundle, and the way to download it under their leases.
#[derive(Clone)]
pub struct BundleSources<O = Transfers> {
    needs: Arc<Mutex<Needs>>,
    opener: O,
}

/// Held by a task while it waits for a bundle; dropping it withdraws the task's lease from the
/// bundle's download.
#[must_use = "the claim ends when dropped"]
pub struct BundleClaim {
    needs: Arc<Mutex<Needs>>,
    sha256: String,
    id: u64,
}

impl Drop for BundleClaim {
    fn drop(&mut self) {
        let mut needs = self.needs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(list) = needs.by_sha256.get_mut(&self.sha256) {
            list.retain(|n| n.id != self.id);
            if list.is_empty() {
                needs.by_sha256.remove(&self.sha256);
            }
        }
    }
}

impl<O: Open> BundleSources<O> {
    pub fn new(opener: O) -> Self {
        Self { needs: Arc::default(), opener }
    }

    /// Notes that `lease`'s task needs the bundle `sha256`, stored as file `file_id`, by
    /// `deadline`, until the returned claim is dropped.
    pub fn register(&self, sha256: &str, lease: TaskLease, file_id: String, deadline: Instant) -> BundleClaim {
        let mut needs = self.needs.lock().unwrap_or_else(PoisonError::into_inner);
        needs.next_id += 1;
        let id = needs.next_id;
        needs.by_sha256.entry(sha256.to_string()).or_default().push(Need { id, lease, file_id, deadline });
        BundleClaim { needs: self.needs.clone(), sha256: sha256.to_string(), id }
    }

    /// The current claims on `sha256` whose deadline is ahead, newest first, leaving out those
    /// already found ended.
    fn candidates(&self, sha256: &str, ended: &[u64]) -> Vec<Need> {
        let now = Instant::now();
        let needs = self.needs.lock().unwrap_or_else(PoisonError::into_inner);
        needs
            .by_sha256
            .get(sha256)
            .map(|list| list.iter().rev().filter(|n| n.deadline > now && !ended.contains(&n.id)).cloned().collect())
            .unwrap_or_default()
    }

    /// Opens the bundle from `offset` under the newest lease that the orchestrator still honours;
    /// leases it refuses are added to `ended`.
    async fn open_any(&self, sha256: &str, offset: u64, ended: &mut Vec<u64>) -> io::Result<(Need, Parts)> {
        let mut last_refusal = None;
        for need in self.candidates(sha256, ended) {
            let opened = tokio::time::timeout_at(need.deadline, self.opener.open(&need.lease, &need.file_id, offset))
                .await
                .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("past the task's download time limit")));
            match opened {
                Ok(parts) => return Ok((need, parts)),
                Err(status) if lease_ended(&status) => {
                    tracing::debug!(task = %need.lease.task_id, %status, "this task's lease cannot carry the bundle");
                    ended.push(need.id);
                    last_refusal = Some(status);
                }
                Err(status) => return Err(io::Error::other(status)),
            }
        }
        let named = self.needs.lock().unwrap_or_else(PoisonError::into_inner).by_sha256.contains_key(sha256);
        Err(io::Error::other(match last_refusal {
            Some(status) => {
                format!("no task that needs the bundle {sha256} can still carry its download (the last one: {status})")
            }
            None if !named => format!("no task names the bundle {sha256}"),
            None => format!(
                "no task that needs the bundle {sha256} can still carry its download: their leases ended or their \
                 download time limits passed"
            ),
        }))
    }
}

/// The orchestrator's answers when the lease a download runs under is not (or no longer) the
/// task's current one on this node, and the task's own time running out: the download can go on
/// for another task.
fn lease_ended(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::FailedPrecondition
            | tonic::Code::NotFound
            | tonic::Code::PermissionDenied
            | tonic::Code::DeadlineExceeded
    )
}

/// A download under way, and what it needs to go on under another lease.
struct Download<O> {
    sources: BundleSources<O>,
    sha256: String,
    offset: u64,
    current: Need,
    ended: Vec<u64>,
    parts: Parts,
}

impl<O: Open> Download<O> {
    /// The next bytes, switching leases when the current one ends midway.
    async fn next(mut self) -> io::Result<Option<(Bytes, Self)>> {
        loop {
            let next = tokio::time::timeout_at(self.current.deadline, self.parts.next())
                .await
                .unwrap_or_else(|_| Some(Err(tonic::Status::deadline_exceeded("past the task's download time limit"))));
            match next {
                None => return Ok(None),
                Some(Ok(data)) => {
                    self.offset += data.len() as u64;
                    return Ok(Some((data, self)));
                }
                Some(Err(status)) if lease_ended(&status) => {
                    tracing::info!(sha256 = %self.sha256, offset = self.offset, task = %self.current.lease.task_id, %status, "the download goes on for another task");
                    self.ended.push(self.current.id);
                    let (current, parts) = self.sources.open_any(&self.sha256, self.offset, &mut self.ended).await?;
                    self.current = current;
                    self.parts = parts;
                }
                Some(Err(status)) => return Err(io::Error::other(status)),
            }
        }
    }
}

impl<O: Open> Fetch for BundleSources<O> {
    async fn fetch(&self, bundle: &BundleRef, offset: u64) -> io::Result<FetchBody> {
        let sha256 = bundle.sha256.to_string();
        let mut ended = Vec::new();
        let (current, parts) = self.open_any(&sha256, offset, &mut ended).await?;
        let download = Download { sources: self.clone(), sha256, offset, current, ended, parts };
        let bytes = futures_util::stream::try_unfold(download, Download::next);
        Ok(Box::new(StreamReader::new(Box::pin(bytes))))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::collections::HashSet;

    use tokio::io::AsyncReadExt;

    use super::*;

    const BUNDLE: &str = "ab";

    /// Serves `data` in 4-byte parts to the tasks in `live`; a task is cut off after `cut_after`
    /// parts when it is in `cut`, and stalls there for good when it is in `stall`.
    #[derive(Clone)]
    struct Fake {
        data: Bytes,
        live: Arc<Mutex<HashSet<String>>>,
        cut: HashSet<String>,
        stall: HashSet<String>,
        cut_after: usize,
        opened: Arc<Mutex<Vec<(String, u64)>>>,
    }

    impl Open for Fake {
        async fn open(&self, lease: &TaskLease, _file: &str, offset: u64) -> Result<Parts, tonic::Status> {
            self.opened.lock().unwrap().push((lease.task_id.clone(), offset));
            if !self.live.lock().unwrap().contains(&lease.task_id) {
                return Err(tonic::Status::failed_precondition("not the current lease"));
            }
            let rest = self.data.slice(offset as usize..);
            let mut parts: Vec<Result<Bytes, tonic::Status>> =
                rest.chunks(4).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
            if self.cut.contains(&lease.task_id) {
                parts.truncate(self.cut_after);
                parts.push(Err(tonic::Status::failed_precondition("the lease ended")));
            }
            if self.stall.contains(&lease.task_id) {
                parts.truncate(self.cut_after);
                return Ok(Box::pin(futures_util::stream::iter(parts).chain(futures_util::stream::pending())));
            }
            Ok(Box::pin(futures_util::stream::iter(parts)))
        }
    }

    fn fake(live: &[&str], cut: &[&str]) -> Fake {
        Fake {
            data: Bytes::from_static(b"0123456789abcdefghijklmnopqrstuvwxyz"),
            live: Arc::new(Mutex::new(live.iter().map(|s| s.to_string()).collect())),
            cut: cut.iter().map(|s| s.to_string()).collect(),
            stall: HashSet::new(),
            cut_after: 2,
            opened: Arc::default(),
        }
    }

    fn lease(task: &str) -> TaskLease {
        TaskLease { task_id: task.into(), lease_epoch: 1 }
    }

    async fn read_all(sources: &BundleSources<Fake>, offset: u64) -> io::Result<Vec<u8>> {
        let bundle = BundleRef::new(&"ab".repeat(32), 36).unwrap();
        let mut body = sources.fetch(&bundle, offset).await?;
        let mut got = Vec::new();
        body.read_to_end(&mut got).await?;
        Ok(got)
    }

    fn sources(fake: &Fake) -> BundleSources<Fake> {
        BundleSources::new(fake.clone())
    }

    fn later(secs: u64) -> Instant {
        Instant::now() + std::time::Duration::from_secs(secs)
    }

    #[tokio::test]
    async fn the_newest_claim_carries_the_download() {
        let fake = fake(&["a", "b"], &[]);
        let sources = sources(&fake);
        let sha = BUNDLE.repeat(32);
        let _a = sources.register(&sha, lease("a"), "f".into(), later(60));
        let _b = sources.register(&sha, lease("b"), "f".into(), later(60));
        assert_eq!(read_all(&sources, 0).await.unwrap(), fake.data.to_vec());
        assert_eq!(*fake.opened.lock().unwrap(), vec![("b".to_string(), 0)]);
    }

    #[tokio::test]
    async fn a_lease_refused_at_the_open_hands_over_to_the_next() {
        let fake = fake(&["a"], &[]);
        let sources = sources(&fake);
        let sha = BUNDLE.repeat(32);
        let _a = sources.register(&sha, lease("a"), "f".into(), later(60));
        let _b = sources.register(&sha, lease("b"), "f".into(), later(60));
        assert_eq!(read_all(&sources, 10).await.unwrap(), fake.data[10..].to_vec());
        assert_eq!(*fake.opened.lock().unwrap(), vec![("b".to_string(), 10), ("a".to_string(), 10)]);
    }

    #[tokio::test]
    async fn a_lease_ending_midway_goes_on_from_the_same_byte_under_another() {
        let fake = fake(&["a", "b"], &["b"]);
        let sources = sources(&fake);
        let sha = BUNDLE.repeat(32);
        let _a = sources.register(&sha, lease("a"), "f".into(), later(60));
        let _b = sources.register(&sha, lease("b"), "f".into(), later(60));
        assert_eq!(read_all(&sources, 0).await.unwrap(), fake.data.to_vec(), "no byte lost or repeated");
        assert_eq!(*fake.opened.lock().unwrap(), vec![("b".to_string(), 0), ("a".to_string(), 8)]);
    }

    #[tokio::test]
    async fn without_a_live_lease_the_download_fails_and_says_why() {
        let fake = fake(&[], &[]);
        let sources = sources(&fake);
        let sha = BUNDLE.repeat(32);
        let error = read_all(&sources, 0).await.unwrap_err();
        assert!(error.to_string().contains("no task names the bundle"), "{error}");
        let _a = sources.register(&sha, lease("a"), "f".into(), later(60));
        let error = read_all(&sources, 0).await.unwrap_err();
        assert!(error.to_string().contains("can still carry its download"), "{error}");
    }

    #[tokio::test]
    async fn a_dropped_claim_no_longer_carries_downloads() {
        let fake = fake(&["a", "b"], &[]);
        let sources = sources(&fake);
        let sha = BUNDLE.repeat(32);
        let _a = sources.register(&sha, lease("a"), "f".into(), later(60));
        drop(sources.register(&sha, lease("b"), "f".into(), later(60)));
        read_all(&sources, 0).await.unwrap();
        assert_eq!(*fake.opened.lock().unwrap(), vec![("a".to_string(), 0)]);
        drop(_a);
        assert!(sources.needs.lock().unwrap().by_sha256.is_empty(), "nothing is kept for finished tasks");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_download_goes_on_for_the_task_with_time_left_and_ends_with_the_last_deadline() {
        let mut fake = fake(&["a", "b"], &[]);
        fake.stall = ["a".to_string(), "b".to_string()].into();
        let sources = sources(&fake);
        let sha = BUNDLE.repeat(32);
        let _a = sources.register(&sha, lease("a"), "f".into(), later(30));
        let _b = sources.register(&sha, lease("b"), "f".into(), later(10));
        let started = Instant::now();
        let error = read_all(&sources, 0).await.unwrap_err();
        assert_eq!(started.elapsed(), std::time::Duration::from_secs(30), "given up with the last deadline");
        assert!(error.to_string().contains("download time limit"), "{error}");
        assert_eq!(
            *fake.opened.lock().unwrap(),
            vec![("b".to_string(), 0), ("a".to_string(), 8)],
            "b's 10 s ran out after 8 bytes; a went on from there"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_claim_past_its_deadline_carries_nothing() {
        let fake = fake(&["a", "b"], &[]);
        let sources = sources(&fake);
        let sha = BUNDLE.repeat(32);
        let _a = sources.register(&sha, lease("a"), "f".into(), later(60));
        let _b = sources.register(&sha, lease("b"), "f".into(), later(1));
        tokio::time::advance(std::time::Duration::from_secs(2)).await;
        read_all(&sources, 0).await.unwrap();
        assert_eq!(*fake.opened.lock().unwrap(), vec![("a".to_string(), 0)]);
    }
}
