//! phoenixfsd: a crash-proof virtio-fs / FUSE passthrough daemon.
//!
//! Data flows one way (DESIGN §4): `transport` (bytes in) → `fuse` (decode) → `server`
//! (dispatch) → `fs` (the operation) → `state` (tables in the shared region) → `fuse` (reply
//! encode) → `transport` (bytes out).

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod cli;
pub mod control;
pub mod crash;
pub mod ctl;
pub mod daemon;
pub mod fs;
pub mod fuse;
pub mod holder;
pub mod logging;
pub mod recovery;
pub mod security;
pub mod server;
pub mod state;
pub mod supervisor;
pub mod sys;
pub mod transport;
pub mod upgrade;
pub mod worker;
pub mod zygote;
