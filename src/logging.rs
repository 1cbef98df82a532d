//! Where the log goes: stderr (ANSI colour only when stderr is a terminal), or syslog with
//! `--syslog`. The level comes from `--log-level` (or `-d`); RUST_LOG, when set, overrides it.
//!
//! Syslog is a small `MakeWriter` rather than a crate: one datagram per event, in the local
//! syslog protocol (`<PRI>phoenixfsd[PID]: message`, RFC 3164 without the timestamp, which the
//! syslog daemon adds) on a socket connected to /dev/log at start-up. The socket is opened
//! before the first worker, so it is in the shared fd table and kept by every worker's fd sweep,
//! and it is written with write(2), which both seccomp lists already allow (a `send` would be
//! sendto, which the worker's list does not have). A failed send (no syslog daemon any more)
//! writes that line to stderr instead: a log line is never silently lost.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use tracing::Level;
use tracing_subscriber::fmt::MakeWriter;

use crate::cli::LogLevel;

/// The syslog socket; PHOENIXFS_SYSLOG_SOCKET overrides it (tests; hosts with syslog elsewhere).
const DEV_LOG: &str = "/dev/log";

/// The facility: LOG_DAEMON (3), as befits a system daemon (virtiofsd uses LOG_USER).
const FACILITY: u8 = 3;

fn filter_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Error => "error",
        LogLevel::Warn => "warn",
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
        LogLevel::Trace => "trace",
        LogLevel::Off => "off",
    }
}

/// The connected syslog socket's fd, once `init` made one (a live upgrade hands it on).
static SYSLOG_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// The syslog socket's fd, if logs go to syslog.
pub fn syslog_fd() -> Option<i32> {
    Some(SYSLOG_FD.load(std::sync::atomic::Ordering::Relaxed)).filter(|fd| *fd >= 0)
}

/// A live upgrade's new binary: the same logger as its predecessor's, on the syslog socket it
/// handed on (`syslog`), or on stderr.
pub fn init_adopted(level: LogLevel, syslog: Option<i32>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter_name(level)));
    match syslog {
        Some(fd) => {
            SYSLOG_FD.store(fd, std::sync::atomic::Ordering::Relaxed);
            // SAFETY: the handover names this fd as the connected syslog socket.
            let socket = Arc::new(File::from(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }));
            let _ = tracing::subscriber::set_global_default(syslog_subscriber(filter, Syslog { socket }));
        }
        None => {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr)
                .try_init();
        }
    }
}

fn syslog_subscriber(
    filter: tracing_subscriber::EnvFilter,
    writer: Syslog,
) -> impl tracing::Subscriber + Send + Sync + 'static {
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .without_time()
        .with_level(false)
        .with_target(false)
        .with_writer(writer)
        .finish()
}

/// Installs the process's logger (inherited by every worker, which is a clone). With `syslog`
/// and no reachable syslog socket, logs go to stderr and the first line says why.
pub fn init(level: LogLevel, syslog: bool) {
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter_name(level)))
    };
    let mut fallback = None;
    if syslog {
        let path = std::env::var("PHOENIXFS_SYSLOG_SOCKET").unwrap_or_else(|_| DEV_LOG.to_string());
        match Syslog::connect(&path) {
            Ok(writer) => {
                SYSLOG_FD.store(std::os::fd::AsRawFd::as_raw_fd(&*writer.socket), std::sync::atomic::Ordering::Relaxed);
                let _ = tracing::subscriber::set_global_default(syslog_subscriber(filter(), writer));
                return;
            }
            Err(e) => {
                fallback = Some(format!("--syslog: cannot reach the syslog socket {path} ({e}); logging to stderr"))
            }
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
    if let Some(why) = fallback {
        tracing::warn!("{why}");
    }
}

/// Writes each event as one datagram to the connected syslog socket.
#[derive(Clone)]
struct Syslog {
    /// The connected socket as a File, whose writes are write(2).
    socket: Arc<File>,
}

impl Syslog {
    fn connect(path: &str) -> std::io::Result<Syslog> {
        let sock = UnixDatagram::unbound()?;
        sock.connect(path)?;
        // Kept for the life of the daemon (and recorded among the supervisor's fds to keep).
        Ok(Syslog { socket: Arc::new(File::from(OwnedFd::from(sock))) })
    }
}

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = SyslogLine;

    fn make_writer(&'a self) -> SyslogLine {
        SyslogLine::new(self.socket.clone(), 6)
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> SyslogLine {
        let severity = match *meta.level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            Level::DEBUG | Level::TRACE => 7,
        };
        SyslogLine::new(self.socket.clone(), severity)
    }
}

/// One event's line, sent when the formatter is done with it.
struct SyslogLine {
    socket: Arc<File>,
    buf: Vec<u8>,
    header_len: usize,
}

impl SyslogLine {
    fn new(socket: Arc<File>, severity: u8) -> SyslogLine {
        let mut buf = Vec::with_capacity(256);
        // The worker's pid, not the supervisor's: a worker is its own process.
        let _ = write!(buf, "<{}>phoenixfsd[{}]: ", FACILITY * 8 + severity, std::process::id());
        let header_len = buf.len();
        SyslogLine { socket, buf, header_len }
    }
}

impl Write for SyslogLine {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine {
    fn drop(&mut self) {
        while self.buf.last() == Some(&b'\n') {
            self.buf.pop();
        }
        if self.buf.len() == self.header_len {
            return;
        }
        // One write(2) is one datagram: one syslog message.
        if (&*self.socket).write(&self.buf).is_err() {
            let mut line = self.buf[self.header_len..].to_vec();
            line.push(b'\n');
            let _ = std::io::stderr().write_all(&line);
        }
    }
}
