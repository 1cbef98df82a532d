//! Differential tests: the FUSE mount must behave exactly like the plain directory it passes
//! through. Every test mounts a fresh share (`common::Mount`), runs scenarios of real syscalls
//! on a plain directory next to the share and on a directory inside the mount, and compares
//! each step's result (return value, errno, stat fields, data, names, xattrs, lock conflicts),
//! then the two whole trees. The plain directory is the oracle; nothing is hard-coded.
//!
//! compare/harness.rs holds the machinery (`Pair::both`, `Rec`, forked non-root children),
//! compare/ops.rs the syscall wrappers, and the other modules the tests, one area each.

mod common;

#[path = "compare/harness.rs"]
mod harness;
#[path = "compare/ops.rs"]
mod ops;

#[path = "compare/file_io.rs"]
mod file_io;
#[path = "compare/killpriv.rs"]
mod killpriv;
#[path = "compare/locks.rs"]
mod locks;
#[path = "compare/namespace.rs"]
mod namespace;
#[path = "compare/perms.rs"]
mod perms;
#[path = "compare/readdir.rs"]
mod readdir;
#[path = "compare/xattr.rs"]
mod xattr;
