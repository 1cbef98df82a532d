//! The supervisor: the tiny, single-threaded parent that holds the connection and the state
//! region, clones workers that share its fd table, and replaces each one that dies. It never
//! reads or answers a request.
//!
//! Which deaths count: a worker that crashed by itself (a fault signal, an abort from a panic, a
//! non-zero exit) or that the OOM killer took. A SIGKILL from outside — an operator, a test, an
//! orchestrator — is not the worker's doing and is survived without counting, however often.
//!
//! Crash-loop guard: a counted death of a worker that had not answered a single request counts
//! toward a loop. Each such death doubles a back-off before the next clone (from 1 ms up to 1 s); a
//! worker that answered anything resets it. After `MAX_FRUITLESS_DEATHS` fruitless deaths in a
//! row the supervisor gives up: one log line, unmount, exit 1. (The request that kills workers is
//! itself answered EIO at its third attempt by the worker-side guard, so a single poison request
//! cannot cause this; a worker that cannot even start can.)

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::state::Region;
use crate::transport::fusedev::FuseDev;
use crate::worker::{self, WorkerConfig};

pub const MAX_FRUITLESS_DEATHS: u32 = 12;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot clone a worker: {0}")]
    Clone(std::io::Error),
    #[error("{0} workers in a row died before answering any request; giving up")]
    CrashLoop(u32),
}

/// Clones a worker sharing our fd table (CLONE_FILES, no CLONE_VM: its memory is a copy).
fn clone_worker(region: &Region, cfg: &WorkerConfig) -> Result<i32, Error> {
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    // SAFETY: a fork-like clone (no new stack: the child continues on a copy of ours). The
    // supervisor is single-threaded, so no lock can be held across it in the child.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_FILES | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    match pid {
        -1 => Err(Error::Clone(std::io::Error::last_os_error())),
        0 => worker::run_process(region.alias(), cfg, me),
        pid => Ok(pid as i32),
    }
}

/// The kernel's count of OOM kills so far (to tell an OOM kill from an outside SIGKILL).
fn oom_kills() -> u64 {
    std::fs::read_to_string("/proc/vmstat")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok()))
        .unwrap_or(0)
}

/// How a child ended, for the log.
fn describe(status: i32) -> String {
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        // SAFETY: strsignal returns a static string for any number.
        let name = unsafe { std::ffi::CStr::from_ptr(libc::strsignal(sig)) };
        format!("killed by signal {sig} ({})", name.to_string_lossy())
    } else {
        format!("exited with code {}", libc::WEXITSTATUS(status))
    }
}

/// Runs the supervisor until a termination signal or the end of the connection.
pub fn run(region: Region, dev: &FuseDev, cfg: &WorkerConfig, sigset: &libc::sigset_t) -> Result<(), Error> {
    let header = region.header();
    let mut worker = clone_worker(&region, cfg)?;
    let mut served_at_start = header.served.load(Ordering::Relaxed);
    let mut ooms_at_start = oom_kills();
    let mut fruitless = 0u32;
    loop {
        let mut sig = 0;
        // SAFETY: waits on a valid set of signals blocked in this thread.
        unsafe { libc::sigwait(sigset, &mut sig) };
        if sig != libc::SIGCHLD {
            tracing::info!(signal = sig, "stopping");
            // SAFETY: signals and reaps our own child.
            unsafe {
                libc::kill(worker, libc::SIGKILL);
                libc::waitpid(worker, std::ptr::null_mut(), 0);
            }
            dev.unmount();
            return Ok(());
        }
        loop {
            let mut status = 0;
            // SAFETY: reaps any exited child without blocking.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            if pid != worker {
                continue;
            }
            if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
                tracing::info!("the connection ended (unmounted); stopping");
                dev.unmount();
                return Ok(());
            }
            let deaths = header.worker_deaths.fetch_add(1, Ordering::Relaxed) + 1;
            let in_flight: Vec<(u64, u32)> = region
                .records()
                .iter()
                .map(|r| (r.unique.load(Ordering::Relaxed), r.opcode.load(Ordering::Relaxed)))
                .filter(|(u, _)| *u != 0)
                .collect();
            let served = header.served.load(Ordering::Relaxed);
            let killed_from_outside =
                libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL && oom_kills() == ooms_at_start;
            header.death_counts.store(u32::from(!killed_from_outside), Ordering::Release);
            tracing::warn!(
                pid,
                deaths,
                answered = served - served_at_start,
                in_flight = ?in_flight,
                counts = !killed_from_outside,
                "worker {}; starting a new one",
                describe(status)
            );
            if served == served_at_start && !killed_from_outside {
                fruitless += 1;
                if fruitless >= MAX_FRUITLESS_DEATHS {
                    tracing::error!(
                        "{fruitless} workers in a row died before answering any request; giving up and unmounting"
                    );
                    dev.unmount();
                    return Err(Error::CrashLoop(fruitless));
                }
                std::thread::sleep(Duration::from_millis(1 << fruitless.min(10)));
            } else {
                fruitless = 0;
            }
            served_at_start = served;
            ooms_at_start = oom_kills();
            worker = clone_worker(&region, cfg)?;
        }
    }
}
