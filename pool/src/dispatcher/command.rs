//! Messages from callers to the dispatcher, and how they wake it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::Sender;
use nix::sys::eventfd::EventFd;

use super::Batch;
use super::conn::Lost;
use super::lane::Loan;

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
    /// A lent worker failed its caller: settle the batch and the worker.
    LaneFailed {
        loan: Box<Loan>,
        batch: Batch,
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
    /// Wakes the dispatcher (to look at the lanes).
    pub(crate) fn wake(&self) {
        self.waker.wake();
    }

    /// Sends a command; gives it back if the dispatcher has exited.
    pub(crate) fn send(&self, cmd: Command) -> Result<(), Command> {
        self.tx.send(cmd).map_err(|e| e.0)?;
        self.waker.wake();
        Ok(())
    }
}
