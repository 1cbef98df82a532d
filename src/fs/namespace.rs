//! Operations on names: MKNOD, MKDIR, SYMLINK, LINK, UNLINK, RMDIR, RENAME, READLINK. Each works
//! on one checked name relative to a parent's `O_PATH` fd, so none can reach outside the share.

use std::ffi::CStr;

use super::{Context, Fs, Result, check_name};
use crate::fuse::abi;
use crate::sys::{self, FdName};

impl Fs {
    /// Runs `make` (which creates `name` in the directory fd it is given) as the caller, then
    /// looks the new object up, so the reply carries its entry and one lookup.
    fn make_then_lookup(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        make: impl FnOnce(i32, &CStr) -> std::io::Result<()>,
    ) -> Result<abi::EntryOut> {
        let name = check_name(name)?;
        let dir = self.state.inodes.pin(parent)?;
        let _as = ctx.become_caller()?;
        make(dir.fd(), name)?;
        self.lookup_at(dir.fd(), name)
    }

    pub fn mknod(&self, ctx: &Context, parent: u64, name: &CStr, a: &abi::MknodIn) -> Result<abi::EntryOut> {
        self.make_then_lookup(ctx, parent, name, |dirfd, name| {
            sys::mknodat(dirfd, name, a.mode, u64::from(a.rdev))
        })
    }

    pub fn mkdir(&self, ctx: &Context, parent: u64, name: &CStr, a: &abi::MkdirIn) -> Result<abi::EntryOut> {
        self.make_then_lookup(ctx, parent, name, |dirfd, name| sys::mkdirat(dirfd, name, a.mode))
    }

    pub fn symlink(&self, ctx: &Context, parent: u64, name: &CStr, target: &CStr) -> Result<abi::EntryOut> {
        // The target is stored, never followed by us: it needs no check.
        self.make_then_lookup(ctx, parent, name, |dirfd, name| sys::symlinkat(target, dirfd, name))
    }

    pub fn link(&self, ctx: &Context, old: u64, newparent: u64, name: &CStr) -> Result<abi::EntryOut> {
        let src = self.state.inodes.pin(old)?;
        let src_name = FdName::new(src.fd());
        let proc = self.proc_self_fd;
        // linkat through /proc/self/fd follows the magic link to the object itself (which may be
        // a symlink); AT_EMPTY_PATH would need CAP_DAC_READ_SEARCH, which a caller lacks.
        self.make_then_lookup(ctx, newparent, name, |dirfd, name| {
            sys::linkat(proc, src_name.as_cstr(), dirfd, name, libc::AT_SYMLINK_FOLLOW)
        })
    }

    fn remove(&self, ctx: &Context, parent: u64, name: &CStr, flags: i32) -> Result<()> {
        let name = check_name(name)?;
        let dir = self.state.inodes.pin(parent)?;
        let _as = ctx.become_caller()?;
        Ok(sys::unlinkat(dir.fd(), name, flags)?)
    }

    pub fn unlink(&self, ctx: &Context, parent: u64, name: &CStr) -> Result<()> {
        self.remove(ctx, parent, name, 0)
    }

    pub fn rmdir(&self, ctx: &Context, parent: u64, name: &CStr) -> Result<()> {
        self.remove(ctx, parent, name, libc::AT_REMOVEDIR)
    }

    pub fn rename(&self, ctx: &Context, parent: u64, name: &CStr, newparent: u64, newname: &CStr, flags: u32) -> Result<()> {
        let name = check_name(name)?;
        let newname = check_name(newname)?;
        let allowed = libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE | libc::RENAME_WHITEOUT;
        if flags & !allowed != 0 {
            return Err(super::Error::OutOfRange);
        }
        let old_dir = self.state.inodes.pin(parent)?;
        let new_dir = self.state.inodes.pin(newparent)?;
        let _as = ctx.become_caller()?;
        Ok(sys::renameat2(old_dir.fd(), name, new_dir.fd(), newname, flags)?)
    }

    pub fn readlink(&self, nodeid: u64) -> Result<Vec<u8>> {
        let node = self.state.inodes.pin(nodeid)?;
        let mut buf = vec![0u8; libc::PATH_MAX as usize];
        let n = sys::readlinkat(node.fd(), c"", &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }
}
