//! test_namespace_ops (lookup, mkdir, symlink, mknod, link, unlink, rmdir, rename, renameat2)
//! and test_attr_ops (chmod, chown, truncate, utimensat, statfs, access as root);
//! test_regression_times_before_1970 (issue 11, case 3).

use libc::{
    EACCES, EEXIST, EINVAL, EISDIR, ELOOP, ENAMETOOLONG, ENOENT, ENOTDIR, ENOTEMPTY, EPERM, O_NOFOLLOW, O_RDONLY,
    O_WRONLY, R_OK, S_IFBLK, S_IFCHR, S_IFIFO, S_IFREG, S_IFSOCK, W_OK, X_OK,
};

use crate::harness::*;
use crate::ops::*;

#[test]
fn test_namespace_ops() {
    let t = Pair::new();
    t.both("lookup", |r| {
        r.ok("mkdir d", mkdir(&r.p("d"), 0o755));
        r.ok("create d/f", put(&r.p("d/f"), b"hello", 0o644));
        r.ok("stat d", stat(&r.p("d")));
        r.ok("lstat d/f", lstat(&r.p("d/f")));
        r.ok("stat d/../d/./f", stat(&r.p("d/../d/./f")));
        r.err("stat missing", stat(&r.p("d/missing")), ENOENT);
        r.err("stat in missing dir", stat(&r.p("nodir/f")), ENOENT);
        r.err("stat file with trailing slash", stat(&r.p("d/f/")), ENOTDIR);
        r.err("stat below a file", stat(&r.p("d/f/x")), ENOTDIR);
        r.err("stat absent 255-byte name", stat(&r.p(&"n".repeat(255))), ENOENT);
        r.err("stat 256-byte name", stat(&r.p(&"n".repeat(256))), ENAMETOOLONG);
        r.ok("create 255-byte name", put(&r.p(&"n".repeat(255)), b"long", 0o644));
        r.ok("stat 255-byte name", stat(&r.p(&"n".repeat(255))));
    });
    t.both("mkdir", |r| {
        r.ok("mkdir m 0750", mkdir(&r.p("m"), 0o750));
        r.ok("stat m", stat(&r.p("m")));
        r.err("mkdir existing", mkdir(&r.p("m"), 0o755), EEXIST);
        r.err("mkdir over a file", mkdir(&r.p("d/f"), 0o755), EEXIST);
        r.err("mkdir in missing dir", mkdir(&r.p("nodir/m"), 0o755), ENOENT);
        r.err("mkdir below a file", mkdir(&r.p("d/f/m"), 0o755), ENOTDIR);
        r.err("mkdir 256-byte name", mkdir(&r.p(&"m".repeat(256)), 0o755), ENAMETOOLONG);
        r.ok("mkdir m/bits 03777", mkdir(&r.p("m/bits"), 0o3777));
        r.ok("stat m/bits", stat(&r.p("m/bits")));
        r.ok("stat m (nlink counts subdirs)", stat(&r.p("m")));
    });
    t.both("symlink & readlink", |r| {
        r.ok("symlink d/l -> f", symlink("f", &r.p("d/l")));
        r.ok("readlink d/l", readlink(&r.p("d/l")));
        r.ok("lstat d/l", lstat(&r.p("d/l")));
        r.ok("stat d/l follows", stat(&r.p("d/l")));
        r.ok("read through d/l", read_file(&r.p("d/l")));
        r.err("symlink over existing", symlink("x", &r.p("d/l")), EEXIST);
        r.err("readlink on a file", readlink(&r.p("d/f")), EINVAL);
        r.err("readlink missing", readlink(&r.p("d/none")), ENOENT);
        r.ok("symlink absolute target", symlink("/etc/passwd", &r.p("d/abs")));
        r.ok("readlink absolute target", readlink(&r.p("d/abs")));
        r.ok("symlink dangling", symlink("nowhere", &r.p("d/dangle")));
        r.err("stat dangling", stat(&r.p("d/dangle")), ENOENT);
        r.ok("lstat dangling", lstat(&r.p("d/dangle")));
        r.ok("symlink to itself", symlink("loop", &r.p("d/loop")));
        r.err("stat self loop", stat(&r.p("d/loop")), ELOOP);
        r.err("open O_NOFOLLOW on a symlink", opens(&r.p("d/l"), O_RDONLY | O_NOFOLLOW, 0), ELOOP);
        r.ok("symlink 4095-byte target", symlink(&"t".repeat(4095), &r.p("d/long")));
        r.ok("readlink 4095-byte target", readlink(&r.p("d/long")).map(|s| Bytes(s.into_bytes())));
        r.err("symlink 4096-byte target", symlink(&"t".repeat(4096), &r.p("d/toolong")), ENAMETOOLONG);
    });
    t.both("mknod", |r| {
        r.ok("mknod fifo 0640", mknod(&r.p("d/fifo"), S_IFIFO | 0o640, 0));
        r.ok("lstat fifo", lstat(&r.p("d/fifo")));
        r.ok("mknod char 1:3 (root)", mknod(&r.p("d/chr"), S_IFCHR | 0o600, libc::makedev(1, 3)));
        r.ok("lstat char", lstat(&r.p("d/chr")));
        r.ok("mknod block 7:0", mknod(&r.p("d/blk"), S_IFBLK | 0o660, libc::makedev(7, 0)));
        r.ok("lstat block", lstat(&r.p("d/blk")));
        r.ok("mknod socket", mknod(&r.p("d/sock"), S_IFSOCK | 0o755, 0));
        r.ok("lstat socket", lstat(&r.p("d/sock")));
        r.ok("mknod regular", mknod(&r.p("d/reg"), S_IFREG | 0o604, 0));
        r.ok("lstat regular", lstat(&r.p("d/reg")));
        r.err("mknod existing", mknod(&r.p("d/fifo"), S_IFIFO | 0o640, 0), EEXIST);
        r.err("mknod in missing dir", mknod(&r.p("nodir/p"), S_IFIFO | 0o640, 0), ENOENT);
    });
    t.both("link", |r| {
        r.ok("link d/f d/f2", link(&r.p("d/f"), &r.p("d/f2")));
        r.ok("stat d/f (nlink 2)", stat(&r.p("d/f")));
        r.ok("read d/f2", read_file(&r.p("d/f2")));
        r.err("link to existing name", link(&r.p("d/f"), &r.p("d/f2")), EEXIST);
        r.err("link a directory", link(&r.p("d"), &r.p("dlink")), EPERM);
        r.err("link missing source", link(&r.p("d/none"), &r.p("d/x")), ENOENT);
        r.err("link into missing dir", link(&r.p("d/f"), &r.p("nodir/x")), ENOENT);
        r.ok("link a symlink (not followed)", link(&r.p("d/l"), &r.p("d/l2")));
        r.ok("lstat d/l2", lstat(&r.p("d/l2")));
        r.ok("unlink d/f2", unlink(&r.p("d/f2")));
        r.ok("stat d/f (nlink 1)", stat(&r.p("d/f")));
    });
    t.both("unlink & rmdir", |r| {
        r.ok("setup u/sub, u/file", all(&[mkdir(&r.p("u"), 0o755), mkdir(&r.p("u/sub"), 0o755)]));
        r.ok("create u/file", put(&r.p("u/file"), b"x", 0o644));
        r.err("unlink missing", unlink(&r.p("u/none")), ENOENT);
        r.err("unlink a dir", unlink(&r.p("u/sub")), EISDIR);
        r.err("rmdir a file", rmdir(&r.p("u/file")), ENOTDIR);
        r.err("rmdir non-empty", rmdir(&r.p("u")), ENOTEMPTY);
        r.err("rmdir dot", rmdir(&r.p("u/sub/.")), EINVAL);
        r.err("rmdir missing", rmdir(&r.p("u/none")), ENOENT);
        r.ok("unlink a symlink", unlink(&r.p("d/l2")));
        r.ok("its target survives", stat(&r.p("d/l")));
        r.ok("unlink a fifo", unlink(&r.p("d/fifo")));
        r.ok("rmdir u/sub", rmdir(&r.p("u/sub")));
        r.ok("stat u (nlink drops)", stat(&r.p("u")));
        r.err("stat removed dir", stat(&r.p("u/sub")), ENOENT);
        r.ok("unlink u/file", unlink(&r.p("u/file")));
        r.ok("rmdir u", rmdir(&r.p("u")));
    });
    t.both("rename", |r| {
        let base = r.p("r");
        let p = |s: &str| base.join(s);
        r.ok("setup", all(&[mkdir(&r.p("r"), 0o755), mkdir(&p("full"), 0o755), mkdir(&p("empty"), 0o755)]));
        r.ok(
            "create r/full/x, r/a, r/b",
            put(&p("full/x"), b"x", 0o644).and(put(&p("a"), b"A", 0o644)).and(put(&p("b"), b"B", 0o600)),
        );
        r.ok("rename a -> c", rename(&p("a"), &p("c")));
        r.err("stat old name", stat(&p("a")), ENOENT);
        r.ok("read new name", read_file(&p("c")));
        r.ok("rename c over b", rename(&p("c"), &p("b")));
        r.ok("b has c's data and mode", stat(&p("b")).and(read_file(&p("b"))));
        r.err("rename missing", rename(&p("none"), &p("z")), ENOENT);
        r.err("rename file over dir", rename(&p("b"), &p("empty")), EISDIR);
        r.err("rename dir over file", rename(&p("empty"), &p("b")), ENOTDIR);
        r.err("rename dir over non-empty dir", rename(&p("empty"), &p("full")), ENOTEMPTY);
        r.err("rename dir into itself", rename(&p("full"), &p("full/inner")), EINVAL);
        r.ok("mkdir empty2", mkdir(&p("empty2"), 0o700));
        r.ok("rename dir over empty dir", rename(&p("empty"), &p("empty2")));
        r.ok("stat empty2 (the moved dir)", stat(&p("empty2")));
        r.ok("rename to itself", rename(&p("b"), &p("b")));
        r.ok("link b hl", link(&p("b"), &p("hl")));
        r.ok("rename b over its own hard link (no-op)", rename(&p("b"), &p("hl")));
        r.ok("both names remain", stat(&p("b")).and(stat(&p("hl"))));
        r.err("rename into missing dir", rename(&p("b"), &p("nodir/b")), ENOENT);
        r.ok("rename dir full -> moved", rename(&p("full"), &p("moved")));
        r.ok("content moved along", read_file(&p("moved/x")));
        r.ok("stat r", stat(&r.p("r")));
    });
    t.both("renameat2", |r| {
        let base = r.p("r");
        let p = |s: &str| base.join(s);
        let (noreplace, exchange) = (libc::RENAME_NOREPLACE, libc::RENAME_EXCHANGE);
        r.err("NOREPLACE onto existing", renameat2(&p("b"), &p("hl"), noreplace), EEXIST);
        r.ok("NOREPLACE onto new name", renameat2(&p("b"), &p("nr"), noreplace));
        r.err("old name gone", stat(&p("b")), ENOENT);
        r.ok("EXCHANGE file <-> dir", renameat2(&p("nr"), &p("moved"), exchange));
        r.ok("nr is now the dir", lstat(&p("nr")).and(read_file(&p("nr/x"))));
        r.ok("moved is now the file", lstat(&p("moved")).and(read_file(&p("moved"))));
        r.err("EXCHANGE with missing", renameat2(&p("nr"), &p("none"), exchange), ENOENT);
        r.err("NOREPLACE|EXCHANGE", renameat2(&p("nr"), &p("moved"), noreplace | exchange), EINVAL);
    });
    t.finish();
}

#[test]
fn test_attr_ops() {
    let t = Pair::new();
    t.both("chmod", |r| {
        r.ok("create f", put(&r.p("f"), b"data", 0o644));
        for mode in [0o600, 0o4755, 0o2755, 0o2745, 0o1755, 0o7777, 0o000] {
            r.ok(&format!("chmod f {mode:04o}"), chmod(&r.p("f"), mode));
            r.ok(&format!("stat f after {mode:04o}"), stat(&r.p("f")));
        }
        r.ok("mkdir d", mkdir(&r.p("d"), 0o755));
        r.ok("chmod d 1777", chmod(&r.p("d"), 0o1777));
        r.ok("stat d", stat(&r.p("d")));
        r.ok("symlink l -> f", symlink("f", &r.p("l")));
        r.ok("chmod through symlink", chmod(&r.p("l"), 0o640));
        r.ok("stat f (target changed)", stat(&r.p("f")));
        r.ok("lstat l (link unchanged)", lstat(&r.p("l")));
        r.err("chmod missing", chmod(&r.p("none"), 0o644), ENOENT);
        let fd = r.open("open f O_RDONLY", &r.p("f"), O_RDONLY, 0);
        r.ok("fchmod 0604", fchmod(&fd, 0o604));
        r.ok("fstat", fstat(&fd));
    });
    t.both("chown as root", |r| {
        let g = r.p("g");
        r.ok("create g", put(&g, b"", 0o644));
        r.ok("chown g 4001:4002", chown(&g, 4001, 4002));
        r.ok("stat g", stat(&g));
        r.ok("chown g -1:4003", chown(&g, KEEP, 4003));
        r.ok("stat g (gid only)", stat(&g));
        r.ok("chown g 4005:-1", chown(&g, 4005, KEEP));
        r.ok("stat g (uid only)", stat(&g));
        r.ok("symlink lg -> g", symlink("g", &r.p("lg")));
        r.ok("lchown lg 4001:4001", lchown(&r.p("lg"), 4001, 4001));
        r.ok("lstat lg", lstat(&r.p("lg")));
        r.ok("stat g (unchanged by lchown)", stat(&g));
        r.ok("chown through symlink 0:0", chown(&r.p("lg"), 0, 0));
        r.ok("stat g (changed)", stat(&g));
        r.err("chown missing", chown(&r.p("none"), 0, 0), ENOENT);
        r.ok("chmod g 6755", chmod(&g, 0o6755));
        r.ok("chown g 0:0 (same ids)", chown(&g, 0, 0));
        r.ok("stat g (set-id bits after chown)", stat(&g));
        r.ok("chmod g 2745", chmod(&g, 0o2745));
        r.ok("chown g 4001:4001", chown(&g, 4001, 4001));
        r.ok("stat g (setgid without group x)", stat(&g));
        r.ok(
            "mkdir sd 2755 + chown 4001:4001",
            all(&[mkdir(&r.p("sd"), 0o755), chmod(&r.p("sd"), 0o2755), chown(&r.p("sd"), 4001, 4001)]),
        );
        r.ok("stat sd (dirs keep setgid)", stat(&r.p("sd")));
        let fd = r.open("open g O_RDONLY", &g, O_RDONLY, 0);
        r.ok("fchown 4005:4005", fchown(&fd, 4005, 4005));
        r.ok("fstat", fstat(&fd));
    });
    t.both("truncate", |r| {
        let f = r.p("t");
        r.ok("create t", put(&f, b"0123456789", 0o644));
        r.ok("truncate t to 100000", truncate(&f, 100_000));
        r.ok("stat t", stat(&f));
        r.ok("read t", read_file(&f));
        r.ok("truncate t to 3", truncate(&f, 3));
        r.ok("read t", read_file(&f));
        r.err("truncate a dir", truncate(&r.p("d"), 0), EISDIR);
        r.err("truncate missing", truncate(&r.p("none"), 0), ENOENT);
        r.err("truncate negative", truncate(&f, -1), EINVAL);
        let ro = r.open("open t O_RDONLY", &f, O_RDONLY, 0);
        r.err("ftruncate a read-only fd", ftruncate(&ro, 5), EINVAL);
        let wo = r.open("open t O_WRONLY", &f, O_WRONLY, 0);
        r.ok("ftruncate to 4096", ftruncate(&wo, 4096));
        r.ok("fstat", fstat(&wo));
        r.ok("read t", read_file(&f));
    });
    t.both("utimensat", |r| {
        let u = r.p("u");
        r.ok("create u", put(&u, b"u", 0o644));
        r.ok("explicit times", utimens(&u, [(1_000_000_000, 123_456_789), (1_500_000_000, 987_654_321)], 0));
        r.times("times after explicit", "u", true);
        r.ok("OMIT atime, explicit mtime", utimens(&u, [OMIT, (2_000_000_000, 5)], 0));
        r.times("times after OMIT/explicit", "u", true);
        r.ok("OMIT both", utimens(&u, [OMIT, OMIT], 0));
        r.times("times after OMIT/OMIT", "u", true);
        let since = now();
        r.ok("NOW atime, OMIT mtime", utimens(&u, [NOW, OMIT], 0));
        let s = raw_stat(&u, true);
        r.ok("atime is now, mtime kept", s.map(|s| (are_now(&s, since).0, s.st_mtime, s.st_mtime_nsec)));
        r.ok("NOW both", utimens(&u, [NOW, NOW], 0));
        r.ok("both are now", raw_stat(&u, true).map(|s| are_now(&s, since)));
        let fd = r.open("open u O_RDONLY", &u, O_RDONLY, 0);
        r.ok("futimens explicit", futimens(&fd, [(1234, 5678), (8765, 4321)]));
        r.ok("fstat times", raw_fstat(&fd).map(|s| times(&s)));
        r.ok("futimens OMIT/NOW", futimens(&fd, [OMIT, NOW]));
        r.ok("atime kept, mtime now", raw_fstat(&fd).map(|s| (s.st_atime, s.st_atime_nsec, are_now(&s, since).1)));
        r.ok("explicit again", utimens(&u, [(300, 3), (400, 4)], 0));
        r.ok("symlink ul -> u", symlink("u", &r.p("ul")));
        r.ok("AT_SYMLINK_NOFOLLOW on the link", utimens(&r.p("ul"), [(111, 1), (222, 2)], libc::AT_SYMLINK_NOFOLLOW));
        r.times("link times", "ul", false);
        r.times("target times unchanged", "u", true);
        r.ok("through the link", utimens(&r.p("ul"), [(555, 5), (666, 6)], 0));
        r.times("target times changed", "u", true);
        r.err("missing file", utimens(&r.p("none"), [NOW, NOW], 0), ENOENT);
        r.err("nsec out of range", utimens(&u, [(1, 1_000_000_000), OMIT], 0), EINVAL);
    });
    t.both("statfs", |r| {
        r.ok("statfs root", statfs(&r.p("")));
        r.ok("statfs a file", statfs(&r.p("u")));
        r.err("statfs missing", statfs(&r.p("none")), ENOENT);
    });
    t.both("access as root", |r| {
        let a = r.p("a");
        r.ok("create a 0644", put(&a, b"", 0o644));
        r.ok("F_OK", access(&a, libc::F_OK));
        r.ok("R_OK|W_OK", access(&a, R_OK | W_OK));
        r.err("X_OK on 0644 (root needs some x bit)", access(&a, X_OK), EACCES);
        r.ok("chmod a 0000", chmod(&a, 0));
        r.ok("R_OK|W_OK on 0000", access(&a, R_OK | W_OK));
        r.ok("chmod a 0010", chmod(&a, 0o010));
        r.ok("X_OK on 0010", access(&a, X_OK));
        r.err("access missing", access(&r.p("none"), libc::F_OK), ENOENT);
        r.ok("faccessat AT_EACCESS", faccessat(&a, R_OK | X_OK, libc::AT_EACCESS));
        r.ok("symlink dangle -> nowhere", symlink("nowhere", &r.p("dangle")));
        r.ok("faccessat NOFOLLOW on dangling link", faccessat(&r.p("dangle"), libc::F_OK, libc::AT_SYMLINK_NOFOLLOW));
        r.err("faccessat following it", faccessat(&r.p("dangle"), libc::F_OK, 0), ENOENT);
    });
    t.finish();
}

/// Issue 11, case 3: times before 1970 (negative seconds) are set and reported, as natively;
/// the daemon used to refuse them with EINVAL.
#[test]
fn test_regression_times_before_1970() {
    let t = Pair::new();
    t.both("times before 1970", |r| {
        let f = r.p("old");
        // 1960-01-01 00:00:00 UTC and 1969-12-31 23:59:59.5.
        let (y1960, just_before) = ((-315_619_200, 0), (-1, 500_000_000));
        r.ok("create old", put(&f, b"old", 0o644));
        r.ok("utimensat 1960 / just before the epoch", utimens(&f, [y1960, just_before], 0));
        r.times("times after utimensat", "old", true);
        let fd = r.open("open old O_RDONLY", &f, O_RDONLY, 0);
        r.ok("futimens just before the epoch / 1960", futimens(&fd, [just_before, y1960]));
        r.ok("fstat times", raw_fstat(&fd).map(|s| times(&s)));
        r.ok("utimensat far past (year -1000)", utimens(&f, [(-93_755_745_600, 1), OMIT], 0));
        r.times("times after the far past", "old", true);
        r.ok("chown old to alice", chown(&f, ALICE.uid, ALICE.gid));
        r.as_user(&ALICE, |r| {
            r.ok("utimensat 1960 on her own file", utimens(&r.p("old"), [y1960, y1960], 0));
            r.times("times as alice", "old", true);
        });
    });
    t.finish();
}
