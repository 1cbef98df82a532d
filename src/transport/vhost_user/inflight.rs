//! In-flight tracking of a split virtqueue, on the region's `QueueState` (state/vhost.rs holds
//! only the layout, QEMU's inflight-region fields). A head is in flight from the moment it is
//! popped until its used element is published. The next avail index is derived as
//! `used_idx + in-flight heads + avail_offset`, so a pop is a single store (the inflight flag): a
//! crash before it re-pops the head, a crash after it replays it. A put is named first
//! (`last_batch_head`), so recovery can tell a put cut in half after the ring's used index moved
//! (finished: `repair_used`) from one cut before (the head is replayed).

use std::sync::atomic::Ordering;

use crate::state::vhost::QueueState;

/// The in-flight operations of one queue.
pub trait InFlight {
    /// Heads in flight now.
    fn in_flight_count(&self) -> u16;
    /// The avail index the next pop reads.
    fn next_avail(&self) -> u16;
    /// In-flight heads of a ring of `size` in pop order, with their counters.
    fn in_flight(&self, size: u16) -> Vec<(u16, u64)>;
    /// Pop: `head` is in flight from here, with a fresh counter (returned).
    fn mark_popped(&self, head: u16) -> u64;
    /// First half of a put: names the head whose used element is about to be published, so a
    /// death between publishing it and `end_put` is repaired (see `repair_used`).
    fn begin_put(&self, head: u16);
    /// Second half of a put, after the ring's used index was advanced to `used_idx`.
    fn end_put(&self, head: u16, used_idx: u16);
    /// After a worker's death: reconciles our `used_idx` with the ring's. True if a put was
    /// finished.
    fn repair_used(&self, ring_used_idx: u16) -> bool;
    /// Takes a SET_VRING_BASE in: the next pop reads avail index `base`, and the ring's used
    /// index (read from guest memory) is where used elements continue.
    fn start_from_base(&self, ring_used_idx: u16);
}

impl InFlight for QueueState {
    fn in_flight_count(&self) -> u16 {
        self.desc.iter().filter(|d| d.inflight.load(Ordering::Acquire) != 0).count() as u16
    }

    fn next_avail(&self) -> u16 {
        self.used_idx
            .load(Ordering::Acquire)
            .wrapping_add(self.in_flight_count())
            .wrapping_add(self.avail_offset.load(Ordering::Acquire))
    }

    fn in_flight(&self, size: u16) -> Vec<(u16, u64)> {
        let mut v: Vec<(u16, u64)> = self.desc[..(size as usize).min(self.desc.len())]
            .iter()
            .enumerate()
            .filter(|(_, d)| d.inflight.load(Ordering::Acquire) != 0)
            .map(|(i, d)| (i as u16, d.counter.load(Ordering::Acquire)))
            .collect();
        v.sort_by_key(|(_, c)| *c);
        v
    }

    fn mark_popped(&self, head: u16) -> u64 {
        let counter = self.next_counter.fetch_add(1, Ordering::AcqRel) + 1;
        let d = &self.desc[head as usize];
        d.counter.store(counter, Ordering::Release);
        // Crash before this store: the head is not in flight and next_avail still points at it,
        // so the next worker pops it again. After it: the next worker replays it.
        d.inflight.store(1, Ordering::Release);
        counter
    }

    fn begin_put(&self, head: u16) {
        self.last_batch_head.store(head, Ordering::Release);
    }

    fn end_put(&self, head: u16, used_idx: u16) {
        // Crash between these two stores: `repair_used` sees the ring one ahead of `used_idx`
        // and finishes the put (clearing an already clear flag is harmless).
        self.desc[head as usize].inflight.store(0, Ordering::Release);
        self.used_idx.store(used_idx, Ordering::Release);
    }

    /// One ahead means the dead worker published `last_batch_head`'s used element but did not
    /// finish the put: it is done. Any other difference was not made by us (a misbehaving
    /// guest) and is logged; our own index stays, so the used index never goes backwards by our
    /// doing.
    fn repair_used(&self, ring_used_idx: u16) -> bool {
        let ours = self.used_idx.load(Ordering::Acquire);
        if ring_used_idx == ours {
            return false;
        }
        if ring_used_idx == ours.wrapping_add(1) {
            let head = self.last_batch_head.load(Ordering::Acquire);
            self.end_put(head, ring_used_idx);
            tracing::info!(head, used_idx = ring_used_idx, "finished a used-ring update a dead worker cut in half");
            true
        } else {
            tracing::warn!(ring = ring_used_idx, ours, "the ring's used index is not ours; keeping ours");
            false
        }
    }

    fn start_from_base(&self, ring_used_idx: u16) {
        for d in &self.desc {
            d.inflight.store(0, Ordering::Relaxed);
        }
        let base = self.base.load(Ordering::Acquire) as u16;
        self.used_idx.store(ring_used_idx, Ordering::Release);
        self.avail_offset.store(base.wrapping_sub(ring_used_idx), Ordering::Release);
        // Crash before this store: base_pending is still set, and the next worker starts over.
        self.base_pending.store(0, Ordering::Release);
    }
}

/// A pop is one store, a put two, and recovery tells every point between them apart.
#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::InFlight;
    use crate::state::Region;

    fn queue(region: &Region) -> &'static crate::state::vhost::QueueState {
        &region.vhost().queues[1]
    }

    #[test]
    fn test_next_avail_counts_used_and_in_flight_heads() {
        let region = Region::create(16, 16).unwrap();
        let q = queue(&region);
        assert_eq!(q.next_avail(), 0);
        let c1 = q.mark_popped(5);
        let c2 = q.mark_popped(2);
        assert!(c2 > c1);
        assert_eq!(q.next_avail(), 2);
        assert_eq!(q.in_flight(8), vec![(5, c1), (2, c2)], "in pop order");
        q.begin_put(5);
        q.end_put(5, 1);
        assert_eq!(q.next_avail(), 2, "a used head still counts once");
        assert_eq!(q.in_flight(8), vec![(2, c2)]);
    }

    #[test]
    fn test_death_between_used_index_and_end_put_is_finished_by_repair() {
        let region = Region::create(16, 16).unwrap();
        let q = queue(&region);
        q.mark_popped(3);
        q.begin_put(3);
        // The dead worker published used.idx = 1 but did not clear the flag.
        assert!(q.repair_used(1), "the put is finished");
        assert!(q.in_flight(8).is_empty(), "the head was used: it must not be replayed");
        assert_eq!(q.used_idx.load(Ordering::Acquire), 1);
        assert_eq!(q.next_avail(), 1);
    }

    #[test]
    fn test_death_before_used_index_leaves_the_head_in_flight() {
        let region = Region::create(16, 16).unwrap();
        let q = queue(&region);
        q.mark_popped(3);
        q.begin_put(3);
        // Element written (or not), index not published: the ring still says 0.
        assert!(!q.repair_used(0));
        assert_eq!(q.in_flight(8).len(), 1, "not used yet: replayed");
        assert_eq!(q.next_avail(), 1, "and not popped again");
    }

    #[test]
    fn test_foreign_used_index_is_not_taken() {
        let region = Region::create(16, 16).unwrap();
        let q = queue(&region);
        q.mark_popped(3);
        assert!(!q.repair_used(7));
        assert_eq!(q.used_idx.load(Ordering::Acquire), 0, "the used index never moves by a guest's write");
        assert_eq!(q.in_flight(8).len(), 1);
    }

    #[test]
    fn test_base_sets_next_avail_from_the_rings_used_index() {
        let region = Region::create(16, 16).unwrap();
        let q = queue(&region);
        q.mark_popped(1);
        q.base.store(40, Ordering::Release);
        q.base_pending.store(1, Ordering::Release);
        q.start_from_base(38);
        assert!(q.in_flight(8).is_empty());
        assert_eq!(q.next_avail(), 40);
        assert_eq!(q.used_idx.load(Ordering::Acquire), 38);
        assert_eq!(q.base_pending.load(Ordering::Acquire), 0);
    }
}
