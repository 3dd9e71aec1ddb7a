//! The one wait primitive: `poll` over a set of descriptors until one is
//! ready or a deadline passes, with EINTR handled here and nowhere else.

use std::io;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollTimeout};

/// What one wait found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waited {
    /// At least one descriptor is ready (read the `PollFd`s).
    Ready,
    /// The deadline passed with nothing ready.
    TimedOut,
    /// `poll` refused the set (more descriptors than `RLIMIT_NOFILE`
    /// allows): the caller must look at everything itself.
    Refused,
}

/// Waits until a descriptor in `fds` is ready or `deadline` passes (`None`:
/// no deadline). A signal interrupting the wait restarts it with the time
/// left, so callers never see EINTR.
pub(crate) fn wait(fds: &mut [PollFd<'_>], deadline: Option<Instant>) -> io::Result<Waited> {
    loop {
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(d) => timeout_until(d),
        };
        match nix::poll::poll(fds, timeout) {
            Ok(0) if deadline.is_some_and(|d| Instant::now() >= d) => return Ok(Waited::TimedOut),
            // Woken early by rounding: wait out the rest.
            Ok(0) => continue,
            Ok(_) => return Ok(Waited::Ready),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EINVAL) => return Ok(Waited::Refused),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Looks once, without sleeping.
pub(crate) fn peek(fds: &mut [PollFd<'_>]) -> io::Result<Waited> {
    match nix::poll::poll(fds, PollTimeout::ZERO) {
        Ok(0) | Err(nix::errno::Errno::EINTR) => Ok(Waited::TimedOut),
        Ok(_) => Ok(Waited::Ready),
        Err(nix::errno::Errno::EINVAL) => Ok(Waited::Refused),
        Err(e) => Err(e.into()),
    }
}

/// Whether `poll` flagged this descriptor (readable, writable, hung up or
/// in error).
pub(crate) fn flagged(fd: &PollFd<'_>) -> bool {
    fd.any().unwrap_or(false)
}

/// `now + d`, or `None` (never) where that instant cannot be represented:
/// a `Duration::MAX` setting means "no deadline", not a panic.
pub(crate) fn after(now: Instant, d: Duration) -> Option<Instant> {
    now.checked_add(d)
}

fn timeout_until(deadline: Instant) -> PollTimeout {
    let left = deadline.saturating_duration_since(Instant::now());
    // Round up, so a deadline is never polled for a millisecond early.
    let ms = left.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32;
    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::poll::PollFlags;
    use std::os::fd::AsFd;

    #[test]
    fn a_deadline_passes_and_a_ready_pipe_is_seen() {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let mut fds = [PollFd::new(r.as_fd(), PollFlags::POLLIN)];
        let start = Instant::now();
        let d = start + Duration::from_millis(20);
        assert_eq!(wait(&mut fds, Some(d)).unwrap(), Waited::TimedOut);
        assert!(Instant::now() >= d);
        nix::unistd::write(&w, b"x").unwrap();
        let mut fds = [PollFd::new(r.as_fd(), PollFlags::POLLIN)];
        assert_eq!(wait(&mut fds, None).unwrap(), Waited::Ready);
        assert!(flagged(&fds[0]));
    }

    #[test]
    fn an_unrepresentable_deadline_is_never() {
        assert_eq!(after(Instant::now(), Duration::MAX), None);
    }
}
