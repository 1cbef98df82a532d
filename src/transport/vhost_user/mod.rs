//! vhost-user (virtio-fs): QEMU's `vhost-user-fs-pci` and other VMMs connect to our socket.
//!
//! The control channel is served by the supervisor (`control`), which records everything the
//! frontend tells it in the state region; the virtqueues are served by the worker, one thread per
//! queue (`queue`), from guest memory it maps from the recorded fds (`memory`) and split rings
//! it reads and writes itself (`ring`). A worker that dies is replaced without the frontend
//! noticing: the socket stays open in the supervisor, and the new worker resumes every ring from
//! the region.

pub mod control;
pub mod inflight;
pub mod memory;
pub mod queue;
pub mod ring;
pub mod transfer;

pub use control::MAX_TAG_LEN;

use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use vhost::vhost_user::BackendReqHandler;

use crate::server::Server;
use crate::state::intent::Orphan;
use crate::state::region::RECORD_CAPACITY;
use crate::state::vhost::{MAX_QUEUE_SIZE, VhostArea};
use crate::state::{Region, State};
use crate::sys::process;
use control::Control;
use inflight::InFlight;

use super::{Connection, Transport};

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
        let gid = process::group_id(group).ok_or_else(|| Error::NoGroup(group.into()))?;
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
        let [connected, signalled] = process::poll_readable([listener.as_raw_fd(), signals], -1);
        if signalled {
            return Ok(None);
        }
        if connected {
            // One connection per run, as virtiofsd: the listener closes once it is taken.
            let (stream, _) = listener.accept().map_err(Error::Accept)?;
            return Ok(Some(stream));
        }
    }
}

/// Prepares the region's vhost-user area before the first worker: how many queues we offer,
/// and each queue's notify eventfd.
fn prepare_area(area: &VhostArea, request_queues: usize) -> Result<(), Error> {
    let queues = (1 + request_queues).min(crate::state::vhost::MAX_QUEUES);
    area.num_queues.store(queues as u32, std::sync::atomic::Ordering::Relaxed);
    for q in &area.queues[..queues] {
        let fd = crate::sys::eventfd().map_err(Error::EventFd)?;
        q.notify_fd.store(fd, std::sync::atomic::Ordering::Relaxed);
    }
    let wake = crate::sys::eventfd().map_err(Error::EventFd)?;
    area.transfer.wake_fd.store(wake, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// The connected control channel, as the supervisor holds it.
pub struct ControlChannel {
    stream: Option<UnixStream>,
    fd: i32,
    area: &'static VhostArea,
    handler: Option<BackendReqHandler<Mutex<Control>>>,
    control: Option<Arc<Mutex<Control>>>,
    /// `--tag`, for the config space.
    tag: Option<String>,
    /// Whether DEVICE_STATE (VM live migration) is offered.
    migration: bool,
    /// The region header's INIT flag (a load is refused once the guest began a session).
    init_done: &'static std::sync::atomic::AtomicU32,
}

impl ControlChannel {
    /// The control channel over `stream`, and the workers' side of the connection: both use
    /// the region's vhost-user area, prepared here for `request_queues` request queues. `tag`
    /// (`--tag`) is offered in the device's config space; DEVICE_STATE with `migration`.
    pub fn new(
        stream: UnixStream,
        region: &Region,
        request_queues: usize,
        tag: Option<String>,
        migration: bool,
    ) -> Result<(ControlChannel, VhostTransport), Error> {
        let area = region.vhost();
        prepare_area(area, request_queues)?;
        let init_done = &region.header().init_done;
        let channel = ControlChannel {
            fd: stream.as_raw_fd(),
            stream: Some(stream),
            area,
            handler: None,
            control: None,
            tag,
            migration,
            init_done,
        };
        Ok((channel, VhostTransport { area }))
    }

    /// A live upgrade's new binary (upgrade.rs): the connected socket `stream` and the region's
    /// area as the old supervisor left them (queues prepared, every fd in place), with the
    /// negotiation replayed into a fresh handler. Writes nothing to the region.
    pub fn adopt(
        stream: i32,
        protocol_features: u64,
        region: &Region,
        tag: Option<String>,
        migration: bool,
    ) -> std::io::Result<(ControlChannel, VhostTransport)> {
        let area = region.vhost();
        let init_done = &region.header().init_done;
        // SAFETY: the handover names this fd as the connection; nothing else owns it.
        let stream = unsafe { UnixStream::from_raw_fd(stream) };
        // Until `start` gives the real one, there is no worker to keep.
        #[allow(clippy::arc_with_non_send_sync)]
        let control = Arc::new(Mutex::new(Control::new(area, tag.clone(), migration, init_done, Box::new(|| {}))));
        control.lock().expect("single-threaded").acked_protocol = protocol_features;
        let acked = area.acked_features.load(Ordering::Acquire);
        let (handler, fd) = primed_handler(stream, &control, acked, protocol_features)?;
        let channel = ControlChannel {
            fd,
            stream: None,
            area,
            handler: Some(handler),
            control: Some(control),
            tag,
            migration,
            init_done,
        };
        Ok((channel, VhostTransport { area }))
    }
}

/// Replays a finished negotiation into a fresh handler (the vhost crate keeps the acked
/// features, and whether to send REPLY_ACKs, in the handler, with no way to set them): the
/// handler is made on one end of a socket pair, is fed GET_FEATURES, SET_FEATURES and
/// SET_PROTOCOL_FEATURES with the acked values on the other, and then the real connection is
/// moved onto its fd number (dup3), so it serves the frontend as the old handler did.
fn primed_handler(
    real: UnixStream,
    control: &Arc<Mutex<Control>>,
    acked_features: u64,
    protocol_features: u64,
) -> std::io::Result<(BackendReqHandler<Mutex<Control>>, i32)> {
    use std::io::Write;
    let (ours, mut peer) = UnixStream::pair()?;
    let fd = ours.as_raw_fd();
    let mut handler = BackendReqHandler::from_stream(ours, control.clone());
    // vhost-user messages: request code, flags (version 1), payload size, payload.
    let message = |code: u32, payload: Option<u64>| {
        let mut m = Vec::with_capacity(20);
        m.extend_from_slice(&code.to_le_bytes());
        m.extend_from_slice(&1u32.to_le_bytes());
        m.extend_from_slice(&(if payload.is_some() { 8u32 } else { 0 }).to_le_bytes());
        if let Some(p) = payload {
            m.extend_from_slice(&p.to_le_bytes());
        }
        m
    };
    const GET_FEATURES: u32 = 1;
    const SET_FEATURES: u32 = 2;
    const SET_PROTOCOL_FEATURES: u32 = 16;
    let mut replay = vec![message(GET_FEATURES, None)];
    if acked_features != 0 {
        replay.push(message(SET_FEATURES, Some(acked_features)));
    }
    if protocol_features != 0 {
        replay.push(message(SET_PROTOCOL_FEATURES, Some(protocol_features)));
    }
    control.lock().expect("single-threaded").priming = true;
    for m in replay {
        peer.write_all(&m)?;
        handler.handle_request().map_err(|e| std::io::Error::other(format!("replaying the negotiation: {e}")))?;
    }
    control.lock().expect("single-threaded").priming = false;
    let real_fd = real.into_raw_fd();
    // The handler's fd now reads the frontend's socket; the socket pair's end is closed.
    let moved = crate::sys::dup3(real_fd, fd);
    crate::sys::close(real_fd);
    moved?;
    Ok((handler, fd))
}

impl Connection for ControlChannel {
    /// Starts serving control messages into the region; `keep_workers` is called while a
    /// message waits on a worker (GET_VRING_BASE stopping a ring).
    fn start(&mut self, keep_workers: Box<dyn FnMut()>) {
        if let Some(control) = &self.control {
            // Adopted (`adopt`): the handler exists already.
            control.lock().expect("single-threaded").keep_workers = keep_workers;
            return;
        }
        if let Some(stream) = self.stream.take() {
            // The vhost crate takes its handler in an Arc; ours never leaves this one thread
            // (it holds the supervisor's non-Send worker bookkeeping).
            #[allow(clippy::arc_with_non_send_sync)]
            let control = Arc::new(Mutex::new(Control::new(
                self.area,
                self.tag.clone(),
                self.migration,
                self.init_done,
                keep_workers,
            )));
            self.handler = Some(BackendReqHandler::from_stream(stream, control.clone()));
            self.control = Some(control);
        }
    }

    fn control_fd(&self) -> Option<i32> {
        Some(self.fd)
    }

    /// Serves one control message. False once the frontend has gone (or the channel is broken
    /// beyond a refused message).
    fn handle_control(&mut self) -> bool {
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
            Err(E::Disconnected | E::PartialMessage) => {
                tracing::info!("the vhost-user frontend disconnected");
                false
            }
            Err(e) => {
                tracing::error!("vhost-user control channel: {e}; closing it");
                false
            }
        }
    }

    /// One connection per run, as virtiofsd: nothing to do but let it close with the process.
    fn close(&mut self) {}

    fn link(&self) -> super::Link {
        let protocol_features = self.control.as_ref().map_or(0, |c| c.lock().expect("single-threaded").acked_protocol);
        super::Link::Vhost { stream: self.fd, protocol_features }
    }
}

/// The virtqueues as workers serve them, from the region's vhost-user area.
pub struct VhostTransport {
    area: &'static VhostArea,
}

impl Transport for VhostTransport {
    /// Nothing: every head a dead worker popped stays in flight in the region and is replayed,
    /// whatever it holds (FORGET included), by the queue's next thread.
    fn finish_undelivered(&self, _state: &State) -> usize {
        0
    }

    /// Exactly the heads still in flight are replayed: an orphan whose used element was
    /// published before the death is not.
    fn redelivers(&self, orphan: &Orphan) -> bool {
        let (queue, counter) = queue::split_record_key(orphan.key);
        self.area.queues[..self.area.queue_count()].get(queue).is_some_and(|q| {
            let size = (q.size.load(Ordering::Acquire) as usize).min(MAX_QUEUE_SIZE) as u16;
            q.in_flight(size).iter().any(|&(_, c)| c == counter)
        })
    }

    fn fds(&self) -> Vec<i32> {
        self.area.fds()
    }

    /// Nothing to ask of the frontend: each queue thread repairs and replays its ring when it
    /// activates the queue.
    fn resume(&self, _state: &State) {}

    /// Serving threads per queue for the life of the worker (the connection ends in the
    /// supervisor, never in a queue thread): one at first, more when slow requests queue up on
    /// it (queue.rs), up to as many as there are request queues (`--thread-pool-size`), bounded
    /// by the region's intent records.
    fn spawn(&self, server: &Arc<Server>, _ended: i32) -> std::io::Result<()> {
        let guests = Arc::new(memory::GuestCache::default());
        let queues = self.area.queue_count();
        // Each serving thread holds an intent record of the region: half of them at most, the
        // rest left for orphans of a dead worker and the lock waiters.
        let per_queue = queues.saturating_sub(1).min(RECORD_CAPACITY as usize / 2 / queues.max(1));
        for index in 0..queues {
            let thread = queue::QueueThread::new(server.clone(), self.area, index, guests.clone(), per_queue);
            std::thread::Builder::new().name(format!("vq-{index}")).spawn(move || thread.run())?;
        }
        // The device-state transfer's worker side (VM live migration), which also takes up a
        // request a dead worker left.
        let transfer = transfer::TransferThread { server: server.clone(), area: self.area };
        std::thread::Builder::new().name("vu-transfer".into()).spawn(move || transfer.run())?;
        Ok(())
    }
}
