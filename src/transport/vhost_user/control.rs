//! The vhost-user control channel, served by the supervisor. Each message is checked, applied
//! to the state region, and only then acknowledged (the `vhost` crate sends the reply or ack
//! after a handler method returns). The supervisor is single-threaded and never dies with a
//! worker, so a worker's death can neither cut a control message in half nor get one answered
//! twice, and QEMU never sees the socket close.
//!
//! Workers learn of changes through the region's control sequence number and one notify
//! eventfd per queue. Fds the frontend sends (guest memory, kick/call/err eventfds) stay in the
//! shared fd table and are named in the region; a replaced kick/call/err fd is moved onto the
//! old fd's number (dup3), so a worker never uses a number that now means another file.

use std::fs::File;
use std::os::fd::IntoRawFd;
use std::sync::atomic::{AtomicU32, Ordering};

use vhost::VhostUserMemoryRegionBase;
use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight, VhostUserLog,
    VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig, VhostUserSharedMsg,
    VhostUserSingleMemoryRegion, VhostUserVirtioFeatures, VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{Backend, GpuBackend, VhostUserBackendReqHandlerMut};

use super::inflight::InFlight;
use super::transfer;
use crate::state::vhost::{
    MAX_MEM_REGIONS, MAX_QUEUE_SIZE, QueueState, TRANSFER_LOAD, TRANSFER_SAVE, VHOST_F_LOG_ALL,
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VhostArea,
};

type Result<T> = vhost::vhost_user::Result<T>;
use vhost::vhost_user::Error as VuError;

pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Virtio features we offer: VERSION_1, EVENT_IDX, INDIRECT_DESC and vhost-user's
/// PROTOCOL_FEATURES, and with `migration` VHOST_F_LOG_ALL (dirty-page logging: QEMU migrates a
/// vhost device only with it). INDIRECT_DESC, as virtiofsd: without it a large request's page
/// list takes most of the ring (a 128-entry ring then holds one 1 MiB O_DIRECT request at a
/// time); with it each request takes one ring entry and its list sits in a table of its own.
/// An older build that never offered it refuses to adopt a connection that acked it (its
/// `set_features` check while priming), so a live rollback to it is refused and we serve on.
pub fn offered_features(migration: bool) -> u64 {
    let log = if migration { VHOST_F_LOG_ALL } else { 0 };
    VIRTIO_F_VERSION_1
        | VIRTIO_RING_F_EVENT_IDX
        | VIRTIO_RING_F_INDIRECT_DESC
        | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
        | log
}

/// Protocol features we offer. No BACKEND_REQ (only DAX needs the backend-request channel),
/// no INFLIGHT_SHMFD (our in-flight state lives in our own region), CONFIG only with `--tag`
/// (as virtiofsd: the device's config space then carries our tag; QEMU up to 10.0 keeps its
/// own config space for vhost-user-fs and does not ask).
/// DEVICE_STATE (VM live migration, QEMU 8.2+) and LOG_SHMFD (the dirty log as shared memory)
/// with `migration` (recovery on: transfer.rs).
pub fn offered_protocol_features(tag: bool, migration: bool) -> VhostUserProtocolFeatures {
    let mut f = VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK;
    if tag {
        f |= VhostUserProtocolFeatures::CONFIG;
    }
    if migration {
        f |= VhostUserProtocolFeatures::DEVICE_STATE | VhostUserProtocolFeatures::LOG_SHMFD;
    }
    f
}

/// The longest tag virtio-fs's config space holds (virtio 1.2, 5.11.4).
pub const MAX_TAG_LEN: usize = 36;

/// virtio-fs's config space: the tag, NUL-padded (not terminated when it fills the field), then
/// the number of request queues (little-endian).
fn fs_config(tag: &str, request_queues: u32) -> [u8; MAX_TAG_LEN + 4] {
    let mut config = [0; MAX_TAG_LEN + 4];
    config[..tag.len()].copy_from_slice(tag.as_bytes());
    config[MAX_TAG_LEN..].copy_from_slice(&request_queues.to_le_bytes());
    config
}

/// How long GET_VRING_BASE waits for the worker to finish the queue's chain in flight.
const STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub struct Control {
    area: &'static VhostArea,
    /// `--tag`: offered in the config space (CONFIG protocol feature).
    tag: Option<String>,
    /// Called while waiting on a worker (GET_VRING_BASE): the supervisor replaces a worker that
    /// died meanwhile, so the wait can end.
    pub keep_workers: Box<dyn FnMut()>,
    /// Whether DEVICE_STATE is offered (transfer.rs).
    migration: bool,
    /// The region header's INIT flag: a device state loads only into a daemon whose guest has
    /// not begun a session.
    init_done: &'static AtomicU32,
    /// The protocol features the frontend acked (a live upgrade hands them on: the vhost
    /// crate's handler, which acts on them, is not in the region).
    pub acked_protocol: u64,
    /// While a live upgrade's new binary replays the negotiation into a fresh handler
    /// (`ControlChannel::adopt`): feature messages are taken as already applied.
    pub priming: bool,
}

fn bad(what: &'static str) -> VuError {
    tracing::warn!("vhost-user: refusing a message: {what}");
    VuError::InvalidOperation(what)
}

impl Control {
    pub fn new(
        area: &'static VhostArea,
        tag: Option<String>,
        migration: bool,
        init_done: &'static AtomicU32,
        keep_workers: Box<dyn FnMut()>,
    ) -> Control {
        Control { area, tag, keep_workers, migration, init_done, acked_protocol: 0, priming: false }
    }

    fn queue(&self, index: u32) -> Result<&'static QueueState> {
        if (index as usize) < self.area.queue_count() {
            Ok(&self.area.queues[index as usize])
        } else {
            Err(bad("queue index out of range"))
        }
    }

    /// Applies one change and tells every queue thread to look.
    fn change<T>(&self, f: impl FnOnce() -> T) -> T {
        let r = self.area.write_control(f);
        for q in &self.area.queues[..self.area.queue_count()] {
            let fd = q.notify_fd.load(Ordering::Relaxed);
            if fd >= 0 {
                crate::sys::eventfd_signal(fd);
            }
        }
        r
    }

    /// Installs `file` as the queue's kick/call/err fd: on the old number if there is one.
    fn install_fd(&self, slot: &std::sync::atomic::AtomicI32, file: Option<File>) -> Result<()> {
        let Some(file) = file else {
            return Err(bad("polling mode (no eventfd) is not supported"));
        };
        let old = slot.load(Ordering::Relaxed);
        if old >= 0 {
            let new = file.into_raw_fd();
            let moved = crate::sys::dup3(new, old);
            crate::sys::close(new);
            return moved.map_err(VuError::ReqHandlerError);
        }
        // Recorded before the ack; a worker starting meanwhile would not sweep it: the
        // supervisor reads no message while a worker is between clone and ready.
        slot.store(file.into_raw_fd(), Ordering::Release);
        Ok(())
    }

    /// Waits until every queue's thread has taken in the control change that ended at `seq`
    /// (bounded, as GET_VRING_BASE's wait; a worker that dies meanwhile is replaced and its
    /// threads start from the region). For dirty logging: once the frontend has the ack, every
    /// write into guest memory must be logged.
    fn wait_applied(&mut self, seq: u64, what: &str) {
        let deadline = std::time::Instant::now() + STOP_TIMEOUT;
        for q in &self.area.queues[..self.area.queue_count()] {
            while q.applied_seq.load(Ordering::Acquire) < seq {
                if std::time::Instant::now() > deadline {
                    tracing::warn!("{what}: the worker did not take the change in within 5 s");
                    return;
                }
                (self.keep_workers)();
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }

    /// Stops every ring (RESET_OWNER, RESET_DEVICE).
    fn stop_all(&mut self) {
        for i in 0..self.area.queue_count() as u32 {
            let _ = self.get_vring_base(i);
        }
    }
}

impl VhostUserBackendReqHandlerMut for Control {
    fn set_owner(&mut self) -> Result<()> {
        Ok(())
    }

    fn reset_owner(&mut self) -> Result<()> {
        self.stop_all();
        Ok(())
    }

    fn reset_device(&mut self) -> Result<()> {
        self.stop_all();
        Ok(())
    }

    fn get_features(&mut self) -> Result<u64> {
        Ok(offered_features(self.migration))
    }

    fn set_features(&mut self, features: u64) -> Result<()> {
        if features & !offered_features(self.migration) != 0 {
            return Err(bad("features acked that were not offered"));
        }
        if self.priming {
            return Ok(());
        }
        let protocol = features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0;
        let logging = self.area.acked_features.load(Ordering::Relaxed) & VHOST_F_LOG_ALL;
        self.change(|| {
            self.area.acked_features.store(features, Ordering::Relaxed);
            // Without PROTOCOL_FEATURES a ring is enabled as soon as it starts.
            if !protocol {
                for q in &self.area.queues {
                    q.enabled.store(1, Ordering::Relaxed);
                }
            }
        });
        if features & VHOST_F_LOG_ALL != logging {
            let seq = self.area.control_seq.load(Ordering::Acquire);
            self.wait_applied(seq, "SET_FEATURES (dirty logging)");
        }
        Ok(())
    }

    fn get_protocol_features(&mut self) -> Result<VhostUserProtocolFeatures> {
        Ok(offered_protocol_features(self.tag.is_some(), self.migration))
    }

    fn set_protocol_features(&mut self, features: u64) -> Result<()> {
        if features & !offered_protocol_features(self.tag.is_some(), self.migration).bits() != 0 {
            return Err(bad("protocol features acked that were not offered"));
        }
        self.acked_protocol = features;
        Ok(())
    }

    fn get_queue_num(&mut self) -> Result<u64> {
        Ok(self.area.queue_count() as u64)
    }

    fn set_mem_table(
        &mut self,
        regions: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy: Option<bool>,
    ) -> Result<Option<Vec<VhostUserMemoryRegionBase>>> {
        if regions.len() > MAX_MEM_REGIONS || regions.len() != files.len() {
            return Err(bad("memory table with too many regions or fds"));
        }
        for r in regions {
            let end = r.guest_phys_addr.checked_add(r.memory_size);
            let uend = r.user_addr.checked_add(r.memory_size);
            if r.memory_size == 0
                || end.is_none()
                || uend.is_none()
                || r.mmap_offset.checked_add(r.memory_size).is_none()
            {
                return Err(bad("memory region with a zero or overflowing size"));
            }
        }
        let fds: Vec<i32> = files.into_iter().map(IntoRawFd::into_raw_fd).collect();
        let old = self.change(|| {
            let old = self.area.mem_table();
            for (slot, (r, fd)) in self.area.mem.iter().zip(regions.iter().zip(&fds)) {
                slot.guest_phys_addr.store(r.guest_phys_addr, Ordering::Relaxed);
                slot.size.store(r.memory_size, Ordering::Relaxed);
                slot.userspace_addr.store(r.user_addr, Ordering::Relaxed);
                slot.mmap_offset.store(r.mmap_offset, Ordering::Relaxed);
                slot.fd.store(*fd, Ordering::Relaxed);
            }
            for slot in &self.area.mem[regions.len()..] {
                slot.fd.store(-1, Ordering::Relaxed);
            }
            self.area.mem_count.store(regions.len() as u32, Ordering::Relaxed);
            self.area.mem_gen.fetch_add(1, Ordering::Relaxed);
            old
        });
        // Closed only after the change ended: a worker that duplicated one of these fds sees
        // the sequence number moved and maps again (memory.rs).
        for r in old {
            crate::sys::close(r.fd);
        }
        tracing::info!(regions = regions.len(), "guest memory table recorded");
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> Result<()> {
        let q = self.queue(index)?;
        if !num.is_power_of_two() || num as usize > MAX_QUEUE_SIZE {
            return Err(bad("queue size not a power of two up to 1024"));
        }
        self.change(|| q.size.store(num, Ordering::Relaxed));
        Ok(())
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> Result<()> {
        let q = self.queue(index)?;
        self.change(|| {
            q.desc_addr.store(descriptor, Ordering::Relaxed);
            q.used_addr.store(used, Ordering::Relaxed);
            q.avail_addr.store(available, Ordering::Relaxed);
        });
        Ok(())
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> Result<()> {
        let q = self.queue(index)?;
        if q.started.load(Ordering::Relaxed) != 0 {
            return Err(bad("SET_VRING_BASE on a started ring"));
        }
        self.change(|| {
            q.base.store(base, Ordering::Relaxed);
            q.base_pending.store(1, Ordering::Relaxed);
        });
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> Result<VhostUserVringState> {
        let q = self.queue(index)?;
        let seq = self.change(|| {
            q.started.store(0, Ordering::Relaxed);
            self.area.control_seq.load(Ordering::Relaxed) + 1
        });
        // The ring is stopped once its thread took the change in (it does so between chains),
        // and nothing it popped is left in flight.
        let deadline = std::time::Instant::now() + STOP_TIMEOUT;
        while q.applied_seq.load(Ordering::Acquire) < seq || q.in_flight_count() != 0 {
            if std::time::Instant::now() > deadline {
                tracing::warn!(queue = index, "GET_VRING_BASE: the worker did not stop the ring within 5 s");
                break;
            }
            (self.keep_workers)();
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let base = if q.base_pending.load(Ordering::Acquire) != 0 {
            q.base.load(Ordering::Acquire) as u16
        } else {
            q.next_avail()
        };
        Ok(VhostUserVringState::new(index, u32::from(base)))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        let q = self.queue(u32::from(index))?;
        self.change(|| self.install_fd(&q.kick_fd, fd).map(|()| q.started.store(1, Ordering::Relaxed)))
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        let q = self.queue(u32::from(index))?;
        self.change(|| self.install_fd(&q.call_fd, fd))
    }

    fn set_vring_err(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        let q = self.queue(u32::from(index))?;
        self.change(|| self.install_fd(&q.err_fd, fd))
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> Result<()> {
        let q = self.queue(index)?;
        self.change(|| q.enabled.store(u32::from(enable), Ordering::Relaxed));
        Ok(())
    }

    /// GET_CONFIG (only offered with `--tag`): the bytes asked for of the config space, padded
    /// with zeros past its end.
    fn get_config(&mut self, offset: u32, size: u32, _: VhostUserConfigFlags) -> Result<Vec<u8>> {
        let Some(tag) = &self.tag else {
            return Err(bad("GET_CONFIG (no --tag: the frontend owns virtio-fs's config space)"));
        };
        let request_queues = self.area.queue_count().saturating_sub(1) as u32;
        let config = fs_config(tag, request_queues);
        let mut out: Vec<u8> = config.iter().skip(offset as usize).take(size as usize).copied().collect();
        out.resize(size as usize, 0);
        Ok(out)
    }

    fn set_config(&mut self, _: u32, _: &[u8], _: VhostUserConfigFlags) -> Result<()> {
        Err(bad("SET_CONFIG (the frontend owns virtio-fs's config space)"))
    }

    fn set_backend_req_fd(&mut self, _backend: Backend) {
        tracing::warn!("vhost-user: SET_BACKEND_REQ_FD without BACKEND_REQ negotiated; ignored");
    }

    fn set_gpu_socket(&mut self, _: GpuBackend) -> Result<()> {
        Err(bad("GPU socket"))
    }

    fn get_shared_object(&mut self, _: VhostUserSharedMsg) -> Result<File> {
        Err(bad("shared objects"))
    }

    fn get_inflight_fd(&mut self, _: &VhostUserInflight) -> Result<(VhostUserInflight, File)> {
        Err(bad("GET_INFLIGHT_FD (not offered: in-flight state lives in our own region)"))
    }

    fn set_inflight_fd(&mut self, _: &VhostUserInflight, _: File) -> Result<()> {
        Err(bad("SET_INFLIGHT_FD (not offered)"))
    }

    fn get_max_mem_slots(&mut self) -> Result<u64> {
        Err(bad("GET_MAX_MEM_SLOTS (CONFIGURE_MEM_SLOTS not offered)"))
    }

    fn add_mem_region(
        &mut self,
        _: &VhostUserSingleMemoryRegion,
        _: File,
        _: Option<bool>,
    ) -> Result<Option<VhostUserMemoryRegionBase>> {
        Err(bad("ADD_MEM_REG (CONFIGURE_MEM_SLOTS not offered)"))
    }

    fn remove_mem_region(&mut self, _: &VhostUserSingleMemoryRegion) -> Result<()> {
        Err(bad("REM_MEM_REG (CONFIGURE_MEM_SLOTS not offered)"))
    }

    /// SET_DEVICE_STATE_FD: answered with a memfd of our own (transfer.rs); a save is done at
    /// once (by the worker), so the frontend reads the whole state from it.
    fn set_device_state_fd(
        &mut self,
        direction: VhostTransferStateDirection,
        phase: VhostTransferStatePhase,
        frontends: File,
    ) -> Result<Option<File>> {
        // The frontend's pipe end is not used: it reads from, or writes to, ours.
        drop(frontends);
        if !self.migration {
            return Err(bad("SET_DEVICE_STATE_FD (DEVICE_STATE not offered: --recovery off)"));
        }
        if phase != VhostTransferStatePhase::STOPPED {
            return Err(bad("SET_DEVICE_STATE_FD in a phase other than STOPPED"));
        }
        if self.area.queues[..self.area.queue_count()].iter().any(|q| q.started.load(Ordering::Acquire) != 0) {
            return Err(bad("SET_DEVICE_STATE_FD while a ring is running (the device must be stopped)"));
        }
        let dir = if direction == VhostTransferStateDirection::SAVE { TRANSFER_SAVE } else { TRANSFER_LOAD };
        if dir == TRANSFER_LOAD && self.init_done.load(Ordering::Acquire) != 0 {
            return Err(bad("SET_DEVICE_STATE_FD(LOAD) into a daemon whose guest already began a FUSE session"));
        }
        let failed = |e: std::io::Error| {
            tracing::error!("device state transfer: cannot make its memfd: {e}");
            VuError::ReqHandlerError(e)
        };
        // The transfer lives in the region (its memfd, direction and outcome), not in this
        // handler: a supervisor that re-executes itself between the two messages finds it.
        transfer::open(self.area, dir).map_err(failed)?;
        if dir == TRANSFER_SAVE {
            tracing::info!("device state save asked (VM live migration, source)");
            // Its outcome stays in the region for CHECK_DEVICE_STATE.
            let _ = transfer::run(self.area, TRANSFER_SAVE, &mut *self.keep_workers);
        } else {
            tracing::info!("device state load asked (VM live migration, destination)");
        }
        // After the save: no worker is cloned between this and the reply.
        let file = transfer::reply_file(self.area).map_err(failed)?;
        Ok(Some(file))
    }

    /// CHECK_DEVICE_STATE: a save's outcome; for a load, the import (by the worker, which is
    /// then replaced) and its outcome.
    fn check_device_state(&mut self) -> Result<()> {
        let Some(dir) = transfer::open_direction(self.area) else {
            return Err(bad("CHECK_DEVICE_STATE without a transfer"));
        };
        let outcome = match transfer::outcome(self.area) {
            // A save, done at SET_DEVICE_STATE_FD.
            Some(done) if dir == TRANSFER_SAVE => done,
            // A load (or a save whose answer was lost: done now).
            _ => {
                let r = transfer::run(self.area, dir, &mut *self.keep_workers);
                if dir == TRANSFER_LOAD {
                    // Success or not: the worker's heap may no longer match the tables.
                    transfer::replace_worker(self.area, &mut *self.keep_workers);
                }
                r
            }
        }
        .map_err(|e| e.to_string());
        transfer::close(self.area);
        let what = if dir == TRANSFER_SAVE { "save" } else { "load" };
        match outcome {
            Ok(s) => {
                tracing::info!(nodes = s.nodes, handles = s.handles, unusable = s.invalid, "device state {what} done");
                Ok(())
            }
            Err(e) => {
                tracing::error!("device state {what} failed: {e}");
                Err(VuError::ReqHandlerError(std::io::Error::other(e)))
            }
        }
    }

    fn get_shmem_config(&mut self) -> Result<VhostUserShMemConfig> {
        Err(bad("shared memory regions"))
    }

    /// SET_LOG_BASE (LOG_SHMFD): the dirty-page bitmap, recorded like the memory table (the
    /// old one's fd closed once the change ended); workers map it and log their writes into
    /// guest memory while VHOST_F_LOG_ALL is acked.
    fn set_log_base(&mut self, log: &VhostUserLog, file: File) -> Result<()> {
        if !self.migration {
            return Err(bad("SET_LOG_BASE (LOG_SHMFD not offered: --recovery off)"));
        }
        if log.mmap_size == 0 || log.mmap_offset.checked_add(log.mmap_size).is_none_or(|end| end > 1 << 40) {
            return Err(bad("dirty log with a zero or overflowing size"));
        }
        let fd = file.into_raw_fd();
        let l = &self.area.log;
        let old = self.change(|| {
            let old = l.fd.swap(fd, Ordering::Relaxed);
            l.size.store(log.mmap_size, Ordering::Relaxed);
            l.offset.store(log.mmap_offset, Ordering::Relaxed);
            l.generation.fetch_add(1, Ordering::Relaxed);
            old
        });
        // Every queue thread maps the new log before the frontend is answered, and before the
        // old fd is closed (a thread that was mapping it sees the change and maps again).
        let seq = self.area.control_seq.load(Ordering::Acquire);
        self.wait_applied(seq, "SET_LOG_BASE");
        if old >= 0 {
            crate::sys::close(old);
        }
        tracing::info!(bytes = log.mmap_size, "dirty-page log recorded (VM live migration)");
        Ok(())
    }
}
