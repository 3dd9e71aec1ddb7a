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

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use procpool_protocol::{
    ExitReport, FrameDecoder, FromWorker, NotForked, PREAMBLE_LEN, ToWorker, check_preamble,
    decode_from_worker, encode_init, encode_message, exit_code, preamble,
};

use super::handshake::{self, Initializer, Refusal};
use super::respawn::{Limit, Respawn};
use crate::error::{Error, ErrorKind, Exit};
use crate::sys::FdSocket;

/// How long a started zygote may take to answer a fork or a reap. The
/// dispatcher waits for the answer (a fork takes a millisecond or so), so
/// a zygote that stops answering (stopped, swapped out, wedged) costs this
/// much once; then it is given up and replaced.
const ANSWER_PATIENCE: Duration = Duration::from_secs(2);

/// One zygote process, as the pool talks to it.
#[derive(Debug)]
pub(crate) struct Zygote {
    child: Child,
    sock: FdSocket,
    decoder: FrameDecoder,
    max_frame: u32,
    /// How long its start (handshake and initializer) may take.
    patience: Duration,
    /// It stopped answering (or was refused): it is not asked again.
    lost: bool,
    /// The launcher's flag, set if it exits with
    /// [`exit_code::DID_NOT_SERVE`](procpool_protocol::exit_code).
    did_not_serve: Arc<AtomicBool>,
}

/// Why a fork did not give a worker.
#[derive(Debug)]
pub(crate) enum ForkError {
    /// The zygote has this many threads: it never forks again.
    Threads(u32),
    /// The fork failed in a zygote that still works.
    Failed(String),
    /// The zygote is gone or broke the protocol.
    Lost(String),
}

impl Zygote {
    /// Wraps a zygote just started with `sock` as its stdin and stdout.
    pub(crate) fn new(
        child: Child,
        sock: OwnedFd,
        max_frame: u32,
        patience: Duration,
        did_not_serve: Arc<AtomicBool>,
    ) -> Self {
        Self {
            child,
            sock: FdSocket::new(sock),
            decoder: FrameDecoder::new(max_frame),
            max_frame,
            patience,
            lost: false,
            did_not_serve,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The handshake and the initializer, within the zygote's patience.
    pub(crate) fn start(&mut self, init: Option<&Initializer>) -> Result<(), Error> {
        let deadline = Instant::now() + self.patience;
        let pid = self.pid();
        let fail = |m: String| Error::startup(format!("the zygote (pid {pid}) {m}"));
        self.send(&preamble(), &[]).map_err(fail)?;
        let theirs = loop {
            if let Some(p) = self.decoder.take_raw::<PREAMBLE_LEN>() {
                break p;
            }
            self.fill(deadline).map_err(fail)?;
        };
        check_preamble(&theirs).map_err(|e| fail(format!("is not a procpool worker: {e}")))?;
        let frame = self.next_frame(deadline).map_err(fail)?;
        let tasks = match decode_from_worker(&frame) {
            Ok(FromWorker::Hello(h)) => h.tasks,
            Ok(_) => return Err(fail("did not start with its handshake".into())),
            Err(e) => return Err(fail(format!("sent a bad handshake: {e}"))),
        };
        let task = match handshake::check_hello(None, &tasks, init) {
            Ok(t) => t,
            Err(Refusal::Initializer(m)) => {
                return Err(Error::new(ErrorKind::Initializer { message: m }));
            }
            Err(Refusal::OtherTasks) => unreachable!("no list to differ from"),
        };
        let (Some(init), Some(task)) = (init, task) else {
            return Ok(());
        };
        let mut out = Vec::new();
        encode_init(&mut out, task, &init.arg, self.max_frame).map_err(|e| {
            Error::new(ErrorKind::Initializer {
                message: format!("its argument does not fit a frame: {e}"),
            })
        })?;
        self.send(&out, &[]).map_err(fail)?;
        let frame = self.next_frame(deadline).map_err(fail)?;
        match decode_from_worker(&frame) {
            Ok(FromWorker::InitDone(outcome)) => {
                handshake::judge_init(Some(init), tasks.get(task as usize), &outcome)
                    .map_err(|message| Error::new(ErrorKind::Initializer { message }))
            }
            Ok(_) => Err(fail("answered its initializer with another message".into())),
            Err(e) => Err(fail(format!("sent a bad message: {e}"))),
        }
    }

    /// Asks for worker `index`, handing over its input, output and
    /// progress counter: its pid and pidfd.
    pub(crate) fn fork(
        &mut self,
        index: usize,
        fds: [BorrowedFd<'_>; 3],
    ) -> Result<(u32, OwnedFd), ForkError> {
        let index =
            u32::try_from(index).map_err(|_| ForkError::Failed("index too large".into()))?;
        let reply = self.ask(&ToWorker::Fork { index }, &fds);
        let lost = |z: &mut Self, m: String| {
            z.lost = true;
            ForkError::Lost(m)
        };
        let frame = reply.map_err(|m| lost(self, m))?;
        match decode_from_worker(&frame) {
            Ok(FromWorker::Forked { pid }) => match self.sock.take_fds(1) {
                Some(mut fd) => Ok((pid, fd.remove(0))),
                None => Err(lost(self, "answered a fork without a pidfd".into())),
            },
            Ok(FromWorker::NotForked(NotForked::Threads(n))) => {
                self.lost = true;
                Err(ForkError::Threads(n))
            }
            Ok(FromWorker::NotForked(NotForked::Failed(m))) => Err(ForkError::Failed(m)),
            Ok(_) => Err(lost(self, "answered a fork with another message".into())),
            Err(e) => Err(lost(self, format!("sent a bad message: {e}"))),
        }
    }

    /// Asks the zygote to reap worker `pid` (which has exited or was sent
    /// SIGKILL): how it ended, or `None` if the zygote cannot say.
    pub(crate) fn reap(&mut self, pid: u32) -> Option<Exit> {
        if self.lost {
            return None;
        }
        let frame = match self.ask(&ToWorker::Reap { pid }, &[]) {
            Ok(f) => f,
            Err(m) => {
                log::warn!("procpool: the zygote cannot reap worker {pid}: {m}");
                self.lost = true;
                return None;
            }
        };
        match decode_from_worker(&frame) {
            Ok(FromWorker::Reaped { pid: p, exit }) if p == pid => Some(match exit {
                ExitReport::Code(c) => Exit::Code(c),
                ExitReport::Signal(s) => Exit::Signal(s),
                ExitReport::Unknown => Exit::Unknown,
            }),
            _ => {
                self.lost = true;
                None
            }
        }
    }

    /// Whether it stopped answering.
    pub(crate) fn lost(&self) -> bool {
        self.lost
    }

    /// Ends a zygote found lost: its workers live on.
    fn discard(&mut self) {
        self.lost = true;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends one message and returns the next frame that is not a log
    /// record.
    fn ask(&mut self, msg: &ToWorker<'_>, fds: &[BorrowedFd<'_>]) -> Result<Vec<u8>, String> {
        if self.lost {
            return Err("it was lost before".into());
        }
        let mut out = Vec::new();
        encode_message(&mut out, msg, self.max_frame).map_err(|e| e.to_string())?;
        self.send(&out, fds)?;
        self.next_frame(Instant::now() + ANSWER_PATIENCE)
    }

    fn send(&mut self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), String> {
        self.sock.send(bytes, fds).map_err(|e| match e.kind() {
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => self.ended(),
            _ => format!("cannot be written to: {e}"),
        })
    }

    /// The next frame that is not a log record (those are logged).
    fn next_frame(&mut self, deadline: Instant) -> Result<Vec<u8>, String> {
        loop {
            match self.decoder.next_frame() {
                Ok(Some(frame)) => match decode_from_worker(&frame) {
                    Ok(FromWorker::Log(record)) => {
                        crate::dispatcher::forward_log(self.pid(), None, record);
                    }
                    _ => return Ok(frame),
                },
                Ok(None) => self.fill(deadline)?,
                Err(e) => return Err(format!("sent a bad frame: {e}")),
            }
        }
    }

    /// One read, waiting until `deadline`.
    fn fill(&mut self, deadline: Instant) -> Result<(), String> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.sock.readable_within(left) {
            Ok(true) => {}
            Ok(false) => return Err("did not answer in time".into()),
            Err(e) => return Err(format!("cannot be waited for: {e}")),
        }
        match self.decoder.read_from(&mut self.sock) {
            Ok(0) => Err(self.ended()),
            // It ended with bytes of ours unread.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Err(self.ended()),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("cannot be read from: {e}")),
        }
    }
}

impl Zygote {
    /// What to say of a zygote whose socket ended: how it ended, if it
    /// exits within a moment.
    fn ended(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_millis(200);
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                _ => break None,
            }
        };
        let Some(status) = status else {
            return "closed its socket".into();
        };
        if status.code() == Some(exit_code::DID_NOT_SERVE) {
            self.did_not_serve.store(true, Ordering::Release);
        }
        format!("ended ({})", Exit::of(status))
    }
}

impl Drop for Zygote {
    fn drop(&mut self) {
        // Its workers live on without it; the zygote itself is ours to end.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the pool forks its workers from a zygote now.
enum State {
    /// Not started yet: the first worker starts it, and waits for it.
    Unstarted,
    Ready(Arc<Mutex<Zygote>>),
    /// A replacement shakes hands on a thread of its own.
    Starting(JoinHandle<Result<Zygote, Error>>),
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
}

impl std::fmt::Debug for Zygotes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Unstarted => "unstarted",
            State::Ready(_) => "ready",
            State::Starting(_) => "starting",
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
                self.state = State::Ready(Arc::new(Mutex::new(z)));
            }
            State::Starting(thread) if thread.is_finished() => match thread.join() {
                Ok(Ok(z)) => {
                    log::info!("procpool: zygote {} is back", z.pid());
                    self.state = State::Ready(Arc::new(Mutex::new(z)));
                }
                Ok(Err(e)) => self.failed(now, &format!("a new zygote failed to start: {e}")),
                Err(_) => self.failed(now, "a new zygote's start panicked"),
            },
            State::Down if self.restarts.due(now) > 0 => match spawn() {
                Ok(mut z) => {
                    let init = self.init.clone();
                    let started = std::thread::Builder::new()
                        .name("procpool-zygote-start".into())
                        .spawn(move || z.start(init.as_deref()).map(|()| z));
                    match started {
                        Ok(t) => self.state = State::Starting(t),
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
        let forked = zygote.lock().fork(index, fds);
        match forked {
            Ok((pid, pidfd)) => Ok(Some(ForkedWorker { pid, pidfd, zygote })),
            Err(ForkError::Threads(n)) => {
                log::error!(
                    "procpool: the zygote has {n} threads after its initializer (a thread it \
                     started is still running), and a fork copies only the calling thread while \
                     the others may hold locks: it never forks; this pool starts its workers by \
                     exec from now on"
                );
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
                    z.discard();
                    z.pid()
                };
                self.failed(now, &format!("the zygote (pid {pid}) {m}"));
                Ok(None)
            }
        }
    }

    /// The zygote was lost or a replacement failed: one more failure for
    /// its restart limit.
    fn failed(&mut self, now: Instant, why: &str) {
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
