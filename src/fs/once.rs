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

/// The crash points around one bracketed syscall, named after its op.
pub struct Markers {
    pub before: &'static str,
    pub after: &'static str,
}

/// Runs `call` once. `ours` says, on a replay after ISSUED, whether an error means our earlier
/// attempt already did it (then it counts as success).
pub fn once(
    intent: Intent,
    markers: &Markers,
    call: impl FnOnce() -> io::Result<()>,
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
    crate::crash_point!(markers.before);
    let result = match call() {
        Err(e) if retry && ours(&e) => Ok(()),
        r => r,
    };
    // Crash here: step ISSUED, syscall run; the replay runs it again and `ours` recognises it.
    crate::crash_point!(markers.after);
    intent.set_fact(facts::ONCE_ERRNO, result.as_ref().err().and_then(|e| e.raw_os_error()).unwrap_or(0));
    intent.set_step(DONE);
    Ok(result?)
}

pub fn is_errno(e: &io::Error, errno: i32) -> bool {
    e.raw_os_error() == Some(errno)
}
