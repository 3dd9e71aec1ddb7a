//! Regression (hostile review): a worker without its progress counter (PROCPOOL_PROGRESS not
//! passed on by a launcher, a case serve_now explicitly accepts) reports
//! 0 items started; the pool then treats every item it sent as never
//! started, re-runs a crashing item forever, and re-runs items that did
//! run.
use std::time::Duration;

use procpool_tests::Death;
use procpool_tests::{crash_running, watchdog};

#[test]
fn a_crashing_task_on_a_counterless_worker_fails_once() {
    let _w = watchdog(
        "a_crashing_task_on_a_counterless_worker_fails_once",
        Duration::from_secs(60),
    );
    let pool = crate::counterless(1).build().unwrap();
    let mut h = pool.apply_async(crash_running, Death::Exit(3)).unwrap();
    let r = h.get_timeout(Duration::from_secs(30));
    let stats = pool.stats();
    assert!(
        matches!(&r, Err(e) if e.is_worker_died()),
        "after 5 s: {r:?}; stats {stats:?}"
    );
}
