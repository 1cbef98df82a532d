//! File systems mounted inside the share (issue 13): each is served with its own mount id, its
//! objects kept by file handles opened through that mount's own fd. Two tmpfs instances made
//! alike give their files the same inode numbers, so a daemon that keyed objects by inode number
//! alone, or opened every handle through the share's mount, would serve one file for the other.
//! Checked with file handles (the default) and with `--inode-file-handles=never`, before and
//! after the worker is killed (the next worker opens the objects again by handle).

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use common::sys::Tmpfs;
use common::{Mount, children_of, drop_caches};

fn check(mnt: &Path) {
    for (d, want) in [("t1", "one"), ("t2", "two"), ("top", "top")] {
        for f in ["f", "g"] {
            let p = mnt.join(d).join(f);
            let got = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p:?}: {e}"));
            assert_eq!(got, format!("{want}-{f}"), "{p:?}");
        }
    }
}

fn run(extra: &[&str]) {
    let tmp = tempfile::Builder::new().prefix("phoenixfs-submounts").tempdir().unwrap();
    let share = tmp.path().join("share");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&share).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    std::fs::create_dir(share.join("top")).unwrap();
    let _t1 = Tmpfs::mount(&share.join("t1"));
    let _t2 = Tmpfs::mount(&share.join("t2"));
    for (d, content) in [("t1", "one"), ("t2", "two"), ("top", "top")] {
        for f in ["f", "g"] {
            std::fs::write(share.join(d).join(f), format!("{content}-{f}")).unwrap();
        }
    }
    let (a, b) = (std::fs::metadata(share.join("t1/f")).unwrap(), std::fs::metadata(share.join("t2/f")).unwrap());
    eprintln!("t1/f ino {} dev {:#x}, t2/f ino {} dev {:#x}", a.ino(), a.dev(), b.ino(), b.dev());

    let mut m = Mount::start(&share, &mnt, extra);
    check(&mnt);
    // Through the mount, the objects of each file system keep their own inode numbers.
    assert_eq!(std::fs::metadata(mnt.join("t1/f")).unwrap().ino(), a.ino());
    assert_eq!(std::fs::metadata(mnt.join("t2/f")).unwrap().ino(), b.ino());
    // Writes land in the right file system.
    std::fs::write(mnt.join("t2/new"), "made in t2").unwrap();
    assert_eq!(std::fs::read_to_string(share.join("t2/new")).unwrap(), "made in t2");
    assert!(!share.join("t1/new").exists());

    // A new worker opens the same nodes again by handle through each mount's fd.
    let sup = m.supervisor();
    let before = children_of(sup);
    for pid in &before {
        // SAFETY: SIGKILL to the supervisor's worker.
        unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while children_of(sup).is_empty() || children_of(sup) == before {
        assert!(std::time::Instant::now() < deadline, "no new worker");
        std::thread::sleep(Duration::from_millis(5));
    }
    check(&mnt);
    drop_caches();
    check(&mnt);
    assert!(m.stop().success());
}

#[test]
fn test_submounts_served_apart_with_file_handles() {
    run(&[]);
}

#[test]
fn test_submounts_served_apart_with_inode_fds() {
    run(&["--inode-file-handles=never"]);
}

/// A file system that makes no file handles (ramfs) inside the share: with `prefer` its objects
/// are kept by O_PATH fds and served; with `mandatory` their lookup fails with EOPNOTSUPP (and
/// the rest of the share is served).
#[test]
fn test_submount_without_handles_prefer_falls_back_mandatory_refuses() {
    for (mode, works) in [("prefer", true), ("mandatory", false)] {
        let tmp = tempfile::Builder::new().prefix("phoenixfs-nohandles").tempdir().unwrap();
        let share = tmp.path().join("share");
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir(&share).unwrap();
        std::fs::create_dir(&mnt).unwrap();
        let r = share.join("r");
        std::fs::create_dir(&r).unwrap();
        let _ramfs = Tmpfs::mount_fs(&r, c"ramfs");
        std::fs::write(r.join("f"), "in ramfs").unwrap();
        std::fs::write(share.join("g"), "in the share").unwrap();
        let arg = format!("--inode-file-handles={mode}");
        let mut m = Mount::start(&share, &mnt, &[&arg]);
        assert_eq!(std::fs::read_to_string(mnt.join("g")).unwrap(), "in the share", "{mode}");
        let got = std::fs::read_to_string(mnt.join("r/f"));
        if works {
            assert_eq!(got.unwrap(), "in ramfs");
        } else {
            assert_eq!(got.unwrap_err().raw_os_error(), Some(libc::EOPNOTSUPP), "{mode}");
        }
        assert!(m.stop().success());
    }
}
