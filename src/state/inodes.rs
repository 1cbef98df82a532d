//! The inode table: slot index = FUSE node id (with its generation in the high 32 bits). Each
//! LIVE slot holds an `O_PATH` fd for one host object, that object's key, and the lookup count
//! the kernel or guest holds on it. A heap index maps keys to slots so that two lookups of the
//! same object yield the same node id.

use rustc_hash::FxHashMap as HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::Error;
use super::intent::{Intent, Pending, Record, facts};
use super::slots::{self, Pin, Slot, SlotHeader, SlotTable};

/// What identifies a host object: two fds with the same key are the same inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InodeKey {
    pub dev: u64,
    pub ino: u64,
    pub mnt_id: u64,
}

#[repr(C)]
#[derive(Debug, Default)]
pub struct InodeSlot {
    pub hdr: SlotHeader,
    /// S_IFMT bits of the object.
    pub file_type: AtomicU32,
    _pad: AtomicU32,
    pub dev: AtomicU64,
    pub ino: AtomicU64,
    pub mnt_id: AtomicU64,
    pub lookups: AtomicU64,
    _reserved: [AtomicU64; 2],
}

const _: () = assert!(size_of::<InodeSlot>() == 72);

impl Slot for InodeSlot {
    fn header(&self) -> &SlotHeader {
        &self.hdr
    }
}

impl InodeSlot {
    pub fn key(&self) -> InodeKey {
        InodeKey {
            dev: self.dev.load(Ordering::Relaxed),
            ino: self.ino.load(Ordering::Relaxed),
            mnt_id: self.mnt_id.load(Ordering::Relaxed),
        }
    }
}

pub type InodePin = Pin<InodeSlot>;

pub struct Inodes {
    table: SlotTable<InodeSlot>,
    /// Key → index of the LIVE slot for that object. Held while lookup counts change, so that a
    /// count reaching zero and a concurrent lookup of the same object cannot interleave.
    index: Mutex<HashMap<InodeKey, u32>>,
}

/// The root's node id: slot 1, generation 0 (slot 0 is never used, so no id is 0).
pub const ROOT_ID: u64 = 1;

/// One entry of a FORGET: drop `nlookup` lookups from `nodeid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forget {
    pub nodeid: u64,
    pub nlookup: u64,
}

/// A lookup's outcome: the node id and its generation.
#[derive(Debug, Clone, Copy)]
pub struct Looked {
    pub nodeid: u64,
    pub generation: u32,
}

impl Inodes {
    pub fn new(slots: &'static [InodeSlot], high_water: &'static AtomicU32) -> Self {
        Inodes { table: SlotTable::new(slots, high_water, Error::BadNodeId), index: Mutex::new(HashMap::default()) }
    }

    /// Installs the shared directory as node 1 (slot 1, generation 0), holding one lookup that
    /// is never forgotten.
    pub fn install_root(&self, fd: i32, key: InodeKey, file_type: u32) -> Result<(), Error> {
        let index = self.table.alloc()?;
        if index != 1 {
            return Err(Error::RootNotFirst(index));
        }
        self.fill(index, fd, key, file_type);
        let id = self.table.publish(index);
        debug_assert_eq!(id, ROOT_ID);
        self.index.lock().unwrap().insert(key, index);
        Ok(())
    }

    /// Whether the root (slot 1) is LIVE, i.e. a region a worker already set up.
    pub fn has_root(&self) -> bool {
        self.table.is_live(ROOT_ID)
    }

    fn fill(&self, index: u32, fd: i32, key: InodeKey, file_type: u32) {
        let s = self.table.slot(index);
        s.hdr.fd.store(fd, Ordering::Relaxed);
        s.file_type.store(file_type, Ordering::Relaxed);
        s.dev.store(key.dev, Ordering::Relaxed);
        s.ino.store(key.ino, Ordering::Relaxed);
        s.mnt_id.store(key.mnt_id, Ordering::Relaxed);
        s.lookups.store(1, Ordering::Relaxed);
    }

    /// Records one lookup of the object `key`, whose freshly opened `O_PATH` fd is `fd`: raises
    /// the count of its existing slot (closing `fd`, a duplicate) or publishes a new slot that
    /// takes `fd` over. The raise is two-phase in `intent` (see state/intent.rs).
    pub fn lookup(&self, fd: i32, key: InodeKey, file_type: u32, intent: Intent) -> Result<Looked, Error> {
        let rec = intent.record();
        let mut index = self.index.lock().unwrap();
        if let Some(&i) = index.get(&key) {
            let s = self.table.slot(i);
            let generation = s.hdr.generation.load(Ordering::Relaxed);
            let nodeid = slots::make_id(i, generation);
            let before = s.lookups.load(Ordering::SeqCst);
            if let Some(r) = rec {
                r.begin_pending(Pending::Raise, nodeid, before);
            }
            crate::crash_point!("raise.pending");
            // Crash after this store: the record's pending raise sees count == before + 1 at
            // recovery and counts it as done; before it, as not done. Nothing else can change the
            // count in between: the index mutex is held until the whole worker dies.
            s.lookups.store(before + 1, Ordering::SeqCst);
            crate::crash_point!("raise.applied");
            if let Some(r) = rec {
                r.push_raised(nodeid);
            }
            crate::sys::close(fd);
            return Ok(Looked { nodeid, generation });
        }
        let i = match self.table.alloc() {
            Ok(i) => i,
            Err(e) => {
                crate::sys::close(fd);
                return Err(e);
            }
        };
        self.fill(i, fd, key, file_type);
        let generation = self.table.slot(i).hdr.generation.load(Ordering::Relaxed);
        if let Some(r) = rec {
            r.begin_pending(Pending::Raise, slots::make_id(i, generation), 0);
        }
        crate::crash_point!("raise.new_pending");
        let nodeid = self.table.publish(i);
        crate::crash_point!("raise.new_published");
        if let Some(r) = rec {
            r.push_raised(nodeid);
        }
        index.insert(key, i);
        Ok(Looked { nodeid, generation })
    }

    pub fn pin(&self, nodeid: u64) -> Result<InodePin, Error> {
        self.table.pin(nodeid)
    }

    /// Drops `n` lookups from `nodeid`; at zero the slot is retired and its fd closed. Unknown
    /// or stale ids are ignored (FORGET has no reply to carry an error). The record holds the
    /// target count, not the decrement, so finishing it after a crash cannot apply it twice.
    pub fn forget(&self, nodeid: u64, n: u64, intent: Intent) {
        self.forget_entry(nodeid, n, intent, None);
    }

    /// `forget` as entry `entry` of a FORGET or BATCH_FORGET: inside the same critical section
    /// the record's step moves to `entry + 1`, so recovery knows exactly which entries are done
    /// (with a pending change still named in the record, entry `facts::FORGET_ENTRY` is the one in
    /// hand).
    pub fn forget_entry(&self, nodeid: u64, n: u64, intent: Intent, entry: Option<u32>) {
        let (i, generation) = slots::split_id(nodeid);
        let rec = intent.record();
        let finish_entry = |r: &Record| {
            if let Some(k) = entry {
                r.set_step(k + 1);
            }
            r.end_pending();
        };
        let valid = i > 1 && (i as usize) < self.table.capacity(); // the root is never forgotten
        let s = valid.then(|| self.table.slot(i));
        {
            let mut index = self.index.lock().unwrap();
            let live = s.filter(|s| {
                s.hdr.state.load(Ordering::SeqCst) == slots::LIVE
                    && s.hdr.generation.load(Ordering::SeqCst) == generation
            });
            let Some(s) = live else {
                if let Some(r) = rec {
                    finish_entry(r);
                }
                return;
            };
            let target = s.lookups.load(Ordering::SeqCst).saturating_sub(n);
            if let Some(r) = rec {
                match entry {
                    Some(k) => {
                        r.set_fact(facts::FORGET_ENTRY, k);
                        r.begin_pending(Pending::ForgetEntry, nodeid, target);
                    }
                    None => r.begin_pending(Pending::Forget, nodeid, target),
                }
            }
            crate::crash_point!("forget.pending");
            // Crash after this store (or before it): recovery sets the count to the target again.
            s.lookups.store(target, Ordering::SeqCst);
            if target == 0 {
                index.remove(&s.key());
                self.table.begin_retire(i);
            }
            crate::crash_point!("forget.applied");
            if let Some(r) = rec {
                finish_entry(r);
            }
            if target > 0 {
                return;
            }
        }
        self.table.finish_retire(i);
    }

    /// A new FUSE session (a second INIT: the guest rebooted without forgetting its nodes):
    /// every node but the root is forgotten. Idempotent, so a replayed INIT after a crash midway
    /// forgets what is left. Returns how many nodes were forgotten.
    pub fn forget_all(&self) -> usize {
        let mut forgotten = 0;
        for i in 2..self.table.high_water() as u32 {
            let s = self.table.slot(i);
            if s.hdr.state.load(Ordering::SeqCst) == slots::LIVE {
                self.forget(slots::make_id(i, s.hdr.generation.load(Ordering::SeqCst)), u64::MAX, Intent::none());
                forgotten += 1;
            }
        }
        forgotten
    }

    /// The entries of a FORGET or BATCH_FORGET, from the first one
    /// the record does not count as done (its step), each exactly once.
    pub fn forget_entries(&self, entries: &[Forget], intent: Intent) {
        for (k, f) in entries.iter().enumerate().skip(intent.step() as usize) {
            self.forget_entry(f.nodeid, f.nlookup, intent, Some(k as u32));
        }
    }

    /// Undoes one raise this request made (a READDIRPLUS being redone, or an abandoned request).
    pub fn unraise(&self, nodeid: u64, intent: Intent) {
        self.forget(nodeid, 1, intent);
        if let Some(r) = intent.record() {
            r.pop_raised();
        }
    }

    /// Recovery: settles a record's pending count change from what the table shows.
    pub fn settle_pending(&self, r: &Record) {
        let id = r.pending_id.load(Ordering::Acquire);
        let value = r.pending_value.load(Ordering::Acquire);
        let (i, generation) = slots::split_id(id);
        let slot = (i > 0 && (i as usize) < self.table.capacity()).then(|| self.table.slot(i));
        let live = slot.filter(|s| {
            s.hdr.state.load(Ordering::SeqCst) == slots::LIVE && s.hdr.generation.load(Ordering::SeqCst) == generation
        });
        match r.pending() {
            Pending::Raise => match live {
                Some(s) if s.lookups.load(Ordering::SeqCst) == value + 1 => r.push_raised(id),
                _ => r.end_pending(),
            },
            kind @ (Pending::Forget | Pending::ForgetEntry) => {
                if kind == Pending::ForgetEntry {
                    r.set_step(r.fact(facts::FORGET_ENTRY) + 1);
                }
                if let Some(s) = live {
                    s.lookups.store(value, Ordering::SeqCst);
                    if value == 0 && i > 1 {
                        // The scan that follows finishes the retirement.
                        self.table.begin_retire(i);
                    }
                }
                r.end_pending();
            }
            // A handle's publication is settled by the handle table.
            Pending::None | Pending::Handle => {}
        }
    }

    /// Recovery: repairs half-done slots, resets pins, and rebuilds the key index and free list.
    pub fn recover(&self) -> usize {
        let mut index = self.index.lock().unwrap();
        index.clear();
        index.reserve(self.table.high_water());
        self.table.recover(|i, s| {
            index.insert(s.key(), i);
        })
    }
}
