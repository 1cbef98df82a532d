//! The state that must outlive a worker: the inode and handle tables, in a shared-memory region
//! (DESIGN §5). Heap indexes beside it are rebuilt from the region.

pub mod handles;
pub mod inodes;
pub mod intent;
pub mod region;
pub mod slots;
pub mod vhost;

pub use handles::{HandleKind, HandlePin, Handles};
pub use inodes::{InodeKey, InodePin, Inodes};
pub use region::Region;

#[cfg(test)]
mod tests;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("node id is not live (bad or stale)")]
    BadNodeId,
    #[error("file handle is not live (bad, stale or of the wrong kind)")]
    BadHandle,
    #[error("table is full ({0} slots); raise --max-inodes / --max-handles")]
    TableFull(usize),
    #[error("the root must take slot 1, got {0}")]
    RootNotFirst(u32),
    #[error("table capacities must be at least 2")]
    BadCapacity,
    #[error("cannot create the state memfd: {0}")]
    Memfd(std::sync::Arc<std::io::Error>),
    #[error("cannot map the state region: {0}")]
    Mmap(std::sync::Arc<std::io::Error>),
    #[error("state region refused: {0}")]
    Corrupt(String),
}

/// The tables of one region, as a worker uses them.
pub struct State {
    pub region: Region,
    pub inodes: Inodes,
    pub handles: Handles,
    pub records: intent::Records,
}

/// What `State::recover` found and repaired.
#[derive(Debug, Default)]
pub struct RecoveryReport {
    pub live_inodes: usize,
    pub live_handles: usize,
    pub records: intent::RecordsReport,
}

impl State {
    /// The generation of the worker serving now (bumped by each takeover).
    pub fn worker_gen(&self) -> u32 {
        self.region.header().generation.load(std::sync::atomic::Ordering::Relaxed) as u32
    }

    pub fn new(region: Region) -> State {
        let h = region.header();
        let inodes = Inodes::new(region.inode_slots(), &h.inode_high_water);
        let handles = Handles::new(region.handle_slots(), &h.handle_high_water);
        let records = intent::Records::new(region.records());
        State { region, inodes, handles, records }
    }

    /// Takes over a region a dead worker used (single-threaded, before serving): checks it,
    /// settles the table change each in-flight record left pending, repairs half-done slots and
    /// rebuilds the heap indexes, and turns in-flight records into orphans awaiting their resend.
    /// `on_handle` sees every LIVE handle (to rebuild indexes kept above this layer).
    pub fn recover(
        &self,
        no_reply: impl Fn(u32) -> bool,
        on_handle: impl FnMut(u64, &'static handles::HandleSlot),
        finish_noreply: impl FnOnce(&State),
    ) -> Result<RecoveryReport, Error> {
        self.region.check()?;
        let dead_gen = self.region.header().generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst) as u32;
        for r in self.region.records() {
            if r.unique.load(std::sync::atomic::Ordering::Acquire) != 0 {
                self.inodes.settle_pending(r);
                self.handles.settle_pending(r);
            }
        }
        let live_inodes = self.inodes.recover();
        let live_handles = self.handles.recover(on_handle);
        // Requests without replies that a dead worker had read are finished now (their records
        // still tell how far each got); the kernel will not send them again.
        finish_noreply(self);
        let counts = self.region.header().death_counts.load(std::sync::atomic::Ordering::Acquire) != 0;
        let records = self.records.recover(no_reply, dead_gen, counts);
        Ok(RecoveryReport { live_inodes, live_handles, records })
    }

    /// Every fd the region names: connection fds, kept fds, and the fds of LIVE slots (in no
    /// particular order, possibly repeated). After recovery, any other open fd was left by a
    /// request in flight at the crash.
    pub fn referenced_fds(&self) -> Vec<i32> {
        use std::sync::atomic::Ordering;
        let h = self.region.header();
        let mut fds: Vec<i32> = h.conn_fds[..h.conn_count as usize].to_vec();
        fds.extend(&h.keep_fds[..h.keep_count as usize]);
        fds.extend(self.region.vhost().fds());
        let hw = h.inode_high_water.load(Ordering::SeqCst) as usize;
        for s in &self.region.inode_slots()[..hw.min(h.inode_capacity as usize)] {
            if s.hdr.state.load(Ordering::SeqCst) == slots::LIVE {
                fds.push(s.hdr.fd.load(Ordering::SeqCst));
            }
        }
        let hw = h.handle_high_water.load(Ordering::SeqCst) as usize;
        for s in &self.region.handle_slots()[..hw.min(h.handle_capacity as usize)] {
            if s.hdr.state.load(Ordering::SeqCst) == slots::LIVE {
                fds.push(s.hdr.fd.load(Ordering::SeqCst));
            }
        }
        fds
    }
}
