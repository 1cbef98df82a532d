//! Regression test: daemons starting side by side, each used at once. The supervisor shares its
//! fd table with the worker; it once read /proc/vmstat (an open and a close) just after cloning
//! the first worker, and a worker that had just swept its fds could open its /proc/self/fd dirfd
//! under that very number, which the supervisor's close then took away: the first chmod failed
//! with ENOTDIR. Found by running the compare suite over vhost-user (the queue threads' first
//! fds then take the stolen number); FUSE mounts were exposed too. The window is a few
//! microseconds, so this guard catches a return of the bug only some of the time: many daemons
//! at once make it likelier.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{Mount, Transport};

#[test]
fn test_daemons_started_together_serve_at_once() {
    let threads: Vec<_> = (0..9)
        .map(|i| {
            std::thread::spawn(move || {
                let transport = if i % 3 == 0 { Transport::Fuse } else { Transport::VhostUser };
                let m = Mount::new_on(transport, &[]);
                for n in 0..50 {
                    let d = m.mnt.join(format!("d{n}"));
                    std::fs::create_dir(&d).unwrap_or_else(|e| panic!("{transport:?}: mkdir {d:?}: {e}"));
                    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))
                        .unwrap_or_else(|e| panic!("{transport:?}: chmod {d:?} (round {n}): {e}"));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a daemon failed its first requests");
    }
}
