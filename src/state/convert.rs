//! The layouts this build reads besides its own, and the conversion of a region between them in
//! place: a live upgrade from an older build converts its region up, and one back to an older
//! build (a rollback) converts it down for it (docs/design.md "Live upgrade").
//!
//! Layout 5 → 6 (VM live migration) inserted the device-state transfer and the dirty-page log
//! into the vhost-user area, before its queues. Everything else is the same byte for byte, and
//! at the same offsets: the area's page rounding absorbs the growth (asserted below). So a
//! conversion moves the queue array and sets up, or drops, the two new parts.
//!
//! Layout 6 → 7 (FUSE passthrough) moved no byte: a handle slot's padding now holds the backing
//! id of a file open in passthrough (fs/passthrough.rs), which a build of layout 6 would ignore
//! — its opens of such a node would fail with EIO and the ids would stay registered. Up is
//! nothing to do (the padding was zero); down is refused while a live handle holds an id, and
//! clears the word in every other slot.
//!
//! A conversion between layouts further apart goes one version at a time.
//!
//! A conversion runs only while no worker lives (the new supervisor of a live upgrade after the
//! old one's go, or the old one handing over to an older binary): nothing reads the area
//! meanwhile, and the supervisor is the only writer.

use std::mem::offset_of;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Error;
use super::region::{LAYOUT_VERSION, Region};
use super::vhost::{MAX_QUEUES, QueueState, STATUS_PENDING, VHOST_F_LOG_ALL, VhostArea};

/// Older layouts this build reads (converting them up) and writes (converting down), newest
/// first.
pub const OLDER_LAYOUTS: &[u32] = &[6, 5];

/// Layout 5 kept the queues where the transfer begins now.
const QUEUES_5: usize = offset_of!(VhostArea, transfer);
const QUEUES_6: usize = offset_of!(VhostArea, queues);
const QUEUES_LEN: usize = size_of::<[QueueState; MAX_QUEUES]>();
/// Layout 5's vhost-user area ended here.
const AREA_5_END: usize = QUEUES_5 + QUEUES_LEN;

const fn pages(bytes: usize) -> usize {
    bytes.div_ceil(4096)
}
// The key index after the area begins at the same offset in both layouts.
const _: () = assert!(pages(AREA_5_END) == pages(size_of::<VhostArea>()));
const _: () = assert!(
    QUEUES_5.is_multiple_of(align_of::<QueueState>()) && AREA_5_END == size_of::<VhostArea>() - (QUEUES_6 - QUEUES_5)
);

impl Region {
    /// Converts the region, in place, to layout `to` (this build's or one of `OLDER_LAYOUTS`).
    /// Only while no worker lives. A region that fails its check, or that holds what `to`
    /// cannot describe, is refused unchanged.
    pub fn convert(&self, to: u32) -> Result<(), Error> {
        self.check_convertible()?;
        let from = self.header().layout_version;
        if to != LAYOUT_VERSION && !OLDER_LAYOUTS.contains(&to) {
            return Err(Error::Corrupt(format!("no conversion from layout {from} to {to}")));
        }
        // Everything a step down would refuse is checked before the first step: a refused
        // conversion changes nothing.
        if to < from && to < 7 {
            self.refuse_backing_ids(to)?;
        }
        if to < from && to < 6 {
            self.refuse_migration_state()?;
        }
        let mut at = from;
        while at != to {
            let next = if to > at { at + 1 } else { at - 1 };
            match (at, next) {
                (5, 6) => self.raise_vhost_from_5()?,
                (6, 5) => self.lower_vhost_to_5(),
                (6, 7) => {}
                (7, 6) => self.clear_backing_ids(),
                _ => unreachable!("layouts 5 to 7 are converted step by step"),
            }
            // Crash before this store: the supervisor's own death (not survived, see
            // docs/operations.md); the region is whole in layout `next`, the header says `at`.
            // SAFETY: the header is inside the mapping; no other process reads it now (no worker).
            unsafe {
                std::ptr::addr_of_mut!((*(self.base() as *mut super::region::Header)).layout_version)
                    .write_volatile(next)
            };
            at = next;
        }
        tracing::info!(from, to, "state region converted to another layout version");
        Ok(())
    }

    /// Layout 7 → 6: the backing-id word of every handle slot back to the zero padding it was.
    fn clear_backing_ids(&self) {
        for s in &self.handle_slots()[..self.handles_used()] {
            s.backing.store(0, Ordering::Relaxed);
        }
    }

    /// A build of a layout before 7 knows no FUSE passthrough: it would ignore the backing ids
    /// live handles hold (fs/passthrough.rs; in what was the handle slot's padding), and its
    /// opens of a node the kernel holds in passthrough would fail with EIO. Refused while any
    /// LIVE handle names one (the files close, the ids go, and the rollback can be asked again).
    fn refuse_backing_ids(&self, to: u32) -> Result<(), Error> {
        let in_use = (1..self.handles_used())
            .filter(|&i| self.handle_headers()[i].state.load(Ordering::Acquire) == super::slots::LIVE)
            .filter(|&i| self.handle_slots()[i].backing.load(Ordering::Acquire) != 0)
            .count();
        if in_use > 0 {
            return Err(Error::Corrupt(format!(
                "{in_use} open files use FUSE passthrough backing ids, which layout {to} has no room for"
            )));
        }
        Ok(())
    }

    /// The vhost-user area's first byte.
    fn vhost_bytes(&self) -> *mut u8 {
        // SAFETY: `check` placed the area inside the mapping.
        unsafe { self.base().add(self.header().vhost_offset as usize) }
    }

    /// Layout 5 → 6: the queues move up; the transfer and the dirty log start empty (no fd),
    /// and a vhost-user daemon gets the transfer's wake eventfd that start-up makes.
    fn raise_vhost_from_5(&self) -> Result<(), Error> {
        let v = self.vhost();
        // Made first: failing here leaves the area as it was (`num_queues` has the same place in
        // both layouts).
        let wake = match v.queue_count() {
            0 => -1,
            _ => crate::sys::eventfd().map_err(|e| Error::EventFd(Arc::new(e)))?,
        };
        let area = self.vhost_bytes();
        // SAFETY: both ranges lie inside the area (asserted above); no worker touches it now.
        // Overlapping ranges: `copy` is memmove.
        unsafe {
            std::ptr::copy(area.add(QUEUES_5), area.add(QUEUES_6), QUEUES_LEN);
            std::ptr::write_bytes(area.add(QUEUES_5), 0, QUEUES_6 - QUEUES_5);
        }
        for fd in [&v.transfer.fd, &v.log.fd] {
            fd.store(-1, Ordering::Relaxed);
        }
        // Named by the region from here: every worker's fd sweep keeps it.
        v.transfer.wake_fd.store(wake, Ordering::Release);
        Ok(())
    }

    /// A build of layout 5 serves no VM migration: refused while one uses what layout 5 has no
    /// room for (an open device-state transfer, dirty-page logging).
    fn refuse_migration_state(&self) -> Result<(), Error> {
        let v = self.vhost();
        if v.transfer.fd.load(Ordering::Acquire) >= 0 || v.transfer.status.load(Ordering::Acquire) == STATUS_PENDING {
            return Err(Error::Corrupt("a VM migration's device-state transfer is open (layout 5 has none)".into()));
        }
        if v.log.fd.load(Ordering::Acquire) >= 0 || v.acked_features.load(Ordering::Acquire) & VHOST_F_LOG_ALL != 0 {
            return Err(Error::Corrupt("dirty-page logging for a VM migration is set up (layout 5 has none)".into()));
        }
        Ok(())
    }

    /// Layout 6 → 5 (after `refuse_migration_state`): the wake eventfd is closed and the queues
    /// move down.
    fn lower_vhost_to_5(&self) {
        let wake = self.vhost().transfer.wake_fd.swap(-1, Ordering::AcqRel);
        if wake >= 0 {
            crate::sys::close(wake);
        }
        let area = self.vhost_bytes();
        // SAFETY: as in `raise_vhost_from_5`; the tail layout 5 does not use is left zero, as a
        // region of layout 5 has it.
        unsafe {
            std::ptr::copy(area.add(QUEUES_6), area.add(QUEUES_5), QUEUES_LEN);
            std::ptr::write_bytes(area.add(AREA_5_END), 0, size_of::<VhostArea>() - AREA_5_END);
        }
    }
}

/// Every fd the vhost-user area names, wherever the region's layout keeps them.
pub(super) fn vhost_fds(region: &Region) -> Vec<i32> {
    let v = region.vhost();
    match region.header().layout_version {
        5 => {
            // SAFETY: layout 5's queues lie inside the area at QUEUES_5, aligned (asserted);
            // zero bytes are valid atomics.
            let queues = unsafe {
                std::slice::from_raw_parts(region.vhost_bytes().add(QUEUES_5) as *const QueueState, MAX_QUEUES)
            };
            v.fds_with_queues(queues)
        }
        _ => v.fds(),
    }
}

const _: () = assert!(LAYOUT_VERSION == 7, "a new layout version needs its conversions here");

#[cfg(test)]
mod tests {
    use super::*;

    /// A vhost-user region with queue and memory fields set, as a supervisor leaves them.
    fn vhost_region() -> Region {
        let r = Region::create(16, 16).unwrap();
        let v = r.vhost();
        v.num_queues.store(2, Ordering::Relaxed);
        v.mem_count.store(1, Ordering::Relaxed);
        v.mem[0].fd.store(40, Ordering::Relaxed);
        for (i, q) in v.queues[..2].iter().enumerate() {
            q.size.store(128, Ordering::Relaxed);
            q.kick_fd.store(41 + i as i32, Ordering::Relaxed);
            q.desc_addr.store(0x1000 * (i as u64 + 1), Ordering::Relaxed);
            q.used_idx.store(7, Ordering::Relaxed);
            q.desc[3].inflight.store(1, Ordering::Relaxed);
        }
        r
    }

    fn bytes(r: &Region) -> Vec<u8> {
        // SAFETY: the area lies inside the mapping.
        unsafe { std::slice::from_raw_parts(r.vhost_bytes(), size_of::<VhostArea>()).to_vec() }
    }

    fn queue_bytes(r: &Region) -> Vec<u8> {
        bytes(r)[QUEUES_6..].to_vec()
    }

    #[test]
    fn test_convert_down_and_up_keeps_every_queue_and_the_memory_table() {
        let r = vhost_region();
        let queues = queue_bytes(&r);
        let mut named_before = r.named_fds();
        named_before.sort_unstable();
        assert!(named_before.ends_with(&[40, 41, 42]), "{named_before:?}");
        r.convert(5).unwrap();
        assert_eq!(r.header().layout_version, 5);
        assert_eq!(&bytes(&r)[QUEUES_5..AREA_5_END], &queues[..], "queues moved down whole");
        assert!(bytes(&r)[AREA_5_END..].iter().all(|b| *b == 0), "layout 5 has nothing past its queues");
        // What a layout-5 region names, read where layout 5 keeps it.
        let mut named = r.named_fds();
        named.sort_unstable();
        assert_eq!(named, named_before, "the memory table's and the queues' fds");
        r.convert(LAYOUT_VERSION).unwrap();
        assert_eq!(r.header().layout_version, LAYOUT_VERSION);
        assert_eq!(queue_bytes(&r), queues, "queues moved back whole");
        let v = r.vhost();
        assert_eq!(v.transfer.fd.load(Ordering::Relaxed), -1);
        assert_eq!(v.log.fd.load(Ordering::Relaxed), -1);
        let wake = v.transfer.wake_fd.load(Ordering::Relaxed);
        assert!(wake >= 0 && crate::sys::is_open(wake), "a vhost-user area gets a wake eventfd");
        r.check().unwrap();
    }

    #[test]
    fn test_convert_down_refused_while_a_migration_needs_layout_6() {
        for (what, set) in [
            ("transfer", (|v: &VhostArea| v.transfer.fd.store(50, Ordering::Relaxed)) as fn(&VhostArea)),
            ("transfer", |v: &VhostArea| v.transfer.status.store(STATUS_PENDING, Ordering::Relaxed)),
            ("dirty-page logging", |v: &VhostArea| v.log.fd.store(51, Ordering::Relaxed)),
            ("dirty-page logging", |v: &VhostArea| v.acked_features.store(VHOST_F_LOG_ALL, Ordering::Relaxed)),
        ] {
            let r = vhost_region();
            set(r.vhost());
            let before = bytes(&r);
            let e = r.convert(5).unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
            assert_eq!(bytes(&r), before, "a refused conversion changed the area");
            assert_eq!(r.header().layout_version, LAYOUT_VERSION);
        }
    }

    #[test]
    fn test_convert_down_refused_while_files_use_passthrough_backing_ids() {
        let r = vhost_region();
        let (headers, slots) = (r.handle_headers(), r.handle_slots());
        r.header().handle_high_water.store(3, Ordering::Relaxed);
        headers[2].state.store(crate::state::slots::LIVE, Ordering::Relaxed);
        slots[2].backing.store(7, Ordering::Relaxed);
        let before = bytes(&r);
        for to in [6, 5] {
            let e = r.convert(to).unwrap_err().to_string();
            assert!(e.contains("passthrough backing ids"), "{e}");
            assert_eq!(bytes(&r), before);
            assert_eq!(r.header().layout_version, LAYOUT_VERSION);
        }
        // Once the file is closed, the rollback goes through, and leaves the word the zero
        // padding layout 6 had.
        headers[2].state.store(crate::state::slots::FREE, Ordering::Relaxed);
        r.convert(6).unwrap();
        assert_eq!(slots[2].backing.load(Ordering::Relaxed), 0);
        r.convert(5).unwrap();
        assert_eq!(r.header().layout_version, 5);
    }

    #[test]
    fn test_convert_refuses_unknown_layouts_and_corrupt_regions() {
        let r = vhost_region();
        assert!(r.convert(4).unwrap_err().to_string().contains("no conversion"));
        assert!(r.convert(LAYOUT_VERSION + 1).is_err());
        assert_eq!(r.header().layout_version, LAYOUT_VERSION);
        let mut r = vhost_region();
        r.header_mut_before_workers().magic = 0;
        let before = bytes(&r);
        assert!(r.convert(5).unwrap_err().to_string().contains("bad magic"));
        assert_eq!(bytes(&r), before);
    }
}
