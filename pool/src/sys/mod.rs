//! The only module that touches the platform directly: descriptor
//! plumbing, signals and environment edits. Every `unsafe` block of the
//! crate is here, one per syscall, its result checked at once.
//!
//! Linux is the supported platform (close_range, eventfd, pipes with
//! O_CLOEXEC from birth); see the crate docs.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// Descriptor numbers the worker runtime moves the protocol pipes to.
const PROTOCOL_IN_FD: RawFd = 3;
const PROTOCOL_OUT_FD: RawFd = 4;

/// The protocol pipes of a worker, moved off stdin and stdout.
#[derive(Debug)]
pub(crate) struct ProtocolStdio {
    pub(crate) input: File,
    pub(crate) output: File,
}

/// Worker start-up: moves the protocol pipes from fds 0 and 1 to private,
/// close-on-exec descriptors 3 and 4, points fd 0 at `/dev/null` and fd 1
/// at fd 2 (so task output cannot reach the protocol stream), and closes
/// every other inherited descriptor.
///
/// Must run before the process starts threads or opens files of its own
/// (the first statement of `main`, as the crate docs say).
pub(crate) fn take_protocol_stdio() -> io::Result<ProtocolStdio> {
    let stdin = io::stdin();
    let stdout = io::stdout();
    let input = fcntl(stdin.as_fd(), FcntlArg::F_DUPFD_CLOEXEC(PROTOCOL_IN_FD))?;
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) returned a fresh descriptor we own.
    let input = unsafe { OwnedFd::from_raw_fd(input) };
    let output = fcntl(stdout.as_fd(), FcntlArg::F_DUPFD_CLOEXEC(PROTOCOL_OUT_FD))?;
    // SAFETY: as above.
    let output = unsafe { OwnedFd::from_raw_fd(output) };

    let devnull = nix::fcntl::open(
        "/dev/null",
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    nix::unistd::dup2_stdin(&devnull)?;
    drop(devnull);
    nix::unistd::dup2_stdout(io::stderr().as_fd())?;

    // Settle on fixed numbers (inherited descriptors may have pushed ours
    // higher), then close everything above them.
    let input = move_to(input, PROTOCOL_IN_FD)?;
    let output = move_to(output, PROTOCOL_OUT_FD)?;
    close_from(PROTOCOL_OUT_FD + 1)?;
    Ok(ProtocolStdio {
        input: File::from(input),
        output: File::from(output),
    })
}

/// Makes `fd` be descriptor number `target` (close-on-exec).
fn move_to(fd: OwnedFd, target: RawFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() == target {
        return Ok(fd);
    }
    // SAFETY: dup3 onto `target` replaces whatever descriptor had that
    // number; the caller only moves onto numbers that are either free or
    // inherited descriptors about to be closed anyway.
    let r = unsafe { libc::dup3(fd.as_raw_fd(), target, libc::O_CLOEXEC) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: dup3 succeeded, so `target` is now an open descriptor that
    // nothing else in the process owns.
    Ok(unsafe { OwnedFd::from_raw_fd(target) })
}

/// Closes every descriptor numbered `first` or above.
fn close_from(first: RawFd) -> io::Result<()> {
    // SAFETY: close_range only closes descriptors; at worker start-up none
    // above `first` is owned by live Rust objects (see take_protocol_stdio).
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            0 as libc::c_uint,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Removes an environment variable at worker start-up, so the worker's own
/// child processes do not believe they are workers.
pub(crate) fn remove_env(name: &str) {
    // SAFETY: called only at worker start-up, from `serve_if_worker` /
    // `worker::run`, which the docs require to run before the program
    // starts any thread; no other thread can be reading the environment.
    unsafe { std::env::remove_var(name) };
}

/// Puts a descriptor into non-blocking mode.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Sends `signal` to the process group led by `pid`. A group that is
/// already gone is not an error.
pub(crate) fn signal_group(pid: u32, signal: Signal) -> io::Result<()> {
    match killpg(Pid::from_raw(pid as i32), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A pidfd for our own unreaped child `pid`: readable once it has exited.
/// `None` where the kernel has no pidfd_open (before Linux 5.3); the pipe's
/// end then tells of the death instead.
pub(crate) fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor
    // (close-on-exec by definition) or -1; it touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0 as libc::c_uint) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the syscall returned a fresh descriptor that we now own.
    Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Worker start-up: asks the kernel to SIGKILL this process when the
/// thread that started it (the pool's dispatcher) dies, then checks that
/// the parent did not die before the request was made.
pub(crate) fn die_with_parent(parent: u32) -> io::Result<()> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
    if nix::unistd::getppid().as_raw() as u32 != parent {
        return Err(io::Error::other(
            "the parent exited before the worker started",
        ));
    }
    Ok(())
}

/// Worker start-up: caps the address space, so a runaway allocation fails
/// (and the worker aborts) instead of exhausting the machine.
pub(crate) fn limit_memory(bytes: u64) -> io::Result<()> {
    use nix::sys::resource::{Resource, setrlimit};
    setrlimit(Resource::RLIMIT_AS, bytes, bytes)?;
    Ok(())
}

/// Bytes written into a pipe that its reader has not read yet (FIONREAD,
/// which Linux answers on either end, also after the reader is gone).
pub(crate) fn pipe_unread(fd: BorrowedFd<'_>) -> Option<u64> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer we pass, which
    // points at a live local.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) };
    (r == 0 && n >= 0).then_some(n as u64)
}

/// Whether a descriptor is a terminal.
pub(crate) fn is_terminal(fd: BorrowedFd<'_>) -> bool {
    nix::unistd::isatty(fd).unwrap_or(false)
}

/// An eventfd other threads write to wake the dispatcher's poll.
pub(crate) fn wake_fd() -> io::Result<nix::sys::eventfd::EventFd> {
    use nix::sys::eventfd::{EfdFlags, EventFd};
    Ok(EventFd::from_flags(
        EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wake_fd_is_close_on_exec_from_birth() {
        let fd = wake_fd().unwrap();
        let flags = fcntl(fd.as_fd(), FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
    }

    #[test]
    fn unread_bytes_are_counted_on_the_write_end() {
        use std::io::{Read, Write};
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let (mut r, mut w) = (File::from(r), File::from(w));
        w.write_all(b"0123456789").unwrap();
        assert_eq!(pipe_unread(w.as_fd()), Some(10));
        let mut four = [0; 4];
        r.read_exact(&mut four).unwrap();
        assert_eq!(pipe_unread(w.as_fd()), Some(6));
        drop(r);
        assert_eq!(pipe_unread(w.as_fd()), Some(6));
    }

    #[test]
    fn nonblocking_sets_the_flag() {
        let (r, _w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        set_nonblocking(r.as_fd()).unwrap();
        let flags = OFlag::from_bits_retain(fcntl(r.as_fd(), FcntlArg::F_GETFL).unwrap());
        assert!(flags.contains(OFlag::O_NONBLOCK));
    }
}
