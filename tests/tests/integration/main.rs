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
//! - `payloads`: large `Bytes` through shared memory, both ways, in
//!   order, after a crash, nothing left behind, hostile listings;
//! - `pipeline`, `review_deep`, `review_deep2`: deep pipelines of fast batches: a death,
//!   a cancel, recycling, terminate or a slow item
//!   costs no more than its own item and that worker's pipe;
//! - `spin`: workers sleep once a burst of calls is over;
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
mod payloads;
mod pipeline;
mod recycle;
mod restart;
mod review3;
mod review_async;
mod review_async_held;
mod review_deep;
mod review_deep2;
mod review_final;
mod review_halt;
mod review_perf;
mod review_s3;
mod review_shm;
mod seams;
mod spin;
mod startup;
mod stdio;
mod tiny_deadline;
mod wire;
mod worker_state;

/// How these tests start workers (the `zygote` binary runs some of the
/// same modules with `StartMethod::Zygote`).
pub(crate) const START: procpool::StartMethod = procpool::StartMethod::Exec;

#[path = "../common/pools.rs"]
mod pools;
#[path = "../common/raw_worker.rs"]
mod raw_worker;
pub(crate) use pools::*;
