//! FUSE INIT: what we agree to, given what the kernel offers and what the operator allows, and
//! the session it starts. The outcome is kept in the state region's header, so a worker that
//! replaces a dead one serves on without a new INIT (the kernel sends one per connection).

use std::sync::atomic::Ordering;

use super::Server;
use crate::fuse::{MAX_WRITE, ReplyBuf, abi};

/// What the operator allows the kernel to turn on at INIT.
#[derive(Debug, Clone, Copy)]
pub struct InitPolicy {
    pub writeback: bool,
    /// Record locks served by the daemon (else the kernel keeps them, as with virtiofsd).
    pub posix_locks: bool,
    pub flock_locks: bool,
    pub readdirplus: bool,
    /// FUSE_POSIX_ACL (with FUSE_DONT_MASK: creations take the request's umask): `--posix-acl`
    /// auto or always.
    pub posix_acl: bool,
    /// `--posix-acl=always`: a kernel that does not offer POSIX_ACL is refused at INIT.
    pub require_posix_acl: bool,
    /// FUSE_SECURITY_CTX (`--security-label` auto or always): creations carry the guest LSM's
    /// label for the new object, which is stored as its xattr.
    pub security_ctx: bool,
    /// `--security-label=always`: a kernel that does not offer SECURITY_CTX is refused at INIT.
    pub require_security_ctx: bool,
    pub auto_inval_data: bool,
    /// FUSE_HANDLE_KILLPRIV_V2: the daemon, not the kernel, clears set-id bits on write,
    /// truncate and chown (fs/file.rs `write`; docs/design.md, "Set-id bits").
    pub killpriv_v2: bool,
    /// FUSE_SUBMOUNTS (`--announce-submounts`): entries on another file system than their
    /// parent carry FUSE_ATTR_SUBMOUNT (a virtio-fs guest then mounts them separately).
    pub announce_submounts: bool,
    /// FUSE_DIRECT_IO_ALLOW_MMAP (`--allow-mmap`): shared mmap of files opened with
    /// FOPEN_DIRECT_IO (--cache=never, metadata).
    pub allow_mmap: bool,
    /// FUSE_PASSTHROUGH (`--fuse-passthrough` auto or always, over /dev/fuse): never together
    /// with WRITEBACK_CACHE, which the kernel refuses it beside (fs/fuse/inode.c).
    pub passthrough: bool,
    /// `--fuse-passthrough=always`: a kernel that does not offer PASSTHROUGH is refused at INIT.
    pub require_passthrough: bool,
}

/// What an INIT request comes to.
#[derive(Debug, PartialEq, Eq)]
enum Negotiation {
    /// The kernel speaks a protocol older than we decode (7.31).
    TooOld,
    /// The kernel does not offer what the operator requires (`--posix-acl=always`).
    Missing(&'static str),
    /// The kernel's major is newer: answer with ours alone, and it sends INIT again at ours.
    OurMajor(abi::InitOut),
    /// A session: the flags the kernel offered, those we agreed to, and the reply.
    Session { offered: u64, agreed: u64, reply: abi::InitOut },
}

impl InitPolicy {
    /// The flags we ask for. Not ATOMIC_O_TRUNC: with it the kernel sends O_TRUNC inside OPEN,
    /// which the daemon carries out before the kernel's own checks after the open (ETXTBSY for
    /// a file being executed) can refuse it: open(O_RDONLY|O_TRUNC) of a running binary failed
    /// with ETXTBSY yet truncated it, and the binary then died loading its pages (pjdfstest
    /// open::etxtbsy, intermittently). Without it the kernel truncates with a SETATTR after
    /// those checks, as a local file system would.
    fn wanted(&self) -> u64 {
        let optional = [
            (self.posix_locks, abi::POSIX_LOCKS),
            (self.flock_locks, abi::FLOCK_LOCKS),
            (self.readdirplus, abi::DO_READDIRPLUS | abi::READDIRPLUS_AUTO),
            (self.writeback, abi::WRITEBACK_CACHE),
            (self.auto_inval_data, abi::AUTO_INVAL_DATA),
            (self.posix_acl, abi::POSIX_ACL | abi::DONT_MASK),
            (self.security_ctx, abi::SECURITY_CTX),
            (self.killpriv_v2, abi::HANDLE_KILLPRIV_V2),
            (self.announce_submounts, abi::SUBMOUNTS),
            (self.allow_mmap, abi::DIRECT_IO_ALLOW_MMAP),
            (self.passthrough, abi::PASSTHROUGH),
        ];
        optional.iter().filter(|(on, _)| *on).fold(
            abi::ASYNC_READ | abi::BIG_WRITES | abi::PARALLEL_DIROPS | abi::MAX_PAGES | abi::ASYNC_DIO | abi::INIT_EXT,
            |want, (_, flags)| want | flags,
        )
    }

    fn negotiate(&self, arg: &abi::InitIn, flags2: u32) -> Negotiation {
        if arg.major < abi::KERNEL_VERSION
            || (arg.major == abi::KERNEL_VERSION && arg.minor < abi::MIN_KERNEL_MINOR_VERSION)
        {
            return Negotiation::TooOld;
        }
        let mut reply =
            abi::InitOut { major: abi::KERNEL_VERSION, minor: abi::KERNEL_MINOR_VERSION, ..Default::default() };
        if arg.major > abi::KERNEL_VERSION {
            return Negotiation::OurMajor(reply);
        }
        let offered = u64::from(arg.flags) | (u64::from(flags2) << 32);
        if self.require_posix_acl && offered & abi::POSIX_ACL == 0 {
            return Negotiation::Missing("POSIX_ACL (--posix-acl=always)");
        }
        if self.require_security_ctx && offered & abi::SECURITY_CTX == 0 {
            return Negotiation::Missing("SECURITY_CTX (--security-label=always)");
        }
        if self.require_passthrough && offered & abi::PASSTHROUGH == 0 {
            return Negotiation::Missing(
                "PASSTHROUGH (--fuse-passthrough=always; Linux 6.9+ with CONFIG_FUSE_PASSTHROUGH)",
            );
        }
        let mut agreed = offered & self.wanted();
        // The kernel turns passthrough off, silently, beside writeback caching: agree to it only
        // without (start-up refuses --fuse-passthrough=always with --writeback).
        if agreed & abi::WRITEBACK_CACHE != 0 {
            agreed &= !abi::PASSTHROUGH;
        }
        if agreed & abi::PASSTHROUGH != 0 {
            reply.max_stack_depth = abi::PASSTHROUGH_MAX_STACK_DEPTH;
        }
        reply.max_readahead = arg.max_readahead;
        reply.flags = agreed as u32;
        reply.flags2 = (agreed >> 32) as u32;
        reply.max_background = 64;
        reply.congestion_threshold = 48;
        reply.max_write = MAX_WRITE;
        reply.time_gran = 1;
        reply.max_pages = (MAX_WRITE / 4096) as u16;
        Negotiation::Session { offered, agreed, reply }
    }
}

impl Server {
    pub(super) fn initialized(&self) -> bool {
        self.state.region.header().init_done.load(Ordering::Acquire) != 0
    }

    /// A server made after INIT (by a worker replacing a dead one) takes the agreed settings
    /// from the region.
    pub(super) fn resume_session(&self) {
        if self.initialized() {
            self.fs.set_session(self.state.region.header().negotiated.load(Ordering::Acquire));
        }
    }

    pub(super) fn init<'o>(&self, unique: u64, arg: &abi::InitIn, flags2: u32, out: &'o mut ReplyBuf) -> &'o [u8] {
        let (offered, agreed, reply) = match self.policy.negotiate(arg, flags2) {
            Negotiation::TooOld => {
                tracing::error!(major = arg.major, minor = arg.minor, "kernel FUSE protocol too old (need 7.31+)");
                return out.finish_err(unique, libc::EPROTO);
            }
            Negotiation::Missing(what) => {
                tracing::error!("the kernel does not offer FUSE {what}: refusing the session");
                return out.finish_err(unique, libc::EPROTO);
            }
            Negotiation::OurMajor(reply) => {
                out.push_obj(&reply);
                return out.finish_ok(unique);
            }
            Negotiation::Session { offered, agreed, reply } => (offered, agreed, reply),
        };
        self.fs.set_session(agreed);
        let header = self.state.region.header();
        // A second INIT starts a new session (a virtio guest that rebooted; the kernel sends one
        // INIT per /dev/fuse connection): the old session's nodes and handles go. Crash inside:
        // the INIT is replayed and the reset, idempotent, finishes.
        if header.init_done.load(Ordering::Acquire) != 0 {
            self.fs.reset_session();
        }
        header.kernel_flags.store(offered, Ordering::Release);
        header.negotiated.store(agreed, Ordering::Release);
        // Crash after this store: a later worker serves without INIT; the INIT request itself
        // is re-sent and answered again with the same outcome.
        header.init_done.store(1, Ordering::Release);
        crate::crash_point!("init.after_record");
        tracing::info!(
            kernel = format!("{}.{}", arg.major, arg.minor),
            resend = offered & abi::HAS_RESEND != 0,
            passthrough = agreed & abi::PASSTHROUGH != 0,
            flags = format!("{agreed:#x}"),
            "FUSE session initialised"
        );
        out.push_obj(&reply);
        out.finish_ok(unique)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> InitPolicy {
        InitPolicy {
            writeback: false,
            posix_locks: false,
            flock_locks: false,
            readdirplus: true,
            posix_acl: false,
            require_posix_acl: false,
            security_ctx: false,
            require_security_ctx: false,
            auto_inval_data: true,
            killpriv_v2: true,
            announce_submounts: false,
            allow_mmap: false,
            passthrough: false,
            require_passthrough: false,
        }
    }

    #[test]
    fn test_init_passthrough_only_without_writeback_and_with_a_stack_depth() {
        let on = InitPolicy { passthrough: true, ..policy() };
        let (got, reply) = agreed(on.negotiate(&init_in(45, abi::INIT_EXT), (abi::PASSTHROUGH >> 32) as u32));
        assert_ne!(got & abi::PASSTHROUGH, 0);
        assert_eq!(reply.max_stack_depth, abi::PASSTHROUGH_MAX_STACK_DEPTH);
        let both = InitPolicy { writeback: true, ..on };
        let offered = abi::WRITEBACK_CACHE | abi::INIT_EXT;
        let (got, reply) = agreed(both.negotiate(&init_in(45, offered), (abi::PASSTHROUGH >> 32) as u32));
        assert_eq!(got & abi::PASSTHROUGH, 0, "the kernel refuses passthrough beside writeback caching");
        assert_eq!(reply.max_stack_depth, 0);
        let (got, _) = agreed(policy().negotiate(&init_in(45, abi::INIT_EXT), (abi::PASSTHROUGH >> 32) as u32));
        assert_eq!(got & abi::PASSTHROUGH, 0, "not unless wanted");
        let required = InitPolicy { require_passthrough: true, ..on };
        assert!(matches!(required.negotiate(&init_in(45, abi::INIT_EXT), 0), Negotiation::Missing(_)));
    }

    fn init_in(minor: u32, flags: u64) -> abi::InitIn {
        abi::InitIn { major: abi::KERNEL_VERSION, minor, max_readahead: 1 << 17, flags: flags as u32 }
    }

    fn agreed(n: Negotiation) -> (u64, abi::InitOut) {
        match n {
            Negotiation::Session { agreed, reply, .. } => (agreed, reply),
            other => panic!("no session: {other:?}"),
        }
    }

    #[test]
    fn test_init_refuses_a_kernel_older_than_7_31() {
        assert_eq!(policy().negotiate(&init_in(30, 0), 0), Negotiation::TooOld);
        let old_major = abi::InitIn { major: abi::KERNEL_VERSION - 1, minor: 99, ..Default::default() };
        assert_eq!(policy().negotiate(&old_major, 0), Negotiation::TooOld);
    }

    #[test]
    fn test_init_answers_a_newer_major_with_ours_alone() {
        let newer = abi::InitIn { major: abi::KERNEL_VERSION + 1, minor: 0, flags: u32::MAX, ..Default::default() };
        let Negotiation::OurMajor(reply) = policy().negotiate(&newer, u32::MAX) else { panic!("not our major") };
        assert_eq!(
            (reply.major, reply.minor, reply.flags, reply.flags2),
            (abi::KERNEL_VERSION, abi::KERNEL_MINOR_VERSION, 0, 0)
        );
    }

    #[test]
    fn test_init_agrees_only_to_what_both_sides_want() {
        let everything = u64::MAX;
        let (agreed, reply) = agreed(policy().negotiate(&init_in(45, everything), u32::MAX));
        assert_eq!(agreed & abi::ATOMIC_O_TRUNC, 0, "never ATOMIC_O_TRUNC (ETXTBSY truncation)");
        assert_eq!(agreed & (abi::POSIX_LOCKS | abi::FLOCK_LOCKS), 0, "locks stay with the kernel by default");
        assert_eq!(agreed & abi::WRITEBACK_CACHE, 0);
        assert_ne!(agreed & abi::DO_READDIRPLUS, 0);
        assert_ne!(agreed & abi::AUTO_INVAL_DATA, 0);
        assert_eq!(u64::from(reply.flags) | u64::from(reply.flags2) << 32, agreed, "the reply carries what was agreed");
        assert_eq!(reply.max_write, MAX_WRITE);
        assert_eq!(reply.max_readahead, 1 << 17, "the kernel's readahead is kept");
        // Nothing offered, nothing agreed, whatever the policy allows.
        let all = InitPolicy { writeback: true, posix_locks: true, flock_locks: true, posix_acl: true, ..policy() };
        assert_eq!(agreed_flags(all.negotiate(&init_in(45, 0), 0)), 0);
    }

    #[test]
    fn test_init_policy_turns_on_locks_and_writeback_when_offered() {
        let all = InitPolicy { writeback: true, posix_locks: true, flock_locks: true, ..policy() };
        let offered = abi::POSIX_LOCKS | abi::FLOCK_LOCKS | abi::WRITEBACK_CACHE;
        assert_eq!(agreed_flags(all.negotiate(&init_in(45, offered), 0)), offered);
        assert_eq!(agreed_flags(policy().negotiate(&init_in(45, offered), 0)), 0);
    }

    #[test]
    fn test_init_handle_killpriv_v2_by_default_never_v1() {
        let offered = abi::HANDLE_KILLPRIV | abi::HANDLE_KILLPRIV_V2;
        let agreed = agreed_flags(policy().negotiate(&init_in(45, offered), 0));
        assert_eq!(agreed, abi::HANDLE_KILLPRIV_V2, "v2 only: v1 would have us kill on every write");
        let off = InitPolicy { killpriv_v2: false, ..policy() };
        assert_eq!(agreed_flags(off.negotiate(&init_in(45, offered), 0)), 0);
        assert_eq!(agreed_flags(policy().negotiate(&init_in(45, 0), 0)), 0, "not offered, not agreed");
    }

    #[test]
    fn test_init_submounts_only_with_announce_submounts() {
        let offered = abi::SUBMOUNTS;
        assert_eq!(agreed_flags(policy().negotiate(&init_in(45, offered), 0)), 0);
        let on = InitPolicy { announce_submounts: true, ..policy() };
        assert_eq!(agreed_flags(on.negotiate(&init_in(45, offered), 0)), abi::SUBMOUNTS);
        assert_eq!(agreed_flags(on.negotiate(&init_in(45, 0), 0)), 0, "a /dev/fuse kernel does not offer it");
    }

    #[test]
    fn test_init_posix_acl_brings_dont_mask_and_always_requires_it() {
        let offered = abi::POSIX_ACL | abi::DONT_MASK;
        assert_eq!(agreed_flags(policy().negotiate(&init_in(45, offered), 0)), 0);
        let auto = InitPolicy { posix_acl: true, ..policy() };
        assert_eq!(agreed_flags(auto.negotiate(&init_in(45, offered), 0)), offered);
        assert_eq!(agreed_flags(auto.negotiate(&init_in(45, 0), 0)), 0, "auto: without it if not offered");
        let always = InitPolicy { require_posix_acl: true, ..auto };
        assert!(matches!(always.negotiate(&init_in(45, 0), 0), Negotiation::Missing(_)));
        assert_eq!(agreed_flags(always.negotiate(&init_in(45, offered), 0)), offered);
    }

    #[test]
    fn test_init_security_ctx_when_asked_and_always_requires_it() {
        let flags2 = (abi::SECURITY_CTX >> 32) as u32;
        assert_eq!(agreed_flags(policy().negotiate(&init_in(45, 0), flags2)), 0);
        let auto = InitPolicy { security_ctx: true, ..policy() };
        assert_eq!(agreed_flags(auto.negotiate(&init_in(45, 0), flags2)), abi::SECURITY_CTX);
        let always = InitPolicy { require_security_ctx: true, ..auto };
        assert!(matches!(always.negotiate(&init_in(45, 0), 0), Negotiation::Missing(_)));
    }

    #[test]
    fn test_init_allow_mmap_only_when_asked() {
        let offered = abi::DIRECT_IO_ALLOW_MMAP;
        assert_eq!(agreed_flags(policy().negotiate(&init_in(45, 0), (offered >> 32) as u32)), 0);
        let on = InitPolicy { allow_mmap: true, ..policy() };
        assert_eq!(agreed_flags(on.negotiate(&init_in(45, 0), (offered >> 32) as u32)), offered);
    }

    fn agreed_flags(n: Negotiation) -> u64 {
        agreed(n).0
    }
}
