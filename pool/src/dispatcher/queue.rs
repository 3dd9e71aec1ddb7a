//! Handing queued work to workers, recycling used-up workers, and acting
//! on deadlines the settlement core reports.

use std::collections::HashSet;
use std::time::Instant;

use super::batch::Counters;
use super::conn::Conn;
use super::{Dispatcher, Phase, Worker};
use crate::supervisor::RELAY_SLACK;

/// A local worker that counts what it starts may be fed deeper than the
/// base pipeline while its batches are fast (`pace.rs`).
fn goes_deep(conn: &Conn) -> bool {
    conn.counts() && !conn.remote
}

impl Dispatcher {
    /// Hands queued batches to ready workers: first one to each idle
    /// worker (a round in which no worker holds more than one), then one
    /// more to each in turn, while any takes one, up to `pipeline` per
    /// worker, or deeper for a local worker whose batches come back fast
    /// (`pace.rs`).
    pub(super) fn dispatch(&mut self, now: Instant) {
        self.dispatch_round(1, now);
        while self.settle.queued() && self.dispatch_round(self.config.pipeline, now) {}
        // Callers size their windows of small chunks by the deepest
        // pipeline (`Inner::window`).
        let base = self.config.pipeline;
        let deepest = self
            .workers
            .iter()
            .filter(|w| w.conn.as_ref().is_some_and(goes_deep))
            .map(|w| self.settle.depth(w.slot, base, now))
            .max()
            .unwrap_or(base);
        self.shared.set_depth(deepest);
    }

    /// Offers each ready worker one batch, if it holds fewer than `depth`
    /// (see [`dispatch`](Self::dispatch)). Whether any was handed out.
    fn dispatch_round(&mut self, depth: usize, now: Instant) -> bool {
        let max = self.config.max_tasks_per_worker;
        let mut any = false;
        for i in 0..self.workers.len() {
            let w = &mut self.workers[i];
            if !w.serving() || w.phase != Phase::Ready {
                continue;
            }
            let Some(conn) = w.conn.as_mut() else {
                continue;
            };
            // A worker that does not count is sent one batch at a
            // time: were it killed, all it was sent counts as run,
            // so nothing queued behind may be in its pipe. (A
            // remote worker's relay holds a pipelined batch until
            // the pool's go-ahead, which makes it as safe, but no
            // further ahead than that.)
            let depth = if conn.counts() || conn.remote {
                depth
            } else {
                1
            };
            let deep = goes_deep(conn);
            if max.is_some_and(|m| conn.items_sent() >= m) {
                continue;
            }
            let (first, run) = (conn.items_sent(), conn.runs_sent());
            let Some((id, batch)) = self.settle.dispatch(w.slot, depth, deep, first, run, now)
            else {
                continue;
            };
            any = true;
            let job = &batch.job;
            let eager = job.timeout.is_some();
            if let Err(len) = conn.queue_run(id, job.task, eager, batch.items()) {
                self.settle.refuse(w.slot, len, self.config.max_frame);
            }
        }
        any
    }

    /// Workers that reached `max_tasks_per_worker` and finished their work
    /// get their input closed: they exit on their own and are replaced.
    pub(super) fn retire_used_up(&mut self) {
        let Some(max) = self.config.max_tasks_per_worker else {
            return;
        };
        let mut retired = false;
        for w in &mut self.workers {
            let serving = w.serving();
            let Some(conn) = &mut w.conn else { continue };
            if serving && conn.items_sent() >= max && self.settle.in_flight(w.slot) == 0 {
                log::debug!("procpool: recycling worker {} after {max} tasks", conn.pid);
                w.retiring = true;
                conn.close_input();
                self.settle.retire(w.slot);
                Counters::bump(&self.shared.stats.recycles);
                retired = true;
            }
        }
        if retired {
            self.publish_pids();
        }
    }

    /// Running items past their deadline fail (the core decides); their
    /// workers are killed (the supervisor carries it out) and replaced.
    pub(super) fn expire_deadlines(&mut self, now: Instant) {
        let workers = &self.workers;
        let started = |slot| conn_of(workers, slot).map_or(0, Conn::started);
        for expired in self.settle.expire(now, started) {
            Counters::bump(&self.shared.stats.timeouts);
            let Some(i) = self.index(expired.worker) else {
                continue;
            };
            self.stop_worker(i, now);
            let w = &self.workers[i];
            log::warn!(
                "procpool: task `{}` in worker {} passed its {:?} deadline{}; \
                 sent SIGTERM to it and its descendants (SIGKILL in {:?})",
                expired.task,
                w.process.pid(),
                expired.timeout,
                if expired.started {
                    ""
                } else {
                    " before the worker even started it"
                },
                self.config.kill_grace
            );
        }
    }

    /// The callers of `jobs` cancelled them: the core fails their queued
    /// items and marks their batches in flight to be skipped. A worker
    /// running one of their items is halted (it starts no new batch), then
    /// asked again: if it still runs that item it is killed (like at a
    /// deadline) and replaced; if the item ended meanwhile, the worker only
    /// retires, finishing what it runs now (another caller's), so no other
    /// job's item is caught by the kill.
    pub(super) fn cancel(&mut self, jobs: &HashSet<u64>, now: Instant) {
        let workers = &self.workers;
        let conn = |slot| conn_of(workers, slot);
        // A remote worker's skip bits are its relay's: they go in frames.
        let mut remote = Vec::new();
        let skip = |slot, run| {
            if let Some(c) = conn(slot) {
                c.skip(run);
                if c.remote {
                    remote.push((slot, run));
                }
            }
        };
        let started = |slot| conn(slot).and_then(Conn::started_exact);
        let running = self.settle.cancel(jobs, skip, started);
        // The relay kills by itself; were it not to answer, the launcher
        // is killed when the grace and the slack are over (as after a
        // `Kill` frame), so a cancel never waits for ever.
        let due = crate::sys::after(now, self.config.kill_grace.saturating_add(RELAY_SLACK));
        for (slot, run) in remote {
            if let Some(i) = self.index(slot) {
                let w = &mut self.workers[i];
                if let Some(c) = &mut w.conn {
                    c.cancel_remote(run);
                    if let Some(at) = due {
                        w.relay_cancels.push((run, at));
                    }
                }
            }
        }
        for slot in running {
            let Some(i) = self.index(slot) else { continue };
            if self.workers[i].process.killing() {
                continue;
            }
            let Some(started) = self.workers[i].conn.as_mut().and_then(Conn::halt) else {
                continue;
            };
            let pid = self.workers[i].process.pid();
            if self.settle.runs_cancelled(slot, jobs, started) {
                self.stop_worker(i, now);
                log::info!(
                    "procpool: a task running in worker {pid} was cancelled; sent SIGTERM to it and \
                     its descendants (SIGKILL in {:?})",
                    self.config.kill_grace
                );
            } else {
                // Halted: it ends at its next batch, or at the end of input.
                let w = &mut self.workers[i];
                w.retiring = true;
                if let Some(c) = &mut w.conn {
                    c.close_input();
                }
                self.settle.retire(slot);
                self.publish_pids();
            }
        }
    }

    /// Remote workers whose relay was sent a `Cancel` and, by its
    /// deadline, neither killed the worker nor let the cancelled batch
    /// end: the relay is not answering (stopped, or its host hung) and its
    /// launcher is killed. The loss that follows settles the batch (its
    /// items end `Cancelled`).
    pub(super) fn expire_relay_cancels(&mut self, now: Instant) {
        for w in &mut self.workers {
            if w.relay_cancels.is_empty() {
                continue;
            }
            let (due, later): (Vec<_>, Vec<_>) =
                w.relay_cancels.iter().partition(|&&(_, at)| now >= at);
            w.relay_cancels = later;
            let unanswered = due
                .iter()
                .any(|&(run, _)| self.settle.holds_run(w.slot, run));
            // (One whose launcher ended waits for its stream's end, or
            // its report, which says what the relay did.)
            if unanswered && !w.process.killing() && w.stream_due.is_none() {
                log::warn!(
                    "procpool: the relay of worker {} on {} did not carry out a cancel within \
                     {:?}; killing its launcher",
                    w.remote_pid.unwrap_or_else(|| w.process.pid()),
                    w.process.remote.as_deref().unwrap_or("?"),
                    self.config.kill_grace.saturating_add(RELAY_SLACK)
                );
                w.process.kill();
            }
        }
    }

    /// Kills worker `i` the deadline way: halted (it starts no new batch),
    /// no more input (a worker that outlives SIGTERM, or a thread, which no
    /// signal stops, ends at the end of what it has), SIGTERM to it and
    /// its tree, SIGKILL after the grace.
    fn stop_worker(&mut self, i: usize, now: Instant) {
        let w = &mut self.workers[i];
        if let Some(c) = &mut w.conn {
            // Halted first: an item that ends in the grace is not followed
            // by another caller's batch, which the kill would then catch.
            c.halt();
            c.stop();
        }
        w.process.terminate(now, self.config.kill_grace);
        self.publish_pids();
    }
}

/// The connection of worker `slot`, if it is in the loop's hands (not lent).
/// A free function, so the core can be borrowed mutably beside it.
fn conn_of(workers: &[Worker], slot: u64) -> Option<&Conn> {
    let w = workers.iter().find(|w| w.slot == slot)?;
    w.conn.as_ref()
}
