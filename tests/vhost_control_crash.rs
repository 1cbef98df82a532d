//! Worker deaths around the vhost-user control channel: during the handshake, while a ring is
//! being stopped (GET_VRING_BASE), and at the worker's own step of taking a control change in
//! (`vhost.apply_control`). The supervisor serves the channel, so the frontend must see every
//! message answered exactly once and the rings resume from the region. And a death in the middle
//! of a chain laid out in an indirect table, whose replay reads the table again.
//!
//! Needs `--features crash-points` for the marker test (scripts/test.sh builds so).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use phoenixfsd::fuse::Op;
use phoenixfsd::fuse::abi::{self, EntryOut};

use zerocopy::FromBytes;

mod common;

use common::backend::{Backend, call, init, open_hello};
use common::children_of;
use common::frontend::{Frontend, FrontendOptions, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use phoenixfsd::fuse::encode::{Sender, encode_request};
use vm_memory::{Bytes, GuestAddress};

/// SIGKILLs the supervisor's worker every `period` until dropped; counts the kills.
struct Killer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl Killer {
    fn start(supervisor: u32, period: Duration) -> Killer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut kills = 0;
            while !flag.load(Ordering::Relaxed) {
                for pid in children_of(supervisor) {
                    // SAFETY: signals a process of ours.
                    if unsafe { libc::kill(pid as i32, libc::SIGKILL) } == 0 {
                        kills += 1;
                    }
                }
                std::thread::sleep(period);
            }
            kills
        });
        Killer { stop, thread: Some(thread) }
    }

    fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

fn lookup_hello(fe: &mut Frontend, queue: usize, unique: u64) {
    let (err, payload) = call(fe, queue, unique, abi::ROOT_ID, &Op::Lookup { name: c"hello.txt" });
    assert_eq!(err, 0, "LOOKUP on queue {queue}");
    assert_eq!(EntryOut::read_from_bytes(&payload).unwrap().attr.size, 5);
}

#[test]
fn test_handshake_and_requests_while_workers_are_killed() {
    let b = Backend::start(&[]);
    std::fs::write(b.share.join("hello.txt"), b"hello").unwrap();
    let killer = Killer::start(b.pid(), Duration::from_micros(300));
    let mut fe = Frontend::connect(b.socket(), 3, 128).unwrap_or_else(|e| panic!("handshake under kills: {e}"));
    let kills = killer.stop();
    eprintln!("{kills} workers killed during the handshake");
    assert!(kills > 0, "the killer never found a worker to kill");
    // Slower kills now, so that workers get to serve between them: every request is answered
    // once, whichever worker serves it.
    let killer = Killer::start(b.pid(), Duration::from_millis(5));
    init(&mut fe);
    let started = std::time::Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_millis(300) {
        lookup_hello(&mut fe, 1 + i % 2, 10 + i as u64);
        i += 1;
    }
    let kills = killer.stop();
    eprintln!("{i} requests answered while {kills} workers were killed");
    assert!(kills >= 10, "only {kills} kills during the requests");
}

#[test]
fn test_get_vring_base_while_workers_are_killed() {
    let (b, mut fe) = Backend::with_frontend(&[], 2, 64);
    for i in 0..100 {
        lookup_hello(&mut fe, 1, 10 + i);
    }
    let killer = Killer::start(b.pid(), Duration::from_millis(2));
    let state = vhost::VhostBackend::get_vring_base(fe.vhost_user(), 1).expect("GET_VRING_BASE");
    killer.stop();
    // INIT and 100 lookups were made available on queue 1: the next avail index is 101 (mod 2^16).
    assert_eq!(state, 101, "GET_VRING_BASE after 101 requests");
}

#[test]
fn test_crash_while_taking_a_control_change_in() {
    let tmp = tempfile::tempdir().unwrap();
    let arm = tmp.path().join("arm");
    std::fs::write(&arm, "armed").unwrap();
    let env = [("PHOENIXFS_CRASH_AT", "vhost.apply_control"), ("PHOENIXFS_CRASH_ARM", arm.to_str().unwrap())];
    let b = Backend::start_with_env(&[], &env);
    std::fs::write(b.share.join("hello.txt"), b"hello").unwrap();
    let first = children_of(b.pid());
    let mut fe = Frontend::connect(b.socket(), 3, 128).unwrap_or_else(|e| panic!("handshake: {e}"));
    init(&mut fe);
    lookup_hello(&mut fe, 1, 2);
    lookup_hello(&mut fe, 2, 3);
    assert!(!arm.exists(), "crash point vhost.apply_control never reached (built without --features crash-points?)");
    assert_ne!(children_of(b.pid()), first, "the worker that crashed was not replaced");
}

/// A guest that reboots sends a new INIT; the worker dies halfway through dropping the old
/// session (handles released, nodes not yet forgotten). The replayed INIT finishes the job:
/// nothing of the old session is left, nothing leaks, and the new session serves.
#[test]
fn test_crash_while_dropping_the_old_session() {
    let tmp = tempfile::tempdir().unwrap();
    let arm = tmp.path().join("arm");
    let env = [("PHOENIXFS_CRASH_AT", "init.reset_session"), ("PHOENIXFS_CRASH_ARM", arm.to_str().unwrap())];
    let b = Backend::start_with_env(&[], &env);
    std::fs::write(b.share.join("hello.txt"), b"hello").unwrap();
    let mut fe = Frontend::connect(b.socket(), 2, 32).unwrap_or_else(|e| panic!("handshake: {e}"));
    init(&mut fe);
    let baseline = common::open_fds(b.pid()).len();
    let (node, _) = open_hello(&mut fe, libc::O_RDONLY);
    let worker = children_of(b.pid());
    std::fs::write(&arm, "armed").unwrap();
    init(&mut fe);
    assert!(!arm.exists(), "crash point init.reset_session never reached (built without --features crash-points?)");
    assert_ne!(children_of(b.pid()), worker, "the worker that crashed was replaced");
    let (err, _) = call(&mut fe, 1, 5, node, &Op::Getattr { fh: None });
    assert_eq!(err, -libc::ESTALE, "the old session's node is gone after the replayed INIT");
    assert_eq!(common::open_fds(b.pid()).len(), baseline, "nothing of the old session is left open");
}

/// A MKDIR whose whole chain is in an indirect table, the worker killed at each of the queue's
/// steps around it: the next worker replays the head, walking the table again from guest memory
/// (the driver leaves it there until the used element), and the directory is made exactly once.
#[test]
fn test_crash_while_serving_a_chain_in_an_indirect_table() {
    for marker in ["vhost.after_pop", "vhost.before_used", "vhost.after_used_elem"] {
        let tmp = tempfile::tempdir().unwrap();
        let arm = tmp.path().join("arm");
        let opcode = (abi::Opcode::Mkdir as u32).to_string();
        let env = [
            ("PHOENIXFS_CRASH_AT", marker),
            ("PHOENIXFS_CRASH_ARM", arm.to_str().unwrap()),
            ("PHOENIXFS_CRASH_OPCODE", &opcode),
        ];
        let b = Backend::start_with_env(&[], &env);
        let opts = FrontendOptions { num_queues: 2, queue_size: 16, event_idx: false, indirect: true };
        let mut fe = Frontend::connect_with(b.socket(), opts).unwrap_or_else(|e| panic!("handshake: {e}"));
        init(&mut fe);
        let worker = children_of(b.pid());
        std::fs::write(&arm, "armed").unwrap();
        let q = fe.queue(1).unwrap();
        let (data, table) = (q.data_addr().0, GuestAddress(q.data_addr().0 + (64 << 10)));
        let mkdir = Op::Mkdir { arg: abi::MkdirIn { mode: 0o755, umask: 0 }, name: c"d" };
        let req = encode_request(Sender { unique: 9, nodeid: abi::ROOT_ID, uid: 0, gid: 0, pid: 1 }, &mkdir);
        q.mem().write_slice(&req, GuestAddress(data)).unwrap();
        q.write_table_entry(table, 0, GuestAddress(data), req.len() as u32, VRING_DESC_F_NEXT, 1).unwrap();
        q.write_table_entry(table, 1, GuestAddress(data + 4096), 16, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 2)
            .unwrap();
        q.write_table_entry(table, 2, GuestAddress(data + 4096 + 16), 4080, VRING_DESC_F_WRITE, 0).unwrap();
        q.write_descriptor(0, table, 48, VRING_DESC_F_INDIRECT, 0).unwrap();
        q.publish(0).unwrap();
        let (id, len) = q.wait_used().unwrap_or_else(|e| panic!("{marker}: {e}"));
        assert_eq!(id, 0, "{marker}");
        let mut reply = vec![0u8; len as usize];
        q.mem().read_slice(&mut reply, GuestAddress(data + 4096)).unwrap();
        assert_eq!(common::backend::check_reply(&mkdir, 9, &reply).0, 0, "{marker}: MKDIR answered once, success");
        assert!(!arm.exists(), "crash point {marker} never reached (built without --features crash-points?)");
        assert_ne!(children_of(b.pid()), worker, "{marker}: the worker that crashed was replaced");
        assert!(b.share.join("d").is_dir(), "{marker}: the directory is there");
        lookup_root_entry(&mut fe, "d");
    }
}

/// LOOKUP of `name` in the root succeeds (the queue serves after a replay).
fn lookup_root_entry(fe: &mut Frontend, name: &str) {
    let name = std::ffi::CString::new(name).unwrap();
    let (err, _) = call(fe, 1, 100, abi::ROOT_ID, &Op::Lookup { name: &name });
    assert_eq!(err, 0, "LOOKUP {name:?}");
}

/// A request laid out in its own share of a queue (`QueueHandle::lay_out_in_share`), not yet
/// published: its head, and where its reply goes.
struct Laid<'a> {
    op: Op<'a>,
    unique: u64,
    head: u16,
    reply: GuestAddress,
}

/// Shares of the test queue below: as many chains as it keeps in flight by hand.
const SHARES: usize = 4;
const REPLY_ROOM: u32 = 4096;

impl<'a> Laid<'a> {
    fn new(q: &common::frontend::QueueHandle, share: usize, unique: u64, op: Op<'a>) -> Laid<'a> {
        let req = encode_request(Sender { unique, nodeid: abi::ROOT_ID, uid: 0, gid: 0, pid: 1 }, &op);
        let (head, reply) = q.lay_out_in_share(share, SHARES, &req, REPLY_ROOM).unwrap();
        Laid { op, unique, head, reply }
    }

    /// The FUSE error of its reply, `len` bytes long (checked as `call` checks a reply).
    fn error(&self, q: &common::frontend::QueueHandle, len: u32) -> i32 {
        let reply = q.read_reply(len, self.reply, REPLY_ROOM).unwrap();
        common::backend::check_reply(&self.op, self.unique, &reply).0
    }
}

/// Several chains of ONE queue served at once (once the queue has seen slow service: a first
/// MKDIR held a few ms): two MKDIRs held (crash-point stall mode) just after their directories
/// were made, a GETATTR published with them (a driver's three callers)
/// answered meanwhile, out of order. Then either they finish, or the worker is SIGKILLed with
/// both in the middle: the next worker replays both heads, each answered once with success, each
/// directory made once.
#[test]
fn test_chains_of_one_queue_served_at_once_and_each_replayed_once() {
    for kill in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let arm = tmp.path().join("arm");
        std::fs::write(&arm, "armed").unwrap();
        let env = [
            ("PHOENIXFS_CRASH_AT", "mkdir.after_syscall"),
            ("PHOENIXFS_CRASH_ARM", arm.to_str().unwrap()),
            ("PHOENIXFS_CRASH_MODE", "stall"),
        ];
        let b = Backend::start_with_env(&["--thread-pool-size", "4"], &env);
        let opts = FrontendOptions { num_queues: 2, queue_size: 16, event_idx: false, indirect: false };
        let mut fe = Frontend::connect_with(b.socket(), opts).unwrap_or_else(|e| panic!("handshake: {e}"));
        init(&mut fe);
        let worker = children_of(b.pid());
        let q = fe.queue(1).unwrap();
        let mkdir = |name| Op::Mkdir { arg: abi::MkdirIn { mode: 0o755, umask: 0 }, name };
        // First one slow MKDIR alone (held a few ms): a queue brings in more threads only once
        // it has seen slow service; quick requests stay on one thread.
        let warm_up = Laid::new(q, 3, 9, mkdir(c"d0"));
        q.publish(warm_up.head).unwrap();
        wait_for_dirs(&b.share, &["d0"], kill);
        std::thread::sleep(Duration::from_millis(5));
        std::fs::remove_file(&arm).unwrap();
        let (id, len) = q.wait_used().unwrap_or_else(|e| panic!("kill={kill}: the first MKDIR: {e}"));
        assert_eq!(id, u32::from(warm_up.head));
        assert_eq!(warm_up.error(q, len), 0, "kill={kill}: the first MKDIR");
        std::fs::write(&arm, "armed").unwrap();

        let mkdirs = [Laid::new(q, 0, 10, mkdir(c"d1")), Laid::new(q, 1, 11, mkdir(c"d2"))];
        let getattr = Laid::new(q, 2, 12, Op::Getattr { fh: None });
        // All three at once, as a driver with three callers waiting queues them.
        q.publish_all(&[mkdirs[0].head, mkdirs[1].head, getattr.head]).unwrap();
        wait_for_dirs(&b.share, &["d1", "d2"], kill);
        let (id, len) = q.wait_used().unwrap_or_else(|e| panic!("kill={kill}: GETATTR behind two held chains: {e}"));
        assert_eq!(
            id,
            u32::from(getattr.head),
            "kill={kill}: the GETATTR is answered first, while both MKDIRs are held"
        );
        assert_eq!(getattr.error(q, len), 0, "kill={kill}: GETATTR");
        if kill {
            for pid in &worker {
                // SAFETY: signals a process of ours.
                unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
            }
        }
        std::fs::remove_file(&arm).unwrap();
        let mut answered = Vec::new();
        for _ in 0..2 {
            let (id, len) = q.wait_used().unwrap_or_else(|e| panic!("kill={kill}: a held MKDIR: {e}"));
            let i = mkdirs
                .iter()
                .position(|m| u32::from(m.head) == id)
                .unwrap_or_else(|| panic!("kill={kill}: used id {id} is neither MKDIR's head"));
            let err = mkdirs[i].error(q, len);
            assert_eq!(err, 0, "kill={kill}: MKDIR d{} answered once, with success (not EEXIST)", i + 1);
            answered.push(i);
        }
        answered.sort();
        assert_eq!(answered, [0, 1], "kill={kill}: each MKDIR answered exactly once");
        if kill {
            assert_ne!(children_of(b.pid()), worker, "the killed worker was replaced");
        }
        lookup_root_entry(&mut fe, "d1");
        lookup_root_entry(&mut fe, "d2");
        let entries: Vec<_> = std::fs::read_dir(&b.share).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(entries.len(), 3, "kill={kill}: exactly the three directories: {entries:?}");
    }
}

/// Waits (up to 10 s) until the MKDIRs of `names` were made in `share` (held at the crash point
/// just after, in the test above).
fn wait_for_dirs(share: &std::path::Path, names: &[&str], kill: bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !names.iter().all(|n| share.join(n).is_dir()) {
        assert!(
            std::time::Instant::now() < deadline,
            "kill={kill}: MKDIRs of {names:?} were not all made while held (built without --features \
             crash-points, or one chain of the queue served at a time?)"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
