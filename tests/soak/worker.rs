//! A workload thread: picks operations at random (weighted) in its own directory, runs each
//! with real syscalls on the mount and checks every result against its model. This file has the
//! thread's loop and the file-data operations; namespace.rs and xattrs_locks.rs have the rest.

use std::collections::BTreeMap;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::common::errno::name as ename;
use crate::common::sys::{self, R};
use crate::model::*;
use crate::rng::Rng;

pub struct Shared {
    pub stop: AtomicBool,
    pub ops: AtomicU64,
    pub errors: Mutex<Vec<String>>,
    pub seed: u64,
}

impl Shared {
    pub fn fail(&self, msg: String) {
        eprintln!("soak: ERROR {msg}");
        self.errors.lock().unwrap().push(msg);
        self.stop.store(true, Ordering::SeqCst);
    }
}

pub struct Worker {
    pub id: usize,
    pub root: PathBuf,
    pub rng: Rng,
    pub m: Model,
    pub ops: u64,
    pub op: &'static str,
    /// The last mutations done (for a failure message).
    pub hist: std::collections::VecDeque<String>,
    /// How often each op and each notable outcome happened (printed at the end: coverage).
    pub counts: BTreeMap<&'static str, u64>,
}

pub type OpResult = Result<(), String>;

/// Checks one result against the model's: on a difference, returns the op's failure.
macro_rules! expect {
    ($w:expr, $what:expr, $got:expr, $want:expr) => {{
        let got = $got;
        let want = $want;
        if got != want {
            return Err($w.mismatch($what, &$crate::model::Show::show(&want), &$crate::model::Show::show(&got)));
        }
    }};
}

impl Worker {
    pub fn p(&self, rel: &str) -> PathBuf {
        if rel.is_empty() { self.root.clone() } else { self.root.join(rel) }
    }

    pub fn note(&mut self, what: &'static str) {
        *self.counts.entry(what).or_default() += 1;
    }

    pub fn did(&mut self, what: String) {
        if self.hist.len() == 24 {
            self.hist.pop_front();
        }
        self.hist.push_back(format!("#{} {what}", self.ops));
    }

    pub fn mismatch(&self, what: impl std::fmt::Display, want: &str, got: &str) -> String {
        format!("thread {} op #{} {}: {what}: expected {want}, got {got}", self.id, self.ops, self.op)
    }

    pub fn ok_or<T>(&self, what: impl std::fmt::Display, r: R<T>) -> Result<T, String>
    where
        T: std::fmt::Debug,
    {
        r.map_err(|e| self.mismatch(what, "success", &format!("Err({})", ename(e))))
    }

    pub fn run(&mut self, shared: &Shared) {
        let r = sys::mkdir(&self.root, 0o755);
        if let Err(e) = r {
            shared.fail(format!("thread {}: mkdir {:?}: {}", self.id, self.root, ename(e)));
            return;
        }
        type Op = fn(&mut Worker) -> OpResult;
        #[rustfmt::skip]
        let table: &[(u64, &'static str, Op)] = &[
            (10, "create", Worker::op_create),
            (2, "create-existing", Worker::op_create_existing),
            (5, "open-keep", Worker::op_open_keep),
            (1, "open-absent", Worker::op_open_absent),
            (8, "pwrite-path", Worker::op_pwrite_path),
            (6, "append-path", Worker::op_append_path),
            (10, "write-fd", Worker::op_write_fd),
            (8, "read-path", Worker::op_read_path),
            (8, "read-fd", Worker::op_read_fd),
            (6, "rename-file", Worker::op_rename_file),
            (2, "rename-dir", Worker::op_rename_dir),
            (5, "link", Worker::op_link),
            (1, "link-existing", Worker::op_link_existing),
            (6, "unlink", Worker::op_unlink),
            (3, "unlink-open", Worker::op_unlink_open),
            (1, "unlink-dir", Worker::op_unlink_dir),
            (3, "mkdir", Worker::op_mkdir),
            (3, "rmdir", Worker::op_rmdir),
            (5, "readdir", Worker::op_readdir),
            (5, "setxattr", Worker::op_setxattr),
            (5, "getxattr", Worker::op_getxattr),
            (2, "listxattr", Worker::op_listxattr),
            (2, "removexattr", Worker::op_removexattr),
            (3, "lock", Worker::op_lock),
            (2, "unlock", Worker::op_unlock),
            (3, "lock-check", Worker::op_lock_check),
            (2, "lock-pair", Worker::op_lock_pair),
            (4, "truncate", Worker::op_truncate),
            (3, "ftruncate", Worker::op_ftruncate),
            (3, "fsync", Worker::op_fsync),
            (6, "close", Worker::op_close),
            (6, "stat", Worker::op_stat),
        ];
        let total: u64 = table.iter().map(|t| t.0).sum();
        while !shared.stop.load(Ordering::Relaxed) {
            let mut x = self.rng.below(total);
            let (_, name, f) = table
                .iter()
                .find(|(w, _, _)| {
                    if x < *w {
                        true
                    } else {
                        x -= w;
                        false
                    }
                })
                .unwrap();
            self.ops += 1;
            self.op = name;
            self.note(name);
            if let Err(msg) = f(self) {
                let hist: Vec<&str> = self.hist.iter().map(|s| s.as_str()).collect();
                shared.fail(format!(
                    "{msg} [seed {:#x}]\n    this thread's last mutations: {}",
                    shared.seed,
                    hist.join("; ")
                ));
                return;
            }
            shared.ops.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Closes every fd the model holds, checking each close.
    pub fn close_all(&mut self) -> OpResult {
        self.op = "final-close";
        while let Some(o) = self.m.open.pop() {
            let r = sys::close(o.fd);
            self.m.maybe_free(o.ino);
            self.ok_or(format!("close fd {} (inode {})", o.fd, o.ino), r)?;
        }
        Ok(())
    }

    pub fn pick_file(&mut self) -> Option<String> {
        let f = self.m.files();
        self.rng.pick(&f).cloned()
    }

    pub fn pick_open(&mut self) -> Option<usize> {
        if self.m.open.is_empty() { None } else { Some(self.rng.below(self.m.open.len() as u64) as usize) }
    }

    pub fn keep_or_close(&mut self, fd: RawFd, ino: u64, append: bool, what: &str) -> OpResult {
        if self.m.open.len() < MAX_OPEN && self.rng.chance(1, 2) {
            self.m.open.push(OpenFile { fd, ino, append, locked: false });
            Ok(())
        } else {
            let r = sys::close(fd);
            self.ok_or(format!("close {what}"), r)
        }
    }

    pub fn data_len(&mut self, room: u64) -> usize {
        let n = match self.rng.below(10) {
            0 => 0,
            1..=6 => self.rng.range(1, 512),
            7 | 8 => self.rng.range(512, 4096),
            _ => self.rng.range(4096, 16384),
        };
        n.min(room) as usize
    }

    pub fn op_create(&mut self) -> OpResult {
        if self.m.files().len() >= MAX_FILE_NAMES {
            return self.op_unlink();
        }
        let parents = self.m.parents();
        let dir = self.rng.pick(&parents).unwrap().clone();
        let base = self.m.fresh("f");
        let name = join(&dir, &base);
        let append = self.rng.chance(1, 4);
        let flags = libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | if append { libc::O_APPEND } else { 0 };
        let r = sys::open(&self.p(&name), flags, 0o644);
        let fd =
            self.ok_or(format!("open({name}, O_CREAT|O_EXCL|O_RDWR{})", if append { "|O_APPEND" } else { "" }), r)?;
        let ino = self.m.next;
        self.m.next += 1;
        self.m.inodes.insert(ino, Inode { nlink: 1, ..Default::default() });
        self.m.names.insert(name.clone(), Kind::File(ino));
        let len = self.data_len(MAX_SIZE);
        if len > 0 {
            let data = self.rng.bytes(len);
            expect!(self, format!("write {len} bytes to new {name}"), sys::write(fd, &data), Ok(len));
            self.m.inodes.get_mut(&ino).unwrap().data = data;
        }
        self.did(format!("create {name} fd {fd}{} +{len}", if append { " O_APPEND" } else { "" }));
        self.keep_or_close(fd, ino, append, &name)
    }

    /// Opens an existing file and keeps the fd (so a file can have several open fds, with
    /// locks held through one of them).
    pub fn op_open_keep(&mut self) -> OpResult {
        if self.m.open.len() >= MAX_OPEN {
            return self.op_close();
        }
        let Some(name) = self.pick_file() else { return self.op_create() };
        let ino = self.m.ino(&name);
        let append = self.rng.chance(1, 4);
        let flags = libc::O_RDWR | if append { libc::O_APPEND } else { 0 };
        let r = sys::open(&self.p(&name), flags, 0);
        let fd = self.ok_or(format!("open({name}, O_RDWR{})", if append { "|O_APPEND" } else { "" }), r)?;
        self.did(format!("open {name} fd {fd}{}", if append { " O_APPEND" } else { "" }));
        self.m.open.push(OpenFile { fd, ino, append, locked: false });
        Ok(())
    }

    pub fn op_create_existing(&mut self) -> OpResult {
        let names: Vec<String> = self.m.names.keys().cloned().collect();
        let Some(name) = self.rng.pick(&names).cloned() else { return Ok(()) };
        let r = sys::open(&self.p(&name), libc::O_CREAT | libc::O_EXCL | libc::O_RDWR, 0o644);
        if let Ok(fd) = r {
            sys::close(fd).ok();
        }
        expect!(self, format!("open({name}, O_CREAT|O_EXCL) of an existing name"), r, Err(libc::EEXIST));
        Ok(())
    }

    pub fn op_open_absent(&mut self) -> OpResult {
        let name = join(&self.m.fresh("absent"), "f");
        let r = sys::open(&self.p(&name), libc::O_RDONLY, 0);
        if let Ok(fd) = r {
            sys::close(fd).ok();
        }
        expect!(self, format!("open({name}) in an absent directory"), r, Err(libc::ENOENT));
        Ok(())
    }

    pub fn op_pwrite_path(&mut self) -> OpResult {
        let Some(name) = self.pick_file() else { return self.op_create() };
        let ino = self.m.ino(&name);
        let size = self.m.inodes[&ino].data.len() as u64;
        let off = self.rng.range(0, (size + 256).min(MAX_SIZE));
        let len = self.data_len(MAX_SIZE - off);
        let data = self.rng.bytes(len);
        let r = sys::open(&self.p(&name), libc::O_WRONLY, 0);
        let fd = self.ok_or(format!("open({name}, O_WRONLY)"), r)?;
        let w = sys::pwrite(fd, &data, off);
        let c = sys::close(fd);
        expect!(self, format!("pwrite({name}, {len} bytes at {off})"), w, Ok(len));
        self.ok_or(format!("close {name}"), c)?;
        write_at(&mut self.m.inodes.get_mut(&ino).unwrap().data, off, &data);
        self.did(format!("pwrite {name} {len}@{off}"));
        Ok(())
    }

    pub fn op_append_path(&mut self) -> OpResult {
        let Some(name) = self.pick_file() else { return self.op_create() };
        let ino = self.m.ino(&name);
        let size = self.m.inodes[&ino].data.len() as u64;
        let len = self.data_len(MAX_SIZE.saturating_sub(size));
        let data = self.rng.bytes(len);
        let r = sys::open(&self.p(&name), libc::O_WRONLY | libc::O_APPEND, 0);
        let fd = self.ok_or(format!("open({name}, O_WRONLY|O_APPEND)"), r)?;
        let w = sys::write(fd, &data);
        let c = sys::close(fd);
        expect!(self, format!("O_APPEND write({name}, {len} bytes) at size {size}"), w, Ok(len));
        self.ok_or(format!("close {name}"), c)?;
        self.m.inodes.get_mut(&ino).unwrap().data.extend_from_slice(&data);
        self.did(format!("append {name} {len}@{size}"));
        Ok(())
    }

    pub fn fd_desc(&self, i: usize) -> String {
        let o = &self.m.open[i];
        let names = self.m.names_of(o.ino);
        format!(
            "fd {} of inode {} ({}{})",
            o.fd,
            o.ino,
            if names.is_empty() { "unlinked".to_string() } else { names.join(",") },
            if o.append { ", O_APPEND" } else { "" }
        )
    }

    /// A write through an open fd: appends on an O_APPEND fd, else a pwrite.
    pub fn write_fd(&mut self, i: usize) -> OpResult {
        let (fd, ino, append) = (self.m.open[i].fd, self.m.open[i].ino, self.m.open[i].append);
        let size = self.m.inodes[&ino].data.len() as u64;
        let desc = self.fd_desc(i);
        if append {
            let len = self.data_len(MAX_SIZE.saturating_sub(size));
            let data = self.rng.bytes(len);
            expect!(
                self,
                format!("O_APPEND write({desc}, {len} bytes) at size {size}"),
                sys::write(fd, &data),
                Ok(len)
            );
            self.m.inodes.get_mut(&ino).unwrap().data.extend_from_slice(&data);
            self.did(format!("append fd {fd} {len}@{size}"));
        } else {
            let off = self.rng.range(0, (size + 256).min(MAX_SIZE));
            let len = self.data_len(MAX_SIZE - off);
            let data = self.rng.bytes(len);
            expect!(self, format!("pwrite({desc}, {len} bytes at {off})"), sys::pwrite(fd, &data, off), Ok(len));
            write_at(&mut self.m.inodes.get_mut(&ino).unwrap().data, off, &data);
            self.did(format!("pwrite fd {fd} {len}@{off}"));
        }
        Ok(())
    }

    pub fn op_write_fd(&mut self) -> OpResult {
        let Some(i) = self.pick_open() else { return self.op_create() };
        self.write_fd(i)
    }

    /// Reads the whole file through `fd` and checks data, size, type and link count.
    pub fn verify_fd(&self, fd: RawFd, ino: u64, desc: &str) -> OpResult {
        let want = &self.m.inodes[&ino];
        let got = self.ok_or(format!("read {desc}"), sys::pread_all(fd))?;
        if got != want.data {
            return Err(self.mismatch(format!("data of {desc}"), &short(&want.data), &data_diff(&want.data, &got)));
        }
        let st = self.ok_or(format!("fstat {desc}"), sys::fstat(fd))?;
        expect!(self, format!("fstat {desc}: S_IFREG"), st.st_mode & libc::S_IFMT, libc::S_IFREG);
        expect!(self, format!("fstat {desc}: st_size"), st.st_size as u64, want.data.len() as u64);
        expect!(self, format!("fstat {desc}: st_nlink"), st.st_nlink as u64, want.nlink as u64);
        Ok(())
    }

    pub fn op_read_path(&mut self) -> OpResult {
        let Some(name) = self.pick_file() else { return self.op_create() };
        let ino = self.m.ino(&name);
        let fd = self.ok_or(format!("open({name}, O_RDONLY)"), sys::open(&self.p(&name), libc::O_RDONLY, 0))?;
        let r = self.verify_fd(fd, ino, &name);
        let c = sys::close(fd);
        r?;
        self.ok_or(format!("close {name}"), c)
    }

    pub fn op_read_fd(&mut self) -> OpResult {
        let Some(i) = self.pick_open() else { return self.op_read_path() };
        let desc = self.fd_desc(i);
        self.verify_fd(self.m.open[i].fd, self.m.open[i].ino, &desc)
    }

    pub fn new_len(&mut self, size: u64) -> u64 {
        match self.rng.below(4) {
            0 => 0,
            1 => self.rng.range(0, size),
            _ => self.rng.range(0, (size + 8192).min(MAX_SIZE)),
        }
    }

    pub fn op_truncate(&mut self) -> OpResult {
        let Some(name) = self.pick_file() else { return self.op_create() };
        let ino = self.m.ino(&name);
        let len = self.new_len(self.m.inodes[&ino].data.len() as u64);
        self.ok_or(format!("truncate({name}, {len})"), sys::truncate(&self.p(&name), len))?;
        self.did(format!("truncate {name} {len}"));
        self.m.inodes.get_mut(&ino).unwrap().data.resize(len as usize, 0);
        Ok(())
    }

    pub fn op_ftruncate(&mut self) -> OpResult {
        let Some(i) = self.pick_open() else { return self.op_truncate() };
        let ino = self.m.open[i].ino;
        let len = self.new_len(self.m.inodes[&ino].data.len() as u64);
        let desc = self.fd_desc(i);
        self.ok_or(format!("ftruncate({desc}, {len})"), sys::ftruncate(self.m.open[i].fd, len))?;
        self.did(format!("ftruncate fd {} {len}", self.m.open[i].fd));
        self.m.inodes.get_mut(&ino).unwrap().data.resize(len as usize, 0);
        Ok(())
    }

    pub fn op_fsync(&mut self) -> OpResult {
        let Some(i) = self.pick_open() else { return self.op_create() };
        let desc = self.fd_desc(i);
        let fd = self.m.open[i].fd;
        if self.rng.chance(1, 2) {
            self.ok_or(format!("fsync({desc})"), sys::fsync(fd))
        } else {
            self.ok_or(format!("fdatasync({desc})"), sys::fdatasync(fd))
        }
    }

    pub fn op_close(&mut self) -> OpResult {
        let Some(i) = self.pick_open() else { return self.op_create() };
        let desc = self.fd_desc(i);
        let o = self.m.open.swap_remove(i);
        self.did(format!("close fd {}", o.fd));
        let r = sys::close(o.fd);
        self.m.maybe_free(o.ino);
        self.ok_or(format!("close({desc})"), r)
    }

    pub fn op_stat(&mut self) -> OpResult {
        let names: Vec<String> = self.m.names.keys().cloned().collect();
        let Some(name) = self.rng.pick(&names).cloned() else { return self.op_create() };
        let st = self.ok_or(format!("lstat({name})"), sys::lstat(&self.p(&name)))?;
        match self.m.names[&name] {
            Kind::Dir => {
                expect!(self, format!("lstat({name}): S_IFDIR"), st.st_mode & libc::S_IFMT, libc::S_IFDIR);
                expect!(self, format!("lstat({name}): st_nlink"), st.st_nlink as u64, 2);
            }
            Kind::File(ino) => {
                let i = &self.m.inodes[&ino];
                expect!(self, format!("lstat({name}): S_IFREG"), st.st_mode & libc::S_IFMT, libc::S_IFREG);
                expect!(self, format!("lstat({name}): st_size"), st.st_size as u64, i.data.len() as u64);
                expect!(self, format!("lstat({name}): st_nlink"), st.st_nlink as u64, i.nlink as u64);
            }
        }
        Ok(())
    }
}
