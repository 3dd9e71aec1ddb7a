//! A pool of worker **processes** for Rust: Python's `multiprocessing.Pool`,
//! built for fault isolation.
//!
//! TODO crate docs
#![forbid(unsafe_op_in_unsafe_fn)]

mod dispatcher;
mod error;
mod feed;
mod pool;
mod supervisor;
mod sys;
mod task;
pub mod worker;

pub use error::{Error, Exit, PanicLocation};
pub use pool::{AsyncResult, Builder, Call, Imap, InitOutput, Pool, Stats};
pub use task::{Named, Task, TaskFn, TaskRef};
pub use worker::{Registry, serve_if_worker};
