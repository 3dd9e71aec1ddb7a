//! A worker's start: spawn (asked of the supervisor), handshake, the
//! initializer, and what a failed start means for the pool.

use std::sync::Arc;
use std::time::{Duration, Instant};

use procpool_protocol::{FromWorker, TaskInfo, encode_init};

use super::batch::{Counters, TaskTable};
use super::conn::{Conn, Violation};
use super::{Dispatcher, Loss, Worker};
use crate::error::{Error, ErrorKind, Exit};
use crate::supervisor::handshake::{self, Initializer, Refusal};
use crate::supervisor::{Launch, Limit, free_index};

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
    pub(crate) initializer: Option<Arc<Initializer>>,
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

/// How far a worker got in starting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Waiting for the preamble and `Hello`.
    Handshake,
    /// Waiting for the initializer's outcome.
    Init,
    Ready,
}

/// A message's name, for protocol errors.
pub(crate) fn name_of(msg: &FromWorker<'_>) -> &'static str {
    match msg {
        FromWorker::Hello(_) => "Hello",
        FromWorker::InitDone(_) => "InitDone",
        FromWorker::Done(_) => "Done",
        FromWorker::Log(_) => "Log",
        FromWorker::Forked { .. } => "Forked",
        FromWorker::NotForked(_) => "NotForked",
        FromWorker::Reaped { .. } => "Reaped",
        FromWorker::Shared { .. } => "Shared",
    }
}

impl Dispatcher {
    fn report_startup(&mut self, result: Result<(), Error>) {
        if let Some(tx) = self.starting.take() {
            let _ = tx.send(result);
        }
    }

    /// Starts workers (now, or when their backoff is over) until as many
    /// serve as the pool should have.
    pub(super) fn keep_capacity(&mut self, now: Instant) {
        for _ in 0..self.respawn.due(now) {
            self.spawn_or_retry(now);
        }
        while !self.halted
            && self.workers.iter().filter(|w| w.serving()).count() + self.respawn.pending()
                < self.config.workers
        {
            self.spawn_or_retry(now);
        }
    }

    fn spawn_or_retry(&mut self, now: Instant) {
        if let Err(e) = self.spawn_worker(now) {
            self.start_failed(e);
        }
    }

    /// A worker could not start. While the pool is being built this fails
    /// the build; afterwards the restart policy decides.
    pub(super) fn start_failed(&mut self, error: Error) {
        Counters::bump(&self.shared.stats.start_failures);
        if self.starting.is_some() {
            log::error!("procpool: {error}");
            self.report_startup(Err(error.clone()));
            self.halt(error.broken_reason());
            return;
        }
        let now = Instant::now();
        match self.respawn.failed(now) {
            Ok(at) => log::warn!(
                "procpool: a replacement worker failed to start ({error}); retrying in {:?}",
                at.saturating_duration_since(now)
            ),
            Err(failures) => {
                let limit = self.respawn.limit();
                log::error!(
                    "procpool: workers failed to start {failures} times within {:?}: {error}",
                    limit.window
                );
                self.halt(format!(
                    "workers failed to start {failures} times within {:?} (the limit is {}); last: {error}",
                    limit.window, limit.max
                ));
            }
        }
    }

    fn spawn_worker(&mut self, now: Instant) -> Result<(), Error> {
        // A replacement takes the index of the worker it replaces.
        let index = free_index(
            self.workers
                .iter()
                .filter(|w| w.serving())
                .map(|w| w.process.index()),
        );
        let spawned = self.config.launch.spawn(index)?;
        let pid = spawned.process.pid();
        Counters::bump(&self.shared.stats.workers_started);
        if spawned.forked {
            Counters::bump(&self.shared.stats.workers_forked);
        }
        log::debug!("procpool: started worker {pid} (index {index})");
        let slot = self.next_slot;
        self.next_slot += 1;
        let conn = Conn::new(
            pid,
            spawned.to_worker,
            spawned.from_worker,
            spawned.progress,
            self.config.max_frame,
            now,
        );
        self.workers.push(Worker {
            slot,
            process: spawned.process,
            conn: Some(conn),
            progress_fd: Some(spawned.progress_fd),
            phase: super::Phase::Handshake,
            startup_deadline: crate::sys::after(now, self.config.startup_timeout),
            retiring: false,
            dead_while_lent: false,
            forked: spawned.forked,
        });
        self.publish_pids();
        Ok(())
    }

    pub(super) fn accept_hello(&mut self, i: usize, tasks: Vec<TaskInfo>) -> Result<(), Loss> {
        let verdict = handshake::check_hello(
            self.tasks.as_deref(),
            &tasks,
            self.config.initializer.as_deref(),
        );
        match verdict {
            Ok(init_task) if self.tasks.is_none() => {
                self.init_task = init_task;
                let table = crate::tasks::for_pool(tasks.clone(), init_task);
                let _ = self.shared.tasks.set(TaskTable::new(table));
                self.tasks = Some(tasks);
            }
            Ok(_) => {}
            Err(Refusal::Initializer(m)) => return Err(Loss::InitFailed(m)),
            Err(Refusal::OtherTasks) => {
                return Err(Loss::Violation(Violation::Protocol(
                    "it serves other tasks than the pool's first worker".into(),
                )));
            }
        }
        // It opened its progress counter before saying hello.
        self.workers[i].progress_fd = None;
        match (&self.config.initializer, self.init_task) {
            // A forked worker has the state its zygote's initializer made.
            (Some(init), Some(task)) if !self.workers[i].forked => {
                let mut frame = Vec::new();
                encode_init(&mut frame, task, &init.arg, self.config.max_frame).map_err(|e| {
                    Loss::InitFailed(format!("its argument does not fit a frame: {e}"))
                })?;
                let w = &mut self.workers[i];
                w.conn.as_mut().ok_or(Loss::Exited)?.queue_frame(&frame);
                w.phase = Phase::Init;
            }
            _ => self.became_ready(i),
        }
        Ok(())
    }

    pub(super) fn became_ready(&mut self, i: usize) {
        let now = Instant::now();
        let w = &mut self.workers[i];
        w.phase = Phase::Ready;
        let shares = w.conn.as_ref().is_some_and(|c| c.shares());
        self.shared.worker_shares(shares);
        self.settle.add_worker(w.slot, w.process.pid(), now);
        self.respawn.succeeded();
        if self.starting.is_some()
            && self.workers.len() == self.config.workers
            && self.workers.iter().all(|w| w.phase == Phase::Ready)
        {
            self.report_startup(Ok(()));
        }
    }

    pub(super) fn startup_error(
        &self,
        pid: u32,
        exit: Exit,
        loss: &Loss,
        conn: Option<&Conn>,
    ) -> Error {
        let program = self.config.launch.describe();
        match loss {
            Loss::InitFailed(m) => Error::new(ErrorKind::Initializer { message: m.clone() }),
            Loss::Violation(Violation::Identity(m)) => Error::startup(format!(
                "`{program}` is not a procpool worker we can use: {m}"
            )),
            Loss::StartupTimeout => Error::startup(format!(
                "`{program}` (pid {pid}) did not complete the handshake in time"
            )),
            Loss::Exited if conn.is_some_and(|c| c.buffered() > 0) => {
                let c = conn.expect("checked");
                Error::startup(format!(
                    "`{program}` (pid {pid}) ended ({exit}) after writing {} bytes that are not a handshake: \"{}\"",
                    c.buffered(),
                    c.head().escape_ascii()
                ))
            }
            Loss::Exited => Error::startup(format!(
                "`{program}` (pid {pid}) ended ({exit}) before its handshake"
            )),
            Loss::Io(e) => {
                Error::startup(format!("reading from `{program}` (pid {pid}) failed: {e}"))
            }
            Loss::Violation(Violation::Protocol(d)) => {
                Error::startup(format!("`{program}` (pid {pid}) sent a bad handshake: {d}"))
            }
        }
    }
}
