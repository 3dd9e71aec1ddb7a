//! Regression (hostile review): a deadline shorter than the time a worker takes to read its
//! frame: the item "never started" at its deadline, so it is not failed,
//! the worker is killed, and the item is sent again elsewhere, where the
//! same happens.
use std::time::Duration;

use procpool::Pool;
use procpool_tests::{square, watchdog};

use crate::FAULT_WORKER;

#[test]
fn a_tiny_deadline_ends() {
    let _w = watchdog("a_tiny_deadline_ends", Duration::from_secs(60));
    let pool = Pool::builder()
        .workers(2)
        .worker_program(FAULT_WORKER)
        .kill_grace(Duration::from_millis(50))
        .build()
        .unwrap();
    let mut h = pool
        .with_timeout(Duration::from_micros(20))
        .apply_async(square, 3)
        .unwrap();
    let r = h.get_timeout(Duration::from_secs(30));
    let stats = pool.stats();
    assert!(
        !matches!(&r, Err(e) if e.is_wait_timeout()),
        "after 5 s: {r:?}; stats {stats:?}"
    );
    eprintln!("{r:?} {stats:?}");
}
