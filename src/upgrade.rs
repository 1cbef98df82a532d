//! Live upgrade (`phoenixfsd ctl upgrade`): a new binary takes a running daemon over with the
//! connection, the state region and every fd the region names, and the client sees a pause.
//!
//! An exec always gives the new program a private copy of the fd table, never a share of it,
//! and a seccomp filter is inherited through it. So the new binary is run by a process whose
//! filter allows everything a supervisor, a zygote and a worker need — a child of the zygote,
//! which is cloned before the supervisor narrows itself (zygote.rs) — and its copy of the table
//! becomes the table the new supervisor and its workers share. The steps (supervisor.rs
//! `upgrade`):
//!
//! 1. The old supervisor checks the binary (an ELF for this machine) and kills its worker, as
//!    any crash would: from here the table changes no more (each run of the new binary starts
//!    on a copy of it). The new binary then checks the region (`CHECK_ARG`: magic, layout
//!    version, offsets) in a throw-away child.
//! 2. The zygote clones an *upgrader* (a copy of the table, not a share), which clears
//!    close-on-exec on exactly the fds that must survive — the ones the region names, the
//!    transport's, the supervisor's own (`Region::named_fds`) — and execs the new binary with
//!    `__adopt HANDOVER` before the original arguments. HANDOVER names each fd's role.
//! 3. The new binary maps the region and checks it (magic, layout version, offsets) without
//!    writing it, builds its side of the connection, and says `R` (ready) on the `up` pipe; or
//!    says `E why` and exits, and the old supervisor starts a worker again and goes on serving.
//! 4. On `R` the old supervisor stops its zygote, answers the operator, and writes `G` (go).
//!    The new one then records its own fds, clones its zygote and a worker that recovers from
//!    the region (exactly as after a crash), and serves.
//! 5. The first supervisor of the daemon (the holder's child, pid 1 of the sandbox's pid
//!    namespace) stays, as the *keeper*: it closes every fd, passes termination signals on to
//!    the current supervisor and exits with its status. Later old supervisors just exit; their
//!    successor is reparented to the keeper (the pid namespace's init, or a child subreaper).

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStringExt;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::sys::{self, process};
use crate::transport::Link;

/// The hidden first argument that makes `phoenixfsd` adopt a running daemon.
pub const ADOPT_ARG: &str = "__adopt";
/// The hidden first argument that makes `phoenixfsd` only check that it could: whether it reads
/// the running daemon's state region (`check_region`).
pub const CHECK_ARG: &str = "__check-upgrade";

/// How long the old supervisor waits for the new binary to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The command line the daemon was started with (without argv[0] and without an `__adopt`
/// prefix): each new binary gets it again.
static ARGS: OnceLock<(OsString, Vec<OsString>)> = OnceLock::new();

/// Records the daemon's command line (main.rs, before anything else).
pub fn set_args(argv0: OsString, args: Vec<OsString>) {
    let _ = ARGS.set((argv0, args));
}

/// The pipes of a handover, made at start-up (before the fds every worker keeps are recorded)
/// and carried through every upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pipes {
    /// New binary → old supervisor: `R` or `E why`.
    pub up: [i32; 2],
    /// Old supervisor → new binary: `G`.
    pub down: [i32; 2],
    /// Any supervisor → the keeper: the pid of the supervisor that now serves.
    pub keeper: [i32; 2],
}

impl Pipes {
    pub fn new() -> std::io::Result<Pipes> {
        Ok(Pipes { up: sys::pipe()?, down: sys::pipe()?, keeper: sys::pipe()? })
    }

    fn all(&self) -> [i32; 6] {
        [self.up[0], self.up[1], self.down[0], self.down[1], self.keeper[0], self.keeper[1]]
    }
}

/// What a new binary needs to take a running daemon over: each fd's number and role, and the
/// little the supervisor knows that the region does not. Passed as one argument.
#[derive(Debug, Clone, PartialEq)]
pub struct Handover {
    pub memfd: i32,
    pub signals: i32,
    pub ready: i32,
    pub ended: i32,
    pub vmstat: i32,
    pub proc: i32,
    /// The control socket's listener, or -1.
    pub control: i32,
    /// FUSE with `--sandbox namespace`: the socket the holder answers callers' groups on, or -1.
    pub groups: i32,
    /// `--syslog`: the connected syslog socket, or -1.
    pub syslog: i32,
    pub pipes: Pipes,
    /// The zygote's request and reply pipes (read and write ends): the new zygote uses them again.
    pub zygote: [i32; 4],
    /// When the daemon started (milliseconds since the epoch): uptime counts from it.
    pub started_ms: u64,
    /// Upgrades so far, this one included once it is done.
    pub upgrades: u32,
    /// The share as the supervisor names it ("/" inside a sandbox).
    pub shared_dir: CString,
    pub link: Link,
}

fn join(fds: &[i32]) -> String {
    fds.iter().map(i32::to_string).collect::<Vec<_>>().join(",")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Handover {
    /// The fds named one by one, with their keys (-1: none).
    fn single_fds(&self) -> [(&'static str, i32); 9] {
        [
            ("memfd", self.memfd),
            ("signals", self.signals),
            ("ready", self.ready),
            ("ended", self.ended),
            ("vmstat", self.vmstat),
            ("proc", self.proc),
            ("control", self.control),
            ("groups", self.groups),
            ("syslog", self.syslog),
        ]
    }

    pub fn encode(&self) -> String {
        let link = match &self.link {
            Link::Fuse { fds, mount_id } => {
                format!("fuse:{}/{}", join(fds), mount_id.map_or("-".to_string(), |id| id.to_string()))
            }
            Link::Vhost { stream, protocol_features } => format!("vhost:{stream}/{protocol_features}"),
        };
        let singles: Vec<String> = self.single_fds().iter().map(|(k, fd)| format!("{k}={fd}")).collect();
        format!(
            "{} pipes={} zygote={} started={} upgrades={} link={link} dir={}",
            singles.join(" "),
            join(&self.pipes.all()),
            join(&self.zygote),
            self.started_ms,
            self.upgrades,
            hex(self.shared_dir.as_bytes()),
        )
    }

    /// Parses what `encode` wrote. The text comes from the binary that exec'd us (the daemon
    /// itself), but is checked all the same: an error names the field.
    pub fn decode(text: &str) -> Result<Handover, String> {
        let fields: std::collections::HashMap<&str, &str> =
            text.split(' ').filter_map(|kv| kv.split_once('=')).collect();
        let get = |k: &str| fields.get(k).copied().ok_or_else(|| format!("handover: no {k}"));
        let int = |k: &str| get(k)?.parse::<i64>().map_err(|_| format!("handover: bad {k}"));
        let fd = |k: &str| {
            let v = int(k)?;
            i32::try_from(v).ok().filter(|fd| *fd >= -1).ok_or_else(|| format!("handover: bad fd {k}"))
        };
        let fd_list = |k: &str, s: &str| -> Result<Vec<i32>, String> {
            s.split(',')
                .map(|f| f.parse::<i32>().ok().filter(|fd| *fd >= 0).ok_or(format!("handover: bad {k}")))
                .collect()
        };
        let pipes = fd_list("pipes", get("pipes")?)?;
        let [u0, u1, d0, d1, k0, k1] = pipes[..] else { return Err("handover: bad pipes".into()) };
        let zygote = fd_list("zygote", get("zygote")?)?;
        let zygote: [i32; 4] = zygote.try_into().map_err(|_| "handover: bad zygote")?;
        let link = match get("link")?.split_once(':') {
            Some(("fuse", rest)) => {
                let (fds, mount) = rest.split_once('/').ok_or("handover: bad link")?;
                let mount_id = match mount {
                    "-" => None,
                    id => Some(id.parse().map_err(|_| "handover: bad mount id")?),
                };
                Link::Fuse { fds: fd_list("link", fds)?, mount_id }
            }
            Some(("vhost", rest)) => {
                let (stream, features) = rest.split_once('/').ok_or("handover: bad link")?;
                Link::Vhost {
                    stream: stream.parse().map_err(|_| "handover: bad vhost stream")?,
                    protocol_features: features.parse().map_err(|_| "handover: bad protocol features")?,
                }
            }
            _ => return Err("handover: bad link".into()),
        };
        let dir = get("dir")?;
        let dir: Vec<u8> = (0..dir.len() / 2)
            .map(|i| u8::from_str_radix(dir.get(2 * i..2 * i + 2).unwrap_or("zz"), 16))
            .collect::<Result<_, _>>()
            .map_err(|_| "handover: bad dir")?;
        Ok(Handover {
            memfd: fd("memfd")?,
            signals: fd("signals")?,
            ready: fd("ready")?,
            ended: fd("ended")?,
            vmstat: fd("vmstat")?,
            proc: fd("proc")?,
            control: fd("control")?,
            groups: fd("groups")?,
            syslog: fd("syslog")?,
            pipes: Pipes { up: [u0, u1], down: [d0, d1], keeper: [k0, k1] },
            zygote,
            started_ms: int("started")? as u64,
            upgrades: int("upgrades")? as u32,
            shared_dir: CString::new(dir).map_err(|_| "handover: bad dir")?,
            link,
        })
    }

    /// Every fd this handover names.
    pub fn fds(&self) -> Vec<i32> {
        let mut fds: Vec<i32> = self.single_fds().iter().map(|(_, fd)| *fd).collect();
        fds.extend(self.pipes.all());
        fds.extend(self.zygote);
        match &self.link {
            Link::Fuse { fds: link, .. } => fds.extend(link),
            Link::Vhost { stream, .. } => fds.push(*stream),
        }
        fds.retain(|fd| *fd >= 0);
        fds
    }
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Whether `binary` is a program this machine can run, read from its ELF header: the reason if
/// not. (The exec would fail too, but only after the worker was stopped.)
pub fn check_binary(binary: i32) -> Result<(), String> {
    let mut h = [0u8; 20];
    let n = sys::pread(binary, &mut h, 0).map_err(|e| format!("cannot read it: {e}"))?;
    if n < h.len() || &h[..4] != b"\x7fELF" {
        return Err("not an ELF executable".into());
    }
    #[cfg(target_arch = "x86_64")]
    const MACHINE: u16 = 62; // EM_X86_64
    #[cfg(target_arch = "aarch64")]
    const MACHINE: u16 = 183; // EM_AARCH64
    let machine = u16::from_le_bytes([h[18], h[19]]);
    if h[4] != 2 || h[5] != 1 || machine != MACHINE {
        return Err(format!(
            "built for another architecture (ELF class {}, machine {machine}; this one is {})",
            h[4],
            std::env::consts::ARCH
        ));
    }
    Ok(())
}

/// In the upgrader (a child of the zygote with a private copy of the fd table): makes `keep`
/// survive the exec and runs `binary` with the handover. Returns only on failure, which it
/// reports on the `up` pipe as `E why`.
pub fn exec_new_binary(binary: i32, mode: &str, handover: &str, up: i32, keep: &[i32]) -> ! {
    let fail = |why: String| -> ! {
        let _ = sys::write(up, format!("E{why}\n").as_bytes());
        process::exit_now(1)
    };
    for &fd in keep {
        // Crash here (or any failure): only this copy of the table changed; the old
        // supervisor sees the upgrader gone without `R` and serves on.
        if let Err(e) = sys::clear_cloexec(fd) {
            fail(format!("cannot keep fd {fd} open across the exec: {e}"));
        }
    }
    let (argv0, args) = ARGS.get().cloned().unwrap_or_else(|| ("phoenixfsd".into(), Vec::new()));
    let mut argv = vec![argv0, mode.into(), handover.into()];
    argv.extend(args);
    let argv: Vec<CString> = argv.into_iter().filter_map(|a| CString::new(a.into_vec()).ok()).collect();
    let e = sys::exec_fd(binary, &argv);
    fail(format!("cannot run the new binary: {e}"))
}

/// Old supervisor: waits for the upgrader `pid` to say it is ready. Ok(()) on `R`; the reason
/// otherwise (it said `E`, died, or took too long — then it is killed).
pub fn wait_ready(pid: i32, up: i32) -> Result<(), String> {
    let deadline = std::time::Instant::now() + READY_TIMEOUT;
    let mut line = Vec::new();
    loop {
        if line.ends_with(b"\n") {
            let text = String::from_utf8_lossy(&line[1..line.len() - 1]).into_owned();
            return match line[0] {
                b'R' => Ok(()),
                _ => {
                    let _ = process::wait_child(pid);
                    Err(text)
                }
            };
        }
        if !process::poll_readable([up], 50)[0] {
            if process::child_has_ended(pid) {
                let status = process::wait_child(pid).unwrap_or(0);
                return Err(format!("the new binary {} before it was ready", process::describe_status(status)));
            }
            if std::time::Instant::now() > deadline {
                process::kill_and_reap(pid);
                return Err(format!("the new binary was not ready within {} s", READY_TIMEOUT.as_secs()));
            }
            continue;
        }
        let mut b = [0u8; 256];
        match sys::read(up, &mut b) {
            Ok(n) => line.extend_from_slice(&b[..n]),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => return Err(format!("reading the handover pipe: {e}")),
        }
    }
}

/// New binary: tells the old supervisor it is ready, and waits for its go (or for its end: an
/// old supervisor that died after `R` leaves the daemon to us).
pub fn ready_and_wait_go(pipes: &Pipes) -> Result<(), String> {
    let parent = process::getppid();
    sys::write(pipes.up[1], b"R\n").map_err(|e| format!("writing the handover pipe: {e}"))?;
    let mut b = [0u8; 1];
    loop {
        if process::poll_readable([pipes.down[0]], 50)[0] {
            match sys::read(pipes.down[0], &mut b) {
                Ok(1) if b[0] == b'G' => return Ok(()),
                Ok(_) => return Err("unexpected byte on the handover pipe".into()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(format!("reading the handover pipe: {e}")),
            }
        } else if process::getppid() != parent {
            tracing::warn!("the old supervisor ended before its go; taking over");
            return Ok(());
        }
    }
}

/// New binary, run with `CHECK_ARG`: answers whether it can take over the region the handover
/// names (`R`) or why not (`E why`), without writing it. The old supervisor asks this before it gives
/// the new binary anything.
pub fn check_region(handover: &str) -> ! {
    let h = match Handover::decode(handover) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("phoenixfsd: {e}");
            process::exit_now(2)
        }
    };
    if let Err(e) = crate::state::Region::attach_convertible(h.memfd) {
        refuse(&h.pipes, &format!("the running daemon's state region: {e}"));
    }
    let _ = sys::write(h.pipes.up[1], b"R\n");
    process::exit_now(0)
}

/// New binary, on a refusal before `R`: says why on the `up` pipe and ends; the old supervisor
/// serves on.
pub fn refuse(pipes: &Pipes, why: &str) -> ! {
    tracing::error!("upgrade refused: {why}");
    let _ = sys::write(pipes.up[1], format!("E{why}\n").as_bytes());
    process::exit_now(1)
}

/// The first supervisor, after its first upgrade: holds the daemon's place (pid 1 of the pid
/// namespace, the holder's child, the pid systemd watches) for the supervisors after it. Passes
/// termination signals on to the current one and exits with its status. Never returns.
pub fn keep(signals: i32, keeper: [i32; 2], syslog: i32, mut current: i32) -> ! {
    process::set_name(c"pfs-keeper");
    // Everything else belongs to the new supervisor's copy of the table (the syslog socket, if
    // logs go there, stays: the keeper's lines go on arriving where the operator looks).
    sys::close_all_except(vec![0, 1, 2, signals, keeper[0], syslog]);
    tracing::info!(supervisor = current, "the first supervisor now only keeps the daemon's place");
    loop {
        let [signal, pid] = process::poll_readable([signals, keeper[0]], -1);
        // Read before reaping: an old supervisor writes its successor's pid before it exits.
        if pid {
            let mut b = [0u8; 4];
            if matches!(sys::read(keeper[0], &mut b), Ok(4)) {
                current = i32::from_ne_bytes(b);
            }
        }
        if signal {
            match process::read_signal(signals) {
                Some(sig) if sig == libc::SIGCHLD as u32 => {}
                Some(sig) => {
                    let _ = process::send_signal(current, sig as i32);
                }
                None => {}
            }
        }
        while let Some((pid, status)) = process::reap_any() {
            if pid == current {
                let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 1 };
                tracing::info!(pid, "the supervisor {}; stopping", process::describe_status(status));
                process::exit_now(code);
            }
        }
    }
}

/// Tells the keeper which supervisor serves now.
pub fn announce_to_keeper(pipes: &Pipes, pid: i32) {
    let _ = sys::write(pipes.keeper[1], &pid.to_ne_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(link: Link) -> Handover {
        Handover {
            memfd: 5,
            signals: 3,
            ready: 6,
            ended: 7,
            vmstat: 8,
            proc: 9,
            control: -1,
            groups: 12,
            syslog: -1,
            pipes: Pipes { up: [13, 14], down: [15, 16], keeper: [17, 18] },
            zygote: [19, 20, 21, 22],
            started_ms: 1_764_000_000_000,
            upgrades: 3,
            shared_dir: c"/srv/a share".to_owned(),
            link,
        }
    }

    #[test]
    fn test_handover_round_trips() {
        for link in [
            Link::Fuse { fds: vec![4, 23, 24], mount_id: Some(417) },
            Link::Fuse { fds: vec![4], mount_id: None },
            Link::Vhost { stream: 10, protocol_features: 0x8203 },
        ] {
            let h = sample(link);
            assert_eq!(Handover::decode(&h.encode()), Ok(h.clone()));
            let fds = h.fds();
            assert!(!fds.contains(&-1) && fds.contains(&22) && fds.contains(&13));
        }
    }

    #[test]
    fn test_handover_refuses_malformed_text() {
        let good = sample(Link::Vhost { stream: 10, protocol_features: 1 }).encode();
        for bad in [
            String::new(),
            good.replace("memfd=5", "memfd=x"),
            good.replace("memfd=5", "memfd=-7"),
            good.replace(" pipes=13,14,15,16,17,18", " pipes=13,14"),
            good.replace("link=vhost:10/1", "link=tcp:10/1"),
            good.replace("zygote=19,20,21,22", "zygote=19"),
            good.replace("dir=", "dir=zz"),
        ] {
            assert!(Handover::decode(&bad).is_err(), "taken: {bad}");
        }
    }
}
