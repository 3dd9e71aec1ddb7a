//! The dispatcher: one thread, one event loop, over every worker's pipes
//! and pidfds.
//!
//! It routes events and carries out decisions; it decides nothing itself:
//! which items end how is [`settle`]'s, how a worker is killed or when one
//! is started again is the supervisor's. Callers reach it through
//! [`Command`]s (plus an eventfd that wakes its wait); it reaches them
//! through each job's channel. See `README.md` beside this file.

mod batch;
mod command;
mod conn;
mod frames;
pub(crate) mod lane;
mod loss;
mod outbox;
mod pace;
mod queue;
mod settle;
mod startup;
mod stop;

pub(crate) use crate::supervisor::handshake::Initializer;
pub(crate) use batch::{Batch, ChunkMsg, Job, Shared};
pub(crate) use command::{Command, Handle};
pub(crate) use outbox::{Inbox, Outbox};
pub(crate) use pace::DEEP_PIPELINE;
pub(crate) use startup::{Config, RemoteSite};

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use nix::poll::{PollFd, PollFlags};
use procpool_protocol::TaskInfo;

use self::batch::Counters;
use self::command::Waker;
use self::conn::{Conn, Violation};
use self::settle::Settle;
use self::startup::{Phase, Site};
use crate::error::Error;
use crate::supervisor::{WorkerProcess, ZygoteWatch};
use crate::sys::{self, Waited};

/// How long the dispatcher looks for a lone call's answer (one item out,
/// nothing queued) before sleeping; with anything else out on local
/// workers, it spins as `sys::Spin` does.
const SPIN: Duration = Duration::from_micros(50);

/// Reads per worker per round, so one chatty worker cannot starve others.
const READS_PER_ROUND: usize = 8;

/// Starts the dispatcher thread and waits until every initial worker has
/// shaken hands (and run the initializer), or the first start-up error.
pub(crate) fn start(
    config: Config,
    shared: Arc<Shared>,
) -> Result<(Handle, std::thread::JoinHandle<()>), Error> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let waker = Arc::new(Waker {
        fd: sys::wake_fd().map_err(|e| Error::startup_io("cannot create an eventfd", e))?,
        sleeping: AtomicBool::new(false),
    });
    let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
    let stop = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Error::startup_io("cannot create a pipe", e.into()))?;
    let thread_waker = waker.clone();
    let thread = std::thread::Builder::new()
        .name("procpool-dispatcher".into())
        .spawn(move || {
            // Writes to a dead worker fail with EPIPE on this thread.
            sys::block_sigpipe_in_this_thread();
            let mut d = Dispatcher::new(config, shared.clone(), rx, thread_waker, ready_tx, stop);
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| d.run()));
            if let Err(payload) = run {
                // Never a hang: every waiting caller gets an error naming
                // the panic (the batches' Drop reads it), and dropping the
                // dispatcher kills and reaps every worker.
                let message = crate::error::panic_message(&*payload);
                log::error!("procpool: the dispatcher panicked: {message}");
                shared.set_broken(format!("the dispatcher panicked: {message}"));
                drop(d);
                shared.pids.lock().clear();
            }
        })
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

/// Where the pool is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Open,
    /// `join`: finish what is queued and lent, then drain.
    Joining,
    /// Every input closed; workers exit on their own until `until`.
    Draining {
        until: Option<Instant>,
    },
    /// `terminate`: work failed, workers signalled; they are reaped as
    /// they die.
    Terminating,
}

/// Why a worker is being removed.
#[derive(Debug)]
enum Loss {
    /// It exited (its pidfd or the end of its output says so).
    Exited,
    Io(std::io::Error),
    Violation(Violation),
    StartupTimeout,
    InitFailed(String),
    /// A remote worker's relay did not start it, and said why.
    Refused(String),
}

/// One worker as the loop sees it.
#[derive(Debug)]
struct Worker {
    slot: u64,
    process: WorkerProcess,
    /// `None` while lent to a caller.
    conn: Option<Conn>,
    /// Keeps the progress counter's path open until the handshake.
    progress_fd: Option<OwnedFd>,
    phase: Phase,
    startup_deadline: Option<Instant>,
    /// Used up by `max_tasks_per_worker`: its input is closed.
    retiring: bool,
    /// Its pidfd fired while a caller had it: settle when it comes back.
    dead_while_lent: bool,
    /// Forked from the zygote, whose initializer already ran.
    forked: bool,
    /// Where it was started: 0 is this host, others are remote sites.
    site: usize,
    /// A remote worker's pid on its host (from its handshake).
    remote_pid: Option<u32>,
    /// A remote worker: `Run` frames its relay was sent a `Cancel` for,
    /// each with the instant by which the relay must have carried it out
    /// (killed the worker or let the batch end). A relay that has not is
    /// not answering: its launcher is killed, as after a `Kill` frame.
    relay_cancels: Vec<(u64, Instant)>,
    /// A remote worker whose launcher ended before its stream did (a
    /// multiplexed `ssh` client exits as soon as its master passes on the
    /// exit status, which may be before the master wrote the session's
    /// last bytes): it takes no work, and is settled when its stream ends
    /// or its relay's report arrives, or as a lost connection at this
    /// instant.
    stream_due: Option<Instant>,
}

impl Worker {
    /// Counts towards the pool's size and takes work. (One whose launcher
    /// ended during its start-up still counts until it is settled: its
    /// failed start schedules its own retry.)
    fn serving(&self) -> bool {
        !self.retiring
            && !self.dead_while_lent
            && !self.process.killing()
            && (self.stream_due.is_none() || self.phase != Phase::Ready)
    }

    /// Whether the rest of its stream, after its launcher ended, is worth
    /// waiting for: a remote worker whose relay has not reported yet,
    /// whose launcher the pool did not end itself, while the pool is not
    /// `terminating`. (A relay killing its worker for a deadline or a
    /// cancel ends on its own, and its report says what started.)
    fn stream_awaited(&self, terminating: bool) -> bool {
        self.process.remote.is_some()
            && !terminating
            && !self.process.launcher_signalled()
            && self
                .conn
                .as_ref()
                .is_some_and(|c| c.relay_report().is_none())
    }
}

struct Dispatcher {
    config: Config,
    shared: Arc<Shared>,
    rx: Receiver<Command>,
    waker: Arc<Waker>,
    workers: Vec<Worker>,
    settle: Settle<Batch>,
    /// Where workers start, each with its restart limit: local first.
    sites: Vec<Site>,
    stage: Stage,
    /// Present until the initial workers are all ready.
    starting: Option<Sender<Result<(), Error>>>,
    /// Set once the pool is broken for good.
    halted: bool,
    /// The task list every worker must announce, once the first did.
    tasks: Option<Vec<TaskInfo>>,
    init_task: Option<u32>,
    next_slot: u64,
    /// The stop pipe: lent workers' callers watch the read end; the write
    /// end is dropped at `terminate` (and with the dispatcher).
    stop: (OwnedFd, Option<OwnedFd>),
    /// The zygote's pidfd, watched so a zygote that dies is reaped at once.
    zygote_watch: ZygoteWatch,
    /// The budget of the yielding spin before a wait (`wait_and_handle`).
    spin: sys::Spin,
    /// The thread that starts workers beside this one, once a group of
    /// them was due at once (`None` inside: the system refused a thread).
    /// Last, so it is dropped (its thread joined) after every worker it
    /// started is killed and reaped: they die with that thread.
    spawner: Option<Option<crate::supervisor::Spawner>>,
}

impl Dispatcher {
    fn new(
        config: Config,
        shared: Arc<Shared>,
        rx: Receiver<Command>,
        waker: Arc<Waker>,
        ready: Sender<Result<(), Error>>,
        stop: (OwnedFd, OwnedFd),
    ) -> Self {
        Self {
            sites: Site::all(&config),
            config,
            shared,
            rx,
            waker,
            workers: Vec::new(),
            settle: Settle::default(),
            stage: Stage::Open,
            starting: Some(ready),
            halted: false,
            tasks: None,
            init_task: None,
            next_slot: 0,
            stop: (stop.0, Some(stop.1)),
            zygote_watch: ZygoteWatch::default(),
            spin: sys::Spin::default(),
            spawner: None,
        }
    }

    /// The event loop: take commands, act, wait for the next event.
    fn run(&mut self) {
        self.refuse_if_empty();
        loop {
            self.drain_commands();
            let now = Instant::now();
            if matches!(self.stage, Stage::Open | Stage::Joining) && !self.halted {
                self.keep_capacity(now);
                if self.settle.queued() || self.stage == Stage::Joining {
                    self.reclaim_lent();
                }
                self.dispatch(now);
                self.retire_used_up();
                if self.stage == Stage::Joining && self.finished() {
                    self.drain(now);
                } else if self.stage == Stage::Open {
                    self.lend_idle();
                }
            }
            if self.halted {
                return;
            }
            if matches!(self.stage, Stage::Draining { .. } | Stage::Terminating)
                && self.workers.is_empty()
            {
                return;
            }
            for w in &mut self.workers {
                if let Some(c) = &mut w.conn {
                    c.flush_from_loop();
                }
            }
            if let Err(e) = self.wait_and_handle() {
                log::error!("procpool: the dispatcher's wait failed: {e}");
                self.halt(format!("waiting for workers failed: {e}"));
            }
        }
    }

    /// Joined: nothing queued, in flight or lent, and the pool started.
    fn finished(&self) -> bool {
        self.starting.is_none()
            && self.settle.idle()
            && self.workers.iter().all(|w| w.conn.is_some())
    }

    fn index(&self, slot: u64) -> Option<usize> {
        self.workers.iter().position(|w| w.slot == slot)
    }

    pub(super) fn publish_pids(&self) {
        *self.shared.pids.lock() = self
            .workers
            .iter()
            .filter(|w| w.serving() && matches!(self.stage, Stage::Open | Stage::Joining))
            // A remote worker's pid names a process on another host.
            .filter(|w| w.process.remote.is_none())
            .map(|w| w.process.pid())
            .collect();
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        // Lent workers come back to be killed with the rest.
        for loan in self.shared.lanes.reclaim() {
            drop(loan);
        }
    }
}

/// Something to do to a worker, found while looking at the events.
#[derive(Debug)]
enum Action {
    Lose(Loss),
    /// Its pidfd fired while it was lent.
    DiedWhileLent,
}

impl Dispatcher {
    /// The next instant something is due: a deadline, a SIGKILL, a retry, a
    /// stall, a start-up timeout, the end of the drain.
    fn next_deadline(&self) -> Option<Instant> {
        let stall = self.config.stall_timeout;
        let workers = self.workers.iter().flat_map(|w| {
            [
                w.process.kill_deadline().filter(|_| w.stream_due.is_none()),
                w.startup_deadline.filter(|_| w.phase != Phase::Ready),
                w.conn.as_ref().and_then(|c| c.stall_deadline(stall)),
                w.relay_cancels.iter().map(|&(_, at)| at).min(),
                w.stream_due,
            ]
        });
        let drain = match self.stage {
            Stage::Draining { until } => until,
            _ => None,
        };
        let retries = self.sites.iter().map(|s| s.respawn.next_deadline());
        workers
            .chain([self.settle.next_deadline(), drain])
            .chain(retries)
            .flatten()
            .min()
    }

    /// One wait over the wake fd and every worker's pipes and pidfd, then
    /// the events it reported and the deadlines that passed.
    fn wait_and_handle(&mut self) -> std::io::Result<()> {
        let deadline = self.next_deadline();
        // Announce sleep, then look once more: a command queued before the
        // announcement is seen here, one queued after it writes the eventfd.
        self.waker.sleeping.store(true, Ordering::SeqCst);
        let busy = !self.rx.is_empty();
        // Spin before sleeping while batches are out on local workers:
        // their answers are on their way, and a CPU left idle meanwhile
        // takes tens of microseconds to wake on a VM (and a local worker
        // spins on its input for the next chunk, which is worth sending
        // at once). Not for remote workers' alone: their answers are a
        // network round trip away, and the CPU is the launchers' and the
        // relays' meanwhile.
        let local = self
            .workers
            .iter()
            .any(|w| w.process.remote.is_none() && self.settle.in_flight(w.slot) > 0);
        // One item out and nothing waiting is the latency-bound case (one
        // call at a time through the loop: `apply_async`, or `apply` with
        // a deadline): a tight spin, for at most SPIN. Otherwise (a `map`,
        // an `imap`) a yielding one (`sys::Spin`): the CPU goes to the
        // caller encoding the next chunk or to a worker whenever they can
        // run, and the budget shrinks while answers come later than it. (A
        // tight spin on a `map`'s one chunk out took the CPU from the
        // caller: paired rounds of a `map` of 1M `u64` ran 1.065× as fast
        // without it.)
        let tight = local && !self.settle.queued() && self.settle.lone_item_out();
        let yielding = local && !tight;
        let mut readable = Vec::new();
        let mut exited = Vec::new();
        let mut zygote_died = false;
        let waited;
        {
            // Per worker: [output, input, pidfd] (unused slots watch the
            // wake fd for nothing).
            let none = || PollFd::new(self.waker.fd.as_fd(), PollFlags::empty());
            let mut fds = vec![PollFd::new(self.waker.fd.as_fd(), PollFlags::POLLIN)];
            for w in &self.workers {
                match &w.conn {
                    Some(c) => fds.push(PollFd::new(c.output_fd(), PollFlags::POLLIN)),
                    None => fds.push(none()),
                }
                match w.conn.as_ref().and_then(|c| c.write_fd()) {
                    Some(fd) => fds.push(PollFd::new(fd, PollFlags::POLLOUT)),
                    None => fds.push(none()),
                }
                // (Not once it fired for good: a lent worker's, or a
                // launcher's that ended before its stream.)
                let fired = w.dead_while_lent || w.stream_due.is_some();
                match w.process.pidfd().filter(|_| !fired) {
                    Some(fd) => fds.push(PollFd::new(fd, PollFlags::POLLIN)),
                    None => fds.push(none()),
                }
            }
            // Last: the zygote's pidfd, if the pool forks from one.
            let zygote = self.config.launch.zygote.as_deref();
            match zygote.and_then(|z| self.zygote_watch.fd(z)) {
                Some(fd) => fds.push(PollFd::new(fd, PollFlags::POLLIN)),
                None => fds.push(none()),
            }
            let mut got = if busy {
                sys::peek(&mut fds)?
            } else {
                Waited::TimedOut
            };
            if !busy && tight {
                let until = Instant::now() + SPIN;
                while got == Waited::TimedOut && Instant::now() < until {
                    std::hint::spin_loop();
                    got = sys::peek(&mut fds)?;
                }
            }
            if !busy
                && yielding
                && let Some(looked) = self.spin.run(|| match sys::peek(&mut fds) {
                    Ok(Waited::TimedOut) => None,
                    other => Some(other),
                })
            {
                got = looked?;
            }
            if !busy && got == Waited::TimedOut {
                got = sys::wait(&mut fds, deadline)?;
                if yielding {
                    self.spin.answered();
                }
            }
            self.waker.sleeping.store(false, Ordering::SeqCst);
            waited = got;
            if sys::flagged(&fds[0]) {
                let _ = self.waker.fd.read();
            }
            if got == Waited::Ready {
                zygote_died = fds.last().is_some_and(sys::flagged);
                let workers = &fds[1..fds.len() - 1];
                for (i, f) in workers.chunks(3).enumerate() {
                    if sys::flagged(&f[0]) && self.workers[i].conn.is_some() {
                        readable.push(self.workers[i].slot);
                    }
                    if sys::flagged(&f[2]) && self.workers[i].process.pidfd().is_some() {
                        exited.push(self.workers[i].slot);
                    }
                }
            }
        }
        if waited == Waited::Refused {
            // More descriptors to watch than RLIMIT_NOFILE allows (the host
            // lowered it): look at every pipe and process every few ms.
            log::warn!("procpool: poll refused its descriptors (RLIMIT_NOFILE too low?)");
            std::thread::sleep(Duration::from_millis(5));
            let _ = self.waker.fd.read();
            for w in &mut self.workers {
                if w.process.has_exited() {
                    exited.push(w.slot);
                } else if w.conn.is_some() {
                    readable.push(w.slot);
                }
            }
            // The zygote, too (it is reaped only if it has exited).
            zygote_died = true;
        }

        if zygote_died && let Some(z) = &self.config.launch.zygote {
            self.zygote_watch.fired(z);
        }
        let mut actions: Vec<(u64, Action)> = Vec::new();
        for slot in readable {
            if let Err(loss) = self.read_worker(slot, READS_PER_ROUND) {
                actions.push((slot, Action::Lose(loss)));
            }
        }
        for slot in exited {
            if actions.iter().any(|(s, _)| *s == slot) {
                continue;
            }
            let Some(i) = self.index(slot) else { continue };
            if self.workers[i].conn.is_none() {
                actions.push((slot, Action::DiedWhileLent));
                continue;
            }
            if let Some(loss) = self.ended(slot) {
                actions.push((slot, Action::Lose(loss)));
            }
        }
        let now = Instant::now();
        let drain_over = matches!(self.stage, Stage::Draining { until: Some(u) } if now >= u);
        let terminating = self.stage == Stage::Terminating;
        for w in &mut self.workers {
            if actions.iter().any(|(s, _)| *s == w.slot) {
                continue;
            }
            if w.phase != Phase::Ready && w.startup_deadline.is_some_and(|d| now >= d) {
                actions.push((w.slot, Action::Lose(Loss::StartupTimeout)));
            } else if let Some(v) = w
                .conn
                .as_ref()
                .and_then(|c| c.stalled(self.config.stall_timeout, now))
            {
                actions.push((w.slot, Action::Lose(Loss::Violation(v))));
            } else if w
                .stream_due
                .is_some_and(|due| now >= due || !w.stream_awaited(terminating))
            {
                // The stream is over as far as it matters (its report
                // came, say: the relay's last word), or the wait is.
                actions.push((w.slot, Action::Lose(Loss::Exited)));
            } else if drain_over {
                log::warn!(
                    "procpool: worker {} did not exit within {:?} of its input closing; killing it",
                    w.process.pid(),
                    self.config.shutdown_grace
                );
                actions.push((w.slot, Action::Lose(Loss::Exited)));
            } else if w.stream_due.is_none() && w.process.tick(now) && w.process.is_thread() {
                // No signal stops a thread: past its grace period it is
                // detached, and the pool goes on without it. (A launcher
                // that ended is not escalated against: the wait for its
                // stream decides, above.)
                actions.push((w.slot, Action::Lose(Loss::Exited)));
            }
        }
        if drain_over {
            self.stage = Stage::Draining { until: None };
        }
        for (slot, action) in actions {
            if self.halted {
                break;
            }
            match action {
                Action::Lose(loss) => self.lose(slot, loss),
                Action::DiedWhileLent => {
                    // Its caller sees the end too and gives it back (or
                    // hands back its batch); until then nothing is decided.
                    if let Some(i) = self.index(slot) {
                        self.workers[i].dead_while_lent = true;
                    }
                    self.publish_pids();
                    self.reclaim_lent();
                }
            }
        }
        self.expire_deadlines(now);
        self.expire_relay_cancels(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Command;
    use crate::{Pool, Registry};

    fn nap(ms: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(ms));
        ms
    }

    /// A panic in the dispatcher never leaves a caller waiting: every
    /// unfinished task fails with an error naming the panic, later calls
    /// are refused the same way, and the pool still shuts down.
    #[test]
    fn a_dispatcher_panic_fails_every_waiting_caller_with_its_message() {
        let pool = Pool::builder()
            .workers(1)
            .in_process(Registry::new().task(nap))
            .build()
            .unwrap();
        // One running, one queued behind it.
        let running = pool.apply_async(nap, 300).unwrap();
        let queued = pool.apply_async(nap, 1).unwrap();
        pool.inner.handle.send(Command::Panic).unwrap();
        for handle in [running, queued] {
            let err = handle.get().unwrap_err();
            assert!(err.is_broken(), "{err}");
            assert!(
                err.to_string()
                    .contains("the dispatcher panicked: injected by a test"),
                "{err}"
            );
        }
        let err = pool.apply(nap, 1).unwrap_err();
        assert!(err.is_broken(), "{err}");
        pool.terminate();
        assert!(pool.worker_pids().is_empty());
    }
}
