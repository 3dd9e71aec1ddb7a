//! The far side of a remote worker: the relay.
//!
//! A pool reaches a remote host through a launcher (`ssh host`, `srun …`)
//! that runs the worker program there with `PROCPOOL_RELAY=1`. The program
//! then starts as a relay, which
//!
//! - checks that it is the pool's build (the content hash the pool sent)
//!   and otherwise refuses, in a frame, before anything of the worker runs;
//! - starts the real worker by exec, with the same clean spawn as a local
//!   one (`supervisor::Launch`: own process group, a death signal tied to
//!   the relay, a progress page of the relay's own) and is its parent and
//!   a child subreaper;
//! - passes frames through both ways: the pool's untouched, the worker's
//!   whole frames only (so a worker that dies mid-frame never leaves half
//!   a frame on the stream before the relay's report);
//! - holds each `Run` frame until the pool's `Go` for it, which the pool
//!   sends once the frames before it are answered: a frame pipelined
//!   behind the running one provably never starts if the connection is
//!   lost first, so its items can run elsewhere;
//! - on a [`ToWorker::Kill`](procpool_protocol::ToWorker::Kill) frame (a
//!   deadline, a cancel, `terminate`) halts the worker through its page,
//!   sends SIGTERM to its group and tree and SIGKILL after the grace;
//! - when the worker ends, for whatever reason, reaps it and sends
//!   [`FromWorker::Exited`]: its exact exit status or signal and how many
//!   items it started, which settle its tasks as exactly as a local death;
//! - when the connection goes (its output closed, SIGHUP, SIGTERM, SIGINT)
//!   kills the worker's tree and ends: nothing survives on the host. The
//!   end of its input alone is the pool's `join`: the worker's input is
//!   closed and it finishes what it has.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::SignalFd;
use procpool_protocol::{
    DEFAULT_MAX_FRAME, ExitReport, FromWorker, PREAMBLE_LEN, check_preamble, encode_message,
    exit_code, preamble,
};

use self::split::{Piece, Split};

mod split;

use crate::error::Exit;
use crate::supervisor::{Launch, WorkerProcess};
use crate::sys::{self, SharedCounter};
use crate::worker::{
    BUILD_ENV, INDEX_ENV, KILL_GRACE_ENV, MAX_FRAME_ENV, MEMORY_LIMIT_ENV, RELAY_ENV, env_number,
};

/// Bytes buffered one way before the relay stops reading that way (a
/// whole frame is always taken in).
const HIGH_WATER: usize = 1 << 20;

/// Environment variable carrying the pool's stall timeout, in
/// milliseconds: how long a frame of the worker's may stay half-written.
pub(crate) const STALL_ENV: &str = "PROCPOOL_STALL_MS";

/// The relay's `main`: returns its exit code.
pub(crate) fn serve() -> i32 {
    let max_frame = env_number(MAX_FRAME_ENV).unwrap_or(DEFAULT_MAX_FRAME);
    let grace = Duration::from_millis(env_number(KILL_GRACE_ENV).unwrap_or(1000));
    let stall = Duration::from_millis(env_number(STALL_ENV).unwrap_or(10_000));
    let index = env_number(INDEX_ENV).unwrap_or(0);
    let memory = env_number(MEMORY_LIMIT_ENV);
    let expected = std::env::var(BUILD_ENV).ok();
    // The worker reads the pool's log level from what the relay passes on.
    log::set_max_level(crate::worker::log_level_from_env());
    for var in [RELAY_ENV, BUILD_ENV, KILL_GRACE_ENV, STALL_ENV] {
        sys::remove_env(var);
    }
    let stdio = match sys::take_protocol_stdio() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("procpool relay: cannot set up its descriptors: {e}");
            return exit_code::SETUP_FAILED;
        }
    };
    // Neither way may block the loop: a large write to a pool that reads
    // slowly must not keep a Kill, a Cancel or a signal waiting.
    for fd in [stdio.input.as_fd(), stdio.output.as_fd()] {
        if let Err(e) = sys::set_nonblocking(fd) {
            eprintln!("procpool relay: cannot set up its descriptors: {e}");
            return exit_code::SETUP_FAILED;
        }
    }
    let mut up = Upstream {
        out: stdio.output,
        buf: Vec::new(),
        preamble_sent: false,
    };
    if let Some(expected) = expected {
        let exe = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "?".into());
        let refusal = match crate::remote::build_hash(std::path::Path::new("/proc/self/exe")) {
            Ok(ours) if ours == expected => None,
            Ok(ours) => Some(format!(
                "the program at {exe} there is another build ({}…; the pool's is {}…): its worker \
                 was not started",
                &ours[..16],
                &expected[..expected.len().min(16)]
            )),
            Err(e) => Some(format!(
                "cannot read its program {exe} to check its build: {e}"
            )),
        };
        if let Some(reason) = refusal {
            up.report(&FromWorker::Refused { reason }, max_frame);
            return up.finish();
        }
    }
    // Signals that mean "the connection is gone" are read, not handled:
    // blocked here (a spawned worker starts with an empty mask).
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGINT,
        Signal::SIGPIPE,
    ] {
        mask.add(s);
    }
    let signals = mask.thread_block().map_err(io::Error::from).and_then(|()| {
        let mut watch = mask;
        watch.remove(Signal::SIGPIPE);
        SignalFd::with_flags(
            &watch,
            nix::sys::signalfd::SfdFlags::SFD_CLOEXEC | nix::sys::signalfd::SfdFlags::SFD_NONBLOCK,
        )
        .map_err(io::Error::from)
    });
    let signals = match signals.and_then(|s| sys::become_subreaper().map(|()| s)) {
        Ok(s) => s,
        Err(e) => {
            up.report(
                &FromWorker::Refused {
                    reason: format!("the relay cannot set itself up: {e}"),
                },
                max_frame,
            );
            return up.finish();
        }
    };
    let mut launch =
        Launch::current_exe(max_frame).with_args(std::env::args_os().skip(1).collect());
    launch.memory_limit = memory;
    launch.shared_memory = false;
    let spawned = match launch.spawn(index) {
        Ok(s) => s,
        Err(e) => {
            up.report(
                &FromWorker::Refused {
                    reason: format!("cannot start the worker: {e}"),
                },
                max_frame,
            );
            return up.finish();
        }
    };
    let mut relay = Relay {
        input: Some(stdio.input),
        up,
        to_worker: Some(spawned.to_worker),
        down: Vec::new(),
        split: Split::default(),
        from_worker: spawned.from_worker,
        held: Vec::new(),
        last_bytes_at: Instant::now(),
        stall,
        raw: false,
        progress: spawned.progress,
        process: spawned.process,
        halted_at: None,
        grace,
        max_frame,
        runs: std::collections::VecDeque::new(),
        runs_seen: 0,
        items_seen: 0,
        waiting_go: std::collections::VecDeque::new(),
    };
    // Kept open until the worker has mapped its page (it has once it
    // speaks); closing it earlier could fail its start.
    let progress_fd = spawned.progress_fd;
    let code = relay.run(&signals);
    drop(progress_fd);
    sys::kill_descendants_of_self();
    code
}

/// The relay's side towards the pool: its output.
struct Upstream {
    out: File,
    /// Whole frames (and the preamble) waiting to be written.
    buf: Vec<u8>,
    preamble_sent: bool,
}

impl Upstream {
    /// Queues one message of the relay's own, after a preamble if the
    /// worker's never went out.
    fn report(&mut self, msg: &FromWorker<'_>, max_frame: u32) {
        if !self.preamble_sent {
            self.buf.extend_from_slice(&preamble());
            self.preamble_sent = true;
        }
        if encode_message(&mut self.buf, msg, max_frame.max(4096)).is_err() {
            eprintln!("procpool relay: its report does not fit a frame");
        }
    }

    /// Writes what is queued without blocking; `Err` once the pool's side
    /// is gone.
    fn flush(&mut self) -> io::Result<()> {
        while !self.buf.is_empty() {
            match self.out.write(&self.buf) {
                Ok(n) => {
                    self.buf.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Writes everything queued, waiting as long as the pool takes (the
    /// launcher ends the relay if the connection goes), and returns the
    /// relay's exit code.
    fn finish(&mut self) -> i32 {
        loop {
            match self.flush() {
                Ok(()) if self.buf.is_empty() => return 0,
                Ok(()) => {
                    let mut fds = [PollFd::new(self.out.as_fd(), PollFlags::POLLOUT)];
                    if sys::wait(&mut fds, None).is_err() {
                        return exit_code::STREAM_BROKEN;
                    }
                }
                Err(_) => return exit_code::STREAM_BROKEN,
            }
        }
    }
}

/// A `Run` frame passed on to the worker, until all its outcomes came
/// back.
#[derive(Debug, Clone, Copy)]
struct RunSeen {
    /// Its number on this worker.
    run: u64,
    batch: u64,
    /// Stream index of its first item.
    first: u64,
    items: u64,
    /// Outcomes the worker sent for it so far.
    reported: u64,
}

struct Relay {
    /// From the pool; `None` at its end.
    input: Option<File>,
    up: Upstream,
    /// To the worker; `None` once closed (end of the pool's input, a kill).
    to_worker: Option<File>,
    /// Bytes for the worker not yet written.
    down: Vec<u8>,
    split: Split,
    from_worker: File,
    /// The worker's bytes not yet a whole frame.
    held: Vec<u8>,
    /// When the worker's bytes last arrived.
    last_bytes_at: Instant,
    /// The pool's stall timeout: a frame held half-written this long goes
    /// out as it is (see [`raw`](Self::raw)).
    stall: Duration,
    /// The worker's bytes go out as they are, and no report follows: it
    /// did not open with a procpool preamble (for the pool's start-up
    /// error), or it broke the framing (a frame over the limit, or one
    /// left half-written for the stall timeout), which the pool must see
    /// to judge it as it judges a local worker (a relay that held the
    /// bytes back would leave the pool waiting for ever).
    raw: bool,
    progress: SharedCounter,
    process: WorkerProcess,
    halted_at: Option<u64>,
    grace: Duration,
    max_frame: u32,
    /// `Run` frames passed on and not wholly answered.
    runs: std::collections::VecDeque<RunSeen>,
    /// `Run` frames and items passed on so far.
    runs_seen: u64,
    items_seen: u64,
    /// `Run` frames received and not yet released to the worker (their
    /// number and bytes), waiting for the pool's `Go`.
    waiting_go: std::collections::VecDeque<(u64, Vec<u8>)>,
}

/// Why the relay's loop ended.
enum End {
    /// The worker ended: report it.
    WorkerEnded,
    /// The connection is gone (or the relay was told to stop): kill, and
    /// report only if the way is still open.
    ConnectionGone,
}

impl Relay {
    fn run(&mut self, signals: &SignalFd) -> i32 {
        let end = loop {
            match self.step(signals) {
                Ok(None) => {}
                Ok(Some(end)) => break end,
                Err(e) => {
                    log::debug!("procpool relay: {e}");
                    break End::ConnectionGone;
                }
            }
        };
        if matches!(end, End::ConnectionGone) && !self.process.killing() {
            self.process.terminate(Instant::now(), self.grace);
            self.wait_for_exit();
        }
        let exit = self.process.end();
        // Whatever whole frames it left are passed on before the report.
        self.read_worker();
        // What its tasks left behind (orphans this subreaper adopted) is
        // killed before the report: the pool may end the launcher, and so
        // this relay, as soon as it has read it.
        sys::kill_descendants_of_self();
        if !self.raw {
            let report = FromWorker::Exited {
                exit: match exit {
                    Exit::Code(c) => ExitReport::Code(c),
                    Exit::Signal(s) => ExitReport::Signal(s),
                    Exit::Unknown => ExitReport::Unknown,
                },
                started: self.progress.load(),
                halted_at: self.halted_at,
            };
            self.up.report(&report, self.max_frame);
        }
        match end {
            End::WorkerEnded => self.up.finish(),
            // Best effort: the way may be gone.
            End::ConnectionGone => {
                let _ = self.up.flush();
                0
            }
        }
    }

    /// Waits for the worker to end after a kill, sending SIGKILL when the
    /// grace is over.
    fn wait_for_exit(&mut self) {
        loop {
            let Some(pidfd) = self.process.pidfd() else {
                self.process.kill();
                return;
            };
            let mut fds = [PollFd::new(pidfd, PollFlags::POLLIN)];
            let deadline = self.process.kill_deadline();
            match sys::wait(&mut fds, deadline) {
                Ok(sys::Waited::Ready) => return,
                _ => {
                    if !self.process.tick(Instant::now()) && deadline.is_none() {
                        self.process.kill();
                    }
                }
            }
        }
    }

    /// One wait and what it found; `Some` when the loop is over.
    fn step(&mut self, signals: &SignalFd) -> io::Result<Option<End>> {
        let pidfd: Option<BorrowedFd<'_>> = self.process.pidfd();
        let Some(pidfd) = pidfd else {
            return Err(io::Error::other("no pidfd for the worker"));
        };
        let read_pool = self.input.is_some() && self.down.len() < HIGH_WATER;
        let read_worker = self.up.buf.len() < HIGH_WATER;
        let mut fds = vec![
            PollFd::new(pidfd, PollFlags::POLLIN),
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            // Always watched: POLLERR/POLLHUP say the pool's side is gone.
            PollFd::new(
                self.up.out.as_fd(),
                if self.up.buf.is_empty() {
                    PollFlags::empty()
                } else {
                    PollFlags::POLLOUT
                },
            ),
        ];
        let input_at = match (&self.input, read_pool) {
            (Some(i), true) => {
                fds.push(PollFd::new(i.as_fd(), PollFlags::POLLIN));
                Some(fds.len() - 1)
            }
            _ => None,
        };
        let worker_at = read_worker.then(|| {
            fds.push(PollFd::new(self.from_worker.as_fd(), PollFlags::POLLIN));
            fds.len() - 1
        });
        let down_at = match (&self.to_worker, self.down.is_empty()) {
            (Some(t), false) => {
                fds.push(PollFd::new(t.as_fd(), PollFlags::POLLOUT));
                Some(fds.len() - 1)
            }
            _ => None,
        };
        let deadline = match (self.process.kill_deadline(), self.stall_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        sys::wait(&mut fds, deadline)?;
        let now = Instant::now();
        if !read_worker {
            // Its bytes wait for the pool, not for the worker: no stall.
            self.last_bytes_at = now;
        }
        let ev = |i: usize| fds[i].revents().unwrap_or(PollFlags::empty());
        let exited = !ev(0).is_empty();
        let signalled = !ev(1).is_empty();
        let gone = ev(2).intersects(PollFlags::POLLERR | PollFlags::POLLHUP);
        let can_write_up = ev(2).contains(PollFlags::POLLOUT);
        let input_ready = input_at.is_some_and(|i| !ev(i).is_empty());
        let worker_ready = worker_at.is_some_and(|i| !ev(i).is_empty());
        let down_ready = down_at.is_some_and(|i| !ev(i).is_empty());
        drop(fds);
        if signalled {
            if let Ok(Some(info)) = signals.read_signal() {
                log::debug!("procpool relay: signal {}", info.ssi_signo);
            }
            return Ok(Some(End::ConnectionGone));
        }
        if gone {
            return Ok(Some(End::ConnectionGone));
        }
        if worker_ready {
            self.read_worker();
        }
        if self.stall_deadline().is_some_and(|at| now >= at) {
            log::debug!(
                "procpool relay: a frame of its worker stalled half-written for {:?}",
                self.stall
            );
            self.go_raw();
        }
        if can_write_up || !self.up.buf.is_empty() {
            self.up.flush()?;
        }
        if input_ready {
            self.read_pool(now)?;
        }
        if down_ready || !self.down.is_empty() {
            self.write_worker();
        }
        self.process.tick(now);
        if exited {
            return Ok(Some(End::WorkerEnded));
        }
        Ok(None)
    }

    /// Reads what the worker wrote and queues its whole frames for the
    /// pool.
    fn read_worker(&mut self) {
        let mut buf = [0u8; 64 << 10];
        loop {
            match self.from_worker.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    self.last_bytes_at = Instant::now();
                    self.held.extend_from_slice(&buf[..n]);
                    self.pass_whole_frames();
                    if self.up.buf.len() >= HIGH_WATER {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }

    fn pass_whole_frames(&mut self) {
        if self.raw {
            self.up.buf.append(&mut self.held);
            return;
        }
        let mut at = 0;
        if !self.up.preamble_sent {
            if self.held.len() < PREAMBLE_LEN {
                return;
            }
            let p: [u8; PREAMBLE_LEN] = self.held[..PREAMBLE_LEN].try_into().expect("length");
            if check_preamble(&p).is_err() {
                self.raw = true;
                self.up.preamble_sent = true;
                self.up.buf.append(&mut self.held);
                return;
            }
            self.up.buf.extend_from_slice(&p);
            self.up.preamble_sent = true;
            at = PREAMBLE_LEN;
        }
        loop {
            let rest = &self.held[at..];
            if rest.len() < 4 {
                break;
            }
            let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            if len > self.max_frame as usize {
                // Never whole here: the pool refuses it as it refuses a
                // local worker's.
                self.held.drain(..at);
                return self.go_raw();
            }
            if rest.len() < 4 + len {
                break;
            }
            if let Some(done) = procpool_protocol::done_header(&rest[4..4 + len]) {
                // Outcomes of a run the relay passed on.
                if let Some(r) = self.runs.iter_mut().find(|r| r.batch == done.batch) {
                    r.reported += u64::from(done.count);
                }
                while self.runs.front().is_some_and(|r| r.reported >= r.items) {
                    self.runs.pop_front();
                }
            }
            self.up.buf.extend_from_slice(&rest[..4 + len]);
            at += 4 + len;
        }
        self.held.drain(..at);
    }

    /// When the frame the worker left half-written has stalled for the
    /// pool's stall timeout, if one is held.
    fn stall_deadline(&self) -> Option<Instant> {
        if self.raw || self.held.is_empty() || self.up.buf.len() >= HIGH_WATER {
            return None;
        }
        self.last_bytes_at.checked_add(self.stall)
    }

    /// From now on the worker's bytes go to the pool as they are (what is
    /// held first), and no report follows.
    fn go_raw(&mut self) {
        self.raw = true;
        self.up.preamble_sent = true;
        self.up.buf.append(&mut self.held);
    }

    /// Reads what the pool sent: frames for the worker are queued for it,
    /// a `Kill` frame starts the kill.
    fn read_pool(&mut self, now: Instant) -> io::Result<()> {
        let Some(input) = &mut self.input else {
            return Ok(());
        };
        let mut buf = [0u8; 64 << 10];
        let n = loop {
            match input.read(&mut buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            // The pool's `join` (or its end): the worker finishes what it
            // has and exits.
            self.input = None;
            if self.down.is_empty() {
                self.to_worker = None;
            }
            return Ok(());
        }
        for piece in self.split.feed(&buf[..n]) {
            match piece {
                Piece::Pass(from, to) => {
                    if self.to_worker.is_some() {
                        self.down.extend_from_slice(&self.split.pending[from..to]);
                    }
                }
                Piece::PassRun(from, to) => {
                    if let Some((_, bytes)) = self.waiting_go.back_mut() {
                        bytes.extend_from_slice(&self.split.pending[from..to]);
                    }
                }
                Piece::Go(run) => self.release(run),
                Piece::Run { batch, items } => {
                    self.waiting_go.push_back((self.runs_seen, Vec::new()));
                    // Its skip bit is its own now, as the pool clears a
                    // local worker's before sending.
                    self.progress.unskip(self.runs_seen);
                    self.runs.push_back(RunSeen {
                        run: self.runs_seen,
                        batch,
                        first: self.items_seen,
                        items,
                        reported: 0,
                    });
                    self.runs_seen += 1;
                    self.items_seen += items;
                }
                Piece::Kill => self.kill(now),
                Piece::Cancel(run) => self.cancel(run, now),
            }
        }
        self.split.drain();
        Ok(())
    }

    /// The pool's `Go` for `Run` frame `run`: it (and any held before it)
    /// goes to the worker.
    fn release(&mut self, run: u64) {
        while self.waiting_go.front().is_some_and(|(r, _)| *r <= run) {
            let (_, bytes) = self.waiting_go.pop_front().expect("checked");
            if self.to_worker.is_some() {
                self.down.extend_from_slice(&bytes);
            }
        }
    }

    /// The pool cancelled the job of `Run` frame `run`: its items the
    /// worker has not reached are skipped (the worker reports them
    /// cancelled); if the worker runs one of its items, it is halted and,
    /// if it still runs that item then, killed. Halted, it starts no other
    /// batch, so no item of another job is caught by the kill; if the item
    /// ended meanwhile the worker only ends at its next batch (it retires).
    fn cancel(&mut self, run: u64, now: Instant) {
        self.progress.skip(run);
        let Some(seen) = self.runs.iter().find(|r| r.run == run).copied() else {
            return;
        };
        let runs_it = |started: u64| {
            started > seen.first + seen.reported && started <= seen.first + seen.items
        };
        if !runs_it(self.progress.load()) {
            return;
        }
        let started = self.progress.halt();
        self.halted_at.get_or_insert(started);
        if runs_it(started) {
            self.kill(now);
        }
    }

    /// The pool's kill: halted first (it starts no new batch), its input
    /// closed, SIGTERM to it and its tree, SIGKILL after the grace.
    fn kill(&mut self, now: Instant) {
        if self.halted_at.is_none() {
            self.halted_at = Some(self.progress.halt());
        }
        self.to_worker = None;
        self.down.clear();
        self.waiting_go.clear();
        self.process.terminate(now, self.grace);
    }

    fn write_worker(&mut self) {
        let Some(to) = &mut self.to_worker else {
            self.down.clear();
            return;
        };
        while !self.down.is_empty() {
            match to.write(&self.down) {
                Ok(n) => {
                    self.down.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    // The worker is gone: its pidfd says so next.
                    self.down.clear();
                    self.to_worker = None;
                    return;
                }
            }
        }
        if self.input.is_none() {
            self.to_worker = None;
        }
    }
}
