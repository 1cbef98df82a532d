//! `--inode-file-handles`: which objects the inode table keeps by file handle rather than by an
//! `O_PATH` fd, the mount fds handles are opened through, and the start-up probe. The table and
//! the fd cache are the state's (state/inodes.rs, state/fdcache.rs, state/mounts.rs).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{Fs, Result};
use crate::state;
use crate::sys::fhandle::{self, FileHandle};

/// virtiofsd's `--inode-file-handles`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileHandles {
    /// An O_PATH fd per live inode (bounded by the fd budget).
    Never,
    /// A file handle where the file system makes one, else an O_PATH fd.
    Prefer,
    /// A file handle or nothing: a lookup of an object without one fails.
    Mandatory,
}

static WARNED_FALLBACK: AtomicBool = AtomicBool::new(false);

impl Fs {
    /// Start-up (every worker): registers the root's mount fd (a no-op once a worker did) and
    /// checks that handles work there: name_to_handle_at on the root and open_by_handle_at
    /// through the mount fd (which needs CAP_DAC_READ_SEARCH). With `prefer`, a failure turns
    /// handles off for this worker (logged); with `mandatory` it is an error.
    pub(super) fn start_file_handles(&mut self) -> Result<()> {
        if self.handles == FileHandles::Never {
            return Ok(());
        }
        let probe = || -> std::result::Result<(), state::Error> {
            let root = self.state.inodes.pin(state::ROOT_ID)?;
            let st = crate::sys::statx(root.fd(), c"", libc::AT_EMPTY_PATH).map_err(to_state)?;
            let mount = self.mount_fd(root.fd(), st.stx_mnt_id, true)?;
            let (h, _) = fhandle::name_to_handle(root.fd()).map_err(|e| state::Error::NoFileHandle(Arc::new(e)))?;
            let fd = fhandle::open_by_handle(mount, &h, libc::O_PATH).map_err(to_state)?;
            crate::sys::close(fd);
            Ok(())
        };
        match (probe(), self.handles) {
            (Ok(()), _) => Ok(()),
            (Err(e), FileHandles::Mandatory) => {
                tracing::error!("--inode-file-handles=mandatory: file handles do not work on the share: {e}");
                Err(e.into())
            }
            (Err(e), _) => {
                tracing::warn!(
                    "--inode-file-handles=prefer: file handles do not work on the share ({e}); \
                     using an O_PATH fd per inode"
                );
                self.handles = FileHandles::Never;
                Ok(())
            }
        }
    }

    /// The fd of mount `mnt_id`, registering `dir` (an O_PATH fd of a directory on it, reopened
    /// for reading: open_by_handle_at refuses O_PATH mount fds) if it is the first seen there.
    fn mount_fd(&self, dir: i32, mnt_id: u64, is_dir: bool) -> std::result::Result<i32, state::Error> {
        if let Some(fd) = self.state.inodes.mounts.fd(mnt_id) {
            return Ok(fd);
        }
        if !is_dir {
            return Err(state::Error::NoMountFd(mnt_id));
        }
        self.state.inodes.mounts.register(mnt_id, || {
            self.reopen(dir, libc::O_RDONLY | libc::O_DIRECTORY).map_err(|e| match e {
                super::Error::Os(e) => e,
                other => std::io::Error::other(other.to_string()),
            })
        })
    }

    /// The file handle the inode table should keep for the object the fresh O_PATH `fd` names
    /// (`stx` its statx), or None for an O_PATH fd; called only for an object not yet in the
    /// table. A refusal (no handles on that file system, a handle too long to keep inline, a
    /// mount without an fd) is an error under `mandatory`, a fallback under `prefer`.
    pub(super) fn handle_for(
        &self,
        fd: i32,
        stx: &libc::statx,
    ) -> std::result::Result<Option<FileHandle>, state::Error> {
        if self.handles == FileHandles::Never {
            return Ok(None);
        }
        let is_dir = u32::from(stx.stx_mode) & libc::S_IFMT == libc::S_IFDIR;
        let got = self.mount_fd(fd, stx.stx_mnt_id, is_dir).and_then(|_| {
            let (h, _) = fhandle::name_to_handle(fd).map_err(|e| state::Error::NoFileHandle(Arc::new(e)))?;
            if h.bytes().len() > state::inodes::INLINE_HANDLE {
                let e = std::io::Error::from_raw_os_error(libc::EOVERFLOW);
                return Err(state::Error::NoFileHandle(Arc::new(e)));
            }
            Ok(h)
        });
        match (got, self.handles) {
            (Ok(h), _) => Ok(Some(h)),
            (Err(e), FileHandles::Mandatory) => {
                tracing::warn!(mnt_id = stx.stx_mnt_id, ino = stx.stx_ino, "lookup refused: {e}");
                Err(match e {
                    state::Error::NoMountFd(_) | state::Error::MountsFull(_) => {
                        state::Error::NoFileHandle(Arc::new(std::io::Error::from_raw_os_error(libc::EOPNOTSUPP)))
                    }
                    e => e,
                })
            }
            (Err(e), _) => {
                if !WARNED_FALLBACK.swap(true, Ordering::Relaxed) {
                    tracing::info!(
                        mnt_id = stx.stx_mnt_id,
                        "no file handle for an object ({e}); keeping an O_PATH fd for it (logged once)"
                    );
                }
                Ok(None)
            }
        }
    }
}

fn to_state(e: std::io::Error) -> state::Error {
    state::Error::HandleOpen(Arc::new(e))
}
