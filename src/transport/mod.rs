//! Transports: where requests come from and replies go. `fusedev` serves a host FUSE mount;
//! vhost-user (virtio-fs) follows on the same `Server`.

pub mod fusedev;
