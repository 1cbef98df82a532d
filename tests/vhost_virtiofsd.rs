//! Drives the real virtiofsd (crates.io) through the test frontend and the FUSE bridge: proves
//! they speak vhost-user and split virtqueues well enough for a production backend before they
//! are pointed at phoenixfsd. Needs `virtiofsd` on PATH (or $VIRTIOFSD); fails with a hint if it
//! is missing.

use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use std::{fs, io};

use phoenixfsd::fuse::Op;
use phoenixfsd::fuse::abi::{self, AttrOut, EntryOut, InitIn, InitOut, OpenIn, OpenOut, OutHeader, ReadIn, ReleaseIn};
use phoenixfsd::fuse::encode::{Sender, encode_request};
#[path = "vhost/bridge.rs"]
mod bridge;
#[path = "vhost/frontend.rs"]
mod frontend;
#[path = "vhost/workload.rs"]
mod workload;

use bridge::{Bridge, BridgeOptions};
use frontend::{Frontend, FrontendOptions};
use zerocopy::FromBytes;

const CONTENT: &[u8] = b"hello from the host, through a virtqueue\n";
/// Queue 0 is hiprio (FORGET/INTERRUPT); ordinary requests go to the first request queue.
const REQUEST_QUEUE: usize = 1;

/// Kills virtiofsd even when an assertion fails, so a failed run leaves no daemon behind.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn virtiofsd() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("VIRTIOFSD") {
        return Some(p.into());
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([home.join(".cargo/bin")])
        .map(|d| d.join("virtiofsd"))
        .find(|p| p.is_file())
}

/// A virtiofsd serving a fresh shared directory (holding hello.txt) on a fresh socket.
struct Fixture {
    daemon: Daemon,
    shared: PathBuf,
    socket: PathBuf,
    /// Last: the daemon must be gone before its directory is removed.
    tmp: tempfile::TempDir,
}

impl Fixture {
    fn start() -> Fixture {
        Fixture::start_with(&[])
    }

    /// `start`, with `args` added to virtiofsd's.
    fn start_with(args: &[&str]) -> Fixture {
        let bin = virtiofsd().expect(
            "virtiofsd not found: this test drives the peer virtiofsd from crates.io through the test frontend; \
             run scripts/setup.sh (cargo install virtiofsd) or set VIRTIOFSD",
        );
        let tmp = tempfile::tempdir().unwrap();
        let shared = tmp.path().join("shared");
        fs::create_dir(&shared).unwrap();
        fs::write(shared.join("hello.txt"), CONTENT).unwrap();
        let socket = tmp.path().join("vfsd.sock");
        let child = Command::new(bin)
            .arg("--socket-path")
            .arg(&socket)
            .arg("--shared-dir")
            .arg(&shared)
            // No namespaces/seccomp: the test may run in a container without the privileges for
            // them, and the sandbox is not what is under test.
            .args(["--sandbox", "none", "--seccomp", "none", "--cache", "never"])
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn virtiofsd");
        let daemon = Daemon(child);
        // virtiofsd creates the socket once it is ready to accept; connecting earlier races it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "virtiofsd did not create {socket:?} within 10s");
            std::thread::sleep(Duration::from_millis(20));
        }
        Fixture { daemon, shared, socket, tmp }
    }

    /// virtiofsd serves one frontend and exits when it disconnects.
    fn assert_daemon_exits(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.daemon.0.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "virtiofsd still running 10s after the frontend disconnected");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Sends one request and checks the envelope every reply must have: a header whose `len` is
/// the number of bytes the device wrote and whose `unique` is ours. Returns (error, payload).
fn call(fe: &mut Frontend, unique: u64, nodeid: u64, op: &Op<'_>, capacity: u32) -> (i32, Vec<u8>) {
    let req = encode_request(Sender { unique, nodeid, uid: 0, gid: 0, pid: 1 }, op);
    let reply = fe.request(REQUEST_QUEUE, &req, capacity).unwrap_or_else(|e| panic!("{op:?}: {e}"));
    let (hdr, payload) =
        OutHeader::read_from_prefix(&reply).unwrap_or_else(|_| panic!("{op:?}: {}-byte reply", reply.len()));
    assert_eq!(hdr.len as usize, reply.len(), "{op:?}: header len vs used len");
    assert_eq!(hdr.unique, unique, "{op:?}: unique");
    (hdr.error, payload.to_vec())
}

fn parse<T: FromBytes>(what: &str, payload: &[u8]) -> T {
    assert_eq!(payload.len(), size_of::<T>(), "{what}: payload size");
    T::read_from_bytes(payload).unwrap()
}

#[test]
fn test_init_lookup_open_read_getattr_against_virtiofsd() {
    let fx = Fixture::start();
    let mut fe = Frontend::connect(&fx.socket, 2, 128).unwrap_or_else(|e| panic!("handshake: {e}"));
    eprintln!(
        "virtiofsd offered features {:#x}, protocol {:?}; acked {:#x}, protocol {:?}",
        fe.offered_features, fe.offered_protocol_features, fe.acked_features, fe.acked_protocol_features
    );

    // INIT, as a 7.38 kernel would send it (INIT_EXT set, so the 64-byte form).
    let flags = abi::ASYNC_READ | abi::BIG_WRITES | abi::MAX_PAGES | abi::INIT_EXT;
    let init =
        Op::Init { arg: InitIn { major: 7, minor: 38, max_readahead: 128 << 10, flags: flags as u32 }, flags2: 0 };
    let (err, payload) = call(&mut fe, 1, 0, &init, 4096);
    assert_eq!(err, 0, "INIT");
    let out: InitOut = parse("INIT", &payload);
    assert_eq!(out.major, 7);
    assert!(out.minor >= 31, "INIT minor {}", out.minor);
    assert!(out.max_write > 0);

    let name = c"hello.txt";
    let (err, payload) = call(&mut fe, 2, abi::ROOT_ID, &Op::Lookup { name }, 4096);
    assert_eq!(err, 0, "LOOKUP");
    let entry: EntryOut = parse("LOOKUP", &payload);
    assert_ne!(entry.nodeid, 0);
    assert_eq!(entry.attr.size, CONTENT.len() as u64);
    assert_eq!(entry.attr.mode & libc::S_IFMT, libc::S_IFREG);

    let missing: &CStr = c"no-such-file";
    let (err, _) = call(&mut fe, 3, abi::ROOT_ID, &Op::Lookup { name: missing }, 4096);
    assert_eq!(err, -libc::ENOENT, "LOOKUP of a missing name");

    let (err, payload) =
        call(&mut fe, 4, entry.nodeid, &Op::Open(OpenIn { flags: libc::O_RDONLY as u32, open_flags: 0 }), 4096);
    assert_eq!(err, 0, "OPEN");
    let open: OpenOut = parse("OPEN", &payload);

    // Ask for more than the file holds: the reply must be exactly the file (short read at EOF).
    let read = ReadIn { fh: open.fh, offset: 0, size: 4096, flags: libc::O_RDONLY as u32, ..Default::default() };
    let (err, payload) = call(&mut fe, 5, entry.nodeid, &Op::Read(read), 8192);
    assert_eq!(err, 0, "READ");
    assert_eq!(payload, CONTENT, "READ content");

    let (err, payload) = call(&mut fe, 6, entry.nodeid, &Op::Getattr { fh: None }, 4096);
    assert_eq!(err, 0, "GETATTR");
    let attr: AttrOut = parse("GETATTR", &payload);
    assert_eq!(attr.attr.ino, entry.attr.ino);
    assert_eq!(attr.attr.size, CONTENT.len() as u64);
    assert_eq!(attr.attr.mode, entry.attr.mode);

    let release = ReleaseIn { fh: open.fh, flags: libc::O_RDONLY as u32, ..Default::default() };
    let (err, payload) = call(&mut fe, 7, entry.nodeid, &Op::Release(release), 4096);
    assert_eq!((err, payload.len()), (0, 0), "RELEASE");
}

#[test]
fn test_event_idx_against_virtiofsd() {
    let mut fx = Fixture::start();
    let opts = FrontendOptions { num_queues: 2, queue_size: 8, event_idx: true, indirect: false };
    let mut fe = Frontend::connect_with(&fx.socket, opts).unwrap_or_else(|e| panic!("handshake: {e}"));
    assert_ne!(fe.acked_features & frontend::VIRTIO_RING_F_EVENT_IDX, 0);

    let init = Op::Init { arg: InitIn { major: 7, minor: 31, max_readahead: 0, flags: 0 }, flags2: 0 };
    assert_eq!(call(&mut fe, 1, 0, &init, 4096).0, 0, "INIT");
    // More requests than the queue has entries, so the indices wrap the ring.
    let mut nodeid = 0;
    for unique in 2..20 {
        let (err, payload) = call(&mut fe, unique, abi::ROOT_ID, &Op::Lookup { name: c"hello.txt" }, 4096);
        assert_eq!(err, 0, "LOOKUP {unique}");
        nodeid = parse::<EntryOut>("LOOKUP", &payload).nodeid;
        // The device re-arms notifications after it drains the ring; it may do so just after
        // it signalled our used buffer.
        let q = fe.queue(REQUEST_QUEUE).unwrap();
        q.wait_avail_event_armed(Duration::from_secs(2)).unwrap_or_else(|e| panic!("LOOKUP {unique}: {e}"));
    }

    // FORGET travels on hiprio as a lone device-readable descriptor and comes back with len 0.
    let forget = encode_request(Sender { unique: 20, nodeid, ..Default::default() }, &Op::Forget { nlookup: 18 });
    assert_eq!(fe.request(0, &forget, 0).unwrap(), Vec::<u8>::new(), "FORGET");

    drop(fe);
    fx.assert_daemon_exits();
}

/// Every entry under `root` as (relative path, what it is), sorted: a regular file's content,
/// a symlink's target or "dir".
fn tree(root: &Path) -> Vec<(PathBuf, String)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let what = if meta.is_dir() {
                walk(root, &path, out);
                "dir".to_string()
            } else if meta.is_symlink() {
                format!("-> {}", fs::read_link(&path).unwrap().display())
            } else {
                String::from_utf8_lossy(&fs::read(&path).unwrap()).into_owned()
            };
            out.push((path.strip_prefix(root).unwrap().to_owned(), what));
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

#[test]
fn test_bridge_runs_real_syscalls_against_virtiofsd() {
    let mut fx = Fixture::start();
    let mnt = fx.tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let bridge = Bridge::mount(&fx.socket, &mnt, 1, BridgeOptions::default()).unwrap_or_else(|e| panic!("mount: {e}"));
    let same_tree = |when: &str| assert_eq!(tree(&mnt), tree(&fx.shared), "mount vs host {when}");

    assert_eq!(fs::read(mnt.join("hello.txt")).unwrap(), CONTENT, "a file the host made");
    // Large enough for readahead's big READs (the bridge must give a READ exactly the room the
    // Linux driver gives, or virtiofsd fails it with EIO).
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    fs::write(fx.shared.join("big"), &big).unwrap();
    assert!(fs::read(mnt.join("big")).unwrap() == big, "a 3 MB file read back through the bridge");
    fs::remove_file(fx.shared.join("big")).unwrap();
    fs::write(mnt.join("new.txt"), b"written through the bridge").unwrap();
    assert_eq!(fs::read(mnt.join("new.txt")).unwrap(), b"written through the bridge");
    assert_eq!(fs::metadata(mnt.join("new.txt")).unwrap().len(), 26);
    same_tree("after create + write");

    fs::create_dir(mnt.join("dir")).unwrap();
    fs::rename(mnt.join("new.txt"), mnt.join("dir/moved.txt")).unwrap();
    assert_eq!(fs::metadata(mnt.join("new.txt")).unwrap_err().kind(), io::ErrorKind::NotFound);
    let mut names: Vec<_> = fs::read_dir(&mnt).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, ["dir", "hello.txt"]);
    assert_eq!(fs::read(fx.shared.join("dir/moved.txt")).unwrap(), b"written through the bridge");

    std::os::unix::fs::symlink("moved.txt", mnt.join("dir/link")).unwrap();
    assert_eq!(fs::read_link(mnt.join("dir/link")).unwrap(), Path::new("moved.txt"));
    assert_eq!(fs::read(mnt.join("dir/link")).unwrap(), b"written through the bridge", "through the link");

    fs::OpenOptions::new().write(true).open(mnt.join("dir/moved.txt")).unwrap().set_len(7).unwrap();
    assert_eq!(fs::metadata(mnt.join("dir/moved.txt")).unwrap().len(), 7);
    assert_eq!(fs::read(mnt.join("dir/moved.txt")).unwrap(), b"written");
    same_tree("after mkdir, rename, symlink, truncate");

    assert_eq!(fs::remove_dir(mnt.join("dir")).unwrap_err().raw_os_error(), Some(libc::ENOTEMPTY));
    fs::remove_file(mnt.join("dir/link")).unwrap();
    fs::remove_file(mnt.join("dir/moved.txt")).unwrap();
    fs::remove_dir(mnt.join("dir")).unwrap();
    same_tree("after unlink + rmdir");
    assert_eq!(tree(&fx.shared), [(PathBuf::from("hello.txt"), String::from_utf8(CONTENT.to_vec()).unwrap())]);

    assert_eq!(bridge.failures(), 0, "bridge failures (see stderr)");
    assert_eq!(bridge.unmount(), 0, "bridge failures (see stderr)");
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(mnt.to_str().unwrap()), "{mnt:?} still mounted");
    fx.assert_daemon_exits();
}

/// The bridge with 4 requests in flight on its one request queue (EVENT_IDX on), against a
/// virtiofsd that serves a queue's requests on a thread pool and so returns them in the order
/// they finish: 4 workers run a checked file workload, and the queue carried several requests
/// at once.
#[test]
fn test_bridge_several_requests_in_flight_against_virtiofsd() {
    let mut fx = Fixture::start_with(&["--thread-pool-size", "4"]);
    let mnt = fx.tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let opts = BridgeOptions { in_flight: 4, event_idx: true, ..Default::default() };
    let bridge = Bridge::mount(&fx.socket, &mnt, 1, opts).unwrap_or_else(|e| panic!("mount: {e}"));
    let queue = std::sync::Arc::clone(&bridge.queues()[0]);

    let rounds = workload::run(&mnt, 4, 20, &|| queue.peak_in_flight() >= 2);
    let peak = queue.peak_in_flight();
    eprintln!(
        "{rounds} workload rounds, at most {peak} requests in flight, {} returned out of order",
        queue.out_of_order()
    );
    assert!((2..=4).contains(&peak), "requests in flight at once on the one queue: {peak}");
    assert_eq!(tree(&fx.shared), [(PathBuf::from("hello.txt"), String::from_utf8(CONTENT.to_vec()).unwrap())]);
    assert_eq!(bridge.unmount(), 0, "bridge failures (see stderr)");
    fx.assert_daemon_exits();
}

#[test]
fn test_bridge_answers_eio_when_the_backend_dies() {
    let mut fx = Fixture::start();
    let mnt = fx.tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let opts = BridgeOptions { timeout: Duration::from_secs(1), ..Default::default() };
    let bridge = Bridge::mount(&fx.socket, &mnt, 1, opts).unwrap_or_else(|e| panic!("mount: {e}"));
    assert_eq!(fs::read(mnt.join("hello.txt")).unwrap(), CONTENT);

    fx.daemon.0.kill().unwrap();
    fx.daemon.0.wait().unwrap();
    // The request times out in the bridge, which must say so and fail the syscall, not hang it.
    let err = fs::metadata(mnt.join("hello.txt")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(bridge.failures() >= 1);

    let started = Instant::now();
    assert!(bridge.unmount() >= 1);
    assert!(started.elapsed() < Duration::from_secs(5), "unmount took {:?}", started.elapsed());
}
