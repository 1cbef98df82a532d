//! Workload operations on names: rename (files and directories, over existing targets), link,
//! unlink (also of open files), mkdir, rmdir, readdir.

use std::path::Path;

use crate::common::sys;
use crate::model::*;
use crate::worker::{OpResult, Worker};

impl Worker {
    pub fn op_rename_file(&mut self) -> OpResult {
        let Some(src) = self.pick_file() else { return self.op_create() };
        let dir = parent_of(&src).to_string();
        let siblings: Vec<String> = self
            .m
            .children(&dir)
            .into_iter()
            .map(|b| join(&dir, &b))
            .filter(|n| *n != src && matches!(self.m.names[n], Kind::File(_)))
            .collect();
        let dst = match self.rng.chance(1, 2).then(|| self.rng.pick(&siblings).cloned()).flatten() {
            Some(existing) => existing,
            None => {
                let b = self.m.fresh("f");
                join(&dir, &b)
            }
        };
        let r = sys::rename(&self.p(&src), &self.p(&dst));
        let replaced = self.m.names.get(&dst).copied();
        self.ok_or(format!("rename({src}, {dst}{})", if replaced.is_some() { " existing" } else { "" }), r)?;
        let kind = self.m.names[&src];
        self.did(format!("rename {src} {dst}"));
        match replaced {
            // Two links of one inode: rename does nothing.
            Some(k) if k == kind => self.note("rename: links of one file"),
            Some(Kind::File(old)) => {
                self.note("rename: over an existing file");
                self.m.names.remove(&src);
                self.m.names.insert(dst, kind);
                self.m.drop_link(old);
            }
            Some(Kind::Dir) => unreachable!(),
            None => {
                self.m.names.remove(&src);
                self.m.names.insert(dst, kind);
            }
        }
        Ok(())
    }

    pub fn op_rename_dir(&mut self) -> OpResult {
        let dirs = self.m.dirs();
        let Some(src) = self.rng.pick(&dirs).cloned() else { return self.op_mkdir() };
        let others: Vec<String> = dirs.iter().filter(|d| **d != src).cloned().collect();
        let dst = match self.rng.chance(1, 3).then(|| self.rng.pick(&others).cloned()).flatten() {
            Some(d) => d,
            None => self.m.fresh("d"),
        };
        let r = sys::rename(&self.p(&src), &self.p(&dst));
        let target_exists = self.m.names.contains_key(&dst);
        let target_empty = self.m.children(&dst).is_empty();
        let what = format!("rename({src}, {dst}{})", if target_exists { " existing dir" } else { "" });
        if target_exists && !target_empty {
            expect!(self, format!("{what} (not empty)"), r, Err(libc::ENOTEMPTY));
            self.note("rename dir: ENOTEMPTY");
            return Ok(());
        }
        self.ok_or(what, r)?;
        self.did(format!("rename dir {src} {dst}"));
        if target_exists {
            self.note("rename dir: over an empty dir");
        }
        self.m.names.remove(&src);
        self.m.names.insert(dst.clone(), Kind::Dir);
        let moved: Vec<(String, Kind)> =
            self.m.names.iter().filter(|(n, _)| parent_of(n) == src).map(|(n, k)| (n.clone(), *k)).collect();
        for (n, k) in moved {
            self.m.names.remove(&n);
            let base = n.rsplit_once('/').unwrap().1;
            self.m.names.insert(join(&dst, base), k);
        }
        Ok(())
    }

    pub fn op_link(&mut self) -> OpResult {
        if self.m.files().len() >= MAX_FILE_NAMES {
            return self.op_unlink();
        }
        let Some(src) = self.pick_file() else { return self.op_create() };
        let parents = self.m.parents();
        let dir = self.rng.pick(&parents).unwrap().clone();
        let base = self.m.fresh("f");
        let dst = join(&dir, &base);
        let r = sys::link(&self.p(&src), &self.p(&dst));
        self.ok_or(format!("link({src}, {dst})"), r)?;
        let ino = self.m.ino(&src);
        self.m.inodes.get_mut(&ino).unwrap().nlink += 1;
        self.m.names.insert(dst.clone(), Kind::File(ino));
        self.did(format!("link {src} {dst}"));
        let st = self.ok_or(format!("lstat {dst} after link"), sys::lstat(&self.p(&dst)))?;
        expect!(
            self,
            format!("lstat {dst} after link: st_nlink"),
            st.st_nlink as u64,
            self.m.inodes[&ino].nlink as u64
        );
        Ok(())
    }

    pub fn op_link_existing(&mut self) -> OpResult {
        let Some(src) = self.pick_file() else { return Ok(()) };
        let names: Vec<String> = self.m.names.keys().cloned().collect();
        let dst = self.rng.pick(&names).unwrap().clone();
        expect!(
            self,
            format!("link({src}, existing {dst})"),
            sys::link(&self.p(&src), &self.p(&dst)),
            Err(libc::EEXIST)
        );
        Ok(())
    }

    pub fn op_unlink(&mut self) -> OpResult {
        let Some(name) = self.pick_file() else { return Ok(()) };
        self.ok_or(format!("unlink({name})"), sys::unlink(&self.p(&name)))?;
        self.did(format!("unlink {name}"));
        let ino = self.m.ino(&name);
        self.m.names.remove(&name);
        self.m.drop_link(ino);
        Ok(())
    }

    /// Unlinks every name of a file that is open, then keeps using it through the fd.
    pub fn op_unlink_open(&mut self) -> OpResult {
        let Some(i) = self.pick_open() else { return self.op_create() };
        let ino = self.m.open[i].ino;
        for name in self.m.names_of(ino) {
            self.ok_or(format!("unlink({name}) of an open file"), sys::unlink(&self.p(&name)))?;
            self.did(format!("unlink open {name}"));
            self.m.names.remove(&name);
            self.m.drop_link(ino);
        }
        self.note("unlink-open: used after the last unlink");
        self.write_fd(i)?;
        let desc = self.fd_desc(i);
        self.verify_fd(self.m.open[i].fd, ino, &desc)?;
        let fd = self.m.open[i].fd;
        let want: Vec<String> = self.m.inodes[&ino].xattrs.keys().cloned().collect();
        expect!(self, format!("flistxattr({desc})"), sys::listxattr(Path::new(""), Some(fd)), Ok(want));
        Ok(())
    }

    pub fn op_unlink_dir(&mut self) -> OpResult {
        let dirs = self.m.dirs();
        let Some(d) = self.rng.pick(&dirs).cloned() else { return Ok(()) };
        expect!(self, format!("unlink(dir {d})"), sys::unlink(&self.p(&d)), Err(libc::EISDIR));
        Ok(())
    }

    pub fn op_mkdir(&mut self) -> OpResult {
        let dirs = self.m.dirs();
        if !dirs.is_empty() && (dirs.len() >= MAX_DIRS || self.rng.chance(1, 8)) {
            let names: Vec<String> = self.m.names.keys().cloned().collect();
            let n = self.rng.pick(&names).unwrap().clone();
            expect!(self, format!("mkdir(existing {n})"), sys::mkdir(&self.p(&n), 0o755), Err(libc::EEXIST));
            return Ok(());
        }
        let d = self.m.fresh("d");
        self.ok_or(format!("mkdir({d})"), sys::mkdir(&self.p(&d), 0o755))?;
        self.m.names.insert(d, Kind::Dir);
        Ok(())
    }

    pub fn op_rmdir(&mut self) -> OpResult {
        let dirs = self.m.dirs();
        let Some(d) = self.rng.pick(&dirs).cloned() else { return self.op_mkdir() };
        if self.rng.chance(1, 2) {
            // Empty it first (its files may be open: they live on unlinked).
            for base in self.m.children(&d) {
                let name = join(&d, &base);
                self.ok_or(format!("unlink({name}) to empty {d}"), sys::unlink(&self.p(&name)))?;
                self.did(format!("unlink {name}"));
                let ino = self.m.ino(&name);
                self.m.names.remove(&name);
                self.m.drop_link(ino);
            }
        }
        let r = sys::rmdir(&self.p(&d));
        if self.m.children(&d).is_empty() {
            self.ok_or(format!("rmdir({d}) (empty)"), r)?;
            self.did(format!("rmdir {d}"));
            self.m.names.remove(&d);
        } else {
            expect!(self, format!("rmdir({d}) (not empty)"), r, Err(libc::ENOTEMPTY));
            self.note("rmdir: ENOTEMPTY");
        }
        Ok(())
    }

    pub fn op_readdir(&mut self) -> OpResult {
        let parents = self.m.parents();
        let d = self.rng.pick(&parents).unwrap().clone();
        let mut want = self.m.children(&d);
        want.sort();
        expect!(self, format!("readdir({})", if d.is_empty() { "." } else { &d }), sys::readdir(&self.p(&d)), Ok(want));
        Ok(())
    }
}
