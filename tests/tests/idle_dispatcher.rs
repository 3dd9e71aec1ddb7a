//! The pool's loop spins (a bounded, yielding spin) before it sleeps while
//! batches are out on local workers: their answers are on their way. It
//! must still sleep: through a long task, and once a burst is over. Its
//! own binary, so the one dispatcher thread in this process is this
//! pool's.

use std::time::Duration;

use procpool::Pool;
use procpool_tests::{sleep_ms, square, watchdog};

const FAULT_WORKER: &str = env!("CARGO_BIN_EXE_fault-worker");

/// Nanoseconds thread `tid` of this process has run (user and system).
fn ran_ns(tid: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).unwrap();
    s.split_whitespace().next().unwrap().parse().unwrap()
}

/// The dispatcher's thread id (its name, cut to 15 bytes by the kernel).
fn dispatcher_tid() -> String {
    let tids: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|tid| {
            std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
                .is_ok_and(|c| c.trim() == "procpool-dispat")
        })
        .collect();
    assert_eq!(tids.len(), 1, "one pool, one dispatcher thread: {tids:?}");
    tids.into_iter().next().unwrap()
}

/// The CPU time the dispatcher uses over `window`.
fn dispatcher_cpu_over(tid: &str, window: Duration) -> Duration {
    let before = ran_ns(tid);
    std::thread::sleep(window);
    Duration::from_nanos(ran_ns(tid) - before)
}

#[test]
fn the_loop_sleeps_through_long_tasks_and_after_a_burst() {
    let _w = watchdog(
        "the_loop_sleeps_through_long_tasks_and_after_a_burst",
        Duration::from_secs(120),
    );
    let pool = Pool::builder()
        .workers(2)
        .worker_program(FAULT_WORKER)
        .build()
        .unwrap();
    let tid = dispatcher_tid();

    // A burst of every kind of traffic that keeps batches out.
    let squares = pool.map(square, 0..200_000u64).unwrap();
    assert_eq!(squares[7], 49);
    let n = pool
        .with_chunksize(1)
        .imap_unordered(square, 0..5_000u64)
        .unwrap()
        .map(Result::unwrap)
        .count();
    assert_eq!(n, 5_000);
    let calls: Vec<_> = (0..200u64)
        .map(|i| pool.apply_async(square, i).unwrap())
        .collect();
    for (i, c) in calls.into_iter().enumerate() {
        assert_eq!(c.get().unwrap(), (i * i) as u64);
    }
    // Its last spin lasts at most 50 µs; then a long idle window, which a
    // loop still spinning would run through.
    std::thread::sleep(Duration::from_millis(20));
    let idle = dispatcher_cpu_over(&tid, Duration::from_millis(500));
    assert!(
        idle < Duration::from_millis(5),
        "the loop ran {idle:?} in 500 ms of an idle pool"
    );

    // Two long tasks out, one on each worker, and more queued: the loop
    // has batches out the whole time, and nothing to read.
    let long: Vec<_> = (0..4)
        .map(|_| pool.apply_async(sleep_ms, 1_500).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let busy = dispatcher_cpu_over(&tid, Duration::from_millis(800));
    assert!(
        busy < Duration::from_millis(5),
        "the loop ran {busy:?} in 800 ms of two tasks out"
    );
    for r in long {
        assert_eq!(r.get().unwrap(), 1_500);
    }
}
