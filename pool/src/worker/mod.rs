//! The worker side: what runs inside a worker process.
//!
//! A worker is started by the pool through exec, never by a bare fork: either
//! the parent's own executable started again (re-exec mode; its `main` calls
//! [`serve_if_worker`] first thing) or a standalone
//! worker program whose `main` calls [`run`].
//!
//! At start the runtime moves the protocol pipes off stdin and stdout to
//! private descriptors, points stdin at `/dev/null` and stdout at stderr (so
//! a task that prints cannot corrupt the stream), closes every other
//! inherited descriptor, sends its handshake, and then runs batches until
//! the parent closes the pipe.

mod registry;
mod serve;

pub(crate) use registry::ItemError;
pub use registry::Registry;

use std::os::fd::AsFd;

use procpool_protocol::exit_code;

/// Environment variable that tells a started program it is a worker.
pub(crate) const WORKER_ENV: &str = "PROCPOOL_WORKER";
/// Environment variable carrying the parent's frame limit.
pub(crate) const MAX_FRAME_ENV: &str = "PROCPOOL_MAX_FRAME";

/// Whether this process was started by a pool as a worker.
pub fn is_worker() -> bool {
    std::env::var_os(WORKER_ENV).is_some()
}

/// In re-exec mode, turns this process into a worker if the pool started it
/// as one, and never returns then; otherwise returns at once.
///
/// Call it as the first statement of `main`, before the program starts
/// threads or opens files: a worker closes every descriptor it did not
/// expect to inherit.
///
/// ```no_run
/// fn square(x: u64) -> u64 { x * x }
///
/// fn main() {
///     let tasks = procpool::Registry::new().task(square);
///     procpool::serve_if_worker(&tasks);
///     // ... the parent program: build a pool, map, ...
/// }
/// ```
pub fn serve_if_worker(registry: &Registry) {
    if is_worker() {
        std::process::exit(serve_now(registry));
    }
}

/// The `main` of a standalone worker program: serves `registry` and exits.
///
/// Started by hand (not by a pool) it prints a short explanation to stderr
/// and exits with code 64 instead of waiting for a parent that is not there.
pub fn run(registry: &Registry) -> ! {
    if !is_worker() {
        let name = std::env::args().next().unwrap_or_else(|| "worker".into());
        let hint = if crate::sys::is_terminal(std::io::stdin().as_fd()) {
            ""
        } else {
            " (its stdin is not a pool's pipe either)"
        };
        eprintln!(
            "{name}: this is a procpool worker program; it is started by a procpool Pool \
             (Pool::builder().worker_program(..)), not by hand{hint}"
        );
        std::process::exit(exit_code::NOT_STARTED_BY_POOL);
    }
    std::process::exit(serve_now(registry))
}

fn serve_now(registry: &Registry) -> i32 {
    let max_frame = std::env::var(MAX_FRAME_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(procpool_protocol::DEFAULT_MAX_FRAME);
    crate::sys::remove_env(WORKER_ENV);
    crate::sys::remove_env(MAX_FRAME_ENV);
    let stdio = match crate::sys::take_protocol_stdio() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("procpool worker: cannot set up its descriptors: {e}");
            return exit_code::SETUP_FAILED;
        }
    };
    serve::serve(registry, stdio, max_frame)
}
