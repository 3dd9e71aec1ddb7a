//! Regression (hostile review): a host program whose SIGPIPE is at its default action (many
//! CLI programs restore it) must survive a worker that dies. The lane
//! hands out a worker the dispatcher already knows is dead, and the
//! caller writes to its pipe.
use std::time::Duration;

use procpool::Pool;
use procpool_tests::{kill, square, watchdog};

const FAULT_WORKER: &str = env!("CARGO_BIN_EXE_fault-worker");

#[test]
fn a_dead_workers_pipe_does_not_kill_the_host() {
    let _w = watchdog(
        "a_dead_workers_pipe_does_not_kill_the_host",
        Duration::from_secs(60),
    );
    // SAFETY: only changes this test process's SIGPIPE disposition.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    procpool_tests::hold_lane_callers(Duration::from_millis(600));
    let pool = std::sync::Arc::new(
        Pool::builder()
            .workers(1)
            .worker_program(FAULT_WORKER)
            .build()
            .unwrap(),
    );
    let victim = pool.worker_pids()[0];
    let caller = procpool_tests::held_apply(&pool);
    std::thread::sleep(Duration::from_millis(100));
    kill(victim, libc::SIGKILL);
    assert_eq!(caller.join().unwrap().unwrap(), 1);
    eprintln!("caller done; applying again");
    assert_eq!(pool.apply(square, 7).unwrap(), 49);
    eprintln!("survived");
}
