//! test_readdir_large: a 1000-entry directory of short names and names near NAME_MAX (several
//! READDIR rounds, each reading the host's entries in pieces sized for the reply; telldir/seekdir,
//! rewinddir mid-way, raw getdents64) and rmdir of a directory that is open and being read.

use std::collections::BTreeMap;
use std::fmt::{self, Debug};

use libc::{EINVAL, ENOENT, O_CREAT, O_DIRECTORY, O_RDONLY, O_WRONLY, S_IFIFO, SEEK_SET};

use crate::harness::*;
use crate::ops::*;

/// A directory listing (name → d_type), printed as a summary.
#[derive(PartialEq, Clone)]
struct Listing(BTreeMap<String, u8>);

impl Debug for Listing {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let mut by_type = BTreeMap::new();
        for t in self.0.values() {
            *by_type.entry(*t).or_insert(0) += 1;
        }
        let h = self.0.iter().fold(0xcbf29ce484222325u64, |h, (n, t)| {
            n.bytes().chain([*t, b'/']).fold(h, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
        });
        write!(f, "{} entries, by d_type {:?}, fnv {:016x}", self.0.len(), by_type, h)
    }
}

fn listing(v: &[(String, u8)]) -> Listing {
    Listing(v.iter().cloned().collect())
}

#[test]
fn test_readdir_large() {
    let t = Pair::new();
    t.both("readdir 1000 entries", |r| {
        r.ok("mkdir big", mkdir(&r.p("big"), 0o755));
        let mut failed = 0;
        for i in 0..1000 {
            // Every seventh name is 246 bytes: the host reads fewer such records per reply.
            let p = r.p(&format!("big/e{i:04}-{}", "x".repeat(if i % 7 == 0 { 240 } else { i % 60 })));
            let res = match i % 10 {
                0 => mkdir(&p, 0o755),
                1 => symlink("target", &p),
                2 => mknod(&p, S_IFIFO | 0o644, 0),
                _ => put(&p, b"", 0o644),
            };
            failed += res.is_err() as usize;
        }
        r.expect("creations that failed", failed, 0);
        let Some(mut d) = r.keep("opendir big", Dir::open(&r.p("big"))) else {
            return;
        };
        let Some(full) = r.keep("full listing (name -> d_type)", d.next(usize::MAX).map(|v| listing(&v))) else {
            return;
        };
        r.expect("entries incl. . and ..", full.0.len(), 1002);
        d.rewind();
        let head = d.next(300).unwrap_or_default();
        let pos = d.tell();
        let mid = d.next(200).unwrap_or_default();
        d.seek(pos);
        let again = d.next(200).unwrap_or_default();
        r.expect("seekdir(telldir) replays the same 200 entries", (mid.len(), again == mid), (200, true));
        let tail = d.next(usize::MAX).unwrap_or_default();
        let n = head.len() + again.len() + tail.len();
        let joined = listing(&[head, again, tail].concat());
        r.expect("300 + 200 + rest == full listing, no duplicates", (n, joined == full), (1002, true));
        d.rewind();
        let some = d.next(123).unwrap_or_default().len();
        d.rewind();
        let after = d.next(usize::MAX).map(|v| listing(&v));
        r.expect("rewinddir mid-way restarts the listing", (some, after.map(|l| l == full)), (123, Ok(true)));
        let fd = r.open("open big O_DIRECTORY", &r.p("big"), O_RDONLY | O_DIRECTORY, 0);
        let (mut calls, mut seen) = (0, Vec::new());
        while let Ok(batch) = getdents(&fd, 1024) {
            calls += 1;
            if batch.is_empty() || calls > 10_000 {
                break;
            }
            seen.extend(batch);
        }
        let as_set: std::collections::BTreeSet<&String> = seen.iter().collect();
        // How many entries one call returns depends on the server's batch size: not compared.
        r.rec("getdents64 with 1 KiB buffers: several calls, entries, unique", (calls > 2, seen.len(), as_set.len()));
        r.expect("... same names as readdir", as_set.into_iter().eq(full.0.keys()), true);
        r.err("getdents64 with a 16-byte buffer", lseek(&fd, 0, SEEK_SET).and(getdents(&fd, 16)), EINVAL);
    });
    t.both("rmdir while open and being read", |r| {
        r.ok("mkdir victim", mkdir(&r.p("victim"), 0o755));
        let files: Vec<String> = (0..50).map(|i| format!("victim/file-{i:03}")).collect();
        r.ok("create 50 files", files.iter().try_for_each(|f| put(&r.p(f), b"v", 0o644).map(drop)));
        let fd = r.open("open victim O_DIRECTORY", &r.p("victim"), O_RDONLY | O_DIRECTORY, 0);
        r.ok("first getdents64 (512 B) returns entries", getdents(&fd, 512).map(|v| !v.is_empty()));
        r.ok("empty it and rmdir", files.iter().try_for_each(|f| unlink(&r.p(f)).map(drop)).and(rmdir(&r.p("victim"))));
        r.err("getdents64 on the removed dir", getdents(&fd, 512), ENOENT);
        r.ok("fstat the removed dir", fstat(&fd));
        r.err("rewind and getdents64 again", lseek(&fd, 0, SEEK_SET).and(getdents(&fd, 4096)), ENOENT);
        let name = c"new";
        r.err(
            "create inside the removed dir",
            sys!(libc::openat(fd.raw(), name.as_ptr(), O_CREAT | O_WRONLY, 0o644)),
            ENOENT,
        );
        r.err("stat by name", stat(&r.p("victim")), ENOENT);
    });
    t.finish();
}
