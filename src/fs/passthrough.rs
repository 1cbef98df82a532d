//! FUSE passthrough over /dev/fuse (Linux 6.9+, FUSE 7.40): an OPEN or CREATE reply names a
//! backing file registered with the connection (`FUSE_DEV_IOC_BACKING_OPEN` → a backing id), and
//! the kernel then reads, writes and maps that file itself; the daemon sees no READ or WRITE.
//!
//! Backing ids belong to the connection, which the supervisor keeps open across a worker's
//! death, so they outlive the worker that registered them. The rules (docs/design.md,
//! "Passthrough"):
//!
//! - **One id per node.** The kernel wants every passthrough open of an inode to use the same
//!   backing file while any is open (EBUSY otherwise), and refuses a non-passthrough open of an
//!   inode open in passthrough (and the reverse, while cached opens last): EIO to the
//!   application. So a node's id is shared by all its handles and counted here (heap), and a node
//!   with non-passthrough handles open gets no id until they are gone.
//! - **The region knows every id in use**: each file handle's slot holds the id its OPEN reply
//!   named (`HandleSlot::backing`). The heap counts are rebuilt from the LIVE slots.
//! - **Invariant**: the ids registered on the connection are exactly those LIVE handles name,
//!   plus, while a request runs, the one it is registering or closing. An id no LIVE handle names
//!   is garbage, so closing it is always right, and closing one twice is harmless: the kernel
//!   allocates ids cyclically (`idr_alloc_cyclic` in fs/fuse/backing.c), so a closed id is not
//!   handed out again until 2^31 registrations later.
//! - **Recovery** closes every candidate no LIVE handle names: ids in slots it releases (SETTING_UP,
//!   RETIRING), ids in the records of OPEN, CREATE, TMPFILE and RELEASE requests, and the
//!   connection's latest registration, found with a probe (`recover`): registrations are
//!   serialised by a mutex, so the only one whose id a dead worker may not have written down is
//!   the latest, and the probe's own id (the next one the cyclic allocator gives) is one past it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use super::creds::backing_admin;
use super::{Error, Fs, Result};
use crate::state::intent::{Intent, facts};
use crate::state::{LiveHandle, State};
use crate::sys;

/// In `facts::BACKING_ID`: BACKING_OPEN issued, its id not known yet (a crash right after the
/// ioctl leaves this; recovery's probe finds the id).
pub const BACKING_ISSUED: u32 = u32::MAX;

/// A node's handles, as far as passthrough cares.
#[derive(Debug, Default, Clone, Copy)]
struct Node {
    /// The node's backing id (0: none).
    backing: u32,
    /// File handles naming `backing`.
    passthrough: u32,
    /// File handles opened without passthrough (the kernel keeps them in its cached I/O mode).
    other: u32,
}

pub struct Passthrough {
    /// A /dev/fuse fd of the connection (-1: not over /dev/fuse or `--fuse-passthrough=never`).
    dev: i32,
    /// The kernel agreed to FUSE_PASSTHROUGH (set at INIT, or from the region by a later worker).
    on: AtomicBool,
    /// Node id → its handles. Held across every registration, so at most one is in flight.
    nodes: Mutex<HashMap<u64, Node>>,
}

impl Passthrough {
    pub fn new(dev: i32) -> Passthrough {
        Passthrough { dev, on: AtomicBool::new(false), nodes: Mutex::new(HashMap::new()) }
    }

    /// Whether passthrough may be agreed at INIT (over /dev/fuse, not turned off).
    pub fn wanted(&self) -> bool {
        self.dev >= 0
    }
}

/// What an open comes to.
#[derive(Debug, Clone, Copy)]
pub struct Backing {
    /// The backing id to reply with (0: no passthrough).
    pub id: u32,
}

impl Fs {
    pub fn set_passthrough(&self, on: bool) {
        self.passthrough.on.store(on && self.passthrough.wanted(), Ordering::Relaxed);
    }

    pub fn passthrough_on(&self) -> bool {
        self.passthrough.on.load(Ordering::Relaxed)
    }

    /// Chooses passthrough or not for a file handle about to be published on `nodeid` (a
    /// regular file), registering the node's backing file if it has none, and counts the
    /// handle. `eligible`: this open may use passthrough (no direct I/O asked). `mode`: the
    /// file's mode if the caller has just read it (a CREATE's lookup), else it is read here when
    /// needed. A node already in passthrough gets its id whatever `eligible` says (the kernel
    /// would refuse anything else). Undo with `detach_backing` if the handle is not published
    /// after all.
    pub(super) fn attach_backing(
        &self,
        intent: Intent,
        nodeid: u64,
        mode: Option<u32>,
        eligible: bool,
    ) -> Result<Backing> {
        if !self.passthrough_on() {
            return Ok(Backing { id: 0 });
        }
        let mut nodes = self.passthrough.nodes.lock().unwrap();
        let node = nodes.entry(nodeid).or_default();
        if node.backing != 0 {
            node.passthrough += 1;
            return Ok(Backing { id: node.backing });
        }
        if !eligible || node.other > 0 {
            node.other += 1;
            return Ok(Backing { id: 0 });
        }
        // The caller holds the node (a pin, or the lookup it just raised), so this pin only
        // fails if the node's file cannot be reached any more: then the open goes without.
        let file = match self.state.inodes.pin(nodeid) {
            Ok(file) if !has_setid_bits(mode, file.fd()) => file,
            _ => {
                node.other += 1;
                return Ok(Backing { id: 0 });
            }
        };
        match self.register(intent, file.fd()) {
            Ok(id) => {
                *node = Node { backing: id, passthrough: 1, other: 0 };
                Ok(Backing { id })
            }
            Err(e) => {
                // Not registered (e.g. a backing file system stacked too deep: ELOOP): this
                // open goes without passthrough.
                tracing::debug!(nodeid, error = %e, "no passthrough for this open");
                node.other += 1;
                Ok(Backing { id: 0 })
            }
        }
    }

    /// BACKING_OPEN of the node's own O_PATH fd `path` (the kernel keeps a reference to its
    /// open file description, which no handle shares, so the registration holds no lock a
    /// handle took; and no fd is opened for it). Called with the node map locked.
    fn register(&self, intent: Intent, path: i32) -> Result<u32> {
        // 1/3 Crash after this store: recovery's probe finds whether the ioctl ran (the
        //     connection's latest id, if no LIVE handle names it, is closed).
        intent.set_fact(facts::BACKING_ID, BACKING_ISSUED);
        let registered =
            backing_admin().and_then(|_admin| sys::fuse_backing_open(self.passthrough.dev, path).map_err(Error::from));
        // Crash here, the id in no record yet: as after 1/3 (the probe).
        crate::crash_point!("passthrough.after_register");
        let id = registered? as u32;
        // 2/3 Crash after this store: the record names the id; recovery closes it unless a LIVE
        //     handle names it (this request's handle published: the replay replies with it).
        intent.set_fact(facts::BACKING_ID, id);
        crate::crash_point!("passthrough.recorded");
        // 3/3 the caller publishes the handle with the id in its slot.
        Ok(id)
    }

    /// Drops one handle's share of `nodeid`'s backing (`id`, 0 for a handle without
    /// passthrough); the last share closes the id. The caller has retired the handle.
    pub(super) fn detach_backing(&self, nodeid: u64, id: u32) {
        if !self.passthrough_on() {
            return;
        }
        let mut nodes = self.passthrough.nodes.lock().unwrap();
        let Some(node) = nodes.get_mut(&nodeid) else { return };
        if id == 0 {
            node.other = node.other.saturating_sub(1);
        } else if node.backing == id {
            node.passthrough = node.passthrough.saturating_sub(1);
        }
        let close = (node.passthrough == 0 && node.backing != 0).then_some(node.backing);
        if node.passthrough == 0 && node.other == 0 {
            nodes.remove(&nodeid);
        } else if close.is_some() {
            node.backing = 0;
        }
        drop(nodes);
        if let Some(id) = close {
            // The record already names the id (RELEASE wrote it before retiring the handle):
            // crash before or after the close, recovery closes it again unless a LIVE handle
            // names it, and a second close only gets ENOENT.
            crate::crash_point!("release.before_backing_close");
            self.close_backing(id);
            crate::crash_point!("release.after_backing_close");
        }
    }

    fn close_backing(&self, id: u32) -> bool {
        let closed = backing_admin()
            .and_then(|_admin| sys::fuse_backing_close(self.passthrough.dev, id as i32).map_err(Error::from));
        match closed {
            Ok(()) => true,
            Err(e) if e.errno() == libc::ENOENT => false,
            Err(e) => {
                tracing::warn!(id, error = %e, "FUSE_DEV_IOC_BACKING_CLOSE failed");
                false
            }
        }
    }

    /// The backing id LIVE handle `fh` names (0: none), for a replay that found its handle
    /// already published.
    pub(super) fn backing_of(&self, fh: u64) -> u32 {
        self.state
            .handles
            .pin(fh, crate::state::HandleKind::File)
            .map_or(0, |p| p.slot().backing.load(Ordering::Relaxed))
    }

    /// Recovery (worker start, before serving): rebuilds the node counts from the LIVE handles
    /// and closes every id that may still be registered but that no LIVE handle names: those of
    /// the slots recovery released (`released`), those the in-flight records name, and the
    /// connection's latest registration (a probe). Returns how many it closed.
    pub fn recover_passthrough(&self, live: &[LiveHandle], released: &[u32]) -> usize {
        if !self.passthrough_on() {
            return 0;
        }
        let mut held = std::collections::HashSet::new();
        {
            let mut nodes = self.passthrough.nodes.lock().unwrap();
            nodes.clear();
            for h in live.iter().filter(|h| h.kind == crate::state::HandleKind::File) {
                let node = nodes.entry(h.nodeid).or_default();
                if h.backing == 0 {
                    node.other += 1;
                } else {
                    if node.backing != 0 && node.backing != h.backing {
                        tracing::warn!(nodeid = h.nodeid, "two backing ids on one node");
                    }
                    node.backing = h.backing;
                    node.passthrough += 1;
                    held.insert(h.backing);
                }
            }
        }
        let mut candidates: Vec<u32> = released.to_vec();
        candidates.extend(records_backing(&self.state));
        candidates.extend(self.probe_latest());
        candidates.sort_unstable();
        candidates.dedup();
        let closed = candidates
            .into_iter()
            .filter(|id| *id != 0 && *id != BACKING_ISSUED && !held.contains(id))
            .filter(|id| self.close_backing(*id))
            .count();
        if closed > 0 {
            tracing::info!(closed, "passthrough: closed backing ids a dead worker left unpublished");
        }
        closed
    }

    /// The connection's latest registration: registers the region's memfd (a regular file) and
    /// closes it at once; the cyclic allocator gave it the id after the latest. A crash between
    /// the two leaves the probe's id as the latest, which the next recovery's probe finds.
    fn probe_latest(&self) -> Option<u32> {
        let memfd = self.state.region.memfd();
        let probe =
            backing_admin().and_then(|_admin| sys::fuse_backing_open(self.passthrough.dev, memfd).map_err(Error::from));
        match probe {
            Ok(id) => {
                crate::crash_point!("passthrough.probe");
                self.close_backing(id as u32);
                (id > 1).then(|| id as u32 - 1)
            }
            Err(e) => {
                tracing::warn!(error = %e, "passthrough: the recovery probe failed");
                None
            }
        }
    }
}

/// The backing ids the in-use records of OPEN, CREATE, TMPFILE and RELEASE name.
fn records_backing(state: &State) -> Vec<u32> {
    use crate::fuse::abi::Opcode;
    let ops = [Opcode::Open, Opcode::Create, Opcode::Tmpfile, Opcode::Release].map(|o| o as u32);
    (0..crate::state::region::RECORD_CAPACITY)
        .map(|i| state.records.get(i))
        .filter(|r| r.unique.load(Ordering::Acquire) != 0 && ops.contains(&r.opcode.load(Ordering::Relaxed)))
        .map(|r| r.fact(facts::BACKING_ID))
        .filter(|id| *id != 0)
        .collect()
}

/// Whether the file has a set-user-ID or set-group-ID bit: such files are opened without
/// passthrough (if no other open holds the node in passthrough), so that a write by root keeps
/// them as natively and one by another user clears them through the daemon's write path, which
/// decides as the writer (set-group-ID without group execute goes only for a writer outside the
/// file's group). A passthrough write, made with the registration's credentials (root, without
/// CAP_FSETID), would clear set-user-ID always and such set-group-ID never.
/// `mode` if known, else `fd`'s (an error counts as set-id: no passthrough).
fn has_setid_bits(mode: Option<u32>, fd: i32) -> bool {
    let mode = mode.or_else(|| sys::fstatat(fd, c"", libc::AT_EMPTY_PATH).ok().map(|st| st.st_mode));
    mode.is_none_or(|m| m & (libc::S_ISUID | libc::S_ISGID) != 0)
}
