//! Benchmark (not a test): the cost of recovery proper — region check, settling records, the
//! table scan, the key-index rebuild and the fd sweep — for N live inodes, without needing N
//! open fds (a machine's RLIMIT_NOFILE caps the end-to-end benchmark, scripts/bench-recovery.sh).
//! The slots hold fd numbers far above any open fd, so the sweep has the same work to do.
//!
//!   cargo run --release --example recovery_scan -- 10000 100000 1000000

use std::sync::atomic::Ordering;
use std::time::Instant;

use phoenixfsd::state::slots::LIVE;
use phoenixfsd::state::{Region, State};

fn main() {
    let sizes: Vec<u32> = std::env::args().skip(1).map(|a| a.parse().expect("sizes are numbers")).collect();
    let sizes = if sizes.is_empty() { vec![10_000, 100_000, 1_000_000] } else { sizes };
    println!("| live inodes | recover (scan, index) | fd sweep | total |");
    println!("|---:|---:|---:|---:|");
    for n in sizes {
        let mut region = Region::create(n + 16, 1024).expect("region");
        let h = region.header_mut_before_workers();
        h.keep_fds[..3].copy_from_slice(&[0, 1, 2]);
        h.keep_count = 3;
        let state = State::new(region);
        let slots = state.region.inode_slots();
        for (i, s) in slots.iter().enumerate().skip(1).take(n as usize) {
            s.hdr.fd.store(1_000_000 + i as i32, Ordering::Relaxed);
            s.dev.store(1, Ordering::Relaxed);
            s.ino.store(i as u64, Ordering::Relaxed);
            s.lookups.store(1, Ordering::Relaxed);
            s.hdr.state.store(LIVE, Ordering::Relaxed);
        }
        state.region.header().inode_high_water.store(n + 1, Ordering::SeqCst);
        let mut best = (f64::MAX, f64::MAX);
        for _ in 0..5 {
            let t0 = Instant::now();
            // The state's own steps of recovery.rs's `take_over`, without a transport.
            let dead = state.take_over().expect("the region checks");
            state.settle_pending();
            let live_inodes = state.inodes.recover();
            state.handles.recover();
            state.records.recover(dead);
            let t1 = Instant::now();
            phoenixfsd::sys::close_all_except(state.referenced_fds());
            let t2 = Instant::now();
            assert_eq!(live_inodes, n as usize);
            let (r, s) = ((t1 - t0).as_secs_f64() * 1e3, (t2 - t1).as_secs_f64() * 1e3);
            if r + s < best.0 + best.1 {
                best = (r, s);
            }
        }
        println!("| {n} | {:.2} ms | {:.2} ms | {:.2} ms |", best.0, best.1, best.0 + best.1);
    }
}
