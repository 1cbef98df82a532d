//! Operations on names: MKNOD, MKDIR, SYMLINK, LINK, UNLINK, RMDIR, RENAME, READLINK. Each works
//! on one checked name relative to a parent's `O_PATH` fd, so none can reach outside the share,
//! and each runs its host syscall exactly once across worker deaths (fs/once.rs).

use std::ffi::CStr;
use std::io;

use super::once::{self, Call, is_errno};
use super::{Context, Error, Fs, Result, check_name};
use crate::fuse::abi;
use crate::state::intent::facts;
use crate::sys::{self, FdName};

/// (dev, ino) of `name` in `dirfd`, or None if it does not exist.
fn identity(dirfd: i32, name: &CStr) -> Result<Option<(u64, u64)>> {
    match sys::fstatat(dirfd, name, libc::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some((st.st_dev, st.st_ino))),
        Err(e) if is_errno(&e, libc::ENOENT) => Ok(None),
        Err(e) => Err(Error::Os(e)),
    }
}

impl Fs {
    /// Creates `name` in `parent` with `make` as the caller, exactly once, then takes the lookup
    /// the reply hands to the kernel.
    ///
    /// Steps: (0) the name is checked absent — an existing name is a real EEXIST; (1-2) the
    /// syscall, bracketed; (3) the lookup raise, two-phase in the record. A replay after (3)
    /// only re-reads the entry.
    fn make_then_lookup(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        what: Call,
        make: impl FnOnce(i32, &CStr) -> io::Result<()>,
    ) -> Result<abi::EntryOut> {
        let name = check_name(name)?;
        let intent = ctx.intent;
        if let Some(&nodeid) = intent.raised().first() {
            return self.entry_of(nodeid);
        }
        let dir = self.state.inodes.pin(parent)?;
        let _as = ctx.become_caller()?;
        if intent.must_check_world_before() && identity(dir.fd(), name)?.is_some() {
            return Err(Error::from_errno(libc::EEXIST));
        }
        once::once(intent, what, || make(dir.fd(), name), |e| is_errno(e, libc::EEXIST))?;
        if ctx.secctx.is_some() {
            // The label, with the daemon's credentials, before the lookup raise: a replay that
            // finds its own object (EEXIST above) labels it again, one past the raise finds both
            // done. (A label refused, the object removed, then a crash before the reply: the
            // replay's answer is ENOENT instead of the refusal; either way nothing is left.)
            drop(_as);
            let fd = sys::openat_beneath(dir.fd(), name, libc::O_PATH | libc::O_NOFOLLOW)?;
            let labelled = self.label_new_object(dir.fd(), name, fd, what == Call::Mkdir, ctx);
            sys::close(fd);
            labelled?;
        }
        self.lookup_at(dir.fd(), name, intent)
    }

    pub fn mknod(&self, ctx: &Context, parent: u64, name: &CStr, a: &abi::MknodIn) -> Result<abi::EntryOut> {
        let _umask = self.caller_umask(a.umask)?;
        self.make_then_lookup(ctx, parent, name, Call::Mknod, |dirfd, name| {
            sys::mknodat(dirfd, name, a.mode, u64::from(a.rdev))
        })
    }

    pub fn mkdir(&self, ctx: &Context, parent: u64, name: &CStr, a: &abi::MkdirIn) -> Result<abi::EntryOut> {
        let _umask = self.caller_umask(a.umask)?;
        self.make_then_lookup(ctx, parent, name, Call::Mkdir, |dirfd, name| sys::mkdirat(dirfd, name, a.mode))
    }

    pub fn symlink(&self, ctx: &Context, parent: u64, name: &CStr, target: &CStr) -> Result<abi::EntryOut> {
        // The target is stored, never followed by us: it needs no check.
        self.make_then_lookup(ctx, parent, name, Call::Symlink, |dirfd, name| sys::symlinkat(target, dirfd, name))
    }

    pub fn link(&self, ctx: &Context, old: u64, newparent: u64, name: &CStr) -> Result<abi::EntryOut> {
        let src = self.state.inodes.pin(old)?;
        let src_name = FdName::new(src.fd());
        let proc = self.proc_self_fd;
        // linkat through /proc/self/fd follows the magic link to the object itself (which may be
        // a symlink); AT_EMPTY_PATH would need CAP_DAC_READ_SEARCH, which a caller lacks.
        self.make_then_lookup(ctx, newparent, name, Call::Link, |dirfd, name| {
            sys::linkat(proc, src_name.as_cstr(), dirfd, name, libc::AT_SYMLINK_FOLLOW)
        })
    }

    /// UNLINK and RMDIR. Steps: (0) the target is checked present — a missing name is a real
    /// ENOENT; (1-2) the syscall, bracketed; on a replay ENOENT is our own earlier removal.
    fn remove(&self, ctx: &Context, parent: u64, name: &CStr, flags: i32, what: Call) -> Result<()> {
        let name = check_name(name)?;
        let intent = ctx.intent;
        let dir = self.state.inodes.pin(parent)?;
        let _as = ctx.become_caller()?;
        if intent.must_check_world_before() && identity(dir.fd(), name)?.is_none() {
            return Err(Error::from_errno(libc::ENOENT));
        }
        once::once(intent, what, || sys::unlinkat(dir.fd(), name, flags), |e| is_errno(e, libc::ENOENT))
    }

    pub fn unlink(&self, ctx: &Context, parent: u64, name: &CStr) -> Result<()> {
        self.remove(ctx, parent, name, 0, Call::Unlink)
    }

    pub fn rmdir(&self, ctx: &Context, parent: u64, name: &CStr) -> Result<()> {
        self.remove(ctx, parent, name, libc::AT_REMOVEDIR, Call::Rmdir)
    }

    /// RENAME and RENAME2. Steps: (0) the identities of source and target are recorded; (1-2)
    /// the syscall, bracketed. A replay after (1) first asks whether the names already show the
    /// rename done (target names the source object; for EXCHANGE, source names the old target)
    /// and runs it again only if not.
    pub fn rename(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        newparent: u64,
        newname: &CStr,
        flags: u32,
    ) -> Result<()> {
        let name = check_name(name)?;
        let newname = check_name(newname)?;
        let allowed = libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE | libc::RENAME_WHITEOUT;
        if flags & !allowed != 0 {
            return Err(Error::OutOfRange);
        }
        let intent = ctx.intent;
        let old_dir = self.state.inodes.pin(parent)?;
        let new_dir = self.state.inodes.pin(newparent)?;
        let _as = ctx.become_caller()?;
        if intent.must_check_world_before() {
            let Some((_, ino)) = identity(old_dir.fd(), name)? else {
                return Err(Error::from_errno(libc::ENOENT));
            };
            let target = identity(new_dir.fd(), newname)?.map_or(0, |t| t.1);
            intent.set_fact(facts::RENAME_SOURCE_INO, ino);
            intent.set_fact(facts::RENAME_TARGET_INO, target);
        }
        let done = || -> bool {
            let src = intent.fact(facts::RENAME_SOURCE_INO);
            let now_new = identity(new_dir.fd(), newname).ok().flatten().map(|t| t.1);
            let now_old = identity(old_dir.fd(), name).ok().flatten().map(|t| t.1);
            if flags & libc::RENAME_EXCHANGE != 0 {
                now_new == Some(src) && now_old == Some(intent.fact(facts::RENAME_TARGET_INO))
            } else {
                now_new == Some(src) && now_old != Some(src)
            }
        };
        if intent.step() == once::ISSUED && done() {
            return once::once(intent, Call::Rename, || Ok(()), |_| false);
        }
        once::once(intent, Call::Rename, || sys::renameat2(old_dir.fd(), name, new_dir.fd(), newname, flags), |_| false)
    }

    pub fn readlink(&self, nodeid: u64) -> Result<Vec<u8>> {
        let node = self.state.inodes.pin(nodeid)?;
        let mut buf = vec![0u8; libc::PATH_MAX as usize];
        let n = sys::readlinkat(node.fd(), c"", &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }
}
