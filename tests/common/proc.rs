//! The daemon's processes and fds as /proc shows them: its workers (children of the
//! supervisor), waiting for a process to exit or a new worker to appear, and its fd table.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// The supervisor's other child, which clones its workers (src/zygote.rs): never a worker.
const ZYGOTE: &str = "pfs-zygote";

/// The live children of `pid` (a supervisor's workers), from /proc: the children its main
/// thread forked (zombies included until reaped), less the zygote. (A worker is named as the
/// zygote for the microseconds between its clone and its first instruction: it shows up then.)
pub fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|p| comm(*p) != ZYGOTE)
        .collect()
}

/// What /proc/PID/comm says (empty if the process is gone).
pub fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim_end().to_string()
}

/// The supervisor of the daemon started as process `daemon`: the daemon itself with `--sandbox
/// none`; in a sandbox its child, the daemon staying outside as the holder. Both are recognised
/// by the name the supervisor gives itself at start-up (waits for it, up to 10 s).
pub fn supervisor_of(daemon: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(sup) = settled_supervisor(daemon) {
            return sup;
        }
        if Instant::now() > deadline || !alive(daemon as i32) {
            return daemon;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The supervisor that serves, looking through the keeper a live upgrade leaves (upgrade.rs):
/// daemon → [holder →] keeper → supervisor. None while an upgrade is between two supervisors:
/// settled means exactly one living pfs-supervisor among the daemon's processes.
fn settled_supervisor(daemon: u32) -> Option<u32> {
    let living = |p: u32| matches!(proc_stat(p as i32), Some((s, _, _)) if s != 'Z' && s != 'X');
    let supervisors: Vec<u32> =
        descendants(daemon).into_iter().filter(|p| comm(*p) == "pfs-supervisor" && living(*p)).collect();
    match supervisors[..] {
        [only] => Some(only),
        _ => None,
    }
}

/// (pid, start time) of a process: the start time tells a reused pid apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proc {
    pub pid: i32,
    pub start: u64,
}

/// State letter, ppid and start time from /proc/<pid>/stat.
pub fn proc_stat(pid: i32) -> Option<(char, i32, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f.first()?.chars().next()?, f.get(1)?.parse().ok()?, f.get(19)?.parse().ok()?))
}

/// `pid` exists and has not exited (no zombie).
pub fn alive(pid: i32) -> bool {
    matches!(proc_stat(pid), Some((s, _, _)) if s != 'Z' && s != 'X')
}

/// The children of `sup` that have not exited, whichever of its threads forked them, less the
/// zygote (see `children_of`).
pub fn live_children(sup: i32) -> Vec<Proc> {
    let mut pids = BTreeSet::new();
    let mut have_children_file = false;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{sup}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                have_children_file = true;
                pids.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
            }
        }
    }
    if !have_children_file {
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok())
                && matches!(proc_stat(pid), Some((_, ppid, _)) if ppid == sup)
            {
                pids.insert(pid);
            }
        }
    }
    pids.into_iter()
        .filter(|pid| comm(*pid as u32) != ZYGOTE)
        .filter_map(|pid| match proc_stat(pid) {
            Some((s, ppid, start)) if ppid == sup && s != 'Z' && s != 'X' => Some(Proc { pid, start }),
            _ => None,
        })
        .collect()
}

/// Waits for exactly one live child of `sup` other than `old` (the worker that replaced it).
pub fn wait_worker(sup: i32, old: Option<Proc>, timeout: Duration) -> Result<Proc, String> {
    let t0 = Instant::now();
    let mut spin = 0u32;
    loop {
        let kids: Vec<Proc> = live_children(sup).into_iter().filter(|p| Some(*p) != old).collect();
        if kids.len() == 1 {
            return Ok(kids[0]);
        }
        if t0.elapsed() > timeout {
            return Err(match old {
                Some(o) => format!(
                    "no new worker within {} s after killing worker {} (supervisor {sup} alive: {}, live children: {kids:?})",
                    timeout.as_secs(),
                    o.pid,
                    alive(sup)
                ),
                None => format!(
                    "no worker child of supervisor {sup} within {} s (live children: {kids:?}): is --recovery on implemented?",
                    timeout.as_secs()
                ),
            });
        }
        spin += 1;
        if spin < 200 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// Polls `child` (every 10 ms) until it exits; its status, or None if it still runs after
/// `timeout`.
pub fn wait_for_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// fd number → readlink target, of `pid`'s fd table (a target that cannot be read shows why).
pub fn fd_table(pid: u32) -> BTreeMap<i32, String> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).into_iter().flatten().flatten() {
        if let Some(n) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) {
            let t = std::fs::read_link(e.path())
                .map(|t| t.to_string_lossy().into_owned())
                .unwrap_or_else(|e| format!("? {e}"));
            out.insert(n, t);
        }
    }
    out
}

/// The fds open in `pid`'s table, with their targets, in fd order.
pub fn open_fds(pid: u32) -> Vec<(i32, String)> {
    fd_table(pid).into_iter().collect()
}

/// Makes the kernel drop its dentry and inode caches, so it FORGETs every node it can.
pub fn drop_caches() {
    std::fs::write("/proc/sys/vm/drop_caches", "3").expect("write /proc/sys/vm/drop_caches (root?)");
}

/// `pid`'s fd table once it has settled (two looks 50 ms apart agree: asynchronous RELEASEs are
/// done), without the worker's own /proc/self/fd dirfd, which each worker opens anew (and a new
/// worker's recovery closes the old one's). The baseline against which leaks are measured.
pub fn settled_fds(pid: u32) -> Vec<(i32, String)> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let first = table_fds(pid);
        std::thread::sleep(Duration::from_millis(50));
        let second = table_fds(pid);
        if first == second || Instant::now() > deadline {
            return second;
        }
    }
}

/// `open_fds` less the worker's /proc/self/fd dirfd (see `settled_fds`): `/proc/PID/fd`, or,
/// inside the namespace sandbox, `/PID/fd` (its procfs is not reachable from our root, so the
/// link shows the path below that procfs's root).
pub fn table_fds(pid: u32) -> Vec<(i32, String)> {
    let is_proc_fd_dir = |t: &str| {
        let pid = t.strip_prefix("/proc").unwrap_or(t).strip_prefix('/').and_then(|r| r.strip_suffix("/fd"));
        pid.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    };
    open_fds(pid).into_iter().filter(|(_, t)| !is_proc_fd_dir(t)).collect()
}

/// This process's resident set in KiB, from /proc/self/status.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS in /proc/self/status");
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("VmRSS value")
}

/// Through live upgrades: the supervisor that serves (see `supervisor_of`) and its worker, once
/// it has exactly one (named pfs-worker) other than `old`; waits up to `timeout`.
pub fn wait_serving(daemon: u32, old: Option<Proc>, timeout: Duration) -> Result<(i32, Proc), String> {
    let t0 = Instant::now();
    loop {
        let sup = settled_supervisor(daemon);
        if let Some(sup) = sup {
            let workers: Vec<Proc> = live_children(sup as i32)
                .into_iter()
                .filter(|p| Some(*p) != old && comm(p.pid as u32) == "pfs-worker")
                .collect();
            if let [w] = workers[..] {
                return Ok((sup as i32, w));
            }
        }
        if t0.elapsed() > timeout {
            let tree: Vec<String> = descendants(daemon).iter().map(|p| format!("{p} {}", comm(*p))).collect();
            return Err(format!(
                "no serving supervisor with one new worker within {} s (settled supervisor: {sup:?}; the daemon's processes: {tree:?})",
                timeout.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// `pid` and all its descendants.
fn descendants(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let kids = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", all[i])).unwrap_or_default();
        all.extend(kids.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        i += 1;
    }
    all
}

/// How many FUSE passthrough backing ids are registered on the connection `pid` (a supervisor)
/// holds, *closing them all*: call it only when no file is open on the mount, when every id
/// still registered is a leak (fs/passthrough.rs: the ids registered are those live handles
/// name). The kernel shows backing ids nowhere, so this takes a copy of the supervisor's
/// /dev/fuse fd (pidfd_getfd), finds the connection's next id with a probe registration (ids
/// are allocated cyclically, so every id ever handed out is below it), and closes every id
/// below it: each close that succeeds was a registered id. Ok(0) when the connection has no
/// passthrough (the probe gets EPERM).
pub fn take_backing_ids(pid: u32) -> Result<usize, String> {
    let Some((fd, _)) = fd_table(pid).into_iter().find(|(_, t)| t == "/dev/fuse") else {
        return Err(format!("no /dev/fuse fd in {pid}'s table"));
    };
    // SAFETY: plain syscalls with integer arguments; every fd they return is closed below.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) as i32;
        if pidfd < 0 {
            return Err(format!("pidfd_open({pid}): {}", std::io::Error::last_os_error()));
        }
        let dev = libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) as i32;
        libc::close(pidfd);
        if dev < 0 {
            return Err(format!("pidfd_getfd({pid}, {fd}): {}", std::io::Error::last_os_error()));
        }
        let probe_file = tempfile::tempfile().map_err(|e| e.to_string())?;
        #[repr(C)]
        struct Map {
            fd: i32,
            flags: u32,
            padding: u64,
        }
        use std::os::fd::AsRawFd;
        let map = Map { fd: probe_file.as_raw_fd(), flags: 0, padding: 0 };
        let next = libc::ioctl(dev, 0x4010_e501, &map as *const Map);
        if next < 0 {
            let e = std::io::Error::last_os_error();
            libc::close(dev);
            return if e.raw_os_error() == Some(libc::EPERM) { Ok(0) } else { Err(format!("BACKING_OPEN: {e}")) };
        }
        let mut registered = 0;
        for id in 1..next as u32 {
            if libc::ioctl(dev, 0x4004_e502, &id as *const u32) == 0 {
                registered += 1;
            }
        }
        libc::ioctl(dev, 0x4004_e502, &(next as u32) as *const u32);
        libc::close(dev);
        Ok(registered)
    }
}
