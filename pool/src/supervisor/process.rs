//! A worker process: started by exec, watched through its pidfd, reaped
//! exactly once with its status cached.
//!
//! - **Spawn only by exec.** [`Launch::spawn`] uses `std::process::Command`
//!   (posix_spawn, or vfork + exec) with no `pre_exec` closure: no code of
//!   ours runs between fork and exec. The only descriptors a worker inherits
//!   are its two protocol pipes (as stdin and stdout) and stderr; every
//!   descriptor this crate creates is close-on-exec from birth.
//! - **Own process group.** Each worker leads a new process group, so a
//!   signal to the group reaches whatever the task spawned.
//! - **Exact reaping.** We wait on our own child's pid only, and cache its
//!   exit status; the worker itself is signalled through its pidfd, and its
//!   group only while the worker is unreaped (see `sys::signal_group`).
//! - **A launcher seam.** [`Launch`] holds what to start: a program by
//!   exec, or (the debugging mode) a thread of this process serving the
//!   registry over pipes.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::Signal;
use procpool_protocol::exit_code;

use parking_lot::Mutex;

use super::zygote::{Zygote, Zygotes};
use crate::error::{Error, Exit};
use crate::sys;
use crate::worker::{
    INDEX_ENV, LOG_LEVEL_ENV, MAX_FRAME_ENV, MEMORY_LIMIT_ENV, PARENT_PID_ENV, PROGRESS_ENV,
    Registry, WORKER_ENV, ZYGOTE_ENV,
};

/// What a worker is.
#[derive(Clone)]
pub(crate) enum Program {
    /// A program started by exec (the current executable or a worker
    /// program), with its `argv[0]` and arguments.
    Exec {
        path: PathBuf,
        arg0: Option<OsString>,
        args: Vec<OsString>,
    },
    /// A thread of this process running the serve loop over pipes: the
    /// debugging mode, without isolation.
    Thread(Arc<Registry>),
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Program::Exec { path, args, .. } => f
                .debug_struct("Exec")
                .field("path", path)
                .field("args", args)
                .finish(),
            Program::Thread(r) => f.debug_tuple("Thread").field(r).finish(),
        }
    }
}

/// How to start one worker.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    pub(crate) program: Program,
    pub(crate) max_frame: u32,
    pub(crate) memory_limit: Option<u64>,
    /// Set when a worker it started exited with
    /// [`exit_code::DID_NOT_SERVE`]: the program's `main` built a pool
    /// instead of serving. The builder turns a failed start into the one
    /// message that says so.
    pub(crate) did_not_serve: Arc<AtomicBool>,
    /// The zygote workers are forked from (`StartMethod::Zygote`).
    pub(crate) zygote: Option<Arc<Mutex<Zygotes>>>,
}

impl Launch {
    /// Re-exec mode: this very executable, through `/proc/self/exe` so a
    /// binary replaced on disk since start-up (a rebuild) is not picked up.
    pub(crate) fn current_exe(max_frame: u32) -> Self {
        Self::with(
            Program::Exec {
                path: PathBuf::from("/proc/self/exe"),
                arg0: std::env::args_os().next(),
                args: Vec::new(),
            },
            max_frame,
        )
    }

    /// A named worker program.
    pub(crate) fn program(path: PathBuf, args: Vec<OsString>, max_frame: u32) -> Self {
        Self::with(
            Program::Exec {
                path,
                arg0: None,
                args,
            },
            max_frame,
        )
    }

    /// Threads of this process serving `registry`.
    pub(crate) fn threads(registry: Arc<Registry>, max_frame: u32) -> Self {
        Self::with(Program::Thread(registry), max_frame)
    }

    fn with(program: Program, max_frame: u32) -> Self {
        Self {
            program,
            max_frame,
            memory_limit: None,
            did_not_serve: Arc::new(AtomicBool::new(false)),
            zygote: None,
        }
    }

    /// Whether workers are threads of this process.
    pub(crate) fn is_threads(&self) -> bool {
        matches!(self.program, Program::Thread(_))
    }

    /// A human-readable name of what is started, for errors.
    pub(crate) fn describe(&self) -> String {
        match &self.program {
            Program::Exec {
                path,
                arg0: Some(a),
                ..
            } if path.as_os_str() == "/proc/self/exe" => {
                format!("{} (re-exec)", a.to_string_lossy())
            }
            Program::Exec { path, .. } => path.display().to_string(),
            Program::Thread(_) => "an in-process worker thread".to_owned(),
        }
    }

    /// Starts one worker, the pool's worker number `index` (see
    /// `procpool::worker::index`): forked from the zygote when the pool
    /// has a working one, else by exec (or on a thread).
    pub(crate) fn spawn(&self, index: usize) -> Result<Spawned, Error> {
        let io = |e| Error::startup_io(format!("cannot start `{}`", self.describe()), e);
        if let Program::Thread(registry) = &self.program {
            return self.spawn_thread(registry.clone(), index).map_err(io);
        }
        if let Some(zygotes) = &self.zygote {
            if let Some(forked) = self.fork(zygotes, index)? {
                return Ok(forked);
            }
        }
        self.exec(index).map_err(io)
    }

    /// The command that starts the program with the settings every worker
    /// (and the zygote) reads.
    fn command(&self) -> Command {
        let Program::Exec { path, arg0, args } = &self.program else {
            unreachable!("threads are not exec'd");
        };
        let mut cmd = Command::new(path);
        if let Some(a) = arg0 {
            cmd.arg0(a);
        }
        cmd.args(args)
            .env(WORKER_ENV, procpool_protocol::PROTOCOL_VERSION.to_string())
            .env(MAX_FRAME_ENV, self.max_frame.to_string())
            .env(PARENT_PID_ENV, std::process::id().to_string())
            .env(LOG_LEVEL_ENV, (log::max_level() as usize).to_string())
            .stderr(Stdio::inherit())
            .process_group(0);
        if let Some(bytes) = self.memory_limit {
            cmd.env(MEMORY_LIMIT_ENV, bytes.to_string());
        }
        cmd
    }

    fn exec(&self, index: usize) -> io::Result<Spawned> {
        let (progress_fd, progress) = sys::SharedCounter::create()?;
        let progress_path = format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            progress_fd.as_raw_fd()
        );
        let mut child = self
            .command()
            .env(PROGRESS_ENV, &progress_path)
            .env(INDEX_ENV, index.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let to_worker: OwnedFd = child.stdin.take().expect("stdin was piped").into();
        let from_worker: OwnedFd = child.stdout.take().expect("stdout was piped").into();
        let pidfd = sys::pidfd_open(child.id());
        let mut process = WorkerProcess::new(Kind::Process(child), pidfd, index);
        process.did_not_serve = Some(self.did_not_serve.clone());
        Self::finish(process, to_worker, from_worker, progress_fd, progress)
    }

    /// Starts a zygote process, its control socket as stdin and stdout.
    fn spawn_zygote(&self) -> io::Result<(Child, OwnedFd)> {
        let (ours, theirs) = sys::socket_pair()?;
        let child = self
            .command()
            .env(ZYGOTE_ENV, "1")
            .stdin(Stdio::from(theirs.try_clone()?))
            .stdout(Stdio::from(theirs))
            .spawn()?;
        Ok((child, ours))
    }

    /// A worker forked from the zygote; `None` when it is to be exec'd.
    fn fork(&self, zygotes: &Mutex<Zygotes>, index: usize) -> Result<Option<Spawned>, Error> {
        let io = |e: io::Error| Error::startup_io("cannot make a worker's pipes", e);
        let (worker_in, to_worker) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| io(e.into()))?;
        let (from_worker, worker_out) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| io(e.into()))?;
        let (progress_fd, progress) = sys::SharedCounter::create().map_err(io)?;
        let fds = [worker_in.as_fd(), worker_out.as_fd(), progress_fd.as_fd()];
        let Some(forked) = zygotes.lock().fork(|| self.spawn_zygote(), index, fds)? else {
            return Ok(None);
        };
        let kind = Kind::Forked {
            pid: forked.pid,
            zygote: forked.zygote,
        };
        let process = WorkerProcess::new(kind, Some(forked.pidfd), index);
        let mut spawned =
            Self::finish(process, to_worker, from_worker, progress_fd, progress).map_err(io)?;
        spawned.forked = true;
        Ok(Some(spawned))
    }

    fn spawn_thread(&self, registry: Arc<Registry>, index: usize) -> io::Result<Spawned> {
        let (worker_in, to_worker) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let (from_worker, worker_out) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let max_frame = self.max_frame;
        let (progress_fd, progress) = sys::SharedCounter::create()?;
        let progress_path = format!("/proc/self/fd/{}", progress_fd.as_raw_fd());
        let thread = std::thread::Builder::new()
            .name("procpool-inproc-worker".into())
            .spawn(move || {
                crate::worker::serve_on_thread(
                    &registry,
                    File::from(worker_in),
                    File::from(worker_out),
                    max_frame,
                    &progress_path,
                    index,
                )
            })?;
        let process = WorkerProcess::new(Kind::Thread(Some(thread)), None, index);
        Self::finish(process, to_worker, from_worker, progress_fd, progress)
    }

    fn finish(
        process: WorkerProcess,
        to_worker: OwnedFd,
        from_worker: OwnedFd,
        progress_fd: OwnedFd,
        progress: sys::SharedCounter,
    ) -> io::Result<Spawned> {
        sys::set_nonblocking(to_worker.as_fd())?;
        sys::set_nonblocking(from_worker.as_fd())?;
        Ok(Spawned {
            process,
            to_worker: File::from(to_worker),
            from_worker: File::from(from_worker),
            progress,
            progress_fd,
            forked: false,
        })
    }
}

/// A started worker: its process and the parent's ends of its pipes
/// (non-blocking, close-on-exec).
#[derive(Debug)]
pub(crate) struct Spawned {
    pub(crate) process: WorkerProcess,
    pub(crate) to_worker: File,
    pub(crate) from_worker: File,
    /// How many items the worker has started (it stores, we read).
    pub(crate) progress: sys::SharedCounter,
    /// Keeps the counter's path open until the worker has opened it (its
    /// handshake says so).
    pub(crate) progress_fd: OwnedFd,
    /// Forked from the zygote: its initializer already ran.
    pub(crate) forked: bool,
}

#[derive(Debug)]
enum Kind {
    Process(Child),
    /// Forked by a zygote, which is its parent and reaps it.
    Forked {
        pid: u32,
        zygote: Arc<Mutex<Zygote>>,
    },
    /// `None` once joined or detached.
    Thread(Option<std::thread::JoinHandle<i32>>),
}

/// One worker process (or in-process thread), reaped exactly once.
/// Dropping a process unreaped kills it (and its group and tree) and
/// reaps it, so no zombie and no stray process outlives it.
#[derive(Debug)]
pub(crate) struct WorkerProcess {
    kind: Kind,
    pidfd: Option<OwnedFd>,
    /// Its index in the pool, `0..workers` (see `procpool::worker::index`).
    index: usize,
    exit: Option<Exit>,
    /// An in-process thread left running (in a task) when it was reaped.
    detached: bool,
    /// A kill in progress (see `kill.rs`).
    pub(super) kill: super::kill::Escalation,
    /// Its launcher's flag, set if it exits with
    /// [`exit_code::DID_NOT_SERVE`].
    did_not_serve: Option<Arc<AtomicBool>>,
}

impl WorkerProcess {
    fn new(kind: Kind, pidfd: Option<OwnedFd>, index: usize) -> Self {
        Self {
            kind,
            pidfd,
            index,
            exit: None,
            detached: false,
            kill: Default::default(),
            did_not_serve: None,
        }
    }

    /// Its index in the pool, given at spawn.
    pub(crate) fn index(&self) -> usize {
        self.index
    }

    /// The worker's pid; for an in-process thread, this process's own.
    pub(crate) fn pid(&self) -> u32 {
        match &self.kind {
            Kind::Process(c) => c.id(),
            Kind::Forked { pid, .. } => *pid,
            Kind::Thread(_) => std::process::id(),
        }
    }

    /// Its pidfd (readable once it has exited), if it is a process and the
    /// kernel has pidfds.
    pub(crate) fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd.as_ref().map(|f| f.as_fd())
    }

    /// An in-process thread still running when it was reaped: it may go on
    /// starting items, so its progress counter is not final.
    pub(crate) fn detached(&self) -> bool {
        self.detached
    }

    /// Reaped: its pid is no longer ours.
    pub(super) fn reaped(&self) -> bool {
        self.exit.is_some()
    }

    pub(crate) fn is_thread(&self) -> bool {
        matches!(self.kind, Kind::Thread(_))
    }

    /// Signals the worker itself (through its pidfd: never a recycled pid,
    /// and whatever process group it moved to) and its process group
    /// (only while the worker is unreaped). A thread cannot be signalled:
    /// it stops when its task returns and its input is closed.
    pub(super) fn signal(&self, signal: Signal) {
        if self.exit.is_some() {
            return;
        }
        let group = match &self.kind {
            Kind::Process(_) => true,
            // Its group id is held while the zygote has not reaped it; a
            // lost zygote's workers are reaped by init, so only a live one
            // is signalled as a group then.
            Kind::Forked { zygote, .. } => {
                !zygote.lock().lost()
                    || self
                        .pidfd
                        .as_ref()
                        .is_some_and(|fd| !sys::pidfd_exited(fd.as_fd()))
            }
            Kind::Thread(_) => return,
        };
        let pid = self.pid();
        let direct = match &self.pidfd {
            Some(fd) => sys::pidfd_signal(fd.as_fd(), signal),
            None if sys::unreaped(pid) => {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)
                    .map_err(io::Error::from)
            }
            None => Ok(()),
        };
        let grouped = || match (&self.kind, group) {
            (_, false) => Ok(()),
            // Held: see above.
            (Kind::Forked { .. }, true) => sys::signal_held_group(pid, signal),
            (_, true) => sys::signal_group(pid, signal),
        };
        if let Err(e) = direct.and_then(|()| grouped()) {
            log::warn!("procpool: cannot signal worker {pid}: {e}");
        }
    }

    /// Waits for the worker to end and returns how it ended. Only called
    /// once it has exited or was sent SIGKILL, so it never waits on a
    /// process nothing has ended. A thread still running (a hung task) is
    /// detached, not waited for.
    pub(super) fn reap(&mut self) -> Exit {
        if let Some(e) = self.exit {
            return e;
        }
        let exit = match &mut self.kind {
            Kind::Process(child) => loop {
                match child.wait() {
                    Ok(status) => break Exit::of(status),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        // ECHILD: the kernel reaped it (the host program set
                        // SIGCHLD to SIG_IGN) or someone else did: its
                        // status is lost.
                        log::debug!("procpool: cannot wait for worker {}: {e}", child.id());
                        break Exit::Unknown;
                    }
                }
            },
            Kind::Forked { pid, zygote } => {
                // It has exited or was sent SIGKILL: wait until it is a
                // zombie (as `wait` would for an exec'd one), so the zygote
                // answers at once and a slow death is not blamed on it.
                if let Some(fd) = &self.pidfd {
                    if !sys::pidfd_wait(fd.as_fd(), std::time::Duration::from_secs(60)) {
                        log::warn!("procpool: worker {pid} did not end a minute after SIGKILL");
                    }
                }
                // None: its zygote is gone. Its new parent reaps it: this
                // process, if it is a subreaper (or init), else init.
                let answer = zygote.lock().reap(*pid);
                answer.unwrap_or_else(|| {
                    match self
                        .pidfd
                        .as_ref()
                        .and_then(|fd| sys::reap_if_ours(fd.as_fd()))
                    {
                        Some(procpool_protocol::ExitReport::Code(c)) => Exit::Code(c),
                        Some(procpool_protocol::ExitReport::Signal(s)) => Exit::Signal(s),
                        _ => Exit::Unknown,
                    }
                })
            }
            Kind::Thread(handle) => match handle.take() {
                // A thread whose serve loop just returned needs a moment to
                // finish; one still in a task is detached after that.
                Some(h) if finishes_soon(&h) => h.join().map_or(Exit::Unknown, Exit::Code),
                Some(_) => {
                    log::warn!("procpool: an in-process worker thread is still busy; detaching it");
                    self.detached = true;
                    Exit::Unknown
                }
                None => Exit::Unknown,
            },
        };
        if let (Exit::Code(exit_code::DID_NOT_SERVE), Some(flag)) = (exit, &self.did_not_serve) {
            flag.store(true, Ordering::Release);
        }
        self.exit = Some(exit);
        exit
    }

    /// Whether the worker has exited (or was reaped by someone else),
    /// without blocking and without reaping it. For when its pidfd cannot
    /// be polled.
    pub(crate) fn has_exited(&mut self) -> bool {
        if self.exit.is_some() {
            return true;
        }
        match &mut self.kind {
            // Not reaped here: until `end` reaps it, its process group
            // can still be signalled safely.
            Kind::Process(child) => sys::exited_unreaped(child.id()),
            Kind::Forked { .. } => self
                .pidfd
                .as_ref()
                .is_none_or(|fd| sys::pidfd_exited(fd.as_fd())),
            Kind::Thread(handle) => handle.as_ref().is_none_or(|h| h.is_finished()),
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if self.exit.is_none() {
            self.end();
        }
    }
}

/// Whether thread `h` finishes within a few milliseconds (its serve loop
/// has returned and it is unwinding its stack).
fn finishes_soon(h: &std::thread::JoinHandle<i32>) -> bool {
    for _ in 0..100 {
        if h.is_finished() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
    h.is_finished()
}

impl Exit {
    /// How a child's status reads.
    pub(crate) fn of(status: ExitStatus) -> Exit {
        match (status.code(), status.signal()) {
            (Some(c), _) => Exit::Code(c),
            (None, Some(s)) => Exit::Signal(s),
            (None, None) => Exit::Unknown,
        }
    }
}
