//! Shared by the integration tests: start `phoenixfsd` on a temporary share, wait until the
//! kernel shows the mount, and tear it down (SIGTERM, then a lazy unmount if it did not go).
//!
//! A mount can be served over either transport: `Transport::Fuse` (phoenixfsd mounts /dev/fuse
//! itself) or `Transport::VhostUser` (phoenixfsd listens on a vhost-user socket; the test's
//! bridge mounts /dev/fuse and carries every request the kernel sends over real virtqueues,
//! tests/vhost/bridge.rs). Either way real syscalls on `mnt` reach phoenixfsd's engine.
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

/// Request queues the bridge drives (one bridge thread each). The daemon offers at least 4.
const BRIDGE_QUEUES: usize = 4;
/// How long the bridge waits for one request: longer than any recovery, so a timeout is a bug.
const BRIDGE_TIMEOUT: Duration = Duration::from_secs(30);

pub const BIN: &str = env!("CARGO_BIN_EXE_phoenixfsd");

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
    /// A fresh share and mount point in a new temporary directory, over the transport the
    /// environment names (`Transport::from_env`).
    pub fn new(extra_args: &[&str]) -> Mount {
        Mount::new_on(Transport::from_env(), extra_args)
    }

    /// As `new`, over `transport`.
    pub fn new_on(transport: Transport, extra_args: &[&str]) -> Mount {
        let tmp = tempfile::Builder::new().prefix("phoenixfs-test").tempdir().unwrap();
        let share = tmp.path().join("share");
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir(&share).unwrap();
        std::fs::create_dir(&mnt).unwrap();
        let mut m = Mount::start_on(transport, &share, &mnt, extra_args, &[]);
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
        require_fuse();
        let socket = mnt.with_extension("vhost.sock");
        let mut cmd = Command::new(BIN);
        cmd.envs(env.iter().copied()).arg("--shared-dir").arg(share);
        match transport {
            Transport::Fuse => cmd.arg("--mountpoint").arg(mnt),
            Transport::VhostUser => cmd.arg("--socket-path").arg(&socket),
        };
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
            let opts = bridge::BridgeOptions { timeout: BRIDGE_TIMEOUT, ..Default::default() };
            let b = bridge::Bridge::mount(&socket, mnt, BRIDGE_QUEUES, opts)
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

    /// SIGTERM, and wait for a clean exit; returns the exit status. Over vhost-user the bridge
    /// is unmounted first, and a request it failed to carry fails the test here.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        if let Some(b) = self.bridge.take() {
            let failures = b.unmount();
            assert_eq!(failures, 0, "the vhost-user bridge failed {failures} requests (see stderr)");
        }
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return self.child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
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
            let c = std::ffi::CString::new(self.mnt.as_os_str().as_encoded_bytes()).unwrap();
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// The live children of `pid` (a supervisor's worker), from /proc.
pub fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The fds open in `pid`'s table, with their targets.
pub fn open_fds(pid: u32) -> Vec<(i32, String)> {
    let mut v: Vec<(i32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| {
                let e = e.ok()?;
                let fd = e.file_name().to_str()?.parse().ok()?;
                let target = std::fs::read_link(e.path()).map(|t| t.display().to_string()).unwrap_or_default();
                Some((fd, target))
            })
            .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
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

/// `open_fds` less the worker's /proc/self/fd dirfd (see `settled_fds`).
pub fn table_fds(pid: u32) -> Vec<(i32, String)> {
    open_fds(pid).into_iter().filter(|(_, t)| !(t.starts_with("/proc/") && t.ends_with("/fd"))).collect()
}
