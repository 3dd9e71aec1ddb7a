//! What a caller holds while work runs: [`Imap`] (the streaming iterator
//! of `imap` and `imap_unordered`) and [`ImapStream`] (the same as a
//! `Stream`), [`AsyncResult`] (also a `Future`), [`CancelHandle`], and
//! [`SubmitError`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_core::Stream;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::dispatcher::{ChunkMsg, Command, Inbox, Job};
use crate::error::{Error, ErrorKind};
use crate::feed::Feeder;
use crate::gather::Chunks;
use crate::pool::Inner;

/// The iterator of [`Pool::imap`](crate::Pool::imap) and [`Pool::imap_unordered`](crate::Pool::imap_unordered): one
/// `Result` per input item.
///
/// Input is pulled from the source iterator as results are consumed, a
/// bounded window ahead.
///
/// Unlike an [`AsyncResult`], dropping it *cancels* the work not yet
/// started (items already running finish, their results discarded, and
/// so do those already in a worker's pipe: two batches, or up to 16 of a
/// worker whose items take microseconds): nobody can consume the rest.
/// [`cancel`](Self::cancel) also stops the items running and skips those
/// in the pipes.
///
/// It is an [`Iterator`], which blocks; for async code,
/// [`into_stream`](Self::into_stream) makes it a [`Stream`] (as flume's
/// `Receiver::into_stream` does: one type that is both would make every
/// `next()` ambiguous where `StreamExt` is in scope).
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
#[must_use = "an Imap submits its input as it is consumed: dropped at once, nothing runs"]
pub struct Imap<R, I> {
    pub(crate) chunks: Chunks<R>,
    pub(crate) feeder: Feeder<I>,
    pub(crate) yielded: u64,
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
        match self.step(true) {
            Poll::Ready(next) => next,
            Poll::Pending => unreachable!("a blocking step always has an answer"),
        }
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

/// An [`Imap`] as a [`Stream`]; from [`Imap::into_stream`].
///
/// `while let Some(r) = stream.next().await` (with `futures::StreamExt`)
/// waits without blocking the runtime's thread: the pool wakes the task
/// when results arrive. The input iterator is pulled on the polling
/// thread, so one that blocks blocks there. Dropping it cancels the work
/// not yet started, as dropping the `Imap` does.
#[must_use = "streams do nothing unless polled; dropping one cancels its work not yet started"]
pub struct ImapStream<R, I>(Imap<R, I>);

impl<R, I> fmt::Debug for ImapStream<R, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ImapStream").field(&self.0).finish()
    }
}

impl<R, I, Args> Stream for ImapStream<R, I>
where
    I: Iterator<Item = Args>,
    Args: Serialize,
    R: DeserializeOwned,
{
    type Item = Result<R, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut self.get_mut().0;
        if let Poll::Ready(next) = this.step(false) {
            return Poll::Ready(next);
        }
        this.feeder.job.listener.listen(cx.waker());
        // Anything sent before the waker was in place is seen here.
        this.step(false)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

// Never pinned structurally: `poll_next` works through `&mut`.
impl<R, I> Unpin for ImapStream<R, I> {}

impl<R, I> ImapStream<R, I> {
    /// Results yielded so far (see [`Imap::completed`]).
    pub fn completed(&self) -> u64 {
        self.0.completed()
    }

    /// Cancels the rest of the work (see [`Imap::cancel`]).
    pub fn cancel(&mut self) {
        self.0.cancel();
    }

    /// A handle that cancels this work from anywhere (see
    /// [`Imap::cancel_handle`]).
    pub fn cancel_handle(&self) -> CancelHandle {
        self.0.cancel_handle()
    }
}

impl<R, I, Args> Imap<R, I>
where
    I: Iterator<Item = Args>,
    Args: Serialize,
    R: DeserializeOwned,
{
    fn step(&mut self, block: bool) -> Poll<Option<Result<R, Error>>> {
        let next = self.chunks.step(&mut self.feeder, block);
        if let Poll::Ready(Some(_)) = next {
            self.yielded += 1;
        }
        next
    }
}

impl<R, I> Imap<R, I> {
    /// This iterator as a [`Stream`], for async code.
    pub fn into_stream(self) -> ImapStream<R, I> {
        ImapStream(self)
    }

    /// Results yielded so far: a progress count.
    pub fn completed(&self) -> u64 {
        self.yielded
    }

    /// Cancels the rest of the work: no more input is pulled, items not
    /// yet started never run, items running are stopped by killing their
    /// workers (see [`AsyncResult::cancel`]). The items already submitted
    /// still come out, each with its result or an error that
    /// [`is_cancelled`](Error::is_cancelled).
    pub fn cancel(&mut self) {
        self.feeder.stop();
        cancel(&self.feeder.inner, &self.feeder.job);
    }

    /// A handle that cancels this work from anywhere (another thread, or
    /// code that does not own the iterator), as [`cancel`](Self::cancel)
    /// does.
    pub fn cancel_handle(&self) -> CancelHandle {
        CancelHandle {
            inner: self.feeder.inner.clone(),
            job: self.feeder.job.clone(),
        }
    }
}

pub(crate) enum Slot<T> {
    Waiting,
    Ready(Result<T, Error>),
    Taken,
}

/// Gathers a whole job's messages into its value: `Some` once complete
/// (or at the first failed item).
pub(crate) type GatherFn<T> = Box<dyn FnMut(ChunkMsg, &Job) -> Option<Result<T, Error>> + Send>;

/// How an [`AsyncResult`] turns messages into its value.
pub(crate) enum Pending<T> {
    /// One task (`apply_async`): its one message decodes into the value.
    One(fn(ChunkMsg, &Job) -> Result<T, Error>),
    /// A whole job (`map_async`): messages gather until every chunk is
    /// complete or one item failed (`Some` then).
    All(GatherFn<T>),
}

/// A handle to a result still being computed: one task's, from
/// [`Pool::apply_async`](crate::Pool::apply_async), or a whole job's
/// `Vec` in input order, from [`Pool::map_async`](crate::Pool::map_async)
/// and [`Pool::starmap_async`](crate::Pool::starmap_async).
///
/// Three ways to take the result, as suits the caller:
///
/// - block: [`get`](Self::get), [`get_timeout`](Self::get_timeout),
///   [`ready`](Self::ready) (never blocks);
/// - await it: it is a [`Future`] (any executor; the pool wakes the task,
///   no runtime thread is blocked);
/// - have it handed to a callback on the pool's callback thread:
///   [`on_complete`](Self::on_complete) (Python's `callback` and
///   `error_callback`).
///
/// Dropping it *detaches* the work, as dropping a `JoinHandle` does: it
/// still runs and its result is discarded, so a fire-and-forget
/// `apply_async` followed by [`close`](crate::Pool::close) and
/// [`join`](crate::Pool::join) runs every task. To stop the work, call
/// [`cancel`](Self::cancel).
#[must_use = "dropping an AsyncResult detaches the task: it still runs, its result is discarded"]
pub struct AsyncResult<T> {
    pub(crate) rx: Inbox,
    pub(crate) job: Arc<Job>,
    pub(crate) inner: Arc<Inner>,
    pub(crate) pending: Pending<T>,
    pub(crate) state: Slot<T>,
}

// Never pinned structurally: `poll` only moves values out of `state`.
impl<T> Unpin for AsyncResult<T> {}

impl<T> Drop for AsyncResult<T> {
    fn drop(&mut self) {
        // A message still to come is not kept with the job, which a
        // `CancelHandle` may keep alive.
        self.rx.close(&self.job.sink);
    }
}

impl<T> fmt::Debug for AsyncResult<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncResult")
            .field("task", &self.job.task_name)
            .finish_non_exhaustive()
    }
}

impl<T> AsyncResult<T> {
    /// Waits for the result.
    pub fn get(mut self) -> Result<T, Error> {
        self.wait(None);
        self.take()
    }

    /// Waits at most `timeout` for the result. On timeout the error
    /// [`is_wait_timeout`](Error::is_wait_timeout) and the handle stays
    /// usable; after a result was returned, further calls return an error.
    pub fn get_timeout(&mut self, timeout: Duration) -> Result<T, Error> {
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

    /// Cancels the work: an item not yet started never runs; an item
    /// running is stopped by killing its worker (with its descendants, as
    /// at a deadline), and only that worker is replaced. Each cancelled
    /// item ends with an error that
    /// [`is_cancelled`](Error::is_cancelled); an item that finished first
    /// keeps its result. The result is then taken as usual (`get`, `await`,
    /// the callback). Cancelling twice, or after the end, does nothing.
    ///
    /// A worker started by a launcher that strips its environment does not
    /// share its item counter with the pool: the pool cannot tell which
    /// item it runs, so a cancel neither skips nor kills there, and its
    /// items already sent run (their results are discarded).
    pub fn cancel(&self) {
        cancel(&self.inner, &self.job);
    }

    /// A handle that cancels this work from anywhere (another thread, while
    /// this one waits in [`get`](Self::get)).
    pub fn cancel_handle(&self) -> CancelHandle {
        CancelHandle {
            inner: self.inner.clone(),
            job: self.job.clone(),
        }
    }

    /// Hands the result, once it is there, to `callback` on the pool's
    /// callback thread (Python's `callback` and `error_callback` in one).
    ///
    /// One thread, owned by the pool, runs every callback in turn, never the
    /// dispatcher: a slow callback delays only other callbacks, and a
    /// callback that panics is caught and logged (`log::error!`) and
    /// harms nothing else. [`Pool::join`](crate::Pool::join) returns once
    /// every callback of the work it waited for has run.
    pub fn on_complete<F>(self, callback: F)
    where
        T: Send + 'static,
        F: FnOnce(Result<T, Error>) + Send + 'static,
    {
        let inner = self.inner.clone();
        inner.callbacks.spawn(async move { callback(self.await) });
    }

    fn take(&mut self) -> Result<T, Error> {
        match std::mem::replace(&mut self.state, Slot::Taken) {
            Slot::Ready(r) => r,
            Slot::Taken => Err(Error::new(ErrorKind::ResultTaken)),
            Slot::Waiting => unreachable!("take after wait"),
        }
    }

    /// Takes messages until the value is complete, waiting at most
    /// `timeout` (`None`: as long as it takes).
    fn wait(&mut self, timeout: Option<Duration>) {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        while matches!(self.state, Slot::Waiting) {
            // A timeout too long for the clock is no deadline.
            match self.rx.recv(&self.job.sink, deadline) {
                Some(m) => self.apply(m),
                None => return,
            }
        }
    }

    /// Takes the messages already there; whether the value is complete.
    fn try_complete(&mut self) -> bool {
        while matches!(self.state, Slot::Waiting) {
            match self.rx.try_recv(&self.job.sink) {
                Some(m) => self.apply(m),
                None => return false,
            }
        }
        true
    }

    fn apply(&mut self, msg: ChunkMsg) {
        let value = match &mut self.pending {
            Pending::One(decode) => Some(decode(msg, &self.job)),
            Pending::All(gather) => gather(msg, &self.job),
        };
        if let Some(v) = value {
            self.state = Slot::Ready(v);
        }
    }
}

impl<T> Future for AsyncResult<T> {
    type Output = Result<T, Error>;

    /// Ready once the result is there; until then the pool wakes the task
    /// when something arrives. Polled again after `Ready`, it gives an
    /// error.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if !this.try_complete() {
            this.job.listener.listen(cx.waker());
            // Anything sent before the waker was in place is seen here.
            if !this.try_complete() {
                return Poll::Pending;
            }
        }
        Poll::Ready(this.take())
    }
}

/// Marks `job` cancelled and asks the dispatcher to carry it out.
pub(crate) fn cancel(inner: &Inner, job: &Job) {
    job.cancelled.store(true, Ordering::Release);
    // Once: a dropped `Imap` set the flag alone, which stops nothing that
    // runs; an explicit cancel after it still does.
    if !job.cancel_sent.swap(true, Ordering::AcqRel) {
        // A dispatcher that has exited has settled everything already.
        let _ = inner.handle.send(Command::Cancel(job.id));
    }
}

/// Cancels one piece of work from anywhere; from
/// [`AsyncResult::cancel_handle`] or [`Imap::cancel_handle`]. Cloning it
/// is cheap; it does not keep the work alive.
#[derive(Clone)]
pub struct CancelHandle {
    inner: Arc<Inner>,
    job: Arc<Job>,
}

impl CancelHandle {
    /// Cancels the work (see [`AsyncResult::cancel`]).
    pub fn cancel(&self) {
        cancel(&self.inner, &self.job);
    }
}

impl fmt::Debug for CancelHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelHandle")
            .field("task", &self.job.task_name)
            .finish_non_exhaustive()
    }
}

/// A task refused at submit, with its argument handed back (like
/// crossbeam's `SendError<T>`). Converts into [`Error`].
pub struct SubmitError<A> {
    pub(crate) error: Error,
    pub(crate) arg: A,
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
