//! `--security-label`: FUSE_SECURITY_CTX. A guest kernel with an LSM (SELinux) attaches the label
//! it chose for a new object to MKNOD, MKDIR, SYMLINK and CREATE, as a request extension; the
//! daemon stores it as that object's xattr (through `--xattrmap`, e.g. under
//! user.virtiofs.security.* on a host with its own SELinux) before the reply, and removes the
//! object again if the label cannot be stored.
//!
//! This host kernel has no LSM that labels new files, so a real mount never sends a context:
//! these tests play the guest kernel through the vhost-user test frontend, with request frames
//! laid out as Linux lays them out (fs/fuse/dir.c `get_security_context`), against a real
//! phoenixfsd. A crash after the creation replays the label.

mod common;

use std::ffi::CStr;

use common::backend::{Backend, call, check_reply};
use common::frontend::Frontend;
use common::sys as s;
use phoenixfsd::fuse::Op;
use phoenixfsd::fuse::abi::{self, InitIn};
use phoenixfsd::fuse::encode::{Sender, encode_request};
use phoenixfsd::fuse::ext::encode_security_context;
use zerocopy::FromBytes;

const LABEL: &[u8] = b"system_u:object_r:container_file_t:s0\0";
const SELINUX_MAP: &str = "--xattrmap=/prefix/all/security./user.virtiofs./ /bad/server//security./ /ok/all///";

/// INIT as a 7.45 guest kernel that offers SECURITY_CTX (or not); the reply's error and whether
/// SECURITY_CTX was agreed.
fn init(fe: &mut Frontend, offer: bool) -> (i32, bool) {
    let flags = abi::ASYNC_READ | abi::BIG_WRITES | abi::MAX_PAGES | abi::INIT_EXT;
    let flags2 = if offer { (abi::SECURITY_CTX >> 32) as u32 } else { 0 };
    let init = Op::Init { arg: InitIn { major: 7, minor: 45, max_readahead: 128 << 10, flags: flags as u32 }, flags2 };
    let (err, payload) = call(fe, 1, 1, 0, &init);
    let agreed = err == 0 && abi::InitOut::read_from_bytes(&payload).unwrap().flags2 & 1 != 0;
    (err, agreed)
}

/// `op` sent on the root with a security-context extension for (`name`, `value`).
fn with_label(fe: &mut Frontend, unique: u64, op: &Op<'_>, name: &CStr, value: &[u8]) -> (i32, Vec<u8>) {
    let mut req = encode_request(Sender { unique, nodeid: abi::ROOT_ID, uid: 0, gid: 0, pid: 1 }, op);
    let ext = encode_security_context(name, value);
    req.extend_from_slice(&ext);
    let len = req.len() as u32;
    req[0..4].copy_from_slice(&len.to_le_bytes());
    req[36..38].copy_from_slice(&((ext.len() / 8) as u16).to_le_bytes());
    let reply = fe.request(1, &req, 8192).unwrap();
    check_reply(op, unique, &reply)
}

fn mkdir(name: &CStr) -> Op<'_> {
    Op::Mkdir { arg: abi::MkdirIn { mode: 0o755, umask: 0 }, name }
}

fn connect(b: &Backend) -> Frontend {
    Frontend::connect(b.socket(), 2, 16).unwrap()
}

#[test]
fn test_security_label_is_stored_under_the_mapped_name_for_every_creation() {
    let b = Backend::start(&["--security-label", SELINUX_MAP]);
    let mut fe = connect(&b);
    assert_eq!(init(&mut fe, true), (0, true), "SECURITY_CTX agreed");
    let sel = c"security.selinux";
    let create = Op::Create {
        arg: abi::CreateIn { flags: libc::O_RDWR as u32, mode: 0o644, umask: 0, open_flags: 0 },
        name: c"f",
    };
    // (A user.* name cannot be stored on a FIFO, socket, device or symlink on Linux: with such a
    // map those creations fail with EPERM, as with virtiofsd.)
    let file =
        Op::Mknod { arg: abi::MknodIn { mode: libc::S_IFREG | 0o644, rdev: 0, umask: 0, padding: 0 }, name: c"n" };
    for (i, (op, name)) in [(mkdir(c"d"), "d"), (create, "f"), (file, "n")].iter().enumerate() {
        let (err, _) = with_label(&mut fe, 10 + i as u64, op, sel, LABEL);
        assert_eq!(err, 0, "{name}");
        let host = b.share.join(name);
        assert_eq!(s::getxattr(&host, None, "user.virtiofs.security.selinux").unwrap(), LABEL, "{name}: mapped");
        assert!(s::getxattr(&host, None, "security.selinux").is_err(), "{name}: not under the host's own name");
    }
    // TMPFILE: the unnamed file, found through the daemon's fd table, carries it too.
    let tmpfile =
        Op::Tmpfile { arg: abi::CreateIn { flags: libc::O_RDWR as u32, mode: 0o600, umask: 0, open_flags: 0 } };
    assert_eq!(with_label(&mut fe, 15, &tmpfile, sel, LABEL).0, 0, "tmpfile");
    use std::os::unix::fs::MetadataExt;
    let share_dev = std::fs::metadata(&b.share).unwrap().dev();
    let supervisor = common::proc::supervisor_of(b.pid());
    let unnamed = std::fs::read_dir(format!("/proc/{supervisor}/fd"))
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| {
            let deleted = std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().ends_with("(deleted)"));
            deleted && std::fs::metadata(e.path()).is_ok_and(|m| m.is_file() && m.nlink() == 0 && m.dev() == share_dev)
        })
        .expect("the daemon holds the unnamed file");
    let f = std::fs::File::open(unnamed.path()).unwrap();
    use std::os::fd::AsRawFd;
    assert_eq!(s::getxattr(&b.share, Some(f.as_raw_fd()), "user.virtiofs.security.selinux").unwrap(), LABEL);
    // Without a context the creation is as before.
    let (err, _) = call(&mut fe, 1, 20, abi::ROOT_ID, &mkdir(c"plain"));
    assert_eq!(err, 0);
    assert!(s::getxattr(&b.share.join("plain"), None, "user.virtiofs.security.selinux").is_err());
}

#[test]
fn test_security_label_unmapped_and_refused() {
    let sel = c"security.selinux";
    // Unmapped, the label is stored under its own name, on a symlink too. (A host LSM may want
    // CAP_SYS_ADMIN for security.*: the label is stored with the daemon's capabilities, so
    // --modcaps=+sys_admin gives it that, as with virtiofsd.)
    let b = Backend::start(&["--security-label=auto", "--modcaps=+sys_admin"]);
    let mut fe = connect(&b);
    assert_eq!(init(&mut fe, true), (0, true));
    let (err, _) = with_label(&mut fe, 10, &Op::Symlink { name: c"l", target: c"d" }, sel, LABEL);
    assert_eq!(err, 0);
    assert_eq!(s::getxattr(&b.share.join("l"), None, "security.selinux").unwrap(), LABEL, "on the symlink itself");
    drop((fe, b));
    // A label that cannot be stored (here the map refuses the name) fails the creation with
    // that refusal, and the new object is gone again.
    let b = Backend::start(&["--security-label", "--xattrmap=/bad/client/security.// /ok/all///"]);
    let mut fe = connect(&b);
    assert_eq!(init(&mut fe, true), (0, true));
    let (err, _) = with_label(&mut fe, 10, &mkdir(c"d"), sel, LABEL);
    assert_eq!(err, -libc::EPERM);
    assert!(!b.share.join("d").exists(), "the unlabelled directory was removed");
}

#[test]
fn test_security_label_negotiation_modes() {
    // always: a kernel without SECURITY_CTX is refused at INIT.
    let b = Backend::start(&["--security-label=always"]);
    let mut fe = connect(&b);
    assert_eq!(init(&mut fe, false).0, -libc::EPROTO);
    drop((fe, b));
    // auto: served without it, and a stray extension is ignored.
    let b = Backend::start(&["--security-label=auto", SELINUX_MAP]);
    let mut fe = connect(&b);
    assert_eq!(init(&mut fe, false), (0, false));
    let (err, _) = with_label(&mut fe, 10, &mkdir(c"d"), c"security.selinux", LABEL);
    assert_eq!(err, 0);
    assert!(s::getxattr(&b.share.join("d"), None, "user.virtiofs.security.selinux").is_err());
    // A malformed context is refused (EINVAL) when agreed.
    drop((fe, b));
    let b = Backend::start(&["--security-label", SELINUX_MAP]);
    let mut fe = connect(&b);
    assert_eq!(init(&mut fe, true), (0, true));
    let mut req = encode_request(Sender { unique: 11, nodeid: abi::ROOT_ID, uid: 0, gid: 0, pid: 1 }, &mkdir(c"x"));
    req.extend_from_slice(&[16, 0, 0, 0, 1, 0, 0, 0, 200, 0, 0, 0, 0, 0, 0, 0]);
    let len = req.len() as u32;
    req[0..4].copy_from_slice(&len.to_le_bytes());
    req[36..38].copy_from_slice(&2u16.to_le_bytes());
    let (err, _) = check_reply(&mkdir(c"x"), 11, &fe.request(1, &req, 8192).unwrap());
    assert_eq!(err, -libc::EINVAL);
    assert!(!b.share.join("x").exists());
}

/// A crash right after the host mkdir, before the label: the replay finds its own directory and
/// labels it; one after the label replays it harmlessly.
#[test]
fn test_security_label_crash_after_the_creation_replays_the_label() {
    for marker in ["mkdir.after_syscall", "create.after_open"] {
        let tmp = tempfile::tempdir().unwrap();
        let arm = tmp.path().join("arm");
        let env = [("PHOENIXFS_CRASH_AT", marker), ("PHOENIXFS_CRASH_ARM", arm.to_str().unwrap())];
        let b = Backend::start_with_env(&["--security-label", SELINUX_MAP], &env);
        let mut fe = connect(&b);
        assert_eq!(init(&mut fe, true), (0, true));
        std::fs::write(&arm, b"").unwrap();
        let op = if marker.starts_with("mkdir") {
            mkdir(c"o")
        } else {
            Op::Create {
                arg: abi::CreateIn { flags: libc::O_RDWR as u32, mode: 0o644, umask: 0, open_flags: 0 },
                name: c"o",
            }
        };
        let (err, _) = with_label(&mut fe, 10, &op, c"security.selinux", LABEL);
        assert_eq!(err, 0, "{marker}");
        assert!(!arm.exists(), "{marker}: the worker did not crash there");
        assert_eq!(s::getxattr(&b.share.join("o"), None, "user.virtiofs.security.selinux").unwrap(), LABEL, "{marker}");
    }
}
