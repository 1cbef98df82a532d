#![allow(dead_code)] // a test-support module: not every test uses every part
//! A vhost-user-fs *frontend* for tests: it plays both QEMU (the vhost-user control plane) and the
//! guest's virtio-fs driver (split virtqueues in guest memory), so a backend such as virtiofsd or
//! phoenixfsd can be driven without a VM.
//!
//! Deliberately simple: one memory region; a `QueueHandle` carries one request at a time (unless
//! a test drives the low-level calls itself), and `SharedQueue` splits a queue into slots so that
//! several threads keep a request in flight each on it, as a guest's driver does; EVENT_IDX and
//! INDIRECT_DESC on request (`request` lays its chains out directly in the ring; a test builds
//! indirect tables itself with `write_table_entry`). Every wait has a timeout so a wedged backend
//! fails the test instead of hanging it. Queues can be taken out of the `Frontend` as
//! `QueueHandle`s and driven from their own threads.

use std::fmt;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::sync::atomic::{Ordering, fence};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserHeaderFlag, VhostUserProtocolFeatures,
    VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend as VuFrontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

#[path = "shared_queue.rs"]
mod shared_queue;
pub use shared_queue::{QueueSlot, SharedQueue};

/// Guest RAM size. Large enough for every queue's rings plus a data area per queue, shared
/// equally: with a hiprio and 4 request queues, each data area holds 12 requests in flight of
/// the largest kind the bridge carries (a 1 MiB WRITE, with room for a 1 MiB READ reply). A
/// memfd: only the pages written cost memory.
pub const GUEST_MEM_SIZE: usize = 128 << 20;
/// Rings live in the first MiB; request/reply buffers after it.
const RINGS_BASE: u64 = 0;
const RING_STRIDE: u64 = 64 << 10;
const DATA_BASE: u64 = 1 << 20;

const VIRTIO_F_VERSION_1: u64 = 1 << 32;
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
pub const VRING_DESC_F_NEXT: u16 = 1;
pub const VRING_DESC_F_WRITE: u16 = 2;
pub const VRING_DESC_F_INDIRECT: u16 = 4;

/// How long a queue waits for the backend to return a chain, unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub enum Error {
    /// A vhost-user control message failed (`step` names the message).
    Vhost {
        step: &'static str,
        err: vhost::Error,
    },
    Memory(String),
    Io(&'static str, std::io::Error),
    /// The backend did not return the chain in time.
    Timeout {
        queue: usize,
        waited: Duration,
    },
    /// The backend returned the chain but did not notify (call eventfd) within the timeout.
    MissedNotification {
        queue: usize,
        waited: Duration,
    },
    /// A slot's earlier chain timed out and the device has not returned it yet, so the slot's
    /// descriptors and buffers are still the device's.
    StillWithDevice {
        queue: usize,
        head: u16,
    },
    /// An earlier failure (`why`) left the queue's ring untrustworthy: a used element no
    /// correct device returns, say.
    Unusable {
        queue: usize,
        why: String,
    },
    /// The request does not fit the queue's data area, or the queue does not exist.
    Invalid(String),
    /// The backend returned something no correct device would.
    BadUsed(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Vhost { step, err } => write!(f, "vhost-user {step}: {err}"),
            Error::Memory(m) => write!(f, "guest memory: {m}"),
            Error::Io(what, e) => write!(f, "{what}: {e}"),
            Error::Timeout { queue, waited } => {
                write!(f, "queue {queue}: no used buffer after {waited:?} (backend stuck or dead?)")
            }
            Error::MissedNotification { queue, waited } => {
                write!(f, "queue {queue}: used buffer found, but no notification after {waited:?}")
            }
            Error::StillWithDevice { queue, head } => {
                write!(f, "queue {queue}: the chain at head {head}, which timed out, is still with the device")
            }
            Error::Unusable { queue, why } => write!(f, "queue {queue} unusable since: {why}"),
            Error::Invalid(m) => write!(f, "invalid request: {m}"),
            Error::BadUsed(m) => write!(f, "bad used ring entry: {m}"),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

fn check<T>(step: &'static str, r: vhost::Result<T>) -> Result<T> {
    r.map_err(|err| Error::Vhost { step, err })
}

fn mem_err(e: impl fmt::Display) -> Error {
    Error::Memory(e.to_string())
}

/// How `Frontend::connect_with` sets the device up.
#[derive(Debug, Clone, Copy)]
pub struct FrontendOptions {
    /// Queue 0 is hiprio, 1.. are request queues.
    pub num_queues: usize,
    pub queue_size: u16,
    /// Negotiate VIRTIO_RING_F_EVENT_IDX (fails if the backend does not offer it) and drive the
    /// rings with used_event instead of relying on unconditional notifications.
    pub event_idx: bool,
    /// Negotiate VIRTIO_RING_F_INDIRECT_DESC (fails if the backend does not offer it), so chains
    /// may end in an indirect table.
    pub indirect: bool,
}

/// A connected, fully set-up vhost-user-fs device.
pub struct Frontend {
    vu: VuFrontend,
    mem: GuestMemoryMmap,
    /// `None` once the queue has been taken out with `take_queue(s)`.
    queues: Vec<Option<QueueHandle>>,
    /// What the backend offered and what we acked, for tests that check negotiation.
    pub offered_features: u64,
    pub offered_protocol_features: VhostUserProtocolFeatures,
    pub acked_features: u64,
    pub acked_protocol_features: VhostUserProtocolFeatures,
    /// CHECK_DEVICE_STATE outcomes of `connect_loading`'s loads.
    loaded: Vec<bool>,
}

fn pipe() -> Result<[std::os::fd::OwnedFd; 2]> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two fds pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(Error::Io("pipe2", std::io::Error::last_os_error()));
    }
    // SAFETY: both fds were just created and are owned by nothing else.
    Ok(fds.map(|fd| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
}

/// One LOAD on a connected frontend (its rings stopped, e.g. by `save_state`).
pub fn load_into(fe: &mut Frontend, state: &[u8]) -> Result<bool> {
    load_state(&mut fe.vu, state, &mut || {})
}

/// One LOAD: SET_DEVICE_STATE_FD, the bytes written (to the backend's own fd if it returned
/// one), closed, CHECK_DEVICE_STATE; whether the backend reported success.
fn load_state(vu: &mut VuFrontend, state: &[u8], between: &mut dyn FnMut()) -> Result<bool> {
    let [read_end, write_end] = pipe()?;
    // A refused SET_DEVICE_STATE_FD is a failed load, as a failed CHECK is.
    let Ok(reply) =
        vu.set_device_state_fd(VhostTransferStateDirection::LOAD, VhostTransferStatePhase::STOPPED, read_end)
    else {
        return Ok(false);
    };
    between();
    // A backend that keeps our pipe would have to read while we write (a pipe holds 64 KiB);
    // phoenixfsd returns a memfd, which takes the whole state.
    let mut to: File = match reply {
        Some(f) => f,
        None => File::from(write_end),
    };
    std::io::Write::write_all(&mut to, state).map_err(|e| Error::Io("writing the device state", e))?;
    drop(to);
    Ok(vu.check_device_state().is_ok())
}

impl Frontend {
    /// `connect_with` without EVENT_IDX.
    pub fn connect(socket_path: &Path, num_queues: usize, queue_size: u16) -> Result<Self> {
        Self::connect_with(socket_path, FrontendOptions { num_queues, queue_size, event_idx: false, indirect: false })
    }

    /// Connects to a backend listening on `socket_path` and does QEMU 7.2's vhost-user-fs-pci
    /// start-up sequence.
    pub fn connect_with(socket_path: &Path, opts: FrontendOptions) -> Result<Self> {
        Self::connect_inner(socket_path, opts, &[], &mut || {})
    }

    /// `connect_with` as a migration's destination: each of `states` is loaded (vhost-user
    /// SET_DEVICE_STATE_FD(LOAD), the bytes written, CHECK_DEVICE_STATE) after feature
    /// negotiation and before the rings start, as QEMU does on `-incoming`. Returns the frontend
    /// and each load's CHECK outcome.
    pub fn connect_loading(socket_path: &Path, opts: FrontendOptions, states: &[&[u8]]) -> Result<(Self, Vec<bool>)> {
        Self::connect_loading_with(socket_path, opts, states, &mut || {})
    }

    /// `connect_loading`, calling `between` after each SET_DEVICE_STATE_FD, before the state is
    /// written (a test kills the backend's worker there).
    pub fn connect_loading_with(
        socket_path: &Path,
        opts: FrontendOptions,
        states: &[&[u8]],
        between: &mut dyn FnMut(),
    ) -> Result<(Self, Vec<bool>)> {
        let mut fe = Self::connect_inner(socket_path, opts, states, between)?;
        let outcomes = std::mem::take(&mut fe.loaded);
        Ok((fe, outcomes))
    }

    fn connect_inner(
        socket_path: &Path,
        opts: FrontendOptions,
        states: &[&[u8]],
        between: &mut dyn FnMut(),
    ) -> Result<Self> {
        let FrontendOptions { num_queues, queue_size, event_idx, indirect } = opts;
        if !queue_size.is_power_of_two() || queue_size < 2 || u64::from(queue_size) * 16 * 2 > RING_STRIDE {
            return Err(Error::Invalid(format!("queue size {queue_size}")));
        }
        if num_queues == 0 || num_queues as u64 * RING_STRIDE > DATA_BASE - RINGS_BASE {
            return Err(Error::Invalid(format!("{num_queues} queues")));
        }

        let mem = guest_memory()?;
        let mut vu = check("connect", VuFrontend::connect(socket_path, num_queues as u64))?;

        check("SET_OWNER", vu.set_owner())?;
        let offered = check("GET_FEATURES", vu.get_features())?;
        let proto_bit = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        let mut required =
            vec![(VIRTIO_F_VERSION_1, "VIRTIO_F_VERSION_1"), (proto_bit, "VHOST_USER_F_PROTOCOL_FEATURES")];
        if event_idx {
            required.push((VIRTIO_RING_F_EVENT_IDX, "VIRTIO_RING_F_EVENT_IDX"));
        }
        if indirect {
            required.push((VIRTIO_RING_F_INDIRECT_DESC, "VIRTIO_RING_F_INDIRECT_DESC"));
        }
        for (bit, name) in required {
            if offered & bit == 0 {
                return Err(Error::Invalid(format!("backend does not offer {name} (features {offered:#x})")));
            }
        }
        // Protocol features are negotiated between GET_FEATURES and SET_FEATURES, as QEMU does:
        // GET_PROTOCOL_FEATURES is legal as soon as the backend *offered* the bit.
        let offered_proto = check("GET_PROTOCOL_FEATURES", vu.get_protocol_features())?;
        // MQ: we drive more than one queue. REPLY_ACK: lets every SET_* be acknowledged so a
        // rejected message fails here, not as a silent hang at the first request.
        let wanted = VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::DEVICE_STATE
            | VhostUserProtocolFeatures::LOG_SHMFD;
        let acked_proto = offered_proto & wanted;
        check("SET_PROTOCOL_FEATURES", vu.set_protocol_features(acked_proto))?;
        if acked_proto.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            vu.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        if acked_proto.contains(VhostUserProtocolFeatures::MQ) {
            let max = check("GET_QUEUE_NUM", vu.get_queue_num())?;
            if (num_queues as u64) > max {
                return Err(Error::Invalid(format!("backend has {max} queues, {num_queues} asked")));
            }
        }
        let acked = VIRTIO_F_VERSION_1
            | proto_bit
            | if event_idx { VIRTIO_RING_F_EVENT_IDX } else { 0 }
            | if indirect { VIRTIO_RING_F_INDIRECT_DESC } else { 0 };
        check("SET_FEATURES", vu.set_features(acked))?;
        let mut loaded = Vec::new();
        for state in states {
            loaded.push(load_state(&mut vu, state, between)?);
        }

        // The backend translates SET_VRING_ADDR through this table, so it must come first.
        let regions: Vec<VhostUserMemoryRegionInfo> = mem
            .iter()
            .map(|r| VhostUserMemoryRegionInfo::from_guest_region(r).map_err(|e| Error::Memory(e.to_string())))
            .collect::<Result<_>>()?;
        check("SET_MEM_TABLE", vu.set_mem_table(&regions))?;
        let region = &regions[0];

        let mut queues = Vec::with_capacity(num_queues);
        let data_len = ((GUEST_MEM_SIZE as u64 - DATA_BASE) / num_queues as u64) & !0xfff;
        for index in 0..num_queues {
            let q = QueueHandle::new(index, queue_size, data_len, event_idx, &mem)?;
            // vhost-user ring addresses are *frontend virtual* addresses (QEMU's HVA), not GPAs:
            // the backend maps them back through the memory table's userspace_addr.
            let hva = |a: GuestAddress| region.userspace_addr + (a.0 - region.guest_phys_addr);
            let config = VringConfigData {
                queue_max_size: queue_size,
                queue_size,
                flags: 0,
                desc_table_addr: hva(q.ring.desc),
                used_ring_addr: hva(q.ring.used),
                avail_ring_addr: hva(q.ring.avail),
                log_addr: None,
            };
            check("SET_VRING_NUM", vu.set_vring_num(index, queue_size))?;
            check("SET_VRING_ADDR", vu.set_vring_addr(index, &config))?;
            check("SET_VRING_BASE", vu.set_vring_base(index, 0))?;
            check("SET_VRING_CALL", vu.set_vring_call(index, &q.ring.call))?;
            check("SET_VRING_KICK", vu.set_vring_kick(index, &q.ring.kick))?;
            // With PROTOCOL_FEATURES acked, rings start disabled until enabled explicitly.
            check("SET_VRING_ENABLE", vu.set_vring_enable(index, true))?;
            queues.push(Some(q));
        }

        Ok(Frontend {
            vu,
            mem,
            queues,
            offered_features: offered,
            offered_protocol_features: offered_proto,
            acked_features: acked,
            acked_protocol_features: acked_proto,
            loaded,
        })
    }

    /// As QEMU's source at a migration's switch-over: stops every ring (GET_VRING_BASE), then
    /// SET_DEVICE_STATE_FD(SAVE), reads the state to EOF and asks CHECK_DEVICE_STATE. Err if the
    /// backend reports failure (or refuses the transfer).
    pub fn save_state(&mut self) -> Result<Vec<u8>> {
        for i in 0..self.queues.len() {
            check("GET_VRING_BASE", self.vu.get_vring_base(i))?;
        }
        let [read_end, write_end] = pipe()?;
        let reply = check(
            "SET_DEVICE_STATE_FD",
            self.vu.set_device_state_fd(VhostTransferStateDirection::SAVE, VhostTransferStatePhase::STOPPED, write_end),
        )?;
        let mut from: File = match reply {
            Some(f) => f,
            None => File::from(read_end),
        };
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut from, &mut bytes).map_err(|e| Error::Io("reading the device state", e))?;
        drop(from);
        check("CHECK_DEVICE_STATE", self.vu.check_device_state())?;
        Ok(bytes)
    }

    /// `QueueHandle::request` on a queue still held by the frontend.
    pub fn request(&mut self, queue: usize, request: &[u8], reply_capacity: u32) -> Result<Vec<u8>> {
        self.queue(queue)?.request(request, reply_capacity)
    }

    /// A queue still held by the frontend, for the low-level calls.
    pub fn queue(&mut self, index: usize) -> Result<&mut QueueHandle> {
        match self.queues.get_mut(index) {
            Some(Some(q)) => Ok(q),
            Some(None) => Err(Error::Invalid(format!("queue {index} was taken"))),
            None => Err(Error::Invalid(format!("no queue {index}"))),
        }
    }

    /// Hands queue `index` over, e.g. to another thread; `request(index, ..)` fails afterwards.
    pub fn take_queue(&mut self, index: usize) -> Result<QueueHandle> {
        self.queue(index)?;
        Ok(self.queues[index].take().expect("checked by queue()"))
    }

    /// Every queue not taken yet, in index order (`QueueHandle::index` says which is which).
    pub fn take_queues(&mut self) -> Vec<QueueHandle> {
        self.queues.iter_mut().filter_map(Option::take).collect()
    }

    /// Sets the wait timeout of every queue not taken yet.
    pub fn set_timeout(&mut self, timeout: Duration) {
        for q in self.queues.iter_mut().flatten() {
            q.timeout = timeout;
        }
    }

    pub fn mem(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The vhost-user control connection, for tests that send further messages.
    pub fn vhost_user(&mut self) -> &mut VuFrontend {
        &mut self.vu
    }
}

/// One split virtqueue, as the driver sees it, with everything needed to drive it from any
/// thread. Guest-physical addresses throughout.
pub struct QueueHandle {
    ring: Ring,
    cursor: Cursor,
    timeout: Duration,
}

/// What a queue is, as opposed to how far it has got: where its rings and buffers are and how
/// it is signalled. Fixed once set up, so several threads may use it at once (`SharedQueue`).
struct Ring {
    index: usize,
    size: u16,
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    /// Where this queue's request and reply buffers go; no other queue touches it.
    data: GuestAddress,
    data_len: u64,
    event_idx: bool,
    kick: EventFd,
    call: EventFd,
    mem: GuestMemoryMmap,
}

/// How far the driver has got on a ring.
#[derive(Debug, Default, Clone, Copy)]
struct Cursor {
    /// Our shadow of avail.idx (free-running, wraps at 2^16 as the spec says).
    next_avail: u16,
    /// The used.idx we have consumed up to.
    last_used: u16,
}

impl Cursor {
    /// Chains published whose used element we have not consumed yet.
    fn in_flight(&self) -> u16 {
        self.next_avail.wrapping_sub(self.last_used)
    }
}

/// The part of a queue that one chain at a time may use: descriptors `first..first + count` and
/// `area_len` bytes of the data area at `area`. No two chains in flight share a part.
#[derive(Debug, Clone, Copy)]
struct Share {
    first: u16,
    count: u16,
    area: GuestAddress,
    area_len: u64,
}

impl Share {
    /// The descriptors of the `n`th chain sent from this share: its head, then the reply's
    /// out-header and the rest of the reply room. They rotate so that stale state from a previous
    /// chain would show up rather than be silently overwritten in place.
    fn descriptors(&self, n: u16) -> [u16; 3] {
        [0, 1, 2].map(|i| self.first + ((u32::from(n) * 3 + i) % u32::from(self.count)) as u16)
    }
}

impl Ring {
    /// The whole queue as one share.
    fn whole(&self) -> Share {
        Share { first: 0, count: self.size, area: self.data, area_len: self.data_len }
    }

    /// Share `number` of `shares`, each an equal part of the queue's descriptors and of its data
    /// area (whole pages), for chains in flight side by side.
    fn part(&self, number: usize, shares: usize) -> Result<Share> {
        let descriptors = u16::try_from(shares).ok().filter(|&n| n > 0).map_or(0, |n| self.size / n);
        let area_len = (self.data_len / shares.max(1) as u64) & !0xfff;
        if descriptors < 3 || area_len == 0 || number >= shares {
            let (index, size, data_len) = (self.index, self.size, self.data_len);
            return Err(Error::Invalid(format!(
                "share {number} of {shares} on queue {index} ({size} descriptors, {data_len} bytes of buffers): \
                 each needs 3 descriptors and 4 KiB"
            )));
        }
        Ok(Share {
            first: number as u16 * descriptors,
            count: descriptors,
            area: GuestAddress(self.data.0 + number as u64 * area_len),
            area_len,
        })
    }

    fn write_descriptor(&self, index: u16, addr: GuestAddress, len: u32, flags: u16, next: u16) -> Result<()> {
        if index >= self.size {
            return Err(Error::Invalid(format!("descriptor {index} outside a {}-entry table", self.size)));
        }
        let at = GuestAddress(self.desc.0 + 16 * u64::from(index));
        self.mem.write_slice(&descriptor_bytes(addr, len, flags, next), at).map_err(mem_err)
    }

    /// Writes one FUSE request and a poisoned reply room of `reply_capacity` bytes into `share`'s
    /// area and lays the chain out on `descriptors` (from `Share::descriptors`), as the Linux
    /// driver lays a request out: the request, then the out-header and the rest of the reply room
    /// as separate device-writable buffers (contiguous here, so the reply reads back in one
    /// piece); no reply buffer at all if `reply_capacity` is 0 (FORGET and friends). Returns
    /// where the reply goes.
    fn lay_out_request(
        &self,
        share: &Share,
        [head, header, data]: [u16; 3],
        request: &[u8],
        reply_capacity: u32,
    ) -> Result<GuestAddress> {
        let req_len = request.len() as u64;
        let req_span = (req_len + 7) & !7;
        if req_len == 0 || req_span + u64::from(reply_capacity) > share.area_len {
            return Err(Error::Invalid(format!(
                "{req_len}-byte request + {reply_capacity}-byte reply exceed the {}-byte data area",
                share.area_len
            )));
        }
        let req_addr = share.area;
        let reply_addr = GuestAddress(share.area.0 + req_span);
        self.mem.write_slice(request, req_addr).map_err(mem_err)?;
        // Poison the reply buffer so a short write cannot pass for zeros we never got.
        let poison = vec![0xa5u8; reply_capacity as usize];
        self.mem.write_slice(&poison, reply_addr).map_err(mem_err)?;

        const OUT_HEADER: u32 = 16;
        if reply_capacity == 0 {
            self.write_descriptor(head, req_addr, req_len as u32, 0, 0)?;
        } else if reply_capacity <= OUT_HEADER {
            self.write_descriptor(head, req_addr, req_len as u32, VRING_DESC_F_NEXT, header)?;
            self.write_descriptor(header, reply_addr, reply_capacity, VRING_DESC_F_WRITE, 0)?;
        } else {
            self.write_descriptor(head, req_addr, req_len as u32, VRING_DESC_F_NEXT, header)?;
            self.write_descriptor(header, reply_addr, OUT_HEADER, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, data)?;
            let rest = GuestAddress(reply_addr.0 + u64::from(OUT_HEADER));
            self.write_descriptor(data, rest, reply_capacity - OUT_HEADER, VRING_DESC_F_WRITE, 0)?;
        }
        Ok(reply_addr)
    }

    /// Exactly the bytes the device says it wrote into a reply room of `reply_capacity` bytes
    /// at `reply_addr`.
    fn read_reply(&self, len: u32, reply_addr: GuestAddress, reply_capacity: u32) -> Result<Vec<u8>> {
        if len > reply_capacity {
            return Err(Error::BadUsed(format!(
                "queue {}: len {len} > writable capacity {reply_capacity}",
                self.index
            )));
        }
        let mut reply = vec![0u8; len as usize];
        self.mem.read_slice(&mut reply, reply_addr).map_err(mem_err)?;
        Ok(reply)
    }

    /// Offers the chain starting at `head` to the device and kicks it.
    fn publish(&self, cursor: &mut Cursor, heads: &[u16]) -> Result<()> {
        // avail.ring[idx % size] = head, then publish idx with release ordering so the device
        // never sees the index before the entries (virtio 1.1 §2.6.13).
        for &head in heads {
            let slot = self.avail.0 + 4 + 2 * u64::from(cursor.next_avail % self.size);
            self.mem.write_obj(head.to_le(), GuestAddress(slot)).map_err(mem_err)?;
            cursor.next_avail = cursor.next_avail.wrapping_add(1);
        }
        self.mem
            .store(cursor.next_avail.to_le(), GuestAddress(self.avail.0 + 2), Ordering::Release)
            .map_err(mem_err)?;
        // Always kick, even when EVENT_IDX's avail_event says the device does not need it:
        // spurious kicks are allowed and it keeps a missed kick out of the suspects.
        self.kick.write(1).map_err(|e| Error::Io("kick eventfd", e))
    }

    /// With EVENT_IDX, sets used_event to the oldest used element not consumed yet: the device
    /// must notify when it moves used.idx past it. The fence orders this store before the
    /// caller's next used.idx load, so a device that finished before seeing it is caught by that
    /// load instead.
    fn arm_used_event(&self, cursor: &Cursor) -> Result<()> {
        if self.event_idx {
            let used_event = GuestAddress(self.avail.0 + 4 + 2 * u64::from(self.size));
            self.mem.store(cursor.last_used.to_le(), used_event, Ordering::Release).map_err(mem_err)?;
            fence(Ordering::SeqCst);
        }
        Ok(())
    }

    /// Consumes the next used element, if the device has returned one, as (id, len). Err if the
    /// device returned more elements than there are chains in flight.
    fn next_used(&self, cursor: &mut Cursor) -> Result<Option<(u32, u32)>> {
        let used_idx = u16::from_le(self.mem.load(GuestAddress(self.used.0 + 2), Ordering::Acquire).map_err(mem_err)?);
        if used_idx == cursor.last_used {
            return Ok(None);
        }
        let returned = used_idx.wrapping_sub(cursor.last_used);
        if returned > cursor.in_flight() {
            return Err(Error::BadUsed(format!(
                "queue {}: {returned} used entries for {} published chains",
                self.index,
                cursor.in_flight()
            )));
        }
        let elem = self.used.0 + 4 + 8 * u64::from(cursor.last_used % self.size);
        let id = u32::from_le(self.mem.read_obj(GuestAddress(elem)).map_err(mem_err)?);
        let len = u32::from_le(self.mem.read_obj(GuestAddress(elem + 4)).map_err(mem_err)?);
        cursor.last_used = cursor.last_used.wrapping_add(1);
        Ok(Some((id, len)))
    }

    /// Sleeps until the device signals the call eventfd (true) or `left` has passed (false).
    /// The signal only says to look at the used ring, it carries no data; an interrupted sleep
    /// counts as a wakeup, since the caller looks again either way.
    fn wait_for_call(&self, left: Duration) -> Result<bool> {
        // Rounded up, so the sleep does not end just short of `left`.
        let ms = (left.as_millis() + 1).min(i32::MAX as u128) as i32;
        let mut pfd = libc::pollfd { fd: self.call.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, for the duration of the call.
        match unsafe { libc::poll(&mut pfd, 1, ms) } {
            0 => Ok(false),
            r if r > 0 => {
                // Drain the counter; EAGAIN (another thread drained it) is harmless.
                let _ = self.call.read();
                Ok(true)
            }
            _ => match std::io::Error::last_os_error() {
                e if e.kind() == std::io::ErrorKind::Interrupted => Ok(true),
                e => Err(Error::Io("poll call eventfd", e)),
            },
        }
    }
}

impl QueueHandle {
    /// Lays the queue out at its fixed slot: descriptor table (16-byte aligned), avail ring,
    /// then the used ring on the next 4 KiB boundary (alignment the legacy layout needed and
    /// that is harmless for the modern one).
    fn new(index: usize, size: u16, data_len: u64, event_idx: bool, mem: &GuestMemoryMmap) -> Result<Self> {
        let base = RINGS_BASE + index as u64 * RING_STRIDE;
        let n = u64::from(size);
        let desc = GuestAddress(base);
        let avail = GuestAddress(base + 16 * n);
        let avail_end = avail.0 + 4 + 2 * n + 2;
        let used = GuestAddress((avail_end + 0xfff) & !0xfff);
        if used.0 + 4 + 8 * n + 2 > base + RING_STRIDE {
            return Err(Error::Invalid(format!("queue size {size} does not fit the ring slot")));
        }
        // Fresh rings: all-zero flags and indices (memfd pages are zero, but be explicit).
        mem.write_slice(&vec![0u8; RING_STRIDE as usize], desc).map_err(mem_err)?;
        let efd = |what| EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(|e| Error::Io(what, e));
        let ring = Ring {
            index,
            size,
            desc,
            avail,
            used,
            data: GuestAddress(DATA_BASE + index as u64 * data_len),
            data_len,
            event_idx,
            kick: efd("kick eventfd")?,
            call: efd("call eventfd")?,
            mem: mem.clone(),
        };
        Ok(QueueHandle { ring, cursor: Cursor::default(), timeout: DEFAULT_TIMEOUT })
    }

    pub fn index(&self) -> usize {
        self.ring.index
    }
    pub fn size(&self) -> u16 {
        self.ring.size
    }
    pub fn desc_addr(&self) -> GuestAddress {
        self.ring.desc
    }
    pub fn avail_addr(&self) -> GuestAddress {
        self.ring.avail
    }
    pub fn used_addr(&self) -> GuestAddress {
        self.ring.used
    }
    /// This queue's private buffer area (`data_len` bytes), free for tests to lay buffers out in.
    pub fn data_addr(&self) -> GuestAddress {
        self.ring.data
    }
    pub fn data_len(&self) -> u64 {
        self.ring.data_len
    }
    pub fn mem(&self) -> &GuestMemoryMmap {
        &self.ring.mem
    }
    pub fn event_idx(&self) -> bool {
        self.ring.event_idx
    }
    /// The avail.idx we last published.
    pub fn next_avail(&self) -> u16 {
        self.cursor.next_avail
    }
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The used ring's trailing avail_event: with EVENT_IDX, the avail index at which the device
    /// wants the next kick.
    pub fn avail_event(&self) -> Result<u16> {
        let addr = GuestAddress(self.ring.used.0 + 4 + 8 * u64::from(self.ring.size));
        Ok(u16::from_le(self.ring.mem.load(addr, Ordering::Acquire).map_err(mem_err)?))
    }

    /// Waits (up to `timeout`) until the device has asked, through avail_event, for a kick at
    /// our next avail index (EVENT_IDX: it re-arms after draining the ring, which may be just
    /// after it signalled our used buffer).
    pub fn wait_avail_event_armed(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let armed = self.avail_event()?;
            if armed == self.cursor.next_avail {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::BadUsed(format!("avail_event {armed} after avail idx {}", self.cursor.next_avail)));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Writes descriptor `index` verbatim: nothing is checked but that the slot is in the table,
    /// so hostile-input tests can point it anywhere.
    pub fn write_descriptor(&self, index: u16, addr: GuestAddress, len: u32, flags: u16, next: u16) -> Result<()> {
        self.ring.write_descriptor(index, addr, len, flags, next)
    }

    /// Writes entry `index` of an indirect table at `table` (anywhere in guest memory) verbatim.
    pub fn write_table_entry(
        &self,
        table: GuestAddress,
        index: u16,
        addr: GuestAddress,
        len: u32,
        flags: u16,
        next: u16,
    ) -> Result<()> {
        let at = GuestAddress(table.0 + 16 * u64::from(index));
        self.ring.mem.write_slice(&descriptor_bytes(addr, len, flags, next), at).map_err(mem_err)
    }

    /// Offers the chain starting at `head` to the device and kicks it.
    pub fn publish(&mut self, head: u16) -> Result<()> {
        self.publish_all(&[head])
    }

    /// Offers the chains starting at `heads` to the device at once (one avail index update, one
    /// kick), as a driver does that queued several requests before kicking.
    pub fn publish_all(&mut self, heads: &[u16]) -> Result<()> {
        self.ring.publish(&mut self.cursor, heads)
    }

    /// Waits (up to the timeout) until the device returns a chain and gives back that used
    /// element as (id, len). Checks the ring before sleeping: the device may have finished before
    /// we got here.
    pub fn wait_used(&mut self) -> Result<(u32, u32)> {
        self.ring.arm_used_event(&self.cursor)?;
        let start = Instant::now();
        // Whether the last sleep ended with a notification: a used element found after one that
        // did not is a device that forgot to notify, which would otherwise pass as a slow reply.
        let mut notified = true;
        loop {
            let used = self.ring.next_used(&mut self.cursor)?;
            let waited = start.elapsed();
            if let Some(elem) = used {
                if !notified {
                    return Err(Error::MissedNotification { queue: self.ring.index, waited });
                }
                return Ok(elem);
            }
            if waited >= self.timeout || !notified {
                return Err(Error::Timeout { queue: self.ring.index, waited });
            }
            notified = self.ring.wait_for_call(self.timeout - waited)?;
        }
    }

    /// Lays one FUSE request out as `request` does, in share `number` of `shares` equal parts of
    /// the queue, without publishing it: for tests that keep several chains in flight by hand
    /// (`publish_all`, `wait_used`). Returns the chain's head and where its reply goes.
    pub fn lay_out_in_share(
        &self,
        number: usize,
        shares: usize,
        request: &[u8],
        reply_capacity: u32,
    ) -> Result<(u16, GuestAddress)> {
        let share = self.ring.part(number, shares)?;
        let descriptors = share.descriptors(0);
        Ok((descriptors[0], self.ring.lay_out_request(&share, descriptors, request, reply_capacity)?))
    }

    /// The `len` bytes the device wrote into a reply room of `reply_capacity` at `reply_addr`.
    pub fn read_reply(&self, len: u32, reply_addr: GuestAddress, reply_capacity: u32) -> Result<Vec<u8>> {
        self.ring.read_reply(len, reply_addr, reply_capacity)
    }

    /// Sends one FUSE request as a chain of a device-readable request and, unless
    /// `reply_capacity` is 0 (FORGET and friends, as the Linux driver sends them), a
    /// device-writable reply buffer of `reply_capacity` bytes; waits for the device to return it
    /// and gives back exactly the bytes the device says it wrote. One request at a time:
    /// `SharedQueue` carries several.
    pub fn request(&mut self, request: &[u8], reply_capacity: u32) -> Result<Vec<u8>> {
        let share = self.ring.whole();
        let descriptors = share.descriptors(self.cursor.next_avail);
        let reply_addr = self.ring.lay_out_request(&share, descriptors, request, reply_capacity)?;
        let head = descriptors[0];
        self.publish(head)?;
        let (id, len) = self.wait_used()?;
        if id != u32::from(head) {
            return Err(Error::BadUsed(format!("queue {}: id {id}, expected head {head}", self.ring.index)));
        }
        self.ring.read_reply(len, reply_addr, reply_capacity)
    }
}

/// A split-ring descriptor as the driver writes it (little-endian), in the ring or in a table.
fn descriptor_bytes(addr: GuestAddress, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[0..8].copy_from_slice(&addr.0.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..16].copy_from_slice(&next.to_le_bytes());
    d
}

/// Guest RAM: one memfd mapped shared, so the backend's mapping of the same fd (sent with
/// SET_MEM_TABLE) sees our writes and we see its.
fn guest_memory() -> Result<GuestMemoryMmap> {
    // SAFETY: a NUL-terminated name and valid flags; the result is checked.
    let fd = unsafe { libc::memfd_create(c"vufront-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(Error::Io("memfd_create", std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(GUEST_MEM_SIZE as u64).map_err(|e| Error::Io("ftruncate memfd", e))?;
    let mem =
        GuestMemoryMmap::from_ranges_with_files([(GuestAddress(0), GUEST_MEM_SIZE, Some(FileOffset::new(file, 0)))])
            .map_err(mem_err)?;
    debug_assert_eq!(mem.iter().map(|r| r.len()).sum::<u64>(), GUEST_MEM_SIZE as u64);
    Ok(mem)
}
