//! Blocking locks (SETLKW) served by the daemon (`-o posix_lock`) wait on threads of their own:
//! however many there are, the daemon keeps serving, and an application that interrupts its wait
//! gets EINTR (FUSE INTERRUPT).

mod common;

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use common::{Mount, Transport, errno, sys};

fn open_rw(p: &Path) -> i32 {
    sys::open(p, libc::O_RDWR, 0).unwrap_or_else(|e| panic!("open {p:?}: {}", errno::name(e)))
}

/// An OFD lock of type `typ` on the whole file; `wait` blocks until granted. Returns 0 or the
/// errno.
fn lock(fd: i32, typ: i32, wait: bool) -> i32 {
    let cmd = if wait { libc::F_OFD_SETLKW } else { libc::F_OFD_SETLK };
    sys::ofd(fd, cmd, typ).err().unwrap_or(0)
}

#[test]
fn test_blocking_locks_do_not_starve_the_daemon() {
    let m = Mount::new_on(Transport::Fuse, &["--thread-pool-size", "2", "-o", "posix_lock"]);
    std::fs::write(m.path("f"), "locked").unwrap();
    std::fs::write(m.path("other"), "free").unwrap();
    let holder = open_rw(&m.path("f"));
    assert_eq!(lock(holder, libc::F_WRLCK, false), 0);

    // More waiters than serving threads: with waits in the serving threads this would hang.
    let (tx, rx) = mpsc::channel();
    let waiters: Vec<_> = (0..6)
        .map(|_| {
            let (path, tx) = (m.path("f"), tx.clone());
            std::thread::spawn(move || {
                let fd = open_rw(&path);
                let r = lock(fd, libc::F_WRLCK, true);
                tx.send(r).unwrap();
                // SAFETY: closing our own fd releases the lock for the next waiter.
                unsafe { libc::close(fd) };
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let (done_tx, done_rx) = mpsc::channel();
    let other = m.path("other");
    std::thread::spawn(move || done_tx.send(std::fs::read_to_string(other).unwrap()).unwrap());
    assert_eq!(done_rx.recv_timeout(Duration::from_secs(5)).expect("the daemon still serves"), "free");
    assert!(rx.try_recv().is_err(), "no waiter got the lock while it is held");

    // SAFETY: closing our own fd drops the holder's lock; the waiters get it one by one.
    unsafe { libc::close(holder) };
    for _ in 0..6 {
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).expect("each waiter gets the lock"), 0);
    }
    waiters.into_iter().for_each(|w| w.join().unwrap());
}

#[test]
fn test_blocking_lock_interrupted_by_a_signal_gets_eintr() {
    extern "C" fn nothing(_: libc::c_int) {}
    // SAFETY: a no-op handler without SA_RESTART, so the interrupted wait returns EINTR.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = nothing as extern "C" fn(libc::c_int) as usize;
        libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut());
    }
    let m = Mount::new_on(Transport::Fuse, &["-o", "posix_lock"]);
    std::fs::write(m.path("f"), "locked").unwrap();
    let holder = open_rw(&m.path("f"));
    assert_eq!(lock(holder, libc::F_WRLCK, false), 0);
    let (tx, rx) = mpsc::channel();
    let (result_tx, result_rx) = mpsc::channel();
    let (exit_tx, exit_rx) = mpsc::channel::<()>();
    let path = m.path("f");
    let waiter = std::thread::spawn(move || {
        let fd = open_rw(&path);
        // SAFETY: pthread_self and gettid have no preconditions.
        tx.send(unsafe { (libc::pthread_self(), libc::gettid()) }).unwrap();
        result_tx.send(lock(fd, libc::F_WRLCK, true)).unwrap();
        // SAFETY: our own fd.
        unsafe { libc::close(fd) };
        // Stay alive until told, so the signals below never target a finished thread.
        let _ = exit_rx.recv();
    });
    let (thread, tid) = rx.recv().unwrap();
    // One signal, once the waiter sleeps in the kernel on its FUSE request (the kernel sends
    // one INTERRUPT per interrupted request).
    let wchan = format!("/proc/self/task/{tid}/wchan");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&wchan).unwrap_or_default().contains("request_wait_answer") {
        assert!(std::time::Instant::now() < deadline, "the waiter never slept on its FUSE request");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: the waiter thread is alive until `exit_tx` is used.
    unsafe { libc::pthread_kill(thread, libc::SIGUSR2) };
    let got = result_rx.recv_timeout(Duration::from_secs(10)).expect("the interrupted wait returns");
    assert_eq!(got, libc::EINTR);
    exit_tx.send(()).unwrap();
    waiter.join().unwrap();
    // SAFETY: our own fd.
    unsafe { libc::close(holder) };
}
