//! The command line: virtiofsd's options parse, bad command lines exit 2 with a message naming
//! the problem, and --print-capabilities prints the vhost-user backend capabilities document.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_phoenixfsd");

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().expect("run phoenixfsd");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn test_cli_bad_command_lines_exit_2() {
    let cases: &[(&[&str], &str)] = &[
        (&["--no-such-option"], "--no-such-option"),
        (&["--mountpoint", "/mnt"], "--shared-dir"),
        (&["--shared-dir", "/tmp"], "--mountpoint, --socket-path or --fd"),
        (&["--shared-dir", "/tmp", "--mountpoint", "/a", "--socket-path", "/b"], "exactly one"),
        (&["--shared-dir", "/tmp", "--mountpoint", "/a", "--cache", "sometimes"], "sometimes"),
        (&["--shared-dir", "/tmp", "--mountpoint", "/a", "--thread-pool-size", "many"], "many"),
        (&["--shared-dir", "/tmp", "--mountpoint", "/a", "-o", "bogus"], "bogus"),
        (&["--shared-dir", "/tmp", "--mountpoint", "/a", "--recovery", "maybe"], "maybe"),
        (&["--shared-dir", "/tmp", "--mountpoint", "/a", "--fuse-passthrough=sometimes"], "sometimes"),
        (&["--shared-dir", "/tmp", "--mountpoint", "/a", "--fuse-spin-us", "soon"], "soon"),
        (&["--shared-dir", "/tmp", "--mountpoint", "/a", "--fuse-spin-us", "5000"], "--fuse-spin-us 5000 is too long"),
        (
            &["--shared-dir", "/tmp", "--socket-path", "/b", "--fuse-spin-us", "10"],
            "--fuse-spin-us without --mountpoint",
        ),
        // --fuse-passthrough=always where it cannot work: named, with the reason.
        (&["--shared-dir", "/tmp", "--socket-path", "/b", "--fuse-passthrough=always"], "virtio-fs guest"),
        (&["--shared-dir", "/tmp", "--mountpoint", "/a", "--writeback", "--fuse-passthrough=always"], "writeback"),
        (&["--shared-dir", "/tmp", "--mountpoint", "/a", "--cache=never", "--fuse-passthrough=always"], "direct I/O"),
        (&["--shared-dir", "/tmp", "--socket-path", "/b", "--uid-map", ":0:100000:"], "--uid-map"),
        (&["--shared-dir", "/tmp", "--socket-path", "/b", "--gid-map", "0:100000:65536"], "--gid-map"),
        (&["--shared-dir", "/tmp", "--socket-path", "/b", "--uid-map", ":0:1:0:"], "a range of 0 ids"),
        (
            &["--shared-dir", "/tmp", "--socket-path", "/b", "--uid-map=:0:1:1:", "--sandbox=chroot"],
            "--uid-map with --sandbox chroot",
        ),
        (
            &["--shared-dir", "/tmp", "--socket-path", "/b", "--gid-map=:0:1:1:", "--sandbox=none"],
            "--gid-map with --sandbox none",
        ),
        // As root (these tests' user): the maps are for an unprivileged daemon.
        (
            &["--shared-dir", "/tmp", "--socket-path", "/b", "--uid-map=:0:100000:65536:"],
            "--uid-map: the maps are for an unprivileged daemon",
        ),
    ];
    for (args, named) in cases {
        let (code, _, err) = run(args);
        assert_eq!(code, 2, "{args:?}: exit code (stderr: {err})");
        assert!(err.contains(named), "{args:?}: the message should name {named:?}: {err}");
    }
}

#[test]
fn test_cli_print_capabilities_is_the_vhost_user_json() {
    let (code, out, _) = run(&["--print-capabilities"]);
    assert_eq!(code, 0);
    let compact: String = out.split_whitespace().collect();
    // "migrate-precopy": VM live migration through vhost-user DEVICE_STATE (tests/vhost_migration.rs).
    assert_eq!(
        compact,
        r#"{"type":"fs","features":["migrate-precopy","posix-acl-negotiation-mode","security-label-negotiation-mode","separate-options"]}"#
    );
}

#[test]
fn test_cli_missing_shared_dir_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let (code, _, err) =
        run(&["--shared-dir", missing.to_str().unwrap(), "--mountpoint", tmp.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("nope") && err.contains("No such file"), "{err}");
}

#[test]
fn test_cli_legacy_o_forms_are_accepted() {
    // libvirt's form: the source comes from -o; a missing transport is still refused with 2.
    let (code, _, err) = run(&["-o", "source=/tmp,cache=always,xattr,no_posix_lock", "-f"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--mountpoint, --socket-path or --fd"), "parsed past the -o options: {err}");
}

#[test]
fn test_cli_vhost_user_socket_errors_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let share = tmp.path().to_str().unwrap();
    let regular = tmp.path().join("file");
    std::fs::write(&regular, "").unwrap();
    let socket_in_missing_dir = tmp.path().join("no/such/dir/vfs.sock");
    let cases: &[(&[&str], &str)] = &[
        // fd 0 here is /dev/null (Command's default for output()): not a socket.
        (&["--shared-dir", share, "--fd", "0"], "--fd 0 is not a listening socket"),
        (&["--shared-dir", share, "--socket-path", socket_in_missing_dir.to_str().unwrap()], "cannot listen"),
        (
            &["--shared-dir", share, "--socket-path", regular.to_str().unwrap(), "--socket-group", "no-such-group-x"],
            "cannot listen",
        ),
    ];
    for (args, named) in cases {
        let (code, _, err) = run(args);
        assert_eq!(code, 1, "{args:?}: exit code (stderr: {err})");
        assert!(err.contains(named), "{args:?}: the message should say {named:?}: {err}");
    }
    let sock = tmp.path().join("vfs.sock");
    let (code, _, err) =
        run(&["--shared-dir", share, "--socket-path", sock.to_str().unwrap(), "--socket-group", "no-such-group-x"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no-such-group-x"), "the message names the group: {err}");
}

#[test]
fn test_cli_manpage_and_completions_come_from_the_options() {
    let (code, man, _) = run(&["--print-manpage"]);
    assert_eq!(code, 0);
    assert!(man.starts_with(".ie") && man.contains(".TH phoenixfsd 1"), "roff: {}", &man[..man.len().min(200)]);
    for opt in ["shared\\-dir", "xattrmap", "readonly", "syslog", "migration\\-mode"] {
        assert!(man.contains(opt), "the man page lists --{opt}");
    }
    for shell in ["bash", "zsh", "fish"] {
        let (code, script, err) = run(&["--print-completions", shell]);
        assert_eq!(code, 0, "{shell}: {err}");
        assert!(script.contains("xattrmap") && script.contains("socket-path"), "{shell} completes the options");
    }
}

#[test]
fn test_cli_packaged_manpage_is_current() {
    let (_, man, _) = run(&["--print-manpage"]);
    let packaged = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/phoenixfsd.1")).unwrap();
    assert!(man == packaged, "packaging/phoenixfsd.1 is stale: phoenixfsd --print-manpage > packaging/phoenixfsd.1");
}

/// PHOENIXFSD_FUSE_PASSTHROUGH overrides --fuse-passthrough (for a daemon a rollback may hand to
/// a build without the option); a bad value is a command-line error.
#[test]
fn test_cli_passthrough_environment_is_checked() {
    let out = Command::new(BIN)
        .args(["--shared-dir", "/tmp", "--mountpoint", "/a"])
        .env("PHOENIXFSD_FUSE_PASSTHROUGH", "sometimes")
        .output()
        .expect("run phoenixfsd");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("PHOENIXFSD_FUSE_PASSTHROUGH=sometimes"), "{err}");
    // It overrides the option: always, then refused with --writeback as the option would be.
    let out = Command::new(BIN)
        .args(["--shared-dir", "/tmp", "--mountpoint", "/a", "--writeback"])
        .env("PHOENIXFSD_FUSE_PASSTHROUGH", "always")
        .output()
        .expect("run phoenixfsd");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--fuse-passthrough=always with --writeback"), "{err}");
}
