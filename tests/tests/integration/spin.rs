//! The bounded spin (`sys::Spin`): a worker and a caller look for their
//! next message for tens of microseconds before they sleep. Once a burst
//! of calls is over, the workers must sleep: an idle pool uses no CPU.

use std::time::Duration;

use procpool_tests::{square, watchdog};

use crate::{LIMIT, pool};

/// Nanoseconds `pid` has run (user and system), from its schedstat.
fn ran_ns(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).unwrap();
    s.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn workers_go_to_sleep_after_a_burst_of_calls() {
    let _w = watchdog("workers_go_to_sleep_after_a_burst_of_calls", LIMIT);
    let pool = pool(2);
    // Both kinds of traffic: the direct lane and pipelined chunks.
    for i in 0..2_000 {
        assert_eq!(pool.apply(square, i).unwrap(), i * i);
    }
    let squares = pool.with_chunksize(1).map(square, 0..2_000u64).unwrap();
    assert_eq!(squares.len(), 2_000);
    // Let the last spins end (they last at most 50 µs), then measure a
    // long idle window: a worker still spinning would run through it.
    std::thread::sleep(Duration::from_millis(20));
    let pids = pool.worker_pids();
    let before: Vec<u64> = pids.iter().map(|&p| ran_ns(p)).collect();
    std::thread::sleep(Duration::from_millis(500));
    for (pid, b) in pids.iter().zip(before) {
        let ran = ran_ns(*pid) - b;
        assert!(
            ran < 5_000_000,
            "worker {pid} ran {ran} ns in 500 ms of an idle pool"
        );
    }
}
