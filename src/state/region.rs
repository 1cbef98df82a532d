//! The state region: one `MAP_SHARED` memfd that outlives a worker (DESIGN §5). It is sized once
//! for the configured table capacities; memfd pages cost memory only when first touched, so a
//! large capacity is cheap and the mapping never moves (no `mremap` while threads hold slots).

use std::os::fd::{AsRawFd, IntoRawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64};

use super::Error;
use super::handles::HandleSlot;
use super::inodes::InodeSlot;
use super::intent::Record;
use super::vhost::VhostArea;

pub const MAGIC: u64 = u64::from_le_bytes(*b"PHXFSST\0");
pub const LAYOUT_VERSION: u32 = 7;
const HEADER_SIZE: usize = 4096;
/// Connection buffers a region holds: one per /dev/fuse serving thread.
pub const MAX_CONN_BUFFERS: usize = 256;
/// Fds of the supervisor's own that a worker's fd sweep must leave open.
pub const MAX_KEEP_FDS: usize = 64;
/// In-flight request records: one per serving thread plus room for orphans of dead workers.
pub const RECORD_CAPACITY: u32 = 1024;
/// Each /dev/fuse serving thread reads requests into its own buffer in the region, so a request
/// without a reply (FORGET) that a dead worker had read is still there to finish. Room for the
/// largest request the wire format admits (the transport asserts it fits).
pub const BUFFER_SIZE: u64 = (1 << 20) + 4096;

/// The first page of the region. Offsets and capacities are written once at creation; the
/// atomics change while serving.
#[repr(C)]
pub struct Header {
    pub magic: u64,
    pub layout_version: u32,
    pub header_size: u32,
    pub region_size: u64,
    pub inode_capacity: u32,
    pub handle_capacity: u32,
    pub inode_offset: u64,
    pub handle_offset: u64,
    /// The slots' headers, one dense array per table (what recovery's pass reads).
    pub inode_header_offset: u64,
    pub handle_header_offset: u64,
    /// Bumped by every worker that takes the region over.
    pub generation: AtomicU64,
    /// One past the highest slot index ever used: recovery scans only below it.
    pub inode_high_water: AtomicU32,
    pub handle_high_water: AtomicU32,
    pub record_offset: u64,
    pub record_capacity: u32,
    pub buffer_offset: u64,
    pub vhost_offset: u64,
    /// An eventfd a worker writes once its start-up fd sweep is done, after storing its pid in
    /// `ready_pid` (so the supervisor can tell a stale signal of a dead worker); -1 if none.
    pub ready_fd: i32,
    pub ready_pid: std::sync::atomic::AtomicI32,
    /// 1 once FUSE INIT was answered: a later worker serves on without a new INIT.
    pub init_done: AtomicU32,
    /// Flags agreed at INIT (flags | flags2 << 32), and those the kernel offered.
    pub negotiated: AtomicU64,
    pub kernel_flags: AtomicU64,
    /// Worker deaths so far (written by the supervisor, read for logs).
    pub worker_deaths: AtomicU64,
    /// Requests answered so far (the supervisor's crash-loop guard tells progress by it).
    pub served: AtomicU64,
    /// 1 if the last worker's death counts toward the crash-loop guards (it crashed by itself or
    /// was OOM-killed), 0 if it was killed from outside (SIGKILL by an operator or a test).
    /// Written by the supervisor before it clones the next worker.
    pub death_counts: AtomicU32,
    /// Fds that are neither the transport's nor table fds but must survive a worker's fd sweep
    /// (stdio, the memfd, the supervisor's own). Written by the supervisor before the first
    /// worker.
    pub keep_count: u32,
    pub keep_fds: [i32; MAX_KEEP_FDS],
    /// The system call a seccomp filter refused, + 1 (0: none): written by the dying process's
    /// SIGSYS handler (`--seccomp kill`), read and cleared by the supervisor to name it.
    pub seccomp_violation: AtomicU32,
    /// The key index (state/keyindex.rs): its cells, and the slot whose entry is changing.
    pub index_offset: u64,
    pub index_cells: u64,
    pub index_journal: AtomicU64,
    /// One fd per file system the share spans, for `open_by_handle_at` (state/mounts.rs).
    pub mounts: [super::mounts::MountSlot; super::mounts::MAX_MOUNTS],
}

const _: () = assert!(size_of::<Header>() <= HEADER_SIZE);

/// A mapped state region. Neither the mapping nor the memfd is ever released (a Region lives
/// until process exit), so tables can hand out `&'static` slots, and a worker — a clone that
/// inherits both — can take an alias of the supervisor's Region without owning anything.
pub struct Region {
    base: *mut u8,
    size: usize,
    /// The memfd behind the mapping (a live upgrade's new binary maps it again).
    memfd: i32,
}

// SAFETY: the region is plain shared memory; every field other threads may change concurrently
// is an atomic, and the fixed fields are written before the region is shared.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

/// Where each part starts, and the region's size.
#[derive(Debug, PartialEq, Eq)]
struct Layout {
    inode_headers: u64,
    inodes: u64,
    handle_headers: u64,
    handles: u64,
    records: u64,
    buffers: u64,
    vhost: u64,
    index: u64,
    size: u64,
}

fn layout(inode_capacity: u32, handle_capacity: u32, record_capacity: u32) -> Layout {
    let page = 4096u64;
    let round = |n: u64| n.div_ceil(page) * page;
    let header = size_of::<super::slots::SlotHeader>() as u64;
    let inode_headers = HEADER_SIZE as u64;
    let inodes = inode_headers + round(inode_capacity as u64 * header);
    let handle_headers = inodes + round(inode_capacity as u64 * size_of::<InodeSlot>() as u64);
    let handles = handle_headers + round(handle_capacity as u64 * header);
    let records = handles + round(handle_capacity as u64 * size_of::<HandleSlot>() as u64);
    let buffers = records + round(record_capacity as u64 * size_of::<Record>() as u64);
    let vhost = buffers + MAX_CONN_BUFFERS as u64 * BUFFER_SIZE;
    let index = vhost + round(size_of::<VhostArea>() as u64);
    let size = index + round(super::keyindex::cells_for(inode_capacity) * 4);
    Layout { inode_headers, inodes, handle_headers, handles, records, buffers, vhost, index, size }
}

impl Region {
    /// Creates a fresh, zeroed region with the given capacities.
    pub fn create(inode_capacity: u32, handle_capacity: u32) -> Result<Region, Error> {
        if inode_capacity < 2 || handle_capacity < 2 {
            return Err(Error::BadCapacity);
        }
        let l = layout(inode_capacity, handle_capacity, RECORD_CAPACITY);
        let size = l.size;
        let memfd = crate::sys::memfd_create(c"phoenixfs-state").map_err(|e| Error::Memfd(Arc::new(e)))?;
        crate::sys::ftruncate(memfd.as_raw_fd(), size).map_err(|e| Error::Memfd(Arc::new(e)))?;
        // The memfd stays open for the life of the process (a worker's fd sweep keeps it: it is
        // among the fds the supervisor records before the first worker).
        let mut region = Region::map(memfd.into_raw_fd(), size as usize)?;
        let h = region.header_mut_before_workers();
        h.magic = MAGIC;
        h.layout_version = LAYOUT_VERSION;
        h.header_size = HEADER_SIZE as u32;
        h.region_size = size;
        h.inode_capacity = inode_capacity;
        h.handle_capacity = handle_capacity;
        h.inode_offset = l.inodes;
        h.handle_offset = l.handles;
        h.inode_header_offset = l.inode_headers;
        h.handle_header_offset = l.handle_headers;
        h.record_offset = l.records;
        h.record_capacity = RECORD_CAPACITY;
        h.buffer_offset = l.buffers;
        h.vhost_offset = l.vhost;
        h.index_offset = l.index;
        h.index_cells = super::keyindex::cells_for(inode_capacity);
        h.ready_fd = -1;
        region.vhost().init_fds();
        Ok(region)
    }

    /// Maps the region another process made, from an fd of its memfd (a test looking at a
    /// running daemon's state, say), and checks it.
    pub fn attach(fd: i32) -> Result<Region, Error> {
        let region = Region::map_fd(fd)?;
        region.check()?;
        Ok(region)
    }

    /// Like `attach`, but also takes a region of a layout this build converts
    /// (`super::convert::OLDER_LAYOUTS`), unchanged: a live upgrade's new binary, which may
    /// write it only after the go (`Region::convert`).
    pub fn attach_convertible(fd: i32) -> Result<Region, Error> {
        let region = Region::map_fd(fd)?;
        region.check_convertible()?;
        Ok(region)
    }

    fn map_fd(fd: i32) -> Result<Region, Error> {
        let st = crate::sys::fstatat(fd, c"", libc::AT_EMPTY_PATH).map_err(|e| Error::Mmap(Arc::new(e)))?;
        Region::map(fd, st.st_size as usize)
    }

    /// Requests in flight: records that hold one (a serving thread's, or an orphan a dead
    /// worker left).
    pub fn records_in_use(&self) -> usize {
        self.records().iter().filter(|r| r.unique.load(std::sync::atomic::Ordering::Acquire) != 0).count()
    }

    fn map(memfd: i32, size: usize) -> Result<Region, Error> {
        let base = crate::sys::mmap_shared(memfd, size).map_err(|e| Error::Mmap(Arc::new(e)))?;
        Ok(Region { base, size, memfd })
    }

    /// The same region, for a worker process that inherited the mapping and the memfd.
    pub fn alias(&self) -> Region {
        Region { base: self.base, size: self.size, memfd: self.memfd }
    }

    /// The memfd behind the mapping.
    pub fn memfd(&self) -> i32 {
        self.memfd
    }

    /// Every fd the region names, whatever the state of the slot naming it: the kept fds, the
    /// mount table's, and each inode and handle slot's up to the high-water marks. A superset of
    /// what recovery will keep (it closes the rest), so a live upgrade that carries exactly
    /// these across its exec loses none that the new binary's first worker needs.
    pub fn named_fds(&self) -> Vec<i32> {
        use std::sync::atomic::Ordering::Acquire;
        let h = self.header();
        let mut fds: Vec<i32> = h.keep_fds[..(h.keep_count as usize).min(MAX_KEEP_FDS)].to_vec();
        fds.extend(h.mounts.iter().map(|m| m.fd.load(Acquire)));
        let inodes = (h.inode_high_water.load(Acquire) as usize).min(h.inode_capacity as usize);
        fds.extend(self.inode_headers()[..inodes].iter().map(|s| s.fd.load(Acquire)));
        fds.extend(self.handle_headers()[..self.handles_used()].iter().map(|s| s.fd.load(Acquire)));
        fds.extend(super::convert::vhost_fds(self));
        fds.retain(|fd| *fd >= 0);
        fds
    }

    /// Handle slots ever used: the high-water mark, bounded by the table.
    pub fn handles_used(&self) -> usize {
        let h = self.header();
        (h.handle_high_water.load(std::sync::atomic::Ordering::Acquire) as usize).min(h.handle_capacity as usize)
    }

    /// The mapping's first byte (state/convert.rs moves bytes of an older layout).
    pub(super) fn base(&self) -> *mut u8 {
        self.base
    }

    /// Checks a region a worker is about to trust after a crash: magic, layout version, and
    /// that every table lies inside the mapping where `layout` would put it. A region that fails
    /// is refused, never repaired by guesswork.
    pub fn check(&self) -> Result<(), Error> {
        self.check_versions(&[LAYOUT_VERSION])
    }

    /// `check`, taking a layout this build converts as well as its own.
    pub fn check_convertible(&self) -> Result<(), Error> {
        self.check_versions(&[&[LAYOUT_VERSION][..], super::convert::OLDER_LAYOUTS].concat())
    }

    /// `check` for one of `versions` (every one with this build's table offsets: an older layout
    /// differs only inside its vhost-user area, state/convert.rs).
    fn check_versions(&self, versions: &[u32]) -> Result<(), Error> {
        let h = self.header();
        if h.magic != MAGIC {
            return Err(Error::Corrupt(format!("bad magic {:#x}", h.magic)));
        }
        if !versions.contains(&h.layout_version) {
            let read: Vec<String> = versions.iter().map(u32::to_string).collect();
            return Err(Error::Corrupt(format!(
                "layout version {} (this build reads {})",
                h.layout_version,
                read.join(" and ")
            )));
        }
        let l = layout(h.inode_capacity, h.handle_capacity, h.record_capacity);
        let found = Layout {
            inode_headers: h.inode_header_offset,
            inodes: h.inode_offset,
            handle_headers: h.handle_header_offset,
            handles: h.handle_offset,
            records: h.record_offset,
            buffers: h.buffer_offset,
            vhost: h.vhost_offset,
            index: h.index_offset,
            size: h.region_size,
        };
        let fits = h.header_size as usize == HEADER_SIZE
            && found == l
            && h.index_cells == super::keyindex::cells_for(h.inode_capacity)
            && l.size as usize <= self.size
            && h.inode_capacity >= 2
            && h.handle_capacity >= 2
            && h.keep_count as usize <= MAX_KEEP_FDS
            && self.vhost().num_queues.load(std::sync::atomic::Ordering::Relaxed) as usize <= super::vhost::MAX_QUEUES;
        if !fits {
            return Err(Error::Corrupt("table offsets or capacities do not match the layout".into()));
        }
        Ok(())
    }

    /// The header for writing, before any worker exists (creation, the supervisor's set-up).
    pub fn header_mut_before_workers(&mut self) -> &mut Header {
        // SAFETY: the mapping is at least HEADER_SIZE bytes, page-aligned, and zero bytes are a
        // valid Header; `&mut self` means no other reference to it exists in this process, and
        // before the first worker no other process has the mapping.
        unsafe { &mut *(self.base as *mut Header) }
    }

    pub fn header(&self) -> &'static Header {
        // SAFETY: as in `header_mut_before_workers`; the mapping is never unmapped, so 'static
        // holds.
        unsafe { &*(self.base as *const Header) }
    }

    /// The slot array at `offset` with `count` entries.
    ///
    /// # Safety
    /// `offset + count * size_of::<T>()` must lie inside the mapping, `offset` must be aligned
    /// for `T`, and all-zero bytes must be a valid `T` (true of the atomics-only slot structs).
    unsafe fn slots<T>(&self, offset: u64, count: u32) -> &'static [T] {
        debug_assert!(offset as usize + count as usize * size_of::<T>() <= self.size);
        // SAFETY: guaranteed by the caller; the mapping lives for the rest of the process.
        unsafe { std::slice::from_raw_parts(self.base.add(offset as usize) as *const T, count as usize) }
    }

    pub fn inode_slots(&self) -> &'static [InodeSlot] {
        let h = self.header();
        // SAFETY: offsets and capacities come from `layout`, which sized the region for them.
        unsafe { self.slots(h.inode_offset, h.inode_capacity) }
    }

    /// The inode slots' headers (state, generation, pins, fd), one per slot.
    pub fn inode_headers(&self) -> &'static [super::slots::SlotHeader] {
        let h = self.header();
        // SAFETY: as for `inode_slots`.
        unsafe { self.slots(h.inode_header_offset, h.inode_capacity) }
    }

    pub fn handle_headers(&self) -> &'static [super::slots::SlotHeader] {
        let h = self.header();
        // SAFETY: as for `inode_slots`.
        unsafe { self.slots(h.handle_header_offset, h.handle_capacity) }
    }

    pub fn handle_slots(&self) -> &'static [HandleSlot] {
        let h = self.header();
        // SAFETY: as for `inode_slots`.
        unsafe { self.slots(h.handle_offset, h.handle_capacity) }
    }

    /// The key index's cells.
    pub fn index_cells(&self) -> &'static [AtomicU32] {
        let h = self.header();
        // SAFETY: `layout` sized the area for `cells_for(inode_capacity)` cells (checked equal to
        // `index_cells`), 4-byte aligned (page-aligned start); zero bytes are valid atomics.
        unsafe { self.slots(h.index_offset, h.index_cells as u32) }
    }

    pub fn records(&self) -> &'static [Record] {
        let h = self.header();
        // SAFETY: as for `inode_slots`.
        unsafe { self.slots(h.record_offset, h.record_capacity) }
    }

    /// The request buffer of connection `i`.
    ///
    /// # Safety
    /// Only the one thread serving connection `i` (or recovery, before any thread runs) may use
    /// it, and only while no other reference to it exists.
    pub unsafe fn buffer(&self, i: usize) -> ConnBuffer {
        assert!(i < MAX_CONN_BUFFERS);
        let h = self.header();
        let offset = h.buffer_offset as usize + i * BUFFER_SIZE as usize;
        // SAFETY: inside the mapping by `layout`; exclusive use is the caller's promise.
        ConnBuffer(unsafe { std::slice::from_raw_parts_mut(self.base.add(offset), BUFFER_SIZE as usize) })
    }

    /// The vhost-user area (all atomics; zero bytes are valid).
    pub fn vhost(&self) -> &'static VhostArea {
        let h = self.header();
        // SAFETY: `layout` placed and sized the area inside the mapping, page-aligned.
        unsafe { &*(self.base.add(h.vhost_offset as usize) as *const VhostArea) }
    }
}

/// A serving thread's request buffer in the region: it holds the request the thread read last,
/// so that recovery can finish one the transport will not deliver again (a FORGET). The first
/// four bytes are the request's length, as a FUSE request begins; zero means empty.
pub struct ConnBuffer(&'static mut [u8]);

impl ConnBuffer {
    /// Marks the buffer empty: nothing here for recovery to finish.
    pub fn clear(&mut self) {
        self.0[..4].fill(0);
    }

    /// The whole buffer, for a read to fill (its first bytes then give the length).
    pub fn space(&mut self) -> &mut [u8] {
        self.0
    }

    /// The first `len` bytes (as many as a read put there).
    pub fn first(&self, len: usize) -> &[u8] {
        &self.0[..len.min(self.0.len())]
    }

    /// The request in the buffer (empty when cleared), bounded by the buffer whatever its
    /// length field says.
    pub fn request(&self) -> &[u8] {
        let len = u32::from_le_bytes([self.0[0], self.0[1], self.0[2], self.0[3]]) as usize;
        &self.0[..len.min(self.0.len())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_mut(r: &mut Region) -> &mut Header {
        r.header_mut_before_workers()
    }

    #[test]
    fn test_region_check_accepts_a_fresh_region() {
        let r = Region::create(16, 16).unwrap();
        r.check().unwrap();
    }

    #[test]
    fn test_region_check_refuses_bad_magic() {
        let mut r = Region::create(16, 16).unwrap();
        header_mut(&mut r).magic = 0x1234;
        let e = r.check().unwrap_err().to_string();
        assert!(e.contains("bad magic"), "{e}");
    }

    #[test]
    fn test_region_check_refuses_another_layout_version() {
        let mut r = Region::create(16, 16).unwrap();
        header_mut(&mut r).layout_version = LAYOUT_VERSION + 1;
        let e = r.check().unwrap_err().to_string();
        assert!(e.contains("layout version"), "{e}");
    }

    #[test]
    fn test_region_check_refuses_tables_outside_the_mapping() {
        for corrupt in [
            |h: &mut Header| h.inode_capacity = u32::MAX,
            |h: &mut Header| h.handle_offset += 8,
            |h: &mut Header| h.keep_count = MAX_KEEP_FDS as u32 + 1,
            |h: &mut Header| h.record_capacity = 0,
        ] {
            let mut r = Region::create(16, 16).unwrap();
            corrupt(header_mut(&mut r));
            assert!(r.check().is_err());
        }
    }

    #[test]
    fn test_region_refused_by_recovery_changes_nothing() {
        let mut region = Region::create(16, 16).unwrap();
        header_mut(&mut region).magic = 0;
        let state = crate::state::State::new(region);
        let before = state.region.header().generation.load(std::sync::atomic::Ordering::SeqCst);
        assert!(state.take_over().is_err());
        assert_eq!(state.region.header().generation.load(std::sync::atomic::Ordering::SeqCst), before);
    }
}
