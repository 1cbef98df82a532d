//! A worker's queue threads: one per virtqueue at first, more when slow requests queue up on it
//! (`Queue::take_turn`). The thread whose turn it is takes the queue's configuration from the
//! region, finishes what a dead worker left in flight, then pops a descriptor chain and lets the
//! turn go; it serves the chain through `Server::handle`, publishes its used element and signals
//! the driver, while another thread may pop the next.
//!
//! Crash consistency (the state region's in-flight tracking, state/vhost.rs): a head is marked
//! in flight right after it is read from the avail ring; its intent record is keyed by (queue,
//! pop counter); its used element is published in two steps named in the region. A fresh
//! worker repairs a half-done publication, then replays the in-flight heads in pop order with
//! their records, so each popped head gets exactly one used element and its effect happens once.
//!
//! A request that may wait indefinitely (SETLKW, with `-o posix_lock`) is served on a thread of
//! its own, as on /dev/fuse, so it cannot hold up the queue behind it (with one request queue, the
//! unlock that would grant it). Its head stays in flight meanwhile, and its used element is put
//! out of order; puts are serialised by the queue's `UsedRing`, as are those of chains served
//! side by side.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use crate::fuse::{MAX_REQUEST, MAX_WRITE, ReplyBuf};
use crate::server::{self, Delivery, Exchange, RecordKey, Server, ThreadRecord};
use crate::state::vhost::{QueueConfig, QueueState, VhostArea};
use crate::sys;

use super::inflight::InFlight;
use super::memory::{Guest, GuestCache};
use super::ring::{self, Ring, RingFeatures};

/// A reply shorter than this cannot even carry a FUSE out-header.
const OUT_HEADER: usize = 16;

/// The intent-record key of a popped chain: queue in the top bits, pop counter below.
pub fn record_key(queue: usize, counter: u64) -> u64 {
    ((queue as u64) << 48) | (counter & COUNTER_MASK)
}

/// The queue and pop counter a record key names.
pub fn split_record_key(key: u64) -> (usize, u64) {
    ((key >> 48) as usize, key & COUNTER_MASK)
}

const COUNTER_MASK: u64 = (1 << 48) - 1;

/// Where used elements go: shared by the queue thread and its lock waiters, whose chains finish
/// out of order.
#[derive(Clone)]
struct UsedRing {
    state: &'static QueueState,
    guest: Arc<Guest>,
    ring: Ring,
    call_fd: i32,
    /// Our copy of the ring's used index; holding the lock orders whole puts.
    used_idx: Arc<Mutex<u16>>,
    /// VHOST_F_LOG_ALL was acked (a migration copies guest memory): every write into guest
    /// memory is logged, after it is made.
    log_all: bool,
}

impl UsedRing {
    /// Logs `[gpa, gpa + len)` dirty if the frontend is logging.
    fn log(&self, gpa: u64, len: u64) {
        if self.log_all {
            self.guest.log_dirty(gpa, len);
        }
    }

    /// Logs the whole used ring (its index, elements and avail_event) dirty. A crash between a
    /// ring write and its log entry is covered by the next worker, which logs the whole ring
    /// when it activates the queue.
    fn log_used(&self) {
        let (gpa, len) = self.ring.used_range();
        self.log(gpa, len);
    }

    /// Publishes `head`'s used element, in the two steps recovery can tell apart, and signals.
    fn put(&self, head: u16, len: u32, opcode: u32) -> Result<(), ring::RingError> {
        let mem = &self.guest.mem;
        let mut used_idx = self.used_idx.lock().unwrap();
        let old = *used_idx;
        let new = old.wrapping_add(1);
        self.state.begin_put(head);
        // Crash here or after the element: the ring's used index has not moved; the head is
        // still in flight and is replayed, its element written again at the same place.
        crate::crash_point!("vhost.before_used", opcode);
        self.ring.write_used_elem(mem, old, head, len)?;
        crate::crash_point!("vhost.after_used_elem", opcode);
        self.ring.publish_used_idx(mem, new)?;
        self.log_used();
        // Crash here: the driver has the element; recovery sees the ring one ahead of the
        // region and finishes this put (QueueState::repair_used), so the head is not replayed.
        crate::crash_point!("vhost.after_used_idx", opcode);
        self.state.end_put(head, new);
        *used_idx = new;
        // Crash here: the put is complete in the region, so recovery has nothing to repair, but
        // the driver was not signalled: every activation signals once (see `activate`).
        crate::crash_point!("vhost.before_signal", opcode);
        if self.call_fd >= 0 && self.ring.needs_notification(mem, old, new)? {
            sys::eventfd_signal(self.call_fd);
        }
        Ok(())
    }
}

/// What a queue's threads serve with, once its configuration is taken in.
struct Active {
    used: UsedRing,
    kick_fd: i32,
    /// Heap copy of the next avail index (only the popping thread reads or moves it).
    next_avail: u16,
}

/// A chain popped from the ring, to be served by the thread that popped it.
struct Popped {
    used: UsedRing,
    head: u16,
    counter: u64,
    /// The driver had made more chains available behind it.
    more: bool,
}

/// The ring as the popping thread sees it: a queue's threads pop (and take in control changes)
/// one at a time, under the queue's `popper` lock, and serve what they popped in parallel.
struct Popper {
    seq: Option<u64>,
    active: Option<Active>,
    /// Whether this worker already replayed what a dead one left in flight (once: later heads
    /// in flight are this worker's own).
    replayed: bool,
}

/// One virtqueue as a worker serves it: what its serving threads share.
struct Queue {
    server: Arc<Server>,
    area: &'static VhostArea,
    index: usize,
    state: &'static QueueState,
    guests: Arc<GuestCache>,
    popper: Mutex<Popper>,
    /// The one used-index lock of this queue, kept across reconfigurations because a lock
    /// waiter may still hold it.
    used_idx: Arc<Mutex<u16>>,
    /// Chains popped and not yet answered by this queue's threads (lock waiters aside). A
    /// control change is taken in only when it is 0: the supervisor, stopping a ring or turning
    /// dirty logging on, must know that no thread still serves under the old configuration.
    serving: AtomicUsize,
    /// `SLOW` in nanoseconds (a test build can lower it: `slow_service_ns`).
    slow_ns: u64,
    /// When the latest chain began to be served (ns since `epoch`), and whether the latest one
    /// answered took `SLOW` or longer: other threads join in only for slow service.
    epoch: Instant,
    last_start: AtomicU64,
    slow: AtomicBool,
    /// Threads of this queue waiting for their turn at popping (see `take_turn`).
    idle: Mutex<usize>,
    idle_wake: Condvar,
    /// This queue's serving threads, started one by one as slow requests queue up.
    threads: AtomicUsize,
    /// At most this many: as many requests of one queue are served at once.
    max_threads: usize,
    /// A serving thread's ring error, for the popper to stop the queue on (under the
    /// configuration it happened with: a control change taken in since clears it).
    failed: Mutex<Option<String>>,
}

/// A serving thread of a virtqueue: pops a chain when it is its turn, then serves it.
pub struct QueueThread {
    queue: Arc<Queue>,
    record: ThreadRecord,
    request: Vec<u8>,
    reply: ReplyBuf,
    /// Host addresses of guest buffers a READ or WRITE uses in place (`take_request`).
    buffers: Vec<sys::IoVec>,
}

impl QueueThread {
    /// The first serving thread of queue `index`; it starts others (up to `max_threads`) when
    /// requests queue up behind slow ones (`call_another`).
    pub fn new(
        server: Arc<Server>,
        area: &'static VhostArea,
        index: usize,
        guests: Arc<GuestCache>,
        max_threads: usize,
    ) -> QueueThread {
        let queue = Queue {
            state: &area.queues[index],
            server,
            area,
            index,
            guests,
            popper: Mutex::new(Popper { seq: None, active: None, replayed: false }),
            used_idx: Arc::new(Mutex::new(0)),
            serving: AtomicUsize::new(0),
            slow_ns: slow_service_ns(),
            epoch: Instant::now(),
            last_start: AtomicU64::new(0),
            slow: AtomicBool::new(false),
            idle: Mutex::new(0),
            idle_wake: Condvar::new(),
            threads: AtomicUsize::new(1),
            max_threads: max_threads.max(1),
            failed: Mutex::new(None),
        };
        QueueThread::on(Arc::new(queue))
    }

    fn on(queue: Arc<Queue>) -> QueueThread {
        let record = queue.server.thread_record();
        QueueThread {
            queue,
            record,
            request: vec![0; MAX_REQUEST],
            reply: ReplyBuf::with_capacity(MAX_REQUEST),
            buffers: Vec::new(),
        }
    }

    /// Serves the queue for the life of the worker.
    pub fn run(mut self) -> ! {
        let queue = self.queue.clone();
        let mut looked = false;
        loop {
            let Some(mut popper) = queue.take_turn(&mut looked) else { continue };
            let popped = self.next_chain(&mut popper);
            queue.serving.fetch_add(1, Ordering::AcqRel);
            let (started, blocked) = (queue.clock(), sys::thread_blocked_count());
            queue.last_start.store(started, Ordering::Release);
            drop(popper);
            if popped.more && queue.slow.load(Ordering::Acquire) {
                self.call_another();
            }
            // Crash while serving (here or in another of this queue's threads): every popped
            // head is in flight in the region with its record; the next worker replays them all,
            // in pop order, each exactly once.
            let served = self.serve_chain(&popped.used, popped.head, popped.counter, false);
            if let Err(e) = served {
                queue.failed.lock().unwrap().get_or_insert(e.to_string());
            }
            // Slow: long, and not only because this thread was preempted (on a machine with
            // fewer CPUs than runnable threads, quick service is often cut by others).
            let slow =
                queue.slow_ns == 0 || queue.clock() - started >= queue.slow_ns && sys::thread_blocked_count() > blocked;
            queue.slow.store(slow, Ordering::Release);
            queue.serving.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Holding the popper lock: takes in control changes, then waits for and pops the next
    /// chain the driver made available.
    fn next_chain(&mut self, p: &mut Popper) -> Popped {
        let queue = self.queue.clone();
        loop {
            self.take_control(p);
            if let Some(e) = queue.failed.lock().unwrap().take()
                && p.active.take().is_some()
            {
                tracing::error!(queue = queue.index, "{e}; the queue stops until the frontend sets it up again");
            }
            let Some(a) = &mut p.active else {
                queue.wait(None);
                continue;
            };
            // A control change is taken in between chains, not after the whole backlog: the
            // supervisor waits for it when the frontend turns dirty logging on (control.rs).
            if p.seq != Some(queue.area.control_seq.load(Ordering::Acquire)) {
                continue;
            }
            match queue.pop(a) {
                Ok(Some(popped)) => return popped,
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(queue = queue.index, "{e}; the queue stops until the frontend sets it up again");
                    p.active = None;
                    continue;
                }
            }
            let more = a.used.ring.arm_kick(&a.used.guest.mem, a.next_avail).unwrap_or(false);
            a.used.log_used();
            if !more {
                queue.wait(Some(a.kick_fd));
            }
        }
    }

    /// Chains wait behind the one just popped, and service is slow: wake an idle thread of the
    /// queue to pop the next, or start one if none is idle and the queue may have another.
    fn call_another(&self) {
        let queue = &self.queue;
        let idle = queue.idle.lock().unwrap();
        if *idle > 0 {
            queue.idle_wake.notify_one();
            return;
        }
        let threads = queue.threads.load(Ordering::Acquire);
        if threads >= queue.max_threads {
            return;
        }
        queue.threads.store(threads + 1, Ordering::Release);
        let thread = QueueThread::on(queue.clone());
        let name = format!("vq-{}.{threads}", queue.index);
        if let Err(e) = std::thread::Builder::new().name(name).spawn(move || thread.run()) {
            // The queue is served as before, by the threads it has.
            tracing::warn!(queue = queue.index, "cannot start another serving thread: {e}");
            queue.threads.store(threads, Ordering::Release);
        }
    }

    /// Takes in the queue's configuration if the supervisor changed anything since last time.
    /// Each activation repairs a used-ring update a dead worker cut in half; the first one in
    /// this worker also replays what the dead worker left in flight.
    fn take_control(&mut self, p: &mut Popper) {
        let queue = self.queue.clone();
        let (cfg, seq) = queue.area.read_control(|a| a.queue_config(queue.index));
        if p.seq == Some(seq) {
            return;
        }
        // The chains this queue's other threads are serving finish under the configuration
        // they were popped with (control changes are rare: stopping a ring, dirty logging).
        while queue.serving.load(Ordering::Acquire) != 0 {
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
        // An error under the old configuration does not stop the new one.
        queue.failed.lock().unwrap().take();
        // Crash here: the change is in the region; the next worker takes it in the same way.
        crate::crash_point!("vhost.apply_control");
        p.seq = Some(seq);
        p.active = if cfg.active { queue.activate(&cfg) } else { None };
        if let Some(used) = p.active.as_ref().map(|a| a.used.clone())
            && !std::mem::replace(&mut p.replayed, true)
            && let Err(e) = self.replay_in_flight(&used)
        {
            tracing::error!(queue = queue.index, "replaying in-flight chains: {e}");
            p.active = None;
        }
        // The supervisor, stopping a ring, waits for this: no chain of ours is being served.
        queue.state.applied_seq.store(seq, Ordering::Release);
    }

    /// Serves the heads a dead worker popped and did not finish, in pop order, as replays.
    fn replay_in_flight(&mut self, used: &UsedRing) -> Result<(), ring::RingError> {
        for (head, counter) in self.queue.state.in_flight(used.ring.size()) {
            tracing::info!(queue = self.queue.index, head, counter, "replaying a chain the dead worker had popped");
            self.serve_chain(used, head, counter, true)?;
        }
        Ok(())
    }

    /// Serves one popped head and gives it its used element (or hands it to a lock waiter).
    fn serve_chain(&mut self, used: &UsedRing, head: u16, counter: u64, replay: bool) -> Result<(), ring::RingError> {
        let index = self.queue.index;
        let delivery =
            Delivery { key: RecordKey { id: record_key(index, counter), redelivered: replay }, groups: no_groups };
        let chain = match used.ring.chain(&used.guest.mem, head) {
            Ok(chain) => chain,
            Err(e) => {
                tracing::warn!(queue = index, head, "dropping a descriptor chain: {e}");
                return used.put(head, 0, 0);
            }
        };
        let (n, in_place) = self.take_request(&used.guest.mem, &chain)?;
        if chain.readable_len() > (n + in_place) as u64 {
            tracing::warn!(queue = index, len = chain.readable_len(), "request larger than any FUSE request");
        }
        let mut exchange =
            InChain { msg: &self.request[..n], data: &self.buffers[..], used, head, chain, queue: index };
        // Crash here: the head is in flight and nothing was done for it; the next worker replays it.
        crate::crash_point!("vhost.after_pop", exchange.opcode());
        let server = &self.queue.server;
        if server::blocks(exchange.request()) {
            let waiter = InChain {
                msg: exchange.msg.to_vec(),
                data: Vec::new(),
                used: used.clone(),
                head,
                chain: exchange.chain.clone(),
                queue: index,
            };
            return match server.spawn_blocking(waiter, delivery) {
                Ok(()) => Ok(()),
                Err(mut waiter) => {
                    server.serve(&mut waiter, delivery, &self.record, &mut self.reply);
                    Ok(())
                }
            };
        }
        let sent = server.serve(&mut exchange, delivery, &self.record, &mut self.reply);
        self.reply.take_room();
        sent
    }

    /// Copies the chain's request into `self.request`, but for a WRITE's data, which stays in
    /// guest memory: its host addresses go to `self.buffers`, and the file is written straight
    /// from there. A READ gets the chain's writable buffers behind the out-header as room for
    /// its data (`ReplyBuf::offer_room`): the file is read straight into them. Returns the bytes
    /// copied and the bytes left in place.
    ///
    /// Crash consistency is as for a copied request: the guest keeps a chain's buffers as they
    /// are until its used element, so a replay reads the same data, and a READ cut short by a
    /// crash left bytes the guest cannot look at yet (no used element); the replay reads again.
    fn take_request(
        &mut self,
        mem: &vm_memory::GuestMemoryMmap,
        chain: &ring::Chain,
    ) -> Result<(usize, usize), ring::RingError> {
        use crate::fuse::abi::{InHeader, Opcode, WriteIn};
        const WRITE_HEAD: usize = size_of::<InHeader>() + size_of::<WriteIn>();
        // No room of an earlier chain may outlive it (`serve_chain` takes it back after serving).
        self.reply.take_room();
        self.buffers.clear();
        let head = ring::read_request(mem, chain, &mut self.request[..WRITE_HEAD])?;
        let readable = chain.readable_len() as usize;
        match crate::fuse::Request::header_prefix(&self.request[..head]) {
            // A WRITE without extensions, whose data is within what we offered (max_write):
            // larger ones are copied and cut, and fail to decode as before.
            Some(h)
                if h.opcode == Opcode::Write as u32
                    && h.total_extlen == 0
                    && readable > WRITE_HEAD
                    && readable - WRITE_HEAD <= MAX_WRITE as usize =>
            {
                ring::host_buffers(mem, &chain.readable, WRITE_HEAD, &mut self.buffers)?;
                return Ok((WRITE_HEAD, readable - WRITE_HEAD));
            }
            Some(h) if h.opcode == Opcode::Read as u32 && chain.writable_len() > OUT_HEADER as u64 => {
                ring::host_buffers(mem, &chain.writable, OUT_HEADER, &mut self.buffers)?;
                self.reply.offer_room(self.buffers.drain(..));
            }
            _ => {}
        }
        Ok((ring::read_request(mem, chain, &mut self.request)?, 0))
    }
}

/// Service at least this long, during which the serving thread blocked (disk I/O, a journal
/// commit), is slow: after a slow chain the popper calls another thread for the chains behind
/// the one it popped, and idle threads look for a chain stuck that long. Quicker service stays
/// on one thread: for a queue of cheap requests (cached reads, lookups) threads taking turns
/// cost more than they give (4 KiB reads through the bridge, 4 jobs on 2 CPUs: about 10% fewer
/// with every chain handed on, in an A/B run).
const SLOW: Duration = Duration::from_micros(200);
/// How often an idle thread looks while its queue's service is slow: the longest a request can
/// wait behind a slow one that was popped with nothing behind it.
const IDLE_LOOK: Duration = Duration::from_millis(1);
/// How long it waits otherwise (a safety net: the thread with the turn watches the ring).
const IDLE_REST: Duration = Duration::from_secs(1);

/// `SLOW` in nanoseconds. A test build (`crash-points`) takes PHOENIXFS_SLOW_SERVICE_NS instead:
/// 0 makes every service slow, so the suites over vhost-user (and the kills of the soak) meet
/// several chains of a queue served at once all the time, not only on slow disks.
fn slow_service_ns() -> u64 {
    #[cfg(feature = "crash-points")]
    if let Some(ns) = std::env::var("PHOENIXFS_SLOW_SERVICE_NS").ok().and_then(|v| v.parse().ok()) {
        return ns;
    }
    SLOW.as_nanos() as u64
}

impl Queue {
    /// Nanoseconds since the queue was set up, from the monotonic clock.
    fn clock(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// The turn at popping, if no other thread of the queue has it; otherwise waits as an idle
    /// thread (until called, or for its next look) and returns None. `looked`: the caller's
    /// last wait ended by a look, not by a call.
    ///
    /// A thread pops one chain and lets the turn go before serving it, calling another thread
    /// only when more chains wait and service is slow (`call_another`): a queue of quick
    /// requests is served by one thread with no hand-off, as by a single queue thread. While
    /// service is slow, idle threads look every `IDLE_LOOK` and take a turn nobody holds when the
    /// chain last popped has been in service for `SLOW` or longer, so a request that arrives
    /// while every thread is serving waits behind a slow one about `IDLE_LOOK` at most.
    fn take_turn(&self, looked: &mut bool) -> Option<MutexGuard<'_, Popper>> {
        // Under the idle lock: a popper that lets go of its turn and then calls another thread
        // either finds us waiting or is seen by our try_lock.
        let mut idle = self.idle.lock().unwrap();
        let stuck = || {
            self.serving.load(Ordering::Acquire) > 0
                && self.clock().saturating_sub(self.last_start.load(Ordering::Acquire)) >= self.slow_ns
        };
        // A thread back from serving, or called, always tries; one that only looked, if service
        // is stuck (else it would take turns from the thread serving quick requests).
        if !std::mem::take(looked) || stuck() {
            match self.popper.try_lock() {
                Ok(popper) => return Some(popper),
                Err(TryLockError::Poisoned(e)) => return Some(e.into_inner()),
                Err(TryLockError::WouldBlock) => {}
            }
        }
        let patience = if self.slow.load(Ordering::Acquire) { IDLE_LOOK } else { IDLE_REST };
        *idle += 1;
        let (guard, wait) = self.idle_wake.wait_timeout(idle, patience).unwrap();
        idle = guard;
        *idle -= 1;
        *looked = wait.timed_out();
        None
    }

    /// Waits for a kick or a control change (with a bound, as a safety net), and consumes both
    /// eventfd counts.
    fn wait(&self, kick: Option<i32>) {
        let notify = self.state.notify_fd.load(Ordering::Acquire);
        // A negative fd is ignored by poll: no kick fd (queue inactive) waits on notify alone.
        let fds = [notify, kick.unwrap_or(-1)];
        for (fd, readable) in fds.into_iter().zip(sys::process::poll_readable(fds, 1000)) {
            if readable {
                sys::eventfd_drain(fd);
            }
        }
    }

    fn activate(&self, cfg: &QueueConfig) -> Option<Active> {
        let guest = self.guests.get(self.area)?;
        let addrs = [cfg.desc_addr, cfg.avail_addr, cfg.used_addr].map(|a| guest.translate(a));
        let [Some(desc), Some(avail), Some(used)] = addrs else {
            tracing::error!(queue = self.index, ?cfg, "ring addresses are outside the memory table; queue not started");
            return None;
        };
        let features = RingFeatures { event_idx: cfg.event_idx, indirect: cfg.indirect };
        let ring = match Ring::new(&guest.mem, cfg.size, (desc, avail, used), features) {
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
        // Under the used-index lock: a lock waiter of this worker may be putting meanwhile.
        let mut used_idx = self.used_idx.lock().unwrap();
        if self.state.base_pending.load(Ordering::Acquire) != 0 {
            // Crash inside: base_pending is still set, and the next worker starts over.
            self.state.start_from_base(ring_used);
        } else {
            self.state.repair_used(ring_used);
        }
        // A dead worker may have published used elements without signalling them (between its
        // last put and the eventfd write): an extra interrupt is harmless, a missing one leaves
        // the driver waiting for good.
        if cfg.call_fd >= 0 {
            sys::eventfd_signal(cfg.call_fd);
        }
        *used_idx = self.state.used_idx.load(Ordering::Acquire);
        drop(used_idx);
        let used = UsedRing {
            state: self.state,
            guest,
            ring,
            call_fd: cfg.call_fd,
            used_idx: self.used_idx.clone(),
            log_all: cfg.log_all,
        };
        // What a dead worker wrote into the used ring may not have reached the log.
        used.log_used();
        Some(Active { used, kick_fd: cfg.kick_fd, next_avail: self.state.next_avail() })
    }

    /// Pops the next chain the driver made available, if any.
    fn pop(&self, a: &mut Active) -> Result<Option<Popped>, String> {
        let (mem, ring) = (&a.used.guest.mem, a.used.ring);
        let next = a.next_avail;
        let avail = ring.avail_idx(mem).map_err(|e| e.to_string())?;
        if avail == next {
            return Ok(None);
        }
        if avail.wrapping_sub(next) > ring.size() {
            return Err(format!("the driver's avail index {avail} is more than a queue ahead of {next}"));
        }
        let head = ring.avail_head(mem, next).map_err(|e| e.to_string())?;
        if head >= ring.size() {
            return Err(format!("avail entry {next} names head {head}, outside the queue"));
        }
        if self.state.desc[head as usize].inflight.load(Ordering::Acquire) != 0 {
            return Err(format!("avail entry {next} names head {head}, which is already in flight"));
        }
        let counter = self.state.mark_popped(head);
        a.next_avail = next.wrapping_add(1);
        Ok(Some(Popped { used: a.used.clone(), head, counter, more: avail != a.next_avail }))
    }
}

/// A request in its descriptor chain: the reply goes into the chain's writable buffers, then
/// the head's used element into the ring. `M` is the request's bytes, borrowed from the queue
/// thread's buffer or owned by a lock waiter.
struct InChain<M, D, U> {
    msg: M,
    /// A WRITE's data left in guest memory (empty: none, or all of it is in `msg`).
    data: D,
    used: U,
    head: u16,
    chain: ring::Chain,
    queue: usize,
}

impl<M: AsRef<[u8]>, D, U: std::borrow::Borrow<UsedRing>> InChain<M, D, U> {
    fn opcode(&self) -> u32 {
        crate::fuse::Request::header_prefix(self.msg.as_ref()).map_or(0, |h| h.opcode)
    }

    fn put_reply(&self, reply: Option<&[u8]>) -> Result<(), ring::RingError> {
        let used = self.used.borrow();
        let len = match reply {
            Some(reply) => write_reply(&used.guest.mem, &self.chain, reply, self.queue)?,
            None => 0,
        };
        // The reply's pages are logged before its used element is: a frontend that sees the
        // element has the data's pages marked too.
        let mut left = u64::from(len);
        for s in &self.chain.writable {
            if left == 0 {
                break;
            }
            let n = u64::from(s.len).min(left);
            used.log(s.addr.0, n);
            left -= n;
        }
        used.put(self.head, len, self.opcode())
    }
}

impl Exchange for InChain<&[u8], &[sys::IoVec], &UsedRing> {
    type Sent = Result<(), ring::RingError>;

    fn request(&self) -> &[u8] {
        self.msg
    }

    fn reply(&mut self, reply: Option<&[u8]>) -> Self::Sent {
        self.put_reply(reply)
    }

    fn write_data(&self) -> Option<&[sys::IoVec]> {
        (!self.data.is_empty()).then_some(self.data)
    }
}

/// A lock waiter's request: its used element is put out of order, when the lock is decided
/// (or an INTERRUPT ends the wait). A crash meanwhile leaves the head in flight: the next
/// worker waits again.
impl Exchange for InChain<Vec<u8>, Vec<sys::IoVec>, UsedRing> {
    type Sent = ();

    fn request(&self) -> &[u8] {
        &self.msg
    }

    fn reply(&mut self, reply: Option<&[u8]>) {
        if let Err(e) = self.put_reply(reply) {
            tracing::error!(head = self.head, "putting a lock request's used element: {e}");
        }
    }
}

/// Over virtio a request carries no supplementary groups.
fn no_groups(_pid: u32) -> Vec<u32> {
    Vec::new()
}

/// Writes `reply` into the chain's writable buffers; returns the used length. A reply that does
/// not fit becomes a bare EIO header if one fits, else nothing (a zero-length used element).
fn write_reply(
    mem: &vm_memory::GuestMemoryMmap,
    chain: &ring::Chain,
    reply: &[u8],
    queue: usize,
) -> Result<u32, ring::RingError> {
    let room = chain.writable_len();
    // The header's length also counts a READ's data, read into the chain in place already
    // (`take_request`); then `reply` is the header alone.
    let len =
        reply.get(..4).map_or(0, |l| u32::from_le_bytes(l.try_into().expect("4 bytes")) as usize).max(reply.len());
    if len as u64 <= room {
        ring::write_reply(mem, chain, reply)?;
        return Ok(len as u32);
    }
    tracing::warn!(queue, reply = reply.len(), room, "reply does not fit the chain's writable buffers");
    if room < OUT_HEADER as u64 {
        return Ok(0);
    }
    let unique = u64::from_le_bytes(reply[8..16].try_into().expect("an out-header is 16 bytes"));
    let err = crate::fuse::abi::OutHeader { len: OUT_HEADER as u32, error: -libc::EIO, unique };
    ring::write_reply(mem, chain, zerocopy::IntoBytes::as_bytes(&err))?;
    Ok(OUT_HEADER as u32)
}
