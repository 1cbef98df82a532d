//! Who is asking, and running an operation as them: the thread takes on the caller's fsuid,
//! fsgid and supplementary groups for the duration of the operation, so every ownership and
//! permission decision is the host kernel's own. And the one privilege a request can ask the
//! daemon to give up for a single call: CAP_FSETID, so that the host clears set-id bits exactly
//! as it would for the writer (FUSE_HANDLE_KILLPRIV_V2; docs/design.md, "Set-id bits").

use super::{Error, Result};
use crate::state::intent::Intent;
use crate::sys::{caps, thread_creds};

/// CAP_FSETID's number: who has it keeps set-id bits across writes and truncation.
const CAP_FSETID: u32 = 4;

/// The caller of one request, as the transport reports it.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    /// Supplementary groups of the caller, where the transport can know them (a host FUSE mount
    /// reads them from /proc; a guest's are unknown and left empty).
    pub groups: Vec<u32>,
    /// The request's intent record (none when recovery is off).
    pub intent: Intent,
    /// `--translate-uid/gid` forbids the caller's ids (`forbid-guest`): nothing runs as them.
    pub forbidden: bool,
    /// A creation's security context (FUSE_SECURITY_CTX): the xattr name and value the guest's
    /// LSM chose for the new object.
    pub secctx: Option<(std::ffi::CString, Vec<u8>)>,
}

/// Restores the daemon's own credentials when dropped.
pub struct CredGuard {
    switched: bool,
}

impl Context {
    /// Switches this thread to the caller's credentials. Root callers need no switch: the
    /// daemon already is root, and skipping it keeps the hot path at zero extra syscalls.
    pub fn become_caller(&self) -> Result<CredGuard> {
        if self.forbidden {
            return Err(Error::Credentials(std::io::Error::from_raw_os_error(libc::EPERM)));
        }
        if self.uid == 0 && self.gid == 0 {
            return Ok(CredGuard { switched: false });
        }
        // Groups and gid first: once the uid is not 0 the thread may no longer change them.
        thread_creds::setgroups(&self.groups).map_err(Error::Credentials)?;
        let guard = CredGuard { switched: true };
        thread_creds::setresgid(self.gid).map_err(Error::Credentials)?;
        thread_creds::setresuid(self.uid).map_err(Error::Credentials)?;
        Ok(guard)
    }
}

impl Drop for CredGuard {
    fn drop(&mut self) {
        if !self.switched {
            return;
        }
        // The uid goes back first, which restores the capabilities needed for the rest. A
        // failure here would leave the thread unprivileged for the next request: stop loudly.
        if thread_creds::setresuid(0).is_err()
            || thread_creds::setresgid(0).is_err()
            || thread_creds::setgroups(&[]).is_err()
        {
            tracing::error!("cannot restore the daemon's credentials; aborting this worker");
            std::process::abort();
        }
    }
}

/// Gives CAP_FSETID back to this thread when dropped (if it was taken away).
pub struct FsetidGuard {
    /// The (effective, permitted) sets to restore.
    saved: Option<(u64, u64)>,
}

/// Runs the rest of the scope without CAP_FSETID in this thread's effective set, so that the host
/// kernel clears set-id bits in the very syscall that writes or truncates (its file_remove_privs),
/// as it does for a writer without that capability: no separate chmod, so no extra step to make
/// crash-safe. A thread that does not have it (one switched to a non-root caller) is left alone.
pub fn without_fsetid() -> Result<FsetidGuard> {
    let (effective, permitted) = caps::get().map_err(Error::Credentials)?;
    let bit = 1 << CAP_FSETID;
    if effective & bit == 0 {
        return Ok(FsetidGuard { saved: None });
    }
    caps::set(effective & !bit, permitted).map_err(Error::Credentials)?;
    Ok(FsetidGuard { saved: Some((effective, permitted)) })
}

/// `without_fsetid` when `kill` says the request asks for it, else nothing.
pub fn without_fsetid_if(kill: bool) -> Result<Option<FsetidGuard>> {
    if kill { without_fsetid().map(Some) } else { Ok(None) }
}

impl Drop for FsetidGuard {
    fn drop(&mut self) {
        let Some((effective, permitted)) = self.saved else { return };
        // As for CredGuard: a thread left without CAP_FSETID would keep clearing bits for
        // callers who have it. Stop loudly.
        if caps::set(effective, permitted).is_err() {
            tracing::error!("cannot restore CAP_FSETID; aborting this worker");
            std::process::abort();
        }
    }
}

/// CAP_SYS_ADMIN's number: FUSE_DEV_IOC_BACKING_OPEN and _CLOSE check `capable()` of it.
const CAP_SYS_ADMIN: u32 = 21;

/// A serving thread's capabilities while it registers or drops a FUSE backing file
/// (fs/passthrough.rs): CAP_SYS_ADMIN raised from the permitted set (the worker keeps it there
/// only with passthrough, docs/design.md "Passthrough"), and CAP_FSETID dropped, because the
/// kernel snapshots these credentials at BACKING_OPEN and does every passthrough write with them:
/// without CAP_FSETID such a write clears set-id bits as an unprivileged writer's would. Restored
/// on drop (a thread left with CAP_SYS_ADMIN effective would keep it for every request: abort).
pub struct BackingAdmin {
    saved: (u64, u64),
}

pub fn backing_admin() -> Result<BackingAdmin> {
    let (effective, permitted) = caps::get().map_err(Error::Credentials)?;
    let admin = 1u64 << CAP_SYS_ADMIN;
    if permitted & admin == 0 {
        return Err(Error::from_errno(libc::EPERM));
    }
    caps::set((effective | admin) & !(1u64 << CAP_FSETID), permitted).map_err(Error::Credentials)?;
    Ok(BackingAdmin { saved: (effective, permitted) })
}

impl Drop for BackingAdmin {
    fn drop(&mut self) {
        if caps::set(self.saved.0, self.saved.1).is_err() {
            tracing::error!("cannot drop CAP_SYS_ADMIN after a backing-file ioctl; aborting this worker");
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_without_fsetid_drops_and_restores_only_fsetid() {
        let before = caps::get().unwrap();
        {
            let _g = without_fsetid().unwrap();
            let during = caps::get().unwrap();
            assert_eq!(during.0 & (1 << CAP_FSETID), 0);
            assert_eq!(during.0 | (before.0 & (1 << CAP_FSETID)), before.0);
            assert_eq!(during.1, before.1);
        }
        assert_eq!(caps::get().unwrap(), before);
        assert!(without_fsetid_if(false).unwrap().is_none());
    }
}
