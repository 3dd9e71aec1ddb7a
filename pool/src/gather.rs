//! The caller's side of a job, coming back: outcomes decoded on the
//! thread that asked for them, so a payload that fails to decode fails its
//! own item and nothing else. One task's ([`decode_one`]), a stream's in
//! order or as they come ([`Chunks`]), a whole job's ([`Gather`]).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::task::Poll;

use crossbeam_channel::Receiver;
use procpool_protocol::value::take_value;
use procpool_protocol::{Outcome, done_header};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::dispatcher::{ChunkMsg, Job, Shared};
use crate::error::{Error, ErrorKind, PanicLocation};
use crate::feed::{Feeder, Opened};
use crate::payload::{Attached, receiving};

/// Decodes the one outcome of an `apply_async`.
pub(crate) fn decode_one<R: DeserializeOwned>(msg: ChunkMsg, job: &Job) -> Result<R, Error> {
    match msg {
        ChunkMsg::Part {
            skip,
            pid,
            frame,
            attached,
            ..
        } => {
            let mut out = None;
            let part = Part {
                frame: &frame,
                skip,
                pid,
                attached,
            };
            decode_part::<R>(part, &job.task_name, &job.shared, |r| out = Some(r));
            out.expect("a Part carries at least one outcome")
        }
        ChunkMsg::Failed { error, .. } => {
            let r = Err(error);
            count(&job.shared, &r);
            r
        }
    }
}

/// One `Done` frame for a caller: its outcomes after the first `skip`,
/// from worker `pid`, with the shared payloads its results name.
pub(crate) struct Part<'f> {
    pub(crate) frame: &'f [u8],
    pub(crate) skip: u32,
    pub(crate) pid: u32,
    pub(crate) attached: Attached,
}

/// Decodes one `Done` frame's outcomes, after the first `skip`, into
/// results, calling `push` for each, and counts them in the pool's
/// statistics. Markers of shared payloads resolve among those the frame
/// came with (`payload.rs`).
pub(crate) fn decode_part<R: DeserializeOwned>(
    part: Part<'_>,
    task: &str,
    shared: &Shared,
    push: impl FnMut(Result<R, Error>),
) {
    if part.attached.is_empty() {
        decode_outcomes(part.frame, part.skip, task, part.pid, shared, push);
    } else {
        receiving(part.attached, || {
            decode_outcomes(part.frame, part.skip, task, part.pid, shared, push)
        });
    }
}

fn decode_outcomes<R: DeserializeOwned>(
    frame: &[u8],
    skip: u32,
    task: &str,
    pid: u32,
    shared: &Shared,
    mut push: impl FnMut(Result<R, Error>),
) {
    // The dispatcher validated this frame (decode_done) before forwarding
    // it: only its header is read here.
    let Some(done) = done_header(frame) else {
        unreachable!("the dispatcher forwards only valid Done frames")
    };
    let (mut ok, mut failed) = (0, 0);
    done.each_from(skip, |outcome| {
        let result = match outcome {
            // take_value: a deeply nested result decodes (on a grown stack)
            // or fails this item; it never overflows this thread's stack.
            Ok(bytes) => match take_value::<R>(bytes) {
                Ok((r, [])) => Ok(r),
                Ok((_, rest)) => Err(left_over(task, rest.len())),
                Err(e) => Err(undecodable::<R>(task, &e)),
            },
            Err(other) => Err(failure(other, task, pid)),
        };
        if result.is_ok() {
            ok += 1;
        } else {
            failed += 1;
        }
        push(result);
    });
    shared
        .stats
        .tasks_succeeded
        .fetch_add(ok, Ordering::Relaxed);
    shared
        .stats
        .tasks_failed
        .fetch_add(failed, Ordering::Relaxed);
}

/// A result with bytes left over after it.
#[cold]
fn left_over(task: &str, extra: usize) -> Error {
    Error::new(ErrorKind::OutputDecode {
        task: task.to_owned(),
        message: format!("{extra} bytes left over after the result"),
    })
}

/// A result that does not decode as an `R`.
#[cold]
fn undecodable<R>(task: &str, e: &postcard::Error) -> Error {
    Error::new(ErrorKind::OutputDecode {
        task: task.to_owned(),
        message: match crate::payload::take_failure() {
            Some(why) => why,
            None => format!("as `{}`: {e}", std::any::type_name::<R>()),
        },
    })
}

/// The error an outcome other than a result stands for.
#[cold]
fn failure(outcome: Outcome<'_>, task: &str, pid: u32) -> Error {
    match outcome {
        Outcome::Ok(_) => unreachable!("results are decoded, not failed"),
        Outcome::Panicked { message, location } => Error::new(ErrorKind::Panicked {
            task: task.to_owned(),
            pid,
            message,
            location: location.map(|l| PanicLocation {
                file: l.file,
                line: l.line,
                column: l.column,
            }),
        }),
        Outcome::ArgDecode(message) => Error::new(ErrorKind::ArgDecode {
            task: task.to_owned(),
            message,
        }),
        Outcome::OutputEncode(message) => Error::new(ErrorKind::OutputEncode {
            task: task.to_owned(),
            message,
        }),
        Outcome::Cancelled => Error::new(ErrorKind::Cancelled),
    }
}

pub(crate) fn count<R>(shared: &Shared, result: &Result<R, Error>) {
    let c = if result.is_ok() {
        &shared.stats.tasks_succeeded
    } else {
        &shared.stats.tasks_failed
    };
    c.fetch_add(1, Ordering::Relaxed);
}

/// Outcomes of one chunk, in item order, as they arrive.
struct ChunkBuf<R> {
    count: u32,
    received: u32,
    ready: VecDeque<Result<R, Error>>,
}

impl<R: DeserializeOwned> ChunkBuf<R> {
    fn new(opened: Opened, shared: &Shared) -> Self {
        let mut buf = Self {
            count: opened.count,
            received: 0,
            ready: VecDeque::new(),
        };
        if let Some(e) = opened.failed {
            buf.fail(opened.count, e, shared);
        }
        buf
    }

    /// The next `n` items failed with `error`.
    fn fail(&mut self, n: u32, error: Error, shared: &Shared) {
        for _ in 0..n {
            let r = Err(error.clone());
            count(shared, &r);
            self.ready.push_back(r);
        }
        self.received += n;
    }
}

/// The receiving half of a streaming job: chunks in submission order.
pub(crate) struct Chunks<R> {
    rx: Receiver<ChunkMsg>,
    /// Open chunks; `chunks[k]` has sequence number `base + k`. A slot is
    /// `None` once fully yielded (out of order, for `imap_unordered`).
    chunks: VecDeque<Option<ChunkBuf<R>>>,
    base: u64,
    open: usize,
    ordered: bool,
    opened: Vec<Opened>,
}

impl<R: DeserializeOwned> Chunks<R> {
    pub(crate) fn new(rx: Receiver<ChunkMsg>, ordered: bool) -> Self {
        Self {
            rx,
            chunks: VecDeque::new(),
            base: 0,
            open: 0,
            ordered,
            opened: Vec::new(),
        }
    }

    /// Items submitted whose result was not yielded yet.
    pub(crate) fn pending(&self) -> usize {
        self.chunks
            .iter()
            .flatten()
            .map(|c| (c.count - c.received) as usize + c.ready.len())
            .sum()
    }

    /// The next result, feeding more input while the window allows;
    /// `Ready(None)` once the input is exhausted and every result was
    /// yielded. With `block` false it never waits: `Pending` when no result
    /// is there yet.
    pub(crate) fn step<I, Args>(
        &mut self,
        feeder: &mut Feeder<I>,
        block: bool,
    ) -> Poll<Option<Result<R, Error>>>
    where
        I: Iterator<Item = Args>,
        Args: Serialize,
    {
        loop {
            while self.open < feeder.window() && !feeder.exhausted() {
                feeder.open_next(&mut self.opened);
                let shared = feeder.job.shared.clone();
                for o in self.opened.drain(..) {
                    debug_assert_eq!(o.seq, self.base + self.chunks.len() as u64);
                    self.chunks.push_back(Some(ChunkBuf::new(o, &shared)));
                    self.open += 1;
                }
            }
            if let Some(r) = self.take_ready() {
                return Poll::Ready(Some(r));
            }
            if self.open == 0 {
                return Poll::Ready(None);
            }
            let Some(msg) = recv(&self.rx, block) else {
                return Poll::Pending;
            };
            self.apply(msg, &feeder.job);
        }
    }

    /// Every result in input order, or the first error to arrive (work not
    /// yet started is then cancelled by the feeder's drop). `map`'s path:
    /// results go straight into one vector per chunk, with no per-item
    /// queueing.
    pub(crate) fn collect<I, Args>(mut self, feeder: &mut Feeder<I>) -> Result<Vec<R>, Error>
    where
        I: Iterator<Item = Args>,
        Args: Serialize,
    {
        let mut gather = Gather::default();
        // The whole output at once (the input's lower bound): growing it
        // chunk by chunk copied it and touched its pages anew at each
        // doubling. A hint is only a hint: at most 64 MiB of results, and
        // only if that memory can be had (an unbounded or lying input
        // says `usize::MAX`; an early error must still end the call).
        let most = (64 << 20) / std::mem::size_of::<R>().max(1);
        let _ = gather.all.try_reserve(feeder.input_hint().0.min(most));
        loop {
            while gather.open < feeder.window() && !feeder.exhausted() {
                feeder.open_next(&mut self.opened);
                for o in self.opened.drain(..) {
                    gather.open(o, &feeder.job.shared)?;
                }
            }
            if gather.open == 0 {
                return Ok(gather.finish());
            }
            let msg = recv(&self.rx, true).expect("a blocking receive returns a message");
            gather.take(msg, &feeder.job)?;
        }
    }
}

/// The next message: waiting for it if `block`, else `None` if there is
/// none yet.
pub(crate) fn recv(rx: &Receiver<ChunkMsg>, block: bool) -> Option<ChunkMsg> {
    // The job holds a sender, so the channel stays connected.
    if block {
        Some(rx.recv().expect("the job holds a sender"))
    } else {
        rx.try_recv().ok()
    }
}

/// A whole job's results in input order (`map`, `map_async`): straight
/// into the one vector returned, no per-item queueing; the first error to
/// arrive ends it.
///
/// Chunks mostly come back in order: the results of the chunk that is
/// next in input order are decoded right into the final vector, and only
/// a chunk that comes early waits in a vector of its own (moved over when
/// its turn comes).
pub(crate) struct Gather<R> {
    /// The results of chunks `..next`, and those of chunk `next` so far.
    all: Vec<R>,
    /// The chunk whose results go straight into `all`.
    next: usize,
    /// Results of chunks after `next` that came early, by chunk.
    early: Vec<Vec<R>>,
    /// How many results each chunk still waits for.
    missing: Vec<u32>,
    /// Chunks still waiting for results.
    pub(crate) open: usize,
}

impl<R> Default for Gather<R> {
    fn default() -> Self {
        Self {
            all: Vec::new(),
            next: 0,
            early: Vec::new(),
            missing: Vec::new(),
            open: 0,
        }
    }
}

impl<R: DeserializeOwned> Gather<R> {
    /// A chunk was opened; `Err` if it failed before it could be sent.
    pub(crate) fn open(&mut self, o: Opened, shared: &Shared) -> Result<(), Error> {
        debug_assert_eq!(o.seq as usize, self.missing.len());
        if let Some(e) = o.failed {
            count::<R>(shared, &Err(e.clone()));
            return Err(e);
        }
        self.all.reserve(o.count as usize);
        self.early.push(Vec::new());
        self.missing.push(o.count);
        self.open += 1;
        Ok(())
    }

    /// Takes one message's results; `Err` at the first failed item.
    pub(crate) fn take(&mut self, msg: ChunkMsg, job: &Job) -> Result<(), Error> {
        let seq = match msg {
            ChunkMsg::Part {
                seq,
                skip,
                pid,
                frame,
                attached,
                ..
            } => {
                let out = if seq as usize == self.next {
                    &mut self.all
                } else {
                    // Room for the whole chunk at once: it is moved into
                    // `all` when its turn comes, not grown item by item.
                    let early = &mut self.early[seq as usize];
                    early.reserve(self.missing[seq as usize] as usize);
                    early
                };
                let before = out.len();
                let mut first_error = None;
                let part = Part {
                    frame: &frame,
                    skip,
                    pid,
                    attached,
                };
                decode_part::<R>(part, &job.task_name, &job.shared, |r| match r {
                    Ok(v) => out.push(v),
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                });
                if let Some(e) = first_error {
                    return Err(e);
                }
                self.missing[seq as usize] -= (out.len() - before) as u32;
                seq
            }
            ChunkMsg::Failed {
                count: n, error, ..
            } => {
                for _ in 0..n {
                    count::<R>(&job.shared, &Err(error.clone()));
                }
                return Err(error);
            }
        };
        if self.missing[seq as usize] == 0 {
            self.open -= 1;
        }
        // Move on past every whole chunk, bringing in what came early.
        while self.next < self.missing.len() && self.missing[self.next] == 0 {
            self.next += 1;
            if let Some(early) = self.early.get_mut(self.next) {
                self.all.append(early);
            }
        }
        Ok(())
    }

    /// Every result, in input order (once `open` is 0).
    pub(crate) fn finish(self) -> Vec<R> {
        debug_assert_eq!(self.next, self.missing.len());
        self.all
    }
}

impl<R: DeserializeOwned> Chunks<R> {
    fn take_ready(&mut self) -> Option<Result<R, Error>> {
        let idx = if self.ordered {
            match self.chunks.front() {
                Some(Some(c)) if !c.ready.is_empty() => 0,
                _ => return None,
            }
        } else {
            self.chunks
                .iter()
                .position(|c| c.as_ref().is_some_and(|c| !c.ready.is_empty()))?
        };
        let slot = &mut self.chunks[idx];
        let chunk = slot.as_mut().expect("checked above");
        let r = chunk.ready.pop_front().expect("checked above");
        if chunk.ready.is_empty() && chunk.received == chunk.count {
            *slot = None;
            self.open -= 1;
            while matches!(self.chunks.front(), Some(None)) {
                self.chunks.pop_front();
                self.base += 1;
            }
        }
        Some(r)
    }

    fn apply(&mut self, msg: ChunkMsg, job: &Job) {
        let (seq, offset) = match &msg {
            ChunkMsg::Part { seq, offset, .. } | ChunkMsg::Failed { seq, offset, .. } => {
                (*seq, *offset)
            }
        };
        let Some(Some(chunk)) = seq
            .checked_sub(self.base)
            .and_then(|k| self.chunks.get_mut(k as usize))
        else {
            unreachable!("outcome for chunk {seq} that is not open")
        };
        debug_assert_eq!(offset, chunk.received);
        match msg {
            ChunkMsg::Part {
                skip,
                pid,
                frame,
                attached,
                ..
            } => {
                let part = Part {
                    frame: &frame,
                    skip,
                    pid,
                    attached,
                };
                decode_part::<R>(part, &job.task_name, &job.shared, |r| {
                    chunk.ready.push_back(r);
                    chunk.received += 1;
                });
            }
            ChunkMsg::Failed { count, error, .. } => chunk.fail(count, error, &job.shared),
        }
    }
}

#[cfg(test)]
#[path = "gather_tests.rs"]
mod tests;
