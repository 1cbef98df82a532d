//! VM live migration, the file system's part: on the source, the device state (state/stream.rs)
//! from the tables — each node the guest holds located by a path beneath the share or by its
//! file handle (`--migration-mode`), each open file and directory — and on the destination, the
//! same node ids and handles published in this daemon's tables, each object found again and
//! opened. Options, with virtiofsd's meanings:
//!
//! - `--migration-mode=find-paths` (default): the source sends each node's path, read from
//!   /proc/self/fd of an fd on it (the kernel's own name for the object) relative to the share;
//!   an object with no name (unlinked while open) has no path. The destination opens each path
//!   beneath the share (openat2 RESOLVE_BENEATH, no symlinks). `file-handles`: the source sends
//!   each node's file handle, the destination opens it through the share's mount (same file
//!   system on both sides) and checks that the object lies beneath the share.
//! - `--migration-on-error=abort` (default): an object either side cannot locate fails the
//!   migration (CHECK_DEVICE_STATE answers failure; the source VM runs on). `guest-error`: the
//!   node keeps its id and every use of it fails with EIO (its open handles with EBADF).
//! - `--migration-verify-handles` (destination, find-paths): the object found by path must have
//!   the file handle the source sent, else it is another object (an error).
//! - `--migration-confirm-paths` (source, find-paths): each path is resolved again from the
//!   share's root and must lead to the same inode before it is sent.
//!
//! Not migrated: locks served by the daemon (`-o posix_lock`, `-o flock`): a source that holds
//! any refuses to save. Objects on file systems mounted inside the share in file-handles mode
//! (their handles are opened through the share's own mount).

use std::sync::atomic::Ordering;

use super::{Error as FsError, Fs, attr};
use crate::state::stream::{self, DeviceState, Mode, Node, Session};
use crate::state::{self, HandleKind};
use crate::sys::{self, FdName, fhandle};

/// `--migration-on-error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    #[default]
    Abort,
    GuestError,
}

/// The `--migration-*` options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    pub mode: Mode,
    pub on_error: OnError,
    pub verify_handles: bool,
    pub confirm_paths: bool,
}

impl Default for Migration {
    fn default() -> Migration {
        Migration { mode: Mode::FindPaths, on_error: OnError::Abort, verify_handles: false, confirm_paths: false }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the incoming device state is refused: {0}")]
    Stream(#[from] stream::StreamError),
    #[error("locks held through the daemon (-o posix_lock, -o flock) cannot be migrated: {0} lock owner(s)")]
    LocksHeld(usize),
    #[error("node {id:#x}: {why}")]
    Node { id: u64, why: String },
    #[error("handle {fh:#x}: {why}")]
    Handle { fh: u64, why: String },
    #[error("the incoming device state was made with --migration-mode={0}, this daemon has --migration-mode={1}")]
    ModeMismatch(&'static str, &'static str),
    #[error("{0}")]
    Fs(#[from] FsError),
}

impl From<state::Error> for Error {
    fn from(e: state::Error) -> Error {
        Error::Fs(FsError::State(e))
    }
}

impl Error {
    /// The errno the transfer's record carries for the supervisor's log.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Stream(_) | Error::ModeMismatch(..) => libc::EINVAL,
            Error::LocksHeld(_) => libc::EBUSY,
            Error::Node { .. } | Error::Handle { .. } => libc::ENOENT,
            Error::Fs(e) => e.errno(),
        }
    }
}

pub fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::FindPaths => "find-paths",
        Mode::FileHandles => "file-handles",
    }
}

/// What an import or export moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub nodes: u64,
    pub handles: u64,
    /// Nodes and handles that did not make it (`guest-error`): their ids fail when used.
    pub invalid: u64,
}

type Located = std::result::Result<(i32, libc::statx), String>;

fn os(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl Fs {
    /// The share's root as /proc/self/fd names it ("/" inside the namespace sandbox), the
    /// prefix every path of an object beneath it starts with.
    fn root_name(&self, root: i32) -> std::result::Result<Vec<u8>, FsError> {
        let mut buf = vec![0u8; stream::MAX_PATH + 64];
        let n = sys::readlinkat(self.proc_self_fd, FdName::new(root).as_cstr(), &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// The path of the object `fd` names relative to the share, from its /proc/self/fd link
    /// (with `confirm`, resolved again from the root and checked to be the same inode).
    fn path_of(&self, fd: i32, root: i32, root_name: &[u8], confirm: bool) -> std::result::Result<Vec<u8>, String> {
        let stx = sys::statx(fd, c"", libc::AT_EMPTY_PATH).map_err(os)?;
        if stx.stx_nlink == 0 && u32::from(stx.stx_mode) & libc::S_IFMT != libc::S_IFDIR {
            return Err("the object has no name (unlinked while open)".into());
        }
        let mut buf = vec![0u8; stream::MAX_PATH + 64];
        let n = sys::readlinkat(self.proc_self_fd, FdName::new(fd).as_cstr(), &mut buf).map_err(os)?;
        let link = &buf[..n];
        if link.ends_with(b" (deleted)") {
            return Err("the object has no name (deleted)".into());
        }
        let rel = if root_name == b"/" {
            link.strip_prefix(b"/")
        } else {
            link.strip_prefix(root_name).and_then(|r| r.strip_prefix(b"/"))
        }
        .ok_or_else(|| format!("its path {} is not beneath the share", String::from_utf8_lossy(link)))?;
        stream::check_path(rel).map_err(String::from)?;
        if confirm {
            let name = std::ffi::CString::new(rel).map_err(os)?;
            let again = sys::openat_beneath(root, &name, libc::O_PATH | libc::O_NOFOLLOW)
                .map_err(|e| format!("--migration-confirm-paths: {}: {e}", String::from_utf8_lossy(rel)))?;
            let st = sys::statx(again, c"", libc::AT_EMPTY_PATH);
            sys::close(again);
            let st = st.map_err(os)?;
            if attr::key_of(&st) != attr::key_of(&stx) {
                return Err(format!(
                    "--migration-confirm-paths: {} leads to another object now",
                    String::from_utf8_lossy(rel)
                ));
            }
        }
        Ok(rel.to_vec())
    }

    /// For an object opened by file handle: if it has a name, that name must lead to it from
    /// the share's root; if its name is gone (nlink 0, or /proc/self/fd says "(deleted)"), there
    /// is nothing to check.
    fn beneath_share(
        &self,
        fd: i32,
        stx: &libc::statx,
        root: i32,
        root_name: &[u8],
    ) -> std::result::Result<(), String> {
        if stx.stx_nlink == 0 {
            return Ok(());
        }
        let mut buf = vec![0u8; stream::MAX_PATH + 64];
        let n = sys::readlinkat(self.proc_self_fd, FdName::new(fd).as_cstr(), &mut buf).map_err(os)?;
        if buf[..n].ends_with(b" (deleted)") {
            return Ok(());
        }
        self.path_of(fd, root, root_name, true).map(drop)
    }

    /// The device state of this daemon's session (the source's side of SET_DEVICE_STATE_FD).
    /// The rings are stopped: nothing changes the tables meanwhile.
    pub fn export_state(&self) -> std::result::Result<(Vec<u8>, Summary), Error> {
        let m = self.cfg.migration;
        let live_handles = self.state.handles.exported();
        let owners = live_handles.iter().filter(|h| h.kind == HandleKind::LockOwner).count();
        if owners > 0 {
            return Err(Error::LocksHeld(owners));
        }
        let h = self.state.region.header();
        let session = Session {
            init_done: h.init_done.load(Ordering::Acquire) != 0,
            negotiated: h.negotiated.load(Ordering::Acquire),
            kernel_flags: h.kernel_flags.load(Ordering::Acquire),
        };
        let root = self.state.inodes.pin(state::ROOT_ID)?;
        let root_name = self.root_name(root.fd())?;
        let mut summary = Summary::default();
        let mut nodes = Vec::new();
        for n in self.state.inodes.exported() {
            let located = self.state.inodes.pin(n.id).map_err(os).and_then(|pin| match m.mode {
                Mode::FindPaths => {
                    let path = self.path_of(pin.fd(), root.fd(), &root_name, m.confirm_paths)?;
                    // The handle too when there is one, for the destination's
                    // --migration-verify-handles.
                    let handle = n.handle.or_else(|| fhandle::name_to_handle(pin.fd()).ok().map(|(h, _)| h));
                    Ok((Some(path), handle))
                }
                // A non-directory's handle is made connectable where the kernel can: the
                // destination checks the object's name beneath the share, and a plain handle
                // of an object whose names the kernel has dropped from its caches (memory
                // pressure) opens nameless there. Directories are always opened with their path.
                // (EINVAL for an object unlinked while open, which keeps its plain handle.)
                Mode::FileHandles => {
                    let connectable = (n.file_type != libc::S_IFDIR)
                        .then(|| fhandle::name_to_connectable_handle(self.proc_self_fd, pin.fd()).ok())
                        .flatten();
                    match connectable.or(n.handle) {
                        Some(h) => Ok((None, Some(h))),
                        None => fhandle::name_to_handle(pin.fd()).map(|(h, _)| (None, Some(h))).map_err(os),
                    }
                }
            });
            let (path, handle) = match located {
                Ok(l) => l,
                Err(why) if m.on_error == OnError::GuestError => {
                    tracing::warn!(nodeid = n.id, "migration: node not located, the guest will get EIO for it: {why}");
                    summary.invalid += 1;
                    (None, None)
                }
                Err(why) => return Err(Error::Node { id: n.id, why }),
            };
            nodes.push(Node { id: n.id, lookups: n.lookups, file_type: n.file_type, path, handle });
        }
        let mut handles = Vec::new();
        for lh in live_handles {
            let kind = match lh.kind {
                HandleKind::File => stream::HandleKind::File,
                HandleKind::Dir => stream::HandleKind::Dir,
                HandleKind::LockOwner => unreachable!("refused above"),
            };
            let Some(open_flags) = self.state.handles.open_flags(lh.fh) else { continue };
            handles.push(stream::Handle { fh: lh.fh, nodeid: lh.nodeid, kind, open_flags });
        }
        summary.nodes = nodes.len() as u64;
        summary.handles = handles.len() as u64;
        let bytes = stream::encode(&DeviceState { mode: m.mode, session, nodes, handles });
        Ok((bytes, summary))
    }

    /// Finds node `n`'s object on this side and opens it (O_PATH), with its attributes.
    fn locate(&self, n: &Node, mode: Mode, root: i32, root_name: &[u8], root_mount: Option<i32>) -> Located {
        let (fd, stx) = match (&n.path, &n.handle, mode) {
            (Some(path), _, Mode::FindPaths) => {
                let name = std::ffi::CString::new(path.as_slice()).map_err(os)?;
                let fd = sys::openat_beneath(root, &name, libc::O_PATH | libc::O_NOFOLLOW)
                    .map_err(|e| format!("{}: {e}", String::from_utf8_lossy(path)))?;
                let stx = sys::statx(fd, c"", libc::AT_EMPTY_PATH);
                match stx {
                    Ok(stx) => (fd, stx),
                    Err(e) => {
                        sys::close(fd);
                        return Err(os(e));
                    }
                }
            }
            (None, Some(handle), Mode::FileHandles) => {
                let mount = root_mount.ok_or("no mount fd for the share (file handles are off)")?;
                let fd = fhandle::open_by_handle(mount, handle, libc::O_PATH)
                    .map_err(|e| format!("open_by_handle_at: {e}"))?;
                let stx = match sys::statx(fd, c"", libc::AT_EMPTY_PATH) {
                    Ok(stx) => stx,
                    Err(e) => {
                        sys::close(fd);
                        return Err(os(e));
                    }
                };
                // A handle can name any object of the file system, the share's or not: one with
                // a name must be found again beneath the share by that name. One whose name is
                // gone (unlinked while open, a directory removed while the guest holds it) cannot
                // be checked so, and comes over as the guest knew it.
                if let Err(why) = self.beneath_share(fd, &stx, root, root_name) {
                    sys::close(fd);
                    return Err(format!("the handle's object is not beneath the share: {why}"));
                }
                (fd, stx)
            }
            _ => return Err("the node carries no locator for this mode".into()),
        };
        let found = u32::from(stx.stx_mode) & libc::S_IFMT;
        if found != n.file_type {
            sys::close(fd);
            return Err(format!("the object is of type {found:o}, the source had {:o}", n.file_type));
        }
        if self.cfg.migration.verify_handles
            && mode == Mode::FindPaths
            && let Some(theirs) = &n.handle
        {
            let ours = fhandle::name_to_handle(fd).map(|(h, _)| h);
            if ours.as_ref().ok() != Some(theirs) {
                sys::close(fd);
                return Err("--migration-verify-handles: the object at this path is not the source's".into());
            }
        }
        Ok((fd, stx))
    }

    /// Loads a device state into this daemon's tables (the destination's side of
    /// CHECK_DEVICE_STATE). Steps, each safe to cut short by a crash (the import is then done
    /// again, from step 1, by the next worker): (1) decode and check every byte; (2) drop what an
    /// earlier, cut-short import left; (3) publish each node at its id, its object found again
    /// and opened; (4) reopen and publish each handle; (5) record the FUSE session, INIT's
    /// outcome last, so a session is live only once everything it names is. The worker is
    /// replaced afterwards, so its successor rebuilds the heap indexes from the tables.
    pub fn import_state(&self, bytes: &[u8]) -> std::result::Result<Summary, Error> {
        let r = self.import_tables(bytes);
        if r.is_err() {
            // A refused state leaves nothing behind: what was published goes (a crash here: the
            // request is still PENDING, and the next attempt drops it first).
            let dropped = self.state.handles.release_all() + self.state.inodes.forget_all();
            if dropped > 0 {
                tracing::info!(dropped, "migration: the refused device state's nodes and handles dropped");
            }
        }
        r
    }

    fn import_tables(&self, bytes: &[u8]) -> std::result::Result<Summary, Error> {
        let m = self.cfg.migration;
        // 1/5
        let ds = stream::decode(bytes)?;
        if ds.mode != m.mode {
            return Err(Error::ModeMismatch(mode_name(ds.mode), mode_name(m.mode)));
        }
        // The supervisor refuses a load into a daemon whose guest already began a session, so a
        // session found here is this import's own, recorded by a worker that died before it
        // said so: done again below, with the same values.
        let header = self.state.region.header();
        // 2/5 Crash-safe: an earlier import that a crash cut short left LIVE slots but no
        // session; they go exactly as a new session's INIT drops an old one's.
        let dropped = self.state.handles.release_all() + self.state.inodes.forget_all();
        if dropped > 0 {
            tracing::info!(dropped, "migration: dropped what an interrupted import left");
        }
        let root = self.state.inodes.pin(state::ROOT_ID)?;
        let root_name = self.root_name(root.fd())?;
        let root_mount = sys::statx(root.fd(), c"", libc::AT_EMPTY_PATH)
            .ok()
            .and_then(|st| self.state.inodes.mounts.fd(st.stx_mnt_id));
        let mut summary = Summary::default();
        let mut unusable = std::collections::HashSet::new();
        // 3/5 Each node published as it is opened: a crash midway leaves LIVE slots that step 2
        // of the next attempt drops.
        for n in &ds.nodes {
            let located = if n.is_lost() {
                Err("the source could not locate it".to_string())
            } else {
                self.locate(n, ds.mode, root.fd(), &root_name, root_mount)
            };
            match located {
                Ok((fd, stx)) => {
                    let handle = self.handle_for(fd, &stx)?;
                    let slot_fd = if handle.is_some() {
                        sys::close(fd);
                        -1
                    } else {
                        fd
                    };
                    let key = attr::key_of(&stx);
                    self.state.inodes.import(n.id, n.lookups, slot_fd, handle.as_ref(), key, n.file_type)?;
                    summary.nodes += 1;
                    crate::crash_point!("transfer.node_imported");
                }
                // A node the source could not locate was its decision (its --migration-on-error
                // was guest-error): it comes over unusable whatever ours is.
                Err(why) if m.on_error == OnError::GuestError || n.is_lost() => {
                    tracing::warn!(nodeid = n.id, "migration: node not found, the guest will get EIO for it: {why}");
                    let none = state::InodeKey { dev: 0, ino: 0, mnt_id: 0 };
                    self.state.inodes.import(n.id, n.lookups, -1, None, none, n.file_type)?;
                    unusable.insert(n.id);
                    summary.invalid += 1;
                }
                Err(why) => return Err(Error::Node { id: n.id, why }),
            }
        }
        // 4/5 Files reopen as OPEN opened them, which depends on the session's writeback cache.
        if ds.session.init_done {
            self.set_writeback(ds.session.negotiated & crate::fuse::abi::WRITEBACK_CACHE != 0);
        }
        for h in &ds.handles {
            let kind = match h.kind {
                stream::HandleKind::File => HandleKind::File,
                stream::HandleKind::Dir => HandleKind::Dir,
            };
            let opened = if unusable.contains(&h.nodeid) {
                Err("its node was not found".to_string())
            } else {
                self.state.inodes.pin(h.nodeid).map_err(os).and_then(|node| {
                    let flags = match kind {
                        HandleKind::Dir => libc::O_RDONLY | libc::O_DIRECTORY,
                        // As OPEN opened it, less what only the first open does.
                        _ => self.host_open_flags(h.open_flags) & !libc::O_TRUNC,
                    };
                    self.reopen(node.fd(), flags).map_err(os)
                })
            };
            let fd = match opened {
                Ok(fd) => fd,
                Err(why) if m.on_error == OnError::GuestError || unusable.contains(&h.nodeid) => {
                    tracing::warn!(fh = h.fh, "migration: handle not reopened, the guest will get EBADF for it: {why}");
                    summary.invalid += 1;
                    -1
                }
                Err(why) => return Err(Error::Handle { fh: h.fh, why }),
            };
            self.state.handles.import(h.fh, fd, kind, h.nodeid, h.open_flags)?;
            summary.handles += 1;
        }
        // 5/5 Crash before the last store: no session, and the import is done again (step 2
        // first). After it: the session is live, and the next worker serves it without INIT.
        if ds.session.init_done {
            header.kernel_flags.store(ds.session.kernel_flags, Ordering::Release);
            header.negotiated.store(ds.session.negotiated, Ordering::Release);
            header.init_done.store(1, Ordering::Release);
            crate::crash_point!("transfer.session_recorded");
        }
        Ok(summary)
    }
}
