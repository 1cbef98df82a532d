//! Real command lines — what libvirt generates, what Kata Containers passes, what virtiofsd's
//! README shows — run against phoenixfsd and, when it is installed, virtiofsd: both accept or
//! both refuse each line, and where phoenixfsd differs on purpose the table says why.
//!
//! "Accepts" means the daemon got past its command line and start-up and is waiting for the
//! vhost-user frontend (on the socket path, or on the listening socket it was handed as fd 3, as
//! libvirt and Kata do); it is then stopped. "Refuses" means it exited first. Every refusal by
//! phoenixfsd must exit 2 and name an option of the line. Lines run in parallel, one pair at a
//! time, so the table costs a few seconds.
//!
//! Placeholders: {share} a fresh directory, {sock} a fresh socket path, {fd} = 3 (a listening
//! socket is put there).

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common/userns.rs"]
mod userns;

const BIN: &str = env!("CARGO_BIN_EXE_phoenixfsd");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Accept,
    Refuse,
}
use Verdict::{Accept, Refuse};

struct Line {
    /// Where the line comes from.
    source: &'static str,
    args: &'static str,
    /// phoenixfsd's verdict and virtiofsd 1.14's.
    ours: Verdict,
    theirs: Verdict,
    /// For a refusal by us: what the message must name (the message itself says why). For a line
    /// we accept and virtiofsd refuses: why we differ.
    note: &'static str,
}

const fn line(source: &'static str, args: &'static str, ours: Verdict, theirs: Verdict, note: &'static str) -> Line {
    Line { source, args, ours, theirs, note }
}

/// The table. docs/compat.md repeats it in prose.
const LINES: &[Line] = &[
    // libvirt 10.x (src/qemu/qemu_virtiofs.c, qemuVirtioFSBuildCommandLine): a listening socket
    // as --fd, separate options.
    line("libvirt 10 (minimal)", "--fd={fd} --shared-dir {share}", Accept, Accept, ""),
    line(
        "libvirt 10 (cache, xattr, pool, debug)",
        "--fd={fd} --shared-dir {share} --cache always --sandbox chroot --xattr --thread-pool-size=16 --log-level=debug",
        Accept,
        Accept,
        "",
    ),
    line(
        "libvirt 10 (unprivileged session: id maps)",
        "--fd={fd} --shared-dir {share} --uid-map=:0:1000:1: --gid-map=:0:1000:1:",
        Refuse,
        Refuse,
        "--uid-map",
    ),
    // libvirt up to 9.x: the legacy -o form.
    line(
        "libvirt 9 (-o, locks off)",
        "--fd={fd} -o source={share},cache=none,no_xattr,no_flock,no_posix_lock --thread-pool-size=4",
        Accept,
        Accept,
        "",
    ),
    line(
        "libvirt 9 (-o, <lock posix='on' flock='on'/>)",
        "--fd={fd} -o source={share},cache=always,sandbox=chroot,xattr,flock,posix_lock -d",
        Accept,
        Refuse,
        "differs on purpose: phoenixfsd serves POSIX and flock locks in the daemon (the C virtiofsd's \
         options, which libvirt still generates); virtiofsd 1.14 knows only their no_ forms",
    ),
    // Kata Containers, Go runtime (virtcontainers/virtiofsd.go) with the default
    // virtio_fs_extra_args of configuration-qemu.toml.
    line(
        "Kata (Go runtime)",
        "--syslog --cache=auto --shared-dir={share} --fd={fd} --thread-pool-size=1 --announce-submounts",
        Accept,
        Accept,
        "",
    ),
    line(
        "Kata (Go runtime, before virtiofsd 1.x)",
        "--syslog -o cache=auto -o no_posix_lock -o source={share} --fd={fd} --thread-pool-size=1 -o announce_submounts",
        Accept,
        Accept,
        "",
    ),
    // virtiofsd's README and doc/xattr-mapping.md.
    line("virtiofsd README", "--socket-path={sock} --shared-dir {share} --cache=never", Accept, Accept, ""),
    line("virtiofsd README (deprecated --socket)", "--socket={sock} --shared-dir={share}", Accept, Accept, ""),
    line(
        "virtiofsd README (read-only, mmap)",
        "--socket-path={sock} --shared-dir {share} --readonly --cache=metadata --allow-mmap --preserve-noatime",
        Accept,
        Accept,
        "",
    ),
    line(
        "virtiofsd xattr-mapping.md example 1",
        "--socket-path={sock} --shared-dir {share} --xattrmap=:prefix:all::user.virtiofs.::bad:all:::",
        Accept,
        Accept,
        "",
    ),
    line(
        "virtiofsd xattr-mapping.md (map)",
        "--socket-path={sock} --shared-dir {share} -o xattrmap=:map::user.virtiofs.:",
        Accept,
        Accept,
        "",
    ),
    line(
        "virtiofsd README (translate ids)",
        "--socket-path={sock} --shared-dir {share} --translate-uid=squash-guest:0:1001:4294967295 --translate-gid=squash-guest:0:100:4294967295",
        Accept,
        Accept,
        "",
    ),
    line("virtiofsd README (ACLs)", "--socket-path={sock} --shared-dir {share} --posix-acl", Accept, Accept, ""),
    line(
        "virtiofsd README (ACLs, auto)",
        "--socket-path={sock} --shared-dir {share} --posix-acl=auto --xattr",
        Accept,
        Accept,
        "",
    ),
    line(
        "virtiofsd --help (ACLs and translation)",
        "--socket-path={sock} --shared-dir {share} --posix-acl --translate-uid=map:0:1000:1",
        Refuse,
        Refuse,
        "--posix-acl=always with --translate-uid/gid",
    ),
    line(
        "virtiofsd README (SELinux labels)",
        "--socket-path={sock} --shared-dir {share} --security-label=auto",
        Accept,
        Accept,
        "",
    ),
    line(
        "virtiofsd --help (migration)",
        "--socket-path={sock} --shared-dir {share} --migration-mode=file-handles --migration-on-error=guest-error",
        Accept,
        Accept,
        "",
    ),
    line(
        "virtiofsd --help (migration checks)",
        "--socket-path={sock} --shared-dir {share} --migration-mode=find-paths --migration-verify-handles --migration-confirm-paths",
        Accept,
        Accept,
        "",
    ),
    line(
        "migration mode misspelt",
        "--socket-path={sock} --shared-dir {share} --migration-mode=paths",
        Refuse,
        Refuse,
        "--migration-mode",
    ),
    line(
        "migration on-error misspelt",
        "--socket-path={sock} --shared-dir {share} --migration-on-error=ignore",
        Refuse,
        Refuse,
        "--migration-on-error",
    ),
    line("virtiofsd --help (tag)", "--socket-path={sock} --shared-dir {share} --tag=myfs", Accept, Accept, ""),
    line(
        "tag too long",
        "--socket-path={sock} --shared-dir {share} --tag=0123456789012345678901234567890123456",
        Refuse,
        Refuse,
        "--tag",
    ),
    line(
        "virtiofsd --help (killpriv, last wins)",
        "--socket-path={sock} --shared-dir {share} --killpriv-v2 --no-killpriv-v2 --log-level=warn --writeback",
        Accept,
        Accept,
        "",
    ),
    line(
        "virtiofsd --help (all caches, modcaps)",
        "--socket-path={sock} --shared-dir {share} --cache=metadata --no-readdirplus --allow-direct-io --modcaps=+sys_admin:-mknod",
        Accept,
        Accept,
        "",
    ),
    // The C virtiofsd's options, gone in 1.x.
    line("C virtiofsd (timeout=)", "--socket-path={sock} -o source={share},timeout=5", Refuse, Refuse, "timeout=5"),
    line(
        "C virtiofsd (vhost_user_socket=)",
        "-o vhost_user_socket={sock} -o source={share}",
        Refuse,
        Refuse,
        "vhost_user_socket",
    ),
    line(
        "C virtiofsd (log_level=)",
        "--socket-path={sock} -o source={share},log_level=debug",
        Accept,
        Refuse,
        "differs on purpose: the C virtiofsd's spelling of -o loglevel=, honoured with the same meaning",
    ),
    // Mistakes both must refuse.
    line("typo", "--socket-path={sock} --shared-dir {share} --no-such-option", Refuse, Refuse, "--no-such-option"),
    line("bad mode", "--socket-path={sock} --shared-dir {share} --posix-acl=sometimes", Refuse, Refuse, "sometimes"),
    line("bad xattrmap", "--socket-path={sock} --shared-dir {share} --xattrmap=:bogus:all:::", Refuse, Refuse, "bogus"),
    line("bad -o cache", "--socket-path={sock} -o source={share},cache=sometimes", Refuse, Refuse, "cache=sometimes"),
    line(
        "--uid-map with --sandbox chroot",
        "--socket-path={sock} --shared-dir {share} --sandbox=chroot --uid-map=:0:100000:65536:",
        Refuse,
        Refuse,
        "--uid-map with --sandbox chroot",
    ),
    line(
        "--gid-map with --sandbox none",
        "--socket-path={sock} --shared-dir {share} --sandbox=none --gid-map=:0:100000:65536:",
        Refuse,
        Refuse,
        "--gid-map with --sandbox none",
    ),
    line(
        "malformed --uid-map",
        "--socket-path={sock} --shared-dir {share} --uid-map=:0:100000:",
        Refuse,
        Refuse,
        "--uid-map",
    ),
    line(
        "socket group with fd",
        "--fd={fd} --shared-dir {share} --socket-group=root",
        Refuse,
        Refuse,
        "--socket-group",
    ),
    line(
        "virtiofsd --help (no submounts)",
        "--socket-path={sock} --shared-dir {share} --no-announce-submounts",
        Accept,
        Accept,
        "",
    ),
];

/// Lines run as an unprivileged user (tests/common/userns.rs: `pfs-userns`, no capabilities),
/// where `--sandbox namespace` is built in a user namespace. More placeholders: {uid}, {gid}
/// the user's ids, {subuid}, {subgid} the first ids of its subordinate ranges.
const UNPRIVILEGED_LINES: &[Line] = &[
    // libvirt 10 (qemuVirtioFSBuildCommandLine) for a session daemon: the domain's <idmap>, by
    // default the user's own id as 0 and its subordinate range after it.
    line(
        "libvirt 10, unprivileged session (id maps)",
        "--fd={fd} --shared-dir {share} --uid-map=:0:{uid}:1: --uid-map=:1:{subuid}:65535: --gid-map=:0:{gid}:1: --gid-map=:1:{subgid}:65535:",
        Accept,
        Accept,
        "",
    ),
    line("unprivileged, no maps", "--socket-path={sock} --shared-dir {share}", Accept, Accept, ""),
    line(
        "unprivileged, --uid-map with --sandbox chroot",
        "--socket-path={sock} --shared-dir {share} --sandbox=chroot --uid-map=:0:{uid}:1:",
        Refuse,
        Refuse,
        "--uid-map with --sandbox chroot",
    ),
    line(
        "unprivileged, --gid-map with --sandbox none",
        "--socket-path={sock} --shared-dir {share} --sandbox=none --gid-map=:0:{gid}:1:",
        Refuse,
        Refuse,
        "--gid-map with --sandbox none",
    ),
    line(
        "unprivileged, malformed --uid-map",
        "--socket-path={sock} --shared-dir {share} --uid-map=:0:{uid}:",
        Refuse,
        Refuse,
        "--uid-map",
    ),
    line(
        "unprivileged, no namespace id 0",
        "--socket-path={sock} --shared-dir {share} --uid-map=:1:{subuid}:10:",
        Refuse,
        Accept,
        "--uid-map: no range maps namespace id 0",
    ),
    line(
        "unprivileged, file handles mandatory",
        "--socket-path={sock} --shared-dir {share} --inode-file-handles=mandatory",
        Refuse,
        Refuse,
        "--inode-file-handles=mandatory: open_by_handle_at needs CAP_DAC_READ_SEARCH",
    ),
];

fn virtiofsd() -> Option<PathBuf> {
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("virtiofsd")).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/root/.cargo/bin/virtiofsd"), PathBuf::from("/usr/libexec/virtiofsd")]);
    candidates.into_iter().find(|p| p.is_file())
}

/// One daemon started on one line; its verdict and what it said.
struct Outcome {
    verdict: Verdict,
    code: Option<i32>,
    stderr: String,
}

fn start(bin: &Path, args: &str, dir: &Path, user: Option<&userns::TestUser>) -> std::process::Child {
    let share = dir.join("share");
    std::fs::create_dir_all(&share).unwrap();
    let sock = dir.join("vfs.sock");
    let mut args = args.replace("{share}", share.to_str().unwrap()).replace("{sock}", sock.to_str().unwrap());
    if let Some(u) = user {
        // Its socket goes here; the share stays root's (0755: the daemon, root in its
        // namespace, may look in but owns nothing there, which is all a start-up needs).
        u.own(dir);
        for (k, v) in [("{uid}", u.uid), ("{gid}", u.gid), ("{subuid}", u.subuid), ("{subgid}", u.subgid)] {
            args = args.replace(k, &v.to_string());
        }
    }
    let args: Vec<String> = args.replace("{fd}", "3").split_whitespace().map(String::from).collect();
    let listener = UnixListener::bind(dir.join("fd3.sock")).unwrap();
    let fd = listener.as_raw_fd();
    let mut cmd = match user {
        Some(u) => u.command(bin),
        None => Command::new(bin),
    };
    cmd.args(&args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).process_group(0);
    // SAFETY: dup2 and fcntl are async-signal-safe; the listener stays open in the parent until
    // spawn returns. dup2 onto itself keeps close-on-exec, so it is cleared explicitly.
    unsafe {
        cmd.pre_exec(move || {
            if (fd != 3 && libc::dup2(fd, 3) < 0) || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("spawn");
    drop(listener);
    child
}

/// Running after its start-up (socket made, or still alive after a grace period with fd 3):
/// accepted. Exited: refused.
fn judge(mut child: std::process::Child, dir: &Path, uses_socket_path: bool) -> Outcome {
    let deadline = Instant::now() + Duration::from_secs(3);
    let sock = dir.join("vfs.sock");
    let alive_since = Instant::now();
    let verdict = loop {
        if child.try_wait().unwrap().is_some() {
            break Refuse;
        }
        let ready = if uses_socket_path { sock.exists() } else { alive_since.elapsed() > Duration::from_millis(800) };
        if ready {
            // Give a daemon that fails just after listening the chance to show it.
            std::thread::sleep(Duration::from_millis(200));
            if child.try_wait().unwrap().is_some() {
                break Refuse;
            }
            break Accept;
        }
        assert!(Instant::now() < deadline, "neither listening nor exited after 3 s");
        std::thread::sleep(Duration::from_millis(20));
    };
    // SAFETY: kill(2) of the process group we made for this child.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    let out = child.wait_with_output().unwrap();
    Outcome { verdict, code: out.status.code(), stderr: String::from_utf8_lossy(&out.stderr).into_owned() }
}

fn run(bin: &Path, line: &Line, tag: &str, user: Option<&userns::TestUser>) -> Outcome {
    let dir = tempfile::Builder::new().prefix(&format!("cli-compat-{tag}")).tempdir().unwrap();
    let child = start(bin, line.args, dir.path(), user);
    judge(child, dir.path(), !line.args.contains("{fd}"))
}

#[test]
fn test_cli_compat_table_against_virtiofsd() {
    compare(LINES, None);
}

/// The same comparison run as an unprivileged user (both daemons build their sandbox in a user
/// namespace there).
#[test]
fn test_cli_compat_unprivileged_table_against_virtiofsd() {
    compare(UNPRIVILEGED_LINES, Some(&userns::test_user()));
}

fn compare(lines: &[Line], user: Option<&userns::TestUser>) {
    // An unprivileged user may not reach /root/.cargo/bin: it runs a copy.
    let copy = tempfile::Builder::new().prefix("cli-compat-bin").tempdir().unwrap();
    let theirs_bin = virtiofsd().map(|b| match user {
        Some(_) => {
            std::fs::set_permissions(copy.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
            let to = copy.path().join("virtiofsd");
            std::fs::copy(&b, &to).unwrap();
            to
        }
        None => b,
    });
    match &theirs_bin {
        Some(p) => eprintln!("comparing with {}", p.display()),
        None => eprintln!("virtiofsd is not installed: checking phoenixfsd's column only"),
    }
    let mut failures = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let ours = std::thread::scope(|s| {
            let theirs = theirs_bin.as_ref().map(|b| s.spawn(move || run(b, l, &format!("{i}-v"), user)));
            let ours = run(Path::new(BIN), l, &format!("{i}-p"), user);
            if let Some(theirs) = theirs {
                let theirs = theirs.join().unwrap();
                if theirs.verdict != l.theirs {
                    failures.push(format!(
                        "{}: virtiofsd {:?}, the table says {:?} (exit {:?}): {}",
                        l.source, theirs.verdict, l.theirs, theirs.code, theirs.stderr
                    ));
                }
            }
            ours
        });
        eprintln!("{:<45} phoenixfsd {:?} / virtiofsd {:?}", l.source, ours.verdict, l.theirs);
        if ours.verdict != l.ours {
            failures.push(format!(
                "{}: phoenixfsd {:?}, the table says {:?} (exit {:?}): {}",
                l.source, ours.verdict, l.ours, ours.code, ours.stderr
            ));
        }
        if ours.verdict == Refuse && l.ours == Refuse && (ours.code != Some(2) || !ours.stderr.contains(l.note)) {
            failures.push(format!(
                "{}: a refusal exits 2 naming {:?}; got exit {:?}: {}",
                l.source, l.note, ours.code, ours.stderr
            ));
        }
        if l.ours != l.theirs && l.note.is_empty() {
            failures.push(format!("{}: a difference must say why", l.source));
        }
    }
    assert!(failures.is_empty(), "{} lines disagree:\n{}", failures.len(), failures.join("\n"));
}
