#![allow(dead_code)] // a test-support module: not every test uses every part
//! A FUSE-to-virtqueue bridge: mounts a FUSE file system whose /dev/fuse requests are carried,
//! unchanged, over real virtqueues to a vhost-user-fs backend, and whose replies come back the
//! same way. The host kernel thus plays the guest kernel: real syscalls on the mount point become
//! the FUSE requests a guest would send, so whole real-syscall test suites run over the
//! vhost-user transport.
//!
//! Each request queue carries up to `BridgeOptions::in_flight` requests at once, as a guest's
//! driver does when several processes wait in syscalls: one thread per request in flight, each
//! reading its own clone of the /dev/fuse connection (the kernel sends a reply back to the
//! descriptor its request was read from) and sending what it reads through its own slot of the
//! queue (`SharedQueue`: descriptors and buffers of its own, completions matched by head, since
//! the device may return chains out of order). The default is one request in flight per queue.
//! FORGET, BATCH_FORGET and INTERRUPT go to the shared hiprio queue, as the Linux virtio-fs
//! driver sends them, one at a time.

use std::ffi::CString;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use phoenixfsd::fuse::abi::{InHeader, Opcode, OutHeader, ReadIn};
use zerocopy::{FromBytes, IntoBytes};

use super::frontend::{DEFAULT_TIMEOUT, Error, Frontend, FrontendOptions, QueueHandle, QueueSlot, Result, SharedQueue};

/// The largest reply the kernel can want: a 1 MiB READ (256 pages, FUSE_MAX_MAX_PAGES) plus
/// headers.
const MAX_REPLY: u32 = (1 << 20) + 4096;
/// The kernel refuses reads into buffers smaller than max_write plus the WRITE headers.
const READ_BUFFER: usize = (1 << 20) + (64 << 10);
/// The part of a queue's data area each request in flight needs: the largest request and the
/// largest reply.
const SLOT_ROOM: u64 = READ_BUFFER as u64 + MAX_REPLY as u64;
/// _IOR(229, 0, u32): attaches a fresh /dev/fuse fd to an existing connection.
const FUSE_DEV_IOC_CLONE: libc::c_ulong = 0x8004_e500;
/// How long unmount waits for the threads beyond the queue timeout (a thread may be waiting for
/// the device when the mount goes away).
const JOIN_GRACE: Duration = Duration::from_secs(5);
/// Opcodes counted by `Bridge::requests` (FUSE's are below 64; CUSE_INIT is not carried).
const COUNTED_OPCODES: usize = 64;

#[derive(Debug, Clone, Copy)]
pub struct BridgeOptions {
    pub queue_size: u16,
    pub event_idx: bool,
    /// How long each queue waits for the backend before the request fails with EIO.
    pub timeout: Duration,
    /// How many requests each request queue carries at once (one bridge thread each).
    pub in_flight: usize,
}

impl Default for BridgeOptions {
    fn default() -> Self {
        BridgeOptions { queue_size: 128, event_idx: false, timeout: DEFAULT_TIMEOUT, in_flight: 1 }
    }
}

/// A mounted bridge. Unmounts (lazily) when dropped.
pub struct Bridge {
    mountpoint: PathBuf,
    mounted: bool,
    threads: Vec<JoinHandle<()>>,
    /// The request queues, in index order.
    queues: Vec<Arc<SharedQueue>>,
    /// Never carries a message: it disconnects once every thread has dropped its sender, which
    /// lets unmount wait for the threads with a deadline.
    threads_done: mpsc::Receiver<()>,
    failures: Arc<AtomicUsize>,
    /// Requests the kernel sent, by opcode.
    requests: Arc<[AtomicUsize; COUNTED_OPCODES]>,
    timeout: Duration,
    /// Dropped after the threads are gone, so the backend sees the disconnect last.
    frontend: Frontend,
}

impl Bridge {
    /// Connects to the backend at `socket` with a hiprio queue and `request_queues` request
    /// queues, mounts the FUSE file system on `mountpoint` and starts serving it.
    pub fn mount(socket: &Path, mountpoint: &Path, request_queues: usize, opts: BridgeOptions) -> Result<Bridge> {
        if request_queues == 0 || opts.in_flight == 0 {
            return Err(Error::Invalid("a bridge needs at least one request queue and one request in flight".into()));
        }
        let fe_opts = FrontendOptions {
            num_queues: 1 + request_queues,
            queue_size: opts.queue_size,
            event_idx: opts.event_idx,
            indirect: false,
        };
        let mut frontend = Frontend::connect_with(socket, fe_opts)?;
        frontend.set_timeout(opts.timeout);
        let mut queues = frontend.take_queues().into_iter();
        let hiprio = Arc::new(Mutex::new(queues.next().expect("queue 0 exists")));
        let (queues, slots) = split_queues(queues, opts.in_flight)?;

        let master =
            OpenOptions::new().read(true).write(true).open("/dev/fuse").map_err(|e| Error::Io("open /dev/fuse", e))?;
        mount_fuse(&master, mountpoint)?;
        let (done_tx, threads_done) = mpsc::channel();
        // From here on, dropping the bridge undoes the mount.
        let mut bridge = Bridge {
            mountpoint: mountpoint.to_owned(),
            mounted: true,
            threads: Vec::with_capacity(slots.len()),
            queues,
            threads_done,
            failures: Arc::new(AtomicUsize::new(0)),
            requests: Arc::new(std::array::from_fn(|_| AtomicUsize::new(0))),
            timeout: opts.timeout,
            frontend,
        };
        bridge.start(master, slots, hiprio, done_tx)?;
        Ok(bridge)
    }

    /// One thread per slot of a request queue, the first on `master`, the others on clones of
    /// it. Owns `done`, so that on error it is gone before the caller's drop of the bridge waits
    /// for it.
    fn start(
        &mut self,
        master: File,
        slots: Vec<QueueSlot>,
        hiprio: Arc<Mutex<QueueHandle>>,
        done: mpsc::Sender<()>,
    ) -> Result<()> {
        let clones = (1..slots.len()).map(|_| clone_connection(&master)).collect::<Result<Vec<_>>>()?;
        for (fuse, slot) in std::iter::once(master).chain(clones).zip(slots) {
            let worker = Worker {
                fuse,
                slot,
                hiprio: Arc::clone(&hiprio),
                failures: Arc::clone(&self.failures),
                requests: Arc::clone(&self.requests),
                _done: done.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("bridge-q{}.{}", worker.slot.index(), worker.slot.number()))
                .spawn(move || worker.run())
                .map_err(|e| Error::Io("spawn bridge thread", e))?;
            self.threads.push(thread);
        }
        Ok(())
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// How many requests went wrong between the kernel and the backend (each was reported on
    /// stderr and, where the kernel waited for an answer, answered with EIO).
    pub fn failures(&self) -> usize {
        self.failures.load(Ordering::SeqCst)
    }

    /// How many requests with `opcode` the kernel has sent through the bridge so far: what the
    /// guest kernel would send over virtio-fs (the host kernel plays it here).
    pub fn requests(&self, opcode: Opcode) -> usize {
        self.requests.get(opcode as usize).map_or(0, |n| n.load(Ordering::SeqCst))
    }

    /// The request queues, in index order: `SharedQueue::peak_in_flight` says how many requests
    /// each has carried at once.
    pub fn queues(&self) -> &[Arc<SharedQueue>] {
        &self.queues
    }

    /// The frontend, for control messages; its queues belong to the bridge threads.
    pub fn frontend(&mut self) -> &mut Frontend {
        &mut self.frontend
    }

    /// Unmounts, waits for the threads and returns the final `failures()`.
    pub fn unmount(mut self) -> usize {
        self.shutdown();
        self.failures()
    }

    fn shutdown(&mut self) {
        if std::mem::take(&mut self.mounted) {
            let connection = connection_id(&self.mountpoint);
            let path = c_path(&self.mountpoint);
            // SAFETY: a NUL-terminated path; the result is checked.
            if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } != 0 {
                eprintln!("vhost bridge: umount {:?}: {}", self.mountpoint, io::Error::last_os_error());
            }
            // Normally the connection died with the superblock; if something still holds the
            // detached mount, abort it so that the threads' reads end. Best effort: needs fusectl.
            if let Some(id) = connection {
                let _ = std::fs::write(format!("/sys/fs/fuse/connections/{id}/abort"), "1");
            }
        }
        if self.threads.is_empty() {
            return;
        }
        let patience = self.timeout + JOIN_GRACE;
        if let Err(mpsc::RecvTimeoutError::Timeout) = self.threads_done.recv_timeout(patience) {
            fail(&self.failures, format_args!("bridge threads still running {patience:?} after unmount; detaching"));
            self.threads.clear();
            return;
        }
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                fail(&self.failures, format_args!("a bridge thread panicked"));
            }
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// One slot of a request queue and the /dev/fuse descriptor that feeds it.
struct Worker {
    fuse: File,
    slot: QueueSlot,
    hiprio: Arc<Mutex<QueueHandle>>,
    failures: Arc<AtomicUsize>,
    requests: Arc<[AtomicUsize; COUNTED_OPCODES]>,
    /// Dropped when the thread ends, however it ends (see `Bridge::threads_done`).
    _done: mpsc::Sender<()>,
}

impl Worker {
    fn run(mut self) {
        let mut buf = vec![0u8; READ_BUFFER];
        loop {
            match (&self.fuse).read(&mut buf) {
                Ok(n) => self.forward(&buf[..n]),
                Err(e) => match e.raw_os_error() {
                    // ENOENT: the request we were about to get was interrupted.
                    Some(libc::EINTR | libc::EAGAIN | libc::ENOENT) => {}
                    // The connection is gone: unmounted (ENODEV), or aborted through fusectl
                    // (ECONNABORTED), as `shutdown` does after the unmount; a reader that wakes
                    // only after that abort, though the unmount had already ended the
                    // connection, gets ECONNABORTED too.
                    Some(libc::ENODEV | libc::ECONNABORTED) => return,
                    _ => return self.fail(format_args!("read /dev/fuse: {e}")),
                },
            }
        }
    }

    fn forward(&mut self, request: &[u8]) {
        let Ok((header, _)) = InHeader::read_from_prefix(request) else {
            return self.fail(format_args!("{}-byte request from /dev/fuse", request.len()));
        };
        if let Some(n) = self.requests.get(header.opcode as usize) {
            n.fetch_add(1, Ordering::SeqCst);
        }
        if matches!(Opcode::try_from(header.opcode), Ok(Opcode::Forget | Opcode::BatchForget | Opcode::Interrupt)) {
            // The kernel expects no answer to these, so a failure has nobody to be reported to
            // but the test.
            let sent = self.hiprio.lock().unwrap_or_else(PoisonError::into_inner).request(request, 0);
            if let Err(e) = sent {
                self.fail(format_args!("opcode {} (unique {}) on hiprio: {e}", header.opcode, header.unique));
            }
            return;
        }
        let span = (request.len() as u64 + 7) & !7;
        let mut capacity = self.slot.data_len().saturating_sub(span).min(u64::from(MAX_REPLY)) as u32;
        // A READ gets exactly the room the Linux driver gives it: the out-header and `size` bytes.
        // (virtiofsd 1.14 reads into all the room it is given and then fails the request with
        // EIO when the file had more than `size` bytes to give.)
        if header.opcode == Opcode::Read as u32
            && let Ok((read, _)) = ReadIn::read_from_prefix(&request[size_of::<InHeader>()..])
        {
            capacity = capacity.min(size_of::<OutHeader>() as u32 + read.size);
        }
        let outcome = match self.slot.request(request, capacity) {
            Ok(reply) => check_reply(&header, &reply).and_then(|()| self.write(&reply)),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = outcome {
            self.fail(format_args!("opcode {} (unique {}): {e}", header.opcode, header.unique));
            let eio = OutHeader { len: size_of::<OutHeader>() as u32, error: -libc::EIO, unique: header.unique };
            if let Err(e) = self.write(eio.as_bytes()) {
                self.fail(format_args!("answering unique {} with EIO: {e}", header.unique));
            }
        }
    }

    /// Writes a reply to the kernel. ENOENT: the request was interrupted and is gone; ENODEV: so
    /// is the whole connection, and the next read ends the thread.
    fn write(&self, reply: &[u8]) -> std::result::Result<(), String> {
        match (&self.fuse).write(reply) {
            Ok(n) if n == reply.len() => Ok(()),
            Ok(n) => Err(format!("short write to /dev/fuse: {n} of {} bytes", reply.len())),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENODEV)) => Ok(()),
            Err(e) => Err(format!("write {}-byte reply to /dev/fuse: {e}", reply.len())),
        }
    }

    fn fail(&self, what: fmt::Arguments<'_>) {
        fail(&self.failures, format_args!("queue {} slot {}: {what}", self.slot.index(), self.slot.number()));
    }
}

/// Splits each request queue into `in_flight` slots, each with room for the largest request and
/// reply; the queues, and every queue's slots.
fn split_queues(
    queues: impl Iterator<Item = QueueHandle>,
    in_flight: usize,
) -> Result<(Vec<Arc<SharedQueue>>, Vec<QueueSlot>)> {
    let (mut shared, mut slots) = (Vec::new(), Vec::new());
    for queue in queues {
        let (queue, queue_slots) = SharedQueue::share(queue, in_flight)?;
        if let Some(slot) = queue_slots.first()
            && slot.data_len() < SLOT_ROOM
        {
            return Err(Error::Invalid(format!(
                "{in_flight} requests in flight on queue {}: {} bytes each, {SLOT_ROOM} needed",
                queue.index(),
                slot.data_len()
            )));
        }
        shared.push(queue);
        slots.extend(queue_slots);
    }
    Ok((shared, slots))
}

/// Failures must be loud: the test sees the count, the person reading its output the details.
fn fail(failures: &AtomicUsize, what: fmt::Arguments<'_>) {
    eprintln!("vhost bridge: FAILURE: {what}");
    failures.fetch_add(1, Ordering::SeqCst);
}

/// The checks the kernel would make anyway, done first: a reply it rejects (or files under
/// another request) would leave the caller waiting forever instead of failing loudly.
fn check_reply(request: &InHeader, reply: &[u8]) -> std::result::Result<(), String> {
    let Ok((header, _)) = OutHeader::read_from_prefix(reply) else {
        return Err(format!("{}-byte reply from the device", reply.len()));
    };
    if header.len as usize != reply.len() || header.unique != request.unique {
        return Err(format!(
            "reply header len {} unique {} for a {}-byte reply to unique {}",
            header.len,
            header.unique,
            reply.len(),
            request.unique
        ));
    }
    Ok(())
}

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("paths have no NUL")
}

fn mount_fuse(fuse: &File, mountpoint: &Path) -> Result<()> {
    let data = format!("fd={},rootmode=40000,user_id=0,group_id=0,default_permissions,allow_other", fuse.as_raw_fd());
    let data = CString::new(data).expect("no NUL");
    let target = c_path(mountpoint);
    // SAFETY: NUL-terminated strings that outlive the call; the result is checked.
    let r = unsafe {
        libc::mount(
            c"vhostbridge".as_ptr(),
            target.as_ptr(),
            c"fuse.vhostbridge".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            data.as_ptr().cast(),
        )
    };
    if r != 0 {
        return Err(Error::Io("mount fuse.vhostbridge", io::Error::last_os_error()));
    }
    Ok(())
}

/// A new /dev/fuse descriptor on `master`'s connection: each reader gets its own so that the
/// kernel routes a reply back to the descriptor its request was read from.
fn clone_connection(master: &File) -> Result<File> {
    let clone =
        OpenOptions::new().read(true).write(true).open("/dev/fuse").map_err(|e| Error::Io("open /dev/fuse", e))?;
    let mut master_fd: u32 = master.as_raw_fd() as u32;
    // SAFETY: FUSE_DEV_IOC_CLONE reads one u32 (the fd) from the pointer, valid for the call.
    if unsafe { libc::ioctl(clone.as_raw_fd(), FUSE_DEV_IOC_CLONE, &mut master_fd) } != 0 {
        return Err(Error::Io("FUSE_DEV_IOC_CLONE", io::Error::last_os_error()));
    }
    Ok(clone)
}

/// fusectl names a connection after the superblock's device number, in the kernel's encoding.
/// AT_STATX_DONT_SYNC: answered from the inode cache, so a wedged backend cannot block unmount.
fn connection_id(mountpoint: &Path) -> Option<u32> {
    let path = c_path(mountpoint);
    // SAFETY: statx fills the zeroed struct it is given; plain data, any bytes valid.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out-pointer; the result is checked.
    let r = unsafe { libc::statx(libc::AT_FDCWD, path.as_ptr(), libc::AT_STATX_DONT_SYNC, 0, &mut stx) };
    (r == 0).then_some((stx.stx_dev_major << 20) | stx.stx_dev_minor)
}
