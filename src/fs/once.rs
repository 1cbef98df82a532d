//! Exactly-once host syscalls across worker deaths.
//!
//! A state-changing syscall is bracketed in the request's intent record: step ISSUED before it
//! (the world before it was checked and recorded), step DONE with its result after it. A replay
//! that finds DONE reuses the result; one that finds ISSUED does not know whether the syscall ran,
//! so it runs it again and lets the op decide whether the error it gets (EEXIST after a create,
//! ENOENT after a remove) is the trace of its own earlier success. That judgement is exact because
//! the guest kernel holds the directory's lock for the whole request, so nothing else the guest
//! does can touch the name in between (changes made on the host behind the guest's back during a
//! crash are outside the contract, as they are for any cache the guest keeps).

use std::io;

use super::{Error, Result};
use crate::state::intent::{Intent, facts};

pub const ISSUED: u32 = 1;
pub const DONE: u32 = 2;

/// A host call run exactly once, by the op that runs it. Its two crash points are named after
/// it: `<op>.before_<what>` and `<op>.after_<what>` (e.g. "mkdir.before_syscall").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Mknod,
    Mkdir,
    Symlink,
    Link,
    Unlink,
    Rmdir,
    Rename,
    Setxattr,
    Removexattr,
    /// CREATE's open with O_CREAT.
    Create,
    /// A WRITE to an O_APPEND file.
    Append,
}

impl Call {
    /// The operation, as its crash points name it.
    const fn op(self) -> &'static str {
        match self {
            Call::Mknod => "mknod",
            Call::Mkdir => "mkdir",
            Call::Symlink => "symlink",
            Call::Link => "link",
            Call::Unlink => "unlink",
            Call::Rmdir => "rmdir",
            Call::Rename => "rename",
            Call::Setxattr => "setxattr",
            Call::Removexattr => "removexattr",
            Call::Create => "create",
            Call::Append => "write",
        }
    }

    /// The steps its crash points name: before and after the call.
    const fn steps(self) -> (&'static str, &'static str) {
        match self {
            Call::Create => ("before_open", "after_open"),
            Call::Append => ("before_append", "after_append"),
            Call::Mknod
            | Call::Mkdir
            | Call::Symlink
            | Call::Link
            | Call::Unlink
            | Call::Rmdir
            | Call::Rename
            | Call::Setxattr
            | Call::Removexattr => ("before_syscall", "after_syscall"),
        }
    }

    /// Every call (crash.rs's test finds each `Call::` named in the source here).
    #[cfg(test)]
    pub const ALL: [Call; 11] = [
        Call::Mknod,
        Call::Mkdir,
        Call::Symlink,
        Call::Link,
        Call::Unlink,
        Call::Rmdir,
        Call::Rename,
        Call::Setxattr,
        Call::Removexattr,
        Call::Create,
        Call::Append,
    ];

    /// The full names of its two crash points.
    #[cfg(test)]
    pub fn markers(self) -> [String; 2] {
        let (before, after) = self.steps();
        [format!("{}.{before}", self.op()), format!("{}.{after}", self.op())]
    }
}

/// Runs `run`, the host call `what`, once. `ours` says, on a replay after ISSUED, whether an
/// error means our earlier attempt already did it (then it counts as success).
pub fn once(
    intent: Intent,
    what: Call,
    run: impl FnOnce() -> io::Result<()>,
    ours: impl Fn(&io::Error) -> bool,
) -> Result<()> {
    let retry = intent.step() == ISSUED;
    match intent.step() {
        DONE => {
            return match intent.fact(facts::ONCE_ERRNO) {
                0 => Ok(()),
                errno => Err(Error::from_errno(errno)),
            };
        }
        ISSUED => {}
        _ => intent.set_step(ISSUED),
    }
    // Crash here: step ISSUED, syscall not run; the replay runs it.
    crate::crash_point!(what.op() => what.steps().0);
    let result = match run() {
        Err(e) if retry && ours(&e) => Ok(()),
        r => r,
    };
    // Crash here: step ISSUED, syscall run; the replay runs it again and `ours` recognises it.
    crate::crash_point!(what.op() => what.steps().1);
    intent.set_fact(facts::ONCE_ERRNO, result.as_ref().err().and_then(|e| e.raw_os_error()).unwrap_or(0));
    intent.set_step(DONE);
    Ok(result?)
}

pub fn is_errno(e: &io::Error, errno: i32) -> bool {
    e.raw_os_error() == Some(errno)
}
