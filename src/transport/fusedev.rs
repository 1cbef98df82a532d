//! /dev/fuse: mount the share with mount(2), serve requests on a pool of threads (each on its own
//! clone of the connection, FUSE_DEV_IOC_CLONE, so replies go back on the fd the request came
//! from), and unmount on request.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::fuse::{MAX_REQUEST, Op, ReplyBuf, Request, abi, reply};
use crate::server::{self, Delivery, Exchange, RecordKey, Server, ThreadRecord};
use crate::state::intent::{Intent, Orphan};
use crate::state::region::{BUFFER_SIZE, ConnBuffer, MAX_CONN_BUFFERS};
use crate::state::{Forget, Region, State};
use crate::sys;

use super::{Connection, Teardown, Transport};

// Every request the wire format admits fits a connection buffer.
const _: () = assert!(MAX_REQUEST as u64 <= BUFFER_SIZE);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open /dev/fuse (is the fuse module loaded, and are we root?): {0}")]
    OpenDevice(std::io::Error),
    #[error("mount of {path} failed: {source}")]
    Mount { path: String, source: std::io::Error },
    #[error("cannot clone the /dev/fuse connection for a worker thread: {0}")]
    Clone(std::io::Error),
    #[error("cannot start a worker thread: {0}")]
    Spawn(std::io::Error),
    #[error("path contains a NUL byte: {0}")]
    BadPath(String),
}

/// A mounted FUSE connection.
pub struct FuseDev {
    fd: i32,
    /// The clones the workers' transport serves on too (made by `transport`).
    clones: Vec<i32>,
    /// Our mount, until the daemon stops (or the holder process takes over its unmount).
    mount: Option<HostMount>,
}

/// Our FUSE mount as the host's mount namespace shows it: what unmounting needs.
struct HostMount {
    /// The connection (the mounted fd): hung up once the mount is gone.
    fd: i32,
    /// The mount point, absolute and free of symlinks, as /proc/self/mountinfo shows it.
    mountpoint: CString,
    /// Our mount's id (None if mountinfo could not be read: then nothing is unmounted).
    mount_id: Option<u64>,
}

impl FuseDev {
    /// Opens /dev/fuse and mounts it at `mountpoint` with the options virtio-fs mounts get in a
    /// guest: the kernel checks permissions (default_permissions) and every user may use it.
    pub fn mount(mountpoint: &Path, source: &Path) -> Result<FuseDev, Error> {
        let mountpoint = &mountpoint
            .canonicalize()
            .map_err(|source| Error::Mount { path: mountpoint.display().to_string(), source })?;
        let mnt = CString::new(mountpoint.as_os_str().as_bytes())
            .map_err(|_| Error::BadPath(mountpoint.display().to_string()))?;
        let src =
            CString::new(source.as_os_str().as_bytes()).map_err(|_| Error::BadPath(source.display().to_string()))?;
        let fd = sys::open(c"/dev/fuse", libc::O_RDWR).map_err(Error::OpenDevice)?;
        let data = CString::new(format!("fd={fd},rootmode=40000,user_id=0,group_id=0,default_permissions,allow_other"))
            .expect("no NUL in formatted options");
        if let Err(source) = sys::mount(&src, &mnt, c"fuse.phoenixfs", libc::MS_NOSUID | libc::MS_NODEV, &data) {
            sys::close(fd);
            return Err(Error::Mount { path: mountpoint.display().to_string(), source });
        }
        // Which mount is ours, so that we never unmount another one made at the same path later.
        let mount_id = top_mount_at(mountpoint);
        Ok(FuseDev { fd, clones: Vec::new(), mount: Some(HostMount { fd, mountpoint: mnt, mount_id }) })
    }

    /// A live upgrade's new binary (upgrade.rs): the connection and its clones as the old one
    /// held them (`fds`, the mounted fd first), and the unmount at the end if it was ours to do
    /// (`mount_id`, with the mount point from the command line).
    pub fn adopt(fds: &[i32], mount_id: Option<u64>, mountpoint: &Path, region: &Region) -> (FuseDev, FuseTransport) {
        let fd = fds[0];
        let mount = mount_id.map(|id| HostMount {
            fd,
            mountpoint: CString::new(mountpoint.as_os_str().as_bytes()).unwrap_or_default(),
            mount_id: Some(id),
        });
        let dev = FuseDev { fd, clones: fds[1..].to_vec(), mount };
        (dev, FuseTransport::new(fds.to_vec(), region))
    }

    /// Hands the unmount at the end to the holder process (it stays in the host's mount
    /// namespace; the supervisor will not be): `close` then leaves the mount alone.
    pub fn take_host_teardown(&mut self) -> Option<Box<dyn Teardown>> {
        self.mount.take().map(|m| Box::new(m) as Box<dyn Teardown>)
    }

    /// The workers' side of this connection: `threads` serving threads, on this fd and
    /// `threads - 1` clones of it, each reading into its own buffer in `region`. Made once by
    /// the supervisor; every worker serves on the same fds, so requests a dead worker read stay
    /// in their processing queues until FUSE_NOTIFY_RESEND re-queues them.
    pub fn transport(&mut self, threads: usize, region: &Region) -> Result<FuseTransport, Error> {
        let mut fds = vec![self.fd];
        for _ in 1..threads.clamp(1, MAX_CONN_BUFFERS) {
            fds.push(clone_connection(self.fd)?);
        }
        self.clones = fds[1..].to_vec();
        Ok(FuseTransport::new(fds, region))
    }
}

impl Connection for FuseDev {
    /// The kernel needs nothing of the supervisor while workers come and go.
    fn start(&mut self, _keep_workers: Box<dyn FnMut()>) {}

    fn control_fd(&self) -> Option<i32> {
        None
    }

    fn handle_control(&mut self) -> bool {
        true
    }

    fn close(&mut self) {
        if let Some(mount) = self.mount.take() {
            mount.run();
        }
    }

    fn link(&self) -> super::Link {
        let mut fds = vec![self.fd];
        fds.extend(&self.clones);
        super::Link::Fuse { fds, mount_id: self.mount.as_ref().and_then(|m| m.mount_id) }
    }
}

impl Teardown for HostMount {
    fn fds(&self) -> Vec<i32> {
        vec![self.fd]
    }

    /// Unmounts our mount, and only ours; a busy one is detached so the daemon can still exit.
    /// A connection that already ended (unmounted, or aborted) is left as it is: whatever is
    /// mounted at the path now is someone else's (a restart, a test harness, systemd). While
    /// ours lives its mount id cannot be reused, so a mount stacked on ours is told apart too.
    /// (Call it with no worker alive: reading mountinfo takes an fd in the table workers share.)
    fn run(&self) {
        let path = Path::new(std::ffi::OsStr::from_bytes(self.mountpoint.as_bytes()));
        if sys::process::has_hung_up(self.fd) {
            tracing::info!("the connection has ended: nothing of ours is mounted at {}", path.display());
            return;
        }
        let top = top_mount_at(path);
        if top.is_none() || top != self.mount_id {
            tracing::warn!(ours = ?self.mount_id, found = ?top, "our mount is not the one on top at {}; leaving it", path.display());
            return;
        }
        match sys::umount(&self.mountpoint, 0) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => tracing::debug!("already unmounted"),
            Err(e) => {
                tracing::warn!("unmount: {e}; detaching the mount lazily");
                if let Err(e) = sys::umount(&self.mountpoint, libc::MNT_DETACH) {
                    tracing::error!("lazy unmount failed: {e}");
                }
            }
        }
    }
}

/// A /dev/fuse connection as workers serve it: one fd per serving thread (the mounted fd and
/// its clones), and the region that holds each thread's request buffer.
pub struct FuseTransport {
    fds: Vec<i32>,
    region: Region,
    /// How long the first serving thread looks for its next request before it sleeps
    /// (`--fuse-spin-us`; see `Waiting`).
    spin: Duration,
    /// Requests read by this worker's serving threads, all together: how the looking thread
    /// tells a busy connection from an idle one (see `Waiting`).
    read: Arc<AtomicU64>,
    /// Set by `resume` once FUSE_NOTIFY_RESEND is written: the first serving thread then takes
    /// the re-sent requests in before the others read (see `take_resent`).
    resent: AtomicBool,
}

impl FuseTransport {
    fn new(fds: Vec<i32>, region: &Region) -> FuseTransport {
        FuseTransport {
            fds,
            region: region.alias(),
            spin: Duration::ZERO,
            read: Arc::new(AtomicU64::new(0)),
            resent: AtomicBool::new(false),
        }
    }

    /// `--fuse-spin-us`.
    pub fn with_spin(mut self, spin: Duration) -> FuseTransport {
        self.spin = spin;
        self
    }
}

impl Transport for FuseTransport {
    /// Any fd of the connection will do: backing ids belong to the connection.
    fn backing_dev(&self) -> Option<i32> {
        self.fds.first().copied()
    }

    /// Finishes the FORGETs and BATCH_FORGETs a dead worker had read into its connection
    /// buffers (the kernel keeps no copy of a request that takes no reply): from the entry its
    /// record says is next, or from the first if it died before starting one.
    fn finish_undelivered(&self, state: &State) -> usize {
        let mut finished = 0;
        for i in 0..self.fds.len() {
            // SAFETY: recovery runs before any serving thread exists.
            let mut buf = unsafe { self.region.buffer(i) };
            if let Ok(req) = Request::decode(buf.request()) {
                let entries = match req.op {
                    Op::Forget { nlookup } => vec![Forget { nodeid: req.header.nodeid, nlookup }],
                    Op::BatchForget { forgets } => {
                        forgets.iter().map(|f| Forget { nodeid: f.nodeid, nlookup: f.nlookup }).collect()
                    }
                    _ => Vec::new(),
                };
                if !entries.is_empty() {
                    finish_forget(state, &req.header, &entries);
                    finished += 1;
                }
            }
            // Crash before this: the next worker finds the same FORGET and its record again.
            buf.clear();
        }
        finished
    }

    /// The kernel re-sends every request it still waits an answer for.
    fn redelivers(&self, orphan: &Orphan) -> bool {
        !takes_no_reply(orphan.opcode)
    }

    fn fds(&self) -> Vec<i32> {
        self.fds.clone()
    }

    /// Asks the kernel to queue again every request a dead worker read but did not answer.
    fn resume(&self, state: &State) {
        let h = state.region.header();
        if h.init_done.load(Ordering::Acquire) == 0 {
            return; // nothing was read before INIT was answered: INIT itself comes again
        }
        if h.kernel_flags.load(Ordering::Acquire) & abi::HAS_RESEND == 0 {
            tracing::error!(
                "this kernel lacks FUSE_NOTIFY_RESEND (Linux < 6.9): requests the dead worker had \
                 read stay unanswered, and the applications waiting on them hang"
            );
            // Nothing comes back: no orphan record will ever be adopted.
            state.records.drop_all_orphans();
            return;
        }
        match sys::write(self.fds[0], &reply::notify_resend()) {
            Ok(_) => self.resent.store(true, Ordering::Relaxed),
            Err(e) => tracing::error!("FUSE_NOTIFY_RESEND failed: {e}"),
        }
    }

    /// One serving thread per connection fd. After a FUSE_NOTIFY_RESEND the first takes the
    /// re-sent requests in alone, and the others start reading once it has.
    fn spawn(&self, server: &Arc<Server>, ended: i32) -> std::io::Result<()> {
        // A worker that died while taking re-sent requests in left the first fd non-blocking.
        if let Err(e) = sys::set_nonblocking(self.fds[0], false) {
            tracing::warn!("cannot make /dev/fuse blocking again: {e}");
        }
        let resent = self.resent.load(Ordering::Relaxed);
        let taken_in = Arc::new(std::sync::Barrier::new(if resent { self.fds.len() } else { 1 }));
        for (i, &fd) in self.fds.iter().enumerate() {
            // One thread looks for requests before sleeping: several burned the CPUs a
            // workload of several processes needed (4-process metadata on 2 CPUs: 5-25% fewer).
            // Every thread counts the requests it reads for the looking one, if one looks: a
            // shared atomic per request is a cost only looking repays.
            let counted = (!self.spin.is_zero()).then(|| self.read.clone());
            let mut waiting = Waiting::new(if i == 0 { self.spin } else { Duration::ZERO }, counted);
            let server = server.clone();
            let taken_in = taken_in.clone();
            // SAFETY: this thread is the only one serving connection `i`.
            let mut buf = unsafe { self.region.buffer(i) };
            std::thread::Builder::new().name(format!("fuse-{i}")).spawn(move || {
                let mut thread = ServingThread::new(fd, &server);
                prefault(buf.space());
                if resent && i == 0 {
                    thread.take_resent(&mut buf);
                }
                if resent {
                    taken_in.wait();
                }
                thread.serve(&mut buf, &mut waiting);
                sys::eventfd_signal(ended);
            })?;
        }
        Ok(())
    }
}

/// FORGET, BATCH_FORGET and INTERRUPT take no reply: the kernel keeps no copy of them (nothing
/// to re-send), and reads them from queues of their own, ahead of the pending requests.
fn takes_no_reply(opcode: u32) -> bool {
    matches!(abi::Opcode::try_from(opcode), Ok(abi::Opcode::Forget | abi::Opcode::BatchForget | abi::Opcode::Interrupt))
}

/// Finishes one FORGET or BATCH_FORGET (`entries`) a dead worker had read, with the record it
/// left (or a fresh one, if it died before starting one), and frees that record.
fn finish_forget(state: &State, header: &abi::InHeader, entries: &[Forget]) {
    let key = RecordKey::fuse(header.unique).id;
    let records = state.region.records();
    let rec = records.iter().find(|r| r.unique.load(Ordering::Acquire) == key).or_else(|| {
        let free = records.iter().find(|r| r.unique.load(Ordering::Acquire) == 0)?;
        free.start(key, header.opcode, header.nodeid, state.worker_gen());
        Some(free)
    });
    let intent = rec.map_or(Intent::none(), |r| Intent::new(r, true));
    let from = intent.step();
    state.inodes.forget_entries(entries, intent);
    tracing::info!(unique = key, entries = entries.len(), from, "finished a forget the dead worker had read");
    if let Some(r) = rec {
        r.clear();
    }
}

/// The id of the mount on top at `path` (the one the path reaches), from /proc/self/mountinfo.
fn top_mount_at(path: &Path) -> Option<u64> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.as_os_str().as_bytes();
    // (mount id, parent id) of each mount at the path; the top one is no other's parent.
    let at: Vec<(u64, u64)> = info
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let (id, parent) = (fields.next()?.parse().ok()?, fields.next()?.parse().ok()?);
            let point = fields.nth(2)?;
            (unescape_mountinfo(point) == want).then_some((id, parent))
        })
        .collect();
    at.iter().map(|&(id, _)| id).find(|id| !at.iter().any(|&(_, parent)| parent == *id))
}

/// A mountinfo path field with its octal escapes (`\040` for a space, ...) decoded.
fn unescape_mountinfo(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match (b[i], octal) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

fn clone_connection(master: i32) -> Result<i32, Error> {
    let fd = sys::open(c"/dev/fuse", libc::O_RDWR).map_err(Error::Clone)?;
    sys::ioctl_clone_fuse(fd, master).map_err(|e| {
        sys::close(fd);
        Error::Clone(e)
    })?;
    Ok(fd)
}

/// A serving thread: its connection fd, its record, its reply buffer.
struct ServingThread<'s> {
    fd: i32,
    server: &'s Arc<Server>,
    record: ThreadRecord,
    out: ReplyBuf,
}

/// What a read from /dev/fuse brought.
enum Read {
    /// A request of this length.
    Request(usize),
    /// Nothing to read now (a non-blocking read).
    Nothing,
    /// The connection has ended (unmounted or aborted).
    Ended,
}

impl<'s> ServingThread<'s> {
    fn new(fd: i32, server: &'s Arc<Server>) -> ServingThread<'s> {
        let mut out = ReplyBuf::with_capacity(MAX_REQUEST);
        // The kernel copies a request into the connection buffer (and a reply out of `out`)
        // page by page; where a page is not yet mapped it faults it in, and a fault fails while
        // SIGKILL is pending. A worker killed during that copy would make the kernel end the
        // request with EIO, visible to the application. With every page present (and locked
        // where allowed) the copy cannot fail, so the request stays in the processing queue and
        // is re-sent to the next worker.
        out.prefault();
        ServingThread { fd, server, record: server.thread_record(), out }
    }

    /// Reads one request into `buf`, emptied first: an empty buffer tells recovery there is no
    /// request here to finish.
    fn read(&self, buf: &mut ConnBuffer) -> Read {
        loop {
            buf.clear();
            match sys::read(self.fd, buf.space()) {
                Ok(n) => return Read::Request(n),
                Err(e) => match e.raw_os_error() {
                    // Interrupted, or the request was withdrawn before we read it: read again.
                    Some(libc::EINTR | libc::ENOENT) => continue,
                    Some(libc::EAGAIN) => return Read::Nothing,
                    // The file system was unmounted (or the connection aborted).
                    Some(libc::ENODEV) => return Read::Ended,
                    _ => {
                        tracing::error!("reading /dev/fuse: {e}");
                        return Read::Ended;
                    }
                },
            }
        }
    }

    /// Answers requests until the connection goes away.
    fn serve(&mut self, buf: &mut ConnBuffer, waiting: &mut Waiting) {
        loop {
            match waiting.next(self, buf) {
                Read::Request(len) => self.answer(buf, len),
                Read::Nothing => continue,
                Read::Ended => return,
            }
        }
    }

    /// After FUSE_NOTIFY_RESEND, alone on the connection: answers the re-sent requests, which
    /// the kernel queued ahead of every new one, until the first new request (or none is left),
    /// then frees the records of the dead worker's orphans that did not come back: their
    /// replies had gone out before it died (a FUSE unique is never reused, so nothing will
    /// claim them). Without this they would pile up, one or so per death.
    fn take_resent(&mut self, buf: &mut ConnBuffer) {
        // Non-blocking, so that "nothing queued" ends the wait. Crash with it set: the next
        // worker sets it again and `spawn` clears it before any other thread reads.
        if let Err(e) = sys::set_nonblocking(self.fd, true) {
            tracing::warn!("cannot read /dev/fuse without blocking ({e}): orphan records are kept");
            return;
        }
        let mut resent = 0;
        let all_in = loop {
            let len = match self.read(buf) {
                Read::Request(len) => len,
                Read::Nothing => break true,
                Read::Ended => break false,
            };
            let Ok(h) = Request::header_of(buf.first(len)) else {
                self.answer(buf, len);
                continue;
            };
            let again = RecordKey::fuse(h.unique).redelivered;
            // INTERRUPT and FORGET come from queues the kernel reads ahead of the pending one,
            // so only a new request of another kind shows the re-sent ones are all in.
            let newer = !again && !takes_no_reply(h.opcode);
            resent += usize::from(again);
            self.answer(buf, len);
            if newer {
                break true;
            }
        };
        if let Err(e) = sys::set_nonblocking(self.fd, false) {
            tracing::error!("cannot make /dev/fuse blocking again: {e}");
        }
        if all_in {
            // Crash here: the re-sent requests are answered and their records freed; the stale
            // orphans stay orphans, and the next worker drops them after its own re-send.
            crate::crash_point!("resend.taken_in");
            let stale = self.server.drop_orphans();
            tracing::debug!(resent, stale, "took in the re-sent requests; freed the records that did not come back");
        }
    }

    /// Answers the request of `len` bytes in `buf` (on a thread of its own if it may block).
    fn answer(&mut self, buf: &mut ConnBuffer, len: usize) {
        let fd = self.fd;
        let mut exchange = InBuffer { fd, buf, len };
        let delivery = delivery(exchange.request());
        if server::blocks(exchange.request()) {
            let copy = Copied { fd, msg: exchange.request().to_vec() };
            if let Err(mut copy) = self.server.spawn_blocking(copy, delivery) {
                self.server.serve(&mut copy, delivery, &self.record, &mut self.out);
            }
            return;
        }
        // Crash from here until the buffer is emptied (after the reply): a FORGET in `buf` is
        // finished by recovery (the kernel keeps no copy of it); any other request is re-sent
        // by the kernel.
        self.server.serve(&mut exchange, delivery, &self.record, &mut self.out);
    }
}

/// How a serving thread waits for its next request. Sleeping in the kernel's read costs a
/// wake-up per request, and waking a thread on an idle CPU is slow (on this nested VM several
/// times the daemon's own work; docs/benchmarks.md "Serving threads and idle CPUs"), so a caller
/// that issues one request after another pays it on every one. With a `budget`, the thread
/// first keeps reading without blocking for that long, yielding the CPU to anything runnable
/// between tries, and sleeps only if nothing came. The other threads still sleep in the kernel's
/// read and are woken for most requests (the kernel wakes a sleeping reader first), but on a CPU
/// kept awake, which is what makes a request round trip cheaper (docs/benchmarks.md "Looking
/// before sleeping"). After `GIVE_UP` looks in a row that found nothing (a sparse or idle
/// connection) it sleeps at once, looking again only every `PROBE_EVERY`th time it wakes, until
/// a look sees a request come (taken by any thread: `read`, the worker's count of requests
/// read). How long a sleep lasted cannot tell when to look: it includes the slow wake-up itself;
/// nor can whether this thread took the request, since a woken one usually does. The fd is
/// switched to non-blocking for a look and back for a sleep, one fcntl each (its flags are read
/// once); once looking gave up, it stays blocking and sleeps without a try first. Crash
/// consistency is unchanged: a non-blocking read fills the same buffer, and a worker that dies
/// with the fd non-blocking leaves it to the next one's `spawn`, which makes it blocking again.
struct Waiting {
    budget: Duration,
    /// Requests read by any serving thread of this worker; None when no thread looks.
    read: Option<Arc<AtomicU64>>,
    /// Looks in a row that found nothing.
    misses: u32,
    /// Sleeps without a look, for the probes.
    sleeps: u32,
    /// Whether the fd is non-blocking now.
    mode: FdMode,
}

impl Waiting {
    const GIVE_UP: u32 = 8;
    const PROBE_EVERY: u32 = 16;

    fn new(budget: Duration, read: Option<Arc<AtomicU64>>) -> Waiting {
        Waiting { budget, read, misses: 0, sleeps: 0, mode: FdMode::default() }
    }

    fn next(&mut self, thread: &ServingThread<'_>, buf: &mut ConnBuffer) -> Read {
        let r = self.wait(thread, buf);
        if let (Some(read), Read::Request(_)) = (&self.read, &r) {
            read.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn wait(&mut self, thread: &ServingThread<'_>, buf: &mut ConnBuffer) -> Read {
        let Some(read) = self.read.as_deref().filter(|_| !self.budget.is_zero()) else {
            return thread.read(buf);
        };
        let look = self.misses < Self::GIVE_UP || {
            self.sleeps += 1;
            self.sleeps.is_multiple_of(Self::PROBE_EVERY)
        };
        if look && self.mode.set_nonblocking(thread.fd, true) {
            let (t0, seen) = (Instant::now(), read.load(Ordering::Relaxed));
            loop {
                let r = thread.read(buf);
                if !matches!(r, Read::Nothing) {
                    self.misses = 0;
                    return r;
                }
                if t0.elapsed() >= self.budget {
                    break;
                }
                std::thread::yield_now();
            }
            let busy = read.load(Ordering::Relaxed) != seen;
            self.misses = if busy { 0 } else { self.misses.saturating_add(1) };
        }
        self.mode.set_nonblocking(thread.fd, false);
        thread.read(buf)
    }
}

/// A serving thread's fd's O_NONBLOCK, switched with one fcntl (its flags read once).
#[derive(Debug, Default)]
struct FdMode {
    /// The fd's status flags when blocking (read at the first switch).
    blocking_flags: Option<i32>,
    nonblocking: bool,
}

impl FdMode {
    /// Switches `fd` to non-blocking or back unless it is so already; whether it now is as asked.
    fn set_nonblocking(&mut self, fd: i32, on: bool) -> bool {
        if self.nonblocking == on {
            return true;
        }
        let Some(flags) = self.blocking_flags.or_else(|| sys::file_flags(fd).ok()) else {
            return false;
        };
        self.blocking_flags = Some(flags & !libc::O_NONBLOCK);
        let flags = if on { flags | libc::O_NONBLOCK } else { flags & !libc::O_NONBLOCK };
        if sys::set_file_flags(fd, flags).is_err() {
            return false;
        }
        self.nonblocking = on;
        true
    }
}

/// A request in its connection buffer.
struct InBuffer<'b> {
    fd: i32,
    buf: &'b mut ConnBuffer,
    len: usize,
}

impl Exchange for InBuffer<'_> {
    type Sent = ();

    fn request(&self) -> &[u8] {
        self.buf.first(self.len)
    }

    fn reply(&mut self, reply: Option<&[u8]>) {
        send_reply(self.fd, reply);
        // Emptied before the record goes: a crash in between finds a FORGET whose record still
        // says how far it got, never one that recovery would apply again from the start.
        self.buf.clear();
    }
}

/// A request copied out of its connection buffer (one that waits on a thread of its own).
struct Copied {
    fd: i32,
    msg: Vec<u8>,
}

impl Exchange for Copied {
    type Sent = ();

    fn request(&self) -> &[u8] {
        &self.msg
    }

    fn reply(&mut self, reply: Option<&[u8]>) {
        send_reply(self.fd, reply);
    }
}

/// How the server sees a /dev/fuse request: keyed by its unique, with the caller's groups.
fn delivery(msg: &[u8]) -> Delivery {
    let unique = Request::header_of(msg).map_or(0, |h| h.unique);
    Delivery { key: RecordKey::fuse(unique), groups: super::groups::of_caller }
}

fn send_reply(fd: i32, reply: Option<&[u8]>) {
    if let Some(reply) = reply {
        // Crash before the write: the request stays in the kernel's processing queue and is
        // re-sent to the next worker; after it, the reply is out and the record is stale.
        if let Err(e) = sys::write(fd, reply) {
            // ENOENT: the request was interrupted and the kernel no longer waits for it.
            if e.raw_os_error() != Some(libc::ENOENT) {
                tracing::warn!("writing a reply to /dev/fuse: {e}");
            }
        }
    }
}

/// Touches (and, best effort, locks) every page of `buf`, so the kernel never has to fault one
/// in while copying a request; see `ServingThread::new`.
pub fn prefault(buf: &mut [u8]) {
    for b in buf.iter_mut().step_by(4096) {
        // SAFETY: a volatile write to memory we own, so the touch is not optimised away.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
    sys::process::lock_memory(buf);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_unescape_mountinfo_decodes_octal_escapes_only() {
        assert_eq!(unescape_mountinfo(r"/tmp/a\040b\011c\134d"), b"/tmp/a b\tc\\d");
        assert_eq!(unescape_mountinfo(r"/x\04"), br"/x\04", "a cut escape stays as it is");
        assert_eq!(unescape_mountinfo(r"/x\999"), br"/x\999", "not octal");
    }
}
