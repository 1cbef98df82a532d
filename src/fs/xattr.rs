//! Extended attributes: SETXATTR, GETXATTR, LISTXATTR, REMOVEXATTR. `O_PATH` fds do not take
//! the f*xattr calls, so these go through the fd's /proc/self/fd path (which resolves to the
//! object itself, never through the share's names). Disabled unless `--xattr`: then ENOSYS, which
//! makes the kernel stop asking (and spares every write its security.capability probe).

use std::ffi::CStr;

use super::Payload;
use super::once::{self, Call, is_errno};
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
        let _as = ctx.become_caller()?;
        self.xattr_read(size, out, |buf| sys::getxattr(path.as_cstr(), name, buf))
    }

    pub fn listxattr(&self, ctx: &Context, nodeid: u64, size: u32, out: &mut impl Payload) -> Result<XattrReply> {
        let (_node, path) = self.xattr_path(nodeid)?;
        let _as = ctx.become_caller()?;
        self.xattr_read(size, out, |buf| sys::listxattr(path.as_cstr(), buf))
    }

    /// SETXATTR. Setting a value twice is idempotent, except with XATTR_CREATE, whose second
    /// attempt would fail: its absence is checked first (0) and the call bracketed (1-2), so a
    /// replay's EEXIST is its own earlier success.
    pub fn setxattr(&self, ctx: &Context, nodeid: u64, name: &CStr, value: &[u8], flags: u32) -> Result<()> {
        let (_node, path) = self.xattr_path(nodeid)?;
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
        let _as = if name == SECURITY_CAPABILITY { None } else { Some(ctx.become_caller()?) };
        let intent = ctx.intent;
        if intent.must_check_world_before() {
            sys::getxattr(path.as_cstr(), name, &mut [])?;
        }
        once::once(intent, Call::Removexattr, || sys::removexattr(path.as_cstr(), name), |e| is_errno(e, libc::ENODATA))
    }
}
