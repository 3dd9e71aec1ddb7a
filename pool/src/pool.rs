//! The public entry points: [`Pool`] and [`Call`]. Thin: a call checks
//! the task, encodes its input and hands batches over; outcomes come back
//! through the job's channel (see `feed.rs` and `handle.rs`).

use std::any::type_name;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;

use crate::builder::{Builder, PIPELINE};
use crate::call::Call;
use crate::callback::Callbacks;
use crate::dispatcher::DEEP_PIPELINE;
use crate::dispatcher::{Batch, Command, Handle, Inbox, Job, Outbox, Shared};
use crate::error::{Error, ErrorKind};
use crate::handle::{AsyncResult, Imap, SubmitError};
use crate::task::TaskRef;
use crate::values::{CallArg, CallOutput};

/// What the pool's handles share.
pub(crate) struct Inner {
    pub(crate) shared: Arc<Shared>,
    pub(crate) handle: Handle,
    pub(crate) thread: Mutex<Option<JoinHandle<()>>>,
    pub(crate) workers: usize,
    /// Some of the workers are remote (`feed::ChunkSize::auto`).
    pub(crate) remote: bool,
    pub(crate) chunksize: Option<usize>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) max_frame: u32,
    /// Large `Bytes` arguments go through shared memory (`payload.rs`).
    pub(crate) shared_memory: bool,
    /// The dispatcher has exited and was joined.
    pub(crate) stopped: AtomicBool,
    /// The thread that runs result callbacks.
    pub(crate) callbacks: Callbacks,
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

    /// A new job for task `f`, checked against what the workers serve;
    /// `single`: it has one item (`apply`, `apply_async`).
    pub(crate) fn job<F, Args, R, M>(
        self: &Arc<Self>,
        f: &F,
        timeout: Option<Duration>,
        single: bool,
    ) -> Result<(Arc<Job>, Inbox), Error>
    where
        F: TaskRef<Args, R, M>,
    {
        if !self.shared.is_open() {
            return Err(self.shared.loss_error());
        }
        if timeout == Some(Duration::ZERO) {
            return Err(Error::new(ErrorKind::InvalidCall {
                detail: "a zero deadline would end every task before it starts; \
                         give a positive duration, or no deadline"
                    .into(),
            }));
        }
        let name = f.task_name();
        let table = self
            .shared
            .tasks
            .get()
            .expect("set before the pool was built");
        let index =
            crate::tasks::lookup(&table.infos, &name, type_name::<Args>(), type_name::<R>())?;
        let (sink, rx) = Outbox::new(single);
        let job = Arc::new(Job {
            id: Job::next_id(),
            task: index as u32,
            task_name: table.names[index].clone(),
            timeout,
            sink,
            listener: Default::default(),
            cancelled: Default::default(),
            cancel_sent: Default::default(),
            shared: self.shared.clone(),
        });
        Ok((job, rx))
    }

    /// Chunks a job may have open at once: enough to keep every worker's
    /// pipeline full with as many again waiting, and no more. A job of
    /// small chunks (a few items each) fills pipelines as deep as the
    /// pool feeds them now (`dispatcher/pace.rs`): deeper while its
    /// workers answer fast, the usual two once they do not.
    pub(crate) fn window(&self, small_chunks: bool) -> usize {
        let depth = if small_chunks {
            self.shared.depth().clamp(PIPELINE, DEEP_PIPELINE)
        } else {
            PIPELINE
        };
        2 * depth * self.workers + 2
    }

    /// Sends `cmd`, then waits for the dispatcher to exit. The command is
    /// sent before taking the lock, so a second `terminate` reaches the
    /// dispatcher (and escalates) while a first one waits.
    /// Every outcome is then delivered: callbacks still to run on them
    /// run before this returns.
    fn stop(&self, cmd: Command) {
        let _ = self.handle.send(cmd);
        if let Some(t) = self.thread.lock().take() {
            if t.join().is_err() {
                log::error!("procpool: the dispatcher thread panicked");
            }
            self.stopped.store(true, Ordering::Release);
        }
        self.callbacks.flush();
    }
}

/// A pool of worker processes.
///
/// Every method takes `&self`: share a pool between threads by reference
/// or in an `Arc`. Dropping it [terminates](Pool::terminate) it.
#[derive(Debug)]
pub struct Pool {
    pub(crate) inner: Arc<Inner>,
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
        Call::new(self)
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
        Args: CallArg,
        R: CallOutput,
    {
        self.call().map(f, items)
    }

    /// [`map`](Self::map) for tasks of several arguments: each item is the
    /// tuple of arguments (`fn add(a: u64, b: u64)` takes `(u64, u64)`).
    pub fn starmap<F, Args, R, M, I>(&self, f: F, items: I) -> Result<Vec<R>, Error>
    where
        F: TaskRef<Args, R, M>,
        I: IntoIterator<Item = Args>,
        Args: CallArg,
        R: CallOutput,
    {
        self.call().starmap(f, items)
    }

    /// Streams every item's outcome in input order, consuming the input
    /// lazily.
    pub fn imap<F, Args, R, M, I>(&self, f: F, items: I) -> Result<Imap<R, I::IntoIter>, Error>
    where
        F: TaskRef<Args, R, M>,
        I: IntoIterator<Item = Args>,
        Args: CallArg,
        R: CallOutput,
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
        Args: CallArg,
        R: CallOutput,
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
        Args: CallArg,
        R: CallOutput,
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
        Args: CallArg,
        R: CallOutput,
    {
        self.call().apply_async(f, args)
    }

    /// Submits `f` over every item and returns one handle to all their
    /// results, in input order (Python's `map_async`): a `Vec` from
    /// [`get`](AsyncResult::get), `.await` or
    /// [`on_complete`](AsyncResult::on_complete).
    ///
    /// The input is consumed and encoded now, on this thread, and every
    /// chunk is queued at once. The value is the first failed item's error
    /// to arrive, if one fails; the other items still run, as they do when
    /// the handle is dropped (it detaches); [`cancel`](AsyncResult::cancel)
    /// stops them. An item that cannot be encoded refuses the whole call
    /// here, and nothing of it runs.
    pub fn map_async<F, Args, R, M, I>(&self, f: F, items: I) -> Result<AsyncResult<Vec<R>>, Error>
    where
        F: TaskRef<Args, R, M>,
        I: IntoIterator<Item = Args>,
        Args: CallArg,
        R: CallOutput + Send + 'static,
    {
        self.call().map_async(f, items)
    }

    /// [`map_async`](Self::map_async) for tasks of several arguments: each
    /// item is the tuple of arguments.
    pub fn starmap_async<F, Args, R, M, I>(
        &self,
        f: F,
        items: I,
    ) -> Result<AsyncResult<Vec<R>>, Error>
    where
        F: TaskRef<Args, R, M>,
        I: IntoIterator<Item = Args>,
        Args: CallArg,
        R: CallOutput + Send + 'static,
    {
        self.call().map_async(f, items)
    }

    /// Stops accepting new work. Work already submitted (including the rest
    /// of iterators already started) still runs.
    pub fn close(&self) {
        self.inner.shared.close();
    }

    /// Closes the pool (if not yet closed), waits for all submitted work
    /// to finish (and for the [callbacks](AsyncResult::on_complete) on its
    /// results to run), and stops the workers (each exits when its input
    /// closes; one that does not within the shutdown grace is killed).
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
            workers_forked: s.workers_forked.load(Ordering::Relaxed),
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
    /// Of those, the ones forked from the zygote
    /// ([`StartMethod::Zygote`](crate::StartMethod::Zygote)); the rest were
    /// started by exec.
    pub workers_forked: u64,
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
