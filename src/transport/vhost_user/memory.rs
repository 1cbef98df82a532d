//! Guest memory as a worker sees it: mapped from the region fds the supervisor recorded at
//! SET_MEM_TABLE, so a fresh worker maps the same memory without asking the frontend again.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::{Arc, Mutex};

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

use crate::state::vhost::{MemRegionConfig, VhostArea};

/// Mapped guest memory and the table it came from (to translate ring addresses), and the
/// dirty-page log if the frontend gave one (SET_LOG_BASE).
pub struct Guest {
    pub mem: GuestMemoryMmap,
    table: Vec<MemRegionConfig>,
    log: Option<DirtyLog>,
}

/// The frontend's dirty-page bitmap, mapped shared: bit `p` of byte `p / 8` is guest page `p`
/// (4 KiB pages of guest-physical memory).
struct DirtyLog {
    base: *mut u8,
    /// Bytes mapped (offset + size).
    mapped: usize,
    offset: usize,
    bytes: usize,
}

// SAFETY: the bitmap is touched only through atomic byte operations (`mark`).
unsafe impl Send for DirtyLog {}
// SAFETY: as above.
unsafe impl Sync for DirtyLog {}

impl DirtyLog {
    fn map(fd: i32, size: u64, offset: u64) -> std::io::Result<DirtyLog> {
        let bytes = usize::try_from(size).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        let offset = usize::try_from(offset).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        let mapped = offset.checked_add(bytes).ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        let base = crate::sys::mmap_shared(fd, mapped)?;
        Ok(DirtyLog { base, mapped, offset, bytes })
    }

    /// Marks the pages of `[gpa, gpa + len)` dirty (after the write: the frontend, which reads
    /// and clears bits as it copies pages, then copies the page again).
    fn mark(&self, gpa: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = gpa / 4096;
        let last = gpa.saturating_add(len - 1) / 4096;
        for page in first..=last {
            let byte = (page / 8) as usize;
            if byte >= self.bytes {
                return;
            }
            // SAFETY: `offset + byte` is inside the mapping (checked above), which lives as long
            // as `self`; the frontend changes these bytes concurrently, so only atomic access.
            let cell = unsafe { &*(self.base.add(self.offset + byte) as *const std::sync::atomic::AtomicU8) };
            cell.fetch_or(1 << (page % 8), std::sync::atomic::Ordering::SeqCst);
        }
    }
}

impl Drop for DirtyLog {
    fn drop(&mut self) {
        // SAFETY: our own mapping, no longer referenced (the log is dropped with its Guest).
        unsafe { libc::munmap(self.base.cast(), self.mapped) };
    }
}

impl Guest {
    /// The guest-physical address of frontend virtual address `uaddr` (ring addresses arrive as
    /// the frontend's virtual addresses), if a region holds it.
    pub fn translate(&self, uaddr: u64) -> Option<u64> {
        self.table.iter().find_map(|r| {
            let off = uaddr.checked_sub(r.userspace_addr)?;
            (off < r.size).then(|| r.guest_phys_addr + off)
        })
    }

    /// Marks `[gpa, gpa + len)` dirty in the log, if there is one (the caller knows whether
    /// the frontend asked for logging: VHOST_F_LOG_ALL).
    pub fn log_dirty(&self, gpa: u64, len: u64) {
        if let Some(log) = &self.log {
            log.mark(gpa, len);
        }
    }

    /// Maps `table`, and the dirty log if `log` (fd, size, offset) names one. Each region's fd is
    /// duplicated for the mapping: the recorded fd belongs to the supervisor's table entry, and
    /// the mapping's file is closed when the mapping goes.
    fn map(table: Vec<MemRegionConfig>, log: (i32, u64, u64)) -> std::io::Result<Guest> {
        let mut sorted = table.clone();
        sorted.sort_by_key(|r| r.guest_phys_addr);
        let mut ranges = Vec::with_capacity(sorted.len());
        for r in &sorted {
            let fd = crate::sys::dup(r.fd)?;
            // SAFETY: `fd` is a fresh duplicate that nothing else owns.
            let file = unsafe { File::from_raw_fd(fd) };
            let size = usize::try_from(r.size).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
            ranges.push((GuestAddress(r.guest_phys_addr), size, Some(FileOffset::new(file, r.mmap_offset))));
        }
        let mem = GuestMemoryMmap::from_ranges_with_files(ranges)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        let (fd, size, offset) = log;
        let log = if fd >= 0 && size > 0 { Some(DirtyLog::map(fd, size, offset)?) } else { None };
        Ok(Guest { mem, table, log })
    }
}

/// What a mapping was made from: the memory table's generation and the dirty log's.
type MappingKey = (u64, u64);

/// The worker's current mapping, shared by its queue threads and re-made only when the
/// supervisor recorded a new memory table.
#[derive(Default)]
pub struct GuestCache {
    current: Mutex<Option<(MappingKey, Arc<Guest>)>>,
}

impl GuestCache {
    /// Guest memory as the region describes it now; None (logged) if it cannot be mapped.
    pub fn get(&self, area: &VhostArea) -> Option<Arc<Guest>> {
        let mut current = self.current.lock().unwrap();
        loop {
            let ((mem_gen, table, (log_fd, log_size, log_offset, log_gen)), seq) = area.read_control(|a| {
                (a.mem_gen.load(std::sync::atomic::Ordering::Relaxed), a.mem_table(), a.log_config())
            });
            let key = (mem_gen, log_gen);
            if let Some((g, guest)) = current.as_ref()
                && *g == key
            {
                return Some(guest.clone());
            }
            if table.is_empty() {
                return None;
            }
            let mapped = Guest::map(table, (log_fd, log_size, log_offset));
            // The supervisor closes replaced fds only after a control change ends: if none began
            // since our read, every fd we duplicated was the one recorded.
            if area.control_seq.load(std::sync::atomic::Ordering::Acquire) != seq {
                continue;
            }
            match mapped {
                Ok(guest) => {
                    let guest = Arc::new(guest);
                    *current = Some((key, guest.clone()));
                    return Some(guest);
                }
                Err(e) => {
                    tracing::error!("cannot map guest memory from the recorded memory table: {e}");
                    return None;
                }
            }
        }
    }
}
