//! The guest workload of tests/vm.rs: runs inside a QEMU guest on the virtio-fs mount while the
//! host SIGKILLs phoenixfsd's worker again and again, and checks every result against an
//! in-memory model (model.rs). Built static and put into the guest's initramfs as /vm_guest.
//!
//! `vm_guest MOUNT`. Settings come from the kernel command line (/proc/cmdline):
//! `vmg.threads=N` (workload threads, default 2), `vmg.secs=S` (longest run, default 1800),
//! `vmg.seed=X`; `vmg.bench` runs the benchmarks of bench.rs instead. Each thread owns a directory `t<i>` of the mount. The run ends when the host
//! creates `MOUNT/STOP` (or after `vmg.secs`); then every directory and file of the model is
//! checked once more and the model is printed, one `VM-LIST` line per entry (tests/vm/listing.rs),
//! and a summary line:
//!
//! `VM-SUMMARY ops=N errors=E worst_ms=W worst_op=NAME p99_ms=P over_100ms=A over_1s=B secs=S`
//!
//! where ops are timed syscalls (or mmap accesses) and worst_ms is the longest any one took.
//! With `vmg.keep`, two files stay open for the whole run (tests/vm_migration.rs: they must stay
//! usable across a live migration), one of them unlinked; see `keeper`.
//! Every mismatch prints a `VM-ERROR` line (the first 50); every 2 s a `VM-PROGRESS ops=N` line
//! tells the host whether operations still complete.

mod bench;
#[path = "../../tests/vm/listing.rs"]
mod listing;
mod model;
mod ops;
#[allow(dead_code)]
#[path = "../../tests/soak/rng.rs"]
mod rng;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use model::Model;
use rng::Rng;

static ERRORS_PRINTED: AtomicU64 = AtomicU64::new(0);
/// Operations of all threads so far (for the progress line).
static OPS: AtomicU64 = AtomicU64::new(0);

/// Per-thread counters.
#[derive(Default)]
pub struct Stats {
    pub ops: u64,
    pub errors: u64,
    pub worst: Duration,
    pub worst_what: &'static str,
    /// Each op's latency in µs.
    pub lat: Vec<u32>,
}

/// Runs `f` as one timed operation.
pub fn time<T>(st: &mut Stats, what: &'static str, f: impl FnOnce() -> T) -> T {
    let t0 = Instant::now();
    let r = f();
    let d = t0.elapsed();
    st.ops += 1;
    OPS.fetch_add(1, Ordering::Relaxed);
    st.lat.push(d.as_micros().min(u32::MAX as u128) as u32);
    if d > st.worst {
        st.worst = d;
        st.worst_what = what;
    }
    r
}

/// One workload thread: its model, its random source, its counters.
pub struct Ctx {
    pub id: usize,
    pub mnt: PathBuf,
    pub m: Model,
    pub rng: Rng,
    pub st: Stats,
    pub step: u64,
}

impl Ctx {
    pub fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    pub fn fail(&mut self, msg: String) {
        self.st.errors += 1;
        if ERRORS_PRINTED.fetch_add(1, Ordering::Relaxed) < 50 {
            println!("VM-ERROR t{} step {}: {msg}", self.id, self.step);
        }
    }

    /// The value of an expected success, or None after counting the error.
    pub fn ok<T>(&mut self, what: &str, r: std::io::Result<T>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.fail(format!("{what}: {e}"));
                None
            }
        }
    }

    /// Checks `got` against the model's `want` for `what`.
    pub fn same(&mut self, what: &str, got: &[u8], want: &[u8]) -> bool {
        if got == want {
            return true;
        }
        let at = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
        self.fail(format!("{what}: {} bytes read, {} expected, first difference at {at}", got.len(), want.len()));
        false
    }
}

fn cmdline(key: &str) -> Option<String> {
    let s = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    s.split_whitespace().find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')).map(str::to_string))
}

fn main() {
    let mnt = PathBuf::from(std::env::args().nth(1).expect("usage: vm_guest MOUNT"));
    let threads: usize = cmdline("vmg.threads").and_then(|v| v.parse().ok()).unwrap_or(2);
    let secs: u64 = cmdline("vmg.secs").and_then(|v| v.parse().ok()).unwrap_or(1800);
    let seed: u64 =
        cmdline("vmg.seed").and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok()).unwrap_or_else(
            || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64,
        );
    if std::fs::read_to_string("/proc/cmdline").unwrap_or_default().split_whitespace().any(|w| w == "vmg.bench") {
        bench::run(&mnt, seed);
        println!("VM-BENCH-DONE");
        return;
    }
    let keep = std::fs::read_to_string("/proc/cmdline").unwrap_or_default().split_whitespace().any(|w| w == "vmg.keep");
    let stop = Arc::new(AtomicBool::new(false));
    let keeper = keep.then(|| keeper(mnt.clone(), stop.clone()));
    println!("VM-START threads={threads} seed={seed:#x}");
    let t0 = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let (mnt, stop) = (mnt.clone(), stop.clone());
            std::thread::spawn(move || run_thread(i, mnt, seed, stop))
        })
        .collect();
    // A thread that never touches the mount: its progress lines go on even if every other
    // thread hangs in the file system (the host sees whether operations still complete).
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_secs(2));
            println!("VM-PROGRESS ops={} secs={:.0}", OPS.load(Ordering::Relaxed), t0.elapsed().as_secs_f64());
        }
    });
    let deadline = t0 + Duration::from_secs(secs);
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        if mnt.join("STOP").exists() || Instant::now() > deadline || handles.iter().all(|h| h.is_finished()) {
            stop.store(true, Ordering::Relaxed);
        }
    }
    let mut all = Stats::default();
    let mut lines = Vec::new();
    for h in handles {
        let ctx = h.join().expect("a workload thread panicked");
        all.ops += ctx.st.ops;
        all.errors += ctx.st.errors;
        all.lat.extend_from_slice(&ctx.st.lat);
        if ctx.st.worst > all.worst {
            all.worst = ctx.st.worst;
            all.worst_what = ctx.st.worst_what;
        }
        lines.extend(ctx.m.listing());
    }
    let kept = keeper.is_none_or(|k| k.join().expect("the keeper thread panicked"));
    if !kept {
        all.errors += 1;
    }
    lines.sort();
    for l in &lines {
        println!("VM-LIST {l}");
    }
    all.lat.sort_unstable();
    let p99 = all.lat.get(all.lat.len().saturating_sub(1) * 99 / 100).copied().unwrap_or(0);
    let over = |us: u32| all.lat.iter().filter(|&&l| l > us).count();
    println!(
        "VM-SUMMARY ops={} errors={} worst_ms={:.1} worst_op={} p99_ms={:.2} over_100ms={} over_1s={} secs={:.1}",
        all.ops,
        all.errors,
        all.worst.as_secs_f64() * 1e3,
        if all.worst_what.is_empty() { "-" } else { all.worst_what },
        p99 as f64 / 1e3,
        over(100_000),
        over(1_000_000),
        t0.elapsed().as_secs_f64()
    );
    std::process::exit(if all.errors == 0 { 0 } else { 1 });
}

/// `vmg.keep`: opens `keep` and `keep-gone` (unlinked at once) before the workload starts and
/// holds both open to the end: every 100 ms writes record i (its number, 8 bytes) at offset
/// 8 i of each through its fd; at the end reads every record back through the same fds and
/// checks size and contents, then removes `keep` (so the share holds only the model's tree).
/// Prints `VM-KEEP ok writes=N` or `VM-ERROR keep: …`.
fn keeper(mnt: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<bool> {
    use std::os::unix::fs::FileExt;
    let open = |name: &str| std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(mnt.join(name));
    let (kept, gone) = match (open("keep"), open("keep-gone")) {
        (Ok(k), Ok(g)) => (k, g),
        (k, g) => {
            println!("VM-ERROR keep: open: {:?} {:?}", k.err(), g.err());
            return std::thread::spawn(|| false);
        }
    };
    if let Err(e) = std::fs::remove_file(mnt.join("keep-gone")) {
        println!("VM-ERROR keep: unlink keep-gone: {e}");
    }
    std::thread::spawn(move || {
        let mut n = 0u64;
        let mut ok = true;
        while !stop.load(Ordering::Relaxed) && ok {
            for (what, f) in [("keep", &kept), ("keep-gone", &gone)] {
                if let Err(e) = f.write_all_at(&n.to_le_bytes(), 8 * n) {
                    println!("VM-ERROR keep: write {what} record {n}: {e}");
                    ok = false;
                }
            }
            n += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        for (what, f) in [("keep", &kept), ("keep-gone", &gone)] {
            let mut buf = vec![0u8; 8 * n as usize];
            match (f.read_exact_at(&mut buf, 0), f.metadata()) {
                (Ok(()), Ok(md)) if md.len() == 8 * n => {
                    if let Some(i) = (0..n).find(|&i| buf[8 * i as usize..][..8] != i.to_le_bytes()) {
                        println!("VM-ERROR keep: {what} record {i} differs");
                        ok = false;
                    }
                }
                (r, md) => {
                    println!(
                        "VM-ERROR keep: read back {what}: {:?}, size {:?} (want {})",
                        r.err(),
                        md.map(|m| m.len()),
                        8 * n
                    );
                    ok = false;
                }
            }
        }
        drop(gone);
        if let Err(e) = std::fs::remove_file(mnt.join("keep")) {
            println!("VM-ERROR keep: remove keep: {e}");
            ok = false;
        }
        if ok {
            println!("VM-KEEP ok writes={n}");
        }
        ok
    })
}

fn run_thread(id: usize, mnt: PathBuf, seed: u64, stop: Arc<AtomicBool>) -> Ctx {
    let root = format!("t{id}");
    let mut ctx = Ctx {
        id,
        mnt: mnt.clone(),
        m: Model::new(root.clone()),
        rng: Rng::new(seed ^ (id as u64).wrapping_mul(0x9E37_79B9)),
        st: Stats::default(),
        step: 0,
    };
    let r = time(&mut ctx.st, "mkdir", || std::fs::create_dir(mnt.join(&root)));
    if ctx.ok("mkdir thread root", r).is_none() {
        return ctx;
    }
    while !stop.load(Ordering::Relaxed) {
        ctx.step += 1;
        ops::step(&mut ctx);
    }
    final_check(&mut ctx, &mnt);
    ctx
}

/// Every directory's entries and every file's bytes, size and link count, once more.
fn final_check(ctx: &mut Ctx, _mnt: &Path) {
    for d in ctx.m.dir_names() {
        ops::check_dir(ctx, &d);
    }
    for f in ctx.m.file_names() {
        ops::check_file(ctx, &f);
    }
}
