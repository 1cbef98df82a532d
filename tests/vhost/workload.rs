#![allow(dead_code)] // a test-support module: not every test uses every part
//! A checked file workload for several threads at once on a mount, so that several syscalls,
//! and so several FUSE requests, are in flight together: what the bridge's tests put on one
//! request queue.

use std::fs;
use std::io::ErrorKind;
use std::path::Path;
use std::time::{Duration, Instant};

/// File sizes the rounds cycle through: one byte, a page, a read split across pages, and more
/// than the default readahead.
const SIZES: [usize; 4] = [1, 4096, 65_536 + 7, 256 << 10];
/// How long the workers go on past their rounds while `enough` says no.
const PATIENCE: Duration = Duration::from_secs(10);

/// Runs `workers` threads under `dir`, each in a directory of its own, for at least `rounds`
/// rounds and then on until `enough()` (asked between rounds) or `PATIENCE` has passed. A round
/// writes a file with content of its own, reads it back, renames it, checks both names and
/// removes it; any wrong result panics, naming the worker, the round and the step. Returns the
/// rounds done in all.
pub fn run(dir: &Path, workers: usize, rounds: usize, enough: &(dyn Fn() -> bool + Sync)) -> usize {
    let until = Instant::now() + PATIENCE;
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..workers)
            .map(|worker| {
                s.spawn(move || {
                    let own = dir.join(format!("w{worker}"));
                    fs::create_dir(&own).unwrap_or_else(|e| panic!("worker {worker}: mkdir {own:?}: {e}"));
                    let mut done = 0;
                    while done < rounds || (!enough() && Instant::now() < until) {
                        round(&own, worker, done);
                        done += 1;
                    }
                    let left = fs::read_dir(&own).unwrap().count();
                    assert_eq!(left, 0, "worker {worker}: files left in {own:?} after {done} rounds");
                    fs::remove_dir(&own).unwrap_or_else(|e| panic!("worker {worker}: rmdir {own:?}: {e}"));
                    done
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().expect("a workload thread panicked")).sum()
    })
}

fn round(own: &Path, worker: usize, round: usize) {
    let what = |step: &str| format!("worker {worker} round {round}: {step}");
    let content = content(worker, round, SIZES[round % SIZES.len()]);
    let (first, second) = (own.join(format!("f{round}")), own.join(format!("g{round}")));
    fs::write(&first, &content).unwrap_or_else(|e| panic!("{}: {e}", what("write")));
    let back = fs::read(&first).unwrap_or_else(|e| panic!("{}: {e}", what("read")));
    assert!(back == content, "{}: {} bytes back for {} written", what("read back"), back.len(), content.len());
    fs::rename(&first, &second).unwrap_or_else(|e| panic!("{}: {e}", what("rename")));
    let gone = fs::metadata(&first).map(|_| ()).map_err(|e| e.kind());
    assert_eq!(gone, Err(ErrorKind::NotFound), "{}", what("the old name after rename"));
    let len = fs::metadata(&second).unwrap_or_else(|e| panic!("{}: {e}", what("stat the new name"))).len();
    assert_eq!(len, content.len() as u64, "{}", what("size under the new name"));
    fs::remove_file(&second).unwrap_or_else(|e| panic!("{}: {e}", what("unlink")));
}

/// Bytes no other worker or round writes, so that a reply delivered to the wrong request shows.
fn content(worker: usize, round: usize, len: usize) -> Vec<u8> {
    let seed = (worker as u32) << 24 ^ round as u32;
    (0..len as u32).map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 24) as u8).collect()
}
