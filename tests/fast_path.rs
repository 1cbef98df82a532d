//! The requests the kernel sends on the write path, counted, and the cache options that change
//! them, checked for correctness: the benchmark (scripts/bench.sh, docs/benchmarks.md) says what
//! they cost; these tests say what they are.
//!
//! Counting goes through the vhost-user test bridge (tests/vhost/bridge.rs), which sees every
//! request the kernel sends: the host kernel plays the guest's, with the flags phoenixfsd
//! agreed at INIT, so the counts are those a virtio-fs guest or a /dev/fuse mount would cause.

mod common;

use std::os::unix::fs::FileExt;

use common::{Mount, Transport};
use phoenixfsd::fuse::abi::Opcode;

const WRITES: usize = 200;

/// GETXATTR requests the kernel sends for `WRITES` 4 KiB writes (after one write that lets the
/// kernel learn what it can), each followed by an fstat if `fstat`.
fn getxattrs_for_writes(m: &Mount, fstat: bool) -> usize {
    let f = std::fs::OpenOptions::new().create(true).write(true).truncate(false).open(m.path("f")).unwrap();
    f.write_all_at(&[1; 4096], 0).unwrap();
    f.metadata().unwrap();
    let before = m.requests(Opcode::Getxattr).expect("counted over vhost-user");
    for i in 0..WRITES {
        f.write_all_at(&[i as u8; 4096], (i % 16) as u64 * 4096).unwrap();
        if fstat {
            f.metadata().unwrap();
        }
    }
    drop(f);
    m.requests(Opcode::Getxattr).unwrap() - before
}

/// With xattrs on, every write could cost a GETXATTR(security.capability): the kernel must
/// know whether the write has a capability to remove. With FUSE_HANDLE_KILLPRIV_V2 (our
/// default) the kernel marks the superblock SB_NOSEC and the inode S_NOSEC after one answer,
/// and asks again only after an attribute refresh.
#[test]
fn test_write_loop_asks_no_getxattr_per_write_with_killpriv_v2() {
    let mut m = Mount::new_on(Transport::VhostUser, &["--xattr"]);
    let n = getxattrs_for_writes(&m, false);
    assert!(n <= 1, "{n} GETXATTR requests for {WRITES} writes with killpriv_v2: the kernel asks on every write");
    m.stop();
}

/// The counter sees what it claims: without killpriv_v2 the kernel asks on every write.
#[test]
fn test_write_loop_asks_getxattr_on_every_write_without_killpriv_v2() {
    let mut m = Mount::new_on(Transport::VhostUser, &["--xattr", "--no-killpriv-v2"]);
    let n = getxattrs_for_writes(&m, false);
    assert!(n >= WRITES, "{n} GETXATTR requests for {WRITES} writes without killpriv_v2: the count is not counting");
    m.stop();
}

/// Without xattrs (the default) the first GETXATTR is answered ENOSYS and the kernel never asks
/// again, whatever the writes and stats.
#[test]
fn test_write_and_fstat_loop_asks_no_getxattr_without_xattr() {
    let mut m = Mount::new_on(Transport::VhostUser, &[]);
    let n = getxattrs_for_writes(&m, true);
    assert_eq!(n, 0, "GETXATTR requests without --xattr");
    m.stop();
}

/// Under --writeback the kernel keeps size and times itself, so an fstat after a write needs no
/// GETATTR, and the inode stays S_NOSEC: a write+fstat loop asks for security.capability at
/// most once per attribute timeout (a day with --cache=always, so never within the test).
#[test]
fn test_writeback_write_and_fstat_loop_asks_getxattr_at_most_once() {
    let mut m = Mount::new_on(Transport::VhostUser, &["--xattr", "--writeback", "--cache=always"]);
    let n = getxattrs_for_writes(&m, true);
    assert!(n <= 1, "{n} GETXATTR requests for {WRITES} writes and fstats under --writeback");
    m.stop();
}

/// --writeback: the kernel writes back whole pages at offsets it chooses and handles O_APPEND
/// itself, so the daemon opens write-only files for reading too and drops O_APPEND. A partial
/// page written through a write-only fd, and appends through two fds, land on the host as on a
/// local file.
#[test]
fn test_writeback_partial_pages_and_appends_land_on_the_host() {
    for t in [Transport::Fuse, Transport::VhostUser] {
        let mut m = Mount::new_on(t, &["--writeback"]);
        std::fs::write(m.share.join("f"), vec![b'a'; 10000]).unwrap();
        {
            let f = std::fs::OpenOptions::new().write(true).open(m.path("f")).unwrap();
            // Inside the second page: the kernel must read the page around it first.
            f.write_all_at(b"XYZ", 5000).unwrap();
            f.sync_all().unwrap();
        }
        let mut want = vec![b'a'; 10000];
        want[5000..5003].copy_from_slice(b"XYZ");
        assert_eq!(std::fs::read(m.share.join("f")).unwrap(), want, "{t:?}: a partial page through O_WRONLY");

        let open_append = || std::fs::OpenOptions::new().append(true).open(m.path("f")).unwrap();
        let (mut a, mut b) = (open_append(), open_append());
        use std::io::Write;
        a.write_all(b"one").unwrap();
        b.write_all(b"two").unwrap();
        a.write_all(b"three").unwrap();
        a.sync_all().unwrap();
        b.sync_all().unwrap();
        drop((a, b));
        want.extend_from_slice(b"onetwothree");
        assert_eq!(std::fs::read(m.share.join("f")).unwrap(), want, "{t:?}: appends through two fds");
        assert_eq!(std::fs::read(m.path("f")).unwrap(), want, "{t:?}: the mount's view");
        m.stop();
    }
}

/// --cache=never: every stat and read goes to the daemon, so a change made on the host is seen
/// at once (no timeout to wait out).
#[test]
fn test_cache_never_sees_host_changes_at_once() {
    for t in [Transport::Fuse, Transport::VhostUser] {
        let mut m = Mount::new_on(t, &["--cache=never"]);
        std::fs::write(m.share.join("f"), b"first").unwrap();
        assert_eq!(std::fs::read(m.path("f")).unwrap(), b"first");
        std::fs::write(m.share.join("f"), b"second, longer").unwrap();
        assert_eq!(std::fs::metadata(m.path("f")).unwrap().len(), 14, "{t:?}: the size after a host write");
        assert_eq!(std::fs::read(m.path("f")).unwrap(), b"second, longer", "{t:?}: the data after a host write");
        std::fs::remove_file(m.share.join("f")).unwrap();
        assert!(!m.path("f").exists(), "{t:?}: a name the host removed");
        m.stop();
    }
}

/// --cache=metadata: names and attributes cached for a day, but data through direct I/O, so a
/// host change that keeps the size is read at once through an fd opened before it (with
/// --cache=auto that fd serves the old bytes from the page cache until the attributes expire).
#[test]
fn test_cache_metadata_reads_host_data_at_once() {
    for t in [Transport::Fuse, Transport::VhostUser] {
        let mut m = Mount::new_on(t, &["--cache=metadata"]);
        std::fs::write(m.share.join("f"), b"AAAA").unwrap();
        let f = std::fs::File::open(m.path("f")).unwrap();
        let mut buf = [0u8; 4];
        f.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"AAAA");
        std::fs::OpenOptions::new().write(true).open(m.share.join("f")).unwrap().write_all_at(b"BBBB", 0).unwrap();
        f.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"BBBB", "{t:?}: data the host rewrote, read through the same fd");
        drop(f);
        m.stop();
    }
}

/// The supervisor's state region (its memfd, opened through /proc), for its counters.
fn region_of(m: &Mount) -> phoenixfsd::state::Region {
    let sup = m.supervisor();
    let (n, _) = common::open_fds(sup)
        .into_iter()
        .find(|(_, target)| target.contains("memfd:phoenixfs-state"))
        .expect("the supervisor holds its state memfd");
    let path = std::ffi::CString::new(format!("/proc/{sup}/fd/{n}")).unwrap();
    // SAFETY: a valid C string; the fd is closed below (the mapping stays).
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    assert!(fd >= 0, "open the state memfd");
    let region = phoenixfsd::state::Region::attach(fd).expect("the state region checks");
    // SAFETY: our own fd.
    unsafe { libc::close(fd) };
    region
}

/// Requests the daemon answers for `WRITES` 4 KiB writes and as many reads through one open
/// file (after one write and an fstat that let the kernel learn what it can).
fn requests_for_io(m: &Mount) -> u64 {
    let region = region_of(m);
    let served = || region.header().served.load(std::sync::atomic::Ordering::Acquire);
    let f = std::fs::OpenOptions::new().create(true).read(true).write(true).truncate(false).open(m.path("f")).unwrap();
    f.write_all_at(&[1; 4096], 0).unwrap();
    f.metadata().unwrap();
    // Requests the kernel sends on its own time (a RELEASE after an earlier close, a
    // revalidation) come in before the count starts: wait until none came for 200 ms.
    let mut before = served();
    loop {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let now = served();
        if now == before {
            break;
        }
        before = now;
    }
    let mut buf = [0u8; 4096];
    for i in 0..WRITES {
        f.write_all_at(&[i as u8; 4096], (i % 16) as u64 * 4096).unwrap();
        f.read_exact_at(&mut buf, (i % 16) as u64 * 4096).unwrap();
        assert_eq!(buf[0], i as u8);
    }
    let after = served();
    drop(f);
    after - before
}

/// FUSE passthrough over /dev/fuse (`--fuse-passthrough=auto`, the default, on a kernel that
/// offers it): reads and writes go from the kernel to the host file, so the daemon answers
/// none of them — and, with xattrs on, no GETXATTR(security.capability) per write either
/// (killpriv_v2: the kernel's own killpriv on the FUSE file sends nothing, S_NOSEC).
#[test]
fn test_passthrough_reads_and_writes_reach_no_daemon() {
    common::require_fuse();
    let mut m = Mount::new_on(Transport::Fuse, &["--xattr"]);
    std::fs::write(m.path("probe"), "x").unwrap();
    let negotiated = region_of(&m).header().negotiated.load(std::sync::atomic::Ordering::Acquire);
    if negotiated & phoenixfsd::fuse::abi::PASSTHROUGH == 0 {
        eprintln!("skipped: this kernel does not offer FUSE passthrough (Linux 6.9+)");
        m.stop();
        return;
    }
    let n = requests_for_io(&m);
    assert!(n <= 2, "{n} requests answered for {WRITES} passthrough writes and reads");
    m.stop();
    // The counter counts: without passthrough every read and write is a request.
    let mut m = Mount::new_on(Transport::Fuse, &["--xattr", "--fuse-passthrough=never"]);
    let n = requests_for_io(&m);
    assert!(n >= WRITES as u64, "{n} requests answered for {WRITES} writes and reads without passthrough");
    m.stop();
}

/// FLUSH requests the kernel sends for 20 opens and closes of file `f` (made first), read-only
/// or for writing.
fn flushes_for_closes(m: &Mount, flags: i32) -> usize {
    std::fs::write(m.path("f"), b"data").unwrap();
    let before = m.requests(Opcode::Flush).expect("counted over vhost-user");
    for _ in 0..20 {
        let fd = common::sys::open(&m.path("f"), flags, 0).unwrap();
        common::sys::close(fd).unwrap();
    }
    m.requests(Opcode::Flush).unwrap() - before
}

/// A read-only open is answered FOPEN_NOFLUSH: its close costs no FLUSH round trip (an
/// open-read-close, as a build reading its headers does, is three requests, not four). Every
/// close still gets its FLUSH where one has work: after an open for writing, with the daemon
/// serving POSIX locks (a FLUSH drops the closing process's locks: the test checks that a
/// read lock taken through a read-only fd goes with its close), and with writeback caching
/// (the kernel writes back on FLUSH; it ignores the flag).
#[test]
fn test_read_only_closes_send_no_flush_unless_one_has_work() {
    let mut m = Mount::new_on(Transport::VhostUser, &[]);
    assert_eq!(flushes_for_closes(&m, libc::O_RDONLY), 0, "read-only closes");
    assert_eq!(flushes_for_closes(&m, libc::O_WRONLY), 20, "closes after opens for writing");
    assert_eq!(flushes_for_closes(&m, libc::O_RDWR), 20, "closes after opens for reading and writing");
    m.stop();

    let mut m = Mount::new_on(Transport::VhostUser, &["--writeback"]);
    assert_eq!(flushes_for_closes(&m, libc::O_RDONLY), 20, "read-only closes with writeback caching");
    m.stop();

    let mut m = Mount::new_on(Transport::VhostUser, &["-o", "posix_lock"]);
    assert_eq!(flushes_for_closes(&m, libc::O_RDONLY), 20, "read-only closes with POSIX locks served");
    use common::sys::{close, ofd, open};
    let reader = open(&m.path("f"), libc::O_RDONLY, 0).unwrap();
    ofd(reader, libc::F_SETLK, libc::F_RDLCK).unwrap();
    let other = open(&m.path("f"), libc::O_RDWR, 0).unwrap();
    // An OFD lock is another owner than this process's POSIX lock: it conflicts until the
    // close of `reader` drops that lock.
    assert_eq!(ofd(other, libc::F_OFD_SETLK, libc::F_WRLCK), Err(libc::EAGAIN), "the read lock holds");
    close(reader).unwrap();
    assert_eq!(ofd(other, libc::F_OFD_SETLK, libc::F_WRLCK), Ok(libc::F_WRLCK), "the close dropped it");
    close(other).unwrap();
    m.stop();
}
