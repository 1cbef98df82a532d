//! The control socket and `phoenixfsd ctl` (issue 17's operator view): status in text and JSON,
//! Prometheus metrics, restart-worker, over /dev/fuse and vhost-user; and clear failures
//! against a dead or a foreign socket.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use common::ctl::{ctl, json_num, json_nums};
use common::{Mount, Transport, proc};

/// Where the daemon behind `m` puts its control socket by default.
fn default_socket(m: &Mount, transport: Transport) -> PathBuf {
    match transport {
        Transport::Fuse => {
            let escaped = m.mnt.to_string_lossy().trim_matches('/').replace('/', "-");
            PathBuf::from(format!("/run/phoenixfsd/{escaped}.ctl"))
        }
        Transport::VhostUser => m.mnt.with_extension("vhost.sock.ctl"),
    }
}

#[test]
fn test_ctl_status_metrics_and_restart_worker() {
    for transport in [Transport::Fuse, Transport::VhostUser] {
        let mut m = Mount::new_on(transport, &[]);
        for i in 0..5 {
            std::fs::write(m.path(&format!("f{i}")), "x").unwrap();
        }
        let socket = default_socket(&m, transport);
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{transport:?}: the control socket is the owner's only");

        let (code, text, err) = ctl(&socket, &["status"]);
        assert_eq!(code, 0, "{err}");
        let kind = if transport == Transport::Fuse { "FUSE (/dev/fuse)" } else { "vhost-user" };
        for want in
            ["phoenixfsd ", "uptime:", kind, "worker restarts: 0", "live inodes:", "session:         initialised"]
        {
            assert!(text.contains(want), "{transport:?}: status lacks {want:?}:\n{text}");
        }
        let (_, json, _) = ctl(&socket, &["status", "--json"]);
        assert!(json_num(&json, "live_inodes") >= 5, "{transport:?}: the five files are live: {json}");
        assert_eq!(json_num(&json, "worker_restarts"), 0);
        let served = json_num(&json, "requests_served");
        assert!(served > 0);
        // Over vhost-user, the chains each queue gave (index 0: the hiprio queue); the bridge
        // sends the requests of the writes above on its request queues. /dev/fuse has none.
        let chains = json_nums(&json, "queue_chains");
        match transport {
            Transport::Fuse => {
                assert!(chains.is_empty(), "{json}");
                assert!(!text.contains("queue chains:"), "{text}");
            }
            Transport::VhostUser => {
                assert!(chains.len() >= 2 && chains[1..].iter().sum::<u64>() >= 5, "the writes' chains: {json}");
                assert!(text.contains("queue chains:    hiprio "), "status lacks its queue chains:\n{text}");
            }
        }

        // A worker killed from outside, then one restarted on request: both show.
        let sup = m.supervisor() as i32;
        let first = proc::wait_worker(sup, None, Duration::from_secs(10)).unwrap();
        unsafe { libc::kill(first.pid, libc::SIGKILL) };
        let second = proc::wait_worker(sup, Some(first), Duration::from_secs(10)).unwrap();
        let (code, out, err) = ctl(&socket, &["restart-worker"]);
        assert_eq!(code, 0, "{err}");
        assert!(out.starts_with("ok: restarting worker"), "{out}");
        let third = proc::wait_worker(sup, Some(second), Duration::from_secs(10)).unwrap();
        assert_ne!(third.pid, second.pid, "{transport:?}: restart-worker replaced the worker");
        assert_eq!(std::fs::read_to_string(m.path("f3")).unwrap(), "x", "still serving");
        let (_, json, _) = ctl(&socket, &["status", "--json"]);
        assert_eq!(json_num(&json, "worker_restarts"), 2, "{json}");
        assert!(json_num(&json, "requests_served") > served);
        assert_eq!(json.matches("killed by signal 9").count(), 2, "both deaths with their cause: {json}");

        let (code, metrics, _) = ctl(&socket, &["metrics"]);
        assert_eq!(code, 0);
        for name in [
            "phoenixfs_uptime_seconds",
            "phoenixfs_worker_restarts_total",
            "phoenixfs_requests_served_total",
            "phoenixfs_requests_in_flight",
            "phoenixfs_live_inodes",
            "phoenixfs_open_handles",
            "phoenixfs_state_region_bytes",
        ] {
            assert!(metrics.contains(&format!("# TYPE {name} ")), "{name} has no TYPE line:\n{metrics}");
            let value = metrics.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).unwrap();
            assert!(value.parse::<f64>().is_ok(), "{name} {value}");
        }
        assert!(metrics.contains("phoenixfs_worker_restarts_total 2\n"), "{metrics}");
        assert_eq!(
            metrics.contains("phoenixfs_queue_chains_total{queue=\"1\"} "),
            transport == Transport::VhostUser,
            "{transport:?}: per-queue chains only over vhost-user:\n{metrics}"
        );
        assert!(m.stop().success());
    }
}

/// `ctl` against nothing, a dead socket, something that is not phoenixfsd, and with a bad
/// command line: a message that says what went wrong, and exit code 1 (2 for usage).
#[test]
fn test_ctl_fails_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, _, err) = ctl(&tmp.path().join("absent.ctl"), &["status"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot connect to") && err.contains("--control-socket"), "{err}");

    // A socket file whose daemon has gone (the file stays: the daemon cannot remove it from
    // inside its sandbox).
    let dead = tmp.path().join("dead.ctl");
    drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
    let (code, _, err) = ctl(&dead, &["status"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot connect to") && err.contains("Connection refused"), "{err}");

    // A socket that answers something else: after reading the request, or at once.
    let foreign = tmp.path().join("foreign.ctl");
    let listener = std::os::unix::net::UnixListener::bind(&foreign).unwrap();
    let t = std::thread::spawn(move || {
        use std::io::{Read, Write};
        for read_first in [true, false] {
            let (mut s, _) = listener.accept().unwrap();
            if read_first {
                let _ = s.read(&mut [0u8; 64]);
            }
            s.write_all(b"HTTP/1.1 400").unwrap();
        }
    });
    for _ in 0..2 {
        let (code, _, err) = ctl(&foreign, &["status"]);
        assert_eq!(code, 1);
        assert!(err.contains("did not answer as a phoenixfsd control socket"), "{err}");
    }
    t.join().unwrap();

    let (code, _, err) = ctl(&foreign, &["frobnicate"]);
    assert_eq!(code, 2, "{err}");
}
