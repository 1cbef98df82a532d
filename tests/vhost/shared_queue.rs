//! Several requests in flight on one queue, as a guest's driver keeps them when several
//! processes each wait in a syscall. `SharedQueue::share` splits a queue into slots, each with
//! descriptors and a part of the data area of its own, each carrying one request at a time: K
//! threads with a slot each keep up to K chains in flight, which the device may return in any
//! order.
//!
//! Publishing takes the queue's lock. No thread is set apart to reap the used ring: a submitter
//! waiting for its chain, finding nobody else watching the ring, becomes the reaper. It asks for
//! a notification at the oldest used element not consumed yet (EVENT_IDX's used_event), takes
//! every used element the device has returned and hands each to the chain its id names, then
//! sleeps on the call eventfd without the lock (so that the others publish meanwhile) until the
//! device signals or the earliest deadline of a chain in flight; the other submitters wait on a
//! condvar for their element. The checks are `QueueHandle::request`'s, each an error naming the
//! queue: a reply longer than its room, more used elements than chains published, an id that
//! names no chain in flight or one already returned (these two make the queue unusable: every
//! request on it fails from then on), a used element found after a sleep that ended without a
//! notification, and a chain not back within the timeout.
//!
//! A notification missed while other chains keep the queue busy goes unseen if a later look
//! (after another notification) finds that element anyway, as a guest's driver would not notice
//! it either; a notification missed for the last chains in flight, which is what hangs a guest,
//! fails here.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::{Cursor, Error, QueueHandle, Result, Ring, Share};

/// A queue that several threads drive at once, each through a `QueueSlot` of its own.
pub struct SharedQueue {
    ring: Ring,
    timeout: Duration,
    chains: Mutex<Chains>,
    /// Signalled at the end of each of a reaper's turns: it handed elements over, or its role is
    /// free for the taking.
    turn_over: Condvar,
}

/// The queue's chains in flight, behind its lock.
struct Chains {
    cursor: Cursor,
    /// Chains published whose submitter has not taken the outcome yet, by head.
    waiting: HashMap<u16, Chain>,
    /// Heads of chains whose submitter gave up on them (they timed out): still the device's,
    /// dropped when they come back.
    abandoned: HashSet<u16>,
    /// Whether a reaper sleeps on the call eventfd: the others wait for it to hand over.
    reaper_asleep: bool,
    /// Why the ring cannot be trusted any more.
    unusable: Option<String>,
    /// The most chains in flight at once so far.
    peak: u16,
    /// Chains published so far, which numbers them.
    published: u64,
    /// Used elements returned while a chain published earlier was still with the device.
    out_of_order: usize,
}

enum Chain {
    /// With the device since `published`; `number` says which chain of the queue it is.
    Pending { published: Instant, number: u64 },
    /// Back from the device (the used length), or failed.
    Done(Result<u32>),
}

/// One thread's part of a `SharedQueue`, carrying one request at a time.
pub struct QueueSlot {
    queue: Arc<SharedQueue>,
    number: usize,
    share: Share,
    /// Chains this slot has sent, which picks the descriptors of the next.
    sent: u16,
    /// The head of this slot's last chain, if it timed out: until the device returns it, the
    /// slot's descriptors and buffers are not ours to reuse.
    timed_out: Option<u16>,
}

impl SharedQueue {
    /// Splits `queue` (with nothing in flight) into `slots` slots, each with an equal part of its
    /// descriptors and of its data area. Requests wait up to the queue's timeout.
    pub fn share(queue: QueueHandle, slots: usize) -> Result<(Arc<SharedQueue>, Vec<QueueSlot>)> {
        let QueueHandle { ring, cursor, timeout } = queue;
        if cursor.in_flight() != 0 {
            return Err(Error::Invalid(format!("queue {} has {} chains in flight", ring.index, cursor.in_flight())));
        }
        if slots == 0 {
            return Err(Error::Invalid(format!("no slots on queue {}", ring.index)));
        }
        let shares = (0..slots).map(|number| ring.part(number, slots)).collect::<Result<Vec<Share>>>()?;
        let chains = Chains {
            cursor,
            waiting: HashMap::new(),
            abandoned: HashSet::new(),
            reaper_asleep: false,
            unusable: None,
            peak: 0,
            published: 0,
            out_of_order: 0,
        };
        let queue = Arc::new(SharedQueue { ring, timeout, chains: Mutex::new(chains), turn_over: Condvar::new() });
        let slots = shares
            .into_iter()
            .enumerate()
            .map(|(number, share)| QueueSlot { queue: Arc::clone(&queue), number, share, sent: 0, timed_out: None })
            .collect();
        Ok((queue, slots))
    }

    pub fn index(&self) -> usize {
        self.ring.index
    }

    /// The most chains that were in flight at once so far (published, their used element not
    /// taken yet).
    pub fn peak_in_flight(&self) -> usize {
        usize::from(self.lock().peak)
    }

    /// How many used elements came back while a chain published earlier was still with the
    /// device.
    pub fn out_of_order(&self) -> usize {
        self.lock().out_of_order
    }

    fn lock(&self) -> MutexGuard<'_, Chains> {
        self.chains.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Offers the chain at `head` to the device.
    fn publish(&self, head: u16) -> Result<()> {
        let mut chains = self.lock();
        chains.usable(self.ring.index)?;
        if let Err(e) = self.ring.publish(&mut chains.cursor, &[head]) {
            // Whether the device saw the chain is unknown, and with it what its used ring means.
            chains.unusable = Some(format!("publishing head {head}: {e}"));
            return Err(e);
        }
        let number = chains.published;
        chains.published += 1;
        chains.waiting.insert(head, Chain::Pending { published: Instant::now(), number });
        chains.peak = chains.peak.max(chains.cursor.in_flight());
        Ok(())
    }

    /// Waits until the chain at `head` is done with; its used length.
    fn wait(&self, head: u16) -> Result<u32> {
        let mut chains = self.lock();
        loop {
            if let Some(outcome) = chains.take_done(head) {
                return outcome;
            }
            if let Err(e) = chains.usable(self.ring.index) {
                chains.waiting.remove(&head);
                return Err(e);
            }
            chains = if chains.reaper_asleep {
                self.turn_over.wait(chains).unwrap_or_else(PoisonError::into_inner)
            } else {
                self.reap(chains)
            };
        }
    }

    /// One turn as the reaper: hands over what the device has returned; if that is nothing,
    /// sleeps until the device signals or the earliest deadline passes, and hands over what came
    /// back by then. Then times out the chains past their deadline and wakes every waiter.
    fn reap<'a>(&'a self, mut chains: MutexGuard<'a, Chains>) -> MutexGuard<'a, Chains> {
        let ring = &self.ring;
        // Elements returned before used_event was armed may have come without a notification
        // (a stale used_event asks for none); they are taken as they are.
        let mut found = ring.arm_used_event(&chains.cursor).and_then(|()| chains.collect(ring, true));
        if let Ok(false) = found {
            let deadline = chains.earliest_deadline(self.timeout);
            chains.reaper_asleep = true;
            drop(chains);
            let woken = ring.wait_for_call(deadline.saturating_duration_since(Instant::now()));
            chains = self.lock();
            chains.reaper_asleep = false;
            found = woken.and_then(|notified| chains.collect(ring, notified));
        }
        if let Err(e) = found {
            chains.unusable.get_or_insert(e.to_string());
        }
        chains.time_out(ring.index, self.timeout);
        self.turn_over.notify_all();
        chains
    }
}

impl Chains {
    fn usable(&self, queue: usize) -> Result<()> {
        match &self.unusable {
            Some(why) => Err(Error::Unusable { queue, why: why.clone() }),
            None => Ok(()),
        }
    }

    /// The outcome of the chain at `head` if it is done with (forgetting the chain).
    fn take_done(&mut self, head: u16) -> Option<Result<u32>> {
        match self.waiting.remove(&head)? {
            Chain::Done(outcome) => Some(outcome),
            pending => {
                self.waiting.insert(head, pending);
                None
            }
        }
    }

    /// Takes every used element the device has returned and hands it to the chain it names;
    /// whether there was any. `notified`: whether the device signalled since the last look, as
    /// it must have for any element it returned since.
    fn collect(&mut self, ring: &Ring, notified: bool) -> Result<bool> {
        let mut any = false;
        while let Some((id, len)) = ring.next_used(&mut self.cursor)? {
            any = true;
            let head = u16::try_from(id).ok().filter(|h| self.abandoned.contains(h) || self.waiting.contains_key(h));
            let Some(head) = head else {
                return Err(Error::BadUsed(format!("queue {}: id {id} is the head of no chain in flight", ring.index)));
            };
            if self.abandoned.remove(&head) {
                continue;
            }
            let Some(&Chain::Pending { published, number }) = self.waiting.get(&head) else {
                return Err(Error::BadUsed(format!("queue {}: id {id} returned twice", ring.index)));
            };
            if self.waiting.values().any(|c| matches!(c, Chain::Pending { number: earlier, .. } if *earlier < number)) {
                self.out_of_order += 1;
            }
            let outcome = match notified {
                true => Ok(len),
                false => Err(Error::MissedNotification { queue: ring.index, waited: published.elapsed() }),
            };
            self.waiting.insert(head, Chain::Done(outcome));
        }
        Ok(any)
    }

    /// When the first chain still with the device times out.
    fn earliest_deadline(&self, timeout: Duration) -> Instant {
        let pending = self.waiting.values().filter_map(|chain| match chain {
            Chain::Pending { published, .. } => Some(*published + timeout),
            Chain::Done(_) => None,
        });
        pending.min().unwrap_or_else(Instant::now)
    }

    /// Gives up on every chain that has been with the device for `timeout`: its submitter gets
    /// Timeout, and its head is left to the device, dropped when it comes back.
    fn time_out(&mut self, queue: usize, timeout: Duration) {
        for (&head, chain) in &mut self.waiting {
            if let Chain::Pending { published, .. } = chain
                && published.elapsed() >= timeout
            {
                *chain = Chain::Done(Err(Error::Timeout { queue, waited: published.elapsed() }));
                self.abandoned.insert(head);
            }
        }
    }
}

impl QueueSlot {
    /// The queue's index.
    pub fn index(&self) -> usize {
        self.queue.ring.index
    }

    /// Which of its queue's slots this is.
    pub fn number(&self) -> usize {
        self.number
    }

    /// This slot's part of the data area: a request and its reply room must fit in it.
    pub fn data_len(&self) -> u64 {
        self.share.area_len
    }

    /// `QueueHandle::request` through this slot, while the other slots' requests are in flight
    /// on the same queue.
    pub fn request(&mut self, request: &[u8], reply_capacity: u32) -> Result<Vec<u8>> {
        let queue = &*self.queue;
        if let Some(head) = self.timed_out {
            if queue.lock().abandoned.contains(&head) {
                return Err(Error::StillWithDevice { queue: queue.ring.index, head });
            }
            self.timed_out = None;
        }
        let descriptors = self.share.descriptors(self.sent);
        self.sent = self.sent.wrapping_add(1);
        let reply_addr = queue.ring.lay_out_request(&self.share, descriptors, request, reply_capacity)?;
        let head = descriptors[0];
        queue.publish(head)?;
        match queue.wait(head) {
            Ok(len) => queue.ring.read_reply(len, reply_addr, reply_capacity),
            Err(e) => {
                if let Error::Timeout { .. } = e {
                    self.timed_out = Some(head);
                }
                Err(e)
            }
        }
    }
}
