//! An unprivileged daemon (issue 16, virtiofsd's `--uid-map`/`--gid-map`): phoenixfsd run as the
//! user `pfs-userns` (scripts/setup.sh; no capabilities) with `--sandbox namespace` builds its
//! sandbox in a new user namespace, whose maps are given by `--uid-map`/`--gid-map` (newuidmap,
//! /etc/subuid) or default to the user's own ids as 0. It serves vhost-user through the test
//! bridge (an unprivileged daemon cannot mount /dev/fuse; the bridge, run by the test as root,
//! mounts and carries the kernel's requests over virtqueues), and the checks are made on the
//! host: where ids land, what unmapped ids look like, that the worker is in the namespace, and
//! what the kernel refuses there.

mod common;

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};

use common::userns::test_user;
use common::{BIN, Mount, Transport, proc, sys};

fn overflow_id(kind: &str) -> u32 {
    std::fs::read_to_string(format!("/proc/sys/kernel/overflow{kind}")).unwrap().trim().parse().unwrap()
}

/// The namespace maps of process `pid`, as "inside outside count" lines.
fn map_of(pid: u32, file: &str) -> Vec<Vec<u32>> {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().map(|v| v.parse().unwrap()).collect())
        .collect()
}

fn user_ns(pid: u32) -> std::path::PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/user")).unwrap()
}

/// The worker serving `m` (after a request, so that it exists).
fn worker_of(m: &Mount) -> u32 {
    let sup = m.supervisor() as i32;
    std::fs::metadata(&m.mnt).unwrap();
    proc::wait_worker(sup, None, std::time::Duration::from_secs(10)).unwrap().pid as u32
}

/// Runs `args` as guest user `uid` (a process with that uid and gid, no groups, on the mount).
fn as_guest_user(uid: u32, args: &[&str]) -> std::process::ExitStatus {
    Command::new("setpriv")
        .args([format!("--reuid={uid}"), format!("--regid={uid}")])
        .args(["--clear-groups", "--"])
        .args(args)
        .status()
        .unwrap()
}

/// `--uid-map=:0:S:65536: --gid-map=:0:G:65536:` (S, G: the user's subordinate ranges): every
/// id the guest gives lands as S+id / G+id on the host, ids outside the map are refused, and
/// host files of ids outside it look like the overflow id. The worker is in the namespace.
#[test]
fn test_userns_ids_land_as_the_mapped_host_ids() {
    let u = test_user();
    let [uid_map, gid_map] = u.maps();
    let log = tempfile::NamedTempFile::new().unwrap();
    let args = [uid_map.as_str(), gid_map.as_str(), "--log-level", "info"];
    let mut m = Mount::new_as(&u, (u.subuid, u.subgid), Transport::VhostUser, &args, Some(log.path()));

    // The worker (and the supervisor) run in a user namespace of their own, with these maps.
    let worker = worker_of(&m);
    assert_ne!(user_ns(worker), user_ns(std::process::id()), "the worker is in a user namespace of its own");
    assert_eq!(map_of(worker, "uid_map"), [vec![0, u.subuid, u.count]]);
    assert_eq!(map_of(worker, "gid_map"), [vec![0, u.subgid, u.count]]);
    assert_eq!(map_of(m.supervisor(), "uid_map"), [vec![0, u.subuid, u.count]]);
    // The holder stays in the host's, as the user.
    assert_eq!(user_ns(m.child.id()), user_ns(std::process::id()));

    // Created by guest root: the namespace's 0, i.e. the host's subuid; seen by the guest as 0.
    std::fs::write(m.path("f"), b"x").unwrap();
    std::fs::create_dir(m.path("d")).unwrap();
    for name in ["f", "d"] {
        let host = std::fs::metadata(m.share.join(name)).unwrap();
        assert_eq!((host.uid(), host.gid()), (u.subuid, u.subgid), "{name} on the host");
        let guest = std::fs::metadata(m.path(name)).unwrap();
        assert_eq!((guest.uid(), guest.gid()), (0, 0), "{name} through the mount");
    }
    // A guest chown to N lands as subuid + N.
    std::os::unix::fs::chown(m.path("f"), Some(1234), Some(4321)).unwrap();
    let host = std::fs::metadata(m.share.join("f")).unwrap();
    assert_eq!((host.uid(), host.gid()), (u.subuid + 1234, u.subgid + 4321));
    assert_eq!(std::fs::metadata(m.path("f")).unwrap().uid(), 1234);
    // Outside the map: the kernel refuses the id (EINVAL), nothing changes.
    let e = std::os::unix::fs::chown(m.path("f"), Some(u.count + 10), None).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
    assert_eq!(std::fs::metadata(m.share.join("f")).unwrap().uid(), u.subuid + 1234);

    // A request from a non-root guest user runs as that user: created as subuid + 1000.
    std::fs::set_permissions(m.path("d"), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let by_user = m.path("d").join("by-1000");
    assert!(as_guest_user(1000, &["touch", by_user.to_str().unwrap()]).success());
    let host = std::fs::metadata(m.share.join("d/by-1000")).unwrap();
    assert_eq!((host.uid(), host.gid()), (u.subuid + 1000, u.subgid + 1000));

    // Host files of ids the namespace does not map look like the overflow ids.
    let outside = m.share.join("host-owned");
    std::fs::write(&outside, b"h").unwrap();
    std::os::unix::fs::chown(&outside, Some(4242), Some(4242)).unwrap();
    let guest = std::fs::metadata(m.path("host-owned")).unwrap();
    assert_eq!((guest.uid(), guest.gid()), (overflow_id("uid"), overflow_id("gid")));

    // Device nodes: the kernel refuses them in a user namespace; a FIFO is fine.
    let dev = sys::cs(&m.path("dev"));
    // SAFETY: a valid path.
    let r = unsafe { libc::mknod(dev.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 3)) };
    assert_eq!((r, sys::errno()), (-1, libc::EPERM), "mknod of a character device");
    assert!(!m.share.join("dev").exists());
    let fifo = sys::cs(&m.path("fifo"));
    // SAFETY: a valid path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    assert_eq!(std::fs::metadata(m.share.join("fifo")).unwrap().uid(), u.subuid);

    assert!(m.stop().success());
    let log = common::read_log(log.path());
    assert!(
        log.contains("--inode-file-handles=prefer: in a user namespace open_by_handle_at is not allowed"),
        "file handles fall back to fds, said once:\n{log}"
    );
}

/// No maps: the user's own uid and gid are the namespace's 0 (written without newuidmap, with
/// setgroups denied), so what guest root creates is the user's on the host.
#[test]
fn test_userns_without_maps_the_users_own_ids_are_root() {
    let u = test_user();
    let mut m = Mount::new_as(&u, (u.uid, u.gid), Transport::VhostUser, &[], None);
    let worker = worker_of(&m);
    assert_eq!(map_of(worker, "uid_map"), [vec![0, u.uid, 1]]);
    assert_eq!(map_of(worker, "gid_map"), [vec![0, u.gid, 1]]);
    assert_eq!(std::fs::read_to_string(format!("/proc/{worker}/setgroups")).unwrap().trim(), "deny");
    std::fs::write(m.path("f"), b"x").unwrap();
    let host = std::fs::metadata(m.share.join("f")).unwrap();
    assert_eq!((host.uid(), host.gid()), (u.uid, u.gid));
    // Only 0 is mapped: another guest user cannot be taken on (EPERM), nothing is created.
    std::fs::set_permissions(&m.mnt, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    assert!(!as_guest_user(1000, &["touch", m.path("by-1000").to_str().unwrap()]).success());
    assert!(!m.share.join("by-1000").exists());
    assert!(m.stop().success());
}

/// What cannot work unprivileged stops at start-up, naming the option and what to do; a map
/// the user was not given stops with newuidmap's reason and /etc/subuid.
#[test]
fn test_userns_refusals_name_the_option() {
    let u = test_user();
    let tmp = tempfile::Builder::new().prefix("phoenixfs-test").tempdir().unwrap();
    u.own(tmp.path());
    let share = tmp.path().join("share");
    std::fs::create_dir(&share).unwrap();
    u.own(&share);
    let sock = tmp.path().join("s.sock");
    let run = |cmd: &mut Command, args: &[&str]| {
        let out =
            cmd.arg("--shared-dir").arg(&share).args(args).stdin(Stdio::null()).stdout(Stdio::null()).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let sock_arg = format!("--socket-path={}", sock.display());
    let mnt = tmp.path().join("mnt");
    let mnt_arg = format!("--mountpoint={}", mnt.display());
    let own_map = format!("--uid-map=:0:{}:1:", u.uid);
    for (args, code, says) in [
        (vec![&sock_arg[..], "--uid-map=:0:1000:"], 2, "--uid-map"),
        (vec![&sock_arg[..], "--gid-map=0:1000:1"], 2, "--gid-map"),
        (vec![&sock_arg[..], &own_map[..], "--sandbox=none"], 2, "--uid-map with --sandbox none"),
        (vec![&sock_arg[..], &own_map[..], "--sandbox=chroot"], 2, "--uid-map with --sandbox chroot"),
        (vec![&sock_arg[..], "--uid-map=:1:1000:1:"], 2, "--uid-map: no range maps namespace id 0"),
        (vec![&mnt_arg[..]], 2, "--mountpoint: mounting a FUSE file system on the host needs CAP_SYS_ADMIN"),
        (vec![&sock_arg[..], "--inode-file-handles=mandatory"], 2, "--inode-file-handles=mandatory: "),
        (vec![&sock_arg[..], &own_map[..], "--uid-map=:1:900000:10:"], 1, "/etc/subuid"),
    ] {
        let (got, stderr) = run(&mut u.command(BIN), &args);
        assert_eq!(got, Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?} must say {says:?}:\n{stderr}");
    }
    // As root the maps are refused: its sandbox needs no user namespace.
    let (got, stderr) = run(&mut Command::new(BIN), &[&sock_arg, "--uid-map=:0:100000:65536:"]);
    assert_eq!(got, Some(2), "{stderr}");
    assert!(stderr.contains("--uid-map: the maps are for an unprivileged daemon"), "{stderr}");
}
