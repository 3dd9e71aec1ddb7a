//! The direct lane: `apply` without the dispatcher on its critical path.
//!
//! A blocking `apply` through the dispatcher crosses four threads (caller →
//! dispatcher → worker → dispatcher → caller); a raw pipe round trip crosses
//! two. So when a worker is idle and nothing is queued, the dispatcher
//! *parks* it: it stops reading the worker's pipe (it keeps watching its
//! pidfd) and offers duplicates of the pipe ends here. A calling thread that
//! takes a parked worker writes its one-item `Run` frame and reads the `Done`
//! frame itself, then parks the worker again.
//!
//! The one-outcome rule is untouched: the caller's [`Batch`] reports its
//! item exactly as the dispatcher would (`deliver`), and if anything goes
//! wrong (end of stream, a death, a protocol violation) the batch goes to
//! the dispatcher with the worker ([`Command::LaneFailed`]), which settles
//! it like any batch in flight — re-dispatched if the worker never read it,
//! failed with `WorkerDied` or `Protocol` otherwise.
//!
//! The dispatcher takes parked workers back as soon as it has queued work,
//! or is stopping; a worker in use by a caller comes back when that call
//! ends (the caller wakes the dispatcher if it was asked to).

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use parking_lot::Mutex;
use procpool_protocol::{
    FrameDecoder, FromWorker, ItemsBuilder, decode_done, decode_from_worker, encode_run,
};

use super::{Batch, Command, Handle};

/// Batch ids the lane uses: far from the dispatcher's, so a mix-up shows.
const LANE_IDS: u64 = 1 << 62;

/// A worker lent out by the dispatcher.
#[derive(Debug)]
pub(crate) struct Parked {
    /// The dispatcher's id for the worker.
    pub(crate) slot: u64,
    pub(crate) pid: u32,
    to: File,
    from: File,
    pidfd: Option<OwnedFd>,
    /// Bytes read from the worker but not consumed (handed back).
    pub(crate) decoder: FrameDecoder,
    /// Bytes written to the worker through the lane, since parked.
    pub(crate) written: u64,
    next_id: u64,
    max_frame: u32,
}

impl Parked {
    pub(crate) fn new(
        slot: u64,
        pid: u32,
        to: &File,
        from: &File,
        pidfd: Option<&OwnedFd>,
        max_frame: u32,
    ) -> io::Result<Self> {
        Ok(Self {
            slot,
            pid,
            to: to.try_clone()?,
            from: from.try_clone()?,
            pidfd: pidfd.map(OwnedFd::try_clone).transpose()?,
            decoder: FrameDecoder::new(max_frame),
            written: 0,
            next_id: LANE_IDS,
            max_frame,
        })
    }
}

/// What the dispatcher and the callers share about parked workers.
#[derive(Debug, Default)]
pub(crate) struct Lanes {
    parked: Mutex<Vec<Parked>>,
    /// The dispatcher wants its workers back: a caller that parks one
    /// wakes it.
    wanted: AtomicBool,
    /// The dispatcher is stopping: workers given back are closed, not
    /// parked, so they see the end of their input.
    closed: AtomicBool,
}

impl Lanes {
    /// A parked worker, if one is free.
    pub(crate) fn take(&self) -> Option<Parked> {
        if self.wanted.load(Ordering::Acquire) {
            return None;
        }
        self.parked.lock().pop()
    }

    /// Offers a worker (dispatcher) or gives one back (caller).
    pub(crate) fn park(&self, p: Parked) {
        let mut parked = self.parked.lock();
        if !self.closed.load(Ordering::Acquire) {
            parked.push(p);
        }
    }

    /// The parked worker `slot`, if it is not in use.
    pub(crate) fn take_slot(&self, slot: u64) -> Option<Parked> {
        let mut parked = self.parked.lock();
        let i = parked.iter().position(|p| p.slot == slot)?;
        Some(parked.swap_remove(i))
    }

    /// The dispatcher stops: nothing is lent any more, and every parked
    /// duplicate is closed.
    pub(crate) fn close(&self) {
        let mut parked = self.parked.lock();
        self.closed.store(true, Ordering::Release);
        self.wanted.store(true, Ordering::Release);
        parked.clear();
    }

    /// The dispatcher takes back every parked worker that is not in use,
    /// and asks for the others.
    pub(crate) fn reclaim(&self) -> Vec<Parked> {
        self.wanted.store(true, Ordering::Release);
        std::mem::take(&mut *self.parked.lock())
    }

    /// The dispatcher has every worker back: lending may resume.
    pub(crate) fn resume(&self) {
        self.wanted.store(false, Ordering::Release);
    }

    pub(crate) fn wanted(&self) -> bool {
        self.wanted.load(Ordering::Acquire)
    }
}

/// Why a lane call gave its worker back to the dispatcher.
#[derive(Debug)]
pub(crate) enum LaneLoss {
    /// The stream ended, or the worker's pidfd says it exited.
    Exited,
    /// The worker broke the protocol.
    Protocol(String),
}

/// Runs `batch` (one item) on the parked worker `p` from the calling
/// thread. On success the result is delivered into the batch's job channel
/// and the worker parked again; on failure both go to the dispatcher.
pub(crate) fn run(mut p: Parked, mut batch: Batch, lanes: &Lanes, handle: &Handle) {
    match exchange(&mut p, &mut batch) {
        Ok(()) => {
            lanes.park(p);
            if lanes.wanted() {
                handle.wake();
            }
        }
        Err(loss) => {
            // If the dispatcher is gone, the batch's Drop fails the item
            // with the pool's state.
            let _ = handle.send(Command::LaneFailed {
                parked: Box::new(p),
                batch,
                loss,
            });
        }
    }
}

fn exchange(p: &mut Parked, batch: &mut Batch) -> Result<(), LaneLoss> {
    let id = p.next_id;
    p.next_id += 1;
    let mut frame = Vec::new();
    let items: &ItemsBuilder = batch.items();
    encode_run(&mut frame, id, batch.job.task, false, items, p.max_frame)
        .map_err(|e| LaneLoss::Protocol(e.to_string()))?;
    write_all(p, &frame)?;
    // The answer cannot be there yet: wait before the first read rather
    // than spend a read on EAGAIN.
    wait(p, PollFlags::POLLIN)?;
    loop {
        while let Some(body) = p
            .decoder
            .next_frame()
            .map_err(|e| LaneLoss::Protocol(e.to_string()))?
        {
            match decode_done(&body) {
                Ok(Some(done)) if done.batch == id && done.count == 1 => {
                    batch.deliver(1, 0, p.pid, body);
                    return Ok(());
                }
                Ok(Some(done)) => {
                    return Err(LaneLoss::Protocol(format!(
                        "result for batch {} while batch {id} was running",
                        done.batch
                    )));
                }
                Ok(None) => match decode_from_worker(&body) {
                    Ok(FromWorker::Log(record)) => {
                        super::emit_log(p.pid, Some(&batch.job.task_name), record);
                    }
                    Ok(_) => return Err(LaneLoss::Protocol("unexpected message".into())),
                    Err(e) => return Err(LaneLoss::Protocol(e.to_string())),
                },
                Err(e) => return Err(LaneLoss::Protocol(e.to_string())),
            }
        }
        match p.decoder.read_from(&mut p.from) {
            Ok(0) => return Err(LaneLoss::Exited),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait(p, PollFlags::POLLIN)?,
            Err(_) => return Err(LaneLoss::Exited),
        }
    }
}

fn write_all(p: &mut Parked, mut bytes: &[u8]) -> Result<(), LaneLoss> {
    while !bytes.is_empty() {
        match p.to.write(bytes) {
            Ok(n) => {
                bytes = &bytes[n..];
                p.written += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait(p, PollFlags::POLLOUT)?,
            Err(_) => return Err(LaneLoss::Exited),
        }
    }
    Ok(())
}

/// Blocks until the pipe is ready for `flags`, or the worker exits.
fn wait(p: &Parked, flags: PollFlags) -> Result<(), LaneLoss> {
    loop {
        let pipe = if flags.contains(PollFlags::POLLOUT) {
            p.to.as_fd()
        } else {
            p.from.as_fd()
        };
        let mut fds = vec![PollFd::new(pipe, flags)];
        if let Some(pidfd) = &p.pidfd {
            fds.push(PollFd::new(pidfd.as_fd(), PollFlags::POLLIN));
        }
        match nix::poll::poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return Err(LaneLoss::Exited),
        }
        let ready = fds[0].any().unwrap_or(false);
        let exited = fds.get(1).is_some_and(|f| f.any().unwrap_or(false));
        if ready {
            return Ok(());
        }
        if exited {
            return Err(LaneLoss::Exited);
        }
    }
}
