//! What the honoured virtiofsd options do, seen through real mounts (/dev/fuse, and over
//! vhost-user through the test bridge where the option reaches the engine): --readonly,
//! --xattrmap and --translate-uid/gid (each with a crash on its path), --preserve-noatime,
//! --allow-mmap, -o source=,
//! and the operator's side of logging: --log-level, --syslog (and its fallback), no ANSI colour
//! when stderr is not a terminal. docs/compat.md points here.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::sys::{self as s, R};
use common::{Mount, Transport};

const BOTH: [Transport; 2] = [Transport::Fuse, Transport::VhostUser];

fn share_with_a_file(m: &Mount) {
    std::fs::write(m.share.join("f"), b"hello").unwrap();
    std::fs::create_dir(m.share.join("d")).unwrap();
}

fn errno_of<T: std::fmt::Debug>(what: &str, r: R<T>) -> i32 {
    match r {
        Err(e) => e,
        Ok(v) => panic!("{what}: succeeded ({v:?}) where it should fail"),
    }
}

// ---- --readonly ----

#[test]
fn test_readonly_refuses_every_change_and_serves_reads() {
    for t in BOTH {
        // Made read-only after the files exist: start on an empty share, fill it from the host.
        let m = Mount::new_on(t, &["--readonly", "--xattr"]);
        share_with_a_file(&m);
        let (f, d) = (m.path("f"), m.path("d"));
        let fd = s::open(&f, libc::O_RDONLY, 0).unwrap();
        assert_eq!(s::pread_all(fd).unwrap(), b"hello", "{t:?}: reads are served");
        s::close(fd).unwrap();
        assert_eq!(s::readdir(&m.mnt).unwrap().len(), 2, "{t:?}: directories are listed");
        let refused: Vec<(&str, i32)> = vec![
            ("open O_WRONLY", errno_of("open", s::open(&f, libc::O_WRONLY, 0))),
            ("open O_RDWR", errno_of("open", s::open(&f, libc::O_RDWR, 0))),
            ("open O_RDONLY|O_TRUNC", errno_of("open", s::open(&f, libc::O_RDONLY | libc::O_TRUNC, 0))),
            ("create", errno_of("create", s::open(&m.path("new"), libc::O_CREAT | libc::O_WRONLY, 0o644))),
            ("mkdir", errno_of("mkdir", s::mkdir(&m.path("nd"), 0o755))),
            ("unlink", errno_of("unlink", s::unlink(&f))),
            ("rmdir", errno_of("rmdir", s::rmdir(&d))),
            ("rename", errno_of("rename", s::rename(&f, &m.path("g")))),
            ("link", errno_of("link", s::link(&f, &m.path("g")))),
            ("truncate", errno_of("truncate", s::truncate(&f, 0))),
            ("setxattr", errno_of("setxattr", s::setxattr(&f, None, "user.a", b"1", 0))),
            ("chmod", {
                let c = s::cs(&f);
                // SAFETY: a NUL-terminated path.
                errno_of("chmod", s::chk(unsafe { libc::chmod(c.as_ptr(), 0o600) } as i64))
            }),
            ("symlink", {
                let (a, b) = (s::cs(Path::new("f")), s::cs(&m.path("sl")));
                // SAFETY: NUL-terminated paths.
                errno_of("symlink", s::chk(unsafe { libc::symlink(a.as_ptr(), b.as_ptr()) } as i64))
            }),
        ];
        for (what, e) in refused {
            assert_eq!(e, libc::EROFS, "{t:?}: {what} gives {e}, not EROFS");
        }
        assert_eq!(std::fs::read(m.share.join("f")).unwrap(), b"hello", "{t:?}: the host file is untouched");
        assert_eq!(std::fs::read_dir(&m.share).unwrap().count(), 2, "{t:?}: nothing was created");
    }
}

// ---- --xattrmap ----

const MAP: &str = "--xattrmap=:map::user.virtiofs.:";

fn host_names(p: &Path) -> Vec<String> {
    s::listxattr(p, None).unwrap().into_iter().filter(|n| n.starts_with("user.")).collect()
}

#[test]
fn test_xattrmap_names_land_mapped_on_the_host_and_listing_unmaps() {
    for t in BOTH {
        let m = Mount::new_on(t, &["--xattr", MAP]);
        share_with_a_file(&m);
        let (f, hf) = (m.path("f"), m.share.join("f"));
        s::setxattr(&f, None, "user.a", b"1", 0).unwrap();
        assert_eq!(host_names(&hf), ["user.virtiofs.user.a"], "{t:?}: stored under the mapped name");
        assert_eq!(s::getxattr(&hf, None, "user.virtiofs.user.a").unwrap(), b"1");
        assert_eq!(s::getxattr(&f, None, "user.a").unwrap(), b"1", "{t:?}: read back by the guest's name");
        // A host name outside the map is hidden from the guest and out of its reach.
        s::setxattr(&hf, None, "user.host_only", b"h", 0).unwrap();
        assert_eq!(s::listxattr(&f, None).unwrap(), ["user.a"], "{t:?}: listxattr hides and unmaps");
        assert_eq!(s::getxattr(&f, None, "user.host_only"), Err(libc::ENODATA), "{t:?}");
        s::removexattr(&f, None, "user.a").unwrap();
        assert_eq!(host_names(&hf), ["user.host_only"], "{t:?}: removed under the mapped name");
        assert_eq!(s::listxattr(&f, None).unwrap(), Vec::<String>::new(), "{t:?}");
    }
}

#[test]
fn test_xattrmap_bad_and_unsupported_rules_refuse() {
    let m = Mount::new(&["--xattr", "--xattrmap=/ok/client/user.// /unsupported/client/trusted.// /bad/all/// "]);
    share_with_a_file(&m);
    let f = m.path("f");
    s::setxattr(&f, None, "user.ok", b"1", 0).unwrap();
    assert_eq!(s::setxattr(&f, None, "trusted.x", b"1", 0), Err(libc::EOPNOTSUPP));
    assert_eq!(s::setxattr(&f, None, "security.x", b"1", 0), Err(libc::EPERM));
    // No server rule but `bad all` (prepend ""): every host name is hidden.
    assert_eq!(s::listxattr(&f, None).unwrap(), Vec::<String>::new());
}

/// A crash right after the host call of a mapped SETXATTR (XATTR_CREATE) and of a mapped
/// REMOVEXATTR: the replay maps to the same host name and knows the call was its own, so the
/// guest sees success once, and the host has the mapped name exactly as asked.
#[test]
fn test_xattrmap_crash_after_the_host_call_replays_exactly_once() {
    for t in BOTH {
        for marker in ["setxattr.after_syscall", "removexattr.after_syscall"] {
            let tmp = tempfile::tempdir().unwrap();
            let (share, mnt, arm) = (tmp.path().join("share"), tmp.path().join("mnt"), tmp.path().join("arm"));
            std::fs::create_dir(&share).unwrap();
            std::fs::create_dir(&mnt).unwrap();
            std::fs::write(share.join("f"), b"x").unwrap();
            if marker.starts_with("remove") {
                s::setxattr(&share.join("f"), None, "user.virtiofs.user.a", b"1", 0).unwrap();
            }
            let env = [("PHOENIXFS_CRASH_AT", marker), ("PHOENIXFS_CRASH_ARM", arm.to_str().unwrap())];
            let m = Mount::start_on(t, &share, &mnt, &["--xattr", MAP], &env);
            std::fs::write(&arm, b"").unwrap();
            let f = m.path("f");
            if marker.starts_with("set") {
                assert_eq!(s::setxattr(&f, None, "user.a", b"1", libc::XATTR_CREATE), Ok(()), "{t:?} {marker}");
                assert!(!arm.exists(), "{t:?} {marker}: the worker did not crash there");
                assert_eq!(s::setxattr(&f, None, "user.a", b"2", libc::XATTR_CREATE), Err(libc::EEXIST));
                assert_eq!(host_names(&share.join("f")), ["user.virtiofs.user.a"], "{t:?}");
                assert_eq!(s::getxattr(&share.join("f"), None, "user.virtiofs.user.a").unwrap(), b"1");
            } else {
                assert_eq!(s::removexattr(&f, None, "user.a"), Ok(()), "{t:?} {marker}");
                assert!(!arm.exists(), "{t:?} {marker}: the worker did not crash there");
                assert_eq!(s::removexattr(&f, None, "user.a"), Err(libc::ENODATA));
                assert_eq!(host_names(&share.join("f")), Vec::<String>::new(), "{t:?}");
            }
        }
    }
}

// ---- --preserve-noatime ----

/// atime of the host file after a read through the mount with O_NOATIME. The atime starts a
/// year before the mtime, so relatime would update it on any read that does not carry
/// O_NOATIME to the host.
fn atime_after_noatime_read(extra: &[&str]) -> (i64, i64) {
    let mut args = vec!["--cache=never"];
    args.extend_from_slice(extra);
    let m = Mount::new(&args);
    let hf = m.share.join("f");
    std::fs::write(&hf, b"data").unwrap();
    let old = libc::timespec { tv_sec: 1_000_000_000, tv_nsec: 0 };
    let keep = libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT };
    let c = s::cs(&hf);
    // SAFETY: a NUL-terminated path and a two-element timespec array.
    assert_eq!(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), [old, keep].as_ptr(), 0) }, 0);
    let fd = s::open(&m.path("f"), libc::O_RDONLY | libc::O_NOATIME, 0).unwrap();
    assert_eq!(s::pread_all(fd).unwrap(), b"data");
    s::close(fd).unwrap();
    (s::lstat(&hf).unwrap().st_atime, old.tv_sec)
}

#[test]
fn test_preserve_noatime_keeps_the_guests_o_noatime() {
    let (atime, old) = atime_after_noatime_read(&[]);
    assert!(atime > old, "by default O_NOATIME is dropped and the host read updates atime");
    let (atime, old) = atime_after_noatime_read(&["--preserve-noatime"]);
    assert_eq!(atime, old, "--preserve-noatime: the host read carries O_NOATIME");
}

// ---- --allow-mmap ----

fn mmap_shared(p: &Path) -> R<Vec<u8>> {
    let fd = s::open(p, libc::O_RDONLY, 0)?;
    // SAFETY: a fresh shared read-only mapping of 4 bytes of an open file, unmapped below.
    let addr = unsafe { libc::mmap(std::ptr::null_mut(), 4, libc::PROT_READ, libc::MAP_SHARED, fd, 0) };
    let r = if addr == libc::MAP_FAILED {
        Err(s::errno())
    } else {
        // SAFETY: the mapping is 4 readable bytes.
        let v = unsafe { std::slice::from_raw_parts(addr as *const u8, 4) }.to_vec();
        // SAFETY: unmaps the mapping made above.
        unsafe { libc::munmap(addr, 4) };
        Ok(v)
    };
    s::close(fd)?;
    r
}

#[test]
fn test_allow_mmap_lets_cache_never_files_be_mapped_shared() {
    for t in BOTH {
        let m = Mount::new_on(t, &["--cache=never"]);
        std::fs::write(m.share.join("f"), b"mmap").unwrap();
        assert_eq!(mmap_shared(&m.path("f")), Err(libc::ENODEV), "{t:?}: direct I/O files refuse shared mmap");
        drop(m);
        let m = Mount::new_on(t, &["--cache=never", "--allow-mmap"]);
        std::fs::write(m.share.join("f"), b"mmap").unwrap();
        assert_eq!(mmap_shared(&m.path("f")), Ok(b"mmap".to_vec()), "{t:?}: FUSE_DIRECT_IO_ALLOW_MMAP");
    }
}

// ---- the daemon's own start-up: -o source=, logging ----

/// A phoenixfsd on a fresh share and mount point, with stderr captured; stopped (SIGTERM) when
/// `body` returns. Returns what it wrote on stderr.
fn with_daemon(args: &[&str], env: &[(&str, &str)], shared_dir_flag: bool, body: impl FnOnce(&Path, &Path)) -> String {
    common::require_fuse();
    let tmp = tempfile::tempdir().unwrap();
    let (share, mnt) = (tmp.path().join("share"), tmp.path().join("mnt"));
    std::fs::create_dir(&share).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    std::fs::write(share.join("hello"), b"hi").unwrap();
    let log = tmp.path().join("stderr");
    let mut cmd = Command::new(common::BIN);
    if shared_dir_flag {
        cmd.arg("--shared-dir").arg(&share);
    }
    let args: Vec<String> = args.iter().map(|a| a.replace("{share}", share.to_str().unwrap())).collect();
    let mut child = cmd
        .arg("--mountpoint")
        .arg(&mnt)
        .args(&args)
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !common::is_mounted(&mnt) {
        assert!(child.try_wait().unwrap().is_none(), "phoenixfsd exited: {}", std::fs::read_to_string(&log).unwrap());
        assert!(Instant::now() < deadline, "not mounted in 20 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    body(&share, &mnt);
    // SAFETY: kill(2) of our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    std::fs::read_to_string(&log).unwrap()
}

#[test]
fn test_legacy_o_source_serves_that_directory() {
    with_daemon(&["-o", "source={share},cache=none,no_posix_lock", "-f"], &[], false, |_, mnt| {
        assert_eq!(std::fs::read(mnt.join("hello")).unwrap(), b"hi");
    });
}

#[test]
fn test_log_level_and_no_colour_off_a_terminal() {
    let debug = with_daemon(&["--log-level=debug"], &[], true, |_, mnt| {
        let _ = std::fs::read(mnt.join("hello"));
    });
    assert!(debug.contains("DEBUG"), "--log-level=debug logs debug lines: {debug}");
    assert!(!debug.contains('\x1b'), "no ANSI escapes when stderr is a file: {debug:?}");
    let quiet = with_daemon(&["-o", "loglevel=err"], &[], true, |_, _| {});
    assert!(!quiet.contains("INFO") && !quiet.contains("serving"), "-o loglevel=err hides info lines: {quiet}");
    let info = with_daemon(&[], &[], true, |_, _| {});
    assert!(info.contains("INFO") && info.contains("serving"), "info is the default: {info}");
}

#[test]
fn test_syslog_sends_each_line_to_the_syslog_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("log.sock");
    let syslogd = UnixDatagram::bind(&path).unwrap();
    syslogd.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let stderr = with_daemon(&["--syslog"], &[("PHOENIXFS_SYSLOG_SOCKET", path.to_str().unwrap())], true, |_, mnt| {
        assert_eq!(std::fs::read(mnt.join("hello")).unwrap(), b"hi");
    });
    let mut lines = Vec::new();
    syslogd.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut buf = [0; 4096];
    while let Ok(n) = syslogd.recv(&mut buf) {
        lines.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    // LOG_DAEMON (3) * 8 + LOG_INFO (6) = 30.
    assert!(
        lines.iter().any(|l| l.starts_with("<30>phoenixfsd[") && l.contains("serving")),
        "an info line in the local syslog format: {lines:?}"
    );
    assert!(lines.iter().all(|l| !l.contains('\x1b') && !l.ends_with('\n')), "{lines:?}");
    assert!(!stderr.contains("serving"), "nothing logged on stderr: {stderr}");
}

#[test]
fn test_syslog_without_a_socket_says_so_and_logs_to_stderr() {
    let env = [("PHOENIXFS_SYSLOG_SOCKET", "/nonexistent/phoenixfs-log.sock")];
    let stderr = with_daemon(&["--syslog"], &env, true, |_, _| {});
    assert!(stderr.contains("cannot reach the syslog socket /nonexistent/phoenixfs-log.sock"), "{stderr}");
    assert!(stderr.contains("serving"), "the log goes on on stderr: {stderr}");
}

// ---- --translate-uid / --translate-gid ----

const MAP_ROOT_TO_1001: [&str; 2] = ["--translate-uid=map:0:1001:1", "--translate-gid=map:0:1001:1"];

fn owner(p: &Path) -> (u32, u32) {
    let st = s::lstat(p).unwrap();
    (st.st_uid, st.st_gid)
}

fn chown(p: &Path, uid: u32) -> R<()> {
    let c = s::cs(p);
    // SAFETY: a NUL-terminated path.
    s::chk(unsafe { libc::chown(c.as_ptr(), uid, u32::MAX) } as i64).map(drop)
}

#[test]
fn test_translate_ids_creates_as_the_host_id_and_shows_the_guest_id() {
    for t in BOTH {
        let m = Mount::new_on(t, &MAP_ROOT_TO_1001);
        // The host id 1001 must be able to create in the share's root.
        std::fs::set_permissions(&m.share, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let fd = s::open(&m.path("f"), libc::O_CREAT | libc::O_WRONLY, 0o644).unwrap();
        s::close(fd).unwrap();
        s::mkdir(&m.path("d"), 0o755).unwrap();
        for name in ["f", "d"] {
            assert_eq!(owner(&m.share.join(name)), (1001, 1001), "{t:?}: {name} is the host's 1001");
            assert_eq!(owner(&m.path(name)), (0, 0), "{t:?}: {name} shows as the guest's root");
        }
        // The guest's root acts as the host's 1001, which may not give files away.
        assert_eq!(chown(&m.path("f"), 5), Err(libc::EPERM), "{t:?}");
        // A host file owned by an id no entry covers shows as itself.
        std::fs::write(m.share.join("h"), b"").unwrap();
        std::os::unix::fs::chown(m.share.join("h"), Some(42), Some(43)).unwrap();
        assert_eq!(owner(&m.path("h")), (42, 43), "{t:?}");
    }
}

#[test]
fn test_translate_ids_setattr_maps_and_forbids_the_new_owner() {
    for t in BOTH {
        let m = Mount::new_on(t, &["--translate-uid=forbid-guest:2000:10", "--translate-uid=guest:7:1007:1"]);
        std::fs::write(m.share.join("f"), b"").unwrap();
        assert_eq!(chown(&m.path("f"), 2005), Err(libc::EPERM), "{t:?}: forbid-guest refuses the owner");
        chown(&m.path("f"), 7).unwrap();
        assert_eq!(owner(&m.share.join("f")).0, 1007, "{t:?}: guest 7 is host 1007");
        assert_eq!(owner(&m.path("f")).0, 1007, "{t:?}: guest: is one-way, the host's 1007 shows unchanged");
    }
}

/// A crash right after the host mkdir made as the translated id: the replay knows the mkdir
/// was its own, the guest sees one success, the host one directory owned by the host id.
#[test]
fn test_translate_ids_crash_after_mkdir_replays_exactly_once() {
    for t in BOTH {
        let tmp = tempfile::tempdir().unwrap();
        let (share, mnt, arm) = (tmp.path().join("share"), tmp.path().join("mnt"), tmp.path().join("arm"));
        std::fs::create_dir(&share).unwrap();
        std::fs::create_dir(&mnt).unwrap();
        // The crash point removes its arm file as the thread's current (host 1001) identity.
        for d in [tmp.path(), &share] {
            std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        }
        let env = [("PHOENIXFS_CRASH_AT", "mkdir.after_syscall"), ("PHOENIXFS_CRASH_ARM", arm.to_str().unwrap())];
        let m = Mount::start_on(t, &share, &mnt, &MAP_ROOT_TO_1001, &env);
        std::fs::write(&arm, b"").unwrap();
        assert_eq!(s::mkdir(&m.path("d"), 0o755), Ok(()), "{t:?}");
        assert!(!arm.exists(), "{t:?}: the worker did not crash there");
        assert_eq!(s::mkdir(&m.path("d"), 0o755), Err(libc::EEXIST), "{t:?}");
        assert_eq!(owner(&share.join("d")), (1001, 1001), "{t:?}");
        assert_eq!(owner(&m.path("d")), (0, 0), "{t:?}");
        assert_eq!(std::fs::read_dir(&share).unwrap().count(), 1, "{t:?}");
    }
}

// ---- packaging: the systemd unit's own command line, socket-activated ----

/// systemd-socket-activate plays systemd: it listens on the socket, and at the first connection
/// starts the unit's ExecStart line with the listening socket as fd 3. The bridge then mounts
/// through it and a file of the share is read over vhost-user.
#[test]
fn test_systemd_unit_socket_activation_serves() {
    common::require_fuse();
    let Some(activate) = ["/usr/bin/systemd-socket-activate", "/bin/systemd-socket-activate"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
    else {
        eprintln!("systemd-socket-activate is not installed: skipped");
        return;
    };
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/phoenixfsd@.service")).unwrap();
    let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("the unit has an ExecStart line");
    let tmp = tempfile::tempdir().unwrap();
    let (share, mnt, sock) = (tmp.path().join("share"), tmp.path().join("mnt"), tmp.path().join("fs.sock"));
    std::fs::create_dir(&share).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    std::fs::write(share.join("hello"), b"activated").unwrap();
    let mut argv = exec.split_whitespace().map(|a| a.replace("/srv/virtiofs/%i", share.to_str().unwrap()));
    assert_eq!(argv.next().as_deref(), Some("/usr/bin/phoenixfsd"));
    let mut child =
        Command::new(activate).arg("-l").arg(&sock).arg(common::BIN).args(argv).stdin(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "systemd-socket-activate did not listen");
        std::thread::sleep(Duration::from_millis(10));
    }
    let bridge = common::bridge::Bridge::mount(&sock, &mnt, 2, Default::default()).expect("bridge through the unit");
    assert_eq!(std::fs::read(mnt.join("hello")).unwrap(), b"activated");
    assert_eq!(bridge.unmount(), 0);
    // The daemon exits by itself when its frontend goes, as virtiofsd does.
    let status = common::proc::wait_for_exit(&mut child, Duration::from_secs(20)).expect("phoenixfsd exits");
    assert!(status.success(), "{status}");
}

// ---- options that shape the FUSE session: what INIT agreed to ----

const WRITEBACK_CACHE: u64 = 1 << 16;
const DO_READDIRPLUS: u64 = 1 << 13;
const AUTO_INVAL_DATA: u64 = 1 << 12;
const POSIX_LOCKS: u64 = 1 << 1;
const FLOCK_LOCKS: u64 = 1 << 10;
const HANDLE_KILLPRIV_V2: u64 = 1 << 28;
const DIRECT_IO_ALLOW_MMAP: u64 = 1 << 36;
const SECURITY_CTX: u64 = 1 << 32;

/// The flags INIT agreed to, from the daemon's "FUSE session initialised" log line.
fn negotiated(args: &[&str]) -> u64 {
    let log = with_daemon(args, &[], true, |_, mnt| {
        let _ = std::fs::read_dir(mnt).unwrap().count();
    });
    let line = log.lines().find(|l| l.contains("FUSE session initialised")).unwrap_or_else(|| panic!("{log}"));
    let hex = line.split("flags=\"0x").nth(1).and_then(|r| r.split('"').next()).unwrap();
    u64::from_str_radix(hex, 16).unwrap()
}

#[test]
fn test_session_flags_follow_the_options() {
    let default = negotiated(&[]);
    assert_eq!(default & WRITEBACK_CACHE, 0);
    assert_ne!(default & DO_READDIRPLUS, 0, "readdirplus by default");
    assert_ne!(default & AUTO_INVAL_DATA, 0, "--cache=auto");
    assert_ne!(default & HANDLE_KILLPRIV_V2, 0, "killpriv_v2 by default (unlike virtiofsd)");
    assert_eq!(default & (POSIX_LOCKS | FLOCK_LOCKS | DIRECT_IO_ALLOW_MMAP), 0);
    assert_ne!(negotiated(&["--writeback"]) & WRITEBACK_CACHE, 0, "--writeback");
    assert_eq!(negotiated(&["--no-readdirplus"]) & DO_READDIRPLUS, 0, "--no-readdirplus");
    let never = negotiated(&["--cache=never"]);
    assert_eq!(never & (DO_READDIRPLUS | AUTO_INVAL_DATA), 0, "--cache=never: no readdirplus, no auto-inval");
    let locks = negotiated(&["-o", "posix_lock,flock"]);
    assert_eq!(locks & (POSIX_LOCKS | FLOCK_LOCKS), POSIX_LOCKS | FLOCK_LOCKS, "-o posix_lock,flock");
    assert_eq!(negotiated(&["--no-killpriv-v2"]) & HANDLE_KILLPRIV_V2, 0, "--no-killpriv-v2");
    assert_eq!(negotiated(&["--xattr", MAP]) & HANDLE_KILLPRIV_V2, 0, "a map that renames security.capability");
    assert_ne!(negotiated(&["--cache=metadata", "--allow-mmap"]) & DIRECT_IO_ALLOW_MMAP, 0, "--allow-mmap");
    assert_eq!(default & SECURITY_CTX, 0);
    // This kernel offers SECURITY_CTX (it has no LSM that labels, so no label ever comes:
    // tests/security_label.rs plays such a kernel).
    assert_ne!(negotiated(&["--security-label=auto"]) & SECURITY_CTX, 0, "--security-label");
}

/// The open flags of the (non-O_PATH) fd the daemon holds for the file `path` (from the
/// supervisor's fdinfo: it shares the worker's fd table). Matched by inode: in a sandbox the
/// daemon's paths are not the host's.
fn host_open_flags(supervisor: u32, path: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let want = std::fs::metadata(path).ok()?;
    for e in std::fs::read_dir(format!("/proc/{supervisor}/fd")).ok()? {
        let e = e.ok()?;
        if std::fs::metadata(e.path()).is_ok_and(|m| (m.dev(), m.ino()) == (want.dev(), want.ino())) {
            let info =
                std::fs::read_to_string(format!("/proc/{supervisor}/fdinfo/{}", e.file_name().to_str()?)).ok()?;
            let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?.trim();
            let flags = u32::from_str_radix(flags, 8).ok()?;
            if flags & libc::O_PATH as u32 == 0 {
                return Some(flags);
            }
        }
    }
    None
}

#[test]
fn test_allow_direct_io_passes_o_direct_to_the_host() {
    for (args, direct) in [(&[][..], false), (&["--allow-direct-io"][..], true)] {
        let m = Mount::new(args);
        std::fs::write(m.share.join("f"), vec![7u8; 4096]).unwrap();
        let fd = s::open(&m.path("f"), libc::O_RDONLY | libc::O_DIRECT, 0).unwrap();
        let flags = host_open_flags(m.supervisor(), &m.share.join("f")).expect("the host fd");
        assert_eq!(flags & libc::O_DIRECT as u32 != 0, direct, "{args:?}: host flags {flags:o}");
        s::close(fd).unwrap();
    }
}

#[test]
fn test_socket_group_owns_the_socket() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("vfs.sock");
    let mut child = Command::new(common::BIN)
        .arg("--shared-dir")
        .arg(tmp.path())
        .arg("--socket-path")
        .arg(&sock)
        .args(["--socket-group", "daemon", "--log-level=error"])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline && child.try_wait().unwrap().is_none(), "no socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The group is given just after the socket is made.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut gid = std::fs::metadata(&sock).unwrap().gid();
    while gid != 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        gid = std::fs::metadata(&sock).unwrap().gid();
    }
    // SAFETY: kill(2) of our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
    assert_eq!(gid, 1, "the group named by --socket-group (daemon, gid 1)");
}

// ---- --tag: the config space over vhost-user ----

/// The protocol features offered, and with `--tag` the config space a frontend reads.
fn config_space(args: &[&str]) -> (bool, Option<Vec<u8>>) {
    use vhost::VhostBackend;
    use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures as P};
    use vhost::vhost_user::{Frontend as VuFrontend, VhostUserFrontend};
    let b = common::backend::Backend::start(args);
    let mut vu = VuFrontend::connect(b.socket(), 2).unwrap();
    vu.set_owner().unwrap();
    vu.get_features().unwrap();
    let offered = vu.get_protocol_features().unwrap();
    let config = offered.contains(P::CONFIG);
    vu.set_protocol_features(offered & (P::MQ | P::CONFIG)).unwrap();
    let space = config.then(|| vu.get_config(0, 40, VhostUserConfigFlags::empty(), &[0; 40]).unwrap().1);
    (config, space)
}

#[test]
fn test_tag_is_offered_in_the_config_space() {
    let (offered, space) = config_space(&["--tag=myfs", "--thread-pool-size=3"]);
    assert!(offered, "--tag offers VHOST_USER_PROTOCOL_F_CONFIG");
    let space = space.unwrap();
    let mut tag = [0u8; 36];
    tag[..4].copy_from_slice(b"myfs");
    assert_eq!(&space[..36], &tag, "the tag, NUL-padded");
    assert_eq!(u32::from_le_bytes(space[36..40].try_into().unwrap()), 3, "num_request_queues");
    let (offered, _) = config_space(&[]);
    assert!(!offered, "no tag, no CONFIG: the frontend keeps the config space");
}
