//! `vmg.bench` on the kernel command line: instead of the checked workload, fixed
//! micro-benchmarks on the mount, one `VM-BENCH` line each (tests/vm.rs compares backends):
//!
//! `VM-BENCH name=NAME ops=N secs=S ops_per_s=R mib_per_s=M p50_us=A p99_us=B`
//!
//! - `meta`: create an empty file, stat it, unlink it (one op = the three calls); `meta-x4`:
//!   the same from 4 threads at once, each in its own directory (4 requests in flight on the
//!   guest's one queue, as 4 processes keep them), ops per second by wall-clock time.
//! - `small-read`: open, read and close 500 files of 1 KiB (one op = one file, as a build reads
//!   its headers), written first and then dropped from the guest's caches, so each op asks the
//!   daemon for the name, the open, the data and whatever the close costs.
//! - `seq-write-1m`, `seq-read-1m`: a 32 MiB file in 1 MiB calls (the write ends with fsync,
//!   counted; the read starts with the guest's page cache dropped).
//! - `rand-read-4k`, `rand-write-4k`: 2,000 calls at random 4 KiB-aligned offsets of that file
//!   (the writes end with fsync, counted; the reads start with the cache dropped).
//!
//! Each once buffered and once with O_DIRECT (`-direct` names); `rand-read-4k-direct-x4`: the
//! O_DIRECT random reads from 4 threads at once.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::ops::Aligned;
use crate::rng::Rng;

const FILE_MIB: usize = 32;
const RAND_OPS: usize = 2000;
const META_OPS: usize = 1000;
/// Files of the `small-read` row.
const SMALL_FILES: usize = 500;
/// Threads of the `-x4` rows.
const THREADS: usize = 4;

struct Run {
    lat: Vec<Duration>,
    bytes: u64,
    total: Duration,
}

impl Run {
    fn new() -> Run {
        Run { lat: Vec::new(), bytes: 0, total: Duration::ZERO }
    }

    fn op<T>(&mut self, bytes: usize, f: impl FnOnce() -> std::io::Result<T>) -> T {
        let t0 = Instant::now();
        let r = f().unwrap_or_else(|e| panic!("benchmark call failed: {e}"));
        let d = t0.elapsed();
        self.lat.push(d);
        self.total += d;
        self.bytes += bytes as u64;
        r
    }

    fn print(mut self, name: &str) {
        self.lat.sort();
        let pct = |p: usize| self.lat.get((self.lat.len().saturating_sub(1)) * p / 100).copied().unwrap_or_default();
        let s = self.total.as_secs_f64();
        println!(
            "VM-BENCH name={name} ops={} secs={s:.3} ops_per_s={:.1} mib_per_s={:.2} p50_us={} p99_us={}",
            self.lat.len(),
            self.lat.len() as f64 / s,
            self.bytes as f64 / (1 << 20) as f64 / s,
            pct(50).as_micros(),
            pct(99).as_micros()
        );
    }
}

fn drop_caches() {
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

fn open(path: &Path, direct: bool, create: bool) -> File {
    let mut o = OpenOptions::new();
    o.read(true).write(true).create(create);
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    o.open(path).unwrap_or_else(|e| panic!("open {path:?}: {e}"))
}

pub fn run(mnt: &Path, seed: u64) {
    let dir = mnt.join("bench");
    std::fs::create_dir_all(&dir).expect("mkdir bench");
    let mut rng = Rng::new(seed);

    let mut r = Run::new();
    meta(&dir, META_OPS, &mut r);
    r.print("meta");
    let subdirs: Vec<_> = (0..THREADS).map(|t| dir.join(format!("t{t}"))).collect();
    for d in &subdirs {
        std::fs::create_dir_all(d).expect("mkdir bench/tN");
    }
    in_parallel(THREADS, |t, r| meta(&subdirs[t], META_OPS / THREADS, r)).print("meta-x4");

    let small = dir.join("small");
    std::fs::create_dir_all(&small).expect("mkdir bench/small");
    let names: Vec<_> = (0..SMALL_FILES).map(|i| small.join(format!("s{i}"))).collect();
    for p in &names {
        std::fs::write(p, rng.bytes(1024)).expect("write a small file");
    }
    drop_caches();
    let mut r = Run::new();
    for p in &names {
        r.op(1024, || std::fs::read(p));
    }
    r.print("small-read");

    for direct in [false, true] {
        let sfx = if direct { "-direct" } else { "" };
        let path = dir.join(format!("data{sfx}"));
        let mut buf = Aligned::new(1 << 20);
        buf.buf(1 << 20).copy_from_slice(&rng.bytes(1 << 20));

        let f = open(&path, direct, true);
        let mut r = Run::new();
        for i in 0..FILE_MIB {
            r.op(1 << 20, || f.write_all_at(buf.buf(1 << 20), (i << 20) as u64));
        }
        r.op(0, || f.sync_all());
        r.print(&format!("seq-write-1m{sfx}"));
        drop(f);

        drop_caches();
        let f = open(&path, direct, false);
        let mut r = Run::new();
        for i in 0..FILE_MIB {
            r.op(1 << 20, || f.read_exact_at(buf.buf(1 << 20), (i << 20) as u64));
        }
        r.print(&format!("seq-read-1m{sfx}"));
        drop(f);

        drop_caches();
        let f = open(&path, direct, false);
        let mut r = Run::new();
        for _ in 0..RAND_OPS {
            let off = rng.below((FILE_MIB * 256) as u64) * 4096;
            r.op(4096, || f.read_exact_at(buf.buf(4096), off));
        }
        r.print(&format!("rand-read-4k{sfx}"));

        let mut r = Run::new();
        for _ in 0..RAND_OPS {
            let off = rng.below((FILE_MIB * 256) as u64) * 4096;
            r.op(4096, || f.write_all_at(buf.buf(4096), off));
        }
        r.op(0, || f.sync_all());
        r.print(&format!("rand-write-4k{sfx}"));
        if direct {
            let seeds: Vec<u64> = (0..THREADS).map(|_| rng.next()).collect();
            let r = in_parallel(THREADS, |t, r| {
                let mut rng = Rng::new(seeds[t]);
                let mut buf = Aligned::new(4096);
                for _ in 0..RAND_OPS / THREADS {
                    let off = rng.below((FILE_MIB * 256) as u64) * 4096;
                    r.op(4096, || f.read_exact_at(buf.buf(4096), off));
                }
            });
            r.print(&format!("rand-read-4k{sfx}-x{THREADS}"));
        }
    }
}

/// `n` times: create an empty file in `dir`, stat it, unlink it.
fn meta(dir: &Path, n: usize, r: &mut Run) {
    for i in 0..n {
        let p = dir.join(format!("m{i}"));
        r.op(0, || {
            File::create(&p)?;
            std::fs::metadata(&p)?;
            std::fs::remove_file(&p)
        });
    }
}

/// Runs `work(thread, run)` on `threads` threads at once; one run of all their calls, its total
/// the wall-clock time (so ops per second count what the threads did together).
fn in_parallel(threads: usize, work: impl Fn(usize, &mut Run) + Sync) -> Run {
    let t0 = Instant::now();
    let runs: Vec<Run> = std::thread::scope(|s| {
        let work = &work;
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut r = Run::new();
                    work(t, &mut r);
                    r
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a benchmark thread panicked")).collect()
    });
    let mut all = Run::new();
    for r in runs {
        all.lat.extend(r.lat);
        all.bytes += r.bytes;
    }
    all.total = t0.elapsed();
    all
}
