//! Group commit of the agents' hot reports (progress, frames, results).
//!
//! A stream's report joins the replica's pending batch of its kind and waits for its answer.
//! While no batch of that kind is being written, the first report starts a writer task; the
//! writer takes everything pending (up to a bound), writes it in one transaction
//! ([`crate::queue::batch`]), answers, and goes on while reports keep arriving. So a lone
//! report waits for nobody, and under load a batch grows to what arrived during the previous
//! one's transaction.
//!
//! A report the batch does not take (answer `None`: an unusual shape, a fence to explain) and
//! every report of a batch that failed goes the one-report way, which the caller runs.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use sqlx::PgPool;
use tokio::sync::oneshot;

use crate::error::Result;
use crate::queue::batch::{self, Frames, Outcome, Update};
use crate::queue::report::{Ended, Verdict};

/// Most reports in one batch.
const MAX_BATCH_REPORTS: usize = 512;
/// Most frames in one batch (a frame report or result carries up to thousands).
const MAX_BATCH_FRAMES: usize = 20_000;

/// A kind of report written in batches.
pub trait BatchKind: Send + Sync + 'static {
    /// One report with its fence.
    type Item: Send + Sync + 'static;
    /// Its answer.
    type Answer: Send + 'static;
    /// Frames the report carries (batches are bounded by frames too).
    fn frames(item: &Self::Item) -> usize;
    /// Writes the batch; one answer per item, `None` for those left to the one-report path.
    fn write<'a>(
        pool: &'a PgPool,
        items: &'a [Self::Item],
    ) -> impl Future<Output = Result<Vec<Option<Self::Answer>>>> + Send + 'a;
}

/// TaskUpdates.
pub struct Updates;
/// FrameReports.
pub struct FrameReports;
/// TaskResults.
pub struct Results;

impl BatchKind for Updates {
    type Item = Update;
    type Answer = Verdict;
    fn frames(_: &Update) -> usize {
        0
    }
    fn write<'a>(pool: &'a PgPool, items: &'a [Update]) -> impl Future<Output = Result<Vec<Option<Verdict>>>> + 'a {
        batch::task_updates(pool, items)
    }
}

impl BatchKind for FrameReports {
    type Item = Frames;
    type Answer = Verdict;
    fn frames(item: &Frames) -> usize {
        item.report.frames.len()
    }
    fn write<'a>(pool: &'a PgPool, items: &'a [Frames]) -> impl Future<Output = Result<Vec<Option<Verdict>>>> + 'a {
        batch::frame_reports(pool, items)
    }
}

impl BatchKind for Results {
    type Item = Outcome;
    type Answer = (Verdict, Option<Ended>);
    fn frames(item: &Outcome) -> usize {
        item.result.frames.len()
    }
    fn write<'a>(
        pool: &'a PgPool,
        items: &'a [Outcome],
    ) -> impl Future<Output = Result<Vec<Option<(Verdict, Option<Ended>)>>>> + 'a {
        batch::task_results(pool, items)
    }
}

/// One report waiting, with where its answer goes.
type Waiting<K> = (<K as BatchKind>::Item, oneshot::Sender<Option<<K as BatchKind>::Answer>>);

struct Pending<K: BatchKind> {
    waiting: Vec<Waiting<K>>,
    writing: bool,
}

/// The pending reports of one kind.
pub struct GroupCommit<K: BatchKind> {
    pending: Mutex<Pending<K>>,
}

impl<K: BatchKind> Default for GroupCommit<K> {
    fn default() -> Self {
        Self { pending: Mutex::new(Pending { waiting: Vec::new(), writing: false }) }
    }
}

impl<K: BatchKind> std::fmt::Debug for GroupCommit<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").field("waiting", &self.lock().waiting.len()).finish()
    }
}

impl<K: BatchKind> GroupCommit<K> {
    fn lock(&self) -> MutexGuard<'_, Pending<K>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes `item` with the next batch; `None` when the one-report path must take it.
    pub async fn submit(self: &Arc<Self>, pool: &PgPool, item: K::Item) -> Option<K::Answer> {
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut pending = self.lock();
            pending.waiting.push((item, answer));
            !std::mem::replace(&mut pending.writing, true)
        };
        if start {
            tokio::spawn(Arc::clone(self).write_all(pool.clone()));
        }
        answered.await.ok().flatten()
    }

    /// Writes batches until nothing is pending.
    async fn write_all(self: Arc<Self>, pool: PgPool) {
        // Should this task end early (a panic), the waiting reports are answered `None` and
        // the next report starts a new writer.
        let _guard = WriterGuard(&self);
        loop {
            let taken: Vec<Waiting<K>> = {
                let mut pending = self.lock();
                if pending.waiting.is_empty() {
                    pending.writing = false;
                    return;
                }
                let (mut reports, mut frames) = (0, 0);
                let n = pending
                    .waiting
                    .iter()
                    .take_while(|(item, _)| {
                        reports += 1;
                        frames += K::frames(item);
                        reports == 1 || (reports <= MAX_BATCH_REPORTS && frames <= MAX_BATCH_FRAMES)
                    })
                    .count();
                pending.waiting.drain(..n).collect()
            };
            let (items, answers): (Vec<K::Item>, Vec<_>) = taken.into_iter().unzip();
            let written = crate::queue::retrying(|| K::write(&pool, &items)).await;
            let mut written = match written {
                Ok(written) => written.into_iter(),
                Err(error) => {
                    tracing::warn!(%error, reports = items.len(), "a batch of agent reports failed; writing them one by one");
                    Vec::new().into_iter()
                }
            };
            for answer in answers {
                let _ = answer.send(written.next().flatten());
            }
        }
    }
}

struct WriterGuard<'a, K: BatchKind>(&'a GroupCommit<K>);

impl<K: BatchKind> Drop for WriterGuard<'_, K> {
    fn drop(&mut self) {
        // A writer that returned normally cleared `writing` itself (and another may run now).
        if std::thread::panicking() {
            let mut pending = self.0.lock();
            pending.writing = false;
            pending.waiting.clear();
        }
    }
}

/// The replica's batched reports, one group per kind.
#[derive(Debug, Default)]
pub struct Reports {
    /// TaskUpdates.
    pub updates: Arc<GroupCommit<Updates>>,
    /// FrameReports.
    pub frames: Arc<GroupCommit<FrameReports>>,
    /// TaskResults.
    pub results: Arc<GroupCommit<Results>>,
}
