//! Confinement of a live daemon (issue 12): each worker runs under its seccomp filter with
//! no_new_privs and exactly the documented capabilities; a worker that makes a forbidden system
//! call is killed, the log names the call, a new worker replays its request, and the mount
//! keeps serving.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, Mount, is_mounted, proc, require_fuse};

/// docs/design.md "Security": a worker's effective (and permitted) set, virtiofsd's default:
/// chown, dac_override, fowner, fsetid, setgid, setuid, mknod, setfcap, and dac_read_search
/// (open_by_handle_at, for --inode-file-handles).
const WORKER_CAPS: u64 = 1 << 0 | 1 << 1 | 1 << 2 | 1 << 3 | 1 << 4 | 1 << 6 | 1 << 7 | 1 << 27 | 1 << 31;
/// The supervisor's effective set: sys_admin (the unmount at the end).
const SUPERVISOR_CAPS: u64 = 1 << 21;

fn status_field(pid: i32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

fn hex(s: &str) -> u64 {
    u64::from_str_radix(s, 16).unwrap()
}

#[test]
fn test_confine_live_worker_is_filtered_and_has_the_documented_capabilities() {
    let m = Mount::new(&[]);
    // As below: a worker that has answered has confined itself.
    std::fs::write(m.path("f"), "x").unwrap();
    let sup = m.supervisor() as i32;
    let worker = proc::wait_worker(sup, None, Duration::from_secs(10)).unwrap();
    let mode = common::seccomp_mode_override().unwrap_or_else(|| "kill".into());
    let filtered = if mode == "none" { "0" } else { "2" };
    for (who, pid, eff) in [("worker", worker.pid, WORKER_CAPS), ("supervisor", sup, SUPERVISOR_CAPS)] {
        assert_eq!(status_field(pid, "Seccomp"), filtered, "{who}: Seccomp (mode {mode})");
        assert_eq!(status_field(pid, "NoNewPrivs"), "1", "{who}: NoNewPrivs");
        assert_eq!(hex(&status_field(pid, "CapEff")), eff, "{who}: CapEff");
        assert_eq!(hex(&status_field(pid, "CapInh")), 0, "{who}: CapInh");
        assert_eq!(hex(&status_field(pid, "CapAmb")), 0, "{who}: CapAmb");
    }
    // Over /dev/fuse with FUSE passthrough (`--fuse-passthrough=auto`, the default), sys_admin
    // is permitted but not effective: a thread raises it for one backing-file ioctl.
    let backing_admin = if common::Transport::from_env() == common::Transport::Fuse { SUPERVISOR_CAPS } else { 0 };
    assert_eq!(hex(&status_field(worker.pid, "CapPrm")), WORKER_CAPS | backing_admin, "worker: CapPrm");
    assert_eq!(hex(&status_field(sup, "CapPrm")), WORKER_CAPS | SUPERVISOR_CAPS, "supervisor: CapPrm");
    // The worker's filters are the zygote's and its own `WORKER` over it, not the supervisor's;
    // the zygote that clones workers is the supervisor's other child, under one filter (the
    // wider one a live upgrade's new binary starts under: docs/design.md, "Live upgrade").
    if filtered == "2" {
        assert_eq!(status_field(worker.pid, "Seccomp_filters"), "2", "worker: the zygote's filter and its own");
        assert_eq!(status_field(sup, "Seccomp_filters"), "1", "supervisor: one filter");
        let kids = std::fs::read_to_string(format!("/proc/{sup}/task/{sup}/children")).unwrap();
        let zygote: Vec<i32> = kids
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|p| proc::comm(*p as u32) == "pfs-zygote")
            .collect();
        assert_eq!(zygote.len(), 1, "one zygote among the supervisor's children {kids:?}");
        assert_eq!(status_field(zygote[0], "Seccomp"), "2", "zygote: filtered");
        assert_eq!(status_field(zygote[0], "Seccomp_filters"), "1", "zygote: its own filter only");
    }
    // Every serving thread, not only the main one, is under the filter (TSYNC, or inherited).
    for t in std::fs::read_dir(format!("/proc/{}/task", worker.pid)).unwrap() {
        let status = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap();
        assert!(status.lines().any(|l| l == format!("Seccomp:\t{filtered}")), "a worker thread without the filter");
    }
}

/// `--fuse-passthrough=never`: the worker keeps no sys_admin at all, not even permitted.
#[test]
fn test_confine_without_passthrough_no_sys_admin_permitted() {
    require_fuse();
    let m = Mount::new_on(common::Transport::Fuse, &["--fuse-passthrough=never"]);
    std::fs::write(m.path("f"), "x").unwrap();
    let sup = m.supervisor() as i32;
    let worker = proc::wait_worker(sup, None, Duration::from_secs(10)).unwrap();
    assert_eq!(hex(&status_field(worker.pid, "CapPrm")), WORKER_CAPS, "worker: CapPrm");
    assert_eq!(hex(&status_field(worker.pid, "CapEff")), WORKER_CAPS, "worker: CapEff");
}

#[test]
fn test_modcaps_changes_the_workers_capabilities() {
    let m = Mount::new(&["--modcaps=-mknod:+sys_admin"]);
    // A worker that has answered has confined itself (a fresh clone has not yet: it still runs
    // the supervisor's code, with the supervisor's capabilities, for a few microseconds).
    std::fs::write(m.path("f"), "x").unwrap();
    let sup = m.supervisor() as i32;
    let worker = proc::wait_worker(sup, None, Duration::from_secs(10)).unwrap();
    let want = (WORKER_CAPS & !(1 << 27)) | 1 << 21;
    assert_eq!(hex(&status_field(worker.pid, "CapEff")), want);
}

/// A worker that makes a system call outside its allow-list (a test hook at MKDIR's first crash
/// point) dies of it; the supervisor's log names the call; a new worker replays the MKDIR, which
/// succeeds once; the mount keeps serving.
#[test]
fn test_seccomp_kill_names_the_call_and_the_worker_is_replaced() {
    require_fuse();
    let mode = common::seccomp_mode_override();
    if mode.as_deref().is_some_and(|m| m != "kill") {
        eprintln!("skipped: the kill test needs --seccomp kill (PHOENIXFS_TEST_SECCOMP={mode:?})");
        return;
    }
    let tmp = tempfile::Builder::new().prefix("phoenixfs-test").tempdir().unwrap();
    let (share, mnt, arm, log) =
        (tmp.path().join("share"), tmp.path().join("mnt"), tmp.path().join("arm"), tmp.path().join("log"));
    std::fs::create_dir(&share).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    let mut child = Command::new(BIN)
        .args(["--shared-dir".as_ref(), share.as_os_str(), "--mountpoint".as_ref(), mnt.as_os_str()])
        .args(["--log-level", "warn", "--seccomp", "kill"])
        .env("PHOENIXFS_CRASH_AT", "mkdir.before_syscall")
        .env("PHOENIXFS_CRASH_ARM", &arm)
        .env("PHOENIXFS_CRASH_MODE", "forbidden-syscall")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !is_mounted(&mnt) {
        assert!(child.try_wait().unwrap().is_none() && Instant::now() < deadline, "phoenixfsd did not mount");
        std::thread::sleep(Duration::from_millis(10));
    }
    let sup = proc::supervisor_of(child.id()) as i32;
    let first = proc::wait_worker(sup, None, Duration::from_secs(10)).unwrap();
    std::fs::write(&arm, "").unwrap();

    std::fs::create_dir(mnt.join("d")).expect("the MKDIR is replayed by the next worker");
    assert!(!arm.exists(), "the forbidden call was made");
    let second = proc::wait_worker(sup, Some(first), Duration::from_secs(10)).unwrap();
    assert_ne!(second.pid, first.pid);
    assert!(share.join("d").is_dir());
    std::fs::write(mnt.join("d/f"), "still serving").unwrap();
    assert_eq!(std::fs::read_to_string(share.join("d/f")).unwrap(), "still serving");

    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = proc::wait_for_exit(&mut child, Duration::from_secs(20)).expect("stops");
    assert!(status.success(), "{status}");
    let log = common::read_log(&log);
    eprintln!("{log}");
    assert!(
        log.contains("worker killed by the seccomp filter: forbidden system call syslog"),
        "the supervisor's log names the call"
    );
    assert!(log.contains("killed by signal 31"), "the worker died of SIGSYS");
    assert!(log.contains("counts=true"), "a seccomp kill counts toward the crash-loop guard");
}

/// The soft and hard "Max open files" of process `pid`.
fn nofile_limits(pid: i32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let mut nums = line["Max open files".len()..].split_whitespace().map(|n| n.parse().unwrap());
    (nums.next().unwrap(), nums.next().unwrap())
}

/// `--rlimit-nofile` as virtiofsd: by default the fd limit is raised to min(1,000,000,
/// /proc/sys/fs/nr_open); `--rlimit-nofile N` sets N; the workers inherit it.
#[test]
fn test_rlimit_nofile_default_and_explicit() {
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open").unwrap().trim().parse().unwrap();
    // Beyond the hard limit it inherits only with CAP_SYS_RESOURCE (a container may withhold it).
    let me = std::process::id() as i32;
    let can_raise = hex(&status_field(me, "CapEff")) & (1 << 24) != 0;
    let default = if can_raise { nr_open.min(1_000_000) } else { nr_open.min(1_000_000).min(nofile_limits(me).1) };
    for (args, want) in [(&[][..], default), (&["--rlimit-nofile", "4096"][..], 4096)] {
        let m = Mount::new(args);
        std::fs::write(m.path("f"), "x").unwrap();
        let sup = m.supervisor() as i32;
        let worker = proc::wait_worker(sup, None, Duration::from_secs(10)).unwrap();
        for (who, pid) in [("supervisor", sup), ("worker", worker.pid)] {
            assert_eq!(nofile_limits(pid).0, want, "{who}: soft RLIMIT_NOFILE with {args:?}");
        }
    }
}
