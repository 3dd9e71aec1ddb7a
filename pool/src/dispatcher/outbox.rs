//! Where a job's messages go, from the dispatcher (or a lane caller) to
//! the job's caller: a channel for a job of many items, a slot in the job
//! itself for a job of one item (`apply`, `apply_async`).
//!
//! A job of one item gets exactly one message: its item ends once, in one
//! `Part` or one `Failed`. A slot holds it with no allocation of its own,
//! where a channel costs an aligned allocation, a free and its wakers on
//! every call: under cachegrind, a quarter of the instructions the caller's
//! side of an `apply` ran.

use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Condvar, Mutex};

use super::ChunkMsg;

/// The sending side, held by the job.
#[derive(Debug)]
pub(crate) enum Outbox {
    Channel(Sender<ChunkMsg>),
    Slot {
        msg: Mutex<SlotState>,
        ready: Condvar,
    },
}

/// What a job's slot holds.
#[derive(Debug)]
pub(crate) enum SlotState {
    /// Nothing yet (or the message was taken).
    Empty,
    Full(ChunkMsg),
    /// The caller dropped its handle: a message is discarded at once, as a
    /// channel with no receiver discards it, not kept with the job (which
    /// a `CancelHandle` may keep alive long after, and the message may
    /// hold a large result's shared memory).
    Closed,
}

impl SlotState {
    fn take(&mut self) -> Option<ChunkMsg> {
        match std::mem::replace(self, Self::Empty) {
            Self::Full(m) => Some(m),
            Self::Empty => None,
            Self::Closed => {
                *self = Self::Closed;
                None
            }
        }
    }
}

/// The receiving side, held by the job's caller (beside the job).
#[derive(Debug)]
pub(crate) enum Inbox {
    Channel(Receiver<ChunkMsg>),
    /// The job's own slot.
    Slot,
}

impl Outbox {
    /// A slot for a job of one item (`single`), else a channel.
    pub(crate) fn new(single: bool) -> (Self, Inbox) {
        if single {
            let slot = Self::Slot {
                msg: Mutex::new(SlotState::Empty),
                ready: Condvar::new(),
            };
            (slot, Inbox::Slot)
        } else {
            let (tx, rx) = crossbeam_channel::unbounded();
            (Self::Channel(tx), Inbox::Channel(rx))
        }
    }

    /// Never blocks.
    pub(crate) fn send(&self, m: ChunkMsg) {
        match self {
            // The job holds the receiver's partner: connected while the
            // job lives; a caller that dropped its handle discards.
            Self::Channel(tx) => drop(tx.send(m)),
            Self::Slot { msg, ready } => {
                let mut slot = msg.lock();
                match &*slot {
                    // Dropped once the lock is released.
                    SlotState::Closed => {
                        drop(slot);
                        drop(m);
                    }
                    state => {
                        debug_assert!(
                            matches!(state, SlotState::Empty),
                            "a second message for a job of one item"
                        );
                        *slot = SlotState::Full(m);
                        ready.notify_all();
                    }
                }
            }
        }
    }
}

impl Inbox {
    /// The job's channel, for a job of many items.
    pub(crate) fn into_channel(self) -> Receiver<ChunkMsg> {
        match self {
            Self::Channel(rx) => rx,
            Self::Slot => unreachable!("a job of many items has a channel"),
        }
    }

    /// The next message of `outbox` (the job's), waiting until `deadline`
    /// (`None`: as long as it takes); `None` if the deadline came first.
    pub(crate) fn recv(&self, outbox: &Outbox, deadline: Option<Instant>) -> Option<ChunkMsg> {
        match (self, outbox) {
            (Self::Channel(rx), _) => match deadline {
                // The job holds a sender, so the channel stays connected.
                None => Some(rx.recv().expect("the job holds a sender")),
                Some(d) => rx.recv_deadline(d).ok(),
            },
            (Self::Slot, Outbox::Slot { msg, ready }) => {
                let mut slot = msg.lock();
                loop {
                    if let Some(m) = slot.take() {
                        return Some(m);
                    }
                    match deadline {
                        None => ready.wait(&mut slot),
                        Some(d) => {
                            if ready.wait_until(&mut slot, d).timed_out() {
                                return slot.take();
                            }
                        }
                    }
                }
            }
            (Self::Slot, Outbox::Channel(_)) => unreachable!("a slot's job has a slot"),
        }
    }

    /// The next message of `outbox` if there is one already.
    pub(crate) fn try_recv(&self, outbox: &Outbox) -> Option<ChunkMsg> {
        match (self, outbox) {
            (Self::Channel(rx), _) => rx.try_recv().ok(),
            (Self::Slot, Outbox::Slot { msg, .. }) => msg.lock().take(),
            (Self::Slot, Outbox::Channel(_)) => unreachable!("a slot's job has a slot"),
        }
    }

    /// The caller's handle is dropped: what is in the slot, and whatever
    /// comes later, is discarded (a channel's receiver going does as much).
    pub(crate) fn close(&self, outbox: &Outbox) {
        if let (Self::Slot, Outbox::Slot { msg, .. }) = (self, outbox) {
            let old = std::mem::replace(&mut *msg.lock(), SlotState::Closed);
            drop(old);
        }
    }
}
