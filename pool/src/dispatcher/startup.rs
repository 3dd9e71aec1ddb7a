//! A worker's start: spawn (asked of the supervisor), handshake, the
//! initializer, and what a failed start means for the pool.

use std::sync::Arc;
use std::time::{Duration, Instant};

use procpool_protocol::{FromWorker, Hello, encode_init};

use super::batch::{Counters, TaskTable};
use super::conn::{Conn, Violation};
use super::{Dispatcher, Loss, Worker};
use crate::error::{Error, ErrorKind, Exit};
use crate::supervisor::handshake::{self, Initializer, Refusal};
use crate::supervisor::{Launch, Limit, Respawn, Spawned, Spawner, free_index};

/// The pool's settings, fixed at build time.
pub(crate) struct Config {
    /// Local workers.
    pub(crate) workers: usize,
    pub(crate) launch: Launch,
    /// Remote hosts and how many workers each.
    pub(crate) remotes: Vec<RemoteSite>,
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

/// Workers on one remote host (or behind one launcher).
#[derive(Debug)]
pub(crate) struct RemoteSite {
    pub(crate) launch: Launch,
    pub(crate) workers: usize,
    pub(crate) restart_limit: Limit,
    /// Its first worker opens a connection the others share (ssh): they
    /// start once it is ready.
    pub(crate) shares_connection: bool,
}

/// Where workers start, as the loop keeps them: the local site (index 0)
/// or a remote one, each with its own restart limit.
#[derive(Debug)]
pub(crate) struct Site {
    pub(crate) launch: Launch,
    pub(crate) workers: usize,
    pub(crate) respawn: Respawn,
    /// For a remote site, its host's name.
    pub(crate) host: Option<Arc<str>>,
    pub(crate) shares_connection: bool,
    /// A worker of it became ready since its connection was last lost.
    pub(crate) connected: bool,
    /// Dropped past its restart limit, and why.
    pub(crate) dropped: Option<String>,
}

impl Site {
    /// Sites of a pool: the local one first.
    pub(crate) fn all(config: &Config) -> Vec<Site> {
        let local = Site {
            launch: config.launch.clone(),
            workers: config.workers,
            respawn: Respawn::new(config.restart_limit),
            host: None,
            shares_connection: false,
            connected: true,
            dropped: None,
        };
        let remote = config.remotes.iter().map(|r| Site {
            launch: Launch {
                // Its relay holds a half-written frame no longer than the
                // pool would wait for it.
                stall_timeout: config.stall_timeout,
                ..r.launch.clone()
            },
            workers: r.workers,
            respawn: Respawn::new(r.restart_limit),
            host: r.launch.site.as_ref().map(|s| s.name.clone()),
            shares_connection: r.shares_connection,
            connected: false,
            dropped: None,
        });
        std::iter::once(local).chain(remote).collect()
    }

    /// Workers it should have now: one only, while a shared connection is
    /// being opened.
    fn target(&self) -> usize {
        match self.dropped {
            Some(_) => 0,
            None if self.shares_connection && !self.connected => self.workers.min(1),
            None => self.workers,
        }
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
        FromWorker::Exited { .. } => "Exited",
        FromWorker::Refused { .. } => "Refused",
    }
}

impl Dispatcher {
    fn report_startup(&mut self, result: Result<(), Error>) {
        if let Some(tx) = self.starting.take() {
            let _ = tx.send(result);
        }
    }

    /// Starts workers (now, or when their backoff is over) until as many
    /// serve as the pool should have, site by site.
    pub(super) fn keep_capacity(&mut self, now: Instant) {
        for site in 0..self.sites.len() {
            let due = self.sites[site].respawn.due(now);
            self.spawn_workers(site, due, now);
            while !self.halted {
                let have = self
                    .workers
                    .iter()
                    .filter(|w| w.site == site && w.serving())
                    .count()
                    + self.sites[site].respawn.pending();
                let missing = self.sites[site].target().saturating_sub(have);
                if missing == 0 {
                    break;
                }
                self.spawn_workers(site, missing, now);
            }
        }
    }

    /// A pool whose sites ask for no worker at all (local workers left to
    /// their default beside remote sites that each have `workers(0)`)
    /// would wait for ever for one to be ready: its build fails instead.
    pub(super) fn refuse_if_empty(&mut self) {
        if self.starting.is_some() && self.full_size() == 0 {
            self.start_failed(
                0,
                Error::startup(
                    "a pool needs at least one worker: it has no local worker and its remote \
                     hosts ask for none",
                ),
            );
        }
    }

    /// Workers the pool has when every site is whole.
    fn full_size(&self) -> usize {
        self.sites.iter().map(|s| s.workers).sum()
    }

    /// Starts `n` workers of `site`. Local exec'd workers start side by
    /// side: this thread starts the first while the spawner thread starts
    /// the others (see `supervisor::Spawner`); all are waited for before
    /// any failure is acted on, so every worker started is kept (and so
    /// killed and reaped with the pool) even when the pool is halted.
    fn spawn_workers(&mut self, site: usize, n: usize, now: Instant) {
        if n == 0 {
            return;
        }
        let side_by_side = n > 1
            && self.sites[site].launch.starts_side_by_side()
            && self.spawner.get_or_insert_with(Spawner::start).is_some();
        if !side_by_side {
            for _ in 0..n {
                if self.halted {
                    return;
                }
                let index = self.free_index(&[]);
                let spawned = self.sites[site].launch.spawn(index);
                self.spawned(site, index, spawned, now);
            }
            return;
        }
        let mut indices = Vec::with_capacity(n);
        for _ in 0..n {
            let index = self.free_index(&indices);
            indices.push(index);
        }
        let launch = &self.sites[site].launch;
        let Some(Some(spawner)) = &self.spawner else {
            unreachable!("side by side only with a spawner");
        };
        let pending: Vec<_> = indices[1..]
            .iter()
            .map(|&index| (index, spawner.spawn(launch, index)))
            .collect();
        let mut results = vec![(indices[0], launch.spawn(indices[0]))];
        results.extend(pending.into_iter().map(|(index, p)| (index, p.wait())));
        let mut failures = Vec::new();
        for (index, result) in results {
            match result {
                Ok(s) => self.spawned(site, index, Ok(s), now),
                Err(e) => failures.push(e),
            }
        }
        for e in failures {
            // A failure that halted the pool (one in its build, say) makes
            // the others moot, as a start after it would have been.
            if self.halted {
                break;
            }
            self.start_failed(site, e);
        }
    }

    /// The lowest worker index that no serving worker has, nor `taken`: a
    /// replacement takes the index of the worker it replaces.
    fn free_index(&self, taken: &[usize]) -> usize {
        free_index(
            self.workers
                .iter()
                .filter(|w| w.serving())
                .map(|w| w.process.index())
                .chain(taken.iter().copied()),
        )
    }

    /// A worker could not start. While the pool is being built this fails
    /// the build; afterwards the restart policy of its site decides: past
    /// the limit, a remote site is dropped and the pool goes on with the
    /// others; the local site (or the last site left) breaks the pool.
    pub(super) fn start_failed(&mut self, site: usize, error: Error) {
        Counters::bump(&self.shared.stats.start_failures);
        if self.starting.is_some() {
            log::error!("procpool: {error}");
            self.report_startup(Err(error.clone()));
            self.halt(error.broken_reason());
            return;
        }
        let now = Instant::now();
        let s = &mut self.sites[site];
        let at = s
            .host
            .as_ref()
            .map(|h| format!(" on {h}"))
            .unwrap_or_default();
        match s.respawn.failed(now) {
            Ok(when) => log::warn!(
                "procpool: a replacement worker{at} failed to start ({error}); retrying in {:?}",
                when.saturating_duration_since(now)
            ),
            Err(failures) => {
                let limit = s.respawn.limit();
                let reason = format!(
                    "workers{at} failed to start {failures} times within {:?} (the limit is {}); last: {error}",
                    limit.window, limit.max
                );
                log::error!("procpool: {reason}");
                if s.host.is_none() {
                    return self.halt(reason);
                }
                log::error!(
                    "procpool: dropping host {}",
                    s.host.as_deref().unwrap_or("?")
                );
                s.respawn.clear();
                s.dropped = Some(reason);
                self.broken_if_no_worker_left();
            }
        }
    }

    /// With every site that has workers dropped, no worker is left
    /// anywhere: the pool is broken, with each site's reason.
    fn broken_if_no_worker_left(&mut self) {
        let alive = self
            .sites
            .iter()
            .any(|s| s.dropped.is_none() && s.workers > 0)
            || self.workers.iter().any(|w| w.serving());
        if !alive {
            let reasons: Vec<&str> = self
                .sites
                .iter()
                .filter_map(|s| s.dropped.as_deref())
                .collect();
            self.halt(format!(
                "no worker is left anywhere: {}",
                reasons.join("; ")
            ));
        }
    }

    /// A start's result: a new worker (waiting for its handshake), or a
    /// failed start.
    fn spawned(
        &mut self,
        site: usize,
        index: usize,
        spawned: Result<Spawned, Error>,
        now: Instant,
    ) {
        let spawned = match spawned {
            Ok(s) => s,
            Err(e) => return self.start_failed(site, e),
        };
        let pid = spawned.process.pid();
        Counters::bump(&self.shared.stats.workers_started);
        if spawned.forked {
            Counters::bump(&self.shared.stats.workers_forked);
        }
        log::debug!("procpool: started worker {pid} (index {index})");
        let slot = self.next_slot;
        self.next_slot += 1;
        let mut conn = Conn::new(
            pid,
            spawned.to_worker,
            spawned.from_worker,
            spawned.progress,
            self.config.max_frame,
            now,
        );
        conn.remote = spawned.process.remote.is_some();
        conn.host = spawned.process.remote.clone().map(|h| (h, None));
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
            site,
            remote_pid: None,
            relay_cancels: Vec::new(),
            stream_due: None,
        });
        self.publish_pids();
    }

    pub(super) fn accept_hello(&mut self, i: usize, hello: Hello) -> Result<(), Loss> {
        let tasks = hello.tasks;
        if self.workers[i].process.remote.is_some() {
            self.workers[i].remote_pid = Some(hello.pid);
            if let Some(c) = &mut self.workers[i].conn
                && let Some((_, pid)) = &mut c.host
            {
                *pid = Some(hello.pid);
            }
        }
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
        let pid = w.remote_pid.unwrap_or_else(|| w.process.pid());
        self.settle.add_worker(w.slot, pid, now);
        if let Some(host) = &w.process.remote {
            self.settle.set_host(w.slot, host.clone());
        }
        let site = &mut self.sites[w.site];
        site.respawn.succeeded();
        site.connected = true;
        if self.starting.is_some()
            && self.workers.len() == self.full_size()
            && self.workers.iter().all(|w| w.phase == Phase::Ready)
        {
            self.report_startup(Ok(()));
        }
    }

    pub(super) fn startup_error(
        &self,
        site: usize,
        pid: u32,
        exit: Exit,
        loss: &Loss,
        conn: Option<&Conn>,
    ) -> Error {
        let program = self.sites[site].launch.describe();
        match loss {
            // On another host, which one: it may be the only one that
            // fails (a file only some hosts have).
            Loss::InitFailed(m) => Error::new(ErrorKind::Initializer {
                message: match &self.sites[site].host {
                    Some(host) => format!("{m} (worker {pid} on {host})"),
                    None => m.clone(),
                },
            }),
            Loss::Refused(m) => Error::startup(format!("`{program}` was refused: {m}")),
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
