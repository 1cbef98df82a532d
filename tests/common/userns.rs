//! The unprivileged user the user-namespace tests run a daemon as (scripts/setup.sh makes it:
//! `pfs-userns`, with 65,536 subordinate uids and gids of its own in /etc/subuid and
//! /etc/subgid, and installs newuidmap/newgidmap). Self-contained: tests/cli_compat.rs uses it
//! too, without the rest of common/.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

pub const NAME: &str = "pfs-userns";

/// The user's ids and its subordinate ranges.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub uid: u32,
    pub gid: u32,
    /// First host uid of its /etc/subuid range, and the range's size.
    pub subuid: u32,
    /// First host gid of its /etc/subgid range.
    pub subgid: u32,
    pub count: u32,
}

/// The user, or a panic that says how to get it (never a silent skip).
pub fn test_user() -> TestUser {
    let setup = "run scripts/setup.sh as root (it creates the user and its ranges, and installs uidmap)";
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f[0] == NAME)
        .unwrap_or_else(|| panic!("no user {NAME}: {setup}"));
    let range = |file: &str| -> (u32, u32) {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let line = text.lines().find(|l| l.starts_with(&format!("{NAME}:")));
        let f: Vec<u32> = line
            .unwrap_or_else(|| panic!("{NAME} has no range in {file}: {setup}"))
            .split(':')
            .skip(1)
            .map(|v| v.parse().unwrap())
            .collect();
        (f[0], f[1])
    };
    for helper in ["/usr/bin/newuidmap", "/usr/bin/newgidmap"] {
        assert!(Path::new(helper).exists(), "{helper} is missing: {setup}");
    }
    let (subuid, count) = range("/etc/subuid");
    let (subgid, gcount) = range("/etc/subgid");
    assert!(count >= 65536 && gcount >= 65536, "{NAME}'s ranges are smaller than 65536 ids: {setup}");
    TestUser { uid: entry[2].parse().unwrap(), gid: entry[3].parse().unwrap(), subuid, subgid, count: 65536 }
}

impl TestUser {
    /// `program` run as this user: its uid and gid, no supplementary groups, no capabilities
    /// (util-linux's setpriv).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .args(["--clear-groups", "--inh-caps=-all", "--"])
            .arg(program);
        cmd
    }

    /// `--uid-map`/`--gid-map` for the whole subordinate ranges: namespace ids 0..65536 are host
    /// ids subuid.. and subgid...
    pub fn maps(&self) -> [String; 2] {
        [
            format!("--uid-map=:0:{}:{}:", self.subuid, self.count),
            format!("--gid-map=:0:{}:{}:", self.subgid, self.count),
        ]
    }

    /// Gives `path` to this user (a directory the daemon must write into: its socket's).
    pub fn own(&self, path: &Path) {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid)).unwrap();
    }
}
