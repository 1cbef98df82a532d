//! test_permissions_nonroot: permission checks as non-root users (forked children with
//! their own uid/gid/supplementary groups): EACCES/EPERM, sticky and setgid directories,
//! chown/chmod as the owner, access(2); test_regression_exec_only (issue 11, case 2).

use libc::{EACCES, EPERM, O_CREAT, O_RDONLY, O_TRUNC, O_WRONLY, R_OK, S_IFCHR, S_IFIFO, W_OK, X_OK};

use crate::common::Transport;
use crate::harness::*;
use crate::ops::*;

#[test]
fn test_permissions_nonroot() {
    let t = Pair::new();
    if t.transport() == Transport::VhostUser {
        // A virtio-fs request carries the caller's uid and gid but not its supplementary groups
        // (as with virtiofsd): the guest kernel grants access through one, the host then refuses.
        let why = "supplementary groups do not travel over virtio";
        for step in [
            "[alice] open via the supplementary group",
            "[alice] chgrp to the supplementary group",
            "[alice] stat own",
            "[alice] stat own (setgid kept)",
        ] {
            t.expect_divergence(step, why);
        }
    }
    t.both("no write permission on the dir", |r| {
        r.ok(
            "mkdir ro 0755, ro/locked 0700, pub 0777",
            all(&[
                mkdir(&r.p("ro"), 0o755),
                mkdir(&r.p("ro/locked"), 0o700),
                mkdir(&r.p("pub"), 0o777),
                chmod(&r.p("pub"), 0o777),
            ]),
        );
        r.ok(
            "create ro/rootfile 0644, ro/world 0666",
            put(&r.p("ro/rootfile"), b"root", 0o644).and(put(&r.p("ro/world"), b"w", 0o644)),
        );
        r.ok("chmod ro/world 0666", chmod(&r.p("ro/world"), 0o666));
        r.as_user(&ALICE, |r| {
            let rf = r.p("ro/rootfile");
            r.err("create in ro", opens(&r.p("ro/new"), O_CREAT | O_WRONLY, 0o644), EACCES);
            r.err("mkdir in ro", mkdir(&r.p("ro/newdir"), 0o755), EACCES);
            r.err("symlink in ro", symlink("x", &r.p("ro/newlink")), EACCES);
            r.err("mknod fifo in ro", mknod(&r.p("ro/newfifo"), S_IFIFO | 0o644, 0), EACCES);
            r.err("unlink root's file in ro", unlink(&rf), EACCES);
            r.err("rename in ro", rename(&rf, &r.p("ro/moved")), EACCES);
            r.err("open root's 0644 file O_WRONLY", opens(&rf, O_WRONLY, 0), EACCES);
            r.err("O_RDONLY|O_TRUNC without write permission", opens(&rf, O_RDONLY | O_TRUNC, 0), EACCES);
            r.ok("read root's 0644 file", read_file(&rf));
            r.err("truncate root's file", truncate(&rf, 0), EACCES);
            r.err("stat inside a 0700 dir", stat(&r.p("ro/locked/x")), EACCES);
            r.err("readdir a 0700 dir", names(&r.p("ro/locked")), EACCES);
            r.err("chmod root's file", chmod(&rf, 0o666), EPERM);
            r.err("chown root's file to self", chown(&rf, ALICE.uid, ALICE.gid), EPERM);
            r.err("utimensat explicit on root's file", utimens(&rf, [(1, 0), (1, 0)], 0), EPERM);
            r.err("utimensat NOW without write access", utimens(&rf, [NOW, NOW], 0), EACCES);
            r.ok("utimensat NOW with write access", utimens(&r.p("ro/world"), [NOW, NOW], 0));
            r.err("utimensat explicit with write access", utimens(&r.p("ro/world"), [(1, 0), (1, 0)], 0), EPERM);
            r.ok("write root's 0666 file", put(&r.p("ro/world"), b"alice was here", 0o644));
            r.err("mknod a char device", mknod(&r.p("pub/chr"), S_IFCHR | 0o600, libc::makedev(1, 3)), EPERM);
            r.ok("mknod a fifo in pub", mknod(&r.p("pub/fifo"), S_IFIFO | 0o600, 0));
            r.rec("hard link to root's file (protected_hardlinks)", link(&rf, &r.p("pub/hl")));
        });
    });
    t.both("access as non-root", |r| {
        let mk = |r: &Rec, name: &str, gid: u32, mode: u32| {
            put(&r.p(name), b"data", 0o600).and(chown(&r.p(name), 0, gid)).and(chmod(&r.p(name), mode))
        };
        r.ok(
            "root files with various groups and modes",
            all(&[
                mk(r, "a0600", 0, 0o600),
                mk(r, "a0640m", GRP_MEMBER, 0o640),
                mk(r, "a0640o", GRP_OTHER, 0o640),
                mk(r, "a0755", 0, 0o755),
                mk(r, "a0644", 0, 0o644),
                mkdir(&r.p("dx"), 0o711),
                mkdir(&r.p("dnox"), 0o744),
            ]),
        );
        r.ok("files inside dx and dnox", put(&r.p("dx/f"), b"", 0o644).and(put(&r.p("dnox/f"), b"", 0o644)));
        r.as_user(&ALICE, |r| {
            r.err("R_OK on root's 0600", access(&r.p("a0600"), R_OK), EACCES);
            r.ok("R_OK via the supplementary group", access(&r.p("a0640m"), R_OK));
            r.err("W_OK via the supplementary group (0640)", access(&r.p("a0640m"), W_OK), EACCES);
            r.err("R_OK via a non-member group", access(&r.p("a0640o"), R_OK), EACCES);
            r.ok("X_OK on 0755", access(&r.p("a0755"), X_OK));
            r.err("X_OK on 0644", access(&r.p("a0644"), X_OK), EACCES);
            r.err("W_OK on root's 0644", access(&r.p("a0644"), W_OK), EACCES);
            r.ok("faccessat AT_EACCESS via group", faccessat(&r.p("a0640m"), R_OK, libc::AT_EACCESS));
            r.ok("open via the supplementary group", opens(&r.p("a0640m"), O_RDONLY, 0));
            r.err("open via a non-member group", opens(&r.p("a0640o"), O_RDONLY, 0), EACCES);
            r.ok("search-only dir: stat inside", stat(&r.p("dx/f")));
            r.err("search-only dir: readdir", names(&r.p("dx")), EACCES);
            r.err("no-search dir: stat inside", stat(&r.p("dnox/f")), EACCES);
            r.ok("no-search dir: readdir names", names(&r.p("dnox")));
        });
    });
    t.both("sticky directory", |r| {
        let s = |n: &str| format!("sticky/{n}");
        r.ok("mkdir sticky 1777", mkdir(&r.p("sticky"), 0o755).and(chmod(&r.p("sticky"), 0o1777)));
        r.as_user(&BOB, |r| {
            r.ok("create sticky/bobs", put(&r.p(&s("bobs")), b"bob", 0o666));
            r.ok("mkdir sticky/bobdir", mkdir(&r.p(&s("bobdir")), 0o777));
        });
        r.as_user(&ALICE, |r| {
            r.err("unlink bob's file", unlink(&r.p(&s("bobs"))), EPERM);
            r.err("rename bob's file away", rename(&r.p(&s("bobs")), &r.p(&s("x"))), EPERM);
            r.err("rmdir bob's dir", rmdir(&r.p(&s("bobdir"))), EPERM);
            r.ok("create her own file", put(&r.p(&s("alices")), b"alice", 0o644));
            r.err("rename hers over bob's", rename(&r.p(&s("alices")), &r.p(&s("bobs"))), EPERM);
            r.err("write into bob's 0644 file", opens(&r.p(&s("bobs")), O_WRONLY, 0), EACCES);
            r.ok("unlink her own file", unlink(&r.p(&s("alices"))));
        });
        r.as_user(&BOB, |r| {
            r.ok("unlink his own file", unlink(&r.p(&s("bobs"))));
        });
        r.ok("root removes bob's dir", rmdir(&r.p(&s("bobdir"))));
    });
    t.both("setgid directory", |r| {
        let sg = |n: &str| format!("sg/{n}");
        r.ok(
            "mkdir sg 2777 group 4002",
            all(&[mkdir(&r.p("sg"), 0o777), chown(&r.p("sg"), 0, GRP_MEMBER), chmod(&r.p("sg"), 0o2777)]),
        );
        r.ok("stat sg", stat(&r.p("sg")));
        r.as_user(&ALICE, |r| {
            r.ok("create sg/f", put(&r.p(&sg("f")), b"", 0o666));
            r.ok("stat sg/f (group inherited)", stat(&r.p(&sg("f"))));
            r.ok("mkdir sg/d", mkdir(&r.p(&sg("d")), 0o777));
            r.ok("stat sg/d (group and setgid inherited)", stat(&r.p(&sg("d"))));
            r.ok("mknod fifo sg/p", mknod(&r.p(&sg("p")), S_IFIFO | 0o644, 0));
            r.ok("stat sg/p", stat(&r.p(&sg("p"))));
            r.ok("symlink sg/l", symlink("f", &r.p(&sg("l"))));
            r.ok("lstat sg/l", lstat(&r.p(&sg("l"))));
        });
        r.as_user(&BOB, |r| {
            r.ok("create sg/b with mode 02755", opens(&r.p(&sg("b")), O_CREAT | O_WRONLY, 0o2755));
            r.ok("stat sg/b (setgid stripped: not in the group)", stat(&r.p(&sg("b"))));
        });
        r.ok("root creates sg/r", put(&r.p(&sg("r")), b"", 0o644));
        r.ok("stat sg/r", stat(&r.p(&sg("r"))));
    });
    t.both("chown & chmod as the owner", |r| {
        let own = |r: &Rec, n: &str, gid: u32| put(&r.p(n), b"", 0o644).and(chown(&r.p(n), ALICE.uid, gid));
        r.ok(
            "alice's files own (her group) and own2 (non-member group)",
            all(&[own(r, "own", ALICE.gid), own(r, "own2", GRP_OTHER)]),
        );
        r.ok("root's 0666 file world", put(&r.p("world"), b"", 0o644).and(chmod(&r.p("world"), 0o666)));
        r.as_user(&ALICE, |r| {
            let o = r.p("own");
            r.ok("chgrp to the supplementary group", chown(&o, KEEP, GRP_MEMBER));
            r.ok("stat own", stat(&o));
            r.err("chgrp to a non-member group", chown(&o, KEEP, GRP_OTHER), EPERM);
            r.err("chown to bob", chown(&o, BOB.uid, KEEP), EPERM);
            r.ok("chown -1:-1", chown(&o, KEEP, KEEP));
            r.ok("chown to herself", chown(&o, ALICE.uid, KEEP));
            r.ok("chmod 02755 (group is hers)", chmod(&o, 0o2755));
            r.ok("stat own (setgid kept)", stat(&o));
            r.ok("chgrp back to her primary group", chown(&o, KEEP, ALICE.gid));
            r.ok("stat own (setgid cleared by chown)", stat(&o));
            r.ok("chmod own2 02755 (group is not hers)", chmod(&r.p("own2"), 0o2755));
            r.ok("stat own2 (setgid silently dropped)", stat(&r.p("own2")));
            r.ok("chmod own 06755", chmod(&o, 0o6755));
            r.ok("write as the owner", open(&o, O_WRONLY, 0).and_then(|fd| write(&fd, b"x")));
            r.ok("stat own (set-id bits cleared by the write)", stat(&o));
            r.ok("chmod own 04755 then truncate", chmod(&o, 0o4755).and(truncate(&o, 0)));
            r.ok("stat own (setuid cleared by truncate)", stat(&o));
            r.ok("utimensat explicit on her own file", utimens(&o, [(5, 5), (6, 6)], 0));
            r.times("times of own", "own", true);
            r.err("chmod root's file", chmod(&r.p("world"), 0o600), EPERM);
            r.err("utimensat explicit on root's 0666 file", utimens(&r.p("world"), [(1, 1), (2, 2)], 0), EPERM);
        });
    });
    t.finish();
}

/// Issue 11, case 2: a program the caller may execute but not read runs, as natively. The
/// kernel opens it for exec (O_RDONLY with its internal exec flag); the daemon used to open it
/// as the caller, who may not read it, and exec failed with EACCES.
#[test]
fn test_regression_exec_only() {
    let t = Pair::new();
    t.both("execute-only programs", |r| {
        let image = std::fs::read("/bin/true").expect("read /bin/true");
        for (name, mode) in [("x0111", 0o111), ("x0711", 0o711), ("x0700", 0o700), ("x0644", 0o644), ("x0000", 0)] {
            r.ok(&format!("copy /bin/true to {name}"), put(&r.p(name), &image, 0o600).and(chmod(&r.p(name), mode)));
        }
        r.ok("root execs x0111", exec(&r.p("x0111")));
        r.err("root execs x0644", exec(&r.p("x0644")), EACCES);
        r.err("root execs x0000", exec(&r.p("x0000")), EACCES);
        r.as_user(&ALICE, |r| {
            for name in ["x0111", "x0711"] {
                r.ok(&format!("exec {name}"), exec(&r.p(name)));
                r.err(&format!("read {name}"), read_file(&r.p(name)), EACCES);
                r.err(&format!("open {name} O_RDONLY"), opens(&r.p(name), O_RDONLY, 0), EACCES);
                r.ok(&format!("access {name} X_OK"), access(&r.p(name), X_OK));
            }
            r.err("exec x0700 (root's only)", exec(&r.p("x0700")), EACCES);
            r.err("exec x0644 (not executable)", exec(&r.p("x0644")), EACCES);
        });
        r.as_user(&ROOT, |r| r.ok("root execs x0711 from a child", exec(&r.p("x0711"))));
    });
    t.finish();
}
