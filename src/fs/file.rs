//! Open files: OPEN, CREATE, TMPFILE, READ, WRITE, FLUSH, RELEASE, FSYNC, FALLOCATE, LSEEK,
//! COPY_FILE_RANGE; and the whole-file-system calls STATFS, ACCESS, SYNCFS.

use std::ffi::CStr;

use super::{Context, Error, Fs, Result, check_name};
use crate::fuse::{ReplyBuf, abi};
use crate::state::{HandleKind, HandlePin};
use crate::sys::{self, FdName};

/// Largest COPY_FILE_RANGE a reply can report (its size field is 32 bits).
const MAX_COPY: u64 = 1 << 30;

impl Fs {
    /// The flags a guest open turns into on the host: creation flags are handled by the kernel
    /// before OPEN (or by our own openat for CREATE), and writeback caching needs read access
    /// and no O_APPEND because the guest kernel writes back whole pages at offsets it chose.
    fn host_open_flags(&self, guest: u32) -> i32 {
        let mut f = guest as i32 & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_NOATIME);
        if !self.cfg.allow_direct_io {
            f &= !libc::O_DIRECT;
        }
        if self.writeback.load(std::sync::atomic::Ordering::Relaxed) {
            f &= !libc::O_APPEND;
            if f & libc::O_ACCMODE == libc::O_WRONLY {
                f = (f & !libc::O_ACCMODE) | libc::O_RDWR;
            }
        }
        f
    }

    fn open_out(&self, fh: u64, guest_flags: u32) -> abi::OpenOut {
        let mut open_flags = self.cfg.open_reply_flags;
        if self.cfg.allow_direct_io && guest_flags as i32 & libc::O_DIRECT != 0 {
            open_flags |= abi::FOPEN_DIRECT_IO;
        }
        abi::OpenOut { fh, open_flags, backing_id: 0 }
    }

    pub(super) fn pin_any_handle(&self, fh: u64) -> Result<HandlePin> {
        self.state
            .handles
            .pin(fh, HandleKind::File)
            .or_else(|_| self.state.handles.pin(fh, HandleKind::Dir))
            .map_err(Error::from)
    }

    fn file(&self, fh: u64) -> Result<HandlePin> {
        Ok(self.state.handles.pin(fh, HandleKind::File)?)
    }

    pub fn open(&self, ctx: &Context, nodeid: u64, a: &abi::OpenIn) -> Result<abi::OpenOut> {
        let node = self.state.inodes.pin(nodeid)?;
        if node.slot().file_type.load(std::sync::atomic::Ordering::Relaxed) == libc::S_IFDIR
            && a.flags as i32 & libc::O_ACCMODE != libc::O_RDONLY
        {
            return Err(Error::Os(std::io::Error::from_raw_os_error(libc::EISDIR)));
        }
        let fd = {
            let _as = ctx.become_caller()?;
            self.reopen(node.fd(), self.host_open_flags(a.flags))?
        };
        let fh = self.state.handles.insert(fd, HandleKind::File, nodeid, a.flags)?;
        self.locks.file_opened(nodeid);
        Ok(self.open_out(fh, a.flags))
    }

    pub fn create(&self, ctx: &Context, parent: u64, name: &CStr, a: &abi::CreateIn) -> Result<(abi::EntryOut, abi::OpenOut)> {
        let name = check_name(name)?;
        let dir = self.state.inodes.pin(parent)?;
        let (fd, entry) = {
            let _as = ctx.become_caller()?;
            let flags = self.host_open_flags(a.flags) | libc::O_CREAT | (a.flags as i32 & libc::O_EXCL);
            let fd = sys::openat(dir.fd(), name, flags | libc::O_NOFOLLOW, a.mode)?;
            match self.lookup_at(dir.fd(), name) {
                Ok(entry) => (fd, entry),
                Err(e) => {
                    sys::close(fd);
                    return Err(e);
                }
            }
        };
        let fh = self.state.handles.insert(fd, HandleKind::File, entry.nodeid, a.flags)?;
        self.locks.file_opened(entry.nodeid);
        Ok((entry, self.open_out(fh, a.flags)))
    }

    pub fn tmpfile(&self, ctx: &Context, parent: u64, a: &abi::CreateIn) -> Result<(abi::EntryOut, abi::OpenOut)> {
        let dir = self.state.inodes.pin(parent)?;
        let (fd, entry) = {
            let _as = ctx.become_caller()?;
            let flags = (self.host_open_flags(a.flags) & !libc::O_DIRECTORY) | libc::O_TMPFILE;
            let fd = sys::openat(dir.fd(), c".", flags, a.mode)?;
            // The unnamed file has no name to look up: its node is made from the fd itself.
            let name = FdName::new(fd);
            match self.lookup_at_magic(name.as_cstr()) {
                Ok(entry) => (fd, entry),
                Err(e) => {
                    sys::close(fd);
                    return Err(e);
                }
            }
        };
        let fh = self.state.handles.insert(fd, HandleKind::File, entry.nodeid, a.flags)?;
        self.locks.file_opened(entry.nodeid);
        Ok((entry, self.open_out(fh, a.flags)))
    }

    /// Looks up an object by its /proc/self/fd entry (for files that have no name).
    fn lookup_at_magic(&self, fd_name: &CStr) -> Result<abi::EntryOut> {
        let path_fd = sys::openat(self.proc_self_fd, fd_name, libc::O_PATH, 0)?;
        let entry = self.lookup_fd(path_fd);
        entry
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32, out: &mut ReplyBuf) -> Result<()> {
        let h = self.file(fh)?;
        let buf = out.tail_mut(size as usize);
        let n = sys::pread(h.fd(), buf, offset)?;
        out.truncate_payload(n);
        Ok(())
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<abi::WriteOut> {
        let h = self.file(fh)?;
        let n = sys::pwrite(h.fd(), data, offset)?;
        Ok(abi::WriteOut { size: n as u32, padding: 0 })
    }

    pub fn flush(&self, fh: u64, lock_owner: u64) -> Result<()> {
        let h = self.file(fh)?;
        self.drop_owner_locks(h.slot().nodeid.load(std::sync::atomic::Ordering::Relaxed), lock_owner)?;
        // Closing a duplicate gives the host file system the flush a close() would (NFS
        // writes back here), without dropping the handle's locks, which belong to its open
        // file description, not to this fd.
        let dup = sys::dup(h.fd())?;
        sys::close(dup);
        Ok(())
    }

    pub fn release(&self, fh: u64, kind: HandleKind) -> Result<()> {
        let nodeid = self.state.handles.release(fh, kind)?;
        if kind == HandleKind::File {
            self.locks.file_closed(nodeid, fh, &self.state.handles);
        }
        Ok(())
    }

    pub fn fsync(&self, fh: u64, kind: HandleKind, datasync: bool) -> Result<()> {
        let h = self.state.handles.pin(fh, kind)?;
        Ok(sys::fsync(h.fd(), datasync)?)
    }

    pub fn fallocate(&self, a: &abi::FallocateIn) -> Result<()> {
        let h = self.file(a.fh)?;
        Ok(sys::fallocate(h.fd(), a.mode as i32, a.offset, a.length)?)
    }

    pub fn lseek(&self, a: &abi::LseekIn) -> Result<abi::LseekOut> {
        let h = self.file(a.fh)?;
        let offset = i64::try_from(a.offset).map_err(|_| Error::OutOfRange)?;
        Ok(abi::LseekOut { offset: sys::lseek(h.fd(), offset, a.whence as i32)? })
    }

    pub fn copy_file_range(&self, a: &abi::CopyFileRangeIn) -> Result<abi::WriteOut> {
        let src = self.file(a.fh_in)?;
        let dst = self.file(a.fh_out)?;
        let flags = u32::try_from(a.flags).map_err(|_| Error::OutOfRange)?;
        let len = a.len.min(MAX_COPY) as usize;
        let n = sys::copy_file_range(src.fd(), a.off_in, dst.fd(), a.off_out, len, flags)?;
        Ok(abi::WriteOut { size: n as u32, padding: 0 })
    }

    pub fn statfs(&self, nodeid: u64) -> Result<abi::Kstatfs> {
        let node = self.state.inodes.pin(nodeid)?;
        let st = sys::fstatfs(node.fd())?;
        Ok(abi::Kstatfs {
            blocks: st.f_blocks,
            bfree: st.f_bfree,
            bavail: st.f_bavail,
            files: st.f_files,
            ffree: st.f_ffree,
            bsize: st.f_bsize as u32,
            namelen: st.f_namemax as u32,
            frsize: st.f_frsize as u32,
            padding: 0,
            spare: [0; 6],
        })
    }

    pub fn access(&self, ctx: &Context, nodeid: u64, mask: u32) -> Result<()> {
        let node = self.state.inodes.pin(nodeid)?;
        let name = FdName::new(node.fd());
        let _as = ctx.become_caller()?;
        Ok(sys::faccessat(self.proc_self_fd, name.as_cstr(), mask as i32, libc::AT_EACCESS)?)
    }

    pub fn syncfs(&self, nodeid: u64) -> Result<()> {
        let node = self.state.inodes.pin(nodeid)?;
        let fd = self.reopen(node.fd(), libc::O_RDONLY | libc::O_NONBLOCK)?;
        let r = sys::syncfs(fd);
        sys::close(fd);
        Ok(r?)
    }
}
