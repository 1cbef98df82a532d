//! The sandbox (`--sandbox namespace|chroot|none`, virtiofsd's modes and default): where the
//! supervisor and every worker it clones live, built once at start-up after the connection
//! exists (the FUSE mount is made, or the vhost-user frontend has connected) and before the
//! first worker, so every worker is born inside.
//!
//! - `namespace` (the default): the daemon process forks; the parent stays in the host's
//!   namespaces as the *holder* (holder.rs: it unmounts at the end and reads callers' groups
//!   from the host's /proc), the child becomes the supervisor as pid 1 of a new pid namespace,
//!   in new mount, network and IPC namespaces, with the share as its root (pivot_root, the old
//!   root detached) and a procfs of its own pid namespace (read-only, pid directories only). So
//!   nothing outside the share can be named, no host process can be seen or signalled, and the
//!   procfs dirfd every worker needs (for /proc/self/fd) leads only to our own processes, whose
//!   roots are the share. Workers are the supervisor's children inside: a dying one is replaced
//!   within the namespace, which lives as long as the supervisor.
//! - `chroot`: the same fork and holder, then chroot into the share; no namespaces. The procfs
//!   dirfd is the host's (the weaker mode, as in virtiofsd: for hosts that forbid namespaces).
//! - `none`: no fork, no confinement of the file system view.
//!
//! Without CAP_SYS_ADMIN (an unprivileged user), `namespace` is built inside a new user
//! namespace (security/userns.rs, virtiofsd's `--uid-map`/`--gid-map`): the holder clones the
//! supervisor into new user and pid namespaces at once, writes its id maps from outside, and the
//! supervisor, root in its namespace, goes on as above.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::userns::{self, IdMaps};
use crate::cli::SandboxMode;
use crate::sys::{self, process};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "--sandbox namespace: cannot create namespaces ({0}); with CAP_SYS_ADMIN they are made in the host's \
         user namespace: run with --sandbox chroot or --sandbox none where namespaces are forbidden"
    )]
    Namespaces(std::io::Error),
    #[error(transparent)]
    UserNamespace(#[from] userns::Error),
    #[error("--sandbox {mode}: {step}: {source}")]
    Step { mode: &'static str, step: &'static str, source: std::io::Error },
    #[error("cannot fork the supervisor out of the holder: {0}")]
    Fork(std::io::Error),
}

/// What `ps` shows for the supervisor (and what tests look for).
pub const SUPERVISOR_NAME: &CStr = c"pfs-supervisor";
/// What `ps` shows for a worker.
pub const WORKER_NAME: &CStr = c"pfs-worker";
/// What `ps` shows for the zygote, which clones workers (zygote.rs).
pub const ZYGOTE_NAME: &CStr = c"pfs-zygote";

/// What the supervisor and its workers use from inside the sandbox.
pub struct Inside {
    /// A dirfd of a procfs (O_PATH): workers open their own `self/fd` beneath it.
    pub proc: i32,
    /// The host's /proc/vmstat, open for reading (the supervisor's OOM count: pread).
    pub vmstat: i32,
    /// The share as this process names it from now on ("/" inside a sandbox).
    pub shared_dir: CString,
}

/// Which side of the fork this process is on.
pub enum Entered {
    /// The original process, left in the host's namespaces: it runs holder.rs with the
    /// supervisor's pid.
    Holder { supervisor: i32 },
    /// The supervisor, inside.
    Supervisor(Inside),
}

/// Builds the sandbox `mode` around the share at `share` (absolute, canonical); `userns`: in a
/// new user namespace with these maps (`namespace` without CAP_SYS_ADMIN). Single-threaded
/// callers only (it forks).
pub fn enter(mode: SandboxMode, share: &Path, userns: Option<&IdMaps>) -> Result<Entered, Error> {
    let share_c = CString::new(share.as_os_str().as_bytes()).expect("paths have no NUL");
    let step = |step, source| Error::Step { mode: mode_name(mode), step, source };
    // The host's /proc/vmstat: a file fd leads nowhere else, and the count is global.
    let vmstat = sys::open(c"/proc/vmstat", libc::O_RDONLY).map_err(|e| step("open /proc/vmstat", e))?;
    match mode {
        SandboxMode::None => {
            process::set_name(SUPERVISOR_NAME);
            let proc = sys::open(c"/proc", libc::O_PATH | libc::O_DIRECTORY).map_err(|e| step("open /proc", e))?;
            return Ok(Entered::Supervisor(Inside { proc, vmstat, shared_dir: share_c }));
        }
        SandboxMode::Namespace => match userns {
            Some(maps) => return enter_user_namespace(maps, vmstat, &share_c),
            // Only the children made after this are in the new pid namespace: the supervisor.
            None => process::unshare(libc::CLONE_NEWPID).map_err(Error::Namespaces)?,
        },
        SandboxMode::Chroot => {}
    }
    // SAFETY: start-up is single-threaded (no serving thread or worker exists yet).
    match unsafe { process::fork() }.map_err(Error::Fork)? {
        0 => {}
        supervisor => {
            sys::close(vmstat);
            return Ok(Entered::Holder { supervisor });
        }
    }
    become_supervisor();
    let proc = match mode {
        SandboxMode::Namespace => enter_namespaces(&share_c).map_err(|(what, e)| step(what, e))?,
        _ => {
            let proc = sys::open(c"/proc", libc::O_PATH | libc::O_DIRECTORY).map_err(|e| step("open /proc", e))?;
            sys::chroot(&share_c).map_err(|e| step("chroot into the share", e))?;
            sys::chdir(c"/").map_err(|e| step("chdir /", e))?;
            proc
        }
    };
    Ok(Entered::Supervisor(Inside { proc, vmstat, shared_dir: c"/".to_owned() }))
}

/// The child's side of the fork (or clone) out of the holder: its name, and its life tied to
/// the holder's.
fn become_supervisor() {
    process::set_name(SUPERVISOR_NAME);
    // Without the holder nobody would unmount or answer for groups: go with it.
    if let Err(e) = process::set_parent_death_signal(libc::SIGKILL) {
        tracing::warn!("cannot tie the supervisor's life to the holder's: {e}");
    }
}

/// `namespace` without CAP_SYS_ADMIN: the supervisor is cloned into new user and pid namespaces
/// at once (it is pid 1 of the new pid namespace, which belongs to the new user namespace, as
/// the other namespaces it makes will); the holder, still in the host's user namespace, writes
/// its id maps (only a process outside may, and newuidmap must run outside to be setuid there);
/// then the supervisor, root inside, builds the rest as with privilege. Start-up only: no worker
/// exists, so a death anywhere here ends the daemon (the holder reports a failed map and kills
/// the child; a dead holder leaves the child reading end of file, and it exits).
fn enter_user_namespace(maps: &IdMaps, vmstat: i32, share: &CStr) -> Result<Entered, Error> {
    let step = |step, source| Error::Step { mode: "namespace", step, source };
    let [mapped_r, mapped_w] = sys::pipe().map_err(|e| step("make the id-map pipe", e))?;
    // 1/3 clone. Crash after: the child waits on the pipe; a dead holder gives it end of file.
    let flags = libc::CLONE_NEWUSER | libc::CLONE_NEWPID;
    // SAFETY: start-up is single-threaded (no serving thread or worker exists yet).
    match unsafe { process::fork_into_namespaces(flags) } {
        Err(e) => Err(userns::Error::Create(e).into()),
        Ok(0) => {
            sys::close(mapped_w);
            become_supervisor();
            // 3/3 (child) wait for the maps, become root inside. Crash after: as a supervisor's
            // death before its first worker: the holder exits with its status, nothing served.
            userns::enter_mapped(mapped_r)?;
            let proc = enter_namespaces(share).map_err(|(what, e)| step(what, e))?;
            Ok(Entered::Supervisor(Inside { proc, vmstat, shared_dir: c"/".to_owned() }))
        }
        Ok(supervisor) => {
            sys::close(mapped_r);
            sys::close(vmstat);
            // 2/3 (holder) write the maps, then one byte. Crash before the byte: the child reads
            // end of file and exits unmapped; a partial map (uid written, gid not) is never used.
            if let Err(e) = userns::write_maps(supervisor, maps) {
                // The supervisor waits on the pipe: it must not go on unmapped.
                let _ = process::send_signal(supervisor, libc::SIGKILL);
                let _ = process::wait_child(supervisor);
                sys::close(mapped_w);
                return Err(e.into());
            }
            tracing::debug!(supervisor, ?maps, "user namespace mapped");
            let _ = sys::write(mapped_w, b"m");
            sys::close(mapped_w);
            Ok(Entered::Holder { supervisor })
        }
    }
}

/// In the supervisor (pid 1 of its new pid namespace): new mount, network and IPC namespaces;
/// a procfs of our own pid namespace; the share as the root. Returns the procfs dirfd.
fn enter_namespaces(share: &CStr) -> Result<i32, (&'static str, std::io::Error)> {
    process::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWNET | libc::CLONE_NEWIPC)
        .map_err(|e| ("unshare mount, network and IPC namespaces", e))?;
    // Nothing we mount or unmount from here on propagates back to the host.
    sys::mount(c"", c"/", c"", libc::MS_REC | libc::MS_PRIVATE, c"").map_err(|e| ("make / private", e))?;
    // Our pid namespace's own procfs: pid directories only (no /proc/sys, no sysrq-trigger),
    // read-only, and showing no process but ours.
    sys::mount(
        c"proc",
        c"/proc",
        c"proc",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY,
        c"subset=pid",
    )
    .map_err(|e| ("mount a procfs for the new pid namespace", e))?;
    let proc = sys::open(c"/proc", libc::O_PATH | libc::O_DIRECTORY).map_err(|e| ("open /proc", e))?;
    // pivot_root wants the new root to be a mount point: bind the share onto itself.
    sys::mount(share, share, c"", libc::MS_BIND | libc::MS_REC, c"").map_err(|e| ("bind-mount the share", e))?;
    sys::chdir(share).map_err(|e| ("chdir into the share", e))?;
    sys::pivot_root_here().map_err(|e| ("pivot_root into the share", e))?;
    // The old root is stacked on the new one at "/": detach it, and with it every host path.
    sys::umount(c".", libc::MNT_DETACH).map_err(|e| ("detach the old root", e))?;
    sys::chdir(c"/").map_err(|e| ("chdir /", e))?;
    Ok(proc)
}

fn mode_name(mode: SandboxMode) -> &'static str {
    match mode {
        SandboxMode::Namespace => "namespace",
        SandboxMode::Chroot => "chroot",
        SandboxMode::None => "none",
    }
}
