//! THE policy: which items end with which outcome, and which go back to
//! the queue. Nothing else in the crate decides a task's fate.
//!
//! This module does no I/O: no pipes, no clock reads, no channels. Its
//! inputs are events and instants; it owns the queue and the in-flight
//! table, and it reports outcomes through the [`Unit`] it holds (a
//! [`Batch`](super::Batch) in the pool; a recording model in the tests).
//! The dispatcher, the direct lane and the shutdown paths feed it events
//! and carry out what it returns (a kill, a log line).
//!
//! # The rules
//!
//! A worker runs what it is sent strictly in order, one item at a time, and
//! counts in shared memory how many items it has *started*
//! (`sys::SharedCounter`). Every item sent to a worker has a stream index
//! (`first` of its batch plus its offset), so after a death:
//!
//! - items whose outcome arrived are done (delivered once, by the cursor);
//! - items already failed by their deadline stay failed (never twice);
//! - items with a stream index below `started` ran: they fail with
//!   `WorkerDied` (or `Protocol` if the worker broke the protocol) — the
//!   running one, and any whose results were still buffered in the worker;
//! - items at or after `started` never ran: they go back to the front of
//!   the queue, in order, and run elsewhere, once.
//!
//! Deadlines: a batch with a deadline is sent *eager* (the worker reports
//! each outcome before starting the next item), so the running item started
//! when the last frame arrived (`progress_at`). At the deadline that item
//! fails with `TimedOut`; the worker is no longer given work and is killed;
//! a late outcome for the item is skipped, never delivered twice. A
//! deadline that finds its item not yet started kills the worker all the
//! same; should the worker start the item before the kill's halt mark, the
//! loss fails it `TimedOut` too (it ran, and was killed for its deadline),
//! and if it did not, it runs elsewhere, once.
//!
//! Cancel (a caller's `cancel()`): the job's queued items fail `Cancelled`
//! at once; each of its batches in flight gets its skip bit (the worker
//! reports the items it reaches after that as `Cancelled`, unrun); a worker
//! running one of its items is killed, and the loss fails that item (and
//! any other of the job without an outcome) `Cancelled`. Items of other
//! jobs on that worker that never started run elsewhere, once.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::pace::Pace;
use crate::error::{Error, ErrorKind, Exit};

/// A chunk of items as the policy sees it. Its outcomes are reported
/// through a cursor that only moves forward (`delivered`); dropping a unit
/// fails whatever it has not reported.
pub(crate) trait Unit: Sized {
    /// A `Done` frame as the connection read it.
    type Frame;
    /// Chunk index of the first item still to be sent.
    fn sent_from(&self) -> u32;
    /// Items whose outcome was reported (a chunk index).
    fn delivered(&self) -> u32;
    /// Items not yet reported.
    fn remaining(&self) -> u32;
    /// Forwards a `Done` frame of `n` outcomes whose first `skip` were
    /// already reported.
    fn deliver(&mut self, n: u32, skip: u32, pid: u32, frame: Self::Frame);
    /// Fails the next `count` unreported items.
    fn fail_next(&mut self, count: u32, error: Error);
    /// The unreported items, to be sent again; `None` if none is left.
    fn into_rest(self) -> Option<Self>;
    /// Its caller no longer wants the items not yet started.
    fn cancelled(&self) -> bool;
    /// The job it belongs to.
    fn job(&self) -> u64;
    /// Deadline of each item, from when it starts.
    fn timeout(&self) -> Option<Duration>;
    /// The task's name, for errors.
    fn task(&self) -> &str;
    /// Its next item's worker did not even start it by its deadline.
    fn note_missed_start(&mut self);
    /// How many times that happened to its next item (an item's misses
    /// are its own: they start from none for the item after it).
    fn missed_starts(&self) -> u32;
}

/// Fails every unreported item of `unit` with `error`.
pub(crate) fn fail<U: Unit>(mut unit: U, error: Error) {
    let n = unit.remaining();
    unit.fail_next(n, error);
}

/// `error`, or `Cancelled` if the unit's caller cancelled it: an item of
/// a cancelled job that ends without its result ends cancelled, whatever
/// stopped it (the kill that carried out the cancel, as a rule; or a
/// deadline that fell on an item the worker skipped and had not reported).
/// Fails `unit`'s next item, which its deadline ended on worker `pid`:
/// `TimedOut` (or `Cancelled`, if its caller cancelled it).
fn fail_timed_out<U: Unit>(unit: &mut U, pid: u32, host: Option<&Arc<str>>, started: bool) {
    let error = Error::new(ErrorKind::TimedOut {
        task: unit.task().to_owned(),
        pid,
        timeout: unit.timeout().unwrap_or_default(),
        started,
        host: host.cloned(),
    });
    unit.fail_next(1, unless_cancelled(unit, error));
}

fn unless_cancelled<U: Unit>(unit: &U, error: Error) -> Error {
    if unit.cancelled() {
        Error::new(ErrorKind::Cancelled)
    } else {
        error
    }
}

/// A batch that cannot be sent (it does not fit a frame): its items fail,
/// the worker it was meant for stays. Both the loop and the lane use this.
pub(crate) fn unsendable<U: Unit>(unit: U, len: usize, max: u32) {
    let task = unit.task().to_owned();
    log::warn!("procpool: a batch of `{task}` ({len} bytes) does not fit a frame of {max}");
    fail(unit, Error::new(ErrorKind::ArgTooLarge { task, len, max }));
}

/// A batch sent to a worker.
#[derive(Debug)]
struct InFlight<U> {
    id: u64,
    unit: U,
    /// Chunk index of the next outcome the worker will report.
    cursor: u32,
    /// Chunk index of the item its deadline failed.
    timed_out: Option<u32>,
    /// Stream index (items sent to this worker before) of chunk index
    /// `sent_from`.
    first: u64,
    sent_from: u32,
    /// Its `Run` frame's number on this worker (`None`: a lane call).
    run: Option<u64>,
}

impl<U: Unit> InFlight<U> {
    /// Stream index of chunk index `c`.
    fn stream(&self, c: u32) -> u64 {
        self.first + u64::from(c - self.sent_from)
    }

    fn finished(&self) -> bool {
        self.cursor == self.unit.delivered() + self.unit.remaining()
    }

    /// Whether the item at stream index `i` is one of this batch's and has
    /// no outcome yet.
    fn unsettled(&self, i: u64) -> bool {
        let end = self.unit.delivered() + self.unit.remaining();
        i >= self.first
            && i - self.first < u64::from(end - self.sent_from)
            && self.sent_from + (i - self.first) as u32 >= self.unit.delivered()
    }
}

#[derive(Debug)]
struct Slot<U> {
    id: u64,
    pid: u32,
    inflight: VecDeque<InFlight<U>>,
    /// When the running item started, at the latest.
    progress_at: Instant,
    /// Takes new work (not timed out, not retiring, not stopping).
    serving: bool,
    /// Being killed (a deadline, a cancel): its deadlines are moot. A
    /// worker that only retires keeps them for what it still runs.
    killing: bool,
    /// Lent to a calling thread (the direct lane).
    lent: bool,
    /// A remote worker's host, for its errors.
    host: Option<Arc<str>>,
    /// How fast its batches come back: how deep it may be fed.
    pace: Pace,
}

/// How a worker was lost, for the errors of the items that ran on it.
#[derive(Debug, Clone)]
pub(crate) enum Cause {
    /// It died (exit status as reaped).
    Died(Exit),
    /// It broke the protocol.
    Protocol(String),
    /// A remote worker died on `host` (exit status as its relay reaped
    /// it, or as the pool saw its launcher end after a kill).
    RemoteDied(Exit, Arc<str>),
    /// The connection to a remote worker's host was lost: what it was
    /// running may or may not have run.
    HostLost { host: Arc<str>, detail: String },
}

impl Cause {
    /// Whether the worker ended by a signal the pool's kills send
    /// (SIGTERM, then SIGKILL), not by a crash or an exit of its own.
    fn is_a_kill(&self) -> bool {
        use nix::sys::signal::Signal::{SIGKILL, SIGTERM};
        matches!(
            self,
            Cause::Died(Exit::Signal(s)) | Cause::RemoteDied(Exit::Signal(s), _)
                if *s == SIGTERM as i32 || *s == SIGKILL as i32
        )
    }
}

/// What a loss did, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Settled {
    /// The task that was running, if one was.
    pub(crate) task: Option<String>,
    /// Items failed because they ran on the lost worker.
    pub(crate) failed: u32,
    /// Items sent back to the queue (never started).
    pub(crate) requeued: u32,
}

/// A running item that passed its deadline.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Expired {
    pub(crate) worker: u64,
    pub(crate) task: String,
    pub(crate) timeout: Duration,
    /// The item had started (and failed); `false`: the worker never
    /// started it (it stays unsettled and runs elsewhere).
    pub(crate) started: bool,
}

/// The queue and the in-flight table.
#[derive(Debug)]
pub(crate) struct Settle<U> {
    queue: VecDeque<U>,
    workers: Vec<Slot<U>>,
    next_batch: u64,
}

impl<U: Unit> Default for Settle<U> {
    fn default() -> Self {
        Self {
            queue: VecDeque::new(),
            workers: Vec::new(),
            next_batch: 0,
        }
    }
}

impl<U: Unit> Settle<U> {
    fn slot(&self, worker: u64) -> Option<&Slot<U>> {
        self.workers.iter().find(|s| s.id == worker)
    }

    fn slot_mut(&mut self, worker: u64) -> Option<&mut Slot<U>> {
        self.workers.iter_mut().find(|s| s.id == worker)
    }

    /// A worker is ready for work.
    pub(crate) fn add_worker(&mut self, worker: u64, pid: u32, now: Instant) {
        self.workers.push(Slot {
            id: worker,
            pid,
            inflight: VecDeque::new(),
            progress_at: now,
            serving: true,
            killing: false,
            lent: false,
            host: None,
            pace: Pace::new(now),
        });
    }

    /// Worker `worker` runs on a remote host, which its errors name.
    pub(crate) fn set_host(&mut self, worker: u64, host: Arc<str>) {
        if let Some(s) = self.slot_mut(worker) {
            s.host = Some(host);
        }
    }

    /// A caller's batch.
    pub(crate) fn submit(&mut self, unit: U) {
        self.queue.push_back(unit);
    }

    /// Nothing queued and nothing in flight.
    pub(crate) fn idle(&self) -> bool {
        self.queue.is_empty() && self.workers.iter().all(|s| s.inflight.is_empty())
    }

    pub(crate) fn queued(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Batches in flight on `worker`.
    pub(crate) fn in_flight(&self, worker: u64) -> usize {
        self.slot(worker).map_or(0, |s| s.inflight.len())
    }

    /// Exactly one batch is in flight, with one item left to report: a
    /// lone call (`apply_async`, `apply` with a deadline) whose answer the
    /// loop waits for.
    pub(crate) fn lone_item_out(&self) -> bool {
        let mut out = self.workers.iter().flat_map(|s| s.inflight.iter());
        matches!((out.next(), out.next()), (Some(f), None) if f.unit.remaining() == 1)
    }

    /// The task `worker` is running, for log lines.
    pub(crate) fn running_task(&self, worker: u64) -> Option<&str> {
        Some(self.slot(worker)?.inflight.front()?.unit.task())
    }

    /// The next batch for `worker`, if it takes work and has fewer than
    /// `depth` batches (more if `deep` and its batches come back fast,
    /// `pace.rs`, unless the next batch has a deadline): it goes in flight
    /// with `first` as its stream index and the caller encodes it (`Err`
    /// back through [`refuse`]). Batches whose caller cancelled them fail
    /// with `Cancelled` on the way.
    ///
    /// [`refuse`]: Self::refuse
    pub(crate) fn dispatch(
        &mut self,
        worker: u64,
        depth: usize,
        deep: bool,
        first: u64,
        run: u64,
        now: Instant,
    ) -> Option<(u64, &U)> {
        let i = self.workers.iter().position(|s| s.id == worker)?;
        if !self.workers[i].serving || self.workers[i].lent {
            return None;
        }
        // Cancelled batches fail as their turn comes; the depth is the
        // next live one's.
        while self.queue.front().is_some_and(U::cancelled) {
            let u = self.queue.pop_front().expect("a front");
            fail(u, Error::new(ErrorKind::Cancelled));
        }
        let next = self.queue.front()?;
        let s = &self.workers[i];
        // Deeper only past the first batch (an idle worker comes first),
        // and not for a batch with a deadline: its deadline would find it
        // waiting behind the others.
        let depth = if deep && depth > 1 && next.timeout().is_none() {
            Self::paced(s, depth, now)
        } else {
            depth
        };
        if s.inflight.len() >= depth {
            return None;
        }
        let unit = self.queue.pop_front().expect("a front");
        let id = self.next_batch;
        self.next_batch += 1;
        let s = &mut self.workers[i];
        let idle = s.inflight.is_empty();
        if idle {
            s.progress_at = now;
        }
        s.pace.handed(now, unit.job(), idle);
        let sent_from = unit.sent_from();
        s.inflight.push_back(InFlight {
            id,
            cursor: sent_from,
            sent_from,
            unit,
            timed_out: None,
            first,
            run: Some(run),
        });
        let f = s.inflight.back().expect("just pushed");
        Some((id, &f.unit))
    }

    /// How many batches `worker` may hold at `now` at its pace, `base` at
    /// least (`pace.rs`).
    pub(crate) fn depth(&self, worker: u64, base: usize, now: Instant) -> usize {
        self.slot(worker)
            .map_or(base, |s| Self::paced(s, base, now))
    }

    /// An idle worker's next batch may be another job's, whose pace is
    /// unknown: `base`.
    fn paced(s: &Slot<U>, base: usize, now: Instant) -> usize {
        if s.inflight.is_empty() {
            return base;
        }
        s.pace.depth(base, now)
    }

    /// The batch just dispatched to `worker` could not be encoded: it does
    /// not go out, and its items fail (the worker stays).
    pub(crate) fn refuse(&mut self, worker: u64, len: usize, max: u32) {
        let Some(s) = self.slot_mut(worker) else {
            return;
        };
        if let Some(f) = s.inflight.pop_back() {
            unsendable(f.unit, len, max);
        }
    }

    /// `n` outcomes from `worker` for its running batch `batch`, in
    /// `frame`. The connection already checked them against what was sent;
    /// `Err` names a disagreement (the worker is then lost).
    pub(crate) fn done(
        &mut self,
        worker: u64,
        batch: u64,
        n: u32,
        frame: U::Frame,
        now: Instant,
    ) -> Result<(), String> {
        let Some(s) = self.slot_mut(worker) else {
            return Err(format!(
                "result for batch {batch} from a worker not in service"
            ));
        };
        let pid = s.pid;
        let Some(front) = s.inflight.front_mut() else {
            return Err(format!("result for batch {batch} it was never given"));
        };
        if front.id != batch {
            return Err(format!(
                "result for batch {batch} while batch {} was running",
                front.id
            ));
        }
        let left = front.unit.delivered() + front.unit.remaining() - front.cursor;
        if n > left {
            return Err(format!("{n} outcomes for a batch with {left} left"));
        }
        // Outcomes the caller already has (an item failed by its deadline)
        // are skipped, never delivered twice.
        let skip = (front.unit.delivered() - front.cursor).min(n);
        front.unit.deliver(n, skip, pid, frame);
        front.cursor += n;
        s.progress_at = now;
        if front.finished() {
            s.inflight.pop_front();
            s.pace.ended(now);
        }
        Ok(())
    }

    /// When the next running item passes its deadline, if any.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.workers.iter().filter_map(Self::deadline_of).min()
    }

    fn deadline_of(s: &Slot<U>) -> Option<Instant> {
        if s.killing {
            return None;
        }
        let front = s.inflight.front()?;
        if front.timed_out.is_some() {
            return None;
        }
        // A deadline too far to represent is no deadline.
        s.progress_at.checked_add(front.unit.timeout()?)
    }

    /// Running items past their deadline at `now` fail with `TimedOut`;
    /// their workers take no more work and the caller kills them.
    /// `started(worker)` is the worker's progress counter: an item it has
    /// not even started by its deadline (a stopped or stuck worker) does
    /// not fail; the worker is killed all the same and the item runs
    /// elsewhere — once: after a second miss the loss fails it
    /// (`TimedOut`, not started).
    pub(crate) fn expire(&mut self, now: Instant, started: impl Fn(u64) -> u64) -> Vec<Expired> {
        let mut out = Vec::new();
        for s in &mut self.workers {
            if Self::deadline_of(s).is_none_or(|d| now < d) {
                continue;
            }
            let pid = s.pid;
            let front = s.inflight.front_mut().expect("a deadline has a batch");
            let timeout = front.unit.timeout().unwrap_or_default();
            let task = front.unit.task().to_owned();
            let running = front.stream(front.cursor) < started(s.id);
            if !running {
                // Settled when the worker is gone: it may still start it.
                front.unit.note_missed_start();
            }
            // Eager batches: the item at the cursor is the running one.
            if running && front.unit.delivered() == front.cursor {
                fail_timed_out(&mut front.unit, pid, s.host.as_ref(), true);
            }
            front.timed_out = Some(front.cursor);
            s.serving = false;
            s.killing = true;
            out.push(Expired {
                worker: s.id,
                task,
                timeout,
                started: running,
            });
        }
        out
    }

    /// `worker` takes no more work (recycled, or the pool is stopping);
    /// what it has still runs.
    pub(crate) fn retire(&mut self, worker: u64) {
        if let Some(s) = self.slot_mut(worker) {
            s.serving = false;
        }
    }

    /// `worker` is lent to a calling thread: the loop gives it nothing.
    pub(crate) fn lend(&mut self, worker: u64) {
        if let Some(s) = self.slot_mut(worker) {
            debug_assert!(s.inflight.is_empty());
            s.lent = true;
        }
    }

    /// `worker` is back from its loan.
    pub(crate) fn unlend(&mut self, worker: u64) {
        if let Some(s) = self.slot_mut(worker) {
            s.lent = false;
        }
    }

    /// A lane call on `worker` failed with its batch `unit` (batch `id`)
    /// sent at stream index `first`: the batch joins the worker's
    /// in-flight table, to be settled by the loss that follows like any
    /// other, or by its `Done` if the dispatcher reads one before it.
    pub(crate) fn hand_back(&mut self, worker: u64, id: u64, unit: U, first: u64) {
        let Some(s) = self.slot_mut(worker) else {
            // Not in service any more: its Drop reports the pool's state.
            drop(unit);
            return;
        };
        s.lent = false;
        let sent_from = unit.sent_from();
        s.inflight.push_back(InFlight {
            id,
            cursor: sent_from,
            sent_from,
            unit,
            timed_out: None,
            first,
            run: None,
        });
    }

    /// `worker` is gone, having started `started` items in all. Settles
    /// everything it held (see the module docs).
    pub(crate) fn lost(&mut self, worker: u64, started: u64, cause: &Cause) -> Settled {
        let Some(i) = self.workers.iter().position(|s| s.id == worker) else {
            return Settled::default();
        };
        let s = self.workers.swap_remove(i);
        let mut settled = Settled::default();
        let mut requeue = Vec::new();
        for mut f in s.inflight {
            let next = f.unit.delivered();
            let end = next + f.unit.remaining();
            // Items from `next` on are unreported; those that started ran.
            let mut ran = (next..end).take_while(|&c| f.stream(c) < started).count() as u32;
            if ran > 0 && f.timed_out == Some(next) && cause.is_a_kill() {
                // Its deadline found it unstarted, yet it started before
                // the halt mark that came with the kill: it ran, and the
                // kill that ended it was for its deadline. (A crash of its
                // own, or a broken protocol, is reported as such.)
                fail_timed_out(&mut f.unit, s.pid, s.host.as_ref(), true);
                settled.task.get_or_insert_with(|| f.unit.task().to_owned());
                settled.failed += 1;
                ran -= 1;
            }
            if ran > 0 {
                let task = f.unit.task().to_owned();
                // A cancelled job's item ends cancelled whatever stopped it
                // (the kill that carried out the cancel, as a rule).
                let error = match cause {
                    Cause::Died(exit) => Error::new(ErrorKind::WorkerDied {
                        task: task.clone(),
                        pid: s.pid,
                        exit: *exit,
                        host: None,
                    }),
                    Cause::RemoteDied(exit, host) => Error::new(ErrorKind::WorkerDied {
                        task: task.clone(),
                        pid: s.pid,
                        exit: *exit,
                        host: Some(host.clone()),
                    }),
                    Cause::HostLost { host, detail } => Error::new(ErrorKind::HostLost {
                        task: task.clone(),
                        host: host.clone(),
                        detail: detail.clone(),
                    }),
                    Cause::Protocol(detail) => Error::new(ErrorKind::Protocol {
                        pid: s.pid,
                        detail: detail.clone(),
                        host: s.host.clone(),
                    }),
                };
                settled.task.get_or_insert(task);
                f.unit.fail_next(ran, unless_cancelled(&f.unit, error));
                settled.failed += ran;
            }
            // The item its deadline found unstarted never started at all: it
            // runs elsewhere, but only once more. An item no worker starts
            // within its deadline twice (a deadline shorter than handing it
            // over) fails, rather than cost a worker per try for ever.
            let unstarted =
                f.timed_out == Some(f.unit.delivered()) && f.stream(f.unit.delivered()) >= started;
            if unstarted && f.unit.missed_starts() >= 2 {
                fail_timed_out(&mut f.unit, s.pid, s.host.as_ref(), false);
            }
            if let Some(rest) = f.unit.into_rest() {
                settled.requeued += rest.remaining();
                requeue.push(rest);
            }
        }
        // Never started: back to the front of the queue, in order.
        for u in requeue.into_iter().rev() {
            self.queue.push_front(u);
        }
        settled
    }

    /// Every queued and in-flight item fails with `error()` (terminate, or
    /// the pool broke). Workers stay in the table, with nothing to do.
    pub(crate) fn fail_all(&mut self, error: impl Fn() -> Error) {
        for s in &mut self.workers {
            s.serving = false;
            for f in s.inflight.drain(..) {
                fail(f.unit, error());
            }
        }
        for u in self.queue.drain(..) {
            fail(u, error());
        }
    }

    /// Whether `worker` still has `Run` frame `run` in flight (not wholly
    /// answered).
    pub(crate) fn holds_run(&self, worker: u64, run: u64) -> bool {
        self.slot(worker)
            .is_some_and(|s| s.inflight.iter().any(|f| f.run == Some(run)))
    }

    /// Forgets `worker` (it was never ready, or it is already settled).
    pub(crate) fn remove(&mut self, worker: u64) {
        self.workers.retain(|s| s.id != worker);
    }
}

mod cancel;

#[cfg(test)]
#[path = "settle_tests.rs"]
mod tests;
