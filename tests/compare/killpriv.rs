//! Privilege-dropping side effects (issue 11, case 1). Natively a write, truncate, fallocate or
//! copy_file_range by a process without CAP_FSETID clears the file's set-user-ID bit (and its
//! set-group-ID bit when group-executable), and any write or truncate removes its
//! security.capability, whoever owns it: the kernel does it on the writer's behalf. On the mount
//! the request must succeed and the bits go just the same. Root (with CAP_FSETID) keeps them.
//!
//! test_regression_killpriv_write, test_regression_killpriv_truncate,
//! test_regression_killpriv_fallocate, test_regression_killpriv_copy_file_range,
//! test_regression_killpriv_capability.

use libc::{
    ENODATA, EPERM, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE, O_APPEND, O_RDONLY, O_TRUNC,
    O_WRONLY,
};

use crate::harness::*;
use crate::ops::*;

// Inside `as_user` an fd is closed with `drop`: the forked child's copy of the harness's fd gate
// still counts the parent's reader, so `Rec::close` would wait for ever there.

/// Root's file `name` with ten bytes and exactly `mode` (set-id bits included).
fn setid_file(r: &mut Rec, name: &str, mode: u32) {
    let p = r.p(name);
    r.ok(&format!("create {name} {mode:04o}"), put(&p, b"0123456789", 0o600).and(chmod(&p, mode)));
}

fn mode_of(r: &mut Rec, name: &str) {
    let m = stat(&r.p(name)).map(|s| s.mode);
    r.ok(&format!("mode of {name}"), m);
}

#[test]
fn test_regression_killpriv_write() {
    let t = Pair::new();
    t.both("write clears set-id bits", |r| {
        for (name, mode) in [("suid", 0o4777), ("sgid", 0o2777), ("sgid_nox", 0o2767), ("both", 0o6777)] {
            setid_file(r, name, mode);
        }
        setid_file(r, "suid_append", 0o4777);
        setid_file(r, "suid_root", 0o4777);
        r.as_user(&ALICE, |r| {
            for name in ["suid", "sgid", "sgid_nox", "both"] {
                let fd = r.open(&format!("open {name} O_WRONLY"), &r.p(name), O_WRONLY, 0);
                r.ok(&format!("write {name}"), write(&fd, b"alice"));
                drop(fd);
                mode_of(r, name);
            }
            let fd = r.open("open suid_append O_WRONLY|O_APPEND", &r.p("suid_append"), O_WRONLY | O_APPEND, 0);
            r.ok("append to suid_append", write(&fd, b"alice"));
            drop(fd);
            mode_of(r, "suid_append");
        });
        let fd = r.open("root opens suid_root O_WRONLY", &r.p("suid_root"), O_WRONLY, 0);
        r.ok("root writes suid_root", write(&fd, b"root"));
        r.close(fd);
        mode_of(r, "suid_root");
    });
    t.finish();
}

#[test]
fn test_regression_killpriv_truncate() {
    let t = Pair::new();
    t.both("truncate clears set-id bits", |r| {
        for name in ["by_path", "by_fd", "by_open", "root"] {
            setid_file(r, name, 0o6777);
        }
        r.as_user(&ALICE, |r| {
            r.ok("truncate by_path", truncate(&r.p("by_path"), 3));
            mode_of(r, "by_path");
            let fd = r.open("open by_fd O_WRONLY", &r.p("by_fd"), O_WRONLY, 0);
            r.ok("ftruncate by_fd", ftruncate(&fd, 4));
            drop(fd);
            mode_of(r, "by_fd");
            r.ok("open by_open O_WRONLY|O_TRUNC", opens(&r.p("by_open"), O_WRONLY | O_TRUNC, 0));
            mode_of(r, "by_open");
        });
        r.ok("root truncates root", truncate(&r.p("root"), 2));
        mode_of(r, "root");
    });
    t.finish();
}

#[test]
fn test_regression_killpriv_fallocate() {
    let t = Pair::new();
    t.both("fallocate clears set-id bits", |r| {
        let modes = [
            ("alloc", 0),
            ("keep_size", FALLOC_FL_KEEP_SIZE),
            ("punch", FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE),
            ("zero", FALLOC_FL_ZERO_RANGE),
        ];
        for (name, _) in modes {
            setid_file(r, name, 0o2777);
        }
        setid_file(r, "suid", 0o4777);
        setid_file(r, "root", 0o6777);
        r.as_user(&ALICE, |r| {
            for (name, mode) in modes {
                let fd = r.open(&format!("open {name} O_WRONLY"), &r.p(name), O_WRONLY, 0);
                r.ok(&format!("fallocate {name}"), fallocate(&fd, mode, 0, 8192));
                drop(fd);
                mode_of(r, name);
            }
            let fd = r.open("open suid O_WRONLY", &r.p("suid"), O_WRONLY, 0);
            r.ok("punch a hole in suid", fallocate(&fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4));
            drop(fd);
            mode_of(r, "suid");
        });
        let fd = r.open("root opens root O_WRONLY", &r.p("root"), O_WRONLY, 0);
        r.ok("root fallocates root", fallocate(&fd, 0, 0, 8192));
        r.close(fd);
        mode_of(r, "root");
    });
    t.finish();
}

#[test]
fn test_regression_killpriv_copy_file_range() {
    let t = Pair::new();
    t.both("copy_file_range clears set-id bits", |r| {
        r.ok("create src", put(&r.p("src"), b"copied bytes", 0o644));
        setid_file(r, "dst", 0o6777);
        setid_file(r, "dst_root", 0o6777);
        r.as_user(&ALICE, |r| {
            let s = r.open("open src", &r.p("src"), O_RDONLY, 0);
            let d = r.open("open dst O_WRONLY", &r.p("dst"), O_WRONLY, 0);
            r.ok("copy into dst", cfr(&s, Some(0), &d, Some(2), 6));
            drop(s);
            drop(d);
            mode_of(r, "dst");
        });
        let s = r.open("root opens src", &r.p("src"), O_RDONLY, 0);
        let d = r.open("root opens dst_root O_WRONLY", &r.p("dst_root"), O_WRONLY, 0);
        r.ok("root copies into dst_root", cfr(&s, Some(0), &d, Some(2), 6));
        r.close(s);
        r.close(d);
        mode_of(r, "dst_root");
    });
    t.finish();
}

/// A valid vfs_cap_data, revision 2: effective, with CAP_NET_BIND_SERVICE permitted.
fn cap_value() -> Vec<u8> {
    let words: [u32; 5] = [0x0200_0001, 1 << 10, 0, 0, 0];
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

#[test]
fn test_regression_killpriv_capability() {
    // security.* xattrs pass only with --xattr.
    let t = Pair::with_args(&["--xattr"]);
    t.both("a write removes security.capability", |r| {
        let cap = cap_value();
        for name in ["appended", "written", "truncated", "kept", "by_root"] {
            let p = r.p(name);
            r.ok(
                &format!("alice's {name} 0755 with a capability"),
                all(&[
                    put(&p, b"#!/bin/true\n", 0o755),
                    chown(&p, ALICE.uid, ALICE.gid),
                    chmod(&p, 0o755),
                    setxattr(&p, "security.capability", &cap, 0),
                ]),
            );
            r.ok(&format!("{name} has it"), getxattr(&p, "security.capability", 64));
        }
        r.as_user(&ALICE, |r| {
            let fd = r.open("open appended O_WRONLY|O_APPEND", &r.p("appended"), O_WRONLY | O_APPEND, 0);
            r.ok("append to appended", write(&fd, b"# more\n"));
            drop(fd);
            r.err("appended lost it", getxattr(&r.p("appended"), "security.capability", 64), ENODATA);
            let fd = r.open("open written O_WRONLY", &r.p("written"), O_WRONLY, 0);
            r.ok("write written", write(&fd, b"#"));
            drop(fd);
            r.err("written lost it", getxattr(&r.p("written"), "security.capability", 64), ENODATA);
            r.ok("truncate truncated", truncate(&r.p("truncated"), 2));
            r.err("truncated lost it", getxattr(&r.p("truncated"), "security.capability", 64), ENODATA);
            r.err("removexattr by its owner", removexattr(&r.p("kept"), "security.capability"), EPERM);
            r.ok("kept has it", getxattr(&r.p("kept"), "security.capability", 64));
        });
        let fd = r.open("root opens by_root O_WRONLY|O_APPEND", &r.p("by_root"), O_WRONLY | O_APPEND, 0);
        r.ok("root appends to by_root", write(&fd, b"# root\n"));
        r.close(fd);
        r.err("by_root lost it", getxattr(&r.p("by_root"), "security.capability", 64), ENODATA);
        for name in ["appended", "written", "truncated", "kept", "by_root"] {
            mode_of(r, name);
        }
    });
    t.finish();
}
