//! What the guest workload expects its directory to hold: directories, file names, and the
//! files (inodes) they name, with their bytes, link counts and xattrs.

use std::collections::{BTreeMap, BTreeSet};

use crate::listing;

#[derive(Default)]
pub struct FileM {
    pub data: Vec<u8>,
    /// Names in the tree (an unlinked file still open has 0 and is dropped at close).
    pub links: u64,
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

impl FileM {
    /// Writes `buf` at `off`, extending with zeros as a write past the end does.
    pub fn write_at(&mut self, off: usize, buf: &[u8]) {
        if self.data.len() < off + buf.len() {
            self.data.resize(off + buf.len(), 0);
        }
        self.data[off..off + buf.len()].copy_from_slice(buf);
    }
}

/// One workload thread's model; every path is relative to the mount point and starts with the
/// thread's own directory (`t<i>`), which no other thread touches.
pub struct Model {
    pub root: String,
    /// Directories, the thread's root included.
    pub dirs: BTreeSet<String>,
    /// File name → inode number (the model's own numbering).
    pub names: BTreeMap<String, u64>,
    pub files: BTreeMap<u64, FileM>,
    next_ino: u64,
    next_name: u64,
}

impl Model {
    pub fn new(root: String) -> Model {
        let mut dirs = BTreeSet::new();
        dirs.insert(root.clone());
        Model { root, dirs, names: BTreeMap::new(), files: BTreeMap::new(), next_ino: 1, next_name: 0 }
    }

    /// A name never used before in this thread, under `dir`.
    pub fn fresh(&mut self, dir: &str, prefix: &str) -> String {
        self.next_name += 1;
        format!("{dir}/{prefix}{}", self.next_name)
    }

    pub fn create(&mut self, path: String, data: Vec<u8>) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.files.insert(ino, FileM { data, links: 1, ..Default::default() });
        self.names.insert(path, ino);
        ino
    }

    pub fn file(&mut self, path: &str) -> &mut FileM {
        let ino = self.names[path];
        self.files.get_mut(&ino).expect("a name points to a file")
    }

    /// Removes a name; the file goes when its last name does, unless `keep` (still open).
    pub fn unlink(&mut self, path: &str, keep: bool) -> u64 {
        let ino = self.names.remove(path).expect("unlinking a known name");
        let f = self.files.get_mut(&ino).expect("a name points to a file");
        f.links -= 1;
        if f.links == 0 && !keep {
            self.files.remove(&ino);
        }
        ino
    }

    pub fn link(&mut self, from: &str, to: String) {
        let ino = self.names[from];
        self.files.get_mut(&ino).expect("a name points to a file").links += 1;
        self.names.insert(to, ino);
    }

    /// rename(2) of a file name onto `to` (new, or a file name it replaces).
    pub fn rename(&mut self, from: &str, to: String) {
        if self.names.get(&to) == self.names.get(from) && self.names.contains_key(&to) {
            return; // two names of one file: rename does nothing
        }
        if self.names.contains_key(&to) {
            self.unlink(&to, false);
        }
        let ino = self.names.remove(from).expect("renaming a known name");
        self.names.insert(to, ino);
    }

    /// The entries directly in `dir` (names only).
    pub fn children(&self, dir: &str) -> BTreeSet<String> {
        let pre = format!("{dir}/");
        let direct = |p: &String| p.strip_prefix(&pre).filter(|r| !r.contains('/')).map(str::to_string);
        self.dirs.iter().filter_map(direct).chain(self.names.keys().filter_map(direct)).collect()
    }

    pub fn file_names(&self) -> Vec<String> {
        self.names.keys().cloned().collect()
    }

    pub fn dir_names(&self) -> Vec<String> {
        self.dirs.iter().cloned().collect()
    }

    /// The listing lines of this thread's tree.
    pub fn listing(&self) -> Vec<String> {
        let mut out: Vec<String> = self.dirs.iter().map(|d| listing::dir_line(d)).collect();
        for (p, ino) in &self.names {
            let f = &self.files[ino];
            out.push(listing::file_line(p, f.data.len() as u64, f.links, listing::hash(&f.data)));
        }
        out
    }
}
