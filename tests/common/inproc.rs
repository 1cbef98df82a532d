//! An in-process `Server` over a scratch share, fed raw FUSE frames: the hostile suite and the
//! FUSE fuzz campaign send their requests through it (a part of tests/common).
//!
//! The share `top/share` holds a file, a directory and symlinks pointing outside; `top/outside`
//! next to it holds files that no request may reach.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use phoenixfsd::fs::{self, EntryTimeouts, Fs};
use phoenixfsd::fuse::abi::{self, Opcode};
use phoenixfsd::fuse::encode::{Sender, encode_request, frame};
use phoenixfsd::fuse::{Op, ReplyBuf};
use phoenixfsd::server::{Delivery, Exchange, InitPolicy, RecordKey, Server, ThreadRecord};
use phoenixfsd::state::{Region, State};
use zerocopy::FromBytes;

pub struct Harness {
    pub server: Server,
    /// The tables the server keeps, for consistency checks.
    pub state: Arc<State>,
    out: ReplyBuf,
    record: ThreadRecord,
    unique: u64,
    _tmp: tempfile::TempDir,
    pub top: PathBuf,
    /// The fds `new` opened (the state memfd, the share's root): nothing else closes them.
    own_fds: Vec<i32>,
    /// One harness at a time per process: `own_fds` is told from the fd table before and after
    /// `new`, which another test's harness must not change meanwhile. Released last.
    _alone: std::sync::MutexGuard<'static, ()>,
}

static ONE_HARNESS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// One reply: errno (0 for success) and payload.
pub type Reply = (i32, Vec<u8>);

/// A request sent straight to the server; the reply comes back as bytes.
pub struct Captured<'m>(pub &'m [u8]);

impl Exchange for Captured<'_> {
    type Sent = Option<Vec<u8>>;

    fn request(&self) -> &[u8] {
        self.0
    }

    fn reply(&mut self, reply: Option<&[u8]>) -> Option<Vec<u8>> {
        reply.map(<[u8]>::to_vec)
    }
}

impl Harness {
    /// A share `top/share` with a file, a directory and symlinks pointing outside, next to a
    /// directory `top/outside` that must stay untouched.
    pub fn new() -> Harness {
        // A test that failed while holding it has dropped its harness all the same.
        let alone = ONE_HARNESS.lock().unwrap_or_else(|e| e.into_inner());
        let fds_before = self_fds();
        let tmp = tempfile::Builder::new().prefix("phoenixfs-hostile").tempdir().unwrap();
        let top = tmp.path().to_path_buf();
        let share = top.join("share");
        let outside = top.join("outside");
        std::fs::create_dir_all(share.join("sub")).unwrap();
        std::fs::create_dir_all(outside.join("dir")).unwrap();
        std::fs::write(outside.join("secret"), "secret").unwrap();
        std::fs::write(share.join("file"), "inside").unwrap();
        std::fs::write(share.join("victim"), "v").unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), share.join("abs_link")).unwrap();
        std::os::unix::fs::symlink("../outside/secret", share.join("rel_link")).unwrap();
        std::os::unix::fs::symlink("../outside", share.join("dir_link")).unwrap();

        let state = Arc::new(State::new(Region::create(4096, 4096).unwrap()));
        let t = Duration::from_secs(1);
        let cfg = fs::Config {
            timeouts: EntryTimeouts { entry: t, attr: t },
            open_reply_flags: 0,
            xattr: true,
            allow_direct_io: false,
            readdirplus: true,
            file_handles: fs::FileHandles::Prefer,
            fd_budget: 1 << 16,
            fd_cache: 1024,
            xattrmap: None,
            preserve_noatime: false,
            readonly: false,
            uids: Default::default(),
            gids: Default::default(),
            migration: Default::default(),
            passthrough_dev: -1,
        };
        let dir = CString::new(share.as_os_str().as_bytes()).unwrap();
        let proc = phoenixfsd::sys::open(c"/proc", libc::O_PATH | libc::O_DIRECTORY).unwrap();
        let fs = Fs::new(&dir, proc, state.clone(), cfg).unwrap();
        let policy = InitPolicy {
            writeback: false,
            posix_locks: true,
            flock_locks: true,
            readdirplus: true,
            posix_acl: false,
            require_posix_acl: false,
            security_ctx: false,
            require_security_ctx: false,
            auto_inval_data: true,
            killpriv_v2: true,
            announce_submounts: true,
            allow_mmap: false,
            passthrough: false,
            require_passthrough: false,
        };
        let server = Server::new(fs, state.clone(), policy, true);
        let record = server.thread_record();
        let own_fds = self_fds().into_iter().filter(|fd| !fds_before.contains(fd)).collect();
        Harness { server, state, out: ReplyBuf::new(), record, unique: 0, _tmp: tmp, top, own_fds, _alone: alone }
    }

    pub fn sender(&mut self, nodeid: u64) -> Sender {
        self.unique += 2;
        Sender { unique: self.unique, nodeid, uid: 0, gid: 0, pid: 0 }
    }

    pub fn raw(&mut self, msg: &[u8]) -> Option<Reply> {
        let unique = phoenixfsd::fuse::Request::header_of(msg).map_or(0, |h| h.unique);
        let delivery = Delivery { key: RecordKey::fuse(unique), groups: |_| Vec::new() };
        let reply = self.server.serve(&mut Captured(msg), delivery, &self.record, &mut self.out);
        reply.map(|reply| {
            let (h, payload) = abi::OutHeader::read_from_prefix(&reply).expect("reply has a header");
            assert_eq!(h.len as usize, reply.len(), "reply length field");
            assert_eq!(h.unique, unique, "reply unique");
            assert!((-4095..=0).contains(&h.error), "reply error {} is not 0 or a negative errno", h.error);
            (-h.error, payload.to_vec())
        })
    }

    pub fn op(&mut self, nodeid: u64, op: &Op<'_>) -> Option<Reply> {
        let s = self.sender(nodeid);
        self.raw(&encode_request(s, op))
    }

    pub fn raw_op(&mut self, nodeid: u64, opcode: Opcode, body: &[u8]) -> Option<Reply> {
        let s = self.sender(nodeid);
        self.raw(&frame(s, opcode as u32, body))
    }

    pub fn init(&mut self) {
        let arg = abi::InitIn { major: 7, minor: 45, max_readahead: 1 << 17, flags: u32::MAX };
        let (err, _) = self.op(0, &Op::Init { arg, flags2: u32::MAX }).unwrap();
        assert_eq!(err, 0, "INIT");
    }

    pub fn lookup(&mut self, parent: u64, name: &CStr) -> abi::EntryOut {
        let (err, payload) = self.op(parent, &Op::Lookup { name }).unwrap();
        assert_eq!(err, 0, "lookup {name:?}");
        abi::EntryOut::read_from_bytes(&payload).unwrap()
    }

    pub fn open(&mut self, nodeid: u64, dir: bool) -> u64 {
        let a = abi::OpenIn { flags: libc::O_RDWR as u32 * u32::from(!dir), open_flags: 0 };
        let op = if dir { Op::Opendir(a) } else { Op::Open(a) };
        let (err, payload) = self.op(nodeid, &op).unwrap();
        assert_eq!(err, 0, "open");
        abi::OpenOut::read_from_bytes(&payload).unwrap().fh
    }

    /// Every object under `top` (share and outside): type, mode, size, owner, content, target.
    pub fn snapshot(&self) -> BTreeMap<PathBuf, String> {
        snapshot_of(&self.top)
    }

    /// As `snapshot`, of `top/outside` alone: what no request may change.
    pub fn snapshot_outside(&self) -> BTreeMap<PathBuf, String> {
        snapshot_of(&self.top.join("outside"))
    }
}

/// Every object under `top`, keyed by its path below `top`: type, mode, size, owner, nlink,
/// content and mtime (files), target (symlinks), xattr names.
pub fn snapshot_of(top: &Path) -> BTreeMap<PathBuf, String> {
    {
        fn walk(p: &Path, top: &Path, out: &mut BTreeMap<PathBuf, String>) {
            let m = std::fs::symlink_metadata(p).unwrap();
            let detail = if m.file_type().is_symlink() {
                format!("link->{:?}", std::fs::read_link(p).unwrap())
            } else if m.is_file() {
                format!("file {:?} mtime {}", std::fs::read(p).unwrap(), m.mtime_nsec() + m.mtime() * 1_000_000_000)
            } else {
                "dir".to_string()
            };
            let xattrs = xattr_names(p);
            out.insert(
                p.strip_prefix(top).unwrap().to_path_buf(),
                format!("{detail} mode {:o} uid {} nlink {} xattrs {xattrs:?}", m.mode(), m.uid(), m.nlink()),
            );
            if m.is_dir() {
                for e in std::fs::read_dir(p).unwrap() {
                    walk(&e.unwrap().path(), top, out);
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(top, top, &mut out);
        out
    }
}

impl Drop for Harness {
    /// Closes the fds `new` opened and unmaps the region (`Region` never does: a daemon keeps
    /// it for life), so that a campaign of thousands of harnesses runs in bounded memory. Fds of
    /// nodes and handles still held are the test's to release first.
    fn drop(&mut self) {
        for &fd in &self.own_fds {
            // SAFETY: an fd this harness opened and nothing uses once it is dropped.
            unsafe { libc::close(fd) };
        }
        let h = self.state.region.header();
        let (base, size) = (h as *const _ as *mut libc::c_void, h.region_size as usize);
        // SAFETY: the region is the mapping `Region::create` made at its header, `region_size`
        // long; only this harness's server and state refer to it, and they are dropped right
        // after this without touching the slots (the server has no threads left).
        unsafe { libc::munmap(base, size) };
    }
}

/// Resident memory one request may add to the process serving it: a reply is at most 1 MiB, a
/// request about as much.
pub const MAX_GROWTH_KIB: u64 = 256 << 10;

/// The fd numbers open in this process.
pub fn self_fds() -> Vec<i32> {
    super::proc::fd_table(std::process::id()).into_keys().collect()
}

pub fn xattr_names(p: &Path) -> Vec<u8> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid path and buffer.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    buf.truncate(n.max(0) as usize);
    buf
}
