//! phoenixfsd as a vhost-user-fs backend, driven by the test frontend (tests/vhost/frontend.rs)
//! over a real socket with memfd guest memory: the handshake QEMU performs, FUSE requests in
//! descriptor chains, several queues, EVENT_IDX on and off, and hostile chains.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use phoenixfsd::fuse::Op;
use phoenixfsd::fuse::abi::{self, EntryOut, InitIn, InitOut, OutHeader};
use phoenixfsd::fuse::encode::{Sender, encode_request};
use zerocopy::FromBytes;

#[path = "vhost/frontend.rs"]
mod frontend;

use frontend::Frontend;

/// A phoenixfsd serving a temporary share on a vhost-user socket.
struct Backend {
    child: Child,
    _tmp: tempfile::TempDir,
    share: PathBuf,
    socket: PathBuf,
}

impl Backend {
    fn start(args: &[&str]) -> Backend {
        let tmp = tempfile::Builder::new().prefix("phoenixfs-vhost").tempdir().unwrap();
        let share = tmp.path().join("share");
        std::fs::create_dir(&share).unwrap();
        let socket = tmp.path().join("vhost.sock");
        let child = Command::new(common::BIN)
            .arg("--shared-dir")
            .arg(&share)
            .arg("--socket-path")
            .arg(&socket)
            .args(["--log-level", "warn"])
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn phoenixfsd");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "phoenixfsd did not create {socket:?} within 10 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        Backend { child, _tmp: tmp, share, socket }
    }

    fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends one request on `queue` and checks the reply's envelope; returns (error, payload).
fn call(fe: &mut Frontend, queue: usize, unique: u64, nodeid: u64, op: &Op<'_>) -> (i32, Vec<u8>) {
    let req = encode_request(Sender { unique, nodeid, uid: 0, gid: 0, pid: 1 }, op);
    let reply = fe.request(queue, &req, 8192).unwrap_or_else(|e| panic!("{op:?}: {e}"));
    let (hdr, payload) =
        OutHeader::read_from_prefix(&reply).unwrap_or_else(|_| panic!("{op:?}: {}-byte reply", reply.len()));
    assert_eq!(hdr.len as usize, reply.len(), "{op:?}: header len vs used len");
    assert_eq!(hdr.unique, unique, "{op:?}: unique");
    (hdr.error, payload.to_vec())
}

fn init(fe: &mut Frontend) -> InitOut {
    let flags = abi::ASYNC_READ | abi::BIG_WRITES | abi::MAX_PAGES | abi::INIT_EXT;
    let init =
        Op::Init { arg: InitIn { major: 7, minor: 38, max_readahead: 128 << 10, flags: flags as u32 }, flags2: 0 };
    let (err, payload) = call(fe, 1, 1, 0, &init);
    assert_eq!(err, 0, "INIT");
    InitOut::read_from_bytes(&payload).expect("INIT reply size")
}

#[test]
fn test_handshake_and_lookup_over_the_rings() {
    let b = Backend::start(&[]);
    std::fs::write(b.share.join("hello.txt"), b"hello").unwrap();
    let mut fe = Frontend::connect(b.socket(), 3, 128).unwrap_or_else(|e| panic!("handshake: {e}"));
    let out = init(&mut fe);
    assert_eq!((out.major, out.minor), (7, abi::KERNEL_MINOR_VERSION));
    for queue in [1, 2] {
        let (err, payload) = call(&mut fe, queue, 10 + queue as u64, abi::ROOT_ID, &Op::Lookup { name: c"hello.txt" });
        assert_eq!(err, 0, "LOOKUP on queue {queue}");
        let entry = EntryOut::read_from_bytes(&payload).unwrap();
        assert_eq!(entry.attr.size, 5);
    }
    let (err, _) = call(&mut fe, 1, 20, abi::ROOT_ID, &Op::Lookup { name: c"missing" });
    assert_eq!(err, -libc::ENOENT);
}
