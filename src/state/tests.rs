//! Table and record operations against what recovery must conclude: each test stops an update
//! at one of its steps (by writing the region as a dead worker would have left it), runs
//! recovery, and checks counts, slots and records exactly.

use std::sync::atomic::Ordering;

use super::intent::{Intent, Orphan, Pending, facts};
use super::slots::{self, RETIRING, SETTING_UP};
use super::{HandleKind, InodeKey, Region, State};

/// A region with its root installed (slot 1), as every worker's region has.
fn state() -> State {
    let s = State::new(Region::create(64, 64).unwrap());
    s.inodes.install_root(fd(), key(0), libc::S_IFDIR).unwrap();
    s
}

/// An fd that is safe to hand to the tables (they close it when the slot is freed).
fn fd() -> i32 {
    crate::sys::open(c"/dev/null", libc::O_RDONLY).unwrap()
}

fn key(ino: u64) -> InodeKey {
    InodeKey { dev: 1, ino, mnt_id: 1 }
}

/// What the state's own recovery steps found (recovery.rs runs these with the transport's
/// between them).
struct Recovered {
    live_inodes: usize,
    orphans: Vec<Orphan>,
}

fn recover(s: &State) -> Recovered {
    let dead = s.take_over().unwrap();
    s.settle_pending();
    let (live_inodes, _) = s.inodes.recover();
    s.handles.recover();
    Recovered { live_inodes, orphans: s.records.recover(dead) }
}

fn lookups(s: &State, nodeid: u64) -> u64 {
    s.inodes.pin(nodeid).unwrap().slot().lookups.load(Ordering::SeqCst)
}

#[test]
fn test_state_lookup_twice_is_one_slot_two_lookups_and_forget_frees_it() {
    let s = state();
    let a = s.inodes.lookup(fd(), key(7), libc::S_IFREG, Intent::none(), || Ok(None)).unwrap();
    let b = s.inodes.lookup(fd(), key(7), libc::S_IFREG, Intent::none(), || Ok(None)).unwrap();
    assert_eq!(a.nodeid, b.nodeid);
    assert_eq!(lookups(&s, a.nodeid), 2);
    s.inodes.forget(a.nodeid, 2, Intent::none());
    assert!(s.inodes.pin(a.nodeid).is_err(), "forgotten to zero: freed");
    let c = s.inodes.lookup(fd(), key(7), libc::S_IFREG, Intent::none(), || Ok(None)).unwrap();
    assert_eq!(slots::split_id(c.nodeid).0, slots::split_id(a.nodeid).0, "the slot is reused");
    assert_ne!(c.nodeid, a.nodeid, "with a new generation: the old id stays stale");
    assert!(s.inodes.pin(a.nodeid).is_err());
}

#[test]
fn test_state_pending_raise_counts_only_if_the_count_moved() {
    let s = state();
    let n = s.inodes.lookup(fd(), key(1), libc::S_IFREG, Intent::none(), || Ok(None)).unwrap().nodeid;
    let rec = &s.region.records()[0];
    // Dead before the store: pending from 1, count still 1 -> not raised.
    rec.start(10, 1, 1, 1);
    rec.begin_pending(Pending::Raise, n, 1);
    recover(&s);
    assert_eq!(lookups(&s, n), 1);
    assert!(rec.raised().is_empty());
    // Dead after the store: pending from 1, count 2 -> raised, exactly once.
    rec.start(11, 1, 1, 2);
    rec.begin_pending(Pending::Raise, n, 1);
    s.inodes.pin(n).unwrap().slot().lookups.store(2, Ordering::SeqCst);
    recover(&s);
    assert_eq!(lookups(&s, n), 2);
    assert_eq!(rec.raised(), vec![n]);
}

#[test]
fn test_state_new_slot_setting_up_is_freed_and_its_fd_closed() {
    let s = state();
    let f = fd();
    s.inodes.lookup(f, key(1), libc::S_IFREG, Intent::none(), || Ok(None)).unwrap();
    // A second object whose slot a dead worker had only begun to fill.
    let hdr = &s.region.inode_headers()[3];
    let g = fd();
    hdr.fd.store(g, Ordering::SeqCst);
    hdr.state.store(SETTING_UP, Ordering::SeqCst);
    s.region.header().inode_high_water.store(4, Ordering::SeqCst);
    let report = recover(&s);
    assert_eq!(report.live_inodes, 2, "the root and the first object");
    assert_eq!(hdr.state.load(Ordering::SeqCst), slots::FREE);
    // SAFETY: F_GETFD only queries.
    assert_eq!(unsafe { libc::fcntl(g, libc::F_GETFD) }, -1, "the half-set-up slot's fd is closed");
}

#[test]
fn test_state_retiring_slot_is_finished_by_recovery() {
    let s = state();
    let n = s.inodes.lookup(fd(), key(3), libc::S_IFREG, Intent::none(), || Ok(None)).unwrap().nodeid;
    let (i, generation) = slots::split_id(n);
    let slot = &s.region.inode_slots()[i as usize];
    let hdr = &s.region.inode_headers()[i as usize];
    slot.lookups.store(0, Ordering::SeqCst);
    hdr.state.store(RETIRING, Ordering::SeqCst);
    hdr.users.store(3, Ordering::SeqCst); // pins of dead threads
    recover(&s);
    assert_eq!(hdr.state.load(Ordering::SeqCst), slots::FREE);
    assert_eq!(hdr.generation.load(Ordering::SeqCst), generation + 1);
    assert_eq!(hdr.users.load(Ordering::SeqCst), 0);
}

#[test]
fn test_state_pending_forget_entry_sets_the_target_and_moves_the_step() {
    let s = state();
    let n = s.inodes.lookup(fd(), key(4), libc::S_IFREG, Intent::none(), || Ok(None)).unwrap().nodeid;
    s.inodes.lookup(fd(), key(4), libc::S_IFREG, Intent::none(), || Ok(None)).unwrap();
    s.inodes.lookup(fd(), key(4), libc::S_IFREG, Intent::none(), || Ok(None)).unwrap();
    assert_eq!(lookups(&s, n), 3);
    let rec = &s.region.records()[0];
    rec.start(20, 42, 0, 1); // a BATCH_FORGET
    rec.set_fact(facts::FORGET_ENTRY, 4); // entry 4 in hand: forget 2 of 3 -> target 1
    rec.begin_pending(Pending::ForgetEntry, n, 1);
    recover(&s);
    assert_eq!(lookups(&s, n), 1, "the target is set, whether or not the dead worker had stored it");
    assert_eq!(rec.step(), 5, "the entry in hand counts as done");
}

#[test]
fn test_state_pending_handle_is_given_to_the_record_only_if_published() {
    let s = state();
    let rec = &s.region.records()[0];
    let fh = s.handles.insert(fd(), HandleKind::File, 1, 0, 0, Intent::none()).unwrap();
    rec.start(30, 14, 1, 1);
    rec.begin_pending(Pending::Handle, fh, 0);
    recover(&s);
    assert_eq!(Intent::new(rec, true).handle(), fh, "published: the replay replies with this fh");
    let unpublished = fh + 1;
    rec.start(31, 14, 1, 1);
    rec.begin_pending(Pending::Handle, unpublished, 0);
    recover(&s);
    assert_eq!(Intent::new(rec, true).handle(), 0, "not published: the replay opens again");
}

#[test]
fn test_state_orphans_count_deaths_only_of_the_worker_working_on_them() {
    let s = state();
    let h = s.region.header();
    h.death_counts.store(1, Ordering::SeqCst);
    let gen_now = s.worker_gen();
    let rec = &s.region.records()[0];
    rec.start(40, 9, 1, gen_now);
    let report = recover(&s);
    assert_eq!(report.orphans, vec![Orphan { key: 40, opcode: 9, deaths: 1 }]);
    // The orphan waits in the kernel's queue while the next worker dies: no new death for it.
    let report = recover(&s);
    assert_eq!(report.orphans, vec![Orphan { key: 40, opcode: 9, deaths: 1 }]);
    // An outside SIGKILL of the worker working on it does not count either.
    rec.worker_gen.store(s.worker_gen(), Ordering::SeqCst);
    h.death_counts.store(0, Ordering::SeqCst);
    let report = recover(&s);
    assert_eq!(report.orphans, vec![Orphan { key: 40, opcode: 9, deaths: 1 }]);
}

/// The vhost-user area's control seqlock.
mod vhost_control {
    use std::sync::atomic::Ordering;

    use crate::state::Region;

    #[test]
    fn test_control_reads_retry_across_a_write() {
        let region = Region::create(16, 16).unwrap();
        let area = region.vhost();
        area.num_queues.store(2, Ordering::Relaxed);
        let ((), seq0) = area.read_control(|_| ());
        area.write_control(|| area.queues[1].size.store(128, Ordering::Relaxed));
        let (size, seq1) = area.read_control(|a| a.queue_config(1).size);
        assert_eq!(size, 128);
        assert_eq!(seq1, seq0 + 2, "one change: the sequence moves by two and is even");
    }
}

fn handle(gen_byte: u8) -> crate::sys::fhandle::FileHandle {
    crate::sys::fhandle::FileHandle::new(1, &[gen_byte; 8])
}

#[test]
fn test_state_key_index_is_found_by_a_new_worker_without_a_rebuild() {
    let s = state();
    let a = s.inodes.lookup(-1, key(5), libc::S_IFREG, Intent::none(), || Ok(Some(handle(1)))).unwrap();
    // A new worker: a fresh State over the same region (no heap index to rebuild).
    let again = State::new(s.region.alias());
    recover(&again);
    let b = again.inodes.lookup(-1, key(5), libc::S_IFREG, Intent::none(), || Ok(Some(handle(1)))).unwrap();
    assert_eq!(a.nodeid, b.nodeid);
    assert_eq!(lookups(&again, a.nodeid), 2);
}

#[test]
fn test_state_key_index_journal_repairs_a_publication_cut_short() {
    let s = state();
    let a = s.inodes.lookup(-1, key(6), libc::S_IFREG, Intent::none(), || Ok(Some(handle(1)))).unwrap();
    let (i, _) = slots::split_id(a.nodeid);
    // Dead between publishing the slot and adding its entry: the journal names it.
    let keys = super::keyindex::KeyIndex::new(
        s.region.index_cells(),
        s.region.inode_headers(),
        s.region.inode_slots(),
        &s.region.header().index_journal,
    );
    keys.begin(i);
    keys.remove(&key(6), i);
    assert_eq!(keys.get(&key(6)), None);
    recover(&s);
    assert_eq!(keys.get(&key(6)), Some(i), "the LIVE slot got its entry back");
    // Dead between removing the entry and retiring the slot at a forget to zero: the entry
    // comes back with the LIVE slot, as the count does.
    keys.begin(i);
    keys.remove(&key(6), i);
    recover(&s);
    assert_eq!(keys.get(&key(6)), Some(i));
    // A retiring slot's entry is dropped.
    keys.begin(i);
    s.region.inode_headers()[i as usize].state.store(RETIRING, Ordering::SeqCst);
    recover(&s);
    assert_eq!(keys.get(&key(6)), None);
}

#[test]
fn test_regression_reused_inode_number_is_a_new_node_not_the_dead_one() {
    let s = state();
    // The guest holds a node kept by handle; on the host the object is gone and its inode
    // number now names another object (another generation: another handle).
    let old = s.inodes.lookup(-1, key(9), libc::S_IFREG, Intent::none(), || Ok(Some(handle(1)))).unwrap();
    let new = s.inodes.lookup(-1, key(9), libc::S_IFREG, Intent::none(), || Ok(Some(handle(2)))).unwrap();
    assert_ne!(old.nodeid, new.nodeid, "the new object got its own node");
    assert_eq!(lookups(&s, old.nodeid), 1, "the old node is left as it was");
    let again = s.inodes.lookup(-1, key(9), libc::S_IFREG, Intent::none(), || Ok(Some(handle(2)))).unwrap();
    assert_eq!(again.nodeid, new.nodeid, "and the index leads to the new one");
    s.inodes.forget(old.nodeid, 1, Intent::none());
    let still = s.inodes.lookup(-1, key(9), libc::S_IFREG, Intent::none(), || Ok(Some(handle(2)))).unwrap();
    assert_eq!(still.nodeid, new.nodeid, "forgetting the old node leaves the new one's entry");
}

#[test]
fn test_state_lookup_of_a_slot_whose_fd_is_cached_makes_no_handle() {
    let s = state();
    let counted = std::cell::Cell::new(0);
    let made = || {
        counted.set(counted.get() + 1);
        Ok(Some(handle(1)))
    };
    // A new object: its handle is made (and its fresh fd goes to the cache).
    let a = s.inodes.lookup(fd(), key(11), libc::S_IFREG, Intent::none(), made).unwrap();
    assert_eq!(counted.get(), 1);
    assert_eq!(s.inodes.cached_fds(), 1);
    // Found again while its fd is cached: the object is alive, so the key is its own.
    let b = s.inodes.lookup(fd(), key(11), libc::S_IFREG, Intent::none(), || {
        panic!("no handle is needed while the slot's fd is cached")
    });
    assert_eq!(b.unwrap().nodeid, a.nodeid);
    assert_eq!(lookups(&s, a.nodeid), 2);
    // Found with nothing cached: the handle is made and compared (another object: a new node).
    let c = s.inodes.lookup(-1, key(12), libc::S_IFREG, Intent::none(), || Ok(Some(handle(3)))).unwrap();
    let d = s.inodes.lookup(-1, key(12), libc::S_IFREG, Intent::none(), || Ok(Some(handle(4)))).unwrap();
    assert_ne!(c.nodeid, d.nodeid, "nothing cached: the handles are compared");
}
