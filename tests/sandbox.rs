//! The sandbox (`--sandbox namespace|chroot|none`, issue 12): a live worker is inside (its root
//! is the share, its own pid, mount, network and IPC namespaces, no other mount), and a worker
//! taken over by an attacker (a test hook that tries to open host files from inside the worker)
//! reaches nothing outside the share. And the modes differ as documented: chroot is weaker,
//! none confines no path.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, is_mounted, proc, require_fuse};

/// A daemon started on a fresh share with `--sandbox mode`, its stderr in `log`.
struct Daemon {
    child: Child,
    share: PathBuf,
    mnt: PathBuf,
    log: PathBuf,
    arm: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Daemon {
    fn start(mode: &str, env: &[(&str, &str)]) -> Daemon {
        require_fuse();
        let tmp = tempfile::Builder::new().prefix("phoenixfs-test").tempdir().unwrap();
        let (share, mnt) = (tmp.path().join("share"), tmp.path().join("mnt"));
        let (log, arm) = (tmp.path().join("log"), tmp.path().join("arm"));
        std::fs::create_dir(&share).unwrap();
        std::fs::create_dir(&mnt).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["--shared-dir".as_ref(), share.as_os_str(), "--mountpoint".as_ref(), mnt.as_os_str()])
            .args(["--log-level", "warn", "--sandbox", mode])
            .args(common::seccomp_mode_override().map(|m| vec!["--seccomp".to_string(), m]).unwrap_or_default())
            .env("PHOENIXFS_CRASH_ARM", &arm)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let mut child = cmd.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !is_mounted(&mnt) {
            assert!(child.try_wait().unwrap().is_none() && Instant::now() < deadline, "phoenixfsd did not mount");
            std::thread::sleep(Duration::from_millis(10));
        }
        Daemon { child, share, mnt, log, arm, _tmp: tmp }
    }

    fn supervisor(&self) -> i32 {
        proc::supervisor_of(self.child.id()) as i32
    }

    /// Stops the daemon (SIGTERM to the process started) and returns its log, without the
    /// terminal colours tracing puts around field names.
    fn stop(mut self) -> String {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = proc::wait_for_exit(&mut self.child, Duration::from_secs(20)).expect("stops");
        assert!(status.success(), "{status}");
        assert!(!is_mounted(&self.mnt), "unmounted at the end");
        common::read_log(&self.log)
    }
}

fn ns(pid: i32, kind: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap()
}

fn status_field(pid: i32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| Some(l.strip_prefix(field)?.strip_prefix(':')?.trim().to_string())).unwrap()
}

fn same_dir(a: &Path, b: &Path) -> bool {
    let (a, b) = (std::fs::metadata(a).unwrap(), std::fs::metadata(b).unwrap());
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

/// `--sandbox namespace` (the default): the supervisor and each worker have the share as their
/// root, a pid namespace of their own (the supervisor is its init), their own mount, network and
/// IPC namespaces with no mount but the share; the daemon's first process (the holder) stays in
/// the host's. A replaced worker is born inside too.
#[test]
fn test_sandbox_namespace_worker_is_inside() {
    let d = Daemon::start("namespace", &[]);
    std::fs::write(d.mnt.join("f"), "x").unwrap();
    let (holder, sup) = (d.child.id() as i32, d.supervisor());
    assert_ne!(holder, sup, "a sandboxed supervisor is the daemon's child");
    let me = std::process::id() as i32;
    let first = proc::wait_worker(sup, None, Duration::from_secs(10)).unwrap();
    unsafe { libc::kill(first.pid, libc::SIGKILL) };
    let second = proc::wait_worker(sup, Some(first), Duration::from_secs(10)).unwrap();
    std::fs::write(d.mnt.join("g"), "served by the second worker").unwrap();
    for (who, pid) in [("supervisor", sup), ("worker", second.pid)] {
        assert!(same_dir(&PathBuf::from(format!("/proc/{pid}/root")), &d.share), "{who}: root is the share");
        for kind in ["pid_for_children", "mnt", "net", "ipc"] {
            assert_ne!(ns(pid, kind), ns(me, kind), "{who}: own {kind} namespace");
        }
        let nspid: Vec<String> = status_field(pid, "NSpid").split_whitespace().map(String::from).collect();
        assert_eq!(nspid.len(), 2, "{who}: in a pid namespace below ours: NSpid {nspid:?}");
        // Every mount it can see: the share (at its root), nothing of the host's.
        let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
        let points: Vec<&str> = mounts.lines().filter_map(|l| l.split(' ').nth(4)).collect();
        assert_eq!(points, ["/"], "{who}: sees only the share's mount");
    }
    assert_eq!(status_field(sup, "NSpid").split_whitespace().nth(1), Some("1"), "the supervisor is the init");
    assert!(same_dir(&PathBuf::from(format!("/proc/{holder}/root")), Path::new("/")), "the holder stays outside");
    assert_eq!(ns(holder, "mnt"), ns(me, "mnt"), "the holder stays in the host's mount namespace");
    assert_eq!(std::fs::read_to_string(d.share.join("g")).unwrap(), "served by the second worker");
    d.stop();
}

/// The outcome of each escape attempt a worker logged ("opened" or "refused (errno)").
fn escape_results(log: &str) -> Vec<(String, String)> {
    log.lines()
        .filter_map(|l| l.split_once("escape attempt ")?.1.split_once(": "))
        .map(|(what, got)| (what.to_string(), got.trim().to_string()))
        .collect()
}

/// A worker in the hands of an attacker (the crash-point hook `try-escape`, at MKDIR) opens
/// what it can: the host's /etc/hostname by its absolute path, by /proc/1/root, through the
/// procfs its working directory is in (pid 1's root, the status of the test process). Under
/// `--sandbox namespace` every attempt fails; with `--sandbox none` the host path opens (the
/// hook can tell); `chroot` stops the paths but, as virtiofsd's chroot, shows host processes.
#[test]
fn test_sandbox_escape_attempts_from_inside_a_worker() {
    let me = std::process::id().to_string();
    let env = [
        ("PHOENIXFS_CRASH_AT", "mkdir.before_syscall"),
        ("PHOENIXFS_CRASH_MODE", "try-escape"),
        ("PHOENIXFS_ESCAPE_PID", me.as_str()),
    ];
    for mode in ["namespace", "chroot", "none"] {
        let d = Daemon::start(mode, &env);
        std::fs::write(&d.arm, "").unwrap();
        std::fs::create_dir(d.mnt.join("dir")).expect("the MKDIR is served after the attempts");
        assert!(!d.arm.exists(), "{mode}: the hook ran (a build with --features crash-points?)");
        assert!(d.share.join("dir").is_dir());
        let log = d.stop();
        let got = escape_results(&log);
        eprintln!("--sandbox {mode}: {got:?}");
        assert_eq!(got.len(), 4, "{mode}: four attempts logged:\n{log}");
        let opened = |what: &str| got.iter().any(|(w, r)| w == what && r == "opened");
        match mode {
            "namespace" => assert!(got.iter().all(|(_, r)| r.starts_with("refused")), "{mode}: {got:?}"),
            "chroot" => {
                assert!(!opened("host-path") && !opened("host-proc-path"), "{mode}: {got:?}");
                assert!(opened("proc-host-process"), "{mode}: host processes are visible (documented): {got:?}");
            }
            _ => assert!(opened("host-path"), "{mode}: no sandbox, the host path opens: {got:?}"),
        }
    }
}

/// A symlink in the share that points at a host file outside it, operated on through the mount
/// with calls that do not follow it (lchown, lsetxattr, utimensat with AT_SYMLINK_NOFOLLOW):
/// the daemon reaches the symlink through its /proc/self/fd magic link, which must land on the
/// symlink itself, never on its target. The file outside stays as it was; the symlink changes
/// as a native one would.
#[test]
fn test_sandbox_symlink_to_outside_is_operated_on_as_itself() {
    let m = common::Mount::new(&["--xattr"]);
    let outside = m.share.parent().unwrap().join("outside-file");
    std::fs::write(&outside, "host").unwrap();
    let before = std::fs::metadata(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, m.share.join("link")).unwrap();
    let link = common::sys::cs(&m.path("link"));
    let times = [libc::timespec { tv_sec: 1_000_000, tv_nsec: 0 }; 2];
    // SAFETY: valid C strings and buffers.
    unsafe {
        assert_eq!(libc::lchown(link.as_ptr(), 4242, 4242), 0, "lchown through the mount");
        assert_eq!(
            libc::utimensat(libc::AT_FDCWD, link.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW),
            0,
            "utimensat(AT_SYMLINK_NOFOLLOW) through the mount"
        );
        // user.* xattrs are not allowed on symlinks (EPERM natively): refused, and not applied
        // to the target either.
        let r = libc::lsetxattr(link.as_ptr(), c"user.x".as_ptr(), b"1".as_ptr().cast(), 1, 0);
        assert_ne!(r, 0, "user.* xattr on a symlink");
    }
    let after = std::fs::metadata(&outside).unwrap();
    assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()), "the outside file's owner");
    assert_eq!(after.mtime(), before.mtime(), "the outside file's times");
    let mut buf = [0u8; 8];
    // SAFETY: valid C strings and buffer.
    let n = unsafe {
        libc::getxattr(common::sys::cs(&outside).as_ptr(), c"user.x".as_ptr(), buf.as_mut_ptr().cast(), buf.len())
    };
    assert!(n < 0, "no xattr landed on the outside file");
    let l = std::fs::symlink_metadata(m.share.join("link")).unwrap();
    assert_eq!((l.uid(), l.gid(), l.mtime()), (4242, 4242, 1_000_000), "the symlink itself changed");
}
