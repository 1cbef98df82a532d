//! The state that must outlive a worker: the inode and handle tables, in a shared-memory region
//! (DESIGN §5). Heap indexes beside it are rebuilt from the region.

pub mod handles;
pub mod inodes;
pub mod region;
pub mod slots;

pub use handles::{HandleKind, HandlePin, Handles};
pub use inodes::{InodeKey, InodePin, Inodes};
pub use region::Region;

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
}

/// The tables of one region, as a worker uses them.
pub struct State {
    pub region: Region,
    pub inodes: Inodes,
    pub handles: Handles,
}

impl State {
    pub fn new(region: Region) -> State {
        let h = region.header();
        let inodes = Inodes::new(region.inode_slots(), &h.inode_high_water);
        let handles = Handles::new(region.handle_slots(), &h.handle_high_water);
        State { region, inodes, handles }
    }
}
