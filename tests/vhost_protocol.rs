//! phoenixfsd as a vhost-user-fs backend, driven by the test frontend (tests/vhost/frontend.rs)
//! over a real socket with memfd guest memory: the handshake QEMU performs, FUSE requests in
//! descriptor chains, several queues, EVENT_IDX on and off, and hostile chains.

use std::sync::atomic::Ordering;
use std::time::Duration;

use phoenixfsd::fuse::Op;
use phoenixfsd::fuse::abi::{self, EntryOut, OutHeader};
use phoenixfsd::fuse::encode::{Sender, encode_request};
use vm_memory::{Bytes, GuestAddress};
use zerocopy::FromBytes;

mod common;

use common::backend::{Backend, call, check_reply, init, open_hello, wait_exit};
use common::bridge::{Bridge, BridgeOptions};
use common::frontend::{
    Frontend, FrontendOptions, GUEST_MEM_SIZE, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use common::{children_of, sys, workload};

#[test]
fn test_handshake_and_lookup_over_the_rings() {
    let b = Backend::start(&[]);
    std::fs::write(b.share.join("hello.txt"), b"hello").unwrap();
    let mut fe = Frontend::connect(b.socket(), 3, 128).unwrap_or_else(|e| panic!("handshake: {e}"));
    let out = init(&mut fe);
    assert_eq!((out.major, out.minor), (7, abi::KERNEL_MINOR_VERSION));
    for queue in [1, 2] {
        let (err, payload) = call(&mut fe, queue, 10 + queue as u64, abi::ROOT_ID, &Op::Lookup { name: c"hello.txt" });
        assert_eq!(err, 0, "LOOKUP on queue {queue}");
        let entry = EntryOut::read_from_bytes(&payload).unwrap();
        assert_eq!(entry.attr.size, 5);
    }
    let (err, _) = call(&mut fe, 1, 20, abi::ROOT_ID, &Op::Lookup { name: c"missing" });
    assert_eq!(err, -libc::ENOENT);
}

#[test]
fn test_event_idx_on_and_off() {
    for event_idx in [false, true] {
        let b = Backend::start(&[]);
        std::fs::write(b.share.join("hello.txt"), b"hello").unwrap();
        let opts = FrontendOptions { num_queues: 2, queue_size: 8, event_idx, indirect: false };
        let mut fe = Frontend::connect_with(b.socket(), opts).unwrap_or_else(|e| panic!("handshake: {e}"));
        assert_ne!(fe.offered_features & VIRTIO_RING_F_EVENT_IDX, 0, "EVENT_IDX is offered");
        init(&mut fe);
        // 3 times round an 8-entry ring: the indices wrap.
        for i in 0..24u64 {
            let (err, _) = call(&mut fe, 1, 10 + i, abi::ROOT_ID, &Op::Lookup { name: c"hello.txt" });
            assert_eq!(err, 0, "LOOKUP {i} with event_idx {event_idx}");
            if event_idx {
                // The device asks for a kick at the next avail index before it waits.
                let q = fe.queue(1).unwrap();
                q.wait_avail_event_armed(Duration::from_secs(2)).unwrap_or_else(|e| panic!("LOOKUP {i}: {e}"));
            }
        }
    }
}

#[test]
fn test_request_queues_serve_in_parallel() {
    let b = Backend::start(&[]);
    let mut fe = Frontend::connect(b.socket(), 5, 64).unwrap_or_else(|e| panic!("handshake: {e}"));
    init(&mut fe);
    let queues = fe.take_queues();
    let threads: Vec<_> = queues
        .into_iter()
        .skip(1)
        .map(|mut q| {
            std::thread::spawn(move || {
                let index = q.index();
                for i in 0..100u64 {
                    let name = std::ffi::CString::new(format!("q{index}-{i}")).unwrap();
                    let unique = (index as u64) << 32 | i;
                    let mkdir = Op::Mkdir { arg: abi::MkdirIn { mode: 0o755, umask: 0 }, name: &name };
                    let req = encode_request(Sender { unique, nodeid: abi::ROOT_ID, uid: 0, gid: 0, pid: 1 }, &mkdir);
                    let reply = q.request(&req, 4096).unwrap_or_else(|e| panic!("queue {index}: {e}"));
                    let (err, _) = check_reply(&mkdir, unique, &reply);
                    assert_eq!(err, 0, "MKDIR {name:?} on queue {index}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let made = std::fs::read_dir(&b.share).unwrap().count();
    assert_eq!(made, 400, "every MKDIR of 4 queues x 100 happened once");
}

/// One hostile chain: how to lay it out on queue 1 (descriptor writes), and its head.
struct Hostile {
    what: &'static str,
    descs: Vec<(u16, u64, u32, u16, u16)>,
    head: u16,
}

/// READ and WRITE go straight between the file and the guest's buffers, however the driver
/// scatters them: a WRITE's data in pieces of odd sizes on separate pages (one piece sharing its
/// buffer with the arguments), a READ's data over buffers behind a header buffer of its own or
/// right behind the header in one buffer, and a READ whose room is smaller than asked (a short
/// read). A WRITE whose `size` disagrees with the data it carries is refused and writes nothing.
#[test]
fn test_reads_and_writes_straight_between_guest_buffers_and_the_file() {
    let (b, mut fe) = Backend::with_frontend(&[], 2, 16);
    std::fs::write(b.share.join("hello.txt"), b"").unwrap();
    let (node, fh) = open_hello(&mut fe, libc::O_RDWR);
    let mut q = fe.take_queue(1).unwrap();
    let data = q.data_addr().0;
    let (next, wr) = (VRING_DESC_F_NEXT, VRING_DESC_F_WRITE);
    let content: Vec<u8> = (0..20_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let file = || std::fs::read(b.share.join("hello.txt")).unwrap();
    let sender = |unique| Sender { unique, nodeid: node, uid: 0, gid: 0, pid: 1 };
    let reply_at = data + (256 << 10);
    let send = |q: &mut common::frontend::QueueHandle, descs: &[(u64, u32, u16)], what: &str| {
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let link = if i + 1 < descs.len() { next } else { 0 };
            q.write_descriptor(i as u16, GuestAddress(addr), len, flags | link, i as u16 + 1).unwrap();
        }
        q.publish(0).unwrap();
        let (id, len) = q.wait_used().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(id, 0, "{what}");
        len
    };
    let header_at = |q: &common::frontend::QueueHandle, at: u64| {
        let mut h = [0u8; 16];
        q.mem().read_slice(&mut h, GuestAddress(at)).unwrap();
        OutHeader::read_from_bytes(&h).unwrap()
    };

    // WRITE 20,000 bytes at offset 100: the arguments and the first 3 data bytes in one buffer,
    // then pieces of 1, 4,095, 9,000 and the rest, each on a page of its own.
    let op = Op::Write {
        arg: abi::WriteIn { fh, offset: 100, size: content.len() as u32, ..Default::default() },
        data: &content,
    };
    let req = encode_request(sender(10), &op);
    let args = req.len() - content.len();
    let cuts = [3usize, 1, 4095, 9000, content.len() - 3 - 1 - 4095 - 9000];
    q.mem().write_slice(&req[..args + cuts[0]], GuestAddress(data)).unwrap();
    let mut descs = vec![(data, (args + cuts[0]) as u32, 0)];
    let (mut from, mut page) = (cuts[0], data + (16 << 10));
    for &n in &cuts[1..] {
        q.mem().write_slice(&content[from..from + n], GuestAddress(page + 5)).unwrap();
        descs.push((page + 5, n as u32, 0));
        (from, page) = (from + n, page + (16 << 10));
    }
    descs.push((reply_at, 4096, wr));
    assert_eq!(send(&mut q, &descs, "scattered WRITE"), 24);
    let h = header_at(&q, reply_at);
    assert_eq!((h.error, h.unique, h.len), (0, 10, 24));
    let mut out = [0u8; 8];
    q.mem().read_slice(&mut out, GuestAddress(reply_at + 16)).unwrap();
    assert_eq!(abi::WriteOut::read_from_bytes(&out).unwrap().size, content.len() as u32);
    let mut want = vec![0u8; 100];
    want.extend_from_slice(&content);
    assert_eq!(file(), want, "the file holds the scattered data in order");

    // WRITEs whose size says one byte more, or one less, than they carry: EINVAL, nothing written.
    for (unique, size) in [(11u64, content.len() as u32 + 1), (12, content.len() as u32 - 1)] {
        let op = Op::Write { arg: abi::WriteIn { fh, offset: 0, size, ..Default::default() }, data: &content };
        let req = encode_request(sender(unique), &op);
        q.mem().write_slice(&req[..args], GuestAddress(data)).unwrap();
        q.mem().write_slice(&content[..10], GuestAddress(data + 4096)).unwrap();
        q.mem().write_slice(&content[10..], GuestAddress(data + (16 << 10))).unwrap();
        let descs = [
            (data, args as u32, 0),
            (data + 4096, 10, 0),
            (data + (16 << 10), content.len() as u32 - 10, 0),
            (reply_at, 4096, wr),
        ];
        assert_eq!(send(&mut q, &descs, "WRITE with a wrong size"), 16);
        assert_eq!((header_at(&q, reply_at).error, header_at(&q, reply_at).unique), (-libc::EINVAL, unique));
        assert_eq!(file(), want, "a refused WRITE wrote nothing");
    }

    // READ 20,100 bytes at 0 into a 16-byte header buffer and pieces of 7, 10,000 and the rest.
    let op = Op::Read(abi::ReadIn { fh, offset: 0, size: want.len() as u32, ..Default::default() });
    let req = encode_request(sender(13), &op);
    q.mem().write_slice(&req, GuestAddress(data)).unwrap();
    let pieces = [
        (data + (32 << 10) + 1, 7u32),
        (data + (64 << 10) + 3, 10_000),
        (data + (96 << 10), want.len() as u32 - 10_007),
    ];
    let mut descs = vec![(data, req.len() as u32, 0), (reply_at, 16, wr)];
    descs.extend(pieces.iter().map(|&(at, n)| (at, n, wr)));
    assert_eq!(send(&mut q, &descs, "scattered READ"), 16 + want.len() as u32);
    let h = header_at(&q, reply_at);
    assert_eq!((h.error, h.unique, h.len as usize), (0, 13, 16 + want.len()));
    let mut got = Vec::new();
    for &(at, n) in &pieces {
        let mut piece = vec![0u8; n as usize];
        q.mem().read_slice(&mut piece, GuestAddress(at)).unwrap();
        got.extend_from_slice(&piece);
    }
    assert_eq!(got, want, "the scattered READ lands the file's bytes in order");

    // READ 20,100 bytes into one buffer of header + 5,000: a short read of 5,000 bytes at 1,000.
    let op = Op::Read(abi::ReadIn { fh, offset: 1000, size: want.len() as u32, ..Default::default() });
    let req = encode_request(sender(14), &op);
    q.mem().write_slice(&req, GuestAddress(data)).unwrap();
    let descs = [(data, req.len() as u32, 0), (reply_at, 16 + 5000, wr)];
    assert_eq!(send(&mut q, &descs, "READ into a smaller room"), 16 + 5000);
    let h = header_at(&q, reply_at);
    assert_eq!((h.error, h.unique, h.len), (0, 14, 16 + 5000));
    let mut got = vec![0u8; 5000];
    q.mem().read_slice(&mut got, GuestAddress(reply_at + 16)).unwrap();
    assert_eq!(got, want[1000..6000], "a short read of what fits");
    drop(b);
}

#[test]
fn test_hostile_chains_are_dropped_and_change_nothing() {
    let (b, mut fe) = Backend::with_frontend(&[], 2, 16);
    let worker = children_of(b.pid());
    let mut q = fe.take_queue(1).unwrap();
    let data = q.data_addr().0;
    // A well-formed LOOKUP in the data area, for the chains that carry a real request.
    let lookup = Op::Lookup { name: c"hello.txt" };
    let req = encode_request(Sender { unique: 77, nodeid: abi::ROOT_ID, uid: 0, gid: 0, pid: 1 }, &lookup);
    q.mem().write_slice(&req, GuestAddress(data)).unwrap();
    let (len, reply_at) = (req.len() as u32, data + 4096);
    let outside = GUEST_MEM_SIZE as u64 + 4096;
    let (next, write) = (VRING_DESC_F_NEXT, VRING_DESC_F_WRITE);
    let cases = vec![
        Hostile { what: "request outside guest memory", descs: vec![(0, outside, 64, 0, 0)], head: 0 },
        Hostile { what: "address + length overflows", descs: vec![(0, u64::MAX - 8, 64, 0, 0)], head: 0 },
        Hostile {
            what: "reply buffer outside guest memory",
            descs: vec![(0, data, len, next, 1), (1, outside, 4096, write, 0)],
            head: 0,
        },
        Hostile {
            what: "looping chain",
            descs: vec![(2, data, len, next, 3), (3, reply_at, 64, next | write, 2)],
            head: 2,
        },
        Hostile { what: "link outside the queue", descs: vec![(4, data, len, next, 999)], head: 4 },
        Hostile {
            what: "indirect descriptor, INDIRECT_DESC not negotiated",
            descs: vec![(5, data, 64, VRING_DESC_F_INDIRECT, 0)],
            head: 5,
        },
        Hostile {
            what: "readable after writable",
            descs: vec![(6, reply_at, 64, next | write, 7), (7, data, len, 0, 0)],
            head: 6,
        },
        Hostile {
            what: "reply buffer too short for a header",
            descs: vec![(8, data, len, next, 9), (9, reply_at, 8, write, 0)],
            head: 8,
        },
        Hostile { what: "garbage instead of a FUSE header", descs: vec![(10, data + 8192, 10, 0, 0)], head: 10 },
    ];
    for c in &cases {
        for &(i, addr, len, flags, next) in &c.descs {
            q.write_descriptor(i, GuestAddress(addr), len, flags, next).unwrap();
        }
        q.publish(c.head).unwrap();
        let (id, used_len) = q.wait_used().unwrap_or_else(|e| panic!("{}: {e}", c.what));
        assert_eq!((id, used_len), (u32::from(c.head), 0), "{}: dropped with a zero-length used element", c.what);
    }
    // A reply that does not fit but leaves room for a header: an error reply.
    q.write_descriptor(11, GuestAddress(data), len, next, 12).unwrap();
    q.write_descriptor(12, GuestAddress(reply_at), 20, write, 0).unwrap();
    q.publish(11).unwrap();
    let (id, used_len) = q.wait_used().unwrap();
    assert_eq!((id, used_len), (11, 16), "short reply buffer: a bare error header");
    let mut hdr = [0u8; 16];
    q.mem().read_slice(&mut hdr, GuestAddress(reply_at)).unwrap();
    let (out, _) = OutHeader::read_from_prefix(&hdr).unwrap();
    assert_eq!((out.error, out.unique), (-libc::EIO, 77));
    // A header whose length disagrees with the bytes sent: no header to trust, so dropped.
    let mut bad = req.clone();
    bad[0..4].copy_from_slice(&(req.len() as u32 + 100).to_le_bytes());
    q.mem().write_slice(&bad, GuestAddress(data + 8192)).unwrap();
    q.write_descriptor(13, GuestAddress(data + 8192), len, next, 14).unwrap();
    q.write_descriptor(14, GuestAddress(reply_at), 4096, write, 0).unwrap();
    q.publish(13).unwrap();
    assert_eq!(q.wait_used().unwrap(), (13, 0), "a request whose header lies about its length");

    // Nothing reached the file system, the worker never died, and the queue still serves.
    let names: Vec<_> = std::fs::read_dir(&b.share).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["hello.txt"]);
    assert_eq!(children_of(b.pid()), worker, "a hostile chain must not kill the worker");
    let reply = q.request(&req, 4096).unwrap();
    assert_eq!(check_reply(&lookup, 77, &reply).0, 0, "the queue serves on");
}

/// A table entry: (index, address, length, flags, next).
type Entry = (u16, u64, u32, u16, u16);

/// With INDIRECT_DESC negotiated: a WRITE whose request, data pages and reply buffers are all in
/// an indirect table (as Linux lays out every request then) and a LOOKUP whose reply room alone
/// is (direct descriptors first, virtio 1.1 §2.6.5.3.2) are served; every hostile table, each
/// carrying a WRITE that would change the file if it were served, is dropped with a zero-length
/// used element, and the file, the worker and the queue are as before.
#[test]
fn test_indirect_tables_served_and_hostile_ones_dropped() {
    let b = Backend::start(&[]);
    std::fs::write(b.share.join("hello.txt"), b"hello").unwrap();
    let opts = FrontendOptions { num_queues: 2, queue_size: 16, event_idx: false, indirect: true };
    let mut fe = Frontend::connect_with(b.socket(), opts).unwrap_or_else(|e| panic!("handshake: {e}"));
    assert_ne!(fe.offered_features & VIRTIO_RING_F_INDIRECT_DESC, 0, "INDIRECT_DESC is offered");
    init(&mut fe);
    let (node, fh) = open_hello(&mut fe, libc::O_RDWR);
    let worker = children_of(b.pid());
    let mut q = fe.take_queue(1).unwrap();
    let data = q.data_addr().0;
    let (pages, reply_at, table) = (data + 4096, data + (64 << 10), GuestAddress(data + (128 << 10)));
    // WRITE "HELLO, indirect" at 0: its 40-byte header and WriteIn in one buffer, the data in two
    // pieces on separate pages, as a driver maps a user buffer.
    let payload = b"HELLO, indirect";
    let write = |unique: u64| {
        let op =
            Op::Write { arg: abi::WriteIn { fh, size: payload.len() as u32, ..Default::default() }, data: payload };
        let req = encode_request(Sender { unique, nodeid: node, uid: 0, gid: 0, pid: 1 }, &op);
        let head = req.len() - payload.len();
        q.mem().write_slice(&req[..head], GuestAddress(data)).unwrap();
        q.mem().write_slice(&payload[..5], GuestAddress(pages)).unwrap();
        q.mem().write_slice(&payload[5..], GuestAddress(pages + 4096)).unwrap();
        head as u32
    };
    let head_len = write(50);
    let (next, wr) = (VRING_DESC_F_NEXT, VRING_DESC_F_WRITE);
    let write_table: Vec<Entry> = vec![
        (0, data, head_len, next, 1),
        (1, pages, 5, next, 2),
        (2, pages + 4096, payload.len() as u32 - 5, next, 3),
        (3, reply_at, 16, wr | next, 4),
        (4, reply_at + 16, 8, wr, 0),
    ];
    let lay = |q: &common::frontend::QueueHandle, entries: &[Entry]| {
        for &(i, addr, len, flags, next) in entries {
            q.write_table_entry(table, i, GuestAddress(addr), len, flags, next).unwrap();
        }
    };
    lay(&q, &write_table);
    q.write_descriptor(3, table, 16 * 5, VRING_DESC_F_INDIRECT, 0).unwrap();
    q.publish(3).unwrap();
    assert_eq!(q.wait_used().unwrap(), (3, 24), "a WRITE through an indirect table");
    let mut out = [0u8; 24];
    q.mem().read_slice(&mut out, GuestAddress(reply_at)).unwrap();
    let (hdr, rest) = OutHeader::read_from_prefix(&out).unwrap();
    assert_eq!((hdr.error, hdr.unique), (0, 50));
    assert_eq!(abi::WriteOut::read_from_bytes(rest).unwrap().size, payload.len() as u32);
    assert_eq!(std::fs::read(b.share.join("hello.txt")).unwrap(), payload);

    // LOOKUP: the request in a ring descriptor, its reply room in a table behind it.
    let lookup = Op::Lookup { name: c"hello.txt" };
    let req = encode_request(Sender { unique: 51, nodeid: abi::ROOT_ID, uid: 0, gid: 0, pid: 1 }, &lookup);
    q.mem().write_slice(&req, GuestAddress(data + 2048)).unwrap();
    q.write_descriptor(6, GuestAddress(data + 2048), req.len() as u32, next, 9).unwrap();
    q.write_descriptor(9, table, 32, VRING_DESC_F_INDIRECT, 0).unwrap();
    lay(&q, &[(0, reply_at, 16, wr | next, 1), (1, reply_at + 16, 4080, wr, 0)]);
    q.publish(6).unwrap();
    let (id, len) = q.wait_used().unwrap();
    assert_eq!(id, 6, "the mixed chain");
    let mut reply = vec![0u8; len as usize];
    q.mem().read_slice(&mut reply, GuestAddress(reply_at)).unwrap();
    assert_eq!(check_reply(&lookup, 51, &reply).0, 0, "LOOKUP answered into the table's buffers");

    // Hostile tables: (what, the ring descriptor at head 0 as (address, length, flags, next),
    // the table's entries). Each table holds the WRITE of "XXXXX" (unique 60) where it can.
    q.mem().write_slice(b"XXXXX", GuestAddress(pages)).unwrap();
    let head_len = {
        let op = Op::Write { arg: abi::WriteIn { fh, size: 5, ..Default::default() }, data: b"XXXXX" };
        let req = encode_request(Sender { unique: 60, nodeid: node, uid: 0, gid: 0, pid: 1 }, &op);
        q.mem().write_slice(&req[..req.len() - 5], GuestAddress(data)).unwrap();
        (req.len() - 5) as u32
    };
    let good = |last: u16| -> Vec<Entry> {
        vec![(0, data, head_len, next, 1), (1, pages, 5, next, 2), (2, reply_at, 24, wr, last)]
    };
    let outside = GUEST_MEM_SIZE as u64;
    let mut long: Vec<Entry> = (0..17).map(|i| (i, pages, 0, next, i + 1)).collect();
    long[0] = (0, data, head_len, next, 1);
    long[16] = (16, reply_at, 24, wr, 0);
    type Case = (&'static str, (u64, u32, u16, u16), Vec<Entry>);
    let cases: Vec<Case> = vec![
        ("indirect with NEXT", (table.0, 48, VRING_DESC_F_INDIRECT | next, 1), good(0)),
        ("empty table", (table.0, 0, VRING_DESC_F_INDIRECT, 0), good(0)),
        ("table length not a multiple of 16", (table.0, 40, VRING_DESC_F_INDIRECT, 0), good(0)),
        ("table outside guest memory", (outside - 16, 48, VRING_DESC_F_INDIRECT, 0), vec![]),
        ("table address + length overflows", (u64::MAX - 15, 48, VRING_DESC_F_INDIRECT, 0), vec![]),
        (
            "indirect inside the table",
            (table.0, 64, VRING_DESC_F_INDIRECT, 0),
            [good(0), vec![(2, reply_at, 24, wr | next, 3), (3, table.0, 48, VRING_DESC_F_INDIRECT, 0)]].concat(),
        ),
        (
            "loop in the table",
            (table.0, 48, VRING_DESC_F_INDIRECT, 0),
            [good(0), vec![(2, reply_at, 24, wr | next, 2)]].concat(),
        ),
        (
            "link outside the table",
            (table.0, 48, VRING_DESC_F_INDIRECT, 0),
            vec![(0, data, head_len, next, 1), (1, pages, 5, next, 3)],
        ),
        (
            "buffer in the table outside guest memory",
            (table.0, 48, VRING_DESC_F_INDIRECT, 0),
            vec![(0, data, head_len, next, 1), (1, outside, 5, next, 2), (2, reply_at, 24, wr, 0)],
        ),
        (
            "readable after writable in the table",
            (table.0, 48, VRING_DESC_F_INDIRECT, 0),
            vec![(0, data, head_len, next, 1), (1, reply_at, 24, wr | next, 2), (2, pages, 5, 0, 0)],
        ),
        ("more descriptors than the queue's 16", (table.0, 16 * 17, VRING_DESC_F_INDIRECT, 0), long),
    ];
    for (what, (addr, len, flags, next), entries) in &cases {
        lay(&q, entries);
        q.write_descriptor(0, GuestAddress(*addr), *len, *flags, *next).unwrap();
        q.publish(0).unwrap();
        assert_eq!(q.wait_used().unwrap_or_else(|e| panic!("{what}: {e}")), (0, 0), "{what}: dropped");
    }
    // And WRITE in the indirect descriptor itself is ignored, as the device must (§2.6.5.3.2):
    // the same request through a good table is served, after every hostile one was not.
    assert_eq!(std::fs::read(b.share.join("hello.txt")).unwrap(), payload, "no hostile table was served");
    assert_eq!(children_of(b.pid()), worker, "a hostile table must not kill the worker");
    lay(&q, &good(0));
    q.write_descriptor(0, table, 48, VRING_DESC_F_INDIRECT | wr, 0).unwrap();
    q.publish(0).unwrap();
    assert_eq!(q.wait_used().unwrap(), (0, 24), "the queue serves on");
    assert_eq!(std::fs::read(b.share.join("hello.txt")).unwrap(), b"XXXXX, indirect");
}

#[test]
fn test_avail_index_jump_stops_only_that_queue() {
    let (b, mut fe) = Backend::with_frontend(&[], 3, 16);
    let worker = children_of(b.pid());
    let q = fe.take_queue(1).unwrap();
    // avail.idx moved 1000 entries ahead of what the device has seen: no driver does that.
    q.mem().store(1000u16.to_le(), GuestAddress(q.avail_addr().0 + 2), Ordering::Release).unwrap();
    drop(q);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(children_of(b.pid()), worker, "the worker survives a corrupt avail index");
    let (err, _) = call(&mut fe, 2, 5, abi::ROOT_ID, &Op::Lookup { name: c"hello.txt" });
    assert_eq!(err, 0, "the other queue still serves");
}

/// `--fd`: the listening socket is inherited (how libvirt may start virtiofsd).
#[test]
fn test_inherited_listening_socket_and_recovery_off() {
    let tmp = tempfile::tempdir().unwrap();
    let share = tmp.path().join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("hello.txt"), b"hello").unwrap();
    let path = tmp.path().join("inherited.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    let mut child = std::process::Command::new(common::BIN);
    child.arg("--shared-dir").arg(&share).args(["--fd", &fd.to_string(), "--recovery", "off", "--log-level", "warn"]);
    // SAFETY: between fork and exec only async-signal-safe fcntl: the child keeps the listener.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut child, move || {
            libc::fcntl(fd, libc::F_SETFD, 0);
            Ok(())
        });
    }
    let mut child = child.spawn().unwrap();
    let mut fe = Frontend::connect(&path, 2, 32).unwrap_or_else(|e| panic!("handshake on an inherited socket: {e}"));
    init(&mut fe);
    let (err, _) = call(&mut fe, 1, 2, abi::ROOT_ID, &Op::Lookup { name: c"hello.txt" });
    assert_eq!(err, 0);
    // Recovery off: the daemon is one process, no worker to replace.
    assert!(children_of(common::supervisor_of(child.id())).is_empty(), "--recovery off runs without a worker process");
    drop(fe);
    // The frontend went away: the daemon stops, as virtiofsd does.
    let status = wait_exit(&mut child);
    assert!(status.success(), "exit after the frontend disconnected: {status}");
}

#[test]
fn test_daemon_stops_when_the_frontend_disconnects() {
    let (mut b, fe) = Backend::with_frontend(&[], 2, 32);
    drop(fe);
    let status = b.wait_exit();
    assert!(status.success(), "exit after the frontend disconnected: {status}");
    assert!(children_of(b.pid()).is_empty(), "no worker is left behind");
}

/// With locks served by the daemon, a blocking lock must not hold up its queue: the unlock that
/// grants it arrives on the same (single) request queue behind it.
#[test]
fn test_blocking_lock_does_not_hold_up_its_queue() {
    let (b, mut fe) = Backend::with_frontend(&["-o", "posix_lock"], 2, 16);
    let (node, fh) = open_hello(&mut fe, libc::O_RDWR);
    let lock = |owner: u64, typ: i32| abi::LkIn {
        fh,
        owner,
        lk: abi::FileLock { start: 0, end: u64::MAX, typ: typ as u32, pid: owner as u32 },
        ..Default::default()
    };
    let (err, _) = call(&mut fe, 1, 4, node, &Op::Setlk { arg: lock(1, libc::F_WRLCK), sleep: false });
    assert_eq!(err, 0, "owner 1 takes the lock");
    let (err, _) = call(&mut fe, 1, 40, node, &Op::Setlk { arg: lock(2, libc::F_WRLCK), sleep: false });
    assert_eq!(err, -libc::EAGAIN, "owner 2 cannot take it without waiting");

    let mut q = fe.take_queue(1).unwrap();
    let data = q.data_addr().0;
    let (next, write) = (VRING_DESC_F_NEXT, VRING_DESC_F_WRITE);
    let send = |q: &mut common::frontend::QueueHandle, head: u16, at: u64, unique: u64, op: &Op<'_>| {
        let req = encode_request(Sender { unique, nodeid: node, uid: 0, gid: 0, pid: 1 }, op);
        q.mem().write_slice(&req, GuestAddress(at)).unwrap();
        q.write_descriptor(head, GuestAddress(at), req.len() as u32, next, head + 1).unwrap();
        q.write_descriptor(head + 1, GuestAddress(at + 2048), 2048, write, 0).unwrap();
        q.publish(head).unwrap();
    };
    // Owner 2 waits for the lock, then owner 1 unlocks on the same queue.
    send(&mut q, 0, data, 5, &Op::Setlk { arg: lock(2, libc::F_WRLCK), sleep: true });
    std::thread::sleep(Duration::from_millis(50));
    let used_before = q.mem().read_obj::<u16>(GuestAddress(q.used_addr().0 + 2)).unwrap();
    send(&mut q, 2, data + 4096, 6, &Op::Setlk { arg: lock(1, libc::F_UNLCK), sleep: false });
    // Both chains come back: the unlock was not stuck behind the waiting lock (which it then
    // lets through; the two used elements may come in either order).
    let mut heads: Vec<u32> = (0..2)
        .map(|_| q.wait_used().unwrap_or_else(|e| panic!("a lock request behind a waiting lock: {e}")).0)
        .collect();
    heads.sort();
    assert_eq!(heads, [0, 2]);
    let mut hdr = [0u8; 16];
    for (head, what) in [(0u64, "owner 2's waiting lock"), (2, "owner 1's unlock")] {
        q.mem().read_slice(&mut hdr, GuestAddress(data + head * 2048 + 2048)).unwrap();
        assert_eq!(OutHeader::read_from_prefix(&hdr[..]).unwrap().0.error, 0, "{what}");
    }
    assert_eq!(used_before, 5, "the waiting lock was not answered before the unlock came");
    drop(b);
}

/// The bridge with 4 requests in flight on its one request queue, as a guest's driver keeps
/// them, with EVENT_IDX off and on: a blocking lock waits in the daemon (its chain in flight
/// until the lock is free, then returned after chains published later) while 4 workers run a
/// checked file workload beside it. Every result is right, and the queue carried several
/// requests at once.
#[test]
fn test_bridge_several_requests_in_flight_on_one_queue() {
    common::require_fuse();
    for event_idx in [false, true] {
        let b = Backend::start(&["-o", "posix_lock"]);
        let mnt = b.dir.join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let opts = BridgeOptions { in_flight: 4, event_idx, ..Default::default() };
        let bridge = Bridge::mount(b.socket(), &mnt, 1, opts).unwrap_or_else(|e| panic!("bridge: {e}"));
        let queue = std::sync::Arc::clone(&bridge.queues()[0]);
        let peak = || queue.peak_in_flight();

        std::fs::write(mnt.join("locked"), b"l").unwrap();
        let open = || std::fs::OpenOptions::new().read(true).write(true).open(mnt.join("locked")).unwrap();
        let (holder, waiter) = (open(), open());
        let lock = |f: &std::fs::File, cmd, typ| sys::ofd(std::os::fd::AsRawFd::as_raw_fd(f), cmd, typ);
        lock(&holder, libc::F_OFD_SETLK, libc::F_WRLCK).expect("the holder takes the lock");
        std::thread::scope(|s| {
            let waiting = s.spawn(|| lock(&waiter, libc::F_OFD_SETLKW, libc::F_WRLCK));
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while bridge.requests(abi::Opcode::Setlkw) == 0 {
                assert!(std::time::Instant::now() < deadline, "no SETLKW reached the bridge");
                std::thread::sleep(Duration::from_millis(1));
            }
            let rounds = workload::run(&mnt, 4, 20, &|| peak() >= 2);
            assert!(!waiting.is_finished(), "the waiting lock returned while the holder held it");
            lock(&holder, libc::F_OFD_SETLK, libc::F_UNLCK).expect("the holder unlocks");
            let got = waiting.join().unwrap();
            assert_eq!(got, Ok(libc::F_WRLCK), "the waiting lock is granted once the holder unlocks");
            eprintln!("event_idx {event_idx}: {rounds} workload rounds, at most {} requests in flight", peak());
        });
        assert!((2..=4).contains(&peak()), "event_idx {event_idx}: requests in flight at once: {}", peak());
        assert!(queue.out_of_order() >= 1, "event_idx {event_idx}: the waiting lock came back after later chains");
        drop((holder, waiter));
        assert_eq!(bridge.unmount(), 0, "event_idx {event_idx}: bridge failures (see stderr)");
    }
}

/// A guest that reboots starts a new FUSE session with INIT, without forgetting the old one's
/// nodes: they and its open files are dropped (as virtiofsd does), so nothing leaks.
#[test]
fn test_new_session_drops_what_the_old_one_held() {
    let (b, mut fe) = Backend::with_frontend(&[], 2, 32);
    let (node, fh) = open_hello(&mut fe, libc::O_RDONLY);
    let held = common::open_fds(b.pid()).len();

    init(&mut fe);
    let (err, _) = call(&mut fe, 1, 5, node, &Op::Getattr { fh: None });
    assert_eq!(err, -libc::ESTALE, "the old session's node id is gone");
    let read = abi::ReadIn { fh, size: 16, ..Default::default() };
    let (err, _) = call(&mut fe, 1, 6, node, &Op::Read(read));
    assert!(err == -libc::EBADF || err == -libc::ESTALE, "the old session's file handle is gone ({err})");
    assert_eq!(common::open_fds(b.pid()).len(), held - 2, "its O_PATH fd and open file are closed");
    let (err, _) = call(&mut fe, 1, 7, abi::ROOT_ID, &Op::Lookup { name: c"hello.txt" });
    assert_eq!(err, 0, "the new session serves");
}

/// Entries of a READDIRPLUS reply: (name, entry) pairs.
fn direntplus_records(mut payload: &[u8]) -> Vec<(String, EntryOut)> {
    let mut out = Vec::new();
    while !payload.is_empty() {
        let (entry, rest) = EntryOut::read_from_prefix(payload).expect("entry_out");
        let (dirent, rest) = abi::Dirent::read_from_prefix(rest).expect("dirent");
        let name = String::from_utf8_lossy(&rest[..dirent.namelen as usize]).into_owned();
        let record = abi::direntplus_size(dirent.namelen as usize);
        out.push((name, entry));
        payload = &payload[record..];
    }
    out
}

/// With FUSE_SUBMOUNTS agreed (a virtio-fs guest offers it), a directory on another mount than
/// its parent is marked FUSE_ATTR_SUBMOUNT, by LOOKUP and by READDIRPLUS alike, and nothing
/// else is: not a plain directory, not a file, not the submount's own contents. Not agreed (or
/// `--no-announce-submounts`), nothing is marked.
#[test]
fn test_submounts_marked_only_when_agreed() {
    let tmp = tempfile::Builder::new().prefix("phoenixfs-submount-flag").tempdir().unwrap();
    let share = tmp.path().join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::create_dir(share.join("plain")).unwrap();
    std::fs::write(share.join("file"), b"f").unwrap();
    let _sub = sys::Tmpfs::mount(&share.join("sub"));
    std::fs::create_dir(share.join("sub/inner")).unwrap();
    std::fs::write(share.join("sub/f"), b"g").unwrap();
    for (args, offer, want) in
        [(&[][..], true, true), (&[][..], false, false), (&["--no-announce-submounts"][..], true, false)]
    {
        let b = Backend::start_on(&share, args);
        let mut fe = Frontend::connect(b.socket(), 2, 128).unwrap_or_else(|e| panic!("handshake: {e}"));
        let mut flags = abi::ASYNC_READ | abi::BIG_WRITES | abi::MAX_PAGES | abi::INIT_EXT;
        if offer {
            flags |= abi::SUBMOUNTS;
        }
        let init = Op::Init {
            arg: abi::InitIn { major: 7, minor: 38, max_readahead: 128 << 10, flags: flags as u32 },
            flags2: (flags >> 32) as u32,
        };
        let (err, _) = call(&mut fe, 1, 1, 0, &init);
        assert_eq!(err, 0, "INIT");
        let marked = |payload: &[u8]| EntryOut::read_from_bytes(payload).unwrap().attr.flags & abi::ATTR_SUBMOUNT != 0;
        let mut unique = 10;
        let mut lookup = |fe: &mut Frontend, parent: u64, name: &std::ffi::CStr| {
            unique += 1;
            let (err, payload) = call(fe, 1, unique, parent, &Op::Lookup { name });
            assert_eq!(err, 0, "LOOKUP {name:?}");
            payload
        };
        let case = format!("{args:?}, offered {offer}");
        let sub = lookup(&mut fe, abi::ROOT_ID, c"sub");
        assert_eq!(marked(&sub), want, "LOOKUP sub, {case}");
        assert!(!marked(&lookup(&mut fe, abi::ROOT_ID, c"plain")), "LOOKUP plain, {case}");
        assert!(!marked(&lookup(&mut fe, abi::ROOT_ID, c"file")), "LOOKUP file, {case}");
        let sub_node = EntryOut::read_from_bytes(&sub).unwrap().nodeid;
        assert!(!marked(&lookup(&mut fe, sub_node, c"inner")), "LOOKUP sub/inner, {case}");
        assert!(!marked(&lookup(&mut fe, sub_node, c"f")), "LOOKUP sub/f, {case}");

        let (err, payload) = call(&mut fe, 1, 100, abi::ROOT_ID, &Op::Opendir(abi::OpenIn { flags: 0, open_flags: 0 }));
        assert_eq!(err, 0, "OPENDIR /");
        let fh = abi::OpenOut::read_from_bytes(&payload).unwrap().fh;
        let read = abi::ReadIn { fh, offset: 0, size: 4096, ..Default::default() };
        let (err, payload) = call(&mut fe, 1, 101, abi::ROOT_ID, &Op::Readdirplus(read));
        assert_eq!(err, 0, "READDIRPLUS /");
        let records = direntplus_records(&payload);
        let names: Vec<&str> = records.iter().map(|(n, _)| n.as_str()).collect();
        for name in ["sub", "plain", "file"] {
            assert!(names.contains(&name), "READDIRPLUS lists {name}: {names:?}");
        }
        for (name, entry) in &records {
            let flagged = entry.attr.flags & abi::ATTR_SUBMOUNT != 0;
            assert_eq!(flagged, want && name == "sub", "READDIRPLUS {name}, {case}");
        }
    }
}
