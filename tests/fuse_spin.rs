//! `--fuse-spin-us` (transport/fusedev.rs `Waiting`): after a reply, the first /dev/fuse serving
//! thread keeps looking for the next request before it sleeps in the kernel. What it changes is
//! counted here, in the kernel's own numbers (each thread's voluntary context switches), not timed;
//! docs/benchmarks.md has the time. A binary of its own, so that no other test's load shares the
//! machine with its loop of requests.

mod common;

use common::{Mount, Transport};

/// How many times each of the worker's /dev/fuse serving threads went to sleep (voluntary
/// context switches), by thread name (fuse-0, fuse-1, ...).
fn serving_thread_sleeps(worker: i32) -> std::collections::BTreeMap<String, u64> {
    let tasks = std::fs::read_dir(format!("/proc/{worker}/task")).expect("the worker's threads");
    tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| {
            let name = std::fs::read_to_string(t.path().join("comm")).ok()?.trim().to_string();
            let status = std::fs::read_to_string(t.path().join("status")).ok()?;
            let sleeps = status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:").and_then(|n| n.trim().parse::<u64>().ok()))?;
            name.starts_with("fuse-").then_some((name, sleeps))
        })
        .collect()
}

/// `--fuse-spin-us`: after a reply, the first serving thread keeps looking for the next request
/// (yielding the CPU) before it sleeps in the kernel, so a caller issuing requests one after
/// another finds a CPU awake. 2,000 GETATTRs forced one after another (statx with
/// AT_STATX_FORCE_SYNC): with the option at its longest (1 ms, so that a loaded machine still
/// issues the next request within it) the first thread sleeps for fewer than a tenth of them;
/// with 0 the threads together sleep about once per request, as every request finds them all
/// asleep.
#[test]
fn test_fuse_spin_keeps_a_serving_thread_awake_between_requests() {
    const CALLS: u64 = 2000;
    let sleeps = |spin: &str| {
        let m = Mount::new_on(Transport::Fuse, &["--fuse-spin-us", spin]);
        std::fs::write(m.path("f"), b"x").unwrap();
        let worker = common::proc::wait_worker(m.supervisor() as i32, None, std::time::Duration::from_secs(10))
            .expect("the worker")
            .pid;
        let path = std::ffi::CString::new(m.path("f").as_os_str().as_encoded_bytes()).unwrap();
        let before = serving_thread_sleeps(worker);
        for _ in 0..CALLS {
            // SAFETY: a C string path and a statx buffer the call fills.
            let mut stx: libc::statx = unsafe { std::mem::zeroed() };
            let r = unsafe {
                libc::statx(libc::AT_FDCWD, path.as_ptr(), libc::AT_STATX_FORCE_SYNC, libc::STATX_BASIC_STATS, &mut stx)
            };
            assert_eq!(r, 0, "statx: {}", std::io::Error::last_os_error());
        }
        let after = serving_thread_sleeps(worker);
        let slept = |name: &str| after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0);
        (slept("fuse-0"), after.keys().map(|n| slept(n)).sum::<u64>())
    };
    let (looking_first, looking_all) = sleeps("1000");
    let (_, sleeping_all) = sleeps("0");
    eprintln!(
        "for {CALLS} GETATTRs: with --fuse-spin-us 1000 the first serving thread slept {looking_first} times \
         (all {looking_all}); with 0 the serving threads slept {sleeping_all} times"
    );
    assert!(sleeping_all >= CALLS / 2, "with 0 the threads sleep for (nearly) every request: {sleeping_all}");
    assert!(
        looking_first < CALLS / 10,
        "the first thread stays awake between requests: it slept {looking_first} times"
    );
}
