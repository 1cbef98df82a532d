//! End-of-run checks: the whole tree against the models, and the daemon's fd table against
//! its baseline; and the probe that tells the daemon answers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::errno::name as ename;
use crate::common::proc::fd_table;
use crate::common::sys;
use crate::model::*;

/// Compares the tree at `root` (a thread's directory, through the mount or in the share) with
/// the model; returns every divergence.
pub fn verify_tree(root: &Path, m: &Model, on: &str) -> Vec<String> {
    let mut bad = Vec::new();
    let mut found: BTreeMap<String, libc::stat> = BTreeMap::new();
    let mut dirs = vec![String::new()];
    while let Some(d) = dirs.pop() {
        let dp = if d.is_empty() { root.to_path_buf() } else { root.join(&d) };
        match sys::readdir(&dp) {
            Err(e) => bad.push(format!("{on}: readdir {dp:?}: {}", ename(e))),
            Ok(names) => {
                for n in names {
                    let rel = join(&d, &n);
                    match sys::lstat(&root.join(&rel)) {
                        Err(e) => bad.push(format!("{on}: lstat {rel}: {}", ename(e))),
                        Ok(st) => {
                            if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                                dirs.push(rel.clone());
                            }
                            found.insert(rel, st);
                        }
                    }
                }
            }
        }
    }
    let want: BTreeSet<&String> = m.names.keys().collect();
    let got: BTreeSet<&String> = found.keys().collect();
    for n in want.difference(&got) {
        bad.push(format!("{on}: {n} is in the model ({:?}) but missing", m.names[*n]));
    }
    for n in got.difference(&want) {
        bad.push(format!("{on}: {n} exists but is not in the model"));
    }
    let mut st_ino_of: HashMap<u64, (u64, String)> = HashMap::new();
    let mut model_of: HashMap<u64, (u64, String)> = HashMap::new();
    for (name, kind) in &m.names {
        let Some(st) = found.get(name) else { continue };
        let p = root.join(name);
        match kind {
            Kind::Dir => {
                if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
                    bad.push(format!("{on}: {name}: expected a directory, got mode {:o}", st.st_mode));
                }
            }
            Kind::File(ino) => {
                let i = &m.inodes[ino];
                if st.st_mode & libc::S_IFMT != libc::S_IFREG {
                    bad.push(format!("{on}: {name}: expected a regular file, got mode {:o}", st.st_mode));
                    continue;
                }
                if st.st_nlink != i.nlink as u64 {
                    bad.push(format!("{on}: {name}: st_nlink expected {} got {}", i.nlink, st.st_nlink));
                }
                match std::fs::read(&p) {
                    Ok(d) if d == i.data => {}
                    Ok(d) => bad.push(format!(
                        "{on}: {name}: data: expected {} got {}",
                        short(&i.data),
                        data_diff(&i.data, &d)
                    )),
                    Err(e) => bad.push(format!("{on}: {name}: read: {e}")),
                }
                let want_x: Vec<String> = i.xattrs.keys().cloned().collect();
                match sys::listxattr(&p, None) {
                    Ok(x) if x == want_x => {
                        for (k, v) in &i.xattrs {
                            match sys::getxattr(&p, None, k) {
                                Ok(got) if got == *v => {}
                                r => bad.push(format!(
                                    "{on}: {name}: xattr {k}: expected {} got {}",
                                    short(v),
                                    show(&r.map(|g| short(&g)))
                                )),
                            }
                        }
                    }
                    r => bad.push(format!("{on}: {name}: xattrs: expected {want_x:?} got {}", show(&r))),
                }
                // Hard links: one model inode = one st_ino, and different ones differ.
                if let Some((other, oname)) = st_ino_of.insert(st.st_ino, (*ino, name.clone()))
                    && other != *ino
                {
                    bad.push(format!(
                        "{on}: {name} and {oname} share st_ino {} but are different files in the model",
                        st.st_ino
                    ));
                }
                if let Some((sino, oname)) = model_of.insert(*ino, (st.st_ino, name.clone()))
                    && sino != st.st_ino
                {
                    bad.push(format!(
                        "{on}: {name} and {oname} are links of one file but have st_ino {} and {sino}",
                        st.st_ino
                    ));
                }
            }
        }
    }
    bad
}

pub fn fd_listing(l: &BTreeMap<i32, String>) -> String {
    l.iter().map(|(n, t)| format!("    {n:>5} -> {t}\n")).collect()
}

/// A LOOKUP round trip to the daemon (a fresh absent name, so no cache can answer).
pub fn probe(mnt: &Path, n: u64) -> Result<(), String> {
    let p = mnt.join(format!(".soak-probe-{n}"));
    match sys::lstat(&p) {
        Err(libc::ENOENT) => Ok(()),
        r => Err(format!("probe lstat({p:?}): expected Err(ENOENT), got {}", show(&r.map(|st| st.st_mode)))),
    }
}

/// The fd table once the daemon has answered a request and the count has been stable 300 ms.
pub fn settle_fds(sup: i32, mnt: &Path) -> BTreeMap<i32, String> {
    probe(mnt, u64::MAX).unwrap_or_else(|e| panic!("soak: first request to the mount failed: {e}"));
    let t0 = Instant::now();
    let mut last = fd_table(sup as u32);
    let mut since = Instant::now();
    while since.elapsed() < Duration::from_millis(300) && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
        let now = fd_table(sup as u32);
        if now.len() != last.len() {
            since = Instant::now();
        }
        last = now;
    }
    last
}

pub fn drop_caches() {
    // SAFETY: no arguments.
    unsafe { libc::sync() };
    crate::common::drop_caches();
}
