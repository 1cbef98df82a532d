//! The inode table: slot index = FUSE node id (with its generation in the high 32 bits). Each
//! LIVE slot holds an `O_PATH` fd for one host object, that object's key, and the lookup count
//! the kernel or guest holds on it. A heap index maps keys to slots so that two lookups of the
//! same object yield the same node id.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::Error;
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

/// A lookup's outcome: the node id, and whether a new slot was made for it.
#[derive(Debug, Clone, Copy)]
pub struct Looked {
    pub nodeid: u64,
    pub generation: u32,
}

impl Inodes {
    pub fn new(slots: &'static [InodeSlot], high_water: &'static AtomicU32) -> Self {
        Inodes { table: SlotTable::new(slots, high_water, Error::BadNodeId), index: Mutex::new(HashMap::new()) }
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
        debug_assert_eq!(id, crate::fuse::abi::ROOT_ID);
        self.index.lock().unwrap().insert(key, index);
        Ok(())
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
    /// takes `fd` over.
    pub fn lookup(&self, fd: i32, key: InodeKey, file_type: u32) -> Result<Looked, Error> {
        let mut index = self.index.lock().unwrap();
        if let Some(&i) = index.get(&key) {
            let s = self.table.slot(i);
            s.lookups.fetch_add(1, Ordering::SeqCst);
            crate::sys::close(fd);
            let generation = s.hdr.generation.load(Ordering::Relaxed);
            return Ok(Looked { nodeid: slots::make_id(i, generation), generation });
        }
        let i = match self.table.alloc() {
            Ok(i) => i,
            Err(e) => {
                crate::sys::close(fd);
                return Err(e);
            }
        };
        self.fill(i, fd, key, file_type);
        let nodeid = self.table.publish(i);
        index.insert(key, i);
        Ok(Looked { nodeid, generation: slots::split_id(nodeid).1 })
    }

    pub fn pin(&self, nodeid: u64) -> Result<InodePin, Error> {
        self.table.pin(nodeid)
    }

    /// Drops `n` lookups from `nodeid`; at zero the slot is retired and its fd closed. Unknown
    /// or stale ids are ignored (FORGET has no reply to carry an error).
    pub fn forget(&self, nodeid: u64, n: u64) {
        let (i, generation) = slots::split_id(nodeid);
        if i <= 1 || i as usize >= self.table.capacity() {
            return; // the root is never forgotten
        }
        let s = self.table.slot(i);
        {
            let mut index = self.index.lock().unwrap();
            if s.hdr.state.load(Ordering::SeqCst) != slots::LIVE
                || s.hdr.generation.load(Ordering::SeqCst) != generation
            {
                return;
            }
            let old = s.lookups.load(Ordering::SeqCst);
            let new = old.saturating_sub(n);
            s.lookups.store(new, Ordering::SeqCst);
            if new > 0 {
                return;
            }
            index.remove(&s.key());
            self.table.begin_retire(i);
        }
        self.table.finish_retire(i);
    }

    pub fn live_count(&self) -> usize {
        self.table.live_count()
    }
}
