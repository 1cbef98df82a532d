//! Thin syscall wrappers for the compare tests: every call returns `Res<T>` (the value, or the
//! errno), and results print in a form that is compared between the two trees.
#![allow(dead_code)]

use std::ffi::CString;
use std::fmt::{self, Debug};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

pub use crate::common::errno::Errno;
pub use crate::common::sys::cs;

pub type Res<T> = Result<T, Errno>;

pub fn errno() -> Errno {
    Errno(crate::common::sys::errno())
}

/// A raw syscall return value as `Ok(value)` or `Err(errno)`.
pub fn chk(ret: i64) -> Res<i64> {
    crate::common::sys::chk(ret).map_err(Errno)
}

/// `sys!(libc::call(...))`: runs the unsafe call and turns its return value into a `Res<i64>`.
macro_rules! sys {
    ($e:expr) => {{
        let ret = unsafe { $e } as i64;
        $crate::ops::chk(ret)
    }};
}
#[allow(unused_imports)]
pub(crate) use sys;

fn cname(name: &str) -> CString {
    CString::new(name).unwrap()
}

fn io_errno(e: std::io::Error) -> Errno {
    Errno(e.raw_os_error().unwrap_or(-1))
}

/// File data: compared by content, printed short.
#[derive(PartialEq, Eq, Clone)]
pub struct Bytes(pub Vec<u8>);

impl Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.0.len() <= 48 {
            return write!(f, "b{:?}", String::from_utf8_lossy(&self.0));
        }
        let zeros = self.0.iter().filter(|b| **b == 0).count();
        write!(f, "{} bytes ({} zero) fnv {:016x}", self.0.len(), zeros, fnv(&self.0))
    }
}

pub fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325, |h, b| (h ^ *b as u64).wrapping_mul(0x100000001b3))
}

/// The stat fields that must match between the two trees (no inode numbers, no times; no size
/// for directories, whose size is a property of the host's directory format).
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct St {
    pub kind: char,
    pub mode: String,
    pub nlink: u64,
    pub uid: u32,
    pub gid: u32,
    pub size: Option<i64>,
    pub rdev: (u32, u32),
}

impl St {
    pub fn from(s: &libc::stat) -> St {
        let kind = match s.st_mode & libc::S_IFMT {
            libc::S_IFREG => '-',
            libc::S_IFDIR => 'd',
            libc::S_IFLNK => 'l',
            libc::S_IFIFO => 'p',
            libc::S_IFCHR => 'c',
            libc::S_IFBLK => 'b',
            libc::S_IFSOCK => 's',
            _ => '?',
        };
        St {
            kind,
            mode: format!("{:04o}", s.st_mode & 0o7777),
            nlink: s.st_nlink,
            uid: s.st_uid,
            gid: s.st_gid,
            size: if kind == 'd' { None } else { Some(s.st_size) },
            rdev: (libc::major(s.st_rdev), libc::minor(s.st_rdev)),
        }
    }
}

pub fn raw_stat(p: &Path, follow: bool) -> Res<libc::stat> {
    let mut s: libc::stat = unsafe { std::mem::zeroed() };
    let c = cs(p);
    match follow {
        true => sys!(libc::stat(c.as_ptr(), &mut s)),
        false => sys!(libc::lstat(c.as_ptr(), &mut s)),
    }
    .map(|_| s)
}
pub fn raw_fstat(fd: &Fd) -> Res<libc::stat> {
    let mut s: libc::stat = unsafe { std::mem::zeroed() };
    sys!(libc::fstat(fd.raw(), &mut s)).map(|_| s)
}
pub fn stat(p: &Path) -> Res<St> {
    raw_stat(p, true).map(|s| St::from(&s))
}
pub fn lstat(p: &Path) -> Res<St> {
    raw_stat(p, false).map(|s| St::from(&s))
}
pub fn fstat(fd: &Fd) -> Res<St> {
    raw_fstat(fd).map(|s| St::from(&s))
}
pub fn blocks(fd: &Fd) -> Res<i64> {
    raw_fstat(fd).map(|s| s.st_blocks)
}
/// (atime, mtime) as (seconds, nanoseconds).
pub fn times(s: &libc::stat) -> [(i64, i64); 2] {
    [(s.st_atime, s.st_atime_nsec), (s.st_mtime, s.st_mtime_nsec)]
}
pub fn now() -> i64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    t.unwrap().as_secs() as i64
}
/// Whether (atime, mtime) are "now": not before `since`, with slack for coarse clocks.
pub fn are_now(s: &libc::stat, since: i64) -> (bool, bool) {
    let recent = |t: i64| t >= since - 2 && t <= now() + 2;
    (recent(s.st_atime), recent(s.st_mtime))
}

/// An owned file descriptor, or none when the open failed (then every use gives EBADF).
pub struct Fd(pub Option<OwnedFd>);

impl Fd {
    pub fn raw(&self) -> RawFd {
        self.0.as_ref().map_or(-1, |f| f.as_raw_fd())
    }
}

pub fn open(p: &Path, flags: i32, mode: u32) -> Res<Fd> {
    let c = cs(p);
    sys!(libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode))
        .map(|fd| Fd(Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })))
}
/// open(2) and close again: only whether it worked.
pub fn opens(p: &Path, flags: i32, mode: u32) -> Res<()> {
    open(p, flags, mode).map(drop)
}
pub fn creat(p: &Path, mode: u32) -> Res<()> {
    let c = cs(p);
    sys!(libc::creat(c.as_ptr(), mode)).map(|fd| drop(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }))
}
pub fn write(fd: &Fd, data: &[u8]) -> Res<i64> {
    sys!(libc::write(fd.raw(), data.as_ptr().cast(), data.len()))
}
pub fn pwrite(fd: &Fd, data: &[u8], off: i64) -> Res<i64> {
    sys!(libc::pwrite(fd.raw(), data.as_ptr().cast(), data.len(), off))
}
pub fn read(fd: &Fd, len: usize) -> Res<Bytes> {
    let mut b = vec![0u8; len];
    let n = sys!(libc::read(fd.raw(), b.as_mut_ptr().cast(), len))?;
    b.truncate(n as usize);
    Ok(Bytes(b))
}
pub fn pread(fd: &Fd, len: usize, off: i64) -> Res<Bytes> {
    let mut b = vec![0u8; len];
    let n = sys!(libc::pread(fd.raw(), b.as_mut_ptr().cast(), len, off))?;
    b.truncate(n as usize);
    Ok(Bytes(b))
}
pub fn read_file(p: &Path) -> Res<Bytes> {
    std::fs::read(p).map(Bytes).map_err(io_errno)
}
/// Creates (or truncates) a file with `mode` and writes `data` into it.
pub fn put(p: &Path, data: &[u8], mode: u32) -> Res<i64> {
    let fd = open(p, libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC, mode)?;
    match write(&fd, data)? {
        n if n as usize == data.len() => Ok(n),
        _ => Err(Errno(libc::EIO)),
    }
}
/// Runs the program `p` (no arguments) to its end: its exit code, or the errno execve gave.
pub fn exec(p: &Path) -> Res<Option<i32>> {
    std::process::Command::new(p).status().map(|s| s.code()).map_err(io_errno)
}
/// Sorted entry names (without . and ..).
pub fn names(p: &Path) -> Res<Vec<String>> {
    let rd = std::fs::read_dir(p).map_err(io_errno)?;
    let mut v: Vec<String> = rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    Ok(v)
}
/// Chained setup steps: the first error, or Ok.
pub fn all(steps: &[Res<i64>]) -> Res<()> {
    steps.iter().find_map(|s| s.err()).map_or(Ok(()), Err)
}

/// `name(path, args..) -> Res<i64>` wrappers of libc calls taking one path.
macro_rules! path_calls {
    ($($name:ident($($arg:ident: $t:ty),*);)*) => {$(
        pub fn $name(p: &Path $(, $arg: $t)*) -> Res<i64> {
            let c = cs(p);
            sys!(libc::$name(c.as_ptr() $(, $arg)*))
        }
    )*};
}
path_calls! {
    mkdir(mode: u32); rmdir(); unlink(); mknod(mode: u32, dev: libc::dev_t); chmod(mode: u32);
    chown(uid: u32, gid: u32); lchown(uid: u32, gid: u32); truncate(len: i64); access(mode: i32);
}

/// `name(fd, args..) -> Res<i64>` wrappers of libc calls taking one fd.
macro_rules! fd_calls {
    ($($name:ident($($arg:ident: $t:ty),*);)*) => {$(
        pub fn $name(fd: &Fd $(, $arg: $t)*) -> Res<i64> {
            sys!(libc::$name(fd.raw() $(, $arg)*))
        }
    )*};
}
fd_calls! {
    ftruncate(len: i64); fsync(); fdatasync(); syncfs(); fchmod(mode: u32);
    fchown(uid: u32, gid: u32); flock(op: i32); lseek(off: i64, whence: i32);
    fallocate(mode: i32, off: i64, len: i64);
}

/// `name(from, to) -> Res<i64>` wrappers of libc calls taking two paths.
macro_rules! two_path_calls {
    ($($name:ident;)*) => {$(
        pub fn $name(from: &Path, to: &Path) -> Res<i64> {
            let (a, b) = (cs(from), cs(to));
            sys!(libc::$name(a.as_ptr(), b.as_ptr()))
        }
    )*};
}
two_path_calls! { link; rename; }

pub fn faccessat(p: &Path, mode: i32, flags: i32) -> Res<i64> {
    let c = cs(p);
    sys!(libc::faccessat(libc::AT_FDCWD, c.as_ptr(), mode, flags))
}
pub fn symlink(target: &str, p: &Path) -> Res<i64> {
    let (t, c) = (cname(target), cs(p));
    sys!(libc::symlink(t.as_ptr(), c.as_ptr()))
}
pub fn readlink(p: &Path) -> Res<String> {
    std::fs::read_link(p).map(|t| t.to_string_lossy().into_owned()).map_err(io_errno)
}
pub fn renameat2(from: &Path, to: &Path, flags: u32) -> Res<i64> {
    let (a, b) = (cs(from), cs(to));
    sys!(libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), flags))
}
/// linkat(AT_SYMLINK_FOLLOW), e.g. from /proc/self/fd/N.
pub fn linkat_follow(from: &str, to: &Path) -> Res<i64> {
    let (a, b) = (cname(from), cs(to));
    let follow = libc::AT_SYMLINK_FOLLOW;
    sys!(libc::linkat(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), follow))
}
/// utimensat with (sec, nsec) pairs; nsec may be UTIME_NOW or UTIME_OMIT.
pub fn utimens(p: &Path, t: [(i64, i64); 2], flags: i32) -> Res<i64> {
    let ts = t.map(|(s, n)| libc::timespec { tv_sec: s, tv_nsec: n });
    let c = cs(p);
    sys!(libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), flags))
}
pub fn futimens(fd: &Fd, t: [(i64, i64); 2]) -> Res<i64> {
    let ts = t.map(|(s, n)| libc::timespec { tv_sec: s, tv_nsec: n });
    sys!(libc::futimens(fd.raw(), ts.as_ptr()))
}
/// statfs: only whether it works, f_bsize > 0, and f_namelen.
pub fn statfs(p: &Path) -> Res<(bool, i64)> {
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    let c = cs(p);
    sys!(libc::statfs(c.as_ptr(), &mut s)).map(|_| (s.f_bsize > 0, s.f_namelen))
}
/// copy_file_range with explicit offsets (None: use and advance the file position).
pub fn cfr(src: &Fd, off_in: Option<i64>, dst: &Fd, off_out: Option<i64>, len: usize) -> Res<i64> {
    let (mut a, mut b) = (off_in.unwrap_or(0), off_out.unwrap_or(0));
    let pa = if off_in.is_some() { &mut a as *mut i64 } else { std::ptr::null_mut() };
    let pb = if off_out.is_some() { &mut b as *mut i64 } else { std::ptr::null_mut() };
    sys!(libc::copy_file_range(src.raw(), pa, dst.raw(), pb, len, 0))
}

pub fn setxattr(p: &Path, name: &str, val: &[u8], flags: i32) -> Res<i64> {
    let (c, n, v) = (cs(p), cname(name), val.as_ptr().cast());
    sys!(libc::setxattr(c.as_ptr(), n.as_ptr(), v, val.len(), flags))
}
pub fn lsetxattr(p: &Path, name: &str, val: &[u8], flags: i32) -> Res<i64> {
    let (c, n, v) = (cs(p), cname(name), val.as_ptr().cast());
    sys!(libc::lsetxattr(c.as_ptr(), n.as_ptr(), v, val.len(), flags))
}
pub fn fsetxattr(fd: &Fd, name: &str, val: &[u8], flags: i32) -> Res<i64> {
    let (n, v) = (cname(name), val.as_ptr().cast());
    sys!(libc::fsetxattr(fd.raw(), n.as_ptr(), v, val.len(), flags))
}
/// A buffer of `size` bytes, and the pointer to pass for it (NULL for a size-0 probe).
fn buf(size: usize) -> (Vec<u8>, *mut libc::c_void) {
    let mut b = vec![0u8; size];
    let ptr = if size == 0 { std::ptr::null_mut() } else { b.as_mut_ptr().cast() };
    (b, ptr)
}
/// getxattr with a buffer of `size` bytes: with 0 the length probe, else the value.
pub fn getxattr(p: &Path, name: &str, size: usize) -> Res<Bytes> {
    let (c, n, (b, ptr)) = (cs(p), cname(name), buf(size));
    let got = sys!(libc::getxattr(c.as_ptr(), n.as_ptr(), ptr, size))? as usize;
    Ok(Bytes(if size == 0 { format!("len {got}").into_bytes() } else { b[..got].to_vec() }))
}
pub fn fgetxattr(fd: &Fd, name: &str) -> Res<Bytes> {
    let (n, (b, ptr)) = (cname(name), buf(65536));
    let got = sys!(libc::fgetxattr(fd.raw(), n.as_ptr(), ptr, b.len()))? as usize;
    Ok(Bytes(b[..got].to_vec()))
}
/// listxattr (llistxattr if not `follow`): with size 0 the length probe, else sorted names.
pub fn listxattr(p: &Path, size: usize, follow: bool) -> Res<Vec<String>> {
    let (c, (b, ptr)) = (cs(p), buf(size));
    let got = match follow {
        true => sys!(libc::listxattr(c.as_ptr(), ptr.cast(), size))?,
        false => sys!(libc::llistxattr(c.as_ptr(), ptr.cast(), size))?,
    } as usize;
    if size == 0 {
        return Ok(vec![format!("len {got}")]);
    }
    let names = b[..got].split(|c| *c == 0).filter(|n| !n.is_empty());
    let mut names: Vec<String> = names.map(|n| String::from_utf8_lossy(n).into_owned()).collect();
    names.sort();
    Ok(names)
}
pub fn removexattr(p: &Path, name: &str) -> Res<i64> {
    let (c, n) = (cs(p), cname(name));
    sys!(libc::removexattr(c.as_ptr(), n.as_ptr()))
}

/// One fcntl lock call (F_SETLK, F_GETLK, F_OFD_*): the resulting (type, start, len, holder),
/// the holder's pid classified relative to the caller ("none", "ofd", "self", "parent", ...).
pub fn fcntl_lock(fd: &Fd, cmd: i32, typ: i32, start: i64, len: i64) -> Res<(i16, i64, i64, &str)> {
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = typ as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = start;
    fl.l_len = len;
    sys!(libc::fcntl(fd.raw(), cmd, &mut fl))?;
    let pid = match fl.l_pid {
        _ if fl.l_type == libc::F_UNLCK as i16 => "none",
        0 => "unset", // F_SETLK leaves l_pid alone
        -1 => "ofd",
        p if p == unsafe { libc::getpid() } => "self",
        p if p == unsafe { libc::getppid() } => "parent",
        _ => "other",
    };
    Ok((fl.l_type, fl.l_start, fl.l_len, pid))
}

/// A directory stream (opendir/readdir/telldir/seekdir/rewinddir from libc).
pub struct Dir(*mut libc::DIR);

impl Dir {
    pub fn open(p: &Path) -> Res<Dir> {
        let c = cs(p);
        let d = unsafe { libc::opendir(c.as_ptr()) };
        if d.is_null() { Err(errno()) } else { Ok(Dir(d)) }
    }
    /// Up to `n` entries as (name, d_type); fewer at the end of the directory.
    pub fn next(&mut self, n: usize) -> Res<Vec<(String, u8)>> {
        let mut out = Vec::new();
        while out.len() < n {
            unsafe { *libc::__errno_location() = 0 };
            let e = unsafe { libc::readdir64(self.0) };
            if e.is_null() {
                return if errno().0 == 0 { Ok(out) } else { Err(errno()) };
            }
            let e = unsafe { &*e };
            let name = unsafe { std::ffi::CStr::from_ptr(e.d_name.as_ptr()) };
            out.push((name.to_string_lossy().into_owned(), e.d_type));
        }
        Ok(out)
    }
    pub fn tell(&mut self) -> i64 {
        unsafe { libc::telldir(self.0) }
    }
    pub fn seek(&mut self, pos: i64) {
        unsafe { libc::seekdir(self.0, pos) }
    }
    pub fn rewind(&mut self) {
        unsafe { libc::rewinddir(self.0) }
    }
}

impl Debug for Dir {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("DIR")
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        unsafe { libc::closedir(self.0) };
    }
}

/// One raw getdents64 call with a `bufsize`-byte buffer: the names it returned.
pub fn getdents(fd: &Fd, bufsize: usize) -> Res<Vec<String>> {
    let mut b = vec![0u8; bufsize];
    let n = sys!(libc::syscall(libc::SYS_getdents64, fd.raw(), b.as_mut_ptr(), bufsize))? as usize;
    let (mut off, mut names) = (0, Vec::new());
    while off < n {
        // struct linux_dirent64: u64 d_ino, i64 d_off, u16 d_reclen, u8 d_type, char d_name[]
        let reclen = u16::from_ne_bytes([b[off + 16], b[off + 17]]) as usize;
        let name = &b[off + 19..off + reclen];
        let end = name.iter().position(|c| *c == 0).unwrap_or(name.len());
        names.push(String::from_utf8_lossy(&name[..end]).into_owned());
        off += reclen;
    }
    Ok(names)
}

/// utimensat's special nanosecond values, and chown's "-1".
pub const NOW: (i64, i64) = (0, libc::UTIME_NOW);
pub const OMIT: (i64, i64) = (0, libc::UTIME_OMIT);
pub const KEEP: u32 = u32::MAX;
