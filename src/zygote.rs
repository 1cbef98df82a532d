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
    /// All four ends, for a live upgrade's handover.
    pub fds: [i32; 4],
}

/// A request's first byte: a worker, or an upgrader (then the binary's fd, the handover's
/// length and the handover follow).
const REQUEST_WORKER: u8 = 1;
const REQUEST_UPGRADER: u8 = 2;
/// As an upgrader, but the new binary only checks that it can take the region over.
const REQUEST_CHECKER: u8 = 3;

/// The pipes, made before the fds every worker's sweep keeps are recorded (they are among them).
pub struct Pipes {
    request: [i32; 2],
    reply: [i32; 2],
}

impl Pipes {
    pub fn new() -> io::Result<Pipes> {
        Ok(Pipes { request: sys::pipe()?, reply: sys::pipe()? })
    }

    /// The four fds (request read and write ends, reply read and write ends), as a live upgrade
    /// hands them on.
    pub fn fds(&self) -> [i32; 4] {
        [self.request[0], self.request[1], self.reply[0], self.reply[1]]
    }

    /// The pipes a live upgrade handed on (`fds`); the zygote that used them is gone.
    pub fn from_fds(fds: [i32; 4]) -> Pipes {
        Pipes { request: [fds[0], fds[1]], reply: [fds[2], fds[3]] }
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
        Ok(Zygote { pid: cloned?, request: pipes.request[1], reply: pipes.reply[0], fds: pipes.fds() })
    }

    /// A new worker, cloned by the zygote as our child; returns its pid. Fails if the zygote
    /// has died (the pipes are in the shared fd table, so no end ever reads EOF: its death is
    /// checked while waiting).
    pub fn spawn_worker(&self) -> io::Result<i32> {
        sys::write(self.request, &[REQUEST_WORKER])?;
        self.read_pid()
    }

    /// A live upgrade's upgrader (upgrade.rs), cloned by the zygote as our child with a copy of
    /// the fd table: it runs the program of `binary` with `handover`. Returns its pid.
    pub fn spawn_upgrader(&self, binary: i32, handover: &str, check_only: bool) -> io::Result<i32> {
        let mut request = vec![if check_only { REQUEST_CHECKER } else { REQUEST_UPGRADER }];
        request.extend_from_slice(&binary.to_ne_bytes());
        request.extend_from_slice(&(handover.len() as u32).to_ne_bytes());
        request.extend_from_slice(handover.as_bytes());
        // One write: within a pipe's capacity, and the zygote reads it whole.
        sys::write(self.request, &request)?;
        self.read_pid()
    }

    fn read_pid(&self) -> io::Result<i32> {
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
        let answer = match byte[0] {
            REQUEST_UPGRADER | REQUEST_CHECKER => {
                let Some((binary, handover)) = read_upgrade(requests) else { process::exit_now(2) };
                // SAFETY: the zygote is single-threaded.
                match unsafe { process::clone_sibling_copying_fds() } {
                    Ok(0) => upgrader(&region, binary, &handover, byte[0] == REQUEST_CHECKER),
                    Ok(pid) => pid,
                    Err(e) => -e.raw_os_error().unwrap_or(libc::EIO),
                }
            }
            // SAFETY: the zygote is single-threaded.
            _ => match unsafe { process::clone_sibling_sharing_fds() } {
                Ok(0) => worker::run_process(region.alias(), cfg, supervisor),
                Ok(pid) => pid,
                Err(e) => -e.raw_os_error().unwrap_or(libc::EIO),
            },
        };
        if sys::write(replies, &answer.to_ne_bytes()).is_err() {
            process::exit_now(2);
        }
    }
}

/// Reads the rest of an upgrader request: the binary's fd and the handover.
fn read_upgrade(requests: i32) -> Option<(i32, String)> {
    let mut head = [0u8; 8];
    read_exact(requests, &mut head)?;
    let binary = i32::from_ne_bytes(head[..4].try_into().ok()?);
    let len = u32::from_ne_bytes(head[4..].try_into().ok()?) as usize;
    let mut handover = vec![0u8; len.min(1 << 16)];
    read_exact(requests, &mut handover)?;
    Some((binary, String::from_utf8(handover).ok()?))
}

fn read_exact(fd: i32, buf: &mut [u8]) -> Option<()> {
    let mut got = 0;
    while got < buf.len() {
        match sys::read(fd, &mut buf[got..]) {
            Ok(0) => return None,
            Ok(n) => got += n,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(_) => return None,
        }
    }
    Some(())
}

/// The upgrader's body (a copy of the fd table, taken while no worker runs): keeps open exactly
/// what the region and the handover name (the connection's fds are the handover's link), and
/// runs the new binary. A checker (`check_only`) keeps only the region's memfd and the pipe it
/// answers on.
fn upgrader(region: &Region, binary: i32, handover: &str, check_only: bool) -> ! {
    let Ok(h) = crate::upgrade::Handover::decode(handover) else { process::exit_now(2) };
    let up = h.pipes.up[1];
    // Not the transport's own list: the vhost-user one reads the region's area in this build's
    // layout, and a rollback may have converted it to an older one (`named_fds` reads either).
    let mut keep = if check_only { vec![h.memfd, up] } else { region.named_fds() };
    if !check_only {
        keep.extend(h.fds());
    }
    keep.sort_unstable();
    keep.dedup();
    let mode = if check_only { crate::upgrade::CHECK_ARG } else { crate::upgrade::ADOPT_ARG };
    crate::upgrade::exec_new_binary(binary, mode, handover, up, &keep)
}
