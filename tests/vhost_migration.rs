//! VM live migration over real vhost-user sockets (vhost-user DEVICE_STATE): the test frontend
//! plays QEMU's source (stop the rings, SET_DEVICE_STATE_FD(SAVE), read to EOF,
//! CHECK_DEVICE_STATE) against one phoenixfsd and QEMU's `-incoming` destination (the state
//! loaded before the rings start) against a second phoenixfsd on the same share. The guest's
//! node ids and file handles must mean the same objects on the destination, with exact lookup
//! counts, without a new INIT, and keep doing so after the destination's worker is killed.
//! Hostile device states (the frontend's bytes are untrusted) are refused, leave nothing behind,
//! and the daemon serves on.

use phoenixfsd::fuse::Op;
use phoenixfsd::fuse::abi::{self, EntryOut, OpenOut};
use phoenixfsd::fuse::encode::{Sender, encode_request};
use phoenixfsd::state::stream::{self, DeviceState, Mode, Node, Session};
use zerocopy::FromBytes;

mod common;

use common::backend::{Backend, call, init};
use common::children_of;
use common::frontend::{Frontend, FrontendOptions};

const OPTS: FrontendOptions = FrontendOptions { num_queues: 2, queue_size: 64, event_idx: false, indirect: false };

fn lookup(fe: &mut Frontend, unique: u64, parent: u64, name: &std::ffi::CStr) -> u64 {
    let (err, payload) = call(fe, 1, unique, parent, &Op::Lookup { name });
    assert_eq!(err, 0, "LOOKUP {name:?}");
    EntryOut::read_from_bytes(&payload).unwrap().nodeid
}

fn open(fe: &mut Frontend, unique: u64, node: u64, dir: bool, flags: i32) -> u64 {
    let arg = abi::OpenIn { flags: flags as u32, open_flags: 0 };
    let op = if dir { Op::Opendir(arg) } else { Op::Open(arg) };
    let (err, payload) = call(fe, 1, unique, node, &op);
    assert_eq!(err, 0, "OPEN{} {node:#x}", if dir { "DIR" } else { "" });
    OpenOut::read_from_bytes(&payload).unwrap().fh
}

fn read(fe: &mut Frontend, unique: u64, node: u64, fh: u64, size: u32) -> (i32, Vec<u8>) {
    call(fe, 1, unique, node, &Op::Read(abi::ReadIn { fh, offset: 0, size, ..Default::default() }))
}

fn getattr(fe: &mut Frontend, unique: u64, node: u64) -> i32 {
    call(fe, 1, unique, node, &Op::Getattr { fh: None }).0
}

fn forget(fe: &mut Frontend, unique: u64, node: u64, nlookup: u64) {
    let req = encode_request(Sender { unique, nodeid: node, uid: 0, gid: 0, pid: 1 }, &Op::Forget { nlookup });
    fe.request(1, &req, 0).unwrap_or_else(|e| panic!("FORGET {node:#x}: {e}"));
}

/// The names a READDIR reply lists.
fn names(payload: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 24 <= payload.len() {
        let namelen = u32::from_le_bytes(payload[at + 16..at + 20].try_into().unwrap()) as usize;
        out.push(String::from_utf8_lossy(&payload[at + 24..at + 24 + namelen]).into_owned());
        at += (24 + namelen).div_ceil(8) * 8;
    }
    out
}

/// The source side: a session with nodes (one looked up twice), an open file, an open
/// directory; its device state saved.
struct Source {
    b: Backend,
    dir: u64,
    file: u64,
    fh: u64,
    dirfh: u64,
}

fn source(args: &[&str]) -> (Source, Vec<u8>) {
    source_with_env(args, &[])
}

fn source_with_env(args: &[&str], env: &[(&str, &str)]) -> (Source, Vec<u8>) {
    let b = Backend::start_with_env(args, env);
    std::fs::create_dir(b.share.join("d")).unwrap();
    std::fs::write(b.share.join("d/f.txt"), b"hello world").unwrap();
    let mut fe = Frontend::connect_with(b.socket(), OPTS).unwrap_or_else(|e| panic!("handshake: {e}"));
    init(&mut fe);
    let dir = lookup(&mut fe, 2, abi::ROOT_ID, c"d");
    let file = lookup(&mut fe, 3, dir, c"f.txt");
    assert_eq!(lookup(&mut fe, 4, dir, c"f.txt"), file, "one node, looked up twice");
    let fh = open(&mut fe, 5, file, false, libc::O_RDWR);
    let dirfh = open(&mut fe, 6, dir, true, libc::O_RDONLY);
    let state = fe.save_state().unwrap_or_else(|e| panic!("save: {e}"));
    (Source { b, dir, file, fh, dirfh }, state)
}

#[test]
fn test_device_state_round_trip_serves_the_same_ids_and_handles() {
    for mode in ["find-paths", "file-handles"] {
        let args = [&format!("--migration-mode={mode}")[..]];
        let (src, state) = source(&args);
        let decoded = stream::decode(&state).unwrap();
        assert_eq!(decoded.nodes.len(), 2, "{mode}: d and d/f.txt");
        assert_eq!(decoded.handles.len(), 2, "{mode}: the file and the directory");
        assert!(decoded.session.init_done);
        let f = decoded.nodes.iter().find(|n| n.id == src.file).expect("the file's node");
        assert_eq!(f.lookups, 2, "{mode}: the lookup count travels");
        if mode == "find-paths" {
            assert_eq!(f.path.as_deref(), Some(&b"d/f.txt"[..]));
        } else {
            assert!(f.path.is_none() && f.handle.is_some());
        }

        let dst = Backend::start_on(&src.b.share, &args);
        let (mut fe, loaded) = Frontend::connect_loading(dst.socket(), OPTS, &[&state]).unwrap();
        assert_eq!(loaded, [true], "{mode}: CHECK_DEVICE_STATE after the load");
        // No INIT: the session came with the state. The guest's ids and handles work.
        let (err, data) = read(&mut fe, 10, src.file, src.fh, 100);
        assert_eq!((err, &data[..]), (0, &b"hello world"[..]), "{mode}: READ through the migrated fh");
        let w = abi::WriteIn { fh: src.fh, offset: 0, size: 5, ..Default::default() };
        let (err, _) = call(&mut fe, 1, 11, src.file, &Op::Write { arg: w, data: b"HELLO" });
        assert_eq!(err, 0, "{mode}: WRITE through the migrated fh (opened O_RDWR)");
        assert_eq!(std::fs::read(src.b.share.join("d/f.txt")).unwrap(), b"HELLO world");
        let ra = abi::ReadIn { fh: src.dirfh, offset: 0, size: 4096, ..Default::default() };
        let (err, listing) = call(&mut fe, 1, 12, src.dir, &Op::Readdir(ra));
        assert_eq!(err, 0);
        assert!(names(&listing).contains(&"f.txt".to_string()), "{mode}: READDIR on the migrated dir handle");
        // The key index came over: a new lookup finds the same node (count now 3).
        assert_eq!(lookup(&mut fe, 13, src.dir, c"f.txt"), src.file, "{mode}: same node id for the same object");

        // Crash recovery after a migration is recovery as usual.
        let worker = children_of(dst.pid());
        assert_eq!(worker.len(), 1, "one worker");
        // SAFETY: a plain signal to the worker this test's daemon started.
        unsafe { libc::kill(worker[0] as i32, libc::SIGKILL) };
        let (err, data) = read(&mut fe, 14, src.file, src.fh, 5);
        assert_eq!((err, &data[..]), (0, &b"HELLO"[..]), "{mode}: READ after the worker was killed");

        // Exact lookup counts: 2 migrated + 1 here; after 2 forgets the node lives, after 3 not.
        forget(&mut fe, 15, src.file, 2);
        assert_eq!(getattr(&mut fe, 16, src.file), 0, "{mode}: one lookup left");
        forget(&mut fe, 17, src.file, 1);
        assert_eq!(getattr(&mut fe, 18, src.file), -libc::ESTALE, "{mode}: forgotten");
    }
}

/// A file-handles load after the kernel dropped its cached names (memory pressure elsewhere;
/// here drop_caches, the source daemon gone and holding nothing): a file's plain handle opens
/// nameless on the destination, which then cannot check that it is beneath the share and
/// refuses the whole state. The source sends a non-directory's handle connectable (it names the
/// parent too, Linux 6.13+), which opens with its name.
#[test]
fn test_device_state_file_handles_load_after_the_kernel_dropped_its_cached_names() {
    let args = ["--migration-mode=file-handles"];
    let (mut src, state) = source(&args);
    src.b.wait_exit();
    let f = stream::decode(&state).unwrap().nodes.into_iter().find(|n| n.id == src.file).unwrap();
    const FILEID_IS_CONNECTABLE: i32 = 0x10000;
    assert_ne!(f.handle.unwrap().handle_type & FILEID_IS_CONNECTABLE, 0, "the file's handle is connectable");
    common::drop_caches();
    let dst = Backend::start_on(&src.b.share, &args);
    let (mut fe, loaded) = Frontend::connect_loading(dst.socket(), OPTS, &[&state]).unwrap();
    assert_eq!(loaded, [true], "the state loads with no cached name of the file");
    let (err, data) = read(&mut fe, 10, src.file, src.fh, 100);
    assert_eq!((err, &data[..]), (0, &b"hello world"[..]), "READ through the migrated fh");
}

#[test]
fn test_device_state_an_unlinked_open_file_migrates_by_handle_only() {
    // Open, then unlinked on the host: it has no path any more.
    let setup = |args: &[&str]| {
        let b = Backend::start(args);
        std::fs::write(b.share.join("gone.txt"), b"still here").unwrap();
        let mut fe = Frontend::connect_with(b.socket(), OPTS).unwrap();
        init(&mut fe);
        let node = lookup(&mut fe, 2, abi::ROOT_ID, c"gone.txt");
        let fh = open(&mut fe, 3, node, false, libc::O_RDONLY);
        std::fs::remove_file(b.share.join("gone.txt")).unwrap();
        (b, fe, node, fh)
    };
    // find-paths, abort (the defaults): the save fails, and the source can go on.
    let (_b, mut fe, _, _) = setup(&[]);
    assert!(fe.save_state().is_err(), "find-paths cannot locate an unlinked file: the save fails");

    // find-paths, guest-error: the node comes over unusable (EIO), its handle too (EBADF).
    let (b, mut fe, node, fh) = setup(&["--migration-on-error=guest-error"]);
    let state = fe.save_state().unwrap();
    let dst = Backend::start_on(&b.share, &["--migration-on-error=guest-error"]);
    let (mut fe2, loaded) = Frontend::connect_loading(dst.socket(), OPTS, &[&state]).unwrap();
    assert_eq!(loaded, [true]);
    assert_eq!(getattr(&mut fe2, 10, node), -libc::EIO, "the lost node fails with EIO");
    assert_eq!(read(&mut fe2, 11, node, fh, 10).0, -libc::EBADF, "its handle fails with EBADF");
    assert_eq!(getattr(&mut fe2, 12, abi::ROOT_ID), 0, "everything else serves on");

    // file-handles: the open file comes over, contents and all.
    let (b, mut fe, node, fh) = setup(&["--migration-mode=file-handles"]);
    let state = fe.save_state().unwrap();
    let dst = Backend::start_on(&b.share, &["--migration-mode=file-handles"]);
    let (mut fe2, loaded) = Frontend::connect_loading(dst.socket(), OPTS, &[&state]).unwrap();
    assert_eq!(loaded, [true]);
    let (err, data) = read(&mut fe2, 10, node, fh, 100);
    assert_eq!((err, &data[..]), (0, &b"still here"[..]), "READ of the unlinked file on the destination");
}

/// A valid-looking state (checksum right) naming `nodes`.
fn state_of(mode: Mode, nodes: Vec<Node>) -> Vec<u8> {
    let session = Session { init_done: true, negotiated: 0, kernel_flags: 0 };
    stream::encode(&DeviceState { mode, session, nodes, handles: vec![] })
}

fn node(id: u64, path: &[u8]) -> Node {
    Node { id, lookups: 1, file_type: libc::S_IFREG, path: Some(path.to_vec()), handle: None }
}

#[test]
fn test_device_state_hostile_streams_are_refused_and_leave_nothing() {
    let b = Backend::start(&[]);
    std::fs::write(b.share.join("inside.txt"), b"in").unwrap();
    let outside = b.dir.join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"secret").unwrap();
    std::os::unix::fs::symlink(&outside, b.share.join("link")).unwrap();
    std::os::unix::fs::symlink("../outside", b.share.join("rel")).unwrap();
    let good = node(2, b"inside.txt");
    let mut cut = state_of(Mode::FindPaths, vec![good.clone()]);
    cut.truncate(cut.len() - 3);
    let mut flipped = state_of(Mode::FindPaths, vec![good.clone()]);
    flipped[60] ^= 1;
    let mut huge = vec![0u8; 64];
    huge[..8].copy_from_slice(&stream::MAGIC);
    let hostile: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"not a device state at all".to_vec()),
        ("empty", Vec::new()),
        ("cut short", cut),
        ("a flipped bit", flipped),
        ("a version this build does not read", huge),
        // Decodes (the checks are the destination's): each fails on opening, after `good` (id
        // 2) was published, so the rollback is what leaves nothing.
        ("a path through an absolute symlink", state_of(Mode::FindPaths, vec![good.clone(), node(3, b"link/secret")])),
        ("a path through a relative symlink", state_of(Mode::FindPaths, vec![good.clone(), node(3, b"rel/secret")])),
        ("a path that does not exist", state_of(Mode::FindPaths, vec![good.clone(), node(3, b"missing")])),
        ("a node id beyond the table", state_of(Mode::FindPaths, vec![good.clone(), node(1 << 31, b"inside.txt")])),
        ("the wrong file type", {
            let mut n = node(3, b"inside.txt");
            n.file_type = libc::S_IFDIR;
            state_of(Mode::FindPaths, vec![good.clone(), n])
        }),
        ("a file handle in another mode", {
            let h = Node {
                path: None,
                handle: Some(phoenixfsd::sys::fhandle::FileHandle::new(1, &[0; 8])),
                ..node(3, b"")
            };
            state_of(Mode::FileHandles, vec![h])
        }),
    ];
    let states: Vec<&[u8]> = hostile.iter().map(|(_, s)| &s[..]).collect();
    let (mut fe, loaded) = Frontend::connect_loading(b.socket(), OPTS, &states).unwrap();
    for ((what, _), ok) in hostile.iter().zip(&loaded) {
        assert!(!ok, "{what}: refused (CHECK_DEVICE_STATE fails)");
    }
    // Nothing was left: no session (a request before INIT is refused), no node 2.
    assert_eq!(getattr(&mut fe, 1, abi::ROOT_ID), -libc::EIO, "no session came from a refused state");
    init(&mut fe);
    assert_eq!(getattr(&mut fe, 2, 2), -libc::ESTALE, "node 2 of a refused state is not live");
    // The daemon serves on, and the file outside was never opened.
    let n = lookup(&mut fe, 3, abi::ROOT_ID, c"inside.txt");
    assert_eq!(getattr(&mut fe, 4, n), 0);
    assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"secret");
}

/// The destination serves the migrated ids: READ through the file handle, the same node for a
/// new lookup of the same name.
fn check_destination(fe: &mut Frontend, src: &Source, what: &str) {
    let (err, data) = read(fe, 100, src.file, src.fh, 100);
    assert_eq!((err, &data[..]), (0, &b"hello world"[..]), "{what}: READ through the migrated fh");
    assert_eq!(lookup(fe, 101, src.dir, c"f.txt"), src.file, "{what}: same node for the same object");
}

fn kill_worker_and_wait(b: &Backend) {
    let old = children_of(b.pid());
    assert_eq!(old.len(), 1, "one worker");
    // SAFETY: a plain signal to the worker this test's daemon started.
    unsafe { libc::kill(old[0] as i32, libc::SIGKILL) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let now = children_of(b.pid());
        if now.len() == 1 && now != old {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "no new worker within 10 s");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn crash_transfer_at_each_marker_the_migration_completes() {
    for marker in phoenixfsd::crash::MARKERS.iter().copied().filter(|m| m.starts_with("transfer.")) {
        let tmp = tempfile::tempdir().unwrap();
        let arm = tmp.path().join("arm");
        std::fs::write(&arm, b"").unwrap();
        let env = [("PHOENIXFS_CRASH_AT", marker), ("PHOENIXFS_CRASH_ARM", arm.to_str().unwrap())];
        let on_source = marker == "transfer.saved";
        let (src, state) = source_with_env(&[], if on_source { &env[..] } else { &[] });
        let dst = Backend::start_on_with_env(&src.b.share, &[], if on_source { &[] } else { &env[..] });
        let (mut fe, loaded) = Frontend::connect_loading(dst.socket(), OPTS, &[&state]).unwrap();
        assert!(!arm.exists(), "{marker}: the crash point was reached (a worker died there)");
        assert_eq!(loaded, [true], "{marker}: the migration completed after the worker's death");
        check_destination(&mut fe, &src, marker);
    }
}

#[test]
fn crash_transfer_worker_killed_between_set_fd_and_check() {
    let (src, state) = source(&[]);
    let dst = Backend::start_on(&src.b.share, &[]);
    // The transfer memfd is the supervisor's, named in the region: the new worker's fd sweep
    // keeps it, and the frontend's writes land where the import reads them.
    let (mut fe, loaded) =
        Frontend::connect_loading_with(dst.socket(), OPTS, &[&state], &mut || kill_worker_and_wait(&dst)).unwrap();
    assert_eq!(loaded, [true], "the load completed");
    check_destination(&mut fe, &src, "worker killed mid-transfer");
}

#[test]
fn test_device_state_load_into_a_live_session_is_refused() {
    let (src, state) = source(&[]);
    let dst = Backend::start_on(&src.b.share, &[]);
    let mut fe = Frontend::connect_with(dst.socket(), OPTS).unwrap();
    init(&mut fe);
    lookup(&mut fe, 2, abi::ROOT_ID, c"d");
    // Stopped rings, then a load: the daemon refuses it (its guest has a session of its own).
    fe.save_state().unwrap_or_else(|e| panic!("a save of the destination's own session: {e}"));
    let loaded = common::frontend::load_into(&mut fe, &state).unwrap();
    assert!(!loaded, "a load into a live session is refused");
}

/// Dirty-page logging (VHOST_F_LOG_ALL, LOG_SHMFD): QEMU migrates a vhost-user device only if
/// the backend logs its writes into guest memory while the RAM is copied. Before LOG_ALL is
/// acked nothing is logged; after it, a request marks its reply's pages and the used ring's.
#[test]
fn test_dirty_log_marks_the_pages_the_backend_writes() {
    use vhost::VhostBackend;
    let b = Backend::start(&[]);
    std::fs::write(b.share.join("f"), b"f").unwrap();
    let mut fe = Frontend::connect_with(b.socket(), OPTS).unwrap();
    let bytes = common::frontend::GUEST_MEM_SIZE / 4096 / 8;
    // SAFETY: a plain memfd_create with a valid C string.
    let fd = unsafe { libc::memfd_create(c"dirty-log".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: our fd.
    assert_eq!(unsafe { libc::ftruncate(fd, bytes as i64) }, 0);
    let region = vhost::VhostUserDirtyLogRegion { mmap_size: bytes as u64, mmap_offset: 0, mmap_handle: fd };
    fe.vhost_user().set_log_base(0, Some(region)).expect("SET_LOG_BASE");
    let log = || {
        let mut buf = vec![0u8; bytes];
        // SAFETY: our fd and buffer.
        assert_eq!(unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), bytes, 0) }, bytes as isize);
        buf
    };
    let dirty = |log: &[u8], gpa: u64| log[(gpa / 4096 / 8) as usize] & (1 << ((gpa / 4096) % 8)) != 0;
    init(&mut fe);
    assert!(log().iter().all(|&b| b == 0), "nothing is logged before LOG_ALL");
    let acked = fe.acked_features | (1 << 26);
    fe.vhost_user().set_features(acked).expect("SET_FEATURES with VHOST_F_LOG_ALL");
    lookup(&mut fe, 2, abi::ROOT_ID, c"f");
    // As QEMU at the switch-over: the ring is stopped (GET_VRING_BASE returns once the queue's
    // thread finished its put, marks included) before the log's last read. Read any earlier and
    // the used element may be seen before its page is marked, which is allowed: the frontend
    // reads the log again after stopping the device.
    fe.vhost_user().get_vring_base(1).expect("GET_VRING_BASE");
    let after = log();
    let q = fe.queue(1).unwrap();
    let (used, data, data_len) = (q.used_addr().0, q.data_addr().0, q.data_len());
    let pages: Vec<u64> = (0..after.len() as u64 * 8).filter(|&p| dirty(&after, p * 4096)).collect();
    assert!(dirty(&after, used), "the used ring's page {} is logged (pages logged: {pages:?})", used / 4096);
    let data_pages = (data..data + data_len).step_by(4096).filter(|&a| dirty(&after, a)).count();
    assert!(data_pages >= 1, "the reply's page is logged");
    let total: u32 = after.iter().map(|b| b.count_ones()).sum();
    assert!(total <= 8, "only the pages written are logged ({total} bits)");
}

/// In file-handles mode a handle may name any object of the file system: one outside the share
/// (here a file beside it, on the same file system) is refused; one inside is taken.
#[test]
fn test_device_state_a_handle_outside_the_share_is_refused() {
    use phoenixfsd::sys::fhandle::name_to_handle;
    use std::os::fd::AsRawFd;
    let b = Backend::start(&["--migration-mode=file-handles"]);
    std::fs::write(b.share.join("inside.txt"), b"in").unwrap();
    std::fs::write(b.dir.join("secret"), b"secret").unwrap();
    let handle_of = |p: &std::path::Path| {
        let f = std::fs::File::open(p).unwrap();
        name_to_handle(f.as_raw_fd()).expect("name_to_handle_at").0
    };
    let by_handle = |id, p: &std::path::Path| Node {
        id,
        lookups: 1,
        file_type: libc::S_IFREG,
        path: None,
        handle: Some(handle_of(p)),
    };
    let outside = state_of(Mode::FileHandles, vec![by_handle(2, &b.dir.join("secret"))]);
    let inside = state_of(Mode::FileHandles, vec![by_handle(2, &b.share.join("inside.txt"))]);
    let (mut fe, loaded) = Frontend::connect_loading(b.socket(), OPTS, &[&outside, &inside]).unwrap();
    assert_eq!(loaded, [false, true], "the handle outside the share is refused, the one inside taken");
    assert_eq!(getattr(&mut fe, 1, 2), 0, "node 2 is the file inside");
}

/// `--migration-confirm-paths` (source) and `--migration-verify-handles` (destination): a real
/// round trip passes both; a path whose object is not the one whose handle the source sent is
/// refused with verify-handles and taken without it.
#[test]
fn test_device_state_confirm_paths_and_verify_handles() {
    use phoenixfsd::sys::fhandle::name_to_handle;
    use std::os::fd::AsRawFd;
    let (src, state) = source(&["--migration-confirm-paths"]);
    let dst = Backend::start_on(&src.b.share, &["--migration-verify-handles"]);
    let (mut fe, loaded) = Frontend::connect_loading(dst.socket(), OPTS, &[&state]).unwrap();
    assert_eq!(loaded, [true], "confirmed paths, verified handles");
    check_destination(&mut fe, &src, "confirm-paths + verify-handles");

    std::fs::write(src.b.share.join("other"), b"other").unwrap();
    let other = std::fs::File::open(src.b.share.join("other")).unwrap();
    let mut n = node(2, b"d/f.txt");
    n.handle = Some(name_to_handle(other.as_raw_fd()).unwrap().0);
    let swapped = state_of(Mode::FindPaths, vec![n]);
    for (args, want) in [(&["--migration-verify-handles"][..], false), (&[][..], true)] {
        let dst = Backend::start_on(&src.b.share, args);
        let (_fe, loaded) = Frontend::connect_loading(dst.socket(), OPTS, &[&swapped]).unwrap();
        assert_eq!(loaded, [want], "{args:?}: a path whose object has another handle");
    }
}
