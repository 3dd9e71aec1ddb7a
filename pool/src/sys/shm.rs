//! A counter in memory shared by the pool and one worker: the worker
//! stores how many items it has started, the pool reads it after a death.
//! That makes the running item known exactly with no syscall per item.
//!
//! The third word is the pool's say in the other direction: a bit per
//! `Run` frame in flight (frame number modulo 64) that the pool sets when
//! the frame's job is cancelled. The worker looks at its frame's bit
//! before each item and skips the item when it is set, so a cancelled item
//! that a worker has not reached never runs, at the price of one load.
//!
//! The fourth word is the halt mark: set by the pool when it decides to
//! kill the worker (a deadline, a cancel), before any signal. The worker
//! claims the first item of every batch and then looks at it, both in the
//! one total order of sequentially consistent operations (the pool marks,
//! then reads the counter): so either the pool's read counts the claimed
//! item, or the worker sees the mark, takes its claim back and stops
//! before the batch. Whatever the pool reads after marking is then all the
//! worker will start, but for the rest of the batch it is in. A worker
//! finishing its item in a kill's grace no longer starts the next batch,
//! of another caller, only to be killed in it.
//!
//! The fifth word counts the worker's `Shared` messages (large results in
//! sealed memfds, see `payload.rs`) whose descriptors the pool has opened:
//! until then the worker keeps its own, so a result is never lost between
//! the two.
//!
//! The sixth word says who reads the worker's answers: non-zero while the
//! pool has lent the worker to a blocking caller on the direct lane, which
//! sends its next task as soon as it has the answer. Only then does the
//! worker look for its next input for a while before it sleeps
//! (`sys::spin`); fed by the pool's loop (`map`, `imap`, ...), the next
//! frame comes when the loop gets round to it, and a worker spinning for
//! it takes the CPU the loop and its callers need.
//!
//! The pool creates the memory (a memfd, close-on-exec, so no other child
//! inherits it) and names it to the worker as `/proc/<pool pid>/fd/<n>`;
//! the worker opens and maps that path at start-up.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Size of the mapping: one page holds the counter.
const LEN: usize = 4096;

/// What a worker stores in the second word once it has mapped the page,
/// so the pool can tell a worker that counts from one that never attached.
const ATTACHED: u64 = u64::from_le_bytes(*b"PPattach");
/// The same, from a worker that also knows the pool's payload key, and so
/// takes large arguments from shared memory (`payload.rs`).
const ATTACHED_SHARING: u64 = u64::from_le_bytes(*b"PPshares");

/// A shared `u64` counter, mapped read-write.
#[derive(Debug)]
pub(crate) struct SharedCounter {
    ptr: NonNull<AtomicU64>,
}

// SAFETY: the mapping is process-wide memory accessed only through an
// AtomicU64, which is Send and Sync.
unsafe impl Send for SharedCounter {}
// SAFETY: as above.
unsafe impl Sync for SharedCounter {}

impl SharedCounter {
    /// Creates the memory (zeroed) and maps it: the pool's side. The
    /// descriptor must stay open until the worker has opened its path.
    pub(crate) fn create() -> io::Result<(OwnedFd, Self)> {
        let name = c"procpool-progress";
        // SAFETY: memfd_create reads a NUL-terminated name and returns a new
        // descriptor (close-on-exec, as asked) or -1.
        let fd = unsafe {
            libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: memfd_create returned a fresh descriptor that we now own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        nix::unistd::ftruncate(fd.as_fd(), LEN as i64)?;
        // Its size is fixed for good: a worker that tried to shrink it
        // would otherwise make the pool's next read fault (SIGBUS).
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: F_ADD_SEALS takes an int argument and touches no memory.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let map = Self::map(&fd)?;
        Ok((fd, map))
    }

    /// Opens and maps the memory the pool named: the worker's side.
    pub(crate) fn open(path: &str) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        Self::map(&OwnedFd::from(file))
    }

    /// Maps the memory given as a descriptor: a forked worker's side.
    pub(crate) fn from_fd(fd: &OwnedFd) -> io::Result<Self> {
        Self::map(fd)
    }

    fn map(fd: &OwnedFd) -> io::Result<Self> {
        // SAFETY: a fresh shared mapping of LEN bytes of a file at least LEN
        // long; no existing memory is touched. The result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<AtomicU64>()).ok_or_else(|| io::Error::other("mmap"))?;
        Ok(Self { ptr })
    }

    /// Word `i` (0: the counter, 1: the attach mark, 2: the skip bits, 3:
    /// the halt mark, 4: the shared payloads taken, 5: the lane mark) of
    /// the page.
    fn cell(&self, i: usize) -> &AtomicU64 {
        assert!(i < 6);
        // SAFETY: `ptr` points at the start of a live, page-aligned mapping
        // of LEN bytes, valid until Drop, so words 0 to 5 are in bounds and
        // aligned; an AtomicU64 may alias memory that another process
        // updates atomically.
        unsafe { &*self.ptr.as_ptr().add(i) }
    }

    pub(crate) fn load(&self) -> u64 {
        self.cell(0).load(Ordering::Acquire)
    }

    pub(crate) fn store(&self, v: u64) {
        self.cell(0).store(v, Ordering::Release);
    }

    /// The worker: it counts from now on (and, if `sharing`, takes large
    /// arguments from shared memory).
    pub(crate) fn attach(&self, sharing: bool) {
        let mark = if sharing { ATTACHED_SHARING } else { ATTACHED };
        self.cell(1).store(mark, Ordering::Release);
    }

    /// The pool: the items of `Run` frame number `run` not yet started
    /// are not wanted.
    pub(crate) fn skip(&self, run: u64) {
        self.cell(2).fetch_or(skip_bit(run), Ordering::AcqRel);
    }

    /// The pool, before sending `Run` frame number `run`: its bit is its
    /// own now (the frame 64 before it is long done: far fewer frames are
    /// ever in flight on one worker).
    pub(crate) fn unskip(&self, run: u64) {
        self.cell(2).fetch_and(!skip_bit(run), Ordering::AcqRel);
    }

    /// The worker: whether to skip the items of `Run` frame number `run`.
    pub(crate) fn skipped(&self, run: u64) -> bool {
        self.cell(2).load(Ordering::Acquire) & skip_bit(run) != 0
    }

    /// The worker, at the first item of a batch (at every item of an eager
    /// one): claims it (the counter becomes `started`) unless the pool has
    /// halted it; `false`: halted, the claim is taken back and the item
    /// may not start.
    pub(crate) fn claim(&self, started: u64) -> bool {
        self.cell(0).swap(started, Ordering::SeqCst);
        if self.cell(3).load(Ordering::SeqCst) == 0 {
            return true;
        }
        self.cell(0).store(started - 1, Ordering::SeqCst);
        false
    }

    /// The pool: the worker is to start no new batch. Returns the counter
    /// as it stands after the mark: the worker starts nothing past it but
    /// the rest of the batch it is in.
    pub(crate) fn halt(&self) -> u64 {
        self.cell(3).store(1, Ordering::SeqCst);
        self.cell(0).load(Ordering::SeqCst)
    }

    /// The pool: it has taken (opened) the payloads of the worker's first
    /// `n` `Shared` messages; the worker may close its copies. Wakes the
    /// worker if it sleeps on the word ([`wait_shared_taken`]).
    ///
    /// [`wait_shared_taken`]: Self::wait_shared_taken
    pub(crate) fn shared_taken(&self, n: u64) {
        self.cell(4).store(n, Ordering::Release);
        futex_wake(self.low_half(4));
    }

    /// The worker: how many of its `Shared` messages the pool has taken.
    pub(crate) fn shared_taken_count(&self) -> u64 {
        self.cell(4).load(Ordering::Acquire)
    }

    /// The worker: sleeps until the pool has taken `n` `Shared` messages
    /// (a futex on the word, woken by [`shared_taken`]), for at most
    /// `patience`. `false` if that passed first.
    ///
    /// [`shared_taken`]: Self::shared_taken
    pub(crate) fn wait_shared_taken(&self, n: u64, patience: Duration) -> bool {
        let start = Instant::now();
        loop {
            let now = self.shared_taken_count();
            if now >= n {
                return true;
            }
            let Some(left) = patience.checked_sub(start.elapsed()) else {
                return false;
            };
            // The word's low half: the futex compares it with what was
            // just read, so a store in between makes the wait return at
            // once rather than sleep through it.
            futex_wait(self.low_half(4), now as u32, left);
        }
    }

    /// The 32-bit half of word `i` that holds its low bits (a futex word).
    fn low_half(&self, i: usize) -> *const u32 {
        let word = std::ptr::from_ref(self.cell(i)).cast::<u32>();
        // SAFETY: an AtomicU64 is 8 bytes; either half is in bounds.
        unsafe { word.add(usize::from(cfg!(target_endian = "big"))) }
    }

    /// The pool: whether a direct-lane caller (`true`) or the pool's loop
    /// sends the frames the worker reads from now on.
    pub(crate) fn set_lent(&self, lent: bool) {
        self.cell(5).store(u64::from(lent), Ordering::Release);
    }

    /// The worker: whether a direct-lane caller is waiting for its answers
    /// (and so sends its next task at once).
    pub(crate) fn lent(&self) -> bool {
        self.cell(5).load(Ordering::Acquire) != 0
    }

    /// The pool: whether the worker said it counts.
    pub(crate) fn attached(&self) -> bool {
        matches!(
            self.cell(1).load(Ordering::Acquire),
            ATTACHED | ATTACHED_SHARING
        )
    }

    /// The pool: whether the worker said it takes large arguments from
    /// shared memory.
    pub(crate) fn shares(&self) -> bool {
        self.cell(1).load(Ordering::Acquire) == ATTACHED_SHARING
    }
}

/// Sleeps while the 32-bit word at `word` holds `expected`, for at most
/// `timeout` (or until a wake, a signal, or spuriously: callers look
/// again). The word is in memory shared with another process, so the
/// futex is not a private one.
fn futex_wait(word: *const u32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: FUTEX_WAIT reads the aligned 32-bit word at `word`, inside a
    // live shared mapping (a half of one of its AtomicU64 words), and the
    // timespec through a pointer to a live local; it writes nothing. Its
    // result needs no check: every return is followed by a fresh look.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word,
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
        )
    };
}

/// Wakes every process sleeping on the futex word at `word`.
fn futex_wake(word: *const u32) {
    // SAFETY: FUTEX_WAKE only uses the address as a key (the word lies in
    // a live shared mapping) and touches no memory. Nobody waiting is not
    // an error.
    unsafe { libc::syscall(libc::SYS_futex, word, libc::FUTEX_WAKE, i32::MAX) };
}

/// Most `Run` frames one worker may have in flight for its skip bits to
/// stay apart.
pub(crate) const MAX_RUNS_IN_FLIGHT: usize = 64;

fn skip_bit(run: u64) -> u64 {
    1 << (run % MAX_RUNS_IN_FLIGHT as u64)
}

impl Drop for SharedCounter {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`; no reference to
        // it outlives `self`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), LEN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_bits_are_per_run_frame_and_reused_after_64() {
        let (fd, pool) = SharedCounter::create().unwrap();
        let worker = SharedCounter::open(&format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        pool.skip(3);
        assert!(worker.skipped(3));
        assert!(!worker.skipped(2) && !worker.skipped(4));
        // Frame 67 shares frame 3's bit: sending it clears the bit.
        pool.unskip(67);
        assert!(!worker.skipped(3) && !worker.skipped(67));
        pool.skip(63);
        pool.skip(64);
        assert!(worker.skipped(63) && worker.skipped(0));
        assert_eq!(worker.load(), 0, "the skip bits are apart from the counter");
    }

    #[test]
    fn a_halted_worker_claims_no_batch_and_leaves_the_count_as_it_was() {
        let (fd, pool) = SharedCounter::create().unwrap();
        let worker = SharedCounter::open(&format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        assert!(worker.claim(1));
        worker.store(3);
        assert_eq!(pool.halt(), 3);
        assert!(!worker.claim(4), "no batch starts after the halt");
        assert_eq!(pool.load(), 3, "the claim was taken back");
    }

    #[test]
    fn the_lane_mark_is_a_word_of_its_own() {
        let (fd, pool) = SharedCounter::create().unwrap();
        let worker = SharedCounter::open(&format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        assert!(!worker.lent(), "fed by the loop until lent");
        pool.set_lent(true);
        assert!(worker.lent());
        pool.skip(0);
        assert_eq!(pool.halt(), 0);
        assert!(worker.lent(), "skip bits and the halt mark leave it alone");
        pool.set_lent(false);
        assert!(!worker.lent());
        assert!(worker.skipped(0));
    }

    #[test]
    fn two_mappings_of_one_memfd_share_the_counter() {
        let (fd, a) = SharedCounter::create().unwrap();
        let b = SharedCounter::open(&format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        drop(fd);
        assert_eq!(a.load(), 0);
        assert!(!a.attached());
        b.attach(false);
        b.store(41);
        assert_eq!(a.load(), 41);
        assert!(a.attached());
        let flags =
            nix::fcntl::fcntl(a_fd_for_test().as_fd(), nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
    }

    #[test]
    fn a_sleeper_on_the_taken_word_is_woken_by_the_store_and_times_out_without() {
        let (fd, pool) = SharedCounter::create().unwrap();
        let worker = SharedCounter::open(&format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        // Nothing stored: the wait ends at its patience, unsatisfied.
        assert!(!worker.wait_shared_taken(1, Duration::from_millis(20)));
        // Stored from another thread while it sleeps: woken, satisfied,
        // long before its patience (without the wake it would sleep all
        // of it, then find the count and return `true` all the same).
        let patience = Duration::from_secs(120);
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            tid_tx.send(nix::unistd::gettid()).unwrap();
            let start = Instant::now();
            let ok = worker.wait_shared_taken(2, patience);
            (ok, worker.shared_taken_count(), start.elapsed())
        });
        pool.shared_taken(1);
        // Stores only once the waiter sleeps (state S: it does nothing
        // else that sleeps), so the wake is what ends its wait.
        let stat = format!("/proc/self/task/{}/stat", tid_rx.recv().unwrap());
        while !std::fs::read_to_string(&stat)
            .unwrap()
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('S'))
        {
            std::thread::yield_now();
        }
        pool.shared_taken(2);
        let (ok, count, took) = waiter.join().unwrap();
        assert!(ok);
        assert_eq!(count, 2);
        assert!(took < patience / 2, "not woken: slept {took:?}");
    }

    fn a_fd_for_test() -> OwnedFd {
        SharedCounter::create().unwrap().0
    }
}
