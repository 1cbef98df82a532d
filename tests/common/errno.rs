//! Errno values printed by name, in failure messages and in the results the compare suite
//! records for both trees. One table for every test.

use std::fmt;

/// An errno, printed by name (`ENOENT`), or as `errno N` when the table does not know it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

#[rustfmt::skip]
const NAMES: &[(i32, &str)] = {
    use libc::*;
    &[
        (EPERM, "EPERM"), (ENOENT, "ENOENT"), (EINTR, "EINTR"), (EIO, "EIO"), (ENXIO, "ENXIO"),
        (E2BIG, "E2BIG"), (EBADF, "EBADF"), (EAGAIN, "EAGAIN"), (ENOMEM, "ENOMEM"),
        (EACCES, "EACCES"), (EBUSY, "EBUSY"), (EEXIST, "EEXIST"), (EXDEV, "EXDEV"),
        (ENOTDIR, "ENOTDIR"), (EISDIR, "EISDIR"), (EINVAL, "EINVAL"), (ENFILE, "ENFILE"),
        (EMFILE, "EMFILE"), (EFBIG, "EFBIG"), (ENOSPC, "ENOSPC"), (ESPIPE, "ESPIPE"),
        (EROFS, "EROFS"), (EMLINK, "EMLINK"), (ERANGE, "ERANGE"), (EDEADLK, "EDEADLK"),
        (ENAMETOOLONG, "ENAMETOOLONG"), (ENOLCK, "ENOLCK"), (ENOSYS, "ENOSYS"),
        (ENOTEMPTY, "ENOTEMPTY"), (ELOOP, "ELOOP"), (ENODATA, "ENODATA"), (ESTALE, "ESTALE"),
        (EOPNOTSUPP, "EOPNOTSUPP"), (ENOTCONN, "ENOTCONN"), (ECONNABORTED, "ECONNABORTED"),
    ]
};

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match NAMES.iter().find(|(n, _)| *n == self.0) {
            Some((_, name)) => f.write_str(name),
            None => write!(f, "errno {}", self.0),
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The name of errno `e` (see [`Errno`]).
pub fn name(e: i32) -> String {
    Errno(e).to_string()
}
