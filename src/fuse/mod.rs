//! The FUSE wire format: opcodes and structs (`abi`), request decoding (`request`) and reply
//! encoding (`reply`). Pure: no I/O, no fds — so both transports and the fuzzers share it.

pub mod abi;
#[cfg(any(test, feature = "test-utils"))]
pub mod encode;
pub mod ext;
pub mod reply;
pub mod request;

pub use reply::{DirEntry, ReplyBuf};
pub use request::{DecodeError, Op, Request};

/// Largest WRITE payload we accept, advertised at INIT.
pub const MAX_WRITE: u32 = 1 << 20;
/// Room a transport must leave for one request: the largest WRITE plus headers.
pub const MAX_REQUEST: usize = MAX_WRITE as usize + 4096;

#[cfg(test)]
mod tests;
