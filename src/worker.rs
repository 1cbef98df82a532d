//! A worker: what serves requests. With recovery on it is a process the supervisor clones,
//! sharing its fd table (CLONE_FILES, no exec); with recovery off it is the daemon itself.
//! Either way it takes the state region over (recovery.rs), then starts the transport's
//! serving threads.

use std::ffi::CString;
use std::sync::Arc;

use crate::fs::{self, Fs};
use crate::recovery::{self, Recovered};
use crate::server::{InitPolicy, Server};
use crate::state::Region;
use crate::sys::process;
use crate::transport::Transport;

/// Everything a worker needs that is not in the region. A cloned worker inherits it in its
/// copy of the supervisor's memory.
#[derive(Clone)]
pub struct WorkerConfig {
    /// The share as the worker names it ("/" inside a sandbox).
    pub shared_dir: CString,
    /// A procfs dirfd: the worker opens its own /proc/self/fd beneath it.
    pub proc: i32,
    pub fs: fs::Config,
    pub policy: InitPolicy,
    pub recovery: bool,
    /// The workers' side of the connection, chosen once at start-up.
    pub transport: Arc<dyn Transport>,
    /// The eventfd a serving thread writes when the connection ends (the supervisor stops).
    pub ended: i32,
    /// The seccomp mode and capabilities a worker confines itself to.
    pub confine: crate::security::Policy,
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

/// Takes the region over (recovery.rs, steps 1 to 6), then step 7: builds the file system
/// (which opens this worker's own /proc/self/fd) and the lock-owner index over the live
/// handles, the server with the INIT outcome the region holds (the kernel will not send INIT
/// again), has the transport deliver again what the dead worker had read, and starts the
/// serving threads. Returns once they run.
pub fn start(region: Region, cfg: &WorkerConfig) -> Result<(), Error> {
    let t0 = std::time::Instant::now();
    let Recovered { state, live_handles, released_backing } = recovery::take_over(region, &*cfg.transport)?;
    let fs = Fs::new(&cfg.shared_dir, cfg.proc, state.clone(), cfg.fs.clone())?;
    fs.rebuild_locks(&live_handles);
    let server = Arc::new(Server::new(fs, state.clone(), cfg.policy, cfg.recovery));
    // FUSE passthrough: the counts per node from the live handles, and the backing ids a dead
    // worker registered but did not publish (or released but did not close) closed, before any
    // request can register a new one.
    server.recover_passthrough(&live_handles, &released_backing);
    cfg.transport.resume(&state);
    crate::server::install_wake_handler();
    cfg.transport.spawn(&server, cfg.ended).map_err(Error::Spawn)?;
    tracing::debug!(total_us = t0.elapsed().as_micros() as u64, "worker serving");
    Ok(())
}

/// The body of a worker process (recovery on): never returns. The serving threads run until
/// the supervisor kills the process (it stops, or the connection ended).
pub fn run_process(region: Region, cfg: &WorkerConfig, supervisor: i32) -> ! {
    // If the supervisor dies, so do we: a worker without its supervisor would serve on with
    // nobody to replace it.
    if process::set_parent_death_signal(libc::SIGKILL).is_err() || process::getppid() != supervisor {
        process::exit_now(3);
    }
    process::set_name(crate::security::sandbox::WORKER_NAME);
    // Before anything else, recovery included: only the worker's capabilities and system calls
    // (`WORKER` over the zygote's wider filter).
    if let Err(e) = crate::security::confine_worker(&cfg.confine, &region.header().seccomp_violation) {
        tracing::error!("worker: {e}");
        process::exit_now(2);
    }
    // A panic is a crash: let the supervisor replace the whole worker rather than leave a dead
    // thread's request unanswered.
    std::panic::set_hook(Box::new(|info| {
        tracing::error!("worker panicked: {info}");
        std::process::abort();
    }));
    if let Err(e) = start(region, cfg) {
        tracing::error!("worker: {e}");
        process::exit_now(2);
    }
    loop {
        std::thread::park();
    }
}
