//! The state region's layout is versioned (issue 17): a binary reads a region an older binary
//! wrote — migrating it — or refuses it before touching anything. tests/fixtures/ keeps a region
//! written by a real daemon of the previous layout (`region-layout5.pages`: layout 5, written by
//! the build before VM live migration brought layout 6; `--max-inodes 64 --max-handles 64
//! --thread-pool-size 2`, over /dev/fuse, after creating f0..f9 and d, with f3 and d held open;
//! its non-zero pages). A worker refuses it; a live upgrade's new binary converts it to layout 6
//! (state/convert.rs) and reads it whole — every node id and open handle the kernel holds — and a
//! rollback converts it down to the very bytes the previous build wrote.

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;

use phoenixfsd::state::Region;
use phoenixfsd::state::region::LAYOUT_VERSION;
use phoenixfsd::state::slots::LIVE;

const FIXTURE: &[u8] = include_bytes!("fixtures/region-layout5.pages");
const FIXTURE_LAYOUT: u32 = 5;
/// The root, f0..f9 and d.
const FIXTURE_LIVE_INODES: usize = 12;
/// f3 and d, open.
const FIXTURE_OPEN_HANDLES: usize = 2;

/// The fixture as a memfd (a region as a daemon holds it).
fn load(fixture: &[u8]) -> std::fs::File {
    assert_eq!(&fixture[..8], b"PHXFSPG1", "fixture format");
    let size = u64::from_le_bytes(fixture[8..16].try_into().unwrap());
    let pages = u64::from_le_bytes(fixture[16..24].try_into().unwrap()) as usize;
    let fd = unsafe { libc::memfd_create(c"fixture".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    let file: std::fs::File = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
    file.set_len(size).unwrap();
    for p in 0..pages {
        let at = 24 + p * (8 + 4096);
        let offset = u64::from_le_bytes(fixture[at..at + 8].try_into().unwrap());
        file.write_all_at(&fixture[at + 8..at + 8 + 4096], offset).unwrap();
    }
    file
}

fn live(headers: &[phoenixfsd::state::slots::SlotHeader]) -> usize {
    headers.iter().filter(|h| h.state.load(Ordering::Acquire) == LIVE).count()
}

/// Every byte of `file` (the non-zero pages are what matters; the rest stays zero).
fn digest(file: &std::fs::File) -> Vec<u8> {
    let mut all = vec![0u8; file.metadata().unwrap().len() as usize];
    file.read_exact_at(&mut all, 0).unwrap();
    let mut sum = Vec::new();
    for chunk in all.chunks(1 << 20) {
        sum.push(chunk.iter().fold(0u64, |h, b| h.wrapping_mul(1_099_511_628_211) ^ u64::from(*b)));
    }
    sum.into_iter().flat_map(u64::to_le_bytes).collect()
}

#[test]
fn test_region_of_the_previous_layout_is_converted_up_and_back_whole() {
    let file = load(FIXTURE);
    let before = digest(&file);
    // A worker takes only its own layout: refused, untouched.
    let e = Region::attach(file.as_raw_fd()).err().expect("a worker took the previous layout");
    assert!(e.to_string().contains(&format!("layout version {FIXTURE_LAYOUT}")), "{e}");
    assert_eq!(digest(&file), before, "a refused region was changed");
    // A live upgrade's new binary takes it as it is (it may write only after the go)...
    let region = Region::attach_convertible(file.as_raw_fd()).unwrap();
    assert_eq!(region.header().layout_version, FIXTURE_LAYOUT);
    assert_eq!(digest(&file), before, "taken for a conversion, changed before it");
    // ...and converts it: everything the kernel holds is there.
    region.convert(LAYOUT_VERSION).unwrap();
    let region = Region::attach(file.as_raw_fd()).unwrap();
    let h = region.header();
    assert_eq!(h.layout_version, LAYOUT_VERSION);
    let inodes = h.inode_high_water.load(Ordering::Acquire) as usize;
    let handles = h.handle_high_water.load(Ordering::Acquire) as usize;
    assert_eq!(live(&region.inode_headers()[..inodes]), FIXTURE_LIVE_INODES, "live inodes");
    assert_eq!(live(&region.handle_headers()[..handles]), FIXTURE_OPEN_HANDLES, "open handles");
    // A rollback to the previous build converts it down: byte for byte what that build wrote.
    region.convert(FIXTURE_LAYOUT).unwrap();
    assert_eq!(digest(&file), before, "up and down again is not the region the previous build wrote");
}

/// A region whose layout version this binary does not read — older than any it converts, or a
/// future one — is refused by name, and not one byte of it changes.
#[test]
fn test_region_of_an_unknown_layout_is_refused_untouched() {
    for version in [FIXTURE_LAYOUT - 1, LAYOUT_VERSION + 1, 99] {
        let file = load(FIXTURE);
        file.write_all_at(&version.to_le_bytes(), 8).unwrap();
        let before = digest(&file);
        for attach in [Region::attach, Region::attach_convertible] {
            let err = match attach(file.as_raw_fd()) {
                Ok(_) => panic!("layout version {version} was taken"),
                Err(e) => e.to_string(),
            };
            assert!(err.contains(&format!("layout version {version} (this build reads {LAYOUT_VERSION}")), "{err}");
            assert_eq!(digest(&file), before, "layout {version}: the region was changed");
        }
    }
}

/// FUSE passthrough's backing id lives in what was a handle slot's padding word: the slot keeps
/// its size and every field its offset (so LAYOUT_VERSION stays), and in a region written before
/// it (the fixture, with two handles open) that word is zero in every slot: such handles read as
/// "no backing id", which is what they are.
#[test]
fn test_handle_backing_id_fits_the_old_padding() {
    use phoenixfsd::state::handles::HandleSlot;
    use phoenixfsd::state::region::Header;
    use std::mem::offset_of;
    assert_eq!(size_of::<HandleSlot>(), 40);
    // Layout 5 and 6: kind 0, open_flags 4, nodeid 8, owner 16, pid 24, padding 28, via 32.
    assert_eq!(
        [
            offset_of!(HandleSlot, kind),
            offset_of!(HandleSlot, open_flags),
            offset_of!(HandleSlot, nodeid),
            offset_of!(HandleSlot, owner),
            offset_of!(HandleSlot, pid),
            offset_of!(HandleSlot, backing),
            offset_of!(HandleSlot, via)
        ],
        [0, 4, 8, 16, 24, 28, 32]
    );
    let file = load(FIXTURE);
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        file.read_exact_at(&mut b, at as u64).unwrap();
        u64::from_le_bytes(b)
    };
    let u32_at = |at: u64| {
        let mut b = [0u8; 4];
        file.read_exact_at(&mut b, at).unwrap();
        u32::from_le_bytes(b)
    };
    let slots = u64_at(offset_of!(Header, handle_offset));
    let headers = u64_at(offset_of!(Header, handle_header_offset));
    let capacity = u32_at(offset_of!(Header, handle_capacity) as u64);
    let mut open = 0;
    for i in 0..u64::from(capacity) {
        let slot = slots + i * size_of::<HandleSlot>() as u64;
        // The slot header's first word is its state.
        if u32_at(headers + i * size_of::<phoenixfsd::state::slots::SlotHeader>() as u64) == LIVE {
            open += 1;
        }
        assert_eq!(u32_at(slot + 28), 0, "handle slot {i}: the padding word is not zero");
    }
    assert_eq!(open, FIXTURE_OPEN_HANDLES, "the fixture's open handles (LIVE slots)");
}
