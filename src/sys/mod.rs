//! Thin, safe wrappers over the raw syscalls the daemon uses: the one place with `libc` calls
//! and their `unsafe` (file-system calls here, process and signal calls in `process`). Each
//! wrapper turns -1/errno into `io::Error` and nothing more. The other `unsafe` in the crate is
//! about memory and ownership, not calls: views of the state region's mapping (state/region.rs,
//! and the exclusive use of a connection buffer its callers promise), pages touched before use
//! (fusedev's prefault), fds handed to an owning type (vhost-user's `--fd`, a guest memory
//! mapping), and the two calls whose callers must promise something (`process::clone_sharing_fds`,
//! `process::signal_thread`).
//!
//! fds are plain `i32` here because the tables keep them as numbers in the state region (they
//! must survive the worker that opened them); ownership is tracked by the tables, not by types.

pub mod fhandle;
pub mod process;

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

fn cvt_long(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

fn cvt_size(ret: isize) -> io::Result<usize> {
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret as usize) }
}

/// An fd number written as a NUL-terminated decimal name: an fd's entry in /proc/self/fd, named
/// relative to a worker's /proc/self/fd dirfd (calls that take a dirfd) or to its working
/// directory, which is that same directory (calls that take only a path: xattrs, truncate; see
/// `Fs::new`). Never an absolute /proc path: inside the sandbox there is none.
pub struct FdName {
    buf: [u8; 12],
    len: usize,
}

impl FdName {
    pub fn new(fd: i32) -> FdName {
        let mut digits = [0u8; 11];
        let mut n = fd.unsigned_abs();
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let mut buf = [0u8; 12];
        let len = digits.len() - i;
        buf[..len].copy_from_slice(&digits[i..]);
        FdName { buf, len }
    }

    pub fn as_cstr(&self) -> &CStr {
        // The buffer holds digits followed by at least one NUL.
        CStr::from_bytes_with_nul(&self.buf[..=self.len]).expect("digits then NUL")
    }
}

pub fn close(fd: i32) {
    // SAFETY: closing a number is memory-safe; the tables guarantee it is ours to close.
    unsafe { libc::close(fd) };
}

pub fn memfd_create(name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a valid C string; the returned fd is new and owned by us.
    let fd = cvt(unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) })?;
    // SAFETY: `fd` was just created and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn ftruncate(fd: i32, size: u64) -> io::Result<()> {
    // SAFETY: plain syscall on an fd number.
    cvt(unsafe { libc::ftruncate64(fd, size as i64) }).map(drop)
}

/// Faults in the pages of `[addr, addr + len)` of a mapping in one call (MADV_POPULATE_READ,
/// Linux 5.14): a new worker inherits the region's mapping but not its page tables, and one
/// call is much cheaper than a fault per page. Best effort: an older kernel's EINVAL is ignored.
pub fn populate_read(addr: *const u8, len: usize) {
    const MADV_POPULATE_READ: i32 = 22;
    let page = 4096usize;
    let start = (addr as usize) & !(page - 1);
    let end = (addr as usize).saturating_add(len).div_ceil(page) * page;
    // SAFETY: advice only (no memory is changed); the range lies in one of our mappings.
    unsafe { libc::madvise(start as *mut libc::c_void, end - start, MADV_POPULATE_READ) };
}

pub fn mmap_shared(fd: i32, size: usize) -> io::Result<*mut u8> {
    // SAFETY: a fresh shared mapping of `fd`; no existing memory is affected.
    let p =
        unsafe { libc::mmap(std::ptr::null_mut(), size, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0) };
    if p == libc::MAP_FAILED { Err(io::Error::last_os_error()) } else { Ok(p as *mut u8) }
}

pub fn open(path: &CStr, flags: i32) -> io::Result<i32> {
    // SAFETY: valid C string; the fd returned is new.
    cvt(unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) })
}

pub fn openat(dirfd: i32, name: &CStr, flags: i32, mode: u32) -> io::Result<i32> {
    // SAFETY: valid C string; the fd returned is new.
    cvt(unsafe { libc::openat(dirfd, name.as_ptr(), flags | libc::O_CLOEXEC, mode) })
}

/// openat2 with RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS (a trailing symlink
/// is still returned as itself with O_PATH|O_NOFOLLOW). Falls back to openat on kernels < 5.6.
pub fn openat_beneath(dirfd: i32, name: &CStr, flags: i32) -> io::Result<i32> {
    // SAFETY: open_how is plain integers; all-zero is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS | libc::RESOLVE_NO_SYMLINKS;
    // SAFETY: `how` is a valid open_how of the size passed; `name` is a valid C string.
    let r = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd,
            name.as_ptr(),
            &how as *const libc::open_how,
            size_of::<libc::open_how>(),
        )
    };
    match cvt_long(r) {
        Ok(fd) => Ok(fd as i32),
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => openat(dirfd, name, flags | libc::O_NOFOLLOW, 0),
        Err(e) => Err(e),
    }
}

pub fn statx(dirfd: i32, name: &CStr, flags: i32) -> io::Result<libc::statx> {
    // SAFETY: zeroed statx is a valid out-buffer.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    let mask = libc::STATX_BASIC_STATS | libc::STATX_MNT_ID;
    // SAFETY: valid pointers to a C string and an out-buffer.
    cvt(unsafe { libc::statx(dirfd, name.as_ptr(), flags, mask, &mut st) })?;
    Ok(st)
}

pub fn fstatat(dirfd: i32, name: &CStr, flags: i32) -> io::Result<libc::stat64> {
    // SAFETY: zeroed stat64 is a valid out-buffer.
    let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers.
    cvt(unsafe { libc::fstatat64(dirfd, name.as_ptr(), &mut st, flags) })?;
    Ok(st)
}

pub fn mkdirat(dirfd: i32, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: valid C string.
    cvt(unsafe { libc::mkdirat(dirfd, name.as_ptr(), mode) }).map(drop)
}

pub fn mknodat(dirfd: i32, name: &CStr, mode: u32, rdev: u64) -> io::Result<()> {
    // SAFETY: valid C string.
    cvt(unsafe { libc::mknodat(dirfd, name.as_ptr(), mode, rdev) }).map(drop)
}

pub fn symlinkat(target: &CStr, dirfd: i32, name: &CStr) -> io::Result<()> {
    // SAFETY: valid C strings.
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dirfd, name.as_ptr()) }).map(drop)
}

pub fn unlinkat(dirfd: i32, name: &CStr, flags: i32) -> io::Result<()> {
    // SAFETY: valid C string.
    cvt(unsafe { libc::unlinkat(dirfd, name.as_ptr(), flags) }).map(drop)
}

pub fn renameat2(olddir: i32, old: &CStr, newdir: i32, new: &CStr, flags: u32) -> io::Result<()> {
    // SAFETY: valid C strings.
    cvt(unsafe { libc::renameat2(olddir, old.as_ptr(), newdir, new.as_ptr(), flags) }).map(drop)
}

pub fn linkat(olddir: i32, old: &CStr, newdir: i32, new: &CStr, flags: i32) -> io::Result<()> {
    // SAFETY: valid C strings.
    cvt(unsafe { libc::linkat(olddir, old.as_ptr(), newdir, new.as_ptr(), flags) }).map(drop)
}

pub fn readlinkat(dirfd: i32, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a valid writable buffer of its length.
    cvt_size(unsafe { libc::readlinkat(dirfd, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })
}

pub fn fchownat(dirfd: i32, name: &CStr, uid: u32, gid: u32, flags: i32) -> io::Result<()> {
    // SAFETY: valid C string.
    cvt(unsafe { libc::fchownat(dirfd, name.as_ptr(), uid, gid, flags) }).map(drop)
}

pub fn fchmod(fd: i32, mode: u32) -> io::Result<()> {
    // SAFETY: plain syscall.
    cvt(unsafe { libc::fchmod(fd, mode) }).map(drop)
}

pub fn fchmodat(dirfd: i32, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: valid C string.
    cvt(unsafe { libc::fchmodat(dirfd, name.as_ptr(), mode, 0) }).map(drop)
}

pub fn truncate(path: &CStr, size: u64) -> io::Result<()> {
    // SAFETY: valid C string.
    cvt(unsafe { libc::truncate64(path.as_ptr(), size as i64) }).map(drop)
}

pub fn utimensat(dirfd: i32, name: &CStr, times: &[libc::timespec; 2], flags: i32) -> io::Result<()> {
    // SAFETY: valid C string and a two-element timespec array.
    cvt(unsafe { libc::utimensat(dirfd, name.as_ptr(), times.as_ptr(), flags) }).map(drop)
}

pub fn futimens(fd: i32, times: &[libc::timespec; 2]) -> io::Result<()> {
    // SAFETY: a two-element timespec array.
    cvt(unsafe { libc::futimens(fd, times.as_ptr()) }).map(drop)
}

pub fn pread(fd: i32, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length.
    cvt_size(unsafe { libc::pread64(fd, buf.as_mut_ptr().cast(), buf.len(), offset as i64) })
}

pub fn pwrite(fd: i32, buf: &[u8], offset: u64) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of its length.
    cvt_size(unsafe { libc::pwrite64(fd, buf.as_ptr().cast(), buf.len(), offset as i64) })
}

/// One buffer of a vectored read or write, held as an address and a length, never as a Rust
/// reference: it may lie in memory another party writes at the same time (a guest's RAM, which
/// a `&[u8]` would promise nobody changes). Only the kernel touches the bytes.
#[derive(Debug, Clone, Copy)]
pub struct IoVec {
    base: usize,
    len: usize,
}

impl IoVec {
    /// # Safety
    /// `base..base + len` must stay mapped, readable and writable, for as long as any vectored
    /// call below is given this `IoVec`.
    pub unsafe fn new(base: *mut u8, len: usize) -> IoVec {
        IoVec { base: base as usize, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Bytes to write: in our own memory, or scattered where they arrived (guest memory).
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    Bytes(&'a [u8]),
    Vectored(&'a [IoVec]),
}

impl Source<'_> {
    pub fn len(&self) -> usize {
        match self {
            Source::Bytes(b) => b.len(),
            Source::Vectored(v) => v.iter().map(|v| v.len).sum(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the bytes after the first `skip` at `offset`; returns how many were written (a
    /// short count as pwrite(2) would give one).
    pub fn pwrite_from(&self, fd: i32, skip: usize, offset: u64) -> io::Result<usize> {
        match self {
            Source::Bytes(b) => pwrite(fd, &b[skip.min(b.len())..], offset),
            Source::Vectored(v) => vectored(fd, v, skip, usize::MAX, offset, Dir::Write),
        }
    }
}

/// Reads up to `len` bytes at `offset` into `into`, in order; returns how many.
pub fn preadv(fd: i32, into: &[IoVec], len: usize, offset: u64) -> io::Result<usize> {
    vectored(fd, into, 0, len, offset, Dir::Read)
}

#[derive(Clone, Copy, PartialEq)]
enum Dir {
    Read,
    Write,
}

/// preadv/pwritev over `iov` without its first `skip` bytes and at most `len` bytes, in calls of
/// at most IOV_MAX buffers, until done or a call comes back short.
fn vectored(fd: i32, iov: &[IoVec], skip: usize, len: usize, offset: u64, dir: Dir) -> io::Result<usize> {
    const IOV_MAX: usize = 1024;
    let mut list: Vec<libc::iovec> = Vec::with_capacity(iov.len().min(IOV_MAX));
    let (mut skip, mut left, mut done) = (skip, len, 0usize);
    let mut rest = iov.iter();
    loop {
        list.clear();
        let mut want = 0;
        for v in rest.by_ref() {
            if skip >= v.len {
                skip -= v.len;
                continue;
            }
            let take = (v.len - skip).min(left - want);
            list.push(libc::iovec { iov_base: (v.base + skip) as *mut libc::c_void, iov_len: take });
            skip = 0;
            want += take;
            if want == left || list.len() == IOV_MAX {
                break;
            }
        }
        if want == 0 {
            return Ok(done);
        }
        let at = (offset + done as u64) as i64;
        // SAFETY: every buffer was promised mapped for this call by `IoVec::new`'s caller; the
        // list holds `list.len()` initialized iovecs.
        let n = cvt_size(unsafe {
            match dir {
                Dir::Read => libc::preadv64(fd, list.as_ptr(), list.len() as i32, at),
                Dir::Write => libc::pwritev64(fd, list.as_ptr(), list.len() as i32, at),
            }
        });
        let n = match n {
            Ok(n) => n,
            Err(e) if done == 0 => return Err(e),
            Err(_) => return Ok(done),
        };
        done += n;
        left -= n;
        if n < want || left == 0 {
            return Ok(done);
        }
    }
}

pub fn read(fd: i32, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length.
    cvt_size(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
}

pub fn write(fd: i32, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of its length.
    cvt_size(unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) })
}

pub fn fsync(fd: i32, datasync: bool) -> io::Result<()> {
    // SAFETY: plain syscalls.
    cvt(unsafe { if datasync { libc::fdatasync(fd) } else { libc::fsync(fd) } }).map(drop)
}

pub fn syncfs(fd: i32) -> io::Result<()> {
    // SAFETY: plain syscall.
    cvt(unsafe { libc::syncfs(fd) }).map(drop)
}

pub fn lseek(fd: i32, offset: i64, whence: i32) -> io::Result<u64> {
    // SAFETY: plain syscall.
    let r = unsafe { libc::lseek64(fd, offset, whence) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r as u64) }
}

pub fn getdents64(fd: i32, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length.
    let r = unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) };
    cvt_long(r).map(|n| n as usize)
}

pub fn fstatfs(fd: i32) -> io::Result<libc::statvfs64> {
    // SAFETY: zeroed statvfs is a valid out-buffer.
    let mut st: libc::statvfs64 = unsafe { std::mem::zeroed() };
    // SAFETY: valid out pointer.
    cvt(unsafe { libc::fstatvfs64(fd, &mut st) })?;
    Ok(st)
}

pub fn faccessat(dirfd: i32, name: &CStr, mode: i32, flags: i32) -> io::Result<()> {
    // SAFETY: valid C string. The raw syscall is used because glibc's faccessat emulates
    // AT_EACCESS with the process's (not the thread's) credentials.
    let r = unsafe { libc::syscall(libc::SYS_faccessat2, dirfd, name.as_ptr(), mode, flags) };
    cvt_long(r).map(drop)
}

pub fn getxattr(path: &CStr, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    let p = if buf.is_empty() { std::ptr::null_mut() } else { buf.as_mut_ptr().cast() };
    // SAFETY: valid C strings; a zero-length buffer is passed as null, asking for the size.
    cvt_size(unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), p, buf.len()) })
}

pub fn listxattr(path: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    let p = if buf.is_empty() { std::ptr::null_mut() } else { buf.as_mut_ptr().cast() };
    // SAFETY: valid C string and buffer (or null with size 0).
    cvt_size(unsafe { libc::listxattr(path.as_ptr(), p, buf.len()) })
}

pub fn setxattr(path: &CStr, name: &CStr, value: &[u8], flags: i32) -> io::Result<()> {
    // SAFETY: valid C strings and value buffer.
    cvt(unsafe { libc::setxattr(path.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), flags) }).map(drop)
}

pub fn removexattr(path: &CStr, name: &CStr) -> io::Result<()> {
    // SAFETY: valid C strings.
    cvt(unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) }).map(drop)
}

pub fn fcntl_lock(fd: i32, cmd: i32, lock: &mut libc::flock64) -> io::Result<()> {
    // SAFETY: `lock` is a valid flock64 for the OFD lock commands.
    cvt(unsafe { libc::fcntl(fd, cmd, lock as *mut libc::flock64) }).map(drop)
}

pub fn flock(fd: i32, op: i32) -> io::Result<()> {
    // SAFETY: plain syscall.
    cvt(unsafe { libc::flock(fd, op) }).map(drop)
}

pub fn fallocate(fd: i32, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: plain syscall.
    cvt(unsafe { libc::fallocate64(fd, mode, offset as i64, len as i64) }).map(drop)
}

pub fn copy_file_range(
    fd_in: i32,
    off_in: u64,
    fd_out: i32,
    off_out: u64,
    len: usize,
    flags: u32,
) -> io::Result<usize> {
    let mut oi = off_in as i64;
    let mut oo = off_out as i64;
    // SAFETY: the offsets are valid in/out pointers for the call.
    cvt_size(unsafe { libc::copy_file_range(fd_in, &mut oi, fd_out, &mut oo, len, flags) })
}

pub fn ioctl_clone_fuse(fd: i32, master: i32) -> io::Result<()> {
    // FUSE_DEV_IOC_CLONE = _IOR(229, 0, uint32_t)
    const FUSE_DEV_IOC_CLONE: libc::c_ulong = 0x8004_e500;
    let m = master as u32;
    // SAFETY: the ioctl reads one u32 from the pointer.
    cvt(unsafe { libc::ioctl(fd, FUSE_DEV_IOC_CLONE, &m as *const u32) }).map(drop)
}

/// FUSE_DEV_IOC_BACKING_OPEN on `dev` (any fd of the connection): registers `fd` as a backing
/// file; returns its id (> 0). The kernel snapshots this thread's credentials for the file's
/// I/O and requires CAP_SYS_ADMIN (effective) in the initial user namespace.
pub fn fuse_backing_open(dev: i32, fd: i32) -> io::Result<i32> {
    // struct fuse_backing_map (fuse/abi.rs `BackingMap`, whose size test checks the number).
    #[repr(C)]
    struct Map {
        fd: i32,
        flags: u32,
        padding: u64,
    }
    const BACKING_OPEN: libc::c_ulong = 0x4010_e501;
    let map = Map { fd, flags: 0, padding: 0 };
    // SAFETY: the ioctl reads one fuse_backing_map (16 bytes, repr(C)) from the pointer.
    cvt(unsafe { libc::ioctl(dev, BACKING_OPEN, &map as *const Map) })
}

/// FUSE_DEV_IOC_BACKING_CLOSE on `dev`: drops registration `id` (ENOENT if there is none).
pub fn fuse_backing_close(dev: i32, id: i32) -> io::Result<()> {
    const BACKING_CLOSE: libc::c_ulong = 0x4004_e502;
    let id = id as u32;
    // SAFETY: the ioctl reads one u32 from the pointer.
    cvt(unsafe { libc::ioctl(dev, BACKING_CLOSE, &id as *const u32) }).map(drop)
}

pub fn mount(source: &CStr, target: &CStr, fstype: &CStr, flags: libc::c_ulong, data: &CStr) -> io::Result<()> {
    // SAFETY: valid C strings.
    cvt(unsafe { libc::mount(source.as_ptr(), target.as_ptr(), fstype.as_ptr(), flags, data.as_ptr().cast()) })
        .map(drop)
}

pub fn umount(target: &CStr, flags: i32) -> io::Result<()> {
    // SAFETY: valid C string.
    cvt(unsafe { libc::umount2(target.as_ptr(), flags) }).map(drop)
}

/// Makes `new_root` this mount namespace's root and stacks the old root on top of it (both
/// "."; the caller then detaches the old one), as virtiofsd and container runtimes do.
pub fn pivot_root_here() -> io::Result<()> {
    // SAFETY: two valid C strings.
    cvt_long(unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) }).map(drop)
}

pub fn chroot(path: &CStr) -> io::Result<()> {
    // SAFETY: a valid C string.
    cvt(unsafe { libc::chroot(path.as_ptr()) }).map(drop)
}

pub fn chdir(path: &CStr) -> io::Result<()> {
    // SAFETY: a valid C string.
    cvt(unsafe { libc::chdir(path.as_ptr()) }).map(drop)
}

/// Makes directory `fd` this process's working directory (a worker's is its /proc/self/fd, so
/// that path-only calls can name an fd by its number: see `FdName`).
pub fn fchdir(fd: i32) -> io::Result<()> {
    // SAFETY: plain syscall.
    cvt(unsafe { libc::fchdir(fd) }).map(drop)
}

/// A pipe (close-on-exec): [read end, write end].
pub fn pipe() -> io::Result<[i32; 2]> {
    let mut fds = [-1; 2];
    // SAFETY: a valid out array of two ints.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    Ok(fds)
}

/// A connected pair of SOCK_SEQPACKET sockets (message boundaries kept; close-on-exec).
pub fn seqpacket_pair() -> io::Result<[i32; 2]> {
    let mut fds = [-1; 2];
    // SAFETY: a valid out array of two ints.
    cvt(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) })?;
    Ok(fds)
}

/// Per-thread credential switches. Raw syscalls, because glibc's wrappers broadcast the change to
/// every thread of the process.
pub mod thread_creds {
    use std::io;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Set once at start-up, before any worker: supplementary groups cannot change in this
    /// process's user namespace (setgroups is denied there for good), so a request keeps the
    /// daemon's (security/userns.rs). Workers are clones and inherit it.
    static GROUPS_FIXED: AtomicBool = AtomicBool::new(false);

    /// From now on `setgroups` leaves the groups as they are.
    pub fn keep_groups() {
        GROUPS_FIXED.store(true, Ordering::Relaxed);
    }

    pub fn setresuid(euid: u32) -> io::Result<()> {
        // SAFETY: plain syscall; -1 leaves the real and saved ids unchanged.
        super::cvt_long(unsafe { libc::syscall(libc::SYS_setresuid, -1i32, euid, -1i32) }).map(drop)
    }

    pub fn setresgid(egid: u32) -> io::Result<()> {
        // SAFETY: plain syscall.
        super::cvt_long(unsafe { libc::syscall(libc::SYS_setresgid, -1i32, egid, -1i32) }).map(drop)
    }

    pub fn setgroups(groups: &[u32]) -> io::Result<()> {
        if GROUPS_FIXED.load(Ordering::Relaxed) {
            return Ok(());
        }
        // SAFETY: the pointer and length describe a valid gid array.
        super::cvt_long(unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) }).map(drop)
    }
}

/// Gives this thread its own fs struct (umask, cwd, root), so that its umask is its own.
pub fn unshare_fs() -> io::Result<()> {
    // SAFETY: plain syscall; CLONE_FS alone may be unshared by one thread of many.
    cvt(unsafe { libc::unshare(libc::CLONE_FS) }).map(drop)
}

pub fn umask(mask: u32) -> u32 {
    // SAFETY: plain syscall.
    unsafe { libc::umask(mask) }
}

pub fn dup(fd: i32) -> io::Result<i32> {
    // SAFETY: plain syscall; the new fd is ours.
    cvt(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) })
}

/// Sets or clears O_NONBLOCK on `fd`'s open file description.
pub fn set_nonblocking(fd: i32, on: bool) -> io::Result<()> {
    let flags = file_flags(fd)?;
    set_file_flags(fd, if on { flags | libc::O_NONBLOCK } else { flags & !libc::O_NONBLOCK })
}

/// `fd`'s open file description's status flags (F_GETFL).
pub fn file_flags(fd: i32) -> io::Result<i32> {
    // SAFETY: F_GETFL only queries.
    cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })
}

/// Sets `fd`'s status flags to `flags` (F_SETFL): one call, where `set_nonblocking` reads them
/// first.
pub fn set_file_flags(fd: i32, flags: i32) -> io::Result<()> {
    // SAFETY: F_SETFL changes only the status flags of an fd we hold.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, flags) }).map(drop)
}

/// Whether `fd` is an open fd of this process.
pub fn is_open(fd: i32) -> bool {
    // SAFETY: F_GETFD only queries.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// Moves `fd`'s file onto number `onto` (closing what `onto` held), close-on-exec.
pub fn dup3(fd: i32, onto: i32) -> io::Result<()> {
    // SAFETY: plain syscall on numbers the caller owns.
    cvt(unsafe { libc::dup3(fd, onto, libc::O_CLOEXEC) }).map(drop)
}

/// Adds 1 to eventfd `fd` (wakes its waiters). A full counter or a closed fd only loses a wake-up
/// that the waiter's own timeout or recheck covers, so errors are ignored.
pub fn eventfd_signal(fd: i32) {
    let _ = write(fd, &1u64.to_ne_bytes());
}

/// How many times the calling thread has blocked (voluntary context switches: waiting for I/O,
/// a lock, a sleep), as opposed to being preempted.
pub fn thread_blocked_count() -> u64 {
    // SAFETY: getrusage fills the zeroed struct it is given (plain data).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out-pointer for the call; RUSAGE_THREAD cannot fail with it.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    usage.ru_nvcsw as u64
}

/// Resets eventfd `fd`'s counter after a wake-up (non-blocking; nothing to read is fine).
pub fn eventfd_drain(fd: i32) {
    let mut count = [0u8; 8];
    let _ = read(fd, &mut count);
}

/// A signalfd for `set` (whose signals the caller has blocked), close-on-exec, non-blocking.
pub fn signalfd(set: &libc::sigset_t) -> io::Result<i32> {
    // SAFETY: a valid signal set; the new fd is ours.
    cvt(unsafe { libc::signalfd(-1, set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) })
}

/// A new eventfd (close-on-exec, non-blocking).
pub fn eventfd() -> io::Result<i32> {
    // SAFETY: plain syscall; the new fd is ours.
    cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })
}

/// The fds open in this process, listed from its fd directory beneath the procfs dirfd `proc`
/// (the listing's own fd excluded).
pub fn open_fds(proc: i32) -> io::Result<Vec<i32>> {
    let dir = openat(proc, c"self/fd", libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC, 0)?;
    let mut fds = Vec::new();
    let mut buf = vec![0u8; 8192];
    let result = loop {
        let n = match getdents64(dir, &mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) => break Err(e),
        };
        let mut at = 0;
        while at + 19 < n {
            // struct linux_dirent64: ino u64, off i64, reclen u16, type u8, name NUL-terminated.
            let reclen = u16::from_ne_bytes([buf[at + 16], buf[at + 17]]) as usize;
            let name = &buf[at + 19..(at + reclen).min(n)];
            let name = name.split(|b| *b == 0).next().unwrap_or_default();
            if let Some(fd) = std::str::from_utf8(name).ok().and_then(|s| s.parse::<i32>().ok())
                && fd != dir
            {
                fds.push(fd);
            }
            at += reclen.max(1);
        }
    };
    close(dir);
    result.map(|()| fds)
}

/// Closes every open fd that is not in `keep` (recovery's fd sweep: the fds that requests in
/// flight at a crash had opened but not yet given to a table; the holder's start). With `close_range` over the gaps between the fds to
/// keep, the cost follows the number of gaps (few: fds are allocated lowest-first), not the
/// number of open fds; listing /proc/self/fd took 40 ms at 15,000 live inodes.
pub fn close_all_except(keep: Vec<i32>) {
    let mut kept: Vec<u32> = keep.into_iter().filter(|fd| *fd >= 0).map(|fd| fd as u32).collect();
    kept.sort_unstable();
    let mut next = 0u32;
    for fd in kept.into_iter().chain([u32::MAX]) {
        if fd > next
            && let Err(e) = close_range(next, fd - 1)
        {
            tracing::error!("close_range({next}, {}) while closing all but the fds to keep: {e}", fd - 1);
        }
        next = fd.saturating_add(1);
    }
}

/// Closes every open fd in `first..=last` (Linux 5.9+).
pub fn close_range(first: u32, last: u32) -> io::Result<()> {
    // SAFETY: closing numbers; the caller decides which are no longer referenced.
    cvt_long(unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) }).map(drop)
}

/// This thread's capability sets (capget/capset, version 3: two 32-bit words per set).
/// Capabilities belong to a thread in Linux, and the raw calls with pid 0 touch this thread
/// alone.
pub mod caps {
    use std::io;

    const VERSION_3: u32 = 0x2008_0522;

    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }

    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }

    /// (effective, permitted) of this thread.
    pub fn get() -> io::Result<(u64, u64)> {
        let mut h = Header { version: VERSION_3, pid: 0 };
        let mut d = [Data::default(); 2];
        // SAFETY: valid header and a two-element data array, as version 3 requires.
        super::cvt_long(unsafe { libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()) })?;
        let join = |lo: u32, hi: u32| u64::from(lo) | u64::from(hi) << 32;
        Ok((join(d[0].effective, d[1].effective), join(d[0].permitted, d[1].permitted)))
    }

    /// Sets this thread's effective and permitted sets; inheritable becomes empty.
    pub fn set(effective: u64, permitted: u64) -> io::Result<()> {
        let mut h = Header { version: VERSION_3, pid: 0 };
        let d = [
            Data { effective: effective as u32, permitted: permitted as u32, inheritable: 0 },
            Data { effective: (effective >> 32) as u32, permitted: (permitted >> 32) as u32, inheritable: 0 },
        ];
        // SAFETY: valid header and a two-element data array, as version 3 requires.
        super::cvt_long(unsafe { libc::syscall(libc::SYS_capset, &mut h, d.as_ptr()) }).map(drop)
    }

    pub fn in_bounding_set(cap: u32) -> bool {
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong) == 1 }
    }

    pub fn drop_from_bounding_set(cap: u32) -> io::Result<()> {
        // SAFETY: prctl with integer arguments.
        super::cvt(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong) }).map(drop)
    }

    pub fn clear_ambient() -> io::Result<()> {
        // SAFETY: prctl with integer arguments.
        super::cvt(unsafe {
            libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0)
        })
        .map(drop)
    }
}

/// Clears close-on-exec on `fd`: it survives an exec (a live upgrade's new binary takes it over).
pub fn clear_cloexec(fd: i32) -> io::Result<()> {
    // SAFETY: F_SETFD on a number the caller owns.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }).map(drop)
}

/// Runs the program of the open file `fd` (execveat with AT_EMPTY_PATH). Returns only on failure.
pub fn exec_fd(fd: i32, argv: &[CString]) -> io::Error {
    let mut args: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    args.push(std::ptr::null());
    unsafe extern "C" {
        static environ: *const *const libc::c_char;
    }
    // SAFETY: NULL-terminated arrays of valid C strings that outlive the call; the process's
    // own environment.
    unsafe {
        libc::syscall(libc::SYS_execveat, fd, c"".as_ptr(), args.as_ptr(), environ, libc::AT_EMPTY_PATH);
    }
    io::Error::last_os_error()
}

/// Sends `data` on the connected Unix socket `sock` with `fd` attached (SCM_RIGHTS).
pub fn send_with_fd(sock: i32, data: &[u8], fd: i32) -> io::Result<usize> {
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    // A u64 array keeps the control buffer aligned for cmsghdr.
    let mut control = [0u64; 4];
    // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the call, and the
    // CMSG macros stay within `control`, which is large enough for one fd.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(size_of::<i32>() as u32) as usize;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<i32>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>(), fd);
        cvt_long(libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) as libc::c_long).map(|n| n as usize)
    }
}

/// Receives into `buf` from the Unix socket `sock`, with at most one attached fd, which arrives
/// close-on-exec. Extra fds a peer attached are closed.
pub fn recv_with_fd(sock: i32, buf: &mut [u8]) -> io::Result<(usize, Option<i32>)> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut control = [0u64; 16];
    // SAFETY: as in `send_with_fd`; the kernel fills at most msg_controllen bytes and the CMSG
    // macros walk only what it filled.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of_val(&control);
        let n = cvt_long(libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) as libc::c_long)? as usize;
        let mut got = None;
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let count = ((*cmsg).cmsg_len - libc::CMSG_LEN(0) as usize) / size_of::<i32>();
                for i in 0..count {
                    let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>().add(i));
                    if got.is_none() { got = Some(fd) } else { close(fd) }
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        Ok((n, got))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iovecs(buf: &mut [u8], piece: usize) -> Vec<IoVec> {
        // SAFETY: every piece lies inside `buf`, which outlives the calls the test makes.
        buf.chunks_mut(piece).map(|c| unsafe { IoVec::new(c.as_mut_ptr(), c.len()) }).collect()
    }

    /// Vectored writes and reads skip, clip, and go past IOV_MAX buffers in several calls.
    #[test]
    fn test_vectored_io_skips_clips_and_chunks() {
        let file = tempfile::tempfile().unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        let mut data: Vec<u8> = (0..3000u32).map(|i| (i % 253) as u8).collect();
        let pieces = iovecs(&mut data, 1);
        // 3,000 one-byte buffers (IOV_MAX is 1,024), the first 10 skipped, at offset 5.
        let n = Source::Vectored(&pieces).pwrite_from(fd, 10, 5).unwrap();
        assert_eq!(n, 2990);
        let mut back = vec![0u8; 2995];
        assert_eq!(pread(fd, &mut back, 0).unwrap(), 2995);
        assert_eq!(&back[5..], &data[10..]);
        assert_eq!(Source::Vectored(&pieces).len(), 3000);

        // Read 2,000 bytes at 5 into 7-byte buffers: clipped inside the last buffer it reaches.
        let mut into = vec![0xffu8; 3000];
        let room = iovecs(&mut into, 7);
        assert_eq!(preadv(fd, &room, 2000, 5).unwrap(), 2000);
        assert_eq!(&into[..2000], &data[10..2010]);
        assert!(into[2000..].iter().all(|&b| b == 0xff), "nothing past the length asked");
        // At the end of the file: a short read.
        assert_eq!(preadv(fd, &room, 2000, 2990).unwrap(), 5);
        assert_eq!(Source::Bytes(&data).pwrite_from(fd, 2999, 0).unwrap(), 1);
    }
}
