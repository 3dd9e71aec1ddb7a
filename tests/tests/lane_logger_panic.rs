//! Regression (hostile review): a direct-lane caller that unwinds (here: its logger panics on
//! a worker's record) never gives its worker back; join must still end.
use std::time::Duration;

use procpool::Pool;
use procpool_tests::{log_lines, watchdog};

const FAULT_WORKER: &str = env!("CARGO_BIN_EXE_fault-worker");

/// Panics on a record with the marker, but only on a caller's thread: a
/// record the dispatcher forwards (the call went through it, before the
/// worker was lent) is let through, and the call is made again.
struct LanePanicky;

impl log::Log for LanePanicky {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        let pool_thread = std::thread::current()
            .name()
            .is_some_and(|n| n.starts_with("procpool-"));
        if !pool_thread && r.args().to_string().contains("boom-marker") {
            panic!("logger panics");
        }
    }
    fn flush(&self) {}
}

static PANICKY: LanePanicky = LanePanicky;

#[test]
fn join_after_a_lane_caller_unwound() {
    let _w = watchdog("join_after_a_lane_caller_unwound", Duration::from_secs(60));
    log::set_logger(&PANICKY).unwrap();
    log::set_max_level(log::LevelFilter::Warn);
    let pool = std::sync::Arc::new(
        Pool::builder()
            .workers(1)
            .worker_program(FAULT_WORKER)
            .build()
            .unwrap(),
    );
    let victim = pool.worker_pids()[0];
    // Until the worker is lent (the dispatcher lends it once idle, which a
    // busy machine may delay), a call goes through the dispatcher and
    // succeeds; on the lane, the logger's panic reaches the caller.
    loop {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.apply(log_lines, ("boom-marker".to_owned(), 1))
        }));
        match r {
            Err(_) => break,
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => panic!("the call failed instead: {e}"),
        }
    }
    let p = pool.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        p.join();
        let _ = tx.send(());
    });
    let done = rx.recv_timeout(Duration::from_secs(10)).is_ok();
    assert!(
        done,
        "join() still blocked 10 s after a lane caller unwound; pids {:?}; first worker {victim} state {:?}",
        pool.worker_pids(),
        procpool_tests::process_state(victim)
    );
}
