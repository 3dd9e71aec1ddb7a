//! One worker as the dispatcher sees it: its process, pipes, decoder,
//! in-flight batches and fate.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use procpool_protocol::FrameDecoder;

use super::Batch;
use crate::supervisor::WorkerProcess;

/// How far a worker got in starting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Waiting for the preamble (`preamble_ok: false`), then `Hello`.
    Handshake {
        preamble_ok: bool,
    },
    /// Waiting for the initializer's outcome.
    Init,
    Ready,
}

/// What is to become of a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fate {
    Serving,
    /// Used up: its input was closed, it will exit on its own.
    Retiring,
    /// Past a deadline: SIGTERM sent; SIGKILL at `kill_at` unless `killed`.
    Killing {
        kill_at: Instant,
        killed: bool,
    },
}

/// A batch sent to a worker.
#[derive(Debug)]
pub(super) struct InFlight {
    pub(super) id: u64,
    pub(super) batch: Batch,
    /// The worker reports each outcome before starting the next item.
    pub(super) eager: bool,
    /// Chunk index of the next outcome the worker will report.
    pub(super) cursor: u32,
    /// Chunk index of the item failed by its deadline.
    pub(super) timed_out: Option<u32>,
    /// Position in the worker's input stream where this batch's frame
    /// ends: until that much is written, the worker cannot have started it.
    pub(super) frame_end: u64,
}

#[derive(Debug)]
pub(super) struct Worker {
    pub(super) process: WorkerProcess,
    /// The dispatcher's id for this worker (pids can repeat over time).
    pub(super) slot: u64,
    pub(super) pid: u32,
    /// Lent to the direct lane: the dispatcher does not read its pipe.
    pub(super) parked: bool,
    /// Its pidfd fired while a caller had it: that caller reports back.
    pub(super) lent_and_dead: bool,
    pub(super) pidfd: Option<OwnedFd>,
    /// `None` once closed (a retiring worker).
    pub(super) to: Option<File>,
    /// A write failed (EPIPE): the worker is gone; write no more.
    pub(super) pipe_broken: bool,
    pub(super) from: File,
    pub(super) decoder: FrameDecoder,
    /// Bytes for the worker; `out[written..]` is pending.
    pub(super) out: Vec<u8>,
    pub(super) written: usize,
    /// Stream position of `out[0]`: bytes written before this buffer.
    pub(super) out_base: u64,
    pub(super) phase: Phase,
    pub(super) fate: Fate,
    pub(super) inflight: VecDeque<InFlight>,
    /// Start-up deadline (handshake and initializer).
    pub(super) startup_deadline: Instant,
    /// When the running item started, at the latest: the last frame from
    /// the worker, or the dispatch of a batch to it while idle.
    pub(super) progress_at: Instant,
    /// When bytes last arrived (a half-written frame must not stall).
    pub(super) last_bytes_at: Instant,
    /// Items dispatched to it, for `max_tasks_per_worker`.
    pub(super) assigned: u64,
}

impl Worker {
    pub(super) fn serving(&self) -> bool {
        self.fate == Fate::Serving
    }

    pub(super) fn dispatchable(&self, depth: usize, max_tasks: Option<u64>) -> bool {
        self.serving()
            && !self.parked
            && self.phase == Phase::Ready
            && self.inflight.len() < depth
            && max_tasks.is_none_or(|m| self.assigned < m)
    }

    /// Idle, with nothing pending either way: it may be lent to the lane.
    pub(super) fn parkable(&self) -> bool {
        self.serving()
            && !self.parked
            && self.phase == Phase::Ready
            && self.inflight.is_empty()
            && self.to.is_some()
            && !self.pipe_broken
            && self.out.is_empty()
            && self.decoder.buffered() == 0
    }

    pub(super) fn wants_write(&self) -> bool {
        self.to.is_some() && !self.pipe_broken && self.written < self.out.len()
    }

    /// Stream position up to which the worker read its input: what was
    /// written, less what still sits unread in the pipe.
    pub(super) fn read_to(&self) -> u64 {
        let unread = self
            .to
            .as_ref()
            .and_then(|to| crate::sys::pipe_unread(to.as_fd()))
            .unwrap_or(0);
        self.written_to().saturating_sub(unread)
    }

    /// Stream position up to which the worker's input was written.
    pub(super) fn written_to(&self) -> u64 {
        self.out_base + self.written as u64
    }

    /// Stream position of the end of what was queued for the worker.
    pub(super) fn queued_to(&self) -> u64 {
        self.out_base + self.out.len() as u64
    }

    /// The instant something must happen to this worker, if any: start-up
    /// deadline, task deadline, SIGKILL time, or frame stall.
    pub(super) fn next_deadline(&self, stall: Duration) -> Option<Instant> {
        let mut next = match self.fate {
            Fate::Killing {
                kill_at,
                killed: false,
            } => Some(kill_at),
            _ => None,
        };
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        if self.phase != Phase::Ready {
            consider(self.startup_deadline);
        }
        if let Some(t) = self.task_deadline() {
            consider(t);
        }
        if self.decoder.buffered() > 0 {
            consider(self.last_bytes_at + stall);
        }
        next
    }

    /// When the running item's deadline passes, for a serving worker whose
    /// running batch has one and has not yet timed out.
    pub(super) fn task_deadline(&self) -> Option<Instant> {
        if !self.serving() || self.phase != Phase::Ready {
            return None;
        }
        let front = self.inflight.front()?;
        if front.timed_out.is_some() {
            return None;
        }
        front.batch.job.timeout.map(|t| self.progress_at + t)
    }

    /// Writes pending output without blocking.
    pub(super) fn flush(&mut self) {
        // No input any more (retiring), or it broke (EPIPE: the worker is
        // gone, which its pidfd or read side reports). What stays unwritten
        // was never received: `written_to` says so to the settling code.
        let Some(to) = &mut self.to else {
            return;
        };
        if self.pipe_broken {
            return;
        }
        while self.written < self.out.len() {
            match to.write(&self.out[self.written..]) {
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.pipe_broken = true;
                    return;
                }
            }
        }
        if self.written == self.out.len() {
            self.out_base += self.out.len() as u64;
            self.out.clear();
            self.written = 0;
        }
    }
}
