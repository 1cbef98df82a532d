//! The caller's umask, for creations under FUSE_DONT_MASK (negotiated with `--posix-acl`): the
//! guest kernel then leaves the umask to us, because only the host knows whether the parent
//! directory has a default ACL, which replaces the umask. So the creating call runs with the
//! request's umask, and the host kernel decides, exactly as a local creation does.
//!
//! A umask belongs to a process's fs struct, which all threads share: each serving thread
//! unshares its own (`unshare(CLONE_FS)`) the first time it needs one, and the guard puts the
//! daemon's umask (0) back. The umask is a pure function of the request, so a replayed creation
//! runs with the same one.

use std::cell::Cell;

use super::{Error, Result};
use crate::sys;

thread_local! {
    /// Whether this thread has its own fs struct (umask, cwd, root).
    static OWN_FS: Cell<bool> = const { Cell::new(false) };
}

/// Restores the daemon's umask (0) in this thread when dropped.
pub struct UmaskGuard {
    set: bool,
}

/// Runs the rest of the scope with `umask` when `apply` (DONT_MASK agreed), else does nothing:
/// the guest kernel has applied the umask to the mode already.
pub fn caller_umask(apply: bool, umask: u32) -> Result<UmaskGuard> {
    if !apply || umask == 0 {
        return Ok(UmaskGuard { set: false });
    }
    if !OWN_FS.get() {
        sys::unshare_fs().map_err(Error::Os)?;
        OWN_FS.set(true);
    }
    sys::umask(umask & 0o777);
    Ok(UmaskGuard { set: true })
}

impl Drop for UmaskGuard {
    fn drop(&mut self) {
        if self.set {
            sys::umask(0);
        }
    }
}
