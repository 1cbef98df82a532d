//! The FUSE wire format: opcodes and structs (`abi`), request decoding (`request`) and reply
//! encoding (`reply`). Pure: no I/O, no fds — so both transports and the fuzzers share it.

pub mod abi;
#[cfg(any(test, feature = "test-utils"))]
pub mod encode;
pub mod reply;
pub mod request;

pub use reply::{DirEntry, ReplyBuf};
pub use request::{DecodeError, DecodeOptions, Op, Request};

#[cfg(test)]
mod tests;
