//! Edges found in review: closures as tasks, the reason of a broken pool.

use std::time::Duration;

use procpool::Pool;
use procpool_tests::{kill, square, temp_path, wait_until, watchdog};

use crate::{FAULT_WORKER, LIMIT, pool};

#[test]
fn a_closure_is_refused_at_submit() {
    let _w = watchdog("a_closure_is_refused_at_submit", LIMIT);
    let pool = pool(1);
    // Every closure in this function has the same type name: had a worker
    // served one, this would have run it instead.
    let err = pool.map(|x: u64| x * 100, 0..3).unwrap_err();
    assert!(err.is_unnamed_task(), "{err}");
    assert!(err.is_unknown_task(), "{err}");
    let message = err.to_string();
    assert!(message.contains("is a closure"), "{message}");
    assert!(message.contains("name a `fn`"), "{message}");
    assert!(message.contains("{{closure}}"), "{message}");
    let err = pool.apply(|x: u64| x + 1, 1).unwrap_err();
    assert!(err.is_unnamed_task(), "{err}");
    let p: fn(u64) -> u64 = square;
    let err = pool.apply(p, 2).unwrap_err();
    assert!(err.is_unnamed_task(), "{err}");
    assert!(err.to_string().contains("a function pointer"), "{err}");
    // The function itself, by name, is fine.
    assert_eq!(pool.apply(square, 3).unwrap(), 9);
}

#[test]
#[ignore = "needs the dispatcher's halt to record cause.broken_reason() (see error.rs)"]
fn a_broken_pool_says_so_once() {
    let _w = watchdog("a_broken_pool_says_so_once", LIMIT);
    let counter = temp_path("broken-once");
    // The first worker starts; every replacement exits with code 7 before
    // its handshake, past the restart limit.
    let pool = Pool::builder()
        .workers(1)
        .worker_program(FAULT_WORKER)
        .worker_args([
            "--crash-at",
            "start",
            "--death",
            "exit:7",
            "--counter",
            &counter.display().to_string(),
            "--skip",
            "1",
        ])
        .restart_limit(1, Duration::from_secs(60))
        .build()
        .unwrap();
    kill(pool.worker_pids()[0], libc::SIGKILL);
    assert!(wait_until(LIMIT, || pool.apply(square, 2).is_err()));
    let err = pool.apply(square, 2).unwrap_err();
    assert!(err.is_broken(), "{err}");
    let message = err.to_string();
    assert_eq!(
        message.matches("the pool is broken").count(),
        1,
        "{message}"
    );
    assert!(
        message.starts_with("the pool is broken: workers failed to start"),
        "{message}"
    );
    pool.terminate();
    let _ = std::fs::remove_file(&counter);
}
