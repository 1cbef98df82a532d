//! Millions of files (issue 13): a directory of 100,000 files listed and stat'ed through the
//! mount (READDIRPLUS, then a LOOKUP or GETATTR per entry, as `ls -l` does) by a daemon whose
//! RLIMIT_NOFILE is 4,096.
//!
//! - With file handles (the default, `prefer`): zero errors, and the daemon's fd table stays
//!   far below its limit (a live inode holds no fd; the fd cache is bounded).
//! - With `--inode-file-handles=never`: an O_PATH fd per live inode, so the fd budget is spent
//!   after about 3,000 entries; every failure is then the budget's clear ENFILE (logged once
//!   with advice), never EMFILE from a random operation, and the daemon serves on: opening a
//!   file that is already looked up still works.
//!
//! Over /dev/fuse and over vhost-user (the test's FUSE-to-virtqueue bridge).

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::time::Instant;

use common::{Mount, Transport};

const FILES: usize = 100_000;
const NOFILE: &str = "4096";

fn make_files(dir: &Path) {
    std::fs::create_dir(dir).unwrap();
    for i in 0..FILES {
        std::fs::File::create(dir.join(format!("f{i:06}"))).unwrap();
    }
}

/// Lists `dir` through the mount and stats every entry; returns how many were listed and the
/// errors by errno.
fn list_and_stat(dir: &Path) -> (usize, BTreeMap<i32, usize>) {
    let mut errors = BTreeMap::new();
    let mut listed = 0;
    for e in std::fs::read_dir(dir).expect("opendir through the mount") {
        let e = match e {
            Ok(e) => e,
            Err(err) => {
                *errors.entry(err.raw_os_error().unwrap_or(-1)).or_default() += 1;
                continue;
            }
        };
        listed += 1;
        if let Err(err) = std::fs::symlink_metadata(e.path()) {
            *errors.entry(err.raw_os_error().unwrap_or(-1)).or_default() += 1;
        }
    }
    (listed, errors)
}

fn run(transport: Transport, extra: &[&str]) -> (usize, BTreeMap<i32, usize>, usize) {
    let tmp = tempfile::Builder::new().prefix("phoenixfs-many").tempdir().unwrap();
    let share = tmp.path().join("share");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&share).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    // A tmpfs: creating 100,000 files there takes a second, whatever the host's file system and
    // load.
    let _tmpfs = common::sys::Tmpfs::mount(&share);
    let t0 = Instant::now();
    make_files(&share.join("big"));
    std::fs::write(share.join("small"), "still served").unwrap();
    eprintln!("created {FILES} files in {:?}", t0.elapsed());
    let mut args = vec!["--rlimit-nofile", NOFILE];
    args.extend_from_slice(extra);
    let mut m = Mount::start_on(transport, &share, &mnt, &args, &[]);
    // Looked up before the listing, so that it holds its fd whatever the listing spends.
    let small = std::fs::metadata(mnt.join("small")).map(|m| m.len());
    assert_eq!(small.unwrap(), 12);
    let t0 = Instant::now();
    let (listed, errors) = list_and_stat(&mnt.join("big"));
    eprintln!("{transport:?} {extra:?}: listed {listed}, errors {errors:?} in {:?}", t0.elapsed());
    let fds = common::open_fds(m.supervisor()).len();
    eprintln!("daemon fds after the listing: {fds}");
    // The daemon serves on: a file read through the mount.
    let mut s = String::new();
    std::fs::File::open(mnt.join("small")).unwrap().read_to_string(&mut s).unwrap();
    assert_eq!(s, "still served");
    assert!(m.stop().success());
    drop(m);
    (listed, errors, fds)
}

fn with_handles(transport: Transport) {
    let (listed, errors, fds) = run(transport, &[]);
    assert_eq!(listed, FILES);
    assert!(errors.is_empty(), "errors with file handles: {errors:?}");
    assert!(fds < 4096 / 2, "the daemon held {fds} fds with file handles");
}

fn never(transport: Transport) {
    let (listed, errors, fds) = run(transport, &["--inode-file-handles=never"]);
    assert_eq!(listed, FILES, "listing needs no fd per entry");
    let enfile = errors.get(&libc::ENFILE).copied().unwrap_or(0);
    assert!(enfile > 0, "with never and 4,096 fds, 100,000 live inodes must spend the budget: {errors:?}");
    assert_eq!(errors.len(), 1, "every error is the budget's ENFILE: {errors:?}");
    assert!(fds < 4096, "{fds} fds");
}

#[test]
fn test_many_files_listed_with_file_handles_over_fuse() {
    with_handles(Transport::Fuse);
}

#[test]
fn test_many_files_listed_with_file_handles_over_vhost_user() {
    with_handles(Transport::VhostUser);
}

#[test]
fn test_many_files_never_spends_the_fd_budget_with_clear_errors_over_fuse() {
    never(Transport::Fuse);
}

#[test]
fn test_many_files_never_spends_the_fd_budget_with_clear_errors_over_vhost_user() {
    never(Transport::VhostUser);
}
