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
use std::time::Duration;

use parking_lot::Mutex;
use procpool_protocol::{FromWorker, decode_from_worker};

use super::conn::{self, Conn, Lost, Violation, Watch};
use super::settle;
use super::{Batch, Command, Dispatcher, Handle, Loss, Phase, Stage};

/// Batch ids the lane uses: far from the dispatcher's, so a mix-up shows.
const LANE_IDS: u64 = 1 << 62;

/// A worker lent out by the dispatcher.
#[derive(Debug)]
pub(crate) struct Loan {
    /// The dispatcher's id for the worker.
    pub(crate) slot: u64,
    pub(crate) conn: Conn,
    pidfd: Option<OwnedFd>,
    /// The pool's stop pipe (read end).
    stop: Option<OwnedFd>,
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
        stop: Option<OwnedFd>,
        max_items: Option<u64>,
        stall: Duration,
        max_frame: u32,
    ) -> Self {
        Self {
            slot,
            conn,
            pidfd,
            stop,
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
///
/// `wanted` and the list change together under one lock, so a worker is
/// never parked where the dispatcher has stopped looking: while the
/// dispatcher wants its workers back, a caller hands its worker over
/// through the command channel (which wakes the dispatcher), never into
/// the list.
#[derive(Debug, Default)]
pub(crate) struct Lanes {
    inner: Mutex<Parked>,
}

#[derive(Debug, Default)]
struct Parked {
    /// Free for a caller to take (boxed: a loan is moved at every call,
    /// and a `Conn` is large).
    #[expect(clippy::vec_box, reason = "a boxed loan moves as one pointer")]
    free: Vec<Box<Loan>>,
    /// The dispatcher wants its workers back.
    wanted: bool,
}

impl Lanes {
    /// A lent worker, if one is free and the dispatcher does not want it.
    pub(crate) fn take(&self) -> Option<Box<Loan>> {
        let mut p = self.inner.lock();
        if p.wanted {
            return None;
        }
        p.free.pop()
    }

    /// Lends a worker (dispatcher) or gives one back (caller). A worker the
    /// dispatcher wants, or one used up by `max_tasks_per_worker`, is not
    /// parked but returned: the caller sends it to the dispatcher.
    fn park(&self, loan: Box<Loan>) -> Option<Box<Loan>> {
        let mut p = self.inner.lock();
        if p.wanted || loan.used_up() {
            return Some(loan);
        }
        p.free.push(loan);
        None
    }

    /// The dispatcher lends a worker (returned if it cannot be).
    pub(crate) fn lend(&self, loan: Box<Loan>) -> Option<Box<Loan>> {
        self.park(loan)
    }

    /// The dispatcher takes back every worker not in use, and asks for the
    /// others (their callers send them back through the channel).
    #[expect(clippy::vec_box, reason = "a boxed loan moves as one pointer")]
    pub(crate) fn reclaim(&self) -> Vec<Box<Loan>> {
        let mut p = self.inner.lock();
        p.wanted = true;
        std::mem::take(&mut p.free)
    }

    /// The dispatcher lends again.
    pub(crate) fn resume(&self) {
        self.inner.lock().wanted = false;
    }
}

/// A worker in a caller's hands. If the caller unwinds (a panicking
/// logger, say) the worker still goes back to the dispatcher, which ends
/// it: nothing is left waiting for a worker that never returns.
struct Held<'a> {
    loan: Option<Box<Loan>>,
    handle: &'a Handle,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Some(loan) = self.loan.take() {
            let _ = self.handle.send(Command::GiveBack {
                loan,
                abandoned: true,
            });
        }
    }
}

/// Runs `batch` (one item) on the lent worker from the calling thread.
/// On success the outcome is in the batch's channel and the worker is
/// given back; otherwise both go to the dispatcher to be settled.
pub(crate) fn run(loan: Box<Loan>, mut batch: Batch, lanes: &Lanes, handle: &Handle) {
    let mut held = Held {
        loan: Some(loan),
        handle,
    };
    let loan = held.loan.as_mut().expect("just set");
    let id = loan.next_id;
    loan.next_id += 1;
    let queued = loan
        .conn
        .queue_run(id, batch.job.task, false, batch.items());
    let outcome = match queued {
        Err(len) => {
            settle::unsendable(batch, len, loan.max_frame);
            Ok(None)
        }
        Ok(first) => match exchange(loan, &mut batch) {
            Ok(()) => Ok(Some(batch)),
            Err(lost) => Err((batch, id, first, lost)),
        },
    };
    let loan = held.loan.take().expect("still held");
    match outcome {
        Ok(done) => {
            // Large arguments' memfds are closed by the dispatcher: the
            // caller has its answer to decode.
            let fds = done.map(|mut b| b.release_shared()).unwrap_or_default();
            if !fds.is_empty() {
                let _ = handle.send(Command::Release(fds));
            }
            if let Some(loan) = lanes.park(loan) {
                let _ = handle.send(Command::GiveBack {
                    loan,
                    abandoned: false,
                });
            }
        }
        // If the dispatcher is gone, the batch's Drop fails the item with
        // the pool's state.
        Err((batch, id, first, lost)) => {
            let _ = handle.send(Command::LaneFailed {
                loan,
                batch: Box::new(batch),
                id,
                first,
                lost,
            });
        }
    }
}

/// Writes the task and reads its answer, with SIGPIPE blocked: a worker
/// that died makes the write fail with EPIPE, never kills the caller's
/// process (its SIGPIPE may be at the default action).
fn exchange(loan: &mut Loan, batch: &mut Batch) -> Result<(), Lost> {
    let sigpipe = crate::sys::SigpipeBlocked::new();
    let r = talk(loan, batch);
    if loan.conn.write_failed() {
        sigpipe.consume();
    }
    r
}

fn talk(loan: &mut Loan, batch: &mut Batch) -> Result<(), Lost> {
    let watch = Watch {
        pidfd: loan.pidfd.as_ref().map(|p| p.as_fd()),
        stop: loan.stop.as_ref().map(|p| p.as_fd()),
    };
    loan.conn.flush_blocking(watch)?;
    while batch.remaining() > 0 {
        let frame = loan.conn.read_blocking(watch, loan.stall)?;
        match conn::done_header(&frame).map_err(Lost::Violation)? {
            Some((b, n)) => {
                loan.conn.check_done(b, n).map_err(Lost::Violation)?;
                let frame = loan.conn.received(frame);
                batch.deliver(n, 0, loan.conn.pid, frame);
            }
            None => match decode_from_worker(&frame) {
                Ok(FromWorker::Log(record)) => {
                    let task = Some(&*batch.job.task_name);
                    match &loan.conn.host {
                        Some((host, pid)) => crate::supervisor::forward_remote_log(
                            pid.unwrap_or(loan.conn.pid),
                            host,
                            task,
                            record,
                        ),
                        None => crate::supervisor::forward_log(loan.conn.pid, task, record),
                    }
                }
                Ok(FromWorker::Shared { fds }) => {
                    loan.conn.take_shared(fds).map_err(Lost::Violation)?;
                }
                // A remote worker's relay: its worker has ended. The
                // dispatcher settles with what it said.
                Ok(FromWorker::Exited {
                    exit,
                    started,
                    halted_at,
                }) if loan.conn.remote => {
                    loan.conn.relay_exited(exit, started, halted_at);
                    return Err(Lost::Exited);
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
    /// Lends every idle worker to the direct lane, while nothing is queued
    /// and no lent worker is known dead (that one must come back first).
    pub(super) fn lend_idle(&mut self) {
        if self.settle.queued()
            || self.starting.is_some()
            || self.workers.iter().any(|w| w.dead_while_lent)
        {
            return;
        }
        // Callers may take workers again.
        self.shared.lanes.resume();
        let max = self.config.max_tasks_per_worker;
        for i in 0..self.workers.len() {
            let w = &mut self.workers[i];
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
            let stop = match self.stop.0.try_clone() {
                Ok(fd) => fd,
                Err(e) => {
                    log::debug!("procpool: cannot lend a worker: {e}");
                    continue;
                }
            };
            let conn = w.conn.take().expect("checked");
            self.settle.lend(w.slot);
            let loan = Box::new(Loan::new(
                w.slot,
                conn,
                pidfd,
                Some(stop),
                max,
                self.config.stall_timeout,
                self.config.max_frame,
            ));
            if let Some(loan) = self.shared.lanes.lend(loan) {
                self.unlend(*loan);
            }
        }
    }

    /// Takes back every lent worker not in use, and asks for the others
    /// (their callers send them back through the command channel).
    pub(super) fn reclaim_lent(&mut self) {
        if self.workers.iter().all(|w| w.conn.is_some()) {
            return;
        }
        for loan in self.shared.lanes.reclaim() {
            self.give_back(*loan, false);
        }
    }

    /// A lent worker came back: it is the loop's again. One that died
    /// meanwhile, or whose caller unwound mid-call (`abandoned`), is ended
    /// and replaced; one that comes back while the pool stops has its input
    /// closed.
    pub(super) fn give_back(&mut self, loan: Loan, abandoned: bool) {
        let slot = loan.slot;
        let died = self.unlend(loan);
        if abandoned {
            let loss = Loss::Violation(super::conn::Violation::Protocol(
                "its caller unwound in the middle of a call".into(),
            ));
            self.lose(slot, loss);
        } else if died && let Some(loss) = self.ended(slot) {
            self.lose(slot, loss);
        }
    }

    /// Puts a lent worker's connection back. `true` if it died while lent.
    pub(super) fn unlend(&mut self, loan: Loan) -> bool {
        let Some(i) = self.index(loan.slot) else {
            return false;
        };
        let stopping = matches!(self.stage, Stage::Draining { .. } | Stage::Terminating);
        let w = &mut self.workers[i];
        let mut conn = loan.conn;
        if stopping || w.retiring {
            conn.close_input();
        }
        w.conn = Some(conn);
        self.settle.unlend(w.slot);
        w.dead_while_lent
    }
}
