//! The template cache: bundles (zip files named by their SHA-256) downloaded once, verified,
//! unpacked under `<root>/<sha256>/` and kept until room is needed.
//!
//! * Content-addressed: the key is the bundle's SHA-256, checked over every byte before use.
//! * Bounded in bytes: unpacked entries, partial downloads, and the room an acquire in progress
//!   reserved (its zip, then its zip plus the declared unpacked size) together never exceed the
//!   bound. The zip is deleted once unpacked, so an entry costs its unpacked bytes only. File
//!   system overhead (blocks, directories, manifests) is not counted.
//! * Least recently used entries (and stale partial downloads) no [`Lease`] holds are evicted
//!   to make room; a held entry never is.
//! * Downloads go to `<root>/.partial/<sha256>.zip`, resume from its length, are verified, then
//!   unpacked into `<root>/.unpack-…` and renamed into place; archives whose entries would
//!   escape the directory (or are links, or unpack to more than the bound) are refused.
//! * [`Cache::open`] rebuilds the state from the directory after a restart and checks it.
//! * Additions and evictions are reported as [`CacheEvent`]s; [`Cache::snapshot`] lists entries.

mod bundle;
mod download;
mod error;
mod event;
mod fetch;
mod manifest;
mod scan;
mod state;
mod unpack;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tokio::sync::{Notify, mpsc};

pub use bundle::{BundleRef, Sha256Hex};
pub use error::CacheError;
pub use event::{CacheEvent, EntryInfo, EvictReason, Usage};
pub use fetch::{Fetch, FetchBody};

use download::partial_path;
use error::IoContext;
use manifest::Manifest;
use state::{Admission, Entry, Partial, State, Victim};

/// The next step of an acquire.
enum Step<'a> {
    Hit((String, Entry)),
    Wait(tokio::sync::futures::Notified<'a>),
    Fill(Arc<tokio::sync::Mutex<()>>),
}

/// An entry or a partial download found at open, by when it was last used.
type Found = (u64, Result<Manifest, (String, u64)>);

/// What [`Cache::evict`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvictOutcome {
    /// Removed now.
    Evicted { bytes: u64 },
    /// Held by running tasks: removed when the last of their leases is dropped.
    Deferred { pins: usize },
    /// Not in the cache (a partial download of it, if any, was dropped).
    NotPresent,
}

/// The template cache. Cheap to clone; all clones share one cache.
pub struct Cache<F> {
    shared: Arc<Shared>,
    fetch: Arc<F>,
}

impl<F> Clone for Cache<F> {
    fn clone(&self) -> Self {
        Self { shared: self.shared.clone(), fetch: self.fetch.clone() }
    }
}

/// The part leases need too (no fetcher, so [`Lease`] is not generic).
struct Shared {
    root: PathBuf,
    state: Mutex<State>,
    /// Signalled when bytes are freed, so acquires waiting for room or for a deletion retry.
    changed: Notify,
    events: mpsc::UnboundedSender<CacheEvent>,
}

/// A bundle held for a task: its unpacked directory stays until this is dropped.
pub struct Lease {
    shared: Arc<Shared>,
    sha256: String,
    path: PathBuf,
    fetched: u64,
}

impl Lease {
    /// The unpacked bundle.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Bytes downloaded by the acquire that returned this lease (0 on a cache hit).
    pub fn fetched_bytes(&self) -> u64 {
        self.fetched
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("sha256", &self.sha256).field("path", &self.path).finish()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let victim = {
            let mut st = self.shared.lock();
            let Some(e) = st.entries.get_mut(&self.sha256) else { return };
            e.pins = e.pins.saturating_sub(1);
            if e.pins > 0 || !e.evict_requested {
                return;
            }
            let Some(e) = st.entries.remove(&self.sha256) else { return };
            st.deleting += e.bytes;
            st.deleting_keys.insert(self.sha256.clone());
            Victim::Entry(self.sha256.clone(), e)
        };
        // A deferred EvictTemplate: delete off the async threads when there is a runtime.
        let shared = self.shared.clone();
        let job = move || shared.delete(vec![victim], EvictReason::Requested);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(job)),
            Err(_) => job(),
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is consistent between statements, so a panic elsewhere cannot leave it
        // half-updated: carry on with it.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn emit(&self, event: CacheEvent) {
        tracing::info!(?event, "template cache");
        // Nobody listening (tests, shutdown) is fine.
        let _ = self.events.send(event);
    }

    /// Deletes victims already taken out of the books (blocking), then frees their bytes and
    /// reports the entries among them.
    fn delete(&self, victims: Vec<Victim>, reason: EvictReason) {
        for v in &victims {
            let result = match v {
                Victim::Entry(key, _) => scan::remove_any(&manifest::path(&self.root, key))
                    .and_then(|()| scan::remove_any(&self.root.join(key))),
                Victim::Partial(key, _) => scan::remove_any(&partial_path(&self.root, key)),
            };
            if let Err(e) = result {
                tracing::error!(sha256 = v.sha256(), error = %e, "template cache: delete failed");
            }
        }
        self.lock().deleted(&victims);
        self.changed.notify_waiters();
        for v in victims {
            if let Victim::Entry(sha256, e) = v {
                self.emit(CacheEvent::Evicted { sha256, bytes: e.bytes, reason });
            }
        }
    }
}

/// Runs blocking cache work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, CacheError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| CacheError::Worker(e.to_string()))
}

/// Bytes an acquire in progress owns in `reserved`. Given back if the acquire fails or is
/// dropped, when whatever download it leaves becomes an evictable partial again.
struct Held {
    shared: Arc<Shared>,
    sha256: String,
    bytes: u64,
}

impl Drop for Held {
    fn drop(&mut self) {
        let partial = partial_path(&self.shared.root, &self.sha256);
        let left = std::fs::metadata(&partial).map_or(0, |m| m.len());
        let mut st = self.shared.lock();
        st.reserved -= self.bytes;
        if left > 0 {
            let tick = st.tick();
            // Never more than was held: the file grew only within the reservation.
            st.partials.insert(self.sha256.clone(), Partial { bytes: left.min(self.bytes), tick });
        }
        drop(st);
        self.shared.changed.notify_waiters();
    }
}

impl<F: Fetch> Cache<F> {
    /// Opens (or creates) the cache at `root` with room for `bound` bytes, checking what an
    /// earlier run left there (see the `scan` module) and evicting least recently used entries
    /// if they exceed the bound (it may have been lowered). Events from this (corrupt entries
    /// removed, evictions) are already in the returned receiver.
    pub async fn open(
        root: impl Into<PathBuf>,
        bound: u64,
        fetch: F,
    ) -> Result<(Self, mpsc::UnboundedReceiver<CacheEvent>), CacheError> {
        let root = root.into();
        let scan_root = root.clone();
        let found = blocking(move || scan::scan(&scan_root)).await??;

        let mut st = State::new(bound);
        // One LRU order for entries and partial downloads, by when each was last used.
        let mut all: Vec<Found> = found
            .entries
            .into_iter()
            .map(|m| (m.last_used_ms, Ok(m)))
            .chain(found.partials.into_iter().map(|(k, bytes, ms)| (ms, Err((k, bytes)))))
            .collect();
        all.sort_by_key(|(ms, _)| *ms);
        for (_, item) in all {
            let tick = st.tick();
            match item {
                Ok(m) => {
                    st.entries.insert(
                        m.sha256.clone(),
                        Entry {
                            bytes: m.unpacked_bytes,
                            zip_bytes: m.zip_bytes,
                            files: m.files,
                            added_ms: m.added_at_ms,
                            last_used_ms: m.last_used_ms,
                            tick,
                            pins: 0,
                            evict_requested: false,
                        },
                    );
                }
                Err((k, bytes)) => {
                    st.partials.insert(k, Partial { bytes, tick });
                }
            }
        }

        let (events, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared { root, state: Mutex::new(st), changed: Notify::new(), events });
        for (sha256, bytes) in found.corrupt {
            shared.emit(CacheEvent::Evicted { sha256, bytes, reason: EvictReason::Corrupt });
        }
        loop {
            let admission = shared.lock().admit(0);
            match admission {
                Admission::Evict(victims) => {
                    let s = shared.clone();
                    blocking(move || s.delete(victims, EvictReason::Lru)).await?;
                }
                // Nothing is pinned or in progress yet, so anything but eviction means it fits.
                _ => break,
            }
        }
        Ok((Self { shared, fetch: Arc::new(fetch) }, rx))
    }

    pub fn root(&self) -> &Path {
        &self.shared.root
    }

    /// The entries, least recently used first (for Hello and `render.node_template_cache`).
    pub fn snapshot(&self) -> Vec<EntryInfo> {
        let st = self.shared.lock();
        let mut list: Vec<(u64, EntryInfo)> = st
            .entries
            .iter()
            .map(|(k, e)| {
                (
                    e.tick,
                    EntryInfo {
                        sha256: k.clone(),
                        bytes: e.bytes,
                        added_at: manifest::from_ms(e.added_ms),
                        last_used_at: manifest::from_ms(e.last_used_ms),
                        in_use: e.pins > 0,
                    },
                )
            })
            .collect();
        list.sort_by_key(|(tick, _)| *tick);
        list.into_iter().map(|(_, info)| info).collect()
    }

    pub fn usage(&self) -> Usage {
        let st = self.shared.lock();
        Usage { used: st.used(), bound: st.bound, pinned: st.pinned(), entries: st.entries.len() }
    }

    /// Holds `bundle` for a task, downloading and unpacking it first unless it is cached.
    /// Concurrent acquires of one bundle download it once.
    pub async fn acquire(&self, bundle: &BundleRef) -> Result<Lease, CacheError> {
        let sha = bundle.sha256.as_str();
        let bound = self.shared.lock().bound;
        if bundle.size > bound {
            return Err(CacheError::TooLarge { sha256: sha.into(), needed: bundle.size, bound });
        }
        loop {
            // Without the fill lock: a hit needs no lock but the state's.
            let step = self.look(sha, true);
            let fill_lock = match step {
                Step::Hit(pinned) => return Ok(self.hit(pinned).await),
                Step::Wait(changed) => {
                    changed.await;
                    continue;
                }
                Step::Fill(lock) => lock,
            };
            let guard = fill_lock.lock().await;
            // With it: whoever held it before may have just added the entry.
            let outcome = match self.look(sha, false) {
                Step::Hit(pinned) => Ok(Ok(self.hit(pinned).await)),
                Step::Wait(changed) => Err(changed),
                Step::Fill(_) => Ok(self.fill(bundle).await),
            };
            drop(guard);
            self.forget_fill_lock(sha, fill_lock);
            match outcome {
                Ok(result) => return result,
                Err(changed) => changed.await,
            }
        }
    }

    /// What an acquire of `sha` does next: pin a hit, wait for its deletion to finish, or fill
    /// it under the bundle's fill lock (created if `create_lock`).
    fn look(&self, sha: &str, create_lock: bool) -> Step<'_> {
        let mut st = self.shared.lock();
        if let Some(pinned) = self.pin(&mut st, sha) {
            return Step::Hit(pinned);
        }
        if st.deleting_keys.contains(sha) {
            return Step::Wait(self.shared.changed.notified());
        }
        if create_lock {
            Step::Fill(st.fill_locks.entry(sha.to_owned()).or_default().clone())
        } else {
            Step::Fill(Arc::default())
        }
    }

    /// Removes `sha256` for the orchestrator's EvictTemplate: now if no task holds it, else as
    /// soon as the last holder lets go. A partial download of it is dropped too.
    pub async fn evict(&self, sha256: &str) -> Result<EvictOutcome, CacheError> {
        let key = Sha256Hex::parse(sha256)?;
        let (victims, outcome) = {
            let mut st = self.shared.lock();
            let mut victims = Vec::new();
            let mut outcome = EvictOutcome::NotPresent;
            if let Some(p) = st.partials.remove(key.as_str()) {
                victims.push(Victim::Partial(key.to_string(), p.bytes));
            }
            match st.entries.get_mut(key.as_str()) {
                Some(e) if e.pins > 0 => {
                    e.evict_requested = true;
                    outcome = EvictOutcome::Deferred { pins: e.pins };
                }
                Some(_) => {
                    if let Some(e) = st.entries.remove(key.as_str()) {
                        outcome = EvictOutcome::Evicted { bytes: e.bytes };
                        st.deleting_keys.insert(key.to_string());
                        victims.push(Victim::Entry(key.to_string(), e));
                    }
                }
                None => {}
            }
            st.deleting += victims.iter().map(Victim::bytes).sum::<u64>();
            (victims, outcome)
        };
        if !victims.is_empty() {
            let s = self.shared.clone();
            blocking(move || s.delete(victims, EvictReason::Requested)).await?;
        }
        Ok(outcome)
    }

    /// Pins a cached entry and marks it used; `None` on a miss.
    fn pin(&self, st: &mut State, sha: &str) -> Option<(String, Entry)> {
        let tick = st.tick();
        let e = st.entries.get_mut(sha)?;
        e.pins += 1;
        e.tick = tick;
        e.last_used_ms = manifest::to_ms(SystemTime::now());
        Some((sha.to_owned(), e.clone()))
    }

    /// A hit: records the use in the manifest (so the LRU order survives a restart; a failure
    /// only costs that) and hands out the lease.
    async fn hit(&self, (sha256, e): (String, Entry)) -> Lease {
        let m = manifest_of(&sha256, &e);
        if let Err(error) = manifest::write(&self.shared.root, &m).await {
            tracing::warn!(%error, "template cache: could not record a use");
        }
        self.lease(sha256, 0)
    }

    fn lease(&self, sha256: String, fetched: u64) -> Lease {
        let path = self.shared.root.join(&sha256);
        Lease { shared: self.shared.clone(), sha256, path, fetched }
    }

    fn forget_fill_lock(&self, sha: &str, lock: Arc<tokio::sync::Mutex<()>>) {
        let mut st = self.shared.lock();
        // Ours plus the map's: nobody else is waiting on it.
        if Arc::strong_count(&lock) == 2 {
            st.fill_locks.remove(sha);
        }
    }

    /// Reserves `need` more bytes for `held`, evicting as needed.
    async fn reserve(&self, held: &mut Held, need: u64) -> Result<(), CacheError> {
        loop {
            let (admission, changed) = {
                let mut st = self.shared.lock();
                (st.admit(need), self.shared.changed.notified())
            };
            match admission {
                Admission::Granted => {
                    held.bytes += need;
                    return Ok(());
                }
                Admission::Evict(victims) => {
                    let s = self.shared.clone();
                    blocking(move || s.delete(victims, EvictReason::Lru)).await?;
                }
                Admission::Wait => changed.await,
                Admission::Full { pinned } => {
                    let bound = self.shared.lock().bound;
                    return Err(CacheError::CacheFull { needed: need, pinned, bound });
                }
            }
        }
    }

    /// A miss: download (resuming), verify, inspect, unpack, commit. Called with the bundle's
    /// fill lock held, so nobody else works on this key.
    async fn fill(&self, bundle: &BundleRef) -> Result<Lease, CacheError> {
        let root = self.shared.root.clone();
        let sha = bundle.sha256.to_string();
        let bound = self.shared.lock().bound;
        let partial = partial_path(&root, &sha);

        // The partial download (if any) becomes ours, already counted; then room for the rest.
        let mut held = Held { shared: self.shared.clone(), sha256: sha.clone(), bytes: 0 };
        {
            let mut st = self.shared.lock();
            if let Some(p) = st.partials.remove(&sha) {
                st.reserved += p.bytes;
                held.bytes = p.bytes;
            }
        }
        let need = bundle.size.saturating_sub(held.bytes);
        self.reserve(&mut held, need).await?;

        let fetched = download::download(self.fetch.as_ref(), bundle, &partial).await?;
        download::verify(bundle, &partial).await?;

        // Read the central directory before writing anything, and refuse bombs outright.
        let zip = partial.clone();
        let plan = match blocking(move || unpack::inspect(&zip, bound)).await? {
            Ok(plan) => plan,
            Err(e) => return Err(self.refuse(&sha, &partial, e).await),
        };
        let needed = bundle.size.saturating_add(plan.bytes);
        if needed > bound {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(CacheError::TooLarge { sha256: sha, needed, bound });
        }
        self.reserve(&mut held, plan.bytes).await?;

        let tmp = root.join(format!("{}{sha}-{}", scan::UNPACK_PREFIX, manifest::unique_suffix()));
        let (zip, dest) = (partial.clone(), tmp.clone());
        let unpacked = blocking(move || {
            let result = unpack::extract(&zip, &dest, &plan);
            if result.is_err() {
                let _ = scan::remove_any(&dest);
            }
            result
        })
        .await?;
        let unpacked = match unpacked {
            Ok(u) => u,
            Err(e) => return Err(self.refuse(&sha, &partial, e).await),
        };

        // Commit: directory into place, then the manifest that makes it count after a restart.
        let final_dir = root.join(&sha);
        let now = manifest::to_ms(SystemTime::now());
        let entry = Entry {
            bytes: unpacked.bytes,
            zip_bytes: bundle.size,
            files: unpacked.files,
            added_ms: now,
            last_used_ms: now,
            tick: 0,
            pins: 1,
            evict_requested: false,
        };
        let committed = async {
            tokio::fs::rename(&tmp, &final_dir).await.at(&final_dir)?;
            manifest::write(&root, &manifest_of(&sha, &entry)).await
        }
        .await;
        if let Err(e) = committed {
            let (t, d) = (tmp, final_dir);
            blocking(move || {
                let _ = scan::remove_any(&t);
                let _ = scan::remove_any(&d);
            })
            .await?;
            return Err(e);
        }
        tokio::fs::remove_file(&partial).await.at(&partial)?;
        {
            let mut st = self.shared.lock();
            let tick = st.tick();
            st.entries.insert(sha.clone(), Entry { tick, ..entry });
            // In the same step, so the entry and the reservation are never both counted.
            st.reserved -= held.bytes;
            held.bytes = 0;
        }
        drop(held);
        self.shared.emit(CacheEvent::Added { sha256: sha.clone(), bytes: unpacked.bytes });
        Ok(self.lease(sha, fetched))
    }

    /// A verified bundle that cannot be unpacked: the zip is useless, so it goes.
    async fn refuse(&self, sha: &str, partial: &Path, e: unpack::UnpackError) -> CacheError {
        let _ = tokio::fs::remove_file(partial).await;
        match e {
            unpack::UnpackError::Unsafe(reason) => CacheError::UnsafeArchive { sha256: sha.to_owned(), reason },
            unpack::UnpackError::Io(source) => CacheError::io(partial, source),
        }
    }
}

fn manifest_of(sha256: &str, e: &Entry) -> Manifest {
    Manifest {
        version: manifest::VERSION,
        sha256: sha256.to_owned(),
        zip_bytes: e.zip_bytes,
        unpacked_bytes: e.bytes,
        files: e.files,
        added_at_ms: e.added_ms,
        last_used_ms: e.last_used_ms,
    }
}
