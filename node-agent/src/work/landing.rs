//! Frames picked up as they land. A run's output directory is watched (notify) and a frame
//! counts as landed once it is complete — its file closed after writing or renamed into place,
//! a later frame begun (aerender writes a sequence in order), or its progress line printed —
//! and it verifies (decodes, right size). Landed frames are handed on while the render goes on,
//! so a chunk's frames are stored as they come instead of all after the run.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::aerender::driver;
use crate::aerender::sequence::frame_path;
use crate::process::Activity;

/// A report goes out once this many frames wait, or once the oldest waited this long.
const BATCH_FRAMES: usize = 16;
const BATCH_WAIT: Duration = Duration::from_millis(500);

/// What says a frame may be complete.
#[derive(Debug)]
pub enum Sign {
    /// Something happened to a file in the output directory; `complete` when the event means the
    /// writer is done with it (closed after writing, or renamed into place).
    File { path: PathBuf, complete: bool },
    /// aerender printed the progress line of the `position`-th frame of the run (1-based).
    Progress(u64),
    /// The log rules success out: nothing more is shipped (frames stored before the failing
    /// line stay stored; a missing font or footage is logged before the first frame).
    Failing,
}

/// Watches `dir` for the run's frames, sending [`Sign`]s and touching `activity` (a frame landing
/// is progress for the no-output watchdog). Dropping the watcher stops it.
pub fn watch(dir: &Path, signs: mpsc::UnboundedSender<Sign>, activity: Activity) -> notify::Result<RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let complete = matches!(
            event.kind,
            EventKind::Access(AccessKind::Close(AccessMode::Write))
                | EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
        );
        let relevant = complete || matches!(event.kind, EventKind::Create(_) | EventKind::Modify(_));
        if !relevant {
            return;
        }
        activity.touch();
        // With a rename, the last path is the new name.
        if let Some(path) = event.paths.last() {
            let _ = signs.send(Sign::File { path: path.clone(), complete });
        }
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// Which of a run's frames are complete, from the signs so far. Each frame is looked at a
/// bounded number of times over the whole run, however many signs come (a chunk may have
/// thousands of frames and several signs per frame).
pub struct Landing {
    /// Comp frame and file, in render order.
    frames: Vec<(u32, PathBuf)>,
    by_path: HashMap<PathBuf, usize>,
    /// Frames before this index are complete (a later one began, or its line was printed).
    complete_below: usize,
    /// Frames before this index were considered by [`Landing::take_ready`] already.
    next: usize,
    /// Frames at or after `next` whose own file event said they are complete.
    early: Vec<usize>,
    /// Frames already handed out (whether or not they verified).
    taken: Vec<bool>,
    /// The run fails: nothing is ready any more.
    failing: bool,
}

impl Landing {
    /// The frames `frames` of output `pattern` (a path whose name holds `[#####]`).
    pub fn new(pattern: &Path, frames: impl Iterator<Item = u32>) -> Self {
        let pattern = pattern.to_string_lossy();
        let frames: Vec<(u32, PathBuf)> = frames.map(|f| (f, PathBuf::from(frame_path(&pattern, f)))).collect();
        let by_path = frames.iter().enumerate().map(|(i, (_, path))| (path.clone(), i)).collect();
        let taken = vec![false; frames.len()];
        Self { frames, by_path, complete_below: 0, next: 0, early: Vec::new(), taken, failing: false }
    }

    /// Takes a sign into account.
    pub fn observe(&mut self, sign: &Sign) {
        match sign {
            Sign::File { path, complete } => {
                let Some(&i) = self.by_path.get(path.as_path()) else { return };
                if *complete && i >= self.next.max(self.complete_below) && !self.taken[i] {
                    self.early.push(i);
                }
                self.complete_below = self.complete_below.max(i);
            }
            Sign::Progress(position) => {
                let done = usize::try_from(*position).unwrap_or(usize::MAX).min(self.frames.len());
                self.complete_below = self.complete_below.max(done);
            }
            Sign::Failing => self.failing = true,
        }
    }

    /// Complete frames not handed out before, in render order; none once the run fails.
    pub fn take_ready(&mut self) -> Vec<(u32, PathBuf)> {
        let mut ready = std::mem::take(&mut self.early);
        if self.failing {
            return Vec::new();
        }
        ready.extend(self.next..self.complete_below.max(self.next));
        self.next = self.next.max(self.complete_below);
        ready.sort_unstable();
        ready.dedup();
        ready
            .into_iter()
            .filter(|&i| !std::mem::replace(&mut self.taken[i], true))
            .map(|i| self.frames[i].clone())
            .collect()
    }
}

/// What shipping did while the run went on.
#[derive(Debug, Default)]
pub struct Shipped<T> {
    /// Stored frames by comp frame.
    pub frames: BTreeMap<u32, T>,
    /// Why shipping stopped early, if it did (the frames stored so far stay stored).
    pub error: Option<String>,
}

/// Ships each frame as it lands until `signs` closes (the run ended): every complete frame that
/// verifies at `size` goes to `store`, and the stored ones to `report` in batches. A frame that
/// does not verify yet is left for the check after the run, which decides about it.
pub async fn ship<T: Clone, F: Future<Output = Result<T, String>>>(
    mut landing: Landing,
    mut signs: mpsc::UnboundedReceiver<Sign>,
    size: Option<(u32, u32)>,
    mut store: impl FnMut(u32, PathBuf) -> F,
    mut report: impl FnMut(Vec<T>),
) -> Shipped<T> {
    let mut shipped = Shipped { frames: BTreeMap::new(), error: None };
    let mut batch: Vec<T> = Vec::new();
    let mut oldest: Option<Instant> = None;
    loop {
        let sign = match oldest {
            Some(since) => {
                tokio::select! {
                    sign = signs.recv() => sign,
                    () = tokio::time::sleep_until(since + BATCH_WAIT) => {
                        report(std::mem::take(&mut batch));
                        oldest = None;
                        continue;
                    }
                }
            }
            None => signs.recv().await,
        };
        let Some(sign) = sign else { break };
        landing.observe(&sign);
        while let Ok(sign) = signs.try_recv() {
            landing.observe(&sign);
        }
        for (frame, path) in landing.take_ready() {
            let checked = path.clone();
            let verified = tokio::task::spawn_blocking(move || driver::check_frame(&checked, size)).await;
            if !matches!(verified, Ok(Ok(()))) {
                continue;
            }
            match store(frame, path).await {
                Ok(stored) => {
                    shipped.frames.insert(frame, stored.clone());
                    batch.push(stored);
                    oldest.get_or_insert_with(Instant::now);
                }
                Err(error) => {
                    shipped.error = Some(error);
                    break;
                }
            }
            if batch.len() >= BATCH_FRAMES {
                report(std::mem::take(&mut batch));
                oldest = None;
            }
        }
        if shipped.error.is_some() {
            break;
        }
    }
    if !batch.is_empty() {
        report(batch);
    }
    shipped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn landing(n: u32) -> Landing {
        Landing::new(Path::new("/w/out/f_[###].png"), 10..10 + n)
    }

    fn file(frame: u32, complete: bool) -> Sign {
        Sign::File { path: PathBuf::from(format!("/w/out/f_{frame:03}.png")), complete }
    }

    fn numbers(ready: Vec<(u32, PathBuf)>) -> Vec<u32> {
        ready.into_iter().map(|(f, _)| f).collect()
    }

    #[test]
    fn a_frame_being_written_is_not_ready_until_it_is_complete() {
        let mut landing = landing(4);
        landing.observe(&file(10, false));
        assert!(landing.take_ready().is_empty(), "only begun");
        landing.observe(&file(10, true));
        assert_eq!(numbers(landing.take_ready()), [10]);
        assert!(landing.take_ready().is_empty(), "handed out once");
    }

    #[test]
    fn a_later_frame_beginning_completes_the_earlier_ones() {
        let mut landing = landing(4);
        landing.observe(&file(12, false));
        assert_eq!(numbers(landing.take_ready()), [10, 11]);
    }

    #[test]
    fn a_progress_line_completes_its_frame() {
        let mut landing = landing(4);
        landing.observe(&Sign::Progress(3));
        assert_eq!(numbers(landing.take_ready()), [10, 11, 12]);
        landing.observe(&Sign::Progress(99));
        assert_eq!(numbers(landing.take_ready()), [13]);
    }

    #[test]
    fn nothing_is_ready_once_the_run_fails() {
        let mut landing = landing(4);
        landing.observe(&Sign::Progress(1));
        landing.observe(&Sign::Failing);
        landing.observe(&Sign::Progress(4));
        assert!(landing.take_ready().is_empty());
    }

    #[test]
    fn files_that_are_not_frames_of_the_run_are_ignored() {
        let mut landing = landing(2);
        landing.observe(&Sign::File { path: PathBuf::from("/w/out/f_050.png"), complete: true });
        landing.observe(&Sign::File { path: PathBuf::from("/w/out/.f_010.png.tmp"), complete: true });
        assert!(landing.take_ready().is_empty());
    }
}
