//! The built-in tasks of the `procpool-worker` program.
//!
//! A parent that links this crate names the tasks by their functions and
//! runs them in `procpool-worker` processes:
//!
//! ```no_run
//! let pool = procpool::Pool::builder()
//!     .worker_program("target/debug/procpool-worker")
//!     .build()?;
//! let squares = pool.map(procpool_worker::square, 0..10u64)?;
//! assert_eq!(squares[3], 9);
//! # Ok::<(), procpool::Error>(())
//! ```
//!
//! Any other standalone worker is built the same way: a library of task
//! functions, a [`registry`] of them, and a `main` that calls
//! [`procpool::worker::run`].

use std::time::Duration;

/// `x * x` (wrapping).
pub fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

/// `a + b` (wrapping).
pub fn add(a: u64, b: u64) -> u64 {
    a.wrapping_add(b)
}

/// Sleeps `ms` milliseconds, then returns `ms`.
pub fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Returns its argument.
pub fn echo(s: String) -> String {
    s
}

/// The 64-bit FNV-1a hash of the bytes.
pub fn fnv1a(bytes: Vec<u8>) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The pid of the worker that ran it.
pub fn worker_pid() -> u32 {
    std::process::id()
}

/// Parses a decimal integer; the task's own error is a message.
pub fn parse_int(s: String) -> Result<i64, String> {
    s.trim().parse().map_err(|e| format!("`{s}`: {e}"))
}

/// Every built-in task.
pub fn registry() -> procpool::Registry {
    procpool::Registry::new()
        .task(square)
        .task(add)
        .task(sleep_ms)
        .task(echo)
        .task(fnv1a)
        .task(worker_pid)
        .task(parse_int)
}
