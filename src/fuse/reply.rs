//! Reply encoding: typed values in, bytes out. A `ReplyBuf` is reused per thread: it holds the
//! out-header followed by the payload, so a READ can land its data right behind the header —
//! or, where the transport offers room for the payload in place (a virtqueue's writable guest
//! buffers after the header), straight there, and the buffer keeps only the header.

use zerocopy::{Immutable, IntoBytes};

use super::abi::{self, OutHeader};
use crate::sys::IoVec;

const HEADER: usize = size_of::<OutHeader>();

#[derive(Debug, Default)]
pub struct ReplyBuf {
    bytes: Vec<u8>,
    /// Where the transport lets a READ's data go in place (empty: into `bytes`).
    room: Vec<IoVec>,
    /// Bytes of payload a READ put into `room`: they follow the header there, not in `bytes`.
    placed: usize,
}

impl ReplyBuf {
    pub fn new() -> Self {
        Self::with_capacity(HEADER + 4096)
    }

    pub fn with_capacity(n: usize) -> Self {
        ReplyBuf { bytes: Vec::with_capacity(n), room: Vec::new(), placed: 0 }
    }

    /// Writes every page of the spare capacity once, so that later replies never fault (the
    /// transport's reason: a fault cannot be served while the thread is being killed).
    pub fn prefault(&mut self) {
        let cap = self.bytes.capacity();
        self.bytes.resize(cap, 0);
        self.bytes.clear();
    }

    /// Starts an empty payload (the header is filled in by `finish`).
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.bytes.resize(HEADER, 0);
        self.placed = 0;
    }

    /// The transport's room for the next reply's payload, in place right behind where it will
    /// put the header: a READ reads into it, and the sealed reply is the header alone, its
    /// length counting the bytes placed. Lasts until `take_room`.
    pub fn offer_room(&mut self, room: impl IntoIterator<Item = IoVec>) {
        self.room.clear();
        self.room.extend(room);
    }

    /// Withdraws the room (after the reply went out), and what was placed in it.
    pub fn take_room(&mut self) {
        self.room.clear();
        self.placed = 0;
    }

    /// Reads up to `len` bytes of `fd` at `offset` as the payload: into the offered room if
    /// there is one, else behind the header. Returns how many.
    pub fn pread_payload(&mut self, fd: i32, offset: u64, len: usize) -> std::io::Result<usize> {
        if self.room.is_empty() {
            let start = self.bytes.len();
            let read = crate::sys::pread(fd, self.tail_mut(len), offset);
            // The bytes past what was read (all of them on an error) are no payload.
            self.bytes.truncate(start + read.as_ref().map_or(0, |n| *n));
            return read;
        }
        let n = crate::sys::preadv(fd, &self.room, len, offset)?;
        self.placed = n;
        Ok(n)
    }

    pub fn push_obj<T: IntoBytes + Immutable>(&mut self, v: &T) {
        self.bytes.extend_from_slice(v.as_bytes());
    }

    pub fn push_bytes(&mut self, b: &[u8]) {
        self.bytes.extend_from_slice(b);
    }

    pub fn payload_len(&self) -> usize {
        self.bytes.len().saturating_sub(HEADER)
    }

    /// Grows the payload by `len` zeroed bytes and returns them, for a syscall to fill; follow
    /// with `truncate_payload` to the count it really produced.
    pub fn tail_mut(&mut self, len: usize) -> &mut [u8] {
        let start = self.bytes.len();
        self.bytes.resize(start + len, 0);
        &mut self.bytes[start..]
    }

    pub fn truncate_payload(&mut self, len: usize) {
        self.bytes.truncate(HEADER + len);
    }

    /// Seals a success reply and returns the bytes to send.
    pub fn finish_ok(&mut self, unique: u64) -> &[u8] {
        self.seal(unique, 0)
    }

    /// Replaces whatever payload was built with an error reply.
    pub fn finish_err(&mut self, unique: u64, errno: i32) -> &[u8] {
        self.clear();
        self.seal(unique, -errno.abs())
    }

    fn seal(&mut self, unique: u64, error: i32) -> &[u8] {
        if self.bytes.len() < HEADER {
            self.bytes.resize(HEADER, 0);
        }
        let h = OutHeader { len: (self.bytes.len() + self.placed) as u32, error, unique };
        self.bytes[..HEADER].copy_from_slice(h.as_bytes());
        &self.bytes
    }

    /// Appends one READDIR record if it fits in `limit` payload bytes; false when it does not.
    pub fn push_dirent(&mut self, limit: usize, ent: &DirEntry<'_>) -> bool {
        let size = abi::dirent_size(ent.name.len());
        if self.payload_len() + size > limit {
            return false;
        }
        self.push_dirent_body(ent, size);
        true
    }

    /// Whether a READDIRPLUS record for `namelen` bytes still fits: asked before the lookup
    /// that the record implies, so a lookup count is never raised for an entry not sent.
    pub fn fits_direntplus(&self, limit: usize, namelen: usize) -> bool {
        self.payload_len() + abi::direntplus_size(namelen) <= limit
    }

    pub fn push_direntplus(&mut self, entry: &abi::EntryOut, ent: &DirEntry<'_>) {
        self.push_obj(entry);
        self.push_dirent_body(ent, abi::dirent_size(ent.name.len()));
    }

    fn push_dirent_body(&mut self, ent: &DirEntry<'_>, padded: usize) {
        let d = abi::Dirent { ino: ent.ino, off: ent.off, namelen: ent.name.len() as u32, typ: ent.typ };
        let start = self.bytes.len();
        self.push_obj(&d);
        self.push_bytes(ent.name);
        self.bytes.resize(start + padded, 0);
    }
}

/// One directory entry as READDIR reports it.
#[derive(Debug, Clone, Copy)]
pub struct DirEntry<'a> {
    pub ino: u64,
    /// Offset of the *next* entry: the value to pass back to continue after this one.
    pub off: u64,
    /// DT_* type.
    pub typ: u32,
    pub name: &'a [u8],
}

/// FUSE_NOTIFY_RESEND: asks the kernel to queue again every request read but not yet answered.
pub fn notify_resend() -> [u8; HEADER] {
    let h = OutHeader { len: HEADER as u32, error: abi::NOTIFY_RESEND, unique: 0 };
    let mut out = [0u8; HEADER];
    out.copy_from_slice(h.as_bytes());
    out
}
