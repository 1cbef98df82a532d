//! The state that must outlive a worker: the inode and handle tables, in a shared-memory region
//! (DESIGN §5). Heap indexes beside it are rebuilt from the region.

pub mod convert;
pub mod fdcache;
pub mod handles;
pub mod inodes;
pub mod intent;
pub mod keyindex;
pub mod mounts;
pub mod region;
pub mod slots;
pub mod stream;
pub mod vhost;

pub use handles::{HandleKind, HandlePin, Handles};
pub use inodes::{ExportedNode, Forget, InodeKey, InodePin, Inodes, ROOT_ID};
pub use region::Region;

use std::sync::atomic::Ordering;

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
    #[error("cannot make an eventfd for the state region: {0}")]
    EventFd(std::sync::Arc<std::io::Error>),
    #[error("cannot map the state region: {0}")]
    Mmap(std::sync::Arc<std::io::Error>),
    #[error("state region refused: {0}")]
    Corrupt(String),
    #[error("the inode fd budget ({0} fds) is spent; use --inode-file-handles=prefer or raise --rlimit-nofile")]
    FdBudget(usize),
    #[error("cannot open the object by its file handle: {0}")]
    HandleOpen(std::sync::Arc<std::io::Error>),
    #[error("no fd for mount {0}, where a file handle was taken")]
    NoMountFd(u64),
    #[error("the mount table is full ({0} file systems)")]
    MountsFull(usize),
    #[error("cannot open a mount's fd for file handles: {0}")]
    MountFd(std::sync::Arc<std::io::Error>),
    #[error("the file system refuses file handles (--inode-file-handles=mandatory): {0}")]
    NoFileHandle(std::sync::Arc<std::io::Error>),
    #[error("the node's object was not found again after a migration (--migration-on-error=guest-error)")]
    Unmigrated,
}

/// The tables of one region, as a worker uses them.
pub struct State {
    pub region: Region,
    pub inodes: Inodes,
    pub handles: Handles,
    pub records: intent::Records,
}

/// The worker that died before this one took the region over.
#[derive(Debug, Clone, Copy)]
pub struct DeadWorker {
    /// Its generation: only records it was working on count its death.
    pub generation: u32,
    /// Whether its death counts toward the crash-loop guards (it crashed by itself or the OOM
    /// killer took it, rather than a SIGKILL from outside).
    pub counts: bool,
}

/// A LIVE handle found by recovery's table scan (the lock-owner index above this layer is
/// rebuilt from these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveHandle {
    pub fh: u64,
    pub kind: HandleKind,
    /// The node a file or lock-owner handle is open on.
    pub nodeid: u64,
    /// A lock-owner handle's owner (0 for other kinds).
    pub owner: u64,
    /// A file handle's FUSE passthrough backing id (0 for none).
    pub backing: u32,
}

impl State {
    /// The generation of the worker serving now (bumped by each takeover).
    pub fn worker_gen(&self) -> u32 {
        self.region.header().generation.load(Ordering::Relaxed) as u32
    }

    pub fn new(region: Region) -> State {
        let h = region.header();
        let index = keyindex::KeyIndex::new(
            region.index_cells(),
            region.inode_headers(),
            region.inode_slots(),
            &h.index_journal,
        );
        let inodes = Inodes::new(
            region.inode_headers(),
            region.inode_slots(),
            &h.inode_high_water,
            mounts::Mounts::new(&h.mounts),
            index,
        );
        let handles = Handles::new(region.handle_headers(), region.handle_slots(), &h.handle_high_water);
        let records = intent::Records::new(region.records());
        State { region, inodes, handles, records }
    }

    /// Recovery step 1: checks the region a dead worker used (a region that fails is refused,
    /// and nothing in it changes) and takes it over under a new worker generation.
    pub fn take_over(&self) -> Result<DeadWorker, Error> {
        self.region.check()?;
        let h = self.region.header();
        let generation = h.generation.fetch_add(1, Ordering::SeqCst) as u32;
        Ok(DeadWorker { generation, counts: h.death_counts.load(Ordering::Acquire) != 0 })
    }

    /// Recovery step 2: settles the one table change each in-flight record may have left
    /// pending, from what the tables show.
    pub fn settle_pending(&self) {
        self.inodes.repair_index();
        for r in self.region.records().iter().filter(|r| r.unique.load(Ordering::Acquire) != 0) {
            self.inodes.settle_pending(r);
            self.handles.settle_pending(r);
        }
    }

    /// Every fd the tables and the header name: the supervisor's kept fds, the mount fds and the
    /// fds of LIVE handle slots, plus `inode_fds` (those the inode table's recovery pass found:
    /// the inode slots are not read a second time), in no particular order. After recovery, any
    /// other open fd that the transport does not hold was left by a request in flight at the
    /// crash (or was in the dead worker's fd cache).
    pub fn referenced_fds(&self, inode_fds: Vec<i32>) -> Vec<i32> {
        let h = self.region.header();
        let mut fds = inode_fds;
        fds.extend_from_slice(&h.keep_fds[..h.keep_count as usize]);
        fds.extend(self.inodes.mounts.fds());
        let hw = h.handle_high_water.load(Ordering::SeqCst) as usize;
        for s in &self.region.handle_headers()[..hw.min(h.handle_capacity as usize)] {
            if s.state.load(Ordering::SeqCst) == slots::LIVE {
                fds.push(s.fd.load(Ordering::SeqCst));
            }
        }
        fds
    }
}
