//! Starting, watching and ending worker processes. This module never talks
//! to callers; the dispatcher owns it.
//!
//! - **Spawn only by exec.** [`Launch::spawn`] uses `std::process::Command`
//!   (posix_spawn, or vfork + exec) with no `pre_exec` closure: no code of
//!   ours runs between fork and exec. The only descriptors a worker inherits
//!   are its two protocol pipes (as stdin and stdout) and stderr; every
//!   descriptor this crate creates is close-on-exec from birth.
//! - **Own process group.** Each worker leads a new process group, so a
//!   signal to the group reaches whatever the task spawned.
//! - **Exact reaping.** We wait on our own child's pid only, and cache its
//!   exit status: a group is never signalled after its leader was reaped
//!   (its pid might belong to someone else by then).
//! - **A launcher seam.** [`Launch`] holds the program and arguments; a
//!   prefix (`ssh host`, `srun`) is an addition here, not a rewrite.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};

use nix::sys::signal::Signal;

use crate::error::Exit;
use crate::sys;
use crate::worker::{LOG_LEVEL_ENV, MAX_FRAME_ENV, MEMORY_LIMIT_ENV, PARENT_PID_ENV, WORKER_ENV};

/// How to start one worker.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    pub(crate) program: PathBuf,
    pub(crate) arg0: Option<OsString>,
    pub(crate) args: Vec<OsString>,
    pub(crate) max_frame: u32,
    pub(crate) memory_limit: Option<u64>,
}

impl Launch {
    /// Re-exec mode: this very executable, through `/proc/self/exe` so a
    /// binary replaced on disk since start-up (a rebuild) is not picked up.
    pub(crate) fn current_exe(max_frame: u32) -> Self {
        let arg0 = std::env::args_os().next();
        Self {
            program: PathBuf::from("/proc/self/exe"),
            arg0,
            args: Vec::new(),
            max_frame,
            memory_limit: None,
        }
    }

    /// A named worker program.
    pub(crate) fn program(program: PathBuf, args: Vec<OsString>, max_frame: u32) -> Self {
        Self {
            program,
            arg0: None,
            args,
            max_frame,
            memory_limit: None,
        }
    }

    /// A human-readable name of what is started, for errors.
    pub(crate) fn describe(&self) -> String {
        match &self.arg0 {
            Some(a) if self.program.as_os_str() == "/proc/self/exe" => {
                format!("{} (re-exec)", a.to_string_lossy())
            }
            _ => self.program.display().to_string(),
        }
    }

    /// Starts one worker.
    pub(crate) fn spawn(&self) -> io::Result<Spawned> {
        let mut cmd = Command::new(&self.program);
        if let Some(a) = &self.arg0 {
            cmd.arg0(a);
        }
        cmd.args(&self.args)
            .env(WORKER_ENV, procpool_protocol::PROTOCOL_VERSION.to_string())
            .env(MAX_FRAME_ENV, self.max_frame.to_string())
            .env(PARENT_PID_ENV, std::process::id().to_string())
            .env(LOG_LEVEL_ENV, (log::max_level() as usize).to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0);
        if let Some(bytes) = self.memory_limit {
            cmd.env(MEMORY_LIMIT_ENV, bytes.to_string());
        }
        let mut child = cmd.spawn()?;
        let to_worker: OwnedFd = child.stdin.take().expect("stdin was piped").into();
        let from_worker: OwnedFd = child.stdout.take().expect("stdout was piped").into();
        let process = WorkerProcess { child, exit: None };
        sys::set_nonblocking(to_worker.as_fd())?;
        sys::set_nonblocking(from_worker.as_fd())?;
        Ok(Spawned {
            process,
            to_worker: File::from(to_worker),
            from_worker: File::from(from_worker),
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
}

/// One worker process, reaped exactly once. Dropping it unreaped kills its
/// group and reaps it, so no zombie and no stray process outlives it.
#[derive(Debug)]
pub(crate) struct WorkerProcess {
    child: Child,
    exit: Option<Exit>,
}

impl WorkerProcess {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A pidfd of the (unreaped) worker, readable once it exits.
    pub(crate) fn pidfd(&self) -> Option<OwnedFd> {
        sys::pidfd_open(self.pid())
    }

    /// Signals the worker's process group, unless the worker was reaped.
    pub(crate) fn signal_group(&self, signal: Signal) {
        if self.exit.is_none() {
            if let Err(e) = sys::signal_group(self.pid(), signal) {
                log::warn!("procpool: cannot signal worker group {}: {e}", self.pid());
            }
        }
    }

    /// Waits for the worker to end (blocking) and returns how it ended.
    pub(crate) fn reap(&mut self) -> Exit {
        if let Some(e) = self.exit {
            return e;
        }
        let exit = loop {
            match self.child.wait() {
                Ok(status) => break exit_of(status),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ECHILD: someone else reaped it (a host program's
                    // waitpid(-1)); we cannot know how it ended.
                    log::warn!("procpool: cannot wait for worker {}: {e}", self.pid());
                    break Exit::Code(-1);
                }
            }
        };
        self.exit = Some(exit);
        exit
    }

    /// Kills the whole group and reaps the worker.
    pub(crate) fn kill_and_reap(&mut self) -> Exit {
        self.signal_group(Signal::SIGKILL);
        self.reap()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if self.exit.is_none() {
            self.kill_and_reap();
        }
    }
}

fn exit_of(status: ExitStatus) -> Exit {
    match (status.code(), status.signal()) {
        (Some(c), _) => Exit::Code(c),
        (None, Some(s)) => Exit::Signal(s),
        (None, None) => Exit::Code(-1),
    }
}
