//! Regression (hostile review): `join` must kill a worker that does not exit within
//! `shutdown_grace` (Builder docs), and must not spin meanwhile.
use std::time::{Duration, Instant};

use procpool::Pool;
use procpool_tests::{kill, process_state, square, watchdog};

use crate::FAULT_WORKER;

fn cpu_time() -> Duration {
    // SAFETY: a zeroed rusage is a valid value for getrusage to fill in.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one rusage through a pointer to a live local.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    Duration::from_secs(ru.ru_utime.tv_sec as u64 + ru.ru_stime.tv_sec as u64)
        + Duration::from_micros(ru.ru_utime.tv_usec as u64 + ru.ru_stime.tv_usec as u64)
}

#[test]
fn join_kills_a_stopped_worker_after_shutdown_grace() {
    let _w = watchdog(
        "join_kills_a_stopped_worker_after_shutdown_grace",
        Duration::from_secs(60),
    );
    let pool = Pool::builder()
        .workers(1)
        .worker_program(FAULT_WORKER)
        .shutdown_grace(Duration::from_millis(300))
        .build()
        .unwrap();
    assert_eq!(pool.apply(square, 3).unwrap(), 9);
    let victim = pool.worker_pids()[0];
    kill(victim, libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(100));
    let pool = std::sync::Arc::new(pool);
    let p = pool.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let start = Instant::now();
    let cpu0 = cpu_time();
    std::thread::spawn(move || {
        p.join();
        let _ = tx.send(());
    });
    // The worker is stopped: without the kill, join would wait for ever.
    let finished = rx.recv_timeout(Duration::from_secs(30)).is_ok();
    let cpu = cpu_time() - cpu0;
    let wall = start.elapsed();
    let state = process_state(victim);
    if !finished {
        // Unblock: the worker sees the end of its input once it runs.
        kill(victim, libc::SIGCONT);
        rx.recv_timeout(Duration::from_secs(20))
            .expect("join after SIGCONT");
    }
    assert!(
        finished,
        "join() still running {wall:?} after a 300 ms shutdown_grace; worker {victim} state {state:?}; \
         this process burnt {cpu:?} of CPU meanwhile"
    );
}
