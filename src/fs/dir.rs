//! Directories: OPENDIR, READDIR, READDIRPLUS, RELEASEDIR, FSYNCDIR. Reading is stateless: each
//! READDIR seeks the handle's fd to the offset the kernel gives and calls getdents64, so nothing
//! about a directory read lives outside the fd (which the shared fd table keeps across a crash).

use super::Payload;
use super::{Context, Fs, Result};
use crate::fuse::{DirEntry, abi};
use crate::state::HandleKind;
use crate::state::intent::MAX_RAISES;
use crate::sys;

/// Upper bound for one getdents64 call, whatever size the kernel asks for.
const MAX_GETDENTS: usize = 64 * 1024;

/// Lower bound for one getdents64 call: room for the longest record (a 255-byte name).
const MIN_GETDENTS: usize = 512;

/// How many bytes of the host's getdents64 records to read for `room` bytes of reply, or
/// None when not even a record for a one-byte name fits. Each request seeks to its offset
/// and reads afresh, so every record read beyond what fits is read again by the next request.
/// A READDIR record (24 bytes and the name, 8-aligned) is never smaller than the host's for
/// the same name (19 bytes, the name and its NUL, 8-aligned): reading `room` bytes reads no
/// more than fits. A READDIRPLUS record adds a 128-byte entry_out, five times the host's for
/// a short name: a fifth of the room. A short read is no loss: the loop reads again.
fn getdents_size(room: usize, plus: bool) -> Option<usize> {
    let (smallest, wanted) = if plus { (abi::direntplus_size(1), room / 5) } else { (abi::dirent_size(1), room) };
    (room >= smallest).then(|| wanted.clamp(MIN_GETDENTS, MAX_GETDENTS))
}

/// Walks the linux_dirent64 records of a getdents64 buffer. Bounded by the buffer: a record
/// whose length is zero or runs past the end stops the walk.
struct Dirents<'a> {
    buf: &'a [u8],
}

impl<'a> Iterator for Dirents<'a> {
    type Item = DirEntry<'a>;
    fn next(&mut self) -> Option<DirEntry<'a>> {
        // struct linux_dirent64 { u64 d_ino; i64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
        const NAME_AT: usize = 19;
        if self.buf.len() < NAME_AT {
            return None;
        }
        let ino = u64::from_ne_bytes(self.buf[0..8].try_into().ok()?);
        let off = u64::from_ne_bytes(self.buf[8..16].try_into().ok()?);
        let reclen = u16::from_ne_bytes(self.buf[16..18].try_into().ok()?) as usize;
        if reclen < NAME_AT || reclen > self.buf.len() {
            return None;
        }
        let typ = u32::from(self.buf[18]);
        let raw = &self.buf[NAME_AT..reclen];
        let name = &raw[..raw.iter().position(|b| *b == 0).unwrap_or(raw.len())];
        self.buf = &self.buf[reclen..];
        Some(DirEntry { ino, off, typ, name })
    }
}

impl Fs {
    /// OPENDIR: as OPEN (the fd first, then the handle two-phase in the record).
    pub fn opendir(&self, ctx: &Context, nodeid: u64, a: &abi::OpenIn) -> Result<abi::OpenOut> {
        let published = ctx.intent.handle();
        if published != 0 {
            return Ok(abi::OpenOut { fh: published, open_flags: 0, backing_id: 0 });
        }
        let node = self.state.inodes.pin(nodeid)?;
        let fd = {
            let _as = ctx.become_caller()?;
            self.reopen(node.fd(), libc::O_RDONLY | libc::O_DIRECTORY)?
        };
        crate::crash_point!("opendir.after_open");
        let fh = self.state.handles.insert(fd, HandleKind::Dir, nodeid, a.flags, 0, ctx.intent)?;
        Ok(abi::OpenOut { fh, open_flags: 0, backing_id: 0 })
    }

    /// READDIR (`plus` false) and READDIRPLUS: entries from `offset` on, as many as fit in
    /// `size` bytes of reply. READDIRPLUS takes a lookup per entry; a replay first gives back
    /// the ones the dead attempt took (the kernel never saw them), then reads afresh.
    pub fn readdir(&self, ctx: &Context, a: &abi::ReadIn, plus: bool, out: &mut impl Payload) -> Result<()> {
        for nodeid in ctx.intent.raised().into_iter().rev() {
            self.state.inodes.unraise(nodeid, ctx.intent);
        }
        let h = self.state.handles.pin(a.fh, HandleKind::Dir)?;
        let offset = i64::try_from(a.offset).map_err(|_| super::Error::OutOfRange)?;
        let limit = a.size as usize;
        let stripe = (h.id() as u32 as usize) % self.dir_locks.len();
        let _serial = self.dir_locks[stripe].lock().unwrap_or_else(|e| e.into_inner());
        sys::lseek(h.fd(), offset, libc::SEEK_SET)?;
        let _as = if plus { Some(ctx.become_caller()?) } else { None };
        let mut raw = vec![0u8; getdents_size(limit, plus).unwrap_or(0)];
        loop {
            let Some(want) = getdents_size(limit.saturating_sub(out.written()), plus) else {
                return Ok(());
            };
            let n = sys::getdents64(h.fd(), &mut raw[..want])?;
            if n == 0 {
                return Ok(());
            }
            for ent in (Dirents { buf: &raw[..n] }) {
                let fits =
                    if plus { self.push_plus(ctx, h.fd(), limit, &ent, out) } else { out.push_dirent(limit, &ent) };
                if !fits {
                    return Ok(());
                }
            }
        }
    }

    /// Appends one READDIRPLUS record, looking the entry up (which takes a lookup count the
    /// kernel will FORGET) only once the record is known to fit.
    fn push_plus(&self, ctx: &Context, dirfd: i32, limit: usize, ent: &DirEntry<'_>, out: &mut impl Payload) -> bool {
        // Each record's lookup is noted in the intent record, which holds a bounded number.
        if !out.fits_direntplus(limit, ent.name.len()) || ctx.intent.raised().len() >= MAX_RAISES {
            return false;
        }
        let mut entry = abi::EntryOut::default();
        if ent.name != b"." && ent.name != b".." {
            // An entry that vanished or cannot be looked up is still listed, with node id 0,
            // which tells the kernel to list it without caching anything for it.
            if let Ok(name) = std::ffi::CString::new(ent.name)
                && let Ok(e) = self.lookup_at(dirfd, &name, ctx.intent)
            {
                entry = e;
            }
        }
        out.push_direntplus(&entry, ent);
        true
    }

    pub fn releasedir(&self, ctx: &Context, fh: u64) -> Result<()> {
        self.release(ctx, fh, HandleKind::Dir)
    }
}
