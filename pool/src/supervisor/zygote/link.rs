//! One zygote process, as the pool talks to it: its start (handshake and
//! initializer), fork and reap requests with a deadline on every read and
//! write, and its end (through its pidfd, with its process group, so what
//! its initializer started ends with it).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use procpool_protocol::{
    ExitReport, FrameDecoder, FromWorker, NotForked, PREAMBLE_LEN, ToWorker, check_preamble,
    decode_from_worker, encode_init, encode_message, exit_code, preamble,
};

use super::super::handshake::{self, Initializer, Refusal};
use crate::error::{Error, ErrorKind, Exit};
use crate::sys::{self, FdSocket};

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
    /// Why it is not asked again (it stopped answering, died, or refused
    /// to fork).
    lost: Option<String>,
    /// Its pidfd: it is signalled through it, never by a pid the kernel
    /// may have freed (a host that ignores SIGCHLD has its children reaped
    /// at once).
    pidfd: Option<OwnedFd>,
    /// How it ended, once reaped.
    status: Option<Exit>,
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
            pidfd: sys::pidfd_open(child.id()),
            child,
            sock: FdSocket::new(sock),
            decoder: FrameDecoder::new(max_frame),
            max_frame,
            patience,
            lost: None,
            status: None,
            did_not_serve,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The handshake and the initializer, within the zygote's patience.
    pub(crate) fn start(&mut self, init: Option<&Initializer>) -> Result<(), Error> {
        // No deadline for a `Duration::MAX` start-up timeout.
        let deadline = sys::after(Instant::now(), self.patience).unwrap_or(far_future());
        let pid = self.pid();
        let fail = |m: String| Error::startup(format!("the zygote (pid {pid}) {m}"));
        self.send(&preamble(), &[], deadline).map_err(fail)?;
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
        self.send(&out, &[], deadline).map_err(fail)?;
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

    /// Asks for worker `index`, handing over its input, output, progress
    /// counter and the pool's lifeline: its pid and pidfd.
    pub(crate) fn fork(
        &mut self,
        index: usize,
        fds: [BorrowedFd<'_>; 4],
    ) -> Result<(u32, OwnedFd), ForkError> {
        let index =
            u32::try_from(index).map_err(|_| ForkError::Failed("index too large".into()))?;
        let reply = self.ask(&ToWorker::Fork { index }, &fds);
        let frame = reply.map_err(|m| ForkError::Lost(self.lose(m)))?;
        match decode_from_worker(&frame) {
            Ok(FromWorker::Forked { pid }) => match self.sock.take_fds(1) {
                Some(mut fd) => Ok((pid, fd.remove(0))),
                None => Err(ForkError::Lost(
                    self.lose("answered a fork without a pidfd".into()),
                )),
            },
            // Not lost: it still reaps the workers it forked before.
            Ok(FromWorker::NotForked(NotForked::Threads(n))) => Err(ForkError::Threads(n)),
            Ok(FromWorker::NotForked(NotForked::Failed(m))) => Err(ForkError::Failed(m)),
            Ok(_) => Err(ForkError::Lost(
                self.lose("answered a fork with another message".into()),
            )),
            Err(e) => Err(ForkError::Lost(
                self.lose(format!("sent a bad message: {e}")),
            )),
        }
    }

    /// Marks it lost for `why` (the first reason stays): returns the reason.
    fn lose(&mut self, why: String) -> String {
        self.lost.get_or_insert(why).clone()
    }

    /// Asks the zygote to reap worker `pid` (which has exited or was sent
    /// SIGKILL): how it ended, or `None` if the zygote cannot say.
    pub(crate) fn reap(&mut self, pid: u32) -> Option<Exit> {
        if self.lost.is_some() {
            return None;
        }
        let frame = match self.ask(&ToWorker::Reap { pid }, &[]) {
            Ok(f) => f,
            Err(m) => {
                let why = self.lose(m);
                log::warn!("procpool: the zygote cannot reap worker {pid}: it {why}");
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
                self.lose(format!("answered the reap of {pid} with another message"));
                None
            }
        }
    }

    /// Whether it is no longer asked (its workers' pids are then no
    /// longer held by it).
    pub(crate) fn lost(&self) -> bool {
        self.lost.is_some()
    }

    /// Its pidfd, readable once it has exited.
    pub(crate) fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd.as_ref().map(|f| f.as_fd())
    }

    /// Ends a zygote found lost (`why`): its workers live on.
    pub(crate) fn discard(&mut self, why: String) {
        self.lose(why);
        self.end();
    }

    /// SIGKILLs the zygote (through its pidfd) and its process group (what
    /// its initializer started; its workers lead groups of their own), and
    /// reaps it: once, and only that process (a host that ignores SIGCHLD
    /// has the kernel reap it at once, and its pid may name a stranger).
    fn end(&mut self) {
        if self.status.is_some() {
            return;
        }
        let Some(fd) = &self.pidfd else {
            // No pidfds (before Linux 5.3): by pid, as std does.
            let _ = self.child.kill();
            self.status = Some(self.child.wait().map_or(Exit::Unknown, Exit::of));
            return;
        };
        let _ = sys::pidfd_signal(fd.as_fd(), Signal::SIGKILL);
        self.reap_exactly(Duration::from_secs(5));
    }

    /// Waits up to `patience` for the zygote to exit; then, while it is an
    /// unreaped zombie (its pid, so its group id, still held), SIGKILLs its
    /// process group (what its initializer started), and reaps it, if it is
    /// still ours to reap.
    fn reap_exactly(&mut self, patience: Duration) {
        let Some(fd) = &self.pidfd else { return };
        if !sys::pidfd_wait(fd.as_fd(), patience) {
            return;
        }
        if sys::pidfd_unreaped(fd.as_fd()) {
            let _ = sys::signal_held_group(self.child.id(), Signal::SIGKILL);
        }
        self.status = Some(match sys::reap_if_ours(fd.as_fd()) {
            Some(ExitReport::Code(c)) => Exit::Code(c),
            Some(ExitReport::Signal(s)) => Exit::Signal(s),
            _ => Exit::Unknown,
        });
    }

    /// Sends one message and returns the next frame that is not a log
    /// record.
    fn ask(&mut self, msg: &ToWorker<'_>, fds: &[BorrowedFd<'_>]) -> Result<Vec<u8>, String> {
        if let Some(why) = &self.lost {
            return Err(why.clone());
        }
        let deadline = Instant::now() + ANSWER_PATIENCE;
        let mut out = Vec::new();
        encode_message(&mut out, msg, self.max_frame).map_err(|e| e.to_string())?;
        self.send(&out, fds, deadline)?;
        self.next_frame(deadline)
    }

    fn send(
        &mut self,
        bytes: &[u8],
        fds: &[BorrowedFd<'_>],
        deadline: Instant,
    ) -> Result<(), String> {
        self.sock
            .send_until(bytes, fds, deadline)
            .map_err(|e| match e.kind() {
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => self.ended(),
                io::ErrorKind::TimedOut => "did not read what it was sent in time".into(),
                _ => format!("cannot be written to: {e}"),
            })
    }

    /// The next frame that is not a log record (those are logged).
    fn next_frame(&mut self, deadline: Instant) -> Result<Vec<u8>, String> {
        loop {
            match self.decoder.next_frame() {
                Ok(Some(frame)) => match decode_from_worker(&frame) {
                    Ok(FromWorker::Log(record)) => {
                        super::super::forward_log(self.pid(), None, record);
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
        if self.status.is_none() {
            self.reap_exactly(Duration::from_millis(200));
        }
        match self.status {
            Some(Exit::Unknown) | None => "closed its socket".into(),
            Some(exit) => {
                if exit == Exit::Code(exit_code::DID_NOT_SERVE) {
                    self.did_not_serve.store(true, Ordering::Release);
                }
                format!("ended ({exit})")
            }
        }
    }
}

/// An instant no wait reaches (a year from now).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(365 * 24 * 3600)
}

impl Drop for Zygote {
    fn drop(&mut self) {
        // Its workers live on without it; the zygote itself is ours to end.
        self.end();
    }
}
