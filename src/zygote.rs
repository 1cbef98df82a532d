//! The zygote: the process that clones workers, so that the supervisor's seccomp filter can be
//! narrower than a worker's. A filter is inherited and can only be narrowed, so a worker cloned
//! by the supervisor could never do more than the supervisor's filter allows. The zygote is
//! cloned once, before the supervisor installs its filter; it installs the worker's list itself
//! and clones each worker on the supervisor's request with CLONE_PARENT, so the worker is the
//! supervisor's child (SIGCHLD, reaping, its parent-death signal, the crash-loop guard) in the
//! same fd table (CLONE_FILES) — as if the supervisor had cloned it.
//!
//! The zygote's memory is a copy of the supervisor's at the end of start-up (the configuration,
//! the region's mapping), which is all a worker inherits from it. It holds nothing that changes
//! and serves no request, so it has no reason to die; if it does, no worker can be started any
//! more and the supervisor stops (supervisor.rs).

use std::io;

use crate::state::Region;
use crate::sys::{self, process};
use crate::worker::{self, WorkerConfig};

/// The supervisor's side: the zygote's pid and the two pipes to it.
pub struct Zygote {
    pub pid: i32,
    /// Written by the supervisor: one byte per worker wanted.
    request: i32,
    /// Read by the supervisor: the new worker's pid (i32), or a negative errno.
    reply: i32,
}

/// The pipes, made before the fds every worker's sweep keeps are recorded (they are among them).
pub struct Pipes {
    request: [i32; 2],
    reply: [i32; 2],
}

impl Pipes {
    pub fn new() -> io::Result<Pipes> {
        Ok(Pipes { request: sys::pipe()?, reply: sys::pipe()? })
    }
}

impl Zygote {
    /// Clones the zygote sharing our fd table. Single-threaded callers only; before the
    /// supervisor's seccomp filter (the zygote needs the worker's calls, clone among them).
    pub fn start(pipes: Pipes, region: &Region, cfg: &WorkerConfig) -> io::Result<Zygote> {
        let supervisor = process::getpid();
        // The clone is born with our name: give it its own from its first instant (`ps`, and
        // whoever kills workers by name, must never take it for the supervisor or a worker).
        process::set_name(crate::security::sandbox::ZYGOTE_NAME);
        // SAFETY: the supervisor is single-threaded at start-up.
        let cloned = unsafe { process::clone_sharing_fds() };
        if let Ok(0) = cloned {
            run(region.alias(), cfg, supervisor, pipes.request[0], pipes.reply[1]);
        }
        process::set_name(crate::security::sandbox::SUPERVISOR_NAME);
        Ok(Zygote { pid: cloned?, request: pipes.request[1], reply: pipes.reply[0] })
    }

    /// A new worker, cloned by the zygote as our child; returns its pid. Fails if the zygote
    /// has died (the pipes are in the shared fd table, so no end ever reads EOF: its death is
    /// checked while waiting).
    pub fn spawn_worker(&self) -> io::Result<i32> {
        sys::write(self.request, &[1])?;
        let mut pid = [0u8; 4];
        let mut got = 0;
        while got < pid.len() {
            if !process::poll_readable([self.reply], 100)[0] {
                if process::child_has_ended(self.pid) {
                    return Err(io::Error::other("the zygote has died"));
                }
                continue;
            }
            match sys::read(self.reply, &mut pid[got..]) {
                Ok(0) => return Err(io::Error::from_raw_os_error(libc::EPIPE)),
                Ok(n) => got += n,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
        match i32::from_ne_bytes(pid) {
            pid if pid > 0 => Ok(pid),
            errno => Err(io::Error::from_raw_os_error(-errno)),
        }
    }
}

/// The zygote's body: confine to the worker's list, then clone a worker per request. Never
/// returns.
fn run(region: Region, cfg: &WorkerConfig, supervisor: i32, requests: i32, replies: i32) -> ! {
    process::set_name(crate::security::sandbox::ZYGOTE_NAME);
    if process::set_parent_death_signal(libc::SIGKILL).is_err() || process::getppid() != supervisor {
        process::exit_now(3);
    }
    // The worker's filter, which every worker inherits (and installs again); capabilities as
    // the supervisor left them: the workers take theirs from what is permitted here.
    if let Err(e) = crate::security::confine_zygote(&cfg.confine, &region.header().seccomp_violation) {
        tracing::error!("zygote: {e}");
        process::exit_now(2);
    }
    let mut byte = [0u8; 1];
    loop {
        match sys::read(requests, &mut byte) {
            Ok(0) => process::exit_now(0),
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(_) => process::exit_now(2),
        }
        // SAFETY: the zygote is single-threaded.
        let answer = match unsafe { process::clone_sibling_sharing_fds() } {
            Ok(0) => worker::run_process(region.alias(), cfg, supervisor),
            Ok(pid) => pid,
            Err(e) => -e.raw_os_error().unwrap_or(libc::EIO),
        };
        if sys::write(replies, &answer.to_ne_bytes()).is_err() {
            process::exit_now(2);
        }
    }
}
