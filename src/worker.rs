//! A worker: the process that serves requests. With recovery on it is a clone of the supervisor
//! sharing its fd table (CLONE_FILES, no exec); with recovery off it is the daemon itself.
//!
//! Start-up is the same for the first worker and for one replacing a dead one: take the region
//! over (check it, settle what the dead worker left half-done, rebuild heap indexes), close every
//! fd nothing refers to, build the file system and server, ask the kernel to re-send what the
//! dead worker read but did not answer, and serve on the connection fds the region names.

use std::ffi::CString;
use std::sync::Arc;
use std::sync::mpsc;

use crate::fs::{self, Fs};
use crate::fuse::{DecodeOptions, Op, Request, abi, reply};
use crate::server::{InitPolicy, Server};
use crate::state::intent::Intent;
use crate::state::region::TRANSPORT_VHOST_USER;
use crate::state::{HandleKind, Region, State};
use crate::sys;

/// Everything a worker needs that is not in the region.
#[derive(Clone)]
pub struct WorkerConfig {
    pub shared_dir: CString,
    pub fs: fs::Config,
    pub policy: InitPolicy,
    pub recovery: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("taking over the state region: {0}")]
    State(#[from] crate::state::Error),
    #[error("setting up the file system: {0}")]
    Fs(#[from] fs::Error),
    #[error("cannot start a serving thread: {0}")]
    Spawn(std::io::Error),
}

/// Closes every open fd that is not in `keep`: the fds that requests in flight at a crash had
/// opened but not yet given to a table. With `close_range` over the gaps between the fds to
/// keep, the cost follows the number of gaps (few: fds are allocated lowest-first), not the
/// number of open fds; listing /proc/self/fd took 40 ms at 15,000 live inodes.
pub fn sweep_fds(keep: Vec<i32>) {
    let mut kept: Vec<u32> = keep.into_iter().filter(|fd| *fd >= 0).map(|fd| fd as u32).collect();
    kept.sort_unstable();
    let mut next = 0u32;
    for fd in kept.into_iter().chain([u32::MAX]) {
        if fd > next
            && let Err(e) = sys::close_range(next, fd - 1)
        {
            tracing::error!("close_range({next}, {}) in the fd sweep: {e}", fd - 1);
        }
        next = fd.saturating_add(1);
    }
}

/// Finishes the FORGETs and BATCH_FORGETs a dead worker had read into its connection buffers:
/// from the entry its record says is next, or from the first if it died before starting one.
fn finish_buffered_forgets(state: &State) {
    use std::sync::atomic::Ordering;
    let h = state.region.header();
    let worker_gen = state.worker_gen();
    for i in 0..h.conn_count as usize {
        // SAFETY: recovery runs before any serving thread exists.
        let buf = unsafe { state.region.buffer(i) };
        let Ok(req) = Request::decode(&buf[..buffer_len(buf)], DecodeOptions::default()) else {
            buf[..4].fill(0);
            continue;
        };
        let entries = match req.op {
            Op::Forget { nlookup } => vec![abi::ForgetOne { nodeid: req.header.nodeid, nlookup }],
            Op::BatchForget { forgets } => forgets,
            _ => {
                buf[..4].fill(0);
                continue;
            }
        };
        let unique = req.header.unique & !abi::UNIQUE_RESEND;
        let records = state.region.records();
        let rec = records.iter().find(|r| r.unique.load(Ordering::Acquire) == unique).or_else(|| {
            let free = records.iter().find(|r| r.unique.load(Ordering::Acquire) == 0)?;
            free.start(unique, req.header.opcode, req.header.nodeid, worker_gen);
            Some(free)
        });
        let intent = rec.map_or(Intent::none(), |r| Intent::new(r, true));
        let from = intent.step() as usize;
        state.inodes.forget_entries(&entries, intent);
        tracing::info!(unique, entries = entries.len(), from, "finished a forget the dead worker had read");
        buf[..4].fill(0);
        if let Some(r) = rec {
            r.clear();
        }
    }
}

/// The length of the request in a connection buffer (0 when empty), bounded by the buffer.
fn buffer_len(buf: &[u8]) -> usize {
    (u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize).min(buf.len())
}

/// Tells the supervisor this worker's fd sweep is done (it reads no control message before, so
/// no fd it receives can be swept).
fn announce_ready(h: &crate::state::region::Header) {
    // SAFETY: getpid has no preconditions.
    h.ready_pid.store(unsafe { libc::getpid() }, std::sync::atomic::Ordering::Release);
    if h.ready_fd >= 0 {
        sys::eventfd_signal(h.ready_fd);
    }
}

/// Takes the region over and builds the server. Single-threaded: nothing else runs yet.
pub fn prepare(region: Region, cfg: &WorkerConfig) -> Result<Arc<Server>, Error> {
    // Crash here: nothing is taken over yet; the next worker starts from the same region.
    crate::crash_point!("worker.start");
    let t0 = std::time::Instant::now();
    let state = Arc::new(State::new(region));
    let virtio = state.region.header().transport == TRANSPORT_VHOST_USER;
    let mut live_handles = Vec::new();
    let report = state.recover(
        // The kernel re-sends no FORGET/INTERRUPT, but a virtqueue head in flight is replayed
        // whatever it holds.
        |opcode| {
            !virtio
                && matches!(
                    abi::Opcode::try_from(opcode),
                    Ok(abi::Opcode::Forget | abi::Opcode::BatchForget | abi::Opcode::Interrupt)
                )
        },
        |fh, slot| {
            if let Some(kind) = slot.kind() {
                let nodeid = slot.nodeid.load(std::sync::atomic::Ordering::Relaxed);
                let owner = slot.owner.load(std::sync::atomic::Ordering::Relaxed);
                live_handles.push((fh, kind, nodeid, owner));
            }
        },
        finish_buffered_forgets,
    )?;
    if virtio {
        let keys = crate::transport::vhost_user::in_flight_keys(state.region.vhost());
        state.records.retain_orphans(|key| keys.contains(&key));
    }
    let t_recover = t0.elapsed();
    sweep_fds(state.referenced_fds());
    let t_sweep = t0.elapsed();
    announce_ready(state.region.header());
    let generation = state.region.header().generation.load(std::sync::atomic::Ordering::SeqCst);
    if generation > 1 {
        tracing::info!(
            generation,
            live_inodes = report.live_inodes,
            live_handles = report.live_handles,
            in_flight = report.records.in_flight.len(),
            finished_forgets = report.records.finished_noreply,
            recover_us = t_recover.as_micros() as u64,
            sweep_us = (t_sweep - t_recover).as_micros() as u64,
            "took over the state of a dead worker"
        );
    }
    let fs = Fs::new(&cfg.shared_dir, state, cfg.fs.clone())?;
    crate::server::install_wake_handler();
    fs.rebuild_locks(&live_handles.iter().filter(|h| h.1 != HandleKind::Dir).copied().collect::<Vec<_>>());
    tracing::debug!(total_us = t0.elapsed().as_micros() as u64, "worker ready");
    Ok(Arc::new(Server::new(fs, cfg.policy, cfg.recovery)))
}

/// Asks the kernel to queue again every request a dead worker read but did not answer.
pub fn request_resend(server: &Server) {
    let h = server.fs.state.region.header();
    if h.init_done.load(std::sync::atomic::Ordering::Acquire) == 0 || h.conn_count == 0 {
        return; // nothing was read before INIT was answered: INIT itself comes again
    }
    if h.kernel_flags.load(std::sync::atomic::Ordering::Acquire) & abi::HAS_RESEND == 0 {
        tracing::error!(
            "this kernel lacks FUSE_NOTIFY_RESEND (Linux < 6.9): requests the dead worker had \
             read stay unanswered, and the applications waiting on them hang"
        );
        return;
    }
    if let Err(e) = sys::write(h.conn_fds[0], &reply::notify_resend()) {
        tracing::error!("FUSE_NOTIFY_RESEND failed: {e}");
    }
}

/// Serves on every connection fd of the region until the connection ends; returns when one
/// serving thread has stopped (unmounted, or aborted).
pub fn serve(server: Arc<Server>) -> Result<(), Error> {
    let h = server.fs.state.region.header();
    let (done_tx, done_rx) = mpsc::channel();
    if h.transport == TRANSPORT_VHOST_USER {
        crate::transport::vhost_user::spawn_queue_threads(&server, done_tx).map_err(Error::Spawn)?;
    } else {
        let fds: Vec<i32> = h.conn_fds[..h.conn_count as usize].to_vec();
        crate::transport::fusedev::spawn_serving_threads(&server, &fds, done_tx).map_err(Error::Spawn)?;
    }
    let _ = done_rx.recv();
    Ok(())
}

/// The body of a worker process (recovery on): never returns.
pub fn run_process(region: Region, cfg: &WorkerConfig, supervisor: i32) -> ! {
    // SAFETY: prctl with plain integer arguments. If the supervisor dies, so do we: a worker
    // without its supervisor would serve on with nobody to replace it.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    // SAFETY: plain syscall.
    if unsafe { libc::getppid() } != supervisor {
        // SAFETY: exiting without running the parent's destructors in this copy of its memory.
        unsafe { libc::_exit(3) };
    }
    // A panic is a crash: let the supervisor replace the whole worker rather than leave a dead
    // thread's request unanswered.
    std::panic::set_hook(Box::new(|info| {
        tracing::error!("worker panicked: {info}");
        std::process::abort();
    }));
    let code = match prepare(region, cfg).and_then(|server| {
        request_resend(&server);
        serve(server)
    }) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("worker: {e}");
            2
        }
    };
    // SAFETY: as above.
    unsafe { libc::_exit(code) }
}
