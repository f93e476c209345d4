//! The cache's bookkeeping, in memory and free of I/O: which entries and partial downloads there
//! are, which are pinned, and how many bytes count against the bound. Every byte the cache has on
//! disk (or is about to write) is in exactly one of `entries`, `partials`, `reserved` or
//! `deleting`, and room is only reserved while their sum stays within the bound, so the bound
//! holds on disk too.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// A cached, unpacked bundle.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub bytes: u64,
    pub zip_bytes: u64,
    pub files: u64,
    pub added_ms: u64,
    pub last_used_ms: u64,
    /// Position in the LRU order (higher is more recent); unique within the process.
    pub tick: u64,
    /// Leases handed out and not yet dropped.
    pub pins: usize,
    /// EvictTemplate arrived while pinned: removed when the last lease goes.
    pub evict_requested: bool,
}

/// An incomplete download no acquire is working on (kept for a resume, evictable).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Partial {
    pub bytes: u64,
    pub tick: u64,
}

/// Something taken out of the books to be deleted from disk.
#[derive(Debug)]
pub(crate) enum Victim {
    Entry(String, Entry),
    Partial(String, u64),
}

impl Victim {
    pub fn bytes(&self) -> u64 {
        match self {
            Self::Entry(_, e) => e.bytes,
            Self::Partial(_, b) => *b,
        }
    }

    pub fn sha256(&self) -> &str {
        match self {
            Self::Entry(s, _) | Self::Partial(s, _) => s,
        }
    }
}

/// The answer to "may I have `need` more bytes?".
#[derive(Debug)]
pub(crate) enum Admission {
    /// Reserved: the caller owns `need` more bytes of `reserved`.
    Granted,
    /// Delete these (already out of the books, counted in `deleting`), then ask again.
    Evict(Vec<Victim>),
    /// Other deletions in progress will make room: wait for a change, then ask again.
    Wait,
    /// Even evicting everything evictable would not make room.
    Full { pinned: u64 },
}

#[derive(Debug)]
pub(crate) struct State {
    pub bound: u64,
    pub entries: HashMap<String, Entry>,
    pub partials: HashMap<String, Partial>,
    /// Bytes owned by acquires in progress (their partial download, then room to unpack).
    pub reserved: u64,
    /// Bytes of victims being deleted.
    pub deleting: u64,
    /// Entries being deleted: an acquire of one waits until its files are gone.
    pub deleting_keys: HashSet<String>,
    /// One lock per bundle being fetched, so concurrent acquires download it once.
    pub fill_locks: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
    next_tick: u64,
}

impl State {
    pub fn new(bound: u64) -> Self {
        Self {
            bound,
            entries: HashMap::new(),
            partials: HashMap::new(),
            reserved: 0,
            deleting: 0,
            deleting_keys: HashSet::new(),
            fill_locks: HashMap::new(),
            next_tick: 0,
        }
    }

    pub fn tick(&mut self) -> u64 {
        self.next_tick += 1;
        self.next_tick
    }

    pub fn used(&self) -> u64 {
        let entries: u64 = self.entries.values().map(|e| e.bytes).sum();
        let partials: u64 = self.partials.values().map(|p| p.bytes).sum();
        entries + partials + self.reserved + self.deleting
    }

    pub fn pinned(&self) -> u64 {
        self.entries.values().filter(|e| e.pins > 0).map(|e| e.bytes).sum()
    }

    /// Reserves `need` bytes if they fit; otherwise picks least recently used unpinned entries
    /// and partial downloads to delete until they would.
    pub fn admit(&mut self, need: u64) -> Admission {
        let used = self.used();
        if used.saturating_add(need) <= self.bound {
            self.reserved += need;
            return Admission::Granted;
        }
        let mut candidates: Vec<(u64, &str, u64)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.pins == 0)
            .map(|(k, e)| (e.tick, k.as_str(), e.bytes))
            .chain(self.partials.iter().map(|(k, p)| (p.tick, k.as_str(), p.bytes)))
            .collect();
        candidates.sort_unstable();
        let excess = used.saturating_add(need) - self.bound;
        let mut freed = 0u64;
        let mut picked = Vec::new();
        for (_, key, bytes) in candidates {
            if freed >= excess {
                break;
            }
            freed += bytes;
            picked.push(key.to_owned());
        }
        if freed < excess {
            return if freed + self.deleting >= excess {
                Admission::Wait
            } else {
                Admission::Full { pinned: self.pinned() + self.reserved }
            };
        }
        let victims: Vec<Victim> = picked
            .into_iter()
            .filter_map(|key| {
                // An entry and a partial of one key never coexist: a partial is dropped when
                // its entry commits.
                if let Some(e) = self.entries.remove(&key) {
                    self.deleting_keys.insert(key.clone());
                    Some(Victim::Entry(key, e))
                } else {
                    self.partials.remove(&key).map(|p| Victim::Partial(key, p.bytes))
                }
            })
            .collect();
        self.deleting += victims.iter().map(Victim::bytes).sum::<u64>();
        Admission::Evict(victims)
    }

    /// The victims' files are gone.
    pub fn deleted(&mut self, victims: &[Victim]) {
        for v in victims {
            self.deleting -= v.bytes();
            if let Victim::Entry(key, _) = v {
                self.deleting_keys.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(bytes: u64, tick: u64, pins: usize) -> Entry {
        Entry { bytes, zip_bytes: bytes, files: 1, added_ms: 0, last_used_ms: 0, tick, pins, evict_requested: false }
    }

    fn keys(a: &Admission) -> Vec<&str> {
        match a {
            Admission::Evict(v) => v.iter().map(Victim::sha256).collect(),
            _ => vec![],
        }
    }

    #[test]
    fn evicts_least_recently_used_unpinned_first_and_only_as_much_as_needed() {
        let mut s = State::new(100);
        s.entries.insert("old".into(), entry(30, 1, 0));
        s.entries.insert("pinned".into(), entry(30, 0, 1));
        s.partials.insert("part".into(), Partial { bytes: 10, tick: 2 });
        s.entries.insert("new".into(), entry(30, 3, 0));
        let a = s.admit(35);
        assert_eq!(keys(&a), ["old", "part"]);
        assert_eq!(s.used(), 100, "victims stay counted until deleted");
        assert!(matches!(s.admit(35), Admission::Wait));
        if let Admission::Evict(v) = a {
            s.deleted(&v);
        }
        assert!(matches!(s.admit(35), Admission::Granted));
        assert_eq!(s.used(), 95);
        if let Some(e) = s.entries.get_mut("new") {
            e.pins = 1;
        }
        assert!(matches!(s.admit(10), Admission::Full { pinned: 95 }));
    }
}
