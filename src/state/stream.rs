//! The device state one daemon hands the next in a VM live migration (vhost-user DEVICE_STATE:
//! the frontend carries these bytes in its own migration stream): the FUSE session's agreed
//! flags, every node id the guest holds with its lookup count and how to find its object again
//! (a path beneath the share, or a file handle), and every open file and directory handle.
//! Pure: bytes in, a checked value out, and back; no fds, no I/O.
//!
//! The bytes come from the frontend, so decoding treats them as hostile: every count is bounded
//! by the bytes present, every length by a fixed maximum, every path is relative and cannot
//! climb (no `..`, `.`, empty components or NUL), ids are unique, handles name nodes the
//! stream carries, and a checksum over the whole catches a stream cut short or altered in
//! transit. What the ids mean (whether they fit this daemon's tables) is checked where they are
//! placed (`SlotTable::place`).
//!
//! Layout (little-endian): header `PHXFSMIG`, version u32, mode u32, flags u32, reserved u32,
//! negotiated u64, kernel flags u64, node count u64, handle count u64; each node: id u64,
//! lookups u64, file type u32, path length u32, handle type i32, handle length u32, the path,
//! the handle; each handle: fh u64, node id u64, kind u32, open flags u32; then FNV-1a 64 of
//! everything before it.

use crate::sys::fhandle::{FileHandle, MAX_HANDLE_SZ};

pub const MAGIC: [u8; 8] = *b"PHXFSMIG";
pub const VERSION: u32 = 1;
/// The largest stream a destination reads (bytes).
pub const MAX_STREAM: u64 = 1 << 30;
/// The longest path a node may carry (PATH_MAX).
pub const MAX_PATH: usize = 4096;

const HEADER: usize = 8 + 4 * 4 + 8 * 4;
const NODE_FIXED: usize = 8 + 8 + 4 * 4;
const HANDLE_ENTRY: usize = 8 + 8 + 4 + 4;
const TRAILER: usize = 8;
const FLAG_INIT_DONE: u32 = 1;

/// How the source told the destination where each node's object is (`--migration-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `find-paths`: a path beneath the share (virtiofsd's default).
    FindPaths = 1,
    /// `file-handles`: the object's file handle (same file system on both sides).
    FileHandles = 2,
}

/// The FUSE session as INIT left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Session {
    pub init_done: bool,
    pub negotiated: u64,
    pub kernel_flags: u64,
}

/// One node the guest holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: u64,
    pub lookups: u64,
    /// S_IFMT bits.
    pub file_type: u32,
    /// Relative to the share; "" never (the root is not sent).
    pub path: Option<Vec<u8>>,
    pub handle: Option<FileHandle>,
}

impl Node {
    /// A node the source could not locate (`--migration-on-error=guest-error`): the
    /// destination keeps its id, and using it fails.
    pub fn is_lost(&self) -> bool {
        self.path.is_none() && self.handle.is_none()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandleKind {
    File = 1,
    Dir = 2,
}

/// One open file or directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handle {
    pub fh: u64,
    pub nodeid: u64,
    pub kind: HandleKind,
    /// The guest's open flags (as OPEN carried them).
    pub open_flags: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceState {
    pub mode: Mode,
    pub session: Session,
    pub nodes: Vec<Node>,
    pub handles: Vec<Handle>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("not a phoenixfs device state (bad magic)")]
    BadMagic,
    #[error("device state version {0} (this build reads {VERSION})")]
    Version(u32),
    #[error("device state of {0} bytes is larger than the {MAX_STREAM}-byte limit")]
    TooLarge(u64),
    #[error("device state cut short in {0}")]
    Truncated(&'static str),
    #[error("device state checksum mismatch (altered or cut short)")]
    Checksum,
    #[error("{0} bytes after the device state's end")]
    Trailing(usize),
    #[error("unknown migration mode {0}")]
    BadMode(u32),
    #[error("{what} count {count} does not fit the {bytes} bytes present")]
    BadCount { what: &'static str, count: u64, bytes: usize },
    #[error("node {id:#x}: {why}")]
    BadNode { id: u64, why: &'static str },
    #[error("handle {fh:#x}: {why}")]
    BadHandle { fh: u64, why: &'static str },
}

/// FNV-1a, 64 bits.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

pub fn encode(state: &DeviceState) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + state.nodes.len() * (NODE_FIXED + 64) + TRAILER);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(state.mode as u32).to_le_bytes());
    let flags = if state.session.init_done { FLAG_INIT_DONE } else { 0 };
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&state.session.negotiated.to_le_bytes());
    out.extend_from_slice(&state.session.kernel_flags.to_le_bytes());
    out.extend_from_slice(&(state.nodes.len() as u64).to_le_bytes());
    out.extend_from_slice(&(state.handles.len() as u64).to_le_bytes());
    for n in &state.nodes {
        let path = n.path.as_deref().unwrap_or(&[]);
        let (htype, hbytes) = n.handle.as_ref().map_or((0, &[][..]), |h| (h.handle_type, h.bytes()));
        out.extend_from_slice(&n.id.to_le_bytes());
        out.extend_from_slice(&n.lookups.to_le_bytes());
        out.extend_from_slice(&n.file_type.to_le_bytes());
        out.extend_from_slice(&(path.len() as u32).to_le_bytes());
        out.extend_from_slice(&htype.to_le_bytes());
        out.extend_from_slice(&(hbytes.len() as u32).to_le_bytes());
        out.extend_from_slice(path);
        out.extend_from_slice(hbytes);
    }
    for h in &state.handles {
        out.extend_from_slice(&h.fh.to_le_bytes());
        out.extend_from_slice(&h.nodeid.to_le_bytes());
        out.extend_from_slice(&(h.kind as u32).to_le_bytes());
        out.extend_from_slice(&h.open_flags.to_le_bytes());
    }
    let sum = fnv1a(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], StreamError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or(StreamError::Truncated(what))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, StreamError> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, StreamError> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().expect("8 bytes")))
    }
    fn left(&self) -> usize {
        self.bytes.len() - self.at
    }
}

/// A path a node may carry: relative, at most `MAX_PATH` bytes, no NUL, and made of names
/// only (no empty component, `.` or `..`), so that it resolves beneath the share.
pub fn check_path(path: &[u8]) -> Result<(), &'static str> {
    if path.is_empty() || path.len() > MAX_PATH {
        return Err("path empty or longer than PATH_MAX");
    }
    if path.contains(&0) {
        return Err("path contains NUL");
    }
    if path[0] == b'/' {
        return Err("path is absolute");
    }
    if path.split(|&b| b == b'/').any(|c| c.is_empty() || c == b"." || c == b"..") {
        return Err("path has an empty, `.` or `..` component");
    }
    Ok(())
}

fn is_file_type(t: u32) -> bool {
    matches!(
        t,
        libc::S_IFREG | libc::S_IFDIR | libc::S_IFLNK | libc::S_IFIFO | libc::S_IFSOCK | libc::S_IFCHR | libc::S_IFBLK
    )
}

/// Decodes and checks a device state (see the module's comment for what is checked).
pub fn decode(bytes: &[u8]) -> Result<DeviceState, StreamError> {
    if bytes.len() as u64 > MAX_STREAM {
        return Err(StreamError::TooLarge(bytes.len() as u64));
    }
    if bytes.len() < 8 || bytes[..8] != MAGIC {
        return Err(StreamError::BadMagic);
    }
    if bytes.len() < HEADER + TRAILER {
        return Err(StreamError::Truncated("the header"));
    }
    let (body, trailer) = bytes.split_at(bytes.len() - TRAILER);
    let mut c = Cursor { bytes: body, at: 8 };
    let version = c.u32("the header")?;
    if version != VERSION {
        return Err(StreamError::Version(version));
    }
    if fnv1a(body) != u64::from_le_bytes(trailer.try_into().expect("8 bytes")) {
        return Err(StreamError::Checksum);
    }
    let mode = match c.u32("the header")? {
        1 => Mode::FindPaths,
        2 => Mode::FileHandles,
        m => return Err(StreamError::BadMode(m)),
    };
    let flags = c.u32("the header")?;
    let _reserved = c.u32("the header")?;
    let session = Session {
        init_done: flags & FLAG_INIT_DONE != 0,
        negotiated: c.u64("the header")?,
        kernel_flags: c.u64("the header")?,
    };
    let node_count = c.u64("the header")?;
    let handle_count = c.u64("the header")?;
    // Bounded by the bytes present before anything is allocated for them.
    let need = node_count.checked_mul(NODE_FIXED as u64).ok_or(StreamError::Truncated("the nodes"))?;
    if need > c.left() as u64 {
        return Err(StreamError::BadCount { what: "node", count: node_count, bytes: c.left() });
    }
    let mut nodes = Vec::with_capacity(node_count as usize);
    let mut ids = std::collections::HashSet::with_capacity(node_count as usize);
    for _ in 0..node_count {
        let id = c.u64("a node")?;
        let lookups = c.u64("a node")?;
        let file_type = c.u32("a node")?;
        let path_len = c.u32("a node")? as usize;
        let handle_type = c.u32("a node")? as i32;
        let handle_len = c.u32("a node")? as usize;
        let bad = |why| StreamError::BadNode { id, why };
        if id as u32 <= 1 {
            return Err(bad("node id names no slot a guest can hold (0, or the root)"));
        }
        if !ids.insert(id) {
            return Err(bad("node id appears twice"));
        }
        if lookups == 0 {
            return Err(bad("lookup count 0"));
        }
        if !is_file_type(file_type) {
            return Err(bad("unknown file type"));
        }
        if path_len > MAX_PATH {
            return Err(bad("path longer than PATH_MAX"));
        }
        if handle_len > MAX_HANDLE_SZ {
            return Err(bad("file handle longer than MAX_HANDLE_SZ"));
        }
        let path = c.take(path_len, "a node's path")?;
        let handle = c.take(handle_len, "a node's file handle")?;
        let path = (path_len > 0).then(|| path.to_vec());
        if let Some(p) = &path {
            check_path(p).map_err(bad)?;
        }
        if mode == Mode::FileHandles && path.is_some() {
            return Err(bad("a path in file-handles mode"));
        }
        let handle = (handle_len > 0).then(|| FileHandle::new(handle_type, handle));
        nodes.push(Node { id, lookups, file_type, path, handle });
    }
    let need = handle_count.checked_mul(HANDLE_ENTRY as u64).ok_or(StreamError::Truncated("the handles"))?;
    if need != c.left() as u64 {
        return Err(if need > c.left() as u64 {
            StreamError::BadCount { what: "handle", count: handle_count, bytes: c.left() }
        } else {
            StreamError::Trailing(c.left() - need as usize)
        });
    }
    let mut handles = Vec::with_capacity(handle_count as usize);
    let mut fhs = std::collections::HashSet::with_capacity(handle_count as usize);
    for _ in 0..handle_count {
        let fh = c.u64("a handle")?;
        let nodeid = c.u64("a handle")?;
        let kind = c.u32("a handle")?;
        let open_flags = c.u32("a handle")?;
        let bad = |why| StreamError::BadHandle { fh, why };
        if fh as u32 == 0 {
            return Err(bad("fh names no slot"));
        }
        if !fhs.insert(fh) {
            return Err(bad("fh appears twice"));
        }
        if nodeid != crate::state::ROOT_ID && !ids.contains(&nodeid) {
            return Err(bad("its node is not in the state"));
        }
        let kind = match kind {
            1 => HandleKind::File,
            2 => HandleKind::Dir,
            _ => return Err(bad("unknown kind")),
        };
        handles.push(Handle { fh, nodeid, kind, open_flags });
    }
    Ok(DeviceState { mode, session, nodes, handles })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DeviceState {
        DeviceState {
            mode: Mode::FindPaths,
            session: Session { init_done: true, negotiated: 0x1234_5678_9abc, kernel_flags: 0xffff },
            nodes: vec![
                Node { id: 2, lookups: 3, file_type: libc::S_IFDIR, path: Some(b"d".to_vec()), handle: None },
                Node {
                    id: (7 << 32) | 5,
                    lookups: 1,
                    file_type: libc::S_IFREG,
                    path: Some(b"d/f.txt".to_vec()),
                    handle: Some(FileHandle::new(1, &[1, 2, 3, 4, 5, 6, 7, 8])),
                },
                Node { id: 9, lookups: 2, file_type: libc::S_IFREG, path: None, handle: None },
            ],
            handles: vec![
                Handle { fh: 1, nodeid: (7 << 32) | 5, kind: HandleKind::File, open_flags: libc::O_RDWR as u32 },
                Handle { fh: (1 << 32) | 2, nodeid: 1, kind: HandleKind::Dir, open_flags: 0 },
            ],
        }
    }

    #[test]
    fn test_stream_round_trip() {
        let s = sample();
        assert_eq!(decode(&encode(&s)).unwrap(), s);
        let empty =
            DeviceState { mode: Mode::FileHandles, session: Session::default(), nodes: vec![], handles: vec![] };
        assert_eq!(decode(&encode(&empty)).unwrap(), empty);
    }

    #[test]
    fn test_stream_every_truncation_and_bit_flip_is_refused() {
        let bytes = encode(&sample());
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "cut to {len} bytes");
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(decode(&b).is_err(), "bit flipped in byte {i}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
    }

    /// Re-encodes a hostile state with a valid checksum, so only the semantic checks can
    /// refuse it.
    fn refused(s: &DeviceState) -> StreamError {
        decode(&encode(s)).unwrap_err()
    }

    #[test]
    fn test_stream_paths_that_climb_are_refused() {
        for bad in [&b"../etc/passwd"[..], b"/etc/passwd", b"a/../../b", b"a//b", b"./a", b"a/.", b"a\0b", b"a/"] {
            let mut s = sample();
            s.nodes[0].path = Some(bad.to_vec());
            assert!(matches!(refused(&s), StreamError::BadNode { .. }), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut s = sample();
        s.nodes[0].path = Some(vec![b'a'; MAX_PATH + 1]);
        assert!(matches!(refused(&s), StreamError::BadNode { .. }));
        check_path(b"a/b.c/...").unwrap();
    }

    #[test]
    fn test_stream_bad_ids_kinds_and_references_are_refused() {
        let mut s = sample();
        s.nodes[1].id = s.nodes[0].id;
        assert!(matches!(refused(&s), StreamError::BadNode { why: "node id appears twice", .. }));
        let mut s = sample();
        s.nodes[0].id = 1;
        assert!(matches!(refused(&s), StreamError::BadNode { .. }), "the root is never sent");
        let mut s = sample();
        s.nodes[0].lookups = 0;
        assert!(matches!(refused(&s), StreamError::BadNode { .. }));
        let mut s = sample();
        s.nodes[0].file_type = 0o170000;
        assert!(matches!(refused(&s), StreamError::BadNode { .. }));
        let mut s = sample();
        s.handles[0].nodeid = 12345;
        assert!(matches!(refused(&s), StreamError::BadHandle { .. }));
        let mut s = sample();
        s.handles[1].fh = s.handles[0].fh;
        assert!(matches!(refused(&s), StreamError::BadHandle { .. }));
        let mut s = sample();
        s.mode = Mode::FileHandles;
        assert!(matches!(refused(&s), StreamError::BadNode { why: "a path in file-handles mode", .. }));
    }

    #[test]
    fn test_stream_huge_counts_are_refused_before_allocating() {
        let mut bytes = encode(&sample());
        // The node count (header offset 40) set to 2^40, checksum fixed up.
        bytes[40..48].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let n = bytes.len() - TRAILER;
        let sum = fnv1a(&bytes[..n]);
        bytes[n..].copy_from_slice(&sum.to_le_bytes());
        assert!(matches!(decode(&bytes), Err(StreamError::BadCount { what: "node", .. })));
    }
}
