//! The zygote's syscalls: its control socket (frames with descriptors
//! attached), the one-thread check, the fork itself, and what a forked
//! worker does to its own process before it serves.
//!
//! A fork is safe only in a process with exactly one thread: any other
//! thread might hold a lock (the allocator's, stdout's, a logger's) that
//! would stay locked forever in the child. [`fork_if_single_threaded`]
//! counts the threads first, every time, and refuses when there is more
//! than one.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags};
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};
use procpool_protocol::ExitReport;

/// Most descriptors one message may carry.
const MAX_FDS: usize = 4;

/// A connected pair of stream sockets, close-on-exec from birth.
pub(crate) fn socket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

/// A stream socket read as bytes, keeping the descriptors that arrive
/// with them (in order) until [`take_fds`](Self::take_fds).
#[derive(Debug)]
pub(crate) struct FdSocket {
    fd: OwnedFd,
    fds: VecDeque<OwnedFd>,
}

impl FdSocket {
    pub(crate) fn new(fd: OwnedFd) -> Self {
        Self {
            fd,
            fds: VecDeque::new(),
        }
    }

    /// The `n` oldest descriptors received, if that many have arrived.
    pub(crate) fn take_fds(&mut self, n: usize) -> Option<Vec<OwnedFd>> {
        (self.fds.len() >= n).then(|| self.fds.drain(..n).collect())
    }

    /// Sends all of `bytes`, the first piece carrying `fds`, by `deadline`
    /// (`TimedOut` if the peer has not read enough of it by then).
    pub(crate) fn send_until(
        &self,
        mut bytes: &[u8],
        fds: &[BorrowedFd<'_>],
        deadline: std::time::Instant,
    ) -> io::Result<()> {
        let mut fds = fds;
        while !bytes.is_empty() {
            match send_some(self.fd.as_fd(), bytes, fds, MsgFlags::MSG_DONTWAIT) {
                Ok(n) => {
                    bytes = &bytes[n..];
                    fds = &[];
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let mut poll = [PollFd::new(self.fd.as_fd(), PollFlags::POLLOUT)];
                    if super::wait(&mut poll, Some(deadline))? != super::Waited::Ready {
                        return Err(io::ErrorKind::TimedOut.into());
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Waits until the socket is readable or `timeout` passes; `false` on
    /// a timeout.
    pub(crate) fn readable_within(&self, timeout: Duration) -> io::Result<bool> {
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        let deadline = super::after(std::time::Instant::now(), timeout);
        Ok(super::wait(&mut fds, deadline)? == super::Waited::Ready)
    }
}

impl AsFd for FdSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Read for FdSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
        let mut iov = [IoSliceMut::new(buf)];
        let msg = loop {
            match recvmsg::<()>(
                self.fd.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(m) => break m,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        for cmsg in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                for fd in fds {
                    // SAFETY: the kernel installed this descriptor in our
                    // table for this message; nothing else owns it.
                    self.fds.push_back(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
            return Err(io::Error::other(
                "a message carried more descriptors than expected",
            ));
        }
        Ok(msg.bytes)
    }
}

/// Writes all of `bytes` to a stream socket, the first piece carrying
/// `fds` (`SCM_RIGHTS`).
pub(crate) fn send_with_fds(
    sock: BorrowedFd<'_>,
    mut bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let mut fds = fds;
    while !bytes.is_empty() {
        let n = send_some(sock, bytes, fds, MsgFlags::empty())?;
        bytes = &bytes[n..];
        fds = &[];
    }
    Ok(())
}

/// One `sendmsg` of (a first part of) `bytes` with `fds` attached; EINTR
/// is retried.
fn send_some(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
    flags: MsgFlags,
) -> io::Result<usize> {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
    loop {
        match sendmsg::<()>(
            sock.as_raw_fd(),
            &[IoSlice::new(bytes)],
            cmsgs,
            flags | MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(n) => return Ok(n),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// How many threads this process has.
pub(crate) fn thread_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// Flushes what this process buffered for stdout (Rust's and C's stdio),
/// so a child does not inherit the bytes and write them a second time.
pub(crate) fn flush_stdio() {
    let _ = io::stdout().flush();
    // SAFETY: fflush(NULL) flushes every C stdio stream; it only takes the
    // streams' own locks, which no other thread holds in a process with
    // one thread (the caller's precondition).
    unsafe { libc::fflush(std::ptr::null_mut()) };
}

/// How long a zygote waits for threads that are ending to be gone before
/// it refuses to fork.
const EXITING_THREAD_PATIENCE: std::time::Duration = std::time::Duration::from_millis(100);

/// What [`fork_if_single_threaded`] did.
#[derive(Debug)]
pub(crate) enum Forked {
    /// In the parent: the child's pid.
    Parent(u32),
    /// In the child.
    Child,
    /// Not forked: the process has this many threads.
    Threads(usize),
}

/// Forks, after checking that this process has exactly one thread.
pub(crate) fn fork_if_single_threaded() -> io::Result<Forked> {
    // A thread just joined may still be listed for a moment: `pthread_join`
    // returns when the thread clears its tid, before the kernel has
    // removed it. So a count above one is looked at again, briefly.
    let mut threads = thread_count()?;
    let deadline = std::time::Instant::now() + EXITING_THREAD_PATIENCE;
    while threads != 1 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(1));
        threads = thread_count()?;
    }
    if threads != 1 {
        return Ok(Forked::Threads(threads));
    }
    flush_stdio();
    // SAFETY: the process has exactly one thread (checked just above; only
    // this thread could start another, and it is here), so no lock can be
    // held by a thread that does not exist in the child: the child may run
    // any code.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent(child.as_raw() as u32)),
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
    }
}

/// Waits for our child `pid` to end and reaps it.
pub(crate) fn reap_child(pid: u32) -> ExitReport {
    loop {
        match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => return ExitReport::Code(code),
            Ok(nix::sys::wait::WaitStatus::Signaled(_, sig, _)) => {
                return ExitReport::Signal(sig as i32);
            }
            // Stopped or continued: not an end; wait on.
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return ExitReport::Unknown,
        }
    }
}

/// A forked worker's start-up, once the zygote's own control socket is
/// closed (descriptors 3 and 4 free): puts its protocol pipes where an
/// exec'd worker has them (3 and 4), and the pool's lifeline at the lowest
/// free number from 5 (6: the zygote keeps the pool's pidfd at 5). Every other
/// descriptor stays: the zygote had closed what it inherited, so the rest
/// are what its initializer opened, which the state may own.
pub(crate) fn settle_forked_fds(
    input: OwnedFd,
    output: &mut std::fs::File,
    lifeline: OwnedFd,
) -> io::Result<(std::fs::File, OwnedFd)> {
    let input = super::move_to(input, super::PROTOCOL_IN_FD)?;
    *output = std::fs::File::from(super::copy_to(output.as_fd(), super::PROTOCOL_OUT_FD)?);
    let lifeline = nix::fcntl::fcntl(
        lifeline.as_fd(),
        nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(super::LIFELINE_FD),
    )?;
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) returned a fresh descriptor we own
    // (the original is closed when `lifeline` drops).
    let lifeline = unsafe { OwnedFd::from_raw_fd(lifeline) };
    Ok((std::fs::File::from(input), lifeline))
}

/// A forked worker's start-up: leads a process group of its own, so a
/// signal to the group reaches what its tasks start.
pub(crate) fn own_process_group() -> io::Result<()> {
    nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0))?;
    Ok(())
}

/// A forked worker's parent is the zygote, whose death must not end it, so
/// it cannot use the parent-death signal. Instead a small thread watches
/// the pool's process two ways: its pidfd (readable when it exits or is
/// killed, whatever copies of it a `fork` without exec left holding the
/// lifeline) and the read end of its lifeline, a pipe whose write end only
/// that process holds, close-on-exec (it hangs up when the process
/// replaces itself with `execve`). Then it SIGKILLs the worker's own
/// process group and itself.
///
/// (A task that ends the worker's main thread, as `pthread_exit` there
/// would, leaves this thread alive: the worker then neither serves nor
/// exits, and only a deadline ends its call. An exec'd worker, with one
/// thread, exits.)
pub(crate) fn die_with_pool(pool: OwnedFd, lifeline: OwnedFd) -> io::Result<()> {
    std::thread::Builder::new()
        .name("procpool-pool-watch".into())
        .stack_size(64 << 10)
        .spawn(move || {
            let mut fds = [
                PollFd::new(pool.as_fd(), PollFlags::POLLIN),
                PollFd::new(lifeline.as_fd(), PollFlags::POLLIN),
            ];
            loop {
                match super::wait(&mut fds, None) {
                    Ok(super::Waited::Ready) => break,
                    Ok(super::Waited::TimedOut) => {}
                    // Refused (a task lowered RLIMIT_NOFILE) or failed:
                    // look again a little later rather than spin.
                    Ok(super::Waited::Refused) | Err(_) => {
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                }
            }
            let me = std::process::id() as libc::pid_t;
            // SAFETY: killpg and kill only send signals: to the group this
            // worker leads (its id is this live process's pid, so it names
            // no one else's group, whatever group a task moved the worker
            // to), then to this process itself.
            unsafe {
                libc::killpg(me, libc::SIGKILL);
                libc::kill(me, libc::SIGKILL);
            }
        })?;
    Ok(())
}

/// SIGCHLD's disposition as the zygote's initializer left it (ignored, a
/// handler, `SA_NOCLDWAIT`): the zygote puts the default back for itself,
/// so no worker is reaped before the pool asks, and each worker gets the
/// initializer's setting back. While it is not the default, the zygote
/// reaps the other children it has (the initializer's helpers) itself, as
/// the initializer's setting would have.
#[derive(Clone, Copy)]
pub(crate) struct ChildSignal(Option<libc::sigaction>);

impl std::fmt::Debug for ChildSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ChildSignal")
            .field(&self.0.is_some())
            .finish()
    }
}

impl ChildSignal {
    /// Makes this process's children waitable only when asked (SIGCHLD at
    /// its default) and returns what it was, if that was changed.
    pub(crate) fn keep_children_waitable() -> io::Result<Self> {
        // SAFETY: a zeroed sigaction is a valid value for sigaction to fill.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: with a null new action, sigaction only writes the current
        // one into `old`, a live local.
        if unsafe { libc::sigaction(libc::SIGCHLD, std::ptr::null(), &mut old) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if old.sa_sigaction == libc::SIG_DFL && old.sa_flags & libc::SA_NOCLDWAIT == 0 {
            return Ok(Self(None));
        }
        // SAFETY: as above.
        let mut default: libc::sigaction = unsafe { std::mem::zeroed() };
        default.sa_sigaction = libc::SIG_DFL;
        // SAFETY: installs the default disposition (no handler of ours)
        // from a live local.
        if unsafe { libc::sigaction(libc::SIGCHLD, &default, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(Some(old)))
    }

    /// Whether the initializer had children reaped for it (ignored, or a
    /// handler that reaps).
    pub(crate) fn changed(&self) -> bool {
        self.0.is_some()
    }

    /// In a forked worker: puts back what the initializer had set.
    pub(crate) fn restore(self) -> io::Result<()> {
        let Some(old) = self.0 else {
            return Ok(());
        };
        // SAFETY: reinstalls a disposition sigaction itself returned.
        if unsafe { libc::sigaction(libc::SIGCHLD, &old, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Reaps, without blocking, the children of this process that have exited
/// and are not in `keep` (a zygote's workers, which wait for the pool).
pub(crate) fn reap_children_except(keep: &std::collections::HashSet<u32>) {
    for pid in super::proc::children_of(std::process::id()) {
        if keep.contains(&pid) {
            continue;
        }
        let _ = nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(pid as i32),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
    }
}

/// Whether the process behind `pidfd` is our child and not yet reaped
/// (running, or a zombie): while it is, its pid, and so its process group
/// id, cannot name another process. Unlike a look by pid, a stranger that
/// took a freed pid is never mistaken for it.
pub(crate) fn pidfd_unreaped(pidfd: BorrowedFd<'_>) -> bool {
    let any = libc::WEXITED | libc::WSTOPPED | libc::WCONTINUED;
    wait_pidfd(pidfd, any | libc::WNOWAIT).is_some()
}

/// `waitid(P_PIDFD, pidfd, flags | WNOHANG)`: what it filled in, or `None`
/// if the process is not our child (or not any more).
fn wait_pidfd(pidfd: BorrowedFd<'_>, flags: libc::c_int) -> Option<libc::siginfo_t> {
    // SAFETY: a zeroed siginfo_t is a valid value for waitid to fill in.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid writes one siginfo_t through a pointer to a live
    // local; WNOHANG never blocks; P_PIDFD names the process by descriptor.
    let r = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            flags | libc::WNOHANG,
        )
    };
    (r == 0).then_some(info)
}

/// Reaps the process behind `pidfd` if it has become our child (its
/// zygote died and this process is a subreaper, or init): how it ended,
/// or `None` if it is not our child or has not exited.
pub(crate) fn reap_if_ours(pidfd: BorrowedFd<'_>) -> Option<ExitReport> {
    let info = wait_pidfd(pidfd, libc::WEXITED)?;
    // SAFETY: waitid succeeded and filled `info` (si_pid 0: not exited).
    if unsafe { info.si_pid() } == 0 {
        return None;
    }
    // SAFETY: as above; for a child that exited, si_status is its code or
    // signal, told apart by si_code.
    let status = unsafe { info.si_status() };
    Some(match info.si_code {
        libc::CLD_EXITED => ExitReport::Code(status),
        libc::CLD_KILLED | libc::CLD_DUMPED => ExitReport::Signal(status),
        _ => ExitReport::Unknown,
    })
}

/// A pidfd for this process's parent, checked to be the process `parent`
/// (not a reaper that adopted us after it died).
pub(crate) fn parent_pidfd(parent: u32) -> io::Result<OwnedFd> {
    let fd = super::pidfd_open(parent)
        .ok_or_else(|| io::Error::other("cannot open a pidfd for the pool"))?;
    if nix::unistd::getppid().as_raw() as u32 != parent {
        return Err(io::Error::other(
            "the pool exited before the zygote started",
        ));
    }
    Ok(fd)
}

/// Whether the process behind `pidfd` has exited (its pidfd is readable).
pub(crate) fn pidfd_exited(pidfd: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(pidfd, PollFlags::POLLIN)];
    matches!(super::peek(&mut fds), Ok(super::Waited::Ready))
}

/// Waits up to `timeout` for the process behind `pidfd` to exit.
pub(crate) fn pidfd_wait(pidfd: BorrowedFd<'_>, timeout: Duration) -> bool {
    let mut fds = [PollFd::new(pidfd, PollFlags::POLLIN)];
    let deadline = super::after(std::time::Instant::now(), timeout);
    matches!(super::wait(&mut fds, deadline), Ok(super::Waited::Ready))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_travel_with_their_bytes_in_order() {
        let (a, b) = socket_pair().unwrap();
        let (r1, _w1) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let (r2, _w2) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        send_with_fds(a.as_fd(), b"one", &[r1.as_fd()]).unwrap();
        send_with_fds(a.as_fd(), b"two", &[r2.as_fd()]).unwrap();
        drop(a);
        let mut sock = FdSocket::new(b);
        let mut all = Vec::new();
        sock.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"onetwo");
        let got = sock.take_fds(2).unwrap();
        assert!(sock.take_fds(1).is_none());
        // The received descriptors are the pipes' read ends, close-on-exec.
        for (fd, want) in got.iter().zip([&r1, &r2]) {
            let st = nix::sys::stat::fstat(fd).unwrap();
            let want = nix::sys::stat::fstat(want).unwrap();
            assert_eq!(st.st_ino, want.st_ino);
            let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).unwrap();
            assert_ne!(flags & libc::FD_CLOEXEC, 0);
        }
    }

    #[test]
    fn a_process_with_a_second_thread_is_refused_a_fork() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || rx.recv());
        let n = thread_count().unwrap();
        assert!(n > 1, "{n}");
        assert!(matches!(fork_if_single_threaded(), Ok(Forked::Threads(m)) if m > 1));
        drop(tx);
        let _ = other.join();
    }
}
