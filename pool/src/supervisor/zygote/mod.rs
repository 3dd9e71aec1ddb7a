//! The pool's side of the zygote start method: one exec'd zygote process
//! that ran the initializer and forks workers on request, and the rules
//! for when it is used.
//!
//! - **Start.** The zygote is exec'd like a worker (on the dispatcher's
//!   thread, which its parent-death signal is tied to), with a stream
//!   socket as its stdin and stdout. The pool reads its handshake, sends
//!   `Init`, and judges the result as it would a worker's.
//! - **Fork.** For each new worker the pool makes the pipes and the
//!   progress counter as for an exec'd one and sends them with `Fork`
//!   (`SCM_RIGHTS`); the answer carries the worker's pid and a pidfd the
//!   zygote opened before anyone could reap it, so the pidfd names exactly
//!   that process.
//! - **Reap.** The zygote is the worker's parent and reaps it when the pool
//!   asks (`Reap`), after the pool is done signalling it, and answers with
//!   its exact status.
//! - **Fallback.** A zygote that refuses a fork because it has more than
//!   one thread is never used again: the pool starts its workers by exec
//!   for the rest of its life. A zygote that dies (found at the next fork
//!   or reap) is replaced in the background, under a restart limit of its
//!   own; meanwhile, and for good past that limit, workers are exec'd.

mod link;

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use parking_lot::Mutex;

use self::link::ForkError;
pub(crate) use self::link::Zygote;
use super::handshake::Initializer;
use super::respawn::{Limit, Respawn};
use crate::error::Error;
use crate::sys;

/// Whether the pool forks its workers from a zygote now.
enum State {
    /// Not started yet: the first worker starts it, and waits for it.
    Unstarted,
    Ready(Arc<Mutex<Zygote>>),
    /// A replacement shakes hands on a thread of its own.
    Starting {
        thread: JoinHandle<Result<Zygote, Error>>,
        /// The replacement's pid and pidfd, to end it if the pool ends
        /// first.
        pid: u32,
        pidfd: Option<OwnedFd>,
    },
    /// Lost; a replacement is due when the restart limit says.
    Down,
    /// Refused to fork, or failed past its restart limit: exec for good.
    Off,
}

/// The pool's zygote and the rules for using it.
pub(crate) struct Zygotes {
    state: State,
    restarts: Respawn,
    init: Option<Arc<Initializer>>,
    patience: Duration,
    max_frame: u32,
    did_not_serve: Arc<AtomicBool>,
    /// The pool's lifeline: a pipe whose write end only this process holds
    /// (close-on-exec); forked workers watch the read end (see
    /// `sys::die_with_pool`). Made at the first fork.
    lifeline: Option<(OwnedFd, OwnedFd)>,
    /// Counts the zygotes that became ready, so the dispatcher knows when
    /// to watch another one (see [`ZygoteWatch`]).
    generation: u64,
}

impl std::fmt::Debug for Zygotes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Unstarted => "unstarted",
            State::Ready(_) => "ready",
            State::Starting { .. } => "starting",
            State::Down => "down",
            State::Off => "off",
        };
        f.debug_struct("Zygotes").field("state", &state).finish()
    }
}

/// A worker forked by a zygote: its pid, pidfd, and the zygote to ask for
/// its status.
pub(crate) struct ForkedWorker {
    pub(crate) pid: u32,
    pub(crate) pidfd: OwnedFd,
    pub(crate) zygote: Arc<Mutex<Zygote>>,
}

impl Zygotes {
    /// `patience`: how long a zygote may take to start (and to answer);
    /// `limit`: how often it may fail before the pool gives it up.
    /// `did_not_serve`: the launcher's flag (see `Launch`).
    pub(crate) fn new(
        init: Option<Arc<Initializer>>,
        patience: Duration,
        limit: Limit,
        max_frame: u32,
        did_not_serve: Arc<AtomicBool>,
    ) -> Self {
        Self {
            state: State::Unstarted,
            restarts: Respawn::new(limit),
            init,
            patience,
            max_frame,
            did_not_serve,
            lifeline: None,
            generation: 0,
        }
    }

    /// A worker forked from the zygote, or `Ok(None)` when this worker is
    /// to be exec'd. `spawn` starts a zygote process; `fds` are the new
    /// worker's input, output and progress counter. Only the first start
    /// fails the caller (the pool's build): a failing initializer is the
    /// pool's error, as with exec'd workers.
    pub(crate) fn fork(
        &mut self,
        spawn: impl Fn() -> io::Result<(Child, OwnedFd)>,
        index: usize,
        fds: [BorrowedFd<'_>; 3],
    ) -> Result<Option<ForkedWorker>, Error> {
        if self.lifeline.is_none() {
            let pipe = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| Error::startup_io("cannot make the pool's lifeline", e.into()))?;
            self.lifeline = Some(pipe);
        }
        let now = Instant::now();
        let (max_frame, patience) = (self.max_frame, self.patience);
        let flag = &self.did_not_serve;
        let spawn = || {
            spawn().map(|(child, sock)| Zygote::new(child, sock, max_frame, patience, flag.clone()))
        };
        match std::mem::replace(&mut self.state, State::Off) {
            State::Unstarted => {
                let mut z = spawn()
                    .map_err(|e| Error::startup_io("cannot start the zygote".to_owned(), e))?;
                z.start(self.init.as_deref())?;
                log::debug!("procpool: zygote {} is ready", z.pid());
                self.ready(z);
            }
            State::Starting { thread, .. } if thread.is_finished() => match thread.join() {
                Ok(Ok(z)) => {
                    log::info!("procpool: zygote {} is back", z.pid());
                    self.ready(z);
                }
                Ok(Err(e)) => self.failed(now, &format!("a new zygote failed to start: {e}")),
                Err(_) => self.failed(now, "a new zygote's start panicked"),
            },
            State::Down if self.restarts.due(now) > 0 => match spawn() {
                Ok(mut z) => {
                    let (pid, pidfd) =
                        (z.pid(), z.pidfd().and_then(|f| f.try_clone_to_owned().ok()));
                    let init = self.init.clone();
                    let started = std::thread::Builder::new()
                        .name("procpool-zygote-start".into())
                        .spawn(move || z.start(init.as_deref()).map(|()| z));
                    match started {
                        Ok(thread) => {
                            self.generation += 1;
                            self.state = State::Starting { thread, pid, pidfd };
                        }
                        Err(e) => self.failed(now, &format!("cannot start a thread: {e}")),
                    }
                }
                Err(e) => self.failed(now, &format!("cannot start a new zygote: {e}")),
            },
            other => self.state = other,
        }
        let State::Ready(zygote) = &self.state else {
            return Ok(None);
        };
        let zygote = zygote.clone();
        let lifeline = self.lifeline.as_ref().expect("made above").0.as_fd();
        let [input, output, progress] = fds;
        let forked = zygote
            .lock()
            .fork(index, [input, output, progress, lifeline]);
        match forked {
            Ok((pid, pidfd)) => Ok(Some(ForkedWorker { pid, pidfd, zygote })),
            Err(ForkError::Threads(n)) => {
                log::error!(
                    "procpool: the zygote has {n} threads after its initializer (a thread it \
                     started is still running), and a fork copies only the calling thread while \
                     the others may hold locks: it never forks; this pool starts its workers by \
                     exec from now on"
                );
                self.generation += 1;
                self.state = State::Off;
                Ok(None)
            }
            Err(ForkError::Failed(m)) => {
                log::warn!(
                    "procpool: the zygote could not fork a worker ({m}); starting it by exec"
                );
                Ok(None)
            }
            Err(ForkError::Lost(m)) => {
                let pid = {
                    let mut z = zygote.lock();
                    z.discard(m.clone());
                    z.pid()
                };
                self.failed(now, &format!("the zygote (pid {pid}) {m}"));
                Ok(None)
            }
        }
    }

    fn ready(&mut self, zygote: Zygote) {
        self.restarts.succeeded();
        self.generation += 1;
        self.state = State::Ready(Arc::new(Mutex::new(zygote)));
    }

    /// The ready zygote's generation and a copy of its pidfd, for the
    /// dispatcher to watch.
    fn watched(&self) -> (u64, Option<OwnedFd>) {
        let fd = match &self.state {
            State::Ready(z) => z.lock().pidfd().and_then(|f| f.try_clone_to_owned().ok()),
            State::Starting { pidfd, .. } => pidfd.as_ref().and_then(|f| f.try_clone().ok()),
            _ => None,
        };
        (self.generation, fd)
    }

    /// The dispatcher saw the ready zygote's pidfd fire: it died (while
    /// the pool had nothing to ask it). It is reaped, and a replacement is
    /// due under the restart limit.
    fn exited(&mut self) {
        if let State::Starting { pidfd, .. } = &self.state {
            if !pidfd.as_ref().is_some_and(|f| sys::pidfd_exited(f.as_fd())) {
                return;
            }
            // Its start thread ends on the end of its socket, and the
            // zygote (started or not) is reaped as it drops.
            let State::Starting { thread, pid, .. } =
                std::mem::replace(&mut self.state, State::Off)
            else {
                unreachable!("matched above");
            };
            let why = match thread.join() {
                Ok(Ok(zygote)) => {
                    drop(zygote);
                    format!("the new zygote (pid {pid}) died")
                }
                Ok(Err(e)) => format!("a new zygote failed to start: {e}"),
                Err(_) => "a new zygote's start panicked".into(),
            };
            self.failed(Instant::now(), &why);
            return;
        }
        let State::Ready(zygote) = &self.state else {
            return;
        };
        let zygote = zygote.clone();
        let mut z = zygote.lock();
        if !z.pidfd().is_some_and(sys::pidfd_exited) {
            return;
        }
        z.discard("died".into());
        let pid = z.pid();
        drop(z);
        self.failed(Instant::now(), &format!("the zygote (pid {pid}) died"));
    }

    /// The zygote was lost or a replacement failed: one more failure for
    /// its restart limit (a lost zygote's generation ends).
    fn failed(&mut self, now: Instant, why: &str) {
        self.generation += 1;
        match self.restarts.failed(now) {
            Ok(at) => {
                log::warn!(
                    "procpool: {why}; workers are started by exec until a new zygote is ready \
                     (in {:?} at the earliest)",
                    at.saturating_duration_since(now)
                );
                self.state = State::Down;
            }
            Err(failures) => {
                log::error!(
                    "procpool: {why}; the zygote failed {failures} times within {:?}: this pool \
                     starts its workers by exec from now on",
                    self.restarts.limit().window
                );
                self.state = State::Off;
            }
        }
    }
}

impl Drop for Zygotes {
    fn drop(&mut self) {
        // A replacement still starting ends with the pool: its start
        // thread sees the end of its socket, reaps it, and is joined.
        if let State::Starting { thread, pid, pidfd } =
            std::mem::replace(&mut self.state, State::Off)
        {
            if let Some(fd) = &pidfd {
                let _ = sys::pidfd_signal(fd.as_fd(), Signal::SIGKILL);
            }
            let _ = sys::signal_group(pid, Signal::SIGKILL);
            let _ = thread.join();
        }
    }
}

/// The dispatcher's watch over the ready zygote's pidfd, so a zygote that
/// dies while the pool is idle is reaped at once, not at the next start.
#[derive(Debug, Default)]
pub(crate) struct ZygoteWatch {
    generation: Option<u64>,
    pidfd: Option<OwnedFd>,
}

impl ZygoteWatch {
    /// The pidfd to poll now (refreshed when the zygote changed).
    pub(crate) fn fd(&mut self, zygotes: &Mutex<Zygotes>) -> Option<BorrowedFd<'_>> {
        let z = zygotes.lock();
        if self.generation != Some(z.generation) {
            let (generation, fd) = z.watched();
            self.generation = Some(generation);
            self.pidfd = fd;
        }
        self.pidfd.as_ref().map(|f| f.as_fd())
    }

    /// Its pidfd fired.
    pub(crate) fn fired(&mut self, zygotes: &Mutex<Zygotes>) {
        zygotes.lock().exited();
        self.generation = None;
        self.pidfd = None;
    }
}
