//! Crash points for the crash-point enumeration tests: `crash_point!("op.step")` marks a place
//! between two steps of a state-changing operation. Compiled in only with the `crash-points`
//! feature (the test build); in other builds the macro expands to nothing.
//!
//! Armed by the environment of the daemon: PHOENIXFS_CRASH_AT names one marker and
//! PHOENIXFS_CRASH_ARM a file. The first time the marker is reached while that file exists, the
//! file is removed (so exactly one worker dies, not every worker after it) and the worker kills
//! itself with SIGKILL — a death at that very instruction boundary, as the OOM killer would do.

#[macro_export]
macro_rules! crash_point {
    ($name:expr) => {{
        #[cfg(feature = "crash-points")]
        $crate::crash::reached($name);
        #[cfg(not(feature = "crash-points"))]
        let _ = $name;
    }};
}

#[cfg(feature = "crash-points")]
pub fn reached(name: &str) {
    use std::sync::OnceLock;
    static TARGET: OnceLock<Option<(String, std::ffi::CString)>> = OnceLock::new();
    let target = TARGET.get_or_init(|| {
        let at = std::env::var("PHOENIXFS_CRASH_AT").ok()?;
        let arm = std::env::var("PHOENIXFS_CRASH_ARM").ok()?;
        Some((at, std::ffi::CString::new(arm).ok()?))
    });
    let Some((at, arm)) = target else { return };
    // SAFETY: valid C string; unlink succeeds for exactly one caller.
    if at == name && unsafe { libc::unlink(arm.as_ptr()) } == 0 {
        tracing::warn!("crash point {name}: killing this worker");
        // SAFETY: signals our own process.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}
