#![allow(dead_code)] // a test-support module: not every test uses every part
//! phoenixfsd started as a vhost-user-fs backend on a temporary share and socket, and the
//! request helpers the vhost tests share (a part of tests/common).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use phoenixfsd::fuse::Op;
use phoenixfsd::fuse::abi::{self, InitIn, InitOut, OutHeader};
use phoenixfsd::fuse::encode::{Sender, encode_request};
use zerocopy::FromBytes;

use super::BIN;
use super::frontend::{Frontend, FrontendOptions};

/// A phoenixfsd serving a temporary share on a vhost-user socket (killed when dropped).
pub struct Backend {
    pub child: Child,
    pub share: PathBuf,
    pub socket: PathBuf,
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Backend {
    pub fn start(args: &[&str]) -> Backend {
        Backend::start_with_env(args, &[])
    }

    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Backend {
        Backend::start_in(None, args, env)
    }

    /// A backend serving `share` (another backend's, say: a migration's destination).
    pub fn start_on(share: &Path, args: &[&str]) -> Backend {
        Backend::start_in(Some(share), args, &[])
    }

    /// `start_on` with `env` added to the daemon's environment.
    pub fn start_on_with_env(share: &Path, args: &[&str], env: &[(&str, &str)]) -> Backend {
        Backend::start_in(Some(share), args, env)
    }

    fn start_in(on: Option<&Path>, args: &[&str], env: &[(&str, &str)]) -> Backend {
        let tmp = tempfile::Builder::new().prefix("phoenixfs-vhost").tempdir().unwrap();
        let share = match on {
            Some(s) => s.to_path_buf(),
            None => {
                let share = tmp.path().join("share");
                std::fs::create_dir(&share).unwrap();
                share
            }
        };
        let socket = tmp.path().join("vhost.sock");
        let mut cmd = Command::new(BIN);
        // As tests/common's mounts: PHOENIXFS_TEST_SECCOMP and PHOENIXFS_TEST_SANDBOX pick the
        // modes (default: kill, namespace).
        cmd.args(super::confinement_args());
        let child = cmd
            .envs(env.iter().copied())
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
        Backend { child, share, socket, dir: tmp.path().to_path_buf(), _tmp: tmp }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The supervisor's pid (the daemon's own with `--sandbox none`, else its child's).
    pub fn pid(&self) -> u32 {
        super::proc::supervisor_of(self.child.id())
    }

    /// A backend whose share holds hello.txt ("hello"), and a frontend past FUSE INIT with
    /// `queues` queues (0 = hiprio) of `size` entries.
    pub fn with_frontend(args: &[&str], queues: usize, size: u16) -> (Backend, Frontend) {
        let opts = FrontendOptions { num_queues: queues, queue_size: size, event_idx: false, indirect: false };
        Backend::with_frontend_options(args, opts)
    }

    /// `with_frontend`, the frontend set up with `opts`.
    pub fn with_frontend_options(args: &[&str], opts: FrontendOptions) -> (Backend, Frontend) {
        let b = Backend::start(args);
        std::fs::write(b.share.join("hello.txt"), b"hello").unwrap();
        let mut fe = Frontend::connect_with(b.socket(), opts).unwrap_or_else(|e| panic!("handshake: {e}"));
        init(&mut fe);
        (b, fe)
    }

    /// Waits (up to 10 s) for the daemon to exit by itself; its exit status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        wait_exit(&mut self.child)
    }
}

/// Waits (up to 10 s) for `child` to exit by itself.
pub fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    super::proc::wait_for_exit(child, Duration::from_secs(10)).expect("the daemon did not exit within 10 s")
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends one request on `queue` and checks the reply's envelope; returns (error, payload).
pub fn call(fe: &mut Frontend, queue: usize, unique: u64, nodeid: u64, op: &Op<'_>) -> (i32, Vec<u8>) {
    let req = encode_request(Sender { unique, nodeid, uid: 0, gid: 0, pid: 1 }, op);
    let reply = fe.request(queue, &req, 8192).unwrap_or_else(|e| panic!("{op:?}: {e}"));
    check_reply(op, unique, &reply)
}

/// Checks a reply's out-header (len = bytes written, our unique); returns (error, payload).
pub fn check_reply(op: &Op<'_>, unique: u64, reply: &[u8]) -> (i32, Vec<u8>) {
    let (hdr, payload) =
        OutHeader::read_from_prefix(reply).unwrap_or_else(|_| panic!("{op:?}: {}-byte reply", reply.len()));
    assert_eq!(hdr.len as usize, reply.len(), "{op:?}: header len vs used len");
    assert_eq!(hdr.unique, unique, "{op:?}: unique");
    (hdr.error, payload.to_vec())
}

/// FUSE INIT as a 7.38 guest kernel sends it, on request queue 1.
pub fn init(fe: &mut Frontend) -> InitOut {
    let flags = abi::ASYNC_READ | abi::BIG_WRITES | abi::MAX_PAGES | abi::INIT_EXT;
    let init =
        Op::Init { arg: InitIn { major: 7, minor: 38, max_readahead: 128 << 10, flags: flags as u32 }, flags2: 0 };
    let (err, payload) = call(fe, 1, 1, 0, &init);
    assert_eq!(err, 0, "INIT");
    InitOut::read_from_bytes(&payload).expect("INIT reply size")
}

/// LOOKUP hello.txt and OPEN it with `flags` (uniques 2 and 3); its node id and file handle.
pub fn open_hello(fe: &mut Frontend, flags: i32) -> (u64, u64) {
    let (err, payload) = call(fe, 1, 2, abi::ROOT_ID, &Op::Lookup { name: c"hello.txt" });
    assert_eq!(err, 0, "LOOKUP hello.txt");
    let node = abi::EntryOut::read_from_bytes(&payload).unwrap().nodeid;
    let (err, payload) = call(fe, 1, 3, node, &Op::Open(abi::OpenIn { flags: flags as u32, open_flags: 0 }));
    assert_eq!(err, 0, "OPEN hello.txt");
    (node, abi::OpenOut::read_from_bytes(&payload).unwrap().fh)
}
