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
    // Both instances take the default control socket of the mount point; the first binds it
    // just after its mount appears, and must have before the second starts (else the two race
    // to replace each other's socket file and one exits with EADDRINUSE).
    common::wait_for_socket(&phoenixfsd::control::default_path(None, Some(&mnt)).unwrap());
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

/// The supervisor is the one process whose death is not survived (docs/operations.md): SIGKILL
/// it under load and, as documented, its workers die with it, the holder unmounts the share and
/// exits 1 naming the signal, and the workload does not hang (a request in flight fails; once
/// unmounted, the path is the bare mount-point directory again).
#[test]
fn test_supervisor_sigkill_is_the_documented_failure() {
    if common::sandbox_mode_override().is_some_and(|m| m == "none") {
        eprintln!("skipped: without a sandbox there is no holder (the supervisor is the daemon)");
        return;
    }
    let tmp = tempfile::Builder::new().prefix("phoenixfs-test").tempdir().unwrap();
    let (share, mnt, log) = (tmp.path().join("share"), tmp.path().join("mnt"), tmp.path().join("log"));
    std::fs::create_dir(&share).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    let mut m = Mount::start_logged(common::Transport::Fuse, &share, &mnt, &[], &[], Some(&log));
    let sup = m.supervisor() as i32;
    let worker = proc::wait_worker(sup, None, Duration::from_secs(10)).unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (mnt, done) = (mnt.clone(), done.clone());
        std::thread::spawn(move || {
            let mut errors = 0u64;
            for i in 0u64.. {
                if done.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                if std::fs::write(mnt.join(format!("f{}", i % 50)), "x").is_err() {
                    errors += 1;
                }
            }
            errors
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    unsafe { libc::kill(sup, libc::SIGKILL) };
    let status = proc::wait_for_exit(&mut m.child, Duration::from_secs(20)).expect("the holder exits");
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let errors = load.join().expect("the workload ends: nothing hangs");
    eprintln!("writes that failed around the kill: {errors}");
    assert_eq!(status.code(), Some(1), "the holder exits 1");
    let t0 = std::time::Instant::now();
    while proc::alive(worker.pid) && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!proc::alive(worker.pid), "the worker died with its supervisor");
    assert!(!is_mounted(&mnt), "the holder unmounted the share");
    let log = common::read_log(&log);
    assert!(log.contains("the supervisor killed by signal 9"), "{log}");
}

/// The value of `field=` in the daemon log's "FUSE session initialised" line.
fn init_field(log: &std::path::Path, field: &str) -> Option<String> {
    let text = common::read_log(log);
    let line = text.lines().find(|l| l.contains("FUSE session initialised"))?;
    let at = line.find(&format!("{field}="))? + field.len() + 1;
    Some(line[at..].split_whitespace().next().unwrap_or("").to_string())
}

/// README's first command: `phoenixfsd --demo` makes a share and a mount point, serves the
/// share there, and on SIGINT unmounts it. It serves /dev/fuse with the same defaults as
/// `--mountpoint` — FUSE passthrough included (it once went without: the check looked at
/// `--mountpoint` only, which the demo leaves unset).
#[test]
fn test_demo_serves_a_share_as_a_mountpoint_daemon_does() {
    use std::io::BufRead;
    common::require_fuse();
    let tmp = tempfile::Builder::new().prefix("phoenixfs-test").tempdir().unwrap();
    let (share, mnt, log, demo_log) =
        (tmp.path().join("share"), tmp.path().join("mnt"), tmp.path().join("log"), tmp.path().join("demo-log"));
    std::fs::create_dir(&share).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    let env = [("RUST_LOG", "info")];
    let mut m = Mount::start_logged(common::Transport::Fuse, &share, &mnt, &[], &env, Some(&log));
    std::fs::write(m.path("f"), "x").unwrap();
    m.stop();
    let mountpoint_passthrough = init_field(&log, "passthrough").expect("the --mountpoint daemon logged its INIT");

    /// Stops the demo if an assertion fails first (SIGINT: it unmounts on its way out).
    struct Running(std::process::Child);
    impl Drop for Running {
        fn drop(&mut self) {
            if self.0.try_wait().ok().flatten().is_none() {
                unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
                let _ = proc::wait_for_exit(&mut self.0, Duration::from_secs(20));
            }
        }
    }
    let demo = std::process::Command::new(common::BIN)
        .arg("--demo")
        .args(common::confinement_args())
        .env("RUST_LOG", "info")
        .env("TMPDIR", tmp.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&demo_log).unwrap())
        .spawn()
        .expect("spawn phoenixfsd --demo");
    let mut demo = Running(demo);
    // The reader is dropped at once: the demo serves on when its stdout is gone (it once died
    // of the second line's EPIPE).
    let first = std::io::BufReader::new(demo.0.stdout.take().unwrap()).lines().next();
    let first = first.expect("the demo prints where it serves").unwrap();
    let at = first.rsplit(" at ").next().expect("'serving <share> at <mount point>'");
    let demo_mnt = std::path::PathBuf::from(at);
    assert!(demo_mnt.starts_with(tmp.path()), "{first}: the mount point is made under TMPDIR");
    assert!(is_mounted(&demo_mnt), "{first}: mounted before it says so");
    let hello = std::fs::read_to_string(demo_mnt.join("hello.txt")).expect("read the demo's hello.txt");
    assert!(hello.starts_with("Hello from phoenixfs"), "{hello:?}");
    std::fs::write(demo_mnt.join("written"), "through the demo").unwrap();
    assert_eq!(
        init_field(&demo_log, "passthrough").as_deref(),
        Some(mountpoint_passthrough.as_str()),
        "--demo negotiates FUSE passthrough as --mountpoint does (log: {})",
        common::read_log(&demo_log)
    );
    unsafe { libc::kill(demo.0.id() as i32, libc::SIGINT) };
    let status = proc::wait_for_exit(&mut demo.0, Duration::from_secs(20)).expect("the demo stops on SIGINT");
    assert!(status.success(), "demo: {status}; log: {}", common::read_log(&demo_log));
    assert!(!is_mounted(&demo_mnt), "the demo unmounts its mount point when it stops");
}
