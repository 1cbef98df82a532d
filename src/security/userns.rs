//! The user namespace of an unprivileged `--sandbox namespace` (virtiofsd 1.14's semantics):
//! without CAP_SYS_ADMIN the daemon cannot create mount, pid, network or IPC namespaces in the
//! host's user namespace, so the supervisor is cloned into a new user namespace first, in which
//! it has them. Its id mappings come from `--uid-map` / `--gid-map`
//! (`:namespace_id:host_id:count:`, repeatable); without them the daemon's own uid and gid are
//! mapped to 0. This module owns the maps: their syntax, who may write them (the holder, outside:
//! security/sandbox.rs), and what the supervisor does inside once they are written.
//!
//! Who writes a map, as virtiofsd decides it: one range of one id that is the daemon's own
//! (the default is such a map) needs no privilege, so the holder writes `/proc/PID/uid_map`
//! itself (for gids after writing `deny` to `/proc/PID/setgroups`, which the kernel requires of
//! an unprivileged writer); anything else goes through the setuid helpers `newuidmap` /
//! `newgidmap` (Debian's `uidmap` package), which check the ranges against /etc/subuid and
//! /etc/subgid.

use std::fmt;
use std::process::Command;
use std::str::FromStr;

use crate::sys::{self, process};

/// One `--uid-map` / `--gid-map` range: namespace ids `inside .. inside+count` are host ids
/// `outside .. outside+count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error(
        "{0:?} is not :namespace_id:host_id:count: (three numbers, each led by the same non-alphanumeric \
         delimiter, which also ends the map)"
    )]
    Syntax(String),
    #[error("{0:?}: {1:?} is not a number from 0 to 4294967295")]
    Number(String, String),
    #[error("{0:?}: a range of 0 ids maps nothing")]
    Empty(String),
    #[error("{0:?}: the range runs past id 4294967294")]
    Overflow(String),
}

impl FromStr for Range {
    type Err = RangeError;

    /// virtiofsd's `parse_idmap`: the last character is the delimiter; it must not be
    /// alphanumeric and must also lead the map; exactly three numbers between. Beyond virtiofsd
    /// (whose kernel write would fail later with EINVAL): a count of at least 1, and no range
    /// past the largest id.
    fn from_str(s: &str) -> Result<Range, RangeError> {
        let syntax = || RangeError::Syntax(s.to_string());
        let delim = s.chars().last().filter(|c| !c.is_alphanumeric()).ok_or_else(syntax)?;
        let body = s[..s.len() - delim.len_utf8()].strip_prefix(delim).ok_or_else(syntax)?;
        let fields: Vec<&str> = body.split(delim).collect();
        let [inside, outside, count] = fields[..] else { return Err(syntax()) };
        let num = |v: &str| v.parse::<u32>().map_err(|_| RangeError::Number(s.to_string(), v.to_string()));
        let r = Range { inside: num(inside)?, outside: num(outside)?, count: num(count)? };
        if r.count == 0 {
            return Err(RangeError::Empty(s.to_string()));
        }
        let end = |start: u32| u64::from(start) + u64::from(r.count);
        if end(r.inside).max(end(r.outside)) > u64::from(u32::MAX) {
            return Err(RangeError::Overflow(s.to_string()));
        }
        Ok(r)
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, ":{}:{}:{}:", self.inside, self.outside, self.count)
    }
}

/// The maps of the user namespace, as given (empty: the default, own id → 0).
#[derive(Debug, Clone, Default)]
pub struct IdMaps {
    pub uids: Vec<Range>,
    pub gids: Vec<Range>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "--sandbox namespace: cannot create a user namespace ({0}); without CAP_SYS_ADMIN the sandbox is built in \
         one: check that unprivileged user namespaces are allowed (sysctl user.max_user_namespaces, \
         kernel.apparmor_restrict_unprivileged_userns), or run as root, or with --sandbox none"
    )]
    Create(std::io::Error),
    #[error("{option}: cannot run {helper} ({source}); install it (Debian: apt-get install uidmap)")]
    Helper { option: &'static str, helper: &'static str, source: std::io::Error },
    #[error("{option}: `{command}` failed: {stderr}; the host ids must be given to this user in {file}")]
    HelperFailed { option: &'static str, command: String, stderr: String, file: &'static str },
    #[error("{option}: cannot write {path}: {source}")]
    Write { option: &'static str, path: String, source: std::io::Error },
    #[error("--sandbox namespace: the holder gave up before the user namespace's maps were written")]
    NotMapped,
    #[error("--sandbox namespace: cannot become root (uid and gid 0) in the user namespace: {0}")]
    BecomeRoot(std::io::Error),
}

/// Whether the daemon may build `--sandbox namespace` in the host's user namespace: it has
/// CAP_SYS_ADMIN. Without it (an unprivileged user) the sandbox gets a user namespace of its own.
pub fn privileged() -> bool {
    super::caps::effective().has(super::caps::CAP_SYS_ADMIN)
}

/// One kind of id: the option's name, the maps given, this process's own id, and its helper.
struct Kind<'a> {
    option: &'static str,
    ranges: &'a [Range],
    own: u32,
    file: &'static str,
    helper: &'static str,
    /// /proc/PID/<this>.
    map_file: &'static str,
}

/// In the holder (outside, in the host's user namespace), right after cloning the supervisor
/// into its new one: writes the supervisor's uid and gid maps. Start-up only: a failure here
/// ends the daemon before anything serves.
pub fn write_maps(pid: i32, maps: &IdMaps) -> Result<(), Error> {
    // SAFETY: plain syscalls.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let uids = Kind {
        option: "--uid-map",
        ranges: &maps.uids,
        own: uid,
        file: "/etc/subuid",
        helper: "newuidmap",
        map_file: "uid_map",
    };
    let gids = Kind {
        option: "--gid-map",
        ranges: &maps.gids,
        own: gid,
        file: "/etc/subgid",
        helper: "newgidmap",
        map_file: "gid_map",
    };
    write_map(pid, &uids)?;
    write_map(pid, &gids)
}

fn write_map(pid: i32, kind: &Kind) -> Result<(), Error> {
    let default = [Range { inside: 0, outside: kind.own, count: 1 }];
    let ranges = if kind.ranges.is_empty() { &default[..] } else { kind.ranges };
    if let [r] = ranges
        && r.outside == kind.own
        && r.count == 1
    {
        // Our own id alone: no privilege needed. The kernel takes a gid map from an
        // unprivileged writer only once setgroups(2) is denied in that namespace for good.
        if kind.map_file == "gid_map" {
            write_proc(pid, "setgroups", "deny", kind.option)?;
        }
        return write_proc(pid, kind.map_file, &format!("{} {} 1", r.inside, r.outside), kind.option);
    }
    let mut cmd = Command::new(kind.helper);
    cmd.arg(pid.to_string());
    for r in ranges {
        cmd.args([r.inside.to_string(), r.outside.to_string(), r.count.to_string()]);
    }
    let out = cmd.output().map_err(|source| Error::Helper { option: kind.option, helper: kind.helper, source })?;
    if !out.status.success() {
        return Err(Error::HelperFailed {
            option: kind.option,
            command: format!("{cmd:?}").replace('"', ""),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            file: kind.file,
        });
    }
    Ok(())
}

fn write_proc(pid: i32, file: &str, text: &str, option: &'static str) -> Result<(), Error> {
    let path = format!("/proc/{pid}/{file}");
    std::fs::write(&path, text).map_err(|source| Error::Write { option, path, source })
}

/// In the supervisor, first thing in its new user namespace: waits until the holder has
/// written the maps (a byte on `mapped`; end of file: the holder failed or died, and said why),
/// then becomes uid and gid 0 there, which every request's credential switch starts from
/// (fs/creds.rs: a caller's ids are taken on and given back per thread; the capabilities the
/// kernel gave this process in its namespace follow euid 0 as they do for root on the host).
pub fn enter_mapped(mapped: i32) -> Result<(), Error> {
    let mut byte = [0u8; 1];
    let got = loop {
        match sys::read(mapped, &mut byte) {
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            other => break other,
        }
    };
    sys::close(mapped);
    if !matches!(got, Ok(1)) {
        return Err(Error::NotMapped);
    }
    process::set_ids(0, 0).map_err(Error::BecomeRoot)?;
    // Supplementary groups: the host's, unmappable here (they show as the overflow gid). Drop
    // them where the namespace allows setgroups (maps written by newgidmap); where it is denied
    // for good (a gid map of our own gid), every thread keeps them and requests run with them.
    // (The raw per-thread call: this process is single-threaded, and a raw clone.)
    if sys::thread_creds::setgroups(&[]).is_err() {
        sys::thread_creds::keep_groups();
        tracing::info!(
            "setgroups(2) is denied in this user namespace (no --gid-map through newgidmap): requests run \
             with the daemon's supplementary groups"
        );
    }
    Ok(())
}

/// Whether this process runs in a user namespace other than the host's (its uid_map is not the
/// initial namespace's identity map), read through the procfs dirfd `proc`.
pub fn nested(proc: i32) -> bool {
    let Ok(fd) = sys::openat(proc, c"self/uid_map", libc::O_RDONLY | libc::O_CLOEXEC, 0) else { return false };
    let mut buf = [0u8; 256];
    let n = sys::read(fd, &mut buf).unwrap_or(0);
    sys::close(fd);
    let fields: Vec<&str> = std::str::from_utf8(&buf[..n]).unwrap_or("").split_whitespace().collect();
    fields != ["0", "0", "4294967295"]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_range_parses_virtiofsds_syntax() {
        assert_eq!(":0:100000:65536:".parse(), Ok(Range { inside: 0, outside: 100000, count: 65536 }));
        assert_eq!("/1/1000/1/".parse(), Ok(Range { inside: 1, outside: 1000, count: 1 }));
        assert_eq!(Range { inside: 0, outside: 7, count: 2 }.to_string(), ":0:7:2:");
        for bad in ["", ":", "0:1000:1", ":0:1000:1", "0:1000:1:", ":0:1000:", ":0:1000:1:2:", "a0a1a1a", ":0;1:1;"] {
            assert!(matches!(bad.parse::<Range>(), Err(RangeError::Syntax(_))), "{bad:?}");
        }
        assert!(matches!(":x:1:1:".parse::<Range>(), Err(RangeError::Number(..))));
        assert!(matches!(":-1:1:1:".parse::<Range>(), Err(RangeError::Number(..))));
        assert!(matches!(":0:1:0:".parse::<Range>(), Err(RangeError::Empty(_))));
        assert!(matches!(":0:4294967295:1:".parse::<Range>(), Err(RangeError::Overflow(_))));
    }
}
