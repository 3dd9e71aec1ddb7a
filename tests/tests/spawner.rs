//! The spawner thread: a pool's workers start side by side, the pool's loop
//! starting one while a second thread of the pool starts the others. In a
//! process of its own, so that its thread counts are this test's alone.
//!
//! A worker dies with the *thread* that started it (`PR_SET_PDEATHSIG`),
//! so the spawner thread must live as long as the workers it started: as
//! long as the pool, and not a moment longer.

use std::collections::BTreeSet;
use std::time::Duration;

use procpool::Pool;
use procpool_tests::{
    children_of_this_process, fd_and_thread_counts, kill, sleep_ms, square, threads_named,
    wait_until, watchdog,
};

/// The spawner thread's name, as the kernel keeps it.
const SPAWNER: &str = "procpool-spawne";
const FAULT_WORKER: &str = env!("CARGO_BIN_EXE_fault-worker");

fn pool(workers: usize) -> Pool {
    Pool::builder()
        .workers(workers)
        .worker_program(FAULT_WORKER)
        .build()
        .unwrap()
}

#[test]
fn workers_started_side_by_side_live_as_long_as_the_pool_and_so_does_the_thread() {
    let _w = watchdog(
        "workers_started_side_by_side_live_as_long_as_the_pool_and_so_does_the_thread",
        Duration::from_secs(120),
    );
    let baseline = fd_and_thread_counts();

    // A pool of one starts its worker on the loop's thread: no spawner.
    let one = pool(1);
    assert_eq!(one.apply(square, 3).unwrap(), 9);
    assert_eq!(
        threads_named(SPAWNER),
        0,
        "a pool of one needs no second thread"
    );
    drop(one);

    let pool = pool(4);
    assert_eq!(
        threads_named(SPAWNER),
        1,
        "a pool of four starts them side by side"
    );
    let started: BTreeSet<u32> = pool.worker_pids().into_iter().collect();
    assert_eq!(started.len(), 4, "{started:?}");

    // Work that keeps every worker busy for a while, long after the
    // start-up: a worker that died with a thread that had ended would
    // fail its item and be replaced.
    let slept = pool
        .with_chunksize(1)
        .map(sleep_ms, vec![30u64; 16])
        .unwrap();
    assert_eq!(slept, vec![30; 16]);
    let after: BTreeSet<u32> = pool.worker_pids().into_iter().collect();
    assert_eq!(after, started, "the first workers still serve");
    let stats = pool.stats();
    assert_eq!(stats.workers_started, 4, "{stats:?}");
    assert_eq!(stats.start_failures, 0, "{stats:?}");

    // Every worker lost at once: the replacements are due together.
    for &pid in &started {
        kill(pid, libc::SIGKILL);
    }
    assert!(
        wait_until(Duration::from_secs(30), || {
            let now: BTreeSet<u32> = pool.worker_pids().into_iter().collect();
            now.len() == 4 && now.is_disjoint(&started)
        }),
        "four replacements: {:?}",
        pool.worker_pids()
    );
    let squares = pool.map(square, 0..1_000u64).unwrap();
    assert_eq!(squares[999], 999 * 999);
    assert_eq!(pool.stats().workers_started, 8);
    assert_eq!(
        threads_named(SPAWNER),
        1,
        "one spawner per pool, for its life"
    );

    drop(pool);
    assert!(children_of_this_process().is_empty(), "every worker reaped");
    // (A joined thread may linger in /proc/self/task for a moment.)
    assert!(
        wait_until(Duration::from_secs(10), || threads_named(SPAWNER) == 0),
        "the spawner ends with its pool"
    );

    // A start-up that fails for every worker fails the build once, and
    // leaves no process and no thread behind.
    let err = Pool::builder()
        .workers(4)
        .worker_program("/no/such/worker")
        .build()
        .unwrap_err();
    assert!(err.is_startup(), "{err}");
    assert!(err.to_string().contains("/no/such/worker"), "{err}");
    assert!(children_of_this_process().is_empty());
    assert!(
        wait_until(Duration::from_secs(10), || fd_and_thread_counts()
            == baseline),
        "descriptors and threads back at {baseline:?}: {:?}",
        fd_and_thread_counts()
    );
}
