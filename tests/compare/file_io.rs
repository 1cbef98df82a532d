//! test_open_modes (open flags, creat, O_TMPFILE, umask) and test_file_io (read/write at
//! offsets, fsync, sparse files, fallocate, copy_file_range, unlink while open);
//! test_regression_seek_negative_offset (issue 11, case 4).

use libc::{
    EBADF, EEXIST, EINVAL, EISDIR, ELOOP, ENAMETOOLONG, ENOENT, ENOTDIR, ENXIO, EOPNOTSUPP, O_APPEND, O_CREAT,
    O_DIRECTORY, O_EXCL, O_NOFOLLOW, O_RDONLY, O_RDWR, O_TRUNC, O_WRONLY, S_IFIFO, SEEK_CUR, SEEK_DATA, SEEK_END,
    SEEK_HOLE, SEEK_SET,
};

use crate::harness::*;
use crate::ops::*;

#[test]
fn test_open_modes() {
    let t = Pair::new();
    t.both("open flags", |r| {
        let f = r.p("f");
        r.ok("create f", put(&f, b"hello world", 0o644));
        r.ok("mkdir d", mkdir(&r.p("d"), 0o755));
        r.ok("symlink l -> f", symlink("f", &r.p("l")));
        r.err("O_RDONLY missing", opens(&r.p("none"), O_RDONLY, 0), ENOENT);
        r.err("O_CREAT|O_EXCL existing", opens(&f, O_CREAT | O_EXCL | O_WRONLY, 0o644), EEXIST);
        r.err("O_CREAT|O_EXCL on a symlink", opens(&r.p("l"), O_CREAT | O_EXCL | O_WRONLY, 0o644), EEXIST);
        r.err("O_DIRECTORY on a file", opens(&f, O_RDONLY | O_DIRECTORY, 0), ENOTDIR);
        r.err("O_WRONLY on a dir", opens(&r.p("d"), O_WRONLY, 0), EISDIR);
        r.err("O_NOFOLLOW on a symlink", opens(&r.p("l"), O_RDONLY | O_NOFOLLOW, 0), ELOOP);
        r.err("O_CREAT in missing dir", opens(&r.p("nodir/x"), O_CREAT | O_WRONLY, 0o644), ENOENT);
        r.err("O_CREAT 256-byte name", opens(&r.p(&"x".repeat(256)), O_CREAT | O_WRONLY, 0o644), ENAMETOOLONG);
        r.err("O_CREAT name with trailing slash", opens(&r.p("new/"), O_CREAT | O_WRONLY, 0o644), EISDIR);
        let ro = r.open("open O_RDONLY", &f, O_RDONLY, 0);
        r.ok("read", read(&ro, 100));
        r.err("write on O_RDONLY", write(&ro, b"x"), EBADF);
        let wo = r.open("open O_WRONLY", &f, O_WRONLY, 0);
        r.err("read on O_WRONLY", read(&wo, 10), EBADF);
        r.ok("overwrite start", write(&wo, b"HELLO"));
        r.ok("content", read_file(&f));
        let rw = r.open("open O_RDWR", &f, O_RDWR, 0);
        r.ok("write 2 then read 3", write(&rw, b"xy").and(read(&rw, 3)));
        r.ok("position", lseek(&rw, 0, SEEK_CUR));
        let tr = r.open("open O_WRONLY|O_TRUNC", &f, O_WRONLY | O_TRUNC, 0);
        r.ok("fstat after O_TRUNC", fstat(&tr));
        r.ok("write after O_TRUNC", write(&tr, b"abc"));
        let ap = r.open("open O_APPEND", &f, O_WRONLY | O_APPEND, 0);
        r.ok("append", write(&ap, b"123"));
        r.ok("pwrite at 0 with O_APPEND", pwrite(&ap, b"Z", 0));
        r.ok("content after appends", read_file(&f));
        r.ok("old O_RDONLY fd sees it", pread(&ro, 100, 0));
        r.ok("O_CREAT|O_EXCL new 0640", opens(&r.p("new"), O_CREAT | O_EXCL | O_RDWR, 0o640));
        r.ok("stat new", stat(&r.p("new")));
        r.ok("O_CREAT on existing keeps data and mode", opens(&f, O_CREAT | O_WRONLY, 0o600).and(stat(&f)));
        r.ok("O_RDONLY|O_TRUNC truncates too", opens(&f, O_RDONLY | O_TRUNC, 0).and(stat(&f)));
        r.ok("creat new 0600", creat(&r.p("c"), 0o600));
        r.ok("stat c", stat(&r.p("c")));
        r.ok("fill c", put(&r.p("c"), b"zzz", 0o644));
        r.ok("creat existing truncates", creat(&r.p("c"), 0o644));
        r.ok("stat c", stat(&r.p("c")));
    });
    t.both("O_TMPFILE", |r| {
        let d = r.p("tmpd");
        r.ok("mkdir tmpd", mkdir(&d, 0o755));
        let fd = r.open("O_TMPFILE|O_RDWR", &d, libc::O_TMPFILE | O_RDWR, 0o640);
        r.ok("write", write(&fd, b"anonymous"));
        r.ok("fstat (nlink 0)", fstat(&fd));
        r.ok("tmpd looks empty", names(&d));
        r.ok(
            "linkat /proc/self/fd/N -> named",
            linkat_follow(&format!("/proc/self/fd/{}", fd.raw()), &r.p("tmpd/named")),
        );
        r.ok("stat named", stat(&r.p("tmpd/named")));
        r.ok("read named", read_file(&r.p("tmpd/named")));
        r.ok("fstat (nlink 1)", fstat(&fd));
        let ex = r.open("O_TMPFILE|O_EXCL", &d, libc::O_TMPFILE | O_RDWR | O_EXCL, 0o600);
        r.err(
            "linkat of an O_EXCL tmpfile",
            linkat_follow(&format!("/proc/self/fd/{}", ex.raw()), &r.p("tmpd/no")),
            ENOENT,
        );
        r.err("O_TMPFILE on a file", opens(&r.p("tmpd/named"), libc::O_TMPFILE | O_RDWR, 0o600), ENOTDIR);
        r.err("O_TMPFILE read-only", opens(&d, libc::O_TMPFILE | O_RDONLY, 0o600), EINVAL);
    });
    t.both("umask", |r| {
        r.ok("mkdir um 0777", mkdir(&r.p("um"), 0o777).and(chmod(&r.p("um"), 0o777)));
        for (who, mask) in [(ALICE, 0o022), (ALICE, 0o077), (ALICE, 0o000), (ROOT, 0o027)] {
            r.as_user(&who.with_umask(mask), |r| {
                let base = format!("um/{}-{mask:03o}", who.name);
                let f = r.p(&format!("{base}-file"));
                r.ok(&format!("umask {mask:03o}: create 0666"), opens(&f, O_CREAT | O_WRONLY, 0o666));
                r.ok(&format!("umask {mask:03o}: stat file"), stat(&f));
                r.ok(&format!("umask {mask:03o}: mkdir 0777"), mkdir(&r.p(&format!("{base}-dir")), 0o777));
                r.ok(&format!("umask {mask:03o}: stat dir"), stat(&r.p(&format!("{base}-dir"))));
                r.ok(
                    &format!("umask {mask:03o}: mknod fifo 0666"),
                    mknod(&r.p(&format!("{base}-fifo")), S_IFIFO | 0o666, 0),
                );
                r.ok(&format!("umask {mask:03o}: stat fifo"), stat(&r.p(&format!("{base}-fifo"))));
                let tmp =
                    r.open(&format!("umask {mask:03o}: O_TMPFILE 0666"), &r.p("um"), libc::O_TMPFILE | O_RDWR, 0o666);
                r.ok(&format!("umask {mask:03o}: fstat tmpfile"), fstat(&tmp));
            });
        }
    });
    t.both("opening a running executable for writing", |r| {
        // A copy of sleep, running from the tree: every open that would write it is refused
        // with ETXTBSY, and O_TRUNC must not truncate it before the refusal (it once did: the
        // daemon negotiated ATOMIC_O_TRUNC and truncated inside OPEN, before the kernel's check).
        let exe = r.p("sleeper");
        let image = std::fs::read("/bin/sleep").expect("read /bin/sleep");
        r.ok("copy /bin/sleep", put(&exe, &image, 0o755));
        let mut child = std::process::Command::new(&exe).arg("30").spawn().expect("run the copy");
        r.err("open O_WRONLY", opens(&exe, O_WRONLY, 0), libc::ETXTBSY);
        r.err("open O_RDONLY|O_TRUNC", opens(&exe, O_RDONLY | O_TRUNC, 0), libc::ETXTBSY);
        r.ok("still whole", stat(&exe));
        r.ok("still running", Ok::<_, Errno>(child.try_wait().expect("try_wait").is_none() as i64));
        let _ = child.kill();
        let _ = child.wait();
    });
    t.finish();
}

#[test]
fn test_file_io() {
    let t = Pair::new();
    t.both("read & write at offsets", |r| {
        let fd = r.open("create io", &r.p("io"), O_CREAT | O_RDWR, 0o644);
        r.ok("write 3", write(&fd, b"abc"));
        r.ok("read at EOF", read(&fd, 10));
        r.ok("pread 0", pread(&fd, 10, 0));
        r.ok("pwrite at 10000 (beyond EOF)", pwrite(&fd, b"tail", 10_000));
        r.ok("fstat", fstat(&fd));
        r.ok("pread across the gap", pread(&fd, 20, 9990));
        r.ok("pread inside the gap", pread(&fd, 4096, 4096));
        r.ok("pread beyond EOF", pread(&fd, 10, 20_000));
        r.err("pread negative offset", pread(&fd, 10, -1), EINVAL);
        r.ok("lseek SEEK_END", lseek(&fd, 0, SEEK_END));
        r.ok("lseek SEEK_SET 1", lseek(&fd, 1, SEEK_SET));
        r.ok("read 2 after seek", read(&fd, 2));
        r.err("lseek to negative", lseek(&fd, -1, SEEK_SET), EINVAL);
        r.ok("lseek past EOF then write", lseek(&fd, 20_000, SEEK_SET).and(write(&fd, b"far")));
        r.ok("fstat", fstat(&fd));
        let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        r.ok("pwrite 300000 bytes at 5", pwrite(&fd, &big, 5));
        r.ok("pread them back", pread(&fd, big.len(), 5));
        r.ok("fsync", fsync(&fd));
        r.ok("fdatasync", fdatasync(&fd));
        r.ok("syncfs", syncfs(&fd));
        r.ok("whole content", read_file(&r.p("io")));
    });
    t.both("mtime follows writes", |r| {
        r.ok("create mt", put(&r.p("mt"), b"x", 0o644));
        r.ok("set old times", utimens(&r.p("mt"), [(1000, 0), (1000, 0)], 0));
        let fd = r.open("open mt O_WRONLY", &r.p("mt"), O_WRONLY, 0);
        let since = now();
        r.ok("write", write(&fd, b"y"));
        r.ok(
            "atime kept, mtime and ctime now",
            raw_fstat(&fd).map(|s| (s.st_atime, are_now(&s, since).1, s.st_ctime >= since - 2)),
        );
    });
    t.both("sparse file: SEEK_DATA / SEEK_HOLE", |r| {
        let fd = r.open("create sparse", &r.p("sparse"), O_CREAT | O_RDWR, 0o644);
        r.ok("pwrite 4 KiB at 1 MiB", pwrite(&fd, &[7u8; 4096], 1 << 20));
        r.ok("pwrite 4 KiB at 3 MiB", pwrite(&fd, &[9u8; 4096], 3 << 20));
        r.ok("ftruncate to 4 MiB", ftruncate(&fd, 4 << 20));
        r.ok("fsync", fsync(&fd));
        for (off, whence, name) in [
            (0, SEEK_DATA, "SEEK_DATA from 0"),
            (0, SEEK_HOLE, "SEEK_HOLE from 0"),
            ((1 << 20) + 100, SEEK_DATA, "SEEK_DATA inside data"),
            (1 << 20, SEEK_HOLE, "SEEK_HOLE from data"),
            ((1 << 20) + 8192, SEEK_DATA, "SEEK_DATA to the second extent"),
            ((3 << 20) + 4096, SEEK_HOLE, "SEEK_HOLE after the last data"),
        ] {
            r.ok(name, lseek(&fd, off, whence));
        }
        r.err("SEEK_DATA in the tail hole", lseek(&fd, (3 << 20) + 8192, SEEK_DATA), ENXIO);
        r.err("SEEK_DATA at EOF", lseek(&fd, 4 << 20, SEEK_DATA), ENXIO);
        r.err("SEEK_HOLE past EOF", lseek(&fd, 5 << 20, SEEK_HOLE), ENXIO);
        r.ok("hole reads as zeros", pread(&fd, 8192, (1 << 20) - 4096));
    });
    t.both("fallocate", |r| {
        let fd = r.open("create fa", &r.p("fa"), O_CREAT | O_RDWR, 0o644);
        r.ok("fallocate mode 0, 64 KiB", fallocate(&fd, 0, 0, 65536));
        r.ok("fstat (size grows)", fstat(&fd).and(blocks(&fd)));
        r.ok("fallocate KEEP_SIZE 64..128 KiB", fallocate(&fd, libc::FALLOC_FL_KEEP_SIZE, 65536, 65536));
        r.ok("fstat (size kept, blocks grow)", fstat(&fd).and(blocks(&fd)));
        r.ok("write 64 KiB of 0xaa", pwrite(&fd, &[0xaa; 65536], 0));
        let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        r.ok("PUNCH_HOLE|KEEP_SIZE 4..12 KiB", fallocate(&fd, punch, 4096, 8192));
        r.ok("fstat after punch", fstat(&fd).and(blocks(&fd)));
        r.ok("read across the punched range", pread(&fd, 16384, 0));
        r.ok("SEEK_HOLE finds the punched range", lseek(&fd, 0, SEEK_HOLE));
        r.err("PUNCH_HOLE without KEEP_SIZE", fallocate(&fd, libc::FALLOC_FL_PUNCH_HOLE, 0, 4096), EOPNOTSUPP);
        r.err("fallocate len 0", fallocate(&fd, 0, 0, 0), EINVAL);
        let ro = r.open("open fa O_RDONLY", &r.p("fa"), O_RDONLY, 0);
        r.err("fallocate on a read-only fd", fallocate(&ro, 0, 0, 4096), EBADF);
    });
    t.both("copy_file_range", |r| {
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 253) as u8).collect();
        r.ok("create src", put(&r.p("src"), &data, 0o644));
        let s = r.open("open src O_RDONLY", &r.p("src"), O_RDONLY, 0);
        let d = r.open("create dst", &r.p("dst"), O_CREAT | O_RDWR, 0o644);
        r.ok("copy 5000 from 100 to 50", cfr(&s, Some(100), &d, Some(50), 5000));
        r.ok("dst content", read_file(&r.p("dst")));
        r.ok("copy past src EOF is short", cfr(&s, Some(19_000), &d, Some(0), 5000));
        r.ok("copy at src EOF copies 0", cfr(&s, Some(20_000), &d, Some(0), 100));
        r.ok("copy using file positions", cfr(&s, None, &d, None, 300));
        r.ok("positions advanced", lseek(&s, 0, SEEK_CUR).and_then(|a| lseek(&d, 0, SEEK_CUR).map(|b| (a, b))));
        r.ok("dst content", read_file(&r.p("dst")));
        r.err("copy into a read-only fd", cfr(&d, Some(0), &s, Some(0), 10), EBADF);
        r.err("overlapping copy within one file", cfr(&d, Some(0), &d, Some(10), 100), EINVAL);
    });
    t.both("unlink while open", |r| {
        let fd = r.open("create uo", &r.p("uo"), O_CREAT | O_RDWR, 0o644);
        r.ok("write", write(&fd, b"still here"));
        r.ok("unlink uo", unlink(&r.p("uo")));
        r.err("stat by name", stat(&r.p("uo")), ENOENT);
        r.ok("fstat (nlink 0)", fstat(&fd));
        r.ok("pwrite after unlink", pwrite(&fd, b"!", 10));
        r.ok("pread after unlink", pread(&fd, 100, 0));
        r.ok("ftruncate after unlink", ftruncate(&fd, 5));
        r.ok("fstat", fstat(&fd));
        r.ok("fsync", fsync(&fd));
        r.ok("new file under the same name", put(&r.p("uo"), b"new", 0o600));
        r.ok("old fd still has the old data", pread(&fd, 100, 0));
        r.ok("fstat old fd", fstat(&fd));
        r.ok("stat new file", stat(&r.p("uo")));
    });
    t.finish();
}

/// Issue 11, case 4: SEEK_DATA/SEEK_HOLE from a negative offset give the host's ENXIO; the
/// daemon used to refuse the offset itself with EINVAL.
#[test]
fn test_regression_seek_negative_offset() {
    let t = Pair::new();
    t.both("SEEK_DATA / SEEK_HOLE from a negative offset", |r| {
        let fd = r.open("create sk", &r.p("sk"), O_CREAT | O_RDWR, 0o644);
        r.ok("write 8 KiB", pwrite(&fd, &[1u8; 8192], 0));
        for (off, whence, name) in [
            (-1, SEEK_DATA, "SEEK_DATA from -1"),
            (-1, SEEK_HOLE, "SEEK_HOLE from -1"),
            (i64::MIN, SEEK_DATA, "SEEK_DATA from i64::MIN"),
            (i64::MIN, SEEK_HOLE, "SEEK_HOLE from i64::MIN"),
        ] {
            r.err(name, lseek(&fd, off, whence), ENXIO);
        }
        r.ok("position unchanged", lseek(&fd, 0, SEEK_CUR));
        r.ok("chmod sk 0666", chmod(&r.p("sk"), 0o666));
        r.as_user(&ALICE, |r| {
            let fd = r.open("open sk O_RDONLY", &r.p("sk"), O_RDONLY, 0);
            r.err("SEEK_DATA from -4096", lseek(&fd, -4096, SEEK_DATA), ENXIO);
            r.err("SEEK_HOLE from -4096", lseek(&fd, -4096, SEEK_HOLE), ENXIO);
            r.ok("SEEK_HOLE from 0", lseek(&fd, 0, SEEK_HOLE));
        });
    });
    t.finish();
}
