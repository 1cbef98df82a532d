//! Guest memory as a worker sees it: mapped from the region fds the supervisor recorded at
//! SET_MEM_TABLE, so a fresh worker maps the same memory without asking the frontend again.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::{Arc, Mutex};

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

use crate::state::vhost::{MemRegionConfig, VhostArea};

/// Mapped guest memory and the table it came from (to translate ring addresses).
pub struct Guest {
    pub mem: GuestMemoryMmap,
    table: Vec<MemRegionConfig>,
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

    /// Maps `table`. Each region's fd is duplicated for the mapping: the recorded fd belongs to
    /// the supervisor's table entry, and the mapping's file is closed when the mapping goes.
    fn map(table: Vec<MemRegionConfig>) -> std::io::Result<Guest> {
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
        Ok(Guest { mem, table })
    }
}

/// The worker's current mapping, shared by its queue threads and re-made only when the
/// supervisor recorded a new memory table.
#[derive(Default)]
pub struct GuestCache {
    current: Mutex<Option<(u64, Arc<Guest>)>>,
}

impl GuestCache {
    /// Guest memory as the region describes it now; None (logged) if it cannot be mapped.
    pub fn get(&self, area: &VhostArea) -> Option<Arc<Guest>> {
        let mut current = self.current.lock().unwrap();
        loop {
            let ((mem_gen, table), seq) =
                area.read_control(|a| (a.mem_gen.load(std::sync::atomic::Ordering::Relaxed), a.mem_table()));
            if let Some((g, guest)) = current.as_ref()
                && *g == mem_gen
            {
                return Some(guest.clone());
            }
            if table.is_empty() {
                return None;
            }
            let mapped = Guest::map(table);
            // The supervisor closes replaced fds only after a control change ends: if none began
            // since our read, every fd we duplicated was the one recorded.
            if area.control_seq.load(std::sync::atomic::Ordering::Acquire) != seq {
                continue;
            }
            match mapped {
                Ok(guest) => {
                    let guest = Arc::new(guest);
                    *current = Some((mem_gen, guest.clone()));
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
