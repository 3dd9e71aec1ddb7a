//! Hostile review of the async/cancel change (held up): many pools whose
//! callbacks join, terminate or drop the pool, or are still pending at the
//! drop, leave no thread behind (the callback thread ends with its pool).
//! Its own binary: it counts the process's threads.
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use procpool::Pool;
use procpool_tests::{sleep_ms, square, wait_until, watchdog};

const FAULT_WORKER: &str = env!("CARGO_BIN_EXE_fault-worker");
const LIMIT: Duration = Duration::from_secs(60);

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

fn pool(n: usize) -> Pool {
    Pool::builder()
        .workers(n)
        .worker_program(FAULT_WORKER)
        .build()
        .unwrap()
}

#[test]
fn pools_with_callbacks_leave_no_thread_behind() {
    let _w = watchdog("pools_with_callbacks_leave_no_thread_behind", LIMIT);
    let base = threads();
    for i in 0..20u64 {
        let pool = Arc::new(pool(2));
        let done = Arc::new(AtomicUsize::new(0));
        for j in 0..10u64 {
            let d = done.clone();
            pool.apply_async(square, j).unwrap().on_complete(move |_| {
                d.fetch_add(1, Ordering::SeqCst);
            });
        }
        let p = pool.clone();
        let d = done.clone();
        pool.apply_async(sleep_ms, 50)
            .unwrap()
            .on_complete(move |_| {
                match i % 3 {
                    0 => p.join(),
                    1 => p.terminate(),
                    _ => drop(p),
                }
                d.fetch_add(1, Ordering::SeqCst);
            });
        if i % 2 == 0 {
            pool.join();
        }
        drop(pool);
        assert!(wait_until(LIMIT, || done.load(Ordering::SeqCst) == 11));
    }
    assert!(
        wait_until(Duration::from_secs(20), || threads() <= base),
        "threads: {base} before, {} after",
        threads()
    );
}
