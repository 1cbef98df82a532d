//! Who is asking, and running an operation as them: the thread takes on the caller's fsuid,
//! fsgid and supplementary groups for the duration of the operation, so every ownership and
//! permission decision is the host kernel's own.

use super::{Error, Result};
use crate::state::intent::Intent;
use crate::sys::thread_creds;

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
}

/// Restores the daemon's own credentials when dropped.
pub struct CredGuard {
    switched: bool,
}

impl Context {
    /// Switches this thread to the caller's credentials. Root callers need no switch: the
    /// daemon already is root, and skipping it keeps the hot path at zero extra syscalls.
    pub fn become_caller(&self) -> Result<CredGuard> {
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
