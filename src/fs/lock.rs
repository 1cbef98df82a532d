//! Locks: GETLK, SETLK, SETLKW as OFD locks on the handle's fd, and flock(2) when the kernel
//! marks the request FUSE_LK_FLOCK. Both belong to the open file description the handle holds,
//! so they live exactly as long as the handle (and, in the shared fd table, survive a worker).
//!
//! Known difference from POSIX record locks: two guest processes sharing one open file (fork
//! after open) share its locks, as OFD locks do.

use super::{Error, Fs, Result};
use crate::fuse::abi;
use crate::state::HandleKind;
use crate::sys;

/// FUSE's "to end of file" (the kernel's OFFSET_MAX).
const OFFSET_MAX: u64 = i64::MAX as u64;

fn to_flock(lk: &abi::FileLock) -> Result<libc::flock64> {
    let start = i64::try_from(lk.start).map_err(|_| Error::OutOfRange)?;
    let len = if lk.end >= OFFSET_MAX {
        0
    } else {
        let end = i64::try_from(lk.end).map_err(|_| Error::OutOfRange)?;
        end.checked_sub(start).and_then(|d| d.checked_add(1)).filter(|l| *l > 0).ok_or(Error::OutOfRange)?
    };
    let typ = i16::try_from(lk.typ).map_err(|_| Error::OutOfRange)?;
    if ![libc::F_RDLCK as i16, libc::F_WRLCK as i16, libc::F_UNLCK as i16].contains(&typ) {
        return Err(Error::OutOfRange);
    }
    Ok(libc::flock64 { l_type: typ, l_whence: libc::SEEK_SET as i16, l_start: start, l_len: len, l_pid: 0 })
}

impl Fs {
    pub fn getlk(&self, a: &abi::LkIn) -> Result<abi::LkOut> {
        let h = self.state.handles.pin(a.fh, HandleKind::File)?;
        let mut fl = to_flock(&a.lk)?;
        sys::fcntl_lock(h.fd(), libc::F_OFD_GETLK, &mut fl)?;
        let end = if fl.l_len == 0 { OFFSET_MAX } else { (fl.l_start + fl.l_len - 1) as u64 };
        Ok(abi::LkOut {
            lk: abi::FileLock {
                start: fl.l_start as u64,
                end,
                typ: fl.l_type as u32,
                // OFD locks have no owning pid (-1); the kernel treats 0 as "unknown".
                pid: if fl.l_pid > 0 { fl.l_pid as u32 } else { 0 },
            },
        })
    }

    pub fn setlk(&self, a: &abi::LkIn, sleep: bool) -> Result<()> {
        let h = self.state.handles.pin(a.fh, HandleKind::File)?;
        if a.lk_flags & abi::LK_FLOCK != 0 {
            let op = match a.lk.typ as i32 {
                libc::F_RDLCK => libc::LOCK_SH,
                libc::F_WRLCK => libc::LOCK_EX,
                libc::F_UNLCK => libc::LOCK_UN,
                _ => return Err(Error::OutOfRange),
            };
            let op = if sleep { op } else { op | libc::LOCK_NB };
            return Ok(sys::flock(h.fd(), op)?);
        }
        let mut fl = to_flock(&a.lk)?;
        let cmd = if sleep { libc::F_OFD_SETLKW } else { libc::F_OFD_SETLK };
        Ok(sys::fcntl_lock(h.fd(), cmd, &mut fl)?)
    }
}
