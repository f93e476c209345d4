//! What the cache reports: changes (for the orchestrator's CacheChange) and its contents (for
//! Hello and the scheduler's placement).

use std::time::SystemTime;

/// Why an entry left the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvictReason {
    /// Least recently used, to make room within the byte bound.
    Lru,
    /// The orchestrator asked (EvictTemplate).
    Requested,
    /// Found corrupt after a restart (manifest or unpacked files do not match) and removed.
    Corrupt,
}

/// A change of the cache's contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheEvent {
    /// Downloaded, verified, unpacked; `bytes` is what it occupies (unpacked).
    Added { sha256: String, bytes: u64 },
    /// Removed.
    Evicted { sha256: String, bytes: u64, reason: EvictReason },
}

/// One cached bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryInfo {
    pub sha256: String,
    /// Unpacked bytes, what counts toward the bound.
    pub bytes: u64,
    pub added_at: SystemTime,
    pub last_used_at: SystemTime,
    /// Held by a running task (cannot be evicted until released).
    pub in_use: bool,
}

/// How full the cache is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Everything counted against the bound: entries, partial downloads, space reserved by
    /// downloads and unpacks in progress, and entries being deleted.
    pub used: u64,
    pub bound: u64,
    /// Of `used`, entries held by running tasks.
    pub pinned: u64,
    pub entries: usize,
}
