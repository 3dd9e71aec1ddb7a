//! The policy's cancel rules (see the module docs of `settle`): what a
//! caller's `cancel()` does to queued items, to batches in flight and to
//! the worker running one of them, and how far a halted worker may have
//! gone (`sys::shm` has the skip bits and the halt mark).

use std::collections::{HashSet, VecDeque};

use super::{Settle, Slot, Unit, fail};
use crate::error::{Error, ErrorKind};

impl<U: Unit> Settle<U> {
    /// The callers of `jobs` cancelled them (their units say `cancelled()`
    /// from now on). Their queued items fail `Cancelled` now, in one pass
    /// however many jobs. For each of their batches in flight,
    /// `skip(worker, run)` tells that worker to skip the items of `Run`
    /// frame `run` it has not started; only then is `started` read (`None`:
    /// the worker does not count, so nothing is known of it and nothing is
    /// done to it: its items run). Their items that have not started by
    /// then fail `Cancelled` now (the worker skips them, and its late
    /// reports are not delivered twice), so a cancelled item waiting behind
    /// another job's long task does not wait for it.
    ///
    /// Returns the workers running one of their items: the caller halts
    /// them, asks [`runs_cancelled`](Self::runs_cancelled) again, and
    /// kills those that still do; the loss then settles the item (and any
    /// other of the job without an outcome) as cancelled, and the other
    /// jobs' unstarted items run elsewhere.
    ///
    /// A worker that starts an item in the instant between the skip and the
    /// read of its counter may run it: the item then ends `Cancelled` all
    /// the same, once (its result, if it comes, is not delivered).
    pub(crate) fn cancel(
        &mut self,
        jobs: &HashSet<u64>,
        mut skip: impl FnMut(u64, u64),
        started: impl Fn(u64) -> Option<u64>,
    ) -> Vec<u64> {
        let (gone, keep): (VecDeque<U>, VecDeque<U>) = std::mem::take(&mut self.queue)
            .into_iter()
            .partition(|u| jobs.contains(&u.job()));
        self.queue = keep;
        for u in gone {
            fail(u, Error::new(ErrorKind::Cancelled));
        }
        for s in &self.workers {
            for f in s.inflight.iter().filter(|f| jobs.contains(&f.unit.job())) {
                if let Some(run) = f.run {
                    skip(s.id, run);
                }
            }
        }
        let mut kill = Vec::new();
        for s in &mut self.workers {
            let Some(started) = started(s.id) else {
                continue;
            };
            for f in &mut s.inflight {
                if f.run.is_none() || !jobs.contains(&f.unit.job()) {
                    continue;
                }
                // None of its unreported items started: none will (the
                // worker skips them). Fail them now.
                let n = f.unit.remaining();
                if n > 0 && f.stream(f.unit.delivered()) >= started {
                    f.unit.fail_next(n, Error::new(ErrorKind::Cancelled));
                }
            }
            if Self::runs_job(s, jobs, started) {
                kill.push(s.id);
            }
        }
        kill
    }

    /// Whether `worker`, having started `started` items, runs an item of
    /// one of `jobs` that has no outcome yet. If it does, it takes no more
    /// work.
    pub(crate) fn runs_cancelled(
        &mut self,
        worker: u64,
        jobs: &HashSet<u64>,
        started: u64,
    ) -> bool {
        let Some(s) = self.slot_mut(worker) else {
            return false;
        };
        let hit = Self::runs_job(s, jobs, started);
        if hit {
            s.serving = false;
            s.killing = true;
        }
        hit
    }

    fn runs_job(s: &Slot<U>, jobs: &HashSet<u64>, started: u64) -> bool {
        let Some(running) = started.checked_sub(1) else {
            return false;
        };
        s.inflight
            .iter()
            .any(|f| jobs.contains(&f.unit.job()) && f.unsettled(running))
    }

    /// For a worker halted when it had started `started` items: the stream
    /// index past the batch it was in (it may go on with it), or `started`
    /// if it was between batches or in an eager batch (it looks at the mark
    /// before each item of those). Nothing after it starts.
    pub(crate) fn batch_end(&self, worker: u64, started: u64) -> u64 {
        let Some(running) = started.checked_sub(1) else {
            return started;
        };
        let end = self.slot(worker).and_then(|s| {
            s.inflight.iter().find_map(|f| {
                // An eager batch's worker looks at the mark before each
                // item: it goes no further.
                let end = match f.unit.timeout() {
                    Some(_) => started,
                    None => f.stream(f.unit.delivered() + f.unit.remaining()),
                };
                (f.stream(f.sent_from) <= running && running < end).then_some(end)
            })
        });
        end.unwrap_or(started).max(started)
    }
}
