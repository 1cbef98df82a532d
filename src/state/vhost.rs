//! The vhost-user part of the state region: everything the supervisor learned from the control
//! channel (features, memory table, per-queue ring addresses and eventfds), and per queue the
//! in-flight tracking that lets a fresh worker resume the rings without a new handshake.
//!
//! Writers: the supervisor writes the control fields, always inside a `ControlSeq` write section
//! (odd while writing, then even), so a worker reading them retries until it reads a consistent
//! set. A worker writes the in-flight fields of the queues it serves (one thread per queue).
//!
//! The in-flight fields follow QEMU's inflight-region layout for split rings
//! (docs/interop/vhost-user.rst, "Inflight I/O tracking"): per descriptor an `inflight` flag and
//! a `counter` (pop order), plus `used_idx` and `last_batch_head`. This module is only the
//! layout; how a pop and a put move these fields, and how recovery reads them, is the
//! transport's (transport/vhost_user/inflight.rs).

use std::sync::atomic::{AtomicI32, AtomicU8, AtomicU16, AtomicU32, AtomicU64, Ordering};

/// Queues a region can describe: the hiprio queue and up to 63 request queues.
pub const MAX_QUEUES: usize = 64;
/// The largest ring a queue may have (QEMU's vhost-user-fs allows up to 1024).
pub const MAX_QUEUE_SIZE: usize = 1024;
/// Memory regions in one SET_MEM_TABLE (the vhost crate's limit on attached fds).
pub const MAX_MEM_REGIONS: usize = 32;

/// One guest memory region as SET_MEM_TABLE gave it; `fd` is held in the shared fd table.
#[repr(C)]
#[derive(Debug)]
pub struct MemRegion {
    pub guest_phys_addr: AtomicU64,
    pub size: AtomicU64,
    /// The frontend's virtual address of the region: ring addresses arrive in this space.
    pub userspace_addr: AtomicU64,
    pub mmap_offset: AtomicU64,
    pub fd: AtomicI32,
    _pad: u32,
}

/// QEMU's `DescStateSplit`: 16 bytes per descriptor.
#[repr(C)]
#[derive(Debug)]
pub struct DescState {
    pub inflight: AtomicU8,
    _padding: [u8; 5],
    _next: u16,
    pub counter: AtomicU64,
}

const _: () = assert!(size_of::<DescState>() == 16);

/// One virtqueue.
#[repr(C)]
#[derive(Debug)]
pub struct QueueState {
    // Control fields (supervisor, inside a write section).
    pub size: AtomicU32,
    /// 1 once SET_VRING_KICK came (the ring is started), 0 after GET_VRING_BASE stopped it.
    pub started: AtomicU32,
    /// SET_VRING_ENABLE. Without VHOST_USER_F_PROTOCOL_FEATURES rings are enabled at start.
    pub enabled: AtomicU32,
    /// 1 after SET_VRING_BASE: the serving thread takes `base` and the ring's used index as its
    /// starting point (and clears this) before it pops anything.
    pub base_pending: AtomicU32,
    pub base: AtomicU32,
    pub kick_fd: AtomicI32,
    pub call_fd: AtomicI32,
    pub err_fd: AtomicI32,
    pub desc_addr: AtomicU64,
    pub avail_addr: AtomicU64,
    pub used_addr: AtomicU64,
    /// An eventfd made by the supervisor at start-up: written after every control change so the
    /// queue's thread, waiting on its kick fd and this, takes the change in.
    pub notify_fd: AtomicI32,
    _pad0: u32,
    /// The control sequence number this queue's thread has taken in (the supervisor waits on it
    /// when it stops a ring).
    pub applied_seq: AtomicU64,

    // In-flight tracking (the serving worker; the logic is transport/vhost_user/inflight.rs),
    // the fields of QEMU's QueueRegionSplit that a split ring uses, then descriptors.
    pub last_batch_head: AtomicU16,
    /// Our copy of the ring's used index, advanced after each used element is published.
    pub used_idx: AtomicU16,
    /// next avail = used_idx + in-flight heads + avail_offset (normally 0: see `base_pending`).
    pub avail_offset: AtomicU16,
    _pad1: [u16; 1],
    /// The next pop counter (counters order in-flight heads for replay and key their records).
    pub next_counter: AtomicU64,
    pub desc: [DescState; MAX_QUEUE_SIZE],
}

/// A device-state transfer (VM live migration: vhost-user SET_DEVICE_STATE_FD and
/// CHECK_DEVICE_STATE) as the supervisor asks it of the worker. The supervisor serves the
/// control channel, but the work (reading the tables and the file system on the source, opening
/// objects and filling the tables on the destination) is the worker's; the request lives here,
/// so a worker that dies in the middle of it is replaced and the new one does it again.
#[repr(C)]
#[derive(Debug)]
pub struct Transfer {
    /// What is asked (`TRANSFER_*`); written by the supervisor before `status` goes PENDING.
    pub direction: AtomicU32,
    /// `STATUS_*`: the supervisor sets PENDING, the worker DONE or FAILED.
    pub status: AtomicU32,
    /// The transfer's memfd (the supervisor's; named here so a worker's fd sweep keeps it).
    pub fd: AtomicI32,
    /// An eventfd the supervisor writes after setting PENDING: the worker's transfer thread
    /// waits on it (made at start-up, like the queues' notify fds).
    pub wake_fd: AtomicI32,
    /// Workers that started on this request: a request that two workers died on fails.
    pub attempts: AtomicU32,
    /// The errno of a failure (for the supervisor's log line), 0 if none.
    pub error: AtomicI32,
    /// The worker that finished the request (the supervisor replaces it after a load).
    pub worker_pid: AtomicI32,
    _pad: u32,
    /// Bytes of state written (save) or read (load).
    pub len: AtomicU64,
    /// Nodes and handles transferred, and nodes marked unusable (`--migration-on-error=guest-error`).
    pub nodes: AtomicU64,
    pub handles: AtomicU64,
    pub invalid: AtomicU64,
}

pub const TRANSFER_NONE: u32 = 0;
pub const TRANSFER_SAVE: u32 = 1;
pub const TRANSFER_LOAD: u32 = 2;
pub const STATUS_IDLE: u32 = 0;
pub const STATUS_PENDING: u32 = 1;
pub const STATUS_DONE: u32 = 2;
pub const STATUS_FAILED: u32 = 3;

/// The dirty-page log (VHOST_F_LOG_ALL, LOG_SHMFD; VM live migration): SET_LOG_BASE's shared
/// memory, one bit per 4 KiB page of guest-physical memory, which the worker sets after each
/// write into guest memory while the frontend has LOG_ALL acked. `fd` is held in the shared fd
/// table like the memory table's.
#[repr(C)]
#[derive(Debug)]
pub struct DirtyLogArea {
    pub fd: AtomicI32,
    _pad: u32,
    pub size: AtomicU64,
    pub offset: AtomicU64,
    /// Bumped with every SET_LOG_BASE, so workers map the log again only when it changed.
    pub generation: AtomicU64,
}

/// VHOST_F_LOG_ALL: the frontend logs dirty pages (during a migration).
pub const VHOST_F_LOG_ALL: u64 = 1 << 26;

/// The vhost-user area's header, then `MAX_QUEUES` queues.
#[repr(C)]
#[derive(Debug)]
pub struct VhostArea {
    /// Odd while the supervisor changes control fields; bumped to even when done.
    pub control_seq: AtomicU64,
    /// Bumped with every SET_MEM_TABLE, so workers re-map guest memory only when it changed.
    pub mem_gen: AtomicU64,
    pub acked_features: AtomicU64,
    /// Queues this backend offers (GET_QUEUE_NUM): the hiprio queue plus the request queues.
    pub num_queues: AtomicU32,
    pub mem_count: AtomicU32,
    pub mem: [MemRegion; MAX_MEM_REGIONS],
    pub transfer: Transfer,
    pub log: DirtyLogArea,
    pub queues: [QueueState; MAX_QUEUES],
}

/// A consistent copy of one queue's control fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueConfig {
    pub size: u16,
    pub active: bool,
    pub kick_fd: i32,
    pub call_fd: i32,
    pub desc_addr: u64,
    pub avail_addr: u64,
    pub used_addr: u64,
    pub event_idx: bool,
    /// VIRTIO_RING_F_INDIRECT_DESC acked: a chain may end in an indirect table.
    pub indirect: bool,
    /// VHOST_F_LOG_ALL acked: writes into guest memory are logged.
    pub log_all: bool,
}

/// A consistent copy of one memory region's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemRegionConfig {
    pub guest_phys_addr: u64,
    pub size: u64,
    pub userspace_addr: u64,
    pub mmap_offset: u64,
    pub fd: i32,
}

pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;

impl VhostArea {
    /// Runs `f` as one control change: workers reading meanwhile retry.
    pub fn write_control<T>(&self, f: impl FnOnce() -> T) -> T {
        // Crash model: only the supervisor writes here and it does not crash; workers that die
        // meanwhile hold no part of it.
        self.control_seq.fetch_add(1, Ordering::AcqRel);
        let r = f();
        self.control_seq.fetch_add(1, Ordering::AcqRel);
        r
    }

    /// Reads with `f` until no control change overlapped the read; returns the value and the
    /// sequence number it is consistent with.
    pub fn read_control<T>(&self, mut f: impl FnMut(&VhostArea) -> T) -> (T, u64) {
        loop {
            let before = self.control_seq.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let v = f(self);
            std::sync::atomic::fence(Ordering::Acquire);
            if self.control_seq.load(Ordering::Relaxed) == before {
                return (v, before);
            }
        }
    }

    pub fn queue_count(&self) -> usize {
        (self.num_queues.load(Ordering::Relaxed) as usize).min(MAX_QUEUES)
    }

    /// The dirty log's fd, size, offset and generation (call inside `read_control`).
    pub fn log_config(&self) -> (i32, u64, u64, u64) {
        (
            self.log.fd.load(Ordering::Relaxed),
            self.log.size.load(Ordering::Relaxed),
            self.log.offset.load(Ordering::Relaxed),
            self.log.generation.load(Ordering::Relaxed),
        )
    }

    /// The memory table (call inside `read_control`).
    pub fn mem_table(&self) -> Vec<MemRegionConfig> {
        let n = (self.mem_count.load(Ordering::Relaxed) as usize).min(MAX_MEM_REGIONS);
        self.mem[..n]
            .iter()
            .map(|m| MemRegionConfig {
                guest_phys_addr: m.guest_phys_addr.load(Ordering::Relaxed),
                size: m.size.load(Ordering::Relaxed),
                userspace_addr: m.userspace_addr.load(Ordering::Relaxed),
                mmap_offset: m.mmap_offset.load(Ordering::Relaxed),
                fd: m.fd.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Queue `q`'s control fields (call inside `read_control`).
    pub fn queue_config(&self, q: usize) -> QueueConfig {
        let s = &self.queues[q];
        let size = s.size.load(Ordering::Relaxed);
        let size_ok = size.is_power_of_two() && size as usize <= MAX_QUEUE_SIZE;
        let active = s.started.load(Ordering::Relaxed) != 0
            && s.enabled.load(Ordering::Relaxed) != 0
            && size_ok
            && self.mem_count.load(Ordering::Relaxed) != 0;
        QueueConfig {
            size: if size_ok { size as u16 } else { 0 },
            active,
            kick_fd: s.kick_fd.load(Ordering::Relaxed),
            call_fd: s.call_fd.load(Ordering::Relaxed),
            desc_addr: s.desc_addr.load(Ordering::Relaxed),
            avail_addr: s.avail_addr.load(Ordering::Relaxed),
            used_addr: s.used_addr.load(Ordering::Relaxed),
            event_idx: self.acked_features.load(Ordering::Relaxed) & VIRTIO_RING_F_EVENT_IDX != 0,
            indirect: self.acked_features.load(Ordering::Relaxed) & VIRTIO_RING_F_INDIRECT_DESC != 0,
            log_all: self.acked_features.load(Ordering::Relaxed) & VHOST_F_LOG_ALL != 0,
        }
    }

    /// Every fd the area names (for the worker's fd sweep).
    pub fn fds(&self) -> Vec<i32> {
        let mut fds = self.fds_with_queues(&self.queues);
        fds.extend([&self.transfer.fd, &self.transfer.wake_fd, &self.log.fd].map(|fd| fd.load(Ordering::Acquire)));
        fds.retain(|fd| *fd > 0);
        fds
    }

    /// The fds of the memory table and of `queues` (this area's, or where an older layout kept
    /// them: state/convert.rs), unfiltered.
    pub fn fds_with_queues(&self, queues: &[QueueState]) -> Vec<i32> {
        let mut fds: Vec<i32> = self.mem.iter().map(|m| m.fd.load(Ordering::Acquire)).collect();
        for q in queues {
            for fd in [&q.kick_fd, &q.call_fd, &q.err_fd, &q.notify_fd] {
                fds.push(fd.load(Ordering::Acquire));
            }
        }
        fds
    }

    /// Sets every fd field to -1 (none): zero is a valid fd number (stdin).
    pub fn init_fds(&self) {
        for m in &self.mem {
            m.fd.store(-1, Ordering::Relaxed);
        }
        self.transfer.fd.store(-1, Ordering::Relaxed);
        self.transfer.wake_fd.store(-1, Ordering::Relaxed);
        self.log.fd.store(-1, Ordering::Relaxed);
        for q in &self.queues {
            for fd in [&q.kick_fd, &q.call_fd, &q.err_fd, &q.notify_fd] {
                fd.store(-1, Ordering::Relaxed);
            }
        }
    }
}

impl QueueState {
    /// Whether head `head` is in flight (popped, its used element not yet published).
    pub fn is_in_flight(&self, head: u16) -> bool {
        self.desc[head as usize].inflight.load(Ordering::Acquire) != 0
    }
}
