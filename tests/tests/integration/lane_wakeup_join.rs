//! Regression (hostile review): the same missed wake-up with `join()`: it never returns.
use std::time::Duration;

use procpool::Pool;
use procpool_tests::{sleep_ms, watchdog};

use crate::FAULT_WORKER;

#[test]
fn join_during_a_lane_call() {
    let _w = watchdog("join_during_a_lane_call", Duration::from_secs(300));
    let mut rtt = None;
    for i in 0..400u64 {
        let pool = std::sync::Arc::new(
            Pool::builder()
                .workers(1)
                .worker_program(FAULT_WORKER)
                .build()
                .unwrap(),
        );
        let rtt = *rtt.get_or_insert_with(|| {
            let t = std::time::Instant::now();
            pool.apply(sleep_ms, 5).unwrap();
            t.elapsed()
        });
        let p = pool.clone();
        let a = std::thread::spawn(move || p.apply(sleep_ms, 5));
        let offset =
            rtt.saturating_sub(Duration::from_micros(600)) + Duration::from_micros((i % 60) * 20);
        std::thread::sleep(offset);
        let (tx, rx) = std::sync::mpsc::channel();
        let p = pool.clone();
        std::thread::spawn(move || {
            p.join();
            let _ = tx.send(());
        });
        // On a busy machine join may come before the apply was submitted:
        // then the apply is refused (`Closed`), one outcome all the same.
        match a.join().unwrap() {
            Ok(v) => assert_eq!(v, 5),
            Err(e) => assert!(e.is_closed(), "iteration {i}: {e}"),
        }
        if rx.recv_timeout(Duration::from_secs(20)).is_err() {
            let mut threads = String::new();
            for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
                let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
                let sc = std::fs::read_to_string(t.path().join("syscall")).unwrap_or_default();
                let sc = sc.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
                threads.push_str(&format!("\n  {} syscall [{}]", comm.trim(), sc));
            }
            panic!(
                "iteration {i}: join() still blocked 20 s after the lane call returned; threads:{threads}"
            );
        }
    }
}
