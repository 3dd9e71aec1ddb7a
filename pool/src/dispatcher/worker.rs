//! One worker as the dispatcher sees it: its process, pipes, decoder,
//! in-flight batches and fate.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
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
}

#[derive(Debug)]
pub(super) struct Worker {
    pub(super) process: WorkerProcess,
    pub(super) pid: u32,
    pub(super) pidfd: Option<OwnedFd>,
    /// `None` once closed (a retiring worker).
    pub(super) to: Option<File>,
    pub(super) from: File,
    pub(super) decoder: FrameDecoder,
    /// Bytes for the worker; `out[written..]` is pending.
    pub(super) out: Vec<u8>,
    pub(super) written: usize,
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
            && self.phase == Phase::Ready
            && self.inflight.len() < depth
            && max_tasks.is_none_or(|m| self.assigned < m)
    }

    pub(super) fn wants_write(&self) -> bool {
        self.to.is_some() && self.written < self.out.len()
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
        let Some(to) = &mut self.to else {
            self.out.clear();
            self.written = 0;
            return;
        };
        while self.written < self.out.len() {
            match to.write(&self.out[self.written..]) {
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // EPIPE: the worker is gone, which its pidfd or read side
                // reports. Drop what cannot be written.
                Err(_) => self.written = self.out.len(),
            }
        }
        if self.written == self.out.len() {
            self.out.clear();
            self.written = 0;
        }
    }
}
