//! Extended attributes: SETXATTR, GETXATTR, LISTXATTR, REMOVEXATTR. `O_PATH` fds do not take
//! the f*xattr calls, so these go through the fd's /proc/self/fd path (which resolves to the
//! object itself, never through the share's names). Disabled unless `--xattr`: then ENOSYS, which
//! makes the kernel stop asking (and spares every write its security.capability probe).
//! With `--xattrmap` every guest name goes through the map on the way in and every listed host
//! name on the way out (fs/xattrmap.rs); a replay maps again to the same name, so the
//! exactly-once brackets below are unchanged.

use std::ffi::CStr;

use super::Payload;
use super::once::{self, Call, is_errno};
use super::xattrmap::Mapped;
use super::{Context, Error, Fs, Result};
use crate::fuse::abi;
use crate::sys;

/// The xattr that holds a program's file capabilities.
const SECURITY_CAPABILITY: &CStr = c"security.capability";

/// The largest xattr value or name list Linux holds (XATTR_SIZE_MAX, XATTR_LIST_MAX).
const XATTR_MAX: u32 = 1 << 16;

/// What a GETXATTR or LISTXATTR answers: the size alone (probe with size 0) or the bytes.
pub enum XattrReply {
    Size(abi::GetxattrOut),
    Data,
}

impl Fs {
    fn xattr_path(&self, nodeid: u64) -> Result<(crate::state::InodePin, sys::FdName)> {
        if !self.cfg.xattr {
            return Err(Error::NotSupported);
        }
        let node = self.state.inodes.pin(nodeid)?;
        // Relative to the worker's working directory, its /proc/self/fd (see `Fs::new`).
        let path = sys::FdName::new(node.fd());
        Ok((node, path))
    }

    /// The host's name for the guest's `name`: itself, or what `--xattrmap` makes of it.
    fn host_xattr_name<'n>(&self, name: &'n CStr) -> Result<std::borrow::Cow<'n, CStr>> {
        match self.cfg.xattrmap.as_ref().map(|m| m.to_host(name)) {
            None => Ok(std::borrow::Cow::Borrowed(name)),
            Some(Mapped::Host(host)) => Ok(std::borrow::Cow::Owned(host)),
            Some(Mapped::Refuse(errno)) => Err(Error::from_errno(errno)),
        }
    }

    /// Stores a creation's security context (FUSE_SECURITY_CTX) on the new object `fd` (any fd
    /// of it, O_PATH included), under the name `--xattrmap` gives it. With the daemon's own
    /// credentials, as virtiofsd: the label is the guest LSM's choice, not an act of the caller.
    /// Setting the same value again is harmless, so a replay just does it again.
    pub(super) fn set_security_context(&self, fd: i32, sec: &(std::ffi::CString, Vec<u8>)) -> Result<()> {
        let name = self.host_xattr_name(&sec.0)?;
        // By fd number: the working directory is this worker's /proc/self/fd.
        Ok(sys::setxattr(sys::FdName::new(fd).as_cstr(), &name, &sec.1, 0)?)
    }

    /// A new object whose label could not be stored is removed again (virtiofsd does the same):
    /// the guest must not see an object its LSM did not label.
    pub(super) fn label_new_object(&self, dirfd: i32, name: &CStr, fd: i32, dir: bool, ctx: &Context) -> Result<()> {
        let Some(sec) = &ctx.secctx else { return Ok(()) };
        self.set_security_context(fd, sec).inspect_err(|_| {
            let _ = sys::unlinkat(dirfd, name, if dir { libc::AT_REMOVEDIR } else { 0 });
        })
    }

    /// Reads into `out` when `size` > 0, or reports the size needed when it is 0.
    fn xattr_read(
        &self,
        size: u32,
        out: &mut impl Payload,
        call: impl Fn(&mut [u8]) -> std::io::Result<usize>,
    ) -> Result<XattrReply> {
        if size == 0 {
            let n = call(&mut [])?;
            return Ok(XattrReply::Size(abi::GetxattrOut { size: n as u32, padding: 0 }));
        }
        // Linux holds no value or name list over 64 KiB (XATTR_SIZE_MAX, XATTR_LIST_MAX) and its
        // guest kernel never asks for more; a guest that does must not make us allocate 4 GiB.
        let buf = out.tail_mut(size.min(XATTR_MAX) as usize);
        let n = call(buf)?;
        out.truncate(n);
        Ok(XattrReply::Data)
    }

    pub fn getxattr(
        &self,
        ctx: &Context,
        nodeid: u64,
        name: &CStr,
        size: u32,
        out: &mut impl Payload,
    ) -> Result<XattrReply> {
        let (_node, path) = self.xattr_path(nodeid)?;
        let name = self.host_xattr_name(name)?;
        let _as = ctx.become_caller()?;
        self.xattr_read(size, out, |buf| sys::getxattr(path.as_cstr(), &name, buf))
    }

    pub fn listxattr(&self, ctx: &Context, nodeid: u64, size: u32, out: &mut impl Payload) -> Result<XattrReply> {
        let (_node, path) = self.xattr_path(nodeid)?;
        let _as = ctx.become_caller()?;
        let Some(map) = &self.cfg.xattrmap else {
            return self.xattr_read(size, out, |buf| sys::listxattr(path.as_cstr(), buf));
        };
        // Mapped: the whole host list (at most 64 KiB), then the guest's view of it, whose size
        // is what a probe (size 0) must report.
        let mut host = vec![0; XATTR_MAX as usize];
        let n = sys::listxattr(path.as_cstr(), &mut host)?;
        let guest = map.list_to_guest(&host[..n]);
        self.xattr_read(size, out, |buf| {
            if buf.is_empty() {
                Ok(guest.len())
            } else if buf.len() < guest.len() {
                Err(std::io::Error::from_raw_os_error(libc::ERANGE))
            } else {
                buf[..guest.len()].copy_from_slice(&guest);
                Ok(guest.len())
            }
        })
    }

    /// SETXATTR. Setting a value twice is idempotent, except with XATTR_CREATE, whose second
    /// attempt would fail: its absence is checked first (0) and the call bracketed (1-2), so a
    /// replay's EEXIST is its own earlier success.
    pub fn setxattr(&self, ctx: &Context, nodeid: u64, name: &CStr, value: &[u8], flags: u32) -> Result<()> {
        let (_node, path) = self.xattr_path(nodeid)?;
        let name = &*self.host_xattr_name(name)?;
        let _as = ctx.become_caller()?;
        let intent = ctx.intent;
        let create = flags as i32 & libc::XATTR_CREATE != 0;
        if create && intent.must_check_world_before() && sys::getxattr(path.as_cstr(), name, &mut []).is_ok() {
            return Err(Error::from_errno(libc::EEXIST));
        }
        once::once(
            intent,
            Call::Setxattr,
            || sys::setxattr(path.as_cstr(), name, value, flags as i32),
            |e| create && is_errno(e, libc::EEXIST),
        )
    }

    /// REMOVEXATTR: its presence is checked first (0), then the call is bracketed (1-2), so a
    /// replay's ENODATA is its own earlier removal. security.capability goes with the daemon's
    /// own credentials: the kernel removes it itself when a file that carries one is written or
    /// truncated, whoever writes (its killpriv, which asks for no permission), and a removexattr(2)
    /// of it reaches us only after the kernel has checked the caller's CAP_SETFCAP. The host's
    /// check as the caller would refuse both where natively the first never fails.
    pub fn removexattr(&self, ctx: &Context, nodeid: u64, name: &CStr) -> Result<()> {
        let (_node, path) = self.xattr_path(nodeid)?;
        // The guest's name decides whose credentials: the kernel's killpriv removes the guest's
        // security.capability, whatever name the map stores it under.
        let _as = if name == SECURITY_CAPABILITY { None } else { Some(ctx.become_caller()?) };
        let name = &*self.host_xattr_name(name)?;
        let intent = ctx.intent;
        if intent.must_check_world_before() {
            sys::getxattr(path.as_cstr(), name, &mut [])?;
        }
        once::once(intent, Call::Removexattr, || sys::removexattr(path.as_cstr(), name), |e| is_errno(e, libc::ENODATA))
    }
}
