//! Integration tests of procpool on real worker processes.
//!
//! One binary, one module per scenario:
//! - `api`: every entry point, ordering, empty input, laziness;
//! - `async_api`: futures, streams, `map_async`, callbacks (tokio and
//!   `futures`' executor);
//! - `cancel`: `cancel()` on a task and a job: unstarted items never run,
//!   running ones are killed with their worker only;
//! - `errors`: panics, task errors, unknown tasks, encode/decode failures;
//! - `stdio`: tasks that print cannot corrupt the protocol;
//! - `crash`: workers that exit, abort, segfault or are killed;
//! - `lifecycle`: close/join/terminate/drop, no leftover processes, no
//!   leaked descriptors;
//! - `startup`: wrong programs, initializers;
//! - `forgot_serve`: a re-exec program that forgot `serve_if_worker` is
//!   told once, on one line, and its worker copies stay silent;
//! - `crash_matrix`: every death at every phase, re-dispatch, reaping;
//! - `deadlines`: hung, SIGTERM-ignoring, stopped, grandchild-spawning tasks;
//! - `restart`: restart intensity just under and over its limit;
//! - `recycle`: `max_tasks_per_worker` and the memory limit;
//! - `wire`: hostile bytes both ways, frame limits;
//! - `logs`: worker `log` records reach the parent's logger;
//! - `inprocess`: the debugging mode on threads;
//! - `edges`: closures refused as tasks, a broken pool's reason said once,
//!   results and arguments just over the frame limit, panics on threads a
//!   task started, deeply nested results and arguments.
//! - `lane_wakeup`, `lane_wakeup_join`, `lane_recycle`, `drain`,
//!   `no_counter`, `inprocess_stop`, `deadline_stop`, `tiny_deadline`:
//!   regressions found by a hostile review of the rebuilt dispatcher;
//! - `worker_state`: per-worker state (kept across tasks, made afresh by a
//!   replacement, dropped at retirement, refused at submit where missing)
//!   and the worker index;
//! - `seams`: regression tests of the dispatcher's faults (join, the
//!   direct lane, process groups, descendants, extreme durations), one
//!   test per fault, named after it.
//!
//! Every test arms a watchdog that turns a hang into a failure.

mod api;
mod async_api;
mod cancel;
mod crash;
mod crash_matrix;
mod deadline_stop;
mod deadlines;
mod drain;
mod edges;
mod errors;
mod forgot_serve;
mod inprocess;
mod inprocess_stop;
mod lane_recycle;
mod lane_wakeup;
mod lane_wakeup_join;
mod lifecycle;
mod logs;
mod no_counter;
mod recycle;
mod restart;
mod review_async;
mod review_async_held;
mod review_halt;
mod seams;
mod startup;
mod stdio;
mod tiny_deadline;
mod wire;
mod worker_state;
mod zygote;

use std::time::Duration;

use procpool::Pool;

/// The fault-injecting worker program of this package.
pub(crate) const FAULT_WORKER: &str = env!("CARGO_BIN_EXE_fault-worker");

/// A hang ceiling for one test: generous, as these machines are noisy.
pub(crate) const LIMIT: Duration = Duration::from_secs(60);

/// A pool of `n` fault workers.
pub(crate) fn pool(n: usize) -> Pool {
    Pool::builder()
        .workers(n)
        .worker_program(FAULT_WORKER)
        .build()
        .expect("the fault worker pool starts")
}

/// A builder of `n` fault workers started through `env -u
/// PROCPOOL_PROGRESS`: a launcher that strips the environment, so they never
/// attach to their shared counter.
pub(crate) fn counterless(n: usize) -> procpool::Builder {
    Pool::builder()
        .workers(n)
        .worker_program("/usr/bin/env")
        .worker_args([
            std::ffi::OsString::from("-u"),
            "PROCPOOL_PROGRESS".into(),
            FAULT_WORKER.into(),
        ])
}

/// A pool of `n` fault workers whose `record` tasks append to `file`.
pub(crate) fn recording_pool(n: usize, file: &std::path::Path) -> Pool {
    Pool::builder()
        .workers(n)
        .worker_program(FAULT_WORKER)
        .initializer(procpool_tests::init_store, file.display().to_string())
        .build()
        .expect("the recording pool starts")
}
