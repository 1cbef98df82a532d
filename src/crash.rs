//! Crash points for the crash-point enumeration tests: `crash_point!("op.step")` marks a place
//! between two steps of a state-changing operation; `crash_point!(op => step)` is the marker
//! `<op>.<step>` for code shared by several operations (fs/once.rs). Compiled in only with the
//! `crash-points` feature (the test build); in other builds the macro computes nothing.
//!
//! Armed by the environment of the daemon: PHOENIXFS_CRASH_AT names one marker and
//! PHOENIXFS_CRASH_ARM a file. The first time the marker is reached while that file exists, the
//! file is removed (so exactly one worker dies, not every worker after it) and the worker kills
//! itself with SIGKILL — a death at that very instruction boundary, as the OOM killer would do.
//!
//! A transport's markers also pass the request's opcode (`crash_point!("vhost.x", opcode)`); with
//! PHOENIXFS_CRASH_OPCODE=N set, those fire only for opcode N, so a test can crash one chosen
//! operation at the transport's own steps.
//!
//! With PHOENIXFS_CRASH_MODE=abort-always the worker instead aborts (SIGABRT, as a panic would)
//! every time it reaches the marker while the arm file exists, without removing it: a crash loop,
//! for the tests of the crash-loop guards.
//!
//! With PHOENIXFS_CRASH_MODE=forbidden-syscall the worker instead makes a system call its
//! seccomp filter refuses (syslog(SYSLOG_ACTION_SIZE_BUFFER), a harmless query), once: the test
//! of `--seccomp kill` (the worker dies of it, the log names it, a new worker replays). With
//! `forbidden-syscall-always` it makes it every time, as `abort-always` aborts.
//!
//! With PHOENIXFS_CRASH_MODE=stall every thread that reaches the marker instead waits there for
//! as long as the arm file exists, then goes on: a test holds requests in the middle of being
//! served (several on one virtqueue at once, say), then kills the worker or lets them finish.
//!
//! With PHOENIXFS_CRASH_MODE=try-escape the worker instead plays an attacker who has taken it
//! over, once: it tries to open host files outside the share (`escape_attempts`) and logs what
//! each attempt got, then serves on. The test of `--sandbox`.

#[macro_export]
macro_rules! crash_point {
    ($op:expr => $step:expr) => {{
        #[cfg(feature = "crash-points")]
        $crate::crash::reached_step($op, $step);
        #[cfg(not(feature = "crash-points"))]
        let _ = || ($op, $step); // type-checked, never run
    }};
    ($name:expr) => {{
        #[cfg(feature = "crash-points")]
        $crate::crash::reached($name, None);
        #[cfg(not(feature = "crash-points"))]
        let _ = $name;
    }};
    ($name:expr, $opcode:expr) => {{
        #[cfg(feature = "crash-points")]
        $crate::crash::reached($name, Some($opcode));
        #[cfg(not(feature = "crash-points"))]
        let _ = ($name, $opcode);
    }};
}

#[cfg(feature = "crash-points")]
pub fn reached(name: &str, opcode: Option<u32>) {
    reached_if(|at| at == name, format_args!("{name}"), opcode);
}

/// The marker `<op>.<step>`, compared with the armed one piece by piece (nothing is allocated).
#[cfg(feature = "crash-points")]
pub fn reached_step(op: &str, step: &str) {
    let is = |at: &str| at.strip_prefix(op).and_then(|rest| rest.strip_prefix('.')) == Some(step);
    reached_if(is, format_args!("{op}.{step}"), None);
}

/// The armed crash point, read from the environment once.
#[cfg(feature = "crash-points")]
struct Target {
    at: String,
    /// The arm file's directory, opened before the sandbox hides the path (kept open for good:
    /// start-up records it among the fds every worker's sweep keeps), and its name in it.
    arm_dir: i32,
    arm_name: std::ffi::CString,
    always: bool,
    forbidden: bool,
    escape: bool,
    stall: bool,
    opcode: Option<u32>,
}

#[cfg(feature = "crash-points")]
fn target() -> &'static Option<Target> {
    use std::os::unix::ffi::OsStrExt;
    static TARGET: std::sync::OnceLock<Option<Target>> = std::sync::OnceLock::new();
    TARGET.get_or_init(|| {
        let arm = std::path::PathBuf::from(std::env::var_os("PHOENIXFS_CRASH_ARM")?);
        let dir = std::ffi::CString::new(arm.parent()?.as_os_str().as_bytes()).ok()?;
        Some(Target {
            at: std::env::var("PHOENIXFS_CRASH_AT").ok()?,
            arm_dir: crate::sys::open(&dir, libc::O_PATH | libc::O_DIRECTORY).ok()?,
            arm_name: std::ffi::CString::new(arm.file_name()?.as_bytes()).ok()?,
            always: std::env::var("PHOENIXFS_CRASH_MODE").is_ok_and(|m| m.ends_with("-always")),
            forbidden: std::env::var("PHOENIXFS_CRASH_MODE").is_ok_and(|m| m.starts_with("forbidden-syscall")),
            escape: std::env::var("PHOENIXFS_CRASH_MODE").is_ok_and(|m| m == "try-escape"),
            stall: std::env::var("PHOENIXFS_CRASH_MODE").is_ok_and(|m| m == "stall"),
            opcode: std::env::var("PHOENIXFS_CRASH_OPCODE").ok().and_then(|o| o.parse().ok()),
        })
    })
}

/// Reads the armed crash point, if any, and opens its arm file's directory: at start-up, before
/// the sandbox (where the path would not exist) and before the fds to keep are recorded.
pub fn prepare() {
    #[cfg(feature = "crash-points")]
    let _ = target();
}

/// The fd `prepare` opened, if any: a live upgrade's new binary, which opens its own, adds it to
/// the fds every worker keeps.
pub fn arm_fd() -> Option<i32> {
    #[cfg(feature = "crash-points")]
    return target().as_ref().map(|t| t.arm_dir);
    #[cfg(not(feature = "crash-points"))]
    None
}

#[cfg(feature = "crash-points")]
fn reached_if(is: impl Fn(&str) -> bool, name: std::fmt::Arguments, opcode: Option<u32>) {
    let Some(Target { at, arm_dir, arm_name, always, forbidden, escape, stall, opcode: only }) = target() else {
        return;
    };
    if !is(at) || opcode.is_some() && only.is_some() && opcode != *only {
        return;
    }
    let armed = || crate::sys::faccessat(*arm_dir, arm_name, libc::F_OK, 0).is_ok();
    // The unlink succeeds for exactly one caller.
    let disarm = || crate::sys::unlinkat(*arm_dir, arm_name, 0).is_ok();
    let forbidden_call = || {
        tracing::warn!("crash point {name}: making a forbidden system call");
        // SAFETY: syslog(2) action 10 only reports the size of the kernel's log buffer.
        unsafe { libc::syscall(libc::SYS_syslog, 10, 0usize, 0) };
    };
    if *stall {
        if armed() {
            tracing::warn!("crash point {name}: stalling while the arm file exists");
            while armed() {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        return;
    }
    if *always && armed() {
        if *forbidden {
            return forbidden_call();
        }
        tracing::warn!("crash point {name}: aborting this worker");
        std::process::abort();
    }
    if *forbidden && disarm() {
        return forbidden_call();
    }
    if *escape && disarm() {
        escape_attempts();
        return;
    }
    if !*always && disarm() {
        tracing::warn!("crash point {name}: killing this worker");
        crate::sys::process::kill_self();
    }
}

/// What an attacker running code in a worker would try first, each logged as "escape attempt
/// NAME: opened" or "escape attempt NAME: refused (errno)". Paths are absolute (the host's
/// root), or relative to the worker's working directory, its /proc/self/fd, from where `../..`
/// is the procfs root: process 1's root there, and the status of the host process
/// PHOENIXFS_ESCAPE_PID (the test's own).
#[cfg(feature = "crash-points")]
fn escape_attempts() {
    let host_pid = std::env::var("PHOENIXFS_ESCAPE_PID").unwrap_or_default();
    let attempts = [
        ("host-path", "/etc/hostname".to_string()),
        ("proc-pid1-root", "../../1/root/etc/hostname".to_string()),
        ("proc-host-process", format!("../../{host_pid}/status")),
        ("host-proc-path", "/proc/1/root/etc/hostname".to_string()),
    ];
    for (what, path) in attempts {
        let c = std::ffi::CString::new(path).expect("no NUL");
        match crate::sys::open(&c, libc::O_RDONLY) {
            Ok(fd) => {
                crate::sys::close(fd);
                tracing::warn!("escape attempt {what}: opened");
            }
            Err(e) => tracing::warn!("escape attempt {what}: refused ({})", e.raw_os_error().unwrap_or(0)),
        }
    }
}

/// Every crash point in the source, so the enumeration test can try each one (a unit test below
/// keeps this list and the markers the source names equal).
pub const MARKERS: &[&str] = &[
    "copy_file_range.after_copy",
    "create.after_open",
    "create.before_open",
    "fallocate.after_allocate",
    "flush.after_unlock",
    "forget.applied",
    "forget.pending",
    "handle.pending",
    "handle.published",
    "init.after_record",
    "init.reset_session",
    "link.after_syscall",
    "link.before_syscall",
    "mkdir.after_syscall",
    "mkdir.before_syscall",
    "mknod.after_syscall",
    "mknod.before_syscall",
    "mount.before_publish",
    "open.after_open",
    "opendir.after_open",
    "passthrough.after_register",
    "passthrough.probe",
    "passthrough.recorded",
    "raise.applied",
    "raise.new_pending",
    "raise.new_published",
    "raise.pending",
    "release.after_backing_close",
    "release.after_retire",
    "release.before_backing_close",
    "release.before_retire",
    "removexattr.after_syscall",
    "removexattr.before_syscall",
    "rename.after_syscall",
    "rename.before_syscall",
    "reply.before_send",
    "resend.taken_in",
    "rmdir.after_syscall",
    "rmdir.before_syscall",
    "setattr.after_change",
    "setlk.after_lock",
    "setxattr.after_syscall",
    "setxattr.before_syscall",
    "symlink.after_syscall",
    "symlink.before_syscall",
    "tmpfile.after_open",
    "transfer.node_imported",
    "transfer.saved",
    "transfer.session_recorded",
    "unlink.after_syscall",
    "unlink.before_syscall",
    "upgrade.before_ready",
    "vhost.after_pop",
    "vhost.after_used_elem",
    "vhost.after_used_idx",
    "vhost.apply_control",
    "vhost.before_signal",
    "vhost.before_used",
    "worker.start",
    "write.after_append",
    "write.after_pwrite",
    "write.before_append",
];

#[cfg(test)]
mod tests {
    /// The markers named in the source: `crash_point!("a.b")` literals, and the two around each
    /// host call fs/once.rs brackets, `Call::X` (named by `Call::markers`).
    fn markers_in_source() -> std::collections::BTreeSet<String> {
        use crate::fs::OnceCall as Call;
        fn walk(dir: &std::path::Path, out: &mut std::collections::BTreeSet<String>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") && !p.ends_with("crash.rs") {
                    let text = std::fs::read_to_string(&p).unwrap();
                    for piece in text.split("crash_point!(\"").skip(1) {
                        out.insert(piece.split('"').next().unwrap().to_string());
                    }
                    for (i, _) in text.match_indices("Call::") {
                        if text[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                            continue; // another name ending in "Call"
                        }
                        let rest = &text[i + "Call::".len()..];
                        let name: String =
                            rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                        if !name.starts_with(|c: char| c.is_ascii_uppercase())
                            || !name.contains(|c: char| c.is_ascii_lowercase())
                        {
                            continue; // not a variant (`Call::ALL`)
                        }
                        let call = Call::ALL
                            .into_iter()
                            .find(|c| format!("{c:?}") == name)
                            .unwrap_or_else(|| panic!("Call::{name} in {} is missing from Call::ALL", p.display()));
                        out.extend(call.markers());
                    }
                }
            }
        }
        let mut out = std::collections::BTreeSet::new();
        walk(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut out);
        out
    }

    #[test]
    fn test_crash_markers_list_matches_source() {
        let listed: std::collections::BTreeSet<String> = super::MARKERS.iter().map(|s| s.to_string()).collect();
        assert_eq!(markers_in_source(), listed, "crash::MARKERS is out of date with the source");
    }
}
