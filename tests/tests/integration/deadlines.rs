//! Per-task deadlines: the task fails with `TimedOut`, its worker's group
//! gets SIGTERM then SIGKILL, and a replacement starts; whatever the task
//! does to resist.

use std::time::Duration;

use procpool::Pool;
use procpool_tests::{
    Chaos, chaos, grandchild_and_hang, ignore_sigterm_and_hang, init_store, not_running, recorded,
    sleep_ms, square, stop_self, temp_path, wait_until, watchdog,
};

use crate::LIMIT;

const DEADLINE: Duration = Duration::from_millis(300);

fn pool(workers: usize) -> Pool {
    crate::builder(workers)
        .kill_grace(Duration::from_millis(300))
        .build()
        .unwrap()
}

/// Runs `hang` with a deadline on a one-worker pool and checks the
/// timeout, the worker's end and the pool's recovery.
fn times_out(name: &str, hang: impl FnOnce(&Pool) -> procpool::Error) {
    let _w = watchdog(name, LIMIT);
    let pool = pool(1);
    let victim = pool.worker_pids()[0];
    let err = hang(&pool);
    assert!(err.is_timeout(), "{err}");
    assert_eq!(err.worker_pid(), Some(victim));
    assert!(err.to_string().contains("deadline"), "{err}");
    assert!(
        wait_until(LIMIT, || not_running(victim)),
        "worker {victim} survived"
    );
    assert_eq!(pool.apply(square, 5).unwrap(), 25);
    let stats = pool.stats();
    assert_eq!(stats.timeouts, 1);
    assert!(!pool.worker_pids().contains(&victim));
}

#[test]
fn a_hung_task_times_out() {
    times_out("a_hung_task_times_out", |pool| {
        pool.with_timeout(DEADLINE)
            .apply(sleep_ms, 60_000)
            .unwrap_err()
    });
}

#[test]
fn a_task_that_ignores_sigterm_is_killed() {
    times_out("a_task_that_ignores_sigterm_is_killed", |pool| {
        pool.with_timeout(DEADLINE)
            .apply(ignore_sigterm_and_hang, ())
            .unwrap_err()
    });
}

#[test]
fn a_stopped_worker_is_killed() {
    times_out("a_stopped_worker_is_killed", |pool| {
        pool.with_timeout(DEADLINE)
            .apply(stop_self, ())
            .unwrap_err()
    });
}

#[test]
fn grandchildren_die_with_the_worker() {
    let pidfile = temp_path("grandchild");
    let path = pidfile.display().to_string();
    times_out("grandchildren_die_with_the_worker", |pool| {
        pool.with_timeout(Duration::from_secs(2))
            .apply(grandchild_and_hang, path)
            .unwrap_err()
    });
    let grandchild: u32 = std::fs::read_to_string(&pidfile).unwrap().parse().unwrap();
    assert!(
        wait_until(LIMIT, || not_running(grandchild)),
        "grandchild {grandchild} survived"
    );
    let _ = std::fs::remove_file(&pidfile);
}

#[test]
fn items_behind_a_timed_out_item_run_once() {
    let _w = watchdog("items_behind_a_timed_out_item_run_once", LIMIT);
    let file = temp_path("deadline");
    let pool = crate::builder(1)
        .kill_grace(Duration::from_millis(200))
        .initializer(init_store, file.display().to_string())
        .build()
        .unwrap();
    let items: Vec<(Chaos, u64)> = (0..8)
        .map(|i| (if i == 2 { Chaos::Hang } else { Chaos::Work }, i))
        .collect();
    let results: Vec<_> = pool
        .with_chunksize(8)
        .with_timeout(DEADLINE)
        .imap(chaos, items)
        .unwrap()
        .collect();
    for (i, r) in results.iter().enumerate() {
        if i == 2 {
            assert!(r.as_ref().unwrap_err().is_timeout());
        } else {
            assert_eq!(*r.as_ref().unwrap(), i as u64);
        }
    }
    let counts = recorded(&file);
    assert_eq!(counts.len(), 7, "{counts:?}");
    assert!(counts.values().all(|&c| c == 1), "{counts:?}");
    let _ = std::fs::remove_file(&file);
}

#[test]
fn a_per_call_deadline_overrides_the_pool_default() {
    let _w = watchdog("a_per_call_deadline_overrides_the_pool_default", LIMIT);
    let pool = crate::builder(1)
        .task_timeout(Duration::from_secs(1))
        .kill_grace(Duration::from_millis(100))
        .build()
        .unwrap();
    assert_eq!(pool.with_timeout(LIMIT).apply(sleep_ms, 400).unwrap(), 400);
    assert!(pool.apply(sleep_ms, 60_000).unwrap_err().is_timeout());
    assert_eq!(pool.apply(square, 3).unwrap(), 9);
}

#[test]
fn fast_tasks_under_a_deadline_all_succeed() {
    let _w = watchdog("fast_tasks_under_a_deadline_all_succeed", LIMIT);
    let pool = pool(2);
    let got = pool
        .with_timeout(Duration::from_secs(30))
        .map(square, 0..5000u64)
        .unwrap();
    assert_eq!(got, (0..5000u64).map(|x| x * x).collect::<Vec<_>>());
    assert_eq!(pool.stats().timeouts, 0);
}
