//! Start-up: from a checked command line to a serving daemon. Sets up logging and the process
//! (umask, groups, fd limit), builds the state region, the file system and the server, then
//! runs the chosen transport until a signal or the end of the connection.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::cli::{CachePolicy, Cli, Recovery, SandboxMode};
use crate::fs::{self, EntryTimeouts};
use crate::fuse::abi;
use crate::security::sandbox::{self, Entered, Inside};
use crate::server::InitPolicy;
use crate::state::Region;
use crate::state::region::MAX_KEEP_FDS;
use crate::supervisor::Waits;
use crate::sys::{self, process};
use crate::transport::fusedev::FuseDev;
use crate::transport::vhost_user::{self, ControlChannel};
use crate::transport::{Connection, Transport, groups};
use crate::worker::WorkerConfig;
use crate::zygote::{self, Zygote};

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
    #[error("cannot list this process's open fds (/proc/self/fd): {0}")]
    ListFds(std::io::Error),
    #[error(transparent)]
    Worker(#[from] crate::worker::Error),
    #[error(transparent)]
    Supervisor(#[from] crate::supervisor::Error),
    #[error("confining the daemon: {0}")]
    Confine(#[from] crate::security::Error),
    #[error(transparent)]
    Sandbox(#[from] crate::security::sandbox::Error),
    #[error(transparent)]
    Control(#[from] crate::control::Error),
    #[error(transparent)]
    Cli(#[from] crate::cli::CliError),
    #[error("{0} fds are open at start-up (at most {MAX_KEEP_FDS} can be kept across workers); close inherited fds")]
    TooManyFds(usize),
}

/// The vhost-user.json capabilities document (QEMU docs/interop/vhost-user.json), type "fs".
/// virtiofsd's features: "migrate-precopy" (VM live migration through vhost-user DEVICE_STATE,
/// with recovery on, the default), "separate-options" (options as separate arguments, not -o)
/// and the negotiation modes of --posix-acl and --security-label (=never|auto|always).
pub const CAPABILITIES: &str = "{\n  \"type\": \"fs\",\n  \"features\": [\n    \"migrate-precopy\",\n    \"posix-acl-negotiation-mode\",\n    \"security-label-negotiation-mode\",\n    \"separate-options\"\n  ]\n}";

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
/// the caller's), no supplementary groups (each request brings its caller's; in a user
/// namespace they are dropped inside, where that may be allowed: security/userns.rs), and
/// enough fds.
fn prepare_process(rlimit_nofile: Option<u64>, in_user_namespace: bool) {
    crate::sys::umask(0);
    if !in_user_namespace && let Err(e) = process::drop_groups() {
        tracing::warn!("cannot drop supplementary groups: {e}");
    }
    let (_, hard) = process::nofile_limit();
    let want = match rlimit_nofile {
        Some(0) => return,
        Some(n) => n,
        // virtiofsd's default: min(1,000,000, /proc/sys/fs/nr_open).
        None => std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(hard)
            .min(1_000_000),
    };
    // Raising the hard limit needs CAP_SYS_RESOURCE, which a container may withhold: then take
    // what the hard limit allows.
    let soft_only = want.min(hard);
    let ok =
        process::set_nofile_limit(want, want.max(hard)).is_ok() || process::set_nofile_limit(soft_only, hard).is_ok();
    if !ok || soft_only < want && rlimit_nofile.is_some() {
        tracing::warn!(want, got = soft_only, "cannot raise RLIMIT_NOFILE as asked");
    }
}

pub fn run(cli: Cli) -> Result<(), Error> {
    let started = std::time::Instant::now();
    for opt in cli.unenforced() {
        tracing::warn!("accepted but not enforced yet: {opt}");
    }
    // Options (docs/compat.md): what the operator should know about how they combine.
    if cli.xattrmap.as_ref().is_some_and(|m| !m.is_terminated()) {
        tracing::warn!(
            "--xattrmap has no catch-all rule: guest names no rule matches are refused (EPERM), host names no rule matches are hidden"
        );
    }
    if !cli.no_killpriv_v2 && !cli.killpriv_v2() {
        tracing::info!(
            "--xattrmap renames security.capability: FUSE_HANDLE_KILLPRIV_V2 is off, the guest kernel clears capabilities itself"
        );
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
    // Without CAP_SYS_ADMIN, `--sandbox namespace` is built in a user namespace of its own.
    let userns = cli.user_namespace(crate::security::userns::privileged());
    if let Some(maps) = &userns {
        tracing::info!(uid_map = ?maps.uids, gid_map = ?maps.gids, "unprivileged: the sandbox gets a user namespace");
    }
    prepare_process(cli.rlimit_nofile, userns.is_some());
    crate::crash::prepare();
    // Blocked in every thread (all start after this) and taken from a signalfd by the
    // supervisor's loop.
    let sigset = process::block_signals(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGCHLD]);
    let threads = if cli.thread_pool_size == 0 { default_threads() } else { cli.thread_pool_size };
    // Made before the first worker, so its fd sweep keeps them.
    let eventfd = |what| crate::sys::eventfd().map_err(|e| Error::SupervisorFd(what, e));
    let waits = Waits {
        signals: crate::sys::signalfd(&sigset).map_err(|e| Error::SupervisorFd("signalfd", e))?,
        ready: eventfd("ready eventfd")?,
        ended: eventfd("ended eventfd")?,
    };
    let mut region = Region::create(cli.max_inodes, cli.max_handles)?;

    // The host's side of the transport, the one place it is chosen: a FUSE mount and its
    // clones (opened by path, /dev/fuse), or the vhost-user socket to listen on. Both need the
    // host's namespaces, so they come first.
    let mut endpoint = match &mountpoint {
        Some(mountpoint) => {
            let mut dev = FuseDev::mount(mountpoint, &shared_dir)?;
            let transport = dev.transport(threads, &region)?.with_spin(cli.fuse_spin());
            Endpoint::Fuse(dev, transport)
        }
        None => Endpoint::Vhost(vhost_user::listen(cli.socket_path.as_deref(), cli.fd, cli.socket_group.as_deref())?),
    };

    // The control socket (control.rs): bound at a host path, served inside.
    let control_path = cli
        .control_socket
        .clone()
        .or_else(|| crate::control::default_path(cli.socket_path.as_deref(), mountpoint.as_deref()));
    let control_listener = control_path.as_deref().map(crate::control::bind).transpose()?;

    // The sandbox: from here on the supervisor and its workers see only the share.
    let inside = enter_sandbox(&cli, &shared_dir, userns.as_ref(), &mut endpoint, &waits)?;

    // The supervisor's and the workers' side of the transport, from now on a value.
    let (conn, transport): (Box<dyn Connection>, Arc<dyn Transport>) = match endpoint {
        Endpoint::Fuse(dev, transport) => {
            let mountpoint = mountpoint.as_deref().unwrap_or(Path::new("?"));
            tracing::info!(share = %shared_dir.display(), mountpoint = %mountpoint.display(), threads = transport.fds().len(), recovery = ?cli.recovery, sandbox = ?cli.sandbox, "serving");
            if cli.demo {
                // Not println!: it panics when stdout is gone (`phoenixfsd --demo | head -1`),
                // and the demo's share should not die with the terminal's pipe.
                use std::io::Write;
                let mut out = std::io::stdout();
                let _ = writeln!(out, "phoenixfsd demo: serving {} at {}", shared_dir.display(), mountpoint.display());
                let _ = writeln!(out, "try: ls -l {0}; cat {0}/hello.txt   (Ctrl-C to stop)", mountpoint.display());
            }
            (Box::new(dev), Arc::new(transport))
        }
        Endpoint::Vhost(listener) => {
            tracing::info!(share = %shared_dir.display(), socket = ?cli.socket_path, request_queues = threads, recovery = ?cli.recovery, sandbox = ?cli.sandbox, "waiting for the vhost-user frontend");
            let Some(stream) = vhost_user::accept(listener, waits.signals)? else {
                tracing::info!("stopping before a frontend connected");
                return Ok(());
            };
            let (channel, transport) =
                ControlChannel::new(stream, &region, threads, cli.tag.clone(), offers_migration(&cli))?;
            (Box::new(channel), Arc::new(transport))
        }
    };
    // Made before the fds to keep are recorded: every worker's sweep must leave them open.
    let pipes = match cli.recovery {
        Recovery::On => Some((
            zygote::Pipes::new().map_err(|e| Error::SupervisorFd("zygote pipes", e))?,
            crate::upgrade::Pipes::new().map_err(|e| Error::SupervisorFd("upgrade pipes", e))?,
        )),
        Recovery::Off => None,
    };
    record_keep_fds(&mut region, inside.proc, &transport.fds(), &waits)?;
    let control_listener = control_listener;
    let upgrades = pipes.as_ref().map(|(zygote_pipes, upgrade_pipes)| crate::supervisor::Upgrades {
        first: true,
        handover: crate::upgrade::Handover {
            memfd: region.memfd(),
            signals: waits.signals,
            ready: waits.ready,
            ended: waits.ended,
            vmstat: inside.vmstat,
            proc: inside.proc,
            control: control_listener.as_ref().map_or(-1, std::os::fd::AsRawFd::as_raw_fd),
            groups: groups::holder_fd().unwrap_or(-1),
            syslog: crate::logging::syslog_fd().unwrap_or(-1),
            pipes: *upgrade_pipes,
            zygote: zygote_pipes.fds(),
            started_ms: crate::upgrade::now_ms() - started.elapsed().as_millis() as u64,
            upgrades: 0,
            shared_dir: inside.shared_dir.clone(),
            link: conn.link(),
        },
    });
    if upgrades.is_some()
        && let Err(e) = process::set_child_subreaper()
    {
        tracing::warn!("cannot become a child subreaper (a live upgrade's supervisor may be orphaned): {e}");
    }
    let sup = Supervise { started, control_listener, zygote_pipes: pipes.map(|(z, _)| z), upgrades };
    supervise(&cli, region, conn, transport, &inside, &waits, sup, mountpoint.as_deref())
}

/// What the end of start-up hands the supervisor, fresh or adopted.
struct Supervise {
    started: std::time::Instant,
    control_listener: Option<std::os::unix::net::UnixListener>,
    zygote_pipes: Option<zygote::Pipes>,
    upgrades: Option<crate::supervisor::Upgrades>,
}

/// The end of start-up, the same for a fresh daemon and a live upgrade's new binary (the fds
/// every worker keeps are recorded): the supervisor's capabilities, the zygote, the
/// supervisor's filter, then its loop.
#[allow(clippy::too_many_arguments)]
fn supervise(
    cli: &Cli,
    region: Region,
    conn: Box<dyn Connection>,
    transport: Arc<dyn Transport>,
    inside: &Inside,
    waits: &Waits,
    sup: Supervise,
    mountpoint: Option<&Path>,
) -> Result<(), Error> {
    let mut cfg = worker_config(cli, inside, transport, waits.ended);
    // Start-up is over (mounted or connected, the region and every supervisor fd made): from
    // here on the supervisor keeps only what serving and stopping need (docs/design.md
    // "Security"). Workers are cloned after this and narrow further.
    cfg.confine = crate::security::Policy {
        seccomp: cli.seccomp,
        worker_caps: cli.worker_caps()?,
        backing_admin: cfg.fs.passthrough_dev >= 0,
    };
    let violation = &region.header().seccomp_violation;
    let effective = crate::security::restrict_supervisor_caps(&mut cfg.confine, !cfg.recovery)?;
    // The zygote, which clones the workers, before the supervisor's narrower filter.
    let zygote = sup
        .zygote_pipes
        .map(|pipes| Zygote::start(pipes, &region, &cfg))
        .transpose()
        .map_err(|e| Error::SupervisorFd("zygote", e))?;
    crate::security::install_supervisor_filter(&cfg.confine, effective, !cfg.recovery, violation)?;
    let control = sup.control_listener.map(|listener| crate::supervisor::Control {
        listener,
        started: sup.started,
        transport: match (mountpoint, &cli.socket_path) {
            (Some(m), _) => format!("FUSE (/dev/fuse) at {}", m.display()),
            (None, Some(s)) => format!("vhost-user at {}", s.display()),
            (None, None) => "vhost-user (--fd)".to_string(),
        },
        sandbox: format!("{:?}", cli.sandbox).to_lowercase(),
        seccomp: format!("{:?}", cli.seccomp).to_lowercase(),
    });
    Ok(crate::supervisor::run(region, conn, cfg, waits, inside.vmstat, zygote, control, sup.upgrades)?)
}

/// A live upgrade's new binary (upgrade.rs, steps 3 and 4): takes the daemon over from the
/// fds `h` names. Everything up to the go is checked without writing the region, and a refusal
/// goes back to the old supervisor, which serves on.
pub fn adopt(cli: Cli, h: crate::upgrade::Handover) -> Result<(), Error> {
    let refuse = |why: String| -> ! { crate::upgrade::refuse(&h.pipes, &why) };
    process::set_name(crate::security::sandbox::SUPERVISOR_NAME);
    // An older layout is taken as it is and converted only after the go: until then the old
    // supervisor may serve on with it.
    let region = Region::attach_convertible(h.memfd).unwrap_or_else(|e| refuse(format!("the state region: {e}")));
    let inside = Inside { proc: h.proc, vmstat: h.vmstat, shared_dir: h.shared_dir.clone() };
    let waits = Waits { signals: h.signals, ready: h.ready, ended: h.ended };
    let (conn, transport): (Box<dyn Connection>, Arc<dyn Transport>) = match &h.link {
        crate::transport::Link::Fuse { fds, mount_id } => {
            let mountpoint = cli.mountpoint.clone().unwrap_or_default();
            let (dev, transport) = FuseDev::adopt(fds, *mount_id, &mountpoint, &region);
            let transport = transport.with_spin(cli.fuse_spin());
            groups::set_source(match h.groups {
                -1 => groups::Source::Proc(inside.proc),
                fd => groups::Source::Holder(fd),
            });
            (Box::new(dev), Arc::new(transport))
        }
        crate::transport::Link::Vhost { stream, protocol_features } => {
            let (channel, transport) =
                ControlChannel::adopt(*stream, *protocol_features, &region, cli.tag.clone(), offers_migration(&cli))
                    .unwrap_or_else(|e| refuse(format!("the vhost-user connection: {e}")));
            (Box::new(channel), Arc::new(transport))
        }
    };
    crate::crash::prepare();
    tracing::info!(upgrade = h.upgrades, layout = region.header().layout_version, "live upgrade: ready to take over");
    // Crash here: the old supervisor sees the new binary gone before `R` and serves on.
    crate::crash_point!("upgrade.before_ready");
    if let Err(why) = crate::upgrade::ready_and_wait_go(&h.pipes) {
        refuse(why);
    }
    // From here the daemon is ours. Crash here: like a supervisor's death (docs/operations.md).
    let mut region = region;
    let mut keep: Vec<i32> = {
        let hd = region.header();
        hd.keep_fds[..hd.keep_count as usize].iter().copied().filter(|fd| sys::is_open(*fd)).collect()
    };
    keep.extend(crate::crash::arm_fd().filter(|fd| !keep.contains(fd)));
    // The vhost-user channel has moved to another number (ControlChannel::adopt).
    if let crate::transport::Link::Vhost { stream, .. } = conn.link()
        && !keep.contains(&stream)
    {
        keep.push(stream);
    }
    set_keep_fds(&mut region, &keep)?;
    // After the keep list: a conversion may make an fd (layout 6's wake eventfd), which the
    // region names; on a number the list kept as "open" it would be taken for one of ours, and
    // a rollback that closes it would leave the list naming a closed fd.
    region.convert(crate::state::region::LAYOUT_VERSION)?;
    let started = std::time::Instant::now()
        .checked_sub(Duration::from_millis(crate::upgrade::now_ms().saturating_sub(h.started_ms)))
        .unwrap_or_else(std::time::Instant::now);
    let control_listener = (h.control >= 0).then(|| {
        // SAFETY: the handover names this fd as the control socket's listener.
        unsafe { <std::os::unix::net::UnixListener as std::os::fd::FromRawFd>::from_raw_fd(h.control) }
    });
    let sup = Supervise {
        started,
        control_listener,
        zygote_pipes: Some(zygote::Pipes::from_fds(h.zygote)),
        upgrades: Some(crate::supervisor::Upgrades { handover: h.clone(), first: false }),
    };
    supervise(&cli, region, conn, transport, &inside, &waits, sup, cli.mountpoint.as_deref())
}

/// Builds the sandbox (security/sandbox.rs) and returns, in the supervisor, what it holds
/// inside. In a sandbox the daemon's first process stays outside as the holder (holder.rs,
/// never returning from here): it takes the FUSE unmount over and, in a pid namespace, answers
/// for FUSE callers' groups over a socket pair made here.
fn enter_sandbox(
    cli: &Cli,
    shared_dir: &Path,
    userns: Option<&crate::security::userns::IdMaps>,
    endpoint: &mut Endpoint,
    waits: &Waits,
) -> Result<Inside, Error> {
    let serves_fuse = matches!(endpoint, Endpoint::Fuse(..));
    let groups_pair = (cli.sandbox == SandboxMode::Namespace && serves_fuse)
        .then(sys::seqpacket_pair)
        .transpose()
        .map_err(|e| Error::SupervisorFd("groups socket pair", e))?;
    let teardown = match endpoint {
        Endpoint::Fuse(dev, _) if cli.sandbox != SandboxMode::None => dev.take_host_teardown(),
        _ => None,
    };
    let inside = match sandbox::enter(cli.sandbox, shared_dir, userns)? {
        Entered::Holder { supervisor } => crate::holder::run(crate::holder::Holder {
            supervisor,
            signals: waits.signals,
            groups: groups_pair.map(|[holder, _]| holder),
            teardown,
            seccomp: cli.seccomp,
        }),
        Entered::Supervisor(inside) => inside,
    };
    // The supervisor's copy of the unmount is not its to do.
    drop(teardown);
    if serves_fuse {
        groups::set_source(match groups_pair {
            Some([holder, worker]) => {
                sys::close(holder);
                groups::Source::Holder(worker)
            }
            None => groups::Source::Proc(inside.proc),
        });
    }
    Ok(inside)
}

/// Whether VM live migration (vhost-user DEVICE_STATE) is offered: with recovery on, as a load
/// is imported by a worker that is then replaced (transport/vhost_user/transfer.rs).
fn offers_migration(cli: &Cli) -> bool {
    cli.recovery == Recovery::On
}

/// The host's side of the transport, made before the sandbox.
enum Endpoint {
    Fuse(FuseDev, crate::transport::fusedev::FuseTransport),
    Vhost(std::os::unix::net::UnixListener),
}

fn worker_config(cli: &Cli, inside: &Inside, transport: Arc<dyn Transport>, ended: i32) -> WorkerConfig {
    let (timeouts, open_reply_flags) = timeouts(cli.cache);
    let file_handles = match cli.inode_file_handles {
        crate::cli::InodeFileHandles::Never => fs::FileHandles::Never,
        // In a user namespace open_by_handle_at is refused (it wants CAP_DAC_READ_SEARCH in the
        // host's): decided once here rather than by every worker's probe. `mandatory` was
        // refused at start-up (Cli::check_privilege).
        crate::cli::InodeFileHandles::Prefer if crate::security::userns::nested(inside.proc) => {
            tracing::info!(
                "--inode-file-handles=prefer: in a user namespace open_by_handle_at is not allowed; an O_PATH fd per inode"
            );
            fs::FileHandles::Never
        }
        crate::cli::InodeFileHandles::Prefer => fs::FileHandles::Prefer,
        crate::cli::InodeFileHandles::Mandatory => fs::FileHandles::Mandatory,
    };
    // After prepare_process set the limit: workers share the supervisor's.
    let (fd_budget, fd_cache) = fs::Config::fd_budget_for(process::nofile_limit().0, file_handles);
    let (uids, gids) = cli.id_maps().expect("checked by normalize");
    let fs_cfg = fs::Config {
        timeouts,
        open_reply_flags,
        xattr: cli.xattr,
        allow_direct_io: cli.allow_direct_io,
        readdirplus: !cli.no_readdirplus && cli.cache != CachePolicy::Never,
        file_handles,
        fd_budget,
        fd_cache,
        xattrmap: cli.xattrmap.clone(),
        preserve_noatime: cli.preserve_noatime,
        readonly: cli.readonly,
        uids,
        gids,
        migration: fs::migrate::Migration {
            mode: match cli.migration_mode {
                None | Some(crate::cli::MigrationMode::FindPaths) => crate::state::stream::Mode::FindPaths,
                Some(crate::cli::MigrationMode::FileHandles) => crate::state::stream::Mode::FileHandles,
            },
            on_error: match cli.migration_on_error {
                None | Some(crate::cli::MigrationOnError::Abort) => fs::migrate::OnError::Abort,
                Some(crate::cli::MigrationOnError::GuestError) => fs::migrate::OnError::GuestError,
            },
            verify_handles: cli.migration_verify_handles,
            confirm_paths: cli.migration_confirm_paths,
        },
        passthrough_dev: if cli.passthrough_wanted() { transport.backing_dev().unwrap_or(-1) } else { -1 },
    };
    let policy = InitPolicy {
        writeback: cli.writeback,
        posix_locks: cli.posix_lock,
        flock_locks: cli.flock,
        readdirplus: fs_cfg.readdirplus,
        posix_acl: cli.posix_acl != crate::cli::Negotiation::Never,
        require_posix_acl: cli.posix_acl == crate::cli::Negotiation::Always,
        security_ctx: cli.security_label != crate::cli::Negotiation::Never,
        require_security_ctx: cli.security_label == crate::cli::Negotiation::Always,
        auto_inval_data: cli.cache == CachePolicy::Auto,
        // On unless --no-announce-submounts, as virtiofsd.
        announce_submounts: !cli.no_announce_submounts,
        killpriv_v2: cli.killpriv_v2(),
        allow_mmap: cli.allow_mmap,
        passthrough: fs_cfg.passthrough_dev >= 0,
        require_passthrough: cli.fuse_passthrough == crate::cli::Negotiation::Always,
    };
    WorkerConfig {
        shared_dir: inside.shared_dir.clone(),
        proc: inside.proc,
        fs: fs_cfg,
        policy,
        recovery: cli.recovery == Recovery::On,
        transport,
        ended,
        confine: crate::security::Policy {
            seccomp: crate::cli::SeccompAction::None,
            worker_caps: crate::security::caps::WORKER,
            backing_admin: false,
        },
    }
}

/// Writes every fd open now that the transport does not hold (stdio, the memfd, the
/// supervisor's own, inherited ones) into the region header, with the ready eventfd: a worker's
/// fd sweep must leave them all open.
fn record_keep_fds(region: &mut Region, proc: i32, transport: &[i32], waits: &Waits) -> Result<(), Error> {
    let keep: Vec<i32> =
        sys::open_fds(proc).map_err(Error::ListFds)?.into_iter().filter(|fd| !transport.contains(fd)).collect();
    set_keep_fds(region, &keep)?;
    region.header_mut_before_workers().ready_fd = waits.ready;
    Ok(())
}

/// Writes `keep` as the region header's list of fds every worker's sweep leaves open (no worker
/// runs while it is written).
fn set_keep_fds(region: &mut Region, keep: &[i32]) -> Result<(), Error> {
    if keep.len() > MAX_KEEP_FDS {
        return Err(Error::TooManyFds(keep.len()));
    }
    let h = region.header_mut_before_workers();
    h.keep_fds = [0; MAX_KEEP_FDS];
    h.keep_fds[..keep.len()].copy_from_slice(keep);
    h.keep_count = keep.len() as u32;
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
