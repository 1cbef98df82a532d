//! Request decoding: `&[u8]` in, a typed `Request` out. No I/O, no fds, no libc. Every length
//! the peer gives is checked against the bytes actually received before anything is read.

use std::ffi::CStr;

use zerocopy::FromBytes;

use super::abi::{self, InHeader, Opcode};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("request of {0} bytes is shorter than a FUSE header")]
    ShortHeader(usize),
    #[error("header says {header} bytes but {actual} arrived")]
    LengthMismatch { header: u32, actual: usize },
    #[error("extension area of {0} bytes does not fit the request")]
    BadExtensions(usize),
    #[error("{0:?}: argument shorter than its struct")]
    Truncated(Opcode),
    #[error("{0:?}: name not NUL-terminated")]
    UnterminatedName(Opcode),
    #[error("{0:?}: {1} unexpected trailing bytes")]
    Trailing(Opcode, usize),
    #[error("{0:?}: declared size {1} disagrees with the payload")]
    SizeMismatch(Opcode, u32),
    #[error("unknown opcode {0}")]
    UnknownOpcode(u32),
}

impl DecodeError {
    /// The errno that answers a request that failed to decode (if it can be answered at all,
    /// see `Request::header_of`).
    pub fn errno(&self) -> i32 {
        match self {
            DecodeError::UnknownOpcode(_) => libc::ENOSYS,
            DecodeError::ShortHeader(_)
            | DecodeError::LengthMismatch { .. }
            | DecodeError::BadExtensions(_)
            | DecodeError::Truncated(_)
            | DecodeError::UnterminatedName(_)
            | DecodeError::Trailing(..)
            | DecodeError::SizeMismatch(..) => libc::EINVAL,
        }
    }
}

/// One decoded request. Names are `&CStr` slices of the request buffer, checked for a NUL
/// terminator and no interior NUL; their *meaning* (`/`, `..`) is checked in fs/.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op<'a> {
    Init {
        arg: abi::InitIn,
        flags2: u32,
    },
    Destroy,
    Lookup {
        name: &'a CStr,
    },
    Forget {
        nlookup: u64,
    },
    BatchForget {
        forgets: Vec<abi::ForgetOne>,
    },
    Getattr {
        fh: Option<u64>,
    },
    Setattr(abi::SetattrIn),
    Readlink,
    Symlink {
        name: &'a CStr,
        target: &'a CStr,
    },
    Mknod {
        arg: abi::MknodIn,
        name: &'a CStr,
    },
    Mkdir {
        arg: abi::MkdirIn,
        name: &'a CStr,
    },
    Unlink {
        name: &'a CStr,
    },
    Rmdir {
        name: &'a CStr,
    },
    /// RENAME and RENAME2 (flags 0 for the former).
    Rename {
        newdir: u64,
        flags: u32,
        name: &'a CStr,
        newname: &'a CStr,
    },
    Link {
        oldnodeid: u64,
        name: &'a CStr,
    },
    Open(abi::OpenIn),
    Opendir(abi::OpenIn),
    Create {
        arg: abi::CreateIn,
        name: &'a CStr,
    },
    Tmpfile {
        arg: abi::CreateIn,
    },
    Read(abi::ReadIn),
    Write {
        arg: abi::WriteIn,
        /// The data as it came in the request's bytes: all of it, or nothing when the transport
        /// left it where it arrived (`Request::decode_with`).
        data: &'a [u8],
    },
    Flush(abi::FlushIn),
    Release(abi::ReleaseIn),
    Releasedir(abi::ReleaseIn),
    Fsync(abi::FsyncIn),
    Fsyncdir(abi::FsyncIn),
    Readdir(abi::ReadIn),
    Readdirplus(abi::ReadIn),
    Statfs,
    Access(abi::AccessIn),
    Setxattr {
        size: u32,
        flags: u32,
        name: &'a CStr,
        value: &'a [u8],
    },
    Getxattr {
        size: u32,
        name: &'a CStr,
    },
    Listxattr {
        size: u32,
    },
    Removexattr {
        name: &'a CStr,
    },
    Getlk(abi::LkIn),
    Setlk {
        arg: abi::LkIn,
        sleep: bool,
    },
    Fallocate(abi::FallocateIn),
    Lseek(abi::LseekIn),
    CopyFileRange(abi::CopyFileRangeIn),
    Syncfs,
    Interrupt {
        unique: u64,
    },
    /// A known opcode that this daemon does not serve (answered ENOSYS).
    Unsupported(Opcode),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub header: InHeader,
    pub op: Op<'a>,
}

/// Reads typed pieces off the front of a request body, one check per read.
struct Cursor<'a> {
    buf: &'a [u8],
    opcode: Opcode,
}

impl<'a> Cursor<'a> {
    fn obj<T: FromBytes>(&mut self) -> Result<T, DecodeError> {
        let (v, rest) = T::read_from_prefix(self.buf).map_err(|_| DecodeError::Truncated(self.opcode))?;
        self.buf = rest;
        Ok(v)
    }

    fn cstr(&mut self) -> Result<&'a CStr, DecodeError> {
        let nul = self.buf.iter().position(|b| *b == 0).ok_or(DecodeError::UnterminatedName(self.opcode))?;
        let (name, rest) = self.buf.split_at(nul + 1);
        self.buf = rest;
        // from_bytes_with_nul cannot fail: `name` ends at the first NUL.
        CStr::from_bytes_with_nul(name).map_err(|_| DecodeError::UnterminatedName(self.opcode))
    }

    fn bytes(&mut self, len: u32) -> Result<&'a [u8], DecodeError> {
        let len = len as usize;
        if self.buf.len() < len {
            return Err(DecodeError::SizeMismatch(self.opcode, len as u32));
        }
        let (data, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(data)
    }

    /// Everything must have been consumed: oversized requests are rejected, not ignored.
    fn finish<T>(self, v: T) -> Result<T, DecodeError> {
        if self.buf.is_empty() { Ok(v) } else { Err(DecodeError::Trailing(self.opcode, self.buf.len())) }
    }
}

impl<'a> Request<'a> {
    /// The header alone, when it is whole and its length matches: enough to address an error
    /// reply to a request whose body failed to decode.
    pub fn header_of(buf: &[u8]) -> Result<InHeader, DecodeError> {
        Self::header_with(buf, 0)
    }

    /// The header `buf` starts with, its length unchecked: for a transport deciding how to take
    /// a request in (its opcode) before it has all of it.
    pub fn header_prefix(buf: &[u8]) -> Option<InHeader> {
        InHeader::read_from_prefix(buf).ok().map(|(h, _)| h)
    }

    /// `header_of` for a request whose last `left_out` bytes its transport left where they
    /// arrived instead of copying them behind `buf` (a WRITE's data, in guest memory).
    pub fn header_with(buf: &[u8], left_out: usize) -> Result<InHeader, DecodeError> {
        let h = Self::header_prefix(buf).ok_or(DecodeError::ShortHeader(buf.len()))?;
        let actual = buf.len().saturating_add(left_out);
        if h.len as usize != actual {
            return Err(DecodeError::LengthMismatch { header: h.len, actual });
        }
        Ok(h)
    }

    /// Decodes one request as laid out for the features we negotiate (no SETXATTR_EXT: SETXATTR
    /// carries the 8-byte fuse_setxattr_in).
    pub fn decode(buf: &'a [u8]) -> Result<Request<'a>, DecodeError> {
        Self::decode_with(buf, 0)
    }

    /// `decode` for a request whose last `left_out` bytes are elsewhere: only a WRITE without
    /// extensions, whose data they are in full (`Op::Write`'s `data` is then empty).
    pub fn decode_with(buf: &'a [u8], left_out: usize) -> Result<Request<'a>, DecodeError> {
        let header = Self::header_with(buf, left_out)?;
        let body = &buf[size_of::<InHeader>()..];
        if left_out > 0 && (header.opcode != Opcode::Write as u32 || header.total_extlen != 0) {
            return Err(DecodeError::LengthMismatch { header: header.len, actual: buf.len() });
        }
        // Extensions (security context, supplementary group) trail the arguments: cut off here;
        // a security context is read from them by fuse::ext when FUSE_SECURITY_CTX was agreed.
        let ext = header.total_extlen as usize * 8;
        let body = body.len().checked_sub(ext).map(|n| &body[..n]).ok_or(DecodeError::BadExtensions(ext))?;
        let opcode = Opcode::try_from(header.opcode).map_err(DecodeError::UnknownOpcode)?;
        let mut c = Cursor { buf: body, opcode };
        let op = match opcode {
            Opcode::Init => {
                let arg: abi::InitIn = c.obj()?;
                // The 7.36+ tail is present only when the kernel says so; older kernels send 16 bytes.
                let flags2 =
                    if u64::from(arg.flags) & abi::INIT_EXT != 0 { c.obj::<abi::InitInExt>()?.flags2 } else { 0 };
                Op::Init { arg, flags2 }
            }
            Opcode::Destroy => Op::Destroy,
            Opcode::Lookup => Op::Lookup { name: c.cstr()? },
            Opcode::Forget => Op::Forget { nlookup: c.obj::<abi::ForgetIn>()?.nlookup },
            Opcode::BatchForget => {
                let n: abi::BatchForgetIn = c.obj()?;
                let want = (n.count as usize).checked_mul(size_of::<abi::ForgetOne>());
                if want != Some(c.buf.len()) {
                    return Err(DecodeError::SizeMismatch(opcode, n.count));
                }
                let forgets = (0..n.count).map(|_| c.obj()).collect::<Result<Vec<_>, _>>()?;
                Op::BatchForget { forgets }
            }
            Opcode::Getattr => {
                let a: abi::GetattrIn = c.obj()?;
                Op::Getattr { fh: (a.getattr_flags & abi::GETATTR_FH != 0).then_some(a.fh) }
            }
            Opcode::Setattr => Op::Setattr(c.obj()?),
            Opcode::Readlink => Op::Readlink,
            Opcode::Symlink => Op::Symlink { name: c.cstr()?, target: c.cstr()? },
            Opcode::Mknod => Op::Mknod { arg: c.obj()?, name: c.cstr()? },
            Opcode::Mkdir => Op::Mkdir { arg: c.obj()?, name: c.cstr()? },
            Opcode::Unlink => Op::Unlink { name: c.cstr()? },
            Opcode::Rmdir => Op::Rmdir { name: c.cstr()? },
            Opcode::Rename => {
                let a: abi::RenameIn = c.obj()?;
                Op::Rename { newdir: a.newdir, flags: 0, name: c.cstr()?, newname: c.cstr()? }
            }
            Opcode::Rename2 => {
                let a: abi::Rename2In = c.obj()?;
                Op::Rename { newdir: a.newdir, flags: a.flags, name: c.cstr()?, newname: c.cstr()? }
            }
            Opcode::Link => Op::Link { oldnodeid: c.obj::<abi::LinkIn>()?.oldnodeid, name: c.cstr()? },
            Opcode::Open => Op::Open(c.obj()?),
            Opcode::Opendir => Op::Opendir(c.obj()?),
            Opcode::Create => Op::Create { arg: c.obj()?, name: c.cstr()? },
            Opcode::Tmpfile => {
                // The kernel sends a placeholder name for the unnamed file; it carries no meaning.
                let arg = c.obj()?;
                if !c.buf.is_empty() {
                    c.cstr()?;
                }
                Op::Tmpfile { arg }
            }
            Opcode::Read => Op::Read(c.obj()?),
            Opcode::Write => {
                let arg: abi::WriteIn = c.obj()?;
                if arg.size as usize != c.buf.len() + left_out || left_out > 0 && !c.buf.is_empty() {
                    return Err(DecodeError::SizeMismatch(opcode, arg.size));
                }
                Op::Write { arg, data: c.bytes(c.buf.len() as u32)? }
            }
            Opcode::Flush => Op::Flush(c.obj()?),
            Opcode::Release => Op::Release(c.obj()?),
            Opcode::Releasedir => Op::Releasedir(c.obj()?),
            Opcode::Fsync => Op::Fsync(c.obj()?),
            Opcode::Fsyncdir => Op::Fsyncdir(c.obj()?),
            Opcode::Readdir => Op::Readdir(c.obj()?),
            Opcode::Readdirplus => Op::Readdirplus(c.obj()?),
            Opcode::Statfs => Op::Statfs,
            Opcode::Access => Op::Access(c.obj()?),
            Opcode::Setxattr => {
                let a: abi::SetxattrIn = c.obj()?;
                let name = c.cstr()?;
                if a.size as usize != c.buf.len() {
                    return Err(DecodeError::SizeMismatch(opcode, a.size));
                }
                Op::Setxattr { size: a.size, flags: a.flags, name, value: c.bytes(a.size)? }
            }
            Opcode::Getxattr => {
                let a: abi::GetxattrIn = c.obj()?;
                Op::Getxattr { size: a.size, name: c.cstr()? }
            }
            Opcode::Listxattr => Op::Listxattr { size: c.obj::<abi::GetxattrIn>()?.size },
            Opcode::Removexattr => Op::Removexattr { name: c.cstr()? },
            Opcode::Getlk => Op::Getlk(c.obj()?),
            Opcode::Setlk => Op::Setlk { arg: c.obj()?, sleep: false },
            Opcode::Setlkw => Op::Setlk { arg: c.obj()?, sleep: true },
            Opcode::Fallocate => Op::Fallocate(c.obj()?),
            Opcode::Lseek => Op::Lseek(c.obj()?),
            Opcode::CopyFileRange => Op::CopyFileRange(c.obj()?),
            Opcode::Syncfs => {
                c.obj::<abi::SyncfsIn>()?;
                Op::Syncfs
            }
            Opcode::Interrupt => Op::Interrupt { unique: c.obj::<abi::InterruptIn>()?.unique },
            Opcode::Bmap
            | Opcode::Ioctl
            | Opcode::Poll
            | Opcode::NotifyReply
            | Opcode::SetupMapping
            | Opcode::RemoveMapping
            | Opcode::Statx
            | Opcode::CopyFileRange64 => return Ok(Request { header, op: Op::Unsupported(opcode) }),
        };
        c.finish(Request { header, op })
    }
}
