//! A worker's queue thread: one per virtqueue. It takes the queue's configuration from the
//! region, finishes what a dead worker left in flight, then pops descriptor chains, serves each
//! through `Server::handle`, publishes its used element and signals the driver.
//!
//! Crash consistency (the state region's in-flight tracking, state/vhost.rs): a head is marked
//! in flight right after it is read from the avail ring; its intent record is keyed by (queue,
//! pop counter); its used element is published in two steps named in the region. A fresh
//! worker repairs a half-done publication, then replays the in-flight heads in pop order with
//! their records, so each popped head gets exactly one used element and its effect happens once.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::fuse::ReplyBuf;
use crate::server::{Completion, MAX_REQUEST, Origin, Server, ThreadRecord};
use crate::state::vhost::{QueueConfig, QueueState, VhostArea};
use crate::sys;

use super::memory::{Guest, GuestCache};
use super::ring::{self, Ring};

/// A reply shorter than this cannot even carry a FUSE out-header.
const OUT_HEADER: usize = 16;

/// The intent-record key of a popped chain: queue in the top bits, pop counter below.
pub fn record_key(queue: usize, counter: u64) -> u64 {
    ((queue as u64) << 48) | (counter & ((1 << 48) - 1))
}

/// What a queue thread serves with, once its configuration is taken in.
struct Active {
    guest: Arc<Guest>,
    ring: Ring,
    kick_fd: i32,
    call_fd: i32,
    /// Heap copies of the region's indices (only this thread changes them while it serves).
    next_avail: u16,
    used_idx: u16,
}

pub struct QueueThread {
    server: Arc<Server>,
    area: &'static VhostArea,
    index: usize,
    state: &'static QueueState,
    guests: Arc<GuestCache>,
    record: ThreadRecord,
    request: Vec<u8>,
    reply: ReplyBuf,
    seq: Option<u64>,
    active: Option<Active>,
}

impl QueueThread {
    pub fn new(server: Arc<Server>, index: usize, guests: Arc<GuestCache>) -> QueueThread {
        let area = server.fs.state.region.vhost();
        let record = server.thread_record();
        QueueThread {
            state: &area.queues[index],
            server,
            area,
            index,
            guests,
            record,
            request: vec![0; MAX_REQUEST],
            reply: ReplyBuf::with_capacity(MAX_REQUEST),
            seq: None,
            active: None,
        }
    }

    /// Serves the queue for the life of the worker.
    pub fn run(mut self) -> ! {
        loop {
            self.take_control();
            let Some(a) = &self.active else {
                self.wait(None);
                continue;
            };
            let kick = a.kick_fd;
            if let Err(e) = self.drain() {
                tracing::error!(queue = self.index, "{e}; the queue stops until the frontend sets it up again");
                self.active = None;
                continue;
            }
            if let Some(a) = &self.active
                && a.ring.arm_kick(&a.guest.mem, a.next_avail).unwrap_or(false)
            {
                continue;
            }
            self.wait(Some(kick));
        }
    }

    /// Waits for a kick or a control change (with a bound, as a safety net), and consumes both
    /// eventfd counts.
    fn wait(&self, kick: Option<i32>) {
        let notify = self.state.notify_fd.load(Ordering::Acquire);
        let mut fds = vec![libc::pollfd { fd: notify, events: libc::POLLIN, revents: 0 }];
        if let Some(k) = kick.filter(|k| *k >= 0) {
            fds.push(libc::pollfd { fd: k, events: libc::POLLIN, revents: 0 });
        }
        // SAFETY: valid pollfd array for the duration of the call.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 1000) };
        for p in &fds {
            if p.revents & libc::POLLIN != 0 {
                let mut count = [0u8; 8];
                let _ = sys::read(p.fd, &mut count);
            }
        }
    }

    /// Takes in the queue's configuration if the supervisor changed anything since last time.
    /// On (re)activation it repairs and replays what a dead worker left in flight.
    fn take_control(&mut self) {
        let (cfg, seq) = self.area.read_control(|a| a.queue_config(self.index));
        if self.seq == Some(seq) {
            return;
        }
        // Crash here: the change is in the region; the next worker takes it in the same way.
        crate::crash_point!("vhost.apply_control");
        self.seq = Some(seq);
        self.active = if cfg.active { self.activate(&cfg) } else { None };
        if let Some(a) = &self.active
            && let Err(e) = self.replay_in_flight(a.guest.clone(), a.ring)
        {
            tracing::error!(queue = self.index, "replaying in-flight chains: {e}");
            self.active = None;
        }
        // The supervisor, stopping a ring, waits for this: no chain of ours is being served.
        self.state.applied_seq.store(seq, Ordering::Release);
    }

    fn activate(&self, cfg: &QueueConfig) -> Option<Active> {
        let guest = self.guests.get(self.area)?;
        let addrs = [cfg.desc_addr, cfg.avail_addr, cfg.used_addr].map(|a| guest.translate(a));
        let [Some(desc), Some(avail), Some(used)] = addrs else {
            tracing::error!(queue = self.index, ?cfg, "ring addresses are outside the memory table; queue not started");
            return None;
        };
        let ring = match Ring::new(&guest.mem, cfg.size, (desc, avail, used), cfg.event_idx) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(queue = self.index, "{e}; queue not started");
                return None;
            }
        };
        let ring_used = match ring.used_idx(&guest.mem) {
            Ok(i) => i,
            Err(e) => {
                tracing::error!(queue = self.index, "{e}; queue not started");
                return None;
            }
        };
        if self.state.base_pending.load(Ordering::Acquire) != 0 {
            // Crash inside: base_pending is still set, and the next worker starts over.
            self.state.start_from_base(ring_used);
        } else if self.state.repair_used(ring_used) && cfg.call_fd >= 0 {
            // The dead worker published a used element but may not have signalled it: an extra
            // interrupt is harmless, a missing one leaves the driver waiting.
            let _ = sys::write(cfg.call_fd, &1u64.to_ne_bytes());
        }
        Some(Active {
            guest,
            ring,
            kick_fd: cfg.kick_fd,
            call_fd: cfg.call_fd,
            next_avail: self.state.next_avail(),
            used_idx: self.state.used_idx.load(Ordering::Acquire),
        })
    }

    /// Serves the heads a dead worker popped and did not finish, in pop order, as replays.
    fn replay_in_flight(&mut self, guest: Arc<Guest>, ring: Ring) -> Result<(), ring::RingError> {
        for (head, counter) in self.state.in_flight(ring.size()) {
            tracing::info!(queue = self.index, head, counter, "replaying a chain the dead worker had popped");
            self.serve_chain(&guest, ring, head, counter, true)?;
        }
        Ok(())
    }

    /// Pops and serves every chain the driver made available.
    fn drain(&mut self) -> Result<(), String> {
        loop {
            let Some(a) = &self.active else { return Ok(()) };
            let (guest, ring, next) = (a.guest.clone(), a.ring, a.next_avail);
            let avail = ring.avail_idx(&guest.mem).map_err(|e| e.to_string())?;
            if avail == next {
                return Ok(());
            }
            if avail.wrapping_sub(next) > ring.size() {
                return Err(format!("the driver's avail index {avail} is more than a queue ahead of {next}"));
            }
            let head = ring.avail_head(&guest.mem, next).map_err(|e| e.to_string())?;
            if head >= ring.size() {
                return Err(format!("avail entry {next} names head {head}, outside the queue"));
            }
            if self.state.desc[head as usize].inflight.load(Ordering::Acquire) != 0 {
                return Err(format!("avail entry {next} names head {head}, which is already in flight"));
            }
            let counter = self.state.mark_popped(head);
            if let Some(a) = &mut self.active {
                a.next_avail = next.wrapping_add(1);
            }
            self.serve_chain(&guest, ring, head, counter, false).map_err(|e| e.to_string())?;
        }
    }

    /// Serves one popped head and gives it its used element.
    fn serve_chain(
        &mut self,
        guest: &Guest,
        ring: Ring,
        head: u16,
        counter: u64,
        replay: bool,
    ) -> Result<(), ring::RingError> {
        let mem = &guest.mem;
        let (len, done, opcode) = match ring.chain(mem, head) {
            Ok(chain) => {
                self.answer(mem, &chain, Origin::Virtqueue { key: record_key(self.index, counter), replay })?
            }
            Err(e) => {
                tracing::warn!(queue = self.index, head, "dropping a descriptor chain: {e}");
                (0, None, 0)
            }
        };
        self.put(mem, ring, head, len, opcode)?;
        if let Some(done) = done {
            self.server.complete(done);
        }
        Ok(())
    }

    /// Runs the chain's request and writes the reply into it; returns the used length, the
    /// completion that frees the request's record once the head is used, and the opcode.
    fn answer(
        &mut self,
        mem: &vm_memory::GuestMemoryMmap,
        chain: &ring::Chain,
        origin: Origin,
    ) -> Result<(u32, Option<Completion>, u32), ring::RingError> {
        let n = ring::read_request(mem, chain, &mut self.request)?;
        if chain.readable_len() > n as u64 {
            tracing::warn!(queue = self.index, len = chain.readable_len(), "request larger than any FUSE request");
        }
        let opcode = crate::fuse::Request::header_of(&self.request[..n]).map_or(0, |h| h.opcode);
        // Crash here: the head is in flight and nothing was done for it; the next worker replays it.
        crate::crash_point!("vhost.after_pop", opcode);
        let (reply, done) =
            self.server.handle(&self.request[..n], origin, |_, _| Vec::new(), &mut self.reply, &self.record);
        let Some(reply) = reply else { return Ok((0, Some(done), opcode)) };
        let room = chain.writable_len();
        if reply.len() as u64 <= room {
            ring::write_reply(mem, chain, reply)?;
            return Ok((reply.len() as u32, Some(done), opcode));
        }
        tracing::warn!(
            queue = self.index,
            reply = reply.len(),
            room,
            "reply does not fit the chain's writable buffers"
        );
        if room < OUT_HEADER as u64 {
            return Ok((0, Some(done), opcode));
        }
        // Room for an out-header only: tell the driver the request failed.
        let unique = u64::from_le_bytes(reply[8..16].try_into().expect("an out-header is 16 bytes"));
        let err = self.reply.finish_err(unique, libc::EIO).to_vec();
        ring::write_reply(mem, chain, &err)?;
        Ok((err.len() as u32, Some(done), opcode))
    }

    /// Publishes `head`'s used element, in the two steps recovery can tell apart, and signals.
    fn put(
        &mut self,
        mem: &vm_memory::GuestMemoryMmap,
        ring: Ring,
        head: u16,
        len: u32,
        opcode: u32,
    ) -> Result<(), ring::RingError> {
        let Some(a) = &mut self.active else { return Ok(()) };
        let old = a.used_idx;
        let new = old.wrapping_add(1);
        self.state.begin_put(head);
        // Crash here or after the element: the ring's used index has not moved; the head is
        // still in flight and is replayed, its element written again at the same place.
        crate::crash_point!("vhost.before_used", opcode);
        ring.write_used_elem(mem, old, head, len)?;
        crate::crash_point!("vhost.after_used_elem", opcode);
        ring.publish_used_idx(mem, new)?;
        // Crash here: the driver has the element; recovery sees the ring one ahead of the
        // region and finishes this put (QueueState::repair_used), so the head is not replayed.
        crate::crash_point!("vhost.after_used_idx", opcode);
        self.state.end_put(head, new);
        a.used_idx = new;
        if a.call_fd >= 0 && ring.needs_notification(mem, old, new)? {
            let _ = sys::write(a.call_fd, &1u64.to_ne_bytes());
        }
        Ok(())
    }
}
