//! Transports: where requests come from and replies go. `fusedev` serves a host FUSE mount;
//! `vhost_user` serves virtio-fs to VMs, on the same `Server`.

pub mod fusedev;
pub mod vhost_user;
