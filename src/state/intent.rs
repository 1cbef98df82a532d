//! Intent records: one per request in flight, in the state region, so that a request the kernel
//! re-sends after a worker's death is carried on from where the dead worker left it, and its
//! effect happens exactly once (DESIGN §6).
//!
//! A record holds the request's id and opcode, how many worker deaths it has been in flight
//! through (the crash-loop guard), the op's progress (`step`) and facts about the world before
//! it acted (`facts`), and the lookup counts and handle it took (`raised`, `handle`) so that a
//! replay neither takes them twice nor loses them.
//!
//! Changes to lookup counts and handle publication are two-phase: the record first names the
//! change as *pending* (with the count before it), then the table changes, then the record marks
//! it done — all under the inode index mutex (or before a handle's publication), so a crash
//! leaves at most one pending change whose outcome recovery reads off the table exactly.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Lookup counts one request may raise (READDIRPLUS caps its entries to this).
pub const MAX_RAISES: usize = 128;

/// How many facts a record holds.
pub const FACTS: usize = 6;

/// One named slot of a record's facts, holding a `T`. The slots and what each holds are declared
/// in `facts`, and nowhere else.
#[derive(Debug, Clone, Copy)]
pub struct Fact<T> {
    slot: usize,
    value: PhantomData<T>,
}

impl<T> Fact<T> {
    const fn at(slot: usize) -> Fact<T> {
        assert!(slot < FACTS);
        Fact { slot, value: PhantomData }
    }
}

/// A value a fact holds, kept in the region as a `u64`.
pub trait FactValue: Copy {
    fn to_raw(self) -> u64;
    fn from_raw(raw: u64) -> Self;
}

impl FactValue for u64 {
    fn to_raw(self) -> u64 {
        self
    }
    fn from_raw(raw: u64) -> u64 {
        raw
    }
}

impl FactValue for u32 {
    fn to_raw(self) -> u64 {
        u64::from(self)
    }
    fn from_raw(raw: u64) -> u32 {
        raw as u32
    }
}

impl FactValue for i32 {
    fn to_raw(self) -> u64 {
        self as u64
    }
    fn from_raw(raw: u64) -> i32 {
        raw as i32
    }
}

impl FactValue for bool {
    fn to_raw(self) -> u64 {
        u64::from(self)
    }
    fn from_raw(raw: u64) -> bool {
        raw != 0
    }
}

/// What each op keeps in its record's facts, by op. A record serves one request, so the slots of
/// different ops overlap; within one op they must not (a test checks). The slot numbers are part
/// of the region's layout.
pub mod facts {
    use super::Fact;

    /// Every op whose host call is bracketed (fs/once.rs): the call's errno once step DONE is
    /// recorded, 0 for success.
    pub const ONCE_ERRNO: Fact<i32> = Fact::at(5);

    /// CREATE: whether the name existed before (then a replay's EEXIST is not its own doing).
    pub const CREATE_EXISTED: Fact<bool> = Fact::at(0);

    /// RENAME: the inode number the source name had before.
    pub const RENAME_SOURCE_INO: Fact<u64> = Fact::at(1);
    /// RENAME: the inode number the target name had before, 0 if it had none.
    pub const RENAME_TARGET_INO: Fact<u64> = Fact::at(2);

    /// WRITE to an O_APPEND file: the file's size before the write.
    pub const APPEND_SIZE_BEFORE: Fact<u64> = Fact::at(0);
    /// WRITE to an O_APPEND file: how many bytes of the data are written, once the write is done.
    pub const APPEND_WRITTEN: Fact<u64> = Fact::at(1);

    /// FORGET and BATCH_FORGET: the entry in hand while its count change is pending.
    pub const FORGET_ENTRY: Fact<u32> = Fact::at(0);

    /// OPEN, CREATE, TMPFILE: the FUSE passthrough backing id this request registered
    /// (`u32::MAX` while its BACKING_OPEN is issued and the id not known). RELEASE: the id of
    /// the handle it releases. Recovery closes it unless a LIVE handle names it
    /// (fs/passthrough.rs).
    pub const BACKING_ID: Fact<u32> = Fact::at(3);
}

/// The one table change a record names as half-done, stored as a `u32` in `Record::pending` and
/// read back through `Pending::try_from` (see `Record::pending`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Pending {
    None = 0,
    /// `pending_id` is a node whose lookup count is being raised from `pending_value`.
    Raise = 1,
    /// `pending_id` is a node whose lookup count is being set to `pending_value` (FORGET).
    Forget = 2,
    /// `pending_id` is a handle about to be published.
    Handle = 3,
    /// As `Forget`, for entry `facts::FORGET_ENTRY` of a FORGET/BATCH_FORGET whose `step`
    /// counts the entries done.
    ForgetEntry = 4,
}

impl TryFrom<u32> for Pending {
    type Error = u32;

    fn try_from(v: u32) -> Result<Pending, u32> {
        match v {
            0 => Ok(Pending::None),
            1 => Ok(Pending::Raise),
            2 => Ok(Pending::Forget),
            3 => Ok(Pending::Handle),
            4 => Ok(Pending::ForgetEntry),
            other => Err(other),
        }
    }
}

#[repr(C)]
#[derive(Debug)]
pub struct Record {
    /// The request's unique id without the resend bit; 0 when the record is free.
    pub unique: AtomicU64,
    pub opcode: AtomicU32,
    /// Worker deaths this request has been in flight through.
    pub deaths: AtomicU32,
    /// Op-specific progress; 0 = nothing done yet.
    pub step: AtomicU32,
    /// A `Pending`, read only through `pending()`.
    pending: AtomicU32,
    pub pending_id: AtomicU64,
    pub pending_value: AtomicU64,
    pub nodeid: AtomicU64,
    /// Op-specific facts, e.g. the inode a rename's source names, a file's size before an
    /// append, a syscall's result: read and written only through the named slots in `facts`.
    facts: [AtomicU64; FACTS],
    /// The handle this request published, 0 if none.
    pub handle: AtomicU64,
    pub raised_count: AtomicU32,
    /// The worker generation that last worked on this request: only a death of that worker
    /// counts toward the crash-loop guard (an orphan merely waiting in the kernel's queue while
    /// another worker dies was not what killed it).
    pub worker_gen: AtomicU32,
    /// Node ids whose lookup count this request raised, in order.
    pub raised: [AtomicU64; MAX_RAISES],
}

const _: () = assert!(size_of::<Record>() == 1136);

impl Record {
    /// Claims this free record for a new request, worked on by worker generation `worker_gen`.
    pub fn start(&self, unique: u64, opcode: u32, nodeid: u64, worker_gen: u32) {
        self.worker_gen.store(worker_gen, Ordering::Relaxed);
        self.opcode.store(opcode, Ordering::Relaxed);
        self.deaths.store(0, Ordering::Relaxed);
        self.step.store(0, Ordering::Relaxed);
        self.pending.store(Pending::None as u32, Ordering::Relaxed);
        self.nodeid.store(nodeid, Ordering::Relaxed);
        self.handle.store(0, Ordering::Relaxed);
        self.raised_count.store(0, Ordering::Relaxed);
        // Crash after this store: a record for a request read but not yet acted on; on its
        // resend it is adopted with step 0 and runs from the start.
        self.unique.store(unique, Ordering::Release);
    }

    /// Frees the record once the request's reply is written.
    pub fn clear(&self) {
        // Crash before this store: the reply went out but the record stays; the kernel never
        // re-sends an answered request, so it is a stale orphan, reclaimed when records run out.
        self.unique.store(0, Ordering::Release);
    }

    pub fn step(&self) -> u32 {
        self.step.load(Ordering::Acquire)
    }

    pub fn set_step(&self, step: u32) {
        self.step.store(step, Ordering::Release);
    }

    pub fn fact<T: FactValue>(&self, f: Fact<T>) -> T {
        T::from_raw(self.facts[f.slot].load(Ordering::Acquire))
    }

    pub fn set_fact<T: FactValue>(&self, f: Fact<T>, v: T) {
        self.facts[f.slot].store(v.to_raw(), Ordering::Release);
    }

    pub fn raised(&self) -> Vec<u64> {
        let n = (self.raised_count.load(Ordering::Acquire) as usize).min(MAX_RAISES);
        self.raised[..n].iter().map(|r| r.load(Ordering::Relaxed)).collect()
    }

    /// The table change this record names as pending. The region outlives the worker that wrote
    /// it, so an unknown value (a corrupt record) is read as none, with a warning: recovery then
    /// leaves the tables as they stand rather than guess.
    pub fn pending(&self) -> Pending {
        let raw = self.pending.load(Ordering::Acquire);
        Pending::try_from(raw).unwrap_or_else(|raw| {
            tracing::warn!(
                raw,
                unique = self.unique.load(Ordering::Relaxed),
                "intent record: unknown pending kind, read as none"
            );
            Pending::None
        })
    }

    pub fn begin_pending(&self, kind: Pending, id: u64, value: u64) {
        self.pending_id.store(id, Ordering::Relaxed);
        self.pending_value.store(value, Ordering::Relaxed);
        self.pending.store(kind as u32, Ordering::Release);
    }

    /// Records that the pending raise of `id` happened.
    pub fn push_raised(&self, id: u64) {
        let n = self.raised_count.load(Ordering::Relaxed) as usize;
        if n < MAX_RAISES {
            self.raised[n].store(id, Ordering::Relaxed);
            self.raised_count.store(n as u32 + 1, Ordering::Release);
        }
        self.pending.store(Pending::None as u32, Ordering::Release);
    }

    /// Forgets the last raise (after undoing it in the table).
    pub fn pop_raised(&self) {
        let n = self.raised_count.load(Ordering::Relaxed);
        self.raised_count.store(n.saturating_sub(1), Ordering::Release);
        self.pending.store(Pending::None as u32, Ordering::Release);
    }

    pub fn end_pending(&self) {
        self.pending.store(Pending::None as u32, Ordering::Release);
    }

    pub fn set_handle(&self, fh: u64) {
        self.handle.store(fh, Ordering::Relaxed);
        self.pending.store(Pending::None as u32, Ordering::Release);
    }
}

/// A request's view of its record: none when recovery is off (or for tests that do not care),
/// in which case every record operation is a no-op.
#[derive(Debug, Clone, Copy, Default)]
pub struct Intent {
    rec: Option<&'static Record>,
    replay: bool,
}

impl Intent {
    pub fn new(rec: &'static Record, replay: bool) -> Intent {
        Intent { rec: Some(rec), replay }
    }

    pub fn none() -> Intent {
        Intent::default()
    }

    pub fn record(&self) -> Option<&'static Record> {
        self.rec
    }

    /// Whether this run continues a dead worker's attempt.
    pub fn is_replay(&self) -> bool {
        self.replay
    }

    /// Whether the world before the op must be checked, and what a replay needs of it recorded,
    /// now: the request has a record and its op has done nothing yet (a fresh request, or a
    /// replay whose dead attempt stopped before its first step). Once a step is taken, the world
    /// may show the op's own doing, and the record is what tells the world before; without a
    /// record nothing is replayed, so nothing needs checking ahead.
    pub fn must_check_world_before(&self) -> bool {
        self.rec.is_some() && self.step() == 0
    }

    /// Progress so far (0 for a fresh request, or without a record).
    pub fn step(&self) -> u32 {
        self.rec.map_or(0, |r| r.step())
    }

    pub fn set_step(&self, step: u32) {
        if let Some(r) = self.rec {
            r.set_step(step);
        }
    }

    /// Fact `f` as recorded (its zero value without a record).
    pub fn fact<T: FactValue>(&self, f: Fact<T>) -> T {
        self.rec.map_or(T::from_raw(0), |r| r.fact(f))
    }

    pub fn set_fact<T: FactValue>(&self, f: Fact<T>, v: T) {
        if let Some(r) = self.rec {
            r.set_fact(f, v);
        }
    }

    pub fn raised(&self) -> Vec<u64> {
        self.rec.map(|r| r.raised()).unwrap_or_default()
    }

    pub fn handle(&self) -> u64 {
        self.rec.map_or(0, |r| r.handle.load(Ordering::Acquire))
    }
}

/// The heap side of the record area: which records are free, and which hold requests a dead
/// worker left in flight (orphans, by unique id) waiting for the kernel to re-send them.
pub struct Records {
    recs: &'static [Record],
    free: std::sync::Mutex<Vec<u32>>,
    orphans: std::sync::Mutex<std::collections::HashMap<u64, u32>>,
}

/// A request a dead worker left in flight, as recovery found its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Orphan {
    /// The record's key: the FUSE unique without the resend bit, or a virtqueue's pop key.
    pub key: u64,
    pub opcode: u32,
    /// Counted worker deaths it has been in flight through (the crash-loop guard).
    pub deaths: u32,
}

impl Records {
    pub fn new(recs: &'static [Record]) -> Records {
        let free = (0..recs.len() as u32).rev().collect();
        Records { recs, free: std::sync::Mutex::new(free), orphans: Default::default() }
    }

    pub fn get(&self, i: u32) -> &'static Record {
        &self.recs[i as usize]
    }

    /// Recovery, single-threaded before serving: every record still holding a request becomes
    /// an orphan awaiting its redelivery (`adopt`), and is returned. An orphan's death count is
    /// raised if the `dead` worker was working on it and its death counts. Pending table
    /// changes must have been settled first (`State::settle_pending`).
    pub fn recover(&self, dead: super::DeadWorker) -> Vec<Orphan> {
        let mut found = Vec::new();
        let mut free = self.free.lock().unwrap();
        let mut orphans = self.orphans.lock().unwrap();
        free.clear();
        orphans.clear();
        for (i, r) in self.recs.iter().enumerate().rev() {
            let key = r.unique.load(Ordering::Acquire);
            if key == 0 {
                free.push(i as u32);
                continue;
            }
            if orphans.insert(key, i as u32).is_some() {
                // Two records for one request cannot both be current; keep the first seen.
                r.clear();
                free.push(i as u32);
                continue;
            }
            let deaths = if dead.counts && r.worker_gen.load(Ordering::Acquire) == dead.generation {
                r.deaths.fetch_add(1, Ordering::AcqRel) + 1
            } else {
                r.deaths.load(Ordering::Acquire)
            };
            found.push(Orphan { key, opcode: r.opcode.load(Ordering::Relaxed), deaths });
        }
        found
    }

    /// Frees the record of an orphan its transport will not deliver again (a FUSE request that
    /// takes no reply, a virtqueue head whose used element was already published).
    pub fn drop_orphan(&self, key: u64) {
        let removed = self.orphans.lock().unwrap().remove(&key);
        if let Some(i) = removed {
            self.recs[i as usize].clear();
            self.free.lock().unwrap().push(i);
        }
    }

    /// A record for a serving thread: a free one, or else the oldest orphan's (a stale record
    /// whose reply went out just before a crash is the likely victim; the evicted request, if
    /// it is ever re-sent, runs from the start).
    pub fn claim(&self) -> Option<u32> {
        if let Some(i) = self.free.lock().unwrap().pop() {
            return Some(i);
        }
        let mut orphans = self.orphans.lock().unwrap();
        let (&unique, &i) = orphans.iter().min_by_key(|(u, _)| **u)?;
        orphans.remove(&unique);
        tracing::warn!(unique, "intent records exhausted: dropping the oldest orphan record");
        self.recs[i as usize].clear();
        Some(i)
    }

    /// The orphan record of a re-sent request, if a dead worker left one; worker generation
    /// `worker_gen` now works on it.
    pub fn adopt(&self, unique: u64, worker_gen: u32) -> Option<u32> {
        let i = self.orphans.lock().unwrap().remove(&unique)?;
        self.recs[i as usize].worker_gen.store(worker_gen, Ordering::Release);
        Some(i)
    }

    /// Frees every orphan's record: its transport has delivered again all that will come back.
    /// Returns how many were freed.
    pub fn drop_all_orphans(&self) -> usize {
        let orphans: Vec<(u64, u32)> = self.orphans.lock().unwrap().drain().collect();
        for &(_, i) in &orphans {
            // Crash before a clear: that record is an orphan again at the next recovery, and
            // collected again after the next re-send.
            self.recs[i as usize].clear();
        }
        self.free.lock().unwrap().extend(orphans.iter().map(|&(_, i)| i));
        orphans.len()
    }

    /// Returns an adopted record to the free list once its request is answered.
    pub fn release(&self, i: u32) {
        self.free.lock().unwrap().push(i);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::{Pending, facts};
    use crate::state::Region;

    #[test]
    fn test_facts_of_one_op_use_distinct_slots() {
        use facts::*;
        let ops: [(&str, &[usize]); 5] = [
            ("create", &[CREATE_EXISTED.slot, ONCE_ERRNO.slot, BACKING_ID.slot]),
            ("open, tmpfile, release", &[BACKING_ID.slot]),
            ("rename", &[RENAME_SOURCE_INO.slot, RENAME_TARGET_INO.slot, ONCE_ERRNO.slot]),
            ("append", &[APPEND_SIZE_BEFORE.slot, APPEND_WRITTEN.slot, ONCE_ERRNO.slot]),
            ("forget", &[FORGET_ENTRY.slot]),
        ];
        for (op, slots) in ops {
            let distinct: std::collections::BTreeSet<_> = slots.iter().collect();
            assert_eq!(distinct.len(), slots.len(), "{op} uses one fact slot twice");
        }
    }

    #[test]
    fn test_fact_values_round_trip_through_the_region() {
        let region = Region::create(16, 16).unwrap();
        let r = &region.records()[0];
        r.set_fact(facts::ONCE_ERRNO, -libc::EIO);
        assert_eq!(r.fact(facts::ONCE_ERRNO), -libc::EIO);
        r.set_fact(facts::ONCE_ERRNO, libc::ENOENT);
        assert_eq!(r.fact(facts::ONCE_ERRNO), libc::ENOENT);
        r.set_fact(facts::CREATE_EXISTED, true);
        assert!(r.fact(facts::CREATE_EXISTED));
        r.set_fact(facts::FORGET_ENTRY, u32::MAX);
        assert_eq!(r.fact(facts::FORGET_ENTRY), u32::MAX);
    }

    #[test]
    fn test_pending_round_trips_through_u32() {
        for p in [Pending::None, Pending::Raise, Pending::Forget, Pending::Handle, Pending::ForgetEntry] {
            assert_eq!(Pending::try_from(p as u32), Ok(p));
        }
        assert_eq!(Pending::try_from(5), Err(5));
    }

    #[test]
    fn test_record_unknown_pending_kind_reads_as_none() {
        let region = Region::create(16, 16).unwrap();
        let r = &region.records()[0];
        r.start(1, 1, 1, 1);
        r.begin_pending(Pending::Raise, 5, 0);
        r.pending.store(99, Ordering::Release); // as a corrupt region would hold it
        assert_eq!(r.pending(), Pending::None);
    }
}
