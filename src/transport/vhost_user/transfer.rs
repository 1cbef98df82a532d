//! VM live migration's device-state transfer (vhost-user DEVICE_STATE: SET_DEVICE_STATE_FD,
//! then CHECK_DEVICE_STATE; QEMU 8.2+), split between the two processes so that it survives a
//! worker's death:
//!
//! - The supervisor serves the two messages (control.rs) and owns the transfer: a memfd it
//!   hands the frontend in reply to SET_DEVICE_STATE_FD (the protocol lets the back-end answer
//!   with a file descriptor of its own; the frontend then reads the state from it until EOF, or
//!   writes it there and closes it), and the request to the worker, in the region
//!   (`state::vhost::Transfer`). Neither is lost when a worker dies: the memfd is named in the
//!   region, so every worker's fd sweep keeps it, and the request stays PENDING.
//! - The worker does the work, on a thread of its own (`TransferThread`): on the source it
//!   writes the device state (fs/migrate.rs) into the memfd when SET_DEVICE_STATE_FD(SAVE)
//!   comes; on the destination it reads the memfd and imports the state into the tables when
//!   CHECK_DEVICE_STATE comes after a LOAD. A worker that dies meanwhile is replaced (the
//!   supervisor keeps workers alive while it waits) and its successor, finding the request
//!   PENDING, does it again: a save is rewritten from the start, an import starts by dropping
//!   what the cut-short one published. A request two workers died on fails.
//! - After an import the supervisor replaces the worker that did it, so the next one's recovery
//!   rebuilds every heap index (free lists, fd counts, lock owners) from the imported tables:
//!   the same path a crash takes, so crash recovery after a migration is recovery as usual.

use std::fs::File;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::fs::migrate::Summary;
use crate::server::Server;
use crate::state::stream::MAX_STREAM;
use crate::state::vhost::{
    STATUS_DONE, STATUS_FAILED, STATUS_IDLE, STATUS_PENDING, TRANSFER_LOAD, TRANSFER_SAVE, Transfer, VhostArea,
};
use crate::sys::{self, process};

/// Workers that may start on one request: one that died, and its successor.
const MAX_ATTEMPTS: u32 = 2;
/// How long the supervisor waits for a transfer (a million nodes take seconds, not minutes).
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the supervisor waits for a worker it killed to be reaped.
const REPLACE_TIMEOUT: Duration = Duration::from_secs(10);

/// A failed transfer, as the supervisor logs it.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("the worker failed it: {0} (its log says why)")]
    Worker(std::io::Error),
    #[error("no worker finished it within {0:?}")]
    Timeout(Duration),
}

/// Supervisor: a new transfer in `direction`, its memfd recorded in the region before anything
/// can use it.
pub fn open(area: &VhostArea, direction: u32) -> std::io::Result<()> {
    close(area);
    let fd = sys::memfd_create(c"phoenixfs-device-state")?.into_raw_fd();
    area.transfer.direction.store(direction, Ordering::Relaxed);
    // Recorded at once: a worker cloned from now on keeps it in its fd sweep.
    area.transfer.fd.store(fd, Ordering::Release);
    Ok(())
}

/// Supervisor: the direction of the transfer open now (between SET_DEVICE_STATE_FD and
/// CHECK_DEVICE_STATE), if one is.
pub fn open_direction(area: &VhostArea) -> Option<u32> {
    let t = &area.transfer;
    (t.fd.load(Ordering::Acquire) >= 0).then(|| t.direction.load(Ordering::Relaxed))
}

/// Supervisor: the outcome of the last request, if it finished (DONE or FAILED).
pub fn outcome(area: &VhostArea) -> Option<Result<Summary, Failure>> {
    let t = &area.transfer;
    match t.status.load(Ordering::Acquire) {
        STATUS_DONE => Some(Ok(Summary {
            nodes: t.nodes.load(Ordering::Relaxed),
            handles: t.handles.load(Ordering::Relaxed),
            invalid: t.invalid.load(Ordering::Relaxed),
        })),
        STATUS_FAILED => Some(Err(Failure::Worker(std::io::Error::from_raw_os_error(t.error.load(Ordering::Relaxed))))),
        _ => None,
    }
}

/// Supervisor: a duplicate of the transfer memfd for the reply to the frontend. Made last,
/// right before the reply: the region does not name it, so a worker cloned while it existed
/// (one replacing a worker that died during a save) would close it in its fd sweep
/// (test_regression: `crash_transfer_at_each_marker_the_migration_completes`, transfer.saved).
pub fn reply_file(area: &VhostArea) -> std::io::Result<File> {
    let dup = sys::dup(area.transfer.fd.load(Ordering::Acquire))?;
    // SAFETY: `dup` is a fresh fd that nothing else owns.
    Ok(unsafe { File::from_raw_fd(dup) })
}

/// Supervisor: ends the transfer (the memfd is closed; the frontend has its own copy).
pub fn close(area: &VhostArea) {
    let t = &area.transfer;
    t.status.store(STATUS_IDLE, Ordering::Release);
    let fd = t.fd.swap(-1, Ordering::AcqRel);
    // Crash model: only the supervisor runs this, and it does not crash.
    if fd >= 0 {
        sys::close(fd);
    }
}

/// Supervisor: asks the worker for `direction` on the open transfer and waits for it, keeping
/// workers alive meanwhile (`keep_workers` replaces one that died, whose successor takes the
/// request up). The outcome stays in the region (`outcome`) until the transfer is closed.
pub fn run(area: &VhostArea, direction: u32, keep_workers: &mut dyn FnMut()) -> Result<Summary, Failure> {
    let t = &area.transfer;
    t.direction.store(direction, Ordering::Relaxed);
    t.attempts.store(0, Ordering::Relaxed);
    t.error.store(0, Ordering::Relaxed);
    for c in [&t.len, &t.nodes, &t.handles, &t.invalid] {
        c.store(0, Ordering::Relaxed);
    }
    // The request is complete before it is PENDING (Release): a worker that sees PENDING reads
    // the rest.
    t.status.store(STATUS_PENDING, Ordering::Release);
    let wake = t.wake_fd.load(Ordering::Relaxed);
    if wake >= 0 {
        sys::eventfd_signal(wake);
    }
    let deadline = Instant::now() + TRANSFER_TIMEOUT;
    loop {
        if let Some(done) = outcome(area) {
            return done;
        }
        if Instant::now() > deadline {
            t.error.store(libc::ETIMEDOUT, Ordering::Relaxed);
            t.status.store(STATUS_FAILED, Ordering::Release);
            return Err(Failure::Timeout(TRANSFER_TIMEOUT));
        }
        keep_workers();
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Supervisor, after an import: kills the worker that did it and waits until it is reaped
/// (`keep_workers` reaps it and clones the next one, whose recovery reads the imported tables;
/// the supervisor reads no further message until that one is ready).
pub fn replace_worker(area: &VhostArea, keep_workers: &mut dyn FnMut()) {
    let pid = area.transfer.worker_pid.swap(0, Ordering::AcqRel);
    if pid <= 0 {
        return;
    }
    tracing::info!(
        pid,
        "device state load ended: replacing the worker, so the next one recovers the tables from the region"
    );
    if process::send_signal(pid, libc::SIGKILL).is_err() {
        return;
    }
    let deadline = Instant::now() + REPLACE_TIMEOUT;
    // A zombie still answers signal 0; once reaped (and replaced) it does not.
    while process::send_signal(pid, 0).is_ok() {
        if Instant::now() > deadline {
            tracing::warn!(pid, "the worker that imported the device state was not reaped within 10 s");
            return;
        }
        keep_workers();
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The worker's transfer thread: waits on the region's wake eventfd, and serves a PENDING
/// request (one a dead worker left included) once per wake-up.
pub struct TransferThread {
    pub server: Arc<Server>,
    pub area: &'static VhostArea,
}

impl TransferThread {
    pub fn run(self) {
        let t = &self.area.transfer;
        let wake = t.wake_fd.load(Ordering::Relaxed);
        loop {
            // Before waiting: a request a dead worker left PENDING is taken up at once.
            if t.status.load(Ordering::Acquire) == STATUS_PENDING {
                self.serve(t);
            }
            if wake < 0 {
                return;
            }
            let [_] = process::poll_readable([wake], -1);
            sys::eventfd_drain(wake);
        }
    }

    fn serve(&self, t: &Transfer) {
        // Crash after this count: the next worker counts itself too, so a request that kills
        // every worker that takes it up ends FAILED, not in a crash loop.
        let attempt = t.attempts.fetch_add(1, Ordering::AcqRel) + 1;
        let direction = t.direction.load(Ordering::Relaxed);
        let outcome = if attempt > MAX_ATTEMPTS {
            tracing::error!(attempt, "device state transfer: the workers before this one died on it; failing it");
            Err(libc::EIO)
        } else {
            let fd = t.fd.load(Ordering::Acquire);
            match direction {
                TRANSFER_SAVE => self.save(t, fd),
                TRANSFER_LOAD => self.load(t, fd),
                _ => Err(libc::EINVAL),
            }
        };
        t.worker_pid.store(process::getpid(), Ordering::Relaxed);
        match outcome {
            Ok(s) => {
                t.nodes.store(s.nodes, Ordering::Relaxed);
                t.handles.store(s.handles, Ordering::Relaxed);
                t.invalid.store(s.invalid, Ordering::Relaxed);
                // Crash before this store: the request stays PENDING and the next worker does it
                // again (the import drops what this one published first).
                t.status.store(STATUS_DONE, Ordering::Release);
            }
            Err(errno) => {
                t.error.store(errno, Ordering::Relaxed);
                // Crash before this store: the next worker tries again (and fails the same way,
                // or succeeds); the refused import's slots were dropped already.
                t.status.store(STATUS_FAILED, Ordering::Release);
            }
        }
    }

    /// The source: the device state into the memfd, from offset 0 (the frontend reads it
    /// from there), replacing whatever a dead worker's attempt wrote.
    fn save(&self, t: &Transfer, fd: i32) -> Result<Summary, i32> {
        let (bytes, summary) = self.server.export_state().map_err(|e| {
            tracing::error!("device state save: {e}");
            e.errno()
        })?;
        let io = |e: std::io::Error| {
            tracing::error!("device state save: writing the transfer memfd: {e}");
            e.raw_os_error().unwrap_or(libc::EIO)
        };
        // Crash anywhere in the write: the request stays PENDING; the next worker truncates
        // and writes the whole state again (the frontend reads only after the reply).
        sys::ftruncate(fd, 0).map_err(io)?;
        let mut done = 0;
        while done < bytes.len() {
            done += sys::pwrite(fd, &bytes[done..], done as u64).map_err(io)?;
        }
        t.len.store(bytes.len() as u64, Ordering::Relaxed);
        // Crash here: the state is written but the request still PENDING; the next worker
        // writes it again from the start.
        crate::crash_point!("transfer.saved");
        tracing::info!(
            bytes = bytes.len(),
            nodes = summary.nodes,
            handles = summary.handles,
            unlocated = summary.invalid,
            "device state saved"
        );
        Ok(summary)
    }

    /// The destination: the device state the frontend wrote into the memfd, imported.
    fn load(&self, t: &Transfer, fd: i32) -> Result<Summary, i32> {
        let io = |e: std::io::Error| {
            tracing::error!("device state load: reading the transfer memfd: {e}");
            e.raw_os_error().unwrap_or(libc::EIO)
        };
        let size = sys::fstatat(fd, c"", libc::AT_EMPTY_PATH).map_err(io)?.st_size as u64;
        if size > MAX_STREAM {
            tracing::error!(size, "device state load: refused: larger than {MAX_STREAM} bytes");
            return Err(libc::EFBIG);
        }
        let mut bytes = vec![0u8; size as usize];
        let mut done = 0;
        while done < bytes.len() {
            let n = sys::pread(fd, &mut bytes[done..], done as u64).map_err(io)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        bytes.truncate(done);
        t.len.store(done as u64, Ordering::Relaxed);
        let summary = self.server.import_state(&bytes).map_err(|e| {
            tracing::error!("device state load: {e}");
            e.errno()
        })?;
        tracing::info!(
            bytes = done,
            nodes = summary.nodes,
            handles = summary.handles,
            unusable = summary.invalid,
            "device state loaded"
        );
        Ok(summary)
    }
}
