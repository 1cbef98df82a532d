//! The command line: virtiofsd's options with the same meanings (DESIGN §9), plus `--mountpoint`
//! to serve the same engine over /dev/fuse instead of vhost-user.
//!
//! An option we accept is an option we honour: what this build cannot act on is refused at
//! start-up with a message naming it (exit code 2), never accepted and ignored. The legacy `-o`
//! forms libvirt and Kata pass are folded into the modern fields. docs/compat.md lists every
//! virtiofsd option with its status here and the test that shows it. (`Cli::unenforced` still
//! names `--inode-file-handles`, which other work is taking on.)

use std::path::PathBuf;

use clap::{Parser, ValueEnum, ValueHint};

pub use crate::fs::idmap::{IdMap, IdMapError};
pub use crate::fs::xattrmap::{XattrMap, XattrMapError};
pub use crate::security::userns::{IdMaps, Range};

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

/// `--migration-mode` (virtiofsd's names and default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MigrationMode {
    FindPaths,
    FileHandles,
}

/// `--migration-on-error` (virtiofsd's names and default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MigrationOnError {
    Abort,
    GuestError,
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

/// virtiofsd's three-way switch for a FUSE capability the guest may or may not support.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Negotiation {
    Never,
    Auto,
    Always,
}

impl Negotiation {
    fn name(self) -> &'static str {
        match self {
            Negotiation::Never => "never",
            Negotiation::Auto => "auto",
            Negotiation::Always => "always",
        }
    }
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
    about = "Crash-proof virtio-fs / FUSE passthrough daemon (virtiofsd-compatible command line)",
    long_about = "Crash-proof virtio-fs / FUSE passthrough daemon.\n\nServes --shared-dir to a VMM over a \
                  vhost-user socket (--socket-path or --fd), as virtiofsd does, or to the host over /dev/fuse \
                  (--mountpoint). A supervisor process keeps the connection and replaces a worker that dies, \
                  and requests in flight are replayed exactly once. The command line is virtiofsd's; an option \
                  this build cannot honour is refused at start-up with a message naming it (exit code 2).",
    args_override_self = true
)]
pub struct Cli {
    /// Shared directory path.
    #[arg(long, value_hint = ValueHint::DirPath)]
    pub shared_dir: Option<PathBuf>,

    /// Serve over /dev/fuse by mounting the shared directory here (instead of vhost-user).
    #[arg(long, value_hint = ValueHint::DirPath)]
    pub mountpoint: Option<PathBuf>,

    /// Serve a demo share: make a temporary directory with a few files, mount it at a temporary
    /// mount point, print where, and serve until interrupted.
    #[arg(long, conflicts_with_all = ["shared_dir", "mountpoint", "socket_path", "socket", "fd"])]
    pub demo: bool,

    /// The tag that the virtio device advertises (1 to 36 bytes): offered in the device's config
    /// space with the vhost-user CONFIG protocol feature. A frontend may ignore it (QEMU keeps
    /// the tag of its own vhost-user-fs-pci device).
    #[arg(long, value_parser = parse_tag)]
    pub tag: Option<String>,

    /// vhost-user socket path [deprecated: use --socket-path].
    #[arg(long, conflicts_with = "socket_path", value_hint = ValueHint::FilePath)]
    pub socket: Option<PathBuf>,

    /// vhost-user socket path.
    #[arg(long, value_hint = ValueHint::FilePath)]
    pub socket_path: Option<PathBuf>,

    /// Name of group for the vhost-user socket.
    #[arg(long, conflicts_with = "fd")]
    pub socket_group: Option<String>,

    /// File descriptor for the listening (not yet connected) vhost-user socket.
    #[arg(long, conflicts_with_all = ["socket_path", "socket"])]
    pub fd: Option<i32>,

    /// Serving threads (FUSE), or request queues and requests served at once per queue
    /// (vhost-user); 0 = 2 x CPUs, at least 4. Unlike virtiofsd, 0 does not mean "one request at
    /// a time": 1 does.
    #[arg(long, default_value_t = 0)]
    pub thread_pool_size: usize,

    /// Enable support for extended attributes.
    #[arg(long)]
    pub xattr: bool,

    /// Enable support for POSIX ACLs (implies --xattr): never, auto (if the kernel offers
    /// FUSE_POSIX_ACL) or always (refuse a kernel that does not); alone it means always.
    #[arg(long, value_enum, require_equals = true, num_args = 0..=1, default_value_t = Negotiation::Never,
          default_missing_value = "always", value_name = "never|auto|always")]
    pub posix_acl: Negotiation,

    /// Add custom rules for translating extended attributes between host and guest
    /// (e.g. :map::user.virtiofs.:); implies --xattr. See virtiofsd's doc/xattr-mapping.md.
    #[arg(long, value_parser = parse_xattrmap)]
    pub xattrmap: Option<XattrMap>,

    /// Sandbox mechanism to isolate the daemon process.
    #[arg(long, value_enum, default_value_t = SandboxMode::Namespace)]
    pub sandbox: SandboxMode,

    /// Prevent the guest from making modifications to the file system: every modifying request
    /// and every open for writing is answered EROFS.
    #[arg(long)]
    pub readonly: bool,

    /// Action to take when seccomp finds a not allowed syscall: kill (the process, naming the
    /// call in the log), log (allow it; the kernel logs it), trap (SIGSYS), none (no filter).
    #[arg(long, value_enum, default_value_t = SeccompAction::Kill)]
    pub seccomp: SeccompAction,

    /// Tell the guest which directories are mount points [default].
    #[arg(long, overrides_with = "no_announce_submounts")]
    pub announce_submounts: bool,

    /// Do not tell the guest which directories are mount points.
    #[arg(long, overrides_with = "announce_submounts")]
    pub no_announce_submounts: bool,

    /// Keep inodes by file handle instead of an O_PATH fd each: never, prefer (where the file
    /// system makes handles, else an fd), mandatory (a lookup without a handle fails).
    #[arg(long, value_enum, default_value_t = InodeFileHandles::Prefer, num_args = 0..=1,
          default_missing_value = "prefer")]
    pub inode_file_handles: InodeFileHandles,

    /// Caching policy the file system should use.
    #[arg(long, value_enum, default_value_t = CachePolicy::Auto)]
    pub cache: CachePolicy,

    /// With --cache=never or metadata, let the guest mmap(MAP_SHARED) files all the same
    /// (FUSE_DIRECT_IO_ALLOW_MMAP). Only when the guest has the directory to itself.
    #[arg(long)]
    pub allow_mmap: bool,

    /// Disable support for READDIRPLUS operations.
    #[arg(long)]
    pub no_readdirplus: bool,

    /// Enable writeback cache.
    #[arg(long)]
    pub writeback: bool,

    /// FUSE passthrough on a /dev/fuse mount (Linux 6.9+): the kernel reads, writes and maps
    /// open regular files on the host itself, without a round trip to the daemon. auto (when
    /// the kernel offers it and no other option rules it out: --writeback, --cache=never or
    /// metadata), never, or always (refuse such options, and a kernel without it, at INIT).
    #[arg(long, value_enum, require_equals = true, default_value_t = Negotiation::Auto,
          value_name = "auto|never|always")]
    pub fuse_passthrough: Negotiation,

    /// /dev/fuse: after answering a request, the first serving thread keeps looking for the
    /// next one this many microseconds (yielding the CPU to anything else runnable) before it
    /// sleeps in the kernel, while its looks find requests; 0 = never. A caller that issues one
    /// request after another then finds a thread awake instead of waking one. [default: 50]
    #[arg(long, value_name = "MICROSECONDS")]
    pub fuse_spin_us: Option<u32>,

    /// Honor the O_DIRECT flag passed down by guest applications.
    #[arg(long)]
    pub allow_direct_io: bool,

    /// Print vhost-user.json backend program capabilities and exit.
    #[arg(long)]
    pub print_capabilities: bool,

    /// Modify the list of capabilities, e.g. --modcaps=+sys_admin:-chown.
    #[arg(long)]
    pub modcaps: Option<String>,

    /// Log level (RUST_LOG, when set, takes precedence).
    #[arg(long, value_enum, ignore_case = true, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,

    /// Log to syslog (the /dev/log socket) instead of stderr; if there is no syslog socket, say
    /// so on stderr and log there.
    #[arg(long)]
    pub syslog: bool,

    /// Set maximum number of file descriptors (0 leaves rlimit unchanged).
    #[arg(long)]
    pub rlimit_nofile: Option<u64>,

    /// Options in the legacy form: -o source=PATH,cache=auto,xattr,... [deprecated]
    #[arg(short = 'o', value_name = "COMPAT_OPTIONS")]
    pub legacy_options: Vec<String>,

    /// Set log level to "debug" [deprecated: use --log-level].
    #[arg(short = 'd')]
    pub debug: bool,

    /// Disable FUSE_HANDLE_KILLPRIV_V2: the kernel then clears set-id bits with a chmod from the
    /// writer, which the host refuses to a writer who does not own the file.
    #[arg(long)]
    pub no_killpriv_v2: bool,

    /// Enable FUSE_HANDLE_KILLPRIV_V2 support (the default here, unlike virtiofsd).
    #[arg(long, overrides_with = "no_killpriv_v2")]
    pub killpriv_v2: bool,

    /// Compatibility option that has no effect: the daemon always runs in the foreground.
    #[arg(short = 'f')]
    pub foreground: bool,

    /// Enable security label support (FUSE_SECURITY_CTX; implies --xattr): a new file gets the
    /// label the guest's LSM chose as its xattr (through --xattrmap). never, auto (if the kernel
    /// offers it) or always (refuse a kernel that does not); alone it means always.
    #[arg(long, value_enum, require_equals = true, num_args = 0..=1, default_value_t = Negotiation::Never,
          default_missing_value = "always", value_name = "never|auto|always")]
    pub security_label: Negotiation,

    /// Unprivileged --sandbox namespace: map a range of host UIDs into the daemon's user
    /// namespace, :namespace_uid:host_uid:count: (e.g. :0:100000:65536:; through newuidmap and
    /// /etc/subuid unless it is one range of one id, your own). Repeatable. Without it, your own
    /// UID is namespace UID 0. The kernel maps, not the daemon (compare --translate-uid).
    #[arg(long, value_name = ":namespace_uid:host_uid:count:")]
    pub uid_map: Vec<Range>,

    /// As --uid-map, for GIDs (newgidmap, /etc/subgid).
    #[arg(long, value_name = ":namespace_gid:host_gid:count:")]
    pub gid_map: Vec<Range>,

    /// Translate UIDs between guest and host, '<type>:<source base>:<target base>:<count>' with
    /// type guest, host, squash-guest, squash-host, map, or 'forbid-guest:<base>:<count>'
    /// (virtiofsd's syntax and meaning). Give it once per range.
    #[arg(long)]
    pub translate_uid: Vec<String>,

    /// Same as --translate-uid, for GIDs.
    #[arg(long)]
    pub translate_gid: Vec<String>,

    /// Keep the guest's O_NOATIME on host opens (by default it is dropped, so that an open by a
    /// caller who does not own the file does not fail with EPERM).
    #[arg(long)]
    pub preserve_noatime: bool,

    /// VM live migration (vhost-user DEVICE_STATE): how the source tells the destination where
    /// each object the guest holds is. find-paths: a path beneath the share (any destination
    /// with the same tree); file-handles: its file handle (the same file system on both sides;
    /// also carries files unlinked while open).
    #[arg(long, value_enum, value_name = "find-paths|file-handles")]
    pub migration_mode: Option<MigrationMode>,

    /// VM live migration: what an object that cannot be found on either side does. abort: the
    /// migration fails (the source VM runs on); guest-error: it goes on, and the guest gets EIO
    /// when it uses that object.
    #[arg(long, value_enum, value_name = "abort|guest-error")]
    pub migration_on_error: Option<MigrationOnError>,

    /// VM live migration, destination, find-paths: check that each object found by its path has
    /// the file handle the source had (same file system on both sides), else it is an error.
    #[arg(long)]
    pub migration_verify_handles: bool,

    /// VM live migration, source, find-paths: resolve each path again from the share's root
    /// before sending it, and check it still leads to the same object.
    #[arg(long)]
    pub migration_confirm_paths: bool,

    /// Serve POSIX/OFD record locks in the daemon (FUSE_POSIX_LOCKS), as `-o posix_lock` does;
    /// by default, as with virtiofsd, the kernel keeps them itself (exact for one client).
    #[arg(long)]
    pub posix_lock: bool,

    /// Serve flock(2) locks in the daemon (FUSE_FLOCK_LOCKS), as `-o flock` does.
    #[arg(long)]
    pub flock: bool,

    /// The control socket for `phoenixfsd ctl` (status, metrics, restart-worker), mode 0600.
    /// Default: <socket-path>.ctl, or /run/phoenixfsd/<mount point, / as ->.ctl over /dev/fuse;
    /// none with --fd alone.
    #[arg(long)]
    pub control_socket: Option<PathBuf>,

    /// Crash recovery: a supervisor keeps the connection and restarts the worker.
    #[arg(long, value_enum, default_value_t = Recovery::On)]
    pub recovery: Recovery,

    /// Capacity of the inode table in the state region (live node ids).
    #[arg(long, default_value_t = 1 << 22)]
    pub max_inodes: u32,

    /// Capacity of the handle table in the state region (open files and directories).
    #[arg(long, default_value_t = 1 << 20)]
    pub max_handles: u32,

    /// Print the manual page (roff) generated from these options and exit.
    #[arg(long)]
    pub print_manpage: bool,

    /// Print a completion script for this shell and exit.
    #[arg(long, value_name = "SHELL")]
    pub print_completions: Option<clap_complete::Shell>,
}

/// A command line that parsed but makes no sense, or asks for what this build does not do;
/// reported with exit code 2 like clap's errors.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("unknown legacy option -o {0}")]
    UnknownLegacyOption(String),
    #[error("invalid value in legacy option -o {0}")]
    BadLegacyValue(String),
    #[error("--shared-dir (or -o source=) is required")]
    MissingSharedDir,
    #[error("give exactly one of --mountpoint, --socket-path or --fd")]
    NoTransport,
    #[error("PHOENIXFSD_FUSE_PASSTHROUGH={0}: expected auto, never or always")]
    BadPassthroughEnv(String),
    #[error("--thread-pool-size {0} is too large (at most 1024)")]
    TooManyThreads(usize),
    #[error("--fuse-spin-us {0} is too long (at most {MAX_FUSE_SPIN_US}: past that, sleeping costs less than looking)")]
    SpinTooLong(u32),
    #[error("{option} is not supported by phoenixfsd: {why}")]
    NotHonoured { option: String, why: &'static str },
    #[error("{0}: {1}")]
    Translate(&'static str, IdMapError),
    #[error("--xattrmap: {0}")]
    Xattrmap(#[from] XattrMapError),
    #[error(transparent)]
    Modcaps(#[from] crate::security::caps::Error),
    #[error("{option}: {why}")]
    Unprivileged { option: String, why: &'static str },
}

/// The longest `--fuse-spin-us`.
pub const MAX_FUSE_SPIN_US: u32 = 1000;
/// `--fuse-spin-us` when not given.
const DEFAULT_FUSE_SPIN_US: u32 = 50;

/// Why each refused option is refused (docs/compat.md has the whole table).
const NO_MIGRATION: &str = "VM live migration needs --recovery on (a worker imports the incoming state and \
                            is replaced, so that the next one serves it; docs/design.md \"Live migration\")";
const NO_MIGRATION_FUSE: &str = "VM live migration is a vhost-user feature (DEVICE_STATE); a /dev/fuse mount has none";
const MAPS_NEED_NAMESPACE: &str = "it maps ids through the user namespace that an unprivileged --sandbox \
                                   namespace creates (virtiofsd refuses it too); use --sandbox namespace, or \
                                   --translate-uid/gid to translate ids in the daemon";
const MAPS_WHEN_PRIVILEGED: &str = "the maps are for an unprivileged daemon, whose --sandbox namespace is built \
                                    in a new user namespace; with CAP_SYS_ADMIN (as root) none is made (virtiofsd \
                                    refuses it too): drop it, or use --translate-uid/gid to translate ids";
const MAPS_WITHOUT_ROOT: &str = "no range maps namespace id 0: the daemon acts as root inside its user namespace \
                                 (requests switch from there to each caller's ids), so map 0 to a host id, e.g. \
                                 :0:<host id>:1: (virtiofsd would run with a warning instead)";
const FUSE_UNPRIVILEGED: &str = "mounting a FUSE file system on the host needs CAP_SYS_ADMIN (run as root); an \
                                 unprivileged daemon serves a VM over vhost-user (--socket-path or --fd), as \
                                 virtiofsd does";
const HANDLES_UNPRIVILEGED: &str = "open_by_handle_at needs CAP_DAC_READ_SEARCH in the host's user namespace, \
                                    which an unprivileged daemon does not have; use --inode-file-handles=prefer \
                                    (an O_PATH fd per inode instead) or never";
const NO_SPIN_VHOST: &str = "it tunes how /dev/fuse's serving threads wait for a request; a vhost-user \
                             queue's threads wait for the driver's kick";
const NO_PASSTHROUGH_VHOST: &str = "FUSE passthrough hands the kernel a host file; a virtio-fs guest's kernel \
                                    cannot use one (give --mountpoint)";
const NO_PASSTHROUGH_WRITEBACK: &str = "the kernel turns passthrough off beside writeback caching (fs/fuse/inode.c)";
const NO_PASSTHROUGH_DIRECT: &str = "with --cache=never or metadata every open is direct I/O, which passthrough \
                                     would not serve (reads and writes would still come to the daemon)";
const NO_ACL_TRANSLATE: &str = "an ACL names host ids the translation would not map (virtiofsd refuses this \
                                too)";

/// Splits one `-o` argument at commas; a doubled comma is a comma inside a value (libvirt
/// escapes commas in a source path that way; virtiofsd would split the path there).
fn split_legacy(arg: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = arg.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ',' if chars.peek() == Some(&',') => {
                chars.next();
                out.last_mut().expect("never empty").push(',');
            }
            ',' => out.push(String::new()),
            c => out.last_mut().expect("never empty").push(c),
        }
    }
    out
}

impl Cli {
    /// Folds the legacy `-o` forms into the modern fields, refuses what this build cannot
    /// honour, then checks what clap cannot.
    pub fn normalize(mut self) -> Result<Self, CliError> {
        for arg in std::mem::take(&mut self.legacy_options) {
            for opt in split_legacy(&arg) {
                self.fold_legacy(&opt)?;
            }
        }
        if let Some(socket) = self.socket.take() {
            self.socket_path = Some(socket);
        }
        if self.debug {
            self.log_level = LogLevel::Debug;
        }
        if self.posix_acl != Negotiation::Never || self.security_label != Negotiation::Never || self.xattrmap.is_some()
        {
            self.xattr = true;
        }
        // The environment overrides --fuse-passthrough: for a daemon a live upgrade may hand to a
        // build that has no such option (a rollback passes the same command line, which that
        // build would refuse), e.g. the previous layout's (docs/design.md "FUSE passthrough").
        if let Ok(v) = std::env::var("PHOENIXFSD_FUSE_PASSTHROUGH") {
            self.fuse_passthrough = match v.as_str() {
                "auto" => Negotiation::Auto,
                "never" => Negotiation::Never,
                "always" => Negotiation::Always,
                _ => return Err(CliError::BadPassthroughEnv(v)),
            };
        }
        self.refuse_unhonoured()?;
        self.id_maps()?;
        if let Some(us) = self.fuse_spin_us.filter(|&us| us > MAX_FUSE_SPIN_US) {
            return Err(CliError::SpinTooLong(us));
        }
        if self.thread_pool_size > 1024 {
            return Err(CliError::TooManyThreads(self.thread_pool_size));
        }
        self.worker_caps()?;
        if self.print_capabilities || self.demo || self.print_manpage || self.print_completions.is_some() {
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

    /// One legacy option: virtiofsd 1.14's compat list (its `parse_compat`), plus `flock` and
    /// `posix_lock` (served by this daemon; older libvirt passes them) and the C virtiofsd's
    /// `log_level=`.
    fn fold_legacy(&mut self, opt: &str) -> Result<(), CliError> {
        let bad_value = || CliError::BadLegacyValue(opt.to_string());
        match opt.split_once('=') {
            Some(("source", v)) => self.shared_dir = Some(v.into()),
            Some(("cache", v)) => {
                self.cache = match v {
                    "auto" => CachePolicy::Auto,
                    "always" => CachePolicy::Always,
                    "none" => CachePolicy::Never,
                    "metadata" => CachePolicy::Metadata,
                    _ => return Err(bad_value()),
                }
            }
            // virtiofsd's values; the C virtiofsd's `log_level=` also takes --log-level's names.
            Some((key @ ("loglevel" | "log_level"), v)) => {
                self.log_level = match v {
                    "debug" => LogLevel::Debug,
                    "info" => LogLevel::Info,
                    "warn" => LogLevel::Warn,
                    "err" => LogLevel::Error,
                    _ if key == "log_level" => LogLevel::from_str(v, true).map_err(|_| bad_value())?,
                    _ => return Err(bad_value()),
                }
            }
            Some(("sandbox", v)) => {
                self.sandbox = match v {
                    "namespace" => SandboxMode::Namespace,
                    "chroot" => SandboxMode::Chroot,
                    _ => return Err(bad_value()),
                }
            }
            Some(("modcaps", v)) => self.modcaps = Some(v.to_string()),
            Some(("xattrmap", v)) => self.xattrmap = Some(v.parse()?),
            Some(_) => return Err(CliError::UnknownLegacyOption(opt.to_string())),
            None => match opt {
                "xattr" => self.xattr = true,
                "no_xattr" => self.xattr = false,
                "readdirplus" => self.no_readdirplus = false,
                "no_readdirplus" => self.no_readdirplus = true,
                "writeback" => self.writeback = true,
                "no_writeback" => self.writeback = false,
                "allow_direct_io" => self.allow_direct_io = true,
                "no_allow_direct_io" => self.allow_direct_io = false,
                "announce_submounts" => self.announce_submounts = true,
                "killpriv_v2" => (self.killpriv_v2, self.no_killpriv_v2) = (true, false),
                "no_killpriv_v2" => (self.killpriv_v2, self.no_killpriv_v2) = (false, true),
                "posix_acl" => self.posix_acl = Negotiation::Always,
                "no_posix_acl" => self.posix_acl = Negotiation::Never,
                "security_label" => self.security_label = Negotiation::Always,
                "no_security_label" => self.security_label = Negotiation::Never,
                "posix_lock" => self.posix_lock = true,
                "no_posix_lock" => self.posix_lock = false,
                "flock" => self.flock = true,
                "no_flock" => self.flock = false,
                _ => return Err(CliError::UnknownLegacyOption(opt.to_string())),
            },
        }
        Ok(())
    }

    /// "An option we accept is an option we honour": every virtiofsd option this build does not
    /// act on is refused here, by name (docs/compat.md).
    fn refuse_unhonoured(&self) -> Result<(), CliError> {
        let refuse = |option: &str, why| Err(CliError::NotHonoured { option: option.to_string(), why });
        let migration = [
            ("--migration-mode", self.migration_mode.is_some()),
            ("--migration-on-error", self.migration_on_error.is_some()),
            ("--migration-verify-handles", self.migration_verify_handles),
            ("--migration-confirm-paths", self.migration_confirm_paths),
        ];
        if self.recovery == Recovery::Off
            && let Some((name, _)) = migration.iter().find(|(_, given)| *given)
        {
            return refuse(&format!("{name} with --recovery off"), NO_MIGRATION);
        }
        if self.serves_fuse()
            && let Some((name, _)) = migration.iter().find(|(_, given)| *given)
        {
            return refuse(&format!("{name} with {}", self.fuse_option()), NO_MIGRATION_FUSE);
        }
        if self.fuse_spin_us.is_some() && !self.serves_fuse() {
            return refuse("--fuse-spin-us without --mountpoint", NO_SPIN_VHOST);
        }
        if self.fuse_passthrough == Negotiation::Always {
            if !self.serves_fuse() {
                return refuse("--fuse-passthrough=always without --mountpoint", NO_PASSTHROUGH_VHOST);
            }
            if self.writeback {
                return refuse("--fuse-passthrough=always with --writeback", NO_PASSTHROUGH_WRITEBACK);
            }
            if matches!(self.cache, CachePolicy::Never | CachePolicy::Metadata) {
                return refuse("--fuse-passthrough=always with --cache=never or metadata", NO_PASSTHROUGH_DIRECT);
            }
        }
        for (name, given) in [("--uid-map", !self.uid_map.is_empty()), ("--gid-map", !self.gid_map.is_empty())] {
            if given && self.sandbox != SandboxMode::Namespace {
                let mode = format!("{:?}", self.sandbox).to_lowercase();
                return refuse(&format!("{name} with --sandbox {mode}"), MAPS_NEED_NAMESPACE);
            }
        }
        if self.posix_acl != Negotiation::Never && !(self.translate_uid.is_empty() && self.translate_gid.is_empty()) {
            return refuse(
                &format!("--posix-acl={} with --translate-uid/gid", self.posix_acl.name()),
                NO_ACL_TRANSLATE,
            );
        }
        Ok(())
    }

    /// How long the first /dev/fuse serving thread looks for its next request before sleeping.
    pub fn fuse_spin(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.fuse_spin_us.unwrap_or(DEFAULT_FUSE_SPIN_US).into())
    }

    /// Whether the daemon serves /dev/fuse: `--mountpoint`, or `--demo`, which makes its mount
    /// point at start (so `mountpoint` is still None here).
    pub fn serves_fuse(&self) -> bool {
        self.mountpoint.is_some() || self.demo
    }

    /// The option that made the daemon serve /dev/fuse, for refusals that name it.
    fn fuse_option(&self) -> &'static str {
        if self.demo { "--demo" } else { "--mountpoint" }
    }

    /// Whether FUSE passthrough may be negotiated: over /dev/fuse, not turned off, and no
    /// option that rules it out (`--fuse-passthrough=auto` then simply goes without).
    pub fn passthrough_wanted(&self) -> bool {
        self.serves_fuse()
            && self.fuse_passthrough != Negotiation::Never
            && !self.writeback
            && !matches!(self.cache, CachePolicy::Never | CachePolicy::Metadata)
    }

    /// What a fresh start (not a live upgrade's new binary, which runs inside already) can do
    /// with the capabilities `caps` it has: without CAP_SYS_ADMIN `--sandbox namespace` is
    /// built in a user namespace and /dev/fuse cannot be mounted; id maps are for that case
    /// only, and must map namespace id 0; without CAP_DAC_READ_SEARCH there are no file
    /// handles to insist on.
    pub fn check_privilege(&self, caps: crate::security::caps::Caps) -> Result<(), CliError> {
        use crate::security::caps::{CAP_DAC_READ_SEARCH, CAP_SYS_ADMIN};
        let refuse = |option: &str, why| Err(CliError::Unprivileged { option: option.to_string(), why });
        let privileged = caps.has(CAP_SYS_ADMIN);
        for (name, ranges) in [("--uid-map", &self.uid_map), ("--gid-map", &self.gid_map)] {
            if ranges.is_empty() {
                continue;
            }
            if privileged {
                return refuse(name, MAPS_WHEN_PRIVILEGED);
            }
            if !ranges.iter().any(|r| r.inside == 0) {
                return refuse(name, MAPS_WITHOUT_ROOT);
            }
        }
        if !privileged && self.serves_fuse() {
            return refuse(self.fuse_option(), FUSE_UNPRIVILEGED);
        }
        let nested = !privileged && self.sandbox == SandboxMode::Namespace;
        if self.inode_file_handles == InodeFileHandles::Mandatory && (nested || !caps.has(CAP_DAC_READ_SEARCH)) {
            return refuse("--inode-file-handles=mandatory", HANDLES_UNPRIVILEGED);
        }
        Ok(())
    }

    /// The user namespace `--sandbox namespace` is built in when the daemon runs without
    /// CAP_SYS_ADMIN (`privileged` false), with its maps; None where the sandbox needs none.
    pub fn user_namespace(&self, privileged: bool) -> Option<IdMaps> {
        (self.sandbox == SandboxMode::Namespace && !privileged)
            .then(|| IdMaps { uids: self.uid_map.clone(), gids: self.gid_map.clone() })
    }

    /// `--translate-uid` and `--translate-gid` as maps (identity when not given).
    pub fn id_maps(&self) -> Result<(IdMap, IdMap), CliError> {
        let uids = IdMap::parse(&self.translate_uid).map_err(|e| CliError::Translate("--translate-uid", e))?;
        let gids = IdMap::parse(&self.translate_gid).map_err(|e| CliError::Translate("--translate-gid", e))?;
        Ok((uids, gids))
    }

    /// A worker's capabilities: virtiofsd's default set changed by `--modcaps`.
    pub fn worker_caps(&self) -> Result<crate::security::caps::Caps, CliError> {
        let base = crate::security::caps::WORKER;
        Ok(match &self.modcaps {
            Some(m) => crate::security::caps::modify(base, m)?,
            None => base,
        })
    }

    /// FUSE_HANDLE_KILLPRIV_V2 is on unless turned off, or unless `--xattrmap` renames
    /// security.capability: then the host kernel no longer sees the guest's capability under
    /// its own name and cannot clear it on a write, so the guest kernel must (without v2 it
    /// removes the capability itself, through the map, with a REMOVEXATTR).
    pub fn killpriv_v2(&self) -> bool {
        !self.no_killpriv_v2 && self.xattrmap.as_ref().is_none_or(|m| !m.renames_security_capability())
    }

    /// Options given a non-default value that this build accepts but does not enforce yet.
    pub fn unenforced(&self) -> Vec<&'static str> {
        // None left: --inode-file-handles, the last one, is honoured (issue 13).
        Vec::new()
    }
}

fn parse_tag(s: &str) -> Result<String, String> {
    let max = crate::transport::vhost_user::MAX_TAG_LEN;
    if s.is_empty() || s.len() > max {
        return Err(format!("a tag has 1 to {max} bytes"));
    }
    Ok(s.to_string())
}

fn parse_xattrmap(s: &str) -> Result<XattrMap, XattrMapError> {
    s.parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, String> {
        let cli = Cli::try_parse_from(std::iter::once("phoenixfsd").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        cli.normalize().map_err(|e| e.to_string())
    }

    #[test]
    fn test_split_legacy_keeps_escaped_commas() {
        assert_eq!(split_legacy("source=/a,,b,cache=auto"), ["source=/a,b", "cache=auto"]);
        assert_eq!(split_legacy("xattr"), ["xattr"]);
    }

    #[test]
    fn test_legacy_forms_fold_into_the_modern_fields() {
        let c = parse(&["-o", "source=/srv,cache=none,xattr,no_posix_lock,flock", "--fd=3"]).unwrap();
        assert_eq!(c.shared_dir.as_deref(), Some(std::path::Path::new("/srv")));
        assert_eq!(c.cache, CachePolicy::Never);
        assert!(c.xattr && c.flock && !c.posix_lock);
        let c = parse(&["-o", "source=/srv", "-o", "loglevel=err", "-o", "xattrmap=:map::user.v.:", "--fd=3"]).unwrap();
        assert_eq!(c.log_level, LogLevel::Error);
        assert!(c.xattr, "--xattrmap implies --xattr");
        let c = parse(&["-o", "source=/srv,log_level=error", "--fd=3"]).unwrap();
        assert_eq!(c.log_level, LogLevel::Error, "log_level= also takes --log-level's names");
        assert!(parse(&["-o", "source=/srv,loglevel=error", "--fd=3"]).is_err(), "loglevel= is virtiofsd's: err");
    }

    #[test]
    fn test_unhonoured_options_are_refused_by_name() {
        for (args, named) in [
            (&["--migration-mode=find-paths", "--recovery=off"][..], "--migration-mode with --recovery off"),
            (&["--migration-confirm-paths", "--recovery=off"], "--migration-confirm-paths with --recovery off"),
            (&["--uid-map=:0:1000:1:", "--sandbox=chroot"], "--uid-map with --sandbox chroot"),
            (&["--gid-map=:0:1000:1:", "--sandbox=none"], "--gid-map with --sandbox none"),
            (&["--gid-map=:0:1000:1:", "-o", "sandbox=chroot"], "--gid-map with --sandbox chroot"),
            (&["--posix-acl", "--translate-uid=map:0:1:1"], "--posix-acl=always with --translate-uid/gid"),
            (&["-o", "posix_acl", "--translate-gid=map:0:1:1"], "--posix-acl=always with"),
        ] {
            let mut all = vec!["--shared-dir=/tmp", "--fd=3"];
            all.extend_from_slice(args);
            let e = parse(&all).unwrap_err();
            assert!(e.contains(named) && e.contains("not supported"), "{args:?}: {e}");
        }
        parse(&["--shared-dir=/tmp", "--fd=3", "--posix-acl=never", "-o", "no_security_label"]).unwrap();
        let acl = parse(&["--shared-dir=/tmp", "--fd=3", "--posix-acl"]).unwrap();
        assert!(acl.posix_acl == Negotiation::Always && acl.xattr, "--posix-acl alone is always, and implies --xattr");
        let e = parse(&["--shared-dir=/tmp", "--fd=3", "--translate-gid=map:0:1000"]).unwrap_err();
        assert!(e.contains("--translate-gid") && e.contains("3 numbers"), "{e}");
    }

    #[test]
    fn test_cli_id_maps_are_checked_against_the_privilege() {
        use crate::security::caps::{Caps, WORKER};
        let root = WORKER.union(crate::security::caps::SUPERVISOR);
        let user = Caps(0);
        let vhost = ["--shared-dir=/tmp", "--socket-path=/tmp/s"];
        let cli = |more: &[&str]| parse(&[&vhost[..], more].concat()).unwrap();
        // Malformed maps: clap names the option (exit 2).
        for bad in ["--uid-map=0:1000:1", "--uid-map=:0:1000:", "--gid-map=:0:x:1:", "--uid-map=:0:1:0:"] {
            let e = parse(&[&vhost[..], &[bad][..]].concat()).unwrap_err();
            let option = &bad[..9];
            assert!(e.contains(option) && e.contains("invalid value"), "{bad}: {e}");
        }
        let maps = cli(&["--uid-map=:0:100000:65536:", "--uid-map=:65536:1000:1:", "--gid-map=:0:100000:65536:"]);
        assert_eq!(maps.uid_map.len(), 2);
        maps.check_privilege(user).unwrap();
        let e = maps.check_privilege(root).unwrap_err().to_string();
        assert!(e.starts_with("--uid-map: ") && e.contains("CAP_SYS_ADMIN"), "{e}");
        assert!(maps.user_namespace(true).is_none());
        assert_eq!(maps.user_namespace(false).unwrap().gids.len(), 1);
        let e = cli(&["--gid-map=:1:100000:65536:"]).check_privilege(user).unwrap_err().to_string();
        assert!(e.starts_with("--gid-map: ") && e.contains("namespace id 0"), "{e}");
        let fuse = parse(&["--shared-dir=/tmp", "--mountpoint=/mnt"]).unwrap();
        fuse.check_privilege(root).unwrap();
        let e = fuse.check_privilege(user).unwrap_err().to_string();
        assert!(e.starts_with("--mountpoint: ") && e.contains("vhost-user"), "{e}");
        let mandatory = cli(&["--inode-file-handles=mandatory"]);
        mandatory.check_privilege(root).unwrap();
        let e = mandatory.check_privilege(user).unwrap_err().to_string();
        assert!(e.starts_with("--inode-file-handles=mandatory: ") && e.contains("prefer"), "{e}");
        cli(&["--inode-file-handles=prefer"]).check_privilege(user).unwrap();
        assert!(cli(&["--sandbox=none"]).user_namespace(false).is_none());
    }

    #[test]
    fn test_killpriv_v2_is_off_when_the_map_renames_security_capability() {
        let on = parse(&["--shared-dir=/tmp", "--fd=3", "--xattrmap=:prefix:all:user.:user.:/ok/all///"]).unwrap();
        assert!(on.killpriv_v2());
        let off = parse(&["--shared-dir=/tmp", "--fd=3", "--xattrmap=:map::user.virtiofs.:"]).unwrap();
        assert!(!off.killpriv_v2());
        let last_wins = parse(&["--shared-dir=/tmp", "--fd=3", "--killpriv-v2", "--no-killpriv-v2"]).unwrap();
        assert!(!last_wins.killpriv_v2());
    }
}
