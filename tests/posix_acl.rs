//! `--posix-acl`: FUSE_POSIX_ACL with FUSE_DONT_MASK, over /dev/fuse and vhost-user. The guest
//! kernel checks ACLs (it reads them with GETXATTR), ACL xattrs reach the host as ACLs, a
//! parent's default ACL replaces the creator's umask (the creating call runs with the request's
//! umask, so the host decides), chmod and ACLs keep each other in step as on a local file system
//! (each case is compared with the same operations done natively), and a crash on these paths
//! replays once.

mod common;

use std::path::Path;

use common::sys::{self as s, R};
use common::{Mount, Transport};

const BOTH: [Transport; 2] = [Transport::Fuse, Transport::VhostUser];

const ACCESS: &str = "system.posix_acl_access";
const DEFAULT: &str = "system.posix_acl_default";

// The kernel's xattr form of an ACL (include/uapi/linux/posix_acl_xattr.h).
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;
const UNDEFINED: u32 = u32::MAX;

fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for &(tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// user::rw-, user:4242:r--, group::---, mask::r--, other::---
fn named_user_acl() -> Vec<u8> {
    acl(&[
        (USER_OBJ, 6, UNDEFINED),
        (USER, 4, 4242),
        (GROUP_OBJ, 0, UNDEFINED),
        (MASK, 4, UNDEFINED),
        (OTHER, 0, UNDEFINED),
    ])
}

/// Runs `f` in a forked child with the given uid/gid (if any) and umask; returns what it
/// returns (an errno, 0 for success) — as its exit status.
fn in_child(ids: Option<u32>, umask: u32, f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child only makes syscalls and exits with _exit; it returns to no Rust code
    // that could touch the parent's threads' state.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: plain syscalls in the child.
        unsafe {
            libc::umask(umask);
            if let Some(id) = ids
                && (libc::syscall(libc::SYS_setresgid, id, id, id) != 0
                    || libc::syscall(libc::SYS_setresuid, id, id, id) != 0)
            {
                libc::_exit(100);
            }
            libc::_exit(f());
        }
    }
    let mut status = 0;
    // SAFETY: waits for the child made above.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(libc::WIFEXITED(status), "child died: {status:#x}");
    libc::WEXITSTATUS(status)
}

fn open_errno(p: &Path, flags: i32, mode: u32) -> i32 {
    match s::open(p, flags, mode) {
        Ok(fd) => {
            let _ = s::close(fd);
            0
        }
        Err(e) => e,
    }
}

fn mode(p: &Path) -> u32 {
    s::lstat(p).unwrap().st_mode & 0o7777
}

fn chmod(p: &Path, m: u32) -> R<()> {
    let c = s::cs(p);
    // SAFETY: a NUL-terminated path.
    s::chk(unsafe { libc::chmod(c.as_ptr(), m) } as i64).map(drop)
}

#[test]
fn test_posix_acl_named_user_entry_grants_what_the_mode_does_not() {
    for t in BOTH {
        for on in [true, false] {
            let m = Mount::new_on(t, if on { &["--posix-acl"][..] } else { &["--xattr"][..] });
            for name in ["f", "g"] {
                std::fs::write(m.share.join(name), b"secret").unwrap();
                chmod(&m.share.join(name), 0o600).unwrap();
            }
            s::setxattr(&m.path("f"), None, ACCESS, &named_user_acl(), 0).unwrap();
            assert_eq!(s::getxattr(&m.share.join("f"), None, ACCESS).unwrap(), named_user_acl(), "{t:?} {on}");
            assert_eq!(mode(&m.share.join("f")), 0o640, "{t:?}: the host set the group bits from the mask");
            let (f, g) = (m.path("f"), m.path("g"));
            let as_4242 =
                |p: std::path::PathBuf| in_child(Some(4242), 0o022, move || open_errno(&p, libc::O_RDONLY, 0));
            if on {
                assert_eq!(mode(&f), 0o640, "{t:?}: the guest sees the new mode");
                assert_eq!(as_4242(f), 0, "{t:?}: user:4242:r-- lets 4242 read");
            } else {
                // Without FUSE_POSIX_ACL the guest kernel checks the mode bits alone.
                assert_eq!(as_4242(f), libc::EACCES, "{t:?}: without --posix-acl the ACL is not checked");
            }
            assert_eq!(as_4242(g), libc::EACCES, "{t:?} {on}: no ACL, no access");
        }
    }
}

/// Creates a file (0666) and a directory (0777) in `dir` with umask 077, in a child.
fn create_with_umask_077(dir: &Path) {
    let (f, d) = (dir.join("f"), dir.join("d"));
    let r = in_child(None, 0o077, move || {
        let e = open_errno(&f, libc::O_CREAT | libc::O_WRONLY | libc::O_EXCL, 0o666);
        if e != 0 {
            return e;
        }
        s::mkdir(&d, 0o777).err().unwrap_or(0)
    });
    assert_eq!(r, 0, "create in {dir:?}");
}

#[test]
fn test_posix_acl_default_acl_replaces_the_umask_as_natively() {
    let default = acl(&[(USER_OBJ, 7, UNDEFINED), (GROUP_OBJ, 7, UNDEFINED), (OTHER, 5, UNDEFINED)]);
    for t in BOTH {
        let m = Mount::new_on(t, &["--posix-acl"]);
        let native = tempfile::tempdir().unwrap();
        for base in [m.share.as_path(), native.path()] {
            for d in ["withdef", "plain"] {
                std::fs::create_dir(base.join(d)).unwrap();
                chmod(&base.join(d), 0o777).unwrap();
            }
            s::setxattr(&base.join("withdef"), None, DEFAULT, &default, 0).unwrap();
        }
        for d in ["withdef", "plain"] {
            create_with_umask_077(&m.path(d));
            create_with_umask_077(&native.path().join(d));
            for obj in ["f", "d"] {
                let (ours, theirs) = (m.share.join(d).join(obj), native.path().join(d).join(obj));
                assert_eq!(mode(&ours), mode(&theirs), "{t:?}: {d}/{obj} mode as natively");
                assert_eq!(
                    s::getxattr(&ours, None, ACCESS).ok(),
                    s::getxattr(&theirs, None, ACCESS).ok(),
                    "{t:?}: {d}/{obj} access ACL as natively"
                );
            }
            assert_eq!(
                s::getxattr(&m.share.join(d).join("d"), None, DEFAULT).ok(),
                s::getxattr(&native.path().join(d).join("d"), None, DEFAULT).ok(),
                "{t:?}: {d}/d inherits the default ACL as natively"
            );
        }
        assert_eq!(mode(&m.share.join("withdef/f")), 0o664, "{t:?}: the default ACL, not the umask");
        assert_eq!(mode(&m.share.join("plain/f")), 0o600, "{t:?}: no default ACL: the umask");
    }
}

#[test]
fn test_posix_acl_chmod_and_acl_keep_in_step_as_natively() {
    for t in BOTH {
        let m = Mount::new_on(t, &["--posix-acl"]);
        let native = tempfile::tempdir().unwrap();
        let (ours, theirs) = (m.path("f"), native.path().join("f"));
        for p in [&ours, &theirs] {
            std::fs::write(p, b"x").unwrap();
            s::setxattr(p, None, ACCESS, &named_user_acl(), 0).unwrap();
            chmod(p, 0o604).unwrap();
        }
        let host = m.share.join("f");
        assert_eq!(mode(&host), mode(&theirs), "{t:?}");
        assert_eq!(mode(&ours), mode(&theirs), "{t:?}: the guest's view");
        assert_eq!(
            s::getxattr(&host, None, ACCESS).unwrap(),
            s::getxattr(&theirs, None, ACCESS).unwrap(),
            "{t:?}: chmod set the ACL mask"
        );
        assert_eq!(s::getxattr(&ours, None, ACCESS).unwrap(), s::getxattr(&theirs, None, ACCESS).unwrap(), "{t:?}");
        // Removing the ACL leaves the mode alone, as natively.
        s::removexattr(&ours, None, ACCESS).unwrap();
        s::removexattr(&theirs, None, ACCESS).unwrap();
        assert_eq!(mode(&host), mode(&theirs), "{t:?}");
    }
}

/// A crash after the host call of an ACL SETXATTR, and after a MKDIR under a default ACL with
/// the caller's umask: each replays once, with the same result as without the crash.
#[test]
fn test_posix_acl_crash_on_acl_and_umask_paths_replays_exactly_once() {
    let default = acl(&[(USER_OBJ, 7, UNDEFINED), (GROUP_OBJ, 7, UNDEFINED), (OTHER, 5, UNDEFINED)]);
    for t in BOTH {
        for marker in ["setxattr.after_syscall", "mkdir.after_syscall"] {
            let tmp = tempfile::tempdir().unwrap();
            let (share, mnt, arm) = (tmp.path().join("share"), tmp.path().join("mnt"), tmp.path().join("arm"));
            std::fs::create_dir(&share).unwrap();
            std::fs::create_dir(&mnt).unwrap();
            std::fs::write(share.join("f"), b"x").unwrap();
            std::fs::create_dir(share.join("withdef")).unwrap();
            s::setxattr(&share.join("withdef"), None, DEFAULT, &default, 0).unwrap();
            let env = [("PHOENIXFS_CRASH_AT", marker), ("PHOENIXFS_CRASH_ARM", arm.to_str().unwrap())];
            let m = Mount::start_on(t, &share, &mnt, &["--posix-acl"], &env);
            std::fs::write(&arm, b"").unwrap();
            if marker.starts_with("setxattr") {
                assert_eq!(s::setxattr(&m.path("f"), None, ACCESS, &named_user_acl(), 0), Ok(()), "{t:?}");
                assert!(!arm.exists(), "{t:?} {marker}: the worker did not crash there");
                assert_eq!(s::getxattr(&share.join("f"), None, ACCESS).unwrap(), named_user_acl());
                assert_eq!(mode(&share.join("f")), 0o640, "{t:?}");
            } else {
                let d = m.path("withdef/d");
                assert_eq!(in_child(None, 0o077, move || s::mkdir(&d, 0o777).err().unwrap_or(0)), 0, "{t:?}");
                assert!(!arm.exists(), "{t:?} {marker}: the worker did not crash there");
                assert_eq!(mode(&share.join("withdef/d")), 0o775, "{t:?}: the default ACL, not the umask");
                assert_eq!(s::getxattr(&share.join("withdef/d"), None, DEFAULT).unwrap(), default, "{t:?}");
                assert_eq!(s::mkdir(&m.path("withdef/d"), 0o777), Err(libc::EEXIST), "{t:?}");
            }
        }
    }
}
