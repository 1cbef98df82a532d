//! The workload's operations: each picks its target from the model, runs timed syscalls on the
//! mount, checks what they return against the model, and updates the model.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::{Ctx, time};

/// File names per thread (beyond it, unlinks outweigh creates).
const MAX_FILES: usize = 250;
/// Directories per thread, the thread's root included.
const MAX_DIRS: usize = 12;
/// Files of several MiB per thread.
const MAX_BIG: usize = 2;
const MIB: usize = 1 << 20;

type Op = fn(&mut Ctx);

/// One random operation.
pub fn step(ctx: &mut Ctx) {
    let many = ctx.m.names.len() >= MAX_FILES;
    let table: [(u64, Op); 19] = [
        (if many { 2 } else { 16 }, create),
        (12, append),
        (10, overwrite),
        (6, truncate),
        (6, rename),
        (4, link),
        (if many { 20 } else { 5 }, unlink),
        (3, unlink_open),
        (3, mkdir),
        (2, rmdir),
        (5, readdir),
        (8, verify),
        (4, xattr),
        (3, mmap_read),
        (3, mmap_write),
        (3, direct),
        (2, lock),
        (1, big),
        (2, fsync),
    ];
    let total: u64 = table.iter().map(|t| t.0).sum();
    let mut r = ctx.rng.below(total);
    for (w, op) in table {
        if r < w {
            return op(ctx);
        }
        r -= w;
    }
}

fn pick_file(ctx: &mut Ctx) -> Option<String> {
    let n = ctx.m.names.len() as u64;
    if n == 0 {
        return None;
    }
    let i = ctx.rng.below(n) as usize;
    ctx.m.names.keys().nth(i).cloned()
}

fn pick_dir(ctx: &mut Ctx) -> String {
    let i = ctx.rng.below(ctx.m.dirs.len() as u64) as usize;
    ctx.m.dirs.iter().nth(i).cloned().expect("the thread's root is always there")
}

fn open(ctx: &mut Ctx, path: &str, opts: &mut OpenOptions) -> Option<File> {
    let p = ctx.p(path);
    let r = time(&mut ctx.st, "open", || opts.open(&p));
    ctx.ok(&format!("open {path}"), r)
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("no NUL in paths")
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn create(ctx: &mut Ctx) {
    let dir = pick_dir(ctx);
    let path = ctx.m.fresh(&dir, "f");
    let len = ctx.rng.below(12 * 1024) as usize;
    let data = ctx.rng.bytes(len);
    let Some(mut f) = open(ctx, &path, OpenOptions::new().write(true).create_new(true).mode(0o644)) else {
        return;
    };
    let r = time(&mut ctx.st, "write", || f.write_all(&data));
    ctx.ok(&format!("write {path}"), r);
    ctx.m.create(path, data);
}

fn append(ctx: &mut Ctx) {
    let Some(path) = pick_file(ctx) else { return create(ctx) };
    let len = ctx.rng.range(1, 6 * 1024) as usize;
    let data = ctx.rng.bytes(len);
    let Some(mut f) = open(ctx, &path, OpenOptions::new().append(true)) else { return };
    let r = time(&mut ctx.st, "append", || f.write_all(&data));
    ctx.ok(&format!("append {path}"), r);
    ctx.m.file(&path).data.extend_from_slice(&data);
}

fn overwrite(ctx: &mut Ctx) {
    let Some(path) = pick_file(ctx) else { return create(ctx) };
    let size = ctx.m.file(&path).data.len() as u64;
    let off = ctx.rng.below(size + 4096) as usize;
    let len = ctx.rng.range(1, 8 * 1024) as usize;
    let data = ctx.rng.bytes(len);
    let Some(f) = open(ctx, &path, OpenOptions::new().write(true)) else { return };
    let r = time(&mut ctx.st, "pwrite", || f.write_all_at(&data, off as u64));
    ctx.ok(&format!("pwrite {path} at {off}"), r);
    ctx.m.file(&path).write_at(off, &data);
}

fn truncate(ctx: &mut Ctx) {
    let Some(path) = pick_file(ctx) else { return create(ctx) };
    let size = ctx.m.file(&path).data.len() as u64;
    let len = ctx.rng.below(size + 8192);
    if ctx.rng.chance(1, 2) {
        let c = cstr(&ctx.p(&path));
        // SAFETY: `c` is a NUL-terminated path that outlives the call.
        let rc = time(&mut ctx.st, "truncate", || unsafe { libc::truncate(c.as_ptr(), len as i64) });
        if rc != 0 {
            ctx.fail(format!("truncate {path} to {len}: errno {}", errno()));
        }
    } else {
        let Some(f) = open(ctx, &path, OpenOptions::new().write(true)) else { return };
        let r = time(&mut ctx.st, "ftruncate", || f.set_len(len));
        ctx.ok(&format!("ftruncate {path} to {len}"), r);
    }
    ctx.m.file(&path).data.resize(len as usize, 0);
}

fn rename(ctx: &mut Ctx) {
    let Some(from) = pick_file(ctx) else { return create(ctx) };
    let to = match pick_file(ctx) {
        Some(t) if t != from && ctx.rng.chance(1, 3) => t,
        _ => {
            let dir = pick_dir(ctx);
            ctx.m.fresh(&dir, "f")
        }
    };
    let (a, b) = (ctx.p(&from), ctx.p(&to));
    let r = time(&mut ctx.st, "rename", || fs::rename(&a, &b));
    ctx.ok(&format!("rename {from} -> {to}"), r);
    ctx.m.rename(&from, to);
}

fn link(ctx: &mut Ctx) {
    let Some(from) = pick_file(ctx) else { return create(ctx) };
    let dir = pick_dir(ctx);
    let to = ctx.m.fresh(&dir, "f");
    let (a, b) = (ctx.p(&from), ctx.p(&to));
    let r = time(&mut ctx.st, "link", || fs::hard_link(&a, &b));
    if ctx.ok(&format!("link {from} -> {to}"), r).is_none() {
        return;
    }
    ctx.m.link(&from, to.clone());
    let r = time(&mut ctx.st, "stat", || fs::metadata(&b));
    if let Some(md) = ctx.ok(&format!("stat {to}"), r) {
        let want = ctx.m.file(&to).links;
        if md.nlink() != want {
            ctx.fail(format!("link {from} -> {to}: nlink {} expected {want}", md.nlink()));
        }
    }
}

fn unlink(ctx: &mut Ctx) {
    let Some(path) = pick_file(ctx) else { return create(ctx) };
    let p = ctx.p(&path);
    let r = time(&mut ctx.st, "unlink", || fs::remove_file(&p));
    ctx.ok(&format!("unlink {path}"), r);
    ctx.m.unlink(&path, false);
}

/// Unlinks a file while it is open, then writes and reads it through the fd.
fn unlink_open(ctx: &mut Ctx) {
    let Some(path) = pick_file(ctx) else { return create(ctx) };
    let Some(f) = open(ctx, &path, OpenOptions::new().read(true).write(true)) else { return };
    let p = ctx.p(&path);
    let r = time(&mut ctx.st, "unlink", || fs::remove_file(&p));
    ctx.ok(&format!("unlink open {path}"), r);
    let ino = ctx.m.unlink(&path, true);
    let len = ctx.rng.range(1, 4096) as usize;
    let extra = ctx.rng.bytes(len);
    let fm = ctx.m.files.get_mut(&ino).expect("kept while open");
    let off = fm.data.len();
    fm.write_at(off, &extra);
    let (want, links) = (fm.data.clone(), fm.links);
    let r = time(&mut ctx.st, "pwrite", || f.write_all_at(&extra, off as u64));
    ctx.ok(&format!("pwrite unlinked {path}"), r);
    let mut got = vec![0u8; want.len() + 1];
    let r = time(&mut ctx.st, "pread", || read_full(&f, &mut got, 0));
    if let Some(n) = ctx.ok(&format!("pread unlinked {path}"), r) {
        ctx.same(&format!("unlinked {path}"), &got[..n], &want);
    }
    let r = time(&mut ctx.st, "fstat", || f.metadata());
    if let Some(md) = ctx.ok(&format!("fstat unlinked {path}"), r)
        && md.nlink() != links
    {
        ctx.fail(format!("fstat unlinked {path}: nlink {} expected {links}", md.nlink()));
    }
    drop(f);
    if links == 0 {
        ctx.m.files.remove(&ino);
    }
}

/// Reads from `off` until `buf` is full or the end of the file.
fn read_full(f: &File, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], off + n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn mkdir(ctx: &mut Ctx) {
    if ctx.m.dirs.len() >= MAX_DIRS {
        return readdir(ctx);
    }
    let parent = pick_dir(ctx);
    if parent.matches('/').count() >= 2 {
        return readdir(ctx);
    }
    let path = ctx.m.fresh(&parent, "d");
    let p = ctx.p(&path);
    let r = time(&mut ctx.st, "mkdir", || fs::create_dir(&p));
    ctx.ok(&format!("mkdir {path}"), r);
    ctx.m.dirs.insert(path);
}

fn rmdir(ctx: &mut Ctx) {
    let dir = pick_dir(ctx);
    if dir == ctx.m.root {
        return;
    }
    let empty = ctx.m.children(&dir).is_empty();
    let p = ctx.p(&dir);
    let r = time(&mut ctx.st, "rmdir", || fs::remove_dir(&p));
    match (empty, r) {
        (true, Ok(())) => {
            ctx.m.dirs.remove(&dir);
        }
        (false, Err(e)) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {}
        (_, r) => ctx.fail(format!("rmdir {dir} (empty: {empty}): {r:?}")),
    }
}

fn readdir(ctx: &mut Ctx) {
    let dir = pick_dir(ctx);
    check_dir(ctx, &dir);
}

/// A directory's entries against the model.
pub fn check_dir(ctx: &mut Ctx, dir: &str) {
    let p = ctx.p(dir);
    let r = time(&mut ctx.st, "readdir", || {
        fs::read_dir(&p)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<std::io::Result<BTreeSet<String>>>()
    });
    if let Some(got) = ctx.ok(&format!("readdir {dir}"), r) {
        let want = ctx.m.children(dir);
        if got != want {
            let extra: Vec<_> = got.difference(&want).collect();
            let missing: Vec<_> = want.difference(&got).collect();
            ctx.fail(format!("readdir {dir}: unexpected {extra:?}, missing {missing:?}"));
        }
    }
}

fn verify(ctx: &mut Ctx) {
    if let Some(path) = pick_file(ctx) {
        check_file(ctx, &path);
    }
}

/// A file's size, link count and bytes against the model.
pub fn check_file(ctx: &mut Ctx, path: &str) {
    let p = ctx.p(path);
    let r = time(&mut ctx.st, "stat", || fs::metadata(&p));
    let Some(md) = ctx.ok(&format!("stat {path}"), r) else { return };
    let (size, links) = {
        let f = ctx.m.file(path);
        (f.data.len() as u64, f.links)
    };
    if md.len() != size || md.nlink() != links {
        ctx.fail(format!("stat {path}: size {} nlink {}, expected {size} and {links}", md.len(), md.nlink()));
    }
    let Some(f) = open(ctx, path, OpenOptions::new().read(true)) else { return };
    let mut got = vec![0u8; size as usize + 1];
    let mut n = 0;
    // At most 1 MiB per timed read, so one op's latency stays one request's worth.
    while n < got.len() {
        let end = (n + MIB).min(got.len());
        let r = time(&mut ctx.st, "read", || f.read_at(&mut got[n..end], n as u64));
        match ctx.ok(&format!("read {path} at {n}"), r) {
            Some(0) => break,
            Some(k) => n += k,
            None => return,
        }
    }
    let want = std::mem::take(&mut ctx.m.file(path).data);
    ctx.same(&format!("read {path}"), &got[..n], &want);
    ctx.m.file(path).data = want;
}

fn xattr(ctx: &mut Ctx) {
    let Some(path) = pick_file(ctx) else { return create(ctx) };
    let c = cstr(&ctx.p(&path));
    let key = format!("user.k{}", ctx.rng.below(4));
    let ck = CString::new(key.clone()).expect("no NUL");
    if ctx.rng.chance(1, 4) {
        // Remove the key, or see ENODATA if the model says it is not there.
        let had = ctx.m.file(&path).xattrs.remove(&key).is_some();
        // SAFETY: both are NUL-terminated strings that outlive the call.
        let rc = time(&mut ctx.st, "removexattr", || unsafe { libc::removexattr(c.as_ptr(), ck.as_ptr()) });
        let e = if rc == 0 { 0 } else { errno() };
        if (had && rc != 0) || (!had && e != libc::ENODATA) {
            ctx.fail(format!("removexattr {path} {key} (present: {had}): rc {rc} errno {e}"));
        }
    } else {
        let len = ctx.rng.range(1, 64) as usize;
        let val = ctx.rng.bytes(len);
        // SAFETY: the strings are NUL-terminated and `val` is `val.len()` bytes, all outliving the call.
        let rc = time(&mut ctx.st, "setxattr", || unsafe {
            libc::setxattr(c.as_ptr(), ck.as_ptr(), val.as_ptr().cast(), val.len(), 0)
        });
        if rc != 0 {
            ctx.fail(format!("setxattr {path} {key}: errno {}", errno()));
        }
        ctx.m.file(&path).xattrs.insert(key.clone(), val.clone());
        let mut buf = [0u8; 256];
        // SAFETY: `buf` is writable for its length; the strings are NUL-terminated.
        let n = time(&mut ctx.st, "getxattr", || unsafe {
            libc::getxattr(c.as_ptr(), ck.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        });
        if n < 0 || buf[..n as usize] != val[..] {
            ctx.fail(format!("getxattr {path} {key}: {n} bytes (errno {})", errno()));
        }
    }
    let mut buf = [0u8; 1024];
    // SAFETY: `buf` is writable for its length; `c` is NUL-terminated.
    let n =
        time(&mut ctx.st, "listxattr", || unsafe { libc::listxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) });
    if n < 0 {
        return ctx.fail(format!("listxattr {path}: errno {}", errno()));
    }
    let got: BTreeSet<String> = buf[..n as usize]
        .split(|&b| b == 0)
        .filter(|k| k.starts_with(b"user."))
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    let want: BTreeSet<String> = ctx.m.file(&path).xattrs.keys().cloned().collect();
    if got != want {
        ctx.fail(format!("listxattr {path}: {got:?}, expected {want:?}"));
    }
}

/// A shared mapping of a whole file.
struct Map {
    ptr: *mut u8,
    len: usize,
}

impl Map {
    fn new(f: &File, len: usize, write: bool) -> std::io::Result<Map> {
        let prot = if write { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ };
        // SAFETY: a fresh mapping chosen by the kernel; nothing else is at the address it returns.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, f.as_raw_fd(), 0) };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Map { ptr: p.cast(), len })
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` bytes, readable (and writable if mapped so), ours until drop;
        // the file is not truncated while it is mapped.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    fn sync(&self) -> std::io::Result<()> {
        // SAFETY: msync of exactly our mapping.
        if unsafe { libc::msync(self.ptr.cast(), self.len, libc::MS_SYNC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in `new`, no slice of it is left.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn pick_nonempty(ctx: &mut Ctx) -> Option<String> {
    for _ in 0..4 {
        let p = pick_file(ctx)?;
        if !ctx.m.file(&p).data.is_empty() {
            return Some(p);
        }
    }
    None
}

fn mmap_read(ctx: &mut Ctx) {
    let Some(path) = pick_nonempty(ctx) else { return append(ctx) };
    let Some(f) = open(ctx, &path, OpenOptions::new().read(true)) else { return };
    let len = ctx.m.file(&path).data.len();
    let r = time(&mut ctx.st, "mmap", || Map::new(&f, len, false));
    let Some(mut m) = ctx.ok(&format!("mmap {path}"), r) else { return };
    // Timed per 256 KiB, so one op is a few page faults' worth of requests.
    let mut got = Vec::with_capacity(len);
    for chunk in m.bytes().chunks(256 << 10) {
        time(&mut ctx.st, "mmap-read", || got.extend_from_slice(chunk));
    }
    let want = std::mem::take(&mut ctx.m.file(&path).data);
    ctx.same(&format!("mmap read {path}"), &got, &want);
    ctx.m.file(&path).data = want;
}

fn mmap_write(ctx: &mut Ctx) {
    let Some(path) = pick_nonempty(ctx) else { return append(ctx) };
    let Some(f) = open(ctx, &path, OpenOptions::new().read(true).write(true)) else { return };
    let size = ctx.m.file(&path).data.len();
    let off = ctx.rng.below(size as u64) as usize;
    let len = (ctx.rng.range(1, 8192) as usize).min(size - off);
    let data = ctx.rng.bytes(len);
    let r = time(&mut ctx.st, "mmap", || Map::new(&f, size, true));
    let Some(mut m) = ctx.ok(&format!("mmap rw {path}"), r) else { return };
    time(&mut ctx.st, "mmap-write", || m.bytes()[off..off + len].copy_from_slice(&data));
    let r = time(&mut ctx.st, "msync", || m.sync());
    ctx.ok(&format!("msync {path}"), r);
    drop(m);
    ctx.m.file(&path).write_at(off, &data);
    let mut got = vec![0u8; len];
    let r = time(&mut ctx.st, "pread", || read_full(&f, &mut got, off as u64));
    if let Some(n) = ctx.ok(&format!("pread after mmap write {path}"), r) {
        ctx.same(&format!("pread after mmap write {path} at {off}"), &got[..n], &data);
    }
}

/// A 4 KiB-aligned buffer for O_DIRECT.
pub struct Aligned(Vec<u8>, usize);

impl Aligned {
    pub fn new(len: usize) -> Aligned {
        let v = vec![0u8; len + 4096];
        let skip = v.as_ptr().align_offset(4096);
        Aligned(v, skip)
    }
    pub fn buf(&mut self, len: usize) -> &mut [u8] {
        &mut self.0[self.1..self.1 + len]
    }
}

fn direct(ctx: &mut Ctx) {
    let Some(path) = pick_file(ctx) else { return create(ctx) };
    let size = ctx.m.file(&path).data.len();
    let off = 4096 * ctx.rng.below(size as u64 / 4096 + 1) as usize;
    let len = 4096 * ctx.rng.range(1, 4) as usize;
    let data = ctx.rng.bytes(len);
    let Some(f) = open(ctx, &path, OpenOptions::new().read(true).write(true).custom_flags(libc::O_DIRECT)) else {
        return;
    };
    let mut a = Aligned::new(len);
    a.buf(len).copy_from_slice(&data);
    let r = time(&mut ctx.st, "direct-write", || f.write_all_at(a.buf(len), off as u64));
    ctx.ok(&format!("O_DIRECT pwrite {path} at {off}"), r);
    ctx.m.file(&path).write_at(off, &data);
    let mut b = Aligned::new(len);
    let r = time(&mut ctx.st, "direct-read", || read_full(&f, b.buf(len), off as u64));
    if let Some(n) = ctx.ok(&format!("O_DIRECT pread {path} at {off}"), r) {
        ctx.same(&format!("O_DIRECT pread {path} at {off}"), &b.buf(len)[..n], &data);
    }
}

/// OFD and flock locks: a second open file description conflicts until the first unlocks.
fn lock(ctx: &mut Ctx) {
    let Some(path) = pick_file(ctx) else { return create(ctx) };
    let Some(a) = open(ctx, &path, OpenOptions::new().read(true).write(true)) else { return };
    let Some(b) = open(ctx, &path, OpenOptions::new().read(true).write(true)) else { return };
    let ofd = |f: &File, ty: i32| {
        // SAFETY: an all-zero flock is valid (l_pid must be 0 for OFD locks).
        let mut l: libc::flock = unsafe { std::mem::zeroed() };
        l.l_type = ty as i16;
        l.l_whence = libc::SEEK_SET as i16;
        // SAFETY: F_OFD_SETLK with a pointer to a valid flock.
        if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &l) } == 0 { 0 } else { errno() }
    };
    let fl = |f: &File, op: i32| {
        // SAFETY: flock on an open fd.
        if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 { 0 } else { errno() }
    };
    let steps = [
        ("ofd wrlck a", time(&mut ctx.st, "ofd-lock", || ofd(&a, libc::F_WRLCK)), 0),
        ("ofd wrlck b", time(&mut ctx.st, "ofd-lock", || ofd(&b, libc::F_WRLCK)), libc::EAGAIN),
        ("ofd unlck a", time(&mut ctx.st, "ofd-lock", || ofd(&a, libc::F_UNLCK)), 0),
        ("ofd wrlck b", time(&mut ctx.st, "ofd-lock", || ofd(&b, libc::F_WRLCK)), 0),
        ("flock a", time(&mut ctx.st, "flock", || fl(&a, libc::LOCK_EX | libc::LOCK_NB)), 0),
        ("flock b", time(&mut ctx.st, "flock", || fl(&b, libc::LOCK_EX | libc::LOCK_NB)), libc::EWOULDBLOCK),
    ];
    for (what, got, want) in steps {
        if got != want {
            ctx.fail(format!("{what} on {path}: errno {got}, expected {want}"));
        }
    }
}

/// Creates, or rewrites with a new size, a file of several MiB, 1 MiB per write.
fn big(ctx: &mut Ctx) {
    let bigs: Vec<String> =
        ctx.m.names.keys().filter(|p| p.rsplit('/').next().is_some_and(|n| n.starts_with('b'))).cloned().collect();
    let len = ctx.rng.range(2 * MIB as u64, 6 * MIB as u64) as usize;
    let data = ctx.rng.bytes(len);
    let path = if bigs.len() < MAX_BIG || bigs.is_empty() {
        let root = ctx.m.root.clone();
        ctx.m.fresh(&root, "b")
    } else {
        bigs[ctx.rng.below(bigs.len() as u64) as usize].clone()
    };
    let new = !ctx.m.names.contains_key(&path);
    let Some(f) = open(ctx, &path, OpenOptions::new().write(true).create(true).mode(0o644)) else { return };
    for (i, chunk) in data.chunks(MIB).enumerate() {
        let r = time(&mut ctx.st, "write-1MiB", || f.write_all_at(chunk, (i * MIB) as u64));
        ctx.ok(&format!("write {path} MiB {i}"), r);
    }
    let r = time(&mut ctx.st, "ftruncate", || f.set_len(len as u64));
    ctx.ok(&format!("ftruncate {path}"), r);
    if new {
        ctx.m.create(path, data);
    } else {
        ctx.m.file(&path).data = data;
    }
}

fn fsync(ctx: &mut Ctx) {
    let Some(path) = pick_file(ctx) else { return create(ctx) };
    let Some(f) = open(ctx, &path, OpenOptions::new().write(true)) else { return };
    let r = time(&mut ctx.st, "fsync", || f.sync_all());
    ctx.ok(&format!("fsync {path}"), r);
}
