//! The dispatcher between a transport and the file system: decode one request, call the one
//! `Fs` method for its opcode, encode the reply. Transport-neutral: it takes request bytes and
//! gives reply bytes (or none, for FORGET and INTERRUPT).

use std::sync::atomic::Ordering;

use zerocopy::{Immutable, IntoBytes};

use crate::fs::{self, Context, Fs};
use crate::fuse::{DecodeOptions, Op, ReplyBuf, Request, abi};
use crate::state::HandleKind;
use crate::state::intent::Intent;

/// Largest WRITE payload we accept, advertised at INIT.
pub const MAX_WRITE: u32 = 1 << 20;
/// Room a transport must leave for one request: the largest WRITE plus headers.
pub const MAX_REQUEST: usize = MAX_WRITE as usize + 4096;

/// What the operator allows the kernel to turn on at INIT.
#[derive(Debug, Clone, Copy)]
pub struct InitPolicy {
    pub writeback: bool,
    /// Record locks served by the daemon (else the kernel keeps them, as with virtiofsd).
    pub posix_locks: bool,
    pub flock_locks: bool,
    pub readdirplus: bool,
    pub posix_acl: bool,
    pub auto_inval_data: bool,
}

pub struct Server {
    pub fs: Fs,
    policy: InitPolicy,
    /// Whether requests carry intent records (crash recovery on).
    recovery: bool,
    /// Blocking locks (SETLKW) by request unique (without the resend bit): INTERRUPT wakes them.
    waiters: std::sync::Mutex<std::collections::HashMap<u64, Waiter>>,
}

/// A blocking request between being read and its answer.
enum Waiter {
    /// Read, its thread not yet waiting; `interrupted` if an INTERRUPT came in the meantime.
    Starting { interrupted: bool },
    /// Waiting on this thread.
    Waiting(libc::pthread_t),
}

/// The signal that wakes a thread waiting in a blocking lock (its handler does nothing; it is
/// installed without SA_RESTART, so the wait returns EINTR).
pub const WAKE_SIGNAL: i32 = libc::SIGUSR1;

/// Installs the no-op handler for `WAKE_SIGNAL` (once per process, before serving).
pub fn install_wake_handler() {
    extern "C" fn wake(_: libc::c_int) {}
    // SAFETY: a zeroed sigaction with a plain handler that does nothing (async-signal-safe).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = wake as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(WAKE_SIGNAL, &sa, std::ptr::null_mut());
    }
}

/// Where a request came from, which decides how its intent record is keyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// /dev/fuse: keyed by the FUSE unique; the kernel marks a re-sent request with bit 63.
    Fuse,
    /// A virtqueue: keyed by the transport (queue and pop counter: the guest's FUSE unique is
    /// not trusted to be unique); `replay` when a fresh worker runs an in-flight head again.
    Virtqueue { key: u64, replay: bool },
}

/// A serving thread's own intent record (none when recovery is off).
#[derive(Debug)]
pub struct ThreadRecord(Option<u32>);

/// What a transport hands back after writing a reply (or deciding there is none), so the
/// request's record is freed only once the reply is out.
#[must_use]
#[derive(Debug)]
pub struct Completion {
    record: Option<(u32, bool)>,
}

impl Server {
    /// A server over `fs`. The INIT outcome lives in the state region, so a server made by a
    /// worker that replaces a dead one serves on without a new INIT.
    pub fn new(fs: Fs, policy: InitPolicy, recovery: bool) -> Server {
        let server = Server { fs, policy, recovery, waiters: Default::default() };
        let h = server.fs.state.region.header();
        if h.init_done.load(Ordering::Acquire) != 0 {
            server.fs.set_writeback(h.negotiated.load(Ordering::Acquire) & abi::WRITEBACK_CACHE != 0);
        }
        server
    }

    fn initialized(&self) -> bool {
        self.fs.state.region.header().init_done.load(Ordering::Acquire) != 0
    }

    /// The record a new serving thread will use for its requests.
    pub fn thread_record(&self) -> ThreadRecord {
        ThreadRecord(if self.recovery { self.fs.state.records.claim() } else { None })
    }

    /// Gives back the record of a thread that stops serving (a blocking-lock waiter).
    pub fn release_thread_record(&self, r: ThreadRecord) {
        if let Some(i) = r.0 {
            self.fs.state.records.release(i);
        }
    }

    /// Whether `msg` may wait indefinitely (SETLKW): a transport runs such a request on a
    /// thread of its own (so waiting locks can never occupy every serving thread), calling
    /// `blocking_read` before it starts that thread and `handle_blocking` on it.
    pub fn blocks(msg: &[u8]) -> bool {
        Request::header_of(msg).is_ok_and(|h| h.opcode == abi::Opcode::Setlkw as u32)
    }

    /// A blocking request's unique id as sent, and its waiter key (without the resend bit).
    fn waiter_key(msg: &[u8]) -> (u64, u64) {
        let unique = Request::header_of(msg).map_or(0, |h| h.unique);
        (unique, unique & !abi::UNIQUE_RESEND)
    }

    /// Notes a blocking request as read, so an INTERRUPT arriving before its thread waits is
    /// kept for it rather than lost.
    pub fn blocking_read(&self, msg: &[u8]) {
        self.waiters.lock().unwrap().insert(Self::waiter_key(msg).1, Waiter::Starting { interrupted: false });
    }

    /// Runs a blocking request (see `blocks`) on the calling thread, registered so that an
    /// INTERRUPT for it can wake it; the record is the caller's own (a fresh `thread_record`).
    pub fn handle_blocking<'o>(
        &self,
        msg: &[u8],
        origin: Origin,
        groups: impl Fn(u32, u32) -> Vec<u32>,
        out: &'o mut ReplyBuf,
        own: &ThreadRecord,
    ) -> (Option<&'o [u8]>, Completion) {
        let (unique, key) = Self::waiter_key(msg);
        {
            let mut waiters = self.waiters.lock().unwrap();
            if let Some(Waiter::Starting { interrupted: true }) = waiters.get(&key) {
                waiters.remove(&key);
                return (Some(out.finish_err(unique, libc::EINTR)), Completion { record: None });
            }
            // SAFETY: pthread_self has no preconditions.
            waiters.insert(key, Waiter::Waiting(unsafe { libc::pthread_self() }));
        }
        let r = self.handle(msg, origin, groups, out, own);
        // Removed before this thread can exit, under the lock `interrupt` signals under: a wake
        // signal never targets a thread that is gone.
        self.waiters.lock().unwrap().remove(&key);
        r
    }

    /// INTERRUPT: wakes the thread waiting on request `unique` (its lock call returns EINTR,
    /// which becomes its reply), or marks it interrupted if its thread is not waiting yet. (One
    /// that lands in the few instructions between registering and entering the lock call is
    /// still lost; the lock then waits until granted or the file is released.)
    fn interrupt(&self, unique: u64) {
        let mut waiters = self.waiters.lock().unwrap();
        match waiters.get_mut(&(unique & !abi::UNIQUE_RESEND)) {
            // SAFETY: the thread is registered, so it has not exited (see handle_blocking).
            Some(Waiter::Waiting(thread)) => unsafe {
                libc::pthread_kill(*thread, WAKE_SIGNAL);
            },
            Some(Waiter::Starting { interrupted }) => *interrupted = true,
            None => {}
        }
    }

    /// Frees a request's record after its reply was written.
    pub fn complete(&self, c: Completion) {
        // Only a supervisor reads it (to tell a crash loop from progress).
        if self.recovery {
            self.fs.state.region.header().served.fetch_add(1, Ordering::Relaxed);
        }
        if let Some((i, adopted)) = c.record {
            self.fs.state.records.get(i).clear();
            if adopted {
                self.fs.state.records.release(i);
            }
        }
    }

    /// Picks the record for request `h`: the orphan a dead worker left for it when it is a
    /// resend (or replay), otherwise the thread's own, started afresh.
    fn intent_for(&self, h: &abi::InHeader, origin: Origin, own: &ThreadRecord) -> (Intent, Option<(u32, bool)>) {
        let Some(own) = own.0 else { return (Intent::none(), None) };
        let records = &self.fs.state.records;
        let (unique, again) = match origin {
            Origin::Fuse => (h.unique & !abi::UNIQUE_RESEND, h.unique & abi::UNIQUE_RESEND != 0),
            Origin::Virtqueue { key, replay } => (key, replay),
        };
        if again && let Some(i) = records.adopt(unique, self.fs.state.worker_gen()) {
            return (Intent::new(records.get(i), true), Some((i, true)));
        }
        records.get(own).start(unique, h.opcode, h.nodeid, self.fs.state.worker_gen());
        (Intent::new(records.get(own), false), Some((own, false)))
    }

    /// A request in flight at two worker deaths is answered EIO and dropped from replay, after
    /// giving back the lookups and handle its attempts took (the guest never saw them).
    fn abandon(&self, intent: Intent) {
        for nodeid in intent.raised().into_iter().rev() {
            self.fs.state.inodes.unraise(nodeid, intent);
        }
        let fh = intent.handle();
        if fh != 0 {
            let _ = self.fs.state.handles.release(fh, HandleKind::File);
            let _ = self.fs.state.handles.release(fh, HandleKind::Dir);
        }
    }

    /// Handles one request. `groups` supplies the caller's supplementary groups (by pid) where
    /// the transport can know them. Returns the reply to send, or `None` when the request takes
    /// no reply or is too broken to address one.
    pub fn handle<'o>(
        &self,
        msg: &[u8],
        origin: Origin,
        groups: impl Fn(u32, u32) -> Vec<u32>,
        out: &'o mut ReplyBuf,
        own: &ThreadRecord,
    ) -> (Option<&'o [u8]>, Completion) {
        let none = Completion { record: None };
        out.clear();
        let opts = DecodeOptions { setxattr_ext: false };
        let req = match Request::decode(msg, opts) {
            Ok(r) => r,
            Err(e) => {
                return match Request::header_of(msg) {
                    Ok(h) => {
                        tracing::warn!(unique = h.unique, opcode = h.opcode, "malformed request: {e}");
                        (Some(out.finish_err(h.unique, e.errno())), none)
                    }
                    Err(_) => {
                        tracing::warn!(len = msg.len(), "dropping request without a usable header: {e}");
                        (None, none)
                    }
                };
            }
        };
        let h = req.header;
        let unique = h.unique;
        if !self.initialized() && !matches!(req.op, Op::Init { .. }) {
            tracing::warn!(unique, opcode = h.opcode, "request before INIT");
            return (Some(out.finish_err(unique, libc::EIO)), none);
        }
        let (intent, record) = self.intent_for(&h, origin, own);
        let done = Completion { record };
        if intent.is_replay() {
            let deaths = intent.record().map_or(0, |r| r.deaths.load(Ordering::Relaxed));
            if deaths >= 2 {
                tracing::error!(
                    unique,
                    opcode = h.opcode,
                    deaths,
                    "request was in flight at {deaths} worker deaths: answering EIO"
                );
                self.abandon(intent);
                return (Some(out.finish_err(unique, libc::EIO)), done);
            }
            tracing::debug!(unique, opcode = h.opcode, step = intent.step(), "replaying");
        }
        let groups = if h.uid != 0 { groups(h.pid, h.uid) } else { Vec::new() };
        let ctx = Context { uid: h.uid, gid: h.gid, pid: h.pid, groups, intent };
        let node = h.nodeid;
        let fs = &self.fs;
        let r: fs::Result<()> = match req.op {
            Op::Init { arg, flags2 } => return (Some(self.init(unique, &arg, flags2, out)), done),
            Op::Destroy => Ok(()),
            Op::Forget { nlookup } => {
                fs.forget(&[abi::ForgetOne { nodeid: node, nlookup }], intent);
                return (None, done);
            }
            Op::BatchForget { forgets } => {
                fs.forget(&forgets, intent);
                return (None, done);
            }
            // INTERRUPT takes no answer. Only a waiting lock can take long enough to be worth
            // waking; every other operation finishes promptly.
            Op::Interrupt { unique } => {
                self.interrupt(unique);
                return (None, done);
            }
            Op::Lookup { name } => fs.lookup(&ctx, node, name).map(|e| out.push_obj(&e)),
            Op::Getattr { fh } => fs.getattr(node, fh).map(|a| out.push_obj(&a)),
            Op::Setattr(a) => fs.setattr(&ctx, node, &a).map(|a| out.push_obj(&a)),
            Op::Readlink => fs.readlink(node).map(|t| out.push_bytes(&t)),
            Op::Symlink { name, target } => fs.symlink(&ctx, node, name, target).map(|e| out.push_obj(&e)),
            Op::Mknod { arg, name } => fs.mknod(&ctx, node, name, &arg).map(|e| out.push_obj(&e)),
            Op::Mkdir { arg, name } => fs.mkdir(&ctx, node, name, &arg).map(|e| out.push_obj(&e)),
            Op::Unlink { name } => fs.unlink(&ctx, node, name),
            Op::Rmdir { name } => fs.rmdir(&ctx, node, name),
            Op::Rename { newdir, flags, name, newname } => fs.rename(&ctx, node, name, newdir, newname, flags),
            Op::Link { oldnodeid, name } => fs.link(&ctx, oldnodeid, node, name).map(|e| out.push_obj(&e)),
            Op::Open(a) => fs.open(&ctx, node, &a).map(|o| out.push_obj(&o)),
            Op::Opendir(a) => fs.opendir(&ctx, node, &a).map(|o| out.push_obj(&o)),
            Op::Create { arg, name } => fs.create(&ctx, node, name, &arg).map(|(e, o)| push2(out, &e, &o)),
            Op::Tmpfile { arg } => fs.tmpfile(&ctx, node, &arg).map(|(e, o)| push2(out, &e, &o)),
            Op::Read(a) => fs.read(a.fh, a.offset, a.size.min(MAX_WRITE), out),
            Op::Write { arg, data } => fs.write(&ctx, arg.fh, arg.offset, data).map(|w| out.push_obj(&w)),
            Op::Flush(a) => fs.flush(a.fh, a.lock_owner),
            Op::Release(a) => fs.release(&ctx, a.fh, HandleKind::File),
            Op::Releasedir(a) => fs.releasedir(&ctx, a.fh),
            Op::Fsync(a) => fs.fsync(a.fh, HandleKind::File, a.fsync_flags & 1 != 0),
            Op::Fsyncdir(a) => fs.fsync(a.fh, HandleKind::Dir, a.fsync_flags & 1 != 0),
            Op::Readdir(a) => fs.readdir(&ctx, &a, false, out),
            Op::Readdirplus(a) => fs.readdir(&ctx, &a, true, out),
            Op::Statfs => fs.statfs(node).map(|s| out.push_obj(&s)),
            Op::Access(a) => fs.access(&ctx, node, a.mask),
            Op::Setxattr { flags, name, value, .. } => fs.setxattr(&ctx, node, name, value, flags),
            Op::Getxattr { size, name } => fs.getxattr(&ctx, node, name, size, out).map(|r| push_xattr(out, r)),
            Op::Listxattr { size } => fs.listxattr(&ctx, node, size, out).map(|r| push_xattr(out, r)),
            Op::Removexattr { name } => fs.removexattr(&ctx, node, name),
            Op::Getlk(a) => fs.getlk(&a).map(|l| out.push_obj(&l)),
            Op::Setlk { arg, sleep } => fs.setlk(&arg, sleep),
            Op::Fallocate(a) => fs.fallocate(&a),
            Op::Lseek(a) => fs.lseek(&a).map(|l| out.push_obj(&l)),
            Op::CopyFileRange(a) => fs.copy_file_range(&a).map(|w| out.push_obj(&w)),
            Op::Syncfs => fs.syncfs(node),
            Op::Unsupported(_) => Err(fs::Error::NotSupported),
        };
        crate::crash_point!("reply.before_send");
        let reply = match r {
            Ok(()) => out.finish_ok(unique),
            Err(e) => {
                tracing::debug!(unique, opcode = h.opcode, "{e}");
                out.finish_err(unique, e.errno())
            }
        };
        (Some(reply), done)
    }

    fn init<'o>(&self, unique: u64, arg: &abi::InitIn, flags2: u32, out: &'o mut ReplyBuf) -> &'o [u8] {
        if arg.major < abi::KERNEL_VERSION
            || (arg.major == abi::KERNEL_VERSION && arg.minor < abi::MIN_KERNEL_MINOR_VERSION)
        {
            tracing::error!(major = arg.major, minor = arg.minor, "kernel FUSE protocol too old (need 7.31+)");
            return out.finish_err(unique, libc::EPROTO);
        }
        let mut reply =
            abi::InitOut { major: abi::KERNEL_VERSION, minor: abi::KERNEL_MINOR_VERSION, ..Default::default() };
        if arg.major > abi::KERNEL_VERSION {
            // Answer with our major only; the kernel sends INIT again at our version.
            out.push_obj(&reply);
            return out.finish_ok(unique);
        }
        let offered = u64::from(arg.flags) | (u64::from(flags2) << 32);
        // Not ATOMIC_O_TRUNC: with it the kernel sends O_TRUNC inside OPEN, which the daemon
        // carries out before the kernel's own checks after the open (ETXTBSY for a file being
        // executed) can refuse it: open(O_RDONLY|O_TRUNC) of a running binary failed with
        // ETXTBSY yet truncated it, and the binary then died loading its pages (pjdfstest
        // open::etxtbsy, intermittently). Without it the kernel truncates with a SETATTR after
        // those checks, as a local file system would.
        let mut want =
            abi::ASYNC_READ | abi::BIG_WRITES | abi::PARALLEL_DIROPS | abi::MAX_PAGES | abi::ASYNC_DIO | abi::INIT_EXT;
        if self.policy.posix_locks {
            want |= abi::POSIX_LOCKS;
        }
        if self.policy.flock_locks {
            want |= abi::FLOCK_LOCKS;
        }
        if self.policy.readdirplus {
            want |= abi::DO_READDIRPLUS | abi::READDIRPLUS_AUTO;
        }
        if self.policy.writeback {
            want |= abi::WRITEBACK_CACHE;
        }
        if self.policy.auto_inval_data {
            want |= abi::AUTO_INVAL_DATA;
        }
        if self.policy.posix_acl {
            want |= abi::POSIX_ACL;
        }
        let agreed = offered & want;
        self.fs.set_writeback(agreed & abi::WRITEBACK_CACHE != 0);
        let header = self.fs.state.region.header();
        // A second INIT starts a new session (a virtio guest that rebooted; the kernel sends one
        // INIT per /dev/fuse connection): the old session's nodes and handles go. Crash inside:
        // the INIT is replayed and the reset, idempotent, finishes.
        if header.init_done.load(Ordering::Acquire) != 0 {
            self.fs.reset_session();
        }
        header.kernel_flags.store(offered, Ordering::Release);
        header.negotiated.store(agreed, Ordering::Release);
        // Crash after this store: a later worker serves without INIT; the INIT request itself
        // is re-sent and answered again with the same outcome.
        header.init_done.store(1, Ordering::Release);
        crate::crash_point!("init.after_record");
        reply.max_readahead = arg.max_readahead;
        reply.flags = agreed as u32;
        reply.flags2 = (agreed >> 32) as u32;
        reply.max_background = 64;
        reply.congestion_threshold = 48;
        reply.max_write = MAX_WRITE;
        reply.time_gran = 1;
        reply.max_pages = (MAX_WRITE / 4096) as u16;
        tracing::info!(
            kernel = format!("{}.{}", arg.major, arg.minor),
            resend = offered & abi::HAS_RESEND != 0,
            flags = format!("{agreed:#x}"),
            "FUSE session initialised"
        );
        out.push_obj(&reply);
        out.finish_ok(unique)
    }
}

fn push2<A: IntoBytes + Immutable, B: IntoBytes + Immutable>(out: &mut ReplyBuf, a: &A, b: &B) {
    out.push_obj(a);
    out.push_obj(b);
}

fn push_xattr(out: &mut ReplyBuf, r: fs::XattrReply) {
    if let fs::XattrReply::Size(s) = r {
        out.push_obj(&s);
    }
}
