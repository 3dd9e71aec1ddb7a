//! How far ahead a worker is fed: the pace at which its batches come
//! back, and the depth of pipeline that pace earns.
//!
//! A worker is sent up to [`PIPELINE`](crate::builder::PIPELINE) batches
//! so that its next one is in its pipe when it ends the last. For tiny
//! batches (`imap_unordered` with chunk size 1, or a stream of
//! `apply_async` calls) that is not enough: a batch takes a few
//! microseconds, the round trip that brings the next one (the worker's
//! answer read, the loop woken, the next batch written) takes tens, and
//! the worker waits most of the time. A worker whose batches come back
//! fast is sent more, so that about [`AHEAD`] of work at its pace sits in
//! its pipe, up to [`DEEP_PIPELINE`] batches. A slow batch raises the pace
//! at once, and so does one still running past the mean, so a worker
//! running a long item is sent no more than the usual two: no worker is
//! handed work that another, idle, could start sooner. (What was sent
//! while its items were fast stays in its pipe: at most
//! [`DEEP_PIPELINE`] batches.) An idle worker comes first: the first
//! round of a dispatch hands one batch to each idle worker before any
//! worker gets a second. A pace belongs to the job that set it: an idle
//! worker handed another job's batch starts unmeasured, at two, until one
//! of the new job's batches has come back.
//!
//! The pace is the mean time between the ends of a worker's batches
//! (from when it was handed its first batch, if it was idle). While a
//! worker waits for work, its batches end a round trip apart, divided by
//! the depth; a deeper pipeline shortens that time, which deepens it
//! further, up to the bound, for as long as the batches stay short.
//!
//! Pure: its inputs are instants, it reads no clock.

use std::time::{Duration, Instant};

/// Most batches a worker whose batches are fast may hold.
pub(crate) const DEEP_PIPELINE: usize = 16;

// Each batch in a worker's pipe has a skip bit of its own (`sys::shm`).
const _: () = assert!(DEEP_PIPELINE < crate::sys::MAX_RUNS_IN_FLIGHT);

/// Work at a worker's pace its pipe may hold beyond the running batch.
/// Longer than a round trip between two CPUs (tens of microseconds on a
/// VM), short enough that an idle worker never waits on another's pipe
/// for longer than this.
const AHEAD: Duration = Duration::from_micros(100);

/// Weight of a new sample in the mean, as a shift (1/8).
const WEIGHT_SHIFT: u32 = 3;

/// One worker's pace.
#[derive(Debug, Clone)]
pub(crate) struct Pace {
    /// When the batch now at the front of the worker's pipe began: its
    /// hand-over, if the worker was idle, else the end of the one before.
    since: Instant,
    /// Mean time per batch, in nanoseconds; `None` until one has ended.
    mean_ns: Option<u64>,
    /// The job of the last batch the worker was handed.
    job: Option<u64>,
}

impl Pace {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            since: now,
            mean_ns: None,
            job: None,
        }
    }

    /// The worker was handed a batch of `job` at `now`, `idle` if it held
    /// none. An idle worker handed another job's batch than its last
    /// forgets its pace: the new job's speed is unknown (a fast job's pace
    /// would send a slow one's first batches deep).
    pub(crate) fn handed(&mut self, now: Instant, job: u64, idle: bool) {
        if idle {
            self.since = now;
            if self.job != Some(job) {
                self.mean_ns = None;
            }
        }
        self.job = Some(job);
    }

    /// The worker's front batch ended at `now`.
    pub(crate) fn ended(&mut self, now: Instant) {
        let took = now.saturating_duration_since(self.since);
        self.since = now;
        let took = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.mean_ns = Some(match self.mean_ns {
            None => took,
            // A long batch weighs at once: one of a second after fast
            // ones makes the mean an eighth of a second.
            Some(m) if took >= m => m + ((took - m) >> WEIGHT_SHIFT),
            Some(m) => m - ((m - took) >> WEIGHT_SHIFT),
        });
    }

    /// Batches the worker, busy with a batch at `now`, may hold: `base`,
    /// or more while its batches are fast (see the module docs). A batch
    /// that has already run longer than the mean counts as that long (a
    /// long item that follows fast ones ends the deep pipeline as soon as
    /// it runs long, not once it ends).
    pub(crate) fn depth(&self, base: usize, now: Instant) -> usize {
        let ahead = AHEAD.as_nanos() as u64;
        let running =
            u64::try_from(now.saturating_duration_since(self.since).as_nanos()).unwrap_or(u64::MAX);
        match self.mean_ns.map(|m| m.max(running)) {
            Some(m) if m < ahead => {
                let more = (ahead / m.max(1)).min(DEEP_PIPELINE as u64) as usize;
                (1 + more).clamp(base, DEEP_PIPELINE.max(base))
            }
            _ => base,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after(pace: &mut Pace, start: Instant, batches: u32, each: Duration) -> Instant {
        let mut now = start;
        for _ in 0..batches {
            now += each;
            pace.ended(now);
        }
        now
    }

    #[test]
    fn an_unmeasured_worker_gets_the_base_depth() {
        let pace = Pace::new(Instant::now());
        assert_eq!(pace.depth(2, pace.since), 2);
        assert_eq!(pace.depth(1, pace.since), 1);
    }

    #[test]
    fn fast_batches_deepen_the_pipeline_up_to_the_bound() {
        let t = Instant::now();
        let mut pace = Pace::new(t);
        after(&mut pace, t, 64, Duration::from_micros(3));
        assert_eq!(pace.depth(2, pace.since), DEEP_PIPELINE);
        let mut pace = Pace::new(t);
        after(&mut pace, t, 64, Duration::from_micros(20));
        assert_eq!(pace.depth(2, pace.since), 6, "1 + 100 µs / 20 µs");
    }

    #[test]
    fn slow_batches_keep_the_base_depth() {
        let t = Instant::now();
        let mut pace = Pace::new(t);
        after(&mut pace, t, 64, Duration::from_micros(250));
        assert_eq!(pace.depth(2, pace.since), 2);
    }

    #[test]
    fn one_long_batch_ends_a_deep_pipeline_at_once() {
        let t = Instant::now();
        let mut pace = Pace::new(t);
        let now = after(&mut pace, t, 64, Duration::from_micros(2));
        assert_eq!(pace.depth(2, pace.since), DEEP_PIPELINE);
        after(&mut pace, now, 1, Duration::from_millis(1));
        assert_eq!(pace.depth(2, pace.since), 2);
    }

    #[test]
    fn a_batch_running_long_ends_a_deep_pipeline_before_it_ends() {
        let t = Instant::now();
        let mut pace = Pace::new(t);
        let now = after(&mut pace, t, 64, Duration::from_micros(2));
        assert_eq!(pace.depth(2, now + Duration::from_micros(1)), DEEP_PIPELINE);
        assert_eq!(pace.depth(2, now + Duration::from_millis(1)), 2);
        assert_eq!(
            pace.depth(2, pace.since),
            DEEP_PIPELINE,
            "nothing has run long"
        );
    }

    #[test]
    fn an_idle_worker_forgets_its_pace_for_another_job_only() {
        let t = Instant::now();
        let mut pace = Pace::new(t);
        pace.handed(t, 1, true);
        let now = after(&mut pace, t, 64, Duration::from_micros(2));
        // The same job again, after a pause: still fast.
        pace.handed(now, 1, true);
        assert_eq!(pace.depth(2, pace.since), DEEP_PIPELINE);
        // Another job's batch while it is busy: the pace stands.
        pace.handed(now, 2, false);
        assert_eq!(pace.depth(2, now), DEEP_PIPELINE);
        // Idle, then another job: unknown until one of its batches ends.
        pace.handed(now, 3, true);
        assert_eq!(pace.depth(2, pace.since), 2);
        after(&mut pace, now, 1, Duration::from_micros(2));
        assert_eq!(pace.depth(2, pace.since), DEEP_PIPELINE);
    }

    #[test]
    fn the_first_batch_of_an_idle_worker_counts_from_its_hand_over() {
        let t = Instant::now();
        let mut pace = Pace::new(t);
        let handed = t + Duration::from_secs(5);
        pace.handed(handed, 0, true);
        pace.ended(handed + Duration::from_micros(4));
        assert_eq!(
            pace.depth(2, pace.since),
            DEEP_PIPELINE,
            "the idle 5 s do not count"
        );
    }
}
