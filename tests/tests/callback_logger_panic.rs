//! Hostile review of the callback thread (finding 5): `callback.rs`
//! catches a callback's panic, then logs it with `log::error!` *outside*
//! the `catch_unwind`. A logger that panics (this project already guards
//! the direct lane against one: `lane_logger_panic.rs`) then unwinds the
//! pool's one callback thread: its queue's receiver is gone, every
//! callback registered later is dropped unrun (`spawn` ignores the send
//! error), and `join` no longer waits for any (`flush` ignores it too).
use std::time::Duration;

use procpool::Pool;
use procpool_tests::{square, wait_until, watchdog};

const FAULT_WORKER: &str = env!("CARGO_BIN_EXE_fault-worker");

static PANICKY: procpool_tests::PanickyLogger = procpool_tests::PanickyLogger("callback-boom");

#[test]
fn a_panicking_logger_does_not_end_the_callback_thread() {
    let _w = watchdog(
        "a_panicking_logger_does_not_end_the_callback_thread",
        Duration::from_secs(60),
    );
    log::set_logger(&PANICKY).unwrap();
    log::set_max_level(log::LevelFilter::Error);
    let pool = Pool::builder()
        .workers(1)
        .worker_program(FAULT_WORKER)
        .build()
        .unwrap();
    let mut first = pool.apply_async(square, 2).unwrap();
    assert!(wait_until(Duration::from_secs(30), || first.ready()));
    first.on_complete(|_| panic!("callback-boom"));
    let (tx, rx) = crossbeam_channel::bounded(1);
    pool.apply_async(square, 3).unwrap().on_complete(move |r| {
        let _ = tx.send(r.map_err(|e| e.to_string()));
    });
    let got = rx.recv_timeout(Duration::from_secs(20));
    assert!(
        matches!(got, Ok(Ok(9))),
        "the second callback never ran: {got:?}"
    );
    pool.join();
}
