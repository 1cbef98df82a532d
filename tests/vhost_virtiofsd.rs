//! Drives the real virtiofsd (crates.io) through the test frontend: proves the frontend speaks
//! vhost-user and split virtqueues well enough for a production backend before it is pointed at
//! phoenixfsd. Needs `virtiofsd` on PATH (or $VIRTIOFSD); skips loudly if it is missing.

use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use phoenixfsd::fuse::Op;
use phoenixfsd::fuse::abi::{self, AttrOut, EntryOut, InitIn, InitOut, OpenIn, OpenOut, OutHeader, ReadIn, ReleaseIn};
use phoenixfsd::fuse::encode::{Sender, encode_request};
#[path = "vhost/frontend.rs"]
mod frontend;

use frontend::Frontend;
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

fn start_virtiofsd(bin: &Path, socket: &Path, shared: &Path) -> Daemon {
    let child = Command::new(bin)
        .arg("--socket-path")
        .arg(socket)
        .arg("--shared-dir")
        .arg(shared)
        // No namespaces/seccomp: the test may run in a container without the privileges for
        // them, and the sandbox is not what is under test.
        .args(["--sandbox", "none", "--seccomp", "none", "--cache", "never"])
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
    daemon
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
    let bin = virtiofsd().expect(
        "virtiofsd not found: this test drives the peer virtiofsd from crates.io through the test frontend; \
         run scripts/setup.sh (cargo install virtiofsd) or set VIRTIOFSD",
    );
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("hello.txt"), CONTENT).unwrap();
    let socket = tmp.path().join("vfsd.sock");
    let _daemon = start_virtiofsd(&bin, &socket, &shared);

    let mut fe = Frontend::connect(&socket, 2, 128).unwrap_or_else(|e| panic!("handshake: {e}"));
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
