//! Capabilities, as virtiofsd keeps them: a worker keeps what passthrough needs to act for
//! any caller (`WORKER`, changed with `--modcaps=+a:-b`); the supervisor's effective set is only
//! what it uses itself (`SUPERVISOR`: the unmount at the end). Workers are clones that never
//! exec, so they can only keep what the supervisor still holds: its permitted (and bounding) set
//! is the union, its effective set the narrow one, and each worker sets effective = permitted =
//! its own set before anything else. Raw capget/capset/prctl (sys::caps): capabilities are per
//! thread, and each of these calls happens while its process has one thread, so every thread
//! started later inherits them.
//!
//! A serving thread that takes on a non-root caller's euid loses its effective capabilities
//! (the kernel clears them when the euid leaves 0) and gets its permitted set back as effective
//! when the euid returns to 0 (fs/creds.rs): with permitted = `WORKER`, exactly that set.

use crate::sys::caps as sys;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--modcaps: {0:?} is not +name or -name")]
    ModcapsSyntax(String),
    #[error("--modcaps: unknown capability {0:?}")]
    UnknownCap(String),
    #[error("cannot set capabilities: {0}")]
    Set(std::io::Error),
}

/// Capability names (without `cap_`), by number.
const NAMES: &[&str] = &[
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
];

// The numbers of linux/capability.h (libc does not define them).
const CAP_CHOWN: u32 = 0;
const CAP_DAC_OVERRIDE: u32 = 1;
pub const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_FOWNER: u32 = 3;
const CAP_FSETID: u32 = 4;
const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;
const CAP_SETPCAP: u32 = 8;
pub const CAP_SYS_ADMIN: u32 = 21;
const CAP_MKNOD: u32 = 27;
const CAP_SETFCAP: u32 = 31;
#[cfg(test)]
const CAP_CHECKPOINT_RESTORE: u32 = 40;

/// A set of capabilities, bit n = capability n.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps(pub u64);

const fn bit(n: u32) -> u64 {
    1 << n
}

/// virtiofsd's default set, which is what passthrough for any caller needs: chown (SETATTR uid
/// and gid, new files of root callers), dac_override (root callers pass permission checks),
/// fowner (chmod, utimes, xattrs of files root does not own), fsetid (keep set-id bits on
/// chmod/chown), setgid and setuid (each request switches to its caller's ids, fs/creds.rs;
/// setgroups needs setgid), mknod (device nodes), setfcap (security.capability xattrs), and
/// dac_read_search: open_by_handle_at requires it (`--inode-file-handles`, default `prefer`;
/// as virtiofsd adds it for file handles). Links still go through /proc/self/fd, not
/// AT_EMPTY_PATH. Not sys_admin (trusted.* xattrs): as virtiofsd, `--modcaps=+sys_admin`.
pub const WORKER: Caps = Caps(
    bit(CAP_CHOWN)
        | bit(CAP_DAC_OVERRIDE)
        | bit(CAP_DAC_READ_SEARCH)
        | bit(CAP_FOWNER)
        | bit(CAP_FSETID)
        | bit(CAP_SETGID)
        | bit(CAP_SETUID)
        | bit(CAP_MKNOD)
        | bit(CAP_SETFCAP),
);

/// What the supervisor uses itself once serving: sys_admin, for umount2 of the FUSE mount at the
/// end (the mount was made before the drop). Killing and reaping its own workers needs none.
pub const SUPERVISOR: Caps = Caps(bit(CAP_SYS_ADMIN));

impl Caps {
    pub fn union(self, other: Caps) -> Caps {
        Caps(self.0 | other.0)
    }

    pub fn has(self, cap: u32) -> bool {
        self.0 & bit(cap) != 0
    }

    /// Names of the capabilities in the set, `cap_` prefixed, in number order.
    pub fn names(self) -> Vec<String> {
        (0..64).filter(|n| self.0 & (1 << n) != 0).map(|n| format!("cap_{}", name(n))).collect()
    }
}

fn name(n: u32) -> String {
    NAMES.get(n as usize).map_or_else(|| format!("{n}"), |s| s.to_string())
}

fn number(name: &str) -> Option<u32> {
    let lower = name.to_ascii_lowercase();
    let bare = lower.strip_prefix("cap_").unwrap_or(&lower);
    NAMES.iter().position(|n| *n == bare).map(|i| i as u32)
}

/// `set` changed by virtiofsd's `--modcaps` syntax: `+name` adds, `-name` removes, separated
/// by `:` (names with or without `cap_`, any case), applied left to right.
pub fn modify(set: Caps, modcaps: &str) -> Result<Caps, Error> {
    let mut set = set.0;
    for item in modcaps.split(':').filter(|s| !s.is_empty()) {
        let (add, cap) = match item.split_at_checked(1) {
            Some(("+", cap)) => (true, cap),
            Some(("-", cap)) => (false, cap),
            _ => return Err(Error::ModcapsSyntax(item.to_string())),
        };
        let n = number(cap).ok_or_else(|| Error::UnknownCap(cap.to_string()))?;
        if add {
            set |= 1 << n;
        } else {
            set &= !(1 << n);
        }
    }
    Ok(Caps(set))
}

/// The supervisor, before its first worker: bounding and permitted = `worker ∪ SUPERVISOR`,
/// effective = `SUPERVISOR` (or the union with `--recovery off`, where it serves too),
/// inheritable and ambient empty. Capabilities this process does not have are left out (a
/// warning names them). Returns the effective set and the worker's set as far as it is kept.
pub fn restrict_supervisor(worker: Caps, serves_itself: bool) -> Result<(Caps, Caps), Error> {
    let keep = worker.union(SUPERVISOR);
    let (_, permitted) = sys::get().map_err(Error::Set)?;
    let missing = Caps(keep.0 & !permitted);
    if missing.0 != 0 {
        tracing::warn!(missing = ?missing.names(), "running without capabilities the passthrough needs");
    }
    let keep = Caps(keep.0 & permitted);
    limit_bounding_set(keep)?;
    let effective = if serves_itself { keep } else { Caps(SUPERVISOR.0 & keep.0) };
    sys::set(effective.0, keep.0).map_err(Error::Set)?;
    Ok((effective, Caps(worker.0 & keep.0)))
}

/// A worker, first thing: effective = permitted = `worker`, which `restrict_supervisor`
/// returned (a subset of what this clone inherited as permitted); with `backing_admin` (FUSE
/// passthrough), CAP_SYS_ADMIN stays permitted too, not effective, if this clone inherited it.
pub fn restrict_worker(worker: Caps, backing_admin: bool) -> Result<(), Error> {
    let (_, inherited) = sys::get().map_err(Error::Set)?;
    let extra = if backing_admin { bit(CAP_SYS_ADMIN) & inherited } else { 0 };
    sys::set(worker.0, worker.0 | extra).map_err(Error::Set)
}

/// The holder (holder.rs): bounding, permitted and effective = `SUPERVISOR` (the unmount at
/// the end), as far as this process has it.
pub fn restrict_holder() -> Result<(), Error> {
    let (_, permitted) = sys::get().map_err(Error::Set)?;
    let keep = SUPERVISOR.0 & permitted;
    limit_bounding_set(Caps(keep))?;
    sys::set(keep, keep).map_err(Error::Set)
}

/// Drops from the bounding set every capability not in `keep`, and clears the ambient set.
/// Dropping needs CAP_SETPCAP: a process without it (an unprivileged daemon's holder, in the
/// host's user namespace) has nothing there to lose, and exec cannot give it anything either
/// (no_new_privs, set with every filter), so its bounding set is left as it is.
fn limit_bounding_set(keep: Caps) -> Result<(), Error> {
    if effective().has(CAP_SETPCAP) {
        for n in 0..64 {
            if !keep.has(n) && sys::in_bounding_set(n) {
                sys::drop_from_bounding_set(n).map_err(Error::Set)?;
            }
        }
    }
    sys::clear_ambient().map_err(Error::Set)
}

/// This thread's effective set.
pub fn effective() -> Caps {
    Caps(sys::get().map_or(0, |(e, _)| e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_modcaps_syntax() {
        let base = Caps(bit(CAP_CHOWN) | bit(CAP_MKNOD));
        let got = modify(base, "+sys_admin:-chown:+CAP_DAC_READ_SEARCH").unwrap();
        assert_eq!(got.0, bit(CAP_MKNOD) | bit(CAP_SYS_ADMIN) | bit(CAP_DAC_READ_SEARCH));
        assert!(matches!(modify(base, "sys_admin"), Err(Error::ModcapsSyntax(_))));
        assert!(matches!(modify(base, "+nope"), Err(Error::UnknownCap(_))));
        assert_eq!(NAMES.len(), CAP_CHECKPOINT_RESTORE as usize + 1);
        assert_eq!(number("setfcap"), Some(CAP_SETFCAP));
    }
}
