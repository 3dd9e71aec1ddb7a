//! The dispatcher: one thread that owns the pool's state.
//!
//! It owns the queue of batches, every worker's pipes and in-flight table,
//! and the supervisor's processes. Callers talk to it only through
//! [`Command`]s (plus an eventfd that wakes its `poll`); it talks back only
//! through each job's channel. One `poll` over all worker pipes replaces a
//! reader thread per worker, so the parent's thread count does not grow
//! with the pool.
//!
//! Per worker, batches are pipelined (`pipeline` of them in flight) and
//! answered strictly in order, since a worker runs one batch at a time. A
//! `Done` frame may carry a prefix of a batch's outcomes; the in-flight
//! entry's cursor moves past them. When a worker dies, the outcomes it
//! already sent stay delivered, the rest of the batch it was running fails
//! with `WorkerDied`, and the batches queued behind it go back to the front
//! of the queue: they never started, so they run once, elsewhere.

mod batch;

pub(crate) use batch::{Batch, ChunkMsg, Job, Shared};

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::EventFd;
use nix::sys::signal::Signal;
use procpool_protocol::{
    FrameDecoder, FromWorker, Outcome, PREAMBLE_LEN, TaskInfo, check_preamble, decode_from_worker,
    encode_init, encode_run, preamble,
};

use crate::error::{Error, ErrorKind, Exit};
use crate::supervisor::{Launch, WorkerProcess};

/// Reads per worker per poll round, so one chatty worker cannot starve
/// the others.
const READS_PER_ROUND: usize = 8;

/// What callers ask of the dispatcher.
#[derive(Debug)]
pub(crate) enum Command {
    Submit(Batch),
    /// Finish the queued work, then stop the workers and exit.
    Join,
    /// Fail all unfinished work, kill the workers and exit.
    Terminate,
}

/// The pool's settings, fixed at build time.
pub(crate) struct Config {
    pub(crate) workers: usize,
    pub(crate) launch: Launch,
    pub(crate) max_frame: u32,
    pub(crate) startup_timeout: Duration,
    pub(crate) pipeline: usize,
    pub(crate) shutdown_grace: Duration,
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
            .field("startup_timeout", &self.startup_timeout)
            .field("pipeline", &self.pipeline)
            .field("initializer", &self.initializer.as_ref().map(|i| &i.name))
            .finish()
    }
}

/// The callers' side of the dispatcher.
#[derive(Debug)]
pub(crate) struct Handle {
    tx: Sender<Command>,
    wake: Arc<EventFd>,
}

impl Handle {
    /// Sends a command; gives it back if the dispatcher has exited.
    pub(crate) fn send(&self, cmd: Command) -> Result<(), Command> {
        self.tx.send(cmd).map_err(|e| e.0)?;
        // A full eventfd counter (impossible in practice) still wakes poll.
        let _ = self.wake.write(1);
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
    let wake = Arc::new(
        crate::sys::wake_fd().map_err(|e| Error::startup_io("cannot create an eventfd", e))?,
    );
    let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
    let thread_wake = wake.clone();
    let thread = std::thread::Builder::new()
        .name("procpool-dispatcher".into())
        .spawn(move || {
            Dispatcher {
                config,
                shared,
                rx,
                wake: thread_wake,
                workers: Vec::new(),
                queue: VecDeque::new(),
                next_batch: 0,
                starting: Some(ready_tx),
                joining: false,
                halted: false,
                task_index: None,
                init_task: None,
            }
            .run()
        })
        .map_err(|e| Error::startup_io("cannot start the dispatcher thread", e))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok((Handle { tx, wake }, thread)),
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

enum Phase {
    /// Waiting for the preamble and `Hello`.
    Handshake {
        deadline: Instant,
        preamble_ok: bool,
    },
    /// Waiting for the initializer's outcome.
    Init {
        deadline: Instant,
    },
    Ready,
}

struct InFlight {
    id: u64,
    batch: Batch,
}

struct Worker {
    process: WorkerProcess,
    pid: u32,
    to: File,
    from: File,
    decoder: FrameDecoder,
    /// Bytes to write to the worker; `out[written..]` is pending.
    out: Vec<u8>,
    written: usize,
    phase: Phase,
    inflight: VecDeque<InFlight>,
}

/// Why a worker is being removed.
enum Loss {
    /// Its pipe ended (it exited or was killed).
    Eof,
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

struct Dispatcher {
    config: Config,
    shared: Arc<Shared>,
    rx: Receiver<Command>,
    wake: Arc<EventFd>,
    workers: Vec<Worker>,
    queue: VecDeque<Batch>,
    next_batch: u64,
    /// Present until the initial workers are all ready.
    starting: Option<Sender<Result<(), Error>>>,
    joining: bool,
    /// Set once every worker was killed for good: the loop ends.
    halted: bool,
    /// The task list every worker must announce, once the first did.
    task_index: Option<Vec<TaskInfo>>,
    init_task: Option<u32>,
}

enum Next {
    Continue,
    Join,
    Terminate,
}

impl Dispatcher {
    fn run(mut self) {
        for _ in 0..self.config.workers {
            if let Err(e) = self.spawn_worker() {
                self.report_startup(Err(e));
                self.kill_all(|| Error::new(ErrorKind::Terminated));
                return;
            }
        }
        let next = loop {
            match self.drain_commands() {
                Next::Continue => {}
                other => break other,
            }
            if self.joining && self.starting.is_none() && self.idle() {
                break Next::Join;
            }
            self.dispatch();
            self.flush_writes();
            if let Err(e) = self.poll_round() {
                log::error!("procpool: the dispatcher's poll failed: {e}");
                self.shared.set_broken(format!("poll failed: {e}"));
                break Next::Terminate;
            }
            if self.halted {
                return;
            }
        };
        match next {
            Next::Join => self.shutdown_gracefully(),
            _ => self.kill_all(|| Error::new(ErrorKind::Terminated)),
        }
        // Whatever is still in the channel is failed by the batches' Drop
        // when the receiver goes away with the dispatcher.
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
                Err(TryRecvError::Empty) => return Next::Continue,
                // Every handle is gone without a Terminate: the pool was
                // leaked or dropped mid-way; stop.
                Err(TryRecvError::Disconnected) => return Next::Terminate,
            }
        }
    }

    fn report_startup(&mut self, result: Result<(), Error>) {
        if let Some(tx) = self.starting.take() {
            let _ = tx.send(result);
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
        self.shared
            .stats
            .workers_started
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        log::debug!("procpool: started worker {pid}");
        let mut out = Vec::with_capacity(64 << 10);
        out.extend_from_slice(&preamble());
        self.workers.push(Worker {
            process: spawned.process,
            pid,
            to: spawned.to_worker,
            from: spawned.from_worker,
            decoder: FrameDecoder::new(self.config.max_frame),
            out,
            written: 0,
            phase: Phase::Handshake {
                deadline: Instant::now() + self.config.startup_timeout,
                preamble_ok: false,
            },
            inflight: VecDeque::new(),
        });
        self.publish_pids();
        Ok(())
    }

    fn publish_pids(&self) {
        *self.shared.pids.lock() = self.workers.iter().map(|w| w.pid).collect();
    }

    /// Hands queued batches to ready workers: first one to each idle
    /// worker, then up to `pipeline` per worker.
    fn dispatch(&mut self) {
        for depth in [1, self.config.pipeline] {
            for i in 0..self.workers.len() {
                while matches!(self.workers[i].phase, Phase::Ready)
                    && self.workers[i].inflight.len() < depth
                {
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
        let w = &mut self.workers[i];
        if let Err(e) = encode_run(
            &mut w.out,
            id,
            batch.job.task,
            &batch.items,
            self.config.max_frame,
        ) {
            let task = batch.job.task_name.to_string();
            let len = batch.items.bytes();
            log::warn!("procpool: batch of `{task}` does not fit a frame: {e}");
            batch.fail(Error::new(ErrorKind::ArgTooLarge {
                task,
                len,
                max: self.config.max_frame,
            }));
            return;
        }
        w.inflight.push_back(InFlight { id, batch });
    }

    /// Writes pending output to each worker without blocking.
    fn flush_writes(&mut self) {
        for w in &mut self.workers {
            while w.written < w.out.len() {
                match w.to.write(&w.out[w.written..]) {
                    Ok(n) => w.written += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        // EPIPE: the worker is gone; its read side reports
                        // it. Drop what cannot be written.
                        w.written = w.out.len();
                    }
                }
            }
            if w.written == w.out.len() {
                w.out.clear();
                w.written = 0;
            }
        }
    }

    /// One `poll` over the wake fd and every worker's pipes, then the work
    /// it reported ready.
    fn poll_round(&mut self) -> io::Result<()> {
        let now = Instant::now();
        let deadline = self
            .workers
            .iter()
            .filter_map(|w| match w.phase {
                Phase::Handshake { deadline, .. } | Phase::Init { deadline } => Some(deadline),
                Phase::Ready => None,
            })
            .min();
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(d) => {
                let ms = d.saturating_duration_since(now).as_millis() + 1;
                PollTimeout::try_from(ms.min(i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX)
            }
        };

        let mut ready_workers = Vec::new();
        {
            let mut fds = Vec::with_capacity(1 + 2 * self.workers.len());
            fds.push(PollFd::new(self.wake.as_fd(), PollFlags::POLLIN));
            for w in &self.workers {
                fds.push(PollFd::new(w.from.as_fd(), PollFlags::POLLIN));
                let out = if w.written < w.out.len() {
                    PollFlags::POLLOUT
                } else {
                    PollFlags::empty()
                };
                fds.push(PollFd::new(w.to.as_fd(), out));
            }
            match nix::poll::poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
            if fds[0].any().unwrap_or(false) {
                let _ = self.wake.read();
            }
            for (i, pair) in fds[1..].chunks(2).enumerate() {
                if pair[0].any().unwrap_or(false) {
                    ready_workers.push(i);
                }
            }
        }

        let mut losses = Vec::new();
        for i in ready_workers {
            if let Err(loss) = self.read_worker(i) {
                losses.push((i, loss));
            }
        }
        let now = Instant::now();
        for (i, w) in self.workers.iter().enumerate() {
            let late = match w.phase {
                Phase::Handshake { deadline, .. } | Phase::Init { deadline } => now >= deadline,
                Phase::Ready => false,
            };
            if late && !losses.iter().any(|(j, _)| *j == i) {
                losses.push((i, Loss::StartupTimeout));
            }
        }
        // Remove from the highest index down so indices stay valid.
        losses.sort_by_key(|l| std::cmp::Reverse(l.0));
        for (i, loss) in losses {
            if self.halted {
                break;
            }
            self.lose_worker(i, loss);
        }
        Ok(())
    }

    /// Reads what worker `i` sent and handles every whole frame.
    fn read_worker(&mut self, i: usize) -> Result<(), Loss> {
        for _ in 0..READS_PER_ROUND {
            let w = &mut self.workers[i];
            match w.decoder.read_from(&mut w.from) {
                Ok(0) => {
                    self.handle_frames(i)?;
                    return Err(Loss::Eof);
                }
                Ok(_) => self.handle_frames(i)?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(Loss::Io(e)),
            }
        }
        Ok(())
    }

    fn handle_frames(&mut self, i: usize) -> Result<(), Loss> {
        loop {
            if let Phase::Handshake {
                preamble_ok: false,
                deadline,
            } = self.workers[i].phase
            {
                let Some(p) = self.workers[i].decoder.take_raw::<PREAMBLE_LEN>() else {
                    // A program that prints a short line and exits is
                    // judged by what it printed.
                    let head = self.workers[i].decoder.peek();
                    if !head.is_empty()
                        && !procpool_protocol::MAGIC.starts_with(&head[..head.len().min(8)])
                    {
                        let e = check_preamble(&pad(head)).err();
                        return Err(Loss::Identity(
                            e.map_or_else(String::new, |e| e.to_string()),
                        ));
                    }
                    return Ok(());
                };
                check_preamble(&p).map_err(|e| Loss::Identity(e.to_string()))?;
                self.workers[i].phase = Phase::Handshake {
                    deadline,
                    preamble_ok: true,
                };
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
        let msg = decode_from_worker(&frame).map_err(|e| Loss::Protocol(e.to_string()))?;
        match (&self.workers[i].phase, msg) {
            (Phase::Handshake { .. }, FromWorker::Hello(hello)) => {
                self.accept_hello(i, hello.tasks)
            }
            (Phase::Init { .. }, FromWorker::InitDone(outcome)) => {
                let verdict = match outcome {
                    Outcome::Ok(bytes) => {
                        let init = self.config.initializer.as_ref().expect("init phase");
                        (init.check)(bytes)
                    }
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
                        self.workers[i].phase = Phase::Ready;
                        self.maybe_ready();
                        Ok(())
                    }
                    Err(m) => Err(Loss::InitFailed(m)),
                }
            }
            (Phase::Ready, FromWorker::Done(done)) => {
                let n = done.outcomes.len() as u32;
                let w = &mut self.workers[i];
                let Some(front) = w.inflight.front_mut() else {
                    return Err(Loss::Protocol(format!(
                        "result for batch {} it was never given",
                        done.batch
                    )));
                };
                if done.batch != front.id {
                    return Err(Loss::Protocol(format!(
                        "result for batch {} while batch {} was running",
                        done.batch, front.id
                    )));
                }
                if n > front.batch.remaining() {
                    return Err(Loss::Protocol(format!(
                        "{n} outcomes for a batch with {} left",
                        front.batch.remaining()
                    )));
                }
                let pid = w.pid;
                if n > 0 {
                    front.batch.deliver(n, pid, frame);
                }
                if front.batch.remaining() == 0 {
                    w.inflight.pop_front();
                }
                Ok(())
            }
            (_, other) => Err(Loss::Protocol(format!(
                "unexpected {} message",
                match other {
                    FromWorker::Hello(_) => "Hello",
                    FromWorker::InitDone(_) => "InitDone",
                    FromWorker::Done(_) => "Done",
                }
            ))),
        }
    }

    fn accept_hello(&mut self, i: usize, tasks: Vec<TaskInfo>) -> Result<(), Loss> {
        match &self.task_index {
            None => {
                if let Some(init) = &self.config.initializer {
                    let found = tasks.iter().position(|t| t.name == init.name);
                    let Some(idx) = found else {
                        return Err(Loss::InitFailed(format!(
                            "the workers do not serve the initializer task `{}`",
                            init.name
                        )));
                    };
                    let t = &tasks[idx];
                    if (t.arg_type.as_str(), t.output_type.as_str())
                        != (init.signature.0.as_str(), init.signature.1.as_str())
                    {
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
                let _ = self.shared.tasks.set(tasks.clone());
                self.task_index = Some(tasks);
            }
            Some(known) if *known != tasks => {
                return Err(Loss::Protocol(
                    "it serves other tasks than the pool's first worker".into(),
                ));
            }
            Some(_) => {}
        }
        let deadline = Instant::now() + self.config.startup_timeout;
        let max = self.config.max_frame;
        let w = &mut self.workers[i];
        match (&self.config.initializer, self.init_task) {
            (Some(init), Some(task)) => {
                encode_init(&mut w.out, task, &init.arg, max).map_err(|e| {
                    Loss::InitFailed(format!("its argument does not fit a frame: {e}"))
                })?;
                w.phase = Phase::Init { deadline };
            }
            _ => {
                w.phase = Phase::Ready;
                self.maybe_ready();
            }
        }
        Ok(())
    }

    /// Reports a successful start once every initial worker is ready.
    fn maybe_ready(&mut self) {
        if self.starting.is_some()
            && self.workers.len() == self.config.workers
            && self.workers.iter().all(|w| matches!(w.phase, Phase::Ready))
        {
            self.report_startup(Ok(()));
        }
    }

    /// Removes worker `i`: kills and reaps it, settles its in-flight work,
    /// and starts a replacement.
    fn lose_worker(&mut self, i: usize, loss: Loss) {
        let mut w = self.workers.swap_remove(i);
        self.publish_pids();
        let exit = w.process.kill_and_reap();
        let pid = w.pid;
        let was_ready = matches!(w.phase, Phase::Ready);
        self.shared
            .stats
            .worker_deaths
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);

        if !was_ready {
            let error = startup_error(&self.config.launch, pid, exit, &loss, &w.decoder);
            log::error!("procpool: {error}");
            // At build time this fails the build. Later, a replacement that
            // cannot start breaks the pool: without a restart policy
            // (supervision is its own layer) failing the queued work beats
            // waiting forever.
            self.report_startup(Err(error.clone()));
            self.halt(error);
            return;
        }

        let mut inflight = std::mem::take(&mut w.inflight);
        if let Some(running) = inflight.pop_front() {
            let task = running.batch.job.task_name.to_string();
            let error = match &loss {
                Loss::Protocol(detail) => Error::new(ErrorKind::Protocol {
                    pid,
                    detail: detail.clone(),
                }),
                _ => Error::new(ErrorKind::WorkerDied { task, pid, exit }),
            };
            log::warn!(
                "procpool: worker {pid} lost ({}): {error}",
                loss_text(&loss, exit)
            );
            running.batch.fail(error);
        } else {
            log::warn!(
                "procpool: idle worker {pid} lost ({})",
                loss_text(&loss, exit)
            );
        }
        // Never started: back to the front of the queue, in order.
        while let Some(f) = inflight.pop_back() {
            self.queue.push_front(f.batch);
        }
        drop(w);
        if self.joining && self.idle() {
            return;
        }
        if let Err(e) = self.spawn_worker() {
            log::error!("procpool: cannot start a replacement worker: {e}");
            self.halt(e);
        } else {
            log::info!("procpool: started a replacement for worker {pid}");
        }
    }

    /// Breaks the pool for good: every worker is killed, all work fails with
    /// a `Broken` error naming `cause`, and the loop ends. Later submissions
    /// fail the same way, from the pool's state.
    fn halt(&mut self, cause: Error) {
        self.shared.set_broken(cause.to_string());
        let error = self.shared.loss_error();
        self.kill_all(|| error.clone());
        self.halted = true;
    }

    /// Ends everything: fails queued and in-flight work, kills and reaps
    /// every worker.
    fn kill_all(&mut self, error: impl Fn() -> Error) {
        for w in &self.workers {
            w.process.signal_group(Signal::SIGKILL);
        }
        for mut w in std::mem::take(&mut self.workers) {
            w.process.reap();
            for f in w.inflight.drain(..) {
                f.batch.fail(error());
            }
        }
        while let Some(b) = self.queue.pop_front() {
            b.fail(error());
        }
        self.publish_pids();
    }

    /// After `join`: every batch is done. Close each worker's input so it
    /// exits on its own; kill those that do not within the grace period.
    fn shutdown_gracefully(&mut self) {
        let deadline = Instant::now() + self.config.shutdown_grace;
        let workers = std::mem::take(&mut self.workers);
        let mut readers = Vec::new();
        for w in workers {
            let Worker {
                process, from, to, ..
            } = w;
            drop(to);
            readers.push((process, from));
        }
        let mut buf = [0u8; 4096];
        for (mut process, mut from) in readers {
            // Wait for the end of its output (it exits), bounded.
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let ms = PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32)
                    .unwrap_or(PollTimeout::ZERO);
                let mut fds = [PollFd::new(from.as_fd(), PollFlags::POLLIN)];
                match nix::poll::poll(&mut fds, ms) {
                    Ok(0) => {
                        log::warn!(
                            "procpool: worker {} did not exit within {:?}; killing it",
                            process.pid(),
                            self.config.shutdown_grace
                        );
                        break;
                    }
                    Ok(_) => match from.read(&mut buf) {
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
            let exit = process.kill_and_reap();
            log::debug!("procpool: worker {} stopped ({exit})", process.pid());
        }
        self.publish_pids();
    }
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
        Loss::Eof => format!("{exit}"),
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
        Loss::Eof if decoder.buffered() > 0 => Error::startup(format!(
            "`{program}` (pid {pid}) ended ({exit}) after writing {} bytes that are not a handshake: \"{}\"",
            decoder.buffered(),
            decoder.peek()[..decoder.buffered().min(64)].escape_ascii()
        )),
        Loss::Eof => Error::startup(format!(
            "`{program}` (pid {pid}) ended ({exit}) before its handshake"
        )),
        Loss::Io(e) => Error::startup(format!("reading from `{program}` (pid {pid}) failed: {e}")),
        Loss::Protocol(d) => {
            Error::startup(format!("`{program}` (pid {pid}) sent a bad handshake: {d}"))
        }
    }
}
