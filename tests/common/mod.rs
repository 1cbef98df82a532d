//! Shared by the integration tests: start `phoenixfsd` on a temporary share, wait until the
//! kernel shows the mount, and tear it down (SIGTERM, then a lazy unmount if it did not go).
//!
//! A mount can be served over either transport: `Transport::Fuse` (phoenixfsd mounts /dev/fuse
//! itself) or `Transport::VhostUser` (phoenixfsd listens on a vhost-user socket; the test's
//! bridge mounts /dev/fuse and carries every request the kernel sends over real virtqueues,
//! tests/vhost/bridge.rs, up to 4 at once on each of 4 request queues). Either way real syscalls
//! on `mnt` reach phoenixfsd's engine.
//!
//! Also shared: `sys` (raw syscall wrappers returning the errno), `errno` (errno names),
//! `proc` (the daemon's processes and fd table, from /proc) and `ctl` (`phoenixfsd ctl`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../vhost/backend.rs"]
pub mod backend;
#[path = "../vhost/bridge.rs"]
pub mod bridge;
#[path = "../vhost/frontend.rs"]
pub mod frontend;
#[path = "../vhost/workload.rs"]
pub mod workload;

pub mod ctl;
pub mod errno;
pub mod fuzz;
pub mod inproc;
pub mod proc;
pub mod sys;
pub mod userns;

#[allow(unused_imports)] // each test uses some
pub use proc::{children_of, drop_caches, open_fds, settled_fds, supervisor_of, table_fds};

/// How the test reaches the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Fuse,
    VhostUser,
}

impl Transport {
    /// The transport suites run on by default: PHOENIXFS_TEST_TRANSPORT=vhost-user runs a whole
    /// real-syscall suite (compare, pjdfstest) over virtqueues; anything else, FUSE.
    pub fn from_env() -> Transport {
        match std::env::var("PHOENIXFS_TEST_TRANSPORT").as_deref() {
            Ok("vhost-user") => Transport::VhostUser,
            _ => Transport::Fuse,
        }
    }
}

/// Request queues the bridge drives. The daemon offers at least 4.
const BRIDGE_QUEUES: usize = 4;
/// Requests each of them carries at once (one bridge thread each), as a guest's driver keeps
/// several in flight on a queue when several processes wait in syscalls.
const BRIDGE_IN_FLIGHT: usize = 4;
/// How long the bridge waits for one request: longer than any recovery, so a timeout is a bug.
const BRIDGE_TIMEOUT: Duration = Duration::from_secs(30);

/// How the tests' mounts over vhost-user are bridged.
fn bridge_options() -> bridge::BridgeOptions {
    bridge::BridgeOptions { timeout: BRIDGE_TIMEOUT, in_flight: BRIDGE_IN_FLIGHT, ..Default::default() }
}

pub const BIN: &str = env!("CARGO_BIN_EXE_phoenixfsd");

/// phoenixfsd as built at the last commit of the previous state-region layout (layout 6):
/// scripts/build-previous.sh builds it once from this repository's history (scripts/test.sh runs
/// it before the tests, so here it only prints the path).
pub fn previous_layout_bin() -> PathBuf {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/build-previous.sh");
    let out = Command::new("bash").arg(script).stderr(Stdio::inherit()).output().expect("run bash");
    assert!(out.status.success(), "{script} failed ({}): the previous layout's build is needed here", out.status);
    PathBuf::from(String::from_utf8(out.stdout).expect("a path").trim())
}

/// Waits (up to 10 s) for a daemon's control socket: the supervisor binds it just after the
/// mount appears, so a test that runs `ctl` or starts a second daemon on the same path waits.
pub fn wait_for_socket(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(Instant::now() < deadline, "no control socket at {path:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Fails the test loudly where FUSE cannot run (never a silent skip).
pub fn require_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: these tests mount real FUSE file systems and need it (run as root)"
    );
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "these tests mount FUSE with mount(2) and switch credentials: run them as root"
    );
}

pub fn is_mounted(mnt: &Path) -> bool {
    let target = mnt.canonicalize().unwrap_or_else(|_| mnt.to_path_buf());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(target.to_str().unwrap()))
}

/// A running phoenixfsd serving `share` at `mnt`.
pub struct Mount {
    pub child: Child,
    pub share: PathBuf,
    pub mnt: PathBuf,
    /// The test's FUSE-to-virtqueue bridge, on `Transport::VhostUser`.
    bridge: Option<bridge::Bridge>,
    _tmp: Option<tempfile::TempDir>,
}

impl Mount {
    /// The supervisor's pid (the daemon's own with `--sandbox none`, else its child's).
    pub fn supervisor(&self) -> u32 {
        proc::supervisor_of(self.child.id())
    }

    /// A fresh share and mount point in a new temporary directory, over the transport the
    /// environment names (`Transport::from_env`).
    pub fn new(extra_args: &[&str]) -> Mount {
        Mount::new_on(Transport::from_env(), extra_args)
    }

    /// As `new`, over `transport`.
    pub fn new_on(transport: Transport, extra_args: &[&str]) -> Mount {
        Mount::in_tempdir(|share, mnt| Mount::start_on(transport, share, mnt, extra_args, &[]))
    }

    /// As `new_on`, with `env` added to the daemon's environment.
    pub fn new_on_with_env(transport: Transport, extra_args: &[&str], env: &[(&str, &str)]) -> Mount {
        Mount::in_tempdir(|share, mnt| Mount::start_on(transport, share, mnt, extra_args, env))
    }

    /// `start`ed on a share and mount point in a new temporary directory.
    fn in_tempdir(start: impl FnOnce(&Path, &Path) -> Mount) -> Mount {
        let tmp = tempfile::Builder::new().prefix("phoenixfs-test").tempdir().unwrap();
        let share = tmp.path().join("share");
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir(&share).unwrap();
        std::fs::create_dir(&mnt).unwrap();
        let mut m = start(&share, &mnt);
        m._tmp = Some(tmp);
        m
    }

    pub fn start(share: &Path, mnt: &Path, extra_args: &[&str]) -> Mount {
        Mount::start_with_env(share, mnt, extra_args, &[])
    }

    /// As `start`, with extra environment variables for the daemon.
    pub fn start_with_env(share: &Path, mnt: &Path, extra_args: &[&str], env: &[(&str, &str)]) -> Mount {
        Mount::start_on(Transport::Fuse, share, mnt, extra_args, env)
    }

    /// Starts phoenixfsd on `share` and makes it reachable at `mnt` over `transport`.
    pub fn start_on(
        transport: Transport,
        share: &Path,
        mnt: &Path,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Mount {
        Mount::start_logged(transport, share, mnt, extra_args, env, None)
    }

    /// As `start_on`, with the daemon's stderr (its log) written to `log` if given.
    pub fn start_logged(
        transport: Transport,
        share: &Path,
        mnt: &Path,
        extra_args: &[&str],
        env: &[(&str, &str)],
        log: Option<&Path>,
    ) -> Mount {
        let bridge = bridge_options();
        Mount::launch(Command::new(BIN).envs(env.iter().copied()), transport, share, mnt, extra_args, log, bridge)
    }

    /// A fresh share served by phoenixfsd run as the unprivileged `user` (its sandbox is then
    /// built in a user namespace, with `extra_args`' maps if any): the temporary directory, where
    /// the daemon makes its socket, is the user's; the share is `share_owner`'s (host ids: the
    /// host id that namespace id 0 maps to, for the daemon to write there as root inside).
    pub fn new_as(
        user: &userns::TestUser,
        share_owner: (u32, u32),
        transport: Transport,
        extra_args: &[&str],
        log: Option<&Path>,
    ) -> Mount {
        let tmp = tempfile::Builder::new().prefix("phoenixfs-test").tempdir().unwrap();
        let share = tmp.path().join("share");
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir(&share).unwrap();
        std::fs::create_dir(&mnt).unwrap();
        user.own(tmp.path());
        // Searchable by the daemon's root inside, which may be another host id than the user's.
        std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(&share, Some(share_owner.0), Some(share_owner.1)).unwrap();
        // The user namespace is namespace mode's (PHOENIXFS_TEST_SANDBOX does not apply).
        let args: Vec<&str> = ["--sandbox", "namespace"].iter().chain(extra_args).copied().collect();
        let mut m = Mount::launch(&mut user.command(BIN), transport, &share, &mnt, &args, log, bridge_options());
        m._tmp = Some(tmp);
        m
    }

    /// Starts `cmd` (phoenixfsd, or a command that runs it, with its environment) on `share`
    /// and makes it reachable at `mnt` over `transport` (through a bridge with `bridge`'s
    /// options on `Transport::VhostUser`).
    fn launch(
        cmd: &mut Command,
        transport: Transport,
        share: &Path,
        mnt: &Path,
        extra_args: &[&str],
        log: Option<&Path>,
        bridge: bridge::BridgeOptions,
    ) -> Mount {
        require_fuse();
        let socket = mnt.with_extension("vhost.sock");
        cmd.arg("--shared-dir").arg(share);
        match transport {
            Transport::Fuse => cmd.arg("--mountpoint").arg(mnt),
            // Every chain counts as slow service (a test-build knob, src/transport/vhost_user/
            // queue.rs): the bridge's several requests per queue are served side by side all the
            // time, so every suite over vhost-user runs on that path.
            Transport::VhostUser => cmd.arg("--socket-path").arg(&socket).env("PHOENIXFS_SLOW_SERVICE_NS", "0"),
        };
        cmd.args(confinement_args());
        if let Some(log) = log {
            cmd.stderr(std::fs::File::create(log).expect("create the daemon's log file"));
        }
        let child =
            cmd.args(["--log-level", "warn"]).args(extra_args).stdin(Stdio::null()).spawn().expect("spawn phoenixfsd");
        let mut m = Mount { child, share: share.to_path_buf(), mnt: mnt.to_path_buf(), bridge: None, _tmp: None };
        if transport == Transport::VhostUser {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !socket.exists() {
                if let Some(status) = m.child.try_wait().unwrap() {
                    panic!("phoenixfsd exited before listening on {socket:?}: {status}");
                }
                assert!(Instant::now() < deadline, "phoenixfsd did not create {socket:?} within 20 s");
                std::thread::sleep(Duration::from_millis(10));
            }
            let b = bridge::Bridge::mount(&socket, mnt, BRIDGE_QUEUES, bridge)
                .unwrap_or_else(|e| panic!("bridging {mnt:?} to phoenixfsd's vhost-user socket: {e}"));
            m.bridge = Some(b);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while !is_mounted(mnt) {
            if let Some(status) = m.child.try_wait().unwrap() {
                panic!("phoenixfsd exited before mounting: {status}");
            }
            assert!(Instant::now() < deadline, "phoenixfsd did not mount {mnt:?} within 20 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        m
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Requests the bridge could not carry (each answered EIO to the application); 0 over FUSE.
    pub fn bridge_failures(&self) -> usize {
        self.bridge.as_ref().map_or(0, |b| b.failures())
    }

    /// Over vhost-user, the most requests one queue carried at once and how many chains the
    /// daemon returned out of order (served while an earlier one of their queue was still being
    /// served), over all queues; None over FUSE.
    pub fn queue_concurrency(&self) -> Option<(usize, usize)> {
        let queues = self.bridge.as_ref()?.queues();
        Some((
            queues.iter().map(|q| q.peak_in_flight()).max().unwrap_or(0),
            queues.iter().map(|q| q.out_of_order()).sum(),
        ))
    }

    /// Requests with `opcode` the kernel has sent so far, on `Transport::VhostUser` (the bridge
    /// counts them); None over FUSE, where nothing between the kernel and the daemon sees them.
    pub fn requests(&self, opcode: phoenixfsd::fuse::abi::Opcode) -> Option<usize> {
        self.bridge.as_ref().map(|b| b.requests(opcode))
    }

    /// SIGTERM, and wait for a clean exit; returns the exit status. Over vhost-user the bridge
    /// is unmounted first, and a request it failed to carry fails the test here.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        if let Some(b) = self.bridge.take() {
            let failures = b.unmount();
            assert_eq!(failures, 0, "the vhost-user bridge failed {failures} requests (see stderr)");
        }
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        proc::wait_for_exit(&mut self.child, Duration::from_secs(20)).unwrap_or_else(|| {
            let _ = self.child.kill();
            self.child.wait().unwrap()
        })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // No assertion while unwinding: the failures were reported on stderr already.
        if let Some(b) = self.bridge.take() {
            b.unmount();
        }
        if self.child.try_wait().ok().flatten().is_none() {
            self.stop();
        }
        if is_mounted(&self.mnt) {
            let c = sys::cs(&self.mnt);
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// PHOENIXFS_TEST_SECCOMP=kill|log|trap|none runs every daemon with that `--seccomp` mode;
/// unset, daemons run with the default (kill). The first daemon a test binary starts says
/// which mode ran.
pub fn seccomp_mode_override() -> Option<String> {
    static SAID: std::sync::Once = std::sync::Once::new();
    mode_override("PHOENIXFS_TEST_SECCOMP", "--seccomp", "kill", &SAID)
}

/// PHOENIXFS_TEST_SANDBOX=namespace|chroot|none runs every daemon with that `--sandbox` mode;
/// unset, daemons run with the default (namespace). Said once, as above.
pub fn sandbox_mode_override() -> Option<String> {
    static SAID: std::sync::Once = std::sync::Once::new();
    mode_override("PHOENIXFS_TEST_SANDBOX", "--sandbox", "namespace", &SAID)
}

/// The mode environment variable `var` names for `option`, if any; says which ran, once.
fn mode_override(var: &str, option: &str, default: &str, said: &std::sync::Once) -> Option<String> {
    let mode = std::env::var(var).ok().filter(|m| !m.is_empty());
    said.call_once(|| match &mode {
        Some(m) => eprintln!("phoenixfsd runs with {option} {m} ({var})"),
        None => eprintln!("phoenixfsd runs with {option} {default} (the default)"),
    });
    mode
}

/// A daemon's log file, without the terminal colours tracing puts around field names.
pub fn read_log(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let mut pieces = log.split('\x1b');
    let first = pieces.next().unwrap_or("").to_string();
    first + &pieces.map(|piece| piece.split_once('m').map_or(piece, |(_, rest)| rest)).collect::<String>()
}

/// The confinement options every test daemon gets: the modes PHOENIXFS_TEST_SECCOMP and
/// PHOENIXFS_TEST_SANDBOX name, if set (else the defaults run).
pub fn confinement_args() -> Vec<String> {
    let mut args = Vec::new();
    if let Some(mode) = seccomp_mode_override() {
        args.extend(["--seccomp".to_string(), mode]);
    }
    if let Some(mode) = sandbox_mode_override() {
        args.extend(["--sandbox".to_string(), mode]);
    }
    args
}
