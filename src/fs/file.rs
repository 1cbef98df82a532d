//! Open files: OPEN, CREATE, TMPFILE, READ, WRITE, FLUSH, RELEASE, FSYNC, FALLOCATE, LSEEK,
//! COPY_FILE_RANGE; and the whole-file-system calls STATFS, ACCESS, SYNCFS.

use std::ffi::CStr;

use super::Payload;
use super::creds::without_fsetid_if;
use super::once::{self, Call, is_errno};
use super::{Context, Error, Fs, Result, check_name};
use crate::fuse::abi;
use crate::state::intent::{Intent, facts};
use crate::state::{HandleKind, HandlePin};
use crate::sys::{self, FdName};

/// Largest COPY_FILE_RANGE a reply can report (its size field is 32 bits).
const MAX_COPY: u64 = 1 << 30;

impl Fs {
    /// The flags a guest open turns into on the host: creation flags are handled by the kernel
    /// before OPEN (or by our own openat for CREATE), and writeback caching needs read access
    /// and no O_APPEND because the guest kernel writes back whole pages at offsets it chose.
    /// The exec flag is the guest kernel's own and means nothing to a host open.
    pub(super) fn host_open_flags(&self, guest: u32) -> i32 {
        let guest = guest & !abi::FMODE_EXEC;
        let mut f = guest as i32 & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY);
        // O_NOATIME is refused (EPERM) to a caller who does not own the file, so it is dropped
        // unless the operator asked to keep it (virtiofsd's --preserve-noatime).
        if !self.cfg.preserve_noatime {
            f &= !libc::O_NOATIME;
        }
        if !self.cfg.allow_direct_io {
            f &= !libc::O_DIRECT;
        }
        if self.writeback.load(std::sync::atomic::Ordering::Relaxed) {
            f &= !libc::O_APPEND;
            if f & libc::O_ACCMODE == libc::O_WRONLY {
                f = (f & !libc::O_ACCMODE) | libc::O_RDWR;
            }
        }
        f
    }

    /// The OPEN/CREATE reply for file handle `fh`, naming its passthrough backing id if any
    /// (the kernel allows no KEEP_CACHE beside it: a passthrough file has no FUSE page cache).
    ///
    /// A read-only open is closed without a FLUSH (FOPEN_NOFLUSH: one round trip less per
    /// open-read-close) unless we serve POSIX locks, which a FLUSH drops: FLUSH does nothing
    /// else for it (`flush`'s close of a duplicate writes nothing back for an fd that never
    /// wrote; NFS and CIFS return at once for a read-only file). With writeback caching the
    /// kernel flushes anyway (it ignores the flag).
    fn open_out(&self, fh: u64, guest_flags: u32, backing: u32) -> abi::OpenOut {
        let mut open_flags = self.cfg.open_reply_flags;
        if self.direct_io(guest_flags) {
            open_flags |= abi::FOPEN_DIRECT_IO;
        }
        if guest_flags as i32 & libc::O_ACCMODE == libc::O_RDONLY
            && !self.posix_locks.load(std::sync::atomic::Ordering::Relaxed)
            && !self.writeback.load(std::sync::atomic::Ordering::Relaxed)
        {
            open_flags |= abi::FOPEN_NOFLUSH;
        }
        if backing != 0 {
            open_flags = (open_flags & !abi::FOPEN_KEEP_CACHE) | abi::FOPEN_PASSTHROUGH;
        }
        abi::OpenOut { fh, open_flags, backing_id: backing as i32 }
    }

    /// Whether an open with these guest flags is answered with FOPEN_DIRECT_IO.
    fn direct_io(&self, guest_flags: u32) -> bool {
        self.cfg.open_reply_flags & abi::FOPEN_DIRECT_IO != 0
            || (self.cfg.allow_direct_io && guest_flags as i32 & libc::O_DIRECT != 0)
    }

    pub(super) fn pin_any_handle(&self, fh: u64) -> Result<HandlePin> {
        self.state
            .handles
            .pin(fh, HandleKind::File)
            .or_else(|_| self.state.handles.pin(fh, HandleKind::Dir))
            .map_err(Error::from)
    }

    /// Publishes `fd`, a regular file opened on `nodeid` for the guest, as a file handle
    /// (two-phase in the request's record), with its passthrough backing id if it gets one
    /// (fs/passthrough.rs; a guest O_DIRECT open asks for none), and counts the node's open
    /// files for its lock owners. `mode`: the file's mode if just read (a CREATE's lookup), which
    /// passthrough would otherwise read. Returns the fh and the backing id (0: none).
    fn publish_file(
        &self,
        fd: i32,
        nodeid: u64,
        guest_flags: u32,
        mode: Option<u32>,
        intent: Intent,
    ) -> Result<(u64, u32)> {
        let eligible = !self.direct_io(guest_flags) && guest_flags as i32 & libc::O_DIRECT == 0;
        let backing = match self.attach_backing(intent, nodeid, mode, eligible) {
            Ok(b) => b.id,
            Err(e) => {
                sys::close(fd);
                return Err(e);
            }
        };
        // Crash from here to the publication: the handle's slot is SETTING_UP (or not yet
        // taken) and the id in the record; recovery frees the slot and closes the id.
        let fh = match self.state.handles.insert(fd, HandleKind::File, nodeid, guest_flags, backing, intent) {
            Ok(fh) => fh,
            Err(e) => {
                self.detach_backing(nodeid, backing);
                return Err(e.into());
            }
        };
        self.locks.file_opened(nodeid);
        Ok((fh, backing))
    }

    fn file(&self, fh: u64) -> Result<HandlePin> {
        Ok(self.state.handles.pin(fh, HandleKind::File)?)
    }

    /// OPEN. Steps: the fd is opened as the caller, or, for a program the caller may execute
    /// but not read, as `open_for_exec` says (a crash after it leaves an fd no table names,
    /// closed by recovery's sweep; the replay opens again, which is idempotent even with
    /// O_TRUNC); then the handle is published two-phase in the record, so a replay after it
    /// replies with the same fh.
    pub fn open(&self, ctx: &Context, nodeid: u64, a: &abi::OpenIn) -> Result<abi::OpenOut> {
        let published = ctx.intent.handle();
        if published != 0 {
            return Ok(self.open_out(published, a.flags, self.backing_of(published)));
        }
        let node = self.state.inodes.pin(nodeid)?;
        let kind = node.slot().file_type.load(std::sync::atomic::Ordering::Relaxed);
        if kind == libc::S_IFDIR && a.flags as i32 & libc::O_ACCMODE != libc::O_RDONLY {
            return Err(Error::from_errno(libc::EISDIR));
        }
        // A FUSE kernel opens FIFOs, sockets and devices itself and never sends OPEN for them; a
        // guest that does would have a serving thread block for good opening a FIFO.
        if matches!(kind, libc::S_IFIFO | libc::S_IFSOCK | libc::S_IFCHR | libc::S_IFBLK) {
            return Err(Error::from_errno(libc::ENXIO));
        }
        let flags = self.host_open_flags(a.flags);
        let as_caller = {
            let _as = ctx.become_caller()?;
            let _kill = without_fsetid_if(kills_suidgid(flags, a.open_flags))?;
            self.reopen(node.fd(), flags)
        };
        let fd = match as_caller {
            Err(e) if e.errno() == libc::EACCES && kind == libc::S_IFREG && is_exec_open(a.flags) => {
                self.open_for_exec(ctx, node.fd(), flags)?
            }
            r => r?,
        };
        crate::crash_point!("open.after_open");
        if kind != libc::S_IFREG {
            let fh = self.state.handles.insert(fd, HandleKind::File, nodeid, a.flags, 0, ctx.intent)?;
            self.locks.file_opened(nodeid);
            return Ok(self.open_out(fh, a.flags, 0));
        }
        let (fh, backing) = self.publish_file(fd, nodeid, a.flags, None, ctx.intent)?;
        Ok(self.open_out(fh, a.flags, backing))
    }

    /// The kernel's open of a program for execve, which the caller may execute but not read
    /// (mode 0111, 0711): natively the kernel reads such a program for its caller, so the caller
    /// needs execute permission only. The host checks that permission with the caller's
    /// identity (as the guest kernel already did); only then is the file opened for reading with
    /// the daemon's own. Nothing else is granted: the fd is read-only, the node is a regular
    /// file of the share, and the guest kernel keeps the fd for loading the program.
    fn open_for_exec(&self, ctx: &Context, fd: i32, flags: i32) -> Result<i32> {
        let name = FdName::new(fd);
        {
            let _as = ctx.become_caller()?;
            sys::faccessat(self.proc_self_fd, name.as_cstr(), libc::X_OK, libc::AT_EACCESS)?;
        }
        self.reopen(fd, flags)
    }

    /// CREATE. Steps: (0) whether the name exists is recorded — with O_EXCL an existing name is
    /// a real EEXIST; (1-2) the create-open, bracketed (a replay that gets EEXIST where the name
    /// was absent finds its own file and opens it without O_CREAT); (3) the lookup raise; (4) the
    /// handle publication. A replay after (3) reopens the node; after (4) only replies.
    pub fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        a: &abi::CreateIn,
    ) -> Result<(abi::EntryOut, abi::OpenOut)> {
        let name = check_name(name)?;
        let intent = ctx.intent;
        if let Some(&nodeid) = intent.raised().first() {
            return self.finish_create(ctx, nodeid, a);
        }
        let dir = self.state.inodes.pin(parent)?;
        let mut as_caller = Some(ctx.become_caller()?);
        let excl = a.flags as i32 & libc::O_EXCL;
        let mut existed = intent.fact(facts::CREATE_EXISTED);
        if intent.must_check_world_before() {
            existed = sys::fstatat(dir.fd(), name, libc::AT_SYMLINK_NOFOLLOW).is_ok();
            if existed && excl != 0 {
                return Err(Error::from_errno(libc::EEXIST));
            }
            intent.set_fact(facts::CREATE_EXISTED, existed);
        } else if intent.step() == 0 && ctx.secctx.is_some() {
            // No record (recovery off): whether this CREATE makes the file, for its label.
            existed = sys::fstatat(dir.fd(), name, libc::AT_SYMLINK_NOFOLLOW).is_ok();
        }
        let flags = self.host_open_flags(a.flags) | libc::O_NOFOLLOW;
        let _kill = without_fsetid_if(kills_suidgid(flags, a.open_flags))?;
        let _umask = self.caller_umask(a.umask)?;
        let mut fd = -1;
        let opened = once::once(
            intent,
            Call::Create,
            || {
                fd = sys::openat(dir.fd(), name, flags | libc::O_CREAT | excl, a.mode)?;
                Ok(())
            },
            |e| is_errno(e, libc::EEXIST) && !intent.fact(facts::CREATE_EXISTED),
        );
        opened?;
        if fd < 0 {
            // A replay: the file exists (made by the dead attempt); open it as it stands.
            fd = sys::openat(dir.fd(), name, flags & !libc::O_TRUNC, 0)?;
        }
        if ctx.secctx.is_some() && !existed {
            // A new file's label (FUSE_SECURITY_CTX), with the daemon's credentials, before the
            // lookup raise (see `make_then_lookup`).
            as_caller = None;
            if let Err(e) = self.label_new_object(dir.fd(), name, fd, false, ctx) {
                sys::close(fd);
                return Err(e);
            }
        }
        let entry = match self.lookup_at(dir.fd(), name, intent) {
            Ok(entry) => entry,
            Err(e) => {
                sys::close(fd);
                return Err(e);
            }
        };
        drop(as_caller);
        let (fh, backing) = self.publish_file(fd, entry.nodeid, a.flags, Some(entry.attr.mode), intent)?;
        Ok((entry, self.open_out(fh, a.flags, backing)))
    }

    /// The end of a CREATE or TMPFILE replayed after its lookup raise: publish the handle (by
    /// reopening the node) unless that happened too, then reply.
    fn finish_create(&self, ctx: &Context, nodeid: u64, a: &abi::CreateIn) -> Result<(abi::EntryOut, abi::OpenOut)> {
        let entry = self.entry_of(nodeid)?;
        let mut fh = ctx.intent.handle();
        let mut backing = self.backing_of(fh);
        if fh == 0 {
            let node = self.state.inodes.pin(nodeid)?;
            let flags = self.host_open_flags(a.flags) & !(libc::O_TRUNC | libc::O_TMPFILE | libc::O_DIRECTORY);
            let fd = self.reopen(node.fd(), flags)?;
            (fh, backing) = self.publish_file(fd, nodeid, a.flags, None, ctx.intent)?;
        }
        Ok((entry, self.open_out(fh, a.flags, backing)))
    }

    /// TMPFILE. The unnamed file has no effect until its handle exists, so a replay before the
    /// lookup raise simply starts over (the dead attempt's file vanishes when recovery closes
    /// its fd); after it, as CREATE.
    pub fn tmpfile(&self, ctx: &Context, parent: u64, a: &abi::CreateIn) -> Result<(abi::EntryOut, abi::OpenOut)> {
        if let Some(&nodeid) = ctx.intent.raised().first() {
            return self.finish_create(ctx, nodeid, a);
        }
        let dir = self.state.inodes.pin(parent)?;
        let (fd, entry) = {
            let _as = ctx.become_caller()?;
            let flags = (self.host_open_flags(a.flags) & !libc::O_DIRECTORY) | libc::O_TMPFILE;
            let fd = {
                let _umask = self.caller_umask(a.umask)?;
                sys::openat(dir.fd(), c".", flags, a.mode)?
            };
            crate::crash_point!("tmpfile.after_open");
            // Its label (FUSE_SECURITY_CTX), set as the caller on the caller's new file: it has no
            // name to remove if that fails, and a replay before the lookup raise starts over
            // with a new file.
            if let Some(sec) = &ctx.secctx
                && let Err(e) = self.set_security_context(fd, sec)
            {
                sys::close(fd);
                return Err(e);
            }
            // The unnamed file has no name to look up: its node is made from the fd itself.
            let name = FdName::new(fd);
            match self.lookup_at_magic(name.as_cstr(), ctx.intent) {
                Ok(entry) => (fd, entry),
                Err(e) => {
                    sys::close(fd);
                    return Err(e);
                }
            }
        };
        let (fh, backing) = self.publish_file(fd, entry.nodeid, a.flags, Some(entry.attr.mode), ctx.intent)?;
        Ok((entry, self.open_out(fh, a.flags, backing)))
    }

    /// Looks up an object by its /proc/self/fd entry (for files that have no name).
    fn lookup_at_magic(&self, fd_name: &CStr, intent: Intent) -> Result<abi::EntryOut> {
        let path_fd = sys::openat(self.proc_self_fd, fd_name, libc::O_PATH, 0)?;
        self.lookup_fd(path_fd, intent)
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32, out: &mut impl Payload) -> Result<()> {
        let h = self.file(fh)?;
        out.pread(h.fd(), offset, size as usize)?;
        Ok(())
    }

    /// WRITE. A write at an offset is idempotent, so a replay simply writes again. A write to an
    /// O_APPEND file is not: its size before is recorded (0), then the write is bracketed (1-2).
    /// A replay that finds the file grown since (0) takes the growth as the part of its data the
    /// dead attempt wrote (a SIGKILL can cut a write short at a page boundary) and appends only
    /// the rest.
    ///
    /// `kill_suidgid` (FUSE_WRITE_KILL_SUIDGID) says the writer lacks CAP_FSETID. If the file
    /// has a set-id bit, the write then runs as the caller and without CAP_FSETID, so that the
    /// host write itself clears the bits exactly as it would for the writer (sgid without g+x
    /// goes only for a writer outside the file's group); a replay finds them cleared already.
    /// Without a set-id bit the caller's identity changes nothing (security.capability goes
    /// whoever writes), so the common write costs one fstat more, not a credential switch.
    pub fn write(
        &self,
        ctx: &Context,
        fh: u64,
        offset: u64,
        data: sys::Source<'_>,
        kill_suidgid: bool,
    ) -> Result<abi::WriteOut> {
        let h = self.file(fh)?;
        let setid = libc::S_ISUID | libc::S_ISGID;
        let kill = kill_suidgid && super::attr::stat_fd(h.fd())?.st_mode & setid != 0;
        let _as = if kill { Some(ctx.become_caller()?) } else { None };
        let _kill = without_fsetid_if(kill)?;
        let append = h.slot().open_flags.load(std::sync::atomic::Ordering::Relaxed) as i32 & libc::O_APPEND != 0
            && !self.writeback.load(std::sync::atomic::Ordering::Relaxed);
        let intent = ctx.intent;
        if !append || intent.record().is_none() {
            let n = data.pwrite_from(h.fd(), 0, offset)?;
            // Crash here: the data is written, the reply is not; the replay writes the same
            // bytes at the same offset again.
            crate::crash_point!("write.after_pwrite");
            return Ok(abi::WriteOut { size: n as u32, padding: 0 });
        }
        let size_now = || super::attr::stat_fd(h.fd()).map(|st| st.st_size as u64);
        if intent.must_check_world_before() {
            intent.set_fact(facts::APPEND_SIZE_BEFORE, size_now()?);
        }
        let written = if intent.step() == once::ISSUED {
            (size_now()?.saturating_sub(intent.fact(facts::APPEND_SIZE_BEFORE)) as usize).min(data.len())
        } else {
            0
        };
        once::once(
            intent,
            Call::Append,
            || {
                let n = if written == data.len() { 0 } else { data.pwrite_from(h.fd(), written, offset)? };
                intent.set_fact(facts::APPEND_WRITTEN, (written + n) as u64);
                Ok(())
            },
            |_| false,
        )?;
        Ok(abi::WriteOut { size: intent.fact(facts::APPEND_WRITTEN) as u32, padding: 0 })
    }

    pub fn flush(&self, fh: u64, lock_owner: u64) -> Result<()> {
        let h = self.file(fh)?;
        self.drop_owner_locks(h.slot().nodeid.load(std::sync::atomic::Ordering::Relaxed), lock_owner)?;
        // Crash here: the owner's locks are dropped; the replay drops nothing more.
        crate::crash_point!("flush.after_unlock");
        // Closing a duplicate gives the host file system the flush a close() would (NFS
        // writes back here), without dropping the handle's locks, which belong to its open
        // file description, not to this fd.
        let dup = sys::dup(h.fd())?;
        sys::close(dup);
        Ok(())
    }

    /// RELEASE and RELEASEDIR. The handle is retired first, then freed (its generation bumped,
    /// so the old fh can never name a later handle). A replay that finds the fh already gone
    /// (step 1 recorded before the retirement) was released by the dead attempt: success.
    pub fn release(&self, ctx: &Context, fh: u64, kind: HandleKind) -> Result<()> {
        let retry = ctx.intent.step() == 1;
        // The handle's passthrough backing id, in the record before the retirement: a crash
        // anywhere after leaves recovery a candidate to close (unless a LIVE handle names it).
        if kind == HandleKind::File && !retry {
            ctx.intent.set_fact(facts::BACKING_ID, self.backing_of(fh));
        }
        ctx.intent.set_step(1);
        crate::crash_point!("release.before_retire");
        let (nodeid, backing) = match self.state.handles.release_backed(fh, kind) {
            Ok(released) => released,
            Err(crate::state::Error::BadHandle) if retry => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        crate::crash_point!("release.after_retire");
        if kind == HandleKind::File {
            self.detach_backing(nodeid, backing);
            self.locks.file_closed(nodeid, fh, &self.state.handles);
        }
        Ok(())
    }

    /// Gives back file handle `fh` that a request published but never answered with (the
    /// crash-loop guard's EIO): its passthrough share too.
    pub fn abandon_handle(&self, fh: u64) {
        if let Ok((nodeid, backing)) = self.state.handles.release_backed(fh, HandleKind::File) {
            self.detach_backing(nodeid, backing);
        }
        let _ = self.state.handles.release(fh, HandleKind::Dir);
    }

    pub fn fsync(&self, fh: u64, kind: HandleKind, datasync: bool) -> Result<()> {
        let h = self.state.handles.pin(fh, kind)?;
        Ok(sys::fsync(h.fd(), datasync)?)
    }

    /// FALLOCATE. Only the modes a FUSE kernel sends (allocate, KEEP_SIZE, PUNCH_HOLE,
    /// ZERO_RANGE): each gives the same result when done twice, so a replay simply runs it again.
    /// COLLAPSE_RANGE and INSERT_RANGE, which move data and would not be idempotent, are refused
    /// as the kernel refuses them. It runs as the caller: FALLOCATE carries no kill flag, so the
    /// host's own file_modified decides, with the caller's identity, whether set-id bits go.
    pub fn fallocate(&self, ctx: &Context, a: &abi::FallocateIn) -> Result<()> {
        let allowed = libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if a.mode as i32 & !allowed != 0 {
            return Err(Error::from_errno(libc::EOPNOTSUPP));
        }
        let h = self.file(a.fh)?;
        let _as = ctx.become_caller()?;
        sys::fallocate(h.fd(), a.mode as i32, a.offset, a.length)?;
        // Crash here: the range is allocated (or punched); the replay does it again, to no effect.
        crate::crash_point!("fallocate.after_allocate");
        Ok(())
    }

    pub fn lseek(&self, a: &abi::LseekIn) -> Result<abi::LseekOut> {
        let h = self.file(a.fh)?;
        // The wire carries the guest's signed loff_t in a u64. A negative offset is the host's
        // to judge, as natively: ENXIO for SEEK_DATA/SEEK_HOLE, EINVAL for SEEK_SET.
        let offset = a.offset as i64;
        Ok(abi::LseekOut { offset: sys::lseek(h.fd(), offset, a.whence as i32)? })
    }

    /// COPY_FILE_RANGE, as the caller for the same reason as FALLOCATE: no kill flag comes with
    /// it, and the host clears the destination's set-id bits as it would for the caller.
    pub fn copy_file_range(&self, ctx: &Context, a: &abi::CopyFileRangeIn) -> Result<abi::WriteOut> {
        let src = self.file(a.fh_in)?;
        let dst = self.file(a.fh_out)?;
        let flags = u32::try_from(a.flags).map_err(|_| Error::OutOfRange)?;
        let len = a.len.min(MAX_COPY) as usize;
        let _as = ctx.become_caller()?;
        let n = sys::copy_file_range(src.fd(), a.off_in, dst.fd(), a.off_out, len, flags)?;
        // Crash here: the copy is done; the replay copies the same range to the same place.
        crate::crash_point!("copy_file_range.after_copy");
        Ok(abi::WriteOut { size: n as u32, padding: 0 })
    }

    pub fn statfs(&self, nodeid: u64) -> Result<abi::Kstatfs> {
        let node = self.state.inodes.pin(nodeid)?;
        let st = sys::fstatfs(node.fd())?;
        Ok(abi::Kstatfs {
            blocks: st.f_blocks,
            bfree: st.f_bfree,
            bavail: st.f_bavail,
            files: st.f_files,
            ffree: st.f_ffree,
            bsize: st.f_bsize as u32,
            namelen: st.f_namemax as u32,
            frsize: st.f_frsize as u32,
            padding: 0,
            spare: [0; 6],
        })
    }

    pub fn access(&self, ctx: &Context, nodeid: u64, mask: u32) -> Result<()> {
        let node = self.state.inodes.pin(nodeid)?;
        let name = FdName::new(node.fd());
        let _as = ctx.become_caller()?;
        Ok(sys::faccessat(self.proc_self_fd, name.as_cstr(), mask as i32, libc::AT_EACCESS)?)
    }

    pub fn syncfs(&self, nodeid: u64) -> Result<()> {
        let node = self.state.inodes.pin(nodeid)?;
        let fd = self.reopen(node.fd(), libc::O_RDONLY | libc::O_NONBLOCK)?;
        let r = sys::syncfs(fd);
        sys::close(fd);
        Ok(r?)
    }
}

/// Whether an OPEN or CREATE truncates for a caller without CAP_FSETID (FUSE_OPEN_KILL_SUIDGID,
/// sent with O_TRUNC only): then the host's truncation must clear the set-id bits.
fn kills_suidgid(host_flags: i32, open_flags: u32) -> bool {
    host_flags & libc::O_TRUNC != 0 && open_flags & abi::OPEN_KILL_SUIDGID != 0
}

/// Whether an OPEN is the kernel's open of a program for execve: read-only, with the exec flag
/// and nothing that would change the file.
fn is_exec_open(flags: u32) -> bool {
    let f = flags as i32;
    flags & abi::FMODE_EXEC != 0 && f & libc::O_ACCMODE == libc::O_RDONLY && f & (libc::O_TRUNC | libc::O_CREAT) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_is_exec_open_only_the_kernels_read_only_exec_open() {
        // What execve's open sends: O_RDONLY | O_LARGEFILE | __FMODE_EXEC.
        assert!(is_exec_open(0o100000 | abi::FMODE_EXEC));
        assert!(is_exec_open(abi::FMODE_EXEC));
        assert!(!is_exec_open(0), "a plain read-only open");
        for other in [libc::O_WRONLY, libc::O_RDWR, libc::O_TRUNC, libc::O_CREAT] {
            assert!(!is_exec_open(abi::FMODE_EXEC | other as u32), "exec flag with {other:#o}");
        }
    }
}
