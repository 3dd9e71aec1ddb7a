//! How the pool stops: `terminate` (fail everything, signal everyone),
//! `join`'s drain (close every input, wait for the exits, bounded), and
//! `halt` (broken for good). These are stages of the one event loop, not
//! loops of their own: commands, deaths and deadlines keep being seen, so a
//! second `terminate` escalates at once.

use std::time::Instant;

use super::{Dispatcher, Stage};
use crate::error::{Error, ErrorKind};
use crate::sys;

impl Dispatcher {
    /// `terminate()` (a second one escalates to SIGKILL at once).
    pub(super) fn terminate(&mut self) {
        if self.stage == Stage::Terminating {
            for w in &mut self.workers {
                w.process.kill();
            }
            return;
        }
        self.stage = Stage::Terminating;
        self.shared.set_terminated();
        // Every caller holding a lent worker sees the stop pipe's end.
        self.stop.1 = None;
        self.settle.fail_all(|| Error::new(ErrorKind::Terminated));
        for s in &mut self.sites {
            s.respawn.clear();
        }
        self.reclaim_lent();
        let now = Instant::now();
        for w in &mut self.workers {
            // End of input: an idle worker (or an in-process thread, which
            // no signal reaches) exits at once on its own.
            if let Some(c) = &mut w.conn {
                c.stop();
            }
            w.process.terminate(now, self.config.kill_grace);
            // A wait for the rest of a stream is over: its report could
            // settle nothing now (everything failed above), and nothing
            // else need wake the loop to end it.
            if w.stream_due.is_some() {
                w.stream_due = Some(now);
            }
        }
        self.publish_pids();
    }

    /// `join()` reached the end of the work: close every input; workers
    /// exit on their own, or are killed when the grace period ends.
    pub(super) fn drain(&mut self, now: Instant) {
        self.stage = Stage::Draining {
            until: sys::after(now, self.config.shutdown_grace),
        };
        for s in &mut self.sites {
            s.respawn.clear();
        }
        for w in &mut self.workers {
            if let Some(c) = &mut w.conn {
                c.close_input();
            }
        }
        self.publish_pids();
    }

    /// Breaks the pool for good: all work fails with the reason, every
    /// worker is killed and reaped, and the loop ends.
    pub(super) fn halt(&mut self, reason: String) {
        if !self.halted {
            self.shared.set_broken(reason);
        }
        self.halted = true;
        let error = self.shared.loss_error();
        self.settle.fail_all(|| error.clone());
        for s in &mut self.sites {
            s.respawn.clear();
        }
        self.reclaim_lent();
        for mut w in std::mem::take(&mut self.workers) {
            w.process.end();
        }
        self.publish_pids();
    }
}
