//! seccomp-bpf allow-lists (virtiofsd's `--seccomp kill|log|trap|none`).
//!
//! Three lists, one per process: `WORKER` (what serves requests), `SUPERVISOR` (what holds the
//! connection and has workers replaced) and `HOLDER` (holder.rs). A filter is inherited and can
//! only be narrowed, so workers are not cloned by the supervisor but by the zygote (zygote.rs),
//! cloned before the supervisor's filter, which installs `WORKER` itself: the supervisor's list
//! is its own, without the file-system calls and without clone. Each worker installs `WORKER`
//! again first thing (recovery included). With `--recovery off` the one process serves and
//! supervises and keeps `WORKER ∪ SUPERVISOR`.
//!
//! Modes (the action for a call not on the list): `kill` traps it (SECCOMP_RET_TRAP) into our
//! SIGSYS handler, which names the call (on stderr and in the region header, where the
//! supervisor's log line about the death reads it) and then dies of SIGSYS with the default
//! action, which ends the whole process; `trap` traps it with the kernel's default SIGSYS
//! disposition (a core dump; for a debugger); `log` lets it run and has the kernel log it
//! (SECCOMP_RET_LOG: `dmesg`); `none` installs no filter. A trapped call never runs in any mode.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicPtr, AtomicU32, Ordering};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};

use crate::cli::SeccompAction as Mode;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot build the seccomp filter: {0}")]
    Build(seccompiler::BackendError),
    #[error("cannot install the seccomp filter: {0}")]
    Install(seccompiler::Error),
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(std::io::Error),
}

/// One group of allowed calls and why they are needed.
pub struct Group {
    pub why: &'static str,
    pub calls: &'static [libc::c_long],
}

/// What a worker may call: recovery, the file system's operations, serving threads.
pub const WORKER: &[Group] = &[
    Group {
        why: "memory: the allocator, thread stacks and guard pages, guest memory and region mappings",
        calls: &[
            libc::SYS_brk,
            libc::SYS_mmap,
            libc::SYS_munmap,
            libc::SYS_mremap,
            libc::SYS_mprotect,
            libc::SYS_madvise,
            libc::SYS_mlock,
            libc::SYS_munlock,
        ],
    },
    Group {
        why: "threads: serving and lock-waiting threads, their futexes, stacks, ids, exits",
        calls: &[
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_futex,
            libc::SYS_set_robust_list,
            libc::SYS_rseq,
            libc::SYS_sigaltstack,
            libc::SYS_sched_yield,
            libc::SYS_sched_getaffinity,
            libc::SYS_gettid,
            libc::SYS_getpid,
            libc::SYS_getppid,
            libc::SYS_prctl,
            libc::SYS_exit,
            libc::SYS_exit_group,
            libc::SYS_getrandom,
            libc::SYS_clock_gettime,
            libc::SYS_clock_nanosleep,
            libc::SYS_nanosleep,
            // A virtqueue thread's own count of voluntary context switches: did serving a chain
            // block (transport/vhost_user/queue.rs)?
            libc::SYS_getrusage,
        ],
    },
    Group {
        why: "signals: INTERRUPT wakes a lock-waiting thread (tgkill), handlers return, masks; \
              the SIGSYS handler ends the process",
        calls: &[
            libc::SYS_rt_sigaction,
            libc::SYS_rt_sigprocmask,
            libc::SYS_rt_sigreturn,
            libc::SYS_restart_syscall,
            libc::SYS_tgkill,
        ],
    },
    Group {
        why: "transport I/O: /dev/fuse reads and replies, virtqueue kick/call/notify eventfds, \
              waiting on them",
        calls: &[
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_readv,
            libc::SYS_writev,
            libc::SYS_ppoll,
            #[cfg(target_arch = "x86_64")]
            libc::SYS_poll,
        ],
    },
    Group {
        why: "fds: recovery's sweep (/proc/self/fd listing, close), duplicates, flags",
        calls: &[
            libc::SYS_close,
            libc::SYS_close_range,
            libc::SYS_fcntl,
            libc::SYS_dup,
            libc::SYS_dup3,
            libc::SYS_getdents64,
            libc::SYS_lseek,
        ],
    },
    Group {
        why: "credentials: each request runs with its caller's ids, per thread; a write or truncate \
              that must clear set-id bits runs without CAP_FSETID (capget, then capset of this \
              thread's effective set: it can only drop, or take back what is still permitted)",
        calls: &[libc::SYS_setresuid, libc::SYS_setresgid, libc::SYS_setgroups, libc::SYS_capget, libc::SYS_capset],
    },
    Group {
        why: "the caller's umask for a creation under FUSE_DONT_MASK (--posix-acl): a serving \
              thread unshares its fs struct once (unshare(CLONE_FS), which keeps its working \
              directory), then sets and restores its own umask around the creating call",
        calls: &[libc::SYS_unshare, libc::SYS_umask],
    },
    Group {
        why: "passthrough: resolving and opening beneath the share, /proc/self/fd reopens (the \
              working directory is /proc/self/fd: fchdir once at start)",
        calls: &[
            libc::SYS_openat,
            libc::SYS_openat2,
            libc::SYS_readlinkat,
            libc::SYS_faccessat,
            libc::SYS_faccessat2,
            libc::SYS_fchdir,
        ],
    },
    Group {
        why: "passthrough: inodes kept as file handles (--inode-file-handles): a handle taken at \
              LOOKUP, the object opened again by it (O_PATH) when a request needs an fd",
        calls: &[libc::SYS_name_to_handle_at, libc::SYS_open_by_handle_at],
    },
    Group {
        why: "passthrough: attributes (GETATTR, SETATTR, STATFS)",
        calls: &[
            libc::SYS_newfstatat,
            libc::SYS_fstat,
            libc::SYS_statx,
            libc::SYS_fstatfs,
            libc::SYS_statfs,
            libc::SYS_fchmod,
            libc::SYS_fchmodat,
            libc::SYS_fchown,
            libc::SYS_fchownat,
            libc::SYS_utimensat,
            libc::SYS_ftruncate,
            libc::SYS_truncate,
        ],
    },
    Group {
        why: "passthrough: the namespace (MKDIR, MKNOD, SYMLINK, LINK, UNLINK, RMDIR, RENAME)",
        calls: &[
            libc::SYS_mkdirat,
            libc::SYS_mknodat,
            libc::SYS_symlinkat,
            libc::SYS_linkat,
            libc::SYS_unlinkat,
            libc::SYS_renameat,
            libc::SYS_renameat2,
        ],
    },
    Group {
        why: "passthrough: file data (READ, WRITE, FSYNC, SYNCFS, FALLOCATE, COPY_FILE_RANGE, LSEEK)",
        calls: &[
            libc::SYS_pread64,
            libc::SYS_pwrite64,
            libc::SYS_preadv,
            libc::SYS_pwritev,
            libc::SYS_preadv2,
            libc::SYS_pwritev2,
            libc::SYS_fsync,
            libc::SYS_fdatasync,
            libc::SYS_syncfs,
            libc::SYS_fallocate,
            libc::SYS_copy_file_range,
        ],
    },
    Group { why: "passthrough: locks (OFD locks through fcntl, flock)", calls: &[libc::SYS_flock] },
    Group {
        why: "FUSE passthrough: register and drop backing files on the connection \
              (ioctl FUSE_DEV_IOC_BACKING_OPEN/CLOSE only, filtered by request number)",
        calls: &[libc::SYS_ioctl],
    },
    Group {
        why: "passthrough: extended attributes (through /proc/self/fd paths)",
        calls: &[
            libc::SYS_getxattr,
            libc::SYS_lgetxattr,
            libc::SYS_fgetxattr,
            libc::SYS_setxattr,
            libc::SYS_lsetxattr,
            libc::SYS_fsetxattr,
            libc::SYS_listxattr,
            libc::SYS_llistxattr,
            libc::SYS_flistxattr,
            libc::SYS_removexattr,
            libc::SYS_lremovexattr,
            libc::SYS_fremovexattr,
        ],
    },
    #[cfg(feature = "crash-points")]
    Group {
        why: "test builds only: a crash point removes its arm file and SIGKILLs its worker",
        calls: &[
            libc::SYS_kill,
            libc::SYS_unlinkat,
            #[cfg(target_arch = "x86_64")]
            libc::SYS_unlink,
        ],
    },
];

/// What the supervisor may call once serving: its wait loop, asking the zygote for workers and
/// reaping and killing them, the vhost-user control channel (guest memory and the inflight area
/// it maps), the OOM count, the unmount at the end (`--sandbox none`: mountinfo first). No
/// clone, exec, open of anything but mountinfo, or file-system call.
pub const SUPERVISOR: &[Group] = &[
    Group {
        why: "memory: the allocator; guest memory and the inflight area the control channel maps",
        calls: &[
            libc::SYS_brk,
            libc::SYS_mmap,
            libc::SYS_munmap,
            libc::SYS_mremap,
            libc::SYS_mprotect,
            libc::SYS_madvise,
            libc::SYS_memfd_create,
            libc::SYS_ftruncate,
        ],
    },
    Group {
        why: "the process: futexes of the standard library, ids, time, the back-off sleep, exit \
              (the standard library frees the main thread's signal stack)",
        calls: &[
            libc::SYS_futex,
            libc::SYS_sigaltstack,
            libc::SYS_getpid,
            libc::SYS_gettid,
            libc::SYS_getrandom,
            libc::SYS_clock_gettime,
            libc::SYS_clock_nanosleep,
            libc::SYS_nanosleep,
            libc::SYS_sched_yield,
            libc::SYS_exit,
            libc::SYS_exit_group,
        ],
    },
    Group {
        why: "signals: the signalfd's mask, the SIGSYS handler, an abort",
        calls: &[
            libc::SYS_rt_sigaction,
            libc::SYS_rt_sigprocmask,
            libc::SYS_rt_sigreturn,
            libc::SYS_restart_syscall,
            libc::SYS_tgkill,
        ],
    },
    Group {
        why: "the wait loop and its fds: signalfd, eventfds, the zygote's pipes, the OOM count \
              (pread of a kept /proc/vmstat fd)",
        calls: &[
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_readv,
            libc::SYS_writev,
            libc::SYS_pread64,
            libc::SYS_ppoll,
            #[cfg(target_arch = "x86_64")]
            libc::SYS_poll,
            libc::SYS_close,
            libc::SYS_fcntl,
            libc::SYS_dup,
            libc::SYS_dup3,
            libc::SYS_lseek,
        ],
    },
    Group {
        why: "workers: reap, kill; whether the zygote has died (waitid)",
        calls: &[libc::SYS_wait4, libc::SYS_waitid, libc::SYS_kill],
    },
    Group {
        why: "after a live upgrade, the first supervisor as the keeper: close every fd, take its \
              name (prctl, PR_SET_NAME only)",
        calls: &[libc::SYS_close_range, libc::SYS_prctl],
    },
    Group {
        why: "the vhost-user control channel: messages with fds (SCM_RIGHTS), replies; new \
              eventfds for a changed vring; the control socket (`phoenixfsd ctl`): accept",
        calls: &[
            libc::SYS_accept4,
            libc::SYS_accept,
            libc::SYS_recvmsg,
            libc::SYS_sendmsg,
            libc::SYS_recvfrom,
            libc::SYS_sendto,
            libc::SYS_eventfd2,
            libc::SYS_ioctl,
        ],
    },
    Group {
        why: "stopping: unmount the FUSE mount (`--sandbox none`: only ours, mountinfo is read first)",
        calls: &[libc::SYS_umount2, libc::SYS_openat, libc::SYS_fstat, libc::SYS_newfstatat, libc::SYS_statx],
    },
];

/// What the holder (holder.rs) may call: its wait loop, passing signals on, reading a caller's
/// /proc/PID/status and answering on a socket, the unmount at the end.
pub const HOLDER: &[Group] = &[
    Group {
        why: "memory and the process: the allocator, futexes of the standard library, exit (the \
              standard library frees the main thread's signal stack)",
        calls: &[
            libc::SYS_sigaltstack,
            libc::SYS_brk,
            libc::SYS_mmap,
            libc::SYS_munmap,
            libc::SYS_mremap,
            libc::SYS_madvise,
            libc::SYS_futex,
            libc::SYS_getpid,
            libc::SYS_gettid,
            libc::SYS_clock_gettime,
            libc::SYS_exit,
            libc::SYS_exit_group,
        ],
    },
    Group {
        why: "the wait loop: poll the signalfd and the groups socket, read and answer, reap the \
              supervisor, pass signals on to it, a poll restarted after SIGSTOP/SIGCONT, the SIGSYS \
              handler",
        calls: &[
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_ppoll,
            #[cfg(target_arch = "x86_64")]
            libc::SYS_poll,
            libc::SYS_wait4,
            libc::SYS_kill,
            libc::SYS_rt_sigaction,
            libc::SYS_rt_sigprocmask,
            libc::SYS_rt_sigreturn,
            libc::SYS_restart_syscall,
            libc::SYS_tgkill,
        ],
    },
    Group {
        why: "a caller's /proc/PID/status; mountinfo before the unmount",
        calls: &[
            libc::SYS_openat,
            libc::SYS_close,
            libc::SYS_fstat,
            libc::SYS_newfstatat,
            libc::SYS_statx,
            libc::SYS_lseek,
            libc::SYS_fcntl,
        ],
    },
    Group { why: "stopping: unmount the FUSE mount in the host's mount namespace", calls: &[libc::SYS_umount2] },
];

/// What the zygote may call beyond `WORKER ∪ SUPERVISOR`, for a live upgrade (upgrade.rs): its
/// upgrader runs the new binary, which starts under this very filter (a filter survives an
/// exec) and must be able to be a supervisor, clone a zygote, and have workers narrow to
/// `WORKER` and itself to `SUPERVISOR` (seccomp). No worker keeps any of it: each installs
/// `WORKER` first thing.
pub const UPGRADE: &[Group] = &[Group {
    why: "a live upgrade: run the new binary from its fd; filters narrowed by the processes it makes",
    calls: &[
        libc::SYS_execveat,
        libc::SYS_seccomp,
        libc::SYS_pipe2,
        // The vhost-user channel's negotiation replayed into the new binary's handler.
        libc::SYS_socketpair,
        // The new program's first steps: the C library's start-up and the Rust runtime's
        // (thread pointer, robust futex list, restartable sequences, the stack's limit).
        #[cfg(target_arch = "x86_64")]
        libc::SYS_arch_prctl,
        #[cfg(target_arch = "x86_64")]
        libc::SYS_access,
        libc::SYS_faccessat,
        #[cfg(target_arch = "x86_64")]
        libc::SYS_readlink,
        libc::SYS_readlinkat,
        libc::SYS_set_tid_address,
        libc::SYS_set_robust_list,
        libc::SYS_rseq,
        libc::SYS_prlimit64,
    ],
}];

/// The region header's word the SIGSYS handler writes the refused call into (number + 1).
static VIOLATION: AtomicPtr<AtomicU32> = AtomicPtr::new(std::ptr::null_mut());

fn arch() -> TargetArch {
    #[cfg(target_arch = "x86_64")]
    return TargetArch::x86_64;
    #[cfg(target_arch = "aarch64")]
    return TargetArch::aarch64;
}

/// FUSE_DEV_IOC_BACKING_OPEN and _CLOSE (fuse/abi.rs, where a test checks the numbers).
const BACKING_OPEN: u64 = 0x4010_e501;
const BACKING_CLOSE: u64 = 0x4004_e502;

fn program(lists: &[&[Group]], mode: Mode) -> Result<BpfProgram, Error> {
    let mismatch = match mode {
        Mode::Kill | Mode::Trap => SeccompAction::Trap,
        Mode::Log => SeccompAction::Log,
        Mode::None => unreachable!("no filter for --seccomp none"),
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        lists.iter().flat_map(|l| l.iter()).flat_map(|g| g.calls.iter()).map(|&nr| (nr, vec![])).collect();
    // The one call allowed with a chosen argument only: unshare(CLONE_FS) gives a serving thread
    // its own umask; any other unshare (a new user or mount namespace) stays refused.
    if let Some(unshare) = rules.get_mut(&libc::SYS_unshare) {
        let fs_only = SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, libc::CLONE_FS as u64)
            .map_err(Error::Build)?;
        unshare.push(SeccompRule::new(vec![fs_only]).map_err(Error::Build)?);
    }
    // ioctl: `WORKER` has it for FUSE_DEV_IOC_BACKING_OPEN and _CLOSE alone; a list with
    // `SUPERVISOR` (the vhost-user control channel's eventfds, terminal checks) has it whole.
    if !lists.iter().any(|l| std::ptr::eq(*l, SUPERVISOR))
        && let Some(ioctl) = rules.get_mut(&libc::SYS_ioctl)
    {
        for request in [BACKING_OPEN, BACKING_CLOSE] {
            let only =
                SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, request).map_err(Error::Build)?;
            ioctl.push(SeccompRule::new(vec![only]).map_err(Error::Build)?);
        }
    }
    // prctl: the supervisor's list has it for PR_SET_NAME alone; a list with `WORKER` has it whole.
    if !lists.iter().any(|l| std::ptr::eq(*l, WORKER))
        && let Some(prctl) = rules.get_mut(&libc::SYS_prctl)
    {
        let name_only = SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, libc::PR_SET_NAME as u64)
            .map_err(Error::Build)?;
        prctl.push(SeccompRule::new(vec![name_only]).map_err(Error::Build)?);
    }
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch()).map_err(Error::Build)?;
    filter.try_into().map_err(Error::Build)
}

/// Who installs a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The supervisor (recovery on): `SUPERVISOR`.
    Supervisor,
    /// A worker: `WORKER`.
    Worker,
    /// The zygote, which clones workers and a live upgrade's upgrader: `WORKER ∪ SUPERVISOR ∪
    /// UPGRADE`.
    Zygote,
    /// `--recovery off`: one process does both.
    Alone,
    /// The holder (holder.rs): `HOLDER` only.
    Holder,
}

/// Installs the filter for `role` on every thread of this process (TSYNC), after setting
/// no_new_privs. `violation` is where the SIGSYS handler records a refused call (`kill` mode).
pub fn install(role: Role, mode: Mode, violation: &'static AtomicU32) -> Result<(), Error> {
    if mode == Mode::None {
        return Ok(());
    }
    let lists: &[&[Group]] = match role {
        Role::Worker => &[WORKER],
        Role::Zygote => &[WORKER, SUPERVISOR, UPGRADE],
        Role::Supervisor => &[SUPERVISOR],
        Role::Alone => &[WORKER, SUPERVISOR],
        Role::Holder => &[HOLDER],
    };
    let prog = program(lists, mode)?;
    install_handler(mode, violation)?;
    // Sets PR_SET_NO_NEW_PRIVS first (needed without CAP_SYS_ADMIN, and what virtiofsd does).
    seccompiler::apply_filter_all_threads(&prog).map_err(Error::Install)
}

/// In `kill` mode, the SIGSYS handler that names a refused call (an exec resets it: a live
/// upgrade's new binary, already under a filter, installs it again).
pub fn install_handler(mode: Mode, violation: &'static AtomicU32) -> Result<(), Error> {
    if mode == Mode::Kill {
        VIOLATION.store(std::ptr::from_ref(violation).cast_mut(), Ordering::Release);
        crate::sys::process::set_sigsys_handler(on_sigsys).map_err(Error::Handler)?;
    }
    Ok(())
}

/// The name of system call `nr` on this architecture.
pub fn syscall_name(nr: i64) -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    return super::syscall_names_x86_64::NAMES.iter().find(|(n, _)| *n == nr).map(|(_, s)| *s);
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = nr;
        None
    }
}

/// SIGSYS from the filter (`kill` mode): record the call, say it on stderr, and die of SIGSYS.
/// Async-signal-safe: an atomic store, a write(2) from a stack buffer, a raise.
extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo; for SIGSYS its union holds _sigsys
    // { void *_call_addr; int _syscall; unsigned _arch }, right after the three ints and the
    // padding that start every siginfo (offset 16 + 8 on 64-bit targets).
    let nr = unsafe { *info.cast::<u8>().add(24).cast::<i32>() };
    // SAFETY: set once before the filter, to a word in the region, mapped for the process's life.
    if let Some(slot) = unsafe { VIOLATION.load(Ordering::Acquire).as_ref() } {
        slot.store(nr as u32 + 1, Ordering::Release);
    }
    let mut line = [0u8; 128];
    let mut len = 0;
    let mut put = |s: &[u8]| {
        let n = s.len().min(line.len() - len);
        line[len..len + n].copy_from_slice(&s[..n]);
        len += n;
    };
    put(b"phoenixfsd: seccomp: forbidden syscall ");
    match syscall_name(nr as i64) {
        Some(name) => put(name.as_bytes()),
        None => put(b"?"),
    }
    put(b" (");
    // The number in decimal, on the stack (FdName formats any non-negative i32 without
    // allocating, as a signal handler must).
    put(crate::sys::FdName::new(nr).as_cstr().to_bytes());
    put(b"); ending this process\n");
    crate::sys::process::die_of_sigsys(&line[..len]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_seccomp_filters_build() {
        for mode in [Mode::Kill, Mode::Trap, Mode::Log] {
            assert!(!program(&[WORKER], mode).unwrap().is_empty());
            assert!(!program(&[WORKER, SUPERVISOR], mode).unwrap().is_empty());
        }
    }

    /// The supervisor's list is its own, not the worker's plus more: it makes no process (the
    /// zygote clones workers), runs nothing, changes no file, opens nothing beneath the share.
    #[test]
    fn test_seccomp_supervisor_list_is_narrow() {
        let has = |list: &[Group], nr| list.iter().any(|g| g.calls.contains(&nr));
        for nr in [
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_execve,
            libc::SYS_openat2,
            libc::SYS_mkdirat,
            libc::SYS_unlinkat,
            libc::SYS_renameat2,
            libc::SYS_linkat,
            libc::SYS_fchownat,
            libc::SYS_setxattr,
            libc::SYS_setresuid,
            libc::SYS_capset,
            libc::SYS_seccomp,
        ] {
            assert!(!has(SUPERVISOR, nr), "the supervisor may call {:?}", syscall_name(nr));
            assert!(!has(HOLDER, nr), "the holder may call {:?}", syscall_name(nr));
        }
        // Only the zygote's list runs programs.
        for list in [WORKER, SUPERVISOR, HOLDER] {
            assert!(!has(list, libc::SYS_execveat) && !has(list, libc::SYS_execve));
        }
        assert!(has(WORKER, libc::SYS_clone) && !has(WORKER, libc::SYS_seccomp));
    }

    /// In a child: the worker's filter (trap mode) allows unshare(CLONE_FS) and kills on any
    /// other unshare.
    #[test]
    fn test_seccomp_unshare_only_clone_fs() {
        static VIOLATION: AtomicU32 = AtomicU32::new(0);
        let mut pipe = [0; 2];
        // SAFETY: a two-int array for pipe(2).
        assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
        // SAFETY: the child makes syscalls and leaves with _exit; it never returns into the test
        // harness's state.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: plain syscalls in the child.
            unsafe {
                if install(Role::Worker, Mode::Trap, &VIOLATION).is_err() {
                    libc::_exit(10);
                }
                if libc::syscall(libc::SYS_unshare, libc::CLONE_FS) != 0 {
                    libc::_exit(11);
                }
                // Reached only if unshare(CLONE_FS) was allowed.
                libc::write(pipe[1], b"y".as_ptr().cast(), 1);
                libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER);
                libc::_exit(12);
            }
        }
        let mut status = 0;
        // SAFETY: waits for the child made above; reads one byte into a one-byte buffer.
        let got = unsafe {
            libc::waitpid(pid, &mut status, 0);
            libc::close(pipe[1]);
            let mut b = [0u8; 1];
            let n = libc::read(pipe[0], b.as_mut_ptr().cast(), 1);
            libc::close(pipe[0]);
            n == 1
        };
        assert!(got, "unshare(CLONE_FS) is allowed (status {status:#x})");
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
            "unshare(CLONE_NEWUSER) is trapped: status {status:#x}"
        );
    }

    #[test]
    fn test_seccomp_syscall_names() {
        assert_eq!(syscall_name(libc::SYS_openat), Some("openat"));
        assert_eq!(syscall_name(libc::SYS_syslog), Some("syslog"));
    }
}
