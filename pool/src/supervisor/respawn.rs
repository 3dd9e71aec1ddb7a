//! The restart-intensity rule that keeps a failing worker program from
//! turning the pool into a fork bomb.
//!
//! After the pool is built, a worker that fails to start (the spawn fails
//! with EAGAIN or EMFILE, the program is gone, it dies before its
//! handshake, its initializer fails) is retried after a backoff that
//! doubles with each consecutive failure. More than `max` failures within
//! `window` break the pool. A worker that reaches the ready state resets
//! the backoff (but not the window: a program that starts and immediately
//! fails again keeps counting).
//!
//! A new worker takes the lowest index (`procpool::worker::index`) that no
//! serving worker holds, so a replacement inherits the index of the worker
//! it replaces and the indices in use stay `0..workers`.
//!
//! Pure logic over instants, so it is tested without processes.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// First retry delay; doubles per consecutive failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
/// Longest retry delay.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Restart intensity: at most `max` start failures within `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limit {
    pub(crate) max: u32,
    pub(crate) window: Duration,
}

/// What to do after a start failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Try again at this instant.
    RetryAt(Instant),
    /// Too many failures: the pool is broken.
    GiveUp { failures: u32 },
}

#[derive(Debug)]
struct Restarts {
    limit: Limit,
    failures: VecDeque<Instant>,
    consecutive: u32,
}

impl Restarts {
    fn new(limit: Limit) -> Self {
        Self {
            limit,
            failures: VecDeque::new(),
            consecutive: 0,
        }
    }

    /// Records a start failure at `now`.
    fn failed(&mut self, now: Instant) -> Verdict {
        while self
            .failures
            .front()
            .is_some_and(|&t| now.duration_since(t) > self.limit.window)
        {
            self.failures.pop_front();
        }
        self.failures.push_back(now);
        let failures = self.failures.len() as u32;
        if failures > self.limit.max {
            return Verdict::GiveUp { failures };
        }
        let backoff = FIRST_BACKOFF
            .saturating_mul(1 << self.consecutive.min(16))
            .min(MAX_BACKOFF);
        self.consecutive += 1;
        Verdict::RetryAt(now.checked_add(backoff).unwrap_or(now))
    }

    /// A worker started and shook hands.
    fn succeeded(&mut self) {
        self.consecutive = 0;
    }
}

/// Replacement starts waiting out their backoff, under the restart limit.
#[derive(Debug)]
pub(crate) struct Respawn {
    restarts: Restarts,
    /// When scheduled retries are due.
    at: Vec<Instant>,
}

impl Respawn {
    pub(crate) fn new(limit: Limit) -> Self {
        Self {
            restarts: Restarts::new(limit),
            at: Vec::new(),
        }
    }

    pub(crate) fn limit(&self) -> Limit {
        self.restarts.limit
    }

    /// A start failed at `now`: a retry is scheduled (`Ok(when)`), or the
    /// limit is passed (`Err(failures)`).
    pub(crate) fn failed(&mut self, now: Instant) -> Result<Instant, u32> {
        match self.restarts.failed(now) {
            Verdict::RetryAt(at) => {
                self.at.push(at);
                Ok(at)
            }
            Verdict::GiveUp { failures } => Err(failures),
        }
    }

    /// A worker reached the ready state.
    pub(crate) fn succeeded(&mut self) {
        self.restarts.succeeded();
    }

    /// Takes the retries due at `now`: how many starts to make.
    pub(crate) fn due(&mut self, now: Instant) -> usize {
        let due = self.at.iter().filter(|&&t| t <= now).count();
        self.at.retain(|&t| t > now);
        due
    }

    /// Retries still waiting (they count towards the pool's size).
    pub(crate) fn pending(&self) -> usize {
        self.at.len()
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.at.iter().copied().min()
    }

    /// The pool stops: no more retries.
    pub(crate) fn clear(&mut self) {
        self.at.clear();
    }
}

/// The index for a new worker: the lowest one not `used` by a serving
/// worker.
pub(crate) fn free_index(used: impl IntoIterator<Item = usize>) -> usize {
    let mut used: Vec<usize> = used.into_iter().collect();
    used.sort_unstable();
    used.dedup();
    used.iter()
        .enumerate()
        .find(|&(i, &u)| i != u)
        .map_or(used.len(), |(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_worker_takes_the_lowest_free_index() {
        assert_eq!(free_index([]), 0);
        assert_eq!(free_index([0, 1, 2]), 3);
        // The replacement of worker 1 is worker 1 again.
        assert_eq!(free_index([2, 0, 3]), 1);
        assert_eq!(free_index([1, 2]), 0);
        assert_eq!(free_index([0, 0, 2]), 1);
    }

    fn limit(max: u32, secs: u64) -> Limit {
        Limit {
            max,
            window: Duration::from_secs(secs),
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let mut r = Restarts::new(limit(100, 1000));
        let t0 = Instant::now();
        let delays: Vec<Duration> = (0..12)
            .map(|_| match r.failed(t0) {
                Verdict::RetryAt(at) => at - t0,
                v => panic!("{v:?}"),
            })
            .collect();
        assert_eq!(delays[0], Duration::from_millis(10));
        assert_eq!(delays[1], Duration::from_millis(20));
        assert_eq!(delays[4], Duration::from_millis(160));
        assert_eq!(*delays.last().unwrap(), MAX_BACKOFF);
    }

    #[test]
    fn just_under_the_limit_retries_and_just_over_gives_up() {
        let mut r = Restarts::new(limit(3, 10));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(matches!(r.failed(t0), Verdict::RetryAt(_)));
        }
        assert_eq!(r.failed(t0), Verdict::GiveUp { failures: 4 });
    }

    #[test]
    fn old_failures_leave_the_window() {
        let mut r = Restarts::new(limit(2, 10));
        let t0 = Instant::now();
        assert!(matches!(r.failed(t0), Verdict::RetryAt(_)));
        assert!(matches!(r.failed(t0), Verdict::RetryAt(_)));
        // Eleven seconds later the first two no longer count.
        let later = t0 + Duration::from_secs(11);
        assert!(matches!(r.failed(later), Verdict::RetryAt(_)));
        assert!(matches!(r.failed(later), Verdict::RetryAt(_)));
        assert!(matches!(r.failed(later), Verdict::GiveUp { failures: 3 }));
    }

    #[test]
    fn success_resets_the_backoff_not_the_window() {
        let mut r = Restarts::new(limit(10, 10));
        let t0 = Instant::now();
        r.failed(t0);
        r.failed(t0);
        r.succeeded();
        assert_eq!(r.failed(t0), Verdict::RetryAt(t0 + FIRST_BACKOFF));
        assert_eq!(r.failures.len(), 3);
    }
}
