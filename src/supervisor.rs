//! The supervisor: the tiny, single-threaded parent that holds the connection and the state
//! region, has workers that share its fd table cloned as its children (by the zygote, so that
//! its own seccomp filter can be narrower: zygote.rs), and replaces each one that dies. It never
//! reads or answers a FUSE request; the connection's own messages (vhost-user's control
//! channel) it serves itself, so the peer never sees a worker die. With recovery off the same
//! loop runs with the serving threads in this very process and no workers.
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

use crate::control;
use crate::state::Region;
use crate::sys::{self, process};
use crate::transport::Connection;
use crate::worker::{self, WorkerConfig};
use crate::zygote::Zygote;

pub const MAX_FRUITLESS_DEATHS: u32 = 12;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot clone a worker: {0}")]
    Clone(std::io::Error),
    #[error("the zygote that clones workers {0}: no worker can be started any more")]
    ZygoteDied(String),
    #[error("{0} workers in a row died before answering any request; giving up")]
    CrashLoop(u32),
    #[error(transparent)]
    Worker(#[from] worker::Error),
}

/// The fds the supervisor waits on (all made before the first worker, so kept by its sweep).
pub struct Waits {
    /// A signalfd for the blocked termination signals and SIGCHLD.
    pub signals: i32,
    /// The eventfd a worker writes once its start-up fd sweep is done.
    pub ready: i32,
    /// The eventfd a serving thread writes when the connection ends (unmounted).
    pub ended: i32,
}

/// The kernel's count of OOM kills so far (to tell an OOM kill from an outside SIGKILL), from
/// the host's /proc/vmstat, which start-up opened (`vmstat`): inside the sandbox there is no
/// such path, and a read of an open fd takes no fd in the table the workers share.
fn oom_kills(vmstat: i32) -> u64 {
    let mut buf = [0u8; 8192];
    let n = sys::pread(vmstat, &mut buf, 0).unwrap_or(0);
    std::str::from_utf8(&buf[..n])
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok()))
        .unwrap_or(0)
}

/// How many worker deaths `ctl status` shows.
const RECENT_DEATHS: usize = 8;

/// The current worker and the crash-loop bookkeeping.
pub struct Workers {
    /// The last `RECENT_DEATHS` deaths, oldest first (for `ctl status`).
    recent: std::collections::VecDeque<control::Death>,
    region: Region,
    /// What clones each worker for us (zygote.rs), sharing our fd table.
    zygote: Zygote,
    pid: i32,
    served_at_start: u64,
    ooms_at_start: u64,
    /// The host's /proc/vmstat (see `oom_kills`).
    vmstat: i32,
    fruitless: u32,
    /// False from a clone until the worker says its fd sweep is done (the `ready` eventfd):
    /// meanwhile no control message is read, so no fd arrives that the sweep could close.
    ready: bool,
}

impl Workers {
    fn start(region: Region, zygote: Zygote, vmstat: i32) -> Result<Workers, Error> {
        let ooms_at_start = oom_kills(vmstat);
        let pid = zygote.spawn_worker().map_err(Error::Clone)?;
        let served_at_start = region.header().served.load(Ordering::Relaxed);
        Ok(Workers {
            recent: Default::default(),
            region,
            zygote,
            pid,
            served_at_start,
            ooms_at_start,
            vmstat,
            fruitless: 0,
            ready: false,
        })
    }

    /// Reaps exited children; replaces the worker if it died. Err when giving up.
    fn reap(&mut self) -> Result<(), Error> {
        let header = self.region.header();
        while let Some((pid, status)) = process::reap_any() {
            if pid == self.zygote.pid {
                return Err(Error::ZygoteDied(process::describe_status(status)));
            }
            if pid != self.pid {
                continue;
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
                && oom_kills(self.vmstat) == self.ooms_at_start;
            header.death_counts.store(u32::from(!killed_from_outside), Ordering::Release);
            if libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS {
                let nr = header.seccomp_violation.swap(0, Ordering::AcqRel);
                let name = nr.checked_sub(1).map(|nr| {
                    crate::security::seccomp::syscall_name(nr.into()).map_or(format!("syscall {nr}"), String::from)
                });
                tracing::error!(
                    pid,
                    syscall = name.as_deref().unwrap_or("?"),
                    "worker killed by the seccomp filter: forbidden system call {}",
                    name.as_deref().unwrap_or("(not recorded)")
                );
            }
            if self.recent.len() == RECENT_DEATHS {
                self.recent.pop_front();
            }
            self.recent.push_back(control::Death {
                at: std::time::Instant::now(),
                pid,
                cause: process::describe_status(status),
                counted: !killed_from_outside,
            });
            self.fruitless =
                if served == self.served_at_start && !killed_from_outside { self.fruitless + 1 } else { 0 };
            let backoff_ms = if self.fruitless == 0 { 0 } else { 1u64 << self.fruitless.min(10) };
            tracing::warn!(
                pid,
                deaths,
                answered = served - self.served_at_start,
                in_flight = ?in_flight,
                counts = !killed_from_outside,
                backoff_ms,
                "worker {}; starting a new one",
                process::describe_status(status)
            );
            if self.fruitless >= MAX_FRUITLESS_DEATHS {
                // The one line that says why: main logs this error as the daemon ends.
                return Err(Error::CrashLoop(self.fruitless));
            }
            std::thread::sleep(Duration::from_millis(backoff_ms));
            self.served_at_start = served;
            self.ooms_at_start = oom_kills(self.vmstat);
            self.pid = self.zygote.spawn_worker().map_err(Error::Clone)?;
            self.ready = false;
        }
        Ok(())
    }

    /// After the ready eventfd fired: the current worker is ready if it is the one that said so
    /// (a worker that signalled and then died must not vouch for its successor's sweep).
    fn note_ready(&mut self) {
        self.ready = self.region.header().ready_pid.load(Ordering::Acquire) == self.pid;
    }
}

/// Who serves the requests: worker processes this supervisor replaces as they die, or (with
/// recovery off) threads of this process, started once.
type Serving = Rc<RefCell<Option<Workers>>>;

/// Runs until a termination signal, the end of the connection, or a crash loop.
/// The control socket and what `ctl status` says about this daemon beyond the region.
pub struct Control {
    pub listener: std::os::unix::net::UnixListener,
    pub started: std::time::Instant,
    pub transport: String,
    pub sandbox: String,
    pub seccomp: String,
}

/// Workers come from `zygote` (recovery on); without one this process serves itself.
pub fn run(
    region: Region,
    mut conn: Box<dyn Connection>,
    cfg: WorkerConfig,
    waits: &Waits,
    vmstat: i32,
    zygote: Option<Zygote>,
    control: Option<Control>,
) -> Result<(), Error> {
    let serving: Serving = Rc::new(RefCell::new(None));
    // For the control socket: the region stays readable whoever serves.
    let view = region.alias();
    match zygote {
        Some(zygote) => *serving.borrow_mut() = Some(Workers::start(region, zygote, vmstat)?),
        None => worker::start(region, &cfg)?,
    }
    let keep = serving.clone();
    // While the connection waits on a worker (a ring being stopped), a worker that dies is
    // replaced, so the wait can end.
    conn.start(Box::new(move || {
        if let Some(w) = keep.borrow_mut().as_mut() {
            let _ = w.reap();
        }
    }));
    let result = serve(&serving, conn.as_mut(), waits, &view, control.as_ref());
    if let Some(w) = serving.borrow().as_ref() {
        process::kill_and_reap(w.pid);
        process::kill_and_reap(w.zygote.pid);
    }
    conn.close();
    result
}

fn serve(
    serving: &Serving,
    conn: &mut dyn Connection,
    waits: &Waits,
    region: &Region,
    ctl: Option<&Control>,
) -> Result<(), Error> {
    loop {
        let ready = serving.borrow().as_ref().is_none_or(|w| w.ready);
        let control = conn.control_fd().filter(|_| ready).unwrap_or(-1);
        let ctl_fd = ctl.map_or(-1, |c| std::os::fd::AsRawFd::as_raw_fd(&c.listener));
        let [signal, worker_ready, ended, message, asked] =
            process::poll_readable([waits.signals, waits.ready, waits.ended, control, ctl_fd], -1);
        if asked && let Some(ctl) = ctl {
            answer_control(serving, region, ctl);
        }
        if signal {
            match process::read_signal(waits.signals) {
                Some(sig) if sig == libc::SIGCHLD as u32 => {
                    if let Some(w) = serving.borrow_mut().as_mut() {
                        w.reap()?;
                    }
                }
                Some(sig) => {
                    tracing::info!(signal = sig, "stopping");
                    return Ok(());
                }
                None => {}
            }
        }
        if worker_ready {
            sys::eventfd_drain(waits.ready);
            if let Some(w) = serving.borrow_mut().as_mut() {
                w.note_ready();
            }
        }
        if ended {
            tracing::info!("the connection ended (unmounted); stopping");
            return Ok(());
        }
        if message && !conn.handle_control() {
            tracing::info!("the connection's peer has gone; stopping");
            return Ok(());
        }
    }
}

/// Answers one request on the control socket (control.rs).
fn answer_control(serving: &Serving, region: &Region, ctl: &Control) {
    let workers = serving.borrow();
    let recent: Vec<control::Death> = workers.as_ref().map(|w| w.recent.iter().cloned().collect()).unwrap_or_default();
    let snap = control::Snapshot {
        started: ctl.started,
        supervisor_pid: process::getpid(),
        worker_pid: workers.as_ref().map(|w| w.pid),
        recent_deaths: &recent,
        transport: &ctl.transport,
        sandbox: &ctl.sandbox,
        seccomp: &ctl.seccomp,
    };
    let action = control::serve_one(&ctl.listener, region, &snap);
    if action == control::Action::RestartWorker
        && let Some(w) = workers.as_ref()
    {
        tracing::info!(pid = w.pid, "restarting the worker, as asked on the control socket");
        // Replaced like any killed worker once its SIGCHLD is read.
        let _ = process::send_signal(w.pid, libc::SIGKILL);
    }
}
