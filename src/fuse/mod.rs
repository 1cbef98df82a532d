//! The FUSE wire format: opcodes and structs (`abi`), request decoding (`request`) and reply
//! encoding (`reply`). Pure: no I/O, no fds — so both transports and the fuzzers share it.

pub mod abi;
pub mod reply;
pub mod request;

pub use reply::{DirEntry, ReplyBuf};
pub use request::{DecodeError, DecodeOptions, Op, Request};
