//! VM live migration with a real QEMU (10.0, from bookworm-backports: vhost-user-fs migrates
//! its back-end's state since QEMU 8.2): a guest runs its checked workload (examples/vm_guest)
//! on a phoenixfsd share; the host starts a second QEMU with `-incoming` and a second phoenixfsd
//! on the same share, and migrates the running guest to it over a unix socket (QMP `migrate`).
//! The guest's workload runs throughout; two files it holds open from the start (one unlinked)
//! must stay usable after the switch. Crash recovery composes with it: the source's worker is
//! killed before the migration, the destination's again and again after it.
//!
//! Checks: the migration completes; both daemons logged the device state's save and load; the
//! guest's operations go on on the destination; no guest error; the held-open files read back
//! whole through the same fds (`VM-KEEP ok`); the host tree equals the guest's model; both
//! QEMUs and both daemons exit 0; the destination's supervisor replaced a worker per kill, plus
//! the one the import replaces.
//!
//! ```text
//! cargo test --release --features crash-points --test vm_migration -- --nocapture
//! ```
//!
//! Environment: `PHOENIXFS_VM_KILLS` (kills on the destination after the switch, 50),
//! `PHOENIXFS_VM_ACCEL=kvm|tcg`, `PHOENIXFS_VM_MIGRATION_MODE` (file-handles: the workload
//! unlinks files it holds open, which find-paths cannot carry).

mod common;
#[path = "vm/listing.rs"]
mod listing;
#[path = "vm/qemu.rs"]
mod qemu;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::proc::{Proc, wait_for_exit, wait_worker};

/// A QMP connection (one JSON object per line).
struct Qmp {
    out: UnixStream,
    lines: BufReader<UnixStream>,
}

impl Qmp {
    fn connect(path: &Path) -> Qmp {
        let deadline = Instant::now() + Duration::from_secs(30);
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(Instant::now() < deadline, "QMP socket {path:?}: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        let mut q = Qmp { out: stream.try_clone().unwrap(), lines: BufReader::new(stream) };
        let greeting = q.line();
        assert!(greeting.contains("QMP"), "QMP greeting: {greeting}");
        q.execute(r#"{"execute":"qmp_capabilities"}"#);
        q
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.lines.read_line(&mut l).expect("read from QMP");
        assert!(!l.is_empty(), "QMP closed");
        l
    }

    /// Sends one command in one write: QEMU runs a command as soon as its JSON object is
    /// complete, so the line end written apart would race a `quit` (the socket closed under it:
    /// EPIPE, as a CI run once saw).
    fn send(&mut self, cmd: &str) {
        self.out.write_all(format!("{cmd}\n").as_bytes()).expect("write to QMP");
    }

    /// Sends a command; its answer (events in between are skipped).
    fn execute(&mut self, cmd: &str) -> String {
        self.send(cmd);
        loop {
            let l = self.line();
            if l.contains("\"return\"") || l.contains("\"error\"") {
                return l;
            }
        }
    }

    /// `quit`: QEMU answers and exits, and may close the socket before its answer is read out;
    /// how it ended is its exit status, checked by the caller.
    fn quit(&mut self) {
        self.send(r#"{"execute":"quit"}"#);
        self.lines.get_ref().set_read_timeout(Some(Duration::from_secs(30))).expect("QMP read timeout");
        let mut l = String::new();
        while matches!(self.lines.read_line(&mut l), Ok(n) if n > 0) {
            assert!(!l.contains("\"error\""), "quit: {l}");
            l.clear();
        }
    }
}

/// One phoenixfsd of the two, its log echoed with `tag` and kept.
struct Daemon {
    child: qemu::Reap,
    log: Arc<Mutex<Vec<String>>>,
    reader: std::thread::JoinHandle<()>,
}

fn daemon(share: &Path, socket: &Path, mode: &str, tag: &'static str) -> Daemon {
    let mut child = qemu::Reap(
        Command::new(common::BIN)
            .arg("--shared-dir")
            .arg(share)
            .arg("--socket-path")
            .arg(socket)
            .args(["--xattr", "--log-level", "info", &format!("--migration-mode={mode}")])
            .args(common::confinement_args())
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn phoenixfsd"),
    );
    let err = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let kept = log.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            if !line.contains("worker killed by signal 9") {
                eprintln!("{tag}| {line}");
            }
            kept.lock().unwrap().push(line);
        }
    });
    qemu::wait_socket(socket);
    Daemon { child, log, reader }
}

fn count(log: &Mutex<Vec<String>>, what: &str) -> usize {
    log.lock().unwrap().iter().filter(|l| l.contains(what)).count()
}

fn fields(line: &str) -> BTreeMap<&str, &str> {
    line.split_whitespace().filter_map(|w| w.split_once('=')).collect()
}

/// Migrates the source QEMU (QMP socket `src`) to the destination (`dst`) at `uri`, with a
/// return path (a destination that fails to load tells the source, which then runs on), while
/// the source's console keeps flowing into `lines`. Returns QEMU's final status, when the
/// migration began, and the source's QMP connection.
fn migrate(
    src: &Path,
    dst: &Path,
    uri: &str,
    src_console: &std::sync::mpsc::Receiver<String>,
    lines: &mut Vec<String>,
) -> (String, Instant, Qmp) {
    let mut qmp = Qmp::connect(src);
    let mut qmp_dst = Qmp::connect(dst);
    let caps = r#"{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"return-path","state":true}]}}"#;
    for q in [&mut qmp, &mut qmp_dst] {
        let r = q.execute(caps);
        assert!(r.contains("\"return\""), "migrate-set-capabilities: {r}");
    }
    let t_mig = Instant::now();
    let r = qmp.execute(&format!(r#"{{"execute":"migrate","arguments":{{"uri":"{uri}"}}}}"#));
    assert!(r.contains("\"return\""), "migrate: {r}");
    let status = loop {
        // The source's console keeps flowing until the switch.
        while let Ok(l) = src_console.try_recv() {
            eprintln!("guest@src| {l}");
            lines.push(l);
        }
        let s = qmp.execute(r#"{"execute":"query-migrate"}"#);
        if ["\"completed\"", "\"failed\"", "\"cancelled\""].iter().any(|w| s.contains(w)) {
            break s;
        }
        assert!(t_mig.elapsed() < Duration::from_secs(300), "the migration did not end within 300 s: {s}");
        std::thread::sleep(Duration::from_millis(200));
    };
    (status, t_mig, qmp)
}

fn progress(line: &str) -> Option<u64> {
    line.strip_prefix("VM-PROGRESS ").and_then(|l| fields(l).get("ops")?.parse().ok())
}

/// Reads console lines until `until` says stop (or `limit` passes: a panic), echoing them and
/// keeping them in `lines`.
fn read_console(
    rx: &Receiver<String>,
    tag: &str,
    lines: &mut Vec<String>,
    limit: Duration,
    mut until: impl FnMut(&str) -> bool,
) -> bool {
    let t0 = Instant::now();
    loop {
        match rx.recv_timeout(limit.saturating_sub(t0.elapsed())) {
            Ok(line) => {
                if !line.starts_with("VM-LIST ") {
                    eprintln!("{tag}| {line}");
                }
                let stop = until(&line);
                lines.push(line);
                if stop {
                    return true;
                }
            }
            Err(RecvTimeoutError::Disconnected) => return false,
            Err(RecvTimeoutError::Timeout) => panic!("{tag}: nothing awaited within {} s", limit.as_secs()),
        }
    }
}

/// Kills the worker of `sup` `n` times, 100-300 ms apart; returns the kills.
fn kill_workers(sup: i32, n: u64, seed: &mut u64) -> u64 {
    let mut cur: Proc = wait_worker(sup, None, Duration::from_secs(10)).expect("a worker");
    for k in 0..n {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(100 + (*seed >> 33) % 200));
        // SAFETY: kill(2) of a live worker of our daemon (a child not yet reaped keeps its pid).
        assert_eq!(unsafe { libc::kill(cur.pid, libc::SIGKILL) }, 0, "kill #{k}");
        cur = wait_worker(sup, Some(cur), Duration::from_secs(10)).unwrap_or_else(|e| panic!("kill #{k}: {e}"));
    }
    n
}

fn migrate_uri(dir: &Path) -> (String, PathBuf) {
    let p = dir.join("migrate.sock");
    (format!("unix:{}", p.display()), p)
}

#[test]
fn test_vm_qemu_10_live_migration_between_two_daemons() {
    let q = qemu::Qemu::backports(&qemu::target_dir().join("vm-cache"));
    let mode = std::env::var("PHOENIXFS_VM_MIGRATION_MODE").unwrap_or_else(|_| "file-handles".into());
    let kills_after: u64 = std::env::var("PHOENIXFS_VM_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let shape = qemu::Shape::from_env();
    let (guest, accel, tmp) = qemu::prepare_vm(&q, shape.kernel);
    let share = tmp.path().join("share");
    std::fs::create_dir(&share).unwrap();
    let (src_sock, dst_sock) = (tmp.path().join("src.sock"), tmp.path().join("dst.sock"));
    let (src_qmp, dst_qmp) = (tmp.path().join("src.qmp"), tmp.path().join("dst.qmp"));
    let (uri, _) = migrate_uri(tmp.path());
    let mut seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let append = format!("vmg.threads=2 vmg.seed={seed:x} vmg.keep");
    eprintln!("vm-migration: {} ({}), {accel}, --migration-mode={mode}", q.version, q.bin.display());

    // The source: a daemon and QEMU running the guest.
    let mut src = daemon(&share, &src_sock, &mode, "src-phoenixfsd");
    let mut cmd = qemu::command(&q, &guest, accel, &src_sock, &append, &shape);
    cmd.arg("-qmp").arg(format!("unix:{},server=on,wait=off", src_qmp.display())).stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut src_vm = qemu::Reap(cmd.spawn().expect("spawn the source QEMU"));
    let src_err = qemu::collect_stderr(&mut src_vm, "src-qemu");
    let src_console = qemu::console(&mut src_vm);

    // The destination: a daemon on the same share and QEMU waiting for the migration.
    let mut dst = daemon(&share, &dst_sock, &mode, "dst-phoenixfsd");
    let mut cmd = qemu::command(&q, &guest, accel, &dst_sock, &append, &shape);
    cmd.arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", dst_qmp.display()))
        .args(["-incoming", &uri])
        .stderr(Stdio::piped());
    let mut dst_vm = qemu::Reap(cmd.spawn().expect("spawn the destination QEMU"));
    let dst_err = qemu::collect_stderr(&mut dst_vm, "dst-qemu");
    let dst_console = qemu::console(&mut dst_vm);

    // The workload runs on the source, and survives a few kills there first.
    let mut lines = Vec::new();
    read_console(&src_console, "guest@src", &mut lines, Duration::from_secs(180), |l| l.starts_with("VM-START"));
    eprintln!("vm-migration: workload started {:.1} s after boot", t0.elapsed().as_secs_f64());
    let src_sup = common::proc::supervisor_of(src.child.id()) as i32;
    let kills_before = kill_workers(src_sup, 10, &mut seed);
    let mut seen = 0;
    read_console(&src_console, "guest@src", &mut lines, Duration::from_secs(60), |l| {
        seen += u32::from(progress(l).is_some());
        seen == 2
    });
    let ops_before = lines.iter().filter_map(|l| progress(l)).next_back().unwrap_or(0);
    assert!(ops_before > 0, "the guest did no operation before the migration");

    // Migrate.
    // With a return path, a destination that fails to load tells the source, which then runs
    // on (a failed migration ends cleanly).
    let (status, t_mig, mut qmp) = migrate(&src_qmp, &dst_qmp, &uri, &src_console, &mut lines);
    let mig_secs = t_mig.elapsed().as_secs_f64();
    eprintln!("vm-migration: {mig_secs:.1} s: {}", status.trim());
    assert!(status.contains("\"completed\""), "the migration did not complete: {status}");
    while let Ok(l) = src_console.try_recv() {
        eprintln!("guest@src| {l}");
        lines.push(l);
    }
    let at_switch = lines.len();
    qmp.quit();
    let src_vm_status = wait_for_exit(&mut src_vm.0, Duration::from_secs(30)).expect("the source QEMU did not quit");
    let src_status = wait_for_exit(&mut src.child.0, Duration::from_secs(30));

    // The guest goes on on the destination; its worker is killed again and again; then STOP.
    let dst_sup = common::proc::supervisor_of(dst.child.id()) as i32;
    let mut seen = 0;
    read_console(&dst_console, "guest@dst", &mut lines, Duration::from_secs(120), |l| {
        seen += u32::from(progress(l).is_some());
        seen == 1
    });
    let killer = std::thread::spawn(move || kill_workers(dst_sup, kills_after, &mut seed));
    let mut progressing = true;
    while !killer.is_finished() && progressing {
        progressing =
            read_console(&dst_console, "guest@dst", &mut lines, Duration::from_secs(60), |l| progress(l).is_some());
    }
    let kills_after = killer.join().expect("killer");
    std::fs::write(share.join("STOP"), b"").unwrap();
    read_console(&dst_console, "guest@dst", &mut lines, Duration::from_secs(300), |_| false);
    let dst_vm_status = dst_vm.wait().expect("wait for the destination QEMU");
    let dst_status = wait_for_exit(&mut dst.child.0, Duration::from_secs(30));
    let _ = (src_err.join(), dst_err.join());
    let (src_log, dst_log) = (src.log.clone(), dst.log.clone());
    let _ = (src.reader.join(), dst.reader.join());

    // The checks.
    let summary = lines.iter().find(|l| l.starts_with("VM-SUMMARY")).expect("the guest printed no VM-SUMMARY");
    let f = fields(summary);
    let ops_after = lines[at_switch..].iter().filter_map(|l| progress(l)).next_back().unwrap_or(0);
    let model: Vec<String> = lines.iter().filter_map(|l| l.strip_prefix("VM-LIST ")).map(str::to_string).collect();
    let host = listing::host_listing(&share);
    eprintln!(
        "vm-migration: {} ({accel}), --migration-mode={mode}: migrated in {:.1} s; guest ops {ops_before} before, \
         {ops_after} by the last progress line on the destination, {} in all, errors {}, worst {} ms ({}); kills: \
         {kills_before} on the source before, {kills_after} on the destination after; {} entries in the tree",
        q.version,
        mig_secs,
        f.get("ops").unwrap_or(&"?"),
        f.get("errors").unwrap_or(&"?"),
        f.get("worst_ms").unwrap_or(&"?"),
        f.get("worst_op").unwrap_or(&"?"),
        model.len()
    );
    let failures: Vec<&String> =
        lines.iter().filter(|l| l.starts_with("VM-FAIL") || l.starts_with("VM-ERROR")).collect();
    assert!(failures.is_empty(), "the guest reported failures: {failures:#?}");
    assert_eq!(f.get("errors").copied(), Some("0"), "guest errors");
    assert!(lines.iter().any(|l| l.starts_with("VM-KEEP ok")), "the files held open across the switch");
    assert!(lines.iter().any(|l| l == "VM-EXIT 0"), "the workload did not exit 0");
    assert!(ops_after > ops_before, "the guest's operations went on on the destination");
    assert_eq!(count(&src_log, "device state saved"), 1, "the source saved its device state");
    assert_eq!(count(&dst_log, "device state loaded"), 1, "the destination loaded it");
    assert!(src_vm_status.success(), "the source QEMU exited with {src_vm_status}");
    assert!(dst_vm_status.success(), "the destination QEMU exited with {dst_vm_status}");
    assert!(matches!(src_status, Some(s) if s.success()), "the source phoenixfsd: {src_status:?}");
    assert!(matches!(dst_status, Some(s) if s.success()), "the destination phoenixfsd: {dst_status:?}");
    assert_eq!(count(&src_log, "worker killed by signal 9") as u64, kills_before, "source: one replacement per kill");
    assert_eq!(
        count(&dst_log, "worker killed by signal 9") as u64,
        kills_after + 1,
        "destination: one replacement per kill, and the one after the import"
    );
    if host != model {
        let only_host: Vec<_> = host.iter().filter(|l| !model.contains(l)).take(20).collect();
        let only_model: Vec<_> = model.iter().filter(|l| !host.contains(l)).take(20).collect();
        panic!(
            "the host tree differs from the guest's model:\nonly on the host: {only_host:#?}\nonly in the model: {only_model:#?}"
        );
    }
}

/// A migration that fails ends cleanly: the destination refuses the device state (its
/// `--migration-mode` is not the source's), QEMU's return path tells the source, and the guest
/// runs on on the source, which restarts its rings on the same daemon: no guest error, the
/// held-open files intact, host tree == model.
#[test]
fn test_vm_qemu_10_failed_migration_leaves_the_source_running() {
    let q = qemu::Qemu::backports(&qemu::target_dir().join("vm-cache"));
    let shape = qemu::Shape::from_env();
    let (guest, accel, tmp) = qemu::prepare_vm(&q, shape.kernel);
    let share = tmp.path().join("share");
    std::fs::create_dir(&share).unwrap();
    let (src_sock, dst_sock) = (tmp.path().join("src.sock"), tmp.path().join("dst.sock"));
    let (src_qmp, dst_qmp) = (tmp.path().join("src.qmp"), tmp.path().join("dst.qmp"));
    let (uri, _) = migrate_uri(tmp.path());
    let mut seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let append = format!("vmg.threads=2 vmg.seed={seed:x} vmg.keep");

    let mut src = daemon(&share, &src_sock, "file-handles", "src-phoenixfsd");
    let mut cmd = qemu::command(&q, &guest, accel, &src_sock, &append, &shape);
    cmd.arg("-qmp").arg(format!("unix:{},server=on,wait=off", src_qmp.display())).stderr(Stdio::piped());
    let mut src_vm = qemu::Reap(cmd.spawn().expect("spawn the source QEMU"));
    let src_err = qemu::collect_stderr(&mut src_vm, "src-qemu");
    let src_console = qemu::console(&mut src_vm);
    // The destination cannot take the state: it was made in another mode.
    let mut dst = daemon(&share, &dst_sock, "find-paths", "dst-phoenixfsd");
    let mut cmd = qemu::command(&q, &guest, accel, &dst_sock, &append, &shape);
    cmd.arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", dst_qmp.display()))
        .args(["-incoming", &uri])
        .stderr(Stdio::piped());
    let mut dst_vm = qemu::Reap(cmd.spawn().expect("spawn the destination QEMU"));
    let dst_err = qemu::collect_stderr(&mut dst_vm, "dst-qemu");

    let mut lines = Vec::new();
    read_console(&src_console, "guest@src", &mut lines, Duration::from_secs(180), |l| l.starts_with("VM-START"));
    let mut seen = 0;
    read_console(&src_console, "guest@src", &mut lines, Duration::from_secs(60), |l| {
        seen += u32::from(progress(l).is_some());
        seen == 2
    });
    let (status, t_mig, _) = migrate(&src_qmp, &dst_qmp, &uri, &src_console, &mut lines);
    eprintln!("vm-migration: {:.1} s: {}", t_mig.elapsed().as_secs_f64(), status.trim());
    assert!(status.contains("\"failed\""), "the migration should have failed: {status}");
    let dst_vm_status = wait_for_exit(&mut dst_vm.0, Duration::from_secs(60)).expect("the destination QEMU exits");
    let dst_status = wait_for_exit(&mut dst.child.0, Duration::from_secs(30));
    let at_failure = lines.len();

    // The source runs on (its rings restarted on the same daemon), through worker kills too.
    let src_sup = common::proc::supervisor_of(src.child.id()) as i32;
    let kills = kill_workers(src_sup, 10, &mut seed);
    let mut seen = 0;
    read_console(&src_console, "guest@src", &mut lines, Duration::from_secs(120), |l| {
        seen += u32::from(progress(l).is_some());
        seen == 2
    });
    std::fs::write(share.join("STOP"), b"").unwrap();
    read_console(&src_console, "guest@src", &mut lines, Duration::from_secs(300), |_| false);
    let src_vm_status = src_vm.wait().expect("wait for the source QEMU");
    let src_status = wait_for_exit(&mut src.child.0, Duration::from_secs(30));
    let _ = (src_err.join(), dst_err.join());
    let (src_log, dst_log) = (src.log.clone(), dst.log.clone());
    let _ = (src.reader.join(), dst.reader.join());

    let summary = lines.iter().find(|l| l.starts_with("VM-SUMMARY")).expect("the guest printed no VM-SUMMARY");
    let f = fields(summary);
    let ops_before = lines[..at_failure].iter().filter_map(|l| progress(l)).next_back().unwrap_or(0);
    let ops_after = lines[at_failure..].iter().filter_map(|l| progress(l)).next_back().unwrap_or(0);
    let model: Vec<String> = lines.iter().filter_map(|l| l.strip_prefix("VM-LIST ")).map(str::to_string).collect();
    let host = listing::host_listing(&share);
    eprintln!(
        "vm-migration (failing): {}: {}; guest ops {ops_before} at the failure, {ops_after} later on the source, errors {}",
        q.version,
        status.trim(),
        f.get("errors").unwrap_or(&"?")
    );
    assert_eq!(count(&src_log, "device state saved"), 1, "the source saved its device state");
    assert_eq!(count(&dst_log, "device state load failed"), 1, "the destination refused it");
    assert!(!dst_vm_status.success(), "the destination QEMU fails its incoming migration");
    assert!(
        matches!(dst_status, Some(s) if s.success()),
        "the destination phoenixfsd stops when QEMU goes: {dst_status:?}"
    );
    let failures: Vec<&String> =
        lines.iter().filter(|l| l.starts_with("VM-FAIL") || l.starts_with("VM-ERROR")).collect();
    assert!(failures.is_empty(), "the guest reported failures: {failures:#?}");
    assert_eq!(f.get("errors").copied(), Some("0"), "guest errors");
    assert!(lines.iter().any(|l| l.starts_with("VM-KEEP ok")), "the files held open across the attempt");
    assert!(lines.iter().any(|l| l == "VM-EXIT 0"), "the workload did not exit 0");
    assert!(ops_after > ops_before, "the guest's operations went on on the source");
    assert!(src_vm_status.success(), "the source QEMU exited with {src_vm_status}");
    assert!(matches!(src_status, Some(s) if s.success()), "the source phoenixfsd: {src_status:?}");
    assert_eq!(count(&src_log, "worker killed by signal 9") as u64, kills, "source: one replacement per kill");
    assert_eq!(host, model, "the host tree equals the guest's model");
}
