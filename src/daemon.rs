//! Start-up: from a checked command line to a serving daemon. Sets up logging and the process
//! (umask, groups, fd limit), builds the state region, the file system and the server, then
//! runs the chosen transport until a signal or the end of the connection.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Duration;

use crate::cli::{CachePolicy, Cli, LogLevel, Recovery};
use crate::fs::{self, EntryTimeouts};
use crate::fuse::abi;
use crate::server::InitPolicy;
use crate::state::Region;
use crate::state::region::{MAX_CONN_FDS, MAX_KEEP_FDS, TRANSPORT_VHOST_USER};
use crate::supervisor::{Connection, Waits};
use crate::transport::fusedev::FuseDev;
use crate::transport::vhost_user::{self, ControlChannel};
use crate::worker::WorkerConfig;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("shared directory {0}: {1}")]
    SharedDir(PathBuf, std::io::Error),
    #[error("state region: {0}")]
    State(#[from] crate::state::Error),
    #[error("file system: {0}")]
    Fs(#[from] fs::Error),
    #[error(transparent)]
    Fuse(#[from] crate::transport::fusedev::Error),
    #[error(transparent)]
    VhostUser(#[from] crate::transport::vhost_user::Error),
    #[error("cannot create the supervisor's {0}: {1}")]
    SupervisorFd(&'static str, std::io::Error),
    #[error("demo setup: {0}")]
    Demo(std::io::Error),
    #[error(transparent)]
    Worker(#[from] crate::worker::Error),
    #[error(transparent)]
    Supervisor(#[from] crate::supervisor::Error),
    #[error("{0} fds are open at start-up (at most {MAX_KEEP_FDS} can be kept across workers); close inherited fds")]
    TooManyFds(usize),
}

pub fn init_logging(level: LogLevel) {
    let default = match level {
        LogLevel::Error => "error",
        LogLevel::Warn => "warn",
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
        LogLevel::Trace => "trace",
        LogLevel::Off => "off",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// virtiofsd's {"type": "fs"} capabilities document (QEMU docs/interop/vhost-user.json).
pub const CAPABILITIES: &str = "{\n  \"type\": \"fs\"\n}";

fn timeouts(cache: CachePolicy) -> (EntryTimeouts, u32) {
    let (secs, open_flags) = match cache {
        CachePolicy::Never => (0, abi::FOPEN_DIRECT_IO),
        CachePolicy::Metadata => (86400, abi::FOPEN_DIRECT_IO),
        CachePolicy::Auto => (1, 0),
        CachePolicy::Always => (86400, abi::FOPEN_KEEP_CACHE),
    };
    let t = Duration::from_secs(secs);
    (EntryTimeouts { entry: t, attr: t }, open_flags)
}

/// Process-wide settings every thread inherits: no umask of our own (the kernel already applied
/// the caller's), no supplementary groups (each request brings its caller's), and enough fds.
fn prepare_process(rlimit_nofile: Option<u64>) {
    crate::sys::umask(0);
    // SAFETY: process-wide setgroups before any thread exists.
    if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
        tracing::warn!("cannot drop supplementary groups: {}", std::io::Error::last_os_error());
    }
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid out pointer.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    let want = match rlimit_nofile {
        Some(0) => return,
        Some(n) => n,
        None => std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(lim.rlim_max),
    };
    let raised = libc::rlimit { rlim_cur: want, rlim_max: want.max(lim.rlim_max) };
    let soft_only = libc::rlimit { rlim_cur: want.min(lim.rlim_max), rlim_max: lim.rlim_max };
    // SAFETY: valid pointers. Raising the hard limit needs CAP_SYS_RESOURCE, which a container
    // may withhold: then take what the hard limit allows.
    let ok = unsafe {
        libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 || libc::setrlimit(libc::RLIMIT_NOFILE, &soft_only) == 0
    };
    if !ok || soft_only.rlim_cur < want && rlimit_nofile.is_some() {
        tracing::warn!(want, got = soft_only.rlim_cur, "cannot raise RLIMIT_NOFILE as asked");
    }
}

/// Blocks the termination signals in this thread (and so in every thread spawned after), so that
/// one thread can wait for them with sigwait.
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGCHLD] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

pub fn run(cli: Cli) -> Result<(), Error> {
    for opt in cli.unenforced() {
        tracing::warn!("accepted but not enforced yet: {opt}");
    }
    let (shared_dir, mountpoint, _demo) = if cli.demo {
        let d = make_demo().map_err(Error::Demo)?;
        (d.share.clone(), Some(d.mnt.clone()), Some(d))
    } else {
        (cli.shared_dir.clone().expect("checked by normalize"), cli.mountpoint.clone(), None)
    };
    let shared_dir = shared_dir.canonicalize().map_err(|e| Error::SharedDir(shared_dir.clone(), e))?;
    if !shared_dir.is_dir() {
        return Err(Error::SharedDir(shared_dir, std::io::Error::from_raw_os_error(libc::ENOTDIR)));
    }
    prepare_process(cli.rlimit_nofile);
    let sigset = block_signals();
    let cfg = worker_config(&cli, &shared_dir);
    let threads = if cli.thread_pool_size == 0 { default_threads() } else { cli.thread_pool_size };
    // Made before the first worker, so its fd sweep keeps them.
    let waits = Waits {
        signals: crate::sys::signalfd(&sigset).map_err(|e| Error::SupervisorFd("signalfd", e))?,
        ready: crate::sys::eventfd().map_err(|e| Error::SupervisorFd("eventfd", e))?,
    };
    let mut region = Region::create(cli.max_inodes, cli.max_handles)?;

    let conn = match mountpoint {
        Some(mountpoint) => {
            let dev = FuseDev::mount(&mountpoint, &shared_dir)?;
            let conn = dev.connection_fds(threads.min(MAX_CONN_FDS))?;
            record_fds(&mut region, &conn, &waits)?;
            tracing::info!(share = %shared_dir.display(), mountpoint = %mountpoint.display(), threads = conn.len(), recovery = cfg.recovery, "serving");
            if cli.demo {
                println!("phoenixfsd demo: serving {} at {}", shared_dir.display(), mountpoint.display());
                println!("try: ls -l {0}; cat {0}/hello.txt   (Ctrl-C to stop)", mountpoint.display());
            }
            if !cfg.recovery {
                return serve_fuse_in_process(region, &cfg, dev, mountpoint, sigset);
            }
            Connection::Fuse(dev)
        }
        None => {
            let listener = vhost_user::listen(cli.socket_path.as_deref(), cli.fd, cli.socket_group.as_deref())?;
            tracing::info!(share = %shared_dir.display(), socket = ?cli.socket_path, request_queues = threads, recovery = cfg.recovery, "waiting for the vhost-user frontend");
            let Some(stream) = vhost_user::accept(listener, waits.signals)? else {
                tracing::info!("stopping before a frontend connected");
                return Ok(());
            };
            region.header_mut_before_workers().transport = TRANSPORT_VHOST_USER;
            vhost_user::prepare_area(region.vhost(), threads)?;
            record_fds(&mut region, &[], &waits)?;
            let channel = ControlChannel::new(stream);
            if !cfg.recovery {
                return serve_vhost_in_process(region, &cfg, channel, &waits);
            }
            Connection::VhostUser(channel)
        }
    };
    Ok(crate::supervisor::run(region, conn, &cfg, &waits)?)
}

fn worker_config(cli: &Cli, shared_dir: &std::path::Path) -> WorkerConfig {
    let (timeouts, open_reply_flags) = timeouts(cli.cache);
    let fs_cfg = fs::Config {
        timeouts,
        open_reply_flags,
        xattr: cli.xattr,
        allow_direct_io: cli.allow_direct_io,
        readdirplus: !cli.no_readdirplus && cli.cache != CachePolicy::Never,
    };
    let policy = InitPolicy {
        writeback: cli.writeback,
        posix_locks: cli.posix_lock,
        flock_locks: cli.flock,
        readdirplus: fs_cfg.readdirplus,
        posix_acl: false,
        auto_inval_data: cli.cache == CachePolicy::Auto,
    };
    WorkerConfig {
        shared_dir: CString::new(shared_dir.as_os_str().as_bytes()).expect("paths have no NUL"),
        fs: fs_cfg,
        policy,
        recovery: cli.recovery == Recovery::On,
    }
}

/// `--recovery off` on a FUSE mount: the bare engine in this process, no supervisor.
fn serve_fuse_in_process(
    region: Region,
    cfg: &WorkerConfig,
    dev: FuseDev,
    mountpoint: PathBuf,
    sigset: libc::sigset_t,
) -> Result<(), Error> {
    let server = crate::worker::prepare(region, cfg)?;
    // Wait for a termination signal, or for the connection to end (someone unmounted us).
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut sig = 0;
            // SAFETY: waits on a valid, blocked signal set.
            unsafe { libc::sigwait(&sigset, &mut sig) };
            tracing::info!(signal = sig, "stopping");
            std::process::exit(unmount_then(0, &mountpoint));
        })
        .expect("spawn the signal thread");
    crate::worker::serve(server)?;
    dev.unmount();
    Ok(())
}

/// `--recovery off` over vhost-user: queue threads and the control channel in this process.
fn serve_vhost_in_process(
    region: Region,
    cfg: &WorkerConfig,
    mut channel: ControlChannel,
    waits: &Waits,
) -> Result<(), Error> {
    let area = region.vhost();
    let server = crate::worker::prepare(region, cfg)?;
    let (done, _keep) = std::sync::mpsc::channel();
    vhost_user::spawn_queue_threads(&server, done).map_err(crate::worker::Error::Spawn)?;
    channel.start(area, Box::new(|| {}));
    loop {
        let mut fds = [
            libc::pollfd { fd: waits.signals, events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: channel.fd(), events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: a valid pollfd array for the duration of the call.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if fds[0].revents != 0 {
            tracing::info!("stopping");
            return Ok(());
        }
        if fds[1].revents != 0 && !channel.handle_one() {
            tracing::info!("the vhost-user frontend disconnected; stopping");
            return Ok(());
        }
    }
}

fn unmount_then(code: i32, mountpoint: &std::path::Path) -> i32 {
    if let Ok(c) = CString::new(mountpoint.as_os_str().as_bytes())
        && crate::sys::umount(&c, 0).is_err()
    {
        let _ = crate::sys::umount(&c, libc::MNT_DETACH);
    }
    code
}

/// Writes the connection fds, and every other fd open now (stdio, the memfd, the supervisor's
/// own, inherited ones), into the region header: a worker's fd sweep must leave them all open.
fn record_fds(region: &mut Region, conn: &[i32], waits: &Waits) -> Result<(), Error> {
    let open: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(Error::Demo)?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| !conn.contains(fd))
        .collect();
    // The listing's own fd was among them and is closed now: keep only those still open.
    // SAFETY: F_GETFD only queries.
    let keep: Vec<i32> = open.into_iter().filter(|fd| unsafe { libc::fcntl(*fd, libc::F_GETFD) } >= 0).collect();
    if keep.len() > MAX_KEEP_FDS {
        return Err(Error::TooManyFds(keep.len()));
    }
    let h = region.header_mut_before_workers();
    h.conn_fds[..conn.len()].copy_from_slice(conn);
    h.conn_count = conn.len() as u32;
    h.keep_fds[..keep.len()].copy_from_slice(&keep);
    h.keep_count = keep.len() as u32;
    h.ready_fd = waits.ready;
    Ok(())
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).max(2) * 2
}

struct Demo {
    share: PathBuf,
    mnt: PathBuf,
}

fn make_demo() -> std::io::Result<Demo> {
    let base = std::env::temp_dir().join(format!("phoenixfs-demo-{}", std::process::id()));
    let share = base.join("share");
    let mnt = base.join("mnt");
    std::fs::create_dir_all(&share)?;
    std::fs::create_dir_all(&mnt)?;
    std::fs::write(share.join("hello.txt"), "Hello from phoenixfs: this file is served through /dev/fuse.\n")?;
    std::fs::create_dir_all(share.join("docs"))?;
    std::fs::write(share.join("docs").join("about.txt"), "A passthrough share of a host directory.\n")?;
    Ok(Demo { share, mnt })
}
