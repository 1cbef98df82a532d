//! Workload operations on xattrs (by path and through open fds) and OFD locks (held across
//! kills, checked from new fds).

use std::os::fd::RawFd;
use std::path::PathBuf;

use crate::common::errno::name as ename;
use crate::common::sys;
use crate::model::*;
use crate::worker::{OpResult, Worker};

impl Worker {
    /// A file for an xattr op: by path, or (one in three) through an open fd.
    pub fn xattr_target(&mut self) -> Option<(u64, PathBuf, Option<RawFd>, String)> {
        if self.rng.chance(1, 3)
            && let Some(i) = self.pick_open()
        {
            let o = &self.m.open[i];
            return Some((o.ino, PathBuf::new(), Some(o.fd), self.fd_desc(i)));
        }
        let name = self.pick_file()?;
        Some((self.m.ino(&name), self.p(&name), None, name))
    }

    pub fn op_setxattr(&mut self) -> OpResult {
        let Some((ino, p, fd, desc)) = self.xattr_target() else { return self.op_create() };
        let key = *self.rng.pick(&XATTR_NAMES).unwrap();
        let len = self.rng.range(0, 96) as usize;
        let val = self.rng.bytes(len);
        let exists = self.m.inodes[&ino].xattrs.contains_key(key);
        let (flags, fname) = match self.rng.below(4) {
            0 => (libc::XATTR_CREATE, "XATTR_CREATE"),
            1 => (libc::XATTR_REPLACE, "XATTR_REPLACE"),
            _ => (0, "0"),
        };
        let r = sys::setxattr(&p, fd, key, &val, flags);
        let what = format!("setxattr({desc}, {key}, {len} bytes, {fname}) (exists: {exists})");
        match (flags, exists) {
            (libc::XATTR_CREATE, true) => {
                expect!(self, what, r, Err(libc::EEXIST));
                self.note("setxattr: EEXIST");
            }
            (libc::XATTR_REPLACE, false) => {
                expect!(self, what, r, Err(libc::ENODATA));
                self.note("setxattr: ENODATA");
            }
            _ => {
                self.ok_or(what, r)?;
                self.m.inodes.get_mut(&ino).unwrap().xattrs.insert(key.to_string(), val);
            }
        }
        Ok(())
    }

    pub fn op_getxattr(&mut self) -> OpResult {
        let Some((ino, p, fd, desc)) = self.xattr_target() else { return self.op_create() };
        let key = *self.rng.pick(&XATTR_NAMES).unwrap();
        let want = self.m.inodes[&ino].xattrs.get(key).cloned().ok_or(libc::ENODATA);
        expect!(self, format!("getxattr({desc}, {key})"), sys::getxattr(&p, fd, key), want);
        Ok(())
    }

    pub fn op_listxattr(&mut self) -> OpResult {
        let Some((ino, p, fd, desc)) = self.xattr_target() else { return self.op_create() };
        let want: Vec<String> = self.m.inodes[&ino].xattrs.keys().cloned().collect();
        expect!(self, format!("listxattr({desc})"), sys::listxattr(&p, fd), Ok(want));
        Ok(())
    }

    pub fn op_removexattr(&mut self) -> OpResult {
        let Some((ino, p, fd, desc)) = self.xattr_target() else { return self.op_create() };
        let key = *self.rng.pick(&XATTR_NAMES).unwrap();
        let r = sys::removexattr(&p, fd, key);
        if self.m.inodes.get_mut(&ino).unwrap().xattrs.remove(key).is_some() {
            self.ok_or(format!("removexattr({desc}, {key})"), r)?;
        } else {
            expect!(self, format!("removexattr({desc}, absent {key})"), r, Err(libc::ENODATA));
        }
        Ok(())
    }

    /// OFD write lock through an open fd: EAGAIN iff another open fd of the file holds one.
    pub fn op_lock(&mut self) -> OpResult {
        let Some(i) = self.pick_open() else { return self.op_create() };
        let (fd, ino) = (self.m.open[i].fd, self.m.open[i].ino);
        let desc = self.fd_desc(i);
        let r = sys::ofd(fd, libc::F_OFD_SETLK, libc::F_WRLCK);
        if self.m.locked(ino, Some(fd)) {
            expect!(self, format!("F_OFD_SETLK F_WRLCK {desc} (another fd holds it)"), r, Err(libc::EAGAIN));
            self.note("lock: EAGAIN");
        } else {
            self.ok_or(format!("F_OFD_SETLK F_WRLCK {desc}"), r)?;
            self.m.open[i].locked = true;
        }
        Ok(())
    }

    pub fn op_unlock(&mut self) -> OpResult {
        let Some(i) = self.pick_open() else { return self.op_create() };
        let desc = self.fd_desc(i);
        self.ok_or(
            format!("F_OFD_SETLK F_UNLCK {desc}"),
            sys::ofd(self.m.open[i].fd, libc::F_OFD_SETLK, libc::F_UNLCK),
        )?;
        self.m.open[i].locked = false;
        Ok(())
    }

    /// A new fd on a file (preferably one whose lock is held, maybe since many kills ago):
    /// GETLK and SETLK see exactly the model's lock.
    pub fn op_lock_check(&mut self) -> OpResult {
        let held: Vec<String> =
            self.m.open.iter().filter(|o| o.locked).filter_map(|o| self.m.names_of(o.ino).into_iter().next()).collect();
        let name = match self.rng.pick(&held).cloned() {
            Some(n) if self.rng.chance(3, 4) => n,
            _ => match self.pick_file() {
                Some(n) => n,
                None => return self.op_create(),
            },
        };
        let ino = self.m.ino(&name);
        let locked = self.m.locked(ino, None);
        if locked {
            self.note("lock-check: held by a kept fd");
        }
        let fd =
            self.ok_or(format!("open({name}, O_RDWR) for lock check"), sys::open(&self.p(&name), libc::O_RDWR, 0))?;
        let res = (|| {
            let want = if locked { libc::F_WRLCK } else { libc::F_UNLCK };
            expect!(
                self,
                format!("F_OFD_GETLK F_WRLCK new fd on {name} (locked: {locked})"),
                sys::ofd(fd, libc::F_OFD_GETLK, libc::F_WRLCK),
                Ok(want)
            );
            let r = sys::ofd(fd, libc::F_OFD_SETLK, libc::F_WRLCK);
            if locked {
                expect!(
                    self,
                    format!("F_OFD_SETLK F_WRLCK new fd on {name} (locked by another fd)"),
                    r,
                    Err(libc::EAGAIN)
                );
            } else {
                expect!(self, format!("F_OFD_SETLK F_WRLCK new fd on {name} (unlocked)"), r, Ok(libc::F_WRLCK));
                expect!(
                    self,
                    format!("F_OFD_SETLK F_UNLCK new fd on {name}"),
                    sys::ofd(fd, libc::F_OFD_SETLK, libc::F_UNLCK),
                    Ok(libc::F_UNLCK)
                );
            }
            Ok(())
        })();
        let c = sys::close(fd);
        res?;
        self.ok_or(format!("close lock-check fd of {name}"), c)
    }

    /// Two new fds on one file: fd1 locks, fd2 gets EAGAIN and sees the lock, fd1 unlocks, fd2
    /// can lock. (On a file some kept fd holds locked, fd1 already gets EAGAIN.)
    pub fn op_lock_pair(&mut self) -> OpResult {
        let Some(name) = self.pick_file() else { return self.op_create() };
        let ino = self.m.ino(&name);
        let locked = self.m.locked(ino, None);
        let p = self.p(&name);
        let a = self.ok_or(format!("open({name}, O_RDWR) fd1"), sys::open(&p, libc::O_RDWR, 0))?;
        let b = match sys::open(&p, libc::O_RDWR, 0) {
            Ok(b) => b,
            Err(e) => {
                sys::close(a).ok();
                return Err(self.mismatch(format!("open({name}, O_RDWR) fd2"), "success", &ename(e)));
            }
        };
        let res = (|| {
            let r = sys::ofd(a, libc::F_OFD_SETLK, libc::F_WRLCK);
            if locked {
                expect!(
                    self,
                    format!("fd1 F_OFD_SETLK F_WRLCK {name} (a kept fd holds the lock)"),
                    r,
                    Err(libc::EAGAIN)
                );
                return Ok(());
            }
            expect!(self, format!("fd1 F_OFD_SETLK F_WRLCK {name}"), r, Ok(libc::F_WRLCK));
            expect!(
                self,
                format!("fd2 F_OFD_SETLK F_WRLCK {name} while fd1 holds it"),
                sys::ofd(b, libc::F_OFD_SETLK, libc::F_WRLCK),
                Err(libc::EAGAIN)
            );
            expect!(
                self,
                format!("fd2 F_OFD_GETLK {name} while fd1 holds it"),
                sys::ofd(b, libc::F_OFD_GETLK, libc::F_WRLCK),
                Ok(libc::F_WRLCK)
            );
            expect!(
                self,
                format!("fd1 F_OFD_SETLK F_UNLCK {name}"),
                sys::ofd(a, libc::F_OFD_SETLK, libc::F_UNLCK),
                Ok(libc::F_UNLCK)
            );
            expect!(
                self,
                format!("fd2 F_OFD_SETLK F_WRLCK {name} after fd1 unlocked"),
                sys::ofd(b, libc::F_OFD_SETLK, libc::F_WRLCK),
                Ok(libc::F_WRLCK)
            );
            expect!(
                self,
                format!("fd1 F_OFD_SETLK F_WRLCK {name} while fd2 holds it"),
                sys::ofd(a, libc::F_OFD_SETLK, libc::F_WRLCK),
                Err(libc::EAGAIN)
            );
            expect!(
                self,
                format!("fd2 F_OFD_SETLK F_UNLCK {name}"),
                sys::ofd(b, libc::F_OFD_SETLK, libc::F_UNLCK),
                Ok(libc::F_UNLCK)
            );
            Ok(())
        })();
        let (ca, cb) = (sys::close(a), sys::close(b));
        res?;
        self.ok_or(format!("close fd1 of {name}"), ca)?;
        self.ok_or(format!("close fd2 of {name}"), cb)
    }
}
