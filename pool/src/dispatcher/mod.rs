//! The dispatcher: one thread that owns the pool's state.
//!
//! It owns the queue of batches, every worker's pipes and in-flight table,
//! and the supervisor's processes. Callers talk to it only through
//! [`Command`]s (plus an eventfd that wakes its `poll`); it talks back only
//! through each job's channel. One `poll` over all worker pipes and pidfds
//! replaces a reader thread per worker, so the parent's thread count does
//! not grow with the pool. See `README.md` beside this file for why every
//! task ends exactly once.

mod batch;
pub(crate) mod lane;
mod restart;
mod worker;

pub(crate) use batch::{Batch, ChunkMsg, Job, Shared};
pub(crate) use restart::Limit;

use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::EventFd;
use nix::sys::signal::Signal;
use procpool_protocol::{
    FrameDecoder, FromWorker, LogRecord, Outcome, PREAMBLE_LEN, TaskInfo, check_preamble,
    decode_done, decode_from_worker, encode_init, encode_run, preamble,
};

use self::batch::Counters;
use self::restart::{Restarts, Verdict};
use self::worker::{Fate, InFlight, Phase, Worker};
use crate::error::{Error, ErrorKind, Exit};
use crate::supervisor::Launch;

/// How long the dispatcher looks for a lone batch's reply before sleeping.
const SPIN: Duration = Duration::from_micros(50);

/// Reads per worker per poll round, so one chatty worker cannot starve
/// the others.
const READS_PER_ROUND: usize = 8;

/// What callers ask of the dispatcher.
#[derive(Debug)]
pub(crate) enum Command {
    Submit(Batch),
    /// Finish the queued work, then stop the workers and exit.
    Join,
    /// Fail all unfinished work, stop the workers (SIGTERM, grace,
    /// SIGKILL) and exit. A second one while the first waits escalates to
    /// SIGKILL at once.
    Terminate,
    /// A lent worker failed its caller: settle the batch and the worker.
    LaneFailed {
        parked: Box<lane::Parked>,
        batch: Batch,
        loss: lane::LaneLoss,
    },
}

/// The pool's settings, fixed at build time.
pub(crate) struct Config {
    pub(crate) workers: usize,
    pub(crate) launch: Launch,
    pub(crate) max_frame: u32,
    pub(crate) startup_timeout: Duration,
    pub(crate) pipeline: usize,
    pub(crate) shutdown_grace: Duration,
    pub(crate) kill_grace: Duration,
    pub(crate) stall_timeout: Duration,
    pub(crate) max_tasks_per_worker: Option<u64>,
    pub(crate) restart_limit: Limit,
    pub(crate) initializer: Option<Initializer>,
}

/// Judges an initializer's encoded result: `Err(message)` if it failed.
pub(crate) type InitCheck = Box<dyn Fn(&[u8]) -> Result<(), String> + Send + Sync>;

/// The initializer: a registered task with its encoded argument, and how
/// to judge its encoded result.
pub(crate) struct Initializer {
    pub(crate) name: String,
    pub(crate) signature: (String, String),
    pub(crate) arg: Vec<u8>,
    pub(crate) check: InitCheck,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("workers", &self.workers)
            .field("launch", &self.launch)
            .field("max_frame", &self.max_frame)
            .field("pipeline", &self.pipeline)
            .field("initializer", &self.initializer.as_ref().map(|i| &i.name))
            .finish_non_exhaustive()
    }
}

/// Wakes the dispatcher out of `poll`, with one eventfd write only when it
/// is (about to be) asleep: while it is busy, submissions cost no syscall.
#[derive(Debug)]
struct Waker {
    fd: EventFd,
    sleeping: AtomicBool,
}

impl Waker {
    /// Callers: after queueing a command.
    fn wake(&self) {
        if self.sleeping.swap(false, Ordering::SeqCst) {
            // A full eventfd counter (impossible in practice) still wakes.
            let _ = self.fd.write(1);
        }
    }
}

/// The callers' side of the dispatcher.
#[derive(Debug)]
pub(crate) struct Handle {
    tx: Sender<Command>,
    waker: Arc<Waker>,
}

impl Handle {
    /// Wakes the dispatcher (to look at the lanes).
    pub(crate) fn wake(&self) {
        self.waker.wake();
    }

    /// Sends a command; gives it back if the dispatcher has exited.
    pub(crate) fn send(&self, cmd: Command) -> Result<(), Command> {
        self.tx.send(cmd).map_err(|e| e.0)?;
        self.waker.wake();
        Ok(())
    }
}

/// Starts the dispatcher thread and waits until every initial worker has
/// shaken hands (and run the initializer), or the first start-up error.
pub(crate) fn start(
    config: Config,
    shared: Arc<Shared>,
) -> Result<(Handle, std::thread::JoinHandle<()>), Error> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let waker = Arc::new(Waker {
        fd: crate::sys::wake_fd().map_err(|e| Error::startup_io("cannot create an eventfd", e))?,
        sleeping: AtomicBool::new(false),
    });
    let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
    let thread_waker = waker.clone();
    let thread = std::thread::Builder::new()
        .name("procpool-dispatcher".into())
        .spawn(move || Dispatcher::new(config, shared, rx, thread_waker, ready_tx).run())
        .map_err(|e| Error::startup_io("cannot start the dispatcher thread", e))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok((Handle { tx, waker }, thread)),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            Err(Error::startup("the dispatcher stopped during start-up"))
        }
    }
}

/// Why a worker is being removed.
#[derive(Debug)]
enum Loss {
    /// It exited or was killed (its pidfd or pipe says so).
    Exited,
    Io(io::Error),
    /// It broke the protocol.
    Protocol(String),
    /// It did not finish starting in time.
    StartupTimeout,
    /// The initializer failed in it.
    InitFailed(String),
    /// It is not a worker we can speak to (wrong magic or version).
    Identity(String),
}

/// Something to do to a worker, found while scanning the workers.
enum Action {
    Lose(Loss),
    Expire,
    Kill,
}

struct Dispatcher {
    config: Config,
    shared: Arc<Shared>,
    rx: Receiver<Command>,
    waker: Arc<Waker>,
    workers: Vec<Worker>,
    queue: VecDeque<Batch>,
    next_batch: u64,
    /// Present until the initial workers are all ready.
    starting: Option<Sender<Result<(), Error>>>,
    joining: bool,
    /// Set once the pool is broken for good: the loop ends.
    halted: bool,
    /// The task list every worker must announce, once the first did.
    tasks: Option<Vec<TaskInfo>>,
    init_task: Option<u32>,
    restarts: Restarts,
    /// When scheduled replacement spawns are due.
    respawn_at: Vec<Instant>,
    /// The id of the next worker.
    next_slot: u64,
}

enum Next {
    Continue,
    Terminate,
}

impl Dispatcher {
    fn new(
        config: Config,
        shared: Arc<Shared>,
        rx: Receiver<Command>,
        waker: Arc<Waker>,
        ready: Sender<Result<(), Error>>,
    ) -> Self {
        let restarts = Restarts::new(config.restart_limit);
        Self {
            config,
            shared,
            rx,
            waker,
            workers: Vec::new(),
            queue: VecDeque::new(),
            next_batch: 0,
            starting: Some(ready),
            joining: false,
            halted: false,
            tasks: None,
            init_task: None,
            restarts,
            respawn_at: Vec::new(),
            next_slot: 0,
        }
    }

    /// The event loop. When it returns, the dispatcher is dropped with its
    /// command receiver: batches still in the channel are dropped too, and
    /// their `Drop` fails their items with the pool's state.
    fn run(mut self) {
        loop {
            if let Next::Terminate = self.drain_commands() {
                self.shared.lanes.close();
                self.reclaim_lent();
                self.terminate();
                return;
            }
            if self.joining && self.starting.is_none() && self.idle() {
                self.shared.lanes.close();
                self.reclaim_lent();
                self.shutdown_gracefully();
                return;
            }
            self.keep_capacity();
            if self.halted {
                return;
            }
            if !self.queue.is_empty() {
                self.reclaim_lent();
            }
            self.dispatch();
            self.retire_used_up();
            self.park_idle();
            for w in &mut self.workers {
                w.flush();
            }
            if let Err(e) = self.poll_round() {
                log::error!("procpool: the dispatcher's poll failed: {e}");
                self.halt(Error::new(ErrorKind::Broken {
                    reason: format!("poll failed: {e}"),
                }));
            }
            if self.halted {
                return;
            }
        }
    }

    /// Lends every idle worker to the direct lane, while nothing is queued
    /// and the pool is not stopping.
    fn park_idle(&mut self) {
        if !self.queue.is_empty()
            || self.joining
            || self.starting.is_some()
            || self.config.max_tasks_per_worker.is_some()
        {
            return;
        }
        for w in &mut self.workers {
            if !w.parkable() {
                continue;
            }
            let Some(to) = &w.to else { continue };
            match lane::Parked::new(
                w.slot,
                w.pid,
                to,
                &w.from,
                w.pidfd.as_ref(),
                self.config.max_frame,
            ) {
                Ok(p) => {
                    self.shared.lanes.park(p);
                    w.parked = true;
                }
                // Out of descriptors: this worker stays with the dispatcher.
                Err(e) => log::debug!("procpool: cannot lend worker {}: {e}", w.pid),
            }
        }
        // Nothing is queued: callers may take workers again (ones still
        // lent from before come back into the lanes when their call ends).
        self.shared.lanes.resume();
    }

    /// Takes back the lent workers that are not in use, and asks for the
    /// others (they come back when their caller is done).
    fn reclaim_lent(&mut self) {
        if !self.workers.iter().any(|w| w.parked) {
            return;
        }
        for p in self.shared.lanes.reclaim() {
            self.unpark(p);
        }
    }

    /// Takes worker `i` back from the lanes if no caller is using it.
    fn take_back(&mut self, i: usize) -> bool {
        match self.shared.lanes.take_slot(self.workers[i].slot) {
            Some(p) => {
                self.unpark(p);
                true
            }
            None => false,
        }
    }

    /// A lent worker is the dispatcher's again: its stream position moves
    /// past what the lane wrote, and bytes the lane read but did not use
    /// are read again from the dispatcher's decoder.
    fn unpark(&mut self, p: lane::Parked) -> Option<usize> {
        let i = self.workers.iter().position(|w| w.slot == p.slot)?;
        let w = &mut self.workers[i];
        w.parked = false;
        w.out_base += p.written;
        let leftover = p.decoder.peek();
        if !leftover.is_empty() {
            w.decoder.extend_from_slice(leftover);
        }
        Some(i)
    }

    /// A lent worker failed its caller: the batch becomes the worker's
    /// in-flight batch and the worker is settled like any lost worker.
    fn lane_failed(&mut self, parked: lane::Parked, batch: Batch, loss: lane::LaneLoss) {
        let pid = parked.pid;
        let Some(i) = self.unpark(parked) else {
            // Already removed (the pool is stopping): its Drop reports.
            batch.fail(Error::new(ErrorKind::Protocol {
                pid,
                detail: "the worker was lost while lent to a caller".into(),
            }));
            return;
        };
        let w = &mut self.workers[i];
        let cursor = batch.sent_from();
        let frame_end = w.queued_to();
        w.inflight.push_back(InFlight {
            id: u64::MAX,
            batch,
            eager: false,
            cursor,
            timed_out: None,
            frame_end,
        });
        let loss = match loss {
            lane::LaneLoss::Exited => Loss::Exited,
            lane::LaneLoss::Protocol(d) => Loss::Protocol(d),
        };
        self.lose_worker(i, loss);
    }

    fn idle(&self) -> bool {
        self.queue.is_empty() && self.workers.iter().all(|w| w.inflight.is_empty())
    }

    fn drain_commands(&mut self) -> Next {
        loop {
            match self.rx.try_recv() {
                // Chunks of jobs started before `close()` still run: only
                // new jobs are refused, by the caller, from the state.
                Ok(Command::Submit(batch)) => self.queue.push_back(batch),
                Ok(Command::Join) => self.joining = true,
                Ok(Command::Terminate) => return Next::Terminate,
                Ok(Command::LaneFailed {
                    parked,
                    batch,
                    loss,
                }) => self.lane_failed(*parked, batch, loss),
                Err(TryRecvError::Empty) => return Next::Continue,
                // Every handle is gone without a Terminate: stop.
                Err(TryRecvError::Disconnected) => return Next::Terminate,
            }
        }
    }

    fn report_startup(&mut self, result: Result<(), Error>) {
        if let Some(tx) = self.starting.take() {
            let _ = tx.send(result);
        }
    }

    /// Starts workers (now, or when their backoff is over) until as many
    /// serve as the pool should have.
    fn keep_capacity(&mut self) {
        let now = Instant::now();
        let due = self.respawn_at.iter().filter(|&&t| t <= now).count();
        self.respawn_at.retain(|&t| t > now);
        for _ in 0..due {
            self.spawn_or_retry();
        }
        while !self.halted
            && self.workers.iter().filter(|w| w.serving()).count() + self.respawn_at.len()
                < self.config.workers
        {
            self.spawn_or_retry();
        }
    }

    fn spawn_or_retry(&mut self) {
        match self.spawn_worker() {
            Ok(()) => {}
            Err(e) => self.start_failed(e),
        }
    }

    /// A worker could not start. While the pool is being built this fails
    /// the build; afterwards the restart policy decides.
    fn start_failed(&mut self, error: Error) {
        Counters::bump(&self.shared.stats.start_failures);
        if self.starting.is_some() {
            log::error!("procpool: {error}");
            self.report_startup(Err(error.clone()));
            self.halt(error);
            return;
        }
        match self.restarts.failed(Instant::now()) {
            Verdict::RetryAt(at) => {
                log::warn!(
                    "procpool: a replacement worker failed to start ({error}); retrying in {:?}",
                    at.saturating_duration_since(Instant::now())
                );
                self.respawn_at.push(at);
            }
            Verdict::GiveUp { failures } => {
                let limit = self.config.restart_limit;
                log::error!(
                    "procpool: workers failed to start {failures} times within {:?}; the pool is broken: {error}",
                    limit.window
                );
                self.halt(Error::new(ErrorKind::Broken {
                    reason: format!(
                        "workers failed to start {failures} times within {:?} (the limit is {}); last: {error}",
                        limit.window, limit.max
                    ),
                }));
            }
        }
    }

    fn spawn_worker(&mut self) -> Result<(), Error> {
        let spawned = self.config.launch.spawn().map_err(|e| {
            Error::startup_io(
                format!("cannot start `{}`", self.config.launch.describe()),
                e,
            )
        })?;
        let pid = spawned.process.pid();
        Counters::bump(&self.shared.stats.workers_started);
        log::debug!("procpool: started worker {pid}");
        let mut out = Vec::with_capacity(64 << 10);
        out.extend_from_slice(&preamble());
        let now = Instant::now();
        let slot = self.next_slot;
        self.next_slot += 1;
        self.workers.push(Worker {
            pidfd: spawned.process.pidfd(),
            process: spawned.process,
            slot,
            pid,
            parked: false,
            lent_and_dead: false,
            to: Some(spawned.to_worker),
            pipe_broken: false,
            from: spawned.from_worker,
            decoder: FrameDecoder::new(self.config.max_frame),
            out,
            written: 0,
            out_base: 0,
            phase: Phase::Handshake { preamble_ok: false },
            fate: Fate::Serving,
            inflight: VecDeque::new(),
            startup_deadline: now + self.config.startup_timeout,
            progress_at: now,
            last_bytes_at: now,
            assigned: 0,
        });
        self.publish_pids();
        Ok(())
    }

    fn publish_pids(&self) {
        *self.shared.pids.lock() = self
            .workers
            .iter()
            .filter(|w| w.serving())
            .map(|w| w.pid)
            .collect();
    }

    /// Hands queued batches to ready workers: first one to each idle
    /// worker, then up to `pipeline` per worker.
    fn dispatch(&mut self) {
        let max_tasks = self.config.max_tasks_per_worker;
        for depth in [1, self.config.pipeline] {
            for i in 0..self.workers.len() {
                while self.workers[i].dispatchable(depth, max_tasks) {
                    let Some(batch) = self.next_live_batch() else {
                        return;
                    };
                    self.send_batch(i, batch);
                }
            }
        }
    }

    /// The next queued batch whose caller still wants it.
    fn next_live_batch(&mut self) -> Option<Batch> {
        while let Some(b) = self.queue.pop_front() {
            if b.job.cancelled.load(std::sync::atomic::Ordering::Relaxed) {
                b.fail(Error::new(ErrorKind::Cancelled));
                continue;
            }
            return Some(b);
        }
        None
    }

    fn send_batch(&mut self, i: usize, batch: Batch) {
        let id = self.next_batch;
        self.next_batch += 1;
        let eager = batch.job.timeout.is_some();
        let w = &mut self.workers[i];
        let items = batch.items();
        if let Err(e) = encode_run(
            &mut w.out,
            id,
            batch.job.task,
            eager,
            items,
            self.config.max_frame,
        ) {
            let task = batch.job.task_name.to_string();
            let len = items.bytes();
            log::warn!("procpool: batch of `{task}` does not fit a frame: {e}");
            batch.fail(Error::new(ErrorKind::ArgTooLarge {
                task,
                len,
                max: self.config.max_frame,
            }));
            return;
        }
        if w.inflight.is_empty() {
            w.progress_at = Instant::now();
        }
        w.assigned += u64::from(items.count());
        let cursor = batch.sent_from();
        let frame_end = w.queued_to();
        w.inflight.push_back(InFlight {
            id,
            batch,
            eager,
            cursor,
            timed_out: None,
            frame_end,
        });
    }

    /// Workers that reached `max_tasks_per_worker` and finished their work
    /// get their input closed: they exit on their own and are replaced.
    fn retire_used_up(&mut self) {
        let Some(max) = self.config.max_tasks_per_worker else {
            return;
        };
        let mut retired = false;
        for w in &mut self.workers {
            if w.serving() && w.phase == Phase::Ready && w.assigned >= max && w.inflight.is_empty()
            {
                log::debug!(
                    "procpool: recycling worker {} after {} tasks",
                    w.pid,
                    w.assigned
                );
                w.fate = Fate::Retiring;
                w.to = None;
                Counters::bump(&self.shared.stats.recycles);
                retired = true;
            }
        }
        if retired {
            self.publish_pids();
            self.keep_capacity();
        }
    }

    /// One `poll` over the wake fd and every worker's pipes and pidfd, then
    /// the work it reported ready and the deadlines that passed.
    fn poll_round(&mut self) -> io::Result<()> {
        let stall = self.config.stall_timeout;
        let next = self
            .workers
            .iter()
            .filter_map(|w| w.next_deadline(stall))
            .chain(self.respawn_at.iter().copied())
            .min();
        let mut timeout = match next {
            None => PollTimeout::NONE,
            Some(d) => poll_timeout(d.saturating_duration_since(Instant::now())),
        };
        // Announce sleep, then look once more: a command queued before the
        // announcement is seen here, one queued after it writes the eventfd.
        self.waker.sleeping.store(true, Ordering::SeqCst);
        if !self.rx.is_empty() {
            timeout = PollTimeout::ZERO;
        }

        // Spin before sleeping only while exactly one batch is out and
        // nothing waits: the latency-bound case (`apply` in a loop).
        let spin_first = self.queue.is_empty()
            && self.workers.iter().map(|w| w.inflight.len()).sum::<usize>() == 1;
        // Per worker: [from, to, pidfd] slots.
        let mut readable = Vec::new();
        let mut exited = Vec::new();
        let mut degraded = false;
        {
            let mut fds = Vec::with_capacity(1 + 3 * self.workers.len());
            fds.push(PollFd::new(self.waker.fd.as_fd(), PollFlags::POLLIN));
            for w in &self.workers {
                let read = if w.parked {
                    PollFlags::empty()
                } else {
                    PollFlags::POLLIN
                };
                fds.push(PollFd::new(w.from.as_fd(), read));
                match (&w.to, w.wants_write()) {
                    (Some(to), true) => fds.push(PollFd::new(to.as_fd(), PollFlags::POLLOUT)),
                    _ => fds.push(PollFd::new(w.from.as_fd(), PollFlags::empty())),
                }
                match &w.pidfd {
                    Some(p) if !w.lent_and_dead => {
                        fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
                    }
                    _ => fds.push(PollFd::new(w.from.as_fd(), PollFlags::empty())),
                }
            }
            // A reply to a lone batch usually comes within microseconds:
            // look a few times before sleeping, saving the wake-up.
            let mut polled = Ok(0);
            if timeout != PollTimeout::ZERO && spin_first {
                let until = Instant::now() + SPIN;
                while let Ok(0) = polled {
                    if Instant::now() >= until {
                        break;
                    }
                    std::hint::spin_loop();
                    polled = nix::poll::poll(&mut fds, PollTimeout::ZERO);
                }
            }
            if let Ok(0) = polled {
                polled = nix::poll::poll(&mut fds, timeout);
            }
            self.waker.sleeping.store(false, Ordering::SeqCst);
            match polled {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => return Ok(()),
                // More descriptors to watch than RLIMIT_NOFILE allows (the
                // host lowered it): poll refuses. Degrade to looking every
                // few milliseconds instead of breaking the pool.
                Err(nix::errno::Errno::EINVAL) => degraded = true,
                Err(e) => return Err(e.into()),
            }
            if fds[0].any().unwrap_or(false) {
                let _ = self.waker.fd.read();
            }
            for (i, slots) in fds[1..].chunks(3).enumerate() {
                if degraded {
                    break;
                }
                // A lent worker's pipe belongs to its caller (poll reports
                // a hang-up even when no event was asked for).
                let lent = self.workers[i].parked;
                if !lent && slots[0].any().unwrap_or(false) {
                    readable.push(i);
                }
                let watched = self.workers[i].pidfd.is_some() && !self.workers[i].lent_and_dead;
                if watched && slots[2].any().unwrap_or(false) {
                    exited.push(i);
                }
            }
        }

        if degraded {
            // More descriptors to watch than RLIMIT_NOFILE allows (the host
            // lowered it): poll refuses them all. Look every few
            // milliseconds instead: at every pipe, and at every process.
            log::warn!("procpool: poll refused its descriptors (RLIMIT_NOFILE too low?)");
            std::thread::sleep(Duration::from_millis(5));
            for (i, w) in self.workers.iter_mut().enumerate() {
                if w.process.has_exited() {
                    exited.push(i);
                } else if !w.parked {
                    readable.push(i);
                }
            }
            let _ = self.waker.fd.read();
        }
        let mut actions: Vec<(usize, Action)> = Vec::new();
        for i in readable {
            if let Err(loss) = self.read_worker(i, READS_PER_ROUND) {
                actions.push((i, Action::Lose(loss)));
            }
        }
        for i in exited {
            if actions.iter().any(|(j, _)| *j == i) {
                continue;
            }
            if self.workers[i].parked && !self.take_back(i) {
                // A caller is using it: it will see the death and report.
                self.workers[i].lent_and_dead = true;
                continue;
            }
            // It exited: take everything it wrote, then settle.
            let loss = self
                .read_worker(i, usize::MAX)
                .err()
                .unwrap_or(Loss::Exited);
            actions.push((i, Action::Lose(loss)));
        }
        let now = Instant::now();
        for (i, w) in self.workers.iter().enumerate() {
            if actions.iter().any(|(j, _)| *j == i) {
                continue;
            }
            if w.phase != Phase::Ready && now >= w.startup_deadline {
                actions.push((i, Action::Lose(Loss::StartupTimeout)));
            } else if w.decoder.buffered() > 0 && now >= w.last_bytes_at + stall {
                actions.push((
                    i,
                    Action::Lose(Loss::Protocol(format!(
                        "a frame stalled half-written for {stall:?} ({} bytes buffered)",
                        w.decoder.buffered()
                    ))),
                ));
            } else if w.task_deadline().is_some_and(|d| now >= d) {
                actions.push((i, Action::Expire));
            } else if let Fate::Killing {
                kill_at,
                killed: false,
            } = w.fate
            {
                if now >= kill_at {
                    actions.push((i, Action::Kill));
                }
            }
        }
        // Highest index first, so removals keep the other indices valid.
        actions.sort_by_key(|a| std::cmp::Reverse(a.0));
        for (i, action) in actions {
            if self.halted {
                break;
            }
            match action {
                Action::Lose(loss) => self.lose_worker(i, loss),
                Action::Expire => self.expire(i),
                Action::Kill => {
                    let w = &mut self.workers[i];
                    log::warn!(
                        "procpool: worker {} outlived its grace period after SIGTERM; sending SIGKILL",
                        w.pid
                    );
                    w.process.signal_group(Signal::SIGKILL);
                    if let Fate::Killing { killed, .. } = &mut w.fate {
                        *killed = true;
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads what worker `i` sent (at most `rounds` reads) and handles
    /// every whole frame. `Err` when the worker is to be removed.
    fn read_worker(&mut self, i: usize, rounds: usize) -> Result<(), Loss> {
        for _ in 0..rounds {
            let w = &mut self.workers[i];
            match w.decoder.read_from(&mut w.from) {
                Ok(0) => {
                    self.handle_frames(i)?;
                    let w = &self.workers[i];
                    if w.phase == Phase::Ready {
                        if let Err(e) = w.decoder.finish() {
                            return Err(Loss::Protocol(format!("{e} when its output ended")));
                        }
                    }
                    return Err(Loss::Exited);
                }
                Ok(_) => {
                    self.workers[i].last_bytes_at = Instant::now();
                    self.handle_frames(i)?;
                    if self.workers[i].decoder.last_read_short() {
                        // Drained; poll is level-triggered if more comes.
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(Loss::Io(e)),
            }
        }
        Ok(())
    }

    fn handle_frames(&mut self, i: usize) -> Result<(), Loss> {
        loop {
            if self.workers[i].phase == (Phase::Handshake { preamble_ok: false }) {
                let decoder = &mut self.workers[i].decoder;
                let Some(p) = decoder.take_raw::<PREAMBLE_LEN>() else {
                    // A program that prints a short line is judged by what
                    // it printed, without waiting for twelve bytes.
                    let head = decoder.peek();
                    let n = head.len().min(procpool_protocol::MAGIC.len());
                    if !procpool_protocol::MAGIC.starts_with(&head[..n]) {
                        let e = check_preamble(&pad(head)).err();
                        return Err(Loss::Identity(
                            e.map_or_else(String::new, |e| e.to_string()),
                        ));
                    }
                    return Ok(());
                };
                check_preamble(&p).map_err(|e| Loss::Identity(e.to_string()))?;
                self.workers[i].phase = Phase::Handshake { preamble_ok: true };
            }
            let frame = match self.workers[i].decoder.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                Err(e) => return Err(Loss::Protocol(e.to_string())),
            };
            self.handle_frame(i, frame)?;
        }
    }

    fn handle_frame(&mut self, i: usize, frame: Vec<u8>) -> Result<(), Loss> {
        // The hot message first, validated without collecting its outcomes.
        match decode_done(&frame) {
            Ok(Some(done)) if self.workers[i].phase == Phase::Ready => {
                return self.handle_done(i, done.batch, done.count, frame);
            }
            Ok(Some(_)) => return Err(Loss::Protocol("unexpected Done message".into())),
            Ok(None) => {}
            Err(e) => return Err(Loss::Protocol(e.to_string())),
        }
        let msg = decode_from_worker(&frame).map_err(|e| Loss::Protocol(e.to_string()))?;
        match (self.workers[i].phase, msg) {
            (_, FromWorker::Log(record)) => {
                self.forward_log(i, record);
                Ok(())
            }
            (Phase::Handshake { .. }, FromWorker::Hello(hello)) => {
                self.accept_hello(i, hello.tasks)
            }
            (Phase::Init, FromWorker::InitDone(outcome)) => {
                let init = self.config.initializer.as_ref().expect("init phase");
                let verdict = match outcome {
                    Outcome::Ok(bytes) => (init.check)(bytes),
                    Outcome::Panicked { message, location } => Err(match location {
                        Some(l) => {
                            format!("panicked at {}:{}:{}: {message}", l.file, l.line, l.column)
                        }
                        None => format!("panicked: {message}"),
                    }),
                    Outcome::ArgDecode(m) => Err(format!("cannot decode its argument: {m}")),
                    Outcome::OutputEncode(m) => Err(format!("cannot encode its result: {m}")),
                };
                match verdict {
                    Ok(()) => {
                        self.became_ready(i);
                        Ok(())
                    }
                    Err(m) => Err(Loss::InitFailed(m)),
                }
            }
            (_, other) => Err(Loss::Protocol(format!(
                "unexpected {} message",
                match other {
                    FromWorker::Hello(_) => "Hello",
                    FromWorker::InitDone(_) => "InitDone",
                    FromWorker::Done(_) => "Done",
                    FromWorker::Log(_) => "Log",
                }
            ))),
        }
    }

    /// Hands a worker's `log` record to this process's logger.
    fn forward_log(&self, i: usize, record: LogRecord) {
        let w = &self.workers[i];
        let task = w.inflight.front().map(|f| &*f.batch.job.task_name);
        emit_log(w.pid, task, record);
    }

    /// `n` outcomes of batch `batch` from worker `i`, in `frame`.
    fn handle_done(&mut self, i: usize, batch: u64, n: u32, frame: Vec<u8>) -> Result<(), Loss> {
        let w = &mut self.workers[i];
        let pid = w.pid;
        let Some(front) = w.inflight.front_mut() else {
            return Err(Loss::Protocol(format!(
                "result for batch {batch} it was never given"
            )));
        };
        if batch != front.id {
            return Err(Loss::Protocol(format!(
                "result for batch {batch} while batch {} was running",
                front.id
            )));
        }
        let left = front.batch.delivered() + front.batch.remaining() - front.cursor;
        if n > left {
            return Err(Loss::Protocol(format!(
                "{n} outcomes for a batch with {left} left"
            )));
        }
        // Outcomes the caller already has (an item failed by its deadline)
        // are skipped, never delivered twice.
        let skip = (front.batch.delivered() - front.cursor).min(n);
        front.batch.deliver(n, skip, pid, frame);
        front.cursor += n;
        let finished = front.cursor == front.batch.delivered() + front.batch.remaining();
        w.progress_at = Instant::now();
        if finished {
            w.inflight.pop_front();
        }
        Ok(())
    }

    fn accept_hello(&mut self, i: usize, tasks: Vec<TaskInfo>) -> Result<(), Loss> {
        match &self.tasks {
            None => {
                if let Some(init) = &self.config.initializer {
                    let Some(idx) = tasks.iter().position(|t| t.name == init.name) else {
                        return Err(Loss::InitFailed(format!(
                            "the workers do not serve the initializer task `{}`",
                            init.name
                        )));
                    };
                    let t = &tasks[idx];
                    if (&t.arg_type, &t.output_type) != (&init.signature.0, &init.signature.1) {
                        return Err(Loss::InitFailed(format!(
                            "the initializer `{}` is served as fn({}) -> {}, called as fn({}) -> {}",
                            init.name,
                            t.arg_type,
                            t.output_type,
                            init.signature.0,
                            init.signature.1
                        )));
                    }
                    self.init_task = Some(idx as u32);
                }
                let _ = self.shared.tasks.set(batch::TaskTable::new(tasks.clone()));
                self.tasks = Some(tasks);
            }
            Some(known) if *known != tasks => {
                return Err(Loss::Protocol(
                    "it serves other tasks than the pool's first worker".into(),
                ));
            }
            Some(_) => {}
        }
        let max = self.config.max_frame;
        let w = &mut self.workers[i];
        match (&self.config.initializer, self.init_task) {
            (Some(init), Some(task)) => {
                encode_init(&mut w.out, task, &init.arg, max).map_err(|e| {
                    Loss::InitFailed(format!("its argument does not fit a frame: {e}"))
                })?;
                w.phase = Phase::Init;
            }
            _ => self.became_ready(i),
        }
        Ok(())
    }

    fn became_ready(&mut self, i: usize) {
        let w = &mut self.workers[i];
        w.phase = Phase::Ready;
        w.progress_at = Instant::now();
        self.restarts.succeeded();
        if self.starting.is_some()
            && self.workers.len() == self.config.workers
            && self.workers.iter().all(|w| w.phase == Phase::Ready)
        {
            self.report_startup(Ok(()));
        }
    }

    /// The running item of worker `i` passed its deadline: it fails with
    /// `TimedOut`, and the worker's group gets SIGTERM (SIGKILL after the
    /// grace period). A replacement starts at once.
    fn expire(&mut self, i: usize) {
        let grace = self.config.kill_grace;
        let w = &mut self.workers[i];
        let pid = w.pid;
        let Some(front) = w.inflight.front_mut() else {
            return;
        };
        let timeout = front.batch.job.timeout.unwrap_or_default();
        let task = front.batch.job.task_name.to_string();
        // Eager batches: the item at the cursor is the running one.
        if front.batch.delivered() == front.cursor {
            front.batch.fail_next(
                1,
                Error::new(ErrorKind::TimedOut {
                    task: task.clone(),
                    pid,
                    timeout,
                }),
            );
        }
        front.timed_out = Some(front.cursor);
        // No more input: a worker that outlives SIGTERM (or a thread,
        // which no signal stops) ends at the end of what it already has.
        w.to = None;
        w.fate = Fate::Killing {
            kill_at: Instant::now() + grace,
            killed: false,
        };
        w.process.signal_group(Signal::SIGTERM);
        Counters::bump(&self.shared.stats.timeouts);
        log::warn!(
            "procpool: task `{task}` in worker {pid} passed its {timeout:?} deadline; \
             sent SIGTERM to its process group (SIGKILL in {grace:?})"
        );
        self.publish_pids();
    }

    /// Removes worker `i`: reaps it, settles its in-flight work (see the
    /// module README), and lets `keep_capacity` replace it.
    fn lose_worker(&mut self, i: usize, loss: Loss) {
        let mut w = self.workers.swap_remove(i);
        self.publish_pids();
        let exit = w.process.kill_and_reap();
        let pid = w.pid;

        if w.fate == Fate::Retiring && matches!(loss, Loss::Exited) {
            if exit != Exit::Code(0) {
                log::warn!("procpool: recycled worker {pid} ended with {exit}");
            }
            return;
        }
        Counters::bump(&self.shared.stats.worker_deaths);

        if w.phase != Phase::Ready {
            let error = startup_error(&self.config.launch, pid, exit, &loss, &w.decoder);
            self.start_failed(error);
            return;
        }

        let mut inflight = std::mem::take(&mut w.inflight);
        let mut requeue = Vec::new();
        // A batch whose frame the worker did not wholly read from its pipe
        // (it died first) never started: it goes back to the queue.
        let received = w.read_to();
        let started = inflight.front().is_some_and(|f| f.frame_end <= received);
        if let Some(mut front) = started.then(|| inflight.pop_front()).flatten() {
            let task = front.batch.job.task_name.to_string();
            let error = match &loss {
                Loss::Protocol(detail) => Error::new(ErrorKind::Protocol {
                    pid,
                    detail: detail.clone(),
                }),
                _ => Error::new(ErrorKind::WorkerDied {
                    task: task.clone(),
                    pid,
                    exit,
                }),
            };
            log::warn!(
                "procpool: worker {pid} lost while running `{task}` ({})",
                loss_text(&loss, exit)
            );
            if front.eager {
                // The item at the cursor was running, unless the worker was
                // still stuck in the item its deadline already failed.
                let still_in_timed_out = front.timed_out == Some(front.cursor);
                if !still_in_timed_out {
                    front.batch.fail_next(1, error);
                }
                requeue.extend(front.batch.into_rest());
            } else {
                front.batch.fail(error);
            }
        } else {
            log::warn!(
                "procpool: idle worker {pid} lost ({})",
                loss_text(&loss, exit)
            );
        }
        // Never started: back to the front of the queue, in order.
        requeue.extend(inflight.into_iter().filter_map(|f| f.batch.into_rest()));
        for b in requeue.into_iter().rev() {
            self.queue.push_front(b);
        }
        if !self.halted {
            log::info!("procpool: replacing worker {pid}");
        }
    }

    /// Breaks the pool for good: every worker is killed, all work fails with
    /// a `Broken` error naming `cause`, and the loop ends. Later submissions
    /// fail the same way, from the pool's state.
    fn halt(&mut self, cause: Error) {
        if !self.halted {
            self.shared.set_broken(cause.to_string());
        }
        let error = self.shared.loss_error();
        self.kill_all(Signal::SIGKILL, || error.clone());
        self.halted = true;
    }

    /// Fails queued and in-flight work, signals every worker's group,
    /// reaps them all.
    fn kill_all(&mut self, signal: Signal, error: impl Fn() -> Error) {
        self.fail_all(&error);
        for w in &self.workers {
            w.process.signal_group(signal);
        }
        for mut w in std::mem::take(&mut self.workers) {
            w.process.kill_and_reap();
        }
        self.respawn_at.clear();
        self.publish_pids();
    }

    fn fail_all(&mut self, error: &impl Fn() -> Error) {
        for w in &mut self.workers {
            for f in w.inflight.drain(..) {
                f.batch.fail(error());
            }
        }
        while let Some(b) = self.queue.pop_front() {
            b.fail(error());
        }
    }

    /// `terminate()`: every unfinished task fails now; the workers get
    /// SIGTERM, and SIGKILL after the grace period or at a second
    /// terminate, whichever comes first.
    fn terminate(&mut self) {
        let terminated = || Error::new(ErrorKind::Terminated);
        self.fail_all(&terminated);
        self.respawn_at.clear();
        for w in &mut self.workers {
            // End of input: an idle worker (or an in-process thread, which
            // no signal reaches) exits at once on its own.
            w.to = None;
            w.process.signal_group(Signal::SIGTERM);
        }
        let deadline = Instant::now() + self.config.kill_grace;
        let mut buf = [0u8; 4096];
        'wait: while !self.workers.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let mut gone = Vec::new();
            {
                // Always woken: a second terminate must escalate at once.
                self.waker.sleeping.store(true, Ordering::SeqCst);
                let mut fds = vec![PollFd::new(self.waker.fd.as_fd(), PollFlags::POLLIN)];
                for w in &self.workers {
                    let fd = w.pidfd.as_ref().map_or(w.from.as_fd(), |p| p.as_fd());
                    fds.push(PollFd::new(fd, PollFlags::POLLIN));
                }
                match nix::poll::poll(&mut fds, poll_timeout(left)) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(_) => break,
                }
                if fds[0].any().unwrap_or(false) {
                    let _ = self.waker.fd.read();
                }
                for (i, fd) in fds[1..].iter().enumerate() {
                    if fd.any().unwrap_or(false) {
                        gone.push(i);
                    }
                }
            }
            loop {
                match self.rx.try_recv() {
                    Ok(Command::Terminate) => break 'wait, // escalate now
                    Ok(Command::Submit(b)) => b.fail(terminated()),
                    Ok(Command::LaneFailed { batch, .. }) => batch.fail(terminated()),
                    Ok(Command::Join) => {}
                    Err(_) => break,
                }
            }
            for &i in gone.iter().rev() {
                let w = &mut self.workers[i];
                if w.pidfd.is_none() {
                    // Without a pidfd the pipe tells: drain until its end.
                    match w.from.read(&mut buf) {
                        Ok(0) => {}
                        _ => continue,
                    }
                }
                let mut w = self.workers.swap_remove(i);
                w.process.reap();
            }
        }
        self.kill_all(Signal::SIGKILL, terminated);
    }

    /// After `join`: every batch is done. Close each worker's input so it
    /// exits on its own; kill those that do not within the grace period.
    fn shutdown_gracefully(&mut self) {
        let deadline = Instant::now() + self.config.shutdown_grace;
        let workers = std::mem::take(&mut self.workers);
        self.publish_pids();
        let mut buf = [0u8; 4096];
        for mut w in workers {
            w.to = None;
            // Wait for the end of its output (it exits), bounded.
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let mut fds = [PollFd::new(w.from.as_fd(), PollFlags::POLLIN)];
                match nix::poll::poll(&mut fds, poll_timeout(left)) {
                    Ok(0) => {
                        log::warn!(
                            "procpool: worker {} did not exit within {:?} of its input closing; killing it",
                            w.pid,
                            self.config.shutdown_grace
                        );
                        break;
                    }
                    Ok(_) => match w.from.read(&mut buf) {
                        Ok(0) => break,
                        Ok(_) => continue,
                        Err(e)
                            if e.kind() == io::ErrorKind::WouldBlock
                                || e.kind() == io::ErrorKind::Interrupted =>
                        {
                            continue;
                        }
                        Err(_) => break,
                    },
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(_) => break,
                }
            }
            let exit = w.process.kill_and_reap();
            log::debug!("procpool: worker {} stopped ({exit})", w.pid);
        }
    }
}

/// Emits a worker's `log` record through this process's logger, tagged
/// with the worker's pid and the task it is running.
pub(crate) fn emit_log(pid: u32, task: Option<&str>, record: LogRecord) {
    let level = match record.level {
        1 => log::Level::Error,
        2 => log::Level::Warn,
        3 => log::Level::Info,
        4 => log::Level::Debug,
        _ => log::Level::Trace,
    };
    if level > log::max_level() {
        return;
    }
    let task = task.map(|t| format!(" `{t}`")).unwrap_or_default();
    log::logger().log(
        &log::Record::builder()
            .level(level)
            .target(&record.target)
            .file(record.file.as_deref())
            .line(record.line)
            .args(format_args!("[worker {pid}{task}] {}", record.message))
            .build(),
    );
}

fn poll_timeout(d: Duration) -> PollTimeout {
    // Round up, so a deadline is never polled for a millisecond early.
    let ms = d.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32;
    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
}

/// Pads a short head of output to a preamble's size for the error message.
fn pad(head: &[u8]) -> [u8; PREAMBLE_LEN] {
    let mut p = [b' '; PREAMBLE_LEN];
    let n = head.len().min(PREAMBLE_LEN);
    p[..n].copy_from_slice(&head[..n]);
    p
}

fn loss_text(loss: &Loss, exit: Exit) -> String {
    match loss {
        Loss::Exited => format!("{exit}"),
        Loss::Io(e) => format!("read error {e}; {exit}"),
        Loss::Protocol(d) => format!("protocol error: {d}"),
        Loss::StartupTimeout => "start-up timed out".into(),
        Loss::InitFailed(m) => format!("initializer failed: {m}"),
        Loss::Identity(m) => m.clone(),
    }
}

fn startup_error(
    launch: &Launch,
    pid: u32,
    exit: Exit,
    loss: &Loss,
    decoder: &FrameDecoder,
) -> Error {
    let program = launch.describe();
    match loss {
        Loss::InitFailed(m) => Error::new(ErrorKind::Initializer { message: m.clone() }),
        Loss::Identity(m) => Error::startup(format!(
            "`{program}` is not a procpool worker we can use: {m}"
        )),
        Loss::StartupTimeout => Error::startup(format!(
            "`{program}` (pid {pid}) did not complete the handshake in time"
        )),
        Loss::Exited if decoder.buffered() > 0 => Error::startup(format!(
            "`{program}` (pid {pid}) ended ({exit}) after writing {} bytes that are not a handshake: \"{}\"",
            decoder.buffered(),
            decoder.peek()[..decoder.buffered().min(64)].escape_ascii()
        )),
        Loss::Exited => Error::startup(format!(
            "`{program}` (pid {pid}) ended ({exit}) before its handshake"
        )),
        Loss::Io(e) => Error::startup(format!("reading from `{program}` (pid {pid}) failed: {e}")),
        Loss::Protocol(d) => {
            Error::startup(format!("`{program}` (pid {pid}) sent a bad handshake: {d}"))
        }
    }
}
