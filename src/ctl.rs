//! `phoenixfsd ctl`: the client of a running daemon's control socket (control.rs).
//!
//! ```text
//! phoenixfsd ctl --socket /run/vfs.sock.ctl status [--json]
//! phoenixfsd ctl --socket PATH metrics          # Prometheus text format
//! phoenixfsd ctl --socket PATH restart-worker   # the worker is killed and replaced
//! phoenixfsd ctl --socket PATH upgrade [--binary PATH]   # live upgrade (upgrade.rs)
//! ```
//!
//! Exit codes: 0 done; 1 the daemon could not be asked or refused (the message says why);
//! 2 a bad command line.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "phoenixfsd ctl", about = "Ask a running phoenixfsd (its --control-socket)")]
struct Ctl {
    /// The daemon's control socket (default: <vhost-user socket>.ctl, or
    /// /run/phoenixfsd/<mount point with / as ->.ctl; see --control-socket).
    #[arg(long)]
    socket: PathBuf,
    #[command(subcommand)]
    request: Request,
}

#[derive(Debug, Subcommand)]
enum Request {
    /// Version, uptime, pids, restarts and their causes, requests, inodes, handles.
    Status {
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The same numbers in Prometheus text format.
    Metrics,
    /// Kill the worker; the supervisor replaces it, as after any crash.
    RestartWorker,
    /// Replace the running daemon's binary without stopping it: the new binary takes the
    /// connection, the state and every open file over; clients see a pause. Refused (and the
    /// running daemon serves on) if the binary cannot run here or cannot read the daemon's state.
    Upgrade {
        /// The new binary (default: this `phoenixfsd`, e.g. the one a package update installed).
        #[arg(long)]
        binary: Option<PathBuf>,
    },
}

/// Runs `phoenixfsd ctl ARGS` (`args` starts with "ctl").
pub fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let ctl = match Ctl::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let (line, binary) = match ctl.request {
        Request::Status { json: false } => ("status".to_string(), None),
        Request::Status { json: true } => ("status --json".to_string(), None),
        Request::Metrics => ("metrics".to_string(), None),
        Request::RestartWorker => ("restart-worker".to_string(), None),
        Request::Upgrade { binary } => {
            let path = match binary.map_or_else(std::env::current_exe, Ok) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("phoenixfsd ctl: cannot find this program's path: {e}; name one with --binary");
                    return ExitCode::FAILURE;
                }
            };
            // Opened here, with the operator's rights and view of the file system: the daemon
            // in its sandbox could not open a host path.
            match std::fs::File::open(&path) {
                Ok(f) => (format!("upgrade {}", path.display()), Some(f)),
                Err(e) => {
                    eprintln!("phoenixfsd ctl: cannot open the new binary {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    match ask(&ctl.socket, &line, binary.as_ref()) {
        Ok(reply) if reply.starts_with("error: ") => {
            eprint!("phoenixfsd ctl: {}", &reply["error: ".len()..]);
            ExitCode::FAILURE
        }
        Ok(reply) => {
            print!("{reply}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("phoenixfsd ctl: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Sends `line` (with `attach`'s fd, if any) to the control socket at `socket` and returns the
/// reply. Public for tests that must not fork while they hold open files (a forked child holds
/// copies of every fd until its exec, and with them open file descriptions and their OFD locks).
pub fn ask(socket: &std::path::Path, line: &str, attach: Option<&std::fs::File>) -> Result<String, String> {
    let shown = socket.display();
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        format!("cannot connect to {shown}: {e} (is a phoenixfsd running with --control-socket {shown}?)")
    })?;
    // An upgrade waits for the new binary to be ready (up to 20 s) after its own checks.
    let timeout = Some(Duration::from_secs(if attach.is_some() { 60 } else { 5 }));
    stream.set_read_timeout(timeout).and_then(|()| stream.set_write_timeout(timeout)).map_err(|e| e.to_string())?;
    // A peer that closes before reading a request is not one of ours either.
    let not_ours =
        |what: &str, e: std::io::Error| format!("{shown} did not answer as a phoenixfsd control socket ({what}: {e})");
    let request = format!("{line}\n");
    match attach {
        Some(file) => {
            use std::os::fd::AsRawFd;
            let sent = send_attached(stream.as_raw_fd(), request.as_bytes(), file.as_raw_fd());
            sent.map_err(|e| not_ours("sending the request", e))?;
        }
        None => stream.write_all(request.as_bytes()).map_err(|e| not_ours("sending the request", e))?,
    }
    let mut reply = String::new();
    stream.read_to_string(&mut reply).map_err(|e| not_ours("reading the reply", e))?;
    // Every reply of ours is text ending in a newline; anything else is not a phoenixfsd.
    if reply.is_empty() || !reply.ends_with('\n') {
        return Err(format!("{shown} did not answer as a phoenixfsd control socket"));
    }
    Ok(reply)
}

/// Sends the whole request with the fd attached to its first part.
fn send_attached(sock: i32, data: &[u8], fd: i32) -> std::io::Result<()> {
    let n = crate::sys::send_with_fd(sock, data, fd)?;
    let mut rest = &data[n..];
    while !rest.is_empty() {
        let n = crate::sys::write(sock, rest)?;
        rest = &rest[n..];
    }
    Ok(())
}
