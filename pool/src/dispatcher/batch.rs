//! Batches, jobs and the pool state callers and the dispatcher share.
//!
//! The one-outcome rule is enforced by ownership: a [`Batch`] is the only
//! thing that can report its items' outcomes, it reports each item once
//! (a cursor moves past what was delivered), and dropping a batch that
//! still has unreported items reports them as failed. Whatever path a batch
//! takes — queued, in flight, re-dispatched after a crash, dropped with a
//! closed channel, or unwound by a panic — every item ends exactly once.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Arc, OnceLock};
use std::task::Waker;
use std::time::Duration;

use super::Outbox;
use parking_lot::Mutex;
use procpool_protocol::{ItemsBuilder, TaskInfo};

use crate::error::{Error, ErrorKind};
use crate::payload::Attached;

pub(crate) use super::conn::Received;

/// What a caller receives about one of its chunks.
#[derive(Debug)]
pub(crate) enum ChunkMsg {
    /// A `Done` frame body whose outcomes, after the first `skip` (already
    /// reported otherwise), are those of items `offset..` of the chunk; the
    /// caller decodes it.
    Part {
        seq: u64,
        offset: u32,
        skip: u32,
        pid: u32,
        frame: Vec<u8>,
        /// The shared payloads its results name (`payload.rs`).
        attached: Attached,
    },
    /// Items `offset..offset + count` of the chunk failed with `error`.
    Failed {
        seq: u64,
        offset: u32,
        count: u32,
        error: Error,
    },
}

/// One caller's stream of chunks for one task.
#[derive(Debug)]
pub(crate) struct Job {
    /// Unique in the process: names the job in a cancel.
    pub(crate) id: u64,
    pub(crate) task: u32,
    pub(crate) task_name: Arc<str>,
    /// Deadline of each task, from when it starts.
    pub(crate) timeout: Option<Duration>,
    pub(crate) sink: Outbox,
    /// Who to wake when something is sent to `sink` (an async caller).
    pub(crate) listener: Listener,
    /// Work not yet started is not wanted (a dropped `Imap`, or a cancel).
    pub(crate) cancelled: AtomicBool,
    /// A caller asked for a cancel: the dispatcher has been told.
    pub(crate) cancel_sent: AtomicBool,
    pub(crate) shared: Arc<Shared>,
}

impl Job {
    /// A fresh job id.
    pub(crate) fn next_id() -> u64 {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed)
    }

    fn send(&self, msg: ChunkMsg) {
        self.sink.send(msg);
        self.listener.notify();
    }
}

/// The waker of an async caller waiting on a job's channel: a future or a
/// stream polled by an executor, or the pool's callback thread.
///
/// Blocking callers never register one, and then a message costs one
/// fence and one load more than the channel send.
#[derive(Debug, Default)]
pub(crate) struct Listener {
    armed: AtomicBool,
    waker: parking_lot::Mutex<Option<Waker>>,
}

impl Listener {
    /// Wakes `waker` at the next message. The caller looks at the channel
    /// again *after* this, so a message sent in between is not missed:
    /// either it sees the message, or the sender sees the waker.
    pub(crate) fn listen(&self, waker: &Waker) {
        {
            let mut slot = self.waker.lock();
            match &*slot {
                Some(w) if w.will_wake(waker) => {}
                _ => *slot = Some(waker.clone()),
            }
        }
        self.armed.store(true, Ordering::SeqCst);
        // Orders the store above before the caller's next look at the
        // channel (paired with the fence in `notify`).
        fence(Ordering::SeqCst);
    }

    /// A message was sent: wake the listener, if there is one.
    pub(crate) fn notify(&self) {
        // Orders the channel send before the load below (paired with the
        // fence in `listen`).
        fence(Ordering::SeqCst);
        if self.armed.load(Ordering::SeqCst) && self.armed.swap(false, Ordering::SeqCst) {
            let waker = self.waker.lock().take();
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

/// A chunk of encoded items on its way to a worker.
///
/// Its items are numbered `0..total` within the chunk; `items` holds those
/// from `sent_from` on (a chunk re-dispatched after a crash loses the items
/// already settled); `delivered` counts the items whose outcome the caller
/// was given.
#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) job: Arc<Job>,
    pub(crate) seq: u64,
    items: ItemsBuilder,
    total: u32,
    sent_from: u32,
    delivered: u32,
    /// Deadlines its next item passed before a worker started it: that
    /// item (its chunk index) and how many.
    missed_starts: (u32, u32),
    /// The memfds of its large arguments (`payload.rs`): kept until every
    /// item has its outcome, so that a worker (this one, or the next after
    /// a crash) can open them.
    shared: Box<[OwnedFd]>,
}

impl Batch {
    pub(crate) fn new(job: Arc<Job>, seq: u64, items: ItemsBuilder) -> Self {
        let total = items.count();
        Self {
            job,
            seq,
            items,
            total,
            sent_from: 0,
            delivered: 0,
            missed_starts: (0, 0),
            shared: Box::default(),
        }
    }

    /// Keeps the memfds its items' markers name.
    pub(crate) fn keep_shared(&mut self, fds: Vec<OwnedFd>) {
        debug_assert!(self.shared.is_empty(), "kept once, when built");
        self.shared = fds.into_boxed_slice();
    }

    /// Gives up the memfds kept with [`keep_shared`](Self::keep_shared),
    /// once every item has its outcome (no replacement can need them).
    pub(crate) fn release_shared(&mut self) -> Box<[OwnedFd]> {
        debug_assert_eq!(self.remaining(), 0);
        std::mem::take(&mut self.shared)
    }

    /// The items a worker is sent: those from [`sent_from`](Self::sent_from).
    pub(crate) fn items(&self) -> &ItemsBuilder {
        &self.items
    }

    pub(crate) fn remaining(&self) -> u32 {
        self.total - self.delivered
    }

    /// Forwards a `Done` frame holding `n` outcomes of which the first
    /// `skip` were already reported (by a deadline).
    pub(crate) fn deliver(&mut self, n: u32, skip: u32, pid: u32, frame: Received) {
        let fresh = n - skip;
        debug_assert!(fresh <= self.remaining());
        if fresh == 0 {
            return;
        }
        self.job.send(ChunkMsg::Part {
            seq: self.seq,
            offset: self.delivered,
            skip,
            pid,
            frame: frame.body,
            attached: frame.attached,
        });
        self.delivered += fresh;
    }

    /// Fails the next `count` items (at most the remaining ones).
    pub(crate) fn fail_next(&mut self, count: u32, error: Error) {
        let count = count.min(self.remaining());
        if count > 0 {
            self.job.send(ChunkMsg::Failed {
                seq: self.seq,
                offset: self.delivered,
                count,
                error,
            });
            self.delivered += count;
        }
    }

    /// The unreported items, ready to be sent again (to another worker);
    /// `None` if none is left.
    pub(crate) fn into_rest(mut self) -> Option<Self> {
        if self.remaining() == 0 {
            return None;
        }
        self.items.drop_first(self.delivered - self.sent_from);
        self.sent_from = self.delivered;
        Some(self)
    }
}

impl super::settle::Unit for Batch {
    type Frame = Received;

    fn sent_from(&self) -> u32 {
        self.sent_from
    }
    fn delivered(&self) -> u32 {
        self.delivered
    }
    fn remaining(&self) -> u32 {
        Batch::remaining(self)
    }
    fn deliver(&mut self, n: u32, skip: u32, pid: u32, frame: Received) {
        Batch::deliver(self, n, skip, pid, frame);
    }
    fn fail_next(&mut self, count: u32, error: Error) {
        Batch::fail_next(self, count, error);
    }
    fn into_rest(self) -> Option<Self> {
        Batch::into_rest(self)
    }
    fn cancelled(&self) -> bool {
        self.job.cancelled.load(Ordering::Relaxed)
    }
    fn job(&self) -> u64 {
        self.job.id
    }
    fn timeout(&self) -> Option<Duration> {
        self.job.timeout
    }
    fn task(&self) -> &str {
        &self.job.task_name
    }
    fn note_missed_start(&mut self) {
        self.missed_starts = (self.delivered, self.missed_starts() + 1);
    }
    fn missed_starts(&self) -> u32 {
        match self.missed_starts {
            (item, n) if item == self.delivered => n,
            _ => 0,
        }
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        if self.remaining() > 0 {
            let error = self.job.shared.loss_error();
            self.fail_next(self.remaining(), error);
        }
    }
}

const OPEN: u8 = 0;
const CLOSED: u8 = 1;
const TERMINATED: u8 = 2;
const BROKEN: u8 = 3;

const SHARE_UNKNOWN: u8 = 0;
const SHARE_YES: u8 = 1;
const SHARE_NO: u8 = 2;

/// State shared by the pool's handles, its callers and the dispatcher.
#[derive(Debug)]
pub(crate) struct Shared {
    state: AtomicU8,
    broken_reason: Mutex<Option<String>>,
    pub(crate) tasks: OnceLock<TaskTable>,
    pub(crate) pids: Mutex<Vec<u32>>,
    pub(crate) stats: Counters,
    /// Idle workers lent to calling threads (see `lane.rs`).
    pub(crate) lanes: super::lane::Lanes,
    /// Whether every worker that served so far takes large arguments from
    /// shared memory (`payload.rs`): unknown, yes, or (for good) no.
    share_args: AtomicU8,
    /// The most batches any busy local worker may be fed now (`pace.rs`;
    /// an idle one counts as two): how many chunks of a few items a caller
    /// keeps open (`Inner::window`).
    depth: AtomicUsize,
}

/// What the workers serve, as the first one announced it.
#[derive(Debug)]
pub(crate) struct TaskTable {
    pub(crate) infos: Vec<TaskInfo>,
    /// The names again, shared by every job of each task.
    pub(crate) names: Vec<Arc<str>>,
}

impl TaskTable {
    pub(crate) fn new(infos: Vec<TaskInfo>) -> Self {
        let names = infos.iter().map(|t| Arc::from(t.name.as_str())).collect();
        Self { infos, names }
    }
}

/// Counters behind [`Stats`](crate::Stats).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) tasks_succeeded: AtomicU64,
    pub(crate) tasks_failed: AtomicU64,
    pub(crate) workers_started: AtomicU64,
    pub(crate) workers_forked: AtomicU64,
    pub(crate) worker_deaths: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) recycles: AtomicU64,
    pub(crate) start_failures: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl Shared {
    pub(crate) fn new() -> Self {
        Self {
            state: AtomicU8::new(OPEN),
            broken_reason: Mutex::new(None),
            tasks: OnceLock::new(),
            pids: Mutex::new(Vec::new()),
            stats: Counters::default(),
            lanes: super::lane::Lanes::default(),
            share_args: AtomicU8::new(SHARE_UNKNOWN),
            depth: AtomicUsize::new(crate::builder::PIPELINE),
        }
    }

    /// The most batches any busy local worker may be fed now.
    pub(crate) fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// The dispatcher feeds its deepest worker `depth` batches.
    pub(crate) fn set_depth(&self, depth: usize) {
        if self.depth.load(Ordering::Relaxed) != depth {
            self.depth.store(depth, Ordering::Relaxed);
        }
    }

    /// A worker became ready: whether it takes large arguments from shared
    /// memory. One that does not turns it off for good.
    pub(crate) fn worker_shares(&self, yes: bool) {
        if yes {
            let _ = self.share_args.compare_exchange(
                SHARE_UNKNOWN,
                SHARE_YES,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        } else {
            self.share_args.store(SHARE_NO, Ordering::Release);
        }
    }

    /// Whether large arguments may go through shared memory.
    pub(crate) fn args_shared(&self) -> bool {
        self.share_args.load(Ordering::Acquire) == SHARE_YES
    }

    pub(crate) fn is_open(&self) -> bool {
        self.state.load(Ordering::Acquire) == OPEN
    }

    /// Stops accepting new jobs (a no-op once terminated or broken).
    pub(crate) fn close(&self) {
        let _ = self
            .state
            .compare_exchange(OPEN, CLOSED, Ordering::AcqRel, Ordering::Acquire);
    }

    pub(crate) fn set_terminated(&self) {
        self.state.store(TERMINATED, Ordering::Release);
    }

    pub(crate) fn set_broken(&self, reason: String) {
        *self.broken_reason.lock() = Some(reason);
        self.state.store(BROKEN, Ordering::Release);
    }

    /// The error for work the pool will not do, given its state.
    pub(crate) fn loss_error(&self) -> Error {
        match self.state.load(Ordering::Acquire) {
            CLOSED => Error::new(ErrorKind::Closed),
            BROKEN => Error::new(ErrorKind::Broken {
                reason: self
                    .broken_reason
                    .lock()
                    .clone()
                    .unwrap_or_else(|| "unknown".into()),
            }),
            // OPEN here means the dispatcher itself stopped (a bug): report
            // the work as terminated rather than leave a caller waiting.
            _ => Error::new(ErrorKind::Terminated),
        }
    }
}
