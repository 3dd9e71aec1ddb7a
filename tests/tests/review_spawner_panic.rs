//! Review of the spawner thread (8aa5b10): the dispatcher panicking in the
//! middle of a group start (a logger that panics on the record of the
//! group's third worker), at build time and for a group of replacements.
//! A binary of its own: the logger is process-wide.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use procpool::Pool;
use procpool_tests::{
    assert_pools_gone, children_of_this_process, fd_and_thread_counts, kill_if_alive, square,
    wait_until, watchdog,
};

const FAULT_WORKER: &str = env!("CARGO_BIN_EXE_fault-worker");

static ARMED: AtomicBool = AtomicBool::new(false);

struct Panicky;

impl log::Log for Panicky {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        if ARMED.load(Ordering::SeqCst) && r.args().to_string().contains("(index 2)") {
            panic!("logger panics on index 2");
        }
    }
    fn flush(&self) {}
}

static PANICKY: Panicky = Panicky;

/// Nothing of the pools is left, and (this binary's one test running
/// alone) the thread count is back at its baseline too.
fn nothing_left(baseline: (usize, usize)) {
    assert_pools_gone(baseline.0);
    assert!(
        wait_until(Duration::from_secs(10), || fd_and_thread_counts()
            == baseline),
        "descriptors and threads back at {baseline:?}: {:?}",
        fd_and_thread_counts()
    );
}

#[test]
fn the_dispatcher_panics_in_the_middle_of_a_group() {
    let _w = watchdog(
        "the_dispatcher_panics_in_the_middle_of_a_group",
        Duration::from_secs(120),
    );
    log::set_logger(&PANICKY).unwrap();
    log::set_max_level(log::LevelFilter::Debug);
    let baseline = fd_and_thread_counts();

    // At build time.
    ARMED.store(true, Ordering::SeqCst);
    for _ in 0..10 {
        let err = Pool::builder()
            .workers(5)
            .worker_program(FAULT_WORKER)
            .build()
            .unwrap_err();
        assert!(err.is_startup() || err.is_broken(), "{err}");
        assert!(
            children_of_this_process().is_empty(),
            "{:?}",
            children_of_this_process()
        );
    }
    nothing_left(baseline);

    // A group of replacements.
    for _ in 0..10 {
        ARMED.store(false, Ordering::SeqCst);
        let pool = Pool::builder()
            .workers(5)
            .worker_program(FAULT_WORKER)
            .build()
            .unwrap();
        assert_eq!(pool.map(square, 0..10u64).unwrap()[3], 9);
        ARMED.store(true, Ordering::SeqCst);
        // The loop panics at the first replacement it logs and kills the
        // rest itself: some of these may be gone already.
        for pid in pool.worker_pids() {
            kill_if_alive(pid, libc::SIGKILL);
        }
        assert!(wait_until(Duration::from_secs(30), || {
            pool.apply(square, 2).is_err_and(|e| e.is_broken())
        }));
        let e = pool.map(square, 0..10u64).unwrap_err();
        assert!(e.to_string().contains("panicked"), "{e}");
        drop(pool);
        assert!(
            children_of_this_process().is_empty(),
            "{:?}",
            children_of_this_process()
        );
    }
    ARMED.store(false, Ordering::SeqCst);
    nothing_left(baseline);
}
