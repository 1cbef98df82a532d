//! Process, thread and signal calls: the supervisor's clone/reap/kill, the daemon's process
//! settings, the signal plumbing every thread shares. As the rest of sys/: thin wrappers that
//! keep `unsafe` here.

use std::io;

use super::cvt;

pub fn getpid() -> i32 {
    // SAFETY: plain syscall.
    unsafe { libc::getpid() }
}

pub fn getppid() -> i32 {
    // SAFETY: plain syscall.
    unsafe { libc::getppid() }
}

/// Has the kernel send `sig` to this process when its parent dies.
pub fn set_parent_death_signal(sig: i32) -> io::Result<()> {
    // SAFETY: prctl with plain integer arguments.
    cvt(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong) }).map(drop)
}

/// Clones this process sharing its fd table (CLONE_FILES, no CLONE_VM: the child's memory is a
/// copy, and it continues on a copy of our stack, as after fork). Returns the child's pid in the
/// parent, 0 in the child.
///
/// # Safety
/// The caller must be single-threaded: the child gets only the calling thread, so a lock held
/// by any other thread would stay held in the child for good.
pub unsafe fn clone_sharing_fds() -> io::Result<i32> {
    // SAFETY: single-threaded by the caller's promise.
    unsafe { clone_with(libc::CLONE_FILES | libc::SIGCHLD) }
}

/// As `clone_sharing_fds`, with CLONE_PARENT: the child's parent is our parent (the zygote
/// makes the supervisor's workers this way), which gets its SIGCHLD.
///
/// # Safety
/// As `clone_sharing_fds`: the caller must be single-threaded.
pub unsafe fn clone_sibling_sharing_fds() -> io::Result<i32> {
    // SAFETY: single-threaded by the caller's promise.
    unsafe { clone_with(libc::CLONE_FILES | libc::CLONE_PARENT | libc::SIGCHLD) }
}

/// As `clone_sibling_sharing_fds`, with a copy of the fd table instead of a share of it (a live
/// upgrade's upgrader: its exec must not close anything in the table the supervisor keeps).
///
/// # Safety
/// As `clone_sharing_fds`: the caller must be single-threaded.
pub unsafe fn clone_sibling_copying_fds() -> io::Result<i32> {
    // SAFETY: single-threaded by the caller's promise.
    unsafe { clone_with(libc::CLONE_PARENT | libc::SIGCHLD) }
}

/// As `fork`, with the child in new namespaces of the kinds in `flags` (CLONE_NEW*): with
/// CLONE_NEWUSER an unprivileged process may ask for the others too, as they then belong to the
/// child's new user namespace.
///
/// # Safety
/// As `clone_sharing_fds`: the caller must be single-threaded.
pub unsafe fn fork_into_namespaces(flags: i32) -> io::Result<i32> {
    // SAFETY: single-threaded by the caller's promise.
    unsafe { clone_with(flags | libc::SIGCHLD) }
}

/// A raw clone(2) with `flags`, no new stack (the child runs on a copy of ours, like a fork).
///
/// # Safety
/// As `clone_sharing_fds`: the caller must be single-threaded.
unsafe fn clone_with(flags: i32) -> io::Result<i32> {
    // SAFETY: no new stack, no tid pointers; single-threaded by the caller's promise.
    let pid = unsafe { libc::syscall(libc::SYS_clone, flags as libc::c_ulong, 0usize, 0usize, 0usize, 0usize) };
    super::cvt_long(pid).map(|p| p as i32)
}

/// Forks this process (a plain fork: the child gets a copy of the fd table, not a share of it).
/// Returns the child's pid in the parent, 0 in the child.
///
/// # Safety
/// As `clone_sharing_fds`: the caller must be single-threaded.
pub unsafe fn fork() -> io::Result<i32> {
    // SAFETY: single-threaded by the caller's promise.
    cvt(unsafe { libc::fork() })
}

/// Moves this process into new namespaces of the kinds in `flags` (CLONE_NEW*); a new pid
/// namespace takes only the children made after this.
pub fn unshare(flags: i32) -> io::Result<()> {
    // SAFETY: plain syscall.
    cvt(unsafe { libc::unshare(flags) }).map(drop)
}

/// Names this thread (what `ps` and /proc/PID/comm show; at most 15 bytes).
pub fn set_name(name: &std::ffi::CStr) {
    // SAFETY: a valid C string; the kernel copies at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
}

/// Waits for our child `pid` to end; returns its wait status.
pub fn wait_child(pid: i32) -> io::Result<i32> {
    let mut status = 0;
    loop {
        // SAFETY: a valid out pointer.
        match cvt(unsafe { libc::waitpid(pid, &mut status, 0) }) {
            Ok(_) => return Ok(status),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Sends `sig` to process `pid`.
pub fn send_signal(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: plain syscall.
    cvt(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// Ends this process at once, without running destructors or atexit handlers (a clone must
/// not flush or free what is the parent's).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(code) }
}

/// SIGKILLs this process: a death at this very instruction, as the OOM killer would deal it.
pub fn kill_self() {
    // SAFETY: signals our own process.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
}

/// A child that has ended, if any, without waiting: its pid and wait status.
pub fn reap_any() -> Option<(i32, i32)> {
    let mut status = 0;
    // SAFETY: a valid out pointer.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    (pid > 0).then_some((pid, status))
}

/// Whether our child `pid` has ended (without reaping it: its SIGCHLD is still read as usual).
pub fn child_has_ended(pid: i32) -> bool {
    // SAFETY: an all-zero siginfo is a valid out buffer.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out pointer; WNOWAIT leaves the child waitable.
    let r = unsafe {
        libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT)
    };
    // SAFETY: waitid filled `info` (si_pid 0 if the child has not ended).
    r != 0 || unsafe { info.si_pid() } != 0
}

/// SIGKILLs our child `pid` and reaps it.
pub fn kill_and_reap(pid: i32) {
    // SAFETY: signals and reaps our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
}

/// How a child ended, for the log.
pub fn describe_status(status: i32) -> String {
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        // SAFETY: strsignal returns a static string for any number.
        let name = unsafe { std::ffi::CStr::from_ptr(libc::strsignal(sig)) };
        format!("killed by signal {sig} ({})", name.to_string_lossy())
    } else {
        format!("exited with code {}", libc::WEXITSTATUS(status))
    }
}

/// Waits until one of `fds` is readable (or `timeout_ms` passes; -1: no limit); returns which
/// are. A negative fd is ignored, and never readable.
pub fn poll_readable<const N: usize>(fds: [i32; N], timeout_ms: i32) -> [bool; N] {
    let mut pfds = fds.map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
    // SAFETY: a valid pollfd array for the duration of the call.
    let n = unsafe { libc::poll(pfds.as_mut_ptr(), N as libc::nfds_t, timeout_ms) };
    pfds.map(|p| n > 0 && p.revents != 0)
}

/// Whether `fd` reports an error or hang-up without waiting (a /dev/fuse fd whose connection
/// has ended, by an unmount or an abort).
pub fn has_hung_up(fd: i32) -> bool {
    let mut p = libc::pollfd { fd, events: 0, revents: 0 };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & (libc::POLLERR | libc::POLLHUP) != 0
}

/// Blocks `signals` in this thread (and so in every thread it starts), so that one thread can
/// take them from a signalfd; returns the set.
pub fn block_signals(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// The next signal a signalfd holds, if a whole one could be read.
pub fn read_signal(fd: i32) -> Option<u32> {
    // SAFETY: a zeroed signalfd_siginfo is valid; the read fills it.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    // SAFETY: reads at most size_of bytes into `info`.
    let n = unsafe { libc::read(fd, (&raw mut info).cast(), size_of::<libc::signalfd_siginfo>()) };
    (n == size_of::<libc::signalfd_siginfo>() as isize).then_some(info.ssi_signo)
}

/// Installs a handler for `sig` that does nothing, without SA_RESTART: a thread blocked in a
/// call when `sig` arrives sees EINTR.
pub fn install_interrupting_handler(sig: i32) {
    extern "C" fn wake(_: libc::c_int) {}
    // SAFETY: a zeroed sigaction with a plain handler that does nothing (async-signal-safe).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = wake as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(sig, &sa, std::ptr::null_mut());
    }
}

pub fn thread_self() -> libc::pthread_t {
    // SAFETY: pthread_self has no preconditions.
    unsafe { libc::pthread_self() }
}

/// Sends `sig` to thread `thread` of this process.
///
/// # Safety
/// `thread` must not have exited (its id could then name another thread, or nothing).
pub unsafe fn signal_thread(thread: libc::pthread_t, sig: i32) {
    // SAFETY: the thread is alive by the caller's promise.
    unsafe { libc::pthread_kill(thread, sig) };
}

/// Drops every supplementary group of the process (before any thread exists: the raw
/// per-thread setgroups of `creds` is what requests use).
pub fn drop_groups() -> io::Result<()> {
    // SAFETY: process-wide setgroups with an empty list.
    cvt(unsafe { libc::setgroups(0, std::ptr::null()) }).map(drop)
}

/// Sets the calling thread's real, effective and saved uid and gid (gid first: once the uid is
/// not 0 the gid could not change). Raw syscalls, for a single-threaded process (it is then the
/// process's): glibc's wrappers would walk a thread list a raw clone (`fork_into_namespaces`)
/// did not make its own.
pub fn set_ids(uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: plain syscall.
    super::cvt_long(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) })?;
    // SAFETY: plain syscall.
    super::cvt_long(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) }).map(drop)
}

/// The soft and hard RLIMIT_NOFILE.
pub fn nofile_limit() -> (u64, u64) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a valid out pointer.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    (lim.rlim_cur, lim.rlim_max)
}

pub fn set_nofile_limit(soft: u64, hard: u64) -> io::Result<()> {
    let lim = libc::rlimit { rlim_cur: soft, rlim_max: hard };
    // SAFETY: a valid pointer.
    cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }).map(drop)
}

/// The gid of group `name` (a name in /etc/group, or a number), if there is one.
pub fn group_id(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse() {
        return Some(gid);
    }
    // /etc/group, read directly: the binary is static (a live upgrade needs it: docs/design.md),
    // and glibc's getgrnam in a static binary loads NSS modules at run time, which crashes when
    // they do not match; groups from other NSS sources (LDAP, sssd) are given by number.
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then_some(())?;
        fields.nth(1)?.parse().ok()
    })
}

/// Locks `buf`'s pages in memory, best effort (RLIMIT_MEMLOCK may refuse).
pub fn lock_memory(buf: &[u8]) {
    // SAFETY: locks pages of a live allocation; failure only loses the guarantee.
    unsafe { libc::mlock(buf.as_ptr().cast(), buf.len()) };
}

/// Installs `handler` for SIGSYS (a seccomp trap), reset to the default on delivery and not
/// blocked while it runs, so the handler can end the process with SIGSYS itself.
pub fn set_sigsys_handler(handler: extern "C" fn(i32, *mut libc::siginfo_t, *mut libc::c_void)) -> io::Result<()> {
    // SAFETY: a zeroed sigaction is valid; we fill the fields we use.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = handler as usize;
    sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESETHAND | libc::SA_NODEFER;
    // SAFETY: a valid sigaction; the handler only makes async-signal-safe calls.
    cvt(unsafe { libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) }).map(drop)
}

/// From a SIGSYS handler installed by `set_sigsys_handler`: writes `line` to stderr, then
/// raises SIGSYS, whose default action (restored on delivery) ends the whole process.
pub fn die_of_sigsys(line: &[u8]) -> ! {
    // SAFETY: write(2) and raise(3) are async-signal-safe; the buffer is valid.
    unsafe {
        libc::write(2, line.as_ptr().cast(), line.len());
        libc::raise(libc::SIGSYS);
    }
    // SIGSYS is not blocked here (SA_NODEFER) and its action is the default by now.
    exit_now(128 + libc::SIGSYS)
}

/// Makes this process the reaper of its orphaned descendants (a live upgrade's new supervisor
/// outlives its parent, an older supervisor, and must be reparented to the first one).
pub fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: plain prctl.
    cvt(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) }).map(drop)
}

/// Whether a seccomp filter already confines this process (one inherited through an exec).
pub fn has_seccomp_filter() -> bool {
    // SAFETY: plain prctl; 2 is SECCOMP_MODE_FILTER.
    unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) == 2 }
}
