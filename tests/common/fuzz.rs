//! The fuzz campaigns' driver (a part of tests/common): a seeded generator, the budget from the
//! environment, and a loop that runs cases until the budget is spent, catches every panic as a
//! finding with the seed that reproduces it, and prints `fuzz: N executions, M findings`.
//!
//! Environment:
//! - `PHOENIXFS_FUZZ_SECONDS` (default: the campaign's CI budget, about a minute): run cases
//!   until this many seconds have passed.
//! - `PHOENIXFS_FUZZ_CASES`: run exactly this many cases instead (no time limit).
//! - `PHOENIXFS_FUZZ_SEED`: the first case's seed (default: from the clock, printed). Case `i`
//!   uses seed + i, so a finding's seed with `PHOENIXFS_FUZZ_CASES=1` replays that case alone.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// SplitMix64: small, fast, and the same sequence for the same seed everywhere.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn u32(&mut self) -> u32 {
        self.next_u64() as u32
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo)
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }

    /// A number fuzzers like: 0, 1, small, a power of two and its neighbours, the type's edges,
    /// or anything.
    pub fn interesting(&mut self) -> u64 {
        match self.below(8) {
            0 => 0,
            1 => self.below(16),
            2 => 1 << self.below(64),
            3 => (1u64 << self.below(64)).wrapping_sub(1),
            4 => u64::MAX - self.below(4),
            5 => u64::from(u32::MAX) - self.below(4),
            6 => i64::MAX as u64 - self.below(4),
            _ => self.next_u64(),
        }
    }
}

/// What one case did: inputs executed, and inputs skipped (never sent, see the campaign).
#[derive(Default)]
pub struct CaseStats {
    pub executions: u64,
    pub skipped: u64,
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok().filter(|v| !v.is_empty())?;
    Some(v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

/// A case that runs longer than this has hung: a finding that ends the process.
const HANG_SECONDS: u64 = 60;

/// (seed of the case running, seconds since the start when it began + 1; 0 = none): a thread
/// that reports a hung case with its seed and exits, since a hang cannot be caught as a panic.
fn watchdog(name: &str) -> Arc<(AtomicU64, AtomicU64)> {
    let w = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let (w2, name, t0) = (w.clone(), name.to_string(), Instant::now());
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_secs(1));
            let began = w2.1.load(Ordering::SeqCst);
            if began != 0 && t0.elapsed().as_secs() + 1 > began + HANG_SECONDS {
                let seed = w2.0.load(Ordering::SeqCst);
                eprintln!(
                    "fuzz: {name}: FINDING at seed {seed} (replay: PHOENIXFS_FUZZ_SEED={seed} PHOENIXFS_FUZZ_CASES=1): the case hung for {HANG_SECONDS} s"
                );
                eprintln!("fuzz: {name}: 1 findings (hang); exiting");
                std::process::exit(101);
            }
        }
    });
    w
}

/// Runs `case(seed, stats)` for seed, seed + 1, … within the budget; every panic is a finding. Prints
/// each finding as it happens and `fuzz: <name>: N executions, M findings` at the end; fails
/// the test if there was any finding.
pub fn campaign(name: &str, default_seconds: u64, mut case: impl FnMut(u64, &mut CaseStats)) {
    let cases = env_u64("PHOENIXFS_FUZZ_CASES");
    let seconds = env_u64("PHOENIXFS_FUZZ_SECONDS").unwrap_or(default_seconds);
    let seed0 = env_u64("PHOENIXFS_FUZZ_SEED").unwrap_or_else(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        t.as_nanos() as u64 & 0xffff_ffff_ffff
    });
    let budget = match cases {
        Some(n) => format!("{n} cases"),
        None => format!("{seconds} s"),
    };
    eprintln!("fuzz: {name}: seed {seed0}, budget {budget}");
    let t0 = Instant::now();
    let watchdog = watchdog(name);
    let (mut executions, mut skipped, mut done) = (0u64, 0u64, 0u64);
    let mut findings: Vec<(u64, String)> = Vec::new();
    loop {
        let over = match cases {
            Some(n) => done >= n,
            None => t0.elapsed() >= Duration::from_secs(seconds),
        };
        if over {
            break;
        }
        let seed = seed0.wrapping_add(done);
        done += 1;
        watchdog.0.store(seed, Ordering::SeqCst);
        watchdog.1.store(t0.elapsed().as_secs() + 1, Ordering::SeqCst);
        let mut stats = CaseStats::default();
        let outcome = catch_unwind(AssertUnwindSafe(|| case(seed, &mut stats)));
        executions += stats.executions;
        skipped += stats.skipped;
        match outcome {
            Ok(()) => {}
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic without a message".into());
                eprintln!(
                    "fuzz: {name}: FINDING at seed {seed} (replay: PHOENIXFS_FUZZ_SEED={seed} PHOENIXFS_FUZZ_CASES=1): {msg}"
                );
                findings.push((seed, msg));
            }
        }
    }
    watchdog.1.store(0, Ordering::SeqCst);
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "fuzz: {name}: {executions} executions, {} findings ({done} cases, {skipped} inputs skipped, {secs:.1} s, {:.0} exec/s, seeds from {seed0})",
        findings.len(),
        executions as f64 / secs.max(1e-9),
    );
    assert!(findings.is_empty(), "{name}: {} findings: {findings:?}", findings.len());
}
