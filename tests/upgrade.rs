//! Live upgrade (`phoenixfsd ctl upgrade`, src/upgrade.rs): a new binary takes a running daemon
//! over — over /dev/fuse and vhost-user, under the default sandbox and seccomp (or what
//! PHOENIXFS_TEST_SANDBOX/SECCOMP pick) — and every refusal leaves the old one serving,
//! untouched: a missing binary, one that is not an ELF, one for another architecture, one that
//! cannot be executed, a state region with a corrupt header or an unknown layout version. And
//! across layout versions: a rollback to the last build of the previous layout
//! (scripts/build-previous.sh) and back, and its refusal while that build could not serve an
//! open file (FUSE passthrough). (The upgrades under the random-kill soak workload are in tests/soak.rs.)

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::ctl::{ctl, json_num};
use common::{BIN, Mount, Transport, proc, wait_for_socket};
use phoenixfsd::state::region::LAYOUT_VERSION;

/// A copy of the daemon's binary at `dir/name` (a "new build" on disk: its own file).
fn copy_binary(dir: &Path, name: &str) -> PathBuf {
    copy_build(Path::new(BIN), dir, name)
}

/// A copy of the build at `from` at `dir/name`.
fn copy_build(from: &Path, dir: &Path, name: &str) -> PathBuf {
    let to = dir.join(name);
    std::fs::copy(from, &to).unwrap();
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
    to
}

/// The only worker of supervisor `sup` (waits for it).
fn worker_of(sup: u32) -> u32 {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let workers: Vec<u32> = proc::children_of(sup).into_iter().filter(|c| proc::comm(*c) == "pfs-worker").collect();
        if let [w] = workers[..] {
            return w;
        }
        assert!(std::time::Instant::now() < deadline, "supervisor {sup} has workers {workers:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

struct Daemon {
    m: Mount,
    ctl: PathBuf,
    dir: tempfile::TempDir,
}

fn start(transport: Transport) -> Daemon {
    start_with(transport, true)
}

/// `start`; over /dev/fuse with FUSE passthrough as the default has it, or without.
fn start_with(transport: Transport, passthrough: bool) -> Daemon {
    let dir = tempfile::Builder::new().prefix("phoenixfs-upgrade").tempdir().unwrap();
    let ctl = dir.path().join("ctl");
    let args = ["--xattr", "--control-socket", ctl.to_str().unwrap()];
    let m = match transport {
        // A rollback to the previous layout's build, which has no FUSE passthrough, is refused
        // while an open file uses a backing id (state/convert.rs): such a daemon runs without
        // passthrough (through the environment: the older build would refuse the option).
        Transport::Fuse if !passthrough => {
            Mount::new_on_with_env(transport, &args, &[("PHOENIXFSD_FUSE_PASSTHROUGH", "never")])
        }
        _ => Mount::new_on(transport, &args),
    };
    wait_for_socket(&ctl);
    Daemon { m, ctl, dir }
}

/// Upgrades twice (to two binaries on disk: the first `first` — a build and its layout version —
/// if given) while a file stays open; the open file reads and writes on, the tree is whole, each
/// upgrade brings a new supervisor and worker with their own filters and the region in the new
/// build's layout, and the daemon stops cleanly at the end.
fn upgrade_keeps_serving(transport: Transport, first: Option<(&Path, u32)>) {
    // The previous layout's build has no FUSE passthrough: it takes over only while no open
    // file uses it (`test_upgrade_rollback_refused_while_a_file_is_open_in_passthrough`).
    let mut d = start_with(transport, first.is_none());
    let a = copy_build(first.map_or(Path::new(BIN), |(p, _)| p), d.dir.path(), "phoenixfsd-a");
    let b = copy_binary(d.dir.path(), "phoenixfsd-b");
    let layouts = [first.map_or(LAYOUT_VERSION, |(_, l)| l), LAYOUT_VERSION];
    for i in 0..50 {
        std::fs::write(d.m.path(&format!("f{i}")), format!("file {i}")).unwrap();
    }
    let mut open =
        std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(d.m.path("open")).unwrap();
    open.write_all(b"before ").unwrap();
    let mut supervisors = vec![d.m.supervisor()];
    for (n, binary) in [&a, &b].into_iter().enumerate() {
        let (code, out, err) = ctl(&d.ctl, &["upgrade", "--binary", binary.to_str().unwrap()]);
        assert_eq!(code, 0, "upgrade {}: {out}{err}", n + 1);
        assert!(out.starts_with("ok: upgraded to"), "upgrade {}: {out}", n + 1);
        let sup = d.m.supervisor();
        assert!(!supervisors.contains(&sup), "upgrade {}: the supervisor is still {sup}", n + 1);
        supervisors.push(sup);
        // The new worker is confined as any: the zygote's filter and its own on top.
        let w = worker_of(sup);
        let status = std::fs::read_to_string(format!("/proc/{w}/status")).unwrap();
        if common::seccomp_mode_override().is_none() {
            assert!(status.contains("Seccomp:\t2"), "the new worker {w} has no seccomp filter:\n{status}");
        }
        let (_, json, _) = ctl(&d.ctl, &["status", "--json"]);
        assert_eq!(json_num(&json, "layout_version"), u64::from(layouts[n]), "upgrade {}: {json}", n + 1);
        open.write_all(format!("after{} ", n + 1).as_bytes()).unwrap();
        std::fs::write(d.m.path(&format!("new{n}")), b"made after an upgrade").unwrap();
    }
    // The keeper: the first supervisor stays and holds the daemon's place.
    let keepers = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| *p == supervisors[0] && proc::comm(*p) == "pfs-keeper")
        .count();
    assert_eq!(keepers, 1, "the first supervisor {} is not the keeper", supervisors[0]);
    open.seek(SeekFrom::Start(0)).unwrap();
    let mut content = String::new();
    open.read_to_string(&mut content).unwrap();
    assert_eq!(content, "before after1 after2 ");
    assert_eq!(std::fs::read(d.m.share.join("open")).unwrap(), b"before after1 after2 ");
    for i in 0..50 {
        assert_eq!(std::fs::read_to_string(d.m.path(&format!("f{i}"))).unwrap(), format!("file {i}"));
    }
    assert_eq!(std::fs::read(d.m.share.join("new1")).unwrap(), b"made after an upgrade");
    let (code, json, err) = ctl(&d.ctl, &["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json_num(&json, "live_upgrades"), 2, "{json}");
    assert_eq!(json_num(&json, "worker_restarts"), 0, "an upgrade is not a worker death: {json}");
    drop(open);
    let status = d.m.stop();
    assert!(status.success(), "phoenixfsd after two upgrades did not exit 0 on SIGTERM: {status}");
    assert!(!common::is_mounted(&d.m.mnt) || transport == Transport::VhostUser);
}

#[test]
fn test_upgrade_keeps_serving_fuse() {
    upgrade_keeps_serving(Transport::Fuse, None);
}

#[test]
fn test_upgrade_keeps_serving_vhost_user() {
    upgrade_keeps_serving(Transport::VhostUser, None);
}

/// A rollback to the build of the previous layout (scripts/build-previous.sh) and back: this
/// build's supervisor converts the region down for it, and back up when it returns.
#[test]
fn test_upgrade_to_the_previous_layout_and_back_fuse() {
    upgrade_keeps_serving(Transport::Fuse, Some((&common::previous_layout_bin(), LAYOUT_VERSION - 1)));
}

#[test]
fn test_upgrade_to_the_previous_layout_and_back_vhost_user() {
    upgrade_keeps_serving(Transport::VhostUser, Some((&common::previous_layout_bin(), LAYOUT_VERSION - 1)));
}

/// A rollback to the previous layout's build, which knows no FUSE passthrough, while a file is
/// open in passthrough: refused (that build's opens of the node would fail with EIO), the
/// region back in this build's layout, the same supervisor serving; once the file is closed the
/// rollback goes through, and the upgrade back too.
#[test]
fn test_upgrade_rollback_refused_while_a_file_is_open_in_passthrough() {
    let mut d = start_with(Transport::Fuse, true);
    let mut open =
        std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(d.m.path("f")).unwrap();
    open.write_all(b"data").unwrap();
    let sup = d.m.supervisor();
    let previous = copy_build(&common::previous_layout_bin(), d.dir.path(), "phoenixfsd-previous");
    let (code, out, err) = ctl(&d.ctl, &["upgrade", "--binary", previous.to_str().unwrap()]);
    assert_eq!(code, 1, "the previous layout's build took a file open in passthrough: {out}{err}");
    assert!(err.contains("passthrough backing ids") && err.contains("serves on"), "{err}");
    assert_eq!(d.m.supervisor(), sup, "the supervisor changed");
    let (_, json, _) = ctl(&d.ctl, &["status", "--json"]);
    assert_eq!(json_num(&json, "layout_version"), u64::from(LAYOUT_VERSION), "{json}");
    open.write_all(b" more").unwrap();
    drop(open);
    // The kernel sends RELEASE after close returns: wait until the daemon has no open handle.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while json_num(&ctl(&d.ctl, &["status", "--json"]).1, "open_handles") != 0 {
        assert!(std::time::Instant::now() < deadline, "the file's handle was never released");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, out, err) = ctl(&d.ctl, &["upgrade", "--binary", previous.to_str().unwrap()]);
    assert_eq!(code, 0, "with the file closed: {out}{err}");
    let (_, json, _) = ctl(&d.ctl, &["status", "--json"]);
    assert_eq!(json_num(&json, "layout_version"), u64::from(LAYOUT_VERSION - 1), "{json}");
    let good = copy_binary(d.dir.path(), "phoenixfsd-good");
    let (code, out, err) = ctl(&d.ctl, &["upgrade", "--binary", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(std::fs::read(d.m.path("f")).unwrap(), b"data more");
    assert!(d.m.stop().success());
}

/// A rollback to the previous layout's build, which never offered VIRTIO_RING_F_INDIRECT_DESC,
/// while the frontend acked it: refused (that build's replay of the negotiation refuses a feature
/// it did not offer, so it never serves a guest that may hand it indirect tables), the region back
/// in this build's layout, the same supervisor serving, tables included. (A frontend that did
/// not ack it is rolled back: `test_upgrade_to_the_previous_layout_and_back_vhost_user`.)
#[test]
fn test_upgrade_rollback_refused_while_indirect_desc_is_acked() {
    use common::backend::{Backend, check_reply, init};
    use common::frontend::{Frontend, FrontendOptions, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use phoenixfsd::fuse::Op;
    use phoenixfsd::fuse::encode::{Sender, encode_request};
    use vm_memory::{Bytes, GuestAddress};

    let dir = tempfile::Builder::new().prefix("phoenixfs-upgrade").tempdir().unwrap();
    let ctl_path = dir.path().join("ctl");
    let b = Backend::start(&["--control-socket", ctl_path.to_str().unwrap()]);
    std::fs::write(b.share.join("hello.txt"), b"hello").unwrap();
    wait_for_socket(&ctl_path);
    let opts = FrontendOptions { num_queues: 2, queue_size: 16, event_idx: false, indirect: true };
    let mut fe = Frontend::connect_with(b.socket(), opts).unwrap_or_else(|e| panic!("handshake: {e}"));
    init(&mut fe);
    // A LOOKUP whose whole chain is in an indirect table.
    let mut lookup_through_a_table = |unique: u64| {
        let q = fe.queue(1).unwrap();
        let (data, table) = (q.data_addr().0, GuestAddress(q.data_addr().0 + (64 << 10)));
        let op = Op::Lookup { name: c"hello.txt" };
        let req =
            encode_request(Sender { unique, nodeid: phoenixfsd::fuse::abi::ROOT_ID, uid: 0, gid: 0, pid: 1 }, &op);
        q.mem().write_slice(&req, GuestAddress(data)).unwrap();
        q.write_table_entry(table, 0, GuestAddress(data), req.len() as u32, VRING_DESC_F_NEXT, 1).unwrap();
        q.write_table_entry(table, 1, GuestAddress(data + 4096), 4096, VRING_DESC_F_WRITE, 0).unwrap();
        q.write_descriptor(0, table, 32, VRING_DESC_F_INDIRECT, 0).unwrap();
        q.publish(0).unwrap();
        let (id, len) = q.wait_used().unwrap();
        assert_eq!(id, 0);
        let mut reply = vec![0u8; len as usize];
        q.mem().read_slice(&mut reply, GuestAddress(data + 4096)).unwrap();
        check_reply(&op, unique, &reply).0
    };
    assert_eq!(lookup_through_a_table(10), 0, "before the rollback");
    let sup = b.pid();
    let previous = copy_build(&common::previous_layout_bin(), dir.path(), "phoenixfsd-previous");
    let (code, out, err) = ctl(&ctl_path, &["upgrade", "--binary", previous.to_str().unwrap()]);
    assert_eq!(code, 1, "the previous layout's build took a connection that acked INDIRECT_DESC: {out}{err}");
    assert!(err.contains("not offered") && err.contains("serves on"), "{err}");
    assert_eq!(b.pid(), sup, "the supervisor changed");
    let (_, json, _) = ctl(&ctl_path, &["status", "--json"]);
    assert_eq!(json_num(&json, "layout_version"), u64::from(LAYOUT_VERSION), "{json}");
    assert_eq!(json_num(&json, "live_upgrades"), 0, "{json}");
    assert_eq!(lookup_through_a_table(11), 0, "after the refused rollback");
}

/// The state region's memfd as the supervisor holds it (writable: to corrupt its header).
fn region_memfd(sup: u32) -> std::fs::File {
    for e in std::fs::read_dir(format!("/proc/{sup}/fd")).unwrap().flatten() {
        if std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().contains("memfd:phoenixfs-state")) {
            return std::fs::OpenOptions::new().read(true).write(true).open(e.path()).unwrap();
        }
    }
    panic!("supervisor {sup} holds no state memfd");
}

/// Each refusal: the message says why, the daemon serves on with the same supervisor and counts
/// no upgrade. What the supervisor refuses itself (no binary, not an ELF for this machine) stops
/// nothing; what the new binary refuses, it refuses after the worker was stopped (its copy of the
/// fd table must be taken from a quiet table), so a new worker serves — as after any crash.
#[test]
fn test_upgrade_refusals_leave_the_daemon_serving() {
    let mut d = start(Transport::Fuse);
    std::fs::write(d.m.path("f"), b"data").unwrap();
    let sup = d.m.supervisor();
    let worker = worker_of(sup);
    let dir = d.dir.path().to_path_buf();

    let text = dir.join("not-elf");
    std::fs::write(&text, "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(&text, std::fs::Permissions::from_mode(0o755)).unwrap();
    let arm = copy_binary(&dir, "phoenixfsd-aarch64");
    // e_machine (offset 18): EM_AARCH64.
    std::fs::OpenOptions::new().write(true).open(&arm).unwrap().write_all_at(&183u16.to_le_bytes(), 18).unwrap();
    let noexec = copy_binary(&dir, "phoenixfsd-noexec");
    std::fs::set_permissions(&noexec, std::fs::Permissions::from_mode(0o644)).unwrap();
    let good = copy_binary(&dir, "phoenixfsd-good");

    let region = region_memfd(sup);
    let mut magic = [0u8; 8];
    region.read_exact_at(&mut magic, 0).unwrap();
    let mut layout = [0u8; 4];
    region.read_exact_at(&mut layout, 8).unwrap();

    // What, the binary, bytes written into the region's header at an offset first, the reason,
    // whether the worker was stopped.
    type Case = (&'static str, PathBuf, Option<(u64, Vec<u8>)>, &'static str, bool);
    let cases: Vec<Case> = vec![
        ("missing binary", dir.join("no-such-binary"), None, "cannot open the new binary", false),
        ("not an ELF", text.clone(), None, "not an ELF executable", false),
        ("another architecture", arm.clone(), None, "another architecture", false),
        ("not executable", noexec.clone(), None, "cannot run the new binary", true),
        ("corrupt header", good.clone(), Some((0, b"garbage!".to_vec())), "bad magic", true),
        ("unknown layout version", good.clone(), Some((8, 99u32.to_le_bytes().to_vec())), "layout version 99", true),
    ];
    let mut worker = worker;
    for (what, binary, corrupt, why, stops_worker) in cases {
        if let Some((offset, bytes)) = &corrupt {
            region.write_all_at(bytes, *offset).unwrap();
        }
        let (code, out, err) = ctl(&d.ctl, &["upgrade", "--binary", binary.to_str().unwrap()]);
        if corrupt.is_some() {
            region.write_all_at(&magic, 0).unwrap();
            region.write_all_at(&layout, 8).unwrap();
        }
        assert_eq!(code, 1, "{what}: ctl exit code (stdout {out:?}, stderr {err:?})");
        assert!(err.contains(why), "{what}: the message does not say {why:?}: {err}");
        assert!(what == "missing binary" || err.contains("serves on"), "{what}: {err}");
        assert_eq!(d.m.supervisor(), sup, "{what}: the supervisor changed");
        let now = worker_of(sup);
        assert_eq!(now != worker, stops_worker, "{what}: worker {worker} then {now}");
        worker = now;
        assert_eq!(std::fs::read(d.m.path("f")).unwrap(), b"data", "{what}: the mount does not serve");
        std::fs::write(d.m.path(&format!("after {what}")), what).unwrap();
    }
    let (_, json, _) = ctl(&d.ctl, &["status", "--json"]);
    assert_eq!(json_num(&json, "live_upgrades"), 0, "{json}");
    // And a good binary still upgrades after all that.
    let (code, out, err) = ctl(&d.ctl, &["upgrade", "--binary", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(std::fs::read(d.m.path("after corrupt header")).unwrap(), b"corrupt header");
    assert!(d.m.stop().success());
}

/// `ctl upgrade` against a daemon with `--recovery off` (no zygote, no worker to hand over):
/// refused by name.
#[test]
fn test_upgrade_needs_recovery() {
    let dir = tempfile::Builder::new().prefix("phoenixfs-upgrade").tempdir().unwrap();
    let ctl_path = dir.path().join("ctl");
    let mut m = Mount::new_on(Transport::Fuse, &["--recovery", "off", "--control-socket", ctl_path.to_str().unwrap()]);
    wait_for_socket(&ctl_path);
    let binary = copy_binary(dir.path(), "phoenixfsd-new");
    let (code, _, err) = ctl(&ctl_path, &["upgrade", "--binary", binary.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("--recovery on"), "{err}");
    assert!(m.stop().success());
}

/// The new binary dies (SIGKILL, crash point `upgrade.before_ready`) while it takes over: the
/// upgrade is refused, a new worker of the old binary serves on (with everything the killed
/// worker had), and the next upgrade succeeds. `--sandbox none`: the crash point's arm file must
/// be reachable by path from the new binary, which starts inside the sandbox otherwise.
#[test]
fn test_upgrade_new_binary_crash_is_survived() {
    common::require_fuse();
    let tmp = tempfile::Builder::new().prefix("phoenixfs-upgrade").tempdir().unwrap();
    let (share, mnt, ctl_path, arm) =
        (tmp.path().join("share"), tmp.path().join("mnt"), tmp.path().join("ctl"), tmp.path().join("arm"));
    std::fs::create_dir(&share).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    let mut child = Command::new(BIN)
        .args(["--shared-dir".as_ref(), share.as_os_str(), "--mountpoint".as_ref(), mnt.as_os_str()])
        .args(["--control-socket".as_ref(), ctl_path.as_os_str()])
        .args(["--log-level", "warn", "--sandbox", "none"])
        .args(common::seccomp_mode_override().map(|m| vec!["--seccomp".to_string(), m]).unwrap_or_default())
        .env("PHOENIXFS_CRASH_AT", "upgrade.before_ready")
        .env("PHOENIXFS_CRASH_ARM", &arm)
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !common::is_mounted(&mnt) {
        assert!(child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline, "not mounted");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut open =
        std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(mnt.join("f")).unwrap();
    open.write_all(b"one ").unwrap();
    let sup = proc::supervisor_of(child.id());
    let binary = copy_binary(tmp.path(), "phoenixfsd-new");
    std::fs::write(&arm, b"").unwrap();
    let (code, out, err) = ctl(&ctl_path, &["upgrade", "--binary", binary.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("killed by signal 9"), "{err}");
    assert!(!arm.exists(), "the crash point did not fire");
    assert_eq!(proc::supervisor_of(child.id()), sup);
    open.write_all(b"two ").unwrap();
    let (code, out, err) = ctl(&ctl_path, &["upgrade", "--binary", binary.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    open.write_all(b"three").unwrap();
    open.seek(SeekFrom::Start(0)).unwrap();
    let mut content = String::new();
    open.read_to_string(&mut content).unwrap();
    assert_eq!(content, "one two three");
    drop(open);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = proc::wait_for_exit(&mut child, Duration::from_secs(20)).expect("stops");
    assert!(status.success(), "{status}");
    assert!(!common::is_mounted(&mnt), "unmounted at the end (by the upgraded supervisor)");
}
