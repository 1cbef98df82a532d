//! /dev/fuse: mount the share with mount(2), serve requests on a pool of threads (each on its own
//! clone of the connection, FUSE_DEV_IOC_CLONE, so replies go back on the fd the request came
//! from), and unmount on request.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;

use crate::fuse::ReplyBuf;
use crate::server::{MAX_REQUEST, Origin, Server};
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
        let src =
            CString::new(source.as_os_str().as_bytes()).map_err(|_| Error::BadPath(source.display().to_string()))?;
        let fd = sys::open(c"/dev/fuse", libc::O_RDWR).map_err(Error::OpenDevice)?;
        let data = CString::new(format!("fd={fd},rootmode=40000,user_id=0,group_id=0,default_permissions,allow_other"))
            .expect("no NUL in formatted options");
        if let Err(source) = sys::mount(&src, &mnt, c"fuse.phoenixfs", libc::MS_NOSUID | libc::MS_NODEV, &data) {
            sys::close(fd);
            return Err(Error::Mount { path: mountpoint.display().to_string(), source });
        }
        Ok(FuseDev { fd, mountpoint: mnt })
    }

    /// Unmounts; a busy mount is detached so the daemon can still exit. A mount already gone
    /// (someone unmounted it, which is also how a connection ends) is fine.
    pub fn unmount(&self) {
        match sys::umount(&self.mountpoint, 0) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => tracing::debug!("already unmounted"),
            Err(e) => {
                tracing::warn!("unmount: {e}; detaching the mount lazily");
                if let Err(e) = sys::umount(&self.mountpoint, libc::MNT_DETACH) {
                    tracing::error!("lazy unmount failed: {e}");
                }
            }
        }
    }

    /// The connection fds for `threads` serving threads: this fd and `threads - 1` clones.
    /// Made once by the supervisor; every worker serves on the same ones, so requests a dead
    /// worker read stay in their processing queues until FUSE_NOTIFY_RESEND re-queues them.
    pub fn connection_fds(&self, threads: usize) -> Result<Vec<i32>, Error> {
        let mut fds = vec![self.fd];
        for _ in 1..threads.max(1) {
            fds.push(clone_connection(self.fd)?);
        }
        Ok(fds)
    }
}

/// Starts one serving thread per connection fd; each reports its end on `done`.
pub fn spawn_serving_threads(server: &Arc<Server>, fds: &[i32], done: mpsc::Sender<()>) -> std::io::Result<()> {
    for (i, &fd) in fds.iter().enumerate() {
        let server = server.clone();
        let done = done.clone();
        std::thread::Builder::new().name(format!("fuse-{i}")).spawn(move || {
            // SAFETY: this thread is the only one serving connection `i`.
            let buf = unsafe { server.fs.state.region.buffer(i) };
            serve_loop(fd, buf, &server);
            let _ = done.send(());
        })?;
    }
    Ok(())
}

fn clone_connection(master: i32) -> Result<i32, Error> {
    let fd = sys::open(c"/dev/fuse", libc::O_RDWR).map_err(Error::Clone)?;
    sys::ioctl_clone_fuse(fd, master).map_err(|e| {
        sys::close(fd);
        Error::Clone(e)
    })?;
    Ok(fd)
}

/// Reads requests from `fd` into `buf` (this connection's buffer in the state region) and
/// answers them, until the connection goes away.
fn serve_loop(fd: i32, buf: &mut [u8], server: &Arc<Server>) {
    let mut out = ReplyBuf::with_capacity(MAX_REQUEST);
    let record = server.thread_record();
    // The kernel copies a request into `buf` (and a reply out of `out`) page by page; where a
    // page is not yet mapped it faults it in, and a fault fails while SIGKILL is pending. A
    // worker killed during that copy would make the kernel end the request with EIO, visible
    // to the application. With every page present (and locked where allowed) the copy cannot
    // fail, so the request stays in the processing queue and is re-sent to the next worker.
    prefault(buf);
    out.prefault();
    loop {
        // An empty buffer (length 0) tells recovery there is no request here to finish.
        buf[..4].fill(0);
        let n = match sys::read(fd, buf) {
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
        if Server::blocks(&buf[..n]) && spawn_waiter(fd, buf[..n].to_vec(), server) {
            continue;
        }
        // Crash from here until the buffer is emptied below: a FORGET in `buf` is finished by
        // recovery (the kernel keeps no copy of it); any other request is re-sent by the kernel.
        let (reply, done) = server.handle(&buf[..n], Origin::Fuse, caller_groups, &mut out, &record);
        send_reply(fd, reply);
        buf[..4].fill(0);
        server.complete(done);
    }
}

fn send_reply(fd: i32, reply: Option<&[u8]>) {
    if let Some(reply) = reply {
        // Crash before the write: the request stays in the kernel's processing queue and is
        // re-sent to the next worker; after it, the reply is out and the record is stale.
        if let Err(e) = sys::write(fd, reply) {
            // ENOENT: the request was interrupted and the kernel no longer waits for it.
            if e.raw_os_error() != Some(libc::ENOENT) {
                tracing::warn!("writing a reply to /dev/fuse: {e}");
            }
        }
    }
}

/// Runs a request that may wait indefinitely (SETLKW) on a thread of its own, with its own
/// record, replying on the connection fd it came from. A crash while it waits leaves the request
/// in the kernel's processing queue: the next worker waits again. False if no thread could be
/// started (the caller then serves the request itself).
fn spawn_waiter(fd: i32, msg: Vec<u8>, server: &Arc<Server>) -> bool {
    server.blocking_read(&msg);
    let server = server.clone();
    let spawned = std::thread::Builder::new().name("fuse-lock-wait".into()).spawn(move || {
        let record = server.thread_record();
        let mut out = ReplyBuf::new();
        let (reply, done) = server.handle_blocking(&msg, Origin::Fuse, caller_groups, &mut out, &record);
        send_reply(fd, reply);
        server.complete(done);
        server.release_thread_record(record);
    });
    if let Err(e) = &spawned {
        tracing::error!("cannot start a thread for a blocking lock, waiting in a serving thread: {e}");
    }
    spawned.is_ok()
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

/// Touches (and, best effort, locks) every page of `buf`, so the kernel never has to fault one
/// in while copying a request; see `serve_loop`.
pub fn prefault(buf: &mut [u8]) {
    for b in buf.iter_mut().step_by(4096) {
        // SAFETY: a volatile write to memory we own, so the touch is not optimised away.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
    // SAFETY: locks our own allocation; failure (RLIMIT_MEMLOCK) only loses the extra guarantee.
    unsafe { libc::mlock(buf.as_ptr().cast(), buf.len()) };
}
