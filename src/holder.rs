//! The holder: what the daemon's first process becomes when the supervisor runs in a sandbox
//! (security/sandbox.rs). It stays in the host's namespaces, holds nothing of the serving (its
//! fd table is its own: the supervisor was forked, not cloned with CLONE_FILES), and does the
//! three things that need the host's view:
//!
//! - passes termination signals (SIGTERM, SIGINT, SIGHUP) on to the supervisor;
//! - answers workers' questions about a FUSE caller's supplementary groups from the host's
//!   /proc (transport/groups.rs), which the pid namespace hides from them;
//! - when the supervisor has ended, unmounts the FUSE mount in the host's mount namespace
//!   (the supervisor's is a private copy) and exits with the supervisor's exit code.
//!
//! If the holder dies, the supervisor gets SIGKILL (its parent-death signal) and with it every
//! worker: as with a supervisor's death, the mount then reports ENOTCONN until unmounted.

use std::sync::atomic::AtomicU32;

use crate::security;
use crate::sys::{self, process};
use crate::transport::{Teardown, groups};

/// Where the holder's SIGSYS handler records a refused call (it has no state region).
static SECCOMP_VIOLATION: AtomicU32 = AtomicU32::new(0);

/// What the holder keeps from start-up.
pub struct Holder {
    pub supervisor: i32,
    /// The signalfd of blocked SIGTERM, SIGINT, SIGHUP and SIGCHLD.
    pub signals: i32,
    /// The holder's end of the groups socket pair (FUSE in a pid namespace), if any.
    pub groups: Option<i32>,
    /// The unmount to do at the end (FUSE), if any.
    pub teardown: Option<Box<dyn Teardown>>,
    pub seccomp: crate::cli::SeccompAction,
}

/// Runs the holder until the supervisor ends; exits with its exit code. Never returns.
pub fn run(h: Holder) -> ! {
    // Only what the holder uses stays open: the supervisor has its own copy of everything.
    let mut keep = vec![0, 1, 2, h.signals];
    keep.extend(h.groups);
    keep.extend(h.teardown.as_ref().map(|t| t.fds()).unwrap_or_default());
    sys::close_all_except(keep);
    // The host's procfs, for callers' groups (opened after the sweep, which would close it).
    let proc = h.groups.and_then(|_| sys::open(c"/proc", libc::O_PATH | libc::O_DIRECTORY).ok());
    if let Some(sock) = h.groups {
        let _ = sys::set_nonblocking(sock, true);
    }
    if let Err(e) = security::confine_holder(h.seccomp, &SECCOMP_VIOLATION) {
        tracing::error!("holder: {e}; stopping the supervisor");
        let _ = process::send_signal(h.supervisor, libc::SIGKILL);
    }
    // Questions are read while anybody can still ask (until the socket's other end is closed).
    let mut asking = h.groups.zip(proc);
    let status = loop {
        let [signal, question] = process::poll_readable([h.signals, asking.map_or(-1, |(sock, _)| sock)], -1);
        if question && let Some((sock, proc)) = asking {
            while process::poll_readable([sock], 0)[0] {
                if !groups::answer_one(sock, proc) {
                    asking = None;
                    break;
                }
            }
        }
        if !signal {
            continue;
        }
        match process::read_signal(h.signals) {
            Some(sig) if sig == libc::SIGCHLD as u32 => {
                if let Some((pid, status)) = process::reap_any()
                    && pid == h.supervisor
                {
                    break status;
                }
            }
            Some(sig) => {
                tracing::debug!(signal = sig, "passing a signal on to the supervisor");
                let _ = process::send_signal(h.supervisor, sig as i32);
            }
            None => {}
        }
    };
    if let Some(t) = h.teardown {
        t.run();
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        tracing::error!("the supervisor {}", process::describe_status(status));
        1
    };
    process::exit_now(code)
}
