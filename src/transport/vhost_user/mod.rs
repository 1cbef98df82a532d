//! vhost-user (virtio-fs): QEMU's `vhost-user-fs-pci` and other VMMs connect to our socket.
//!
//! The control channel is served by the supervisor (`control`), which records everything the
//! frontend tells it in the state region; the virtqueues are served by the worker, one thread per
//! queue (`queue`), from guest memory it maps from the recorded fds (`memory`) and split rings
//! it reads and writes itself (`ring`). A worker that dies is replaced without the frontend
//! noticing: the socket stays open in the supervisor, and the new worker resumes every ring from
//! the region.

pub mod control;
pub mod memory;
pub mod queue;
pub mod ring;

use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};

use vhost::vhost_user::BackendReqHandler;

use crate::server::Server;
use crate::state::vhost::VhostArea;
use control::Control;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on vhost-user socket {path}: {source}")]
    Listen { path: String, source: std::io::Error },
    #[error("--fd {0} is not a listening socket: {1}")]
    BadFd(i32, std::io::Error),
    #[error("--socket-group {0}: no such group")]
    NoGroup(String),
    #[error("cannot give socket {path} to group {group}: {source}")]
    Chown { path: String, group: String, source: std::io::Error },
    #[error("accepting the vhost-user connection: {0}")]
    Accept(std::io::Error),
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
}

/// Where the frontend connects: `--socket-path` (we bind it) or `--fd` (inherited, listening).
pub fn listen(path: Option<&Path>, fd: Option<i32>, group: Option<&str>) -> Result<UnixListener, Error> {
    if let Some(fd) = fd {
        // SAFETY: the operator hands us this fd to own (virtiofsd's --fd).
        let listener = unsafe { UnixListener::from_raw_fd(fd) };
        listener.local_addr().map_err(|e| Error::BadFd(fd, e))?;
        return Ok(listener);
    }
    let path = path.expect("the command line requires --socket-path or --fd");
    let shown = path.display().to_string();
    // A socket file left by an earlier run would make bind fail; anything else is not ours.
    if std::fs::symlink_metadata(path).is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type())) {
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path).map_err(|source| Error::Listen { path: shown.clone(), source })?;
    if let Some(group) = group {
        let name = std::ffi::CString::new(group).map_err(|_| Error::NoGroup(group.into()))?;
        // SAFETY: a valid C string; the result is only read at once.
        let gr = unsafe { libc::getgrnam(name.as_ptr()) };
        if gr.is_null() {
            return Err(Error::NoGroup(group.into()));
        }
        // SAFETY: non-null result of getgrnam.
        let gid = unsafe { (*gr).gr_gid };
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(|source| Error::Chown {
            path: shown.clone(),
            group: group.into(),
            source,
        })?;
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o770))
            .map_err(|source| Error::Chown { path: shown, group: group.into(), source })?;
    }
    Ok(listener)
}

/// Waits for the frontend to connect, or for a termination signal (None then).
pub fn accept(listener: UnixListener, signals: i32) -> Result<Option<UnixStream>, Error> {
    loop {
        let mut fds = [
            libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: signals, events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: a valid pollfd array for the duration of the call.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if fds[1].revents != 0 {
            return Ok(None);
        }
        if fds[0].revents != 0 {
            // One connection per run, as virtiofsd: the listener closes once it is taken.
            let (stream, _) = listener.accept().map_err(Error::Accept)?;
            return Ok(Some(stream));
        }
    }
}

/// Prepares the region's vhost-user area before the first worker: how many queues we offer,
/// and each queue's notify eventfd.
pub fn prepare_area(area: &VhostArea, request_queues: usize) -> Result<(), Error> {
    let queues = (1 + request_queues).min(crate::state::vhost::MAX_QUEUES);
    area.num_queues.store(queues as u32, std::sync::atomic::Ordering::Relaxed);
    for q in &area.queues[..queues] {
        let fd = crate::sys::eventfd().map_err(Error::EventFd)?;
        q.notify_fd.store(fd, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(())
}

/// The intent-record keys of every head in flight on any queue (what a fresh worker replays).
pub fn in_flight_keys(area: &VhostArea) -> Vec<u64> {
    let mut keys = Vec::new();
    for (index, q) in area.queues[..area.queue_count()].iter().enumerate() {
        let size =
            (q.size.load(std::sync::atomic::Ordering::Acquire) as usize).min(crate::state::vhost::MAX_QUEUE_SIZE);
        keys.extend(q.in_flight(size as u16).into_iter().map(|(_, counter)| queue::record_key(index, counter)));
    }
    keys
}

/// The connected control channel, as the supervisor holds it.
pub struct ControlChannel {
    stream: Option<UnixStream>,
    fd: i32,
    handler: Option<BackendReqHandler<Mutex<Control>>>,
}

impl ControlChannel {
    pub fn new(stream: UnixStream) -> ControlChannel {
        ControlChannel { fd: stream.as_raw_fd(), stream: Some(stream), handler: None }
    }

    /// Starts serving messages into `area`; `keep_workers` is called while a message waits on
    /// a worker.
    pub fn start(&mut self, area: &'static VhostArea, keep_workers: Box<dyn FnMut()>) {
        if let Some(stream) = self.stream.take() {
            // The vhost crate takes its handler in an Arc; ours never leaves this one thread
            // (it holds the supervisor's non-Send worker bookkeeping).
            #[allow(clippy::arc_with_non_send_sync)]
            let control = Arc::new(Mutex::new(Control::new(area, keep_workers)));
            self.handler = Some(BackendReqHandler::from_stream(stream, control));
        }
    }

    pub fn fd(&self) -> i32 {
        self.fd
    }

    /// Serves one control message. False once the frontend has gone (or the channel is broken
    /// beyond a refused message).
    pub fn handle_one(&mut self) -> bool {
        use vhost::vhost_user::Error as E;
        let Some(handler) = &mut self.handler else { return false };
        match handler.handle_request() {
            Ok(()) => true,
            // Refused by us (already answered with a failure when the frontend asked for acks).
            Err(E::InvalidOperation(_) | E::InvalidParam | E::InactiveFeature(_) | E::InactiveOperation(_)) => true,
            Err(E::ReqHandlerError(e)) => {
                tracing::warn!("vhost-user: a control message failed: {e}");
                true
            }
            Err(E::Disconnected | E::PartialMessage) => false,
            Err(e) => {
                tracing::error!("vhost-user control channel: {e}; closing it");
                false
            }
        }
    }
}

/// Starts one serving thread per queue. They serve for the life of the worker (the connection
/// ends in the supervisor), each holding a `done` sender so the worker never sees an end.
pub fn spawn_queue_threads(server: &Arc<Server>, done: mpsc::Sender<()>) -> std::io::Result<()> {
    let area = server.fs.state.region.vhost();
    let guests = Arc::new(memory::GuestCache::default());
    for index in 0..area.queue_count() {
        let thread = queue::QueueThread::new(server.clone(), index, guests.clone());
        let done = done.clone();
        std::thread::Builder::new().name(format!("vq-{index}")).spawn(move || {
            let _serving = done;
            thread.run()
        })?;
    }
    Ok(())
}
