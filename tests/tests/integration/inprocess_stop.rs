//! Regression (hostile review): in-process mode, terminate() with a long task.
use std::time::{Duration, Instant};

use procpool::Pool;
use procpool_tests::{registry, sleep_ms, watchdog};

#[test]
fn terminate_returns_within_kill_grace_in_process() {
    let _w = watchdog(
        "terminate_returns_within_kill_grace_in_process",
        Duration::from_secs(120),
    );
    let pool = Pool::builder()
        .workers(1)
        .in_process(registry())
        .kill_grace(Duration::from_millis(100))
        .build()
        .unwrap();
    // A task far longer than any delay a busy machine causes.
    let h = pool.apply_async(sleep_ms, 60_000).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    pool.terminate();
    let took = t.elapsed();
    let e = h.get().unwrap_err();
    assert!(e.is_terminated(), "{e}");
    assert!(
        took < Duration::from_secs(30),
        "terminate() took {took:?} with kill_grace 100 ms"
    );
}

#[test]
fn terminate_during_a_lane_call_in_process() {
    let _w = watchdog(
        "terminate_during_a_lane_call_in_process",
        Duration::from_secs(60),
    );
    let pool = std::sync::Arc::new(
        Pool::builder()
            .workers(1)
            .in_process(registry())
            .kill_grace(Duration::from_millis(100))
            .build()
            .unwrap(),
    );
    let p = pool.clone();
    let caller = std::thread::spawn(move || p.apply(sleep_ms, 300));
    std::thread::sleep(Duration::from_millis(100));
    let (tx, rx) = std::sync::mpsc::channel();
    let p = pool.clone();
    std::thread::spawn(move || {
        p.terminate();
        let _ = tx.send(());
    });
    let r = caller.join().unwrap();
    assert!(
        rx.recv_timeout(Duration::from_secs(30)).is_ok(),
        "terminate() still blocked 30 s after the lane call returned {r:?}"
    );
}
