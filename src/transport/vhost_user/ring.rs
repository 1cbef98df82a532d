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

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const DESC_F_INDIRECT: u16 = 4;
/// avail.flags: the driver asks not to be interrupted (only without EVENT_IDX).
const AVAIL_F_NO_INTERRUPT: u16 = 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("head {0} is outside the queue")]
    HeadOutOfRange(u16),
    #[error("descriptor {0} links to {1}, outside the queue")]
    NextOutOfRange(u16, u16),
    #[error("the chain is longer than the queue (a loop)")]
    Loop,
    #[error("indirect descriptor (VIRTIO_F_INDIRECT_DESC was not offered)")]
    Indirect,
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    #[error("descriptor {index} ({len} bytes at {addr:#x}) lies outside guest memory")]
    OutsideMemory { index: u16, addr: u64, len: u32 },
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
    pub fn readable_len(&self) -> u64 {
        self.readable.iter().map(|s| u64::from(s.len)).sum()
    }

    pub fn writable_len(&self) -> u64 {
        self.writable.iter().map(|s| u64::from(s.len)).sum()
    }
}

/// The guest-physical addresses of one queue's three parts, checked to lie in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct Ring {
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    size: u16,
    event_idx: bool,
}

impl Ring {
    pub fn new(
        mem: &GuestMemoryMmap,
        size: u16,
        (desc, avail, used): (u64, u64, u64),
        event_idx: bool,
    ) -> Result<Ring, RingError> {
        let n = usize::from(size);
        for (what, addr, len) in
            [("descriptor table", desc, 16 * n), ("avail ring", avail, 6 + 2 * n), ("used ring", used, 6 + 8 * n)]
        {
            if !mem.check_range(GuestAddress(addr), len) {
                return Err(RingError::OutsideMemory { what, addr, len });
            }
        }
        Ok(Ring { desc: GuestAddress(desc), avail: GuestAddress(avail), used: GuestAddress(used), size, event_idx })
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
        if self.event_idx {
            let at = self.used.unchecked_add(4 + 8 * u64::from(self.size));
            mem.store(next.to_le(), at, Ordering::Release).map_err(mem_err)?;
            std::sync::atomic::fence(Ordering::SeqCst);
        }
        Ok(self.avail_idx(mem)? != next)
    }

    /// Whether the driver wants an interrupt now that the used index moved from `old` to `new`.
    pub fn needs_notification(&self, mem: &GuestMemoryMmap, old: u16, new: u16) -> Result<bool, RingError> {
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.event_idx {
            let at = self.avail.unchecked_add(4 + 2 * u64::from(self.size));
            let used_event = u16::from_le(mem.load(at, Ordering::Acquire).map_err(mem_err)?);
            // vring_need_event: did the index pass `used_event` in this step?
            Ok(new.wrapping_sub(used_event).wrapping_sub(1) < new.wrapping_sub(old))
        } else {
            let flags = u16::from_le(mem.load(self.avail, Ordering::Acquire).map_err(mem_err)?);
            Ok(flags & AVAIL_F_NO_INTERRUPT == 0)
        }
    }

    /// Walks the chain starting at `head`: at most `size` descriptors, each inside guest memory,
    /// readable ones before writable ones, no indirect tables (not offered).
    pub fn chain(&self, mem: &GuestMemoryMmap, head: u16) -> Result<Chain, ChainError> {
        if head >= self.size {
            return Err(ChainError::HeadOutOfRange(head));
        }
        let mut chain = Chain::default();
        let mut index = head;
        for _ in 0..self.size {
            let mut raw = [0u8; 16];
            mem.read_slice(&mut raw, self.desc.unchecked_add(16 * u64::from(index)))
                .map_err(|e| ChainError::Memory(e.to_string()))?;
            let addr = u64::from_le_bytes(raw[0..8].try_into().expect("8 bytes"));
            let len = u32::from_le_bytes(raw[8..12].try_into().expect("4 bytes"));
            let flags = u16::from_le_bytes([raw[12], raw[13]]);
            let next = u16::from_le_bytes([raw[14], raw[15]]);
            if flags & DESC_F_INDIRECT != 0 {
                return Err(ChainError::Indirect);
            }
            // check_range also refuses addr + len overflowing the address space.
            if len > 0 && !mem.check_range(GuestAddress(addr), len as usize) {
                return Err(ChainError::OutsideMemory { index, addr, len });
            }
            let segment = Segment { addr: GuestAddress(addr), len };
            if flags & DESC_F_WRITE != 0 {
                chain.writable.push(segment);
            } else if chain.writable.is_empty() {
                chain.readable.push(segment);
            } else {
                return Err(ChainError::ReadableAfterWritable);
            }
            if flags & DESC_F_NEXT == 0 {
                return Ok(chain);
            }
            if next >= self.size {
                return Err(ChainError::NextOutOfRange(index, next));
            }
            index = next;
        }
        Err(ChainError::Loop)
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

    /// 1 MiB of anonymous guest memory with a ring at 0 (descriptors), 0x1000 (avail), 0x2000
    /// (used); buffers above 0x10000.
    fn ring() -> (GuestMemoryMmap, Ring) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
        let ring = Ring::new(&mem, SIZE, (0, 0x1000, 0x2000), false).unwrap();
        (mem, ring)
    }

    fn desc(mem: &GuestMemoryMmap, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&d, GuestAddress(16 * u64::from(i))).unwrap();
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
                ChainError::NextOutOfRange(0, 99),
            ),
            (
                "buffer outside memory",
                Box::new(|| desc(&mem, 0, MEM as u64 - 4, 8, 0, 0)),
                0,
                ChainError::OutsideMemory { index: 0, addr: MEM as u64 - 4, len: 8 },
            ),
            (
                "address + length overflows",
                Box::new(|| desc(&mem, 0, u64::MAX - 2, 16, 0, 0)),
                0,
                ChainError::OutsideMemory { index: 0, addr: u64::MAX - 2, len: 16 },
            ),
            ("indirect", Box::new(|| desc(&mem, 0, 0x10000, 16, DESC_F_INDIRECT, 0)), 0, ChainError::Indirect),
            (
                "readable after writable",
                Box::new(|| {
                    desc(&mem, 0, 0x10000, 8, DESC_F_NEXT | DESC_F_WRITE, 1);
                    desc(&mem, 1, 0x10000, 8, 0, 0);
                }),
                0,
                ChainError::ReadableAfterWritable,
            ),
        ];
        for (what, setup, head, want) in cases {
            setup();
            assert_eq!(ring.chain(&mem, head).unwrap_err(), want, "{what}");
        }
    }

    #[test]
    fn test_rings_outside_memory_are_refused() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(Ring::new(&mem, 256, (0, 0x800, 0xc00), false).is_err(), "descriptor table past the end");
        assert!(Ring::new(&mem, 8, (0, 0x800, u64::MAX - 8), false).is_err(), "used ring overflowing");
    }

    #[test]
    fn test_event_idx_notification() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
        let ring = Ring::new(&mem, SIZE, (0, 0x1000, 0x2000), true).unwrap();
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
        let ring = Ring::new(&device, SIZE, (0, 0x1000, 0x2000), true).unwrap();
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
