//! Fuzz campaign 2: random descriptor chains into a running phoenixfsd's vhost-user queue,
//! through the test frontend that plays QEMU (tests/vhost/frontend.rs). Each case is one fresh
//! daemon and a seeded run of batches; a batch writes random descriptors (addresses in the
//! queue's buffer area, in the rings, past the end of guest memory or wrapping around; lengths
//! from 0 to 4 GiB; NEXT, WRITE, INDIRECT and unknown flags; links inside and outside the
//! table, loops) over buffers holding real FUSE requests and garbage, and offers 1-8 distinct
//! heads. INDIRECT_DESC is negotiated: a random table of such descriptors sits in queue 1's ring
//! slot, and some plausible chains are laid out in a table of their own, as Linux does. Checked
//! after every batch:
//! - every head offered comes back in exactly one used element, and nothing else does (the
//!   frontend also fails a used index that runs ahead or an element that was not signalled);
//! - the worker was not killed (the supervisor's child is the same pid);
//! - guest memory the chains never offered as writable (queue 0's ring and buffer area, the gap
//!   before queue 1's buffers) is byte-for-byte unchanged;
//! - the daemon still answers a good request (GETATTR of the root) on the same queue.
//!
//! Budget and replay: tests/common/fuzz.rs (`PHOENIXFS_FUZZ_SECONDS`, `_CASES`, `_SEED`).

use std::collections::BTreeSet;
use std::time::Duration;

use phoenixfsd::fuse::Op;
use phoenixfsd::fuse::abi::{self, Opcode};
use phoenixfsd::fuse::encode::{Sender, encode_request, frame};
use vm_memory::{Bytes, GuestAddress};

mod common;

use common::backend::{Backend, check_reply};
use common::children_of;
use common::frontend::{
    FrontendOptions, GUEST_MEM_SIZE, QueueHandle, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use common::fuzz::{CaseStats, Rng, campaign};

/// The CI budget of this campaign, in seconds.
const CI_SECONDS: u64 = 55;
const QUEUE_SIZE: u16 = 64;
/// Indirect tables live in queue 1's ring slot past its rings (at this offset, up to
/// `TABLE_ZONE` bytes), where no chain can write: writable buffers below the buffer area are
/// moved into it. The random table first (`RANDOM_ENTRIES`, more than a queue's worth), then
/// one table per head for plausible chains.
const TABLES_AT: u64 = 0x2000;
const TABLE_ZONE: u64 = 0x4000;
const RANDOM_ENTRIES: u16 = QUEUE_SIZE + 16;
const HEAD_TABLES_AT: u64 = TABLES_AT + 0x1000;
const HEAD_TABLE_ENTRIES: u64 = 8;
/// Buffers the batches' descriptors point at: `SLOTS` slots of `SLOT` bytes at the start of
/// queue 1's buffer area, each a FUSE request, a damaged one or garbage.
const SLOT: u64 = 4096;
const SLOTS: u64 = 16;

/// Fills the buffer slots: requests the daemon can serve, and ones it must refuse.
fn fill_slots(rng: &mut Rng, q: &QueueHandle, unique: &mut u64) -> Vec<u32> {
    let mut lens = Vec::new();
    for i in 0..SLOTS {
        *unique += 1;
        let s = Sender { unique: *unique, nodeid: abi::ROOT_ID, uid: 0, gid: 0, pid: 1 };
        let n = rng.below(64) as usize;
        let garbage = rng.below(SLOT) as usize;
        let mut req = match rng.below(8) {
            0 => encode_request(s, &Op::Getattr { fh: None }),
            1 => encode_request(s, &Op::Lookup { name: c"hello.txt" }),
            2 => encode_request(s, &Op::Statfs),
            3 => encode_request(s, &Op::Forget { nlookup: 1 }),
            4 => encode_request(s, &Op::Mkdir { arg: abi::MkdirIn { mode: 0o755, umask: 0 }, name: c"d" }),
            5 => {
                let opcode = rng.below(60) as u32;
                frame(s, opcode, &rng.bytes(n))
            }
            6 => frame(s, Opcode::Read as u32, &rng.bytes(40)),
            _ => rng.bytes(garbage),
        };
        if !req.is_empty() && rng.chance(15) {
            let at = rng.below(req.len() as u64) as usize;
            req[at] ^= 1 << rng.below(8);
        }
        q.mem().write_slice(&req, GuestAddress(q.data_addr().0 + i * SLOT)).unwrap();
        lens.push(req.len() as u32);
    }
    lens
}

/// A chain as a driver lays a request out (the request, readable, in one or two pieces; then
/// one or two writable reply buffers of its own), from descriptors taken off `free`, or, one in
/// three, in the head's indirect table (the first piece sometimes still in the ring before it);
/// one field of the ring's part of one chain in three is then overwritten with a random value.
fn plausible_chain(rng: &mut Rng, q: &QueueHandle, head: u16, lens: &[u32], free: &mut Vec<u16>) -> Vec<Desc> {
    let slot = rng.below(SLOTS);
    let (addr, len) = (q.data_addr().0 + slot * SLOT, lens[slot as usize]);
    let mut pieces = vec![(addr, len, 0)];
    if len > 1 && rng.chance(30) {
        let cut = rng.range(1, u64::from(len)) as u32;
        pieces = vec![(addr, cut, 0), (addr + u64::from(cut), len - cut, 0)];
    }
    let reply = q.data_addr().0 + SLOTS * SLOT + u64::from(head) * 8192;
    let room = *rng.pick(&[0u32, 8, 16, 100, 4096, 8192]);
    if room > 0 {
        if room > 16 && rng.chance(50) {
            pieces.push((reply, 16, VRING_DESC_F_WRITE));
            pieces.push((reply + 16, room - 16, VRING_DESC_F_WRITE));
        } else {
            pieces.push((reply, room, VRING_DESC_F_WRITE));
        }
    }
    if rng.chance(33) {
        let direct = if pieces.len() > 1 && rng.chance(25) { 1 } else { 0 };
        let table = GuestAddress(q.desc_addr().0 + HEAD_TABLES_AT + u64::from(head) * 16 * HEAD_TABLE_ENTRIES);
        let in_table = pieces.split_off(direct);
        for (k, &(a, l, f)) in in_table.iter().enumerate() {
            let last = k + 1 == in_table.len();
            let flags = if last { f } else { f | VRING_DESC_F_NEXT };
            q.write_table_entry(table, k as u16, GuestAddress(a), l, flags, k as u16 + 1).unwrap();
        }
        pieces.push((table.0, 16 * in_table.len() as u32, VRING_DESC_F_INDIRECT));
    }
    let mut idx = vec![head];
    for _ in 1..pieces.len() {
        idx.push(free.pop().unwrap_or_else(|| rng.below(u64::from(QUEUE_SIZE)) as u16));
    }
    let mut chain: Vec<Desc> = pieces
        .iter()
        .enumerate()
        .map(|(k, &(a, l, f))| {
            let last = k + 1 == pieces.len();
            let next = if last { 0 } else { idx[k + 1] };
            (idx[k], GuestAddress(a), l, if last { f } else { f | VRING_DESC_F_NEXT }, next)
        })
        .collect();
    if rng.chance(33) {
        let k = rng.below(chain.len() as u64) as usize;
        let (addr, len, flags, next) = descriptor(rng, q);
        let d = &mut chain[k];
        match rng.below(4) {
            0 => d.1 = addr,
            1 => d.2 = len,
            2 => d.3 = flags,
            _ => d.4 = next,
        }
        if d.3 & VRING_DESC_F_WRITE != 0 && d.1.0 < q.data_addr().0 {
            d.1 = GuestAddress(reply);
        }
    }
    chain
}

/// A descriptor to write: (index, address, length, flags, next).
type Desc = (u16, GuestAddress, u32, u16, u16);

/// One random descriptor, as a hostile driver could write it.
fn descriptor(rng: &mut Rng, q: &QueueHandle) -> (GuestAddress, u32, u16, u16) {
    let mut flags = 0;
    if rng.chance(60) {
        flags |= VRING_DESC_F_NEXT;
    }
    if rng.chance(40) {
        flags |= VRING_DESC_F_WRITE;
    }
    if rng.chance(8) {
        flags |= VRING_DESC_F_INDIRECT;
    }
    if rng.chance(4) {
        flags |= 1 << rng.range(3, 16);
    }
    let data = q.data_addr().0;
    let end = GUEST_MEM_SIZE as u64;
    let addr = match rng.below(10) {
        0..=4 => data + rng.below(SLOTS) * SLOT,
        5 => data + rng.below(q.data_len()),
        // Readable from the rings is harmless; writable there would be the guest scribbling on
        // its own rings, which stops the queue by design, so it stays in the buffer area.
        6 if flags & VRING_DESC_F_WRITE == 0 => q.desc_addr().0 + rng.below(4096),
        6 => end - rng.range(1, 8192),
        7 => end + rng.interesting() % (1 << 20),
        8 => u64::MAX - rng.below(1 << 16),
        _ => rng.interesting(),
    };
    // A writable buffer lands in queue 1's area or outside guest memory, never below it: what
    // lies below is the memory checked for stray writes.
    let addr = if flags & VRING_DESC_F_WRITE != 0 && addr < data { data + SLOTS * SLOT + addr % SLOT } else { addr };
    let len = match rng.below(8) {
        0 => 0,
        1 => rng.below(64) as u32,
        2 => 16,
        3 => 40,
        4 => 4096,
        5 => rng.below(2 << 20) as u32,
        6 => u32::MAX - rng.below(4) as u32,
        _ => rng.u32(),
    };
    let next = match rng.below(10) {
        0..=6 => rng.below(u64::from(QUEUE_SIZE)) as u16,
        7 => QUEUE_SIZE + rng.below(1000) as u16,
        _ => rng.next_u64() as u16,
    };
    (GuestAddress(addr), len, flags, next)
}

/// Where an indirect descriptor inside guest memory may point: at a 16-byte boundary of the
/// table zone, which holds only descriptors this fuzzer made (or zeros). A table read from
/// request bytes or garbage could name any memory as writable, and the daemon would rightly
/// write there. Outside guest memory it stays (refused).
fn aim_table(q: &QueueHandle, flags: u16, addr: GuestAddress) -> GuestAddress {
    let zone = q.desc_addr().0 + TABLES_AT;
    if flags & VRING_DESC_F_INDIRECT == 0
        || addr.0 >= GUEST_MEM_SIZE as u64
        || ((zone..zone + TABLE_ZONE).contains(&addr.0) && addr.0.is_multiple_of(16))
    {
        return addr;
    }
    // Half of them at the random table's start, where a walk finds the most.
    GuestAddress(zone + if addr.0.is_multiple_of(2) { 0 } else { (addr.0 % TABLE_ZONE) & !15 })
}

/// Rewrites the random indirect table: descriptors as `descriptor` makes them.
fn fill_random_table(rng: &mut Rng, q: &QueueHandle) {
    let table = GuestAddress(q.desc_addr().0 + TABLES_AT);
    for i in 0..RANDOM_ENTRIES {
        let (addr, len, flags, next) = descriptor(rng, q);
        q.write_table_entry(table, i, aim_table(q, flags, addr), len, flags, next).unwrap();
    }
}

/// Guest memory no chain offered as writable: queue 0's ring slot, and everything from the end
/// of queue 1's ring slot up to queue 1's buffer area (queue 0's buffers included).
fn untouchable(q: &QueueHandle) -> [(u64, u64); 2] {
    let ring_slot = q.desc_addr().0;
    [(0, ring_slot), (ring_slot + (64 << 10), q.data_addr().0)]
}

fn read_ranges(q: &QueueHandle, ranges: &[(u64, u64)]) -> Vec<Vec<u8>> {
    ranges
        .iter()
        .map(|&(a, b)| {
            let mut v = vec![0u8; (b - a) as usize];
            q.mem().read_slice(&mut v, GuestAddress(a)).unwrap();
            v
        })
        .collect()
}

fn vhost_case(seed: u64, stats: &mut CaseStats) {
    let mut rng = Rng::new(seed);
    let opts = FrontendOptions { num_queues: 2, queue_size: QUEUE_SIZE, event_idx: false, indirect: true };
    let (b, mut fe) = Backend::with_frontend_options(&["-o", "log_level=error"], opts);
    let worker = children_of(b.pid());
    assert_eq!(worker.len(), 1, "one worker");
    let mut q = fe.take_queue(1).unwrap();
    q.set_timeout(Duration::from_secs(5));
    let ranges = untouchable(&q);
    let before = read_ranges(&q, &ranges);
    // Each batch compares the first MiB of each range (the rest at the end of the case).
    let near: Vec<(u64, u64)> = ranges.iter().map(|&(a, b)| (a, b.min(a + (1 << 20)))).collect();
    let near_before = read_ranges(&q, &near);
    let mut replied = 0u64;
    let mut unique = 1000;
    for batch in 0..rng.range(5, 40) {
        let lens = fill_slots(&mut rng, &q, &mut unique);
        fill_random_table(&mut rng, &q);
        // Descriptor indices in random order: heads first, then the chains' other descriptors.
        let mut free: Vec<u16> = (0..QUEUE_SIZE).collect();
        for i in (1..free.len()).rev() {
            free.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let heads: BTreeSet<u16> = free.split_off(free.len() - rng.range(1, 9) as usize).into_iter().collect();
        let mut descs: Vec<Desc> = Vec::new();
        for &head in &heads {
            if rng.chance(50) {
                descs.extend(plausible_chain(&mut rng, &q, head, &lens, &mut free));
            } else {
                for k in 0..rng.range(1, 5) {
                    let i = match (k, free.pop()) {
                        (0, _) => head,
                        (_, Some(i)) if rng.chance(80) => i,
                        _ => rng.below(u64::from(QUEUE_SIZE)) as u16,
                    };
                    let (addr, len, flags, next) = descriptor(&mut rng, &q);
                    descs.push((i, addr, len, flags, next));
                }
            }
        }
        let mut chains = Vec::new();
        for &(i, addr, len, flags, next) in &descs {
            let addr = aim_table(&q, flags, addr);
            q.write_descriptor(i, addr, len, flags, next).unwrap();
            chains.push(format!("{i}: {:#x}+{len:#x} f{flags:#x} n{next}", addr.0));
        }
        let what = || format!("batch {batch}, heads {heads:?}, descriptors [{}]", chains.join(", "));
        for &head in &heads {
            q.publish(head).unwrap();
        }
        let mut used = BTreeSet::new();
        for _ in 0..heads.len() {
            let (id, len) = q.wait_used().unwrap_or_else(|e| panic!("{}: {e}", what()));
            assert!(
                id < u32::from(QUEUE_SIZE) && heads.contains(&(id as u16)),
                "used id {id} was not offered: {}",
                what()
            );
            assert!(used.insert(id), "head {id} used twice: {}", what());
            replied += u64::from(len > 0);
        }
        stats.executions += heads.len() as u64;
        assert_eq!(children_of(b.pid()), worker, "the worker was replaced: {}", what());
        assert!(read_ranges(&q, &near) == near_before, "memory no chain offered as writable changed: {}", what());
        unique += 1;
        let good = Op::Getattr { fh: None };
        let req = encode_request(Sender { unique, nodeid: abi::ROOT_ID, uid: 0, gid: 0, pid: 1 }, &good);
        let reply = q.request(&req, 4096).unwrap_or_else(|e| panic!("good request after {}: {e}", what()));
        assert_eq!(check_reply(&good, unique, &reply).0, 0, "GETATTR of the root after {}", what());
    }
    assert!(read_ranges(&q, &ranges) == before, "memory no chain offered as writable changed");
    if std::env::var("PHOENIXFS_FUZZ_VERBOSE").is_ok() {
        eprintln!("case {seed}: {} chains, {replied} answered with a reply", stats.executions);
    }
}

#[test]
fn test_fuzz_vhost_descriptor_chains() {
    campaign("vhost-user chains", CI_SECONDS, vhost_case);
}
