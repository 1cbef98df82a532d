//! File handles: `name_to_handle_at` and `open_by_handle_at` as raw syscalls, with a
//! `struct file_handle` that has room for the largest handle (libc's has a zero-length
//! `f_handle`; no well-kept crate offers more than libc: see docs/design.md "File handles").

use std::io;

/// The kernel's MAX_HANDLE_SZ: the largest handle any file system makes.
pub const MAX_HANDLE_SZ: usize = 128;

/// `struct file_handle` with room for the largest handle.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FileHandle {
    pub handle_bytes: u32,
    pub handle_type: i32,
    pub f_handle: [u8; MAX_HANDLE_SZ],
}

impl FileHandle {
    pub fn new(handle_type: i32, bytes: &[u8]) -> FileHandle {
        let mut f_handle = [0u8; MAX_HANDLE_SZ];
        let len = bytes.len().min(MAX_HANDLE_SZ);
        f_handle[..len].copy_from_slice(&bytes[..len]);
        FileHandle { handle_bytes: len as u32, handle_type, f_handle }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.f_handle[..(self.handle_bytes as usize).min(MAX_HANDLE_SZ)]
    }
}

impl PartialEq for FileHandle {
    fn eq(&self, other: &FileHandle) -> bool {
        self.handle_type == other.handle_type && self.bytes() == other.bytes()
    }
}

impl Eq for FileHandle {}

impl std::fmt::Debug for FileHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileHandle(type {}, {} bytes)", self.handle_type, self.handle_bytes)
    }
}

/// The handle of the object `fd` names (any fd, O_PATH included: AT_EMPTY_PATH), and the
/// mount id the kernel reports with it. Needs no privilege. EOPNOTSUPP: the file system makes
/// no handles.
pub fn name_to_handle(fd: i32) -> io::Result<(FileHandle, i32)> {
    name_to_handle_at(fd, c"", libc::AT_EMPTY_PATH)
}

/// AT_HANDLE_CONNECTABLE (Linux 6.13, include/uapi/linux/fcntl.h); not in the libc crate yet.
const AT_HANDLE_CONNECTABLE: i32 = 0x002;

/// A *connectable* handle of the non-directory `fd` names: it also names the object's parent,
/// so that open_by_handle_at, even after the kernel dropped every cached name of the object,
/// gives an fd with its path (a plain handle then gives a nameless fd that /proc calls "/").
/// The kernel refuses the flag with AT_EMPTY_PATH, so the fd is named by its link in
/// `proc_self_fd` (a /proc/self/fd dirfd), followed. EINVAL: a kernel before 6.13, a
/// directory, or an object with no name (unlinked); EOPNOTSUPP: the file system makes none.
pub fn name_to_connectable_handle(proc_self_fd: i32, fd: i32) -> io::Result<FileHandle> {
    let name = super::FdName::new(fd);
    name_to_handle_at(proc_self_fd, name.as_cstr(), libc::AT_SYMLINK_FOLLOW | AT_HANDLE_CONNECTABLE).map(|(h, _)| h)
}

fn name_to_handle_at(dirfd: i32, name: &std::ffi::CStr, flags: i32) -> io::Result<(FileHandle, i32)> {
    let mut h = FileHandle { handle_bytes: MAX_HANDLE_SZ as u32, handle_type: 0, f_handle: [0; MAX_HANDLE_SZ] };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `h` is a `struct file_handle` whose handle_bytes says how much room follows it;
    // the name is a C string; both out pointers are valid for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            dirfd,
            name.as_ptr(),
            &mut h as *mut FileHandle,
            &mut mount_id as *mut libc::c_int,
            flags,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((h, mount_id))
}

/// Opens the object `h` names on the file system of `mount_fd` (which must not be an O_PATH fd:
/// the kernel refuses those with EBADF). Needs CAP_DAC_READ_SEARCH. ESTALE: the object is gone.
pub fn open_by_handle(mount_fd: i32, h: &FileHandle, flags: i32) -> io::Result<i32> {
    // SAFETY: `h` is a valid `struct file_handle` for reading; the call writes nothing to it.
    let r = unsafe {
        libc::syscall(libc::SYS_open_by_handle_at, mount_fd, h as *const FileHandle, flags | libc::O_CLOEXEC)
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as i32)
}
