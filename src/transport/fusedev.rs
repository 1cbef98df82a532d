//! /dev/fuse: mount the share with mount(2), serve requests on a pool of threads (each on its own
//! clone of the connection, FUSE_DEV_IOC_CLONE, so replies go back on the fd the request came
//! from), and unmount on request.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;

use crate::fuse::ReplyBuf;
use crate::server::{MAX_REQUEST, Server};
use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open /dev/fuse (is the fuse module loaded, and are we root?): {0}")]
    OpenDevice(std::io::Error),
    #[error("mount of {path} failed: {source}")]
    Mount { path: String, source: std::io::Error },
    #[error("cannot clone the /dev/fuse connection for a worker thread: {0}")]
    Clone(std::io::Error),
    #[error("cannot start a worker thread: {0}")]
    Spawn(std::io::Error),
    #[error("path contains a NUL byte: {0}")]
    BadPath(String),
}

/// A mounted FUSE connection.
pub struct FuseDev {
    fd: i32,
    mountpoint: CString,
}

impl FuseDev {
    /// Opens /dev/fuse and mounts it at `mountpoint` with the options virtio-fs mounts get in a
    /// guest: the kernel checks permissions (default_permissions) and every user may use it.
    pub fn mount(mountpoint: &Path, source: &Path) -> Result<FuseDev, Error> {
        let mnt = CString::new(mountpoint.as_os_str().as_bytes())
            .map_err(|_| Error::BadPath(mountpoint.display().to_string()))?;
        let src = CString::new(source.as_os_str().as_bytes())
            .map_err(|_| Error::BadPath(source.display().to_string()))?;
        let fd = sys::open(c"/dev/fuse", libc::O_RDWR).map_err(Error::OpenDevice)?;
        let data = CString::new(format!(
            "fd={fd},rootmode=40000,user_id=0,group_id=0,default_permissions,allow_other"
        ))
        .expect("no NUL in formatted options");
        if let Err(source) = sys::mount(&src, &mnt, c"fuse.phoenixfs", libc::MS_NOSUID | libc::MS_NODEV, &data) {
            sys::close(fd);
            return Err(Error::Mount { path: mountpoint.display().to_string(), source });
        }
        Ok(FuseDev { fd, mountpoint: mnt })
    }

    pub fn fd(&self) -> i32 {
        self.fd
    }

    /// Unmounts; a busy mount is detached so the daemon can still exit.
    pub fn unmount(&self) {
        if let Err(e) = sys::umount(&self.mountpoint, 0) {
            tracing::warn!("unmount: {e}; detaching the mount lazily");
            if let Err(e) = sys::umount(&self.mountpoint, libc::MNT_DETACH) {
                tracing::error!("lazy unmount failed: {e}");
            }
        }
    }

    /// Serves requests on `threads` threads until the connection ends (unmounted, or aborted).
    /// Each thread reports its end on `done`.
    pub fn serve(&self, server: Arc<Server>, threads: usize, done: mpsc::Sender<()>) -> Result<(), Error> {
        for i in 0..threads.max(1) {
            let fd = if i == 0 { self.fd } else { clone_connection(self.fd)? };
            let server = server.clone();
            let done = done.clone();
            std::thread::Builder::new()
                .name(format!("fuse-{i}"))
                .spawn(move || {
                    serve_loop(fd, &server);
                    let _ = done.send(());
                })
                .map_err(Error::Spawn)?;
        }
        Ok(())
    }
}

fn clone_connection(master: i32) -> Result<i32, Error> {
    let fd = sys::open(c"/dev/fuse", libc::O_RDWR).map_err(Error::Clone)?;
    sys::ioctl_clone_fuse(fd, master).map_err(|e| {
        sys::close(fd);
        Error::Clone(e)
    })?;
    Ok(fd)
}

/// Reads requests from `fd` and answers them, until the connection goes away.
fn serve_loop(fd: i32, server: &Server) {
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut out = ReplyBuf::new();
    loop {
        let n = match sys::read(fd, &mut buf) {
            Ok(n) => n,
            Err(e) => match e.raw_os_error() {
                // Interrupted, or the request was withdrawn before we read it: read again.
                Some(libc::EINTR | libc::EAGAIN | libc::ENOENT) => continue,
                // The file system was unmounted (or the connection aborted).
                Some(libc::ENODEV) => return,
                _ => {
                    tracing::error!("reading /dev/fuse: {e}");
                    return;
                }
            },
        };
        if let Some(reply) = server.handle(&buf[..n], caller_groups, &mut out) {
            if let Err(e) = sys::write(fd, reply) {
                // ENOENT: the request was interrupted and the kernel no longer waits for it.
                if e.raw_os_error() != Some(libc::ENOENT) {
                    tracing::warn!("writing a reply to /dev/fuse: {e}");
                }
            }
        }
    }
}

/// The supplementary groups of the calling thread `pid` (from /proc), so that permission checks
/// on the host see the same groups the caller has. Empty if the caller is gone.
fn caller_groups(pid: u32, _uid: u32) -> Vec<u32> {
    if pid == 0 {
        return Vec::new();
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| g.split_whitespace().filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default()
}

