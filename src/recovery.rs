//! Taking the state region over: what every worker does before it serves, the first one (on a
//! fresh region, where each step finds nothing to do) and every one that replaces a dead worker.
//! The steps are those of docs/design.md, "Recovery, in order", in that order; the transport
//! does its share at steps 4 and 5. Step 7, building the server and resuming the transport, is
//! the worker's (worker.rs).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::state::{self, LiveHandle, Region, State};
use crate::sys;
use crate::transport::Transport;

/// The region, taken over: the tables to serve from, and the live handles (the lock-owner
/// index above the state is rebuilt from them).
pub struct Recovered {
    pub state: Arc<State>,
    pub live_handles: Vec<LiveHandle>,
    /// The FUSE passthrough backing ids of the handle slots step 3 released (SETTING_UP,
    /// RETIRING): closed at the worker's start unless a live handle names them
    /// (fs/passthrough.rs `recover_passthrough`).
    pub released_backing: Vec<u32>,
}

/// Takes the region over, steps 1 to 6. Single-threaded: nothing else runs in this worker yet.
pub fn take_over(region: Region, transport: &dyn Transport) -> Result<Recovered, state::Error> {
    // Crash here: nothing is taken over yet; the next worker starts from the same region.
    crate::crash_point!("worker.start");
    let t0 = Instant::now();
    let state = Arc::new(State::new(region));

    // 1. Check the region (a region that fails is refused, never repaired by guesswork) and
    //    take it over under a new worker generation.
    let dead = state.take_over()?;
    // 2. Settle the one table change each in-flight record may have left pending.
    state.settle_pending();
    // 3. Scan both tables: reset pins, free half-made slots, finish retiring ones, rebuild the
    //    free lists (the key index is in the region: step 2 repaired its one journaled entry).
    let (live_inodes, inode_fds) = state.inodes.recover();
    let (live_handles, released_backing) = state.handles.recover();
    // 4. Finish what the dead worker had read that the transport will not deliver again.
    let finished = transport.finish_undelivered(&state);
    // 5. Keep the records of in-flight requests the transport will deliver again, as orphans
    //    awaiting adoption; free the others.
    let mut orphans = state.records.recover(dead);
    orphans.retain(|o| {
        let again = transport.redelivers(o);
        if !again {
            state.records.drop_orphan(o.key);
        }
        again
    });
    let t_recover = t0.elapsed();
    // 6. Close every fd that neither the state nor the transport names: those a request in
    //    flight had opened but not yet handed to a table, and the dead worker's own.
    let mut keep = state.referenced_fds(inode_fds);
    keep.extend(transport.fds());
    sys::close_all_except(keep);
    let t_sweep = t0.elapsed();
    announce_ready(&state);
    if dead.generation > 0 {
        tracing::info!(
            generation = dead.generation + 1,
            live_inodes,
            live_handles = live_handles.len(),
            in_flight = orphans.len(),
            finished,
            recover_us = t_recover.as_micros() as u64,
            sweep_us = (t_sweep - t_recover).as_micros() as u64,
            "took over the state of a dead worker"
        );
    }
    Ok(Recovered { state, live_handles, released_backing })
}

/// Tells the supervisor this worker's fd sweep is done (over vhost-user it reads no control
/// message before, so no fd it receives can be swept).
fn announce_ready(state: &State) {
    let h = state.region.header();
    h.ready_pid.store(sys::process::getpid(), Ordering::Release);
    if h.ready_fd >= 0 {
        sys::eventfd_signal(h.ready_fd);
    }
}
