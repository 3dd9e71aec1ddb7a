//! The debugging mode: the same registry and API on threads of this
//! process.

use std::time::Duration;

use procpool::Pool;
use procpool_tests::{panic_with, parse_int, registry, sleep_ms, square, watchdog};

use crate::LIMIT;

fn pool(workers: usize) -> Pool {
    Pool::builder()
        .workers(workers)
        .in_process(registry())
        .build()
        .unwrap()
}

#[test]
fn the_whole_api_runs_on_threads() {
    let _w = watchdog("the_whole_api_runs_on_threads", LIMIT);
    let pool = pool(2);
    assert_eq!(pool.worker_pids(), vec![std::process::id(); 2]);
    let want: Vec<u64> = (0..5000u64).map(|x| x * x).collect();
    assert_eq!(pool.map(square, 0..5000u64).unwrap(), want);
    let mut unordered: Vec<u64> = pool
        .imap_unordered(square, 0..100u64)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    unordered.sort_unstable();
    assert_eq!(unordered, want[..100]);
    assert_eq!(
        pool.apply(parse_int, "x".to_owned()).unwrap().unwrap_err(),
        "cannot parse `x`: invalid digit found in string"
    );
    assert_eq!(pool.apply_async(square, 9).unwrap().get().unwrap(), 81);
    pool.close();
    pool.join();
}

#[test]
fn a_panic_is_caught_and_the_thread_serves_on() {
    let _w = watchdog("a_panic_is_caught_and_the_thread_serves_on", LIMIT);
    let pool = pool(1);
    let err = pool
        .apply(panic_with, "in a thread".to_owned())
        .unwrap_err();
    assert_eq!(err.panic_message(), Some("in a thread"));
    assert_eq!(pool.apply(square, 3).unwrap(), 9);
    assert_eq!(pool.stats().worker_deaths, 0);
}

#[test]
fn a_deadline_fails_the_task_and_a_new_thread_serves() {
    let _w = watchdog("a_deadline_fails_the_task_and_a_new_thread_serves", LIMIT);
    let pool = Pool::builder()
        .workers(1)
        .in_process(registry())
        .kill_grace(Duration::from_millis(50))
        .build()
        .unwrap();
    let err = pool
        .with_timeout(Duration::from_millis(100))
        .apply(sleep_ms, 1500)
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    // The stuck thread cannot be stopped; a new one serves meanwhile.
    assert_eq!(pool.apply(square, 4).unwrap(), 16);
    drop(pool);
}
