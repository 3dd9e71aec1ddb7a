//! Messages from callers to the dispatcher, and how they wake it.

use std::collections::HashSet;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::Sender;
use nix::sys::eventfd::EventFd;

use crossbeam_channel::TryRecvError;

use super::conn::Lost;
use super::lane::Loan;
use super::settle;
use super::{Batch, Dispatcher, Loss, Stage};
use crate::error::{Error, ErrorKind};

/// What callers ask of the dispatcher.
#[derive(Debug)]
pub(crate) enum Command {
    Submit(Batch),
    /// Finish the queued work (lent workers included), then stop the
    /// workers and exit.
    Join,
    /// Fail all unfinished work, stop the workers (SIGTERM, grace,
    /// SIGKILL) and exit. A second one escalates to SIGKILL at once.
    Terminate,
    /// The caller of this job cancelled it: fail what is queued, skip what
    /// is sent, kill what runs.
    Cancel(u64),
    /// Tests only: the dispatcher panics here, to prove what a panic does.
    #[cfg(test)]
    Panic,
    /// A lent worker comes back while the dispatcher wants it (or used up);
    /// `abandoned`: its caller unwound in the middle of a call.
    GiveBack {
        loan: Box<Loan>,
        abandoned: bool,
    },
    /// Memfds of large arguments whose batch is done: closed here, off the
    /// caller's path (the last close of a payload frees its pages, a
    /// tenth of a millisecond per MiB).
    Release(Box<[OwnedFd]>),
    /// A lent worker failed its caller: settle the batch and the worker.
    LaneFailed {
        loan: Box<Loan>,
        batch: Box<Batch>,
        /// The batch's id in its `Run` frame: a `Done` for it that comes
        /// after all (read by the dispatcher) still settles it.
        id: u64,
        /// Stream index of the batch's item on that worker.
        first: u64,
        lost: Lost,
    },
}

/// Wakes the dispatcher out of its wait, with one eventfd write only when
/// it is (about to be) asleep: while it is busy, submissions cost no
/// syscall.
#[derive(Debug)]
pub(crate) struct Waker {
    pub(crate) fd: EventFd,
    pub(crate) sleeping: AtomicBool,
}

impl Waker {
    /// Callers: after queueing a command.
    pub(crate) fn wake(&self) {
        if self.sleeping.swap(false, Ordering::SeqCst) {
            // A full eventfd counter (impossible in practice) still wakes.
            let _ = self.fd.write(1);
        }
    }
}

/// The callers' side of the dispatcher.
#[derive(Debug)]
pub(crate) struct Handle {
    pub(crate) tx: Sender<Command>,
    pub(crate) waker: Arc<Waker>,
}

impl Handle {
    /// Sends a command; gives it back if the dispatcher has exited.
    pub(crate) fn send(&self, cmd: Command) -> Result<(), Command> {
        self.tx.send(cmd).map_err(|e| e.0)?;
        self.waker.wake();
        Ok(())
    }
}

impl Dispatcher {
    /// Takes every command waiting, in order.
    pub(super) fn drain_commands(&mut self) {
        // Cancels are gathered and carried out in one pass over the queue.
        let mut cancels = HashSet::new();
        self.take_commands(&mut cancels);
        if !cancels.is_empty() {
            self.cancel(&cancels, std::time::Instant::now());
        }
    }

    fn take_commands(&mut self, cancels: &mut HashSet<u64>) {
        loop {
            match self.rx.try_recv() {
                Ok(Command::Submit(batch)) => match self.stage {
                    // Chunks of jobs started before `close()` still run:
                    // only new jobs are refused, by the caller.
                    Stage::Open | Stage::Joining => self.settle.submit(batch),
                    _ => drop(batch),
                },
                Ok(Command::Join) => {
                    if self.stage == Stage::Open {
                        self.stage = Stage::Joining;
                    }
                }
                Ok(Command::Terminate) => self.terminate(),
                Ok(Command::Cancel(job)) => {
                    cancels.insert(job);
                }
                Ok(Command::GiveBack { loan, abandoned }) => self.give_back(*loan, abandoned),
                Ok(Command::Release(fds)) => drop(fds),
                #[cfg(test)]
                Ok(Command::Panic) => panic!("injected by a test"),
                Ok(Command::LaneFailed {
                    loan,
                    batch,
                    id,
                    first,
                    lost,
                }) => {
                    let slot = loan.slot;
                    if self.stage == Stage::Terminating {
                        settle::fail(*batch, Error::new(ErrorKind::Terminated));
                    } else {
                        self.settle.hand_back(slot, id, *batch, first);
                    }
                    self.unlend(*loan);
                    let loss = match lost {
                        // Its end, seen by the caller: as if seen here.
                        Lost::Exited => self.ended(slot),
                        Lost::Violation(v) => Some(Loss::Violation(v)),
                        Lost::Stopped => Some(Loss::Exited),
                    };
                    if let Some(loss) = loss {
                        self.lose(slot, loss);
                    }
                }
                Err(TryRecvError::Empty) => return,
                // Every handle is gone without a Terminate: stop.
                Err(TryRecvError::Disconnected) => return self.terminate(),
            }
        }
    }
}
