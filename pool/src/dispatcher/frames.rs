//! A worker's frames, routed: `Done` to the settlement core, `Hello` and
//! `InitDone` to start-up, `Log` to this process's logger.

use std::time::{Duration, Instant};

use procpool_protocol::{FromWorker, decode_from_worker};

use super::conn::{self, Filled, Violation};
use super::{Dispatcher, Loss, Phase, startup};

impl Dispatcher {
    /// Reads what worker `slot` sent (at most `rounds` reads) and handles
    /// every whole frame. `Err` when the worker is to be removed.
    pub(super) fn read_worker(&mut self, slot: u64, rounds: usize) -> Result<(), Loss> {
        let i = self.index(slot).ok_or(Loss::Exited)?;
        for _ in 0..rounds {
            let conn = self.workers[i].conn.as_mut().ok_or(Loss::Exited)?;
            let filled = conn.fill(Instant::now()).map_err(Loss::Io)?;
            self.handle_frames(i)?;
            match filled {
                Filled::Data { more: true } => {}
                Filled::Data { more: false } | Filled::Empty => return Ok(()),
                Filled::Eof => {
                    let w = &self.workers[i];
                    if w.phase == Phase::Ready
                        && let Some(c) = &w.conn
                    {
                        c.ended_cleanly().map_err(Loss::Violation)?;
                    }
                    return Err(Loss::Exited);
                }
            }
        }
        Ok(())
    }

    fn handle_frames(&mut self, i: usize) -> Result<(), Loss> {
        loop {
            let conn = self.workers[i].conn.as_mut().ok_or(Loss::Exited)?;
            let Some(frame) = conn.next_frame().map_err(Loss::Violation)? else {
                return Ok(());
            };
            self.handle_frame(i, frame)?;
        }
    }

    fn handle_frame(&mut self, i: usize, frame: Vec<u8>) -> Result<(), Loss> {
        let protocol = |d: String| Loss::Violation(Violation::Protocol(d));
        // The hot message first, checked without collecting its outcomes.
        if let Some((batch, n)) = conn::done_header(&frame).map_err(Loss::Violation)? {
            let w = &mut self.workers[i];
            if w.phase != Phase::Ready {
                return Err(protocol("unexpected Done message".into()));
            }
            let conn = w.conn.as_mut().ok_or(Loss::Exited)?;
            conn.check_done(batch, n).map_err(Loss::Violation)?;
            let frame = conn.received(frame);
            return self
                .settle
                .done(w.slot, batch, n, frame, Instant::now())
                .map_err(protocol);
        }
        match decode_from_worker(&frame).map_err(|e| protocol(e.to_string()))? {
            FromWorker::Log(record) => {
                let w = &self.workers[i];
                let task = self.settle.running_task(w.slot);
                match &w.process.remote {
                    Some(host) => crate::supervisor::forward_remote_log(
                        w.remote_pid.unwrap_or_else(|| w.process.pid()),
                        host,
                        task,
                        record,
                    ),
                    None => crate::supervisor::forward_log(w.process.pid(), task, record),
                }
                Ok(())
            }
            FromWorker::Shared { fds } if self.workers[i].phase == Phase::Ready => {
                let conn = self.workers[i].conn.as_mut().ok_or(Loss::Exited)?;
                conn.take_shared(fds).map_err(Loss::Violation)
            }
            FromWorker::Hello(hello) if matches!(self.workers[i].phase, Phase::Handshake) => {
                self.accept_hello(i, hello)
            }
            // A remote worker's relay: how its worker ended (its last
            // frame). The worker takes no more work and is replaced now;
            // its launcher should end at once, and is ended (SIGKILL)
            // when the slack is over if it does not (a wrapper that does
            // more after its command would otherwise hold its tasks, and
            // get new ones, for as long as it liked). Its tasks are
            // settled, by this report, when it ends.
            FromWorker::Exited {
                exit,
                started,
                halted_at,
            } if self.workers[i].process.remote.is_some() => {
                let w = &mut self.workers[i];
                let conn = w.conn.as_mut().ok_or(Loss::Exited)?;
                conn.relay_exited(exit, started, halted_at);
                w.process.terminate(Instant::now(), Duration::ZERO);
                Ok(())
            }
            FromWorker::Refused { reason } if self.workers[i].process.remote.is_some() => {
                Err(Loss::Refused(reason))
            }
            FromWorker::InitDone(outcome) if self.workers[i].phase == Phase::Init => {
                let served = self
                    .init_task
                    .and_then(|t| self.tasks.as_ref()?.get(t as usize));
                let verdict = crate::supervisor::handshake::judge_init(
                    self.config.initializer.as_deref(),
                    served,
                    &outcome,
                );
                drop(outcome);
                verdict.map_err(Loss::InitFailed)?;
                self.became_ready(i);
                Ok(())
            }
            other => Err(protocol(format!(
                "unexpected {} message",
                startup::name_of(&other)
            ))),
        }
    }
}
