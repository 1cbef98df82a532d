//! Looking objects up, and their attributes: LOOKUP, FORGET, GETATTR, SETATTR.

use std::ffi::CStr;
use std::time::Duration;

use super::creds::without_fsetid_if;
use super::{Context, Error, Fs, Result, check_name};
use crate::fuse::abi;
use crate::state::InodeKey;
use crate::state::intent::Intent;
use crate::sys::{self, FdName};

/// How long the kernel may cache names and attributes (from --cache).
#[derive(Debug, Clone, Copy)]
pub struct EntryTimeouts {
    pub entry: Duration,
    pub attr: Duration,
}

pub fn key_of(st: &libc::statx) -> InodeKey {
    InodeKey { dev: libc::makedev(st.stx_dev_major, st.stx_dev_minor), ino: st.stx_ino, mnt_id: st.stx_mnt_id }
}

/// The reply's attributes. Times keep their sign bit: the kernel reads the u64 seconds back as
/// its signed time64_t, so a time before 1970 round-trips.
pub fn attr_of(st: &libc::stat64) -> abi::Attr {
    abi::Attr {
        ino: st.st_ino,
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: st.st_atime as u64,
        mtime: st.st_mtime as u64,
        ctime: st.st_ctime as u64,
        atimensec: st.st_atime_nsec as u32,
        mtimensec: st.st_mtime_nsec as u32,
        ctimensec: st.st_ctime_nsec as u32,
        mode: st.st_mode,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

/// The stat of a statx made with STATX_BASIC_STATS (sys::statx), field by field: what fstat
/// would have said, without a second system call.
pub fn stat_of(stx: &libc::statx) -> libc::stat64 {
    // SAFETY: stat64 is plain integers; all-zero is a valid value (its padding stays zero).
    let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
    st.st_dev = libc::makedev(stx.stx_dev_major, stx.stx_dev_minor);
    st.st_ino = stx.stx_ino;
    st.st_nlink = stx.stx_nlink.into();
    st.st_mode = stx.stx_mode.into();
    st.st_uid = stx.stx_uid;
    st.st_gid = stx.stx_gid;
    st.st_rdev = libc::makedev(stx.stx_rdev_major, stx.stx_rdev_minor);
    st.st_size = stx.stx_size as i64;
    st.st_blksize = stx.stx_blksize.into();
    st.st_blocks = stx.stx_blocks as i64;
    st.st_atime = stx.stx_atime.tv_sec;
    st.st_atime_nsec = stx.stx_atime.tv_nsec.into();
    st.st_mtime = stx.stx_mtime.tv_sec;
    st.st_mtime_nsec = stx.stx_mtime.tv_nsec.into();
    st.st_ctime = stx.stx_ctime.tv_sec;
    st.st_ctime_nsec = stx.stx_ctime.tv_nsec.into();
    st
}

pub(super) fn stat_fd(fd: i32) -> Result<libc::stat64> {
    Ok(sys::fstatat(fd, c"", libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW)?)
}

impl Fs {
    fn attr_out(&self, st: &libc::stat64) -> abi::AttrOut {
        let t = self.cfg.timeouts.attr;
        abi::AttrOut { attr_valid: t.as_secs(), attr_valid_nsec: t.subsec_nanos(), dummy: 0, attr: self.guest_attr(st) }
    }

    /// The reply's attributes with the owner as the guest sees it (`--translate-uid/gid`).
    fn guest_attr(&self, st: &libc::stat64) -> abi::Attr {
        let mut a = attr_of(st);
        a.uid = self.cfg.uids.to_guest(a.uid);
        a.gid = self.cfg.gids.to_guest(a.gid);
        a
    }

    /// Opens `name` under the directory fd `dirfd` and records one lookup of it.
    /// With FUSE_SUBMOUNTS agreed, a directory on another mount than `dirfd` is marked as a
    /// submount.
    pub(super) fn lookup_at(&self, dirfd: i32, name: &CStr, intent: Intent) -> Result<abi::EntryOut> {
        let fd = sys::openat_beneath(dirfd, name, libc::O_PATH | libc::O_NOFOLLOW)?;
        self.lookup_fd_in(fd, intent, Some(dirfd))
    }

    /// The entry of a node whose lookup this request already took (a replay after the raise).
    pub(super) fn entry_of(&self, nodeid: u64) -> Result<abi::EntryOut> {
        let node = self.state.inodes.pin(nodeid)?;
        let st = stat_fd(node.fd())?;
        Ok(self.entry_out(nodeid, st))
    }

    fn entry_out(&self, nodeid: u64, st: libc::stat64) -> abi::EntryOut {
        let t = self.cfg.timeouts;
        abi::EntryOut {
            nodeid,
            generation: nodeid >> 32,
            entry_valid: t.entry.as_secs(),
            attr_valid: t.attr.as_secs(),
            entry_valid_nsec: t.entry.subsec_nanos(),
            attr_valid_nsec: t.attr.subsec_nanos(),
            attr: self.guest_attr(&st),
        }
    }

    /// Records one lookup of the object that the fresh `O_PATH` fd `fd` names; the fd is
    /// consumed (kept by a new slot, or closed as a duplicate or on error).
    pub(super) fn lookup_fd(&self, fd: i32, intent: Intent) -> Result<abi::EntryOut> {
        self.lookup_fd_in(fd, intent, None)
    }

    /// `lookup_fd`, marking a directory FUSE_ATTR_SUBMOUNT if it is on another mount than the
    /// directory fd `parent`. Only a directory can be a submount, so only a directory's lookup
    /// asks for its parent's mount: none of the files that make most lookups (READDIRPLUS
    /// looks up every entry) pays a statx more for it.
    fn lookup_fd_in(&self, fd: i32, intent: Intent, parent: Option<i32>) -> Result<abi::EntryOut> {
        // One statx gives both the key (with the mount id) and the reply's attributes.
        let stx = match sys::statx(fd, c"", libc::AT_EMPTY_PATH) {
            Ok(stx) => stx,
            Err(e) => {
                sys::close(fd);
                return Err(e.into());
            }
        };
        let st = stat_of(&stx);
        let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        // Asked before the lookup count is taken, so that its failure leaves nothing taken.
        let submount = match parent {
            Some(dirfd) if is_dir && self.announce_submounts.load(std::sync::atomic::Ordering::Relaxed) => {
                match sys::statx(dirfd, c"", libc::AT_EMPTY_PATH) {
                    Ok(p) => p.stx_mnt_id != stx.stx_mnt_id,
                    Err(e) => {
                        sys::close(fd);
                        return Err(e.into());
                    }
                }
            }
            _ => false,
        };
        let looked = self
            .state
            .inodes
            .lookup(fd, key_of(&stx), st.st_mode & libc::S_IFMT, intent, || self.handle_for(fd, &stx))?;
        let mut entry = self.entry_out(looked.nodeid, st);
        if submount {
            entry.attr.flags |= abi::ATTR_SUBMOUNT;
        }
        Ok(entry)
    }

    pub fn lookup(&self, ctx: &Context, parent: u64, name: &CStr) -> Result<abi::EntryOut> {
        let name = check_name(name)?;
        // Replay after the raise: the count is taken, only the reply is missing.
        if let Some(&nodeid) = ctx.intent.raised().first() {
            return self.entry_of(nodeid);
        }
        let dir = self.state.inodes.pin(parent)?;
        let _as = ctx.become_caller()?;
        self.lookup_at(dir.fd(), name, ctx.intent)
    }

    /// FORGET and BATCH_FORGET: applies the entries from the first one not yet done (the
    /// record's step), each exactly once.
    pub fn forget(&self, entries: &[crate::state::Forget], intent: Intent) {
        self.state.inodes.forget_entries(entries, intent);
    }

    pub fn getattr(&self, nodeid: u64, fh: Option<u64>) -> Result<abi::AttrOut> {
        let node = self.state.inodes.pin(nodeid)?;
        // The fh adds nothing a passthrough needs (the O_PATH fd names the same object), but a
        // bad one is still an error, as it would be for the guest's fstat.
        if let Some(fh) = fh {
            self.pin_any_handle(fh)?;
        }
        Ok(self.attr_out(&stat_fd(node.fd())?))
    }

    pub fn setattr(&self, ctx: &Context, nodeid: u64, a: &abi::SetattrIn) -> Result<abi::AttrOut> {
        let node = self.state.inodes.pin(nodeid)?;
        let handle = if a.valid & abi::FATTR_FH != 0 { Some(self.pin_any_handle(a.fh)?) } else { None };
        let file_fd = handle.as_ref().map(|h| h.fd());
        let proc_name = FdName::new(node.fd());
        let _as = ctx.become_caller()?;

        if a.valid & abi::FATTR_MODE != 0 {
            match file_fd {
                Some(fd) => sys::fchmod(fd, a.mode)?,
                None => sys::fchmodat(self.proc_self_fd, proc_name.as_cstr(), a.mode)?,
            }
        }
        if a.valid & (abi::FATTR_UID | abi::FATTR_GID) != 0 {
            // The new owner as the host has it (--translate-uid/gid); a forbidden id is refused.
            // Mapping is a pure function of the request, so a replay chowns to the same ids.
            let forbidden = || Error::from_errno(libc::EPERM);
            let uid = if a.valid & abi::FATTR_UID != 0 {
                self.cfg.uids.to_host(a.uid).ok_or_else(forbidden)?
            } else {
                u32::MAX
            };
            let gid = if a.valid & abi::FATTR_GID != 0 {
                self.cfg.gids.to_host(a.gid).ok_or_else(forbidden)?
            } else {
                u32::MAX
            };
            sys::fchownat(node.fd(), c"", uid, gid, libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW)?;
        }
        if a.valid & abi::FATTR_SIZE != 0 {
            // FATTR_KILL_SUIDGID with a size: the caller lacks CAP_FSETID, so the host's
            // truncation clears the set-id bits, as natively. (With an owner change the flag is
            // unconditional, and the host's chown already does what a native chown does.)
            let _kill = without_fsetid_if(a.valid & abi::FATTR_KILL_SUIDGID != 0)?;
            match file_fd {
                Some(fd) => sys::ftruncate(fd, a.size)?,
                // Relative: the worker's working directory is its /proc/self/fd.
                None => sys::truncate(FdName::new(node.fd()).as_cstr(), a.size)?,
            }
        }
        if a.valid & (abi::FATTR_ATIME | abi::FATTR_MTIME) != 0 {
            // The wire carries the guest's signed seconds (time64_t) in a u64: times before 1970
            // are negative, and the host file system judges (and clamps) them as natively.
            let pick = |set: u32, now: u32, secs: u64, nsecs: u32| -> libc::timespec {
                if a.valid & set == 0 {
                    libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT }
                } else if a.valid & now != 0 {
                    libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW }
                } else {
                    libc::timespec { tv_sec: secs as i64, tv_nsec: i64::from(nsecs) }
                }
            };
            let times = [
                pick(abi::FATTR_ATIME, abi::FATTR_ATIME_NOW, a.atime, a.atimensec),
                pick(abi::FATTR_MTIME, abi::FATTR_MTIME_NOW, a.mtime, a.mtimensec),
            ];
            match file_fd {
                Some(fd) => sys::futimens(fd, &times)?,
                None => sys::utimensat(self.proc_self_fd, proc_name.as_cstr(), &times, 0)?,
            }
        }
        drop(_as);
        // Crash here: the changes are made, the reply is not; the replay sets the same absolute
        // values again (SETATTR has no relative change), which is idempotent.
        crate::crash_point!("setattr.after_change");
        Ok(self.attr_out(&stat_fd(node.fd())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `stat_of` says what fstat says, for every kind of object the table keeps (a device for
    /// its rdev, a symlink itself through an O_PATH|O_NOFOLLOW fd).
    #[test]
    fn test_stat_of_statx_equals_fstat() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("f"), vec![1u8; 5000]).unwrap();
        std::os::unix::fs::symlink("f", tmp.path().join("l")).unwrap();
        let paths = [tmp.path().join("f"), tmp.path().to_path_buf(), tmp.path().join("l"), "/dev/null".into()];
        for p in paths {
            let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
            let fd = sys::openat(libc::AT_FDCWD, &c, libc::O_PATH | libc::O_NOFOLLOW, 0).unwrap();
            let want = stat_fd(fd).unwrap();
            let got = stat_of(&sys::statx(fd, c"", libc::AT_EMPTY_PATH).unwrap());
            sys::close(fd);
            let fields = |s: &libc::stat64| {
                (s.st_dev, s.st_ino, s.st_nlink, s.st_mode, s.st_uid, s.st_gid, s.st_rdev, s.st_size, s.st_blksize)
            };
            let times = |s: &libc::stat64| {
                (s.st_blocks, s.st_atime, s.st_atime_nsec, s.st_mtime, s.st_mtime_nsec, s.st_ctime, s.st_ctime_nsec)
            };
            assert_eq!(fields(&got), fields(&want), "{p:?}");
            assert_eq!(times(&got), times(&want), "{p:?}");
        }
    }
}
