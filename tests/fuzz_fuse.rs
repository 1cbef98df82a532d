//! Fuzz campaign 1: sequences of raw FUSE requests into an in-process `Server` on a scratch share
//! (tests/common/inproc.rs, as the hostile suite). Each case is one fresh server and a seeded
//! sequence of mostly well-formed requests (random ops on node ids and handles the server
//! returned plus made-up ones, names such as `..`, `a/b`, 256 bytes or with NULs), some of them
//! mutated, truncated or padded. Checked:
//! - after every input: no panic; a reply, if any, is well-formed (the harness: length field ==
//!   reply length, our unique, error 0 or a negative errno); every table slot is FREE or LIVE
//!   with no pin left, every LIVE slot's fd is open, and no intent record is left in use;
//! - at the end of each case: `top/outside` (files next to the share) is unchanged, releasing
//!   and forgetting everything the server handed out leaves only the root in the tables and the
//!   process's fd table as it was after INIT, and `State::take_over` of an alias of the region
//!   succeeds.
//!
//! Budget and replay: tests/common/fuzz.rs (`PHOENIXFS_FUZZ_SECONDS`, `_CASES`, `_SEED`).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::sync::atomic::Ordering;

use phoenixfsd::fuse::abi::{self, Opcode};
use phoenixfsd::fuse::encode::{Sender, encode_request, frame};
use phoenixfsd::fuse::{Op, Request};
use phoenixfsd::state::slots::{FREE, LIVE, SlotHeader};
use phoenixfsd::state::{Region, State};
use zerocopy::{FromBytes, IntoBytes};

mod common;

use common::fuzz::{CaseStats, Rng, campaign};
use common::inproc::{Harness, MAX_GROWTH_KIB, self_fds};
use common::proc::rss_kib;

/// The CI budget of this campaign, in seconds.
const CI_SECONDS: u64 = 55;

/// What the server handed out in one case: node ids with the lookups it counted, and handles.
#[derive(Default)]
struct Held {
    nodes: BTreeMap<u64, u64>,
    /// fh → is a directory handle.
    handles: BTreeMap<u64, bool>,
}

impl Held {
    fn node(&self, rng: &mut Rng) -> u64 {
        let known: Vec<u64> = self.nodes.keys().copied().collect();
        match rng.below(10) {
            0..=4 if !known.is_empty() => *rng.pick(&known),
            0..=6 => abi::ROOT_ID,
            7 if !known.is_empty() => *rng.pick(&known) ^ (1 << (32 + rng.below(4))),
            _ => rng.interesting(),
        }
    }

    fn fh(&self, rng: &mut Rng) -> u64 {
        let known: Vec<u64> = self.handles.keys().copied().collect();
        match rng.below(10) {
            0..=6 if !known.is_empty() => *rng.pick(&known),
            7 if !known.is_empty() => *rng.pick(&known) ^ (1 << (32 + rng.below(4))),
            _ => rng.interesting(),
        }
    }
}

/// A name: one the share has, one a case made, or a hostile one (the encoder needs a C string;
/// NULs inside names come from `raw_name_frame` and the mutations).
fn name(rng: &mut Rng) -> CString {
    let fixed = ["file", "sub", "victim", "abs_link", "rel_link", "dir_link", "n0", "n1", "n2", "n3"];
    let hostile = ["..", ".", "", "a/b", "../outside", "/etc/passwd", "sub/..", "../../..", "\u{fffd}x"];
    match rng.below(10) {
        0..=5 => CString::new(*rng.pick(&fixed)).unwrap(),
        6 | 7 => CString::new(*rng.pick(&hostile)).unwrap(),
        8 => CString::new("l".repeat(*rng.pick(&[254usize, 255, 256, 1000, 4096, 5000]))).unwrap(),
        _ => {
            let n = rng.range(1, 20) as usize;
            CString::new(rng.bytes(n).into_iter().map(|b| b.max(1)).collect::<Vec<u8>>()).unwrap()
        }
    }
}

fn xattr_name(rng: &mut Rng) -> CString {
    let names = ["user.a", "user.b", "trusted.t", "security.capability", "system.posix_acl_access", "bad", ""];
    CString::new(*rng.pick(&names)).unwrap()
}

fn mode(rng: &mut Rng) -> u32 {
    match rng.below(4) {
        0 => 0o644,
        1 => 0o7777 & rng.u32(),
        2 => rng.u32(),
        _ => 0o755,
    }
}

/// Open flags: mostly what applications use, sometimes anything (O_DIRECT aside: the scratch
/// share's file system may refuse it, which tells nothing).
fn open_flags(rng: &mut Rng) -> u32 {
    let any = rng.u32() & !(libc::O_DIRECT as u32);
    let usual =
        [libc::O_RDONLY, libc::O_RDWR, libc::O_WRONLY, libc::O_RDWR | libc::O_APPEND, libc::O_RDWR | libc::O_TRUNC];
    if rng.chance(80) { *rng.pick(&usual) as u32 } else { any }
}

fn read_in(rng: &mut Rng, fh: u64) -> abi::ReadIn {
    let any = rng.u32();
    let size = *rng.pick(&[0, 1, 4096, 1 << 17, 1 << 20, u32::MAX, any]);
    abi::ReadIn { fh, offset: rng.interesting() & 0xffff, size, flags: rng.u32() & 0xff, ..Default::default() }
}

fn lk(rng: &mut Rng, fh: u64) -> abi::LkIn {
    let any = rng.u32();
    let typ = *rng.pick(&[libc::F_RDLCK as u32, libc::F_WRLCK as u32, libc::F_UNLCK as u32, any]);
    let start = rng.interesting() & 0xffff;
    let end = if rng.chance(80) { start + rng.below(100) } else { rng.interesting() };
    abi::LkIn {
        fh,
        owner: rng.below(3),
        lk: abi::FileLock { start, end, typ, pid: rng.u32() & 0xffff },
        lk_flags: if rng.chance(30) { abi::LK_FLOCK } else { 0 },
        padding: 0,
    }
}

/// One well-formed request, encoded: a random op on ids drawn from `held` or made up.
fn well_formed(rng: &mut Rng, held: &Held, s: Sender) -> Vec<u8> {
    let (n1, n2) = (name(rng), name(rng));
    let target = CString::new(*rng.pick(&["/etc/passwd", "../outside/secret", "file", "sub", ""])).unwrap();
    let xn = xattr_name(rng);
    let data_len = *rng.pick(&[0usize, 1, 10, 4096, 70_000]);
    let data = rng.bytes(data_len);
    let any = rng.u32();
    let fh = held.fh(rng);
    let node = held.node(rng);
    let create =
        abi::CreateIn { flags: rng.u32() & !(libc::O_DIRECT as u32), mode: mode(rng), umask: 0o022, open_flags: 0 };
    let op = match rng.below(40) {
        0 => Op::Lookup { name: &n1 },
        1 => Op::Forget { nlookup: *rng.pick(&[1, 2, u64::MAX]) },
        2 => {
            let forgets =
                (0..rng.below(4)).map(|_| abi::ForgetOne { nodeid: held.node(rng), nlookup: rng.below(3) }).collect();
            Op::BatchForget { forgets }
        }
        3 => Op::Getattr { fh: rng.chance(50).then_some(fh) },
        4 => {
            let valid = rng.u32() & 0x3ff & !(abi::FATTR_SIZE * u32::from(rng.chance(50)));
            let a = abi::SetattrIn {
                valid,
                fh,
                size: rng.below(1 << 20),
                mode: mode(rng),
                uid: *rng.pick(&[0, 1000, u32::MAX]),
                gid: *rng.pick(&[0, 1000, u32::MAX]),
                atime: rng.interesting(),
                mtime: rng.interesting(),
                ..Default::default()
            };
            Op::Setattr(a)
        }
        5 => Op::Readlink,
        6 => Op::Symlink { name: &n1, target: &target },
        7 => {
            let kind = *rng.pick(&[libc::S_IFREG, libc::S_IFIFO, libc::S_IFSOCK, libc::S_IFCHR, libc::S_IFDIR, 0]);
            // rdev 0 only: as root, a device node with a real number would open the host's device.
            Op::Mknod {
                arg: abi::MknodIn { mode: kind | (mode(rng) & 0o7777), rdev: 0, umask: 0o022, padding: 0 },
                name: &n1,
            }
        }
        8 => Op::Mkdir { arg: abi::MkdirIn { mode: mode(rng), umask: 0o022 }, name: &n1 },
        9 => Op::Unlink { name: &n1 },
        10 => Op::Rmdir { name: &n1 },
        11 => Op::Rename { newdir: held.node(rng), flags: *rng.pick(&[0, 1, 2, 4, any]), name: &n1, newname: &n2 },
        12 => Op::Link { oldnodeid: held.node(rng), name: &n1 },
        13 | 14 => Op::Open(abi::OpenIn { flags: open_flags(rng), open_flags: rng.u32() & 0xff }),
        15 => Op::Opendir(abi::OpenIn { flags: if rng.chance(80) { 0 } else { rng.u32() }, open_flags: 0 }),
        16 | 17 => Op::Create { arg: create, name: &n1 },
        18 => Op::Tmpfile { arg: create },
        19 => Op::Read(read_in(rng, fh)),
        20 | 21 => {
            let size = if rng.chance(90) { data.len() as u32 } else { rng.u32() };
            let arg = abi::WriteIn {
                fh,
                offset: rng.interesting() & 0xf_ffff,
                size,
                write_flags: rng.u32() & 7,
                ..Default::default()
            };
            Op::Write { arg, data: &data }
        }
        22 => Op::Flush(abi::FlushIn { fh, lock_owner: rng.below(3), ..Default::default() }),
        23 => {
            Op::Release(abi::ReleaseIn { fh, flags: rng.u32(), release_flags: rng.u32() & 3, lock_owner: rng.below(3) })
        }
        24 => Op::Releasedir(abi::ReleaseIn { fh, ..Default::default() }),
        25 => Op::Fsync(abi::FsyncIn { fh, fsync_flags: rng.u32() & 1, padding: 0 }),
        26 => Op::Fsyncdir(abi::FsyncIn { fh, fsync_flags: 0, padding: 0 }),
        27 => Op::Readdir(read_in(rng, fh)),
        28 => Op::Readdirplus(read_in(rng, fh)),
        29 => Op::Statfs,
        30 => Op::Access(abi::AccessIn { mask: rng.u32() & 0xf, padding: 0 }),
        31 => {
            let size = if rng.chance(90) { data.len().min(100) as u32 } else { rng.u32() };
            Op::Setxattr { size, flags: rng.u32() & 3, name: &xn, value: &data[..data.len().min(100)] }
        }
        32 => Op::Getxattr { size: *rng.pick(&[0, 4, 4096, u32::MAX]), name: &xn },
        33 => Op::Listxattr { size: *rng.pick(&[0, 4, 4096, u32::MAX]) },
        34 => Op::Removexattr { name: &xn },
        35 => Op::Getlk(lk(rng, fh)),
        36 => Op::Setlk { arg: lk(rng, fh), sleep: false },
        37 => {
            let a = abi::FallocateIn {
                fh,
                offset: rng.below(1 << 20),
                length: rng.below(1 << 20),
                mode: rng.u32() & 0x7f,
                padding: 0,
            };
            Op::Fallocate(a)
        }
        38 => Op::Lseek(abi::LseekIn { fh, offset: rng.interesting(), whence: rng.u32() % 6, padding: 0 }),
        _ => match rng.below(6) {
            0 => {
                let a = abi::CopyFileRangeIn {
                    fh_in: fh,
                    off_in: rng.below(1 << 16),
                    nodeid_out: held.node(rng),
                    fh_out: held.fh(rng),
                    off_out: rng.below(1 << 16),
                    len: rng.below(1 << 20),
                    flags: rng.below(2),
                };
                Op::CopyFileRange(a)
            }
            1 => Op::Interrupt { unique: rng.below(s.unique + 1) },
            2 => Op::Syncfs,
            3 => Op::Unsupported(*rng.pick(&[Opcode::Bmap, Opcode::Poll, Opcode::Ioctl, Opcode::NotifyReply])),
            4 => Op::Init {
                arg: abi::InitIn { major: 7, minor: rng.u32() % 50, max_readahead: rng.u32(), flags: rng.u32() },
                flags2: rng.u32(),
            },
            _ => Op::Destroy,
        },
    };
    encode_request(Sender { nodeid: node, ..s }, &op)
}

/// A request whose name bytes are made up: interior NULs, no NUL, bytes after the NUL.
fn raw_name_frame(rng: &mut Rng, held: &Held, s: Sender) -> Vec<u8> {
    let opcode = *rng.pick(&[Opcode::Lookup, Opcode::Unlink, Opcode::Rmdir, Opcode::Mkdir, Opcode::Symlink]);
    let mut body = Vec::new();
    if opcode == Opcode::Mkdir {
        body.extend_from_slice(abi::MkdirIn { mode: 0o755, umask: 0 }.as_bytes());
    }
    let n = rng.range(0, 12) as usize;
    body.extend(rng.bytes(n).into_iter().map(|b| if b < 0x40 { 0 } else { b }));
    if rng.chance(50) {
        body.extend_from_slice(b"x\0");
    }
    frame(Sender { nodeid: held.node(rng), ..s }, opcode as u32, &body)
}

/// Damages a frame: flipped bytes, a rewritten header field, cut short or padded.
fn mutate(rng: &mut Rng, f: &mut Vec<u8>) {
    match rng.below(5) {
        0 => {
            for _ in 0..rng.range(1, 5) {
                if !f.is_empty() {
                    let i = rng.below(f.len() as u64) as usize;
                    f[i] ^= 1 << rng.below(8);
                }
            }
        }
        1 if f.len() >= 40 => {
            let v = rng.interesting();
            match rng.below(5) {
                0 => f[0..4].copy_from_slice(&(v as u32).to_le_bytes()),
                1 => f[4..8].copy_from_slice(&(rng.below(60) as u32).to_le_bytes()),
                2 => f[16..24].copy_from_slice(&v.to_le_bytes()),
                3 => f[36..38].copy_from_slice(&(v as u16).to_le_bytes()),
                _ => f[24..28].copy_from_slice(&(v as u32).to_le_bytes()),
            }
        }
        2 => f.truncate(rng.below(f.len() as u64 + 1) as usize),
        3 => {
            let n = rng.range(1, 64) as usize;
            f.extend(rng.bytes(n));
        }
        _ => {
            let n = rng.below(120) as usize;
            *f = rng.bytes(n);
        }
    }
    // Half the time the header's length is made to agree, so the body reaches the decoder.
    if f.len() >= 4 && rng.chance(50) {
        let len = f.len() as u32;
        f[0..4].copy_from_slice(&len.to_le_bytes());
    }
}

/// An input for a finding's message: the decoded op, or the raw bytes.
fn describe(f: &[u8]) -> String {
    match Request::decode(f) {
        Ok(r) => format!("{:?} on node {}", r.op, r.header.nodeid).chars().take(300).collect(),
        Err(e) => format!("undecodable frame ({e}): {:02x?}", &f[..f.len().min(64)]),
    }
}

/// Inputs not sent, because they would do real harm on a host where the test runs as root or
/// hang the harness (or hit a known bug, below), not because the server might mishandle them: device nodes with a real
/// device number, SETLKW (waits for ever behind a lock another owner holds), and allocations,
/// copies or sizes that fill the disk.
fn harmful(f: &[u8]) -> bool {
    let Ok(r) = Request::decode(f) else { return false };
    match r.op {
        Op::Mknod { arg, .. } if arg.mode & libc::S_IFMT != libc::S_IFIFO => {
            arg.rdev != 0 && matches!(arg.mode & libc::S_IFMT, libc::S_IFCHR | libc::S_IFBLK)
        }
        Op::Setlk { sleep, .. } => sleep,
        Op::Fallocate(a) => a.offset.saturating_add(a.length) > 1 << 26,
        Op::CopyFileRange(a) => a.len > 1 << 26,
        _ => false,
    }
}

/// Notes what a successful reply handed out (node ids with their lookup counts, handles).
fn learn(req: &[u8], payload: &[u8], held: &mut Held) {
    let Ok(r) = Request::decode(req) else { return };
    let node = |held: &mut Held, e: &abi::EntryOut| {
        if e.nodeid != 0 {
            *held.nodes.entry(e.nodeid).or_default() += 1;
        }
    };
    match r.op {
        Op::Lookup { .. } | Op::Mknod { .. } | Op::Mkdir { .. } | Op::Symlink { .. } | Op::Link { .. } => {
            if let Ok((e, _)) = abi::EntryOut::read_from_prefix(payload) {
                node(held, &e);
            }
        }
        Op::Create { .. } | Op::Tmpfile { .. } => {
            if let Ok((e, rest)) = abi::EntryOut::read_from_prefix(payload) {
                node(held, &e);
                if let Ok((o, _)) = abi::OpenOut::read_from_prefix(rest) {
                    held.handles.insert(o.fh, false);
                }
            }
        }
        Op::Open(_) | Op::Opendir(_) => {
            if let Ok((o, _)) = abi::OpenOut::read_from_prefix(payload) {
                held.handles.insert(o.fh, matches!(r.op, Op::Opendir(_)));
            }
        }
        Op::Readdirplus(_) => {
            let mut rest = payload;
            while let Ok((e, after)) = abi::EntryOut::read_from_prefix(rest) {
                let Ok((d, names)) = abi::Dirent::read_from_prefix(after) else { break };
                node(held, &e);
                let skip = (d.namelen as usize).div_ceil(8) * 8;
                rest = names.get(skip..).unwrap_or(&[]);
            }
        }
        _ => {}
    }
}

/// Every slot of a table FREE or LIVE with no pin left (nothing is in flight between two
/// inputs), every LIVE slot's fd open; returns the LIVE count.
fn check_table<'a>(what: &str, slots: impl Iterator<Item = &'a SlotHeader>) -> usize {
    let mut live = 0;
    for (i, s) in slots.enumerate() {
        let state = s.state.load(Ordering::SeqCst);
        assert!(state == FREE || state == LIVE, "{what} slot {i} in state {state} between requests");
        assert_eq!(s.users.load(Ordering::SeqCst), 0, "{what} slot {i} still pinned");
        if state == LIVE {
            live += 1;
            let fd = s.fd.load(Ordering::SeqCst);
            // SAFETY: F_GETFD only asks whether the number is open.
            // An inode kept by file handle holds no fd (checked by the caller).
            assert!(
                (fd == -1 && what == "inode") || fd >= 0 && unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0,
                "{what} slot {i}: LIVE with fd {fd} not open"
            );
        }
    }
    live
}

/// (live inodes, live handles), after checking the region.
fn check_state(state: &State) -> (usize, usize) {
    let r = &state.region;
    let h = r.header();
    let (ihw, hhw) =
        (h.inode_high_water.load(Ordering::SeqCst) as usize, h.handle_high_water.load(Ordering::SeqCst) as usize);
    assert!(ihw <= h.inode_capacity as usize && hhw <= h.handle_capacity as usize, "high water past capacity");
    let inodes = check_table("inode", r.inode_headers()[..ihw].iter());
    let handles = check_table("handle", r.handle_headers()[..hhw].iter());
    for (i, (h, s)) in r.inode_headers()[..ihw].iter().zip(r.inode_slots()).enumerate() {
        if h.state.load(Ordering::SeqCst) == LIVE && h.fd.load(Ordering::SeqCst) < 0 {
            assert!(s.file_handle().is_some(), "inode slot {i}: LIVE with neither an fd nor a file handle");
        }
    }
    for (i, (h, s)) in r.handle_headers()[..hhw].iter().zip(r.handle_slots()).enumerate() {
        if h.state.load(Ordering::SeqCst) == LIVE {
            assert!(s.kind().is_some(), "handle slot {i}: LIVE with a bad kind");
        }
    }
    assert_eq!(r.records_in_use(), 0, "an intent record left in use between requests");
    (inodes, handles)
}

fn fuse_case(seed: u64, stats: &mut CaseStats) {
    let mut rng = Rng::new(seed);
    let mut h = Harness::new();
    h.init();
    let outside = h.snapshot_outside();
    let baseline = self_fds();
    let rss0 = rss_kib();
    let mut held = Held::default();
    let mut ok = 0u64;
    for _ in 0..rng.range(20, 150) {
        let s = h.sender(0);
        let s = Sender { uid: *rng.pick(&[0, 0, 0, 1000]), gid: *rng.pick(&[0, 0, 1000]), pid: 1, ..s };
        let mut f = if rng.chance(8) { raw_name_frame(&mut rng, &held, s) } else { well_formed(&mut rng, &held, s) };
        if rng.chance(25) {
            mutate(&mut rng, &mut f);
        }
        if harmful(&f) {
            stats.skipped += 1;
            continue;
        }
        if let Some((0, payload)) = h.raw(&f) {
            ok += 1;
            learn(&f, &payload, &mut held);
        }
        stats.executions += 1;
        check_state(&h.state);
        let grown = rss_kib().saturating_sub(rss0);
        assert!(grown < MAX_GROWTH_KIB, "memory grew by {grown} KiB after {}", describe(&f));
    }

    if std::env::var("PHOENIXFS_FUZZ_VERBOSE").is_ok() {
        let (n, fh) = (held.nodes.len(), held.handles.len());
        eprintln!("case {seed}: {} inputs, {ok} succeeded, {n} node ids and {fh} handles handed out", stats.executions);
    }

    // Give everything back, as a kernel would at unmount, then count.
    for (&fh, &dir) in &held.handles {
        let r = abi::ReleaseIn { fh, ..Default::default() };
        h.op(0, &if dir { Op::Releasedir(r) } else { Op::Release(r) });
    }
    for (&node, &n) in &held.nodes {
        h.op(node, &Op::Forget { nlookup: n });
    }
    let (inodes, handles) = check_state(&h.state);
    assert_eq!(
        (inodes, handles),
        (1, 0),
        "after releasing and forgetting all: live (inodes, handles) besides the root"
    );
    let now = self_fds();
    assert_eq!(
        now.len(),
        baseline.len(),
        "fds leaked: {:?}",
        now.iter().filter(|f| !baseline.contains(f)).collect::<Vec<_>>()
    );
    assert_eq!(h.snapshot_outside(), outside, "the files outside the share changed");
    State::new(Region::alias(&h.state.region)).take_over().expect("take_over of the region after the case");
}

#[test]
fn test_fuzz_fuse_request_sequences() {
    campaign("fuse requests", CI_SECONDS, fuse_case);
}
