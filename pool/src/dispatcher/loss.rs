//! A worker's end: what it wrote before it, the wait for a remote
//! worker's stream to end after its launcher did, and the loss handed to
//! the settlement core with its cause (the death, the lost host, the
//! protocol violation), its replacement left to `keep_capacity`.

use std::time::Instant;

use procpool_protocol::exit_code;

use super::settle::Cause;
use super::startup::Phase;
use super::{Counters, Dispatcher, Loss, Stage};
use crate::error::Exit;
use crate::supervisor::RELAY_SLACK;
use crate::sys;

impl Dispatcher {
    /// Worker `slot`'s process ended (its pidfd fired): takes everything
    /// it wrote, and returns the loss to settle it with, or `None` while
    /// the rest of its stream is awaited (see [`Worker::stream_due`]).
    pub(super) fn ended(&mut self, slot: u64) -> Option<Loss> {
        let i = self.index(slot)?;
        match self.read_worker(slot, usize::MAX) {
            Err(loss) => Some(loss),
            Ok(()) if self.awaits_stream_end(i) => None,
            Ok(()) => Some(Loss::Exited),
        }
    }

    /// Whether worker `i`, whose launcher ended and whose stream is still
    /// open, is worth waiting for (`Worker::stream_awaited`). Its wait
    /// starts now, for at most [`RELAY_SLACK`], past which its connection
    /// counts as lost (see [`Worker::stream_due`]).
    fn awaits_stream_end(&mut self, i: usize) -> bool {
        let terminating = self.stage == Stage::Terminating;
        let w = &mut self.workers[i];
        let waits = w.stream_awaited(terminating);
        if waits && w.stream_due.is_none() {
            w.stream_due = sys::after(Instant::now(), RELAY_SLACK);
            // Its end is being handled: lending to callers goes on.
            w.dead_while_lent = false;
            log::debug!(
                "procpool: the launcher of worker {} ended before its stream; waiting for the rest",
                w.remote_pid.unwrap_or_else(|| w.process.pid())
            );
        }
        waits
    }

    /// Removes worker `slot`: ends and reaps it, settles what it held, and
    /// lets `keep_capacity` replace it.
    pub(super) fn lose(&mut self, slot: u64, loss: Loss) {
        let Some(i) = self.index(slot) else { return };
        let mut w = self.workers.swap_remove(i);
        self.publish_pids();
        let killed = w.process.killing();
        let exit = w.process.end();
        let host = w.process.remote.clone();
        // A remote worker's relay said how it ended; without that word,
        // the connection was lost (unless the pool ended it).
        let report = w.conn.as_ref().and_then(|c| c.relay_report());
        let exit = report.map_or(exit, |r| r.exit);
        let pid = w.remote_pid.unwrap_or_else(|| w.process.pid());
        let started = match &mut w.conn {
            // A detached thread may still be running. Halted, it starts no
            // new batch but may finish the one it is in: all of that batch
            // counts as started, the batches after it run elsewhere.
            Some(c) if w.process.detached() => match c.halt() {
                Some(at) => self.settle.batch_end(slot, at),
                None => c.items_sent(),
            },
            // Halted before it died: nothing past the batch it was in then
            // started. (Its counter may say one more: the first item of the
            // next batch, claimed and about to be taken back when it was
            // killed; that item never ran.)
            Some(c) => match c.halted_at() {
                Some(at) => c.started().min(self.settle.batch_end(slot, at)),
                None => c.started(),
            },
            None => 0,
        };
        let died = |exit| match &host {
            Some(h) => Cause::RemoteDied(exit, h.clone()),
            None => Cause::Died(exit),
        };
        if w.retiring && matches!(loss, Loss::Exited) {
            if exit != Exit::Code(0) && exit != Exit::Code(exit_code::HALTED) {
                log::warn!("procpool: recycled worker {pid} ended with {exit}");
            }
            self.settle.lost(slot, started, &died(exit));
            return;
        }
        if matches!(self.stage, Stage::Draining { .. } | Stage::Terminating) {
            log::debug!("procpool: worker {pid} stopped ({exit})");
            self.settle.lost(slot, started, &died(exit));
            return;
        }
        Counters::bump(&self.shared.stats.worker_deaths);
        let lost_host = host.is_some() && report.is_none() && !killed;
        if lost_host {
            // Its shared connection is gone too: the next worker opens
            // another before the rest follow.
            self.sites[w.site].connected = false;
        }
        if w.phase != Phase::Ready {
            self.settle.remove(slot);
            let error = self.startup_error(w.site, pid, exit, &loss, w.conn.as_ref());
            return self.start_failed(w.site, error);
        }
        let cause = match (&loss, &host) {
            // A remote worker's error names its host (the core knows it).
            (Loss::Violation(v), _) => Cause::Protocol(v.detail().to_owned()),
            (_, Some(h)) if lost_host => Cause::HostLost {
                host: h.clone(),
                detail: format!("its launcher ended ({exit}) with no word from the host"),
            },
            _ => died(exit),
        };
        let settled = self.settle.lost(slot, started, &cause);
        let at = host
            .as_ref()
            .map(|h| format!(" on {h}"))
            .unwrap_or_default();
        match settled.task {
            Some(task) => log::warn!(
                "procpool: worker {pid}{at} lost while running `{task}` ({}); {} item(s) failed, {} re-queued",
                loss_text(&loss, exit),
                settled.failed,
                settled.requeued
            ),
            None => log::warn!(
                "procpool: worker {pid}{at} lost while idle ({}); {} item(s) re-queued",
                loss_text(&loss, exit),
                settled.requeued
            ),
        }
        log::info!("procpool: replacing worker {pid}{at}");
    }
}

fn loss_text(loss: &Loss, exit: Exit) -> String {
    match loss {
        Loss::Exited => format!("{exit}"),
        Loss::Io(e) => format!("read error {e}; {exit}"),
        Loss::Violation(v) => format!("protocol error: {}", v.detail()),
        Loss::StartupTimeout => "start-up timed out".into(),
        Loss::InitFailed(m) => format!("initializer failed: {m}"),
        Loss::Refused(m) => format!("refused: {m}"),
    }
}
