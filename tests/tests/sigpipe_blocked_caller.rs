//! Review 2: the lane's SIGPIPE guard, on a real EPIPE (the existing
//! `sigpipe_default` test no longer reaches a write to a dead worker: the
//! dispatcher reclaims the dead worker before the next call).
//!
//! To make the lane write to a dead worker deterministically, the
//! dispatcher thread is held in the host's logger (a worker's `Log` record
//! is forwarded on the dispatcher thread), so it cannot see the death.
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use procpool::Pool;
use procpool_tests::{kill, log_lines, process_state, square, wait_until, watchdog};

const FAULT_WORKER: &str = env!("CARGO_BIN_EXE_fault-worker");

static ENTERED: AtomicBool = AtomicBool::new(false);
static BUSY_PID: AtomicU32 = AtomicU32::new(0);

struct StallDispatcher;
impl log::Log for StallDispatcher {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        let msg = r.args().to_string();
        let on_dispatcher = std::thread::current().name() == Some("procpool-dispatcher");
        if msg.contains("stall-marker") && on_dispatcher && !ENTERED.load(Ordering::SeqCst) {
            // "[worker <pid> `log_lines`] stall-marker line 0"
            let pid = msg
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            BUSY_PID.store(pid, Ordering::SeqCst);
            ENTERED.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(1500));
        }
    }
    fn flush(&self) {}
}

fn sigpipe_pending() -> bool {
    // SAFETY: sigpending writes one sigset_t through a pointer to a local.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigpending(&mut set);
        libc::sigismember(&set, libc::SIGPIPE) == 1
    }
}

fn block_sigpipe() {
    // SAFETY: changes only this thread's signal mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Holds the dispatcher in the logger, kills the parked worker, and has
/// `caller` apply on the lane (which hands out the dead worker).
fn lane_write_to_a_dead_worker(caller: impl FnOnce(&Pool) -> bool + Send) -> bool {
    ENTERED.store(false, Ordering::SeqCst);
    let pool = Pool::builder()
        .workers(2)
        .worker_program(FAULT_WORKER)
        .build()
        .unwrap();
    assert_eq!(pool.apply(square, 2).unwrap(), 4);
    let pids = pool.worker_pids();
    // Through the dispatcher: one worker runs it, the other is lent again.
    let h = pool
        .apply_async(log_lines, ("stall-marker".to_owned(), 1))
        .unwrap();
    assert!(wait_until(Duration::from_secs(20), || ENTERED.load(Ordering::SeqCst)));
    let busy = BUSY_PID.load(Ordering::SeqCst);
    let victim = *pids.iter().find(|&&p| p != busy).expect("the idle worker");
    kill(victim, libc::SIGKILL);
    assert!(wait_until(Duration::from_secs(5), || process_state(victim)
        == Some('Z')));
    let pending = std::thread::scope(|s| s.spawn(|| caller(&pool)).join().unwrap());
    assert_eq!(h.get().unwrap(), 1);
    pool.terminate();
    pending
}

#[test]
fn sigpipe_from_a_lane_write() {
    let _w = watchdog("sigpipe_from_a_lane_write", Duration::from_secs(120));
    log::set_logger(&StallDispatcher).unwrap();
    log::set_max_level(log::LevelFilter::Warn);
    // SAFETY: this test process's own SIGPIPE disposition.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };

    // 1. The fix: a caller whose SIGPIPE is unblocked survives the EPIPE.
    let left = lane_write_to_a_dead_worker(|pool| {
        assert_eq!(pool.apply(square, 7).unwrap(), 49);
        sigpipe_pending()
    });
    assert!(!left, "a SIGPIPE is left pending");
    eprintln!("1: survived a lane write to a dead worker");

    // 2. A caller that blocks SIGPIPE itself (as many hosts do around their
    // own writes) is left a pending SIGPIPE raised by the pool's write:
    // the moment it unblocks SIGPIPE, the host dies (default action).
    let left = lane_write_to_a_dead_worker(|pool| {
        block_sigpipe();
        assert!(!sigpipe_pending());
        assert_eq!(pool.apply(square, 7).unwrap(), 49);
        sigpipe_pending()
    });
    assert!(
        !left,
        "the pool's write to a dead worker left a SIGPIPE pending in the caller's thread \
         (it kills the host when the thread unblocks SIGPIPE)"
    );
}
