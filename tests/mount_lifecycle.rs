//! The life of a /dev/fuse mount around the daemon's own: what it unmounts when it stops.

mod common;

use std::time::Duration;

use common::{Mount, is_mounted, proc, sys};

/// Regression test (issue 11, case 5): a daemon whose mount was unmounted stops, and once
/// unmounted the mount point path again — taking away whatever had been mounted there in the
/// meantime (a restarted instance, here). It must unmount only the mount it made.
#[test]
fn test_regression_stopping_leaves_a_newer_mount_at_the_same_path_alone() {
    let tmp = tempfile::Builder::new().prefix("phoenixfs-test").tempdir().unwrap();
    let (share_a, share_b, mnt) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("mnt"));
    for d in [&share_a, &share_b, &mnt] {
        std::fs::create_dir(d).unwrap();
    }
    let mut first = Mount::start(&share_a, &mnt, &[]);
    let pid = first.child.id() as i32;
    // The first instance's process that unmounts at the end (the daemon itself: the holder in a
    // sandbox, else the supervisor) is held still while its mount goes and a second instance
    // mounts at the same path; then it is let go to see its connection end.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let c = sys::cs(&mnt);
    assert_eq!(unsafe { libc::umount2(c.as_ptr(), 0) }, 0, "unmount the first instance");
    let second = Mount::start(&share_b, &mnt, &[]);
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let status = proc::wait_for_exit(&mut first.child, Duration::from_secs(20))
        .expect("the first instance stops once its connection ended");
    assert!(status.success(), "first instance: {status}");

    assert!(is_mounted(&mnt), "the second instance's mount was taken away by the first");
    std::fs::write(second.path("still-here"), "b").expect("the second instance still serves");
    assert_eq!(std::fs::read(share_b.join("still-here")).unwrap(), b"b");
    drop(second);
    assert!(!is_mounted(&mnt), "the second instance unmounts its own mount when it stops");
}
