//! Crash-point enumeration (DESIGN §6, §10 tier 2): for every state-changing operation and every
//! crash point it passes, run it on a mount whose worker is SIGKILLed at that very point, let
//! recovery and replay run, and check the outcome against the same operation on a plain
//! directory (the model of a crash-free run):
//!
//! 1. exactly one reply, the one a crash-free run gives (the operation's results are equal);
//! 2. the effect happened exactly once (the share's tree equals the model's tree);
//! 3. node ids and handles stay valid (the operation goes on using its fds and names after the
//!    crash, and everything is stat'ed again through the mount);
//! 4. lookup counts are exact and no fd leaks: after the kernel forgets everything, the
//!    supervisor's fd table is back to its size right after mounting (a count raised twice keeps
//!    an fd open; one raised too little would have made step 3 fail with ESTALE);
//! 5. locks taken through the daemon are still held (the lock scenario checks from a second
//!    open file after the crash).
//!
//! Needs a build with `--features crash-points` (scripts/test.sh builds so); otherwise every
//! case fails with "crash point never reached".

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::sys::cs;
use common::{Mount, Transport, children_of, drop_caches};
use phoenixfsd::fuse::abi::Opcode;

/// What one step of an action gave: its value or its errno, as text.
type Outcome = Vec<String>;

/// The last call's errno, by name.
fn errno() -> String {
    common::errno::name(common::sys::errno())
}

/// Runs a libc call returning an int and records the result (or errno).
fn rec(out: &mut Outcome, what: &str, r: i64) -> i64 {
    out.push(if r < 0 { format!("{what}: {}", errno()) } else { format!("{what}: ok") });
    r
}

fn stat_line(p: &Path) -> String {
    match std::fs::symlink_metadata(p) {
        Ok(m) => format!(
            "{:?} mode {:o} nlink {} size {} uid {}",
            m.file_type(),
            m.permissions().mode(),
            m.nlink(),
            if m.is_dir() { 0 } else { m.size() },
            m.uid()
        ),
        Err(e) => format!("err {:?}", e.raw_os_error()),
    }
}

fn open(p: &Path, flags: i32, mode: u32) -> i32 {
    // SAFETY: valid C string.
    unsafe { libc::open(cs(p).as_ptr(), flags | libc::O_CLOEXEC, mode) }
}

fn close(fd: i32) {
    // SAFETY: closing our own fd.
    unsafe { libc::close(fd) };
}

fn read_all(fd: i32) -> String {
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid buffer.
    let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 { errno() } else { String::from_utf8_lossy(&buf[..n as usize]).into_owned() }
}

fn write_at(fd: i32, data: &[u8], off: i64) -> i64 {
    // SAFETY: valid buffer.
    unsafe { libc::pwrite(fd, data.as_ptr().cast(), data.len(), off) as i64 }
}

fn ofd_lock(fd: i32, typ: i32, cmd: i32) -> i64 {
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = typ as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    // SAFETY: valid flock.
    unsafe { libc::fcntl(fd, cmd, &mut fl) as i64 }
}

/// One operation under test: how to lay out its world (directly on the directory, before any
/// mount), what to do (through the path given), and the crash points it passes.
struct Scenario {
    name: &'static str,
    markers: &'static [&'static str],
    setup: fn(&Path),
    action: fn(&Path) -> Outcome,
}

fn file(root: &Path, name: &str, content: &str) {
    std::fs::write(root.join(name), content).unwrap();
}

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "lookup",
            markers: &["raise.new_pending", "raise.new_published", "reply.before_send"],
            setup: |r| {
                std::fs::create_dir(r.join("d")).unwrap();
                file(r, "d/f", "hello");
            },
            action: |r| vec![stat_line(&r.join("d/f")), std::fs::read_to_string(r.join("d/f")).unwrap_or_default()],
        },
        Scenario {
            name: "lookup of a second name",
            markers: &["raise.pending", "raise.applied"],
            setup: |r| {
                file(r, "f", "x");
                std::fs::hard_link(r.join("f"), r.join("g")).unwrap();
            },
            action: |r| vec![stat_line(&r.join("f")), stat_line(&r.join("g"))],
        },
        Scenario {
            name: "readdirplus",
            markers: &["raise.new_pending", "raise.new_published"],
            setup: |r| {
                std::fs::create_dir(r.join("d")).unwrap();
                for i in 0..20 {
                    file(r, &format!("d/e{i}"), "z");
                }
            },
            action: |r| {
                let mut names: Vec<String> = std::fs::read_dir(r.join("d"))
                    .unwrap()
                    .map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect();
                names.sort();
                let sizes = names.iter().map(|n| stat_line(&r.join("d").join(n))).collect::<Vec<_>>();
                vec![names.join(","), sizes.join(";")]
            },
        },
        Scenario {
            name: "mkdir",
            markers: &["mkdir.before_syscall", "mkdir.after_syscall", "reply.before_send"],
            setup: |_| {},
            action: |r| {
                let mut o = vec![];
                // SAFETY: valid C string.
                rec(&mut o, "mkdir", unsafe { libc::mkdir(cs(&r.join("d")).as_ptr(), 0o750) } as i64);
                rec(&mut o, "mkdir again", unsafe { libc::mkdir(cs(&r.join("d")).as_ptr(), 0o750) } as i64);
                o.push(stat_line(&r.join("d")));
                o
            },
        },
        Scenario {
            name: "mknod",
            markers: &["mknod.before_syscall", "mknod.after_syscall"],
            setup: |_| {},
            action: |r| {
                let mut o = vec![];
                // SAFETY: valid C string.
                rec(&mut o, "mkfifo", unsafe { libc::mkfifo(cs(&r.join("p")).as_ptr(), 0o640) } as i64);
                o.push(stat_line(&r.join("p")));
                o
            },
        },
        Scenario {
            name: "symlink",
            markers: &["symlink.before_syscall", "symlink.after_syscall"],
            setup: |_| {},
            action: |r| {
                let mut o = vec![];
                let t = CString::new("target/elsewhere").unwrap();
                // SAFETY: valid C strings.
                rec(&mut o, "symlink", unsafe { libc::symlink(t.as_ptr(), cs(&r.join("l")).as_ptr()) } as i64);
                o.push(format!("{:?}", std::fs::read_link(r.join("l")).ok()));
                o
            },
        },
        Scenario {
            name: "link",
            markers: &["link.before_syscall", "link.after_syscall"],
            setup: |r| file(r, "f", "data"),
            action: |r| {
                let mut o = vec![stat_line(&r.join("f"))];
                // SAFETY: valid C strings.
                rec(&mut o, "link", unsafe { libc::link(cs(&r.join("f")).as_ptr(), cs(&r.join("h")).as_ptr()) } as i64);
                o.push(stat_line(&r.join("h")));
                o.push(stat_line(&r.join("f")));
                o
            },
        },
        Scenario {
            name: "unlink",
            markers: &["unlink.before_syscall", "unlink.after_syscall"],
            setup: |r| file(r, "f", "data"),
            action: |r| {
                let mut o = vec![stat_line(&r.join("f"))];
                // SAFETY: valid C string.
                rec(&mut o, "unlink", unsafe { libc::unlink(cs(&r.join("f")).as_ptr()) } as i64);
                o.push(stat_line(&r.join("f")));
                o
            },
        },
        Scenario {
            name: "unlink while open",
            markers: &["unlink.after_syscall"],
            setup: |r| file(r, "f", "still here"),
            action: |r| {
                let fd = open(&r.join("f"), libc::O_RDWR, 0);
                let mut o = vec![];
                // SAFETY: valid C string.
                rec(&mut o, "unlink", unsafe { libc::unlink(cs(&r.join("f")).as_ptr()) } as i64);
                rec(&mut o, "write via fd", write_at(fd, b" and more", 10));
                o.push(read_all(fd));
                close(fd);
                o
            },
        },
        Scenario {
            name: "rmdir",
            markers: &["rmdir.before_syscall", "rmdir.after_syscall"],
            setup: |r| std::fs::create_dir(r.join("d")).unwrap(),
            action: |r| {
                let mut o = vec![stat_line(&r.join("d"))];
                // SAFETY: valid C string.
                rec(&mut o, "rmdir", unsafe { libc::rmdir(cs(&r.join("d")).as_ptr()) } as i64);
                o.push(stat_line(&r.join("d")));
                o
            },
        },
        Scenario {
            name: "rename over a file",
            markers: &["rename.before_syscall", "rename.after_syscall"],
            setup: |r| {
                file(r, "a", "A");
                file(r, "b", "B");
            },
            action: |r| {
                let mut o = vec![];
                // SAFETY: valid C strings.
                rec(&mut o, "rename", unsafe { libc::rename(cs(&r.join("a")).as_ptr(), cs(&r.join("b")).as_ptr()) }
                    as i64);
                o.push(stat_line(&r.join("a")));
                o.push(std::fs::read_to_string(r.join("b")).unwrap_or_default());
                o
            },
        },
        Scenario {
            name: "rename exchange",
            markers: &["rename.before_syscall", "rename.after_syscall"],
            setup: |r| {
                file(r, "a", "A");
                std::fs::create_dir(r.join("b")).unwrap();
            },
            action: |r| {
                let mut o = vec![];
                // SAFETY: valid C strings.
                let res = unsafe {
                    libc::renameat2(
                        libc::AT_FDCWD,
                        cs(&r.join("a")).as_ptr(),
                        libc::AT_FDCWD,
                        cs(&r.join("b")).as_ptr(),
                        libc::RENAME_EXCHANGE,
                    )
                };
                rec(&mut o, "exchange", res as i64);
                o.push(stat_line(&r.join("a")));
                o.push(stat_line(&r.join("b")));
                o
            },
        },
        Scenario {
            name: "create",
            markers: &["create.before_open", "create.after_open", "handle.pending", "handle.published"],
            setup: |_| {},
            action: |r| {
                let mut o = vec![];
                let fd = open(&r.join("new"), libc::O_CREAT | libc::O_EXCL | libc::O_RDWR, 0o640);
                rec(&mut o, "create", fd as i64);
                rec(&mut o, "write", write_at(fd, b"fresh", 0));
                o.push(read_all(fd));
                close(fd);
                rec(
                    &mut o,
                    "create again",
                    open(&r.join("new"), libc::O_CREAT | libc::O_EXCL | libc::O_RDWR, 0o640) as i64,
                );
                o.push(stat_line(&r.join("new")));
                o
            },
        },
        Scenario {
            name: "tmpfile",
            markers: &["tmpfile.after_open"],
            setup: |_| {},
            action: |r| {
                let mut o = vec![];
                let fd = open(r, libc::O_TMPFILE | libc::O_RDWR, 0o600);
                rec(&mut o, "O_TMPFILE", fd as i64);
                rec(&mut o, "write", write_at(fd, b"anon", 0));
                let src = CString::new(format!("/proc/self/fd/{fd}")).unwrap();
                // SAFETY: valid C strings.
                let res = unsafe {
                    libc::linkat(
                        libc::AT_FDCWD,
                        src.as_ptr(),
                        libc::AT_FDCWD,
                        cs(&r.join("named")).as_ptr(),
                        libc::AT_SYMLINK_FOLLOW,
                    )
                };
                rec(&mut o, "linkat", res as i64);
                close(fd);
                o.push(std::fs::read_to_string(r.join("named")).unwrap_or_default());
                o
            },
        },
        Scenario {
            name: "open",
            markers: &["open.after_open", "handle.pending", "handle.published"],
            setup: |r| file(r, "f", "content"),
            action: |r| {
                let fd = open(&r.join("f"), libc::O_RDWR, 0);
                let mut o = vec![format!("open ok: {}", fd >= 0), read_all(fd)];
                rec(&mut o, "write", write_at(fd, b"C", 0));
                close(fd);
                o.push(std::fs::read_to_string(r.join("f")).unwrap_or_default());
                o
            },
        },
        Scenario {
            name: "opendir",
            markers: &["opendir.after_open", "handle.pending", "handle.published"],
            setup: |r| {
                std::fs::create_dir(r.join("d")).unwrap();
                file(r, "d/x", "1");
            },
            action: |r| {
                let mut names: Vec<String> = std::fs::read_dir(r.join("d"))
                    .unwrap()
                    .map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect();
                names.sort();
                names
            },
        },
        Scenario {
            name: "release",
            markers: &["release.before_retire", "release.after_retire"],
            setup: |r| file(r, "f", "c"),
            action: |r| {
                let fd = open(&r.join("f"), libc::O_RDONLY, 0);
                let o = vec![read_all(fd)];
                close(fd);
                o
            },
        },
        Scenario {
            name: "write",
            markers: &["write.after_pwrite"],
            setup: |r| file(r, "f", "0123456789"),
            action: |r| {
                let fd = open(&r.join("f"), libc::O_RDWR, 0);
                let mut o = vec![];
                rec(&mut o, "pwrite", write_at(fd, b"abc", 4));
                o.push(read_all(fd));
                close(fd);
                o
            },
        },
        Scenario {
            name: "append",
            markers: &["write.before_append", "write.after_append"],
            setup: |r| file(r, "f", "start:"),
            action: |r| {
                let fd = open(&r.join("f"), libc::O_WRONLY | libc::O_APPEND, 0);
                let mut o = vec![];
                // SAFETY: valid buffer.
                rec(&mut o, "append", unsafe { libc::write(fd, b"once".as_ptr().cast(), 4) } as i64);
                close(fd);
                o.push(std::fs::read_to_string(r.join("f")).unwrap_or_default());
                o
            },
        },
        Scenario {
            name: "setattr",
            markers: &["setattr.after_change"],
            setup: |r| file(r, "f", "0123456789"),
            action: |r| {
                let mut o = vec![];
                // SAFETY: valid C string.
                rec(&mut o, "truncate", unsafe { libc::truncate(cs(&r.join("f")).as_ptr(), 4) } as i64);
                rec(&mut o, "chmod", unsafe { libc::chmod(cs(&r.join("f")).as_ptr(), 0o600) } as i64);
                o.push(stat_line(&r.join("f")));
                o
            },
        },
        Scenario {
            name: "setxattr create",
            markers: &["setxattr.before_syscall", "setxattr.after_syscall"],
            setup: |r| file(r, "f", ""),
            action: |r| {
                let mut o = vec![];
                let (n, v) = (CString::new("user.k").unwrap(), b"v1");
                // SAFETY: valid C strings and buffer.
                let set = |flags| unsafe {
                    libc::setxattr(cs(&r.join("f")).as_ptr(), n.as_ptr(), v.as_ptr().cast(), 2, flags)
                };
                rec(&mut o, "setxattr create", set(libc::XATTR_CREATE) as i64);
                rec(&mut o, "setxattr create again", set(libc::XATTR_CREATE) as i64);
                o
            },
        },
        Scenario {
            name: "removexattr",
            markers: &["removexattr.before_syscall", "removexattr.after_syscall"],
            setup: |r| {
                file(r, "f", "");
                let c = cs(&r.join("f"));
                let n = CString::new("user.k").unwrap();
                // SAFETY: valid C strings and buffer.
                unsafe { libc::setxattr(c.as_ptr(), n.as_ptr(), b"v".as_ptr().cast(), 1, 0) };
            },
            action: |r| {
                let mut o = vec![];
                let n = CString::new("user.k").unwrap();
                // SAFETY: valid C strings.
                rec(&mut o, "removexattr", unsafe { libc::removexattr(cs(&r.join("f")).as_ptr(), n.as_ptr()) } as i64);
                rec(&mut o, "removexattr again", unsafe { libc::removexattr(cs(&r.join("f")).as_ptr(), n.as_ptr()) }
                    as i64);
                o
            },
        },
        Scenario {
            name: "fallocate",
            markers: &["fallocate.after_allocate"],
            setup: |r| std::fs::write(r.join("f"), vec![b'a'; 3 * 4096]).unwrap(),
            action: |r| {
                let fd = open(&r.join("f"), libc::O_RDWR, 0);
                let mut o = vec![];
                let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
                // SAFETY: plain syscalls.
                rec(&mut o, "punch", unsafe { libc::fallocate(fd, punch, 4096, 4096) } as i64);
                rec(&mut o, "extend", unsafe { libc::fallocate(fd, 0, 0, 5 * 4096) } as i64);
                let content = read_all(fd);
                o.push(format!("len {} zeros {}", content.len(), content.bytes().filter(|b| *b == 0).count()));
                close(fd);
                o
            },
        },
        Scenario {
            name: "copy_file_range",
            markers: &["copy_file_range.after_copy"],
            setup: |r| {
                file(r, "src", "copy me please");
                file(r, "dst", "..............");
            },
            action: |r| {
                let (a, b) = (open(&r.join("src"), libc::O_RDONLY, 0), open(&r.join("dst"), libc::O_RDWR, 0));
                let mut o = vec![];
                let (mut oi, mut oo) = (0i64, 2i64);
                // SAFETY: valid offsets.
                rec(&mut o, "copy", unsafe { libc::copy_file_range(a, &mut oi, b, &mut oo, 7, 0) } as i64);
                o.push(read_all(b));
                close(a);
                close(b);
                o
            },
        },
        Scenario {
            name: "lock held across the crash",
            markers: &["setlk.after_lock"],
            setup: |r| file(r, "f", "locked"),
            action: |r| {
                let (a, b) = (open(&r.join("f"), libc::O_RDWR, 0), open(&r.join("f"), libc::O_RDWR, 0));
                let mut o = vec![];
                rec(&mut o, "lock fd1", ofd_lock(a, libc::F_WRLCK, libc::F_OFD_SETLK));
                rec(&mut o, "fd2 conflicts", ofd_lock(b, libc::F_WRLCK, libc::F_OFD_SETLK));
                rec(&mut o, "unlock fd1", ofd_lock(a, libc::F_UNLCK, libc::F_OFD_SETLK));
                rec(&mut o, "fd2 now", ofd_lock(b, libc::F_WRLCK, libc::F_OFD_SETLK));
                close(a);
                close(b);
                o
            },
        },
        Scenario {
            name: "close drops process locks",
            markers: &["flush.after_unlock"],
            setup: |r| file(r, "f", "locked"),
            action: |r| {
                let a = open(&r.join("f"), libc::O_RDWR, 0);
                let mut o = vec![];
                rec(&mut o, "posix lock", ofd_lock(a, libc::F_WRLCK, libc::F_SETLK));
                let b = open(&r.join("f"), libc::O_RDONLY, 0);
                close(b); // POSIX: closing any fd of the file drops this process's locks
                let c = open(&r.join("f"), libc::O_RDWR, 0);
                rec(&mut o, "ofd lock after the drop", ofd_lock(c, libc::F_WRLCK, libc::F_OFD_SETLK));
                close(c);
                close(a);
                o
            },
        },
        // FUSE passthrough (over /dev/fuse, where the kernel offers it: the default
        // `--fuse-passthrough=auto`). The open registers the node's backing file; a crash
        // right after the ioctl (the id in no record yet) or after the record leaves an id the
        // next worker must close (the leak check after each case counts the ids registered).
        Scenario {
            name: "passthrough open",
            markers: &["passthrough.after_register", "passthrough.recorded"],
            setup: |r| file(r, "f", "hello"),
            action: |r| {
                let mut o = vec![];
                let fd = open(&r.join("f"), libc::O_RDWR, 0);
                rec(&mut o, "open", fd as i64);
                // SAFETY: valid buffers for the calls.
                rec(&mut o, "pwrite", unsafe { libc::pwrite(fd, b"HELLO world".as_ptr().cast(), 11, 0) } as i64);
                let mut buf = [0u8; 32];
                // SAFETY: as above.
                let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
                o.push(format!("read {:?}", String::from_utf8_lossy(&buf[..n.max(0) as usize])));
                close(fd);
                o.push(stat_line(&r.join("f")));
                o
            },
        },
        Scenario {
            name: "passthrough create",
            markers: &["passthrough.after_register"],
            setup: |_| {},
            action: |r| {
                let mut o = vec![];
                let fd = open(&r.join("new"), libc::O_RDWR | libc::O_CREAT | libc::O_EXCL, 0o640);
                rec(&mut o, "create", fd as i64);
                // SAFETY: a valid buffer.
                rec(&mut o, "write", unsafe { libc::write(fd, b"made".as_ptr().cast(), 4) } as i64);
                close(fd);
                o.push(std::fs::read_to_string(r.join("new")).unwrap_or_default());
                o
            },
        },
        // The last handle of a node released: its backing id closed exactly once (a crash
        // before or after the close, the next worker closes it unless a live handle names it),
        // and a later open registers anew. A second handle held open keeps the id alive across
        // the first one's release.
        Scenario {
            name: "passthrough release",
            markers: &["release.before_backing_close", "release.after_backing_close"],
            setup: |r| {
                file(r, "f", "one");
                file(r, "g", "two");
            },
            action: |r| {
                let mut o = vec![];
                let g1 = open(&r.join("g"), libc::O_RDONLY, 0);
                let g2 = open(&r.join("g"), libc::O_RDWR, 0);
                close(g1);
                // SAFETY: a valid buffer.
                rec(&mut o, "write g", unsafe { libc::pwrite(g2, b"TWO".as_ptr().cast(), 3, 0) } as i64);
                close(g2);
                let fd = open(&r.join("f"), libc::O_WRONLY | libc::O_APPEND, 0);
                // SAFETY: a valid buffer.
                rec(&mut o, "append", unsafe { libc::write(fd, b"+1".as_ptr().cast(), 2) } as i64);
                close(fd);
                // A new open of each after the releases (RELEASE is sent after close returns:
                // give it time to arrive, as a crash-free run would).
                std::thread::sleep(Duration::from_millis(50));
                o.push(std::fs::read_to_string(r.join("f")).unwrap_or_default());
                o.push(std::fs::read_to_string(r.join("g")).unwrap_or_default());
                o
            },
        },
        Scenario {
            name: "forget",
            markers: &["forget.pending", "forget.applied"],
            setup: |r| {
                for i in 0..5 {
                    file(r, &format!("f{i}"), "x");
                }
            },
            action: |r| {
                let o = (0..5).map(|i| stat_line(&r.join(format!("f{i}")))).collect();
                drop_caches();
                o
            },
        },
    ]
}

/// Every file, directory and link under `root`, with what makes it itself.
fn tree(root: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(p: &Path, root: &Path, out: &mut BTreeMap<PathBuf, String>) {
        for e in std::fs::read_dir(p).unwrap() {
            let path = e.unwrap().path();
            let m = std::fs::symlink_metadata(&path).unwrap();
            let what = if m.is_dir() {
                format!("dir {:o}", m.permissions().mode())
            } else if m.file_type().is_symlink() {
                format!("link {:?}", std::fs::read_link(&path).unwrap())
            } else if m.is_file() {
                format!("file {:o} nlink {} {:?}", m.permissions().mode(), m.nlink(), std::fs::read(&path).unwrap())
            } else {
                format!("special {:o}", m.mode())
            };
            out.insert(path.strip_prefix(root).unwrap().to_path_buf(), what);
            if m.is_dir() {
                walk(&path, root, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// A temporary directory with a plain `model` directory, a `share` and a mount point `mnt`, and
/// the path of the crash point's arm file.
struct Dirs {
    _tmp: tempfile::TempDir,
    model: PathBuf,
    share: PathBuf,
    mnt: PathBuf,
    arm: PathBuf,
}

impl Dirs {
    fn new() -> Dirs {
        let tmp = tempfile::Builder::new().prefix("phoenixfs-crash").tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let p = |n: &str| tmp.path().join(n);
        let d = Dirs { model: p("model"), share: p("share"), mnt: p("mnt"), arm: p("arm"), _tmp: tmp };
        for dir in [&d.model, &d.share, &d.mnt] {
            std::fs::create_dir(dir).unwrap();
        }
        d
    }

    /// The daemon's environment that arms `marker` (with `mode` unless one-shot).
    fn env<'a>(&'a self, marker: &'a str, mode: Option<&'a str>) -> Vec<(&'a str, &'a str)> {
        let mut env = vec![("PHOENIXFS_CRASH_AT", marker), ("PHOENIXFS_CRASH_ARM", self.arm.to_str().unwrap())];
        env.extend(mode.map(|m| ("PHOENIXFS_CRASH_MODE", m)));
        env
    }
}

/// Where a case crashes: an engine marker, or a transport marker for one opcode.
#[derive(Debug, Clone, Copy)]
struct CrashAt<'a> {
    marker: &'a str,
    opcode: Option<u32>,
}

/// Runs `sc` with the worker killed at `at`, over `transport`; Err describes the violated
/// invariant.
fn run_case(sc: &Scenario, at: CrashAt, transport: Transport, extra: &[&str]) -> Result<(), String> {
    let marker = at.marker;
    let dirs = Dirs::new();
    let (model, share, mnt, arm) = (&dirs.model, &dirs.share, &dirs.mnt, &dirs.arm);
    // The model: the same operation, crash-free, on a plain directory.
    (sc.setup)(model);
    let expected = (sc.action)(model);
    let expected_tree = tree(model);

    (sc.setup)(share);
    // Locks served by the daemon, so that their crash points are on the path.
    let mut args = vec!["--xattr", "-o", "posix_lock,flock"];
    // With FUSE passthrough (the default over /dev/fuse where the kernel has it) WRITE never
    // reaches the daemon: its crash points are enumerated with passthrough off, which is how
    // writes still come (set-id files, O_DIRECT opens, vhost-user, `never`).
    if at.marker.starts_with("write.") {
        args.push("--fuse-passthrough=never");
    }
    args.extend_from_slice(extra);
    let opcode = at.opcode.map(|o| o.to_string());
    let mut env = dirs.env(marker, None);
    env.extend(opcode.as_deref().map(|o| ("PHOENIXFS_CRASH_OPCODE", o)));
    let mut m = Mount::start_on(transport, share, mnt, &args, &env);
    let sup = m.supervisor();
    // STATFS: a request the daemon must answer (so a worker is serving) that leaves no state.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out-buffer.
    if unsafe { libc::statfs(cs(mnt).as_ptr(), &mut st) } != 0 {
        return Err(format!("statfs of the mount: {}", errno()));
    }
    let baseline = common::settled_fds(sup);
    let worker_before = children_of(sup);

    std::fs::write(arm, "armed").unwrap();
    let got = (sc.action)(mnt);
    wait_until("the crash point (never reached: built without --features crash-points?)", || !arm.exists())?;
    // The crash happened; from here on nothing may be retried.
    wait_until("a new worker", || {
        let now = children_of(sup);
        !now.is_empty() && now != worker_before
    })?;
    if got != expected {
        return Err(format!(
            "results differ from a crash-free run:\n  crash-free: {expected:?}\n  with crash: {got:?}"
        ));
    }
    // Every object is reachable and the same through the mount and on the host.
    let through_mount = tree(mnt);
    let on_host = tree(share);
    if on_host != expected_tree || through_mount != expected_tree {
        return Err(format!(
            "tree differs from a crash-free run:\n  crash-free: {expected_tree:?}\n  share:      {on_host:?}\n  via mount:  {through_mount:?}"
        ));
    }
    drop_caches();
    let leak = wait_until("the fd table to return to its size after mounting", || {
        drop_caches();
        common::table_fds(sup) == baseline
    });
    if leak.is_err() {
        return Err(format!(
            "fd leak (lookup count or handle):\n  after mount: {baseline:?}\n  now:         {:?}",
            common::table_fds(sup)
        ));
    }
    // No FUSE passthrough backing id left registered (every file is closed: each one still
    // registered is a leak). Closes them, so it runs once, last.
    if transport == Transport::Fuse {
        match common::proc::take_backing_ids(sup) {
            Ok(0) => {}
            Ok(n) => return Err(format!("{n} passthrough backing ids leaked")),
            Err(e) => return Err(format!("counting backing ids: {e}")),
        }
    }
    if children_of(sup).len() != 1 {
        return Err("the supervisor does not have exactly one worker".into());
    }
    if m.bridge_failures() != 0 {
        return Err(format!("{} requests got no answer over the virtqueues (see stderr)", m.bridge_failures()));
    }
    let status = m.stop();
    if !status.success() {
        return Err(format!("the supervisor exited with {status}"));
    }
    Ok(())
}

/// Opcodes that change state (in the host file system or in the tables) and so must be covered.
const STATE_CHANGING: &[&str] = &[
    "lookup",
    "readdirplus",
    "forget",
    "mkdir",
    "mknod",
    "symlink",
    "link",
    "unlink",
    "rmdir",
    "rename",
    "create",
    "tmpfile",
    "open",
    "opendir",
    "release",
    "write",
    "append",
    "setattr",
    "setxattr",
    "removexattr",
    "fallocate",
    "copy_file_range",
    "lock",
    "flush",
];

/// Runs every (scenario, crash point) case over `transport`; returns the violations.
fn enumerate(cases: &[(&Scenario, CrashAt)], transport: Transport, extra: &[&str]) -> Vec<String> {
    let filter = std::env::var("PHOENIXFS_CRASH_FILTER").unwrap_or_default();
    let mut violations = Vec::new();
    let mut points = 0;
    for (sc, at) in cases {
        let name =
            format!("{} {}{}", sc.name, at.marker, at.opcode.map(|o| format!(" (opcode {o})")).unwrap_or_default());
        if !name.contains(&filter) {
            continue;
        }
        points += 1;
        eprintln!("crash over {transport:?} {extra:?}: {name}");
        // A case whose crash point was not reached is tried once more from scratch: seen once
        // here (copy_file_range), cause not found yet — see the notes. A marker that is
        // really unreachable still fails.
        let result = run_case(sc, *at, transport, extra).or_else(|e| {
            if !e.contains("never reached") {
                return Err(e);
            }
            eprintln!("  not reached ({e}); trying the case once more");
            run_case(sc, *at, transport, extra)
        });
        if let Err(e) = result {
            eprintln!("  VIOLATION: {e}");
            violations.push(format!("{name}: {e}"));
        }
    }
    println!("over {transport:?} {extra:?}: {points} crash points, {} violations", violations.len());
    eprintln!("over {transport:?} {extra:?}: {points} crash points, {} violations", violations.len());
    violations
}

/// Every scenario at every engine crash point it passes.
fn engine_cases(scenarios: &[Scenario]) -> Vec<(&Scenario, CrashAt<'static>)> {
    scenarios.iter().flat_map(|sc| sc.markers.iter().map(move |m| (sc, CrashAt { marker: m, opcode: None }))).collect()
}

#[test]
fn crash_every_marker_of_every_operation() {
    common::require_fuse();
    let scenarios = scenarios();
    // Every marker in the source is tried by some scenario, and every state-changing
    // operation has a scenario with at least one marker.
    let tried: BTreeSet<&str> = scenarios.iter().flat_map(|s| s.markers.iter().copied()).collect();
    // INIT and worker start-up have tests of their own below; a second INIT (a new session)
    // only comes over virtio (tests/vhost_control_crash.rs).
    // A live upgrade's new binary has its own (tests/upgrade.rs).
    let own_tests = [
        "init.after_record",
        "worker.start",
        "init.reset_session",
        "resend.taken_in",
        "mount.before_publish",
        "upgrade.before_ready",
        "passthrough.probe",
    ];
    // The vhost-user transport's markers are enumerated over that transport (below); the
    // device-state transfer's (VM live migration) in tests/vhost_migration.rs.
    let all: BTreeSet<&str> = phoenixfsd::crash::MARKERS
        .iter()
        .copied()
        .filter(|m| !own_tests.contains(m) && !m.starts_with("vhost.") && !m.starts_with("transfer."))
        .collect();
    let untried: Vec<_> = all.difference(&tried).collect();
    assert!(untried.is_empty(), "crash points no scenario reaches: {untried:?}");
    for op in STATE_CHANGING {
        let covered = scenarios
            .iter()
            .any(|s| (s.name.contains(op) || op.contains(s.name.split(' ').next().unwrap())) && !s.markers.is_empty())
            || tried.iter().any(|m| m.starts_with(op));
        assert!(covered, "state-changing operation {op} has no crash point");
    }
    let violations = enumerate(&engine_cases(&scenarios), Transport::Fuse, &[]);
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

/// Every scenario at every engine crash point again with an O_PATH fd per inode
/// (`--inode-file-handles=never`, the default being file handles): over /dev/fuse only, the
/// vhost-user transport's steps do not depend on how inodes are kept.
#[test]
fn crash_every_marker_with_inode_fds() {
    common::require_fuse();
    let scenarios = scenarios();
    let violations = enumerate(&engine_cases(&scenarios), Transport::Fuse, &["--inode-file-handles=never"]);
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

/// The opcode a scenario is about, for crashing it at a transport's own steps (None: the
/// kernel may send either of two, e.g. FORGET or BATCH_FORGET).
fn main_opcode(scenario: &str) -> Option<Opcode> {
    let first = scenario.split(' ').next().unwrap_or_default();
    Some(match first {
        "lookup" => Opcode::Lookup,
        "readdirplus" => Opcode::Readdirplus,
        "mkdir" => Opcode::Mkdir,
        "mknod" => Opcode::Mknod,
        "symlink" => Opcode::Symlink,
        "link" => Opcode::Link,
        "unlink" => Opcode::Unlink,
        "rmdir" => Opcode::Rmdir,
        // The kernel sends RENAME without flags, RENAME2 with them.
        "rename" if scenario.contains("exchange") => Opcode::Rename2,
        "rename" => Opcode::Rename,
        "create" => Opcode::Create,
        "tmpfile" => Opcode::Tmpfile,
        "open" => Opcode::Open,
        "opendir" => Opcode::Opendir,
        "release" => Opcode::Release,
        "write" | "append" => Opcode::Write,
        "setattr" => Opcode::Setattr,
        "setxattr" => Opcode::Setxattr,
        "removexattr" => Opcode::Removexattr,
        "fallocate" => Opcode::Fallocate,
        "copy_file_range" => Opcode::CopyFileRange,
        "lock" => Opcode::Setlk,
        "close" => Opcode::Flush,
        _ => return None,
    })
}

/// The same enumeration over vhost-user (through the test's FUSE-to-virtqueue bridge): every
/// engine crash point, plus the transport's own (after pop, before the used element, between
/// element and index, after the index, before the interrupt) for every state-changing operation. A replayed head must
/// get exactly one used element (the bridge fails a request that gets none within 30 s, or two:
/// the frontend checks every used entry against the head it waits for).
#[test]
fn crash_every_marker_over_vhost_user() {
    common::require_fuse();
    let scenarios = scenarios();
    let transport_markers: Vec<&str> = phoenixfsd::crash::MARKERS
        .iter()
        .copied()
        .filter(|m| m.starts_with("vhost.") && *m != "vhost.apply_control")
        .collect();
    assert_eq!(transport_markers.len(), 5, "transport markers: {transport_markers:?}");
    // FUSE passthrough is a /dev/fuse feature: its scenarios' markers are never reached here.
    let scenarios: Vec<Scenario> = scenarios.into_iter().filter(|s| !s.name.starts_with("passthrough")).collect();
    let mut cases = engine_cases(&scenarios);
    for sc in &scenarios {
        if !sc.markers.is_empty() {
            let opcode = main_opcode(sc.name).map(|o| o as u32);
            cases.extend(transport_markers.iter().map(|m| (sc, CrashAt { marker: m, opcode })));
        }
    }
    let violations = enumerate(&cases, Transport::VhostUser, &[]);
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

/// A worker killed while recording the INIT outcome: the re-sent INIT is answered by the next.
#[test]
fn crash_during_init() {
    common::require_fuse();
    let d = Dirs::new();
    file(&d.share, "f", "after init");
    std::fs::write(&d.arm, "armed").unwrap();
    let mut m = Mount::start_with_env(&d.share, &d.mnt, &[], &d.env("init.after_record", None));
    assert_eq!(std::fs::read_to_string(d.mnt.join("f")).unwrap(), "after init");
    assert!(!d.arm.exists(), "the INIT crash point was never reached (built without --features crash-points?)");
    assert!(m.stop().success());
}

/// The supervisor's fd table once settled, counted (the root's O_PATH fd and, with file
/// handles, the root mount's fd among them; a mount fd left by the crash would be one more).
fn settled_fd_count(sup: u32) -> usize {
    common::settled_fds(sup).len()
}

/// The first worker killed while registering the root's mount fd (file handles, at its start):
/// the next one frees the half-made entry, closing its fd, registers again and serves; the
/// share is held by exactly as many fds as without the crash.
#[test]
fn crash_while_registering_a_mount() {
    common::require_fuse();
    let clean = Dirs::new();
    file(&clean.share, "f", "served");
    // Armed at a marker never reached, so that it holds what an armed daemon holds (the arm
    // file's directory).
    let mut m = Mount::start_with_env(&clean.share, &clean.mnt, &[], &clean.env("mount.never_reached", None));
    assert_eq!(std::fs::read_to_string(clean.mnt.join("f")).unwrap(), "served");
    // The least of a few samples: a RELEASE still on its way only ever adds an fd.
    let sup = m.supervisor();
    let expected = (0..6).map(|_| settled_fd_count(sup)).min().unwrap();
    assert!(m.stop().success());

    let d = Dirs::new();
    file(&d.share, "f", "served");
    std::fs::write(&d.arm, "armed").unwrap();
    let mut m = Mount::start_with_env(&d.share, &d.mnt, &[], &d.env("mount.before_publish", None));
    assert_eq!(std::fs::read_to_string(d.mnt.join("f")).unwrap(), "served");
    assert!(!d.arm.exists(), "mount.before_publish was never reached (built without --features crash-points?)");
    // RELEASE reaches the daemon after close(2) returns: wait for the table to settle at the
    // count (as the enumeration does), rather than trusting one sample under load.
    let sup = m.supervisor();
    let settled = wait_until("the supervisor's fds to settle", || settled_fd_count(sup) == expected);
    assert!(
        settled.is_ok(),
        "the supervisor's fds after the crash: {} (without it: {expected})",
        settled_fd_count(sup)
    );
    assert!(m.stop().success());
}

/// A worker killed after taking in the re-sent requests, before freeing the records that did
/// not come back: the next worker re-sends, takes in and frees them, and serves.
#[test]
fn crash_while_taking_resent_requests_in() {
    common::require_fuse();
    let d = Dirs::new();
    file(&d.share, "f", "served");
    let mut m = Mount::start_with_env(&d.share, &d.mnt, &[], &d.env("resend.taken_in", None));
    assert_eq!(std::fs::read_to_string(d.mnt.join("f")).unwrap(), "served");
    let first_worker = children_of(m.supervisor());
    std::fs::write(&d.arm, "armed").unwrap();
    for pid in &first_worker {
        // SAFETY: SIGKILL to the supervisor's worker.
        unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
    }
    // The next worker re-sends (the session is initialised) and dies at the marker; the one after
    // takes in again and serves.
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.arm.exists() {
        assert!(Instant::now() < deadline, "no worker reached resend.taken_in within 10 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(std::fs::read_to_string(d.mnt.join("f")).unwrap(), "served");
    std::fs::create_dir(d.mnt.join("after")).expect("the daemon serves on");
    assert!(d.share.join("after").is_dir());
    assert_ne!(children_of(m.supervisor()), first_worker, "workers were replaced");
    assert!(m.stop().success());
}

/// A worker killed inside recovery's passthrough probe (the probe's id registered, not yet
/// closed): the next worker's probe finds it as the connection's latest id and closes it; files
/// opened before the crashes keep their passthrough; nothing stays registered at the end.
#[test]
fn crash_in_the_passthrough_probe() {
    common::require_fuse();
    let d = Dirs::new();
    file(&d.share, "f", "served");
    let mut m = Mount::start_with_env(&d.share, &d.mnt, &[], &d.env("passthrough.probe", None));
    let held = std::fs::OpenOptions::new().read(true).write(true).open(d.mnt.join("f")).unwrap();
    let first_worker = children_of(m.supervisor());
    std::fs::write(&d.arm, "armed").unwrap();
    for pid in &first_worker {
        // SAFETY: SIGKILL to the supervisor's worker.
        unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.arm.exists() {
        assert!(Instant::now() < deadline, "no worker reached passthrough.probe within 10 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    use std::os::unix::fs::FileExt;
    held.write_all_at(b"SERVED", 0).expect("the held file still writes");
    let mut buf = [0u8; 6];
    held.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"SERVED");
    assert_eq!(std::fs::read_to_string(d.share.join("f")).unwrap(), "SERVED");
    drop(held);
    let sup = m.supervisor();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(common::proc::take_backing_ids(sup), Ok(0), "backing ids leaked");
    assert!(m.stop().success());
}

/// A request that crashes every worker that runs it (a panic's abort, or a system call the
/// seccomp filter refuses): the first two attempts die (the deaths count), the third answers EIO
/// and the daemon serves on. Other requests flow meanwhile: a reader on another thread sees no
/// error while the poison request kills workers.
#[test]
fn crash_loop_request_is_answered_eio() {
    common::require_fuse();
    let seccomp_kills = common::seccomp_mode_override().is_none_or(|m| m == "kill");
    for mode in ["abort-always", "forbidden-syscall-always"] {
        if mode.starts_with("forbidden") && !seccomp_kills {
            eprintln!("{mode}: skipped, the filter kills only with --seccomp kill");
            continue;
        }
        let d = Dirs::new();
        file(&d.share, "f", "served");
        let log = d.share.with_extension("log");
        let env = d.env("mkdir.before_syscall", Some(mode));
        let mut m = Mount::start_logged(Transport::Fuse, &d.share, &d.mnt, &[], &env, Some(&log));
        std::fs::metadata(&d.mnt).unwrap();
        let first_worker = children_of(m.supervisor());
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (f, done) = (d.mnt.join("f"), done.clone());
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    assert_eq!(std::fs::read_to_string(&f).expect("a read while workers die"), "served");
                    reads += 1;
                }
                reads
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&d.arm, "armed").unwrap();
        let err = std::fs::create_dir(d.mnt.join("poison")).expect_err("the poison mkdir must fail");
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{mode}: {err}");
        std::fs::remove_file(&d.arm).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let reads = reader.join().expect("the reader saw no error");
        assert!(reads > 0, "{mode}: the reader ran");
        assert!(!d.share.join("poison").exists(), "{mode}: the poison mkdir never reached the host");
        std::fs::create_dir(d.mnt.join("fine")).expect("the daemon serves on after the poison request");
        assert!(d.share.join("fine").is_dir());
        assert_ne!(children_of(m.supervisor()), first_worker, "{mode}: workers were replaced");
        assert!(m.stop().success());
        let log = common::read_log(&log);
        let counted = log.matches("counts=true").count();
        assert_eq!(counted, 2, "{mode}: two counted deaths, then EIO:\n{log}");
        eprintln!("{mode}: EIO after {counted} deaths; {reads} reads by another thread meanwhile");
    }
}

/// Workers that die before answering anything: the supervisor backs off, then gives up with
/// exit code 1 and unmounts, instead of cloning forever.
#[test]
fn crash_loop_at_start_gives_up() {
    common::require_fuse();
    let d = Dirs::new();
    std::fs::write(&d.arm, "armed").unwrap();
    let log = d.share.with_extension("log");
    let env = d.env("worker.start", Some("abort-always"));
    let mut m = Mount::start_logged(Transport::Fuse, &d.share, &d.mnt, &[], &env, Some(&log));
    let status = common::proc::wait_for_exit(&mut m.child, Duration::from_secs(30))
        .expect("the supervisor did not give up within 30 s");
    assert_eq!(status.code(), Some(1), "gives up with exit code 1");
    assert!(!common::is_mounted(&d.mnt), "and unmounts");
    // The back-off doubles with each fruitless death, and one line says why it gave up.
    let log = common::read_log(&log);
    let backoffs: Vec<u64> =
        log.lines().filter_map(|l| l.split("backoff_ms=").nth(1)?.split_whitespace().next()?.parse().ok()).collect();
    assert_eq!(backoffs, [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 1024, 1024], "back-off in the log:\n{log}");
    assert!(log.contains("12 workers in a row died before answering any request; giving up"), "{log}");
}
