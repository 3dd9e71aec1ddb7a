//! [`Call`]: a pool's calls with per-call options (chunk size, deadline),
//! and where every entry point of [`Pool`] ends up: checking the task,
//! encoding the input, handing batches over and returning the handle.

use std::time::Duration;

use procpool_protocol::ItemsBuilder;

use crate::dispatcher::{self, Batch, Job};
use crate::error::Error;
use crate::feed::{ChunkSize, Feeder, encode_arg};
use crate::gather::{Chunks, Gather, decode_one};
use crate::handle::{AsyncResult, Imap, Pending, Slot, SubmitError};
use crate::payload;
use crate::pool::Pool;
use crate::task::TaskRef;
use crate::values::{CallArg, CallOutput};

/// Per-call options; from [`Pool::with_chunksize`] or
/// [`Pool::with_timeout`], chained as needed:
/// `pool.with_chunksize(1).with_timeout(d).imap(..)`.
#[derive(Debug, Clone, Copy)]
pub struct Call<'p> {
    pool: &'p Pool,
    chunksize: Option<usize>,
    timeout: Option<Duration>,
}

impl<'p> Call<'p> {
    /// The pool's calls with its default options.
    pub(crate) fn new(pool: &'p Pool) -> Self {
        Self {
            pool,
            chunksize: pool.inner.chunksize,
            timeout: pool.inner.timeout,
        }
    }

    /// Sets the chunk size for this call.
    pub fn with_chunksize(mut self, n: usize) -> Self {
        self.chunksize = Some(n.max(1));
        self
    }

    /// Sets the deadline per task for this call. A zero deadline is refused
    /// at submit ([`Error::is_invalid_call`]); `Duration::MAX` is no
    /// deadline.
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
        Args: CallArg,
        R: CallOutput,
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
        Args: CallArg,
        R: CallOutput,
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
        Args: CallArg,
        R: CallOutput,
    {
        let inner = &self.pool.inner;
        let (job, rx) = match inner.job(&f, self.timeout, true) {
            Ok(j) => j,
            Err(error) => return Err(SubmitError { error, arg: args }),
        };
        let mut items = ItemsBuilder::new();
        let made = payload::made();
        let result = if inner.shared_memory && inner.shared.args_shared() {
            payload::sharing(|| encode_arg(&args, &mut items, &job.task_name, inner.max_frame))
        } else {
            encode_arg(&args, &mut items, &job.task_name, inner.max_frame)
        };
        let shared = payload::take_made(made);
        if let Err(error) = result {
            return Err(SubmitError { error, arg: args });
        }
        let mut batch = Batch::new(job.clone(), 0, items);
        batch.keep_shared(shared);
        match direct.then(|| inner.shared.lanes.take()).flatten() {
            Some(loan) => dispatcher::lane::run(loan, batch, &inner.shared.lanes, &inner.handle),
            None => inner.submit(batch),
        }
        Ok(AsyncResult {
            rx,
            job,
            inner: inner.clone(),
            pending: Pending::One(decode_one::<R>),
            state: Slot::Waiting,
        })
    }

    /// [`Pool::map_async`] with this call's options.
    pub fn map_async<F, Args, R, M, I>(self, f: F, items: I) -> Result<AsyncResult<Vec<R>>, Error>
    where
        F: TaskRef<Args, R, M>,
        I: IntoIterator<Item = Args>,
        Args: CallArg,
        R: CallOutput + Send + 'static,
    {
        let inner = &self.pool.inner;
        let (job, rx) = inner.job(&f, self.timeout, false)?;
        let iter = items.into_iter();
        let size = match self.chunksize {
            Some(n) => ChunkSize::Fixed(n),
            None => ChunkSize::auto(iter.size_hint(), inner.workers, inner.remote),
        };
        let mut feeder = Feeder::new(iter, job.clone(), inner.clone(), size);
        // Nothing runs before the whole input is encoded: an item that
        // cannot be refuses the call, and nothing of it ran.
        feeder.hold();
        let mut gather = Gather::<R>::default();
        let mut opened = Vec::new();
        while !feeder.exhausted() {
            feeder.open_next(&mut opened);
            for o in opened.drain(..) {
                // The feeder's drop fails what it held, unsent.
                gather.open(o, &job.shared)?;
            }
        }
        feeder.release();
        feeder.detach();
        let state = if gather.open == 0 {
            Slot::Ready(Ok(Vec::new()))
        } else {
            Slot::Waiting
        };
        let mut gather = Some(gather);
        let step = move |msg, job: &Job| {
            let g = gather.as_mut()?;
            if let Err(e) = g.take(msg, job) {
                gather = None;
                return Some(Err(e));
            }
            if g.open > 0 {
                return None;
            }
            gather.take().map(|g| Ok(g.finish()))
        };
        Ok(AsyncResult {
            rx,
            job,
            inner: inner.clone(),
            pending: Pending::All(Box::new(step)),
            state,
        })
    }

    /// [`Pool::map`] with this call's options.
    pub fn map<F, Args, R, M, I>(self, f: F, items: I) -> Result<Vec<R>, Error>
    where
        F: TaskRef<Args, R, M>,
        I: IntoIterator<Item = Args>,
        Args: CallArg,
        R: CallOutput,
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
        Args: CallArg,
        R: CallOutput,
    {
        self.map(f, items)
    }

    /// [`Pool::imap`] with this call's options.
    pub fn imap<F, Args, R, M, I>(self, f: F, items: I) -> Result<Imap<R, I::IntoIter>, Error>
    where
        F: TaskRef<Args, R, M>,
        I: IntoIterator<Item = Args>,
        Args: CallArg,
        R: CallOutput,
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
        Args: CallArg,
        R: CallOutput,
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
        Args: CallArg,
        R: CallOutput,
    {
        let inner = &self.pool.inner;
        let (job, rx) = inner.job(&f, self.timeout, false)?;
        let iter = items.into_iter();
        let size = match self.chunksize {
            Some(n) => ChunkSize::Fixed(n),
            None => ChunkSize::auto(iter.size_hint(), inner.workers, inner.remote),
        };
        Ok(Imap {
            chunks: Chunks::new(rx.into_channel(), ordered),
            feeder: Feeder::new(iter, job, inner.clone(), size),
            yielded: 0,
        })
    }
}
