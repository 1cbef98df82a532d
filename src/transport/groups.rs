//! A FUSE caller's supplementary groups. The kernel sends only the caller's uid, gid and pid
//! (in the pid namespace of the mount: the host's), so the groups are read from
//! /proc/PID/status — through the host's procfs when the daemon has one (`--sandbox none` or
//! `chroot`), or by asking the holder process, which stays in the host's namespaces while
//! the supervisor and workers run in their own pid namespace and see no host process
//! (`--sandbox namespace`; holder.rs answers).
//!
//! The question and answer are SOCK_SEQPACKET messages on a socket pair made at start-up: a
//! question is a tag (u64) and a pid (u32); an answer is the tag, a count (u32) and that many
//! gids (u32), native-endian. A worker killed between asking and reading leaves an answer in
//! the socket; the tag (the asking worker's pid and a counter) tells the next one to skip it.

use std::sync::{Mutex, OnceLock};

use crate::sys;

/// At most this many groups are passed on (Linux allows 65,536; a request runs with at most
/// these, the first in the caller's list).
pub const MAX_GROUPS: usize = 1024;

const QUESTION: usize = 12;
const ANSWER_HEADER: usize = 12;

/// Where a worker reads callers' groups.
#[derive(Debug, Clone, Copy)]
pub enum Source {
    /// A dirfd of the host pid namespace's procfs.
    Proc(i32),
    /// The worker's end of the socket pair to the holder.
    Holder(i32),
}

static SOURCE: OnceLock<Source> = OnceLock::new();
/// The holder's socket is shared by a worker's serving threads: one question at a time, and the
/// counter part of its tags.
static ASKING: Mutex<u32> = Mutex::new(0);

/// The holder's socket, if that is where groups come from (a live upgrade hands it on).
pub fn holder_fd() -> Option<i32> {
    match SOURCE.get()? {
        Source::Holder(fd) => Some(*fd),
        Source::Proc(_) => None,
    }
}

/// Set once at start-up, before the first worker (which inherits it).
pub fn set_source(source: Source) {
    let _ = SOURCE.set(source);
}

/// The supplementary groups of the calling process `pid`; empty if it is gone or unknown.
pub fn of_caller(pid: u32) -> Vec<u32> {
    if pid == 0 {
        return Vec::new();
    }
    match SOURCE.get() {
        Some(Source::Proc(proc)) => read_status(*proc, pid),
        Some(Source::Holder(sock)) => ask_holder(*sock, pid).unwrap_or_else(|e| {
            tracing::error!(pid, "cannot ask the holder process for a caller's groups: {e}");
            Vec::new()
        }),
        None => Vec::new(),
    }
}

/// Reads the `Groups:` line of /proc/`pid`/status beneath the procfs dirfd `proc`.
pub fn read_status(proc: i32, pid: u32) -> Vec<u32> {
    let Ok(name) = std::ffi::CString::new(format!("{pid}/status")) else {
        return Vec::new();
    };
    let Ok(fd) = sys::openat(proc, &name, libc::O_RDONLY | libc::O_CLOEXEC, 0) else {
        return Vec::new();
    };
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    while len < buf.len() {
        match sys::read(fd, &mut buf[len..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => len += n,
        }
        if len == buf.len() && buf.len() < 1 << 16 {
            buf.resize(buf.len() * 2, 0);
        }
    }
    sys::close(fd);
    String::from_utf8_lossy(&buf[..len])
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| g.split_whitespace().filter_map(|n| n.parse().ok()).take(MAX_GROUPS).collect())
        .unwrap_or_default()
}

fn ask_holder(sock: i32, pid: u32) -> std::io::Result<Vec<u32>> {
    let mut counter = ASKING.lock().unwrap_or_else(|p| p.into_inner());
    *counter = counter.wrapping_add(1);
    let tag = (u64::from(sys::process::getpid() as u32) << 32) | u64::from(*counter);
    let mut question = [0u8; QUESTION];
    question[..8].copy_from_slice(&tag.to_ne_bytes());
    question[8..].copy_from_slice(&pid.to_ne_bytes());
    sys::write(sock, &question)?;
    let mut answer = vec![0u8; ANSWER_HEADER + 4 * MAX_GROUPS];
    loop {
        let n = sys::read(sock, &mut answer)?;
        if n == 0 {
            return Err(std::io::Error::from_raw_os_error(libc::EPIPE));
        }
        if n < ANSWER_HEADER || answer[..8] != tag.to_ne_bytes() {
            continue; // the answer to a dead worker's question
        }
        let count = (u32::from_ne_bytes(answer[8..12].try_into().expect("4 bytes")) as usize)
            .min(MAX_GROUPS)
            .min((n - ANSWER_HEADER) / 4);
        return Ok(answer[ANSWER_HEADER..ANSWER_HEADER + 4 * count]
            .chunks_exact(4)
            .map(|c| u32::from_ne_bytes(c.try_into().expect("4 bytes")))
            .collect());
    }
}

/// The holder's side: answers one question waiting on `sock` from the procfs dirfd `proc`.
/// False if the socket is closed (every worker and the supervisor have gone).
pub fn answer_one(sock: i32, proc: i32) -> bool {
    let mut question = [0u8; QUESTION];
    match sys::read(sock, &mut question) {
        Ok(0) => return false,
        Ok(QUESTION) => {}
        Ok(_) => return true, // malformed: not ours to answer
        Err(e) => return e.raw_os_error() == Some(libc::EAGAIN) || e.raw_os_error() == Some(libc::EINTR),
    }
    let pid = u32::from_ne_bytes(question[8..].try_into().expect("4 bytes"));
    let groups = read_status(proc, pid);
    let mut answer = Vec::with_capacity(ANSWER_HEADER + 4 * groups.len());
    answer.extend_from_slice(&question[..8]);
    answer.extend_from_slice(&(groups.len() as u32).to_ne_bytes());
    groups.iter().for_each(|g| answer.extend_from_slice(&g.to_ne_bytes()));
    if let Err(e) = sys::write(sock, &answer) {
        tracing::warn!("cannot answer a worker's question about groups: {e}");
    }
    true
}
