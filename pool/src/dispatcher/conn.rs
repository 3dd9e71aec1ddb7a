//! One worker's connection: its pipes, frame reassembly, the stall timeout,
//! the check of every `Done` against what was sent, and the progress
//! counter. The event loop and the direct lane both read and write through
//! this type, so the two paths cannot disagree on what a violation is.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags};
use procpool_protocol::{
    ExitReport, FrameDecoder, ItemsBuilder, MAGIC, PREAMBLE_LEN, ToWorker, check_preamble,
    decode_done, encode_message, encode_run,
};

use crate::error::Exit;
use crate::payload::Attached;
use crate::sys::{self, MAX_RUNS_IN_FLIGHT, SharedCounter, Spin, Waited};

/// Why a connection cannot go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Violation {
    /// The other end is not a procpool worker we can speak to.
    Identity(String),
    /// It broke the protocol.
    Protocol(String),
}

impl Violation {
    pub(crate) fn detail(&self) -> &str {
        match self {
            Violation::Identity(d) | Violation::Protocol(d) => d,
        }
    }
}

/// What one read found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Filled {
    /// Bytes arrived; `more` if the pipe may hold more.
    Data { more: bool },
    /// Nothing to read now.
    Empty,
    /// The worker's output ended.
    Eof,
}

/// The parent's end of one worker.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) pid: u32,
    /// `None` once closed (retiring, stopping).
    to: Option<File>,
    from: File,
    decoder: FrameDecoder,
    preamble_ok: bool,
    /// Bytes for the worker; `out[written..]` is pending.
    out: Vec<u8>,
    written: usize,
    /// A write failed (EPIPE): the worker is gone; write no more.
    broken: bool,
    /// Items sent so far: the stream index of the next one.
    items_sent: u64,
    /// `Run` frames sent so far: the number of the next one.
    runs_sent: u64,
    /// Its counter when the pool halted it (see `sys::shm`).
    halted_at: Option<u64>,
    /// `Run` frames sent and not wholly answered: (batch id, items left).
    answering: VecDeque<(u64, u32)>,
    /// When bytes last arrived (a half-written frame must not stall).
    last_bytes_at: Instant,
    progress: SharedCounter,
    max_frame: u32,
    /// The lane's look for an answer before it blocks.
    spin: Spin,
    /// Shared payloads the worker listed for its next `Done` frame,
    /// opened (`payload.rs`).
    attached: Vec<(u32, Result<OwnedFd, String>)>,
    /// The worker's `Shared` messages taken so far.
    shared_taken: u64,
    /// The lane mark as last set in the shared page (see `sys::shm`).
    lent: bool,
    /// A remote worker: its pipes go to a launcher and a relay.
    pub(crate) remote: bool,
    /// A remote worker's host and pid there (once it said hello), for
    /// what the lane logs of it.
    pub(crate) host: Option<(std::sync::Arc<str>, Option<u32>)>,
    /// What a remote worker's relay said when its worker ended.
    report: Option<RelayReport>,
    /// Close the input once what is queued is written (a remote worker's
    /// `Kill` frame).
    close_when_flushed: bool,
    /// A remote worker's `Run` frames it may start (`Go` sent), and their
    /// items: what it may have started if its host is lost.
    go_runs: u64,
    go_items: u64,
}

/// A relay's word on how its worker ended (`FromWorker::Exited`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RelayReport {
    pub(crate) exit: Exit,
    started: u64,
    halted_at: Option<u64>,
}

/// A `Done` frame as read, with the shared payloads its results name.
#[derive(Debug)]
pub(crate) struct Received {
    pub(crate) body: Vec<u8>,
    pub(crate) attached: Attached,
}

impl Conn {
    pub(crate) fn new(
        pid: u32,
        to: File,
        from: File,
        progress: SharedCounter,
        max_frame: u32,
        now: Instant,
    ) -> Self {
        let mut out = Vec::with_capacity(64 << 10);
        out.extend_from_slice(&procpool_protocol::preamble());
        Self {
            pid,
            to: Some(to),
            from,
            decoder: FrameDecoder::new(max_frame),
            preamble_ok: false,
            out,
            written: 0,
            broken: false,
            items_sent: 0,
            runs_sent: 0,
            halted_at: None,
            answering: VecDeque::new(),
            last_bytes_at: now,
            progress,
            max_frame,
            spin: Spin::default(),
            attached: Vec::new(),
            shared_taken: 0,
            lent: false,
            remote: false,
            host: None,
            report: None,
            close_when_flushed: false,
            go_runs: 0,
            go_items: 0,
        }
    }

    /// A remote worker's next `Run` frame may start once every frame it
    /// was allowed before is answered: then it gets its `Go`. Frames after
    /// it wait in the relay, and never start if the host is lost first.
    fn release_next(&mut self) {
        let answered = self.runs_sent - self.answering.len() as u64;
        if !self.remote || self.go_runs != answered || self.go_runs == self.runs_sent {
            return;
        }
        let (_, items) = self.answering[0];
        if self.to.is_some() && !self.close_when_flushed {
            encode_message(
                &mut self.out,
                &ToWorker::Go { run: self.go_runs },
                self.max_frame,
            )
            .expect("a small message fits");
        }
        self.go_runs += 1;
        self.go_items += u64::from(items);
    }

    /// A remote worker's relay reported its worker's end.
    pub(crate) fn relay_exited(&mut self, exit: ExitReport, started: u64, halted_at: Option<u64>) {
        let exit = match exit {
            ExitReport::Code(c) => Exit::Code(c),
            ExitReport::Signal(s) => Exit::Signal(s),
            ExitReport::Unknown => Exit::Unknown,
        };
        self.report = Some(RelayReport {
            exit,
            started: started.min(self.items_sent),
            halted_at: halted_at.map(|h| h.min(self.items_sent)),
        });
    }

    /// What the relay reported, if it did.
    pub(crate) fn relay_report(&self) -> Option<RelayReport> {
        self.report
    }

    /// A remote worker's relay is told that `Run` frame `run` belongs to a
    /// cancelled job: it skips its unstarted items, and kills the worker if
    /// it runs one.
    pub(crate) fn cancel_remote(&mut self, run: u64) {
        if self.to.is_some() && !self.close_when_flushed {
            encode_message(&mut self.out, &ToWorker::Cancel { run }, self.max_frame)
                .expect("a small message fits");
        }
    }

    /// Stops the worker's input for a kill: a local worker's is closed now
    /// (it starts nothing more); a remote worker's relay is sent `Kill`
    /// (it halts, kills and reports), after what is queued.
    pub(crate) fn stop(&mut self) {
        if !self.remote {
            return self.close_input();
        }
        if self.to.is_some() && !self.close_when_flushed {
            encode_message(&mut self.out, &ToWorker::Kill, self.max_frame)
                .expect("a one-byte message fits");
            self.close_when_flushed = true;
        }
    }

    /// A `Shared` message: opens the worker's memfds now, before it closes
    /// them, and tells it (through the progress page) that it may. One it
    /// cannot open fails the result that names it, when decoded.
    pub(crate) fn take_shared(&mut self, fds: Vec<u32>) -> Result<(), Violation> {
        if self.attached.len() + fds.len() > crate::payload::MAX_SHARED {
            return Err(Violation::Protocol(format!(
                "more than {} shared payloads for one frame",
                crate::payload::MAX_SHARED
            )));
        }
        for n in fds {
            let opened = sys::open_sealed(self.pid, n)
                .map_err(|e| format!("cannot open shared payload {n} of worker {}: {e}", self.pid));
            self.attached.push((n, opened));
        }
        self.shared_taken += 1;
        self.progress.shared_taken(self.shared_taken);
        Ok(())
    }

    /// The next `Done` frame, with what the worker shared for it.
    pub(crate) fn received(&mut self, body: Vec<u8>) -> Received {
        Received {
            body,
            attached: Attached {
                pid: self.pid,
                fds: std::mem::take(&mut self.attached),
            },
        }
    }

    pub(crate) fn output_fd(&self) -> BorrowedFd<'_> {
        self.from.as_fd()
    }

    /// The input pipe, while there is output waiting to be written to it.
    pub(crate) fn write_fd(&self) -> Option<BorrowedFd<'_>> {
        let to = self.to.as_ref()?;
        (!self.broken && self.written < self.out.len()).then(|| to.as_fd())
    }

    /// A write failed: the worker is gone.
    pub(crate) fn write_failed(&self) -> bool {
        self.broken
    }

    /// Items sent so far (and so the stream index of the next).
    pub(crate) fn items_sent(&self) -> u64 {
        self.items_sent
    }

    /// The number the next `Run` frame will have.
    pub(crate) fn runs_sent(&self) -> u64 {
        self.runs_sent
    }

    /// The worker is to skip the items of `Run` frame `run` it has not
    /// started (their job was cancelled).
    pub(crate) fn skip(&self, run: u64) {
        self.progress.skip(run);
    }

    /// How many items the worker started, as it counted them (never more
    /// than it was sent). A worker that never attached to its counter (a
    /// launcher stripped its environment) cannot tell: everything it was
    /// sent counts as started, so nothing can run twice.
    pub(crate) fn started(&self) -> u64 {
        if let Some(r) = &self.report {
            return r.started;
        }
        if self.remote {
            // No word from the relay: what it was allowed to start.
            return self.go_items.min(self.items_sent);
        }
        if !self.progress.attached() {
            return self.items_sent;
        }
        self.progress.load().min(self.items_sent)
    }

    /// How many items the worker started, read after a full fence (after
    /// the skip bits were set), or `None` if it does not count: then the
    /// pool cannot know which item runs, and a cancel kills nothing.
    pub(crate) fn started_exact(&self) -> Option<u64> {
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        self.progress
            .attached()
            .then(|| self.progress.load().min(self.items_sent))
    }

    /// Marks the worker halted (it starts no new batch) and returns what it
    /// has started now, read after the mark; `None` if it does not count
    /// (see `sys::shm`). The first halt's count is kept for
    /// [`halted_at`](Self::halted_at).
    pub(crate) fn halt(&mut self) -> Option<u64> {
        let started = self.progress.halt().min(self.items_sent);
        self.halted_at.get_or_insert(started);
        self.progress.attached().then_some(started)
    }

    /// Whether the worker counts the items it starts (it attached to its
    /// shared page): only then can the pool tell which item it runs.
    pub(crate) fn counts(&self) -> bool {
        self.progress.attached()
    }

    /// Whether the worker takes large arguments from shared memory.
    pub(crate) fn shares(&self) -> bool {
        self.progress.shares()
    }

    /// What the worker had started when it was first halted, if it was.
    pub(crate) fn halted_at(&self) -> Option<u64> {
        if let Some(r) = &self.report {
            return r.halted_at;
        }
        self.halted_at.filter(|_| self.progress.attached())
    }

    /// Nothing pending either way, nothing unanswered: it may be lent.
    pub(crate) fn quiet(&self) -> bool {
        self.to.is_some()
            && !self.broken
            && self.out.len() == self.written
            && self.answering.is_empty()
            && self.decoder.buffered() == 0
    }

    /// Bytes received and not yet a whole frame.
    pub(crate) fn buffered(&self) -> usize {
        self.decoder.buffered()
    }

    /// The first bytes received, for start-up error messages.
    pub(crate) fn head(&self) -> &[u8] {
        let p = self.decoder.peek();
        &p[..p.len().min(64)]
    }

    /// When a half-written frame has stalled for `stall`, if one is
    /// waiting.
    pub(crate) fn stall_deadline(&self, stall: Duration) -> Option<Instant> {
        if self.decoder.buffered() == 0 {
            return None;
        }
        self.last_bytes_at.checked_add(stall)
    }

    /// The stall as a violation, if its deadline passed at `now`.
    pub(crate) fn stalled(&self, stall: Duration, now: Instant) -> Option<Violation> {
        let at = self.stall_deadline(stall)?;
        (now >= at).then(|| {
            Violation::Protocol(format!(
                "a frame stalled half-written for {stall:?} ({} bytes buffered)",
                self.decoder.buffered()
            ))
        })
    }

    /// Queues raw frame bytes (the initializer's frame).
    pub(crate) fn queue_frame(&mut self, frame: &[u8]) {
        self.out.extend_from_slice(frame);
    }

    /// Queues a `Run` frame of `items` as batch `id`; returns the stream
    /// index of its first item, or the encoded size that did not fit.
    pub(crate) fn queue_run(
        &mut self,
        id: u64,
        task: u32,
        eager: bool,
        items: &ItemsBuilder,
    ) -> Result<u64, usize> {
        let at = self.out.len();
        if encode_run(&mut self.out, id, task, eager, items, self.max_frame).is_err() {
            self.out.truncate(at);
            return Err(items.bytes());
        }
        debug_assert!(self.answering.len() < MAX_RUNS_IN_FLIGHT);
        self.progress.unskip(self.runs_sent);
        self.runs_sent += 1;
        let first = self.items_sent;
        self.items_sent += u64::from(items.count());
        self.answering.push_back((id, items.count()));
        self.release_next();
        Ok(first)
    }

    /// Closes the worker's input: it exits at the end of what it has.
    pub(crate) fn close_input(&mut self) {
        self.to = None;
    }

    /// Tells the worker who sends what it reads next: a lane caller
    /// (`true`), whose next task cannot be in the pipe yet when the worker
    /// has just answered, so the worker yields before it looks; or the
    /// loop, whose next chunk often is, so the worker looks first (see
    /// `sys::SpinRead`). Stored before the frames it concerns are written.
    fn mark_lent(&mut self, lent: bool) {
        if self.lent != lent {
            self.lent = lent;
            self.progress.set_lent(lent);
        }
    }

    /// The loop: writes pending output without blocking (see [`flush`]),
    /// the worker told first that the loop feeds it.
    ///
    /// [`flush`]: Self::flush
    pub(crate) fn flush_from_loop(&mut self) {
        if self.written < self.out.len() {
            self.mark_lent(false);
        }
        self.flush();
    }

    /// Writes pending output without blocking. A failed write (the worker
    /// is gone) stops all writing; its pidfd or its output's end reports
    /// the death, and the progress counter says what it started.
    pub(crate) fn flush(&mut self) {
        let Some(to) = &mut self.to else {
            return;
        };
        while !self.broken && self.written < self.out.len() {
            match to.write(&self.out[self.written..]) {
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => self.broken = true,
            }
        }
        if self.written == self.out.len() {
            self.out.clear();
            self.written = 0;
            if self.close_when_flushed {
                self.to = None;
            }
        }
    }

    /// One read of what the worker sent.
    pub(crate) fn fill(&mut self, now: Instant) -> io::Result<Filled> {
        loop {
            match self.decoder.read_from(&mut self.from) {
                Ok(0) => return Ok(Filled::Eof),
                Ok(_) => {
                    self.last_bytes_at = now;
                    let more = !self.decoder.last_read_short();
                    return Ok(Filled::Data { more });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Filled::Empty),
                Err(e) => return Err(e),
            }
        }
    }

    /// The next whole frame body received, after the preamble. A program
    /// that prints something else first is judged by what it printed,
    /// without waiting for a whole preamble.
    pub(crate) fn next_frame(&mut self) -> Result<Option<Vec<u8>>, Violation> {
        if !self.preamble_ok {
            let Some(p) = self.decoder.take_raw::<PREAMBLE_LEN>() else {
                let head = self.decoder.peek();
                let n = head.len().min(MAGIC.len());
                if !MAGIC.starts_with(&head[..n]) {
                    let e = check_preamble(&pad(head)).err();
                    return Err(Violation::Identity(
                        e.map_or_else(String::new, |e| e.to_string()),
                    ));
                }
                return Ok(None);
            };
            check_preamble(&p).map_err(|e| Violation::Identity(e.to_string()))?;
            self.preamble_ok = true;
        }
        self.decoder
            .next_frame()
            .map_err(|e| Violation::Protocol(e.to_string()))
    }

    /// Whether the output ended cleanly (no half frame left).
    pub(crate) fn ended_cleanly(&self) -> Result<(), Violation> {
        self.decoder
            .finish()
            .map_err(|e| Violation::Protocol(format!("{e} when its output ended")))
    }

    /// A `Done` header, checked against what was sent: the running batch,
    /// no more outcomes than it has left.
    pub(crate) fn check_done(&mut self, batch: u64, n: u32) -> Result<(), Violation> {
        let Some((id, left)) = self.answering.front_mut() else {
            return Err(Violation::Protocol(format!(
                "result for batch {batch} it was never given"
            )));
        };
        if *id != batch {
            return Err(Violation::Protocol(format!(
                "result for batch {batch} while batch {id} was running"
            )));
        }
        if n > *left {
            return Err(Violation::Protocol(format!(
                "{n} outcomes for a batch with {left} left"
            )));
        }
        *left -= n;
        if *left == 0 {
            self.answering.pop_front();
            self.release_next();
        }
        Ok(())
    }

    /// The lane: writes everything pending, blocking, watching the
    /// worker's end and the pool's stop.
    pub(crate) fn flush_blocking(&mut self, watch: Watch<'_>) -> Result<(), Lost> {
        self.mark_lent(true);
        loop {
            self.flush();
            if self.broken {
                return Err(Lost::Exited);
            }
            if self.written == self.out.len() {
                return Ok(());
            }
            let to = self.to.as_ref().ok_or(Lost::Exited)?;
            let mut fds = watch.fds(PollFd::new(to.as_fd(), PollFlags::POLLOUT));
            sys::wait(&mut fds, None).map_err(|_| Lost::Exited)?;
            if !sys::flagged(&fds[0]) {
                watch.check(&fds)?;
            }
        }
    }

    /// The lane: the next frame, blocking, watching the worker's end and
    /// the pool's stop, under the same stall timeout as the loop. It looks
    /// for the answer for a short while before it sleeps (`sys::Spin`).
    pub(crate) fn read_blocking(
        &mut self,
        watch: Watch<'_>,
        stall: Duration,
    ) -> Result<Vec<u8>, Lost> {
        loop {
            if let Some(frame) = self.next_frame().map_err(Lost::Violation)? {
                return Ok(frame);
            }
            // The spin lasts microseconds: its start stands for the time
            // bytes arrived, which the stall timeout measures in seconds.
            let (mut spin, now) = (self.spin, Instant::now());
            let looked = spin.run(|| match self.fill(now) {
                Ok(Filled::Empty) => None,
                other => Some(other),
            });
            self.spin = spin;
            let (filled, ended) = match looked {
                Some(filled) => (filled, Ok(())),
                None => {
                    let mut fds = watch.fds(PollFd::new(self.from.as_fd(), PollFlags::POLLIN));
                    match sys::wait(&mut fds, self.stall_deadline(stall))
                        .map_err(|_| Lost::Exited)?
                    {
                        Waited::TimedOut => {
                            if let Some(v) = self.stalled(stall, Instant::now()) {
                                return Err(Lost::Violation(v));
                            }
                            continue;
                        }
                        Waited::Refused | Waited::Ready => {}
                    }
                    let readable = sys::flagged(&fds[0]);
                    let ended = watch.check(&fds);
                    if !readable && ended.is_ok() {
                        continue;
                    }
                    if readable {
                        self.spin.answered();
                    }
                    // Ended or not, what the pipe holds is read first: it
                    // may have been looked at just before the worker's
                    // last write, and its pidfd just after its exit.
                    (self.fill(Instant::now()), ended)
                }
            };
            match filled {
                Ok(Filled::Data { .. }) => {}
                Ok(Filled::Empty) => ended?,
                Ok(Filled::Eof) | Err(_) => {
                    // Frames it wrote before it ended still count.
                    if let Some(frame) = self.next_frame().map_err(Lost::Violation)? {
                        return Ok(frame);
                    }
                    return Err(Lost::Exited);
                }
            }
        }
    }
}

/// What a lane call watches beside the worker's pipe: its pidfd (its end)
/// and the pool's stop pipe (its write end closes at `terminate`, which
/// reaches every caller at once, in-process worker threads included).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Watch<'a> {
    pub(crate) pidfd: Option<BorrowedFd<'a>>,
    pub(crate) stop: Option<BorrowedFd<'a>>,
}

impl<'a> Watch<'a> {
    /// `pipe`, then the pidfd and the stop pipe (those there are), in an
    /// array: a lane call that sleeps allocates nothing for it.
    fn fds(&self, pipe: PollFd<'a>) -> Fds<'a> {
        let mut fds = [pipe.clone(), pipe.clone(), pipe];
        let mut len = 1;
        for fd in [self.pidfd, self.stop].into_iter().flatten() {
            fds[len] = PollFd::new(fd, PollFlags::POLLIN);
            len += 1;
        }
        Fds { fds, len }
    }

    /// `Err` if the worker ended or the pool stopped, by `fds` from `fds()`.
    fn check(&self, fds: &[PollFd<'_>]) -> Result<(), Lost> {
        let mut i = 1;
        if self.pidfd.is_some() {
            if sys::flagged(&fds[i]) {
                return Err(Lost::Exited);
            }
            i += 1;
        }
        if self.stop.is_some() && sys::flagged(&fds[i]) {
            return Err(Lost::Stopped);
        }
        Ok(())
    }
}

/// The descriptors a lane call waits on ([`Watch::fds`]): the first `len`.
struct Fds<'a> {
    fds: [PollFd<'a>; 3],
    len: usize,
}

impl<'a> std::ops::Deref for Fds<'a> {
    type Target = [PollFd<'a>];
    fn deref(&self) -> &Self::Target {
        &self.fds[..self.len]
    }
}

impl std::ops::DerefMut for Fds<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.fds[..self.len]
    }
}

/// Why a lane call gave its worker back.
#[derive(Debug)]
pub(crate) enum Lost {
    /// The worker's output ended, or its pidfd says it exited.
    Exited,
    Violation(Violation),
    /// The pool is terminating.
    Stopped,
}

/// The header of a `Done` frame (`None`: another message).
pub(crate) fn done_header(frame: &[u8]) -> Result<Option<(u64, u32)>, Violation> {
    match decode_done(frame) {
        Ok(Some(done)) => Ok(Some((done.batch, done.count))),
        Ok(None) => Ok(None),
        Err(e) => Err(Violation::Protocol(e.to_string())),
    }
}

/// Pads a short head of output to a preamble's size for the error message.
fn pad(head: &[u8]) -> [u8; PREAMBLE_LEN] {
    let mut p = [b' '; PREAMBLE_LEN];
    let n = head.len().min(PREAMBLE_LEN);
    p[..n].copy_from_slice(&head[..n]);
    p
}
