//! The other direction of `request`: typed requests to bytes, as the kernel (or a guest driver)
//! would write them. For tests, fuzzers and the test frontends only.

use std::ffi::CStr;

use zerocopy::{Immutable, IntoBytes};

use super::abi::{self, InHeader, Opcode};
use super::request::Op;

/// Who sends a request; the rest of the header follows from the op.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sender {
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

struct Body(Vec<u8>);

impl Body {
    fn obj<T: IntoBytes + Immutable>(&mut self, v: &T) -> &mut Self {
        self.0.extend_from_slice(v.as_bytes());
        self
    }
    fn name(&mut self, n: &CStr) -> &mut Self {
        self.0.extend_from_slice(n.to_bytes_with_nul());
        self
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
}

/// The opcode an `Op` is sent as.
pub fn opcode_of(op: &Op<'_>) -> Opcode {
    match op {
        Op::Init { .. } => Opcode::Init,
        Op::Destroy => Opcode::Destroy,
        Op::Lookup { .. } => Opcode::Lookup,
        Op::Forget { .. } => Opcode::Forget,
        Op::BatchForget { .. } => Opcode::BatchForget,
        Op::Getattr { .. } => Opcode::Getattr,
        Op::Setattr(_) => Opcode::Setattr,
        Op::Readlink => Opcode::Readlink,
        Op::Symlink { .. } => Opcode::Symlink,
        Op::Mknod { .. } => Opcode::Mknod,
        Op::Mkdir { .. } => Opcode::Mkdir,
        Op::Unlink { .. } => Opcode::Unlink,
        Op::Rmdir { .. } => Opcode::Rmdir,
        Op::Rename { flags: 0, .. } => Opcode::Rename,
        Op::Rename { .. } => Opcode::Rename2,
        Op::Link { .. } => Opcode::Link,
        Op::Open(_) => Opcode::Open,
        Op::Opendir(_) => Opcode::Opendir,
        Op::Create { .. } => Opcode::Create,
        Op::Tmpfile { .. } => Opcode::Tmpfile,
        Op::Read(_) => Opcode::Read,
        Op::Write { .. } => Opcode::Write,
        Op::Flush(_) => Opcode::Flush,
        Op::Release(_) => Opcode::Release,
        Op::Releasedir(_) => Opcode::Releasedir,
        Op::Fsync(_) => Opcode::Fsync,
        Op::Fsyncdir(_) => Opcode::Fsyncdir,
        Op::Readdir(_) => Opcode::Readdir,
        Op::Readdirplus(_) => Opcode::Readdirplus,
        Op::Statfs => Opcode::Statfs,
        Op::Access(_) => Opcode::Access,
        Op::Setxattr { .. } => Opcode::Setxattr,
        Op::Getxattr { .. } => Opcode::Getxattr,
        Op::Listxattr { .. } => Opcode::Listxattr,
        Op::Removexattr { .. } => Opcode::Removexattr,
        Op::Getlk(_) => Opcode::Getlk,
        Op::Setlk { sleep: false, .. } => Opcode::Setlk,
        Op::Setlk { sleep: true, .. } => Opcode::Setlkw,
        Op::Fallocate(_) => Opcode::Fallocate,
        Op::Lseek(_) => Opcode::Lseek,
        Op::CopyFileRange(_) => Opcode::CopyFileRange,
        Op::Syncfs => Opcode::Syncfs,
        Op::Interrupt { .. } => Opcode::Interrupt,
        Op::Unsupported(op) => *op,
    }
}

/// Encodes the body of `op` (everything after the header), as `Request::decode` reads it.
pub fn encode_body(op: &Op<'_>) -> Vec<u8> {
    let mut b = Body(Vec::new());
    match op {
        Op::Init { arg, flags2 } => {
            b.obj(arg);
            if u64::from(arg.flags) & abi::INIT_EXT != 0 {
                b.obj(&abi::InitInExt { flags2: *flags2, unused: [0; 11] });
            }
        }
        Op::Destroy | Op::Readlink | Op::Statfs | Op::Unsupported(_) => {}
        Op::Lookup { name } | Op::Unlink { name } | Op::Rmdir { name } | Op::Removexattr { name } => {
            b.name(name);
        }
        Op::Forget { nlookup } => {
            b.obj(&abi::ForgetIn { nlookup: *nlookup });
        }
        Op::BatchForget { forgets } => {
            b.obj(&abi::BatchForgetIn { count: forgets.len() as u32, dummy: 0 });
            for f in forgets {
                b.obj(f);
            }
        }
        Op::Getattr { fh } => {
            let flags = if fh.is_some() { abi::GETATTR_FH } else { 0 };
            b.obj(&abi::GetattrIn { getattr_flags: flags, dummy: 0, fh: fh.unwrap_or(0) });
        }
        Op::Setattr(a) => {
            b.obj(a);
        }
        Op::Symlink { name, target } => {
            b.name(name).name(target);
        }
        Op::Mknod { arg, name } => {
            b.obj(arg).name(name);
        }
        Op::Mkdir { arg, name } => {
            b.obj(arg).name(name);
        }
        Op::Rename { newdir, flags, name, newname } => {
            if *flags == 0 {
                b.obj(&abi::RenameIn { newdir: *newdir });
            } else {
                b.obj(&abi::Rename2In { newdir: *newdir, flags: *flags, padding: 0 });
            }
            b.name(name).name(newname);
        }
        Op::Link { oldnodeid, name } => {
            b.obj(&abi::LinkIn { oldnodeid: *oldnodeid }).name(name);
        }
        Op::Open(a) | Op::Opendir(a) => {
            b.obj(a);
        }
        Op::Create { arg, name } => {
            b.obj(arg).name(name);
        }
        Op::Tmpfile { arg } => {
            b.obj(arg);
        }
        Op::Read(a) | Op::Readdir(a) | Op::Readdirplus(a) => {
            b.obj(a);
        }
        Op::Write { arg, data } => {
            b.obj(arg).bytes(data);
        }
        Op::Flush(a) => {
            b.obj(a);
        }
        Op::Release(a) | Op::Releasedir(a) => {
            b.obj(a);
        }
        Op::Fsync(a) | Op::Fsyncdir(a) => {
            b.obj(a);
        }
        Op::Access(a) => {
            b.obj(a);
        }
        Op::Setxattr { size, flags, name, value } => {
            b.obj(&abi::SetxattrIn { size: *size, flags: *flags });
            b.name(name).bytes(value);
        }
        Op::Getxattr { size, name } => {
            b.obj(&abi::GetxattrIn { size: *size, padding: 0 }).name(name);
        }
        Op::Listxattr { size } => {
            b.obj(&abi::GetxattrIn { size: *size, padding: 0 });
        }
        Op::Getlk(a) | Op::Setlk { arg: a, .. } => {
            b.obj(a);
        }
        Op::Fallocate(a) => {
            b.obj(a);
        }
        Op::Lseek(a) => {
            b.obj(a);
        }
        Op::CopyFileRange(a) => {
            b.obj(a);
        }
        Op::Syncfs => {
            b.obj(&abi::SyncfsIn { padding: 0 });
        }
        Op::Interrupt { unique } => {
            b.obj(&abi::InterruptIn { unique: *unique });
        }
    }
    b.0
}

/// A whole request: header (with the right length and opcode) and body.
pub fn encode_request(from: Sender, op: &Op<'_>) -> Vec<u8> {
    frame(from, opcode_of(op) as u32, &encode_body(op))
}

/// A request with any opcode number and body, for hostile-input tests.
pub fn frame(from: Sender, opcode: u32, body: &[u8]) -> Vec<u8> {
    let header = InHeader {
        len: (size_of::<InHeader>() + body.len()) as u32,
        opcode,
        unique: from.unique,
        nodeid: from.nodeid,
        uid: from.uid,
        gid: from.gid,
        pid: from.pid,
        total_extlen: 0,
        padding: 0,
    };
    let mut v = header.as_bytes().to_vec();
    v.extend_from_slice(body);
    v
}
