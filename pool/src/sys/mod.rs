//! The only module that touches the platform directly: descriptor
//! plumbing, signals and environment edits. Every `unsafe` block of the
//! crate is here, one per syscall, its result checked at once.
//!
//! Linux is the supported platform (close_range, eventfd, pipes with
//! O_CLOEXEC from birth, pidfds, memfd); see the crate docs.
//!
//! - `wait`: the one wait primitive (`poll`, EINTR handled once);
//! - `spin`: the bounded look for an answer before that wait;
//! - `proc`: pidfds, signals through them, descendant trees;
//! - `shm`: the progress counter a worker shares with the pool;
//! - `memfd`: sealed memfds, the memory large payloads cross in;
//! - `fork`: the zygote's control socket, one-thread check and fork.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::fcntl::{FcntlArg, OFlag, fcntl};

mod fork;
mod memfd;
mod proc;
mod shm;
mod spin;
mod wait;

pub(crate) use fork::{
    ChildSignal, FdSocket, Forked, die_with_pool, fork_if_single_threaded, own_process_group,
    parent_pidfd, pidfd_exited, pidfd_unreaped, pidfd_wait, reap_child, reap_children_except,
    reap_if_ours, send_with_fds, settle_forked_fds, socket_pair,
};
pub(crate) use memfd::{Mapping, defer_unmaps, open_sealed, seal_copy, unmap_deferred};
pub(crate) use proc::{
    SigpipeBlocked, become_subreaper, block_sigpipe_in_this_thread, descendant_pidfds,
    die_with_parent, exited_unreaped, kill_descendants_of_self, limit_memory, pidfd_open,
    pidfd_signal, signal_group, signal_held_group, signal_on_parent_death, unreaped,
};
pub(crate) use shm::{MAX_RUNS_IN_FLIGHT, SharedCounter};
pub(crate) use spin::{Spin, SpinRead};
pub(crate) use wait::{Waited, after, flagged, peek, wait};

/// Descriptor numbers the worker runtime moves the protocol pipes to.
const PROTOCOL_IN_FD: RawFd = 3;
const PROTOCOL_OUT_FD: RawFd = 4;
/// Where a forked worker keeps the read end of the pool's lifeline (the
/// lowest free number from here).
const LIFELINE_FD: RawFd = 5;

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
    copy_to(fd.as_fd(), target)
}

/// A copy of `fd` as descriptor number `target` (close-on-exec).
fn copy_to(fd: BorrowedFd<'_>, target: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: dup3 onto `target` replaces whatever descriptor had that
    // number; the callers only move onto numbers that are either free or
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
    fn nonblocking_sets_the_flag() {
        let (r, _w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        set_nonblocking(r.as_fd()).unwrap();
        let flags = OFlag::from_bits_retain(fcntl(r.as_fd(), FcntlArg::F_GETFL).unwrap());
        assert!(flags.contains(OFlag::O_NONBLOCK));
    }
}
