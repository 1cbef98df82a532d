//! Benchmark and manual-testing tool (not a test): mounts any vhost-user-fs backend (phoenixfsd,
//! virtiofsd) at a host directory through the test suite's FUSE-to-virtqueue bridge, so host
//! tools (fio, a shell) exercise the backend's virtqueue path as a guest would. Runs until
//! SIGTERM or SIGINT, then unmounts.
//!
//!   cargo run --release --example vhost_bridge -- SOCKET MOUNTPOINT [REQUEST_QUEUES [IN_FLIGHT]]
//!
//! REQUEST_QUEUES (default 1): request queues the bridge drives. IN_FLIGHT (default 1): requests
//! each of them carries at once, as a guest's driver keeps several in flight on one queue when
//! several processes wait in syscalls.

#[path = "../tests/vhost/bridge.rs"]
mod bridge;
#[path = "../tests/vhost/frontend.rs"]
mod frontend;

use std::path::PathBuf;
use std::time::Duration;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(socket), Some(mountpoint)) = (args.next(), args.next()) else {
        eprintln!("usage: vhost_bridge SOCKET MOUNTPOINT [REQUEST_QUEUES [IN_FLIGHT]]");
        std::process::exit(2);
    };
    let queues: usize = args.next().map_or(1, |q| q.parse().expect("REQUEST_QUEUES is a number"));
    let in_flight: usize = args.next().map_or(1, |n| n.parse().expect("IN_FLIGHT is a number"));
    // Blocked before any thread starts, so that only the sigwait below takes them.
    // SAFETY: signal-set manipulation on a local set.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let opts = bridge::BridgeOptions { timeout: Duration::from_secs(60), in_flight, ..Default::default() };
    let b =
        bridge::Bridge::mount(&PathBuf::from(&socket), &PathBuf::from(&mountpoint), queues, opts).unwrap_or_else(|e| {
            eprintln!("vhost_bridge: cannot bridge {mountpoint} to {socket}: {e}");
            std::process::exit(1);
        });
    eprintln!(
        "vhost_bridge: {socket} mounted at {mountpoint} with {queues} request queue(s), \
         up to {in_flight} request(s) in flight on each"
    );
    let mut sig = 0;
    // SAFETY: waits on a valid, blocked signal set.
    unsafe { libc::sigwait(&set, &mut sig) };
    let failures = b.unmount();
    if failures != 0 {
        eprintln!("vhost_bridge: {failures} requests failed");
        std::process::exit(1);
    }
}
