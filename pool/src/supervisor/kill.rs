//! Ending a worker: SIGTERM, a grace period, then SIGKILL, to the worker
//! itself (through its pidfd), its process group, and its descendant tree.
//!
//! A task may move its worker to another process group, or start children
//! that leave the group (`setsid`). So a kill reaches three sets:
//!
//! - the worker, through its pidfd (never a recycled pid);
//! - its process group, while the worker is unreaped (the group id cannot
//!   be reused while its leader's pid is held);
//! - its descendants as `/proc/<pid>/task/*/children` lists them (a worker
//!   is a child subreaper, so orphaned grandchildren stay in its tree),
//!   each through a pidfd. They are frozen with SIGSTOP before the SIGKILL
//!   so none can fork a new one in between.
//!
//! What can still escape: a descendant that left the worker's group and
//! was orphaned when the worker died on its own (a crash, not a kill), as
//! the kernel then hands it to init; and a descendant that double-forks
//! between the two walks of a SIGTERM-only grace period. Workers also
//! SIGKILL their own descendants when their input ends (`join`).

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::WorkerProcess;

/// A remote worker's relay kills it (SIGTERM, the same grace, SIGKILL)
/// and reports; the pool SIGKILLs its launcher, which ends the connection
/// (and so, through the relay, the worker), only if no report came this
/// long after the grace.
pub(crate) const RELAY_SLACK: Duration = Duration::from_secs(5);

/// A remote worker's launcher is asked to end (SIGTERM, to it alone) and
/// given this long before the SIGKILL: ssh then closes its connection and
/// srun cancels its job step, either of which ends the worker on the host.
/// A launcher SIGKILLed with its children at once may leave the host none
/// the wiser (srun's job then runs until Slurm's `InactiveLimit`).
const LAUNCHER_GRACE: Duration = Duration::from_secs(1);

/// Walks of a stopped tree before the SIGKILL: each finds what the last
/// one could not (children handed over by a member that exited).
const MAX_WALKS: usize = 16;
use crate::error::Exit;
use crate::sys;

/// A kill in progress.
#[derive(Debug, Default)]
pub(crate) struct Escalation {
    /// When SIGKILL follows the SIGTERM already sent (`None`: no grace
    /// period is running).
    sigkill_at: Option<Instant>,
    /// SIGTERM was sent.
    terminated: bool,
    /// A remote worker's launcher was sent SIGTERM.
    launcher_asked: bool,
    /// SIGKILL was sent.
    killed: bool,
    /// Descendants found when SIGTERM was sent (pid, pidfd).
    tree: Vec<(u32, OwnedFd)>,
}

impl WorkerProcess {
    /// SIGTERM now, SIGKILL after `grace` (a `Duration::MAX` grace never
    /// escalates by itself). A second call changes nothing: escalate with
    /// [`kill`](Self::kill).
    pub(crate) fn terminate(&mut self, now: Instant, grace: Duration) {
        if self.kill.terminated || self.kill.killed {
            return;
        }
        self.kill.terminated = true;
        if self.remote.is_some() {
            // Its relay, asked in a frame by the dispatcher, does the
            // SIGTERM; its launcher is for the SIGKILL.
            self.kill.sigkill_at = sys::after(now, grace.saturating_add(RELAY_SLACK));
            return;
        }
        self.kill.sigkill_at = sys::after(now, grace);
        self.kill.tree = self.tree_pidfds();
        self.signal(Signal::SIGTERM);
        for (_, fd) in &self.kill.tree {
            let _ = sys::pidfd_signal(fd.as_fd(), Signal::SIGTERM);
        }
    }

    /// SIGKILL to the worker, its group and its (frozen) tree, now.
    pub(crate) fn kill(&mut self) {
        if self.kill.killed {
            return;
        }
        self.kill.killed = true;
        self.kill.sigkill_at = None;
        let mut tree = std::mem::take(&mut self.kill.tree);
        // Freeze the worker and what it started, then walk again until a
        // walk finds nothing new: nothing stopped can fork a child the walk
        // would miss, and a member that exits meanwhile hands its children
        // to the (stopped, subreaper) worker, where the next walk sees them.
        self.signal(Signal::SIGSTOP);
        for (_, fd) in &tree {
            let _ = sys::pidfd_signal(fd.as_fd(), Signal::SIGSTOP);
        }
        for _ in 0..MAX_WALKS {
            let new: Vec<(u32, OwnedFd)> = self
                .tree_pidfds()
                .into_iter()
                .filter(|(p, _)| !tree.iter().any(|(q, _)| q == p))
                .collect();
            if new.is_empty() {
                break;
            }
            for (_, fd) in &new {
                let _ = sys::pidfd_signal(fd.as_fd(), Signal::SIGSTOP);
            }
            tree.extend(new);
        }
        self.signal(Signal::SIGKILL);
        for (_, fd) in &tree {
            let _ = sys::pidfd_signal(fd.as_fd(), Signal::SIGKILL);
        }
    }

    /// Whether a kill was started (SIGTERM or SIGKILL sent).
    pub(crate) fn killing(&self) -> bool {
        self.kill.terminated || self.kill.killed
    }

    /// The pool signalled a remote worker's launcher itself (SIGTERM or
    /// SIGKILL): its end is the pool's doing, and no more is to be read
    /// from its relay.
    pub(crate) fn launcher_signalled(&self) -> bool {
        self.remote.is_some() && (self.kill.launcher_asked || self.kill.killed)
    }

    /// When this worker's SIGKILL is due, if a grace period is running.
    pub(crate) fn kill_deadline(&self) -> Option<Instant> {
        self.kill.sigkill_at
    }

    /// Sends the SIGKILL whose time has come.
    pub(crate) fn tick(&mut self, now: Instant) -> bool {
        match self.kill.sigkill_at {
            Some(at) if now >= at && self.remote.is_some() && !self.kill.launcher_asked => {
                log::warn!(
                    "procpool: remote worker {} did not end within its grace period; ending its \
                     launcher",
                    self.pid()
                );
                self.ask_launcher_to_end();
                self.kill.sigkill_at = sys::after(now, LAUNCHER_GRACE);
                false
            }
            Some(at) if now >= at => {
                log::warn!(
                    "procpool: worker {} outlived its grace period after SIGTERM; sending SIGKILL",
                    self.pid()
                );
                self.kill();
                true
            }
            _ => false,
        }
    }

    /// Ends the worker for good: whatever is left of it and its tree is
    /// killed, and it is reaped. For a worker that exited on its own this
    /// only clears what it left behind in its group.
    pub(crate) fn end(&mut self) -> Exit {
        if self.is_thread() {
            return self.reap();
        }
        if self.remote.is_some() && !self.kill.launcher_asked && !self.has_exited() {
            // Still running (a start-up timeout, a protocol violation, the
            // pool's end): asked first, so the host hears of it.
            self.ask_launcher_to_end();
            if let Some(fd) = self.pidfd() {
                sys::pidfd_wait(fd, LAUNCHER_GRACE);
            }
        }
        self.kill();
        self.reap()
    }

    /// SIGTERM to a remote worker's launcher alone (not its group: srun's
    /// helper child must live to cancel the step).
    fn ask_launcher_to_end(&mut self) {
        self.kill.launcher_asked = true;
        if let Some(fd) = self.pidfd() {
            let _ = sys::pidfd_signal(fd, Signal::SIGTERM);
        }
    }

    /// The worker's descendants, as pidfds; none once it was reaped (its
    /// pid may name another process by then).
    fn tree_pidfds(&self) -> Vec<(u32, OwnedFd)> {
        if self.is_thread() || self.reaped() {
            return Vec::new();
        }
        sys::descendant_pidfds(self.pid())
    }
}
