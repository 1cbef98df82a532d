//! The slot machinery both tables share: allocation, publication, pinning and retirement of
//! fixed-size slots in the state region, each holding one fd.
//!
//! A slot's life: FREE → SETTING_UP (allocated, contents being written) → LIVE (published with
//! Release; its id may be handed to the peer) → RETIRING (no new pins; waits for current users)
//! → FREE with the generation bumped, so an id naming the old incarnation is refused.
//!
//! Ids are `generation << 32 | index`; index 0 is never used, so id 0 is always invalid.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

use super::Error;

pub const FREE: u32 = 0;
pub const SETTING_UP: u32 = 1;
pub const LIVE: u32 = 2;
pub const RETIRING: u32 = 3;

/// The part every slot starts with.
#[repr(C)]
#[derive(Debug, Default)]
pub struct SlotHeader {
    pub state: AtomicU32,
    pub generation: AtomicU32,
    /// Requests currently using the slot's fd (heap-only meaning: reset by recovery).
    pub users: AtomicU32,
    pub fd: AtomicI32,
}

/// A slot's body (its header lives in the table's dense header array: recovery's pass reads
/// only headers, 16 bytes a slot, whatever the size of the bodies).
pub trait Slot: Sync + 'static {}

pub fn make_id(index: u32, generation: u32) -> u64 {
    (u64::from(generation) << 32) | u64::from(index)
}

pub fn split_id(id: u64) -> (u32, u32) {
    (id as u32, (id >> 32) as u32)
}

/// A table of slots in the region plus its heap free list.
pub struct SlotTable<S: Slot> {
    headers: &'static [SlotHeader],
    slots: &'static [S],
    high_water: &'static AtomicU32,
    free: Mutex<Vec<u32>>,
    bad_id: Error,
}

/// A pinned LIVE slot: its fd stays open until the pin is dropped.
pub struct Pin<S: Slot> {
    header: &'static SlotHeader,
    slot: &'static S,
    id: u64,
}

impl<S: Slot> Pin<S> {
    pub fn slot(&self) -> &'static S {
        self.slot
    }
    pub fn id(&self) -> u64 {
        self.id
    }
    pub fn header(&self) -> &'static SlotHeader {
        self.header
    }
    pub fn fd(&self) -> i32 {
        self.header.fd.load(Ordering::Relaxed)
    }
}

impl<S: Slot> Drop for Pin<S> {
    fn drop(&mut self) {
        self.header.users.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<S: Slot> SlotTable<S> {
    pub fn new(
        headers: &'static [SlotHeader],
        slots: &'static [S],
        high_water: &'static AtomicU32,
        bad_id: Error,
    ) -> Self {
        assert_eq!(headers.len(), slots.len(), "a header per slot");
        // Index 0 is reserved so that id 0 never names a slot.
        high_water.fetch_max(1, Ordering::SeqCst);
        SlotTable { headers, slots, high_water, free: Mutex::new(Vec::new()), bad_id }
    }

    /// One past the highest index ever used.
    pub fn high_water(&self) -> usize {
        (self.high_water.load(Ordering::Relaxed) as usize).min(self.slots.len())
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    pub fn slot(&self, index: u32) -> &'static S {
        &self.slots[index as usize]
    }

    pub fn header(&self, index: u32) -> &'static SlotHeader {
        &self.headers[index as usize]
    }

    /// Takes a FREE slot and marks it SETTING_UP.
    pub fn alloc(&self) -> Result<u32, Error> {
        let reused = self.free.lock().unwrap().pop();
        let index = match reused {
            Some(i) => i,
            None => {
                let i = self.high_water.fetch_add(1, Ordering::SeqCst);
                if i as usize >= self.slots.len() {
                    self.high_water.fetch_sub(1, Ordering::SeqCst);
                    return Err(Error::TableFull(self.slots.len()));
                }
                i
            }
        };
        let h = self.header(index);
        // A fresh slot's fd field reads 0 (zeroed memory): mark it empty before the slot can
        // be found SETTING_UP, so recovery never closes an fd the slot did not own.
        h.fd.store(-1, Ordering::SeqCst);
        // Crash after this store: a SETTING_UP slot whose id was never sent; recovery closes the
        // fd it may hold and frees it.
        h.state.store(SETTING_UP, Ordering::SeqCst);
        Ok(index)
    }

    /// Migration (a destination taking the ids the guest already holds): takes the FREE slot
    /// that `id` names, with `id`'s generation, and marks it SETTING_UP. The heap free list is
    /// not told: the worker that imports is replaced afterwards (transport/vhost_user/transfer.rs)
    /// and its successor's recovery rebuilds the list from the table.
    pub fn place(&self, id: u64) -> Result<u32, Error> {
        let (index, generation) = split_id(id);
        if index == 0 || index as usize >= self.slots.len() {
            return Err(Error::Corrupt(format!("id {id:#x} is beyond this table's {} slots", self.slots.len())));
        }
        let h = self.header(index);
        if h.state.load(Ordering::SeqCst) != FREE {
            return Err(Error::Corrupt(format!("id {id:#x}: its slot is taken")));
        }
        // 1/3 raise the high-water mark first, so recovery's scan covers the slot from now on.
        self.high_water.fetch_max(index + 1, Ordering::SeqCst);
        h.fd.store(-1, Ordering::SeqCst);
        h.generation.store(generation, Ordering::SeqCst);
        // 2/3 Crash after this store: a SETTING_UP slot; recovery frees it (bumping the
        // generation), and the import, asked again, starts over.
        h.state.store(SETTING_UP, Ordering::SeqCst);
        // 3/3 the caller fills the slot and publishes it.
        Ok(index)
    }

    /// Makes a SETTING_UP slot LIVE, after its contents are written; returns its id.
    pub fn publish(&self, index: u32) -> u64 {
        let h = self.header(index);
        let generation = h.generation.load(Ordering::Relaxed);
        // Crash after this store: the slot is LIVE with complete contents; if its id was not
        // replied yet, replay of the request (intent record) finds and reuses it.
        h.state.store(LIVE, Ordering::Release);
        make_id(index, generation)
    }

    /// Pins the LIVE slot named by `id`, refusing out-of-range, free and stale ids.
    pub fn pin(&self, id: u64) -> Result<Pin<S>, Error> {
        let (index, generation) = split_id(id);
        if index == 0 || index as usize >= self.slots.len() {
            return Err(self.bad_id.clone());
        }
        let slot = self.slot(index);
        let h = self.header(index);
        // SeqCst pairs with `retire`: either it sees our user, or we see RETIRING.
        h.users.fetch_add(1, Ordering::SeqCst);
        if h.state.load(Ordering::SeqCst) != LIVE || h.generation.load(Ordering::SeqCst) != generation {
            h.users.fetch_sub(1, Ordering::SeqCst);
            return Err(self.bad_id.clone());
        }
        Ok(Pin { header: h, slot, id })
    }

    /// Marks a LIVE slot RETIRING so no new pin succeeds. The caller then calls `finish_retire`.
    pub fn begin_retire(&self, index: u32) {
        // Crash after this store: RETIRING slot, not yet freed; recovery completes retirement
        // (closes the fd, bumps the generation, frees the slot).
        self.header(index).state.store(RETIRING, Ordering::SeqCst);
    }

    /// Waits for the slot's users to drop their pins, closes its fd and frees it. Returns
    /// whether it held an fd.
    pub fn finish_retire(&self, index: u32) -> bool {
        let h = self.header(index);
        let mut spins = 0u32;
        while h.users.load(Ordering::SeqCst) != 0 {
            spins += 1;
            if spins < 100 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(std::time::Duration::from_micros(100));
            }
        }
        let fd = h.fd.swap(-1, Ordering::SeqCst);
        // Crash after the swap but before close: the fd stays open with no slot naming it; the
        // recovery fd sweep closes it.
        if fd >= 0 {
            crate::sys::close(fd);
        }
        h.generation.fetch_add(1, Ordering::SeqCst);
        // Crash after freeing: a FREE slot; nothing to repair.
        h.state.store(FREE, Ordering::SeqCst);
        self.free.lock().unwrap().push(index);
        fd >= 0
    }

    /// Recovery, single-threaded before serving: resets every pin (their holders are dead),
    /// frees SETTING_UP slots and finishes RETIRING ones (closing the fd each still holds, after
    /// `on_released` has seen the slot), calls `on_live` for each LIVE slot, and rebuilds the
    /// free list. Returns the number of LIVE slots.
    pub fn recover(
        &self,
        mut on_live: impl FnMut(u32, &'static SlotHeader, &'static S),
        mut on_released: impl FnMut(u32, &'static S),
    ) -> usize {
        let hw = (self.high_water.load(Ordering::SeqCst) as usize).min(self.slots.len()).max(1);
        self.high_water.store(hw as u32, Ordering::SeqCst);
        // The pass reads every header below the high-water mark: fault them in at once.
        crate::sys::populate_read(self.headers.as_ptr().cast(), hw * size_of::<SlotHeader>());
        let mut free = self.free.lock().unwrap();
        free.clear();
        let mut live = 0;
        for i in (1..hw as u32).rev() {
            let h = self.header(i);
            // Read first: most slots have no pin, and not writing them keeps the pass read-only.
            if h.users.load(Ordering::Relaxed) != 0 {
                h.users.store(0, Ordering::SeqCst);
            }
            match h.state.load(Ordering::SeqCst) {
                LIVE => {
                    on_live(i, h, self.slot(i));
                    live += 1;
                }
                FREE => free.push(i),
                // SETTING_UP, RETIRING, or a value no build writes: the slot's id is not (or no
                // longer) held by the peer, so it is released.
                _ => {
                    on_released(i, self.slot(i));
                    let fd = h.fd.swap(-1, Ordering::SeqCst);
                    if fd >= 0 {
                        crate::sys::close(fd);
                    }
                    h.generation.fetch_add(1, Ordering::SeqCst);
                    h.state.store(FREE, Ordering::SeqCst);
                    free.push(i);
                }
            }
        }
        live
    }

    /// Whether the slot named by `id` is LIVE (a check for recovery, no pin taken).
    pub fn is_live(&self, id: u64) -> bool {
        let (index, generation) = split_id(id);
        if index == 0 || index as usize >= self.slots.len() {
            return false;
        }
        let h = self.header(index);
        h.state.load(Ordering::SeqCst) == LIVE && h.generation.load(Ordering::SeqCst) == generation
    }
}
