//! `phoenixfsd ctl`: the client of a running daemon's control socket (control.rs).
//!
//! ```text
//! phoenixfsd ctl --socket /run/vfs.sock.ctl status [--json]
//! phoenixfsd ctl --socket PATH metrics          # Prometheus text format
//! phoenixfsd ctl --socket PATH restart-worker   # the worker is killed and replaced
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
}

/// Runs `phoenixfsd ctl ARGS` (`args` starts with "ctl").
pub fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let ctl = match Ctl::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let line = match ctl.request {
        Request::Status { json: false } => "status",
        Request::Status { json: true } => "status --json",
        Request::Metrics => "metrics",
        Request::RestartWorker => "restart-worker",
    };
    match ask(&ctl.socket, line) {
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

fn ask(socket: &std::path::Path, line: &str) -> Result<String, String> {
    let shown = socket.display();
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        format!("cannot connect to {shown}: {e} (is a phoenixfsd running with --control-socket {shown}?)")
    })?;
    let timeout = Some(Duration::from_secs(5));
    stream.set_read_timeout(timeout).and_then(|()| stream.set_write_timeout(timeout)).map_err(|e| e.to_string())?;
    // A peer that closes before reading a request is not one of ours either.
    let not_ours =
        |what: &str, e: std::io::Error| format!("{shown} did not answer as a phoenixfsd control socket ({what}: {e})");
    stream.write_all(format!("{line}\n").as_bytes()).map_err(|e| not_ours("sending the request", e))?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).map_err(|e| not_ours("reading the reply", e))?;
    // Every reply of ours is text ending in a newline; anything else is not a phoenixfsd.
    if reply.is_empty() || !reply.ends_with('\n') {
        return Err(format!("{shown} did not answer as a phoenixfsd control socket"));
    }
    Ok(reply)
}
