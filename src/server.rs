//! The dispatcher between a transport and the file system: decode one request, call the one
//! `Fs` method for its opcode, encode the reply. Transport-neutral: it takes request bytes and
//! gives reply bytes (or none, for FORGET and INTERRUPT).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use zerocopy::{Immutable, IntoBytes};

use crate::fs::{self, Context, Fs};
use crate::fuse::{DecodeOptions, Op, ReplyBuf, Request, abi};
use crate::state::HandleKind;

/// Largest WRITE payload we accept, advertised at INIT.
pub const MAX_WRITE: u32 = 1 << 20;
/// Room a transport must leave for one request: the largest WRITE plus headers.
pub const MAX_REQUEST: usize = MAX_WRITE as usize + 4096;

/// What the operator allows the kernel to turn on at INIT.
#[derive(Debug, Clone, Copy)]
pub struct InitPolicy {
    pub writeback: bool,
    pub readdirplus: bool,
    pub posix_acl: bool,
    pub auto_inval_data: bool,
}

pub struct Server {
    pub fs: Fs,
    policy: InitPolicy,
    initialized: AtomicBool,
    /// Negotiated INIT flags (flags | flags2 << 32), 0 before INIT.
    negotiated: AtomicU64,
}

impl Server {
    pub fn new(fs: Fs, policy: InitPolicy) -> Server {
        Server { fs, policy, initialized: AtomicBool::new(false), negotiated: AtomicU64::new(0) }
    }

    pub fn negotiated(&self) -> u64 {
        self.negotiated.load(Ordering::Acquire)
    }

    /// Handles one request. `groups` supplies the caller's supplementary groups (by pid) where
    /// the transport can know them. Returns the reply to send, or `None` when the request takes
    /// no reply or is too broken to address one.
    pub fn handle<'o>(
        &self,
        msg: &[u8],
        groups: impl Fn(u32, u32) -> Vec<u32>,
        out: &'o mut ReplyBuf,
    ) -> Option<&'o [u8]> {
        out.clear();
        let opts = DecodeOptions { setxattr_ext: false };
        let req = match Request::decode(msg, opts) {
            Ok(r) => r,
            Err(e) => {
                return match Request::header_of(msg) {
                    Ok(h) => {
                        tracing::warn!(unique = h.unique, opcode = h.opcode, "malformed request: {e}");
                        Some(out.finish_err(h.unique, e.errno()))
                    }
                    Err(_) => {
                        tracing::warn!(len = msg.len(), "dropping request without a usable header: {e}");
                        None
                    }
                };
            }
        };
        let h = req.header;
        let unique = h.unique;
        if !self.initialized.load(Ordering::Acquire) && !matches!(req.op, Op::Init { .. }) {
            tracing::warn!(unique, opcode = h.opcode, "request before INIT");
            return Some(out.finish_err(unique, libc::EIO));
        }
        let ctx = Context { uid: h.uid, gid: h.gid, pid: h.pid, groups: Vec::new() };
        let ctx = if h.uid != 0 { Context { groups: groups(h.pid, h.uid), ..ctx } } else { ctx };
        let node = h.nodeid;
        let fs = &self.fs;
        let r: fs::Result<()> = match req.op {
            Op::Init { arg, flags2 } => return Some(self.init(unique, &arg, flags2, out)),
            Op::Destroy => Ok(()),
            Op::Forget { nlookup } => {
                fs.forget(node, nlookup);
                return None;
            }
            Op::BatchForget { forgets } => {
                for f in &forgets {
                    fs.forget(f.nodeid, f.nlookup);
                }
                return None;
            }
            // INTERRUPT needs no answer; operations here finish promptly or are restartable.
            Op::Interrupt { .. } => return None,
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
            Op::Write { arg, data } => fs.write(arg.fh, arg.offset, data).map(|w| out.push_obj(&w)),
            Op::Flush(a) => fs.flush(a.fh, a.lock_owner),
            Op::Release(a) => fs.release(a.fh, HandleKind::File),
            Op::Releasedir(a) => fs.releasedir(a.fh),
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
        Some(match r {
            Ok(()) => out.finish_ok(unique),
            Err(e) => {
                tracing::debug!(unique, opcode = h.opcode, "{e}");
                out.finish_err(unique, e.errno())
            }
        })
    }

    fn init<'o>(&self, unique: u64, arg: &abi::InitIn, flags2: u32, out: &'o mut ReplyBuf) -> &'o [u8] {
        if arg.major < abi::KERNEL_VERSION || (arg.major == abi::KERNEL_VERSION && arg.minor < abi::MIN_KERNEL_MINOR_VERSION) {
            tracing::error!(major = arg.major, minor = arg.minor, "kernel FUSE protocol too old (need 7.31+)");
            return out.finish_err(unique, libc::EPROTO);
        }
        let mut reply = abi::InitOut { major: abi::KERNEL_VERSION, minor: abi::KERNEL_MINOR_VERSION, ..Default::default() };
        if arg.major > abi::KERNEL_VERSION {
            // Answer with our major only; the kernel sends INIT again at our version.
            out.push_obj(&reply);
            return out.finish_ok(unique);
        }
        let offered = u64::from(arg.flags) | (u64::from(flags2) << 32);
        let mut want = abi::ASYNC_READ
            | abi::POSIX_LOCKS
            | abi::ATOMIC_O_TRUNC
            | abi::BIG_WRITES
            | abi::FLOCK_LOCKS
            | abi::PARALLEL_DIROPS
            | abi::MAX_PAGES
            | abi::ASYNC_DIO
            | abi::INIT_EXT;
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
        reply.max_readahead = arg.max_readahead;
        reply.flags = agreed as u32;
        reply.flags2 = (agreed >> 32) as u32;
        reply.max_background = 64;
        reply.congestion_threshold = 48;
        reply.max_write = MAX_WRITE;
        reply.time_gran = 1;
        reply.max_pages = (MAX_WRITE / 4096) as u16;
        self.negotiated.store(agreed, Ordering::Release);
        self.initialized.store(true, Ordering::Release);
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
