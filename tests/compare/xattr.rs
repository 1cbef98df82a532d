//! test_xattr: user.* extended attributes, as root and as a non-root user.

use libc::{EACCES, EEXIST, ENODATA, ENOENT, EOPNOTSUPP, EPERM, ERANGE, O_RDONLY, S_IFIFO};

use crate::harness::*;
use crate::ops::*;

#[test]
fn test_xattr() {
    let t = Pair::new();
    t.both("user xattrs", |r| {
        let x = r.p("x");
        r.ok(
            "create x, dir xd, symlink xl, fifo xp",
            all(&[
                put(&x, b"", 0o644),
                mkdir(&r.p("xd"), 0o755),
                symlink("x", &r.p("xl")),
                mknod(&r.p("xp"), S_IFIFO | 0o644, 0),
            ]),
        );
        r.err("get missing", getxattr(&x, "user.a", 100), ENODATA);
        r.ok(
            "list (none)",
            listxattr(&x, 1024, true).map(|v| v.into_iter().filter(|n| n.starts_with("user.")).count()),
        );
        r.ok("set user.a", setxattr(&x, "user.a", b"alpha", 0));
        r.ok("size-0 probe", getxattr(&x, "user.a", 0));
        r.ok("get user.a", getxattr(&x, "user.a", 100));
        r.err("get with a too small buffer", getxattr(&x, "user.a", 2), ERANGE);
        r.err("XATTR_CREATE on existing", setxattr(&x, "user.a", b"z", libc::XATTR_CREATE), EEXIST);
        r.err("XATTR_REPLACE on missing", setxattr(&x, "user.b", b"z", libc::XATTR_REPLACE), ENODATA);
        r.ok("XATTR_REPLACE on existing", setxattr(&x, "user.a", b"alpha2", libc::XATTR_REPLACE));
        r.ok("get replaced", getxattr(&x, "user.a", 100));
        r.ok("XATTR_CREATE new", setxattr(&x, "user.b", b"beta", libc::XATTR_CREATE));
        r.ok("set empty value", setxattr(&x, "user.empty", b"", 0));
        r.ok("probe empty value", getxattr(&x, "user.empty", 0));
        r.ok("get empty value", getxattr(&x, "user.empty", 10));
        r.ok("set 4000-byte value", setxattr(&x, "user.big", &[0x5a; 4000], 0));
        r.ok("get 4000-byte value", getxattr(&x, "user.big", 65536));
        r.ok("list size probe", listxattr(&x, 0, true));
        r.ok("list", listxattr(&x, 1024, true));
        r.err("list with a too small buffer", listxattr(&x, 3, true), ERANGE);
        r.ok("remove user.b", removexattr(&x, "user.b"));
        r.err("remove it again", removexattr(&x, "user.b"), ENODATA);
        r.ok("list after remove", listxattr(&x, 1024, true));
        r.ok("set on a dir", setxattr(&r.p("xd"), "user.d", b"dir", 0));
        r.ok("get on a dir", getxattr(&r.p("xd"), "user.d", 100));
        r.ok("get through a symlink", getxattr(&r.p("xl"), "user.a", 100));
        r.err("lsetxattr user.* on a symlink", lsetxattr(&r.p("xl"), "user.l", b"v", 0), EPERM);
        r.err("user.* on a fifo", setxattr(&r.p("xp"), "user.p", b"v", 0), EPERM);
        r.err("unknown namespace", setxattr(&x, "bogus.a", b"v", 0), EOPNOTSUPP);
        r.err("name too long", setxattr(&x, &format!("user.{}", "n".repeat(256)), b"v", 0), ERANGE);
        r.err("value too large", setxattr(&x, "user.huge", &vec![1u8; 65537], 0), libc::E2BIG);
        r.err("get on a missing file", getxattr(&r.p("none"), "user.a", 100), ENOENT);
        let fd = r.open("open x O_RDONLY", &x, O_RDONLY, 0);
        r.ok("fsetxattr", fsetxattr(&fd, "user.fd", b"via fd", 0));
        r.ok("fgetxattr", fgetxattr(&fd, "user.fd"));
        r.ok("unlink x; fd keeps its xattrs", unlink(&x).and(fgetxattr(&fd, "user.a")));
    });
    t.both("xattrs as non-root", |r| {
        r.ok(
            "root file rx 0644 with user.a",
            put(&r.p("rx"), b"", 0o644).and(setxattr(&r.p("rx"), "user.a", b"root", 0)),
        );
        r.ok("alice's file ax", put(&r.p("ax"), b"", 0o644).and(chown(&r.p("ax"), ALICE.uid, ALICE.gid)));
        r.as_user(&ALICE, |r| {
            r.ok("get on root's readable file", getxattr(&r.p("rx"), "user.a", 100));
            r.err("set on root's 0644 file", setxattr(&r.p("rx"), "user.n", b"v", 0), EACCES);
            r.err("remove on root's file", removexattr(&r.p("rx"), "user.a"), EACCES);
            r.ok("set on own file", setxattr(&r.p("ax"), "user.mine", b"alice", 0));
            r.ok("get on own file", getxattr(&r.p("ax"), "user.mine", 100));
            r.ok("list own file", listxattr(&r.p("ax"), 1024, true));
        });
        r.ok("chmod rx 0600", chmod(&r.p("rx"), 0o600));
        r.as_user(&ALICE, |r| {
            r.err("get on an unreadable file", getxattr(&r.p("rx"), "user.a", 100), EACCES);
        });
    });
    t.finish();
}
