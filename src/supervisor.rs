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
use crate::upgrade::Handover;
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

/// What a live upgrade needs (upgrade.rs): the handover as this supervisor would pass it on,
/// and whether this is the daemon's first supervisor (which stays as the keeper).
pub struct Upgrades {
    pub handover: Handover,
    pub first: bool,
}

/// How serving ended.
enum Stop {
    /// A signal, the end of the connection, or its peer gone.
    Done,
    /// A new binary serves now, as supervisor `pid`.
    Upgraded(i32),
}

/// Workers come from `zygote` (recovery on); without one this process serves itself.
#[allow(clippy::too_many_arguments)]
pub fn run(
    region: Region,
    mut conn: Box<dyn Connection>,
    cfg: WorkerConfig,
    waits: &Waits,
    vmstat: i32,
    zygote: Option<Zygote>,
    control: Option<Control>,
    mut upgrades: Option<Upgrades>,
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
    let result = serve(&serving, conn.as_mut(), waits, &view, control.as_ref(), upgrades.as_mut());
    if let Ok(Stop::Upgraded(pid)) = result {
        let u = upgrades.expect("upgraded");
        // The connection is the new supervisor's now: neither closed nor unmounted here.
        std::mem::forget(conn);
        if u.first {
            crate::upgrade::keep(waits.signals, u.handover.pipes.keeper, u.handover.syslog, pid);
        }
        // Crash here: the keeper has not heard of `pid`; when we end it takes our exit for
        // the current supervisor's and stops the daemon (a supervisor death, documented).
        crate::upgrade::announce_to_keeper(&u.handover.pipes, pid);
        process::exit_now(0);
    }
    if let Some(w) = serving.borrow().as_ref() {
        process::kill_and_reap(w.pid);
        process::kill_and_reap(w.zygote.pid);
    }
    conn.close();
    result.map(drop)
}

fn serve(
    serving: &Serving,
    conn: &mut dyn Connection,
    waits: &Waits,
    region: &Region,
    ctl: Option<&Control>,
    mut upgrades: Option<&mut Upgrades>,
) -> Result<Stop, Error> {
    loop {
        let ready = serving.borrow().as_ref().is_none_or(|w| w.ready);
        let control = conn.control_fd().filter(|_| ready).unwrap_or(-1);
        // Also the control socket only while the worker is ready: an accepted connection (and
        // an upgrade's binary fd) would be closed under us by a starting worker's fd sweep.
        let ctl_fd = ctl.filter(|_| ready).map_or(-1, |c| std::os::fd::AsRawFd::as_raw_fd(&c.listener));
        let [signal, worker_ready, ended, message, asked] =
            process::poll_readable([waits.signals, waits.ready, waits.ended, control, ctl_fd], -1);
        if asked
            && let Some(ctl) = ctl
            && let Some(asked) =
                answer_control(serving, region, ctl, upgrades.as_deref().map_or(0, |u| u.handover.upgrades))
        {
            let mut workers = serving.borrow_mut();
            match (workers.as_mut(), upgrades.as_deref_mut()) {
                (Some(w), Some(u)) => {
                    if let Some(pid) = upgrade(w, conn, &mut u.handover, asked) {
                        return Ok(Stop::Upgraded(pid));
                    }
                }
                _ => asked.answer("error: a live upgrade needs workers (--recovery on)\n"),
            }
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
                    return Ok(Stop::Done);
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
            return Ok(Stop::Done);
        }
        if message && !conn.handle_control() {
            tracing::info!("the connection's peer has gone; stopping");
            return Ok(Stop::Done);
        }
    }
}

/// Answers one request on the control socket (control.rs); an upgrade it returns, to be done.
fn answer_control(serving: &Serving, region: &Region, ctl: &Control, upgrades: u32) -> Option<control::Upgrade> {
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
        upgrades,
    };
    match control::serve_one(&ctl.listener, region, &snap) {
        control::Action::RestartWorker => {
            if let Some(w) = workers.as_ref() {
                tracing::info!(pid = w.pid, "restarting the worker, as asked on the control socket");
                // Replaced like any killed worker once its SIGCHLD is read.
                let _ = process::send_signal(w.pid, libc::SIGKILL);
            }
            None
        }
        control::Action::Upgrade(u) => Some(u),
        control::Action::None => None,
    }
}

/// A live upgrade (upgrade.rs, steps 1 to 4): the new supervisor's pid once it has taken over,
/// or None when the upgrade was refused or failed (then the client is told why and this
/// supervisor serves on with a new worker).
fn upgrade(w: &mut Workers, conn: &dyn Connection, handover: &mut Handover, asked: control::Upgrade) -> Option<i32> {
    let refuse = |why: String, asked: control::Upgrade| {
        tracing::error!(binary = %asked.path, "upgrade refused: {why}; serving on");
        asked.answer(&format!("error: upgrade to {} refused: {why}; the running daemon serves on\n", asked.path));
        None
    };
    let binary = std::os::fd::AsRawFd::as_raw_fd(&asked.binary);
    if let Err(why) = crate::upgrade::check_binary(binary) {
        return refuse(why, asked);
    }
    tracing::info!(binary = %asked.path, worker = w.pid, "live upgrade: stopping the worker");
    // Before the new binary runs at all, even as a checker: each run starts on a copy of the fd
    // table, and a copy taken while a worker closes fds would keep those open file
    // descriptions — and OFD locks on them — alive after the client released them.
    // Crash here (or after the kill): the worker dies as in any crash; recovery, ours or the
    // new binary's, finishes what it had in flight. Not a death of its own doing.
    w.region.header().death_counts.store(0, Ordering::Release);
    process::kill_and_reap(w.pid);
    let mut next = handover.clone();
    next.upgrades += 1;
    next.link = conn.link();
    let run = |check_only: bool, text: &str| {
        w.zygote
            .spawn_upgrader(binary, text, check_only)
            .map_err(|e| format!("the zygote cannot start the new binary: {e}"))
            .and_then(|pid| crate::upgrade::wait_ready(pid, handover.pipes.up[0]).map(|()| pid))
    };
    // The new binary checks the region (read only) before it is given anything.
    let check = || {
        run(true, &handover.encode()).map(|checker| {
            let _ = process::wait_child(checker);
        })
    };
    let (checked, lowered) = check_or_lower(&w.region, check);
    let result = checked.and_then(|()| run(false, &next.encode()));
    if result.is_err()
        && lowered
        && let Err(e) = w.region.convert(crate::state::region::LAYOUT_VERSION)
    {
        // Not expected (the conversion back only moves bytes and makes an eventfd): the next
        // worker refuses the region and the crash-loop guard stops the daemon, saying why.
        tracing::error!("live upgrade: cannot convert the state region back to this build's layout: {e}");
    }
    match result {
        Ok(pid) => {
            // The old zygote goes before the go: the new one reads the same request pipe.
            process::kill_and_reap(w.zygote.pid);
            tracing::info!(supervisor = pid, binary = %asked.path, upgrades = next.upgrades, "live upgrade: the new binary serves");
            asked
                .answer(&format!("ok: upgraded to {} (supervisor pid {pid}, upgrade {})\n", asked.path, next.upgrades));
            // Our copy of the table goes before the go, but for what the go and the keeper
            // need: an fd left open here would keep its open file description alive, and with
            // it an OFD lock the new worker releases, or a file the guest deleted.
            let p = &handover.pipes;
            sys::close_all_except(vec![
                0,
                1,
                2,
                handover.signals,
                handover.syslog,
                p.down[1],
                p.keeper[0],
                p.keeper[1],
            ]);
            // Crash here: the new binary sees its parent gone and takes over (upgrade.rs).
            if let Err(e) = sys::write(p.down[1], b"G") {
                tracing::error!("live upgrade: cannot tell the new binary to go: {e}");
            }
            *handover = next;
            Some(pid)
        }
        Err(why) => {
            // Answered and closed first: the new worker's fd sweep would close the client's
            // socket and the binary's fd under us (and a number closed twice may be another's).
            refuse(why, asked);
            // As after any worker death: a new one recovers from the region.
            match w.zygote.spawn_worker() {
                Ok(pid) => {
                    w.pid = pid;
                    w.ready = false;
                }
                Err(e) => tracing::error!("no worker after a refused upgrade: {e}"),
            }
            None
        }
    }
}

/// Runs the new binary's region check; if it refuses, converts the region to each older layout
/// this build writes (a rollback to an older build) and asks again. Returns the outcome — the
/// first refusal if every layout is refused — and whether the region was left converted (then
/// a later failure must convert it back). No worker lives meanwhile.
fn check_or_lower(region: &Region, check: impl Fn() -> Result<(), String>) -> (Result<(), String>, bool) {
    let why = match check() {
        Ok(()) => return (Ok(()), false),
        // Other refusals (a corrupt region, a binary that cannot run) are not helped by another
        // layout. Every build since layout 5 words this one so (`Region::check`).
        Err(why) if !why.contains("layout version") => return (Err(why), false),
        Err(why) => why,
    };
    let mut tried = Vec::new();
    for &older in crate::state::convert::OLDER_LAYOUTS {
        // Crash from here to the conversion back: a supervisor's death (docs/operations.md).
        if let Err(e) = region.convert(older) {
            tried.push(format!("as layout {older}: {e}"));
            continue;
        }
        match check() {
            Ok(()) => return (Ok(()), true),
            Err(e) => tried.push(format!("as layout {older}: {e}")),
        }
        if let Err(e) = region.convert(crate::state::region::LAYOUT_VERSION) {
            tried.push(format!("and back: {e}"));
            return (Err(format!("{why}; {}", tried.join("; "))), true);
        }
    }
    (Err(if tried.is_empty() { why } else { format!("{why}; {}", tried.join("; ")) }), false)
}
