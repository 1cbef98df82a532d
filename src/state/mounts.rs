//! The mount table: one fd per file system (mount) the share spans, in the region header, for
//! `open_by_handle_at` (which takes any fd on the mount, but not an `O_PATH` one). The root's
//! mount is registered when the first worker installs the root; a file system mounted inside
//! the share gets its entry when its root is first looked up (a directory; see fs/fhandle.rs).
//! Entries are never removed: a mount's fd stays open for the life of the daemon, as the root's
//! does.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};

use super::Error;

/// Mounts one region can name.
pub const MAX_MOUNTS: usize = 32;

const FREE: u32 = 0;
const SETTING_UP: u32 = 1;
const LIVE: u32 = 2;

#[repr(C)]
#[derive(Debug, Default)]
pub struct MountSlot {
    pub state: AtomicU32,
    pub fd: AtomicI32,
    /// The mount id (statx's STATX_MNT_ID) of the file system `fd` is on.
    pub mnt_id: AtomicU64,
}

const _: () = assert!(size_of::<MountSlot>() == 16);

pub struct Mounts {
    slots: &'static [MountSlot],
    /// Serialises registrations (lookups of the table take no lock).
    adding: Mutex<()>,
}

impl Mounts {
    pub fn new(slots: &'static [MountSlot]) -> Mounts {
        Mounts { slots, adding: Mutex::new(()) }
    }

    /// The fd registered for mount `mnt_id`, if any.
    pub fn fd(&self, mnt_id: u64) -> Option<i32> {
        self.slots
            .iter()
            .find(|s| s.state.load(Ordering::Acquire) == LIVE && s.mnt_id.load(Ordering::Relaxed) == mnt_id)
            .map(|s| s.fd.load(Ordering::Relaxed))
    }

    /// The fd for mount `mnt_id`, registering the one `open` makes if there is none yet.
    pub fn register(&self, mnt_id: u64, open: impl FnOnce() -> std::io::Result<i32>) -> Result<i32, Error> {
        let _one = self.adding.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(fd) = self.fd(mnt_id) {
            return Ok(fd);
        }
        let Some(s) = self.slots.iter().find(|s| s.state.load(Ordering::Acquire) == FREE) else {
            return Err(Error::MountsFull(MAX_MOUNTS));
        };
        // 1/3 claim the entry. Crash after: a SETTING_UP entry with no fd; recovery frees it.
        s.fd.store(-1, Ordering::SeqCst);
        s.state.store(SETTING_UP, Ordering::SeqCst);
        let fd = match open() {
            Ok(fd) => fd,
            Err(e) => {
                s.state.store(FREE, Ordering::SeqCst);
                return Err(Error::MountFd(std::sync::Arc::new(e)));
            }
        };
        // 2/3 name the fd. Crash before: the fd is named nowhere, the fd sweep closes it; after:
        // recovery closes it with the SETTING_UP entry.
        s.fd.store(fd, Ordering::SeqCst);
        s.mnt_id.store(mnt_id, Ordering::SeqCst);
        crate::crash_point!("mount.before_publish");
        // 3/3 publish (Release after the contents). Crash after: a LIVE entry, kept.
        s.state.store(LIVE, Ordering::Release);
        Ok(fd)
    }

    /// Recovery: frees entries a dead worker left half made (closing their fd); LIVE ones stay.
    /// Bounded by the table's size.
    pub fn recover(&self) {
        for s in self.slots {
            if s.state.load(Ordering::SeqCst) == SETTING_UP {
                let fd = s.fd.swap(-1, Ordering::SeqCst);
                if fd >= 0 {
                    crate::sys::close(fd);
                }
                s.state.store(FREE, Ordering::SeqCst);
            }
        }
    }

    /// The fds of LIVE entries (for the fd sweep).
    pub fn fds(&self) -> Vec<i32> {
        self.slots
            .iter()
            .filter(|s| s.state.load(Ordering::SeqCst) == LIVE)
            .map(|s| s.fd.load(Ordering::SeqCst))
            .collect()
    }
}
