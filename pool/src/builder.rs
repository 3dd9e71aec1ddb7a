//! [`Builder`]: the pool's options, checked, and the start of the pool.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde::de::DeserializeOwned;

use crate::dispatcher::{self, Config, Initializer, RemoteSite, Shared};
use crate::error::{Error, ErrorKind};
use crate::pool::{Inner, Pool};
use crate::remote::Remote;
use crate::supervisor::handshake::InitCheck;
use crate::supervisor::{Launch, Limit, Zygotes};
use crate::task::{TaskRef, signature};
use crate::values::CallArg;
use crate::worker::Registry;

/// Batches in flight per worker: while a worker runs one, the next is
/// already in its pipe (more while its batches are fast:
/// `dispatcher/pace.rs`).
pub(crate) const PIPELINE: usize = 2;

/// What an initializer given to [`Builder::initializer`] may return: `()`,
/// or `Result<(), E>` whose `Err` fails the pool's start-up with `E`'s
/// message. An initializer whose result stays in the worker, as its state,
/// is given to [`Builder::worker_state`] instead:
///
/// ```compile_fail
/// struct Model;
/// fn load_model(path: String) -> Model { Model }
/// let builder = procpool::Pool::builder().initializer(load_model, "m.bin".to_owned());
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the result of an initializer given to `Builder::initializer`",
    label = "not `()` or `Result<(), E>`",
    note = "such an initializer returns `()` or `Result<(), E>`; one whose result stays in each worker as its state is registered with `Registry::initializer` (or `Registry::try_initializer`) and given to `Builder::worker_state`"
)]
pub trait InitOutput: DeserializeOwned {
    /// `Err(message)` if the initializer failed.
    fn into_init_result(self) -> Result<(), String>;
}

impl InitOutput for () {
    fn into_init_result(self) -> Result<(), String> {
        Ok(())
    }
}

impl<E: fmt::Display + DeserializeOwned> InitOutput for Result<(), E> {
    fn into_init_result(self) -> Result<(), String> {
        self.map_err(|e| e.to_string())
    }
}

/// How a pool starts its worker processes; see
/// [`Builder::start_method`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum StartMethod {
    /// Each worker is started by exec and runs the initializer itself: the
    /// default, and always safe.
    #[default]
    Exec,
    /// One zygote process is started by exec and runs the initializer
    /// once; workers are forked from it, with the initializer's state
    /// already in memory, shared copy-on-write. Python's `forkserver`,
    /// with its safety checked: see the crate docs, "Start methods".
    Zygote,
}

/// Configures and starts a [`Pool`]; from [`Pool::builder`].
pub struct Builder {
    workers: Option<usize>,
    program: Option<(PathBuf, Vec<OsString>)>,
    in_process: Option<Arc<Registry>>,
    initializer: Option<Result<Initializer, Error>>,
    chunksize: Option<usize>,
    max_frame: u32,
    startup_timeout: Duration,
    shutdown_grace: Duration,
    kill_grace: Duration,
    stall_timeout: Duration,
    task_timeout: Option<Duration>,
    max_tasks_per_worker: Option<u64>,
    memory_limit: Option<u64>,
    restart_limit: Limit,
    start_method: StartMethod,
    shared_memory: bool,
    remotes: Vec<Remote>,
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("workers", &self.workers)
            .field("program", &self.program)
            .field("chunksize", &self.chunksize)
            .field("max_frame", &self.max_frame)
            .field("startup_timeout", &self.startup_timeout)
            .field("start_method", &self.start_method)
            .field("shared_memory", &self.shared_memory)
            .field("remotes", &self.remotes)
            .finish_non_exhaustive()
    }
}

impl Builder {
    pub(crate) fn new() -> Self {
        Self {
            workers: None,
            program: None,
            in_process: None,
            initializer: None,
            chunksize: None,
            max_frame: procpool_protocol::DEFAULT_MAX_FRAME,
            startup_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
            kill_grace: Duration::from_secs(1),
            stall_timeout: Duration::from_secs(10),
            task_timeout: None,
            max_tasks_per_worker: None,
            memory_limit: None,
            restart_limit: Limit {
                max: 10,
                window: Duration::from_secs(60),
            },
            start_method: StartMethod::Exec,
            shared_memory: true,
            remotes: Vec::new(),
        }
    }

    /// Workers on another host, beside the local ones: an [`Ssh`] host or
    /// a [`Launcher`] (such as Slurm's `srun`). May be given several
    /// times. With remote workers, [`workers`](Self::workers) may be 0 (no
    /// local worker) and defaults to 0.
    ///
    /// The pool runs the same program there (re-exec mode: this
    /// executable's path; or the [`worker_program`](Self::worker_program)),
    /// unless the remote names another path or ships the binary. The
    /// program's build is checked there before it runs. Remote workers
    /// have the same guarantees as local ones: every task ends in exactly
    /// one outcome, a deadline kills the worker's tree on its host, and a
    /// lost host fails the tasks that were there (with
    /// [`Error::is_host_lost`]) and never runs them twice. A host whose
    /// workers keep failing to start is dropped under its own restart
    /// limit; the pool is broken only when no worker is left anywhere.
    ///
    /// [`Ssh`]: crate::Ssh
    /// [`Launcher`]: crate::Launcher
    pub fn remote(mut self, remote: impl Into<Remote>) -> Self {
        self.remotes.push(remote.into());
        self
    }

    /// Number of local worker processes (default: the available
    /// parallelism; 0 when [`remote`](Self::remote) workers are given).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self
    }

    /// Start this program as the worker instead of re-executing the
    /// current executable. It must call [`worker::run`](crate::worker::run)
    /// with a registry serving the tasks the pool will call.
    pub fn worker_program(mut self, path: impl Into<PathBuf>) -> Self {
        self.program = Some((path.into(), Vec::new()));
        self
    }

    /// The debugging mode (Python's `multiprocessing.dummy`): the workers
    /// are threads of this process running `registry`'s tasks through the
    /// same protocol and API, so a debugger steps straight into a task.
    ///
    /// This gives up isolation: a task that crashes, aborts or exits takes
    /// the whole program with it, a deadline fails the task but cannot stop
    /// its thread, the memory limit does not apply, and tasks print to the
    /// real stdout. Worker pids are this process's own.
    pub fn in_process(mut self, registry: Registry) -> Self {
        self.in_process = Some(Arc::new(registry));
        self
    }

    /// Extra arguments for the worker program.
    pub fn worker_args<S: Into<OsString>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        let args = args.into_iter().map(Into::into).collect();
        match &mut self.program {
            Some((_, a)) => *a = args,
            None => self.program = Some((std::env::current_exe().unwrap_or_default(), args)),
        }
        self
    }

    /// A registered task each worker runs once, with `args`, before its
    /// first task. If it panics or returns `Err` the pool does not start
    /// ([`Error::is_startup`]). Its result (`()` or `Result<(), E>`) is
    /// only judged; to keep what an initializer makes in the worker, as
    /// its state, use [`worker_state`](Self::worker_state) instead.
    pub fn initializer<F, Args, R, M>(self, f: F, args: Args) -> Self
    where
        F: TaskRef<Args, R, M>,
        Args: CallArg,
        R: InitOutput,
    {
        // Through the stack-growing decoder, like every result: a deeply
        // nested error value cannot overflow the stack.
        let check: InitCheck = Box::new(
            |bytes: &[u8]| match procpool_protocol::value::take_value::<R>(bytes) {
                Ok((r, [])) => r.into_init_result(),
                Ok((_, rest)) => Err(format!(
                    "cannot decode its result: {} bytes left over",
                    rest.len()
                )),
                Err(e) => Err(format!("cannot decode its result: {e}")),
            },
        );
        self.set_initializer(f, args, Some(check))
    }

    /// A state-making initializer each worker runs once, with `args`,
    /// before its first task: what it returns stays in that worker as its
    /// state, for the tasks that take it (`fn(&mut S, ..)` or `fn(&S, ..)`,
    /// registered with [`Registry::task_with_state`]). Register `f` with
    /// [`Registry::initializer`] (`fn(..) -> S`) or
    /// [`Registry::try_initializer`] (`fn(..) -> Result<S, E>`).
    ///
    /// As with [`initializer`](Self::initializer) (which it replaces: a
    /// pool has one initializer), a panic or an `Err` fails the worker's
    /// start. A replacement worker makes its state afresh; a worker that
    /// ends normally drops it first. See the crate docs' "Per-worker
    /// state".
    ///
    /// `f` may also be a [`Task::named`](crate::Task::named) handle, for a
    /// worker program built apart: only its argument type is checked
    /// against the worker's, since its result stays in the worker.
    ///
    /// ```no_run
    /// struct Model { weight: f64 }
    ///
    /// fn load_model(weight: f64) -> Result<Model, String> {
    ///     Ok(Model { weight })
    /// }
    ///
    /// fn predict(model: &mut Model, x: f64) -> f64 {
    ///     model.weight * x
    /// }
    ///
    /// fn main() -> Result<(), procpool::Error> {
    ///     let tasks = procpool::Registry::new()
    ///         .try_initializer(load_model)
    ///         .task_with_state(predict);
    ///     procpool::serve_if_worker(&tasks);
    ///
    ///     let pool = procpool::Pool::builder()
    ///         .workers(2)
    ///         .worker_state(load_model, 0.5)
    ///         .build()?;
    ///     assert_eq!(pool.map(predict, [2.0, 4.0])?, [1.0, 2.0]);
    ///     Ok(())
    /// }
    /// ```
    pub fn worker_state<F, Args, R, M>(self, f: F, args: Args) -> Self
    where
        F: TaskRef<Args, R, M>,
        Args: CallArg,
    {
        self.set_initializer(f, args, None)
    }

    fn set_initializer<F, Args, R, M>(mut self, f: F, args: Args, check: Option<InitCheck>) -> Self
    where
        F: TaskRef<Args, R, M>,
        Args: CallArg,
    {
        let name = f.task_name().into_owned();
        self.initializer = Some(match postcard::to_stdvec(&args) {
            Ok(arg) => Ok(Initializer {
                name,
                signature: signature::<Args, R>(),
                arg,
                check,
            }),
            Err(e) => Err(Error::new(ErrorKind::ArgEncode {
                task: name,
                message: e.to_string(),
            })),
        });
        self
    }

    /// Items per chunk for `map`, `imap`, `imap_unordered` and `starmap`
    /// (default: automatic; see the crate docs).
    pub fn chunksize(mut self, n: usize) -> Self {
        self.chunksize = Some(n.max(1));
        self
    }

    /// Whether a [`Bytes`](crate::Bytes) payload of 1 MiB or more (an
    /// argument or a result) travels through shared memory, a sealed
    /// memfd the receiver maps, instead of through the pipe (default:
    /// yes). The pipe carries a 32-byte marker in its place. Nothing is
    /// ever named in a file system, and the memory goes with the last
    /// process that holds it, whichever is killed. See the crate docs,
    /// "Large payloads".
    pub fn shared_memory(mut self, on: bool) -> Self {
        self.shared_memory = on;
        self
    }

    /// Largest frame either side accepts, in bytes (default 64 MiB).
    pub fn max_frame(mut self, bytes: u32) -> Self {
        self.max_frame = bytes.max(1024);
        self
    }

    /// How long a worker may take to start and shake hands (default 10 s).
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// How long [`Pool::join`] waits for a worker to exit after its input
    /// was closed before killing it (default 5 s).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// A deadline for every task, from when it starts running (default:
    /// none). At the deadline the task fails with an error that
    /// [`is_timeout`](Error::is_timeout), its worker's process group gets
    /// SIGTERM, then SIGKILL after the [`kill_grace`](Self::kill_grace), and
    /// a replacement starts. Per call: [`Pool::with_timeout`].
    ///
    /// Jobs with a deadline have each outcome reported as soon as it is
    /// ready (not batched), so the deadline is exact and the items queued
    /// behind a killed task are never lost. A zero deadline is refused at
    /// submit ([`Error::is_invalid_call`]); `Duration::MAX` is no deadline.
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.task_timeout = Some(timeout);
        self
    }

    /// How long a worker has between SIGTERM and SIGKILL, at a deadline and
    /// at [`Pool::terminate`] (default 1 s).
    pub fn kill_grace(mut self, grace: Duration) -> Self {
        self.kill_grace = grace;
        self
    }

    /// Replaces a worker after it has run `n` tasks (rounded up to whole
    /// chunks), to contain slow leaks (Python's `maxtasksperchild`).
    pub fn max_tasks_per_worker(mut self, n: u64) -> Self {
        self.max_tasks_per_worker = Some(n.max(1));
        self
    }

    /// Caps each worker's address space (`RLIMIT_AS`) at `bytes`: a runaway
    /// allocation then kills that worker (its task fails with
    /// [`is_worker_died`](Error::is_worker_died)) instead of the machine's
    /// memory.
    pub fn worker_memory_limit(mut self, bytes: u64) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// The restart intensity: after the pool is built, at most `max`
    /// failed worker starts (spawn errors, deaths before the handshake,
    /// failed initializers) within `window`; each is retried after a
    /// backoff that doubles from 10 ms to 2 s. One more breaks the pool:
    /// queued and later tasks fail with an error that
    /// [`is_broken`](Error::is_broken). Default: 10 within 60 s.
    pub fn restart_limit(mut self, max: u32, window: Duration) -> Self {
        self.restart_limit = Limit { max, window };
        self
    }

    /// A worker that leaves a frame half-written for this long is treated
    /// as broken: killed and replaced (default 10 s).
    pub fn stall_timeout(mut self, timeout: Duration) -> Self {
        self.stall_timeout = timeout;
        self
    }

    /// How workers are started: by exec (the default), or forked from a
    /// zygote that ran the initializer once ([`StartMethod::Zygote`]), for
    /// workers whose start-up is expensive. See the crate docs, "Start
    /// methods". Not for [`in_process`](Self::in_process) pools.
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.start_method = method;
        self
    }

    /// Starts the workers and waits until every one has shaken hands (and
    /// run the initializer).
    ///
    /// In re-exec mode (neither [`worker_program`](Self::worker_program)
    /// nor [`in_process`](Self::in_process)) a program whose `main` has not
    /// called [`serve_if_worker`](crate::serve_if_worker) is refused at
    /// once, before any worker starts, with a start-up error that says so.
    pub fn build(self) -> Result<Pool, Error> {
        let remote_workers: usize = self.remotes.iter().map(Remote::workers).sum();
        let workers = match self.workers {
            Some(0) if remote_workers == 0 => {
                return Err(Error::startup("a pool needs at least one worker"));
            }
            Some(n) => n,
            None if !self.remotes.is_empty() => 0,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        if self.in_process.is_some() && !self.remotes.is_empty() {
            return Err(Error::startup(
                "an in-process pool runs its workers on threads of this process; it has no \
                 remote workers",
            ));
        }
        let mut launch = match (self.in_process, self.program) {
            (Some(registry), _) => Launch::threads(registry, self.max_frame),
            (None, Some((path, args))) => Launch::program(path, args, self.max_frame),
            (None, None) => {
                if crate::worker::worker_env_set() {
                    not_serving_worker()?;
                }
                if !crate::worker::serve_if_worker_called() {
                    return Err(Error::startup(
                        "in re-exec mode this program is its own worker, but `main` did not \
                         call `procpool::serve_if_worker(&tasks)`: make that the first \
                         statement of `main`",
                    ));
                }
                Launch::current_exe(self.max_frame)
            }
        };
        launch.memory_limit = self.memory_limit;
        launch.shared_memory = self.shared_memory;
        launch.kill_grace = self.kill_grace;
        let mut remotes = Vec::new();
        if !self.remotes.is_empty() {
            let local = launch.local_program().ok_or_else(|| {
                Error::startup("cannot tell the path of the worker program to run remotely")
            })?;
            for r in &self.remotes {
                if r.workers() == 0 {
                    continue;
                }
                remotes.push(RemoteSite {
                    launch: launch.on(r.prepare(&local)?),
                    workers: r.workers(),
                    restart_limit: r.restart_limit(),
                    shares_connection: r.shares_connection(),
                });
            }
        }
        let did_not_serve = launch.did_not_serve.clone();
        let program = launch.describe();
        let initializer = self.initializer.transpose()?.map(Arc::new);
        if self.start_method == StartMethod::Zygote {
            if launch.is_threads() {
                return Err(Error::startup(
                    "the zygote start method forks worker processes; an in-process pool has none",
                ));
            }
            launch.zygote = Some(Arc::new(Mutex::new(Zygotes::new(
                initializer.clone(),
                self.startup_timeout,
                self.restart_limit,
                self.max_frame,
                did_not_serve.clone(),
            ))));
        }
        let config = Config {
            workers,
            launch,
            remotes,
            max_frame: self.max_frame,
            startup_timeout: self.startup_timeout,
            pipeline: PIPELINE,
            shutdown_grace: self.shutdown_grace,
            kill_grace: self.kill_grace,
            stall_timeout: self.stall_timeout,
            max_tasks_per_worker: self.max_tasks_per_worker,
            restart_limit: self.restart_limit,
            initializer,
        };
        let shared = Arc::new(Shared::new());
        let (handle, thread) = dispatcher::start(config, shared.clone()).map_err(|e| {
            if did_not_serve.load(Ordering::Acquire) {
                // Its copies exited quietly, with a code that says why:
                // this is the one place that explains it.
                Error::startup(format!(
                    "`{program}`, started as a worker, built a pool instead of serving: make \
                     `procpool::serve_if_worker(&tasks)` the first statement of its `main`, on \
                     every path"
                ))
            } else {
                e
            }
        })?;
        Ok(Pool {
            inner: Arc::new(Inner {
                shared,
                handle,
                thread: Mutex::new(Some(thread)),
                workers: workers + remote_workers,
                remote: remote_workers > 0,
                chunksize: self.chunksize,
                timeout: self.task_timeout,
                max_frame: self.max_frame,
                shared_memory: self.shared_memory,
                stopped: AtomicBool::new(false),
                callbacks: Default::default(),
            }),
        })
    }
}

/// A process started as a worker has reached `build()` instead of serving:
/// its `main` did not call `serve_if_worker` first. Building would start
/// workers of its own, each of which would do the same: a fork bomb.
///
/// Started by a live pool, it exits at once and silently, with a code that
/// tells that pool why, so a program with N workers says it once, not N
/// times. A process whose worker variable was set by hand gets the error.
fn not_serving_worker() -> Result<(), Error> {
    if crate::worker::started_by_pool() {
        std::process::exit(procpool_protocol::exit_code::DID_NOT_SERVE);
    }
    Err(Error::startup(format!(
        "this process has {} set, as a pool's worker would, but builds a pool: make \
         `procpool::serve_if_worker(&tasks)` the first statement of `main` (or unset {0} if no \
         pool started it)",
        crate::worker::WORKER_ENV
    )))
}
