//! The handle table: slot index = FUSE file handle (with its generation in the high 32 bits).
//! Each LIVE slot holds an fd opened for the guest (a file, or a directory read statelessly by
//! offset), the node it was opened from, and its open flags.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::Error;
use super::slots::{Pin, Slot, SlotHeader, SlotTable};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum HandleKind {
    File = 1,
    Dir = 2,
    /// An fd held for one lock owner's POSIX/OFD record locks on a node (see fs/lock.rs).
    LockOwner = 3,
}

#[repr(C)]
#[derive(Debug, Default)]
pub struct HandleSlot {
    pub hdr: SlotHeader,
    pub kind: AtomicU32,
    pub open_flags: AtomicU32,
    pub nodeid: AtomicU64,
    /// LockOwner slots: the kernel's lock owner id, and the pid that last locked through it.
    pub owner: AtomicU64,
    pub pid: AtomicU32,
    _pad: AtomicU32,
}

const _: () = assert!(size_of::<HandleSlot>() == 48);

impl Slot for HandleSlot {
    fn header(&self) -> &SlotHeader {
        &self.hdr
    }
}

impl HandleSlot {
    pub fn kind(&self) -> Option<HandleKind> {
        match self.kind.load(Ordering::Relaxed) {
            1 => Some(HandleKind::File),
            2 => Some(HandleKind::Dir),
            3 => Some(HandleKind::LockOwner),
            _ => None,
        }
    }
}

pub type HandlePin = Pin<HandleSlot>;

pub struct Handles {
    table: SlotTable<HandleSlot>,
}

impl Handles {
    pub fn new(slots: &'static [HandleSlot], high_water: &'static AtomicU32) -> Self {
        Handles { table: SlotTable::new(slots, high_water, Error::BadHandle) }
    }

    /// Publishes a new handle owning `fd`; on failure the fd is closed.
    pub fn insert(&self, fd: i32, kind: HandleKind, nodeid: u64, open_flags: u32) -> Result<u64, Error> {
        self.insert_with(fd, kind, nodeid, open_flags, 0)
    }

    /// Publishes a lock-owner handle for `owner` on `nodeid`.
    pub fn insert_lock_owner(&self, fd: i32, nodeid: u64, owner: u64) -> Result<u64, Error> {
        self.insert_with(fd, HandleKind::LockOwner, nodeid, 0, owner)
    }

    fn insert_with(&self, fd: i32, kind: HandleKind, nodeid: u64, open_flags: u32, owner: u64) -> Result<u64, Error> {
        let i = match self.table.alloc() {
            Ok(i) => i,
            Err(e) => {
                crate::sys::close(fd);
                return Err(e);
            }
        };
        let s = self.table.slot(i);
        s.hdr.fd.store(fd, Ordering::Relaxed);
        s.kind.store(kind as u32, Ordering::Relaxed);
        s.open_flags.store(open_flags, Ordering::Relaxed);
        s.nodeid.store(nodeid, Ordering::Relaxed);
        s.owner.store(owner, Ordering::Relaxed);
        s.pid.store(0, Ordering::Relaxed);
        Ok(self.table.publish(i))
    }

    /// Pins handle `fh`, which must be of `kind`.
    pub fn pin(&self, fh: u64, kind: HandleKind) -> Result<HandlePin, Error> {
        let p = self.table.pin(fh)?;
        if p.slot().kind() != Some(kind) {
            return Err(Error::BadHandle);
        }
        Ok(p)
    }

    /// Retires handle `fh` of `kind`, closing its fd once no request uses it; returns the node
    /// it was opened from.
    pub fn release(&self, fh: u64, kind: HandleKind) -> Result<u64, Error> {
        let p = self.pin(fh, kind)?;
        let nodeid = p.slot().nodeid.load(Ordering::Relaxed);
        let (i, _) = super::slots::split_id(p.id());
        // Two RELEASEs of one fh race here; only the one that moves LIVE → RETIRING proceeds.
        let won = p.slot().hdr.state.compare_exchange(
            super::slots::LIVE,
            super::slots::RETIRING,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        drop(p);
        if won.is_err() {
            return Err(Error::BadHandle);
        }
        self.table.finish_retire(i);
        Ok(nodeid)
    }

    pub fn live_count(&self) -> usize {
        self.table.live_count()
    }
}
