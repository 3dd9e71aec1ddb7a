//! CPU time (user + sys) of the parent and its workers over a workload,
//! beside its wall time.
//!
//! The parent's share is the delta of `getrusage(RUSAGE_SELF)` (all its
//! threads: the caller, the dispatcher, the lane). The workers' share is
//! the delta of `getrusage(RUSAGE_CHILDREN)`, which counts a child only
//! once it is reaped (so it covers pools built and joined inside the
//! window), plus the delta of the CPU time of workers alive at both ends
//! of the window, read from `/proc/<pid>/schedstat` (its first field: the
//! time the process has run, user and sys, in nanoseconds; the utime and
//! stime of `/proc/<pid>/stat` are truncated to 10 ms ticks, too coarse for
//! these windows).

use std::time::Instant;

/// User + sys seconds of this process (`RUSAGE_SELF`) or of its reaped
/// children (`RUSAGE_CHILDREN`).
fn rusage(who: libc::c_int) -> f64 {
    // SAFETY: rusage is plain data; all zeroes is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one rusage into the struct we own; `who` is
    // RUSAGE_SELF or RUSAGE_CHILDREN.
    let rc = unsafe { libc::getrusage(who, &mut ru) };
    assert_eq!(rc, 0, "getrusage");
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    s(ru.ru_utime) + s(ru.ru_stime)
}

/// The seconds live process `pid` has run (user + sys), from
/// `/proc/<pid>/schedstat`.
fn proc_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/schedstat: {e}"));
    let ns: u64 = stat.split_whitespace().next().unwrap().parse().unwrap();
    ns as f64 * 1e-9
}

/// Sums the CPU time of the parent and the workers over one or more
/// windows, and those windows' wall time, in seconds.
#[derive(Default)]
pub(crate) struct Meter {
    parent: f64,
    workers: f64,
    wall: f64,
}

impl Meter {
    /// Runs `f`, adding its CPU time to the meter: the parent's, the
    /// children reaped during it, and the live `workers`' (each must still
    /// be alive at the end).
    pub(crate) fn measure<T>(&mut self, workers: &[u32], f: impl FnOnce() -> T) -> T {
        let live: Vec<f64> = workers.iter().map(|&p| proc_cpu(p)).collect();
        let (parent, reaped) = (rusage(libc::RUSAGE_SELF), rusage(libc::RUSAGE_CHILDREN));
        let t = Instant::now();
        let out = f();
        self.wall += t.elapsed().as_secs_f64();
        self.parent += rusage(libc::RUSAGE_SELF) - parent;
        self.workers += rusage(libc::RUSAGE_CHILDREN) - reaped;
        for (&p, before) in workers.iter().zip(live) {
            self.workers += proc_cpu(p) - before;
        }
        out
    }

    /// The column: the CPU time per `unit` (of `units` in all, shown
    /// multiplied by `scale` and followed by `suffix`), split into parent
    /// and workers, and the CPU time over the wall time.
    pub(crate) fn column(&self, units: f64, unit: &str, scale: f64, suffix: &str) -> String {
        let per = |s: f64| s / units * scale;
        format!(
            "{:.1} {suffix}/{unit} (parent {:.1} + workers {:.1}), {:.2}× wall",
            per(self.parent + self.workers),
            per(self.parent),
            per(self.workers),
            (self.parent + self.workers) / self.wall,
        )
    }
}
