//! The direct lane: lending idle workers to blocking callers.
//!
//! A blocking `apply` through the dispatcher crosses four threads (caller →
//! dispatcher → worker → dispatcher → caller); a raw pipe round trip crosses
//! two. So while nothing is queued, the dispatcher *lends* its idle workers:
//! it moves each one's [`Conn`] into [`Lanes`] (and stops reading its pipe;
//! it keeps watching its pidfd). A blocking `apply` without a deadline takes
//! one, writes its one-item `Run` frame and reads the `Done` frame on its
//! own thread, through the same `Conn` the loop uses, then gives it back.
//!
//! The lane decides nothing. Its batch reports a checked `Done` exactly as
//! the loop's would; on anything else (the worker's end, a violation, a
//! stall) it hands the batch and the worker back to the dispatcher
//! ([`Command::LaneFailed`](super::Command::LaneFailed)), whose settlement
//! core settles them like any loss: the worker's progress counter says
//! whether the item started.
//!
//! The dispatcher takes workers back when it has queued work, is stopping,
//! or saw a lent worker die: it sets `wanted`, so callers stop taking
//! workers and wake it when they give one back.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use procpool_protocol::{FromWorker, decode_from_worker};

use super::conn::{self, Conn, Lost, Violation};
use super::settle;
use super::{Batch, Command, Dispatcher, Handle, Loss, Phase};

/// Batch ids the lane uses: far from the dispatcher's, so a mix-up shows.
const LANE_IDS: u64 = 1 << 62;

/// A worker lent out by the dispatcher.
#[derive(Debug)]
pub(crate) struct Loan {
    /// The dispatcher's id for the worker.
    pub(crate) slot: u64,
    pub(crate) conn: Conn,
    pidfd: Option<OwnedFd>,
    /// `max_tasks_per_worker`: a worker that reached it goes back.
    max_items: Option<u64>,
    stall: Duration,
    max_frame: u32,
    next_id: u64,
}

impl Loan {
    pub(crate) fn new(
        slot: u64,
        conn: Conn,
        pidfd: Option<OwnedFd>,
        max_items: Option<u64>,
        stall: Duration,
        max_frame: u32,
    ) -> Self {
        Self {
            slot,
            conn,
            pidfd,
            max_items,
            stall,
            max_frame,
            next_id: LANE_IDS,
        }
    }

    fn used_up(&self) -> bool {
        self.max_items.is_some_and(|m| self.conn.items_sent() >= m)
    }
}

/// Where lent workers wait, shared by the dispatcher and the callers.
#[derive(Debug, Default)]
pub(crate) struct Lanes {
    /// Free for a caller to take.
    parked: Mutex<Vec<Loan>>,
    /// The dispatcher wants its workers back: callers take none, and wake
    /// it when they give one back.
    wanted: AtomicBool,
}

impl Lanes {
    /// A lent worker, if one is free and the dispatcher does not want it.
    pub(crate) fn take(&self) -> Option<Loan> {
        if self.wanted.load(Ordering::Acquire) {
            return None;
        }
        self.parked.lock().pop()
    }

    /// Lends a worker (dispatcher) or gives one back (caller). `true` if
    /// the dispatcher wants it and must be woken.
    pub(crate) fn park(&self, loan: Loan) -> bool {
        let used_up = loan.used_up();
        self.parked.lock().push(loan);
        if used_up {
            self.wanted.store(true, Ordering::Release);
        }
        self.wanted.load(Ordering::Acquire)
    }

    /// The dispatcher takes back every worker not in use, and asks for the
    /// others.
    pub(crate) fn reclaim(&self) -> Vec<Loan> {
        self.wanted.store(true, Ordering::Release);
        std::mem::take(&mut *self.parked.lock())
    }

    /// The dispatcher has every worker back and lends again.
    pub(crate) fn resume(&self) {
        self.wanted.store(false, Ordering::Release);
    }
}

/// Runs `batch` (one item) on the lent worker from the calling thread.
/// On success the outcome is in the batch's channel and the worker is
/// given back; otherwise both go to the dispatcher to be settled.
pub(crate) fn run(mut loan: Loan, mut batch: Batch, lanes: &Lanes, handle: &Handle) {
    let id = loan.next_id;
    loan.next_id += 1;
    let first = match loan
        .conn
        .queue_run(id, batch.job.task, false, batch.items())
    {
        Ok(first) => first,
        Err(len) => {
            settle::unsendable(batch, len, loan.max_frame);
            give_back(loan, lanes, handle);
            return;
        }
    };
    match exchange(&mut loan, &mut batch) {
        Ok(()) => give_back(loan, lanes, handle),
        Err(lost) => {
            // If the dispatcher is gone, the batch's Drop fails the item
            // with the pool's state.
            let _ = handle.send(Command::LaneFailed {
                loan: Box::new(loan),
                batch,
                first,
                lost,
            });
        }
    }
}

fn give_back(loan: Loan, lanes: &Lanes, handle: &Handle) {
    if lanes.park(loan) {
        handle.wake();
    }
}

fn exchange(loan: &mut Loan, batch: &mut Batch) -> Result<(), Lost> {
    let pidfd = loan.pidfd.as_ref().map(|p| p.as_fd());
    loan.conn.flush_blocking(pidfd)?;
    while batch.remaining() > 0 {
        let frame = loan.conn.read_blocking(pidfd, loan.stall)?;
        match conn::done_header(&frame).map_err(Lost::Violation)? {
            Some((b, n)) => {
                loan.conn.check_done(b, n).map_err(Lost::Violation)?;
                batch.deliver(n, 0, loan.conn.pid, frame);
            }
            None => match decode_from_worker(&frame) {
                Ok(FromWorker::Log(record)) => {
                    conn::forward_log(loan.conn.pid, Some(&batch.job.task_name), record);
                }
                Ok(_) => {
                    return Err(Lost::Violation(Violation::Protocol(
                        "unexpected message".into(),
                    )));
                }
                Err(e) => return Err(Lost::Violation(Violation::Protocol(e.to_string()))),
            },
        }
    }
    Ok(())
}

/// The dispatcher's side: lending and taking back.
impl Dispatcher {
    /// Lends every idle worker to the direct lane, while nothing is queued.
    pub(super) fn lend_idle(&mut self) {
        if self.settle.queued() || self.starting.is_some() {
            return;
        }
        let max = self.config.max_tasks_per_worker;
        for w in &mut self.workers {
            let lendable = w.serving()
                && w.phase == Phase::Ready
                && self.settle.in_flight(w.slot) == 0
                && w.conn
                    .as_ref()
                    .is_some_and(|c| c.quiet() && max.is_none_or(|m| c.items_sent() < m));
            if !lendable {
                continue;
            }
            // Out of descriptors: this worker stays with the dispatcher.
            let pidfd = match w
                .process
                .pidfd()
                .map(|p| p.try_clone_to_owned())
                .transpose()
            {
                Ok(p) => p,
                Err(e) => {
                    log::debug!("procpool: cannot lend a worker: {e}");
                    continue;
                }
            };
            let conn = w.conn.take().expect("checked");
            self.settle.lend(w.slot);
            self.shared.lanes.park(Loan::new(
                w.slot,
                conn,
                pidfd,
                max,
                self.config.stall_timeout,
                self.config.max_frame,
            ));
        }
        // Nothing is queued: callers may take workers again.
        self.shared.lanes.resume();
    }

    /// Takes back every lent worker not in use, and asks for the others
    /// (their callers give them back and wake us).
    pub(super) fn reclaim_lent(&mut self) {
        if self.workers.iter().all(|w| w.conn.is_some()) {
            return;
        }
        for loan in self.shared.lanes.reclaim() {
            let slot = loan.slot;
            if self.unlend(loan) {
                self.lose(slot, Loss::Exited);
            }
        }
    }

    /// A lent worker is the loop's again. `true` if it died meanwhile (the
    /// caller then settles it).
    pub(super) fn unlend(&mut self, loan: Loan) -> bool {
        let Some(i) = self.index(loan.slot) else {
            return false;
        };
        let w = &mut self.workers[i];
        w.conn = Some(loan.conn);
        self.settle.unlend(w.slot);
        w.dead_while_lent
    }
}
