//! Transports: where requests come from and replies go. `fusedev` serves a host FUSE mount;
//! `vhost_user` serves virtio-fs to VMs, on the same `Server`.
//!
//! A transport is chosen once, at start-up (daemon.rs), and then held as two values: the
//! supervisor's `Connection` (what it keeps open for the life of the daemon) and the workers'
//! `Transport` (how requests are served, and what recovery asks of the transport). Nothing
//! else branches on which transport it is.

pub mod fusedev;
pub mod groups;
pub mod vhost_user;

use std::sync::Arc;

use crate::server::Server;
use crate::state::State;
use crate::state::intent::Orphan;

/// A worker's side of a transport: its duties in recovery (docs/design.md, "Recovery, in
/// order") and in serving. A worker gets it from the supervisor by inheritance (a clone's copy
/// of the supervisor's memory), so it holds the same fds and region addresses.
pub trait Transport: Send + Sync {
    /// Recovery step 4: finishes the requests a dead worker had read that take no reply and
    /// that this transport will not deliver again (FUSE: the FORGETs left in the connection
    /// buffers). Returns how many it finished.
    fn finish_undelivered(&self, state: &State) -> usize;

    /// Recovery step 5: whether `orphan` will be delivered again, so its record must wait for
    /// it; the record of one that will not is freed.
    fn redelivers(&self, orphan: &Orphan) -> bool;

    /// The fds this transport holds in the shared fd table: recovery's fd sweep keeps them.
    /// A fd of the connection on which FUSE passthrough backing files are registered
    /// (FUSE_DEV_IOC_BACKING_OPEN): /dev/fuse only.
    fn backing_dev(&self) -> Option<i32> {
        None
    }
    fn fds(&self) -> Vec<i32>;

    /// Has what a dead worker read but did not answer delivered again (FUSE_NOTIFY_RESEND; a
    /// virtqueue's thread replays its in-flight heads itself when it activates the queue).
    fn resume(&self, state: &State);

    /// Starts the serving threads. A thread that sees the connection end (the file system was
    /// unmounted) writes the eventfd `ended`, which stops the daemon.
    fn spawn(&self, server: &Arc<Server>, ended: i32) -> std::io::Result<()>;
}

/// The supervisor's side of a transport: what it keeps open for the life of the daemon, so that
/// the peer never sees a worker die.
pub trait Connection {
    /// Starts the connection's own work in the supervisor. `keep_workers` is called while that
    /// work waits on a worker, so that a worker dying meanwhile is replaced.
    fn start(&mut self, keep_workers: Box<dyn FnMut()>);

    /// An fd of messages the supervisor itself serves (vhost-user's control socket), if any. It
    /// is read only while the current worker is ready: a message may bring fds that a worker
    /// sweeping its fd table at start-up would close.
    fn control_fd(&self) -> Option<i32>;

    /// Serves what arrived on `control_fd`. False once the peer has gone.
    fn handle_control(&mut self) -> bool;

    /// Ends the connection as the daemon stops (FUSE: unmount, unless handed to the holder).
    fn close(&mut self);

    /// What a live upgrade's new binary needs to take this connection over (upgrade.rs).
    fn link(&self) -> Link;
}

/// A connection as a live upgrade hands it to the new binary: the fds and the little state
/// that lives outside the region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// The mounted /dev/fuse fd first, then its clones; our mount's id if this process unmounts
    /// at the end (`--sandbox none`; otherwise the holder does).
    Fuse { fds: Vec<i32>, mount_id: Option<u64> },
    /// The connected vhost-user socket and the protocol features the frontend acked (the vhost
    /// crate's handler keeps them, not the region).
    Vhost { stream: i32, protocol_features: u64 },
}

/// What must be done in the host's mount namespace when serving ends (FUSE: the unmount),
/// left to the holder process, which stays there while the supervisor enters the sandbox
/// (security/sandbox.rs, holder.rs).
pub trait Teardown {
    /// The fds it needs kept open until then.
    fn fds(&self) -> Vec<i32>;

    fn run(&self);
}
