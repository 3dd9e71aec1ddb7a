//! Regression (hostile review): deadlines with a SIGSTOPped worker: items it never started run
//! elsewhere; nothing runs twice.
use std::time::Duration;

use procpool::Pool;
use procpool_tests::{init_store, kill, record, recorded, temp_path, watchdog};

use crate::FAULT_WORKER;

#[test]
fn a_stopped_workers_items_run_elsewhere() {
    let _w = watchdog(
        "a_stopped_workers_items_run_elsewhere",
        Duration::from_secs(60),
    );
    let file = temp_path("review-stop");
    let pool = Pool::builder()
        .workers(2)
        .worker_program(FAULT_WORKER)
        .initializer(init_store, file.display().to_string())
        .task_timeout(Duration::from_millis(300))
        .kill_grace(Duration::from_millis(100))
        .build()
        .unwrap();
    let victim = pool.worker_pids()[0];
    kill(victim, libc::SIGSTOP);
    let r: Vec<_> = pool
        .with_chunksize(3)
        .imap(record, 0..30u64)
        .unwrap()
        .collect();
    let counts = recorded(&file);
    for (i, r) in r.iter().enumerate() {
        assert_eq!(r.as_ref().ok(), Some(&(i as u64)), "item {i}: {r:?}");
        assert_eq!(counts.get(&(i as u64)), Some(&1));
    }
    assert!(procpool_tests::wait_until(Duration::from_secs(30), || {
        procpool_tests::not_running(victim)
    }));
    let _ = std::fs::remove_file(&file);
}
