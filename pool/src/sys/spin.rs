//! A bounded, adaptive spin before a blocking wait: the hot path's answer
//! to a sleeping thread's wake-up.
//!
//! A blocking round trip between two processes costs a wake-up on each
//! side. When both ends run on one CPU that is a context switch, a few
//! microseconds; when they run on two, the sleeping side's CPU must be
//! woken from idle, which costs ten times that on a VM. So a side that
//! expects an answer soon (a caller on the direct lane that has sent its
//! task, the pool's loop while batches are out on local workers, a worker
//! that has sent its results) first *looks* for it for a short while,
//! without sleeping, and only then blocks.
//!
//! Between looks it yields its CPU (`sched_yield`): when the other side
//! shares the CPU, that is what lets it run and answer, and when it does
//! not, the yield returns at once. The look itself is a non-blocking read,
//! so nothing is missed and nothing is taken out of order.
//!
//! Bounded: one spin lasts at most [`MAX`]; an idle pool spins that long
//! once per worker and once in its loop, then sleeps and uses no CPU. Adaptive: a spin that
//! ended without an answer halves the next one's budget (down to [`MIN`]),
//! so a caller whose tasks take longer than the budget pays little for
//! looking. The whole budget comes back when a spin finds its answer, or
//! when the answer that a spin gave up on came within [`MAX`] after all
//! (the side slept, then saw it early): a run of bad luck, a preemption
//! say, must not leave the budget below the round trip for good.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags};

/// The longest a spin lasts.
pub(crate) const MAX: Duration = Duration::from_micros(50);
/// The shortest budget a string of fruitless spins decays to.
pub(crate) const MIN: Duration = Duration::from_micros(3);

/// One side's spin budget, carried from one wait to the next.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spin {
    budget: Duration,
    /// When the last spin that found nothing started (until its answer).
    gave_up: Option<Instant>,
}

impl Default for Spin {
    fn default() -> Self {
        Self {
            budget: MAX,
            gave_up: None,
        }
    }
}

impl Spin {
    /// Yields the CPU, then calls `look`, until it gives an answer or the
    /// budget is spent. `None`: spent; block now. The yield comes first:
    /// an answer not there yet needs the other side to run (on one CPU,
    /// the yield is what lets it).
    pub(crate) fn run<T>(&mut self, mut look: impl FnMut() -> Option<T>) -> Option<T> {
        // Read once the first look has found nothing: on one CPU the first
        // look after the yield is the answer, and needs no clock.
        let mut start = None;
        loop {
            std::thread::yield_now();
            if let Some(found) = look() {
                self.budget = MAX;
                self.gave_up = None;
                return Some(found);
            }
            let start = *start.get_or_insert_with(Instant::now);
            if start.elapsed() >= self.budget {
                self.budget = (self.budget / 2).max(MIN);
                self.gave_up = Some(start);
                return None;
            }
        }
    }

    /// The answer a spin gave up on has come (after a blocking wait): if
    /// it came within [`MAX`] of that spin's start, spinning pays here,
    /// and the next spin gets the whole budget again.
    pub(crate) fn answered(&mut self) {
        self.answered_at(Instant::now());
    }

    fn answered_at(&mut self, now: Instant) {
        if let Some(start) = self.gave_up.take()
            && now.saturating_duration_since(start) <= MAX
        {
            self.budget = MAX;
        }
    }

    /// The budget the next spin has.
    #[cfg(test)]
    pub(crate) fn budget(&self) -> Duration {
        self.budget
    }
}

/// A worker's input: blocking reads, each of which spins before it
/// sleeps. The descriptor is made non-blocking (it is the worker's own end
/// of its input pipe, shared with nobody).
///
/// Whoever feeds the worker, its next frame is usually microseconds away:
/// a direct-lane caller writes its next task as soon as it has the answer,
/// and the pool's loop, which spins too while batches are out
/// (`Dispatcher::wait_and_handle`), sends the next chunk as soon as it has
/// read the last one's results. Sleeping instead costs a wake-up, and on a
/// VM whose other CPU has gone idle that is tens of microseconds. (Spinning
/// here alone, with the loop asleep, made `imap_unordered` with chunks of
/// one item a quarter slower on two CPUs: the worker's yields took the
/// CPU the loop needed. With both spinning, rounds paired in one process
/// ran it 1.2× as fast as with neither, and a `map` of 1M `u64` 1.13× to
/// 1.23×.)
///
/// The lane mark of its shared page (`sys::shm`) says who feeds it. A lane
/// caller's next task cannot be there yet, having only just been sent the
/// answer, so a lent worker yields before its first look (on one CPU that
/// is what lets the caller run); a worker fed by the loop looks first, as
/// its next chunk is often already in the pipe. A worker without the page
/// (a remote one) spins as a lent one does.
#[derive(Debug)]
pub(crate) struct SpinRead<'p> {
    file: File,
    spin: Spin,
    lane_mark: Option<&'p super::SharedCounter>,
}

impl<'p> SpinRead<'p> {
    pub(crate) fn new(file: File, lane_mark: Option<&'p super::SharedCounter>) -> io::Result<Self> {
        super::set_nonblocking(file.as_fd())?;
        Ok(Self {
            file,
            spin: Spin::default(),
            lane_mark,
        })
    }
}

impl Read for SpinRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        fn look(file: &mut File, buf: &mut [u8]) -> Option<io::Result<usize>> {
            match file.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => None,
                done => Some(done),
            }
        }
        // Whether `poll` has just said there is something to read.
        let mut readable = false;
        loop {
            let lent = self.lane_mark.is_none_or(|m| m.lent());
            if (readable || !lent)
                && let Some(done) = look(&mut self.file, buf)
            {
                return done;
            }
            let file = &mut self.file;
            if let Some(done) = self.spin.run(|| look(file, buf)) {
                return done;
            }
            let mut fds = [PollFd::new(self.file.as_fd(), PollFlags::POLLIN)];
            super::wait(&mut fds, None)?;
            readable = true;
            self.spin.answered();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_ends_the_spin_and_restores_the_budget() {
        let mut spin = Spin::default();
        assert_eq!(spin.run(|| None::<()>), None);
        assert_eq!(spin.budget(), MAX / 2);
        assert_eq!(spin.run(|| Some(7)), Some(7));
        assert_eq!(spin.budget(), MAX);
        // Several looks: with a budget no preemption of this thread can
        // use up (a busy machine may stop it for milliseconds).
        let mut spin = Spin {
            budget: Duration::from_secs(600),
            gave_up: None,
        };
        let mut looks = 0;
        let found = spin.run(|| {
            looks += 1;
            (looks == 3).then_some(looks)
        });
        assert_eq!(found, Some(3));
        assert_eq!(spin.budget(), MAX);
    }

    #[test]
    fn fruitless_spins_decay_to_the_minimum_and_stay_bounded() {
        let mut spin = Spin::default();
        for _ in 0..20 {
            assert_eq!(spin.run(|| None::<()>), None);
        }
        assert_eq!(spin.budget(), MIN);
        // An answer long after the spin gave up leaves the budget low...
        let start = spin.gave_up.expect("it gave up");
        spin.answered_at(start + MAX * 2);
        assert_eq!(spin.budget(), MIN);
        // ...one that came soon after restores it.
        assert_eq!(spin.run(|| None::<()>), None);
        let start = spin.gave_up.expect("it gave up");
        spin.answered_at(start + MAX / 2);
        assert_eq!(spin.budget(), MAX);
    }

    #[test]
    fn a_spinning_reader_gets_what_arrives_late_and_the_end() {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let mut input = SpinRead::new(File::from(r), None).unwrap();
        let writer = std::thread::spawn(move || {
            // Late enough that the reader has spun and gone to sleep.
            std::thread::sleep(Duration::from_millis(20));
            nix::unistd::write(&w, b"late").unwrap();
        });
        let mut got = Vec::new();
        input.read_to_end(&mut got).unwrap();
        writer.join().unwrap();
        assert_eq!(got, b"late");
    }
}
