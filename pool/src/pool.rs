//! The public API: [`Pool`], its [`Builder`], the streaming iterators and
//! [`AsyncResult`].

use std::any::type_name;
use std::ffi::OsString;
use std::fmt;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use parking_lot::Mutex;
use procpool_protocol::ItemsBuilder;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::dispatcher::{self, Batch, ChunkMsg, Command, Config, Handle, Initializer, Job, Shared};
use crate::error::{Error, ErrorKind};
use crate::feed::{ChunkSize, Chunks, Feeder, count, decode_part, encode_arg};
use crate::supervisor::{Launch, Limit};
use crate::task::{TaskRef, signature};
use crate::worker::Registry;

/// Batches in flight per worker: while a worker runs one, the next is
/// already in its pipe.
const PIPELINE: usize = 2;

/// What an initializer may return: `()`, or `Result<(), E>` whose `Err`
/// fails the pool's start-up with `E`'s message.
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
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("workers", &self.workers)
            .field("program", &self.program)
            .field("chunksize", &self.chunksize)
            .field("max_frame", &self.max_frame)
            .field("startup_timeout", &self.startup_timeout)
            .finish_non_exhaustive()
    }
}

impl Builder {
    fn new() -> Self {
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
        }
    }

    /// Number of worker processes (default: the available parallelism).
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
    /// ([`Error::is_startup`]).
    pub fn initializer<F, Args, R, M>(mut self, f: F, args: Args) -> Self
    where
        F: TaskRef<Args, R, M>,
        Args: Serialize,
        R: InitOutput,
    {
        let name = f.task_name().into_owned();
        self.initializer = Some(match postcard::to_stdvec(&args) {
            Ok(arg) => Ok(Initializer {
                name,
                signature: signature::<Args, R>(),
                arg,
                check: Box::new(|bytes: &[u8]| match postcard::from_bytes::<R>(bytes) {
                    Ok(r) => r.into_init_result(),
                    Err(e) => Err(format!("cannot decode its result: {e}")),
                }),
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
    /// behind a killed task are never lost.
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

    /// Starts the workers and waits until every one has shaken hands (and
    /// run the initializer).
    pub fn build(self) -> Result<Pool, Error> {
        let workers = match self.workers {
            Some(0) => return Err(Error::startup("a pool needs at least one worker")),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let mut launch = match (self.in_process, self.program) {
            (Some(registry), _) => Launch::threads(registry, self.max_frame),
            (None, Some((path, args))) => Launch::program(path, args, self.max_frame),
            (None, None) => {
                if crate::worker::is_worker() {
                    // Without this guard a worker that forgot to call
                    // serve_if_worker would start a pool of its own, and so
                    // on: a fork bomb.
                    return Err(Error::startup(
                        "this process was started as a procpool worker but builds a pool: \
                         call procpool::serve_if_worker(&registry) first thing in main",
                    ));
                }
                Launch::current_exe(self.max_frame)
            }
        };
        launch.memory_limit = self.memory_limit;
        let initializer = self.initializer.transpose()?;
        let config = Config {
            workers,
            launch,
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
        let (handle, thread) = dispatcher::start(config, shared.clone())?;
        Ok(Pool {
            inner: Arc::new(Inner {
                shared,
                handle,
                thread: Mutex::new(Some(thread)),
                workers,
                chunksize: self.chunksize,
                timeout: self.task_timeout,
                max_frame: self.max_frame,
                stopped: AtomicBool::new(false),
            }),
        })
    }
}

/// What the pool's handles share.
pub(crate) struct Inner {
    pub(crate) shared: Arc<Shared>,
    handle: Handle,
    thread: Mutex<Option<JoinHandle<()>>>,
    workers: usize,
    chunksize: Option<usize>,
    timeout: Option<Duration>,
    pub(crate) max_frame: u32,
    /// The dispatcher has exited and was joined.
    stopped: AtomicBool,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inner")
            .field("workers", &self.workers)
            .field("chunksize", &self.chunksize)
            .finish_non_exhaustive()
    }
}

impl Inner {
    /// Hands a batch to the dispatcher; if it has exited the batch is
    /// dropped, which fails its items with the pool's state.
    pub(crate) fn submit(&self, batch: Batch) {
        if let Err(Command::Submit(b)) = self.handle.send(Command::Submit(batch)) {
            drop(b);
        }
    }

    /// A new job for task `f`, checked against what the workers serve.
    fn job<F, Args, R, M>(
        self: &Arc<Self>,
        f: &F,
        timeout: Option<Duration>,
    ) -> Result<(Arc<Job>, Receiver<ChunkMsg>), Error>
    where
        F: TaskRef<Args, R, M>,
    {
        if !self.shared.is_open() {
            return Err(self.shared.loss_error());
        }
        let name = f.task_name();
        let table = self
            .shared
            .tasks
            .get()
            .expect("set before the pool was built");
        let Some(index) = table.infos.iter().position(|t| t.name == name) else {
            return Err(Error::new(ErrorKind::UnknownTask {
                name: name.into_owned(),
                available: table.infos.iter().map(|t| t.name.clone()).collect(),
            }));
        };
        let served = &table.infos[index];
        let (arg_type, output_type) = (type_name::<Args>(), type_name::<R>());
        if served.arg_type != arg_type || served.output_type != output_type {
            return Err(Error::new(ErrorKind::Signature {
                name: name.into_owned(),
                expected: format!("fn({arg_type}) -> {output_type}"),
                served: format!("fn({}) -> {}", served.arg_type, served.output_type),
            }));
        }
        let (sink, rx) = crossbeam_channel::unbounded();
        let job = Arc::new(Job {
            task: index as u32,
            task_name: table.names[index].clone(),
            timeout,
            sink,
            cancelled: Default::default(),
            shared: self.shared.clone(),
        });
        Ok((job, rx))
    }

    /// Chunks a job may have open at once: enough to keep every worker's
    /// pipeline full with as many again waiting, and no more.
    fn window(&self) -> usize {
        2 * PIPELINE * self.workers + 2
    }

    /// Sends `cmd`, then waits for the dispatcher to exit. The command is
    /// sent before taking the lock, so a second `terminate` reaches the
    /// dispatcher (and escalates) while a first one waits.
    fn stop(&self, cmd: Command) {
        let _ = self.handle.send(cmd);
        if let Some(t) = self.thread.lock().take() {
            if t.join().is_err() {
                log::error!("procpool: the dispatcher thread panicked");
            }
            self.stopped.store(true, Ordering::Release);
        }
    }
}

/// A pool of worker processes.
///
/// Every method takes `&self`: share a pool between threads by reference
/// or in an `Arc`. Dropping it [terminates](Pool::terminate) it.
#[derive(Debug)]
pub struct Pool {
    inner: Arc<Inner>,
}

/// Per-call options; from [`Pool::with_chunksize`] or
/// [`Pool::with_timeout`], chained as needed:
/// `pool.with_chunksize(1).with_timeout(d).imap(..)`.
#[derive(Debug, Clone, Copy)]
pub struct Call<'p> {
    pool: &'p Pool,
    chunksize: Option<usize>,
    timeout: Option<Duration>,
}

impl Pool {
    /// A builder with the defaults: one worker per available core,
    /// re-exec mode, automatic chunk size.
    pub fn builder() -> Builder {
        Builder::new()
    }

    /// The same calls with a chunk size for this call only.
    pub fn with_chunksize(&self, n: usize) -> Call<'_> {
        self.call().with_chunksize(n)
    }

    /// The same calls with a deadline per task for this call only (see
    /// [`Builder::task_timeout`]).
    pub fn with_timeout(&self, timeout: Duration) -> Call<'_> {
        self.call().with_timeout(timeout)
    }

    fn call(&self) -> Call<'_> {
        Call {
            pool: self,
            chunksize: self.inner.chunksize,
            timeout: self.inner.timeout,
        }
    }

    /// Applies `f` to every item and returns the results in input order.
    ///
    /// Stops at the first failed item to arrive and returns its error (like
    /// Python's `Pool.map` raising); work not yet started is cancelled. Use
    /// [`imap`](Self::imap) to see every item's outcome.
    pub fn map<F, Args, R, M, I>(&self, f: F, items: I) -> Result<Vec<R>, Error>
    where
        F: TaskRef<Args, R, M>,
        I: IntoIterator<Item = Args>,
        Args: Serialize,
        R: DeserializeOwned,
    {
        self.call().map(f, items)
    }

    /// [`map`](Self::map) for tasks of several arguments: each item is the
    /// tuple of arguments (`fn add(a: u64, b: u64)` takes `(u64, u64)`).
    pub fn starmap<F, Args, R, M, I>(&self, f: F, items: I) -> Result<Vec<R>, Error>
    where
        F: TaskRef<Args, R, M>,
        I: IntoIterator<Item = Args>,
        Args: Serialize,
        R: DeserializeOwned,
    {
        self.call().starmap(f, items)
    }

    /// Streams every item's outcome in input order, consuming the input
    /// lazily.
    pub fn imap<F, Args, R, M, I>(&self, f: F, items: I) -> Result<Imap<R, I::IntoIter>, Error>
    where
        F: TaskRef<Args, R, M>,
        I: IntoIterator<Item = Args>,
        Args: Serialize,
        R: DeserializeOwned,
    {
        self.call().imap(f, items)
    }

    /// Streams every item's outcome in completion order, consuming the
    /// input lazily.
    pub fn imap_unordered<F, Args, R, M, I>(
        &self,
        f: F,
        items: I,
    ) -> Result<Imap<R, I::IntoIter>, Error>
    where
        F: TaskRef<Args, R, M>,
        I: IntoIterator<Item = Args>,
        Args: Serialize,
        R: DeserializeOwned,
    {
        self.call().imap_unordered(f, items)
    }

    /// Runs `f(args)` in a worker and waits for the result.
    ///
    /// Without a deadline, an `apply` that finds a worker idle talks to it
    /// directly from the calling thread (the direct lane), which makes its
    /// round trip close to a bare pipe's; outcomes are the same either way.
    ///
    /// The argument must be serializable, or the call does not compile:
    ///
    /// ```compile_fail
    /// # fn demo(pool: &procpool::Pool) {
    /// struct NotSerde;
    /// let task: procpool::Task<NotSerde, u64> = procpool::Task::named("t");
    /// let _ = pool.apply(task, NotSerde);
    /// # }
    /// ```
    pub fn apply<F, Args, R, M>(&self, f: F, args: Args) -> Result<R, Error>
    where
        F: TaskRef<Args, R, M>,
        Args: Serialize,
        R: DeserializeOwned,
    {
        self.call().apply(f, args)
    }

    /// Submits `f(args)` and returns a handle to its result.
    ///
    /// A task refused at submit (unknown task, closed pool, an argument
    /// that cannot be encoded or is larger than a frame) hands its argument
    /// back in the [`SubmitError`], which converts into [`Error`] with `?`.
    pub fn apply_async<F, Args, R, M>(
        &self,
        f: F,
        args: Args,
    ) -> Result<AsyncResult<R>, SubmitError<Args>>
    where
        F: TaskRef<Args, R, M>,
        Args: Serialize,
        R: DeserializeOwned,
    {
        self.call().apply_async(f, args)
    }

    /// Stops accepting new work. Work already submitted (including the rest
    /// of iterators already started) still runs.
    pub fn close(&self) {
        self.inner.shared.close();
    }

    /// Closes the pool (if not yet closed), waits for all submitted work
    /// to finish, and stops the workers (each exits when its input closes;
    /// one that does not within the shutdown grace is killed).
    ///
    /// An [`Imap`] still being consumed keeps what it already submitted;
    /// items it pulls from its input after the join end in a `Closed`
    /// error.
    pub fn join(&self) {
        self.close();
        self.inner.stop(Command::Join);
    }

    /// Fails every unfinished task with a `Terminated` error, kills every
    /// worker (and anything in its process group) and reaps it. Calling it
    /// again, or after `join`, does nothing.
    pub fn terminate(&self) {
        if !self.inner.stopped.load(Ordering::Acquire) {
            self.inner.shared.set_terminated();
        }
        self.inner.stop(Command::Terminate);
    }

    /// Number of worker processes the pool keeps.
    pub fn workers(&self) -> usize {
        self.inner.workers
    }

    /// Pids of the current worker processes.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.inner.shared.pids.lock().clone()
    }

    /// The pool's counters so far.
    pub fn stats(&self) -> Stats {
        let s = &self.inner.shared.stats;
        Stats {
            tasks_succeeded: s.tasks_succeeded.load(Ordering::Relaxed),
            tasks_failed: s.tasks_failed.load(Ordering::Relaxed),
            workers_started: s.workers_started.load(Ordering::Relaxed),
            worker_deaths: s.worker_deaths.load(Ordering::Relaxed),
            timeouts: s.timeouts.load(Ordering::Relaxed),
            recycles: s.recycles.load(Ordering::Relaxed),
            start_failures: s.start_failures.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.terminate();
    }
}

impl<'p> Call<'p> {
    /// Sets the chunk size for this call.
    pub fn with_chunksize(mut self, n: usize) -> Self {
        self.chunksize = Some(n.max(1));
        self
    }

    /// Sets the deadline per task for this call.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// [`Pool::apply`] with this call's options.
    ///
    /// Without a deadline, an `apply` that finds a worker idle runs on the
    /// direct lane: this thread writes the task to the worker's pipe and
    /// reads the result itself, sparing two thread hand-offs (see the
    /// dispatcher's `lane.rs`). Outcomes are the same either way.
    pub fn apply<F, Args, R, M>(self, f: F, args: Args) -> Result<R, Error>
    where
        F: TaskRef<Args, R, M>,
        Args: Serialize,
        R: DeserializeOwned,
    {
        // Blocking and without a deadline: the direct lane may take it.
        let direct = self.timeout.is_none();
        self.submit_one(f, args, direct)?.get()
    }

    /// [`Pool::apply_async`] with this call's options.
    pub fn apply_async<F, Args, R, M>(
        self,
        f: F,
        args: Args,
    ) -> Result<AsyncResult<R>, SubmitError<Args>>
    where
        F: TaskRef<Args, R, M>,
        Args: Serialize,
        R: DeserializeOwned,
    {
        self.submit_one(f, args, false)
    }

    /// Submits one task: to a parked worker on the direct lane when
    /// `direct` and one is free (the caller then waits for the result
    /// anyway), else to the dispatcher.
    fn submit_one<F, Args, R, M>(
        self,
        f: F,
        args: Args,
        direct: bool,
    ) -> Result<AsyncResult<R>, SubmitError<Args>>
    where
        F: TaskRef<Args, R, M>,
        Args: Serialize,
        R: DeserializeOwned,
    {
        let inner = &self.pool.inner;
        let (job, rx) = match inner.job(&f, self.timeout) {
            Ok(j) => j,
            Err(error) => return Err(SubmitError { error, arg: args }),
        };
        let mut encoded = Vec::new();
        if let Err(error) = encode_arg(&args, &mut encoded, &job.task_name, inner.max_frame) {
            return Err(SubmitError { error, arg: args });
        }
        let mut items = ItemsBuilder::new();
        items.push(&encoded);
        let batch = Batch::new(job.clone(), 0, items);
        match direct.then(|| inner.shared.lanes.take()).flatten() {
            Some(loan) => dispatcher::lane::run(loan, batch, &inner.shared.lanes, &inner.handle),
            None => inner.submit(batch),
        }
        Ok(AsyncResult {
            rx,
            job,
            state: Slot::Waiting,
            _r: PhantomData,
        })
    }

    /// [`Pool::map`] with this call's options.
    pub fn map<F, Args, R, M, I>(self, f: F, items: I) -> Result<Vec<R>, Error>
    where
        F: TaskRef<Args, R, M>,
        I: IntoIterator<Item = Args>,
        Args: Serialize,
        R: DeserializeOwned,
    {
        let Imap {
            chunks, mut feeder, ..
        } = self.imap(f, items)?;
        chunks.collect(&mut feeder)
    }

    /// [`Pool::starmap`] with this call's options.
    pub fn starmap<F, Args, R, M, I>(self, f: F, items: I) -> Result<Vec<R>, Error>
    where
        F: TaskRef<Args, R, M>,
        I: IntoIterator<Item = Args>,
        Args: Serialize,
        R: DeserializeOwned,
    {
        self.map(f, items)
    }

    /// [`Pool::imap`] with this call's options.
    pub fn imap<F, Args, R, M, I>(self, f: F, items: I) -> Result<Imap<R, I::IntoIter>, Error>
    where
        F: TaskRef<Args, R, M>,
        I: IntoIterator<Item = Args>,
        Args: Serialize,
        R: DeserializeOwned,
    {
        self.stream(f, items, true)
    }

    /// [`Pool::imap_unordered`] with this call's options.
    pub fn imap_unordered<F, Args, R, M, I>(
        self,
        f: F,
        items: I,
    ) -> Result<Imap<R, I::IntoIter>, Error>
    where
        F: TaskRef<Args, R, M>,
        I: IntoIterator<Item = Args>,
        Args: Serialize,
        R: DeserializeOwned,
    {
        self.stream(f, items, false)
    }

    fn stream<F, Args, R, M, I>(
        self,
        f: F,
        items: I,
        ordered: bool,
    ) -> Result<Imap<R, I::IntoIter>, Error>
    where
        F: TaskRef<Args, R, M>,
        I: IntoIterator<Item = Args>,
        Args: Serialize,
        R: DeserializeOwned,
    {
        let inner = &self.pool.inner;
        let (job, rx) = inner.job(&f, self.timeout)?;
        let iter = items.into_iter();
        let size = match self.chunksize {
            Some(n) => ChunkSize::Fixed(n),
            None => ChunkSize::auto(iter.size_hint(), inner.workers),
        };
        Ok(Imap {
            chunks: Chunks::new(rx, ordered, inner.window()),
            feeder: Feeder::new(iter, job, inner.clone(), size),
            yielded: 0,
        })
    }
}

/// The iterator of [`Pool::imap`] and [`Pool::imap_unordered`]: one
/// `Result` per input item.
///
/// Input is pulled from the source iterator as results are consumed, a
/// bounded window ahead. Dropping it cancels the work not yet started.
///
/// # Progress
///
/// Its `size_hint` is exact whenever the input's is, and
/// [`completed`](Self::completed) counts the results yielded, so a progress
/// bar is one adapter away; with `indicatif`:
///
/// ```ignore
/// use indicatif::ProgressIterator;
/// let n = inputs.len() as u64;
/// for r in pool.imap_unordered(task, inputs)?.progress_count(n) { /* ... */ }
/// ```
pub struct Imap<R, I> {
    chunks: Chunks<R>,
    feeder: Feeder<I>,
    yielded: u64,
}

impl<R, I> fmt::Debug for Imap<R, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Imap")
            .field("task", &self.feeder.job.task_name)
            .finish_non_exhaustive()
    }
}

impl<R, I, Args> Iterator for Imap<R, I>
where
    I: Iterator<Item = Args>,
    Args: Serialize,
    R: DeserializeOwned,
{
    type Item = Result<R, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let next = self.chunks.next(&mut self.feeder);
        if next.is_some() {
            self.yielded += 1;
        }
        next
    }

    /// Exact when the input's size hint is: results still to come are the
    /// items already submitted plus what the input has left.
    fn size_hint(&self) -> (usize, Option<usize>) {
        let pending = self.chunks.pending();
        let (lo, hi) = self.feeder.input_hint();
        (
            pending.saturating_add(lo),
            hi.and_then(|h| h.checked_add(pending)),
        )
    }
}

impl<R, I> Imap<R, I> {
    /// Results yielded so far: a progress count.
    pub fn completed(&self) -> u64 {
        self.yielded
    }
}

enum Slot<R> {
    Waiting,
    Ready(Result<R, Error>),
    Taken,
}

/// A handle to one task's result; from [`Pool::apply_async`].
///
/// Dropping it before the task started cancels the task.
pub struct AsyncResult<R> {
    rx: Receiver<ChunkMsg>,
    job: Arc<Job>,
    state: Slot<R>,
    _r: PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for AsyncResult<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncResult")
            .field("task", &self.job.task_name)
            .finish_non_exhaustive()
    }
}

impl<R: DeserializeOwned> AsyncResult<R> {
    /// Waits for the result.
    pub fn get(mut self) -> Result<R, Error> {
        self.wait(None);
        self.take()
    }

    /// Waits at most `timeout` for the result. On timeout the error
    /// [`is_wait_timeout`](Error::is_wait_timeout) and the handle stays
    /// usable; after a result was returned, further calls return an error.
    pub fn get_timeout(&mut self, timeout: Duration) -> Result<R, Error> {
        self.wait(Some(timeout));
        if matches!(self.state, Slot::Waiting) {
            return Err(Error::new(ErrorKind::WaitTimeout));
        }
        self.take()
    }

    /// Whether the result has arrived (never blocks).
    pub fn ready(&mut self) -> bool {
        self.wait(Some(Duration::ZERO));
        !matches!(self.state, Slot::Waiting)
    }

    fn take(&mut self) -> Result<R, Error> {
        match std::mem::replace(&mut self.state, Slot::Taken) {
            Slot::Ready(r) => r,
            Slot::Taken => Err(Error::new(ErrorKind::ResultTaken)),
            Slot::Waiting => unreachable!("take after wait"),
        }
    }

    fn wait(&mut self, timeout: Option<Duration>) {
        if !matches!(self.state, Slot::Waiting) {
            return;
        }
        let msg = match timeout {
            None => self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(t) => self.rx.recv_timeout(t),
        };
        let msg = match msg {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => return,
            Err(RecvTimeoutError::Disconnected) => unreachable!("the job holds a sender"),
        };
        let result = match msg {
            ChunkMsg::Part {
                skip, pid, frame, ..
            } => {
                let mut out = None;
                decode_part::<R>(
                    &frame,
                    skip,
                    &self.job.task_name,
                    pid,
                    &self.job.shared,
                    |r| out = Some(r),
                );
                out.expect("a Part carries at least one outcome")
            }
            ChunkMsg::Failed { error, .. } => {
                let r = Err(error);
                count(&self.job.shared, &r);
                r
            }
        };
        self.state = Slot::Ready(result);
    }
}

impl<R> Drop for AsyncResult<R> {
    fn drop(&mut self) {
        self.job.cancelled.store(true, Ordering::Relaxed);
    }
}

/// A task refused at submit, with its argument handed back (like
/// crossbeam's `SendError<T>`). Converts into [`Error`].
pub struct SubmitError<A> {
    error: Error,
    arg: A,
}

impl<A> SubmitError<A> {
    /// Why the task was refused.
    pub fn error(&self) -> &Error {
        &self.error
    }

    /// The argument that was not sent.
    pub fn into_arg(self) -> A {
        self.arg
    }

    /// Both parts.
    pub fn into_parts(self) -> (Error, A) {
        (self.error, self.arg)
    }
}

impl<A> fmt::Debug for SubmitError<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubmitError")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<A> fmt::Display for SubmitError<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

impl<A> std::error::Error for SubmitError<A> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl<A> From<SubmitError<A>> for Error {
    fn from(e: SubmitError<A>) -> Self {
        e.error
    }
}

/// Counters of a pool's life so far; from [`Pool::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Tasks whose result was delivered.
    pub tasks_succeeded: u64,
    /// Tasks that ended in an error.
    pub tasks_failed: u64,
    /// Worker processes started, replacements included.
    pub workers_started: u64,
    /// Worker processes lost (crashed, killed, timed out, broke the
    /// protocol, failed to start); recycled workers are not counted.
    pub worker_deaths: u64,
    /// Tasks that passed their deadline.
    pub timeouts: u64,
    /// Workers replaced after `max_tasks_per_worker` tasks.
    pub recycles: u64,
    /// Worker starts that failed (spawn errors, deaths before the
    /// handshake, failed initializers).
    pub start_failures: u64,
}
