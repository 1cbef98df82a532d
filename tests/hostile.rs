//! Hostile requests: raw FUSE messages, as a malicious guest could write them, sent straight to
//! the server. Each must get a clean error reply (or be dropped when it has no usable header),
//! and neither the share nor anything outside it may change.

mod common;

use common::inproc::{Harness, MAX_GROWTH_KIB};
use common::proc::rss_kib;
use phoenixfsd::fuse::Op;
use phoenixfsd::fuse::abi::{self, Opcode};
use phoenixfsd::fuse::encode::frame;
use zerocopy::IntoBytes;

fn setattr_size(fh: Option<u64>, size: u64) -> abi::SetattrIn {
    let mut a = abi::SetattrIn { valid: abi::FATTR_SIZE, size, ..Default::default() };
    if let Some(fh) = fh {
        a.valid |= abi::FATTR_FH;
        a.fh = fh;
    }
    a
}

#[test]
fn test_hostile_requests_get_errors_and_change_nothing() {
    let mut h = Harness::new();

    // Before INIT, everything but INIT is refused.
    let (err, _) = h.op(1, &Op::Lookup { name: c"file" }).unwrap();
    assert_eq!(err, libc::EIO, "request before INIT");
    h.init();

    // Objects the hostile requests aim at.
    let file = h.lookup(1, c"file").nodeid;
    let sub = h.lookup(1, c"sub").nodeid;
    let abs_link = h.lookup(1, c"abs_link").nodeid;
    let rel_link = h.lookup(1, c"rel_link").nodeid;
    let dir_link = h.lookup(1, c"dir_link").nodeid;
    let fh = h.open(file, false);
    let dirfh = h.open(sub, true);
    let victim = h.lookup(1, c"victim").nodeid;
    assert!(h.op(victim, &Op::Forget { nlookup: 1 }).is_none(), "FORGET has no reply");
    let stale = victim; // forgotten: its slot is free, a later slot reuse bumps the generation

    let before = h.snapshot();
    let wrong_gen = file ^ (1 << 32);
    let mk = abi::MkdirIn { mode: 0o755, umask: 0 };
    let mkn = abi::MknodIn { mode: libc::S_IFREG | 0o644, rdev: 0, umask: 0, padding: 0 };
    let cr = abi::CreateIn { flags: libc::O_RDWR as u32, mode: 0o644, umask: 0, open_flags: 0 };
    let rd = |fh| abi::ReadIn { fh, offset: 0, size: 4096, ..Default::default() };
    let lk = |fh, start, end| abi::LkIn {
        fh,
        owner: 1,
        lk: abi::FileLock { start, end, typ: libc::F_WRLCK as u32, pid: 1 },
        lk_flags: 0,
        padding: 0,
    };

    // (what it tries, node id, request, the errno it must get; None = any error)
    let cases: Vec<(&str, u64, Op<'_>, Option<i32>)> = vec![
        ("lookup ..", 1, Op::Lookup { name: c".." }, Some(libc::EINVAL)),
        ("lookup .", 1, Op::Lookup { name: c"." }, Some(libc::EINVAL)),
        ("lookup ../outside", 1, Op::Lookup { name: c"../outside" }, Some(libc::EINVAL)),
        ("lookup absolute path", 1, Op::Lookup { name: c"/etc/passwd" }, Some(libc::EINVAL)),
        ("lookup sub/../..", 1, Op::Lookup { name: c"sub/../.." }, Some(libc::EINVAL)),
        ("lookup empty name", 1, Op::Lookup { name: c"" }, Some(libc::EINVAL)),
        ("lookup .. in a subdirectory", sub, Op::Lookup { name: c".." }, Some(libc::EINVAL)),
        ("lookup under node id 0", 0, Op::Lookup { name: c"file" }, Some(libc::ESTALE)),
        ("lookup under an out-of-range node id", 1 << 31, Op::Lookup { name: c"file" }, Some(libc::ESTALE)),
        ("lookup under a node id with a wrong generation", wrong_gen, Op::Lookup { name: c"x" }, Some(libc::ESTALE)),
        ("lookup under a forgotten node id", stale, Op::Lookup { name: c"x" }, Some(libc::ESTALE)),
        ("lookup through a symlink to a directory outside", dir_link, Op::Lookup { name: c"secret" }, None),
        ("getattr of a forgotten node id", stale, Op::Getattr { fh: None }, Some(libc::ESTALE)),
        ("mkdir ../escape", 1, Op::Mkdir { arg: mk, name: c"../escape" }, Some(libc::EINVAL)),
        ("mkdir a/b", 1, Op::Mkdir { arg: mk, name: c"sub/escape" }, Some(libc::EINVAL)),
        ("mkdir inside a symlink to outside", dir_link, Op::Mkdir { arg: mk, name: c"x" }, None),
        ("mknod ..", 1, Op::Mknod { arg: mkn, name: c".." }, Some(libc::EINVAL)),
        ("create ../x", 1, Op::Create { arg: cr, name: c"../x" }, Some(libc::EINVAL)),
        ("create in a symlink to outside", dir_link, Op::Create { arg: cr, name: c"x" }, None),
        ("create in a stale dir", stale, Op::Create { arg: cr, name: c"x" }, Some(libc::ESTALE)),
        ("symlink named ../x", 1, Op::Symlink { name: c"../x", target: c"/etc" }, Some(libc::EINVAL)),
        ("unlink ../outside/secret", 1, Op::Unlink { name: c"../outside/secret" }, Some(libc::EINVAL)),
        ("unlink ..", 1, Op::Unlink { name: c".." }, Some(libc::EINVAL)),
        ("rmdir ..", sub, Op::Rmdir { name: c".." }, Some(libc::EINVAL)),
        ("rmdir .", 1, Op::Rmdir { name: c"." }, Some(libc::EINVAL)),
        ("unlink through a symlink dir", dir_link, Op::Unlink { name: c"secret" }, None),
        (
            "rename from ../outside",
            1,
            Op::Rename { newdir: 1, flags: 0, name: c"../outside/secret", newname: c"got" },
            Some(libc::EINVAL),
        ),
        ("rename onto ..", 1, Op::Rename { newdir: 1, flags: 0, name: c"file", newname: c".." }, Some(libc::EINVAL)),
        (
            "rename into a bad node id",
            1,
            Op::Rename { newdir: 9999, flags: 0, name: c"file", newname: c"x" },
            Some(libc::ESTALE),
        ),
        (
            "rename with unknown flags",
            1,
            Op::Rename { newdir: 1, flags: 1 << 20, name: c"file", newname: c"x" },
            Some(libc::EINVAL),
        ),
        (
            "rename into a symlink to outside",
            1,
            Op::Rename { newdir: dir_link, flags: 0, name: c"file", newname: c"x" },
            None,
        ),
        ("link from a bad node id", 1, Op::Link { oldnodeid: 12345, name: c"x" }, Some(libc::ESTALE)),
        ("link named ../x", 1, Op::Link { oldnodeid: file, name: c"../x" }, Some(libc::EINVAL)),
        (
            "open a symlink to a file outside",
            abs_link,
            Op::Open(abi::OpenIn { flags: libc::O_RDWR as u32, open_flags: 0 }),
            None,
        ),
        (
            "open a relative symlink to outside",
            rel_link,
            Op::Open(abi::OpenIn { flags: libc::O_RDONLY as u32, open_flags: 0 }),
            None,
        ),
        ("opendir a symlink to a dir outside", dir_link, Op::Opendir(abi::OpenIn::default()), None),
        ("truncate through a symlink to outside", abs_link, Op::Setattr(setattr_size(None, 0)), None),
        (
            "chmod through a symlink to outside",
            abs_link,
            Op::Setattr(abi::SetattrIn { valid: abi::FATTR_MODE, mode: 0o777, ..Default::default() }),
            None,
        ),
        (
            "setxattr through a symlink to outside",
            abs_link,
            Op::Setxattr { size: 1, flags: 0, name: c"user.x", value: b"1" },
            None,
        ),
        ("read with a bad fh", file, Op::Read(rd(777)), Some(libc::EBADF)),
        ("read with fh 0", file, Op::Read(rd(0)), Some(libc::EBADF)),
        ("read with a directory fh", file, Op::Read(rd(dirfh)), Some(libc::EBADF)),
        ("readdir with a file fh", sub, Op::Readdir(rd(fh)), Some(libc::EBADF)),
        (
            "write with a stale-generation fh",
            file,
            Op::Write { arg: abi::WriteIn { fh: fh ^ (1 << 32), size: 1, ..Default::default() }, data: b"x" },
            Some(libc::EBADF),
        ),
        ("setattr with a bad fh", file, Op::Setattr(setattr_size(Some(4242), 0)), Some(libc::EBADF)),
        (
            "release a never-issued fh",
            file,
            Op::Release(abi::ReleaseIn { fh: 31337, ..Default::default() }),
            Some(libc::EBADF),
        ),
        ("releasedir a file fh", sub, Op::Releasedir(abi::ReleaseIn { fh, ..Default::default() }), Some(libc::EBADF)),
        ("getlk with start after end", file, Op::Getlk(lk(fh, 10, 5)), Some(libc::EINVAL)),
        (
            "setlk with a negative start",
            file,
            Op::Setlk { arg: lk(fh, u64::MAX - 1, u64::MAX), sleep: false },
            Some(libc::EINVAL),
        ),
        (
            "copy_file_range to a bad fh",
            file,
            Op::CopyFileRange(abi::CopyFileRangeIn { fh_in: fh, fh_out: 999, len: 10, ..Default::default() }),
            Some(libc::EBADF),
        ),
        (
            "lseek with a bad fh",
            file,
            Op::Lseek(abi::LseekIn { fh: 5555, offset: 0, whence: 3, padding: 0 }),
            Some(libc::EBADF),
        ),
        ("tmpfile in a bad node id", 77777, Op::Tmpfile { arg: cr }, Some(libc::ESTALE)),
        (
            "fallocate a directory fh",
            sub,
            Op::Fallocate(abi::FallocateIn { fh: dirfh, length: 10, ..Default::default() }),
            Some(libc::EBADF),
        ),
    ];
    let count = cases.len();
    for (what, nodeid, op, want) in cases {
        let (err, _) = h.op(nodeid, &op).unwrap_or_else(|| panic!("{what}: no reply"));
        match want {
            Some(e) => assert_eq!(err, e, "{what}: errno"),
            None => assert_ne!(err, 0, "{what}: must fail"),
        }
        assert_eq!(h.snapshot(), before, "{what}: the tree changed");
    }

    // Malformed frames: the ones with a usable header get EINVAL/ENOSYS, the others no reply.
    let mut malformed = 0;
    let unterminated = h.raw_op(1, Opcode::Lookup, b"file");
    assert_eq!(unterminated.map(|r| r.0), Some(libc::EINVAL), "name without NUL");
    let trailing = h.raw_op(1, Opcode::Lookup, b"file\0junk");
    assert_eq!(trailing.map(|r| r.0), Some(libc::EINVAL), "bytes after the name");
    let nameless = h.raw_op(1, Opcode::Lookup, &[]).map(|r| r.0);
    assert_eq!(nameless, Some(libc::EINVAL), "lookup without a name");
    let s = h.sender(1);
    assert_eq!(h.raw(&frame(s, 9999, &[])).map(|r| r.0), Some(libc::ENOSYS), "unknown opcode");
    let s = h.sender(1);
    let mut long = frame(s, Opcode::Getattr as u32, &[0u8; 16]);
    long[0..4].copy_from_slice(&1000u32.to_le_bytes());
    assert!(h.raw(&long).is_none(), "a header whose length lies has no trustworthy address");
    assert!(h.raw(&[1, 2, 3]).is_none(), "a 3-byte request");
    let wr = abi::WriteIn { fh, size: 100, ..Default::default() };
    let short_write = h.raw_op(file, Opcode::Write, &[wr.as_bytes(), b"only ten b"].concat());
    assert_eq!(short_write.map(|r| r.0), Some(libc::EINVAL), "write shorter than its size");
    let mut bf = abi::BatchForgetIn { count: u32::MAX, dummy: 0 }.as_bytes().to_vec();
    bf.extend_from_slice(abi::ForgetOne { nodeid: 1, nlookup: u64::MAX }.as_bytes());
    assert_eq!(h.raw_op(0, Opcode::BatchForget, &bf).map(|r| r.0), Some(libc::EINVAL), "batch forget count");
    let sx = abi::SetxattrIn { size: 50, flags: 0 };
    let bad_sx = h.raw_op(file, Opcode::Setxattr, &[sx.as_bytes(), b"user.x\0short"].concat());
    assert_eq!(bad_sx.map(|r| r.0), Some(libc::EINVAL), "setxattr value shorter than its size");
    malformed += 9;
    assert_eq!(h.snapshot(), before, "malformed frames changed the tree");

    // Forgetting the root (even with a huge count) must not free it.
    assert!(h.op(1, &Op::Forget { nlookup: u64::MAX }).is_none());
    let forgets = vec![abi::ForgetOne { nodeid: 1, nlookup: u64::MAX }, abi::ForgetOne { nodeid: 0, nlookup: 1 }];
    assert!(h.op(0, &Op::BatchForget { forgets }).is_none());
    assert_eq!(h.lookup(1, c"file").nodeid, file, "root still serves lookups");

    // A double release: the second one is refused, the first handle is gone.
    let rel = Op::Release(abi::ReleaseIn { fh, ..Default::default() });
    assert_eq!(h.op(file, &rel).unwrap().0, 0);
    assert_eq!(h.op(file, &rel).unwrap().0, libc::EBADF, "double release");
    assert_eq!(h.op(file, &Op::Read(rd(fh))).unwrap().0, libc::EBADF, "read after release");
    assert_eq!(h.snapshot(), before);

    eprintln!("{count} hostile requests and {malformed} malformed frames refused; the tree is unchanged");
    assert!(count + malformed >= 30);
}

/// Found by tests/fuzz_fuse.rs (seed 101296135158340): a guest's GETXATTR with size 4 GiB - 1 made
/// the server zero a 4 GiB reply buffer (about 10 s, 4 GiB resident, kept as the thread's buffer
/// capacity); the kernel caps xattr sizes at 64 KiB, a virtio guest need not. The daemon now
/// reads at most 64 KiB (Linux holds no larger value or name list).
#[test]
fn test_regression_xattr_size_unbounded() {
    let mut h = Harness::new();
    h.init();
    let rss0 = rss_kib();
    let (err, _) = h.op(abi::ROOT_ID, &Op::Getxattr { size: u32::MAX, name: c"user.none" }).unwrap();
    assert_ne!(err, 0, "no such attribute");
    let grown = rss_kib().saturating_sub(rss0);
    assert!(grown < MAX_GROWTH_KIB, "GETXATTR size 4 GiB - 1 grew memory by {grown} KiB");
}

/// Found by tests/fuzz_fuse.rs: a guest made a FIFO with MKNOD and sent OPEN for it (a FUSE
/// kernel opens FIFOs itself and never does); the serving thread blocked for good in the open.
/// OPEN of a FIFO, socket or device node is now refused (ENXIO), at once.
#[test]
fn test_regression_open_of_a_fifo_does_not_block() {
    let mut h = Harness::new();
    h.init();
    let arg = abi::MknodIn { mode: libc::S_IFIFO | 0o666, rdev: 0, umask: 0, padding: 0 };
    let (err, _) = h.op(abi::ROOT_ID, &Op::Mknod { arg, name: c"fifo" }).unwrap();
    assert_eq!(err, 0, "mknod of a FIFO");
    let fifo = h.lookup(abi::ROOT_ID, c"fifo").nodeid;
    // A blocked open would never return: a watchdog ends the test process with a message.
    let (done, watched) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if watched.recv_timeout(std::time::Duration::from_secs(5)).is_err() {
            eprintln!("OPEN of a FIFO blocked for 5 s");
            std::process::abort();
        }
    });
    let open = abi::OpenIn { flags: libc::O_RDONLY as u32, open_flags: 0 };
    let err = h.op(fifo, &Op::Open(open)).map(|r| r.0);
    done.send(()).unwrap();
    assert_eq!(err, Some(libc::ENXIO));
}
