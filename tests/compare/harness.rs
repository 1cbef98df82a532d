//! Differential harness for `tests/compare.rs` (syscall wrappers are in `ops.rs`).
//!
//! A [`Pair`] holds two fresh roots on the same host file system: a plain directory next to the
//! share, and a directory inside the FUSE mount. [`Pair::both`] runs one scenario closure on each
//! root, the plain one first; the closure records every syscall result through a [`Rec`], and
//! the two records are compared step by step. The plain directory is the oracle: nothing is
//! compared against a hard-coded value. The few `Rec::ok`/`Rec::err`/`Rec::expect` expectations
//! are checked on the plain run only, so that a scenario which does not test what it claims
//! (e.g. a credential switch that silently failed) is reported instead of passing vacuously.
//! [`Pair::finish`] then compares the two whole trees and fails with every divergence found.
#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::common::{Mount, Transport};
use crate::ops::*;

/// Credentials for a forked child: uid/gid/supplementary groups and the umask to run with.
#[derive(Clone, Copy)]
pub struct Cred {
    pub name: &'static str,
    pub uid: u32,
    pub gid: u32,
    pub groups: &'static [u32],
    pub umask: u32,
}

/// Member of `GRP_MEMBER` (supplementary), not of `GRP_OTHER`.
pub const ALICE: Cred = Cred { name: "alice", uid: 4001, gid: 4001, groups: &[4001, 4002], umask: 0o022 };
pub const BOB: Cred = Cred { name: "bob", uid: 4005, gid: 4005, groups: &[4005], umask: 0o022 };
pub const ROOT: Cred = Cred { name: "root", uid: 0, gid: 0, groups: &[0], umask: 0o022 };
pub const GRP_MEMBER: u32 = 4002;
pub const GRP_OTHER: u32 = 4003;

impl Cred {
    pub fn with_umask(self, umask: u32) -> Cred {
        Cred { umask, ..self }
    }
    /// In the (single-threaded) child: drop to these credentials for good.
    fn become_(&self) -> Res<()> {
        unsafe { libc::umask(self.umask) };
        sys!(libc::setgroups(self.groups.len(), self.groups.as_ptr()))?;
        sys!(libc::setresgid(self.gid, self.gid, self.gid))?;
        sys!(libc::setresuid(self.uid, self.uid, self.uid))?;
        Ok(())
    }
}

/// Forked children inherit every fd of the test process, including other tests' fds, which
/// would keep a closed file description (and its flock/OFD locks) alive. A child closes all
/// inherited fds before it reports ready; [`Rec::close`] waits for no child to be in between.
static FD_GATE: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// The recorder a scenario runs with: its root, and the log of (step, result).
pub struct Rec {
    root: PathBuf,
    reference: bool,
    prefix: String,
    log: Vec<(String, String)>,
    bad: Vec<String>,
}

impl Rec {
    /// A path under this tree's root.
    pub fn p(&self, rel: &str) -> PathBuf {
        if rel.is_empty() { self.root.clone() } else { self.root.join(rel) }
    }
    /// Records a result to be compared with the other tree's.
    pub fn rec<T: Debug>(&mut self, step: &str, v: T) {
        self.log.push((format!("{}{step}", self.prefix), format!("{v:?}")));
    }
    /// Records `v`; on the plain tree it must equal `want`, or the scenario itself is wrong.
    pub fn expect<T: Debug + PartialEq>(&mut self, step: &str, v: T, want: T) {
        if self.reference && v != want {
            self.bad.push(format!("{}{step}: the plain dir gave {v:?}, the scenario assumes {want:?}", self.prefix));
        }
        self.rec(step, v)
    }
    /// Records a result that must be a success on the plain tree.
    pub fn ok<T: Debug>(&mut self, step: &str, v: Res<T>) {
        self.keep(step, v);
    }
    /// Like [`Rec::ok`], and hands the value on.
    pub fn keep<T: Debug>(&mut self, step: &str, v: Res<T>) -> Option<T> {
        if self.reference && v.is_err() {
            self.bad.push(format!("{}{step}: failed on the plain dir: {v:?}", self.prefix));
        }
        self.rec(step, &v);
        v.ok()
    }
    /// Records a result that must be the error `e` on the plain tree.
    pub fn err<T: Debug>(&mut self, step: &str, v: Res<T>, e: i32) {
        if self.reference && !matches!(v, Err(Errno(x)) if x == e) {
            self.bad.push(format!(
                "{}{step}: the plain dir gave {v:?}, the scenario assumes {:?}",
                self.prefix,
                Errno(e)
            ));
        }
        self.rec(step, v)
    }
    /// open(2) that must succeed on the plain tree; the fd (or a dead one) for the next steps.
    pub fn open(&mut self, step: &str, p: &Path, flags: i32, mode: u32) -> Fd {
        let res = open(p, flags, mode);
        self.ok(step, res.as_ref().map(|_| ()).map_err(|e| *e));
        res.unwrap_or(Fd(None))
    }
    /// Records (atime, mtime) of `rel`.
    pub fn times(&mut self, step: &str, rel: &str, follow: bool) {
        let t = raw_stat(&self.p(rel), follow).map(|s| times(&s));
        self.ok(step, t);
    }
    /// Closes `fd` for sure: no forked child (of any test) holds a copy of it.
    pub fn close(&mut self, fd: Fd) {
        let _gate = FD_GATE.write().unwrap_or_else(|e| e.into_inner());
        drop(fd);
    }
    /// Runs `f` in a forked child with credentials `who`; its records come back through a pipe
    /// and are appended here, each step prefixed with the user's name.
    pub fn as_user(&mut self, who: &Cred, f: impl FnOnce(&mut Rec)) {
        let mut fds = [0; 2];
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        let gate = FD_GATE.read().unwrap_or_else(|e| e.into_inner());
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {:?}", errno());
        if pid == 0 {
            unsafe {
                libc::close_range(3, fds[1] as u32 - 1, 0);
                libc::close_range(fds[1] as u32 + 1, u32::MAX, 0);
                libc::write(fds[1], b"R".as_ptr().cast(), 1);
            }
            let prefix = format!("{}[{}] ", self.prefix, who.name);
            let mut child =
                Rec { root: self.root.clone(), reference: self.reference, prefix, log: vec![], bad: vec![] };
            match who.become_() {
                Err(e) => child.bad.push(format!("switching to {}: {e:?}", who.name)),
                Ok(()) => {
                    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut child)));
                    if run.is_err() {
                        child.bad.push(format!("scenario panicked as {}", who.name));
                        child.rec("panic", "the scenario closure panicked");
                    }
                }
            }
            let mut out = String::new();
            for (s, v) in &child.log {
                out += &format!("L\t{s}\t{v}\n");
            }
            for b in &child.bad {
                out += &format!("B\t{}\n", b.replace('\n', " "));
            }
            let mut w = unsafe { std::fs::File::from_raw_fd(fds[1]) };
            let code = if w.write_all(out.as_bytes()).is_ok() { 0 } else { 1 };
            unsafe { libc::_exit(code) };
        }
        unsafe { libc::close(fds[1]) };
        let mut rd = unsafe { std::fs::File::from_raw_fd(fds[0]) };
        let mut ready = [0u8; 1];
        let _ = rd.read_exact(&mut ready);
        drop(gate);
        let mut out = String::new();
        rd.read_to_string(&mut out).expect("read the child's records");
        let mut status = 0;
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child as {} died: {status:#x}", who.name);
        for line in out.lines() {
            let mut it = line.splitn(3, '\t');
            match (it.next(), it.next(), it.next()) {
                (Some("L"), Some(s), Some(v)) => self.log.push((s.to_string(), v.to_string())),
                (Some("B"), Some(b), None) => self.bad.push(b.to_string()),
                _ => panic!("garbled record from the child: {line:?}"),
            }
        }
    }
}

/// A plain directory and a directory inside a fresh FUSE mount of the same host file system.
pub struct Pair {
    pub mount: Mount,
    pub plain: PathBuf,
    pub fuse: PathBuf,
    diffs: RefCell<Vec<String>>,
    /// Steps known to differ on this transport (step label, why, seen yet): they must differ,
    /// and nothing else may.
    expected: RefCell<Vec<(String, &'static str, bool)>>,
    finished: Cell<bool>,
}

impl Pair {
    pub fn new() -> Pair {
        Pair::with_args(&["--xattr"])
    }

    /// A pair whose daemon gets `args` (e.g. to serve locks in the daemon).
    pub fn with_args(args: &[&str]) -> Pair {
        let mount = Mount::new(args);
        let tmp = mount.share.parent().expect("share has a parent").to_path_buf();
        // Non-root steps must be able to reach both roots.
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        let plain = tmp.join("plain");
        let fuse = mount.mnt.join("tree");
        for root in [&plain, &fuse] {
            std::fs::create_dir(root).unwrap_or_else(|e| panic!("mkdir {root:?}: {e}"));
            std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Pair {
            mount,
            plain,
            fuse,
            diffs: RefCell::new(vec![]),
            expected: RefCell::new(vec![]),
            finished: Cell::new(false),
        }
    }

    /// Which transport the mount is served over.
    pub fn transport(&self) -> Transport {
        Transport::from_env()
    }

    /// Declares that step `step` (as logged, e.g. "[alice] stat own") differs on this mount for
    /// a documented reason: the test then requires that it differs, and tolerates only that.
    pub fn expect_divergence(&self, step: &str, why: &'static str) {
        self.expected.borrow_mut().push((step.to_string(), why, false));
    }

    fn run(&self, root: &Path, reference: bool, f: &dyn Fn(&mut Rec)) -> Rec {
        let mut r = Rec { root: root.to_path_buf(), reference, prefix: String::new(), log: vec![], bad: vec![] };
        f(&mut r);
        r
    }

    /// Runs scenario `f` on the plain tree, then on the FUSE tree, and notes every step whose
    /// result differs (and every assumption the plain run broke).
    pub fn both(&self, scenario: &str, f: impl Fn(&mut Rec)) {
        let a = self.run(&self.plain, true, &f);
        let b = self.run(&self.fuse, false, &f);
        let mut diffs = self.diffs.borrow_mut();
        for bad in &a.bad {
            diffs.push(format!("[{scenario}] SCENARIO BUG: {bad}"));
        }
        for i in 0..a.log.len().max(b.log.len()) {
            match (a.log.get(i), b.log.get(i)) {
                (Some(x), Some(y)) if x == y => {}
                (Some((s, v)), Some((t, w))) if s == t => {
                    let mut expected = self.expected.borrow_mut();
                    if let Some(e) = expected.iter_mut().find(|e| e.0 == *s) {
                        eprintln!("[{scenario}] {s}: differs as expected ({}): plain {v}, mount {w}", e.1);
                        e.2 = true;
                    } else {
                        diffs.push(format!("[{scenario}] {s}:\n      plain dir: {v}\n      FUSE mount: {w}"))
                    }
                }
                (x, y) => diffs.push(format!("[{scenario}] step #{i} out of step: plain {x:?}, FUSE {y:?}")),
            }
        }
    }

    /// Compares the two whole trees, then fails with every divergence noted so far.
    pub fn finish(self) {
        self.finished.set(true);
        let (a, b) = (snapshot(&self.plain), snapshot(&self.fuse));
        let mut diffs = self.diffs.borrow_mut();
        for (step, why, seen) in self.expected.borrow().iter() {
            if !seen {
                diffs.push(format!("{step}: expected to differ ({why}), but it did not"));
            }
        }
        for key in a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))) {
            match (a.get(key), b.get(key)) {
                (Some(x), Some(y)) if x == y => {}
                (x, y) => diffs.push(format!("[final tree] {key}:\n      plain dir: {x:?}\n      FUSE mount: {y:?}")),
            }
        }
        assert!(
            diffs.is_empty(),
            "{} divergence(s) between the plain directory and the FUSE mount:\n  {}",
            diffs.len(),
            diffs.join("\n  ")
        );
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        if !self.finished.get() && !std::thread::panicking() {
            panic!("a compare test must end with Pair::finish()");
        }
    }
}

/// Every entry under `root` (relative path → type, mode, owners, nlink, size, rdev, user.*
/// xattrs, and file content or symlink target); inode numbers and times are left out.
pub fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                out.insert(format!("{}/", dir.strip_prefix(root).unwrap().display()), format!("readdir: {e}"));
                continue;
            }
        };
        for e in entries {
            let path = e.expect("readdir entry").path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let desc = match raw_stat(&path, false) {
                Err(e) => format!("lstat: {e:?}"),
                Ok(s) => {
                    let st = St::from(&s);
                    let data = match st.kind {
                        '-' => format!("{:?}", read_file(&path)),
                        'l' => format!("-> {:?}", readlink(&path)),
                        'd' => {
                            todo.push(path.clone());
                            String::new()
                        }
                        _ => String::new(),
                    };
                    let xattrs: Vec<String> = listxattr(&path, 65536, false)
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|n| n.starts_with("user."))
                        .map(|n| format!("{n}={:?}", getxattr(&path, &n, 65536)))
                        .collect();
                    format!("{st:?} {data} xattrs={xattrs:?}")
                }
            };
            out.insert(rel, desc);
        }
    }
    out
}
