//! The handle table: slot index = FUSE file handle (with its generation in the high 32 bits).
//! Each LIVE slot holds an fd opened for the guest (a file, or a directory read statelessly by
//! offset), the node it was opened from, and its open flags.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::intent::{Intent, Pending, Record};
use super::slots::{self, Pin, Slot, SlotHeader, SlotTable};
use super::{Error, LiveHandle};

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
    pub kind: AtomicU32,
    pub open_flags: AtomicU32,
    pub nodeid: AtomicU64,
    /// LockOwner slots: the kernel's lock owner id, and the pid that last locked through it.
    pub owner: AtomicU64,
    pub pid: AtomicU32,
    /// File slots opened with FUSE passthrough: the connection's backing id the OPEN reply
    /// named (> 0), 0 for none. In what was padding (4 bytes at offset 28, always zero in
    /// regions written before it), so no offset moved and the layout version stays
    /// (tests/layout_fixture.rs). Several handles of one node share one id (the kernel wants
    /// one backing file per inode): fs/passthrough.rs counts them.
    pub backing: AtomicU32,
    /// LockOwner slots: the guest file handle the owner locks through, 0 once it has used more
    /// than one (kept here so that RELEASE of that file still drops it after a crash).
    pub via: AtomicU64,
}

const _: () = assert!(size_of::<HandleSlot>() == 40);

impl Slot for HandleSlot {}

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

/// What a new handle's slot holds besides its fd (the rest of `HandleSlot` starts at zero).
#[derive(Debug, Clone, Copy)]
struct Body {
    kind: HandleKind,
    nodeid: u64,
    /// The guest's open flags.
    open_flags: u32,
    /// A lock-owner handle's lock owner and the guest file it was first used through.
    owner: u64,
    via: u64,
    /// The FUSE passthrough backing id its OPEN reply named (0: none).
    backing: u32,
}

impl Default for Body {
    fn default() -> Self {
        Body { kind: HandleKind::File, nodeid: 0, open_flags: 0, owner: 0, via: 0, backing: 0 }
    }
}

impl Handles {
    pub fn new(headers: &'static [SlotHeader], slots: &'static [HandleSlot], high_water: &'static AtomicU32) -> Self {
        Handles { table: SlotTable::new(headers, slots, high_water, Error::BadHandle) }
    }

    /// Publishes a new handle owning `fd`, noting it in `intent` two-phase so that a crash can
    /// neither leak it nor hand it out twice; on failure the fd is closed.
    pub fn insert(
        &self,
        fd: i32,
        kind: HandleKind,
        nodeid: u64,
        open_flags: u32,
        backing: u32,
        intent: Intent,
    ) -> Result<u64, Error> {
        self.insert_with(fd, Body { kind, nodeid, open_flags, backing, ..Body::default() }, intent)
    }

    /// Publishes a lock-owner handle for `owner` on `nodeid`, first used through guest file
    /// `via` (owned by the node, not by the request that happened to make it: no intent).
    pub fn insert_lock_owner(&self, fd: i32, nodeid: u64, owner: u64, via: u64) -> Result<u64, Error> {
        self.insert_with(
            fd,
            Body { kind: HandleKind::LockOwner, nodeid, owner, via, ..Body::default() },
            Intent::none(),
        )
    }

    fn insert_with(&self, fd: i32, body: Body, intent: Intent) -> Result<u64, Error> {
        let i = match self.table.alloc() {
            Ok(i) => i,
            Err(e) => {
                crate::sys::close(fd);
                return Err(e);
            }
        };
        self.fill(i, fd, &body);
        let id = slots::make_id(i, self.table.header(i).generation.load(Ordering::Relaxed));
        if let Some(r) = intent.record() {
            r.begin_pending(Pending::Handle, id, 0);
        }
        crate::crash_point!("handle.pending");
        // Crash after publishing: recovery finds the pending handle LIVE and gives it to the
        // record, so the replay replies with this same fh; before it, the scan frees the slot.
        let fh = self.table.publish(i);
        crate::crash_point!("handle.published");
        if let Some(r) = intent.record() {
            r.set_handle(fh);
        }
        Ok(fh)
    }

    /// Writes a SETTING_UP slot's fd and body (not yet published: nothing reads it).
    fn fill(&self, i: u32, fd: i32, body: &Body) {
        let s = self.table.slot(i);
        self.table.header(i).fd.store(fd, Ordering::Relaxed);
        s.kind.store(body.kind as u32, Ordering::Relaxed);
        s.open_flags.store(body.open_flags, Ordering::Relaxed);
        s.nodeid.store(body.nodeid, Ordering::Relaxed);
        s.owner.store(body.owner, Ordering::Relaxed);
        s.pid.store(0, Ordering::Relaxed);
        s.via.store(body.via, Ordering::Relaxed);
        s.backing.store(body.backing, Ordering::Relaxed);
    }

    /// Migration, on the source: every LIVE handle.
    pub fn exported(&self) -> Vec<LiveHandle> {
        let mut live = Vec::new();
        for i in 1..self.table.high_water() as u32 {
            let (h, s) = (self.table.header(i), self.table.slot(i));
            if h.state.load(Ordering::SeqCst) != super::slots::LIVE {
                continue;
            }
            if let Some(kind) = s.kind() {
                live.push(LiveHandle {
                    fh: slots::make_id(i, h.generation.load(Ordering::SeqCst)),
                    kind,
                    nodeid: s.nodeid.load(Ordering::Relaxed),
                    owner: s.owner.load(Ordering::Relaxed),
                    backing: s.backing.load(Ordering::Relaxed),
                });
            }
        }
        live
    }

    /// The guest's open flags of LIVE handle `fh` (for a migration's source).
    pub fn open_flags(&self, fh: u64) -> Option<u32> {
        self.table.pin(fh).ok().map(|p| p.slot().open_flags.load(Ordering::Relaxed))
    }

    /// Migration, on the destination: publishes handle `fh` (the one the guest holds) of `kind`
    /// on `nodeid`, owning `fd` (-1: a handle the migration could not reopen; using it fails
    /// with EBADF). A crash before the publication leaves a SETTING_UP slot recovery frees.
    pub fn import(&self, fh: u64, fd: i32, kind: HandleKind, nodeid: u64, open_flags: u32) -> Result<(), Error> {
        let i = match self.table.place(fh) {
            Ok(i) => i,
            Err(e) => {
                if fd >= 0 {
                    crate::sys::close(fd);
                }
                return Err(e);
            }
        };
        self.fill(i, fd, &Body { kind, nodeid, open_flags, ..Body::default() });
        self.table.publish(i);
        Ok(())
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
        self.release_backed(fh, kind).map(|(nodeid, _)| nodeid)
    }

    /// As `release`, also returning the handle's backing id (0 for none): the caller drops its
    /// share of it (fs/passthrough.rs).
    pub fn release_backed(&self, fh: u64, kind: HandleKind) -> Result<(u64, u32), Error> {
        let p = self.pin(fh, kind)?;
        let nodeid = p.slot().nodeid.load(Ordering::Relaxed);
        let backing = p.slot().backing.load(Ordering::Relaxed);
        let (i, _) = super::slots::split_id(p.id());
        // Two RELEASEs of one fh race here; only the one that moves LIVE → RETIRING proceeds.
        let won = p.header().state.compare_exchange(
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
        Ok((nodeid, backing))
    }

    /// A new FUSE session: every handle (open files and directories, lock owners) is released,
    /// closing its fd; idempotent like `Inodes::forget_all`. Returns how many.
    pub fn release_all(&self) -> usize {
        let mut released = 0;
        for i in 1..self.table.high_water() as u32 {
            let (h, s) = (self.table.header(i), self.table.slot(i));
            if let Some(kind) = s.kind().filter(|_| h.state.load(Ordering::SeqCst) == super::slots::LIVE) {
                let fh = super::slots::make_id(i, h.generation.load(Ordering::SeqCst));
                released += usize::from(self.release(fh, kind).is_ok());
            }
        }
        released
    }

    /// Recovery: settles a record's pending publication from what the table shows.
    pub fn settle_pending(&self, r: &Record) {
        match r.pending() {
            Pending::Handle => {
                let id = r.pending_id.load(Ordering::Acquire);
                if self.table.is_live(id) { r.set_handle(id) } else { r.end_pending() }
            }
            // Lookup counts are settled by the inode table.
            Pending::None | Pending::Raise | Pending::Forget | Pending::ForgetEntry => {}
        }
    }

    /// Recovery: see `SlotTable::recover`. Returns every LIVE handle, and the backing ids of
    /// the slots it released (SETTING_UP, RETIRING): candidates for fs/passthrough.rs's
    /// orphan close, which closes those no LIVE handle still names.
    pub fn recover(&self) -> (Vec<LiveHandle>, Vec<u32>) {
        let mut live = Vec::new();
        let mut released = Vec::new();
        self.table.recover(
            |i, h, s| {
                if let Some(kind) = s.kind() {
                    live.push(LiveHandle {
                        fh: slots::make_id(i, h.generation.load(Ordering::Relaxed)),
                        kind,
                        nodeid: s.nodeid.load(Ordering::Relaxed),
                        owner: s.owner.load(Ordering::Relaxed),
                        backing: s.backing.load(Ordering::Relaxed),
                    });
                }
            },
            |_, s| {
                let id = s.backing.load(Ordering::Relaxed);
                if id != 0 {
                    released.push(id);
                }
            },
        );
        (live, released)
    }
}
