//! The FUSE wire format (Linux include/uapi/linux/fuse.h), defined here because Debian's header
//! stops at 7.38 and we speak up to 7.40 (FUSE_NOTIFY_RESEND). Plain little-endian `repr(C)`
//! structs; `zerocopy` checks at compile time that every byte pattern is a valid value, so decoding
//! guest bytes needs no `unsafe`, only a length check (done by `read_from_prefix`).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

pub const KERNEL_VERSION: u32 = 7;
/// The minor version we answer INIT with; the kernel uses min(its, ours).
pub const KERNEL_MINOR_VERSION: u32 = 40;
/// The oldest minor whose struct sizes we decode (7.31: Linux 5.10's).
pub const MIN_KERNEL_MINOR_VERSION: u32 = 31;
pub const ROOT_ID: u64 = 1;
/// Bit 63 of `unique` on a request the kernel re-sent after FUSE_NOTIFY_RESEND.
pub const UNIQUE_RESEND: u64 = 1 << 63;

/// Declares the opcode enum with its checked conversion from the wire `u32`.
macro_rules! opcodes {
    ($($name:ident = $val:expr,)*) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u32)]
        pub enum Opcode { $($name = $val,)* }

        impl Opcode {
            pub const ALL: &'static [Opcode] = &[$(Opcode::$name,)*];
        }

        impl TryFrom<u32> for Opcode {
            type Error = u32;
            fn try_from(v: u32) -> Result<Self, u32> {
                match v { $($val => Ok(Opcode::$name),)* other => Err(other) }
            }
        }
    };
}

opcodes! {
    Lookup = 1, Forget = 2, Getattr = 3, Setattr = 4, Readlink = 5, Symlink = 6, Mknod = 8,
    Mkdir = 9, Unlink = 10, Rmdir = 11, Rename = 12, Link = 13, Open = 14, Read = 15, Write = 16,
    Statfs = 17, Release = 18, Fsync = 20, Setxattr = 21, Getxattr = 22, Listxattr = 23,
    Removexattr = 24, Flush = 25, Init = 26, Opendir = 27, Readdir = 28, Releasedir = 29,
    Fsyncdir = 30, Getlk = 31, Setlk = 32, Setlkw = 33, Access = 34, Create = 35, Interrupt = 36,
    Bmap = 37, Destroy = 38, Ioctl = 39, Poll = 40, NotifyReply = 41, BatchForget = 42,
    Fallocate = 43, Readdirplus = 44, Rename2 = 45, Lseek = 46, CopyFileRange = 47,
    SetupMapping = 48, RemoveMapping = 49, Syncfs = 50, Tmpfile = 51, Statx = 52,
    CopyFileRange64 = 53,
}

/// Notification codes (written with unique == 0).
pub const NOTIFY_RESEND: i32 = 7;

// INIT flags (the low 32 bits are `flags`, the high 32 bits `flags2`).
pub const ASYNC_READ: u64 = 1 << 0;
pub const POSIX_LOCKS: u64 = 1 << 1;
pub const ATOMIC_O_TRUNC: u64 = 1 << 3;
pub const EXPORT_SUPPORT: u64 = 1 << 4;
pub const BIG_WRITES: u64 = 1 << 5;
pub const DONT_MASK: u64 = 1 << 6;
pub const FLOCK_LOCKS: u64 = 1 << 10;
pub const AUTO_INVAL_DATA: u64 = 1 << 12;
pub const DO_READDIRPLUS: u64 = 1 << 13;
pub const READDIRPLUS_AUTO: u64 = 1 << 14;
pub const ASYNC_DIO: u64 = 1 << 15;
pub const WRITEBACK_CACHE: u64 = 1 << 16;
pub const PARALLEL_DIROPS: u64 = 1 << 18;
pub const HANDLE_KILLPRIV: u64 = 1 << 19;
pub const POSIX_ACL: u64 = 1 << 20;
pub const MAX_PAGES: u64 = 1 << 22;
pub const SUBMOUNTS: u64 = 1 << 27;
/// `fuse_attr.flags`: the entry is the root of another file system (with SUBMOUNTS).
pub const ATTR_SUBMOUNT: u32 = 1 << 0;
pub const HANDLE_KILLPRIV_V2: u64 = 1 << 28;
pub const SETXATTR_EXT: u64 = 1 << 29;
pub const INIT_EXT: u64 = 1 << 30;
pub const SECURITY_CTX: u64 = 1 << 32;
pub const DIRECT_IO_ALLOW_MMAP: u64 = 1 << 36;
/// FUSE_PASSTHROUGH (7.40, Linux 6.9+): OPEN/CREATE replies may name a backing file registered
/// with FUSE_DEV_IOC_BACKING_OPEN; the kernel then reads, writes and maps it itself. Needs
/// `max_stack_depth` in the INIT reply; the kernel refuses it together with WRITEBACK_CACHE.
pub const PASSTHROUGH: u64 = 1 << 37;
pub const HAS_RESEND: u64 = 1 << 39;

// SETATTR `valid` bits.
pub const FATTR_MODE: u32 = 1 << 0;
pub const FATTR_UID: u32 = 1 << 1;
pub const FATTR_GID: u32 = 1 << 2;
pub const FATTR_SIZE: u32 = 1 << 3;
pub const FATTR_ATIME: u32 = 1 << 4;
pub const FATTR_MTIME: u32 = 1 << 5;
pub const FATTR_FH: u32 = 1 << 6;
pub const FATTR_ATIME_NOW: u32 = 1 << 7;
pub const FATTR_MTIME_NOW: u32 = 1 << 8;
pub const FATTR_KILL_SUIDGID: u32 = 1 << 11;

// OPEN reply flags.
pub const FOPEN_DIRECT_IO: u32 = 1 << 0;
pub const FOPEN_KEEP_CACHE: u32 = 1 << 1;
pub const FOPEN_CACHE_DIR: u32 = 1 << 3;
/// No FLUSH when the guest closes this open file (Linux 5.15+; ignored with writeback caching).
pub const FOPEN_NOFLUSH: u32 = 1 << 5;
/// The reply's `backing_id` names the backing file (7.40). The kernel allows only DIRECT_IO,
/// PARALLEL_DIRECT_WRITES and NOFLUSH beside it (fs/fuse/iomode.c `FOPEN_PASSTHROUGH_MASK`).
pub const FOPEN_PASSTHROUGH: u32 = 1 << 7;

/// The stack depth we announce with PASSTHROUGH: backing files on a file system that is not
/// itself stacked (ext4, xfs, tmpfs...); our mount can still be an overlayfs lower layer.
pub const PASSTHROUGH_MAX_STACK_DEPTH: u32 = 1;

/// FUSE_DEV_IOC_BACKING_OPEN = _IOW(229, 1, struct fuse_backing_map): registers a backing file
/// with the connection and returns its id (> 0).
pub const DEV_IOC_BACKING_OPEN: u64 = 0x4010_e501;
/// FUSE_DEV_IOC_BACKING_CLOSE = _IOW(229, 2, uint32_t): drops a registration by id.
pub const DEV_IOC_BACKING_CLOSE: u64 = 0x4004_e502;

/// In an OPEN's `flags`: the kernel's internal `__FMODE_EXEC`, set (with O_RDONLY) only when the
/// kernel opens a program for execve. No open(2) can set it: the kernel masks it out.
pub const FMODE_EXEC: u32 = 0x20;

pub const GETATTR_FH: u32 = 1 << 0;
pub const LK_FLOCK: u32 = 1 << 0;
pub const WRITE_KILL_SUIDGID: u32 = 1 << 2;
pub const OPEN_KILL_SUIDGID: u32 = 1 << 0;

/// Derives shared by every wire struct.
macro_rules! wire {
    ($(#[$m:meta])* pub struct $name:ident { $($field:ident : $ty:ty,)* }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
        pub struct $name { $(pub $field: $ty,)* }
    };
}

wire!(
    pub struct InHeader {
        len: u32,
        opcode: u32,
        unique: u64,
        nodeid: u64,
        uid: u32,
        gid: u32,
        pid: u32,
        total_extlen: u16,
        padding: u16,
    }
);
wire!(
    pub struct OutHeader {
        len: u32,
        error: i32,
        unique: u64,
    }
);
wire!(
    pub struct InitIn {
        major: u32,
        minor: u32,
        max_readahead: u32,
        flags: u32,
    }
);
// The 7.36+ tail of fuse_init_in, present when the kernel sets INIT_EXT.
wire!(
    pub struct InitInExt {
        flags2: u32,
        unused: [u32; 11],
    }
);
wire!(
    pub struct InitOut {
        major: u32,
        minor: u32,
        max_readahead: u32,
        flags: u32,
        max_background: u16,
        congestion_threshold: u16,
        max_write: u32,
        time_gran: u32,
        max_pages: u16,
        map_alignment: u16,
        flags2: u32,
        // 7.40: with PASSTHROUGH, how deep the backing files' file systems may stack.
        max_stack_depth: u32,
        unused: [u32; 6],
    }
);
// The argument of FUSE_DEV_IOC_BACKING_OPEN (7.40).
wire!(
    pub struct BackingMap {
        fd: i32,
        flags: u32,
        padding: u64,
    }
);
wire!(
    pub struct Attr {
        ino: u64,
        size: u64,
        blocks: u64,
        atime: u64,
        mtime: u64,
        ctime: u64,
        atimensec: u32,
        mtimensec: u32,
        ctimensec: u32,
        mode: u32,
        nlink: u32,
        uid: u32,
        gid: u32,
        rdev: u32,
        blksize: u32,
        flags: u32,
    }
);
wire!(
    pub struct EntryOut {
        nodeid: u64,
        generation: u64,
        entry_valid: u64,
        attr_valid: u64,
        entry_valid_nsec: u32,
        attr_valid_nsec: u32,
        attr: Attr,
    }
);
wire!(
    pub struct AttrOut {
        attr_valid: u64,
        attr_valid_nsec: u32,
        dummy: u32,
        attr: Attr,
    }
);
wire!(
    pub struct ForgetIn {
        nlookup: u64,
    }
);
wire!(
    pub struct ForgetOne {
        nodeid: u64,
        nlookup: u64,
    }
);
wire!(
    pub struct BatchForgetIn {
        count: u32,
        dummy: u32,
    }
);
wire!(
    pub struct GetattrIn {
        getattr_flags: u32,
        dummy: u32,
        fh: u64,
    }
);
wire!(
    pub struct MknodIn {
        mode: u32,
        rdev: u32,
        umask: u32,
        padding: u32,
    }
);
wire!(
    pub struct MkdirIn {
        mode: u32,
        umask: u32,
    }
);
wire!(
    pub struct RenameIn {
        newdir: u64,
    }
);
wire!(
    pub struct Rename2In {
        newdir: u64,
        flags: u32,
        padding: u32,
    }
);
wire!(
    pub struct LinkIn {
        oldnodeid: u64,
    }
);
wire!(
    pub struct SetattrIn {
        valid: u32,
        padding: u32,
        fh: u64,
        size: u64,
        lock_owner: u64,
        atime: u64,
        mtime: u64,
        ctime: u64,
        atimensec: u32,
        mtimensec: u32,
        ctimensec: u32,
        mode: u32,
        unused4: u32,
        uid: u32,
        gid: u32,
        unused5: u32,
    }
);
wire!(
    pub struct OpenIn {
        flags: u32,
        open_flags: u32,
    }
);
wire!(
    pub struct CreateIn {
        flags: u32,
        mode: u32,
        umask: u32,
        open_flags: u32,
    }
);
wire!(
    pub struct OpenOut {
        fh: u64,
        open_flags: u32,
        backing_id: i32,
    }
);
wire!(
    pub struct ReleaseIn {
        fh: u64,
        flags: u32,
        release_flags: u32,
        lock_owner: u64,
    }
);
wire!(
    pub struct FlushIn {
        fh: u64,
        unused: u32,
        padding: u32,
        lock_owner: u64,
    }
);
wire!(
    pub struct ReadIn {
        fh: u64,
        offset: u64,
        size: u32,
        read_flags: u32,
        lock_owner: u64,
        flags: u32,
        padding: u32,
    }
);
wire!(
    pub struct WriteIn {
        fh: u64,
        offset: u64,
        size: u32,
        write_flags: u32,
        lock_owner: u64,
        flags: u32,
        padding: u32,
    }
);
wire!(
    pub struct WriteOut {
        size: u32,
        padding: u32,
    }
);
wire!(
    pub struct Kstatfs {
        blocks: u64,
        bfree: u64,
        bavail: u64,
        files: u64,
        ffree: u64,
        bsize: u32,
        namelen: u32,
        frsize: u32,
        padding: u32,
        spare: [u32; 6],
    }
);
wire!(
    pub struct FsyncIn {
        fh: u64,
        fsync_flags: u32,
        padding: u32,
    }
);
// fuse_setxattr_in before 7.33 / without SETXATTR_EXT.
wire!(
    pub struct SetxattrIn {
        size: u32,
        flags: u32,
    }
);
wire!(
    pub struct SetxattrInExt {
        setxattr_flags: u32,
        padding: u32,
    }
);
wire!(
    pub struct GetxattrIn {
        size: u32,
        padding: u32,
    }
);
wire!(
    pub struct GetxattrOut {
        size: u32,
        padding: u32,
    }
);
wire!(
    pub struct FileLock {
        start: u64,
        end: u64,
        typ: u32,
        pid: u32,
    }
);
wire!(
    pub struct LkIn {
        fh: u64,
        owner: u64,
        lk: FileLock,
        lk_flags: u32,
        padding: u32,
    }
);
wire!(
    pub struct LkOut {
        lk: FileLock,
    }
);
wire!(
    pub struct AccessIn {
        mask: u32,
        padding: u32,
    }
);
wire!(
    pub struct InterruptIn {
        unique: u64,
    }
);
wire!(
    pub struct FallocateIn {
        fh: u64,
        offset: u64,
        length: u64,
        mode: u32,
        padding: u32,
    }
);
wire!(
    pub struct LseekIn {
        fh: u64,
        offset: u64,
        whence: u32,
        padding: u32,
    }
);
wire!(
    pub struct LseekOut {
        offset: u64,
    }
);
wire!(
    pub struct CopyFileRangeIn {
        fh_in: u64,
        off_in: u64,
        nodeid_out: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
        flags: u64,
    }
);
wire!(
    pub struct SyncfsIn {
        padding: u64,
    }
);
wire!(
    pub struct Dirent {
        ino: u64,
        off: u64,
        namelen: u32,
        typ: u32,
    }
);

/// Size of a dirent record for a name of `namelen` bytes, padded to 8 as the kernel expects.
pub const fn dirent_size(namelen: usize) -> usize {
    (size_of::<Dirent>() + namelen + 7) & !7
}

/// Size of a direntplus record (entry_out + dirent) for a name of `namelen` bytes.
pub const fn direntplus_size(namelen: usize) -> usize {
    (size_of::<EntryOut>() + size_of::<Dirent>() + namelen + 7) & !7
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sizes the kernel's fuse.h gives; a mismatch would corrupt every reply.
    #[test]
    fn test_abi_struct_sizes_match_kernel() {
        assert_eq!(size_of::<InHeader>(), 40);
        assert_eq!(size_of::<OutHeader>(), 16);
        assert_eq!(size_of::<InitIn>() + size_of::<InitInExt>(), 64);
        assert_eq!(size_of::<InitOut>(), 64);
        assert_eq!(std::mem::offset_of!(InitOut, max_stack_depth), 36);
        assert_eq!(size_of::<BackingMap>(), 16);
        assert_eq!(size_of::<OpenOut>(), 16);
        // _IOW(229, nr, size) = 1 << 30 | size << 16 | 229 << 8 | nr
        assert_eq!(DEV_IOC_BACKING_OPEN, 1 << 30 | (size_of::<BackingMap>() as u64) << 16 | 229 << 8 | 1);
        assert_eq!(DEV_IOC_BACKING_CLOSE, 1 << 30 | 4 << 16 | 229 << 8 | 2);
        assert_eq!(size_of::<Attr>(), 88);
        assert_eq!(size_of::<EntryOut>(), 128);
        assert_eq!(size_of::<AttrOut>(), 104);
        assert_eq!(size_of::<SetattrIn>(), 88);
        assert_eq!(size_of::<ReadIn>(), 40);
        assert_eq!(size_of::<WriteIn>(), 40);
        assert_eq!(size_of::<Kstatfs>(), 80);
        assert_eq!(size_of::<LkIn>(), 48);
        assert_eq!(size_of::<CopyFileRangeIn>(), 56);
        assert_eq!(size_of::<Dirent>(), 24);
    }

    #[test]
    fn test_opcode_conversion_is_checked() {
        for op in Opcode::ALL {
            assert_eq!(Opcode::try_from(*op as u32), Ok(*op));
        }
        assert_eq!(Opcode::try_from(7), Err(7));
        assert_eq!(Opcode::try_from(0), Err(0));
        assert_eq!(Opcode::try_from(4096), Err(4096));
    }
}
