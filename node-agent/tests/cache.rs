//! The template cache end to end, with real zips and an in-memory source that counts what it
//! serves and can corrupt or cut off a download.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{Cursor, Write};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use flatrender_agent::cache::{BundleRef, Cache, CacheError, CacheEvent, EvictOutcome, EvictReason, Fetch, FetchBody};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc::UnboundedReceiver;
use zip::write::SimpleFileOptions;

#[derive(Clone, Default)]
struct MemFetch(Arc<MemInner>);

#[derive(Default)]
struct MemInner {
    blobs: Mutex<HashMap<String, Vec<u8>>>,
    served: AtomicU64,
    calls: AtomicU64,
    /// The next fetch fails after this many bytes (once).
    fail_after: Mutex<Option<usize>>,
    /// Flip a byte in what is served.
    corrupt: AtomicBool,
}

impl MemFetch {
    fn add(&self, zip: Vec<u8>) -> BundleRef {
        let sha = hex::encode(Sha256::digest(&zip));
        let size = zip.len() as u64;
        self.0.blobs.lock().unwrap().insert(sha.clone(), zip);
        BundleRef::new(&sha, size).unwrap()
    }

    fn served(&self) -> u64 {
        self.0.served.load(Ordering::SeqCst)
    }

    fn calls(&self) -> u64 {
        self.0.calls.load(Ordering::SeqCst)
    }
}

struct Body {
    data: Vec<u8>,
    pos: usize,
    fail_at: Option<usize>,
    served: Arc<MemInner>,
}

impl AsyncRead for Body {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.fail_at == Some(this.pos) {
            return Poll::Ready(Err(std::io::Error::other("connection reset")));
        }
        let end = this.fail_at.unwrap_or(this.data.len()).min(this.data.len());
        // Small pieces, so a failure can come mid-stream.
        let n = (end - this.pos).min(buf.remaining()).min(100);
        buf.put_slice(&this.data[this.pos..this.pos + n]);
        this.pos += n;
        this.served.served.fetch_add(n as u64, Ordering::SeqCst);
        Poll::Ready(Ok(()))
    }
}

impl Fetch for MemFetch {
    async fn fetch(&self, bundle: &BundleRef, offset: u64) -> std::io::Result<FetchBody> {
        self.0.calls.fetch_add(1, Ordering::SeqCst);
        // Let a concurrent acquire run into the fill lock.
        tokio::task::yield_now().await;
        let mut data = self.0.blobs.lock().unwrap()[bundle.sha256.as_str()].clone();
        if self.0.corrupt.load(Ordering::SeqCst) {
            let mid = data.len() / 2;
            data[mid] ^= 0xff;
        }
        let data = data[offset as usize..].to_vec();
        let fail_at = self.0.fail_after.lock().unwrap().take();
        Ok(Box::new(Body { data, pos: 0, fail_at, served: self.0.clone() }))
    }
}

/// A zip of the given files, stored (so its size is predictable from the contents).
fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, body) in files {
        w.start_file(*name, opts).unwrap();
        w.write_all(body).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// A bundle of one file of `n` bytes, distinct per `seed`.
fn bundle(fetch: &MemFetch, seed: u8, n: usize) -> BundleRef {
    let body: Vec<u8> = (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
    fetch.add(zip_of(&[("project.aep", &body), ("footage/seed.txt", &[seed])]))
}

/// Like [`bundle`], deflated: the zip is small next to the unpacked files, so the room an
/// acquire reserves (zip plus unpacked) is close to what the entry keeps.
fn small_bundle(fetch: &MemFetch, seed: u8, n: usize) -> BundleRef {
    let body: Vec<u8> = (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    w.start_file("project.aep", opts).unwrap();
    w.write_all(&body).unwrap();
    w.start_file("footage/seed.txt", opts).unwrap();
    w.write_all(&[seed]).unwrap();
    let b = fetch.add(w.finish().unwrap().into_inner());
    assert!(b.size < 1000, "{}", b.size);
    b
}

fn drain(rx: &mut UnboundedReceiver<CacheEvent>) -> Vec<CacheEvent> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push(e);
    }
    out
}

/// Names in the cache directory, apart from the (then empty) partial-download folder.
fn leftovers(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".partial")
        .collect();
    for p in std::fs::read_dir(root.join(".partial")).unwrap() {
        names.push(format!(".partial/{}", p.unwrap().file_name().to_string_lossy()));
    }
    names.sort();
    names
}

/// Bytes of regular files under `dir` except manifests (what the bound counts).
fn disk_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let meta = std::fs::symlink_metadata(e.path()).unwrap();
        if meta.is_dir() {
            total += disk_bytes(&e.path());
        } else if !e.file_name().to_string_lossy().ends_with(".json") {
            total += meta.len();
        }
    }
    total
}

const MB: u64 = 1 << 20;

#[tokio::test]
async fn cache_a_hit_downloads_zero_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let fetch = MemFetch::default();
    let b = bundle(&fetch, 1, 5000);
    let (cache, mut events) = Cache::open(dir.path(), MB, fetch.clone()).await.unwrap();
    let first = cache.acquire(&b).await.unwrap();
    assert_eq!(first.fetched_bytes(), b.size);
    assert_eq!(std::fs::read(first.path().join("footage/seed.txt")).unwrap(), [1]);
    drop(first);
    let served = fetch.served();
    let second = cache.acquire(&b).await.unwrap();
    assert_eq!(second.fetched_bytes(), 0);
    assert_eq!(fetch.served(), served);
    assert_eq!(fetch.calls(), 1);
    assert_eq!(drain(&mut events), [CacheEvent::Added { sha256: b.sha256.to_string(), bytes: 5001 }]);
    assert_eq!(cache.usage().used, 5001, "the zip is gone once unpacked");
}

#[tokio::test]
async fn cache_least_recently_used_is_evicted_first() {
    let dir = tempfile::tempdir().unwrap();
    let fetch = MemFetch::default();
    let [a, b, c] = [1, 2, 3].map(|s| small_bundle(&fetch, s, 10_000));
    // Room for two entries, not three.
    let (cache, mut events) = Cache::open(dir.path(), 3 * 10_001 - 1, fetch).await.unwrap();
    drop(cache.acquire(&a).await.unwrap());
    drop(cache.acquire(&b).await.unwrap());
    drop(cache.acquire(&a).await.unwrap()); // a is now more recent than b
    drop(cache.acquire(&c).await.unwrap());
    let held: Vec<String> = cache.snapshot().into_iter().map(|e| e.sha256).collect();
    assert_eq!(held, [a.sha256.to_string(), c.sha256.to_string()]);
    let evicted: Vec<_> = drain(&mut events).into_iter().filter(|e| matches!(e, CacheEvent::Evicted { .. })).collect();
    assert_eq!(
        evicted,
        [CacheEvent::Evicted { sha256: b.sha256.to_string(), bytes: 10_001, reason: EvictReason::Lru }]
    );
    assert!(!dir.path().join(b.sha256.as_str()).exists());
}

#[tokio::test]
async fn cache_pinned_entries_survive_pressure() {
    let dir = tempfile::tempdir().unwrap();
    let fetch = MemFetch::default();
    let [a, b, c] = [1, 2, 3].map(|s| small_bundle(&fetch, s, 10_000));
    let (cache, _events) = Cache::open(dir.path(), 3 * 10_001 - 1, fetch).await.unwrap();
    let la = cache.acquire(&a).await.unwrap();
    let lb = cache.acquire(&b).await.unwrap();
    let err = cache.acquire(&c).await.unwrap_err();
    assert!(matches!(err, CacheError::CacheFull { .. }), "{err}");
    assert_eq!(cache.snapshot().len(), 2);
    assert!(la.path().join("project.aep").exists() && lb.path().join("project.aep").exists());
    assert!(cache.usage().used < 3 * 10_001);
    drop(lb);
    let lc = cache.acquire(&c).await.unwrap();
    let held: Vec<String> = cache.snapshot().into_iter().map(|e| e.sha256).collect();
    assert_eq!(held, [a.sha256.to_string(), c.sha256.to_string()]);
    drop((la, lc));
}

#[tokio::test]
async fn cache_a_corrupted_download_is_rejected_and_nothing_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let fetch = MemFetch::default();
    let b = bundle(&fetch, 1, 5000);
    fetch.0.corrupt.store(true, Ordering::SeqCst);
    let (cache, mut events) = Cache::open(dir.path(), MB, fetch.clone()).await.unwrap();
    let err = cache.acquire(&b).await.unwrap_err();
    assert!(matches!(err, CacheError::ChecksumMismatch { .. }), "{err}");
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());
    assert_eq!(cache.usage().used, 0);
    assert!(drain(&mut events).is_empty());
    // Fixed at the source: fetched anew from the start, not resumed from the bad bytes.
    fetch.0.corrupt.store(false, Ordering::SeqCst);
    assert_eq!(cache.acquire(&b).await.unwrap().fetched_bytes(), b.size);
}

#[tokio::test]
async fn cache_an_interrupted_download_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let fetch = MemFetch::default();
    let b = bundle(&fetch, 1, 5000);
    *fetch.0.fail_after.lock().unwrap() = Some(2000);
    let (cache, _events) = Cache::open(dir.path(), MB, fetch.clone()).await.unwrap();
    let err = cache.acquire(&b).await.unwrap_err();
    assert!(matches!(err, CacheError::Fetch { .. }), "{err}");
    assert_eq!(cache.usage().used, 2000, "the partial download counts");
    let lease = cache.acquire(&b).await.unwrap();
    assert_eq!(lease.fetched_bytes(), b.size - 2000);
    assert_eq!(fetch.served(), b.size, "every byte served once");
    assert_eq!(leftovers(dir.path()).len(), 2, "entry and manifest, no partial");
}

#[tokio::test]
async fn cache_escaping_archives_are_rejected_and_nothing_is_left_behind() {
    let fetch = MemFetch::default();
    let mut symlink = zip::ZipWriter::new(Cursor::new(Vec::new()));
    symlink.add_symlink("link", "/etc/passwd", SimpleFileOptions::default()).unwrap();
    let bombs: Vec<u8> = {
        // 4 MiB of zeros deflate to a few KiB: far above the 1 MiB bound once unpacked.
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        w.start_file("zeros", opts).unwrap();
        w.write_all(&vec![0u8; 4 * MB as usize]).unwrap();
        w.finish().unwrap().into_inner()
    };
    let archives = [
        ("dotdot", zip_of(&[("ok.txt", b"fine"), ("../evil", b"x")])),
        ("nested", zip_of(&[("a/../../evil", b"x")])),
        ("absolute", zip_of(&[("/abs", b"x")])),
        ("backslash", zip_of(&[("..\\evil", b"x")])),
        ("symlink", symlink.finish().unwrap().into_inner()),
        ("bomb", bombs),
    ];
    for (what, zip) in archives {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cache");
        let b = fetch.add(zip);
        let (cache, mut events) = Cache::open(&root, MB, fetch.clone()).await.unwrap();
        let err = cache.acquire(&b).await.unwrap_err();
        assert!(matches!(err, CacheError::UnsafeArchive { .. }), "{what}: {err}");
        assert_eq!(leftovers(&root), Vec::<String>::new(), "{what}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "{what}: nothing beside the cache");
        assert_eq!(cache.usage().used, 0, "{what}");
        assert!(drain(&mut events).is_empty(), "{what}");
    }
}

#[tokio::test]
async fn cache_the_byte_bound_is_never_exceeded() {
    let dir = tempfile::tempdir().unwrap();
    let fetch = MemFetch::default();
    let mut rng = StdRng::seed_from_u64(7);
    let bundles: Vec<BundleRef> = (0..12).map(|s| bundle(&fetch, s, rng.random_range(500..6000))).collect();
    let bound = 20_000;
    let (cache, mut events) = Cache::open(dir.path(), bound, fetch.clone()).await.unwrap();
    let mut leases = Vec::new();
    let (mut hits, mut full) = (0, 0);
    for _ in 0..300 {
        if !leases.is_empty() && rng.random_bool(0.5) {
            leases.swap_remove(rng.random_range(0..leases.len()));
        } else {
            let b = &bundles[rng.random_range(0..bundles.len())];
            if rng.random_bool(0.1) {
                *fetch.0.fail_after.lock().unwrap() = Some(rng.random_range(0..b.size as usize));
            }
            match cache.acquire(b).await {
                Ok(l) if l.fetched_bytes() == 0 => {
                    hits += 1;
                    leases.push(l);
                }
                Ok(l) => leases.push(l),
                Err(CacheError::CacheFull { .. } | CacheError::Fetch { .. }) => full += 1,
                Err(e) => panic!("{e}"),
            }
        }
        let usage = cache.usage();
        assert!(usage.used <= bound, "{usage:?}");
        assert!(disk_bytes(dir.path()) <= bound);
        assert_eq!(usage.pinned, cache.snapshot().iter().filter(|e| e.in_use).map(|e| e.bytes).sum::<u64>());
    }
    assert!(hits > 10 && full > 0, "exercised hits ({hits}) and pressure ({full})");
    assert!(drain(&mut events).iter().any(|e| matches!(e, CacheEvent::Evicted { .. })));
}

#[tokio::test]
async fn cache_a_restart_keeps_a_valid_cache_and_drops_a_tampered_entry() {
    let dir = tempfile::tempdir().unwrap();
    let fetch = MemFetch::default();
    let [a, b, c] = [1, 2, 3].map(|s| bundle(&fetch, s, 3000));
    {
        let (cache, _events) = Cache::open(dir.path(), MB, fetch.clone()).await.unwrap();
        drop(cache.acquire(&a).await.unwrap());
        drop(cache.acquire(&b).await.unwrap());
        *fetch.0.fail_after.lock().unwrap() = Some(1000);
        assert!(cache.acquire(&c).await.is_err());
    }
    // Tamper with b, and leave an interrupted unpack behind.
    let tampered = dir.path().join(b.sha256.as_str()).join("project.aep");
    std::fs::OpenOptions::new().append(true).open(&tampered).unwrap().write_all(b"!").unwrap();
    std::fs::create_dir(dir.path().join(format!(".unpack-{}-1", c.sha256))).unwrap();

    let served = fetch.served();
    let (cache, mut events) = Cache::open(dir.path(), MB, fetch.clone()).await.unwrap();
    assert_eq!(
        drain(&mut events),
        [CacheEvent::Evicted { sha256: b.sha256.to_string(), bytes: 3001, reason: EvictReason::Corrupt }]
    );
    let held: Vec<String> = cache.snapshot().into_iter().map(|e| e.sha256).collect();
    assert_eq!(held, [a.sha256.to_string()]);
    assert_eq!(cache.usage().used, 3001 + 1000, "entry a and c's partial download");
    assert_eq!(cache.acquire(&a).await.unwrap().fetched_bytes(), 0);
    assert_eq!(cache.acquire(&c).await.unwrap().fetched_bytes(), c.size - 1000);
    assert_eq!(cache.acquire(&b).await.unwrap().fetched_bytes(), b.size);
    assert_eq!(fetch.served() - served, c.size - 1000 + b.size);
    assert!(!dir.path().join(format!(".unpack-{}-1", c.sha256)).exists());
}

#[tokio::test]
async fn cache_a_lowered_bound_evicts_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let fetch = MemFetch::default();
    let [a, b] = [1, 2].map(|s| bundle(&fetch, s, 3000));
    {
        let (cache, _events) = Cache::open(dir.path(), MB, fetch.clone()).await.unwrap();
        drop(cache.acquire(&a).await.unwrap());
        drop(cache.acquire(&b).await.unwrap());
    }
    let (cache, mut events) = Cache::open(dir.path(), 4000, fetch).await.unwrap();
    assert_eq!(
        drain(&mut events),
        [CacheEvent::Evicted { sha256: a.sha256.to_string(), bytes: 3001, reason: EvictReason::Lru }]
    );
    assert_eq!(cache.snapshot().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_concurrent_acquires_of_one_bundle_download_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let fetch = MemFetch::default();
    let b = bundle(&fetch, 1, 50_000);
    let (cache, mut events) = Cache::open(dir.path(), MB, fetch.clone()).await.unwrap();
    let (x, y) = tokio::join!(cache.acquire(&b), cache.acquire(&b));
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(x.fetched_bytes() + y.fetched_bytes(), b.size);
    assert_eq!((fetch.calls(), fetch.served()), (1, b.size));
    assert_eq!(drain(&mut events).len(), 1);
    assert!(cache.snapshot()[0].in_use);
    drop((x, y));
    assert!(!cache.snapshot()[0].in_use);
}

#[tokio::test]
async fn cache_evict_on_request_waits_for_the_last_holder() {
    let dir = tempfile::tempdir().unwrap();
    let fetch = MemFetch::default();
    let [a, b] = [1, 2].map(|s| bundle(&fetch, s, 3000));
    let (cache, mut events) = Cache::open(dir.path(), MB, fetch).await.unwrap();
    drop(cache.acquire(&a).await.unwrap());
    let lb = cache.acquire(&b).await.unwrap();
    drain(&mut events);
    assert_eq!(cache.evict(a.sha256.as_str()).await.unwrap(), EvictOutcome::Evicted { bytes: 3001 });
    assert_eq!(cache.evict(b.sha256.as_str()).await.unwrap(), EvictOutcome::Deferred { pins: 1 });
    assert_eq!(cache.evict(&"0".repeat(64)).await.unwrap(), EvictOutcome::NotPresent);
    assert!(matches!(cache.evict("../x").await, Err(CacheError::InvalidKey(_))));
    assert!(lb.path().exists());
    drop(lb);
    let evicted = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let mut seen = Vec::new();
        while seen.len() < 2 {
            seen.push(events.recv().await.unwrap());
        }
        seen
    })
    .await
    .unwrap();
    assert_eq!(
        evicted,
        [
            CacheEvent::Evicted { sha256: a.sha256.to_string(), bytes: 3001, reason: EvictReason::Requested },
            CacheEvent::Evicted { sha256: b.sha256.to_string(), bytes: 3001, reason: EvictReason::Requested },
        ]
    );
    assert!(cache.snapshot().is_empty());
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());
}
