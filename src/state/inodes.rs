//! The inode table: slot index = FUSE node id (with its generation in the high 32 bits). Each
//! LIVE slot names one host object — by a file handle (`--inode-file-handles`, the default
//! `prefer`) or by an `O_PATH` fd it holds — with that object's key and the lookup count the
//! kernel or guest holds on it. A heap index maps keys to slots so that two lookups of the
//! same object yield the same node id. A slot with a handle holds no fd: a request that needs
//! one gets it from the bounded fd cache (state/fdcache.rs), opened with `open_by_handle_at`
//! through the mount's fd (state/mounts.rs).

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::Error;
use super::fdcache::FdCache;
use super::intent::{Intent, Pending, Record, facts};
use super::keyindex::KeyIndex;
use super::mounts::Mounts;
use super::slots::{self, Pin, Slot, SlotHeader, SlotTable};
use crate::sys::fhandle::FileHandle;

/// The largest file handle a slot holds inline (ext4, xfs, btrfs, tmpfs make 8 to 40 bytes);
/// an object with a longer one is kept by an O_PATH fd (`prefer`) or refused (`mandatory`).
pub const INLINE_HANDLE: usize = 64;

/// What identifies a host object: two fds with the same key are the same inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InodeKey {
    pub dev: u64,
    pub ino: u64,
    pub mnt_id: u64,
}

/// A LIVE slot names its object by its header's fd (>= 0: an O_PATH fd it owns) or by its file
/// handle (`handle_len` > 0, fd == -1); both are written before the slot is published.
#[repr(C)]
#[derive(Debug, Default)]
pub struct InodeSlot {
    /// S_IFMT bits of the object.
    pub file_type: AtomicU32,
    /// The file handle's type (`struct file_handle`'s handle_type).
    pub handle_type: AtomicI32,
    pub dev: AtomicU64,
    pub ino: AtomicU64,
    pub mnt_id: AtomicU64,
    pub lookups: AtomicU64,
    /// Bytes of `handle` in use; 0: no handle (the slot's fd names the object).
    pub handle_len: AtomicU32,
    _pad: AtomicU32,
    pub handle: [AtomicU64; INLINE_HANDLE / 8],
}

const _: () = assert!(size_of::<InodeSlot>() == 112);

impl Slot for InodeSlot {}

impl InodeSlot {
    pub fn key(&self) -> InodeKey {
        InodeKey {
            dev: self.dev.load(Ordering::Relaxed),
            ino: self.ino.load(Ordering::Relaxed),
            mnt_id: self.mnt_id.load(Ordering::Relaxed),
        }
    }

    /// The object's file handle, if the slot keeps one.
    pub fn file_handle(&self) -> Option<FileHandle> {
        let len = self.handle_len.load(Ordering::Relaxed) as usize;
        if len == 0 || len > INLINE_HANDLE {
            return None;
        }
        let mut bytes = [0u8; INLINE_HANDLE];
        for (chunk, word) in bytes.chunks_mut(8).zip(&self.handle) {
            chunk.copy_from_slice(&word.load(Ordering::Relaxed).to_ne_bytes());
        }
        Some(FileHandle::new(self.handle_type.load(Ordering::Relaxed), &bytes[..len]))
    }

    fn set_file_handle(&self, h: Option<&FileHandle>) {
        let Some(h) = h.filter(|h| !h.bytes().is_empty() && h.bytes().len() <= INLINE_HANDLE) else {
            self.handle_len.store(0, Ordering::Relaxed);
            return;
        };
        let mut bytes = [0u8; INLINE_HANDLE];
        bytes[..h.bytes().len()].copy_from_slice(h.bytes());
        for (chunk, word) in bytes.chunks(8).zip(&self.handle) {
            word.store(u64::from_ne_bytes(chunk.try_into().expect("8 bytes")), Ordering::Relaxed);
        }
        self.handle_type.store(h.handle_type, Ordering::Relaxed);
        self.handle_len.store(h.bytes().len() as u32, Ordering::Relaxed);
    }
}

/// A pinned LIVE inode and an fd naming its object, valid until the pin drops: the slot's own
/// fd, or one lent by the fd cache (given back at drop).
pub struct InodePin {
    pin: Pin<InodeSlot>,
    fd: i32,
    lent_by: Option<Arc<FdCache>>,
}

impl InodePin {
    pub fn fd(&self) -> i32 {
        self.fd
    }
    pub fn id(&self) -> u64 {
        self.pin.id()
    }
    pub fn slot(&self) -> &'static InodeSlot {
        self.pin.slot()
    }
}

impl Drop for InodePin {
    fn drop(&mut self) {
        // Before the slot's pin (a field, dropped after this): the cache entry is never in use
        // once the slot may be retired.
        if let Some(cache) = &self.lent_by {
            cache.put(self.pin.id() as u32);
        }
    }
}

/// How many O_PATH fds the inode table may hold itself (objects without a handle), and whether
/// spending it was logged already.
struct FdBudget {
    limit: AtomicUsize,
    held: AtomicUsize,
    warned: AtomicBool,
}

pub struct Inodes {
    table: SlotTable<InodeSlot>,
    /// Held while lookup counts and the key index change, so that a count reaching zero and a
    /// concurrent lookup of the same object cannot interleave (and the index has one writer).
    index: Mutex<()>,
    /// Key → index of the LIVE slot for that object, in the region (state/keyindex.rs).
    keys: KeyIndex,
    cache: Arc<FdCache>,
    pub mounts: Mounts,
    budget: FdBudget,
}

/// The root's node id: slot 1, generation 0 (slot 0 is never used, so no id is 0).
pub const ROOT_ID: u64 = 1;

/// One entry of a FORGET: drop `nlookup` lookups from `nodeid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forget {
    pub nodeid: u64,
    pub nlookup: u64,
}

/// A LIVE node as a migration's source sends it (see `Inodes::exported`).
#[derive(Debug, Clone)]
pub struct ExportedNode {
    pub id: u64,
    pub lookups: u64,
    pub file_type: u32,
    /// The slot's file handle, if it keeps one (else the object is open by the slot's fd).
    pub handle: Option<FileHandle>,
}

/// A lookup's outcome: the node id and its generation.
#[derive(Debug, Clone, Copy)]
pub struct Looked {
    pub nodeid: u64,
    pub generation: u32,
}

impl Inodes {
    pub fn new(
        headers: &'static [SlotHeader],
        slots: &'static [InodeSlot],
        high_water: &'static AtomicU32,
        mounts: Mounts,
        keys: KeyIndex,
    ) -> Self {
        Inodes {
            table: SlotTable::new(headers, slots, high_water, Error::BadNodeId),
            index: Mutex::new(()),
            keys,
            cache: Arc::new(FdCache::default()),
            mounts,
            budget: FdBudget {
                limit: AtomicUsize::new(usize::MAX),
                held: AtomicUsize::new(0),
                warned: AtomicBool::new(false),
            },
        }
    }

    /// Sets the fd budget (O_PATH fds the table may hold for objects without a handle) and the
    /// fd cache's capacity, both derived from RLIMIT_NOFILE at start-up.
    pub fn configure(&self, fd_budget: usize, cache_capacity: usize) {
        self.budget.limit.store(fd_budget, Ordering::Relaxed);
        self.cache.set_capacity(cache_capacity);
    }

    /// O_PATH fds the table holds now (objects without a handle, the root included).
    pub fn fds_held(&self) -> usize {
        self.budget.held.load(Ordering::Relaxed)
    }

    /// Entries of the fd cache (for tests and logs).
    pub fn cached_fds(&self) -> usize {
        self.cache.len()
    }

    /// Installs the shared directory as node 1 (slot 1, generation 0), holding one lookup that
    /// is never forgotten.
    pub fn install_root(&self, fd: i32, key: InodeKey, file_type: u32) -> Result<(), Error> {
        let index = self.table.alloc()?;
        if index != 1 {
            return Err(Error::RootNotFirst(index));
        }
        // The root's id is 1 with generation 0 whatever happened before: a worker killed while
        // installing it left slot 1 SETTING_UP, which recovery freed with its generation bumped;
        // no id of it was ever sent. (Without this the next install published id 1<<32|1, the
        // root looked absent to every later worker, and each one's install took slot 2 and
        // failed: a crash loop. test_handshake_and_requests_while_workers_are_killed hit it.)
        self.table.header(index).generation.store(0, Ordering::SeqCst);
        self.fill(index, fd, None, key, file_type);
        let _one = self.index.lock().unwrap();
        // Crash between these: the journal names the root; recovery makes its entry agree.
        self.keys.begin(index);
        let id = self.table.publish(index);
        debug_assert_eq!(id, ROOT_ID);
        self.keys.insert(&key, index);
        self.keys.end();
        Ok(())
    }

    /// Whether the root (slot 1) is LIVE, i.e. a region a worker already set up.
    pub fn has_root(&self) -> bool {
        self.table.is_live(ROOT_ID)
    }

    fn fill(&self, index: u32, fd: i32, handle: Option<&FileHandle>, key: InodeKey, file_type: u32) {
        let s = self.table.slot(index);
        s.set_file_handle(handle);
        if fd >= 0 {
            self.budget.held.fetch_add(1, Ordering::Relaxed);
        }
        self.table.header(index).fd.store(fd, Ordering::Relaxed);
        s.file_type.store(file_type, Ordering::Relaxed);
        s.dev.store(key.dev, Ordering::Relaxed);
        s.ino.store(key.ino, Ordering::Relaxed);
        s.mnt_id.store(key.mnt_id, Ordering::Relaxed);
        s.lookups.store(1, Ordering::Relaxed);
    }

    /// Records one lookup of the object `key`, whose freshly opened `O_PATH` fd is `fd`: raises
    /// the count of its existing slot or publishes a new slot. A new slot keeps the object's
    /// file handle if `handle` gives one, or else takes `fd` over, within the fd budget. `fd` is
    /// consumed: kept by the slot, lent to the fd cache, or closed. The raise is two-phase in
    /// `intent` (see state/intent.rs).
    ///
    /// `handle` is called at most once, and never under the index lock (its system call would
    /// hold up every other lookup and forget): for a new slot, and to tell an existing handle
    /// slot's object from a new one with its key, unless the fd cache holds an fd of that slot
    /// (then its object is alive, and an inode number belongs to one live object at a time).
    pub fn lookup(
        &self,
        fd: i32,
        key: InodeKey,
        file_type: u32,
        intent: Intent,
        handle: impl FnOnce() -> Result<Option<FileHandle>, Error>,
    ) -> Result<Looked, Error> {
        let rec = intent.record();
        let mut make_handle = Some(handle);
        // The object's handle once made (Some(None): the object has none).
        let mut ours: Option<Option<FileHandle>> = None;
        let mut index = self.index.lock().unwrap();
        // Is the handle needed? For a new slot, and for a slot kept by handle whose object may
        // be gone. If so it is made without the lock, from our own fd (nothing under the lock
        // changes it), and the index is looked at again, since it may have changed meanwhile.
        loop {
            let needed = match self.keys.get(&key) {
                None => true,
                Some(i) => {
                    let generation = self.table.header(i).generation.load(Ordering::Relaxed);
                    self.table.slot(i).file_handle().is_some() && !self.cache.holds(i, generation)
                }
            };
            if !needed || ours.is_some() {
                break;
            }
            drop(index);
            match (make_handle.take().expect("made once"))() {
                Ok(h) => ours = Some(h),
                Err(e) => {
                    crate::sys::close(fd);
                    return Err(e);
                }
            }
            index = self.index.lock().unwrap();
        }
        while let Some(i) = self.keys.get(&key) {
            let s = self.table.slot(i);
            // A slot kept by handle holds nothing open, so its object may be gone and its inode
            // number reused by the object looked up now: same key, another object. The handles
            // tell (they carry the inode's generation). A slot kept by fd holds its object, and so
            // does one whose fd is cached: then no handle was made (`ours` is None) and there is
            // nothing to compare.
            if let Some(theirs) = s.file_handle()
                && ours.as_ref().is_some_and(|h| h.as_ref().is_some_and(|h| *h != theirs))
            {
                // The old slot stays LIVE (the guest still holds its node id; using it gets
                // ESTALE), but the index now leads to the new object. Under the journal: a
                // crash here gives the old entry back, and the next lookup removes it again.
                self.keys.begin(i);
                self.keys.remove(&key, i);
                self.keys.end();
                continue;
            }
            let generation = self.table.header(i).generation.load(Ordering::Relaxed);
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
            drop(index);
            self.lend_or_close(i, generation, fd);
            return Ok(Looked { nodeid, generation });
        }
        // No slot for the key: the loop above made the handle (a missing key needs it).
        let handle = ours.expect("the handle is made when the key has no slot");
        if handle.is_none() && !self.within_budget() {
            crate::sys::close(fd);
            return Err(Error::FdBudget(self.budget.limit.load(Ordering::Relaxed)));
        }
        let i = match self.table.alloc() {
            Ok(i) => i,
            Err(e) => {
                crate::sys::close(fd);
                return Err(e);
            }
        };
        // With a handle the slot holds no fd: `fd` goes to the cache once the slot is published
        // (a crash before that leaves it named nowhere, and the fd sweep closes it).
        let slot_fd = if handle.is_some() { -1 } else { fd };
        self.fill(i, slot_fd, handle.as_ref(), key, file_type);
        let generation = self.table.header(i).generation.load(Ordering::Relaxed);
        if let Some(r) = rec {
            r.begin_pending(Pending::Raise, slots::make_id(i, generation), 0);
        }
        crate::crash_point!("raise.new_pending");
        // The slot's publication and its index entry, under the journal: a crash between them
        // leaves a LIVE slot the index lacks (or the reverse), which recovery puts right.
        self.keys.begin(i);
        let nodeid = self.table.publish(i);
        crate::crash_point!("raise.new_published");
        self.keys.insert(&key, i);
        self.keys.end();
        if let Some(r) = rec {
            r.push_raised(nodeid);
        }
        drop(index);
        if handle.is_some() {
            self.lend_or_close(i, generation, fd);
        }
        Ok(Looked { nodeid, generation })
    }

    /// Whether one more slot may hold an fd of its own; logs once when it may not.
    fn within_budget(&self) -> bool {
        let limit = self.budget.limit.load(Ordering::Relaxed);
        if self.budget.held.load(Ordering::Relaxed) < limit {
            return true;
        }
        if !self.budget.warned.swap(true, Ordering::Relaxed) {
            tracing::error!(
                budget = limit,
                "the inode fd budget is spent: lookups of objects without a file handle fail with ENFILE \
                 until the guest forgets some; use --inode-file-handles=prefer (on a file system that makes \
                 handles) or raise --rlimit-nofile"
            );
        }
        false
    }

    /// A fresh O_PATH fd of the object in slot `i` that the slot does not keep: into the fd
    /// cache if the slot has a handle (the next request on it will likely need it), else closed.
    fn lend_or_close(&self, i: u32, generation: u32, fd: i32) {
        if self.table.header(i).fd.load(Ordering::Relaxed) < 0 {
            self.cache.insert(i, generation, fd, false);
        } else {
            crate::sys::close(fd);
        }
    }

    /// Pins the LIVE slot `nodeid` and gets an fd naming its object: the slot's own, a cached
    /// one, or one opened now with `open_by_handle_at` (which needs CAP_DAC_READ_SEARCH, so pin
    /// before switching to the caller's credentials).
    pub fn pin(&self, nodeid: u64) -> Result<InodePin, Error> {
        let pin = self.table.pin(nodeid)?;
        let fd = pin.fd();
        if fd >= 0 {
            return Ok(InodePin { pin, fd, lent_by: None });
        }
        let (i, generation) = slots::split_id(nodeid);
        if let Some(fd) = self.cache.take(i, generation) {
            return Ok(InodePin { pin, fd, lent_by: Some(self.cache.clone()) });
        }
        let s = pin.slot();
        // A LIVE slot with neither fd nor handle is a node a migration could not bring over
        // (`--migration-on-error=guest-error`): the guest holds its id, using it fails.
        let handle = s.file_handle().ok_or(Error::Unmigrated)?;
        let mnt_id = s.mnt_id.load(Ordering::Relaxed);
        let mount = self.mounts.fd(mnt_id).ok_or(Error::NoMountFd(mnt_id))?;
        let fresh = crate::sys::fhandle::open_by_handle(mount, &handle, libc::O_PATH).map_err(|e| {
            tracing::debug!(nodeid, mnt_id, "open_by_handle_at: {e}");
            Error::HandleOpen(Arc::new(e))
        })?;
        // Crash here: the fd is named by nothing in the region; the next fd sweep closes it.
        let fd = self.cache.insert(i, generation, fresh, true);
        Ok(InodePin { pin, fd, lent_by: Some(self.cache.clone()) })
    }

    /// Migration, on the source: every LIVE node but the root, as the guest holds it.
    pub fn exported(&self) -> Vec<ExportedNode> {
        let mut nodes = Vec::new();
        for i in 2..self.table.high_water() as u32 {
            let h = self.table.header(i);
            if h.state.load(Ordering::SeqCst) != slots::LIVE {
                continue;
            }
            let s = self.table.slot(i);
            nodes.push(ExportedNode {
                id: slots::make_id(i, h.generation.load(Ordering::SeqCst)),
                lookups: s.lookups.load(Ordering::SeqCst),
                file_type: s.file_type.load(Ordering::Relaxed),
                handle: s.file_handle(),
            });
        }
        nodes
    }

    /// Migration, on the destination: publishes node `id` (the id the guest holds, generation
    /// included) with its lookup count, naming its object by `fd` (an O_PATH fd the slot takes
    /// over) or by `handle`; with neither (fd -1, no handle) the node is one the migration could
    /// not bring over, and using it fails (`Error::Unmigrated`). The key index gets the node
    /// unless another node already has its key.
    pub fn import(
        &self,
        id: u64,
        lookups: u64,
        fd: i32,
        handle: Option<&FileHandle>,
        key: InodeKey,
        file_type: u32,
    ) -> Result<(), Error> {
        let _one = self.index.lock().unwrap();
        let i = match self.table.place(id) {
            Ok(i) => i,
            Err(e) => {
                if fd >= 0 {
                    crate::sys::close(fd);
                }
                return Err(e);
            }
        };
        self.fill(i, fd, handle, key, file_type);
        self.table.slot(i).lookups.store(lookups.max(1), Ordering::Relaxed);
        let usable = fd >= 0 || handle.is_some();
        let indexed = usable && self.keys.get(&key).is_none();
        // The publication and its index entry under the journal, as in `lookup`: a crash
        // between them is put right by recovery; a crash before the publication leaves a
        // SETTING_UP slot that recovery frees (the import is done again).
        if indexed {
            self.keys.begin(i);
        }
        self.table.publish(i);
        if indexed {
            self.keys.insert(&key, i);
            self.keys.end();
        }
        Ok(())
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
        let s = valid.then(|| (self.table.header(i), self.table.slot(i)));
        {
            let _one = self.index.lock().unwrap();
            let live = s.filter(|(h, _)| {
                h.state.load(Ordering::SeqCst) == slots::LIVE && h.generation.load(Ordering::SeqCst) == generation
            });
            let Some((_, s)) = live else {
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
                // Under the journal: a crash between the two leaves a LIVE slot without an
                // entry, which recovery gives back (and the pending forget then retires).
                self.keys.begin(i);
                self.keys.remove(&s.key(), i);
                self.table.begin_retire(i);
                self.keys.end();
            }
            crate::crash_point!("forget.applied");
            if let Some(r) = rec {
                finish_entry(r);
            }
            if target > 0 {
                return;
            }
        }
        self.retire(i);
    }

    /// Finishes retiring slot `i` (waiting out its pins) and drops its cached fd: by
    /// generation, since the slot may have a new occupant (with its own entry) by then.
    fn retire(&self, i: u32) {
        let generation = self.table.header(i).generation.load(Ordering::SeqCst);
        if self.table.finish_retire(i) {
            self.budget.held.fetch_sub(1, Ordering::Relaxed);
        }
        self.cache.remove(i, generation);
    }

    /// A new FUSE session (a second INIT: the guest rebooted without forgetting its nodes):
    /// every node but the root is forgotten. Idempotent, so a replayed INIT after a crash midway
    /// forgets what is left. Returns how many nodes were forgotten.
    pub fn forget_all(&self) -> usize {
        let mut forgotten = 0;
        for i in 2..self.table.high_water() as u32 {
            let h = self.table.header(i);
            if h.state.load(Ordering::SeqCst) == slots::LIVE {
                self.forget(slots::make_id(i, h.generation.load(Ordering::SeqCst)), u64::MAX, Intent::none());
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
        let slot = (i > 0 && (i as usize) < self.table.capacity()).then(|| (self.table.header(i), self.table.slot(i)));
        let live = slot
            .filter(|(h, _)| {
                h.state.load(Ordering::SeqCst) == slots::LIVE && h.generation.load(Ordering::SeqCst) == generation
            })
            .map(|(_, s)| s);
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
                        self.keys.begin(i);
                        self.keys.remove(&s.key(), i);
                        self.table.begin_retire(i);
                        self.keys.end();
                    }
                }
                r.end_pending();
            }
            // A handle's publication is settled by the handle table.
            Pending::None | Pending::Handle => {}
        }
    }

    /// Recovery, before settling records: the one index entry a crash may have left out of
    /// step with its slot (the journal names it) is put right. The index itself is in the
    /// region: nothing is rebuilt.
    pub fn repair_index(&self) {
        self.keys.repair();
    }

    /// Recovery: repairs half-done slots and mount entries, resets pins, rebuilds the free
    /// list and counts the fds the slots hold; returns the live slots and those fds (for the
    /// fd sweep). One read-mostly pass over the slot headers.
    pub fn recover(&self) -> (usize, Vec<i32>) {
        self.mounts.recover();
        let _one = self.index.lock().unwrap();
        let mut fds = Vec::new();
        let live = self.table.recover(
            |_, h, _| {
                let fd = h.fd.load(Ordering::Relaxed);
                if fd >= 0 {
                    fds.push(fd);
                }
            },
            |_, _| {},
        );
        self.budget.held.store(fds.len(), Ordering::Relaxed);
        (live, fds)
    }
}
