//! Locks: GETLK, SETLK, SETLKW.
//!
//! Record locks (the guest's POSIX locks, owner = its process's file table, and its OFD locks,
//! owner = its open file) are taken as OFD locks on one host fd *per (node, lock owner)*, held in
//! a LockOwner handle slot. So two owners conflict exactly as they would natively, and one
//! owner's locks through different guest fds are one set. The kernel sends no unlock when the
//! guest closes a file: a POSIX owner's locks are dropped at FLUSH, which names the closing
//! process's owner (`drop_owner_locks`), and an OFD owner's at the RELEASE of the one guest file
//! it locked through (`LockOwners::file_closed`, by the fh kept in its slot, so it survives a
//! crash). The slot also keeps the pid the owner last locked with, which GETLK reports for a
//! conflicting lock. flock requests (`FUSE_LK_FLOCK`) belong to the guest's open file, so they are
//! flock(2) on the handle's own fd.
//!
//! Lock-owner fds are closed when the node's last open file is released (no owner can hold a
//! lock on a file nobody has open). Being handle slots in the state region, they survive a
//! worker's death like every other fd.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use super::{Error, Fs, Result};
use crate::fuse::abi;
use crate::state::{HandleKind, Handles, LiveHandle};
use crate::sys;

/// FUSE's "to end of file" (the kernel's OFFSET_MAX).
const OFFSET_MAX: u64 = i64::MAX as u64;

/// One lock owner's handle, and the guest file handle it locks through.
#[derive(Clone, Copy)]
struct Owner {
    fh: u64,
    /// The file handle of its first lock, or 0 once it has locked through more than one: an OFD
    /// owner (one guest open file) always uses one fh, a POSIX owner (a process) may use several.
    via: u64,
}

/// Per node: how many guest files are open on it, and its lock owners.
#[derive(Default)]
struct NodeLocks {
    open_files: u32,
    owners: HashMap<u64, Owner>,
}

/// The heap index of lock owners (rebuilt from the handle table at recovery).
#[derive(Default)]
pub struct LockOwners {
    nodes: Mutex<HashMap<u64, NodeLocks>>,
}

impl LockOwners {
    /// Recovery: counts open files per node and re-registers lock owners; owners of nodes with
    /// no open file left, or bound to a guest file that is gone (a crash between a RELEASE and
    /// its owner cleanup), are released.
    pub fn rebuild(&self, live: &[LiveHandle], handles: &Handles) {
        let files: std::collections::HashSet<u64> =
            live.iter().filter(|h| h.kind == HandleKind::File).map(|h| h.fh).collect();
        let mut nodes = self.nodes.lock().unwrap();
        nodes.clear();
        for h in live.iter().filter(|h| h.kind == HandleKind::File) {
            nodes.entry(h.nodeid).or_default().open_files += 1;
        }
        for &LiveHandle { fh, kind, nodeid, owner, .. } in live {
            if kind != HandleKind::LockOwner {
                continue;
            }
            let via = handles.pin(fh, HandleKind::LockOwner).map_or(0, |p| p.slot().via.load(Ordering::Relaxed));
            match nodes.get_mut(&nodeid) {
                Some(n) if n.open_files > 0 && (via == 0 || files.contains(&via)) => {
                    n.owners.insert(owner, Owner { fh, via });
                }
                _ => {
                    let _ = handles.release(fh, HandleKind::LockOwner);
                }
            }
        }
    }

    pub fn file_opened(&self, nodeid: u64) {
        self.nodes.lock().unwrap().entry(nodeid).or_default().open_files += 1;
    }

    /// After RELEASE of guest file `fh`: drop the owners that locked only through it (an OFD
    /// owner's locks end with its file; a POSIX owner's were already dropped at FLUSH), and
    /// every owner once the node has no open file left.
    pub fn file_closed(&self, nodeid: u64, fh: u64, handles: &Handles) {
        let dropped: Vec<u64> = {
            let mut nodes = self.nodes.lock().unwrap();
            let Some(n) = nodes.get_mut(&nodeid) else { return };
            n.open_files = n.open_files.saturating_sub(1);
            if n.open_files == 0 {
                nodes.remove(&nodeid).map(|n| n.owners.into_values().map(|o| o.fh).collect()).unwrap_or_default()
            } else {
                let gone: Vec<u64> = n.owners.iter().filter(|(_, o)| o.via == fh).map(|(id, _)| *id).collect();
                gone.iter().filter_map(|id| n.owners.remove(id)).map(|o| o.fh).collect()
            }
        };
        for fh in dropped {
            let _ = handles.release(fh, HandleKind::LockOwner);
        }
    }

    fn get(&self, nodeid: u64, owner: u64) -> Option<u64> {
        self.nodes.lock().unwrap().get(&nodeid)?.owners.get(&owner).map(|o| o.fh)
    }

    /// Notes that `owner` locks through guest file `via` (in the slot too, for recovery).
    fn used_via(&self, nodeid: u64, owner: u64, via: u64, handles: &Handles) {
        if let Some(o) = self.nodes.lock().unwrap().get_mut(&nodeid).and_then(|n| n.owners.get_mut(&owner))
            && o.via != via
            && o.via != 0
        {
            o.via = 0;
            if let Ok(p) = handles.pin(o.fh, HandleKind::LockOwner) {
                p.slot().via.store(0, Ordering::Relaxed);
            }
        }
    }

    fn others(&self, nodeid: u64, owner: u64) -> Vec<u64> {
        let nodes = self.nodes.lock().unwrap();
        nodes
            .get(&nodeid)
            .map(|n| n.owners.iter().filter(|(o, _)| **o != owner).map(|(_, o)| o.fh).collect())
            .unwrap_or_default()
    }
}

fn to_flock(lk: &abi::FileLock) -> Result<libc::flock64> {
    let start = i64::try_from(lk.start).map_err(|_| Error::OutOfRange)?;
    let len = if lk.end >= OFFSET_MAX {
        0
    } else {
        let end = i64::try_from(lk.end).map_err(|_| Error::OutOfRange)?;
        end.checked_sub(start).and_then(|d| d.checked_add(1)).filter(|l| *l > 0).ok_or(Error::OutOfRange)?
    };
    let typ = i16::try_from(lk.typ).map_err(|_| Error::OutOfRange)?;
    if ![libc::F_RDLCK as i16, libc::F_WRLCK as i16, libc::F_UNLCK as i16].contains(&typ) {
        return Err(Error::OutOfRange);
    }
    Ok(libc::flock64 { l_type: typ, l_whence: libc::SEEK_SET as i16, l_start: start, l_len: len, l_pid: 0 })
}

fn same_lock(a: &libc::flock64, b: &libc::flock64) -> bool {
    (a.l_type, a.l_start, a.l_len) == (b.l_type, b.l_start, b.l_len)
}

impl Fs {
    /// The lock-owner handle for (`nodeid`, `owner`), made on first use (through guest file
    /// `via`) from the node's fd.
    fn lock_owner(&self, nodeid: u64, owner: u64, via: u64) -> Result<u64> {
        if let Some(fh) = self.locks.get(nodeid, owner) {
            self.locks.used_via(nodeid, owner, via, &self.state.handles);
            return Ok(fh);
        }
        let node = self.state.inodes.pin(nodeid)?;
        // Any access mode will do for holding locks; the guest kernel already refused a write
        // lock on a read-only file. Read-write first, as either lock type needs its mode.
        let fd = self
            .reopen(node.fd(), libc::O_RDWR)
            .or_else(|_| self.reopen(node.fd(), libc::O_RDONLY))
            .or_else(|_| self.reopen(node.fd(), libc::O_WRONLY))?;
        let mut nodes = self.locks.nodes.lock().unwrap();
        let n = nodes.entry(nodeid).or_default();
        if let Some(o) = n.owners.get(&owner) {
            sys::close(fd); // another thread made it meanwhile
            return Ok(o.fh);
        }
        let fh = self.state.handles.insert_lock_owner(fd, nodeid, owner, via)?;
        n.owners.insert(owner, Owner { fh, via });
        Ok(fh)
    }

    pub fn getlk(&self, a: &abi::LkIn) -> Result<abi::LkOut> {
        let file = self.state.handles.pin(a.fh, HandleKind::File)?;
        let nodeid = file.slot().nodeid.load(Ordering::Relaxed);
        let want = to_flock(&a.lk)?;
        // Ask through the owner's own fd, so that its own locks are no conflict; an owner with no
        // fd yet holds no locks, and the file's fd holds no record locks either.
        let own =
            self.locks.get(nodeid, a.owner).map(|fh| self.state.handles.pin(fh, HandleKind::LockOwner)).transpose()?;
        let query_fd = own.as_ref().map_or(file.fd(), |p| p.fd());
        let mut found = want;
        sys::fcntl_lock(query_fd, libc::F_OFD_GETLK, &mut found)?;
        let mut pid = 0;
        if found.l_type != libc::F_UNLCK as i16 {
            // Which owner holds it? Asking from the holder's fd hides the lock (own locks never
            // conflict), so the first owner whose view differs is the one.
            for fh in self.locks.others(nodeid, a.owner) {
                let Ok(other) = self.state.handles.pin(fh, HandleKind::LockOwner) else { continue };
                let mut seen = want;
                if sys::fcntl_lock(other.fd(), libc::F_OFD_GETLK, &mut seen).is_ok() && !same_lock(&seen, &found) {
                    pid = other.slot().pid.load(Ordering::Relaxed);
                    break;
                }
            }
        }
        let end = if found.l_len == 0 { OFFSET_MAX } else { (found.l_start + found.l_len - 1) as u64 };
        Ok(abi::LkOut { lk: abi::FileLock { start: found.l_start as u64, end, typ: found.l_type as u32, pid } })
    }

    pub fn setlk(&self, a: &abi::LkIn, sleep: bool) -> Result<()> {
        let file = self.state.handles.pin(a.fh, HandleKind::File)?;
        if a.lk_flags & abi::LK_FLOCK != 0 {
            let op = match a.lk.typ as i32 {
                libc::F_RDLCK => libc::LOCK_SH,
                libc::F_WRLCK => libc::LOCK_EX,
                libc::F_UNLCK => libc::LOCK_UN,
                _ => return Err(Error::OutOfRange),
            };
            let op = if sleep { op } else { op | libc::LOCK_NB };
            return Ok(sys::flock(file.fd(), op)?);
        }
        let nodeid = file.slot().nodeid.load(Ordering::Relaxed);
        let mut fl = to_flock(&a.lk)?;
        if fl.l_type == libc::F_UNLCK as i16 && self.locks.get(nodeid, a.owner).is_none() {
            return Ok(()); // an owner without an fd holds nothing to unlock
        }
        let owner = self.state.handles.pin(self.lock_owner(nodeid, a.owner, a.fh)?, HandleKind::LockOwner)?;
        let cmd = if sleep { libc::F_OFD_SETLKW } else { libc::F_OFD_SETLK };
        sys::fcntl_lock(owner.fd(), cmd, &mut fl)?;
        // Crash here: the lock is held by the owner's fd (which lives on in the shared fd table);
        // the replay takes the same lock for the same owner again, which changes nothing.
        crate::crash_point!("setlk.after_lock");
        if fl.l_type != libc::F_UNLCK as i16 {
            owner.slot().pid.store(a.lk.pid, Ordering::Relaxed);
        }
        Ok(())
    }
}

impl Fs {
    /// FLUSH (a guest close): POSIX says closing any fd of a file drops all the closing process's
    /// record locks on it, and the kernel leaves that to us, naming the owner in the FLUSH.
    pub(super) fn drop_owner_locks(&self, nodeid: u64, owner: u64) -> Result<()> {
        let Some(fh) = self.locks.get(nodeid, owner) else { return Ok(()) };
        let h = self.state.handles.pin(fh, HandleKind::LockOwner)?;
        let mut all = libc::flock64 {
            l_type: libc::F_UNLCK as i16,
            l_whence: libc::SEEK_SET as i16,
            l_start: 0,
            l_len: 0,
            l_pid: 0,
        };
        Ok(sys::fcntl_lock(h.fd(), libc::F_OFD_SETLK, &mut all)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::intent::Intent;
    use crate::state::{Region, State};

    const NODE: u64 = 5;
    const OTHER_NODE: u64 = 6;

    /// Real tables in a fresh region, as a worker has them.
    fn state() -> State {
        State::new(Region::create(16, 16).unwrap())
    }

    /// An fd the tables may own (they close it when the slot is freed).
    fn fd() -> i32 {
        crate::sys::open(c"/dev/null", libc::O_RDONLY).unwrap()
    }

    /// A guest file open on `nodeid`: its handle, counted in `locks` as OPEN/CREATE do.
    fn open_file(locks: &LockOwners, s: &State, nodeid: u64) -> u64 {
        let fh = s.handles.insert(fd(), HandleKind::File, nodeid, 0, 0, Intent::none()).unwrap();
        locks.file_opened(nodeid);
        fh
    }

    /// A lock-owner handle for `owner`, made through guest file `via` as `Fs::lock_owner` makes
    /// it: published in the table, then registered in the index.
    fn add_owner(locks: &LockOwners, s: &State, nodeid: u64, owner: u64, via: u64) -> u64 {
        let fh = s.handles.insert_lock_owner(fd(), nodeid, owner, via).unwrap();
        locks.nodes.lock().unwrap().entry(nodeid).or_default().owners.insert(owner, Owner { fh, via });
        fh
    }

    /// Whether lock-owner handle `fh` is still LIVE in the table.
    fn held(s: &State, fh: u64) -> bool {
        s.handles.pin(fh, HandleKind::LockOwner).is_ok()
    }

    fn slot_via(s: &State, fh: u64) -> u64 {
        s.handles.pin(fh, HandleKind::LockOwner).unwrap().slot().via.load(Ordering::Relaxed)
    }

    fn open_files(locks: &LockOwners, nodeid: u64) -> Option<u32> {
        locks.nodes.lock().unwrap().get(&nodeid).map(|n| n.open_files)
    }

    /// Every LIVE handle as recovery lists it for `rebuild`: (fh, kind, node, owner).
    fn live(s: &State, fhs: &[u64]) -> Vec<LiveHandle> {
        fhs.iter()
            .filter_map(|&fh| {
                let kind =
                    [HandleKind::File, HandleKind::LockOwner].into_iter().find(|k| s.handles.pin(fh, *k).is_ok())?;
                let p = s.handles.pin(fh, kind).unwrap();
                let (nodeid, owner) = (p.slot().nodeid.load(Ordering::Relaxed), p.slot().owner.load(Ordering::Relaxed));
                Some(LiveHandle { fh, kind, nodeid, owner, backing: 0 })
            })
            .collect()
    }

    #[test]
    fn test_lock_owners_get_finds_each_owner_on_its_own_node_only() {
        let (s, locks) = (state(), LockOwners::default());
        let f = open_file(&locks, &s, NODE);
        let g = open_file(&locks, &s, OTHER_NODE);
        let a = add_owner(&locks, &s, NODE, 100, f);
        let b = add_owner(&locks, &s, OTHER_NODE, 100, g);
        assert_ne!(a, b, "one owner id on two nodes: two handles");
        assert_eq!(locks.get(NODE, 100), Some(a));
        assert_eq!(locks.get(OTHER_NODE, 100), Some(b));
        assert_eq!(locks.get(NODE, 101), None, "an owner that never locked has no handle");
        assert_eq!(locks.get(7, 100), None, "a node with nothing open");
    }

    #[test]
    fn test_lock_owners_others_lists_every_owner_but_the_asker() {
        let (s, locks) = (state(), LockOwners::default());
        let f = open_file(&locks, &s, NODE);
        let a = add_owner(&locks, &s, NODE, 100, f);
        let b = add_owner(&locks, &s, NODE, 200, f);
        let c = add_owner(&locks, &s, NODE, 300, f);
        add_owner(&locks, &s, OTHER_NODE, 400, f);
        let mut others = locks.others(NODE, 200);
        others.sort();
        let mut want = vec![a, c];
        want.sort();
        assert_eq!(others, want, "the asker and other nodes' owners are left out");
        assert_eq!(locks.others(NODE, 999).len(), 3, "an owner without a handle sees all three");
        assert!(locks.others(7, 100).is_empty());
        assert!(held(&s, b));
    }

    #[test]
    fn test_lock_owners_via_stays_for_one_file_and_clears_for_a_second() {
        let (s, locks) = (state(), LockOwners::default());
        let (f1, f2, f3) = (open_file(&locks, &s, NODE), open_file(&locks, &s, NODE), open_file(&locks, &s, NODE));
        let a = add_owner(&locks, &s, NODE, 100, f1);
        assert_eq!(slot_via(&s, a), f1, "the slot records the first file for recovery");
        locks.used_via(NODE, 100, f1, &s.handles);
        assert_eq!(slot_via(&s, a), f1, "locking again through the same file: still an OFD-like owner");
        locks.used_via(NODE, 100, f2, &s.handles);
        assert_eq!(slot_via(&s, a), 0, "a second file: a POSIX owner (a process), bound to no file");
        assert_eq!(locks.nodes.lock().unwrap()[&NODE].owners[&100].via, 0, "the index agrees with the slot");
        locks.used_via(NODE, 100, f3, &s.handles);
        assert_eq!(slot_via(&s, a), 0, "and stays unbound");
        // Unknown owners and nodes are ignored.
        locks.used_via(NODE, 999, f1, &s.handles);
        locks.used_via(7, 100, f1, &s.handles);
        assert_eq!(locks.get(NODE, 999), None);
    }

    #[test]
    fn test_lock_owners_release_of_its_file_drops_an_ofd_owner_only() {
        let (s, locks) = (state(), LockOwners::default());
        let (f1, f2) = (open_file(&locks, &s, NODE), open_file(&locks, &s, NODE));
        let ofd1 = add_owner(&locks, &s, NODE, 100, f1);
        let ofd2 = add_owner(&locks, &s, NODE, 200, f2);
        let posix = add_owner(&locks, &s, NODE, 300, f1);
        locks.used_via(NODE, 300, f2, &s.handles);
        locks.file_closed(NODE, f1, &s.handles);
        assert!(!held(&s, ofd1), "the owner bound to the released file is released");
        assert_eq!(locks.get(NODE, 100), None);
        assert!(held(&s, ofd2), "an owner bound to another file stays");
        assert!(held(&s, posix), "an owner bound to no file stays while the node is open");
        assert_eq!(locks.get(NODE, 300), Some(posix));
        assert_eq!(open_files(&locks, NODE), Some(1));
    }

    #[test]
    fn test_lock_owners_release_of_the_last_open_file_drops_every_owner() {
        let (s, locks) = (state(), LockOwners::default());
        let (f1, f2) = (open_file(&locks, &s, NODE), open_file(&locks, &s, NODE));
        let g = open_file(&locks, &s, OTHER_NODE);
        let posix = add_owner(&locks, &s, NODE, 100, f1);
        locks.used_via(NODE, 100, f2, &s.handles);
        let ofd = add_owner(&locks, &s, NODE, 200, f2);
        let elsewhere = add_owner(&locks, &s, OTHER_NODE, 300, g);
        locks.file_closed(NODE, f2, &s.handles);
        assert!(!held(&s, ofd));
        assert!(held(&s, posix), "one file is still open");
        locks.file_closed(NODE, f1, &s.handles);
        assert!(!held(&s, posix), "no file open on the node: no owner can hold a lock");
        assert_eq!(open_files(&locks, NODE), None, "the node is gone from the index");
        assert!(held(&s, elsewhere), "another node's owners are untouched");
        assert_eq!(locks.get(OTHER_NODE, 300), Some(elsewhere));
        // A RELEASE the index does not know of (a node it never saw) changes nothing.
        locks.file_closed(NODE, f1, &s.handles);
        locks.file_closed(7, g, &s.handles);
        assert!(held(&s, elsewhere));
        assert_eq!(open_files(&locks, OTHER_NODE), Some(1));
    }

    #[test]
    fn test_lock_owners_rebuild_from_the_handle_table() {
        let (s, before) = (state(), LockOwners::default());
        let (f1, f2) = (open_file(&before, &s, NODE), open_file(&before, &s, NODE));
        let ofd = add_owner(&before, &s, NODE, 100, f1);
        let posix = add_owner(&before, &s, NODE, 200, f1);
        before.used_via(NODE, 200, f2, &s.handles);
        // A crash between a RELEASE and its owner cleanup: the owner's file is gone.
        let gone = open_file(&before, &s, NODE);
        let orphan = add_owner(&before, &s, NODE, 300, gone);
        s.handles.release(gone, HandleKind::File).unwrap();
        // An owner of a node with no open file left.
        let g = open_file(&before, &s, OTHER_NODE);
        let closed = add_owner(&before, &s, OTHER_NODE, 400, g);
        s.handles.release(g, HandleKind::File).unwrap();

        let locks = LockOwners::default();
        locks.rebuild(&live(&s, &[f1, f2, ofd, posix, gone, orphan, g, closed]), &s.handles);
        assert_eq!(open_files(&locks, NODE), Some(2), "open files counted from the File handles");
        assert_eq!(locks.get(NODE, 100), Some(ofd));
        assert_eq!(locks.get(NODE, 200), Some(posix));
        assert_eq!(locks.nodes.lock().unwrap()[&NODE].owners[&100].via, f1, "via comes from the slot");
        assert_eq!(locks.nodes.lock().unwrap()[&NODE].owners[&200].via, 0);
        assert_eq!(locks.get(NODE, 300), None);
        assert!(!held(&s, orphan), "bound to a file that is gone: released");
        assert_eq!(locks.get(OTHER_NODE, 400), None);
        assert!(!held(&s, closed), "on a node nobody has open: released");
        // The rebuilt index goes on as the old one would have.
        locks.file_closed(NODE, f1, &s.handles);
        assert!(!held(&s, ofd));
        assert!(held(&s, posix));
        locks.file_closed(NODE, f2, &s.handles);
        assert!(!held(&s, posix));
    }

    #[test]
    fn test_lock_owners_rebuild_with_no_handles_forgets_everything() {
        let (s, locks) = (state(), LockOwners::default());
        let f = open_file(&locks, &s, NODE);
        add_owner(&locks, &s, NODE, 100, f);
        s.handles.release_all();
        locks.rebuild(&[], &s.handles);
        assert_eq!(locks.get(NODE, 100), None);
        assert_eq!(open_files(&locks, NODE), None);
        assert!(locks.others(NODE, 0).is_empty());
    }
}
