//! Processes: pidfds, signals through them, descendant trees, and the
//! worker's own start-up settings (parent-death signal, subreaper, memory).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// A pidfd for process `pid`: readable once it has exited. `None` where
/// the kernel has no pidfd_open (before Linux 5.3) or the process is gone.
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

/// Sends `signal` to the process a pidfd refers to. A process that already
/// exited is not an error: a pidfd can never reach a recycled pid.
pub(crate) fn pidfd_signal(pidfd: BorrowedFd<'_>, signal: Signal) -> io::Result<()> {
    // SAFETY: pidfd_send_signal reads a descriptor, a signal number and a
    // null siginfo pointer (allowed: the kernel fills in a default).
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal as libc::c_int,
            std::ptr::null::<libc::siginfo_t>(),
            0 as libc::c_uint,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        return Err(e);
    }
    Ok(())
}

/// Looks at our child `pid` without reaping it or blocking (`WNOWAIT |
/// WNOHANG` added to `flags`): `None` if it is not (any more) our unreaped
/// child, else what waitid filled in (`si_pid` 0: no state change).
fn peek_child(pid: u32, flags: libc::c_int) -> Option<libc::siginfo_t> {
    // SAFETY: a zeroed siginfo_t is a valid value for waitid to fill in.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid writes one siginfo_t through a pointer to a live local;
    // WNOWAIT leaves the child waitable, WNOHANG never blocks.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            flags | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    (r == 0).then_some(info)
}

/// Whether our child `pid` is still unreaped (running, stopped, or a
/// zombie), without reaping it. While it is, its pid, and so its process
/// group id, cannot be reused. `false` once reaped, by us or by the kernel
/// (a host program that set SIGCHLD to SIG_IGN).
pub(crate) fn unreaped(pid: u32) -> bool {
    peek_child(pid, libc::WEXITED | libc::WSTOPPED | libc::WCONTINUED).is_some()
}

/// Whether our child `pid` has exited (a zombie) or is gone (reaped by
/// someone else), without reaping it.
pub(crate) fn exited_unreaped(pid: u32) -> bool {
    match peek_child(pid, libc::WEXITED) {
        None => true,
        // SAFETY: waitid filled `info` (si_pid stays 0 if nothing exited).
        Some(info) => (unsafe { info.si_pid() }) != 0,
    }
}

/// Sends `signal` to the process group `pgid`, but only while its leader
/// `pgid` is our unreaped child, so the group id cannot belong to anyone
/// else. A group that is already empty is not an error.
pub(crate) fn signal_group(pgid: u32, signal: Signal) -> io::Result<()> {
    if !unreaped(pgid) {
        return Ok(());
    }
    signal_held_group(pgid, signal)
}

/// Sends `signal` to the process group `pgid`, whose leader's pid the
/// caller knows to be held (a zygote keeps its workers unreaped until the
/// pool asks). A group that is already empty is not an error.
pub(crate) fn signal_held_group(pgid: u32, signal: Signal) -> io::Result<()> {
    match killpg(Pid::from_raw(pgid as i32), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Every live descendant of `pid` (children first, then theirs), read from
/// `/proc/<pid>/task/*/children`, as (pid, its parent). Best effort: a
/// process that forks while we read may be missed; callers stop the tree
/// before they walk it again.
pub(crate) fn descendants(pid: u32) -> Vec<(u32, u32)> {
    let mut found: Vec<(u32, u32)> = Vec::new();
    let mut next = vec![pid];
    while let Some(p) = next.pop() {
        for child in children(p) {
            if child != pid && !found.iter().any(|&(c, _)| c == child) {
                found.push((child, p));
                next.push(child);
            }
        }
    }
    found
}

/// Pidfds of the descendants of `pid`. A pid is kept only if, once its
/// pidfd is open, it is still the process the walk saw (the same start
/// time): a pid that ended and was reused meanwhile is never signalled,
/// while one whose parent exited (and so was reparented) still is.
pub(crate) fn descendant_pidfds(pid: u32) -> Vec<(u32, OwnedFd)> {
    descendants(pid)
        .into_iter()
        .filter_map(|(child, _)| {
            let seen = start_time(child)?;
            let fd = pidfd_open(child)?;
            (start_time(child) == Some(seen)).then_some((child, fd))
        })
        .collect()
}

/// The children of `pid`, from `/proc/<pid>/task/*/children`.
pub(super) fn children_of(pid: u32) -> Vec<u32> {
    children(pid)
}

fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|s| s.parse::<u32>().ok()),
            );
        }
    }
    out
}

/// When `pid` started (field 22 of `/proc/<pid>/stat`, in clock ticks
/// since boot): with the pid, it names one process for good.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses;
    // after it, the state is field 3, so the start time is the 20th.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
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

/// Has the process `cmd` starts sent `signal` when the thread that starts
/// it ends (`PR_SET_PDEATHSIG`), or at once if this process is gone by the
/// time it runs. For a remote worker's launcher (ssh, srun): a program of
/// someone else's, which cannot set it itself; its end ends the relay on
/// the far side, and so the worker there.
pub(crate) fn signal_on_parent_death(cmd: &mut std::process::Command, signal: Signal) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    let signo = signal as libc::c_int;
    // SAFETY: the closure runs in the child between fork and exec. It makes
    // three async-signal-safe calls (prctl, getppid, raise) and allocates
    // nothing, takes no lock and logs nothing (`last_os_error` reads errno
    // into a value, with no allocation).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signo as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() as u32 != parent {
                libc::raise(signo);
            }
            Ok(())
        });
    }
}

/// Worker start-up: orphaned descendants of this worker become its
/// children, not init's, so the worker (and a kill of its tree) can still
/// reach them.
pub(crate) fn become_subreaper() -> io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true)?;
    Ok(())
}

/// Worker shut-down: SIGKILLs every descendant still alive (a task's
/// forgotten or daemonised children), through pidfds.
pub(crate) fn kill_descendants_of_self() {
    // Again until none is left: the children of one killed meanwhile come
    // to this (subreaper) process, where the next walk finds them.
    // (Killed ones stay listed until reaped: stop when a walk finds no pid
    // the last one did not.)
    let mut seen: Vec<u32> = Vec::new();
    for _ in 0..16 {
        let found = descendant_pidfds(std::process::id());
        if found.iter().all(|(p, _)| seen.contains(p)) {
            return;
        }
        for (pid, fd) in found {
            let _ = pidfd_signal(std::os::fd::AsFd::as_fd(&fd), Signal::SIGKILL);
            seen.push(pid);
        }
    }
}

/// Blocks SIGPIPE in the calling thread for good (the dispatcher's own
/// thread): a write to a worker that died fails with EPIPE instead of
/// killing a host process whose SIGPIPE is at its default action.
pub(crate) fn block_sigpipe_in_this_thread() {
    use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};
    let mut set = SigSet::empty();
    set.add(Signal::SIGPIPE);
    let _ = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None);
}

/// SIGPIPE blocked in the calling thread (a caller on the direct lane)
/// while this guard lives. A SIGPIPE that a failed write raised meanwhile is
/// taken before the guard ends, whether or not the thread had SIGPIPE
/// blocked already, so none is left pending for later.
///
/// A process that ignores SIGPIPE (every Rust program, unless it chose
/// otherwise) needs none of that: a failed write raises nothing. So the
/// guard first asks for the disposition, one syscall instead of the two
/// that change the mask, and does nothing more when it is ignored. (A
/// program that stops ignoring SIGPIPE on another thread in the middle
/// of a call, while that call's worker dies, is the one case left out.)
#[derive(Debug)]
pub(crate) struct SigpipeBlocked {
    /// SIGPIPE is ignored: there is nothing to block or take.
    ignored: bool,
    /// We blocked it (the thread had not): unblock it again at the end,
    /// and only it, so other changes to the mask meanwhile stand.
    blocked_here: bool,
    /// A SIGPIPE was pending before: not ours to take.
    pending_before: bool,
}

fn sigpipe_set() -> nix::sys::signal::SigSet {
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(Signal::SIGPIPE);
    set
}

/// Whether SIGPIPE's disposition is "ignore" (asked, not changed).
fn sigpipe_ignored() -> bool {
    // SAFETY: a zeroed sigaction is a valid value for the kernel to fill.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: with a null new action, sigaction only writes the current
    // one through a pointer to a live local.
    let rc = unsafe { libc::sigaction(libc::SIGPIPE, std::ptr::null(), &mut old) };
    rc == 0 && old.sa_sigaction == libc::SIG_IGN
}

fn sigpipe_pending() -> bool {
    // SAFETY: a zeroed sigset_t is a valid value for sigpending to fill.
    let mut pending: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: sigpending writes one sigset_t through a pointer to a live
    // local; sigismember only reads it.
    unsafe {
        libc::sigpending(&mut pending) == 0 && libc::sigismember(&pending, libc::SIGPIPE) == 1
    }
}

impl SigpipeBlocked {
    pub(crate) fn new() -> Self {
        use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};
        if sigpipe_ignored() {
            return Self {
                ignored: true,
                blocked_here: false,
                pending_before: false,
            };
        }
        let mut old = SigSet::empty();
        let blocked_here =
            pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&sigpipe_set()), Some(&mut old)).is_ok()
                && !old.contains(Signal::SIGPIPE);
        Self {
            ignored: false,
            blocked_here,
            pending_before: !blocked_here && sigpipe_pending(),
        }
    }

    /// A write failed with EPIPE: take the SIGPIPE it raised.
    pub(crate) fn consume(&self) {
        if self.ignored || self.pending_before {
            return;
        }
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: sigtimedwait reads a signal set and a timespec through
        // pointers to live values and may write a null siginfo (allowed); a
        // zero timeout never blocks.
        unsafe { libc::sigtimedwait(sigpipe_set().as_ref(), std::ptr::null_mut(), &zero) };
    }
}

impl Drop for SigpipeBlocked {
    fn drop(&mut self) {
        use nix::sys::signal::{SigmaskHow, pthread_sigmask};
        if self.blocked_here {
            let _ = pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&sigpipe_set()), None);
        }
    }
}

/// Worker start-up: caps the address space, so a runaway allocation fails
/// (and the worker aborts) instead of exhausting the machine.
pub(crate) fn limit_memory(bytes: u64) -> io::Result<()> {
    use nix::sys::resource::{Resource, setrlimit};
    setrlimit(Resource::RLIMIT_AS, bytes, bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn descendants_are_found_through_a_shell() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let pid = child.id();
        // The shell forks its sleep at once; look until it shows (bounded).
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut found = Vec::new();
        while found.is_empty() && std::time::Instant::now() < until {
            found = descendants(pid);
            std::thread::yield_now();
        }
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].1, pid);
        assert!(start_time(found[0].0).is_some());
        assert!(unreaped(pid));
        let fds = descendant_pidfds(pid);
        assert_eq!(fds.len(), 1);
        for (_, fd) in fds {
            pidfd_signal(fd.as_fd(), Signal::SIGKILL).unwrap();
        }
        child.wait().unwrap();
        assert!(!unreaped(pid));
        // A group whose leader was reaped is never signalled.
        signal_group(pid, Signal::SIGKILL).unwrap();
    }
}
