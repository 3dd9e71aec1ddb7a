//! Regression (hostile review): `max_tasks_per_worker` must hold for blocking `apply` (the
//! direct lane), not only for work that goes through the dispatcher.
use std::time::Duration;

use procpool::Pool;
use procpool_tests::{pid, watchdog};

use crate::FAULT_WORKER;

#[test]
fn max_tasks_per_worker_holds_for_paced_applies() {
    let _w = watchdog(
        "max_tasks_per_worker_holds_for_paced_applies",
        Duration::from_secs(60),
    );
    let pool = Pool::builder()
        .workers(1)
        .worker_program(FAULT_WORKER)
        .max_tasks_per_worker(1)
        .build()
        .unwrap();
    let mut pids = Vec::new();
    for _ in 0..6 {
        pids.push(pool.apply(pid, ()).unwrap());
        // A caller that does something else between two calls.
        std::thread::sleep(Duration::from_millis(30));
    }
    let mut distinct = pids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        pids.len(),
        "max_tasks_per_worker(1), yet pids {pids:?}; stats {:?}",
        pool.stats()
    );
}
