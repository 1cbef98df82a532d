//! The control socket (`--control-socket`): how an operator asks a running daemon what it is
//! doing (`phoenixfsd ctl status|metrics`, ctl.rs) and has its worker restarted
//! (`ctl restart-worker`). A Unix stream socket, mode 0600, bound before the sandbox (at a host
//! path) and served by the supervisor's loop inside it: one request line per connection, one
//! reply, then the supervisor closes it. A client that sends nothing within 200 ms is dropped,
//! so no client can hold the single-threaded supervisor up.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::state::Region;
use crate::state::slots::LIVE;
use crate::sys::{self, process};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("control socket {0}: {1} (use --control-socket to put it elsewhere)")]
    Bind(PathBuf, std::io::Error),
}

/// The path used when none is given: beside the vhost-user socket, or under /run/phoenixfsd/
/// named after the mount point (as systemd-escape would: `/` → `-`).
pub fn default_path(socket_path: Option<&Path>, mountpoint: Option<&Path>) -> Option<PathBuf> {
    if let Some(s) = socket_path {
        let mut p = s.as_os_str().to_owned();
        p.push(".ctl");
        return Some(p.into());
    }
    let m = mountpoint?.to_string_lossy().trim_matches('/').replace('/', "-");
    Some(PathBuf::from("/run/phoenixfsd").join(format!("{}.ctl", if m.is_empty() { "-" } else { &m })))
}

/// Binds the control socket at `path` (replacing a stale socket file there), mode 0600.
pub fn bind(path: &Path) -> Result<UnixListener, Error> {
    let err = |e| Error::Bind(path.to_path_buf(), e);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    if std::fs::symlink_metadata(path).is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type())) {
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    Ok(listener)
}

/// One worker death, for `status`.
#[derive(Debug, Clone)]
pub struct Death {
    pub at: Instant,
    pub pid: i32,
    pub cause: String,
    pub counted: bool,
}

/// What the supervisor knows that the region does not.
pub struct Snapshot<'a> {
    pub started: Instant,
    pub supervisor_pid: i32,
    pub worker_pid: Option<i32>,
    pub recent_deaths: &'a [Death],
    pub transport: &'a str,
    pub sandbox: &'a str,
    pub seccomp: &'a str,
    /// Live upgrades done so far (`ctl upgrade`).
    pub upgrades: u32,
}

/// What a request asks of the supervisor beyond a reply.
#[derive(Debug)]
pub enum Action {
    None,
    RestartWorker,
    /// `upgrade PATH` with the binary's fd attached: the supervisor answers on `client` when
    /// the upgrade is done or refused.
    Upgrade(Upgrade),
}

/// An upgrade asked for (ctl.rs opens the binary and sends its fd: the daemon, in its sandbox,
/// could not open a host path).
#[derive(Debug)]
pub struct Upgrade {
    pub client: std::os::unix::net::UnixStream,
    /// The new binary, open for reading (close-on-exec).
    pub binary: std::os::fd::OwnedFd,
    /// Its path as the client named it (for the log and the reply).
    pub path: String,
}

impl Upgrade {
    /// Sends the outcome to the client.
    pub fn answer(&self, reply: &str) {
        let _ = sys::set_nonblocking(self.client.as_raw_fd(), true);
        let _ = sys::write(self.client.as_raw_fd(), reply.as_bytes());
    }
}

/// Takes one connection off `listener` (if any is waiting) and answers it.
pub fn serve_one(listener: &UnixListener, region: &Region, snap: &Snapshot) -> Action {
    let Ok((stream, _)) = listener.accept() else { return Action::None };
    let fd = stream.as_raw_fd();
    let mut line = Vec::new();
    let mut attached = None;
    let mut buf = [0u8; 256];
    while !line.contains(&b'\n') && line.len() < 4096 {
        if !process::poll_readable([fd], 200)[0] {
            return Action::None;
        }
        match sys::recv_with_fd(fd, &mut buf) {
            Ok((0, _)) | Err(_) => break,
            Ok((n, got)) => {
                line.extend_from_slice(&buf[..n]);
                if let Some(fd) = got {
                    // SAFETY: received just now; ours alone (a second one replaces and closes it).
                    attached = Some(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
                }
            }
        }
    }
    let request = String::from_utf8_lossy(&line).trim().to_string();
    if let Some(path) = request.strip_prefix("upgrade ") {
        let reply = match (attached, snap.worker_pid) {
            (_, None) => "error: a live upgrade needs workers (--recovery on)\n".to_string(),
            (None, _) => "error: upgrade: no binary attached (use phoenixfsd ctl upgrade)\n".to_string(),
            (Some(binary), Some(_)) => return Action::Upgrade(Upgrade { client: stream, binary, path: path.into() }),
        };
        let _ = sys::set_nonblocking(fd, true);
        let _ = sys::write(fd, reply.as_bytes());
        return Action::None;
    }
    let (reply, action) = match request.as_str() {
        "status" => (status_text(region, snap), Action::None),
        "status --json" => (status_json(region, snap), Action::None),
        "metrics" => (metrics(region, snap), Action::None),
        "restart-worker" => match snap.worker_pid {
            Some(pid) => (format!("ok: restarting worker {pid}\n"), Action::RestartWorker),
            None => ("error: no worker process (--recovery off)\n".to_string(), Action::None),
        },
        other => (
            format!("error: unknown request {other:?} (status, status --json, metrics, restart-worker, upgrade)\n"),
            Action::None,
        ),
    };
    // A client that does not read its reply loses it; the supervisor does not wait.
    let _ = sys::set_nonblocking(fd, true);
    let _ = sys::write(fd, reply.as_bytes());
    action
}

/// The numbers `status` and `metrics` report.
struct Numbers {
    uptime_s: f64,
    generation: u64,
    restarts: u64,
    served: u64,
    in_flight: usize,
    live_inodes: usize,
    open_handles: usize,
    region_bytes: u64,
    layout_version: u32,
    fuse_initialised: bool,
    /// vhost-user: chains each queue gave the daemon (index 0 the hiprio queue), from the
    /// queue's pop counter in the region; empty over /dev/fuse.
    queue_chains: Vec<u64>,
}

fn numbers(region: &Region, snap: &Snapshot) -> Numbers {
    let h = region.header();
    let live = |states: &mut dyn Iterator<Item = u32>| states.filter(|s| *s == LIVE).count();
    let inodes_high = h.inode_high_water.load(Ordering::Acquire) as usize;
    let handles_high = h.handle_high_water.load(Ordering::Acquire) as usize;
    Numbers {
        uptime_s: snap.started.elapsed().as_secs_f64(),
        generation: h.generation.load(Ordering::Acquire),
        restarts: h.worker_deaths.load(Ordering::Acquire),
        served: h.served.load(Ordering::Acquire),
        in_flight: region.records_in_use(),
        live_inodes: live(
            &mut region.inode_headers()[..inodes_high.min(region.inode_headers().len())]
                .iter()
                .map(|h| h.state.load(Ordering::Acquire)),
        ),
        open_handles: live(
            &mut region.handle_headers()[..handles_high.min(region.handle_headers().len())]
                .iter()
                .map(|h| h.state.load(Ordering::Acquire)),
        ),
        region_bytes: h.region_size,
        layout_version: h.layout_version,
        fuse_initialised: h.init_done.load(Ordering::Acquire) != 0,
        queue_chains: if snap.transport.starts_with("vhost-user") {
            let area = region.vhost();
            area.queues[..area.queue_count()].iter().map(|q| q.next_counter.load(Ordering::Acquire)).collect()
        } else {
            Vec::new()
        },
    }
}

fn status_text(region: &Region, snap: &Snapshot) -> String {
    let n = numbers(region, snap);
    let mut s = format!(
        "phoenixfsd {version} (state layout {layout})\n\
         uptime:          {uptime:.1} s\n\
         transport:       {transport}\n\
         sandbox:         {sandbox}, seccomp {seccomp}\n\
         supervisor pid:  {sup} (in its pid namespace)\n\
         worker pid:      {worker}\n\
         worker restarts: {restarts} (recovery generation {generation})\n\
         live upgrades:   {upgrades}\n\
         served:          {served} requests\n\
         in flight:       {in_flight}\n\
         live inodes:     {inodes}\n\
         open handles:    {handles}\n\
         state region:    {bytes} bytes\n\
         session:         {session}\n",
        version = env!("CARGO_PKG_VERSION"),
        layout = n.layout_version,
        uptime = n.uptime_s,
        transport = snap.transport,
        sandbox = snap.sandbox,
        seccomp = snap.seccomp,
        sup = snap.supervisor_pid,
        worker = snap.worker_pid.map_or("none (--recovery off)".to_string(), |p| p.to_string()),
        restarts = n.restarts,
        generation = n.generation,
        upgrades = snap.upgrades,
        served = n.served,
        in_flight = n.in_flight,
        inodes = n.live_inodes,
        handles = n.open_handles,
        bytes = n.region_bytes,
        session = if n.fuse_initialised { "initialised" } else { "waiting for FUSE INIT" },
    );
    if let Some((hiprio, requests)) = n.queue_chains.split_first() {
        let per_queue: Vec<String> = requests.iter().enumerate().map(|(i, c)| format!("{}: {c}", i + 1)).collect();
        s.push_str(&format!("queue chains:    hiprio {hiprio}, {}\n", per_queue.join(", ")));
    }
    for d in snap.recent_deaths.iter().rev() {
        s.push_str(&format!(
            "recent death:    {:.1} s ago, pid {}, {}{}\n",
            d.at.elapsed().as_secs_f64(),
            d.pid,
            d.cause,
            if d.counted { " (counts toward the crash-loop guard)" } else { "" }
        ));
    }
    s
}

/// A JSON string literal (the strings here are our own: no control characters but what we
/// escape).
fn json_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn status_json(region: &Region, snap: &Snapshot) -> String {
    let n = numbers(region, snap);
    let deaths: Vec<String> = snap
        .recent_deaths
        .iter()
        .map(|d| {
            format!(
                "{{\"seconds_ago\":{:.3},\"pid\":{},\"cause\":{},\"counted\":{}}}",
                d.at.elapsed().as_secs_f64(),
                d.pid,
                json_str(&d.cause),
                d.counted
            )
        })
        .collect();
    format!(
        "{{\"version\":{},\"layout_version\":{},\"uptime_seconds\":{:.3},\"transport\":{},\"sandbox\":{},\
         \"seccomp\":{},\"supervisor_pid\":{},\"worker_pid\":{},\"worker_restarts\":{},\
         \"recovery_generation\":{},\"live_upgrades\":{},\"requests_served\":{},\"requests_in_flight\":{},\"live_inodes\":{},\
         \"open_handles\":{},\"state_region_bytes\":{},\"fuse_initialised\":{},\"queue_chains\":[{}],\"recent_deaths\":[{}]}}\n",
        json_str(env!("CARGO_PKG_VERSION")),
        n.layout_version,
        n.uptime_s,
        json_str(snap.transport),
        json_str(snap.sandbox),
        json_str(snap.seccomp),
        snap.supervisor_pid,
        snap.worker_pid.map_or("null".to_string(), |p| p.to_string()),
        n.restarts,
        n.generation,
        snap.upgrades,
        n.served,
        n.in_flight,
        n.live_inodes,
        n.open_handles,
        n.region_bytes,
        n.fuse_initialised,
        n.queue_chains.iter().map(u64::to_string).collect::<Vec<_>>().join(","),
        deaths.join(",")
    )
}

/// Prometheus text exposition format.
fn metrics(region: &Region, snap: &Snapshot) -> String {
    let n = numbers(region, snap);
    let counted = snap.recent_deaths.iter().filter(|d| d.counted).count();
    let rows: [(&str, &str, &str, String); 10] = [
        ("phoenixfs_uptime_seconds", "gauge", "Seconds since the daemon started.", format!("{:.3}", n.uptime_s)),
        (
            "phoenixfs_worker_restarts_total",
            "counter",
            "Worker deaths survived (each replaced).",
            n.restarts.to_string(),
        ),
        (
            "phoenixfs_worker_recent_crashes",
            "gauge",
            "Of the recent deaths kept for status, those that count toward the crash-loop guard.",
            counted.to_string(),
        ),
        ("phoenixfs_live_upgrades_total", "counter", "Live upgrades done (ctl upgrade).", snap.upgrades.to_string()),
        ("phoenixfs_requests_served_total", "counter", "Requests answered.", n.served.to_string()),
        ("phoenixfs_requests_in_flight", "gauge", "Requests read and not yet answered.", n.in_flight.to_string()),
        ("phoenixfs_live_inodes", "gauge", "Node ids the client holds.", n.live_inodes.to_string()),
        ("phoenixfs_open_handles", "gauge", "Open files and directories.", n.open_handles.to_string()),
        (
            "phoenixfs_state_region_bytes",
            "gauge",
            "Size of the shared-memory state region.",
            n.region_bytes.to_string(),
        ),
        (
            "phoenixfs_recovery_generation",
            "counter",
            "Workers that have taken the state over.",
            n.generation.to_string(),
        ),
    ];
    let mut s = String::new();
    for (name, kind, help, value) in rows {
        s.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"));
    }
    if !n.queue_chains.is_empty() {
        let name = "phoenixfs_queue_chains_total";
        s.push_str(&format!(
            "# HELP {name} Chains the frontend's virtqueue gave (queue 0: hiprio; a chain taken again after a worker's death counts again).\n# TYPE {name} counter\n"
        ));
        for (q, c) in n.queue_chains.iter().enumerate() {
            s.push_str(&format!("{name}{{queue=\"{q}\"}} {c}\n"));
        }
    }
    s
}
