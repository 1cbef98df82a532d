//! Guest-side benchmarks, phoenixfsd against virtiofsd in the same VM configuration (not a
//! test: `#[ignore]`d; scripts/bench-vm.sh runs it). The guest of tests/vm.rs boots with
//! `vmg.bench`: its workload binary runs fixed micro-benchmarks on the share instead
//! (examples/vm_guest/bench.rs: a create/stat/unlink loop; open-read-close of small files; 1 MiB
//! sequential and 4 KiB random writes and reads, buffered and O_DIRECT). Each round boots one
//! guest per backend (phoenixfsd, phoenixfsd `--recovery off`, virtiofsd), the order rotating
//! from round to round, on a fresh share; the table has the median of the rounds (TCG on a
//! shared machine is noisy), the ratio phoenixfsd / virtiofsd and the cost of being crash-proof
//! (on/off).
//!
//! Environment: `PHOENIXFS_VM_BENCH_ROUNDS` (3), `PHOENIXFS_VM_BENCH_QEMU=7.2|10` (7.2),
//! `PHOENIXFS_VM_QUEUE_SIZE` (the device's queue size; QEMU's default 128),
//! `PHOENIXFS_VM_INDIRECT_DESC=off` (the guest's driver then lays every request out in the ring),
//! `PHOENIXFS_VM_BENCH_BASELINE=<a phoenixfsd binary>` (measured in the middle column instead of
//! `--recovery off`, with recovery on: a change's before and after in one run), and
//! `PHOENIXFS_VM_ACCEL` as in tests/vm.rs.
//!
//! Several request queues: `PHOENIXFS_VM_KERNEL=backports` boots bookworm-backports' 6.12
//! kernel, whose driver spreads requests over the device's request queues by vCPU (6.1 uses one
//! whatever the device has), `PHOENIXFS_VM_SMP=N` gives the guest N vCPUs, and phoenixfsd's
//! device gets `PHOENIXFS_VM_REQUEST_QUEUES` request queues (default: one per vCPU). virtiofsd's
//! always has one: it offers no more (QEMU refuses to start a device with more than the backend
//! offers), so the comparison is each daemon with what it can serve.

mod common;
#[path = "vm/qemu.rs"]
mod qemu;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use common::proc::wait_for_exit;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Backend {
    Phoenixfsd,
    /// `--recovery off`: the bare engine, the cost of being crash-proof beside it.
    PhoenixfsdOff,
    Virtiofsd,
}

/// The binary `PHOENIXFS_VM_BENCH_BASELINE` names, if any: the middle column's daemon.
fn baseline() -> Option<String> {
    std::env::var("PHOENIXFS_VM_BENCH_BASELINE").ok().filter(|v| !v.is_empty())
}

/// One `VM-BENCH` line: ops/s, MiB/s, p50 and p99 in µs.
#[derive(Clone, Copy, Default)]
struct Result {
    ops_per_s: f64,
    mib_per_s: f64,
    p99_us: f64,
}

/// The guest's shape (`qemu::Shape::from_env`) on `backend`, with its device's request queues.
fn shape(backend: Backend) -> qemu::Shape {
    let mut shape = qemu::Shape::from_env();
    shape.request_queues = match backend {
        Backend::Virtiofsd => 1,
        Backend::Phoenixfsd | Backend::PhoenixfsdOff => std::env::var("PHOENIXFS_VM_REQUEST_QUEUES")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n| n >= 1)
            .unwrap_or(shape.vcpus),
    };
    shape
}

/// Boots the bench guest on `backend`; its results by benchmark name, in the order printed.
fn boot(
    q: &qemu::Qemu,
    guest: &qemu::Guest,
    accel: &str,
    dir: &std::path::Path,
    backend: Backend,
) -> Vec<(String, Result)> {
    let share = dir.join("share");
    let _ = std::fs::remove_dir_all(&share);
    std::fs::create_dir(&share).unwrap();
    let socket = dir.join("vfs.sock");
    let _ = std::fs::remove_file(&socket);
    let mut cmd = match backend {
        Backend::Phoenixfsd | Backend::PhoenixfsdOff => {
            let base = if backend == Backend::PhoenixfsdOff { baseline() } else { None };
            let mut c = Command::new(base.as_deref().unwrap_or(common::BIN));
            c.args(["--log-level", "error"]);
            if backend == Backend::PhoenixfsdOff && base.is_none() {
                c.args(["--recovery", "off"]);
            }
            c
        }
        Backend::Virtiofsd => {
            let mut c = Command::new("virtiofsd");
            c.args(["--sandbox", "none", "--log-level", "error"]);
            c
        }
    };
    let mut daemon = qemu::Reap(
        cmd.arg("--shared-dir")
            .arg(&share)
            .arg("--socket-path")
            .arg(&socket)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {backend:?}: {e}")),
    );
    qemu::wait_socket(&socket);
    let mut vm =
        qemu::Reap(qemu::command(q, guest, accel, &socket, "vmg.bench", &shape(backend)).spawn().expect("spawn QEMU"));
    let console = qemu::console(&mut vm);
    let t0 = Instant::now();
    let mut out = Vec::new();
    let mut exit_ok = false;
    // The console's last lines, printed if the guest hangs.
    let mut last = std::collections::VecDeque::new();
    loop {
        match console.recv_timeout(Duration::from_secs(600).saturating_sub(t0.elapsed())) {
            Ok(l) => {
                if last.len() == 20 {
                    last.pop_front();
                }
                last.push_back(l.clone());
                if let Some(rest) = l.strip_prefix("VM-BENCH ") {
                    let f: BTreeMap<&str, &str> = rest.split_whitespace().filter_map(|w| w.split_once('=')).collect();
                    let num = |k: &str| f.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
                    let r = Result { ops_per_s: num("ops_per_s"), mib_per_s: num("mib_per_s"), p99_us: num("p99_us") };
                    out.push((f.get("name").copied().unwrap_or("?").to_string(), r));
                } else if l.starts_with("VM-FAIL") || l.contains("panicked") {
                    eprintln!("guest| {l}");
                }
                exit_ok |= l == "VM-EXIT 0";
            }
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                let _ = vm.kill();
                let last: Vec<_> = last.into_iter().collect();
                panic!(
                    "the bench guest on {backend:?} did not finish within 600 s; its console's last lines: {last:#?}"
                );
            }
        }
    }
    let _ = vm.wait();
    if wait_for_exit(&mut daemon, Duration::from_secs(10)).is_none() {
        let _ = daemon.kill();
        let _ = daemon.wait();
    }
    assert!(exit_ok, "the bench guest on {backend:?} did not exit 0");
    eprintln!("vm-bench: {backend:?}: {} benchmarks in {:.1} s", out.len(), t0.elapsed().as_secs_f64());
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

fn fmt(x: f64) -> String {
    if x >= 100.0 { format!("{x:.0}") } else { format!("{x:.1}") }
}

#[test]
#[ignore = "a benchmark: scripts/bench-vm.sh"]
fn bench_vm_against_virtiofsd() {
    let rounds: usize = std::env::var("PHOENIXFS_VM_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let q = match std::env::var("PHOENIXFS_VM_BENCH_QEMU").as_deref() {
        Ok("10") => qemu::Qemu::backports(&qemu::target_dir().join("vm-cache")),
        _ => qemu::Qemu::system(),
    };
    let (guest, accel, tmp) = qemu::prepare_vm(&q, qemu::Shape::from_env().kernel);
    let vfsd = Command::new("virtiofsd").arg("--version").output().expect("virtiofsd (scripts/setup.sh installs it)");
    let vfsd = String::from_utf8_lossy(&vfsd.stdout).trim().to_string();
    eprintln!("vm-bench: {}, {accel}, {vfsd}, {rounds} rounds", q.version);
    let mut names: Vec<String> = Vec::new();
    let mut res: BTreeMap<(String, Backend), Vec<Result>> = BTreeMap::new();
    for r in 0..rounds {
        // Each round in another order (rotated), so that a slow phase of the machine does not
        // always hit the same backend.
        let mut order = [Backend::Phoenixfsd, Backend::PhoenixfsdOff, Backend::Virtiofsd];
        let n = order.len();
        order.rotate_left(r % n);
        for b in order {
            for (name, x) in boot(&q, &guest, accel, tmp.path(), b) {
                if !names.contains(&name) {
                    names.push(name.clone());
                }
                res.entry((name, b)).or_default().push(x);
            }
        }
    }
    let (middle, middle_ratio) =
        if baseline().is_some() { ("baseline", "pfs/baseline") } else { ("phoenixfsd off", "on/off") };
    println!(
        "\n| workload | unit | phoenixfsd | {middle} | virtiofsd | ratio | {middle_ratio} | p99 phoenixfsd | p99 virtiofsd |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for n in &names {
        let seq = n.starts_with("seq");
        let unit = if seq {
            "MiB/s"
        } else if n.starts_with("meta") {
            "ops/s"
        } else if n.starts_with("small") {
            "files/s"
        } else {
            "IOPS"
        };
        let get = |b: Backend, f: fn(&Result) -> f64| {
            median(res.get(&(n.clone(), b)).map(|v| v.iter().map(f).collect()).unwrap_or_default())
        };
        let metric: fn(&Result) -> f64 = if seq { |r| r.mib_per_s } else { |r| r.ops_per_s };
        let (p, off, v) =
            (get(Backend::Phoenixfsd, metric), get(Backend::PhoenixfsdOff, metric), get(Backend::Virtiofsd, metric));
        let (pp, vp) = (get(Backend::Phoenixfsd, |r| r.p99_us), get(Backend::Virtiofsd, |r| r.p99_us));
        println!(
            "| {n} | {unit} | {} | {} | {} | {:.2} | {:.2} | {} ms | {} ms |",
            fmt(p),
            fmt(off),
            fmt(v),
            p / v,
            p / off,
            fmt(pp / 1e3),
            fmt(vp / 1e3)
        );
    }
    let pfs = shape(Backend::Phoenixfsd);
    println!(
        "\n{}, {accel}, {} vCPU, 512 MiB, request queues {} (phoenixfsd) and 1 (virtiofsd), queue size {}{}; guest kernel {}; {vfsd}; median of {rounds} rounds, backends rotating; ratio = phoenixfsd / virtiofsd, {}.",
        q.version,
        pfs.vcpus,
        pfs.request_queues,
        std::env::var("PHOENIXFS_VM_QUEUE_SIZE").unwrap_or_else(|_| "128".into()),
        if std::env::var("PHOENIXFS_VM_INDIRECT_DESC").is_ok_and(|v| v == "off") { ", indirect_desc=off" } else { "" },
        guest.kernel.file_name().unwrap_or_default().to_string_lossy(),
        match baseline() {
            Some(b) => format!("pfs/baseline = phoenixfsd / {b}"),
            None => "on/off = phoenixfsd / phoenixfsd --recovery off".into(),
        }
    );
}
