//! The passthrough file system: one function per FUSE operation, each taking a decoded request
//! and a `Context` (who asks) and returning a typed reply. No transport details live here: the
//! same `Fs` serves /dev/fuse and vhost-user.
//!
//! Safety rules kept by every operation: guest names are checked once (`check_name`), every path
//! is one component relative to an `O_PATH` fd of a node we hold, nothing follows a symlink
//! (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`, openat2 `RESOLVE_BENEATH`), and node ids and handles are
//! resolved through the state tables, which refuse bad and stale ones.

mod attr;
mod creds;
mod dir;
mod fhandle;
mod file;
pub mod idmap;
mod lock;
pub mod migrate;
mod namespace;
mod once;
pub mod passthrough;
mod umask;
mod xattr;
pub mod xattrmap;

use std::ffi::CStr;
use std::io;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::fuse::{DirEntry, abi};
use crate::state::{self, State};

pub use attr::EntryTimeouts;
pub use creds::Context;
pub use fhandle::FileHandles;
/// For crash.rs's check that `crash::MARKERS` names every crash point in the source.
#[cfg(test)]
pub(crate) use once::Call as OnceCall;
pub use xattr::XattrReply;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("host: {0}")]
    Os(#[from] io::Error),
    #[error(transparent)]
    State(#[from] state::Error),
    #[error("name is empty, `.`, `..`, or contains `/`")]
    InvalidName,
    #[error("cannot switch to the caller's credentials: {0}")]
    Credentials(io::Error),
    #[error("argument out of range")]
    OutOfRange,
    #[error("operation not supported by this daemon")]
    NotSupported,
}

impl Error {
    /// The host error `errno`, for answers decided before (or instead of) a syscall.
    pub fn from_errno(errno: i32) -> Error {
        Error::Os(io::Error::from_raw_os_error(errno))
    }

    /// The one place an error becomes an errno for the reply.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Os(e) => e.raw_os_error().unwrap_or(libc::EIO),
            Error::State(s) => match s {
                state::Error::BadNodeId => libc::ESTALE,
                state::Error::BadHandle => libc::EBADF,
                state::Error::TableFull(_) | state::Error::FdBudget(_) => libc::ENFILE,
                state::Error::HandleOpen(e) | state::Error::NoFileHandle(e) => e.raw_os_error().unwrap_or(libc::EIO),
                state::Error::NoMountFd(_) => libc::ESTALE,
                state::Error::MountsFull(_) => libc::EOPNOTSUPP,
                state::Error::MountFd(e) => e.raw_os_error().unwrap_or(libc::EIO),
                state::Error::Unmigrated => libc::EIO,
                state::Error::RootNotFirst(_)
                | state::Error::BadCapacity
                | state::Error::Memfd(_)
                | state::Error::EventFd(_)
                | state::Error::Mmap(_)
                | state::Error::Corrupt(_) => libc::EIO,
            },
            Error::InvalidName => libc::EINVAL,
            Error::Credentials(_) => libc::EPERM,
            Error::OutOfRange => libc::EINVAL,
            Error::NotSupported => libc::ENOSYS,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Where an operation writes a reply payload it produces in place (READ data, xattr bytes,
/// directory entries), so that fs/ knows nothing of the buffers a transport replies from.
pub trait Payload {
    /// Grows the payload by `len` zeroed bytes and returns them, for a syscall to fill; follow
    /// with `truncate` to the count it really produced.
    fn tail_mut(&mut self, len: usize) -> &mut [u8];
    /// Cuts the payload to `len` bytes.
    fn truncate(&mut self, len: usize);
    /// How many payload bytes are written so far.
    fn written(&self) -> usize;
    /// Reads up to `len` bytes of `fd` at `offset` as the payload (READ data: where the
    /// transport wants it, which may be in place in the requester's memory); returns how many.
    fn pread(&mut self, fd: i32, offset: u64, len: usize) -> std::io::Result<usize>;
    /// Appends one READDIR record if it fits in `limit` payload bytes; false when it does not.
    fn push_dirent(&mut self, limit: usize, ent: &DirEntry<'_>) -> bool;
    /// Whether a READDIRPLUS record for `namelen` bytes still fits: asked before the lookup
    /// that the record implies, so a lookup count is never raised for an entry not sent.
    fn fits_direntplus(&self, limit: usize, namelen: usize) -> bool;
    fn push_direntplus(&mut self, entry: &abi::EntryOut, ent: &DirEntry<'_>);
}

// The state's root node is the one FUSE addresses as its root.
const _: () = assert!(state::ROOT_ID == abi::ROOT_ID);

/// What the operator chose on the command line that changes how operations behave.
#[derive(Debug, Clone)]
pub struct Config {
    pub timeouts: EntryTimeouts,
    /// Open flags to add to OPEN replies (FOPEN_DIRECT_IO for cache=never, KEEP_CACHE for always).
    pub open_reply_flags: u32,
    pub xattr: bool,
    pub allow_direct_io: bool,
    pub readdirplus: bool,
    /// `--inode-file-handles`.
    pub file_handles: FileHandles,
    /// O_PATH fds the inode table may hold (objects without a handle), and the capacity of the
    /// fd cache (objects with one): both from RLIMIT_NOFILE (`fd_budget_for`).
    pub fd_budget: usize,
    pub fd_cache: usize,
    /// `--xattrmap`: how xattr names translate between guest and host (None: unchanged).
    pub xattrmap: Option<xattrmap::XattrMap>,
    /// `--preserve-noatime`: keep the guest's O_NOATIME on host opens.
    pub preserve_noatime: bool,
    /// `--readonly`: every modifying request and every open for writing is refused (EROFS).
    pub readonly: bool,
    /// `--translate-uid`, `--translate-gid` (identity when not given).
    pub uids: idmap::IdMap,
    pub gids: idmap::IdMap,
    /// FUSE passthrough (fs/passthrough.rs): a /dev/fuse fd of the connection to register
    /// backing files on, -1 when passthrough is not to be used (vhost-user, or
    /// `--fuse-passthrough=never`).
    pub passthrough_dev: i32,
    /// The `--migration-*` options (fs/migrate.rs).
    pub migration: migrate::Migration,
}

impl Config {
    /// The inode fd budget and fd cache capacity for a RLIMIT_NOFILE of `nofile`: a quarter
    /// (at least 64) is left for open files, connections and requests in flight; with file
    /// handles the cache gets a quarter (at most 4096) and fallback fds the rest.
    pub fn fd_budget_for(nofile: u64, handles: FileHandles) -> (usize, usize) {
        let total = usize::try_from(nofile).unwrap_or(usize::MAX).min(1 << 30);
        let reserve = (total / 4).max(64);
        let cache = if handles == FileHandles::Never { 0 } else { (total / 4).min(4096) };
        (total.saturating_sub(reserve + cache).max(16), cache.max(16))
    }
}

/// The passthrough file system over one shared directory.
pub struct Fs {
    state: Arc<State>,
    cfg: Config,
    /// `/proc/self/fd`, through which `O_PATH` fds are reopened with real access modes.
    proc_self_fd: i32,
    /// Serialises seek+getdents on one directory handle (striped by slot index).
    dir_locks: Vec<Mutex<()>>,
    /// Set at INIT when the kernel agreed to writeback caching.
    writeback: AtomicBool,
    /// Set at INIT when the kernel agreed to FUSE_SUBMOUNTS (`--announce-submounts`).
    announce_submounts: AtomicBool,
    /// Set at INIT when the kernel agreed to FUSE_DONT_MASK (with POSIX ACLs): creations run
    /// with the request's umask (fs/umask.rs).
    dont_mask: AtomicBool,
    /// Set at INIT when the kernel agreed to FUSE_SECURITY_CTX (`--security-label`).
    security_ctx: AtomicBool,
    /// Set at INIT when the kernel agreed to leave POSIX locks to us (`-o posix_lock`): a
    /// close's FLUSH then drops the closing process's locks, so every open gets its FLUSH.
    posix_locks: AtomicBool,
    locks: lock::LockOwners,
    /// `--inode-file-handles` as this worker applies it (`prefer` becomes `never` when the
    /// start-up probe finds handles unusable).
    handles: FileHandles,
    /// FUSE passthrough's backing ids per node (fs/passthrough.rs).
    passthrough: passthrough::Passthrough,
}

const DIR_LOCK_STRIPES: usize = 64;

impl Fs {
    /// The file system over `state`: installs the shared directory as the root node unless the
    /// region already has it (a worker taking over from a dead one). Opens this process's own
    /// /proc/self/fd beneath `proc` (the daemon's procfs dirfd: inside the sandbox no /proc path
    /// exists; another process's fd directory would need ptrace access once credentials switch)
    /// and makes it the working directory, so path-only calls (xattrs, truncate) name an fd by
    /// its number alone.
    pub fn new(shared_dir: &CStr, proc: i32, state: Arc<State>, cfg: Config) -> Result<Fs> {
        let proc_self_fd = crate::sys::openat(proc, c"self/fd", libc::O_PATH | libc::O_DIRECTORY, 0)?;
        crate::sys::fchdir(proc_self_fd)?;
        if !state.inodes.has_root() {
            let root = crate::sys::open(shared_dir, libc::O_PATH | libc::O_DIRECTORY)?;
            let st = crate::sys::statx(root, c"", libc::AT_EMPTY_PATH)?;
            let key = attr::key_of(&st);
            // Crash during the install: the root slot is SETTING_UP, freed by recovery, and the
            // next worker installs it again.
            state.inodes.install_root(root, key, libc::S_IFDIR)?;
        }
        state.inodes.configure(cfg.fd_budget, cfg.fd_cache);
        let handles = cfg.file_handles;
        let passthrough = passthrough::Passthrough::new(cfg.passthrough_dev);
        let mut fs = Fs {
            state,
            cfg,
            proc_self_fd,
            dir_locks: (0..DIR_LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            writeback: AtomicBool::new(false),
            posix_locks: AtomicBool::new(false),
            announce_submounts: AtomicBool::new(false),
            dont_mask: AtomicBool::new(false),
            security_ctx: AtomicBool::new(false),
            locks: lock::LockOwners::default(),
            handles,
            passthrough,
        };
        fs.start_file_handles()?;
        Ok(fs)
    }

    /// Rebuilds the lock-owner index from the handle table's LIVE handles (after recovery).
    pub fn rebuild_locks(&self, handles: &[state::LiveHandle]) {
        self.locks.rebuild(handles, &self.state.handles);
    }

    /// A new FUSE session on a connection that had one (over virtio: the guest rebooted): what
    /// the old session held is dropped, as virtiofsd does. Idempotent (see `Inodes::forget_all`).
    pub fn reset_session(&self) {
        let handles = self.state.handles.release_all();
        self.locks.rebuild(&[], &self.state.handles);
        // Crash here: the handles are gone, the nodes not yet; the replayed INIT forgets them.
        crate::crash_point!("init.reset_session");
        let inodes = self.state.inodes.forget_all();
        if handles + inodes > 0 {
            tracing::info!(handles, inodes, "new FUSE session: dropped what the previous one held");
        }
    }

    /// The caller as the host sees it (`--translate-uid/gid`): the transport's uid, gid and
    /// supplementary groups mapped guest → host; None where `forbid-guest` refuses one of them.
    pub fn host_caller(&self, uid: u32, gid: u32, groups: &mut [u32]) -> Option<(u32, u32)> {
        for g in groups.iter_mut() {
            *g = self.cfg.gids.to_host(*g)?;
        }
        Some((self.cfg.uids.to_host(uid)?, self.cfg.gids.to_host(gid)?))
    }

    /// Whether the share is served read-only (`--readonly`).
    pub fn readonly(&self) -> bool {
        self.cfg.readonly
    }

    pub fn set_writeback(&self, on: bool) {
        self.writeback.store(on, Ordering::Relaxed);
    }

    /// Takes in what a session agreed at INIT (`agreed`: the FUSE init flags both sides
    /// announced), by a worker at INIT or one that replaces a dead worker afterwards.
    pub fn set_session(&self, agreed: u64) {
        use crate::fuse::abi;
        self.set_writeback(agreed & abi::WRITEBACK_CACHE != 0);
        self.announce_submounts.store(agreed & abi::SUBMOUNTS != 0, Ordering::Relaxed);
        self.dont_mask.store(agreed & abi::DONT_MASK != 0, Ordering::Relaxed);
        self.security_ctx.store(agreed & abi::SECURITY_CTX != 0, Ordering::Relaxed);
        self.posix_locks.store(agreed & abi::POSIX_LOCKS != 0, Ordering::Relaxed);
        self.set_passthrough(agreed & abi::PASSTHROUGH != 0);
    }

    /// Whether creations carry a security context (FUSE_SECURITY_CTX was agreed).
    pub fn security_ctx(&self) -> bool {
        self.security_ctx.load(Ordering::Relaxed)
    }

    /// The request's umask for the creating call, when the kernel left it to us.
    fn caller_umask(&self, umask: u32) -> Result<umask::UmaskGuard> {
        umask::caller_umask(self.dont_mask.load(Ordering::Relaxed), umask)
    }

    /// Reopens node `fd` (an `O_PATH` fd) with real access `flags`, via /proc/self/fd.
    fn reopen(&self, fd: i32, flags: i32) -> Result<i32> {
        let name = crate::sys::FdName::new(fd);
        // O_NOFOLLOW would refuse the /proc magic link itself; the fd already names the object.
        let flags = flags & !(libc::O_NOFOLLOW | libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY);
        Ok(crate::sys::openat(self.proc_self_fd, name.as_cstr(), flags, 0)?)
    }
}

/// Checks one guest-supplied name: a single path component that cannot climb out. Length is
/// left to the host file system, so an over-long name gets its ENAMETOOLONG.
pub fn check_name(name: &CStr) -> Result<&CStr> {
    let b = name.to_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(Error::InvalidName);
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_check_name_rejects_climbing_names() {
        for bad in [c"", c".", c"..", c"a/b", c"/", c"../x", c"x/.."] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
        for good in [c"a", c"...", c".hidden", c"a b", c"\xff"] {
            assert!(check_name(good).is_ok(), "{good:?} refused");
        }
    }
}
