//! The zygote start method on real processes.
//!
//! One binary: the zygote's own scenarios, then the supervision scenarios
//! of the `integration` binary run again, unchanged, on workers forked
//! from a zygote (their files are included from there, and their pools
//! come from `crate::builder`, which starts workers the way [`START`]
//! says):
//! - `zygote`: forked workers share the initializer's state; a zygote
//!   whose initializer left a thread running never forks (exec fallback,
//!   a log record); a dead zygote costs nothing but its restart; the pool
//!   SIGKILLed takes the zygote and its workers along; the seeds' hazards
//!   (a parent whose threads hold locks, buffered output, inherited
//!   descriptors);
//! - `crash`, `crash_matrix`: every death at every phase, re-dispatch,
//!   reaping (through the zygote), the exact status;
//! - `deadlines`, `cancel`, `review_halt`: kills of forked workers and
//!   their trees;
//! - `recycle`: `max_tasks_per_worker` and the memory limit;
//! - `payloads`: large `Bytes` through shared memory, from forked workers;
//! - `lifecycle`: no leftover process, no leaked descriptor.
//! - `review`: a hostile review of the zygote: the zygote stopped or killed
//!   at awkward moments, initializers that start processes or ignore
//!   SIGCHLD, subreaper and SIGCHLD-ignoring hosts, reused pids, many
//!   restarts, a pool dropped during a restart, an `execve` of the pool.
//! - `review2`: a second hostile review, of the first one's fixes: the
//!   lifeline, the watch of the zygote's pidfd, SIGCHLD handlers, what an
//!   initializer started when the zygote dies, an idle pool's CPU.
//! - `review3`: a third review: the docs' promises no scenario proved
//!   (groups and subreapers, the shared open file, the zygote's state never
//!   dropped) and `startup_timeout(Duration::MAX)`; `review3_wire`: zygote
//!   messages on the wire of ordinary workers.
//!
//! Every test arms a watchdog that turns a hang into a failure.

#[path = "../integration/cancel.rs"]
mod cancel;
#[path = "../integration/crash.rs"]
mod crash;
#[path = "../integration/crash_matrix.rs"]
mod crash_matrix;
#[path = "../integration/deadlines.rs"]
mod deadlines;
#[path = "../integration/lifecycle.rs"]
mod lifecycle;
#[path = "../integration/payloads.rs"]
mod payloads;
mod procs;
#[path = "../integration/recycle.rs"]
mod recycle;
mod review;
mod review2;
mod review3;
#[path = "../integration/review3.rs"]
mod review3_wire;
#[path = "../integration/review_halt.rs"]
mod review_halt;
#[path = "../integration/worker_state.rs"]
mod worker_state;
mod zygote;

/// How these tests start workers.
pub(crate) const START: procpool::StartMethod = procpool::StartMethod::Zygote;

#[path = "../common/pools.rs"]
mod pools;
#[path = "../common/raw_worker.rs"]
mod raw_worker;
pub(crate) use pools::*;
