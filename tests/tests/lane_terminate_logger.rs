//! Regression (hostile review): `terminate()` while a direct-lane caller holds a worker that
//! dies after answering (the pidfd is seen before the caller gives the
//! worker back). The caller's slow logger widens the window.
use std::time::Duration;

use procpool::Pool;
use procpool_tests::watchdog;

const FAULT_WORKER: &str = env!("CARGO_BIN_EXE_fault-worker");

#[test]
fn terminate_while_a_lane_caller_finishes_on_a_dead_worker() {
    let _w = watchdog(
        "terminate_while_a_lane_caller_finishes_on_a_dead_worker",
        Duration::from_secs(60),
    );
    procpool_tests::hold_lane_callers(Duration::from_millis(1000));
    let pool = std::sync::Arc::new(
        Pool::builder()
            .workers(1)
            .worker_program(FAULT_WORKER)
            .build()
            .unwrap(),
    );
    let victim = pool.worker_pids()[0];
    let caller = procpool_tests::held_apply(&pool);
    // The worker has written its Log and Done frames; the caller sleeps
    // in the logger. terminate(): SIGTERM kills the idle worker, the
    // dispatcher sees its pidfd (DiedWhileLent), then the caller reads
    // the Done frame, succeeds and parks the worker.
    let p = pool.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        p.terminate();
        let _ = tx.send(());
    });
    let outcome = caller.join().unwrap();
    let done = rx.recv_timeout(Duration::from_secs(10)).is_ok();
    assert!(
        done,
        "terminate() still blocked 10 s later (apply returned {outcome:?}); worker {victim} state {:?}",
        procpool_tests::process_state(victim)
    );
}
