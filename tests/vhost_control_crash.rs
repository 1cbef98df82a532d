//! Worker deaths around the vhost-user control channel: during the handshake, while a ring is
//! being stopped (GET_VRING_BASE), and at the worker's own step of taking a control change in
//! (`vhost.apply_control`). The supervisor serves the channel, so the frontend must see every
//! message answered exactly once and the rings resume from the region.
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
use common::frontend::Frontend;

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
