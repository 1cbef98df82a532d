//! The model a workload thread checks every result against: its directory's names (files and
//! subdirectories), file inodes (data, xattrs, link count) and open fds (with their OFD-lock
//! state); and how results and data print in a failure message.

use std::collections::BTreeMap;
use std::os::fd::RawFd;

use crate::common::errno::name as ename;
use crate::common::sys::R;

pub const MAX_FILE_NAMES: usize = 40;
pub const MAX_DIRS: usize = 6;
pub const MAX_OPEN: usize = 6;
pub const MAX_SIZE: u64 = 48 * 1024;
pub const XATTR_NAMES: [&str; 4] = ["user.a", "user.b", "user.c", "user.soak.long-name"];

#[derive(Clone, Debug, Default)]
pub struct Inode {
    pub data: Vec<u8>,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    pub nlink: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File(u64),
    Dir,
}

#[derive(Debug)]
pub struct OpenFile {
    pub fd: RawFd,
    pub ino: u64,
    pub append: bool,
    /// Holds an OFD write lock over the whole file.
    pub locked: bool,
}

#[derive(Default)]
pub struct Model {
    /// Relative to the thread's directory: `f3`, `d1`, `d1/f7`.
    pub names: BTreeMap<String, Kind>,
    pub inodes: BTreeMap<u64, Inode>,
    pub open: Vec<OpenFile>,
    pub next: u64,
}

impl Model {
    pub fn fresh(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}{}", self.next)
    }
    pub fn files(&self) -> Vec<String> {
        self.names.iter().filter(|(_, k)| matches!(k, Kind::File(_))).map(|(n, _)| n.clone()).collect()
    }
    pub fn dirs(&self) -> Vec<String> {
        self.names.iter().filter(|(_, k)| **k == Kind::Dir).map(|(n, _)| n.clone()).collect()
    }
    /// "" (the thread's directory) and every subdirectory.
    pub fn parents(&self) -> Vec<String> {
        let mut v = vec![String::new()];
        v.extend(self.dirs());
        v
    }
    pub fn children(&self, dir: &str) -> Vec<String> {
        self.names
            .keys()
            .filter_map(|n| match n.rsplit_once('/') {
                Some((d, base)) if d == dir => Some(base.to_string()),
                None if dir.is_empty() => Some(n.clone()),
                _ => None,
            })
            .collect()
    }
    pub fn names_of(&self, ino: u64) -> Vec<String> {
        self.names.iter().filter(|(_, k)| **k == Kind::File(ino)).map(|(n, _)| n.clone()).collect()
    }
    pub fn ino(&self, name: &str) -> u64 {
        match self.names[name] {
            Kind::File(i) => i,
            Kind::Dir => panic!("{name} is a directory"),
        }
    }
    /// Some open fd of the file holds the OFD lock (other than `except`).
    pub fn locked(&self, ino: u64, except: Option<RawFd>) -> bool {
        self.open.iter().any(|o| o.ino == ino && o.locked && Some(o.fd) != except)
    }
    pub fn drop_link(&mut self, ino: u64) {
        let i = self.inodes.get_mut(&ino).unwrap();
        i.nlink -= 1;
        self.maybe_free(ino);
    }
    pub fn maybe_free(&mut self, ino: u64) {
        if self.inodes[&ino].nlink == 0 && !self.open.iter().any(|o| o.ino == ino) {
            self.inodes.remove(&ino);
        }
    }
}

pub fn parent_of(name: &str) -> &str {
    name.rsplit_once('/').map_or("", |(d, _)| d)
}

pub fn join(dir: &str, base: &str) -> String {
    if dir.is_empty() { base.to_string() } else { format!("{dir}/{base}") }
}

pub fn write_at(data: &mut Vec<u8>, off: u64, b: &[u8]) {
    if b.is_empty() {
        return; // a zero-length write does not extend the file
    }
    let end = off as usize + b.len();
    if data.len() < end {
        data.resize(end, 0);
    }
    data[off as usize..end].copy_from_slice(b);
}

pub fn short(b: &[u8]) -> String {
    if b.len() <= 24 {
        return format!("{b:?}");
    }
    let h = b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| (h ^ *x as u64).wrapping_mul(0x100_0000_01b3));
    format!("{} bytes fnv {h:016x}", b.len())
}

/// Where two byte strings first differ, for a failure message.
pub fn data_diff(want: &[u8], got: &[u8]) -> String {
    let first = want.iter().zip(got).position(|(a, b)| a != b).unwrap_or(want.len().min(got.len()));
    format!("{} (first difference at byte {first})", short(got))
}

// ---------------------------------------------------------------------------------------------
// Printing results

/// A syscall result, printed for a failure message.
pub fn show<T: std::fmt::Debug>(r: &R<T>) -> String {
    match r {
        Ok(v) => format!("Ok({v:?})"),
        Err(e) => format!("Err({})", ename(*e)),
    }
}

/// What `expect!` prints: syscall results with errno names, plain values as they are.
pub trait Show {
    fn show(&self) -> String;
}

impl<T: std::fmt::Debug> Show for R<T> {
    fn show(&self) -> String {
        show(self)
    }
}

macro_rules! show_plain {
    ($($t:ty),*) => { $(impl Show for $t { fn show(&self) -> String { format!("{self:?}") } })* };
}
show_plain!(u32, u64, usize);
