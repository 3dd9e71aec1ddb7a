//! A pool of worker **processes** for Rust: Python's `multiprocessing.Pool`,
//! built for fault isolation.
//!
//! Rust has no GIL, so why processes? Because a task that segfaults inside a
//! C library, aborts, leaks memory or loops forever must cost one worker,
//! never the program. The pool reaps the dead worker, reports that task as
//! an explicit [`Error`], starts a replacement and goes on.
//!
//! Every submitted task ends in exactly one outcome — its result or one
//! error — and nothing hangs.
//!
//! # Example
//!
//! ```rust,standalone_crate
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! fn parse(s: String) -> Result<i64, String> {
//!     s.trim().parse().map_err(|e| format!("{s:?}: {e}"))
//! }
//!
//! fn main() -> Result<(), procpool::Error> {
//!     // One registry for both sides. Started as a worker, this program
//!     // serves its tasks here and never returns.
//!     let tasks = procpool::Registry::new().task(square).task(parse);
//!     procpool::serve_if_worker(&tasks);
//!
//!     let pool = procpool::Pool::builder().workers(2).build()?;
//!     let squares = pool.map(square, 0..1000u64)?; // in input order
//!     assert_eq!(squares[999], 998_001);
//!
//!     // A task's own error is a typed value, beside the pool's errors.
//!     for r in pool.imap(parse, ["1", "x"].map(String::from))? {
//!         match r? {
//!             Ok(n) => assert_eq!(n, 1),
//!             Err(msg) => assert!(msg.contains("invalid digit")),
//!         }
//!     }
//!
//!     let pending = pool.apply_async(square, 7)?;
//!     assert_eq!(pending.get()?, 49);
//!     pool.close();
//!     pool.join();
//!     Ok(())
//! }
//! ```
//!
//! # Entry points
//!
//! - [`Registry`]: the tasks a worker serves. A task is a plain `fn` of
//!   zero to four `serde` arguments returning a `Serialize` value; its name
//!   is its Rust path (see [`Task`] for explicit names).
//! - [`serve_if_worker`]: the first statement of `main` in re-exec mode
//!   (the default), where workers are this executable started again.
//! - [`worker::run`]: the `main` of a standalone worker program, named with
//!   [`Builder::worker_program`].
//! - [`Pool`]: [`map`](Pool::map), [`imap`](Pool::imap),
//!   [`imap_unordered`](Pool::imap_unordered), [`starmap`](Pool::starmap),
//!   [`apply`](Pool::apply), [`apply_async`](Pool::apply_async),
//!   [`close`](Pool::close), [`join`](Pool::join),
//!   [`terminate`](Pool::terminate); per-call options through
//!   [`Pool::with_chunksize`].
//! - Handles: [`AsyncResult`] from [`apply_async`](Pool::apply_async),
//!   [`map_async`](Pool::map_async) and
//!   [`starmap_async`](Pool::starmap_async) — wait on it, `.await` it, or
//!   give it a callback ([`on_complete`](AsyncResult::on_complete));
//!   [`Imap`] (an iterator; [`into_stream`](Imap::into_stream) for async
//!   code); both can [`cancel`](AsyncResult::cancel) their work.
//! - [`Error`]: one opaque type with predicates (`is_panic`,
//!   `is_worker_died`, `exit`, `is_unknown_task`, ...); its `Debug` is its
//!   one-line message, so `main` can return it.
//! - Per-worker state: [`Registry::initializer`],
//!   [`Registry::task_with_state`], [`Builder::worker_state`], and the
//!   worker's number, [`worker::index`] (see below).
//! - [`Builder::start_method`]: exec (the default) or
//!   [`StartMethod::Zygote`], for workers whose start-up is expensive
//!   (see "Start methods").
//! - [`Builder::remote`]: workers on other hosts, through OpenSSH
//!   ([`Ssh`]) or any launcher such as Slurm's `srun` ([`Launcher`]), with
//!   the same guarantees; a lost host fails what ran there
//!   ([`Error::is_host_lost`]) and never runs it twice (see the README's
//!   "Beyond one machine").
//!
//! # Per-worker state
//!
//! An expensive resource (a parsed dictionary, a model, a database
//! connection) is best made once per worker and used by every task that
//! worker runs, as Python's `initializer` writing globals or mpire's
//! `worker_state` do. Here the initializer's result *is* the worker's
//! state: register a function returning it with [`Registry::initializer`]
//! (or [`Registry::try_initializer`] for one returning `Result<S, E>`),
//! name it with its argument in [`Builder::worker_state`], and register
//! the tasks that take `&mut S` or `&S` as their first parameter with
//! [`Registry::task_with_state`]. The parent calls them without the state,
//! which never leaves the worker:
//!
//! ```rust,standalone_crate
//! use std::collections::HashMap;
//!
//! struct Dictionary {
//!     ranks: HashMap<String, usize>,
//!     lookups: u64,
//! }
//!
//! fn load(words: Vec<String>) -> Dictionary {
//!     let ranks = words.into_iter().enumerate().map(|(i, w)| (w, i)).collect();
//!     Dictionary { ranks, lookups: 0 }
//! }
//!
//! fn rank(dict: &mut Dictionary, word: String) -> Option<usize> {
//!     dict.lookups += 1; // kept for this worker's next task
//!     dict.ranks.get(&word).copied()
//! }
//!
//! fn main() -> Result<(), procpool::Error> {
//!     let tasks = procpool::Registry::new()
//!         .initializer(load)
//!         .task_with_state(rank);
//!     procpool::serve_if_worker(&tasks);
//!
//!     let words = ["the", "of", "and"].map(String::from).to_vec();
//!     let pool = procpool::Pool::builder()
//!         .workers(2)
//!         .worker_state(load, words)
//!         .build()?;
//!     let ranks = pool.map(rank, ["and", "zebra"].map(String::from))?;
//!     assert_eq!(ranks, [Some(2), None]);
//!     pool.join(); // each worker drops its dictionary, then exits
//!     Ok(())
//! }
//! ```
//!
//! - **Lifetime.** Each worker makes its state once, before its first task,
//!   and every task it runs sees the same value: what a task changes
//!   through `&mut S` the next one sees. A replacement worker (after a
//!   crash, a deadline or recycling) makes a fresh state. The state is
//!   dropped (its `Drop` runs) when its worker ends normally: at
//!   [`join`](Pool::join), and when
//!   [`max_tasks_per_worker`](Builder::max_tasks_per_worker) recycles it.
//!   A worker that is killed ([`terminate`](Pool::terminate), dropping the
//!   pool, a deadline) or crashes runs no destructor.
//! - **Failure.** A state initializer that panics or returns `Err` fails
//!   the worker's start, like any [initializer](Builder::initializer).
//! - **No state, no task.** A task taking a state that the pool's workers
//!   do not hold (no state initializer, or one making another type) is
//!   refused at submit, with an error that
//!   [`is_missing_state`](Error::is_missing_state) and says what to
//!   register.
//! - **Not `Send`.** The state never leaves its worker's thread, so it need
//!   not be `Send` or `Sync`, nor serializable.
//! - **Worker index.** [`worker::index`] gives the number of the worker a
//!   task (or an initializer) runs in, `0..workers`; a replacement takes
//!   the index of the worker it replaces (mpire's `worker_id`). Use it to
//!   give each worker its own GPU, port, shard or file.
//!
//! # How workers start
//!
//! Never with a bare `fork()` of your process: a fork of a multi-threaded
//! parent copies locks held by other threads (held forever in the child),
//! shares file offsets and duplicates buffered output. Workers are started
//! by exec (`std::process::Command`, no `pre_exec` code), or forked from a
//! zygote that was itself started by exec and checks it has one thread
//! (see "Start methods"), each in its own process group. The worker runtime moves the protocol pipes off stdin/stdout at
//! once, points stdin at `/dev/null` and stdout at stderr, and closes any
//! descriptor it inherited by accident: a task that prints cannot corrupt
//! the protocol, and nothing of the parent leaks in.
//!
//! # Start methods
//!
//! Exec ([`StartMethod::Exec`], the default) pays a worker's whole start
//! for every worker and every replacement: exec, then the initializer. An
//! initializer that loads a 2 GB model or builds a large index makes each
//! respawn cost seconds, and N workers hold N private copies.
//!
//! [`StartMethod::Zygote`] is Python's `forkserver`, with its safety
//! checked rather than hoped for. The pool exec's one **zygote** (the same
//! worker program, in zygote mode), which runs the initializer once and
//! then forks each worker on request: a worker starts in about a
//! millisecond with the initializer's state already in memory, shared
//! copy-on-write with its siblings (memory that stays unwritten is held
//! once, not once per worker). The pool's own process never forks.
//!
//! ```no_run
//! # fn load_index(path: String) -> Vec<u64> { Vec::new() }
//! # fn lookup(index: &Vec<u64>, key: u64) -> Option<u64> { None }
//! use procpool::{Pool, StartMethod};
//! # fn main() -> Result<(), procpool::Error> {
//! let tasks = procpool::Registry::new()
//!     .initializer(load_index)
//!     .task_with_state(lookup);
//! procpool::serve_if_worker(&tasks);
//! let pool = Pool::builder()
//!     .start_method(StartMethod::Zygote)
//!     .worker_state(load_index, "index.bin".to_owned())
//!     .build()?;
//! let hits = pool.map(lookup, 0..1000u64)?;
//! # Ok(()) }
//! ```
//!
//! - **Why it is safe.** A fork copies only the thread that calls it; a
//!   lock another thread held (the allocator's, stdout's, a logger's)
//!   stays held forever in the child. The zygote is a fresh process of our
//!   own; before *every* fork it counts its threads (`/proc/self/task`)
//!   and forks only if there is exactly one. It flushes its buffered
//!   output first, so nothing is written twice, and it was started by exec
//!   and closed every descriptor it inherited, so nothing of the parent's
//!   reaches a worker. Each worker gets its own pipes from the pool
//!   (passed to the zygote with `SCM_RIGHTS`), its own process group, and
//!   becomes a child subreaper, as an exec'd worker does.
//! - **When it falls back.** An initializer that leaves a thread running
//!   (a library that starts a thread pool, a logger thread) makes the
//!   zygote refuse to fork: the pool logs an error naming the thread count
//!   and starts its workers by exec for the rest of its life (each running
//!   the initializer itself); results are the same, only start-up costs
//!   more. A zygote that dies (killed, crashed) costs no running worker:
//!   replacements are started by exec while a new zygote starts, in the
//!   background, under the pool's restart limit (past it, exec for good).
//! - **Supervision is the same.** A forked worker's death is seen through
//!   a pidfd the zygote opened; the zygote reaps it when the pool asks and
//!   reports its exact status. Deadlines, cancel, recycling, memory limits,
//!   crash attribution and exactly-once behave as with exec'd workers (the
//!   memory limit is the zygote's own, which its workers inherit: an
//!   initializer larger than it fails the build, as with exec). The
//!   zygote, its workers and what its initializer started end with the
//!   pool, also when the pool's process is SIGKILLed or exec's another
//!   program: a worker's parent is the zygote, so instead of a
//!   parent-death signal each worker watches, with a small thread, the
//!   pool's pidfd and its lifeline (a pipe only the pool's process holds
//!   open).
//! - **What it costs.** One more process, and a start of the pool that
//!   waits for the zygote's initializer. What the state holds is a copy
//!   per worker of the zygote's: a file the initializer opened is one
//!   open file shared by every worker, offset included (read it with
//!   positioned reads, or open files per worker in the task); the zygote's
//!   own copy of the state is never dropped (its `Drop` would act on what
//!   the workers share). The initializer runs before any worker exists, so
//!   [`worker::index`] is `None` there (it is the worker's own in every
//!   task). The zygote keeps its workers waitable whatever the
//!   initializer did to SIGCHLD (each worker gets that setting back). A
//!   zygote that stops answering stalls the pool's dispatcher for at most
//!   two seconds before it is replaced; one that dies is reaped at once.
//!   Forked workers forward `log` records at the level the pool's process
//!   had when the zygote started (an exec'd worker takes the level of its
//!   own start). A task that ends a forked worker's main thread
//!   (`pthread_exit` there)
//!   leaves the worker alive but serving nothing, because of that watch
//!   thread: only a deadline ends its call (an exec'd worker exits).
//!
//! # Chunks
//!
//! Tasks travel in chunks: one frame carries many inputs, one frame many
//! results, and two chunks are in flight per worker: while it runs one,
//! the next is in its pipe. A local worker whose chunks come back within
//! tens of microseconds (chunk size 1, a stream of `apply_async`) is sent
//! up to 16 ahead, about 100 µs of its work, so it never waits a round
//! trip for the next; one slow chunk brings it back to two, and a worker
//! that waited starts a new job at two. Chunks with a deadline are never
//! sent further ahead than two. With no
//! [`chunksize`](Builder::chunksize), an input of known length `n` starts
//! with chunks of `ceil(n / (4 * workers))` items (Python's rule), capped at
//! 4096 (16,384 in a pool with remote workers), and each later chunk takes
//! the same share of what is left, down to a sixteenth of the first: the
//! last chunks are short, so no worker runs a long one alone at the end.
//! An input of unknown length starts at 1 item and doubles per chunk up to
//! the cap, so short streams stay responsive and long ones get cheap.
//! [`apply`](Pool::apply) and [`apply_async`](Pool::apply_async) send one
//! item. Input iterators are consumed lazily, a bounded window ahead of the
//! consumer.
//!
//! # Large payloads
//!
//! serde walks a `Vec<u8>` one element at a time; a [`Bytes`] is encoded
//! and decoded as one block, at memory speed: use it for binary arguments
//! and results. A `Bytes` of 1 MiB or more does not go through the pipe at
//! all between the pool and a local worker, either way: it is copied once
//! into a memfd that is then sealed (no one can write, shrink or grow it),
//! the pipe carries a 32-byte marker naming it, and the receiver maps it
//! read-only, with no copy (the received `Bytes` holds the mapping; a
//! change through `DerefMut` copies it out first). No file is ever named
//! in a file system: the memory goes with the last process holding it,
//! whichever side is killed, with no tracker process to clean up. The
//! sender keeps its copy until the receiver has opened it (a worker waits
//! for the pool's word before it sends the frame naming its results), so
//! a crash loses no result that was sent, and a large argument queued
//! behind a crash reaches the replacement. Markers carry a random key of
//! the pool's, so a user's 32 bytes that look like one stay plain bytes.
//! Workers that cannot share memory with the pool (behind a launcher,
//! another user) keep the pipe. [`Builder::shared_memory`] turns it off.
//!
//! ```rust,standalone_crate
//! use procpool::Bytes;
//!
//! fn checksum(data: Bytes) -> u64 {
//!     data.iter().map(|&b| u64::from(b)).sum()
//! }
//!
//! fn main() -> Result<(), procpool::Error> {
//!     let tasks = procpool::Registry::new().task(checksum);
//!     procpool::serve_if_worker(&tasks);
//!     let pool = procpool::Pool::builder().workers(1).build()?;
//!     // 8 MiB: through a sealed memfd, not the pipe.
//!     let sum = pool.apply(checksum, Bytes::from(vec![1u8; 8 << 20]))?;
//!     assert_eq!(sum, 8 << 20);
//!     Ok(())
//! }
//! ```
//!
//! # Async code, callbacks and cancel
//!
//! An [`AsyncResult`] is a [`Future`] and an
//! [`ImapStream`] a `futures_core::Stream`, with no runtime of their own:
//! the dispatcher wakes the waiting task when a result arrives, so a tokio
//! (or any) runtime awaits the pool without blocking a thread. A callback
//! ([`AsyncResult::on_complete`], Python's `callback` and
//! `error_callback`) runs on one thread the pool owns, never on the
//! dispatcher: a slow callback delays only the other callbacks, a panicking
//! one is caught and logged, and [`join`](Pool::join) returns once the
//! callbacks of the work it waited for have run.
//!
//! [`cancel`](AsyncResult::cancel) (or a [`CancelHandle`] from another
//! thread) stops work the way Python's Pool cannot: items not yet started
//! never run, even those already sent to a worker (it skips them); an item
//! running is stopped by killing its worker and descendants, as at a
//! deadline, and only that worker is replaced. Each ends with an error that
//! [`is_cancelled`](Error::is_cancelled).
//!
//! ```rust,standalone_crate
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! fn main() -> Result<(), procpool::Error> {
//!     let tasks = procpool::Registry::new().task(square);
//!     procpool::serve_if_worker(&tasks);
//!     let pool = procpool::Pool::builder().workers(2).build()?;
//!
//!     // Any executor: tokio's, or here the `futures` crate's.
//!     let all = futures::executor::block_on(pool.map_async(square, 0..100u64)?)?;
//!     assert_eq!(all[99], 9801);
//!
//!     let (tx, rx) = std::sync::mpsc::channel();
//!     pool.apply_async(square, 7)?
//!         .on_complete(move |r| tx.send(r).unwrap());
//!     assert_eq!(rx.recv().unwrap()?, 49);
//!
//!     let unwanted = pool.map_async(square, 0..1_000_000u64)?;
//!     unwanted.cancel();
//!     assert!(unwanted.get().unwrap_err().is_cancelled());
//!     Ok(())
//! }
//! ```
//!
//! # Supervision
//!
//! - **Crashes.** A worker that exits, aborts, segfaults or is killed costs
//!   the task it was running (an error that
//!   [`is_worker_died`](Error::is_worker_died), with the pid and the exit
//!   code or signal). Its death is seen through a pidfd; it is reaped by its
//!   own pid, and a replacement starts at once.
//! - **Deadlines.** [`Builder::task_timeout`] (pool default) or
//!   [`Pool::with_timeout`] (per call): at the deadline the task fails with
//!   an error that [`is_timeout`](Error::is_timeout); the worker (through
//!   its pidfd), its process group and its descendant tree get SIGTERM,
//!   then SIGKILL after [`Builder::kill_grace`], so a task that ignores
//!   SIGTERM, was stopped, left the group or spawned children is still
//!   ended. The items behind it are sent again elsewhere, never lost and
//!   never run twice.
//! - **Exact attribution.** Each worker counts the items it starts in
//!   memory it shares with the pool (no syscall per item), so after a death
//!   only the item that was running fails (with any whose results were
//!   still buffered in the worker, at most 20 ms' worth); the unstarted rest
//!   of its chunk, and the chunks queued behind it, run elsewhere, once.
//! - **Leaks.** [`Builder::max_tasks_per_worker`] replaces a worker after
//!   N tasks; [`Builder::worker_memory_limit`] caps its address space, so a
//!   runaway allocation kills that worker only.
//! - **No fork bomb.** A replacement that fails to start is retried with a
//!   doubling backoff, at most [`Builder::restart_limit`] times within a
//!   window; past it the pool is broken ([`Error::is_broken`]) and fails its
//!   work with the reason.
//! - **Parent death.** Workers exit at the end of their input, and also
//!   carry `PR_SET_PDEATHSIG`: none outlives a parent killed with SIGKILL.
//! - **Counters.** [`Pool::stats`]; crashes, timeouts and respawns are also
//!   logged with pid and cause.
//!
//! # Caveats
//!
//! - **Dropping the pool terminates it**: unfinished tasks end in a
//!   `Terminated` error and every worker is killed and reaped. Call
//!   [`close`](Pool::close) and [`join`](Pool::join) to let queued work
//!   finish.
//! - **A worker's descendants end with it.** A kill reaches the worker's
//!   process group and its descendant tree (workers are child subreapers),
//!   and a worker SIGKILLs what its tasks left running when its input ends.
//!   One thing escapes: a descendant that left the worker's process group
//!   and was orphaned when the worker crashed on its own (the kernel hands
//!   it to init before the pool can see it).
//! - **Ordering:** `map` and `imap` yield in input order; `imap_unordered`
//!   yields in completion order.
//! - **`map` stops at the first error** (like Python's, which raises) and
//!   cancels what has not started; `imap` gives every item's outcome.
//! - **A task's own error is a value:** a task returning `Result<T, E>`
//!   delivers the `Result` itself; [`Error`] is only for what the pool saw
//!   go wrong (panic, crash, unknown task, encoding, shutdown).
//! - **Dropping an `imap` iterator** (or its stream) cancels its work not
//!   yet started; **dropping an [`AsyncResult`]** (a future dropped
//!   unfinished included) detaches its work, which still runs (its result
//!   is discarded). [`cancel`](AsyncResult::cancel) stops either.
//! - **Call [`serve_if_worker`] first in `main`**, before threads or files
//!   are opened: a worker closes descriptors it did not expect to inherit.
//!   A program whose `main` you do not control (a libtest test binary) cannot
//!   be re-executed as a worker: use a worker program
//!   ([`Builder::worker_program`]) or a `harness = false` test. A program
//!   that builds a re-exec pool without having called `serve_if_worker`
//!   gets a start-up error saying so from `build()`, before any worker
//!   starts. A copy started as a worker that reaches `build()` anyway
//!   exits at once, silently, and the pool that started it says why, once:
//!   never a fork bomb, never the message once per worker.
//! - **SIGPIPE:** the pool never lets a write to a dead worker raise
//!   SIGPIPE in your process (the lane blocks it around its call, the
//!   dispatcher's thread for good), so a host whose SIGPIPE is at the
//!   default action is safe.
//! - **In-process mode** ([`Builder::in_process`]) cannot kill a thread: at
//!   a deadline, or at `terminate`, a task that does not return within the
//!   grace period is detached and left running (its unreported items fail;
//!   none runs twice). A blocking `apply` waiting on such a thread still
//!   ends at `terminate`, with `Terminated`.
//! - **Zygote workers** share the state their zygote's initializer made,
//!   copy-on-write: see "Start methods" for what that means for files it
//!   opened and for [`worker::index`] in the initializer.
//! - **Platform:** Linux. The process handling relies on `close_range`,
//!   `eventfd`, pidfds, `memfd_create`, `/proc/self/exe` and
//!   `/proc/<pid>/task/*/children`.
//!
//! # Progress
//!
//! [`Imap`] (from `imap` and `imap_unordered`) has an exact `size_hint`
//! whenever its input does, and [`Imap::completed`] counts the results
//! yielded, so progress bars need no extra API; with `indicatif`,
//! `pool.imap_unordered(f, items)?.progress_count(n)` (see the `tour` and
//! `checksum` examples).
//!
//! # Logging
//!
//! The library logs through the [`log`] facade (crashes, respawns,
//! deadlines, start-up), never prints to stdout, and installs no signal
//! handler in the parent. `log` records that task code emits inside a
//! worker are forwarded to the parent's logger, tagged
//! `[worker PID `task`]`, at the parent's `log::max_level()` as it was when
//! the worker started: configure `env_logger` (or any logger) in `main`
//! before building the pool and it applies to the workers too. (In a worker
//! process, which the runtime owns, it sets a panic hook that records where
//! a task panicked, and the forwarding logger, unless the program set its
//! own logger before calling `serve_if_worker`.)
//!
//! # Debugging in one process
//!
//! [`Builder::in_process`] runs the same registry and API on threads of
//! the calling process, like Python's `multiprocessing.dummy`, so a
//! debugger can step into a task. It gives up isolation: a crash takes the
//! program down, and a deadline fails the task without stopping its
//! thread.

mod builder;
mod bytes;
mod call;
mod callback;
mod dispatcher;
mod error;
mod feed;
mod gather;
mod handle;
mod payload;
mod pool;
mod relay;
mod remote;
mod supervisor;
mod sys;
mod task;
mod tasks;
mod values;
pub mod worker;

pub use builder::{Builder, InitOutput, StartMethod};
pub use bytes::Bytes;
pub use call::Call;
pub use error::{Error, Exit, PanicLocation};
pub use handle::{AsyncResult, CancelHandle, Imap, ImapStream, SubmitError};
pub use pool::{Pool, Stats};
pub use remote::{Launcher, Remote, Ssh};
pub use task::{Named, StateMut, StateRef, StateTaskFn, Task, TaskFn, TaskRef};
pub use values::{CallArg, CallOutput, OwnedData, TaskArg, TaskOutput};
pub use worker::{Registry, serve_if_worker};

/// The README, whose example `cargo test` compiles and runs like any
/// doctest, so it cannot fall behind the API.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
