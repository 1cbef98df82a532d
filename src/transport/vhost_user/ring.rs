//! A split virtqueue in guest memory (virtio 1.1 §2.6), as the device sees it: the avail ring
//! read, used elements and the used index written as separate steps, and descriptor chains
//! walked with every address, length and link checked. No state of its own: where the queue
//! stands (next avail, used index, heads in flight) is kept in the state region by the caller.
//!
//! Why not virtio-queue's `Queue`: it keeps `next_avail`/`next_used` in the process heap (they
//! die with a worker), cannot give the chain of an arbitrary in-flight head (a replay needs it:
//! `DescriptorChain::new` is crate-private), and writes a used element and the used index in one
//! call, where crash recovery needs the two apart. See docs/design.md.

use std::sync::atomic::Ordering;

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::sys;

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const DESC_F_INDIRECT: u16 = 4;
/// avail.flags: the driver asks not to be interrupted (only without EVENT_IDX).
const AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Where a descriptor sits: in the queue's descriptor table, or in the chain's indirect table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Ring(u16),
    Table(u16),
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Ring(i) => write!(f, "descriptor {i}"),
            Place::Table(i) => write!(f, "indirect table entry {i}"),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("head {0} is outside the queue")]
    HeadOutOfRange(u16),
    #[error("{0} links to {1}, outside its table")]
    NextOutOfRange(Place, u16),
    #[error("the chain is longer than the queue (a loop)")]
    Loop,
    #[error("the indirect table's links loop")]
    IndirectLoop,
    #[error("the chain has more than {0} descriptors (the queue size), its indirect table's included")]
    TooLong(u16),
    #[error("indirect descriptor, but VIRTIO_RING_F_INDIRECT_DESC was not negotiated")]
    IndirectNotNegotiated,
    #[error("descriptor {0} is indirect and has NEXT set (an indirect descriptor ends its chain)")]
    IndirectWithNext(u16),
    #[error("{0} is indirect inside an indirect table (one table per chain)")]
    NestedIndirect(Place),
    #[error("indirect table length {0} is not a non-zero multiple of 16")]
    IndirectTableLength(u32),
    #[error("indirect table ({len} bytes at {addr:#x}) lies outside guest memory")]
    IndirectTableOutsideMemory { addr: u64, len: u32 },
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    #[error("{at} ({len} bytes at {addr:#x}) lies outside guest memory")]
    OutsideMemory { at: Place, addr: u64, len: u32 },
    #[error("guest memory: {0}")]
    Memory(String),
}

#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("ring part {what} ({len} bytes at {addr:#x}) lies outside guest memory")]
    OutsideMemory { what: &'static str, addr: u64, len: usize },
    #[error("guest memory: {0}")]
    Memory(String),
}

fn mem_err(e: impl std::fmt::Display) -> RingError {
    RingError::Memory(e.to_string())
}

/// One buffer of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// A descriptor chain: the request (device-readable) and room for the reply (device-writable).
#[derive(Debug, Default, Clone)]
pub struct Chain {
    pub readable: Vec<Segment>,
    pub writable: Vec<Segment>,
}

impl Chain {
    /// Adds one buffer: inside guest memory, and no readable one after a writable one (across
    /// the whole chain, its indirect table's part included).
    fn push(&mut self, mem: &GuestMemoryMmap, at: Place, d: &Desc) -> Result<(), ChainError> {
        // check_range also refuses addr + len overflowing the address space.
        if d.len > 0 && !mem.check_range(GuestAddress(d.addr), d.len as usize) {
            return Err(ChainError::OutsideMemory { at, addr: d.addr, len: d.len });
        }
        let segment = Segment { addr: GuestAddress(d.addr), len: d.len };
        if d.flags & DESC_F_WRITE != 0 {
            self.writable.push(segment);
        } else if self.writable.is_empty() {
            self.readable.push(segment);
        } else {
            return Err(ChainError::ReadableAfterWritable);
        }
        Ok(())
    }

    fn descriptors(&self) -> usize {
        self.readable.len() + self.writable.len()
    }

    pub fn readable_len(&self) -> u64 {
        self.readable.iter().map(|s| u64::from(s.len)).sum()
    }

    pub fn writable_len(&self) -> u64 {
        self.writable.iter().map(|s| u64::from(s.len)).sum()
    }
}

/// One descriptor as the driver wrote it (virtio 1.1 §2.6.5: 16 bytes, little-endian).
#[derive(Debug, Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

/// A table of descriptors a walk follows links in: the queue's own, or a chain's indirect table.
#[derive(Debug, Clone, Copy)]
struct Table {
    addr: GuestAddress,
    entries: u32,
    indirect: bool,
}

impl Table {
    fn place(&self, i: u16) -> Place {
        if self.indirect { Place::Table(i) } else { Place::Ring(i) }
    }

    fn read(&self, mem: &GuestMemoryMmap, i: u16) -> Result<Desc, ChainError> {
        let mut raw = [0u8; 16];
        mem.read_slice(&mut raw, self.addr.unchecked_add(16 * u64::from(i)))
            .map_err(|e| ChainError::Memory(e.to_string()))?;
        Ok(Desc {
            addr: u64::from_le_bytes(raw[0..8].try_into().expect("8 bytes")),
            len: u32::from_le_bytes(raw[8..12].try_into().expect("4 bytes")),
            flags: u16::from_le_bytes([raw[12], raw[13]]),
            next: u16::from_le_bytes([raw[14], raw[15]]),
        })
    }
}

/// What the driver negotiated that changes how a ring is read.
#[derive(Debug, Clone, Copy, Default)]
pub struct RingFeatures {
    /// VIRTIO_RING_F_EVENT_IDX: used_event/avail_event instead of the flags.
    pub event_idx: bool,
    /// VIRTIO_RING_F_INDIRECT_DESC: a chain may end in a table of descriptors.
    pub indirect: bool,
}

/// The guest-physical addresses of one queue's three parts, checked to lie in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct Ring {
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    size: u16,
    features: RingFeatures,
}

impl Ring {
    pub fn new(
        mem: &GuestMemoryMmap,
        size: u16,
        (desc, avail, used): (u64, u64, u64),
        features: RingFeatures,
    ) -> Result<Ring, RingError> {
        let n = usize::from(size);
        for (what, addr, len) in
            [("descriptor table", desc, 16 * n), ("avail ring", avail, 6 + 2 * n), ("used ring", used, 6 + 8 * n)]
        {
            if !mem.check_range(GuestAddress(addr), len) {
                return Err(RingError::OutsideMemory { what, addr, len });
            }
        }
        Ok(Ring { desc: GuestAddress(desc), avail: GuestAddress(avail), used: GuestAddress(used), size, features })
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    /// The used ring's guest-physical range, avail_event included (what the device writes).
    pub fn used_range(&self) -> (u64, u64) {
        (self.used.0, 6 + 8 * u64::from(self.size))
    }

    pub fn avail_idx(&self, mem: &GuestMemoryMmap) -> Result<u16, RingError> {
        let v: u16 = mem.load(self.avail.unchecked_add(2), Ordering::Acquire).map_err(mem_err)?;
        Ok(u16::from_le(v))
    }

    /// The head the driver put at avail position `idx`.
    pub fn avail_head(&self, mem: &GuestMemoryMmap, idx: u16) -> Result<u16, RingError> {
        let at = self.avail.unchecked_add(4 + 2 * u64::from(idx % self.size));
        let v: u16 = mem.read_obj(at).map_err(mem_err)?;
        Ok(u16::from_le(v))
    }

    pub fn used_idx(&self, mem: &GuestMemoryMmap) -> Result<u16, RingError> {
        let v: u16 = mem.load(self.used.unchecked_add(2), Ordering::Acquire).map_err(mem_err)?;
        Ok(u16::from_le(v))
    }

    /// Writes used element `at` (not yet visible to the driver: see `publish_used_idx`).
    pub fn write_used_elem(&self, mem: &GuestMemoryMmap, at: u16, head: u16, len: u32) -> Result<(), RingError> {
        let elem = self.used.unchecked_add(4 + 8 * u64::from(at % self.size));
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        bytes[4..].copy_from_slice(&len.to_le_bytes());
        mem.write_slice(&bytes, elem).map_err(mem_err)
    }

    /// Makes the used elements before `idx` visible to the driver (Release: elements first).
    pub fn publish_used_idx(&self, mem: &GuestMemoryMmap, idx: u16) -> Result<(), RingError> {
        mem.store(idx.to_le(), self.used.unchecked_add(2), Ordering::Release).map_err(mem_err)
    }

    /// Before waiting for a kick: with EVENT_IDX, asks the driver to kick once it makes avail
    /// index `next` available. Then looks once more, since the driver may have added a chain
    /// before it could see the request: true if there is one to pop now.
    pub fn arm_kick(&self, mem: &GuestMemoryMmap, next: u16) -> Result<bool, RingError> {
        if self.features.event_idx {
            let at = self.used.unchecked_add(4 + 8 * u64::from(self.size));
            mem.store(next.to_le(), at, Ordering::Release).map_err(mem_err)?;
            std::sync::atomic::fence(Ordering::SeqCst);
        }
        Ok(self.avail_idx(mem)? != next)
    }

    /// Whether the driver wants an interrupt now that the used index moved from `old` to `new`.
    pub fn needs_notification(&self, mem: &GuestMemoryMmap, old: u16, new: u16) -> Result<bool, RingError> {
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.features.event_idx {
            let at = self.avail.unchecked_add(4 + 2 * u64::from(self.size));
            let used_event = u16::from_le(mem.load(at, Ordering::Acquire).map_err(mem_err)?);
            // vring_need_event: did the index pass `used_event` in this step?
            Ok(new.wrapping_sub(used_event).wrapping_sub(1) < new.wrapping_sub(old))
        } else {
            let flags = u16::from_le(mem.load(self.avail, Ordering::Acquire).map_err(mem_err)?);
            Ok(flags & AVAIL_F_NO_INTERRUPT == 0)
        }
    }

    /// Walks the chain starting at `head`: its descriptors in the queue's table, then, if the
    /// last one is indirect, the entries of that table (virtio 1.1 §2.6.5.3). At most `size`
    /// buffers in all, each inside guest memory, readable ones before writable ones.
    ///
    /// A replay walks an in-flight head again: the driver leaves the chain, and its indirect
    /// table, alone until the head's used element is published, so the walk finds the same chain.
    pub fn chain(&self, mem: &GuestMemoryMmap, head: u16) -> Result<Chain, ChainError> {
        if head >= self.size {
            return Err(ChainError::HeadOutOfRange(head));
        }
        let mut chain = Chain::default();
        let ring = Table { addr: self.desc, entries: u32::from(self.size), indirect: false };
        let Some((at, d)) = self.walk(mem, ring, head, &mut chain)? else {
            return Ok(chain);
        };
        if !self.features.indirect {
            return Err(ChainError::IndirectNotNegotiated);
        }
        if d.flags & DESC_F_NEXT != 0 {
            return Err(ChainError::IndirectWithNext(at));
        }
        // The indirect descriptor's own WRITE flag means nothing: the device must ignore it
        // (virtio 1.1 §2.6.5.3.2); each entry says which way its buffer goes.
        if d.len == 0 || d.len % 16 != 0 {
            return Err(ChainError::IndirectTableLength(d.len));
        }
        if !mem.check_range(GuestAddress(d.addr), d.len as usize) {
            return Err(ChainError::IndirectTableOutsideMemory { addr: d.addr, len: d.len });
        }
        let table = Table { addr: GuestAddress(d.addr), entries: d.len / 16, indirect: true };
        match self.walk(mem, table, 0, &mut chain)? {
            None => Ok(chain),
            Some((at, _)) => Err(ChainError::NestedIndirect(Place::Table(at))),
        }
    }

    /// Follows NEXT links in `table` from entry `first`, adding each buffer to `chain`, until a
    /// descriptor without NEXT (None) or an indirect one (returned, not added). Bounded: a walk
    /// that would visit more entries than the table has revisits one (a loop), and the chain
    /// never holds more than the queue size of buffers (§2.6.5.3.1: no chain is longer).
    fn walk(
        &self,
        mem: &GuestMemoryMmap,
        table: Table,
        first: u16,
        chain: &mut Chain,
    ) -> Result<Option<(u16, Desc)>, ChainError> {
        let mut index = first;
        let mut visited = 0u32;
        loop {
            let d = table.read(mem, index)?;
            if d.flags & DESC_F_INDIRECT != 0 {
                return Ok(Some((index, d)));
            }
            visited += 1;
            if visited > table.entries {
                return Err(if table.indirect { ChainError::IndirectLoop } else { ChainError::Loop });
            }
            if chain.descriptors() >= usize::from(self.size) {
                return Err(ChainError::TooLong(self.size));
            }
            chain.push(mem, table.place(index), &d)?;
            if d.flags & DESC_F_NEXT == 0 {
                return Ok(None);
            }
            if u32::from(d.next) >= table.entries {
                return Err(ChainError::NextOutOfRange(table.place(index), d.next));
            }
            index = d.next;
        }
    }
}

/// Copies the chain's readable bytes into `buf`, at most `buf.len()`; returns how many.
pub fn read_request(mem: &GuestMemoryMmap, chain: &Chain, buf: &mut [u8]) -> Result<usize, RingError> {
    let mut n = 0;
    for s in &chain.readable {
        let take = (s.len as usize).min(buf.len() - n);
        mem.read_slice(&mut buf[n..n + take], s.addr).map_err(mem_err)?;
        n += take;
        if n == buf.len() {
            break;
        }
    }
    Ok(n)
}

/// The host addresses of `segments` (a chain's readable or writable buffers) after their first
/// `skip` bytes, appended to `out`: for a READ or WRITE straight between a file and guest
/// memory. A segment that crosses from one memory region into the next becomes two.
///
/// The addresses stay valid while `mem` lives: the caller holds it for as long as it uses them.
pub fn host_buffers(
    mem: &GuestMemoryMmap,
    segments: &[Segment],
    mut skip: usize,
    out: &mut Vec<sys::IoVec>,
) -> Result<(), RingError> {
    for s in segments {
        let len = s.len as usize;
        if skip >= len {
            skip -= len;
            continue;
        }
        let addr = s.addr.checked_add(skip as u64).ok_or_else(|| mem_err("segment address overflows"))?;
        for slice in mem.get_slices(addr, len - skip) {
            let slice = slice.map_err(mem_err)?;
            // SAFETY: the slice lies inside a region of `mem`, whose mapping lives as long as
            // `mem`; the caller uses the buffers only while it holds `mem`.
            out.push(unsafe { sys::IoVec::new(slice.ptr_guard_mut().as_ptr(), slice.len()) });
        }
        skip = 0;
    }
    Ok(())
}

/// Scatters `reply` over the chain's writable buffers (the caller checked it fits).
pub fn write_reply(mem: &GuestMemoryMmap, chain: &Chain, reply: &[u8]) -> Result<(), RingError> {
    let mut rest = reply;
    for s in &chain.writable {
        if rest.is_empty() {
            break;
        }
        let take = (s.len as usize).min(rest.len());
        mem.write_slice(&rest[..take], s.addr).map_err(mem_err)?;
        rest = &rest[take..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: u16 = 8;
    const MEM: usize = 1 << 20;
    const INDIRECT: RingFeatures = RingFeatures { event_idx: false, indirect: true };
    const EVENT_IDX: RingFeatures = RingFeatures { event_idx: true, indirect: false };

    /// 1 MiB of anonymous guest memory with a ring at 0 (descriptors), 0x1000 (avail), 0x2000
    /// (used); buffers above 0x10000.
    fn ring() -> (GuestMemoryMmap, Ring) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
        let ring = Ring::new(&mem, SIZE, (0, 0x1000, 0x2000), INDIRECT).unwrap();
        (mem, ring)
    }

    /// An indirect table's place in `ring()`'s memory (between the rings and the buffers).
    const TABLE: u64 = 0x4000;

    /// Descriptor `i` of the table at `table` (0: the queue's own).
    fn desc_in(mem: &GuestMemoryMmap, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&d, GuestAddress(table + 16 * u64::from(i))).unwrap();
    }

    fn desc(mem: &GuestMemoryMmap, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        desc_in(mem, 0, i, addr, len, flags, next);
    }

    /// Entry `i` of the indirect table at TABLE.
    fn entry(mem: &GuestMemoryMmap, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        desc_in(mem, TABLE, i, addr, len, flags, next);
    }

    /// `n` readable 8-byte buffers linked in order from entry `first` of the table at `table`.
    fn linked(mem: &GuestMemoryMmap, table: u64, first: u16, n: u16) {
        for i in first..first + n {
            let flags = if i + 1 < first + n { DESC_F_NEXT } else { 0 };
            desc_in(mem, table, i, 0x10000 + 8 * u64::from(i), 8, flags, i + 1);
        }
    }

    #[test]
    fn test_a_request_and_reply_chain() {
        let (mem, ring) = ring();
        desc(&mem, 0, 0x10000, 40, DESC_F_NEXT, 3);
        desc(&mem, 3, 0x20000, 100, DESC_F_NEXT | DESC_F_WRITE, 4);
        desc(&mem, 4, 0x30000, 28, DESC_F_WRITE, 0);
        let c = ring.chain(&mem, 0).unwrap();
        assert_eq!((c.readable_len(), c.writable_len()), (40, 128));
        write_reply(&mem, &c, &[7u8; 120]).unwrap();
        let mut tail = [0u8; 20];
        mem.read_slice(&mut tail, GuestAddress(0x30000)).unwrap();
        assert_eq!(tail, [7u8; 20], "the reply continues into the second writable buffer");
    }

    #[test]
    fn test_hostile_chains_are_refused() {
        let (mem, ring) = ring();
        // (what, how to lay the chain out, head, the refusal)
        type Case<'a> = (&'a str, Box<dyn Fn() + 'a>, u16, ChainError);
        let cases: Vec<Case> = vec![
            ("head outside", Box::new(|| {}), SIZE, ChainError::HeadOutOfRange(SIZE)),
            (
                "loop",
                Box::new(|| {
                    desc(&mem, 0, 0x10000, 8, DESC_F_NEXT, 1);
                    desc(&mem, 1, 0x10000, 8, DESC_F_NEXT, 0);
                }),
                0,
                ChainError::Loop,
            ),
            (
                "next outside",
                Box::new(|| desc(&mem, 0, 0x10000, 8, DESC_F_NEXT, 99)),
                0,
                ChainError::NextOutOfRange(Place::Ring(0), 99),
            ),
            (
                "buffer outside memory",
                Box::new(|| desc(&mem, 0, MEM as u64 - 4, 8, 0, 0)),
                0,
                ChainError::OutsideMemory { at: Place::Ring(0), addr: MEM as u64 - 4, len: 8 },
            ),
            (
                "address + length overflows",
                Box::new(|| desc(&mem, 0, u64::MAX - 2, 16, 0, 0)),
                0,
                ChainError::OutsideMemory { at: Place::Ring(0), addr: u64::MAX - 2, len: 16 },
            ),
            (
                "readable after writable",
                Box::new(|| {
                    desc(&mem, 0, 0x10000, 8, DESC_F_NEXT | DESC_F_WRITE, 1);
                    desc(&mem, 1, 0x10000, 8, 0, 0);
                }),
                0,
                ChainError::ReadableAfterWritable,
            ),
            // Indirect tables (virtio 1.1 §2.6.5.3).
            (
                "indirect with NEXT",
                Box::new(|| desc(&mem, 0, TABLE, 32, DESC_F_INDIRECT | DESC_F_NEXT, 1)),
                0,
                ChainError::IndirectWithNext(0),
            ),
            (
                "empty table",
                Box::new(|| desc(&mem, 0, TABLE, 0, DESC_F_INDIRECT, 0)),
                0,
                ChainError::IndirectTableLength(0),
            ),
            (
                "table length not a multiple of 16",
                Box::new(|| desc(&mem, 0, TABLE, 24, DESC_F_INDIRECT, 0)),
                0,
                ChainError::IndirectTableLength(24),
            ),
            (
                "table outside memory",
                Box::new(|| desc(&mem, 0, MEM as u64 - 16, 32, DESC_F_INDIRECT, 0)),
                0,
                ChainError::IndirectTableOutsideMemory { addr: MEM as u64 - 16, len: 32 },
            ),
            (
                "table address + length overflows",
                Box::new(|| desc(&mem, 0, u64::MAX - 15, 32, DESC_F_INDIRECT, 0)),
                0,
                ChainError::IndirectTableOutsideMemory { addr: u64::MAX - 15, len: 32 },
            ),
            (
                "table as long as the address space allows",
                Box::new(|| desc(&mem, 0, TABLE, 0xffff_fff0, DESC_F_INDIRECT, 0)),
                0,
                ChainError::IndirectTableOutsideMemory { addr: TABLE, len: 0xffff_fff0 },
            ),
            (
                "indirect inside a table",
                Box::new(|| {
                    desc(&mem, 0, TABLE, 32, DESC_F_INDIRECT, 0);
                    entry(&mem, 0, 0x10000, 8, DESC_F_NEXT, 1);
                    entry(&mem, 1, TABLE, 32, DESC_F_INDIRECT, 0);
                }),
                0,
                ChainError::NestedIndirect(Place::Table(1)),
            ),
            (
                "loop in the table",
                Box::new(|| {
                    desc(&mem, 0, TABLE, 32, DESC_F_INDIRECT, 0);
                    entry(&mem, 0, 0x10000, 8, DESC_F_NEXT, 1);
                    entry(&mem, 1, 0x10000, 8, DESC_F_NEXT, 0);
                }),
                0,
                ChainError::IndirectLoop,
            ),
            (
                "a table entry linking to itself",
                Box::new(|| {
                    desc(&mem, 0, TABLE, 64, DESC_F_INDIRECT, 0);
                    entry(&mem, 0, 0x10000, 8, DESC_F_NEXT, 0);
                }),
                0,
                ChainError::IndirectLoop,
            ),
            (
                "link outside the table",
                Box::new(|| {
                    desc(&mem, 0, TABLE, 32, DESC_F_INDIRECT, 0);
                    entry(&mem, 0, 0x10000, 8, DESC_F_NEXT, 2);
                }),
                0,
                ChainError::NextOutOfRange(Place::Table(0), 2),
            ),
            (
                "table buffer outside memory",
                Box::new(|| {
                    desc(&mem, 0, TABLE, 16, DESC_F_INDIRECT, 0);
                    entry(&mem, 0, MEM as u64 - 4, 8, 0, 0);
                }),
                0,
                ChainError::OutsideMemory { at: Place::Table(0), addr: MEM as u64 - 4, len: 8 },
            ),
            (
                "table longer than the queue",
                Box::new(|| {
                    desc(&mem, 0, TABLE, 16 * (u32::from(SIZE) + 1), DESC_F_INDIRECT, 0);
                    linked(&mem, TABLE, 0, SIZE + 1);
                }),
                0,
                ChainError::TooLong(SIZE),
            ),
            (
                "direct descriptors and table together longer than the queue",
                Box::new(|| {
                    linked(&mem, 0, 1, 3);
                    desc(&mem, 3, 0x10000, 8, DESC_F_NEXT, 4);
                    desc(&mem, 4, TABLE, 16 * (u32::from(SIZE) - 2), DESC_F_INDIRECT, 0);
                    linked(&mem, TABLE, 0, SIZE - 2);
                }),
                1,
                ChainError::TooLong(SIZE),
            ),
            (
                "readable in the table after writable before it",
                Box::new(|| {
                    desc(&mem, 0, 0x10000, 8, DESC_F_NEXT | DESC_F_WRITE, 1);
                    desc(&mem, 1, TABLE, 16, DESC_F_INDIRECT, 0);
                    entry(&mem, 0, 0x11000, 8, 0, 0);
                }),
                0,
                ChainError::ReadableAfterWritable,
            ),
            (
                "readable after writable inside the table",
                Box::new(|| {
                    desc(&mem, 0, TABLE, 32, DESC_F_INDIRECT, 0);
                    entry(&mem, 0, 0x10000, 8, DESC_F_NEXT | DESC_F_WRITE, 1);
                    entry(&mem, 1, 0x11000, 8, 0, 0);
                }),
                0,
                ChainError::ReadableAfterWritable,
            ),
        ];
        for (what, setup, head, want) in cases {
            setup();
            assert_eq!(ring.chain(&mem, head).unwrap_err(), want, "{what}");
        }
        // The driver must not use a table it did not negotiate.
        let plain = Ring::new(&mem, SIZE, (0, 0x1000, 0x2000), RingFeatures::default()).unwrap();
        desc(&mem, 0, TABLE, 16, DESC_F_INDIRECT, 0);
        entry(&mem, 0, 0x10000, 8, 0, 0);
        assert_eq!(plain.chain(&mem, 0).unwrap_err(), ChainError::IndirectNotNegotiated);
        assert!(ring.chain(&mem, 0).is_ok(), "the same chain, negotiated");
    }

    #[test]
    fn test_indirect_chains() {
        let (mem, ring) = ring();
        // As Linux lays a request out with INDIRECT_DESC: one ring descriptor, the whole chain in
        // the table, linked out of order here.
        desc(&mem, 5, TABLE, 48, DESC_F_INDIRECT, 0);
        entry(&mem, 0, 0x10000, 40, DESC_F_NEXT, 2);
        entry(&mem, 2, 0x20000, 16, DESC_F_NEXT | DESC_F_WRITE, 1);
        entry(&mem, 1, 0x30000, 100, DESC_F_WRITE, 0);
        let c = ring.chain(&mem, 5).unwrap();
        assert_eq!((c.readable_len(), c.writable_len()), (40, 116));
        assert_eq!(c.writable[1], Segment { addr: GuestAddress(0x30000), len: 100 });
        write_reply(&mem, &c, &[7u8; 30]).unwrap();
        let mut tail = [0u8; 14];
        mem.read_slice(&mut tail, GuestAddress(0x30000)).unwrap();
        assert_eq!(tail, [7u8; 14], "the reply continues into the table's second writable buffer");

        // Direct descriptors first, then an indirect one (§2.6.5.3.2: a device must take that),
        // whose WRITE flag the device must ignore: the table's entries decide.
        desc(&mem, 2, 0x10000, 8, DESC_F_NEXT, 6);
        desc(&mem, 6, TABLE, 32, DESC_F_INDIRECT | DESC_F_WRITE, 0);
        entry(&mem, 0, 0x11000, 24, DESC_F_NEXT, 1);
        entry(&mem, 1, 0x12000, 64, DESC_F_WRITE, 0);
        let c = ring.chain(&mem, 2).unwrap();
        assert_eq!((c.readable.len(), c.writable.len()), (2, 1));
        assert_eq!((c.readable_len(), c.writable_len()), (32, 64));

        // The longest chain allowed: the queue size, in the table alone or with direct ones.
        desc(&mem, 0, TABLE, 16 * u32::from(SIZE), DESC_F_INDIRECT, 0);
        linked(&mem, TABLE, 0, SIZE);
        assert_eq!(ring.chain(&mem, 0).unwrap().readable.len(), usize::from(SIZE));
        linked(&mem, 0, 1, 2);
        desc(&mem, 2, 0x10000, 8, DESC_F_NEXT, 3);
        desc(&mem, 3, TABLE, 16 * u32::from(SIZE - 2), DESC_F_INDIRECT, 0);
        linked(&mem, TABLE, 0, SIZE - 2);
        assert_eq!(ring.chain(&mem, 1).unwrap().readable.len(), usize::from(SIZE));
    }

    #[test]
    fn test_rings_outside_memory_are_refused() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(
            Ring::new(&mem, 256, (0, 0x800, 0xc00), RingFeatures::default()).is_err(),
            "descriptor table past the end"
        );
        assert!(
            Ring::new(&mem, 8, (0, 0x800, u64::MAX - 8), RingFeatures::default()).is_err(),
            "used ring overflowing"
        );
    }

    #[test]
    fn test_event_idx_notification() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
        let ring = Ring::new(&mem, SIZE, (0, 0x1000, 0x2000), EVENT_IDX).unwrap();
        // used_event (after the avail ring's entries) = 4: notify when the index passes 4.
        mem.write_obj(4u16.to_le(), GuestAddress(0x1000 + 4 + 2 * u64::from(SIZE))).unwrap();
        assert!(!ring.needs_notification(&mem, 2, 3).unwrap());
        assert!(ring.needs_notification(&mem, 4, 5).unwrap());
        assert!(ring.arm_kick(&mem, 0).is_ok_and(|more| !more));
        let avail_event: u16 = mem.read_obj(GuestAddress(0x2000 + 4 + 8 * u64::from(SIZE))).unwrap();
        assert_eq!(avail_event, 0);
    }

    /// Guest RAM as a VMM shares it: one memfd, mapped twice. The device's mapping is what the
    /// backend gets from SET_MEM_TABLE; the driver's is a separate mapping of the same pages, so
    /// whatever the driver reads there went through real shared memory, not a copy.
    fn shared_memory(size: usize) -> (GuestMemoryMmap, GuestMemoryMmap) {
        let file = std::fs::File::from(crate::sys::memfd_create(c"ring-test").unwrap());
        file.set_len(size as u64).unwrap();
        let map = |f: std::fs::File| {
            GuestMemoryMmap::from_ranges_with_files([(GuestAddress(0), size, Some(vm_memory::FileOffset::new(f, 0)))])
                .unwrap()
        };
        (map(file.try_clone().unwrap()), map(file))
    }

    /// What the driver sees of the used ring at 0x2000: (flags, idx) and element `slot`'s
    /// (id, len), all little-endian in guest memory.
    fn driver_used(driver: &GuestMemoryMmap, slot: u16) -> ((u16, u16), (u32, u32)) {
        let at = |off: u64| GuestAddress(0x2000 + off);
        let flags = u16::from_le(driver.read_obj(at(0)).unwrap());
        let idx = u16::from_le(driver.load(at(2), Ordering::Acquire).unwrap());
        let elem = 4 + 8 * u64::from(slot);
        let id = u32::from_le(driver.read_obj(at(elem)).unwrap());
        let len = u32::from_le(driver.read_obj(at(elem + 4)).unwrap());
        ((flags, idx), (id, len))
    }

    /// The driver asks to be notified once the used index passes `used_event` (EVENT_IDX).
    fn set_used_event(driver: &GuestMemoryMmap, used_event: u16) {
        driver.store(used_event.to_le(), GuestAddress(0x1000 + 4 + 2 * u64::from(SIZE)), Ordering::Release).unwrap();
    }

    #[test]
    fn test_used_put_is_what_the_driver_reads_across_a_wrap() {
        let (device, driver) = shared_memory(MEM);
        let ring = Ring::new(&device, SIZE, (0, 0x1000, 0x2000), EVENT_IDX).unwrap();
        // Near the end of the u16 index space: the puts below wrap the ring slots (8) and the
        // index itself (65535 -> 0) together, as a long-running queue does.
        let start = u16::MAX - 2;
        ring.publish_used_idx(&device, start).unwrap();
        set_used_event(&driver, u16::MAX);
        let mut old = start;
        // (head, len, whether the driver must be notified: only the put that moves the index
        // past used_event = 65535, i.e. to 0)
        let puts = [(3u16, 16u32, false), (5, 4096, false), (0, 80, true), (7, 0, false), (1, 1 << 20, false)];
        for (n, &(head, len, notify)) in puts.iter().enumerate() {
            let new = old.wrapping_add(1);
            // 1/2 as the queue puts: the element first, not yet visible...
            ring.write_used_elem(&device, old, head, len).unwrap();
            let ((_, idx), elem) = driver_used(&driver, old % SIZE);
            assert_eq!(idx, old, "put #{n}: the element alone does not move the used index");
            assert_eq!(elem, (u32::from(head), len), "put #{n}: the element is in slot {}", old % SIZE);
            // 2/2 ...then the index that publishes it.
            ring.publish_used_idx(&device, new).unwrap();
            let ((flags, idx), _) = driver_used(&driver, old % SIZE);
            assert_eq!((flags, idx), (0, new), "put #{n}: used.idx as the driver reads it; flags untouched");
            assert_eq!(ring.used_idx(&device).unwrap(), new);
            assert_eq!(ring.needs_notification(&device, old, new).unwrap(), notify, "put #{n}: {old} -> {new}");
            old = new;
        }
        assert_eq!(old, 2, "the index wrapped");
        // Every element of the five puts is still in its slot: 65533 % 8 = 5 up to 1.
        for (n, &(head, len, _)) in puts.iter().enumerate() {
            let slot = start.wrapping_add(n as u16) % SIZE;
            assert_eq!(driver_used(&driver, slot).1, (u32::from(head), len), "slot {slot} after the wrap");
        }
        // A batch published at once notifies iff it passes used_event somewhere inside.
        assert!(ring.needs_notification(&device, start, 2).unwrap(), "65533 -> 2 passes 65535");
        set_used_event(&driver, 5);
        assert!(!ring.needs_notification(&device, start, 2).unwrap(), "65533 -> 2 stops short of 5");
        set_used_event(&driver, 1);
        assert!(ring.needs_notification(&device, start, 2).unwrap(), "65533 -> 2 passes 1");
        assert!(!ring.needs_notification(&device, 2, 2).unwrap(), "no new element: no notification");
        // The avail_event field after the used ring is the device's to write, and it was not.
        let avail_event: u16 = driver.read_obj(GuestAddress(0x2000 + 4 + 8 * u64::from(SIZE))).unwrap();
        assert_eq!(avail_event, 0);
    }
}
