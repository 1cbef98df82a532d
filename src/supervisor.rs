//! The supervisor: the tiny, single-threaded parent that holds the connection and the state
//! region, clones workers that share its fd table, and replaces each one that dies. It never
//! reads or answers a FUSE request. On a vhost-user connection it also serves the control
//! channel (transport/vhost_user/control.rs), so QEMU never sees a worker die.
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

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::state::Region;
use crate::transport::fusedev::FuseDev;
use crate::transport::vhost_user::ControlChannel;
use crate::worker::{self, WorkerConfig};

pub const MAX_FRUITLESS_DEATHS: u32 = 12;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot clone a worker: {0}")]
    Clone(std::io::Error),
    #[error("{0} workers in a row died before answering any request; giving up")]
    CrashLoop(u32),
}

/// What the supervisor holds the connection through.
pub enum Connection {
    Fuse(FuseDev),
    VhostUser(ControlChannel),
}

impl Connection {
    fn close(&self) {
        if let Connection::Fuse(dev) = self {
            dev.unmount();
        }
    }
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

/// The kernel's count of OOM kills so far (to tell an OOM kill from an outside SIGKILL). Opens
/// a file: call it only while no worker is alive (the fd table is shared; see `Workers::start`).
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

/// Why the supervisor stops.
enum Stop {
    /// The worker exited 0: the FUSE connection ended (unmounted).
    ConnectionEnded,
}

/// The current worker and the crash-loop bookkeeping.
pub struct Workers {
    region: Region,
    cfg: WorkerConfig,
    pid: i32,
    served_at_start: u64,
    ooms_at_start: u64,
    fruitless: u32,
    /// False from a clone until the worker says its fd sweep is done (the `ready` eventfd):
    /// meanwhile no control message is read, so no fd arrives that the sweep could close.
    pub ready: bool,
}

impl Workers {
    fn start(region: Region, cfg: WorkerConfig) -> Result<Workers, Error> {
        // Before the clone: reading /proc/vmstat opens and closes an fd in the table we share
        // with the worker, and a worker sweeping its fds at start could close that number and
        // open its own under it, which our close would then take away.
        let ooms_at_start = oom_kills();
        let pid = clone_worker(&region, &cfg)?;
        let h = region.header();
        Ok(Workers {
            served_at_start: h.served.load(Ordering::Relaxed),
            ooms_at_start,
            region,
            cfg,
            pid,
            fruitless: 0,
            ready: false,
        })
    }

    /// Reaps exited children; replaces the worker if it died. Err when giving up.
    fn reap(&mut self) -> Result<Option<Stop>, Error> {
        let header = self.region.header();
        loop {
            let mut status = 0;
            // SAFETY: reaps any exited child without blocking.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return Ok(None);
            }
            if pid != self.pid {
                continue;
            }
            if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
                return Ok(Some(Stop::ConnectionEnded));
            }
            let deaths = header.worker_deaths.fetch_add(1, Ordering::Relaxed) + 1;
            let in_flight: Vec<(u64, u32)> = self
                .region
                .records()
                .iter()
                .map(|r| (r.unique.load(Ordering::Relaxed), r.opcode.load(Ordering::Relaxed)))
                .filter(|(u, _)| *u != 0)
                .collect();
            let served = header.served.load(Ordering::Relaxed);
            let killed_from_outside = libc::WIFSIGNALED(status)
                && libc::WTERMSIG(status) == libc::SIGKILL
                && oom_kills() == self.ooms_at_start;
            header.death_counts.store(u32::from(!killed_from_outside), Ordering::Release);
            tracing::warn!(
                pid,
                deaths,
                answered = served - self.served_at_start,
                in_flight = ?in_flight,
                counts = !killed_from_outside,
                "worker {}; starting a new one",
                describe(status)
            );
            if served == self.served_at_start && !killed_from_outside {
                self.fruitless += 1;
                if self.fruitless >= MAX_FRUITLESS_DEATHS {
                    tracing::error!("{} workers in a row died before answering any request; giving up", self.fruitless);
                    return Err(Error::CrashLoop(self.fruitless));
                }
                std::thread::sleep(Duration::from_millis(1 << self.fruitless.min(10)));
            } else {
                self.fruitless = 0;
            }
            self.served_at_start = served;
            self.ooms_at_start = oom_kills();
            self.pid = clone_worker(&self.region, &self.cfg)?;
            self.ready = false;
        }
    }

    /// After the ready eventfd fired: the current worker is ready if it is the one that said so
    /// (a worker that signalled and then died must not vouch for its successor's sweep).
    fn note_ready(&mut self) {
        self.ready = self.region.header().ready_pid.load(Ordering::Acquire) == self.pid;
    }

    fn kill(&self) {
        // SAFETY: signals and reaps our own child.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

/// The fds the supervisor waits on (all made before the first worker, so kept by its sweep).
pub struct Waits {
    /// A signalfd for the blocked termination signals and SIGCHLD.
    pub signals: i32,
    /// The eventfd a worker writes once its start-up fd sweep is done.
    pub ready: i32,
}

fn read_signal(fd: i32) -> Option<u32> {
    // SAFETY: a zeroed signalfd_siginfo is valid; the read fills it.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    // SAFETY: reads at most size_of bytes into `info`.
    let n = unsafe { libc::read(fd, (&raw mut info).cast(), size_of::<libc::signalfd_siginfo>()) };
    (n == size_of::<libc::signalfd_siginfo>() as isize).then_some(info.ssi_signo)
}

/// Runs the supervisor until a termination signal or the end of the connection.
pub fn run(region: Region, conn: Connection, cfg: &WorkerConfig, waits: &Waits) -> Result<(), Error> {
    let vhost = region.vhost();
    let workers = Rc::new(RefCell::new(Workers::start(region, cfg.clone())?));
    let mut conn = conn;
    if let Connection::VhostUser(channel) = &mut conn {
        let w = workers.clone();
        // While the control channel waits on a worker (a ring being stopped), a worker that dies
        // is replaced, so the wait can end.
        channel.start(
            vhost,
            Box::new(move || {
                let _ = w.borrow_mut().reap();
            }),
        );
    }
    let result = serve(&workers, &mut conn, waits);
    workers.borrow().kill();
    conn.close();
    result
}

fn serve(workers: &Rc<RefCell<Workers>>, conn: &mut Connection, waits: &Waits) -> Result<(), Error> {
    loop {
        let control = match conn {
            Connection::VhostUser(c) if workers.borrow().ready => Some(c.fd()),
            _ => None,
        };
        let mut fds = vec![
            libc::pollfd { fd: waits.signals, events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: waits.ready, events: libc::POLLIN, revents: 0 },
        ];
        fds.extend(control.map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }));
        // SAFETY: a valid pollfd array for the duration of the call.
        if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) } < 0 {
            continue;
        }
        if fds[0].revents != 0 {
            match read_signal(waits.signals) {
                Some(sig) if sig == libc::SIGCHLD as u32 => {
                    if let Some(Stop::ConnectionEnded) = workers.borrow_mut().reap()? {
                        tracing::info!("the connection ended (unmounted); stopping");
                        return Ok(());
                    }
                }
                Some(sig) => {
                    tracing::info!(signal = sig, "stopping");
                    return Ok(());
                }
                None => {}
            }
        }
        if fds[1].revents != 0 {
            crate::sys::eventfd_drain(waits.ready);
            workers.borrow_mut().note_ready();
        }
        if fds.get(2).is_some_and(|p| p.revents != 0)
            && let Connection::VhostUser(channel) = conn
            && !channel.handle_one()
        {
            tracing::info!("the vhost-user frontend disconnected; stopping");
            return Ok(());
        }
    }
}
