//! The killer thread: SIGKILLs the worker at random moments, and after each kill waits for a new
//! worker and for its first answer before the next.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::checks::probe;
use crate::common::errno::name as ename;
use crate::common::proc::{proc_stat, wait_worker};
use crate::common::sys::errno;
use crate::rng::Rng;
use crate::worker::Shared;

#[derive(Default)]
pub struct KillStats {
    pub kills: u64,
    /// Kill → the probe's reply, per kill.
    pub recovery: Vec<Duration>,
}

pub fn pct(v: &[Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    let mut s = v.to_vec();
    s.sort();
    s[((s.len() - 1) as f64 * p).round() as usize]
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

pub fn killer(sup: i32, mnt: PathBuf, kills: u64, (lo, hi): (u64, u64), seed: u64, shared: Arc<Shared>) -> KillStats {
    let mut rng = Rng::new(seed ^ 0x6b69_6c6c);
    let mut st = KillStats::default();
    let mut cur = match wait_worker(sup, None, Duration::from_secs(5)) {
        Ok(w) => w,
        Err(e) => {
            shared.fail(e);
            return st;
        }
    };
    let t_start = Instant::now();
    for k in 1..=kills {
        std::thread::sleep(Duration::from_millis(rng.range(lo, hi)));
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        match proc_stat(cur.pid) {
            Some((s, ppid, start)) if ppid == sup && start == cur.start && s != 'Z' && s != 'X' => {}
            other => {
                shared.fail(format!(
                    "kill #{k}: worker {} died or changed without being killed (stat: {other:?})",
                    cur.pid
                ));
                return st;
            }
        }
        let t0 = Instant::now();
        if unsafe { libc::kill(cur.pid, libc::SIGKILL) } != 0 {
            shared.fail(format!("kill #{k}: kill({}, SIGKILL): {}", cur.pid, ename(errno())));
            return st;
        }
        st.kills = k;
        cur = match wait_worker(sup, Some(cur), Duration::from_secs(5)) {
            Ok(w) => w,
            Err(e) => {
                shared.fail(format!("kill #{k}: {e}"));
                return st;
            }
        };
        if let Err(e) = probe(&mnt, k) {
            shared.fail(format!("kill #{k}: {e}"));
            return st;
        }
        st.recovery.push(t0.elapsed());
        if k % 100 == 0 || k == kills {
            eprintln!(
                "soak: {k}/{kills} kills in {:.1} s, {} ops, kill->reply median {} p99 {} max {}",
                t_start.elapsed().as_secs_f64(),
                shared.ops.load(Ordering::Relaxed),
                ms(pct(&st.recovery, 0.5)),
                ms(pct(&st.recovery, 0.99)),
                ms(pct(&st.recovery, 1.0)),
            );
        }
    }
    st
}

/// How a live-upgrade soak disturbs the daemon: `ctl upgrade` to each of `binaries` in turn.
pub struct Upgrades {
    pub daemon: u32,
    pub ctl: PathBuf,
    pub binaries: Vec<PathBuf>,
}

/// The upgrader thread: `count` live upgrades at random moments, each followed by a worker
/// kill (upgrades and crashes compose), and after each the new worker's first answer before
/// the next. `recovery` holds upgrade → first answer.
pub fn upgrader(
    u: Upgrades,
    mnt: PathBuf,
    count: u64,
    (lo, hi): (u64, u64),
    seed: u64,
    shared: Arc<Shared>,
) -> KillStats {
    let mut rng = Rng::new(seed ^ 0x7570_6772);
    let mut st = KillStats::default();
    let t_start = Instant::now();
    for k in 1..=count {
        std::thread::sleep(Duration::from_millis(rng.range(lo, hi) * 10));
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let binary = &u.binaries[k as usize % u.binaries.len()];
        let t0 = Instant::now();
        // In this process, not by running `phoenixfsd ctl`: a forked child would hold copies of
        // the workload's fds until its exec, and with them OFD locks the workload released.
        let file = std::fs::File::open(binary).unwrap();
        let line = format!("upgrade {}", binary.display());
        let reply = phoenixfsd::ctl::ask(&u.ctl, &line, Some(&file)).unwrap_or_else(|e| format!("error: {e}"));
        if !reply.starts_with("ok: upgraded") {
            shared.fail(format!("upgrade #{k} to {binary:?}: {reply}"));
            return st;
        }
        let serving = || crate::common::proc::wait_serving(u.daemon, None, Duration::from_secs(10));
        let result = serving()
            .and_then(|_| probe(&mnt, 2 * k))
            .map(|()| st.recovery.push(t0.elapsed()))
            .and_then(|()| serving())
            .and_then(|(sup, w)| {
                // SAFETY: a signal to the worker process found just now.
                if unsafe { libc::kill(w.pid, libc::SIGKILL) } != 0 {
                    return Err(format!("kill({}, SIGKILL): {}", w.pid, ename(errno())));
                }
                wait_worker(sup, Some(w), Duration::from_secs(5))
            })
            .and_then(|_| probe(&mnt, 2 * k + 1));
        if let Err(e) = result {
            shared.fail(format!("upgrade #{k}: {e}"));
            return st;
        }
        st.kills = k;
        if k % 5 == 0 || k == count {
            eprintln!(
                "soak: {k}/{count} upgrades (each with a worker kill after it) in {:.1} s, {} ops, upgrade->reply median {} max {}",
                t_start.elapsed().as_secs_f64(),
                shared.ops.load(Ordering::Relaxed),
                ms(pct(&st.recovery, 0.5)),
                ms(pct(&st.recovery, 1.0)),
            );
        }
    }
    st
}
