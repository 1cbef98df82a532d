//! The tree listing that the guest workload (examples/vm_guest) prints from its model and that
//! tests/vm.rs computes from the host's share: one line per directory and per file name, so
//! the two can be compared line for line.

/// FNV-1a, 64 bits: enough to tell file contents apart, and the same on both sides.
pub fn hash(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A directory, by its path relative to the share.
pub fn dir_line(path: &str) -> String {
    format!("d {path}")
}

/// A file name: its path, size, link count and content hash.
pub fn file_line(path: &str, size: u64, nlink: u64, hash: u64) -> String {
    format!("f {path} {size} {nlink} {hash:016x}")
}
