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

/// The host's tree under `share` (STOP left out), as listing lines, sorted. (Not used by the
/// guest workload, which includes this file for the line formats.)
#[allow(dead_code)]
pub fn host_listing(share: &std::path::Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    fn walk(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).expect("read_dir in the share") {
            let path = e.expect("read_dir entry").path();
            let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel == "STOP" {
                continue;
            }
            let md = std::fs::symlink_metadata(&path).expect("lstat in the share");
            if md.is_dir() {
                out.push(dir_line(&rel));
                walk(root, &path, out);
            } else {
                let data = std::fs::read(&path).expect("read a file in the share");
                out.push(file_line(&rel, md.len(), md.nlink(), hash(&data)));
            }
        }
    }
    let mut out = Vec::new();
    walk(share, share, &mut out);
    out.sort();
    out
}
