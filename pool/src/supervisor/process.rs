//! A worker process: watched through its pidfd, signalled through it (its
//! group only while its pid is held), reaped exactly once with its status
//! cached.
//!
//! - **Exact reaping.** An exec'd worker is our child: we wait on its pid
//!   only. A forked one is the zygote's: the zygote reaps it when we ask
//!   (see `zygote/`). A thread is joined, or detached if it hangs.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::Signal;
use parking_lot::Mutex;
use procpool_protocol::exit_code;

use super::zygote::Zygote;
use crate::error::Exit;
use crate::sys;

#[derive(Debug)]
pub(super) enum Kind {
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
    pub(super) did_not_serve: Option<Arc<AtomicBool>>,
    /// For a remote worker, its host: the process here is its launcher,
    /// and its relay there carries out kills (see `kill.rs`).
    pub(crate) remote: Option<Arc<str>>,
}

impl WorkerProcess {
    pub(super) fn new(kind: Kind, pidfd: Option<OwnedFd>, index: usize) -> Self {
        Self {
            kind,
            pidfd,
            index,
            exit: None,
            detached: false,
            kill: Default::default(),
            did_not_serve: None,
            remote: None,
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
                if let Some(fd) = &self.pidfd
                    && !sys::pidfd_wait(fd.as_fd(), std::time::Duration::from_secs(60))
                {
                    log::warn!("procpool: worker {pid} did not end a minute after SIGKILL");
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
