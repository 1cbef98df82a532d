//! The command line: virtiofsd's options with the same meanings (DESIGN §9), plus `--mountpoint`
//! to serve the same engine over /dev/fuse instead of vhost-user.
//!
//! Options that the engine does not act on yet are still accepted (so libvirt and Kata command
//! lines work unchanged); `Cli::unenforced` names the ones that were given a non-default value so
//! that start-up can say so in the log rather than silently pretend.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CachePolicy {
    Auto,
    Always,
    Never,
    Metadata,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SandboxMode {
    Namespace,
    Chroot,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SeccompAction {
    None,
    Kill,
    Log,
    Trap,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InodeFileHandles {
    Never,
    Prefer,
    Mandatory,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Recovery {
    /// Supervisor + intent records: a killed worker is replaced transparently.
    On,
    /// The bare engine, for measuring what crash-proofing costs.
    Off,
}

#[derive(Debug, Parser)]
#[command(
    name = "phoenixfsd",
    version,
    about = "Crash-proof virtio-fs / FUSE passthrough daemon (virtiofsd-compatible command line)"
)]
pub struct Cli {
    /// Shared directory path.
    #[arg(long)]
    pub shared_dir: Option<PathBuf>,

    /// Serve over /dev/fuse by mounting the shared directory here (instead of vhost-user).
    #[arg(long)]
    pub mountpoint: Option<PathBuf>,

    /// Serve a demo share: make a temporary directory with a few files, mount it at a temporary
    /// mount point, print where, and serve until interrupted.
    #[arg(long, conflicts_with_all = ["shared_dir", "mountpoint", "socket_path", "fd"])]
    pub demo: bool,

    /// vhost-user socket path.
    #[arg(long)]
    pub socket_path: Option<PathBuf>,

    /// File descriptor for the listening vhost-user socket.
    #[arg(long, conflicts_with = "socket_path")]
    pub fd: Option<i32>,

    /// Name of group for the vhost-user socket.
    #[arg(long)]
    pub socket_group: Option<String>,

    /// Maximum thread pool size (0 = serve on the queue/device thread only).
    #[arg(long, default_value_t = 0)]
    pub thread_pool_size: usize,

    /// Disable/debug: accepted for compatibility.
    #[arg(long)]
    pub tag: Option<String>,

    /// Caching policy the file system should use.
    #[arg(long, value_enum, default_value_t = CachePolicy::Auto)]
    pub cache: CachePolicy,

    /// Sandbox mechanism to isolate the daemon process.
    #[arg(long, value_enum, default_value_t = SandboxMode::Namespace)]
    pub sandbox: SandboxMode,

    /// Action to take when seccomp finds a not allowed syscall: kill (the process, naming the
    /// call in the log), log (allow it; the kernel logs it), trap (SIGSYS), none (no filter).
    #[arg(long, value_enum, default_value_t = SeccompAction::Kill)]
    pub seccomp: SeccompAction,

    /// Enable support for extended attributes.
    #[arg(long)]
    pub xattr: bool,

    /// Add custom rules for translating extended attributes between host and guest.
    #[arg(long)]
    pub xattrmap: Option<String>,

    /// Enable support for POSIX ACLs (implies --xattr).
    #[arg(long)]
    pub posix_acl: bool,

    /// Keep inodes by file handle instead of an O_PATH fd each: never, prefer (where the file
    /// system makes handles, else an fd), mandatory (a lookup without a handle fails).
    #[arg(long, value_enum, default_value_t = InodeFileHandles::Prefer, num_args = 0..=1,
          default_missing_value = "prefer")]
    pub inode_file_handles: InodeFileHandles,

    /// Tell the guest which directories are mount points.
    #[arg(long)]
    pub announce_submounts: bool,

    /// Enable writeback cache.
    #[arg(long)]
    pub writeback: bool,

    /// Honor the O_DIRECT flag passed down by guest applications.
    #[arg(long)]
    pub allow_direct_io: bool,

    /// Enable FUSE_HANDLE_KILLPRIV_V2 support (the default here, unlike virtiofsd).
    #[arg(long)]
    pub killpriv_v2: bool,

    /// Disable FUSE_HANDLE_KILLPRIV_V2: the kernel then clears set-id bits with a chmod from the
    /// writer, which the host refuses to a writer who does not own the file.
    #[arg(long, conflicts_with = "killpriv_v2")]
    pub no_killpriv_v2: bool,

    /// Enable support for security label (SELinux).
    #[arg(long)]
    pub security_label: bool,

    /// Set maximum number of file descriptors (0 leaves rlimit unchanged).
    #[arg(long)]
    pub rlimit_nofile: Option<u64>,

    /// Log level.
    #[arg(long, value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,

    /// Log to syslog instead of stderr.
    #[arg(long)]
    pub syslog: bool,

    /// Modify the list of capabilities, e.g. --modcaps=+sys_admin:-chown.
    #[arg(long)]
    pub modcaps: Option<String>,

    /// Map a range of UIDs from the host into the namespace.
    #[arg(long)]
    pub translate_uid: Vec<String>,

    /// Map a range of GIDs from the host into the namespace.
    #[arg(long)]
    pub translate_gid: Vec<String>,

    /// Preserve O_NOATIME behavior, otherwise automatically clean up O_NOATIME flag.
    #[arg(long)]
    pub preserve_noatime: bool,

    /// Disable support for READDIRPLUS operations.
    #[arg(long)]
    pub no_readdirplus: bool,

    /// Print vhost-user.json backend program capabilities and exit.
    #[arg(long)]
    pub print_capabilities: bool,

    /// Compatibility: foreground (always the case).
    #[arg(short = 'f')]
    pub foreground: bool,

    /// Compatibility: debug logging (same as --log-level=debug).
    #[arg(short = 'd')]
    pub debug: bool,

    /// Legacy options: -o source=PATH,cache=...,xattr,no_xattr,allow_direct_io,...
    #[arg(short = 'o', value_delimiter = ',')]
    pub legacy_options: Vec<String>,

    /// Serve POSIX/OFD record locks in the daemon (FUSE_POSIX_LOCKS), as `-o posix_lock` does;
    /// by default, as with virtiofsd, the kernel keeps them itself (exact for one client).
    #[arg(long)]
    pub posix_lock: bool,

    /// Serve flock(2) locks in the daemon (FUSE_FLOCK_LOCKS), as `-o flock` does.
    #[arg(long)]
    pub flock: bool,

    /// Crash recovery: a supervisor keeps the connection and restarts the worker.
    #[arg(long, value_enum, default_value_t = Recovery::On)]
    pub recovery: Recovery,

    /// Capacity of the inode table in the state region (live node ids).
    #[arg(long, default_value_t = 1 << 22)]
    pub max_inodes: u32,

    /// Capacity of the handle table in the state region (open files and directories).
    #[arg(long, default_value_t = 1 << 20)]
    pub max_handles: u32,
}

/// A command line that parsed but makes no sense; reported with exit code 2 like clap's errors.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("unknown legacy option -o {0}")]
    UnknownLegacyOption(String),
    #[error("--shared-dir (or -o source=) is required")]
    MissingSharedDir,
    #[error("give exactly one of --mountpoint, --socket-path or --fd")]
    NoTransport,
    #[error("--thread-pool-size {0} is too large (at most 1024)")]
    TooManyThreads(usize),
    #[error(transparent)]
    Modcaps(#[from] crate::security::caps::Error),
}

impl Cli {
    /// Folds the legacy `-o` forms into the modern fields, then checks what clap cannot.
    pub fn normalize(mut self) -> Result<Self, CliError> {
        for opt in std::mem::take(&mut self.legacy_options) {
            let (key, value) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt.as_str(), None),
            };
            match (key, value) {
                ("source", Some(v)) => self.shared_dir = Some(v.into()),
                ("cache", Some("auto")) => self.cache = CachePolicy::Auto,
                ("cache", Some("always")) => self.cache = CachePolicy::Always,
                ("cache", Some("none" | "never")) => self.cache = CachePolicy::Never,
                ("xattr", None) => self.xattr = true,
                ("no_xattr", None) => self.xattr = false,
                ("allow_direct_io", None) => self.allow_direct_io = true,
                ("no_allow_direct_io", None) => self.allow_direct_io = false,
                ("writeback", None) => self.writeback = true,
                ("no_writeback", None) => self.writeback = false,
                ("posix_acl", None) => self.posix_acl = true,
                ("no_posix_acl", None) => self.posix_acl = false,
                ("killpriv_v2", None) => (self.killpriv_v2, self.no_killpriv_v2) = (true, false),
                ("no_killpriv_v2", None) => (self.killpriv_v2, self.no_killpriv_v2) = (false, true),
                ("announce_submounts", None) => self.announce_submounts = true,
                ("readdirplus", None) => self.no_readdirplus = false,
                ("no_readdirplus", None) => self.no_readdirplus = true,
                ("posix_lock", None) => self.posix_lock = true,
                ("no_posix_lock", None) => self.posix_lock = false,
                ("flock", None) => self.flock = true,
                ("no_flock", None) => self.flock = false,
                ("timestamp" | "no_timestamp", None) => {}
                ("log_level", Some(v)) => {
                    self.log_level =
                        LogLevel::from_str(v, true).map_err(|_| CliError::UnknownLegacyOption(opt.clone()))?
                }
                _ => return Err(CliError::UnknownLegacyOption(opt.clone())),
            }
        }
        if self.debug {
            self.log_level = LogLevel::Debug;
        }
        if self.posix_acl {
            self.xattr = true;
        }
        if self.thread_pool_size > 1024 {
            return Err(CliError::TooManyThreads(self.thread_pool_size));
        }
        self.worker_caps()?;
        if self.print_capabilities || self.demo {
            return Ok(self);
        }
        if self.shared_dir.is_none() {
            return Err(CliError::MissingSharedDir);
        }
        let transports = [self.mountpoint.is_some(), self.socket_path.is_some(), self.fd.is_some()];
        if transports.iter().filter(|t| **t).count() != 1 {
            return Err(CliError::NoTransport);
        }
        Ok(self)
    }

    /// A worker's capabilities: virtiofsd's default set changed by `--modcaps`.
    pub fn worker_caps(&self) -> Result<crate::security::caps::Caps, CliError> {
        let base = crate::security::caps::WORKER;
        Ok(match &self.modcaps {
            Some(m) => crate::security::caps::modify(base, m)?,
            None => base,
        })
    }

    /// Options given a non-default value that this build accepts but does not enforce yet.
    pub fn unenforced(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.xattrmap.is_some() {
            v.push("--xattrmap");
        }
        if !self.translate_uid.is_empty() || !self.translate_gid.is_empty() {
            v.push("--translate-uid/--translate-gid");
        }
        if self.security_label {
            v.push("--security-label");
        }
        if self.syslog {
            v.push("--syslog (logs go to stderr)");
        }
        if self.posix_acl {
            v.push("--posix-acl (ACL xattrs pass through as xattrs; FUSE_POSIX_ACL is not negotiated)");
        }
        v
    }
}
