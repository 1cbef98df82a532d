//! The state region: one `MAP_SHARED` memfd that outlives a worker (DESIGN §5). It is sized once
//! for the configured table capacities; memfd pages cost memory only when first touched, so a
//! large capacity is cheap and the mapping never moves (no `mremap` while threads hold slots).

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64};

use super::handles::HandleSlot;
use super::inodes::InodeSlot;
use super::Error;

pub const MAGIC: u64 = u64::from_le_bytes(*b"PHXFSST\0");
pub const LAYOUT_VERSION: u32 = 1;
const HEADER_SIZE: usize = 4096;

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
    /// Bumped by every worker that takes the region over (issue: crash-proof core).
    pub generation: AtomicU64,
    /// One past the highest slot index ever used: recovery scans only below it.
    pub inode_high_water: AtomicU32,
    pub handle_high_water: AtomicU32,
}

const _: () = assert!(size_of::<Header>() <= HEADER_SIZE);

/// A mapped state region. The mapping is never unmapped (a Region lives until process exit), so
/// tables can hand out `&'static` slots.
pub struct Region {
    memfd: OwnedFd,
    base: *mut u8,
    size: usize,
}

// SAFETY: the region is plain shared memory; every field other threads may change concurrently
// is an atomic, and the fixed fields are written before the region is shared.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

fn layout(inode_capacity: u32, handle_capacity: u32) -> (u64, u64, u64) {
    let page = 4096u64;
    let round = |n: u64| n.div_ceil(page) * page;
    let inode_offset = HEADER_SIZE as u64;
    let handle_offset = inode_offset + round(inode_capacity as u64 * size_of::<InodeSlot>() as u64);
    let size = handle_offset + round(handle_capacity as u64 * size_of::<HandleSlot>() as u64);
    (inode_offset, handle_offset, size)
}

impl Region {
    /// Creates a fresh, zeroed region with the given capacities.
    pub fn create(inode_capacity: u32, handle_capacity: u32) -> Result<Region, Error> {
        if inode_capacity < 2 || handle_capacity < 2 {
            return Err(Error::BadCapacity);
        }
        let (inode_offset, handle_offset, size) = layout(inode_capacity, handle_capacity);
        let memfd = crate::sys::memfd_create(c"phoenixfs-state").map_err(|e| Error::Memfd(Arc::new(e)))?;
        crate::sys::ftruncate(memfd.as_raw_fd(), size).map_err(|e| Error::Memfd(Arc::new(e)))?;
        let region = Region::map(memfd, size as usize)?;
        let h = region.header_mut_at_creation();
        h.magic = MAGIC;
        h.layout_version = LAYOUT_VERSION;
        h.header_size = HEADER_SIZE as u32;
        h.region_size = size;
        h.inode_capacity = inode_capacity;
        h.handle_capacity = handle_capacity;
        h.inode_offset = inode_offset;
        h.handle_offset = handle_offset;
        Ok(region)
    }

    fn map(memfd: OwnedFd, size: usize) -> Result<Region, Error> {
        let base = crate::sys::mmap_shared(memfd.as_raw_fd(), size).map_err(|e| Error::Mmap(Arc::new(e)))?;
        Ok(Region { memfd, base, size })
    }

    fn header_mut_at_creation(&self) -> &mut Header {
        // SAFETY: the mapping is at least HEADER_SIZE bytes, page-aligned, and zero bytes are a
        // valid Header; called only from `create`, before any other reference exists.
        unsafe { &mut *(self.base as *mut Header) }
    }

    pub fn header(&self) -> &'static Header {
        // SAFETY: as in `header_mut_at_creation`; the mapping is never unmapped, so 'static holds.
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

    pub fn handle_slots(&self) -> &'static [HandleSlot] {
        let h = self.header();
        // SAFETY: as for `inode_slots`.
        unsafe { self.slots(h.handle_offset, h.handle_capacity) }
    }

    pub fn memfd(&self) -> &OwnedFd {
        &self.memfd
    }

    pub fn size(&self) -> usize {
        self.size
    }
}
