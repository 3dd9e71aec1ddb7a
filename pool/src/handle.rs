//! What a caller holds while work runs: [`Imap`] (the streaming iterator
//! of `imap` and `imap_unordered`), [`AsyncResult`], and [`SubmitError`].

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::dispatcher::{ChunkMsg, Job};
use crate::error::{Error, ErrorKind};
use crate::feed::{Chunks, Feeder, count, decode_part};

/// The iterator of [`Pool::imap`](crate::Pool::imap) and [`Pool::imap_unordered`](crate::Pool::imap_unordered): one
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

pub(crate) enum Slot<R> {
    Waiting,
    Ready(Result<R, Error>),
    Taken,
}

/// A handle to one task's result; from [`Pool::apply_async`](crate::Pool::apply_async).
///
/// Dropping it *detaches* the task, as dropping a `JoinHandle` does: the
/// task still runs and its result is discarded, so a fire-and-forget
/// `apply_async` followed by [`close`](crate::Pool::close) and
/// [`join`](crate::Pool::join) runs every task.
#[must_use = "dropping an AsyncResult detaches the task: it still runs, its result is discarded"]
pub struct AsyncResult<R> {
    pub(crate) rx: Receiver<ChunkMsg>,
    pub(crate) job: Arc<Job>,
    pub(crate) state: Slot<R>,
    pub(crate) _r: PhantomData<fn() -> R>,
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
