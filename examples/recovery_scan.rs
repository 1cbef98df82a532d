//! Benchmark (not a test): the cost of recovery proper — region check, settling records (with
//! the key index's journal repair), the table pass and the fd sweep — for N live inodes,
//! without needing N open fds (a machine's RLIMIT_NOFILE caps the end-to-end benchmark,
//! scripts/bench-recovery.sh).
//!
//! Two ways of keeping inodes: file handles (the default: a slot holds no fd) and an O_PATH fd
//! per inode (`--inode-file-handles=never`: the slots hold fd numbers far above any open fd, so
//! the sweep has the same work to do). The key index is in the region, filled by the real
//! lookups; nothing is rebuilt per inode.
//!
//!   cargo run --release --example recovery_scan -- 10000 100000 1000000

use std::time::Instant;

use phoenixfsd::state::intent::Intent;
use phoenixfsd::state::{InodeKey, Region, State};
use phoenixfsd::sys::fhandle::FileHandle;

fn main() {
    let sizes: Vec<u32> = std::env::args().skip(1).map(|a| a.parse().expect("sizes are numbers")).collect();
    let sizes = if sizes.is_empty() { vec![10_000, 100_000, 1_000_000] } else { sizes };
    println!("| live inodes | kept as | runs | recover (median) | p90 | max | fd sweep (median) | total (median) |");
    println!("|---:|---|---:|---:|---:|---:|---:|---:|");
    for handles in [true, false] {
        for &n in &sizes {
            bench(n, handles);
        }
    }
}

fn bench(n: u32, handles: bool) {
    let mut region = Region::create(n + 16, 1024).expect("region");
    let h = region.header_mut_before_workers();
    h.keep_fds[..3].copy_from_slice(&[0, 1, 2]);
    h.keep_count = 3;
    let state = State::new(region);
    state.inodes.install_root(1_000_000, InodeKey { dev: 1, ino: 0, mnt_id: 1 }, libc::S_IFDIR).unwrap();
    let fh = FileHandle::new(1, &[7u8; 8]);
    for i in 1..n {
        let key = InodeKey { dev: 1, ino: u64::from(i), mnt_id: 1 };
        let fd = if handles { -1 } else { 1_000_000 + i as i32 };
        state.inodes.lookup(fd, key, libc::S_IFREG, Intent::none(), || Ok(handles.then_some(fh))).expect("lookup");
    }
    let runs = 11;
    let mut rec = Vec::new();
    let mut sweep = Vec::new();
    for _ in 0..runs {
        let t0 = Instant::now();
        // The state's own steps of recovery.rs's `take_over`, without a transport.
        let dead = state.take_over().expect("the region checks");
        state.settle_pending();
        let (live_inodes, inode_fds) = state.inodes.recover();
        state.handles.recover();
        state.records.recover(dead);
        let t1 = Instant::now();
        phoenixfsd::sys::close_all_except(state.referenced_fds(inode_fds));
        let t2 = Instant::now();
        assert_eq!(live_inodes, n as usize);
        rec.push((t1 - t0).as_secs_f64() * 1e3);
        sweep.push((t2 - t1).as_secs_f64() * 1e3);
    }
    let total: Vec<f64> = rec.iter().zip(&sweep).map(|(a, b)| a + b).collect();
    let q = |v: &[f64], p: f64| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * p).round() as usize]
    };
    println!(
        "| {n} | {} | {runs} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
        if handles { "file handle" } else { "O_PATH fd" },
        q(&rec, 0.5),
        q(&rec, 0.9),
        q(&rec, 1.0),
        q(&sweep, 0.5),
        q(&total, 0.5)
    );
}
