//! How a worker is started: the launcher seam.
//!
//! - **Exec, never a bare fork of this process.** [`Launch::spawn`] uses
//!   `std::process::Command` (posix_spawn, or vfork + exec) with no
//!   `pre_exec` closure: no code of ours runs between fork and exec. (One
//!   exception: a remote worker's launcher, ssh or srun, gets a closure
//!   that makes one `prctl` call, so it ends with the pool; see
//!   `sys::signal_on_parent_death`.) The
//!   only descriptors a worker inherits are its two protocol pipes (as stdin
//!   and stdout) and stderr; every descriptor this crate creates is
//!   close-on-exec from birth.
//! - **Or forked by the zygote** (`StartMethod::Zygote`, see `zygote/`),
//!   which gets the same pipes over its socket.
//! - **Own process group.** Each worker leads a new process group, so a
//!   signal to the group reaches whatever the task spawned.
//! - **Or on another host** (`remote.rs`): the launcher's command, which
//!   runs the program there as a relay (`relay.rs`) that starts the worker
//!   the same way.
//! - **Or a thread**: the debugging mode, a thread of this process serving
//!   the registry over pipes.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use parking_lot::Mutex;

use super::process::{Kind, WorkerProcess};
use super::zygote::Zygotes;
use crate::error::Error;
use crate::remote::Site;
use crate::sys;
use crate::worker::{
    BUILD_ENV, INDEX_ENV, KILL_GRACE_ENV, LOG_LEVEL_ENV, MAX_FRAME_ENV, MEMORY_LIMIT_ENV,
    PARENT_PID_ENV, PROGRESS_ENV, RELAY_ENV, Registry, SHARE_KEY_ENV, SHARED_MEMORY_ENV,
    WORKER_ENV, ZYGOTE_ENV,
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
    /// Workers may send large results through shared memory.
    pub(crate) shared_memory: bool,
    /// A remote site: workers start there, behind its launcher and a
    /// relay.
    pub(crate) site: Option<Arc<Site>>,
    /// SIGTERM to SIGKILL, for the relay of a remote worker.
    pub(crate) kill_grace: std::time::Duration,
    /// How long a remote worker's relay holds a frame of its worker's
    /// half-written before it lets the pool see it (the pool's stall
    /// timeout).
    pub(crate) stall_timeout: std::time::Duration,
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

    /// The same program with these arguments.
    pub(crate) fn with_args(mut self, new: Vec<OsString>) -> Self {
        if let Program::Exec { args, .. } = &mut self.program {
            *args = new;
        }
        self
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
            shared_memory: true,
            site: None,
            kill_grace: std::time::Duration::from_secs(1),
            stall_timeout: std::time::Duration::from_secs(10),
        }
    }

    /// The same program, started on a remote site.
    pub(crate) fn on(&self, site: Site) -> Self {
        Self {
            site: Some(Arc::new(site)),
            zygote: None,
            // Remote workers share no memory with the pool.
            shared_memory: false,
            ..self.clone()
        }
    }

    /// The local path of the program (for its build hash, and as its path
    /// on hosts that have the same files).
    pub(crate) fn local_program(&self) -> Option<PathBuf> {
        match &self.program {
            Program::Exec { path, .. } if path.as_os_str() == "/proc/self/exe" => {
                std::env::current_exe().ok()
            }
            Program::Exec { path, .. } => Some(path.clone()),
            Program::Thread(_) => None,
        }
    }

    /// Whether workers are threads of this process.
    pub(crate) fn is_threads(&self) -> bool {
        matches!(self.program, Program::Thread(_))
    }

    /// A human-readable name of what is started, for errors.
    pub(crate) fn describe(&self) -> String {
        if let Some(site) = &self.site {
            // The program that runs there: its path on the host (another
            // one, or a shipped copy, may be used there).
            return format!("{} on {}", site.program().display(), site.name);
        }
        self.describe_local()
    }

    fn describe_local(&self) -> String {
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

    /// Its workers start by exec from this process, so several can start
    /// side by side on two threads (`Spawner`); a zygote's forks and a
    /// remote site's launchers start one at a time.
    pub(crate) fn starts_side_by_side(&self) -> bool {
        matches!(self.program, Program::Exec { .. }) && self.site.is_none() && self.zygote.is_none()
    }

    /// Starts one worker, the pool's worker number `index` (see
    /// `procpool::worker::index`): forked from the zygote when the pool
    /// has a working one, else by exec (or on a thread).
    pub(crate) fn spawn(&self, index: usize) -> Result<Spawned, Error> {
        let io = |e| Error::startup_io(format!("cannot start `{}`", self.describe()), e);
        if let Program::Thread(registry) = &self.program {
            return self.spawn_thread(registry.clone(), index).map_err(io);
        }
        if let Some(site) = &self.site {
            return self.exec_remote(site, index).map_err(io);
        }
        if let Some(zygotes) = &self.zygote
            && let Some(forked) = self.fork(zygotes, index)?
        {
            return Ok(forked);
        }
        self.exec(index).map_err(io)
    }

    /// A worker on a remote site: its launcher, running a relay there. The
    /// settings travel as `env` arguments (a launcher need not pass the
    /// environment on); the worker has no shared page with the pool (its
    /// relay keeps one, and reports the count when the worker ends).
    fn exec_remote(&self, site: &Site, index: usize) -> io::Result<Spawned> {
        let Program::Exec { args, .. } = &self.program else {
            unreachable!("threads are not remote");
        };
        let mut vars = vec![
            (WORKER_ENV, procpool_protocol::PROTOCOL_VERSION.to_string()),
            (RELAY_ENV, "1".to_owned()),
            (MAX_FRAME_ENV, self.max_frame.to_string()),
            (LOG_LEVEL_ENV, (log::max_level() as usize).to_string()),
            (SHARED_MEMORY_ENV, "0".to_owned()),
            (INDEX_ENV, index.to_string()),
            (
                KILL_GRACE_ENV,
                self.kill_grace
                    .as_millis()
                    .min(u128::from(u64::MAX))
                    .to_string(),
            ),
            (
                crate::relay::STALL_ENV,
                self.stall_timeout
                    .as_millis()
                    .min(u128::from(u64::MAX))
                    .to_string(),
            ),
        ];
        if let Some(bytes) = self.memory_limit {
            vars.push((MEMORY_LIMIT_ENV, bytes.to_string()));
        }
        let mut cmd = site.command(&vars, args)?;
        // The launcher is not ours: it is told to end with this pool
        // (SIGTERM: ssh and srun then close the connection, and the relay
        // ends the worker).
        sys::signal_on_parent_death(&mut cmd, nix::sys::signal::Signal::SIGTERM);
        let launcher = cmd.get_program().to_owned();
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .map_err(|e| {
                // What could not start is the launcher, not the program.
                io::Error::new(
                    e.kind(),
                    format!("its launcher `{}`: {e}", launcher.to_string_lossy()),
                )
            })?;
        let to_worker: OwnedFd = child.stdin.take().expect("stdin was piped").into();
        let from_worker: OwnedFd = child.stdout.take().expect("stdout was piped").into();
        let pidfd = sys::pidfd_open(child.id());
        let mut process = WorkerProcess::new(Kind::Process(child), pidfd, index);
        process.remote = Some(site.name.clone());
        // Never attached to: the pool cannot see what a remote worker
        // starts until its relay says.
        let (progress_fd, progress) = sys::SharedCounter::create()?;
        Self::finish(process, to_worker, from_worker, progress_fd, progress)
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
        // Only what this pool says: nothing of the same names inherited
        // from this process's own environment.
        match self.memory_limit {
            Some(bytes) => cmd.env(MEMORY_LIMIT_ENV, bytes.to_string()),
            None => cmd.env_remove(MEMORY_LIMIT_ENV),
        };
        match self.shared_memory {
            true => cmd.env_remove(SHARED_MEMORY_ENV),
            false => cmd.env(SHARED_MEMORY_ENV, "0"),
        };
        cmd.env(SHARE_KEY_ENV, crate::payload::pool_key().to_string());
        cmd.env_remove(ZYGOTE_ENV)
            .env_remove(RELAY_ENV)
            .env_remove(BUILD_ENV)
            .env_remove(KILL_GRACE_ENV)
            .env_remove(crate::relay::STALL_ENV);
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
        let (max_frame, share) = (self.max_frame, self.shared_memory);
        // In-process workers are this process: they know its key.
        crate::payload::pool_key();
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
                    share,
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
