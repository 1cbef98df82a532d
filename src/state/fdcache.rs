//! The bounded cache of `O_PATH` fds for inodes that are kept as file handles: an inode slot
//! with a file handle holds no fd; a request that needs one gets it here, opened with
//! `open_by_handle_at` on a miss, and gives it back when its pin drops.
//!
//! Heap only, on purpose: a worker's death loses the cache, and the next worker's fd sweep
//! closes the fds it held (no slot names them), so nothing about it needs to be crash-safe.
//! Bounded: above `capacity` entries, unused entries are closed oldest first (a second-chance
//! clock); entries in use are skipped, so the cache exceeds its capacity only by the fds in use
//! by requests at that moment (at most a few per serving thread).

use rustc_hash::FxHashMap as HashMap;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

const SHARDS: usize = 16;

struct Entry {
    fd: i32,
    generation: u32,
    users: u32,
    /// Used since the clock hand last passed: spared once.
    recent: bool,
}

#[derive(Default)]
struct Shard {
    entries: HashMap<u32, Entry>,
    /// Slot indices in insertion order (may name entries already removed).
    clock: VecDeque<u32>,
}

pub struct FdCache {
    shards: Vec<Mutex<Shard>>,
    per_shard: AtomicUsize,
}

impl Default for FdCache {
    fn default() -> Self {
        FdCache::new(1024)
    }
}

impl FdCache {
    pub fn new(capacity: usize) -> FdCache {
        let shards = (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect();
        FdCache { shards, per_shard: AtomicUsize::new(capacity.div_ceil(SHARDS).max(1)) }
    }

    pub fn set_capacity(&self, capacity: usize) {
        self.per_shard.store(capacity.div_ceil(SHARDS).max(1), Ordering::Relaxed);
    }

    fn shard(&self, index: u32) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[index as usize % SHARDS].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached fd of slot `index` at `generation`, taken for use (give it back with `put`).
    pub fn take(&self, index: u32, generation: u32) -> Option<i32> {
        let mut s = self.shard(index);
        let e = s.entries.get_mut(&index).filter(|e| e.generation == generation)?;
        e.users += 1;
        e.recent = true;
        Some(e.fd)
    }

    /// Whether an fd of slot `index` at `generation` is cached: then the slot's object is alive
    /// (the fd keeps it), so its inode number is its own and no other object's. (A negative
    /// "fd", the state tests' stand-in for one, keeps nothing alive.)
    pub fn holds(&self, index: u32, generation: u32) -> bool {
        self.shard(index).entries.get(&index).is_some_and(|e| e.generation == generation && e.fd >= 0)
    }

    /// Adds `fd` (fresh, ours) for slot `index`; `used` takes it for use at once. Returns the
    /// fd to use: `fd`, or the one another thread cached first (then `fd` is closed); -1 (and
    /// `fd` closed) if the slot's entry belongs to another incarnation of it that is in use,
    /// which happens only for `used == false` (a pin holds its slot's generation).
    pub fn insert(&self, index: u32, generation: u32, fd: i32, used: bool) -> i32 {
        let mut s = self.shard(index);
        if let Some(e) = s.entries.get_mut(&index) {
            if e.generation == generation {
                e.users += u32::from(used);
                crate::sys::close(fd);
                return e.fd;
            }
            // Another incarnation of the slot. In use (a later occupant's pin): keep it, and ours
            // is not needed. Unused: replace it (a stale one is never used again).
            if e.users > 0 {
                crate::sys::close(fd);
                return -1;
            }
            crate::sys::close(e.fd);
        }
        s.entries.insert(index, Entry { fd, generation, users: u32::from(used), recent: false });
        s.clock.push_back(index);
        self.evict(&mut s);
        fd
    }

    /// Gives back an fd `take` or `insert(used)` handed out.
    pub fn put(&self, index: u32) {
        let mut s = self.shard(index);
        if let Some(e) = s.entries.get_mut(&index) {
            e.users = e.users.saturating_sub(1);
        }
        self.evict(&mut s);
    }

    /// Drops the entry of slot `index` at `generation` (that incarnation is retired: no pin on
    /// it is left), closing its fd. An entry of a later occupant of the slot is left alone.
    pub fn remove(&self, index: u32, generation: u32) {
        let mut s = self.shard(index);
        if s.entries.get(&index).is_some_and(|e| e.generation == generation && e.users == 0)
            && let Some(e) = s.entries.remove(&index)
        {
            crate::sys::close(e.fd);
        }
    }

    /// Entries now held (for tests and logs).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).entries.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes unused entries, oldest first, while the shard is over its share of the capacity.
    /// Bounded: each clock position is looked at most twice per call.
    fn evict(&self, s: &mut Shard) {
        let cap = self.per_shard.load(Ordering::Relaxed);
        let mut budget = 2 * s.clock.len();
        while s.entries.len() > cap && budget > 0 {
            budget -= 1;
            let Some(index) = s.clock.pop_front() else { break };
            let Some(e) = s.entries.get_mut(&index) else { continue };
            if e.users > 0 || e.recent {
                e.recent = false;
                s.clock.push_back(index);
                continue;
            }
            crate::sys::close(e.fd);
            s.entries.remove(&index);
        }
        // Positions of removed entries are dropped lazily above; keep the queue from growing
        // without bound when nothing is over capacity.
        if s.clock.len() > 4 * cap.max(s.entries.len()) {
            let entries = &s.entries;
            s.clock.retain(|i| entries.contains_key(i));
        }
    }
}

impl Drop for FdCache {
    /// A worker's cache lives as long as the worker; a dropped one (a test's) closes its fds.
    fn drop(&mut self) {
        for s in &self.shards {
            for e in s.lock().unwrap_or_else(|e| e.into_inner()).entries.values() {
                crate::sys::close(e.fd);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd() -> i32 {
        crate::sys::open(c"/dev/null", libc::O_PATH).unwrap()
    }

    #[test]
    fn test_fdcache_bounded_and_spares_fds_in_use() {
        let c = FdCache::new(SHARDS); // one entry per shard
        let a = c.insert(0, 0, fd(), true);
        let b = c.insert(16, 0, fd(), false); // same shard: over capacity, `a` is in use
        assert_eq!(c.take(0, 0), Some(a));
        assert!(c.take(16, 0).is_none() || c.len() <= 2);
        c.put(0);
        c.put(0);
        let _ = b;
        c.insert(32, 0, fd(), false);
        assert!(c.len() <= 2, "{}", c.len());
    }

    #[test]
    fn test_fdcache_generation_mismatch_misses() {
        let c = FdCache::new(64);
        let f = c.insert(5, 1, fd(), false);
        assert_eq!(c.take(5, 2), None);
        assert_eq!(c.take(5, 1), Some(f));
        c.put(5);
        c.remove(5, 1);
        assert!(c.is_empty());
        assert!(!crate::sys::is_open(f));
    }
}
