//! The wire format spoken between a procpool parent and its worker processes.
//!
//! No processes and no threads live here: only bytes.
//!
//! # The stream
//!
//! Each direction of a worker's pipe pair carries the same shape:
//!
//! 1. a 12-byte [preamble]: the magic `PROCPOOL` and the
//!    protocol version as a little-endian `u32`. A program that is not a
//!    procpool worker (or a worker of another version) is recognised here,
//!    before a single length prefix is trusted;
//! 2. then frames: a little-endian `u32` length followed by that many bytes
//!    of [postcard]-encoded message. The length is checked against a maximum
//!    before any buffer grows for it ([`frame`]).
//!
//! The worker speaks first: preamble, then [`FromWorker::Hello`] naming the
//! tasks it serves. The parent answers with its own preamble, then sends
//! [`ToWorker::Init`] (once, optional) and [`ToWorker::Run`] batches; the
//! worker answers each with [`FromWorker::InitDone`] or [`FromWorker::Done`].
//!
//! # Bounded decoding
//!
//! Every sequence in every message has elements that take at least one byte
//! on the wire, so no frame can make a decoder loop or allocate beyond the
//! frame's own size (a `Vec<()>` claiming `u64::MAX` elements cannot be
//! expressed). User payloads travel as opaque byte strings and are decoded by
//! the caller that asked for them, with [`value::take_value`], which no depth
//! of nesting can make overflow the stack.

mod codec;
mod error;
pub mod frame;
mod message;
#[cfg(any(test, feature = "test-support"))]
#[doc(hidden)]
pub mod test_support;
pub mod value;
mod varint;

pub use error::{DecodeError, PreambleError};
pub use frame::{DEFAULT_MAX_FRAME, FrameDecoder, FrameError};
pub use message::{
    CANCEL_TAG, Done, DoneView, ExitReport, FromWorker, GO_TAG, Hello, ItemsBuilder, KILL_TAG,
    Location, LogRecord, MAGIC, NotForked, Outcome, PREAMBLE_LEN, PROTOCOL_VERSION, RUN_TAG, Run,
    RunView, StateUse, TaskInfo, ToWorker, check_preamble, decode_done, decode_from_worker,
    decode_run, decode_to_worker, done_header, encode_done, encode_hello, encode_init,
    encode_init_done, encode_log, encode_message, encode_run, preamble, push_outcome,
};
pub use serde_bytes::Bytes;

/// Exit codes with which a worker reports why it stopped on its own.
pub mod exit_code {
    /// The worker program was started by hand, not by a pool.
    pub const NOT_STARTED_BY_POOL: i32 = 64;
    /// The parent sent a malformed frame or message; nothing of it ran.
    pub const BAD_PARENT_MESSAGE: i32 = 65;
    /// Setting up the worker's descriptors failed.
    pub const SETUP_FAILED: i32 = 71;
    /// The protocol stream broke (write error) while sending a reply.
    pub const STREAM_BROKEN: i32 = 74;
    /// Started by a pool as a worker, the program built a pool of its own
    /// instead of serving (its `main` did not call `serve_if_worker`
    /// first). It exits at once, silently; the pool that started it says
    /// what to do, once.
    pub const DID_NOT_SERVE: i32 = 78;
    /// The pool halted the worker (it is about to kill it, for a deadline
    /// or a cancel): it reached a new batch and did not start it.
    pub const HALTED: i32 = 79;
}
