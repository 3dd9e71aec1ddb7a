//! Regression (hostile review): a worker without its progress counter (PROCPOOL_PROGRESS not
//! passed on by a launcher, a case serve_now explicitly accepts) reports
//! 0 items started; the pool then treats every item it sent as never
//! started, re-runs a crashing item forever, and re-runs items that did
//! run.
use std::time::Duration;

use procpool::Pool;
use procpool_tests::Death;
use procpool_tests::{crash_running, watchdog};

use crate::FAULT_WORKER;

#[test]
fn a_crashing_task_on_a_counterless_worker_fails_once() {
    let _w = watchdog(
        "a_crashing_task_on_a_counterless_worker_fails_once",
        Duration::from_secs(60),
    );
    let pool = Pool::builder()
        .workers(1)
        .worker_program("/usr/bin/env")
        .worker_args([
            std::ffi::OsString::from("-u"),
            "PROCPOOL_PROGRESS".into(),
            FAULT_WORKER.into(),
        ])
        .build()
        .unwrap();
    let mut h = pool.apply_async(crash_running, Death::Exit(3)).unwrap();
    let r = h.get_timeout(Duration::from_secs(30));
    let stats = pool.stats();
    assert!(
        matches!(&r, Err(e) if e.is_worker_died()),
        "after 5 s: {r:?}; stats {stats:?}"
    );
}
