//! Raw syscall wrappers for the tests that drive a mount with real syscalls: each returns
//! `Ok(value)` or `Err(errno)`, so a test can compare an errno exactly and print it by name
//! (`common::errno`). The compare suite's wrappers (tests/compare/ops.rs) build on `cs`, `chk`
//! and `errno` from here.

use std::ffi::CString;
use std::os::fd::RawFd;
use std::path::Path;

/// A syscall's result: its value, or the errno.
pub type R<T> = Result<T, i32>;

/// The calling thread's errno.
pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// A raw syscall return value as `Ok(value)` or `Err(errno)`.
pub fn chk(ret: i64) -> R<i64> {
    if ret < 0 { Err(errno()) } else { Ok(ret) }
}

/// `p` as a C string (test paths have no NUL).
pub fn cs(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).unwrap()
}

pub fn open(p: &Path, flags: i32, mode: u32) -> R<RawFd> {
    let c = cs(p);
    // SAFETY: a NUL-terminated path that outlives the call.
    chk(unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode) } as i64).map(|v| v as RawFd)
}
pub fn close(fd: RawFd) -> R<()> {
    // SAFETY: closes an fd the caller owns and no longer uses.
    chk(unsafe { libc::close(fd) } as i64).map(drop)
}
pub fn write(fd: RawFd, b: &[u8]) -> R<usize> {
    // SAFETY: `b` is valid for `b.len()` bytes during the call.
    chk(unsafe { libc::write(fd, b.as_ptr().cast(), b.len()) } as i64).map(|v| v as usize)
}
pub fn pwrite(fd: RawFd, b: &[u8], off: u64) -> R<usize> {
    // SAFETY: `b` is valid for `b.len()` bytes during the call.
    chk(unsafe { libc::pwrite(fd, b.as_ptr().cast(), b.len(), off as i64) } as i64).map(|v| v as usize)
}
/// The whole file from offset 0, by pread until end of file.
pub fn pread_all(fd: RawFd) -> R<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes during the call.
        let n = chk(unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), out.len() as i64) } as i64)?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
}
pub fn fstat(fd: RawFd) -> R<libc::stat> {
    // SAFETY: `stat` is plain data; all zeroes is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out-pointer for the call.
    chk(unsafe { libc::fstat(fd, &mut st) } as i64).map(|_| st)
}
pub fn lstat(p: &Path) -> R<libc::stat> {
    let c = cs(p);
    // SAFETY: `stat` is plain data; all zeroes is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out-pointer for the call.
    chk(unsafe { libc::lstat(c.as_ptr(), &mut st) } as i64).map(|_| st)
}
pub fn rename(a: &Path, b: &Path) -> R<()> {
    let (a, b) = (cs(a), cs(b));
    // SAFETY: NUL-terminated paths that outlive the call.
    chk(unsafe { libc::rename(a.as_ptr(), b.as_ptr()) } as i64).map(drop)
}
pub fn link(a: &Path, b: &Path) -> R<()> {
    let (a, b) = (cs(a), cs(b));
    // SAFETY: NUL-terminated paths that outlive the call.
    chk(unsafe { libc::link(a.as_ptr(), b.as_ptr()) } as i64).map(drop)
}
pub fn unlink(p: &Path) -> R<()> {
    let c = cs(p);
    // SAFETY: a NUL-terminated path that outlives the call.
    chk(unsafe { libc::unlink(c.as_ptr()) } as i64).map(drop)
}
pub fn mkdir(p: &Path, mode: u32) -> R<()> {
    let c = cs(p);
    // SAFETY: a NUL-terminated path that outlives the call.
    chk(unsafe { libc::mkdir(c.as_ptr(), mode) } as i64).map(drop)
}
pub fn rmdir(p: &Path) -> R<()> {
    let c = cs(p);
    // SAFETY: a NUL-terminated path that outlives the call.
    chk(unsafe { libc::rmdir(c.as_ptr()) } as i64).map(drop)
}
pub fn truncate(p: &Path, len: u64) -> R<()> {
    let c = cs(p);
    // SAFETY: a NUL-terminated path that outlives the call.
    chk(unsafe { libc::truncate(c.as_ptr(), len as i64) } as i64).map(drop)
}
pub fn ftruncate(fd: RawFd, len: u64) -> R<()> {
    // SAFETY: no pointers.
    chk(unsafe { libc::ftruncate(fd, len as i64) } as i64).map(drop)
}
pub fn fsync(fd: RawFd) -> R<()> {
    // SAFETY: no pointers.
    chk(unsafe { libc::fsync(fd) } as i64).map(drop)
}
pub fn fdatasync(fd: RawFd) -> R<()> {
    // SAFETY: no pointers.
    chk(unsafe { libc::fdatasync(fd) } as i64).map(drop)
}
/// Sorted entry names (without . and ..).
pub fn readdir(p: &Path) -> R<Vec<String>> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(p).map_err(|e| e.raw_os_error().unwrap_or(-1))? {
        let e = e.map_err(|e| e.raw_os_error().unwrap_or(-1))?;
        names.push(e.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// Path xattrs, not following a symlink (`fd` = Some: the fd variants).
pub fn setxattr(p: &Path, fd: Option<RawFd>, name: &str, v: &[u8], flags: i32) -> R<()> {
    let n = CString::new(name).unwrap();
    let r = match fd {
        // SAFETY: a NUL-terminated name and a value valid for `v.len()` bytes during the call.
        Some(fd) => unsafe { libc::fsetxattr(fd, n.as_ptr(), v.as_ptr().cast(), v.len(), flags) },
        None => {
            let c = cs(p);
            // SAFETY: as above, and a NUL-terminated path.
            unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), flags) }
        }
    };
    chk(r as i64).map(drop)
}
pub fn getxattr(p: &Path, fd: Option<RawFd>, name: &str) -> R<Vec<u8>> {
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    let r = match fd {
        // SAFETY: a NUL-terminated name and a buffer valid for `buf.len()` bytes.
        Some(fd) => unsafe { libc::fgetxattr(fd, n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) },
        None => {
            let c = cs(p);
            // SAFETY: as above, and a NUL-terminated path.
            unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) }
        }
    };
    let len = chk(r as i64)? as usize;
    buf.truncate(len);
    Ok(buf)
}
pub fn removexattr(p: &Path, fd: Option<RawFd>, name: &str) -> R<()> {
    let n = CString::new(name).unwrap();
    let r = match fd {
        // SAFETY: a NUL-terminated name.
        Some(fd) => unsafe { libc::fremovexattr(fd, n.as_ptr()) },
        None => {
            let c = cs(p);
            // SAFETY: NUL-terminated path and name.
            unsafe { libc::lremovexattr(c.as_ptr(), n.as_ptr()) }
        }
    };
    chk(r as i64).map(drop)
}
/// The `user.` names only, sorted.
pub fn listxattr(p: &Path, fd: Option<RawFd>) -> R<Vec<String>> {
    let mut buf = vec![0u8; 65536];
    let r = match fd {
        // SAFETY: a buffer valid for `buf.len()` bytes.
        Some(fd) => unsafe { libc::flistxattr(fd, buf.as_mut_ptr().cast(), buf.len()) },
        None => {
            let c = cs(p);
            // SAFETY: as above, and a NUL-terminated path.
            unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) }
        }
    };
    let len = chk(r as i64)? as usize;
    let mut names: Vec<String> = buf[..len]
        .split(|b| *b == 0)
        .filter(|n| n.starts_with(b"user."))
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    names.sort();
    Ok(names)
}

/// OFD lock command `cmd` (F_OFD_SETLK, F_OFD_SETLKW, F_OFD_GETLK) of type `typ` on the whole
/// file; returns the lock type GETLK reports (for SETLK: `typ`).
pub fn ofd(fd: RawFd, cmd: i32, typ: i32) -> R<i32> {
    // SAFETY: `flock` is plain data; all zeroes is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = typ as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = 0;
    fl.l_len = 0;
    // SAFETY: a valid flock for the call.
    chk(unsafe { libc::fcntl(fd, cmd, &mut fl) } as i64)?;
    Ok(fl.l_type as i32)
}

/// A fresh tmpfs (or another memory file system) mounted at `at` (made if missing) for a test's
/// lifetime; lazily unmounted when dropped.
pub struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    pub fn mount(at: &Path) -> Tmpfs {
        Tmpfs::mount_fs(at, c"tmpfs")
    }

    /// A file system of type `fstype` that needs no device (tmpfs, ramfs).
    pub fn mount_fs(at: &Path, fstype: &std::ffi::CStr) -> Tmpfs {
        if !at.exists() {
            std::fs::create_dir(at).unwrap();
        }
        let c = cs(at);
        // SAFETY: valid C strings; a fresh file system on a directory of our own.
        let r = unsafe { libc::mount(c"none".as_ptr(), c.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
        assert_eq!(r, 0, "mount {fstype:?} at {at:?}: {}", std::io::Error::last_os_error());
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let c = cs(&self.0);
        // SAFETY: valid C string; our own mount.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}
