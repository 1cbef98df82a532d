//! The key index in the region: (dev, ino, mnt_id) → inode slot, an open-addressing hash table
//! of slot indices (linear probing, keys compared by reading the slot), so that a worker taking
//! over finds it built: recovery does not rebuild it per inode (175 ms at 1M live inodes when it
//! was a heap map).
//!
//! Every change is one store of a cell, made under the inode table's index mutex (one writer at
//! a time). The index and the slot table are changed together under a journal word naming the
//! one slot concerned; recovery makes that one slot's entry agree with the slot's state (LIVE:
//! present; anything else: absent). Invariant outside the journal: a cell names a slot iff the
//! slot is LIVE with that key.
//!
//! Cells: 0 empty, u32::MAX a tombstone (a removed entry inside a probe run), else a slot index.
//! A tombstone followed by an empty cell is made empty (one store each, walking back), so
//! tombstones live only inside runs and churn does not fill the table.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::inodes::{InodeKey, InodeSlot};
use super::slots::SlotHeader;

const EMPTY: u32 = 0;
const TOMB: u32 = u32::MAX;

/// Cells for an inode table of `capacity` slots: a power of two, at least twice as many, so the
/// load factor stays under 1/2.
pub fn cells_for(capacity: u32) -> u64 {
    (2 * u64::from(capacity)).next_power_of_two().max(16)
}

/// The index over one region's inode slots.
pub struct KeyIndex {
    cells: &'static [AtomicU32],
    headers: &'static [SlotHeader],
    slots: &'static [InodeSlot],
    /// Slot index + 1 whose entry is being changed together with its slot (0: none).
    journal: &'static AtomicU64,
}

fn hash(k: &InodeKey) -> u64 {
    // Deterministic across processes (a new worker must probe where the old one stored).
    let mut h = k.ino.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^= k.dev.wrapping_mul(0xc2b2_ae3d_27d4_eb4f).rotate_left(29);
    h ^= k.mnt_id.wrapping_mul(0x1656_67b1_9e37_79f9).rotate_left(47);
    h ^ (h >> 31)
}

impl KeyIndex {
    pub fn new(
        cells: &'static [AtomicU32],
        headers: &'static [SlotHeader],
        slots: &'static [InodeSlot],
        journal: &'static AtomicU64,
    ) -> KeyIndex {
        debug_assert!(cells.len().is_power_of_two());
        KeyIndex { cells, headers, slots, journal }
    }

    fn probe(&self, key: &InodeKey) -> impl Iterator<Item = usize> + '_ {
        let mask = self.cells.len() - 1;
        let start = hash(key) as usize & mask;
        (0..self.cells.len()).map(move |n| (start + n) & mask)
    }

    fn names(&self, cell: u32, key: &InodeKey) -> bool {
        cell != EMPTY
            && cell != TOMB
            && (cell as usize) < self.slots.len()
            && self.slots[cell as usize].key() == *key
            && self.headers[cell as usize].state.load(Ordering::SeqCst) == super::slots::LIVE
    }

    /// The LIVE slot whose key is `key`.
    pub fn get(&self, key: &InodeKey) -> Option<u32> {
        for p in self.probe(key) {
            let c = self.cells[p].load(Ordering::Relaxed);
            if c == EMPTY {
                return None;
            }
            if self.names(c, key) {
                return Some(c);
            }
        }
        None
    }

    /// Names the slot about to change with its entry (see `repair`).
    pub fn begin(&self, index: u32) {
        self.journal.store(u64::from(index) + 1, Ordering::SeqCst);
    }

    pub fn end(&self) {
        self.journal.store(0, Ordering::SeqCst);
    }

    /// Adds `index` for `key` (absent: the caller looked). One store.
    pub fn insert(&self, key: &InodeKey, index: u32) {
        for p in self.probe(key) {
            let c = self.cells[p].load(Ordering::Relaxed);
            if c == EMPTY || c == TOMB {
                self.cells[p].store(index, Ordering::SeqCst);
                return;
            }
        }
        // Unreachable: the table has twice as many cells as slots.
        tracing::error!("key index full");
    }

    /// Removes the entry naming `index` on `key`'s probe run, if there is one.
    pub fn remove(&self, key: &InodeKey, index: u32) {
        let mask = self.cells.len() - 1;
        for p in self.probe(key) {
            let c = self.cells[p].load(Ordering::Relaxed);
            if c == EMPTY {
                return;
            }
            if c == index {
                self.cells[p].store(TOMB, Ordering::SeqCst);
                // Tombstones before an empty cell end no run that needs them: empty them.
                let mut q = p;
                while self.cells[(q + 1) & mask].load(Ordering::Relaxed) == EMPTY
                    && self.cells[q].load(Ordering::Relaxed) == TOMB
                {
                    self.cells[q].store(EMPTY, Ordering::SeqCst);
                    q = q.wrapping_sub(1) & mask;
                }
                return;
            }
        }
    }

    /// Recovery: the slot the journal names (a change cut short by the crash) gets the entry its
    /// state calls for: present if LIVE, absent otherwise. O(1): nothing else can disagree.
    pub fn repair(&self) {
        let named = self.journal.load(Ordering::SeqCst);
        if named == 0 || named > self.slots.len() as u64 {
            self.end();
            return;
        }
        let index = (named - 1) as u32;
        let s = &self.slots[index as usize];
        let key = s.key();
        let present = self
            .probe(&key)
            .map(|p| self.cells[p].load(Ordering::Relaxed))
            .take_while(|c| *c != EMPTY)
            .any(|c| c == index);
        let live = self.headers[index as usize].state.load(Ordering::SeqCst) == super::slots::LIVE;
        if live && !present {
            self.insert(&key, index);
        } else if !live && present {
            self.remove(&key, index);
        }
        self.end();
    }
}
