//! The dispatcher between a transport and the file system: decode one request, call the one
//! `Fs` method for its opcode, encode the reply, hand it to the transport. Transport-neutral:
//! it takes request bytes and gives reply bytes (or none, for FORGET and INTERRUPT).
//!
//! Around the dispatch, in modules of their own: INIT negotiation (`init`), the life of a
//! request's intent record (`record`), and requests that may wait indefinitely (`blocking`).

mod blocking;
mod init;
mod record;

use std::sync::Arc;

use zerocopy::{Immutable, IntoBytes};

use crate::fs::{self, Context, Fs};
use crate::fuse::{DirEntry, MAX_WRITE, Op, ReplyBuf, Request, abi};
use crate::state::{Forget, HandleKind, State};
use crate::sys::{self, IoVec};

pub use blocking::{WAKE_SIGNAL, blocks, install_wake_handler};
pub use init::InitPolicy;
pub use record::{RecordKey, ThreadRecord};

/// One request as its transport holds it: the bytes, and the way back for the reply.
pub trait Exchange {
    /// What sending the reply tells the transport (e.g. a ring error).
    type Sent;
    /// The request's bytes. The server reads them only before it replies.
    fn request(&self) -> &[u8];
    /// Sends the reply (None: the request takes no reply, or is too broken to address one).
    /// The server lets the request's intent record go only after this returns, so whatever the
    /// transport must do before the record is gone (emptying the buffer a FORGET was read
    /// into) belongs here.
    fn reply(&mut self, reply: Option<&[u8]>) -> Self::Sent;
    /// A WRITE's data, when the transport left it where it arrived (a virtqueue's guest
    /// buffers) instead of copying it behind `request()`'s bytes, which then end with the
    /// WRITE's arguments. The server writes the file straight from it.
    fn write_data(&self) -> Option<&[IoVec]> {
        None
    }
}

/// What a transport tells the server about a request besides its bytes.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    /// How the request's intent record is keyed (the transport's choice).
    pub key: RecordKey,
    /// The caller's supplementary groups by pid, where the transport can know them.
    pub groups: fn(pid: u32) -> Vec<u32>,
}

pub struct Server {
    fs: Fs,
    state: Arc<State>,
    policy: InitPolicy,
    /// Whether requests carry intent records (crash recovery on).
    recovery: bool,
    waiters: blocking::Waiters,
}

impl Server {
    /// A server over `fs` and its `state`. The INIT outcome lives in the state region, so a
    /// server made by a worker that replaces a dead one serves on without a new INIT.
    pub fn new(fs: Fs, state: Arc<State>, policy: InitPolicy, recovery: bool) -> Server {
        let server = Server { fs, state, policy, recovery, waiters: Default::default() };
        server.resume_session();
        server
    }

    /// Worker start, after recovery: FUSE passthrough's per-node counts and orphaned backing ids
    /// (fs/passthrough.rs `recover_passthrough`).
    pub fn recover_passthrough(&self, live: &[crate::state::LiveHandle], released: &[u32]) -> usize {
        self.fs.recover_passthrough(live, released)
    }

    /// VM live migration, source: this session's device state (fs/migrate.rs).
    pub fn export_state(&self) -> Result<(Vec<u8>, crate::fs::migrate::Summary), crate::fs::migrate::Error> {
        self.fs.export_state()
    }

    /// VM live migration, destination: loads a device state into the tables (fs/migrate.rs).
    pub fn import_state(&self, bytes: &[u8]) -> Result<crate::fs::migrate::Summary, crate::fs::migrate::Error> {
        self.fs.import_state(bytes)
    }

    /// Serves one request: runs it with the thread's record (or the orphan record a dead worker
    /// left for it), sends the reply through the exchange, and only then lets the record go.
    pub fn serve<E: Exchange>(
        &self,
        exchange: &mut E,
        delivery: Delivery,
        thread: &ThreadRecord,
        out: &mut ReplyBuf,
    ) -> E::Sent {
        let (reply, in_flight) = self.handle(exchange.request(), exchange.write_data(), delivery, thread, out);
        let sent = exchange.reply(reply);
        // Crash before this drop: the reply is out but the record stays; see `Record::clear`.
        drop(in_flight);
        sent
    }

    fn handle<'o>(
        &self,
        msg: &[u8],
        left_out: Option<&[IoVec]>,
        delivery: Delivery,
        thread: &ThreadRecord,
        out: &'o mut ReplyBuf,
    ) -> (Option<&'o [u8]>, record::InFlight<'_>) {
        out.clear();
        let untracked = record::InFlight::untracked(self);
        let left_out_len = left_out.map_or(0, |d| sys::Source::Vectored(d).len());
        let req = match Request::decode_with(msg, left_out_len) {
            Ok(r) => r,
            Err(e) => {
                let Ok(h) = Request::header_with(msg, left_out_len) else {
                    tracing::warn!(len = msg.len(), "dropping request without a usable header: {e}");
                    return (None, untracked);
                };
                tracing::warn!(unique = h.unique, opcode = h.opcode, "malformed request: {e}");
                return (Some(out.finish_err(h.unique, e.errno())), untracked);
            }
        };
        let h = req.header;
        let unique = h.unique;
        if !self.initialized() && !matches!(req.op, Op::Init { .. }) {
            tracing::warn!(unique, opcode = h.opcode, "request before INIT");
            return (Some(out.finish_err(unique, libc::EIO)), untracked);
        }
        // --readonly: refused before anything is recorded or touched, so there is nothing to
        // replay and no state to keep exact.
        if self.fs.readonly() && modifies(&req.op) {
            return (Some(out.finish_err(unique, libc::EROFS)), untracked);
        }
        let in_flight = record::InFlight::start(self, &h, delivery.key, thread);
        let intent = in_flight.intent();
        if in_flight.is_poisoned() {
            self.abandon(intent);
            return (Some(out.finish_err(unique, libc::EIO)), in_flight);
        }
        let mut groups = if h.uid != 0 { (delivery.groups)(h.pid) } else { Vec::new() };
        // The host's view of the caller (--translate-uid/gid; unchanged without them).
        let (uid, gid, forbidden) = match self.fs.host_caller(h.uid, h.gid, &mut groups) {
            Some((uid, gid)) => (uid, gid, false),
            None => (h.uid, h.gid, true),
        };
        // FUSE_SECURITY_CTX: a creation's label, from the request's extensions.
        let secctx = match &req.op {
            Op::Mknod { .. } | Op::Mkdir { .. } | Op::Symlink { .. } | Op::Create { .. } | Op::Tmpfile { .. }
                if self.fs.security_ctx() =>
            {
                match crate::fuse::ext::security_context(crate::fuse::ext::extensions(msg)) {
                    Ok(c) => c.map(|c| (c.name.to_owned(), c.value.to_vec())),
                    Err(e) => return (Some(out.finish_err(unique, e.errno())), in_flight),
                }
            }
            _ => None,
        };
        let ctx = Context { uid, gid, pid: h.pid, groups, intent, forbidden, secctx };
        let node = h.nodeid;
        let fs = &self.fs;
        let r: fs::Result<()> = match req.op {
            Op::Init { arg, flags2 } => return (Some(self.init(unique, &arg, flags2, out)), in_flight),
            Op::Destroy => Ok(()),
            Op::Forget { nlookup } => {
                fs.forget(&[Forget { nodeid: node, nlookup }], intent);
                return (None, in_flight);
            }
            Op::BatchForget { forgets } => {
                let entries: Vec<Forget> =
                    forgets.iter().map(|f| Forget { nodeid: f.nodeid, nlookup: f.nlookup }).collect();
                fs.forget(&entries, intent);
                return (None, in_flight);
            }
            // INTERRUPT takes no answer. Only a waiting lock can take long enough to be worth
            // waking; every other operation finishes promptly.
            Op::Interrupt { unique } => {
                self.waiters.interrupt(unique);
                return (None, in_flight);
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
            Op::Write { arg, data } => {
                let kill = arg.write_flags & abi::WRITE_KILL_SUIDGID != 0;
                let data = left_out.map_or(sys::Source::Bytes(data), sys::Source::Vectored);
                fs.write(&ctx, arg.fh, arg.offset, data, kill).map(|w| out.push_obj(&w))
            }
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
            Op::Fallocate(a) => fs.fallocate(&ctx, &a),
            Op::Lseek(a) => fs.lseek(&a).map(|l| out.push_obj(&l)),
            Op::CopyFileRange(a) => fs.copy_file_range(&ctx, &a).map(|w| out.push_obj(&w)),
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
        (Some(reply), in_flight)
    }
}

/// Whether a request would change the share (refused with EROFS under `--readonly`, as
/// virtiofsd does): every namespace, data, attribute and xattr change, an open for writing or
/// with O_TRUNC (O_RDONLY|O_TRUNC truncates on the host), and ACCESS for W_OK. Locks, fsync and
/// syncfs change nothing and pass.
fn modifies(op: &Op<'_>) -> bool {
    match op {
        Op::Setattr(_)
        | Op::Symlink { .. }
        | Op::Mknod { .. }
        | Op::Mkdir { .. }
        | Op::Unlink { .. }
        | Op::Rmdir { .. }
        | Op::Rename { .. }
        | Op::Link { .. }
        | Op::Create { .. }
        | Op::Tmpfile { .. }
        | Op::Write { .. }
        | Op::Setxattr { .. }
        | Op::Removexattr { .. }
        | Op::Fallocate(_)
        | Op::CopyFileRange(_) => true,
        Op::Open(a) => a.flags as i32 & (libc::O_ACCMODE | libc::O_TRUNC) != libc::O_RDONLY,
        Op::Access(a) => a.mask as i32 & libc::W_OK != 0,
        _ => false,
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

/// fs/ writes payloads it produces in place (READ data, xattr bytes, directory entries) into
/// the reply buffer through this seam.
impl fs::Payload for ReplyBuf {
    fn tail_mut(&mut self, len: usize) -> &mut [u8] {
        ReplyBuf::tail_mut(self, len)
    }

    fn truncate(&mut self, len: usize) {
        self.truncate_payload(len);
    }

    fn written(&self) -> usize {
        self.payload_len()
    }

    fn pread(&mut self, fd: i32, offset: u64, len: usize) -> std::io::Result<usize> {
        self.pread_payload(fd, offset, len)
    }

    fn push_dirent(&mut self, limit: usize, ent: &DirEntry<'_>) -> bool {
        ReplyBuf::push_dirent(self, limit, ent)
    }

    fn fits_direntplus(&self, limit: usize, namelen: usize) -> bool {
        ReplyBuf::fits_direntplus(self, limit, namelen)
    }

    fn push_direntplus(&mut self, entry: &abi::EntryOut, ent: &DirEntry<'_>) {
        ReplyBuf::push_direntplus(self, entry, ent);
    }
}
