//! test_locks: OFD and classic POSIX record locks and flock, conflicts between open file
//! descriptions and processes.

use libc::{EAGAIN, EBADF, EINVAL, F_RDLCK, F_UNLCK, F_WRLCK, O_RDONLY, O_RDWR};

use crate::harness::*;
use crate::ops::*;

/// Locks kept by the kernel (the default, as with virtiofsd).
#[test]
fn test_locks() {
    lock_scenarios(Pair::new());
}

/// Locks served by the daemon (`-o posix_lock,flock`): OFD locks per lock owner, flock on the
/// guest file's fd.
#[test]
fn test_locks_served_by_the_daemon() {
    lock_scenarios(Pair::with_args(&["--xattr", "-o", "posix_lock,flock"]));
}

/// Retries `lock` while it fails with EAGAIN, for up to a second: what a lock released by a
/// close() needs when the daemon serves locks, since the kernel sends that RELEASE after close()
/// returns. A lock that stays taken still fails.
fn after_release<T>(lock: impl Fn() -> Res<T>) -> Res<T> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        let got = lock();
        if !matches!(got, Err(Errno(libc::EAGAIN))) || std::time::Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

fn lock_scenarios(t: Pair) {
    let (ofd_set, ofd_get) = (libc::F_OFD_SETLK, libc::F_OFD_GETLK);
    t.both("OFD locks", |r| {
        let f = r.p("lk");
        r.ok("create lk", put(&f, &[0u8; 1000], 0o644));
        let a = r.open("open fd1 O_RDWR", &f, O_RDWR, 0);
        let b = r.open("open fd2 O_RDWR", &f, O_RDWR, 0);
        r.ok("fd1 write lock 0..100", fcntl_lock(&a, ofd_set, F_WRLCK, 0, 100));
        r.err("fd2 write lock 50..60 conflicts", fcntl_lock(&b, ofd_set, F_WRLCK, 50, 10), EAGAIN);
        r.err("fd2 read lock 99..100 conflicts", fcntl_lock(&b, ofd_set, F_RDLCK, 99, 1), EAGAIN);
        r.ok("fd2 GETLK sees fd1's lock", fcntl_lock(&b, ofd_get, F_WRLCK, 50, 10));
        r.ok("fd1 GETLK: own lock is no conflict", fcntl_lock(&a, ofd_get, F_WRLCK, 0, 100));
        r.ok("fd2 write lock 200..300", fcntl_lock(&b, ofd_set, F_WRLCK, 200, 100));
        r.ok("fd1 read lock 400..500", fcntl_lock(&a, ofd_set, F_RDLCK, 400, 100));
        r.ok("fd2 read lock 400..500 shares", fcntl_lock(&b, ofd_set, F_RDLCK, 400, 100));
        r.err("fd1 upgrade to write conflicts", fcntl_lock(&a, ofd_set, F_WRLCK, 400, 100), EAGAIN);
        r.ok("fd1 unlock 0..100", fcntl_lock(&a, ofd_set, F_UNLCK, 0, 100));
        r.ok("fd2 write lock 50..60 now", fcntl_lock(&b, ofd_set, F_WRLCK, 50, 10));
        let ro = r.open("open fd3 O_RDONLY", &f, O_RDONLY, 0);
        r.err("write lock on a read-only fd", fcntl_lock(&ro, ofd_set, F_WRLCK, 0, 1), EBADF);
        r.ok("read lock on a read-only fd", fcntl_lock(&ro, ofd_set, F_RDLCK, 900, 1));
        r.close(b);
        // With locks served by the daemon: a FUSE kernel sends RELEASE after close() has
        // returned (fuse_file_release always puts the file asynchronously), so the daemon may
        // drop fd2's OFD locks a moment later than a local file system would. The outcome must
        // be the same; allow it up to a second. (Kernel-kept locks go at once.)
        r.ok("fd2 closed: fd1 write lock 0..800", after_release(|| fcntl_lock(&a, ofd_set, F_WRLCK, 0, 800)));
    });
    t.both("classic POSIX locks", |r| {
        let f = r.p("lk2");
        r.ok("create lk2", put(&f, &[0u8; 1000], 0o644));
        let a = r.open("open fd1", &f, O_RDWR, 0);
        let a2 = r.open("open fd2 (same process)", &f, O_RDWR, 0);
        let o = r.open("open fd3 (for OFD locks)", &f, O_RDWR, 0);
        r.ok("F_SETLK write 0..100 on fd1", fcntl_lock(&a, libc::F_SETLK, F_WRLCK, 0, 100));
        r.ok("same process via fd2: no conflict", fcntl_lock(&a2, libc::F_SETLK, F_WRLCK, 50, 10));
        r.err("OFD lock conflicts with it", fcntl_lock(&o, ofd_set, F_WRLCK, 0, 10), EAGAIN);
        // Only the type is compared: a FUSE kernel reports l_pid -1 to every F_OFD_GETLK
        // (locks_translate_pid looks at the *request's* OFD flag), whatever pid the daemon
        // returns for the holder; natively an OFD query of a process lock shows its pid.
        r.ok("OFD GETLK sees the process lock", fcntl_lock(&o, ofd_get, F_WRLCK, 0, 10).map(|l| l.0));
        r.as_user(&ROOT, |r| {
            let c = r.open("open lk2", &r.p("lk2"), O_RDWR, 0);
            r.err("F_SETLK write conflicts", fcntl_lock(&c, libc::F_SETLK, F_WRLCK, 10, 10), EAGAIN);
            r.err("F_SETLK read conflicts", fcntl_lock(&c, libc::F_SETLK, F_RDLCK, 99, 5), EAGAIN);
            r.ok("F_GETLK reports the parent's lock", fcntl_lock(&c, libc::F_GETLK, F_WRLCK, 10, 10));
            r.ok("F_SETLK beyond it", fcntl_lock(&c, libc::F_SETLK, F_WRLCK, 100, 10));
        });
        r.ok("unlock 0..50 on fd1", fcntl_lock(&a, libc::F_SETLK, F_UNLCK, 0, 50));
        r.as_user(&ROOT, |r| {
            let c = r.open("open lk2", &r.p("lk2"), O_RDWR, 0);
            r.ok("F_SETLK 0..50 after the unlock", fcntl_lock(&c, libc::F_SETLK, F_WRLCK, 0, 50));
            r.err("F_SETLK 50..100 still held", fcntl_lock(&c, libc::F_SETLK, F_WRLCK, 50, 50), EAGAIN);
        });
        r.close(a2);
        r.as_user(&ROOT, |r| {
            let c = r.open("open lk2", &r.p("lk2"), O_RDWR, 0);
            r.ok("closing fd2 dropped the process's locks", fcntl_lock(&c, libc::F_SETLK, F_WRLCK, 0, 1000));
        });
        r.ok("OFD lock after the drop", fcntl_lock(&o, ofd_set, F_WRLCK, 0, 10));
    });
    t.both("flock", |r| {
        let f = r.p("fl");
        r.ok("create fl", put(&f, b"f", 0o644));
        let a = r.open("open fd1", &f, O_RDWR, 0);
        let b = r.open("open fd2", &f, O_RDONLY, 0);
        let (ex, sh, nb) = (libc::LOCK_EX, libc::LOCK_SH, libc::LOCK_NB);
        r.ok("fd1 LOCK_EX|NB", flock(&a, ex | nb));
        r.err("fd2 LOCK_EX|NB conflicts", flock(&b, ex | nb), EAGAIN);
        r.err("fd2 LOCK_SH|NB conflicts", flock(&b, sh | nb), EAGAIN);
        r.ok("fd1 LOCK_EX again (same description)", flock(&a, ex | nb));
        r.ok("flock and OFD locks are independent", fcntl_lock(&b, ofd_set, F_RDLCK, 0, 1));
        r.ok("fd1 LOCK_UN", flock(&a, libc::LOCK_UN));
        r.ok("fd2 LOCK_SH|NB", flock(&b, sh | nb));
        r.ok("fd1 LOCK_SH|NB shares", flock(&a, sh | nb));
        r.err("fd1 upgrade to LOCK_EX|NB conflicts", flock(&a, ex | nb), EAGAIN);
        r.err("invalid operation", flock(&a, nb), EINVAL);
        r.close(b);
        // As for OFD locks above: flock held by the daemon goes with the asynchronous RELEASE.
        r.ok("fd2 closed: fd1 LOCK_EX|NB", after_release(|| flock(&a, ex | nb)));
        r.as_user(&ROOT, |r| {
            let c = r.open("open fl", &r.p("fl"), O_RDONLY, 0);
            r.err("another process conflicts", flock(&c, sh | nb), EAGAIN);
        });
    });
    t.finish();
}
