//! POSIX conformance: runs the pjdfstest suite (the Rust rewrite, 0.2.2, installed by
//! scripts/setup.sh with `cargo install pjdfstest --version 0.2.2 --locked`) inside a phoenixfsd
//! mount and requires 0 failures.
//!
//! pjdfstest runs as root and switches to the dummy users `nobody` and `tests` (setup.sh creates
//! `tests`), so this also checks that the daemon creates files with the caller's credentials.
//! A missing pjdfstest or dummy user is a failure with a message, never a silent skip.

mod common;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Mount;

const PJDFSTEST_VERSION: &str = "0.2.2";
/// The whole suite takes ~6 s on a local passthrough; this only bounds a hang.
const TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Short sleeps between modifications inside timestamp tests; > the host fs's timestamp
/// granularity (ext4, tmpfs, xfs, btrfs: 1 ns).
const NAPTIME: f64 = 0.05;

fn find_pjdfstest() -> PathBuf {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("PJDFSTEST") {
        candidates.push(PathBuf::from(p));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("pjdfstest")));
    }
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        candidates.push(PathBuf::from(home).join("bin/pjdfstest"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin/pjdfstest"));
    }
    candidates.push(PathBuf::from("/root/.cargo/bin/pjdfstest"));
    candidates.into_iter().find(|p| p.is_file()).unwrap_or_else(|| {
        panic!(
            "\n\n*** pjdfstest is not installed (looked in $PJDFSTEST, $PATH, $CARGO_HOME/bin, \
             ~/.cargo/bin).\n*** Run `bash scripts/setup.sh` as root (it runs `cargo install \
             pjdfstest --version {PJDFSTEST_VERSION} --locked` and creates the dummy users).\n\n"
        )
    })
}

fn user_exists(name: &str) -> bool {
    let c = std::ffi::CString::new(name).unwrap();
    !unsafe { libc::getpwnam(c.as_ptr()) }.is_null()
}

/// Whether `rename` updates the renamed file's ctime on the host file system under `dir`.
fn host_rename_updates_ctime(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let a = dir.join("rename-ctime-a");
    let b = dir.join("rename-ctime-b");
    std::fs::write(&a, b"x").unwrap();
    let before = std::fs::metadata(&a).unwrap();
    std::thread::sleep(Duration::from_secs_f64(NAPTIME));
    std::fs::rename(&a, &b).unwrap();
    let after = std::fs::metadata(&b).unwrap();
    std::fs::remove_file(&b).unwrap();
    (after.ctime(), after.ctime_nsec()) != (before.ctime(), before.ctime_nsec())
}

/// Whether posix_fallocate works on the host file system under `dir`.
fn host_has_posix_fallocate(dir: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let p = dir.join("fallocate-probe");
    let f = std::fs::File::create(&p).unwrap();
    let r = unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, 4096) };
    drop(f);
    std::fs::remove_file(&p).unwrap();
    r == 0
}

struct Summary {
    failed: usize,
    skipped: usize,
    passed: usize,
    line: String,
}

/// Parses "Summary: 0 failed, 14 skipped, 384 passed, 0 expected failures, 398 total".
fn parse_summary(output: &str) -> Option<Summary> {
    let line = output.lines().rev().find(|l| l.contains("Summary:"))?.trim().to_string();
    let count = |word: &str| -> Option<usize> {
        let toks: Vec<&str> = line.split([',', ':']).collect();
        toks.iter().find_map(|t| {
            let mut it = t.split_whitespace();
            let n = it.next()?.parse().ok()?;
            (it.next()? == word).then_some(n)
        })
    };
    Some(Summary { failed: count("failed")?, skipped: count("skipped")?, passed: count("passed")?, line })
}

/// Removes ANSI colour sequences (in case the `colored` crate ignores NO_COLOR).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn run_pjdfstest(label: &str, daemon_args: &[&str]) {
    let pjdfstest = find_pjdfstest();
    for user in ["nobody", "tests"] {
        assert!(
            user_exists(user),
            "\n\n*** pjdfstest needs the user `{user}`: run `bash scripts/setup.sh` as root.\n\n"
        );
    }
    let version = Command::new(&pjdfstest).arg("--version").output().expect("run pjdfstest --version");
    let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
    if version != format!("pjdfstest {PJDFSTEST_VERSION}") {
        eprintln!("warning: {} is {version:?}, this test was written for {PJDFSTEST_VERSION}", pjdfstest.display());
    }

    let mut m = Mount::new(daemon_args);
    // The temporary directory is 0700; pjdfstest's dummy users must be able to reach the mount.
    let top = m.mnt.parent().unwrap().to_path_buf();
    std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o755)).unwrap();

    // Outside the FUSE mount, on the host fs: the "other file system" for the EXDEV cases, and
    // where the host's features are probed.
    let other = top.join("other-fs");
    std::fs::create_dir(&other).unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o777)).unwrap();

    let mut features = vec!["utimensat", "utime_now"];
    if host_has_posix_fallocate(&other) {
        features.push("posix_fallocate");
    }
    if host_rename_updates_ctime(&other) {
        features.push("rename_ctime");
    }
    // Not on Linux: chflags, chflags_sf_snapshot, stat_st_birthtime, nfsv4_acls. The EROFS
    // cases stay off (allow_remount = false): they run `mount -o remount,ro`, which mount(8)
    // hands to a fuse helper that cannot remount a daemon's mount.
    let mut config = String::from("[features]\n");
    for f in &features {
        config.push_str(&format!("{f} = {{}}\n"));
    }
    config.push_str(&format!("secondary_fs = {:?}\n", other.to_str().unwrap()));
    config.push_str(&format!("\n[settings]\nnaptime = {NAPTIME}\nallow_remount = false\n"));
    let config_path = top.join("pjdfstest.toml");
    std::fs::write(&config_path, &config).unwrap();

    let test_dir = m.path("pjdfstest");
    std::fs::create_dir(&test_dir).unwrap();
    std::fs::set_permissions(&test_dir, std::fs::Permissions::from_mode(0o755)).unwrap();

    let out_path = top.join("pjdfstest.out");
    let out = std::fs::File::create(&out_path).unwrap();
    eprintln!(
        "[{label}] running {} -c {} -p {} (phoenixfsd {daemon_args:?}; features {features:?})",
        pjdfstest.display(),
        config_path.display(),
        test_dir.display()
    );
    let started = Instant::now();
    let mut child = Command::new(&pjdfstest)
        .arg("-c")
        .arg(&config_path)
        .arg("-p")
        .arg(&test_dir)
        .current_dir(&top)
        .env("NO_COLOR", "1")
        .env("CLICOLOR", "0")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("spawn pjdfstest");
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            let mut text = String::new();
            let _ = std::fs::File::open(&out_path).and_then(|mut f| f.read_to_string(&mut text));
            let tail: Vec<&str> = text.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect();
            panic!("[{label}] pjdfstest did not finish within {TIMEOUT:?}; last lines:\n{}", tail.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let elapsed = started.elapsed();
    let output = strip_ansi(&std::fs::read_to_string(&out_path).unwrap());
    let daemon_alive = m.child.try_wait().unwrap().is_none();

    println!("{output}");
    let failed_names: Vec<&str> = output
        .lines()
        .filter(|l| l.trim_end().ends_with("FAILED") || l.trim_end().ends_with("PASSED UNEXPECTEDLY"))
        .map(|l| l.split_whitespace().next().unwrap_or(""))
        .collect();
    let summary = parse_summary(&output);
    match &summary {
        Some(s) => {
            println!("[{label}] pjdfstest {}  ({:.1} s)", s.line, elapsed.as_secs_f64());
            eprintln!("[{label}] pjdfstest {}  ({:.1} s)", s.line, elapsed.as_secs_f64());
        }
        None => eprintln!("[{label}] pjdfstest printed no summary line (exit {status})"),
    }
    if !failed_names.is_empty() {
        eprintln!("[{label}] failing pjdfstest cases: {}", failed_names.join(" "));
    }

    assert!(daemon_alive, "[{label}] phoenixfsd died while pjdfstest ran");
    let exit = m.stop();
    let summary = summary
        .unwrap_or_else(|| panic!("[{label}] pjdfstest printed no summary line (exit {status}); output:\n{output}"));
    assert_eq!(summary.failed, 0, "[{label}] pjdfstest: {} failed: {}", summary.line, failed_names.join(" "));
    assert!(status.success(), "[{label}] pjdfstest exited with {status}: {}", summary.line);
    // 398 cases in 0.2.2 on Linux; ~14 are skipped (13 EROFS cases, link_count_max because
    // pathconf(LINK_MAX) is unknown on FUSE). Far fewer passes means the suite did not really run.
    assert!(
        summary.passed >= 300,
        "[{label}] pjdfstest passed only {} cases ({} skipped): {}",
        summary.passed,
        summary.skipped,
        summary.line
    );
    assert!(exit.success(), "[{label}] phoenixfsd exited with {exit} after SIGTERM");
}

#[test]
fn pjdfstest_passes() {
    run_pjdfstest("xattr", &["--xattr"]);
}
