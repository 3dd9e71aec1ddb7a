//! Regression (hostile review): a lane caller that gives its worker back while the dispatcher
//! is between `reclaim()` and announcing its sleep: `wake()` sees
//! `sleeping == false` and writes nothing; the dispatcher sleeps with a
//! queued batch and an idle parked worker.
use std::time::Duration;

use procpool::Pool;
use procpool_tests::{sleep_ms, square, watchdog};

use crate::FAULT_WORKER;

#[test]
fn a_worker_given_back_during_reclaim_is_not_forgotten() {
    let _w = watchdog(
        "a_worker_given_back_during_reclaim_is_not_forgotten",
        Duration::from_secs(300),
    );
    let pool = std::sync::Arc::new(
        Pool::builder()
            .workers(1)
            .worker_program(FAULT_WORKER)
            .build()
            .unwrap(),
    );
    // Measure one lane round trip of sleep_ms(5).
    let t = std::time::Instant::now();
    pool.apply(sleep_ms, 5).unwrap();
    let rtt = t.elapsed();
    let mut stalls = Vec::new();
    for i in 0..600u64 {
        let p = pool.clone();
        let a = std::thread::spawn(move || p.apply(sleep_ms, 5).unwrap());
        // Sweep the moment of the submit around the lane call's end.
        let offset =
            rtt.saturating_sub(Duration::from_micros(600)) + Duration::from_micros((i % 60) * 20);
        std::thread::sleep(offset);
        let mut b = pool.apply_async(square, i).unwrap();
        let t = std::time::Instant::now();
        // A missed wake-up stalls for ever; 10 s only tells it from a busy machine.
        match b.get_timeout(Duration::from_secs(10)) {
            Ok(v) => assert_eq!(v, i * i),
            Err(e) if e.is_wait_timeout() => {
                stalls.push(i);
                eprintln!("iteration {i}: apply_async stalled 10 s with an idle worker");
                // Any later command wakes the dispatcher.
                drop(pool.apply_async(square, 0).unwrap());
                assert_eq!(b.get_timeout(Duration::from_secs(5)).unwrap(), i * i);
                eprintln!(
                    "  ... and completed once another command woke the dispatcher ({:?})",
                    t.elapsed()
                );
                if stalls.len() >= 2 {
                    break;
                }
            }
            Err(e) => panic!("{e}"),
        }
        a.join().unwrap();
    }
    assert!(stalls.is_empty(), "stalled at iterations {stalls:?}");
}
