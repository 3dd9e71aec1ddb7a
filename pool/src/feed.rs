//! The caller's side of a job, going in: encoding inputs into chunks
//! lazily and submitting them (`gather.rs` is the way back).
//!
//! Inputs are pulled from the caller's iterator only as the window allows
//! (a bounded number of chunks open at once), so an `imap` over ten million
//! generated items never holds them all.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use procpool_protocol::ItemsBuilder;
use serde::Serialize;

use crate::dispatcher::{Batch, Job};
use crate::error::{Error, ErrorKind};
use crate::payload;
use crate::pool::Inner;

/// Largest automatic chunk, in items.
const MAX_AUTO_CHUNK: usize = 4096;
/// Largest automatic chunk, in items, for a pool with remote workers: a
/// remote worker's next batch waits a round trip for the pool's `Go`
/// (`relay`), which larger batches amortise. A `map` of 1M `u64` on 2
/// workers through ssh ran 1.1-1.2x as fast with this cap as with
/// [`MAX_AUTO_CHUNK`] (rounds paired in one process); local workers,
/// whose next batch is already in their pipe, gained nothing clear.
const MAX_AUTO_CHUNK_REMOTE: usize = 16384;
/// Most items in a chunk that counts as small (`ChunkSize::small`).
const SMALL_CHUNK: usize = 8;
/// A chunk is closed once its encoded items reach this many bytes.
const CHUNK_BYTES: usize = 1 << 20;
/// Room kept in a frame for the `Run` header.
const RUN_HEADER_ROOM: usize = 32;
/// Room for one item's length prefix.
const ITEM_ROOM: usize = 8;

/// Bytes of items that fit in one `Run` frame.
fn frame_room(max_frame: u32) -> usize {
    (max_frame as usize).saturating_sub(RUN_HEADER_ROOM)
}

/// Encodes one argument straight into `items` (an `apply`'s one item) and
/// checks that it fits a frame on its own.
pub(crate) fn encode_arg<A: Serialize>(
    arg: &A,
    items: &mut ItemsBuilder,
    task: &str,
    max_frame: u32,
) -> Result<(), Error> {
    match items.push_value(arg) {
        Ok(len) => check_len(len, task, max_frame),
        Err(e) => Err(arg_encode_error(task, &e)),
    }
}

fn arg_encode_error(task: &str, e: &postcard::Error) -> Error {
    Error::new(ErrorKind::ArgEncode {
        task: task.to_owned(),
        message: e.to_string(),
    })
}

/// Checks that an argument encoded to `len` bytes fits a frame on its own.
fn check_len(len: usize, task: &str, max_frame: u32) -> Result<(), Error> {
    if len + ITEM_ROOM > frame_room(max_frame) {
        return Err(Error::new(ErrorKind::ArgTooLarge {
            task: task.to_owned(),
            len,
            max: max_frame,
        }));
    }
    Ok(())
}

/// How many items go into the next chunk.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ChunkSize {
    Fixed(usize),
    /// Known length, guided: each chunk is the same share of what is left
    /// (`ceil(left / parts)`), at most the first one's size and at least
    /// a sixteenth of it. Chunks shrink towards the end, so no worker is
    /// left with a long chunk while the others idle: with Python's fixed
    /// `ceil(n / (4 * workers))`, 200 tasks of 10 ms on 2 workers end
    /// with one worker running a last chunk of 250 ms alone. The floor
    /// bounds what the shrinking costs: the tail is at most a sixty-fourth
    /// of a worker's share, in a few dozen more chunks.
    Guided {
        parts: usize,
        first: usize,
    },
    /// Unknown length: start small for latency, double up to the cap.
    Growing {
        next: usize,
        cap: usize,
    },
}

impl ChunkSize {
    /// Python's rule for a known length (`ceil(n / (4 * workers))`),
    /// capped, for the first chunk, then guided; growth from 1 for an
    /// unknown length. `remote`: the pool has remote workers, whose cap is
    /// larger.
    pub(crate) fn auto(len_hint: (usize, Option<usize>), workers: usize, remote: bool) -> Self {
        let cap = if remote {
            MAX_AUTO_CHUNK_REMOTE
        } else {
            MAX_AUTO_CHUNK
        };
        match len_hint {
            (lo, Some(hi)) if lo == hi => {
                let parts = 4 * workers.max(1);
                Self::Guided {
                    parts,
                    first: lo.div_ceil(parts).clamp(1, cap),
                }
            }
            _ => Self::Growing { next: 1, cap },
        }
    }

    /// Its chunks hold a few items at most: tiny batches, which a worker
    /// answering them fast is sent far ahead (`dispatcher/pace.rs`).
    pub(crate) fn small(&self) -> bool {
        match *self {
            Self::Fixed(n) => n <= SMALL_CHUNK,
            Self::Guided { first, .. } => first <= SMALL_CHUNK,
            Self::Growing { .. } => false,
        }
    }

    /// The next chunk's size, given what the input says is left.
    fn take(&mut self, left: (usize, Option<usize>)) -> usize {
        match self {
            Self::Fixed(n) => (*n).max(1),
            Self::Guided { parts, first } => match left {
                (lo, Some(hi)) if lo == hi => lo.div_ceil(*parts).clamp(first.div_ceil(16), *first),
                _ => *first,
            },
            Self::Growing { next, cap } => {
                let now = *next;
                *next = (now * 2).min(*cap);
                now
            }
        }
    }
}

/// A chunk opened by the feeder: sent to the dispatcher, or failed
/// locally before it could be sent.
pub(crate) struct Opened {
    pub(crate) seq: u64,
    pub(crate) count: u32,
    pub(crate) failed: Option<Error>,
}

/// Pulls inputs from the caller's iterator and submits them as chunks.
pub(crate) struct Feeder<I> {
    iter: I,
    exhausted: bool,
    pub(crate) job: Arc<Job>,
    pub(crate) inner: Arc<Inner>,
    size: ChunkSize,
    next_seq: u64,
    /// Dropping it leaves its job alone (`map_async`: fed whole, detached).
    detached: bool,
    /// Chunks kept back instead of submitted (`map_async`: nothing is
    /// submitted until the whole input is encoded).
    held: Option<Vec<Batch>>,
}

impl<I, Args> Feeder<I>
where
    I: Iterator<Item = Args>,
    Args: Serialize,
{
    pub(crate) fn new(iter: I, job: Arc<Job>, inner: Arc<Inner>, size: ChunkSize) -> Self {
        Self {
            iter,
            exhausted: false,
            job,
            inner,
            size,
            next_seq: 0,
            detached: false,
            held: None,
        }
    }

    /// From now on chunks are kept back, until [`release`](Self::release).
    pub(crate) fn hold(&mut self) {
        self.held.get_or_insert_with(Vec::new);
    }

    /// Submits every chunk kept back, in order.
    pub(crate) fn release(&mut self) {
        for batch in self.held.take().unwrap_or_default() {
            self.inner.submit(batch);
        }
    }

    /// Drops the feeder without cancelling its job's unstarted work.
    pub(crate) fn detach(mut self) {
        self.detached = true;
    }

    pub(crate) fn exhausted(&self) -> bool {
        self.exhausted
    }

    /// Chunks the job may have open now (`Inner::window`).
    pub(crate) fn window(&self) -> usize {
        self.inner.window(self.size.small())
    }

    /// The input's own size hint for what it has not yielded yet.
    pub(crate) fn input_hint(&self) -> (usize, Option<usize>) {
        if self.exhausted {
            (0, Some(0))
        } else {
            self.iter.size_hint()
        }
    }

    /// Builds and submits the next chunk (or chunks, when an item fails
    /// to encode and gets a chunk of its own); empty once the input ends.
    pub(crate) fn open_next(&mut self, opened: &mut Vec<Opened>) {
        // A cancelled job takes no more input.
        if self.exhausted || self.job.cancelled.load(Ordering::Relaxed) {
            self.exhausted = true;
            return;
        }
        let want = self.size.take(self.iter.size_hint());
        let room = frame_room(self.inner.max_frame);
        let share = self.inner.shared_memory && self.inner.shared.args_shared();
        let mut items = ItemsBuilder::new();
        // The memfds of this chunk's large arguments (`payload.rs`).
        let mut shared = Vec::new();
        while (items.count() as usize) < want && items.bytes() < CHUNK_BYTES {
            let Some(arg) = self.iter.next() else {
                self.exhausted = true;
                break;
            };
            // Encoded straight into the chunk; checked once there.
            let task = &self.job.task_name;
            let made = payload::made();
            let pushed = payload::sharing_if(share, || items.push_value(&arg));
            let its_shared = payload::take_made(made);
            // An item too large for a frame on its own can only show when
            // the chunk overflows: only then is its length checked.
            let encoded = match pushed {
                Ok(len) if items.bytes() + ITEM_ROOM > room => {
                    check_len(len, task, self.inner.max_frame).inspect_err(|_| {
                        items.pop_last();
                    })
                }
                Ok(_) => Ok(()),
                Err(e) => Err(arg_encode_error(task, &e)),
            };
            match encoded {
                Ok(()) => {
                    if items.bytes() + ITEM_ROOM > room {
                        // Does not fit beside the others: close this chunk
                        // and start the next with this item (its shared
                        // payloads go with it; their markers stay valid).
                        let item = items.pop_last().expect("just pushed");
                        let full = std::mem::take(&mut items);
                        self.submit(full, std::mem::take(&mut shared), opened);
                        items.push(&item);
                    }
                    if !its_shared.is_empty() {
                        shared.extend(its_shared);
                    }
                }
                Err(error) => {
                    // The item gets a chunk of its own, failed here, in order.
                    let before = std::mem::take(&mut items);
                    self.submit(before, std::mem::take(&mut shared), opened);
                    opened.push(Opened {
                        seq: self.bump(),
                        count: 1,
                        failed: Some(error),
                    });
                    return;
                }
            }
        }
        self.submit(items, shared, opened);
    }

    fn bump(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    fn submit(&mut self, items: ItemsBuilder, shared: Vec<OwnedFd>, opened: &mut Vec<Opened>) {
        if items.count() == 0 {
            return;
        }
        let seq = self.bump();
        opened.push(Opened {
            seq,
            count: items.count(),
            failed: None,
        });
        let mut batch = Batch::new(self.job.clone(), seq, items);
        batch.keep_shared(shared);
        match &mut self.held {
            Some(held) => held.push(batch),
            None => self.inner.submit(batch),
        }
    }
}

impl<I> Feeder<I> {
    /// Pulls no more input.
    pub(crate) fn stop(&mut self) {
        self.exhausted = true;
    }
}

impl<I> Drop for Feeder<I> {
    fn drop(&mut self) {
        // Work not yet started is not wanted any more.
        if !self.detached {
            self.job.cancelled.store(true, Ordering::Relaxed);
        }
        // Chunks never submitted (a refused `map_async`) end with it: their
        // drop fails their items, into a channel nobody reads any more.
    }
}

#[cfg(test)]
#[path = "feed_tests.rs"]
mod tests;
