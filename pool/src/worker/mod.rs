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
//!
//! A worker may hold state made by its initializer, for the tasks that take
//! it, and knows its [`index`] in the pool (see `state.rs`).

mod registry;
mod serve;
mod state;
mod zygote;

pub(crate) use registry::ItemError;
pub use registry::Registry;
pub(crate) use state::WorkerState;
pub use state::index;

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};

use procpool_protocol::exit_code;

/// Environment variable that tells a started program it is a worker.
pub(crate) const WORKER_ENV: &str = "PROCPOOL_WORKER";
/// Environment variable carrying the parent's frame limit.
pub(crate) const MAX_FRAME_ENV: &str = "PROCPOOL_MAX_FRAME";
/// Environment variable carrying the parent's pid (for the death signal).
pub(crate) const PARENT_PID_ENV: &str = "PROCPOOL_PARENT_PID";
/// Environment variable carrying the worker's address-space limit.
pub(crate) const MEMORY_LIMIT_ENV: &str = "PROCPOOL_MEMORY_LIMIT";
/// Environment variable set to `0` when the pool wants no large result
/// through shared memory (`Builder::shared_memory(false)`).
pub(crate) const SHARED_MEMORY_ENV: &str = "PROCPOOL_SHARED_MEMORY";
/// Environment variable carrying the pool's payload key (`payload.rs`).
pub(crate) const SHARE_KEY_ENV: &str = "PROCPOOL_SHARE_KEY";
/// Environment variable carrying the parent's `log` level (0 = off to
/// 5 = trace), so workers forward only records the parent wants.
pub(crate) const LOG_LEVEL_ENV: &str = "PROCPOOL_LOG_LEVEL";
/// The path of the pool's progress counter for this worker (a memfd of the
/// pool's, as `/proc/<pid>/fd/<n>`): the worker stores how many items it
/// has started there.
pub(crate) const PROGRESS_ENV: &str = "PROCPOOL_PROGRESS";
/// Environment variable carrying the worker's index in the pool.
pub(crate) const INDEX_ENV: &str = "PROCPOOL_WORKER_INDEX";
/// Environment variable that makes a started worker program a zygote
/// (see `zygote.rs`).
pub(crate) const ZYGOTE_ENV: &str = "PROCPOOL_ZYGOTE";
/// Environment variable that makes a started worker program a relay: the
/// far side of a remote worker (see `relay.rs`).
pub(crate) const RELAY_ENV: &str = "PROCPOOL_RELAY";
/// Environment variable carrying the build (content hash) a relay must
/// be, or refuse to start its worker.
pub(crate) const BUILD_ENV: &str = "PROCPOOL_BUILD";
/// Environment variable carrying a relay's kill grace, in milliseconds:
/// between its SIGTERM and its SIGKILL.
pub(crate) const KILL_GRACE_ENV: &str = "PROCPOOL_KILL_GRACE_MS";

/// Whether this process was started by a pool as a worker.
///
/// A program that asks, as in `if is_worker() { worker::run(&tasks) }`,
/// handles its own worker mode: like [`serve_if_worker`], asking marks it
/// ready to be re-executed as a worker.
pub fn is_worker() -> bool {
    SERVE_IF_WORKER_CALLED.store(true, Ordering::Relaxed);
    worker_env_set()
}

/// The worker variable is set (without marking anything).
pub(crate) fn worker_env_set() -> bool {
    std::env::var_os(WORKER_ENV).is_some()
}

/// Set by [`serve_if_worker`] (or a call to [`is_worker`]): this program is
/// ready to be its own worker.
static SERVE_IF_WORKER_CALLED: AtomicBool = AtomicBool::new(false);

/// Whether this process has called [`serve_if_worker`] (which returned:
/// it is not a worker). A re-exec pool is refused without it, before any
/// worker is started: its copies could not serve.
pub(crate) fn serve_if_worker_called() -> bool {
    SERVE_IF_WORKER_CALLED.load(Ordering::Relaxed)
}

/// Whether a live pool started this process as a worker: the worker
/// variable is set and the parent pid the pool wrote is our parent's. A
/// variable set by hand (or left over from a parent that has died) is not.
pub(crate) fn started_by_pool() -> bool {
    worker_env_set()
        && env_number::<u32>(PARENT_PID_ENV) == Some(std::os::unix::process::parent_id())
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
///
/// A program that builds a pool in re-exec mode without calling it first
/// gets a start-up error from [`Builder::build`](crate::Builder::build)
/// saying so, before any worker is started.
pub fn serve_if_worker(registry: &Registry) {
    if is_worker() {
        std::process::exit(serve_now(registry));
    }
    SERVE_IF_WORKER_CALLED.store(true, Ordering::Relaxed);
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

/// The serve loop of an in-process worker thread (the debugging mode): no
/// descriptor shuffling, no hooks, no logger; the process is the caller's.
pub(crate) fn serve_on_thread(
    registry: &Registry,
    input: std::fs::File,
    output: std::fs::File,
    max_frame: u32,
    progress: &str,
    index: usize,
    share: bool,
) -> i32 {
    state::set_thread_index(Some(index));
    let progress = match crate::sys::SharedCounter::open(progress) {
        Ok(p) => p,
        Err(e) => {
            log::error!("procpool: an in-process worker cannot map its progress counter: {e}");
            return exit_code::SETUP_FAILED;
        }
    };
    let code = serve::serve(
        registry,
        crate::sys::ProtocolStdio { input, output },
        Some(&progress),
        serve::ServeOptions {
            max_frame,
            own_process: None,
            share_results: share,
        },
    );
    state::set_thread_index(None);
    code
}

/// A zygote's start: like a worker's (its memory limit is its own, and its
/// workers inherit it), but it is no subreaper (its workers' orphans are
/// not its to reap), and it keeps a pidfd for the pool (at 5, first after
/// the protocol), for its workers to watch.
fn serve_as_zygote(
    registry: &Registry,
    parent: Option<u32>,
    memory_limit: Option<u64>,
    max_frame: u32,
    log_level: log::LevelFilter,
) -> i32 {
    if let Some(bytes) = memory_limit
        && let Err(e) = crate::sys::limit_memory(bytes)
    {
        eprintln!("procpool zygote: cannot limit its memory to {bytes} bytes: {e}");
        return exit_code::SETUP_FAILED;
    }
    let setup = || -> std::io::Result<_> {
        let stdio = crate::sys::take_protocol_stdio()?;
        let parent = parent.ok_or_else(|| std::io::Error::other("no parent pid was given"))?;
        Ok((stdio, crate::sys::parent_pidfd(parent)?))
    };
    match setup() {
        Ok((stdio, pool)) => zygote::serve_zygote(
            registry,
            stdio,
            serve::ServeOptions {
                max_frame,
                own_process: Some(log_level),
                share_results: shares_results(),
            },
            pool,
        ),
        Err(e) => {
            eprintln!("procpool zygote: cannot set itself up: {e}");
            exit_code::SETUP_FAILED
        }
    }
}

/// The pool's `log` level, as it passed it (`LOG_LEVEL_ENV`).
pub(crate) fn log_level_from_env() -> log::LevelFilter {
    match env_number::<usize>(LOG_LEVEL_ENV).unwrap_or(0) {
        0 => log::LevelFilter::Off,
        1 => log::LevelFilter::Error,
        2 => log::LevelFilter::Warn,
        3 => log::LevelFilter::Info,
        4 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    }
}

pub(crate) fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Whether the pool that exec'd this worker (or its zygote) lets large
/// results go through shared memory: read from the environment at start,
/// before the pool's variables are removed from it.
static SHARE_RESULTS: AtomicBool = AtomicBool::new(true);

fn shares_results() -> bool {
    SHARE_RESULTS.load(Ordering::Relaxed)
}

fn serve_now(registry: &Registry) -> i32 {
    if std::env::var_os(RELAY_ENV).is_some_and(|v| v == "1") {
        return crate::relay::serve();
    }
    let max_frame = env_number(MAX_FRAME_ENV).unwrap_or(procpool_protocol::DEFAULT_MAX_FRAME);
    let parent: Option<u32> = env_number(PARENT_PID_ENV);
    let memory: Option<u64> = env_number(MEMORY_LIMIT_ENV);
    let progress = std::env::var(PROGRESS_ENV).ok();
    let zygote = std::env::var_os(ZYGOTE_ENV).is_some_and(|v| v == "1");
    SHARE_RESULTS.store(
        std::env::var_os(SHARED_MEMORY_ENV).is_none_or(|v| v != "0"),
        Ordering::Relaxed,
    );
    if let Some(key) = env_number::<u64>(SHARE_KEY_ENV) {
        crate::payload::set_key(key);
    }
    if let Some(index) = env_number(INDEX_ENV) {
        state::set_process_index(index);
    }
    let log_level = log_level_from_env();
    for var in [
        WORKER_ENV,
        MAX_FRAME_ENV,
        PARENT_PID_ENV,
        MEMORY_LIMIT_ENV,
        SHARED_MEMORY_ENV,
        SHARE_KEY_ENV,
        LOG_LEVEL_ENV,
        PROGRESS_ENV,
        INDEX_ENV,
        ZYGOTE_ENV,
    ] {
        crate::sys::remove_env(var);
    }
    // Second line of defence after the end of stdin: die with the parent,
    // even one killed with SIGKILL.
    if let Some(parent) = parent
        && let Err(e) = crate::sys::die_with_parent(parent)
    {
        eprintln!("procpool worker: {e}");
        return exit_code::SETUP_FAILED;
    }
    if zygote {
        return serve_as_zygote(registry, parent, memory, max_frame, log_level);
    }
    if let Some(bytes) = memory
        && let Err(e) = crate::sys::limit_memory(bytes)
    {
        eprintln!("procpool worker: cannot limit its memory to {bytes} bytes: {e}");
        return exit_code::SETUP_FAILED;
    }
    // Orphaned descendants of a task stay in this worker's tree, where a
    // kill of the worker reaches them.
    if let Err(e) = crate::sys::become_subreaper() {
        eprintln!("procpool worker: cannot become a child subreaper: {e}");
        return exit_code::SETUP_FAILED;
    }
    let stdio = match crate::sys::take_protocol_stdio() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("procpool worker: cannot set up its descriptors: {e}");
            return exit_code::SETUP_FAILED;
        }
    };
    // Without a counter (a worker behind a launcher that has no shared
    // memory with the pool) nothing is recorded; a named one must work.
    let progress = match progress.map(|p| crate::sys::SharedCounter::open(&p).map_err(|e| (p, e))) {
        None => None,
        Some(Ok(p)) => Some(p),
        Some(Err((p, e))) => {
            eprintln!("procpool worker: cannot map its progress counter {p}: {e}");
            return exit_code::SETUP_FAILED;
        }
    };
    let code = serve::serve(
        registry,
        stdio,
        progress.as_ref(),
        serve::ServeOptions {
            max_frame,
            own_process: Some(log_level),
            share_results: shares_results(),
        },
    );
    // Whatever the tasks started and left behind ends with the worker.
    crate::sys::kill_descendants_of_self();
    code
}
